#!/usr/bin/env bash
# The DNS gateway as the agent meets it: cordon as the entrypoint (default --dns gateway) in a
# network namespace, dnsperf as the agent's uid (its questions to the resolver are redirected to
# the gateway) against dnsperf as root (exempt from the redirect: straight to the bench's DNS
# server). Query mixes: 10,000 distinct allowlisted names (each forwarded, its answer put into
# the sets), the same names again, and 10,000 distinct names no entry allows (refused by the
# gateway itself). Then the gateway's memory (VmRSS, VmHWM) after those floods.
#
#   sudo bench/gateway-process.sh [RUNS]    (needs: dnsperf, iproute2, iptables, ipset)
#
# Medians of RUNS runs (default 5) of each mix. Everything runs in two network namespaces created
# here; nothing leaves them.
set -euo pipefail

runs=${1:-5}
root=$(cd "$(dirname "$0")/.." && pwd)
cargo build --quiet --release --target x86_64-unknown-linux-musl --workspace --bins \
    --manifest-path "$root/Cargo.toml"
bin=${CARGO_TARGET_DIR:-$root/target}/x86_64-unknown-linux-musl/release
testkit=$bin/testkit
name=gwp net=77
# shellcheck source=bench/netns-world.sh
source "$root/bench/netns-world.sh"
start_world --wildcard bench.test=10.200.0.0/16
resolver=10.$net.0.1

seq 1 10000 | sed 's/^/name/; s/$/.bench.test A/' > "$work/allowed"
seq 1 10000 | sed 's/^/name/; s/$/.refused.test A/' > "$work/refused"
chmod 755 "$work" && chmod 644 "$work/allowed" "$work/refused" # dnsperf reads them as uid 1000

ip netns exec "$sandbox" "$bin/cordon" --no-harden --no-default-profile --allow '*.bench.test' \
    --user 1000 -- /bin/sleep 3600 2> "$work/cordon.log" &
cordon_pid=$!
for _ in $(seq 500); do grep -q 'starting /bin/sleep' "$work/cordon.log" && break; sleep 0.01; done
grep -q 'starting /bin/sleep' "$work/cordon.log" || { cat "$work/cordon.log"; exit 1; }
gateway_pid() {
    for child in $(cat "/proc/$cordon_pid/task/$cordon_pid/children"); do
        if grep -q $'^Uid:\t65053' "/proc/$child/status" 2>/dev/null; then echo "$child"; fi
    done
}
trap 'kill "$cordon_pid" 2>/dev/null; wait "$cordon_pid" 2>/dev/null; cleanup' EXIT

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# dnsperf over FILE once, up to 100 questions in flight, as USER (root: straight to the server;
# 1000: redirected to the gateway). Prints "qps avg_latency_ms lost".
perf() { # USER FILE
    local as=()
    [ "$1" != root ] && as=(setpriv --reuid "$1" --regid "$1" --clear-groups)
    ip netns exec "$sandbox" "${as[@]}" dnsperf -s "$resolver" -d "$2" -n 1 -q 100 -t 5 2>&1 |
        awk '/Queries lost:/ {lost=$3} /Queries per second:/ {qps=$4}
             /Average Latency/ {lat=$4 * 1000} END {printf "%.0f %.3f %s\n", qps, lat, lost}'
}

row() { # LABEL USER FILE
    local label=$1 results
    results=$(for _ in $(seq "$runs"); do perf "$2" "$3"; done)
    printf '%-46s %9s q/s   avg %7s ms   lost %s\n' "$label" \
        "$(awk '{print $1}' <<<"$results" | median)" \
        "$(awk '{print $2}' <<<"$results" | median)" \
        "$(awk '{print $3}' <<<"$results" | median)"
}

echo "10,000 distinct names per run, 100 in flight, medians of $runs runs:"
row "direct (root, not redirected): allowed names" root "$work/allowed"
row "through the gateway: allowed names" 1000 "$work/allowed"
row "direct (root): names no entry allows" root "$work/refused"
row "through the gateway: names no entry allows" 1000 "$work/refused"
pid=$(gateway_pid)
grep -E '^(VmRSS|VmHWM):' "/proc/$pid/status" | tr -s ' \t' ' ' | sed 's/^/gateway /'
printf 'answered set members now: %s\n' \
    "$(ip netns exec "$sandbox" ipset list -t cordon4-answered | awk '/entries/ {print $4}')"
