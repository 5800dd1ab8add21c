#!/usr/bin/env bash
# The DNS gateway as the agent meets it: cordon as the entrypoint (default --dns gateway) in a
# network namespace, dnsperf as the agent's uid (its questions to the resolver are redirected to
# the gateway) against dnsperf as root (exempt from the redirect: straight to the bench's DNS
# server). Query mixes of 10,000 questions: allowlisted names the gateway has not seen before
# (fresh names every run: each forwarded, its answer put into the sets), 1,000 of those names
# asked ten times each (answered from the gateway's cache but for the first), and names no entry
# allows (refused by the gateway itself). Each run measures direct and
# through-the-gateway back to back, so a slower moment of the machine hits both. Then the
# gateway's memory (VmRSS, VmHWM) after those floods.
#
#   sudo bench/gateway-process.sh [RUNS]    (needs: dnsperf, iproute2, iptables, ipset)
#
# Medians of RUNS runs (default 5) of each mix, and the median of each run's gateway/direct
# ratio. Everything runs in two network namespaces created here; nothing leaves them.
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

for run in $(seq "$runs"); do
    seq 1 10000 | sed "s/^/name/; s/\$/.run$run.bench.test A/" > "$work/allowed$run"
    for _ in $(seq 10); do head -1000 "$work/allowed$run"; done > "$work/again$run"
done
seq 1 10000 | sed 's/^/name/; s/$/.refused.test A/' > "$work/refused"
chmod 755 "$work" && chmod 644 "$work"/allowed* "$work"/again* "$work/refused" # dnsperf reads them as uid 1000

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
trap 'kill "$cordon_pid" 2>/dev/null; wait "$cordon_pid" 2>/dev/null || true; cleanup' EXIT

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

memory() {
    grep -E '^(VmRSS|VmHWM):' "/proc/$(gateway_pid)/status" | tr -s ' \t' ' ' | tr '\n' ' '
}

memory > "$work/memory0"

# The gateway's CPU time so far, user and system, in clock ticks.
cpu() { awk '{print $14, $15}' "/proc/$(gateway_pid)/stat"; }
ticks=$(getconf CLK_TCK)

# Per run and mix: direct, then through the gateway; one line "mix direct_qps gateway_qps
# direct_ms gateway_ms lost".
for run in $(seq "$runs"); do
    direct_allowed=$(perf root "$work/allowed$run")
    read -r user0 sys0 <<<"$(cpu)"
    first=$(perf 1000 "$work/allowed$run")
    read -r user1 sys1 <<<"$(cpu)"
    # µs of the gateway's CPU per first-time question: user, system.
    echo "$(((user1 - user0) * 1000000 / ticks / 10000)) $(((sys1 - sys0) * 1000000 / ticks / 10000))" \
        >> "$work/cpu"
    again=$(perf 1000 "$work/again$run")
    direct_again=$(perf root "$work/again$run")
    direct_refused=$(perf root "$work/refused")
    refused=$(perf 1000 "$work/refused")
    [ "$run" = 1 ] && memory > "$work/memory1"
    for mix in "first $direct_allowed $first" "again $direct_again $again" \
        "refused $direct_refused $refused"; do
        read -r label dq dl dlost gq gl glost <<<"$mix"
        echo "$label $dq $gq $dl $gl $((dlost + glost))"
    done
done > "$work/results"
echo "10,000 questions per mix and run, 100 in flight, medians of $runs runs:"
printf '%-44s %9s %9s %7s %9s %9s %5s\n' mix "direct" "gateway" ratio "direct" "gateway" lost
for mix in first again refused; do
    col() { awk -v m="$mix" -v c="$1" '$1 == m {print $c}' "$work/results" | median; }
    ratio=$(awk -v m="$mix" '$1 == m {printf "%.2f\n", $3 / $2}' "$work/results" | median)
    case $mix in
    first) label="allowed names, first time (forwarded)" ;;
    again) label="1,000 of them, 10 times each (cached)" ;;
    refused) label="names no entry allows (refused)" ;;
    esac
    printf '%-44s %5s q/s %5s q/s %7s %6s ms %6s ms %5s\n' "$label" "$(col 2)" "$(col 3)" \
        "$ratio" "$(col 4)" "$(col 5)" "$(col 6)"
done
printf "gateway CPU per first-time question: %s µs user + %s µs system (from /proc's ticks)\n" \
    "$(cut -d' ' -f1 "$work/cpu" | median)" "$(cut -d' ' -f2 "$work/cpu" | median)"
printf 'gateway memory at start: %s\n' "$(cat "$work/memory0")"
printf 'gateway memory after the first run (10,000 distinct names): %s\n' "$(cat "$work/memory1")"
printf 'gateway memory after all runs (%s distinct names): %s\n' "$((runs * 10000))" "$(memory)"
printf 'answered set members now: %s\n' \
    "$(ip netns exec "$sandbox" ipset list -t cordon4-answered | awk '/entries/ {print $4}')"
