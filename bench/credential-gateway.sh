#!/usr/bin/env bash
# The credential gateway as the agent meets it: cordon as the entrypoint in a network namespace
# with a credential, the Messages API mock over TLS in the world (certificate from a test CA,
# api.anthropic.com answered by the bench's DNS server), and the agent's uid sending requests
# (bench/api-client.py) through the gateway (http://127.0.0.1:10080) or directly (TLS to the
# mock, which an entry naming the upstream and its address opens for this comparison). Each round measures direct and
# through-the-gateway back to back, so a slower moment of the machine hits both:
#   - latency: 2,000 small POSTs one after another on one kept-alive connection (p50, p99);
#   - throughput: 50 uploads and 50 downloads of 1 MB each;
# then the gateway's memory (VmRSS, VmHWM) idle and while 32 event streams run for 5 s.
#
#   sudo bench/credential-gateway.sh [ROUNDS]    (needs: iproute2, iptables, ipset, python3)
#
# Medians of ROUNDS rounds (default 5). Nothing leaves the two namespaces created here.
set -euo pipefail

rounds=${1:-5}
root=$(cd "$(dirname "$0")/.." && pwd)
cargo build --quiet --release --target x86_64-unknown-linux-musl --workspace --bins \
    --manifest-path "$root/Cargo.toml"
bin=${CARGO_TARGET_DIR:-$root/target}/x86_64-unknown-linux-musl/release
testkit=$bin/testkit
name=cgw net=78
# shellcheck source=bench/netns-world.sh
source "$root/bench/netns-world.sh"
api=10.$net.0.1
start_world --record "api.anthropic.com=$api"
chmod 755 "$work"

"$testkit" pki --dir "$work/pki" api.anthropic.com
chmod -R a+rX "$work/pki"
ip netns exec "$world" "$testkit" mock-api --listen "$api:443" --reply bench \
    --tls-cert "$work/pki/server.pem" --tls-key "$work/pki/server-key.pem" \
    --ready-file "$work/mock.ready" >/dev/null 2>&1 &
mock_pid=$!
for _ in $(seq 500); do [ -e "$work/mock.ready" ] && break; sleep 0.01; done

ip netns exec "$sandbox" env ANTHROPIC_API_KEY=sk-ant-bench-key SSL_CERT_FILE="$work/pki/ca.pem" \
    "$bin/cordon" --no-harden --no-default-profile --allow api.anthropic.com:443 --allow "$api:443" \
    --user 1000 \
    -- /bin/sleep 3600 2> "$work/cordon.log" &
cordon_pid=$!
for _ in $(seq 500); do grep -q 'starting /bin/sleep' "$work/cordon.log" && break; sleep 0.01; done
grep -q 'starting /bin/sleep' "$work/cordon.log" || { cat "$work/cordon.log"; exit 1; }
trap 'kill "$cordon_pid" "$mock_pid" 2>/dev/null; wait "$cordon_pid" 2>/dev/null || true; cleanup' EXIT

gateway_pid() {
    for child in $(cat "/proc/$cordon_pid/task/$cordon_pid/children"); do
        if grep -q $'^Uid:\t65054' "/proc/$child/status" 2>/dev/null; then echo "$child"; fi
    done
}
memory() {
    grep -E '^(VmRSS|VmHWM):' "/proc/$(gateway_pid)/status" | tr -s ' \t' ' ' | tr '\n' ' '
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
client() { # TARGET MODE ARGS...: as the agent's uid
    ip netns exec "$sandbox" setpriv --reuid 1000 --regid 1000 --clear-groups \
        /usr/bin/python3 "$root/bench/api-client.py" "$@"
}
direct=direct:$api:$work/pki/ca.pem

idle=$(memory)
for _ in $(seq "$rounds"); do
    for target in "$direct" gateway; do
        label=${target%%:*}
        read -r p50 p99 <<<"$(client "$target" latency 2000)"
        up=$(client "$target" upload 50 1048576)
        down=$(client "$target" download 50 1048576)
        echo "$label $p50 $p99 $up $down"
    done
done > "$work/results"

client gateway streams 32 5 > "$work/events" &
streams=$!
peak=0
while kill -0 "$streams" 2>/dev/null; do
    rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$(gateway_pid)/status")
    [ "$rss" -gt "$peak" ] && peak=$rss
    sleep 0.1
done
wait "$streams"

col() { awk -v t="$1" -v c="$2" '$1 == t {print $c}' "$work/results" | median; }
echo "medians of $rounds rounds; latency over 2,000 requests per round, throughput over 50 x 1 MB:"
printf '%-10s %10s %10s %12s %14s\n' path "p50 ms" "p99 ms" "upload MB/s" "download MB/s"
for t in direct gateway; do
    printf '%-10s %10s %10s %12s %14s\n' "$t" "$(col "$t" 2)" "$(col "$t" 3)" "$(col "$t" 4)" \
        "$(col "$t" 5)"
done
echo "added by the gateway: p50 $(awk -v a="$(col gateway 2)" -v b="$(col direct 2)" \
    'BEGIN {printf "%+.3f", a - b}') ms, p99 $(awk -v a="$(col gateway 3)" -v b="$(col direct 3)" \
    'BEGIN {printf "%+.3f", a - b}') ms"
echo "gateway memory idle: $idle"
echo "gateway memory with 32 event streams (5 s, $(cat "$work/events") events): peak VmRSS $peak kB; $(memory)"
