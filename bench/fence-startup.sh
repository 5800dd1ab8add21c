#!/usr/bin/env bash
# Time from start to verified fence (`cordon firewall --dns static`: names resolved at start;
# first apply on a clean namespace) for
# N = 10, 100 and 1,000 allowlisted names, against the bench's own DNS server (no upstream) that
# answers every query 20 ms late, in two shapes of namespace: IPv4 only (Docker's default:
# cordon asks for A records only) and dual-stack (A and AAAA). Prints hyperfine medians; also
# the static binary's size.
#
#   sudo bench/fence-startup.sh [RUNS]        (needs: hyperfine, iproute2, iptables, ipset)
#
# Everything runs in two network namespaces created here; nothing leaves them.
set -euo pipefail

runs=${1:-15}
root=$(cd "$(dirname "$0")/.." && pwd)
cargo build --quiet --release --target x86_64-unknown-linux-musl --workspace --bins \
    --manifest-path "$root/Cargo.toml"
bin=${CARGO_TARGET_DIR:-$root/target}/x86_64-unknown-linux-musl/release
cordon=$bin/cordon
testkit=$bin/testkit
name=bench net=79
# shellcheck source=bench/netns-world.sh
source "$root/bench/netns-world.sh"
start_world --delay-ms 20 --wildcard bench.test=10.200.0.0/16 --wildcard bench.test=fd79::/64

for n in 10 100 1000; do
    seq 1 "$n" | sed 's/^/name/; s/$/.bench.test/' > "$work/$n.list"
done

# A clean namespace before every run: no rules, no sets, ACCEPT policies.
cat > "$work/reset" <<EOF
#!/bin/sh
for t in iptables ip6tables; do
    \$t -P INPUT ACCEPT; \$t -P OUTPUT ACCEPT; \$t -F; \$t -X
done
ipset destroy 2>/dev/null || true
EOF
chmod +x "$work/reset"

measure() {
    local shape=$1
    echo "== $shape"
    hyperfine --style basic --runs "$runs" --warmup 2 --export-json "$work/result.json" \
        --prepare "ip netns exec $sandbox $work/reset" \
        -n "ip netns exec (baseline)" "ip netns exec $sandbox /bin/true" \
        -n "N=10" "ip netns exec $sandbox $cordon firewall -q --dns static --no-default-profile --user 1000 --allowlist $work/10.list" \
        -n "N=100" "ip netns exec $sandbox $cordon firewall -q --dns static --no-default-profile --user 1000 --allowlist $work/100.list" \
        -n "N=1000" "ip netns exec $sandbox $cordon firewall -q --dns static --no-default-profile --user 1000 --allowlist $work/1000.list" \
        >/dev/null
    python3 - "$work/result.json" <<'EOF'
import json, sys
results = json.load(open(sys.argv[1]))["results"]
print(f"{'command':28} {'median':>10} {'min':>10} {'max':>10}   (20 ms DNS latency; ms)")
for r in results:
    print(f"{r['command']:28} {r['median']*1e3:10.1f} {r['min']*1e3:10.1f} {r['max']*1e3:10.1f}")
EOF
    # One verbose run per size for the phase breakdown cordon itself reports.
    for n in 10 100 1000; do
        ip netns exec "$sandbox" "$work/reset"
        printf 'N=%-5s ' "$n"
        ip netns exec "$sandbox" "$cordon" firewall --dns static --no-default-profile --user 1000 \
            --allowlist "$work/$n.list" 2>&1 | grep 'fence ready'
    done
}

measure "IPv4-only namespace"
add_ipv6
measure "dual-stack namespace"
printf 'static binary: %s bytes (%s)\n' "$(stat -c %s "$cordon")" "$cordon"
