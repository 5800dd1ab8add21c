#!/usr/bin/env bash
# Resident memory of PID 1 while the agent runs: cordon against a static tini (issue 3's target:
# cordon at most 1 MiB VmRSS; tini-static measures about 0.7 MiB).
#
# Each init runs as PID 1 of a fresh pid namespace (cordon also in a fresh network namespace,
# where its fence has nothing to resolve) with `sleep` as the agent; once the agent runs, PID 1's
# VmRSS is read from /proc. Prints every run and the median per init, with the RssAnon/RssFile
# split of the last run.
#
# Usage (as root): bench/pid1-rss.sh [RUNS]      (default 7)
# Builds the static binaries unless CORDON_STATIC_DIR names a directory that holds them.
set -euo pipefail

runs=${1:-7}
root=$(cd "$(dirname "$0")/.." && pwd)
tini=/usr/bin/tini-static

if [[ $(id -u) != 0 ]]; then
    echo "pid1-rss: run as root (it creates pid and network namespaces)" >&2
    exit 1
fi
if [[ ! -x $tini ]]; then
    echo "pid1-rss: $tini missing: apt-get install tini" >&2
    exit 1
fi
if [[ -n ${CORDON_STATIC_DIR:-} ]]; then
    static=$CORDON_STATIC_DIR
else
    (cd "$root" && cargo build --quiet --release --target x86_64-unknown-linux-musl --workspace --bins)
    static=${CARGO_TARGET_DIR:-$root/target}/x86_64-unknown-linux-musl/release
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "nameserver 127.0.0.1" >"$work/resolv.conf"
# The agent's user must be able to run testkit: copy it out of a possibly private tree.
install -m 0755 "$static/testkit" "$work/testkit"

children() { cat "/proc/$1/task/$1/children" 2>/dev/null || true; }
exe() { basename "$(readlink "/proc/$1/exe" 2>/dev/null)" 2>/dev/null || true; }

# measure NAME COMMAND...: prints PID 1's VmRSS in kB once its agent (sleep) runs.
measure() {
    local name=$1
    shift
    "$@" >/dev/null 2>&1 &
    local unshare=$! init="" agent="" deadline=$((SECONDS + 10))
    while [[ -z $agent ]]; do
        if ((SECONDS > deadline)); then
            echo "pid1-rss: $name never started its agent" >&2
            kill -KILL "$unshare" 2>/dev/null || true
            return 1
        fi
        for pid in $(children "$unshare"); do
            [[ $(exe "$pid") == "$name" ]] && init=$pid
        done
        if [[ -n $init ]]; then
            for pid in $(children "$init"); do
                [[ $(exe "$pid") == sleep ]] && agent=$pid
            done
        fi
        sleep 0.01
    done
    sleep 0.3
    grep -E '^(VmRSS|RssAnon|RssFile):' "/proc/$init/status" | tr -s ' \t' ' ' | tr '\n' ' ' \
        >"$work/last-$name"
    awk '/^VmRSS:/ {print $2}' "/proc/$init/status"
    kill -KILL "$unshare" 2>/dev/null || true
    wait "$unshare" 2>/dev/null || true
}

median() { sort -n | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }

report() {
    local label=$1 name=$2
    shift 2
    local values=()
    for _ in $(seq "$runs"); do
        values+=("$(measure "$name" "$@")")
    done
    printf '%-44s median %5s kB   runs: %s\n' "$label" \
        "$(printf '%s\n' "${values[@]}" | median)" "${values[*]}"
    printf '%-44s last run: %s\n' "" "$(cat "$work/last-$name")"
}

netns_like_docker='mount -t sysfs sysfs /sys && ip link set lo up && ip link add eth0 type veth peer name eth1 && ip addr add 10.253.0.2/24 dev eth0 && ip link set eth0 up && ip link set eth1 up && exec "$@"'

echo "PID 1 VmRSS while the agent (sleep) runs, $runs runs each"
report "tini-static ($tini)" tini-static \
    unshare --pid --kill-child --mount-proc "$tini" -- sleep 60
report "cordon (fence + launch + supervise)" cordon \
    unshare --pid --kill-child --mount-proc --net sh -c "$netns_like_docker" sh \
    "$static/cordon" --quiet --no-default-profile --resolv-conf "$work/resolv.conf" \
    --no-harden --user 65534 -- sleep 60
report "cordon launch + supervise alone (testkit)" testkit \
    unshare --pid --kill-child --mount-proc "$work/testkit" pid1-init --user 65534 -- sleep 60
