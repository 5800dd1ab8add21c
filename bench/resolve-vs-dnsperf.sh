#!/usr/bin/env bash
# Static mode's resolution against dnsperf: 1,000 names in a dual-stack namespace (2,000
# questions: A and AAAA) asked of the bench's own DNS server (no upstream, no delay), by
# `cordon plan` and by dnsperf sending the same 2,000 questions with as many in flight. Wall time
# and CPU time (user + sys) of each, medians of RUNS runs, in one run of the bench.
#
#   sudo bench/resolve-vs-dnsperf.sh [RUNS]      (needs: dnsperf, iproute2, /usr/bin/time)
#
# Everything runs in two network namespaces created here; nothing leaves them. `cordon plan`
# also reads the allowlist and prints the plan: that is in its figures, and is small beside the
# resolution (its own "resolved ... in N ms" line is printed too).
set -euo pipefail

runs=${1:-9}
root=$(cd "$(dirname "$0")/.." && pwd)
cargo build --quiet --release --target x86_64-unknown-linux-musl --workspace --bins \
    --manifest-path "$root/Cargo.toml"
bin=${CARGO_TARGET_DIR:-$root/target}/x86_64-unknown-linux-musl/release
testkit=$bin/testkit
name=rvd net=78
# shellcheck source=bench/netns-world.sh
source "$root/bench/netns-world.sh"
start_world --wildcard bench.test=10.200.0.0/16 --wildcard bench.test=fd78::/64
add_ipv6

seq 1 1000 | sed 's/^/name/; s/$/.bench.test/' > "$work/names"
awk '{print $1" A"; print $1" AAAA"}' "$work/names" > "$work/questions"

# "wall user sys" in seconds, of one command in the sandbox.
timed() {
    ip netns exec "$sandbox" /usr/bin/time -f '%e %U %S' -o "$work/time" "$@" >/dev/null 2>&1
    cat "$work/time"
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

: > "$work/cordon.times"
: > "$work/dnsperf.times"
for _ in $(seq "$runs"); do
    timed "$bin/cordon" plan -q --dns static --no-default-profile --allowlist "$work/names" >> "$work/cordon.times"
    # Every question in flight at once, as cordon sends them; each exactly once.
    timed dnsperf -s 10.78.0.1 -d "$work/questions" -n 1 -q 2000 -t 5 >> "$work/dnsperf.times"
done

report() {
    local label=$1 file=$2 wall cpu
    wall=$(awk '{print $1 * 1000}' "$file" | median)
    cpu=$(awk '{print ($2 + $3) * 1000}' "$file" | median)
    printf '%-34s wall %6s ms   cpu (user+sys) %6s ms\n' "$label" "$wall" "$cpu"
}
echo "1,000 names, 2,000 questions (A and AAAA), medians of $runs runs:"
report "cordon plan (static resolution)" "$work/cordon.times"
report "dnsperf -q 2000 (same questions)" "$work/dnsperf.times"
ip netns exec "$sandbox" "$bin/cordon" plan --dns static --no-default-profile --allowlist "$work/names" \
    2>&1 >/dev/null | grep 'resolved'
