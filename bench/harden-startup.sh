#!/usr/bin/env bash
# Start-up against image and workspace size: `docker run` → the agent's first instruction, with
# and without `--security-opt no-new-privileges`, for the image built from the public Dockerfile,
# the same image with +50k and +200k files, and with a 100k-file workspace volume. Also, per
# size: how long the background harden pass takes (its log line), the synchronous pass (its log
# line), and `find / -xdev -perm /6000` on the same tree (the stat floor).
#
#   sudo bench/harden-startup.sh [RUNS]        (RUNS per cell, default 7; medians are printed)
#
# Offline, like the tests: the image is built by tests/docker/build-image.sh; containers run on
# an --internal network with no DNS server (the allowlist is one address, nothing is resolved).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-7}

eval "$(tests/docker/ensure-docker.sh)" # DOCKER: a client with BuildKit
eval "$(tests/docker/build-image.sh)"
docker() { "$DOCKER" "$@"; }
NET=cordon-bench-harden
VOLUME=cordon-bench-workspace
docker network rm "$NET" >/dev/null 2>&1 || true
docker network create --internal "$NET" >/dev/null
trap 'docker network rm "$NET" >/dev/null 2>&1 || true' EXIT

# Derived images: N more files in 1,000-file directories (root-owned, mode 0644, as `npm ci`
# leaves most of node_modules).
derived() {
    local files=$1 tag="cordon-bench/extra:$1"
    if ! docker image inspect "$tag" >/dev/null 2>&1; then
        printf 'FROM %s\nRUN mkdir /opt/extra && cd /opt/extra && for d in $(seq 1 %d); do mkdir $d && (cd $d && seq 1 1000 | xargs touch); done\n' \
            "$IMAGE" $((files / 1000)) | docker build -q -t "$tag" - >/dev/null
    fi
    echo "$tag"
}
if ! docker volume inspect "$VOLUME" >/dev/null 2>&1; then
    docker volume create "$VOLUME" >/dev/null
    docker run --rm --network none --mount "type=volume,src=$VOLUME,dst=/workspace" \
        --entrypoint /bin/sh "$IMAGE" -c \
        'cd /workspace && for d in $(seq 1 100); do mkdir $d && (cd $d && seq 1 1000 | xargs touch); done'
fi

CORDON=(--no-default-profile --allow 10.99.0.1)
# Docker warns that a localhost resolver may fail: nothing is resolved, so it never asks.
DNS=(--dns 127.0.0.1)
run_args() { # MODE MOUNT
    local args=(--network "$NET" "${DNS[@]}" --cap-add NET_ADMIN --cap-add NET_RAW)
    [ "$1" = nnp ] && args+=(--security-opt no-new-privileges)
    [ -n "$2" ] && args+=(--mount "type=volume,src=$VOLUME,dst=/workspace")
    echo "${args[@]}"
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# docker run → the agent's first instruction, in ms.
to_agent() { # IMAGE MODE MOUNT
    local t0 t1
    # shellcheck disable=SC2046
    t0=$(date +%s%N)
    t1=$(docker run --rm $(run_args "$2" "$3") "$1" -q "${CORDON[@]}" -- date +%s%N 2>/dev/null | tail -1)
    echo $(((t1 - t0) / 1000000))
}

# The harden pass's own time, from its log line, in ms.
pass_time() { # IMAGE MODE MOUNT
    local name=cordon-bench-pass logs pattern
    docker rm -f "$name" >/dev/null 2>&1 || true
    # shellcheck disable=SC2046
    docker run -d --name "$name" $(run_args "$2" "$3") "$1" "${CORDON[@]}" -- sleep 120 >/dev/null 2>&1
    if [ "$2" = nnp ]; then pattern='background harden done in \K[0-9]+'; else pattern='hardened /: .* in \K[0-9]+(?= ms)'; fi
    for _ in $(seq 1 600); do
        logs=$(docker logs "$name" 2>&1)
        if grep -qP "$pattern" <<<"$logs"; then break; fi
        sleep 0.1
    done
    docker rm -f "$name" >/dev/null
    grep -oP "$pattern" <<<"$logs" | head -1
}

find_time() { # IMAGE
    docker run --rm --network none --entrypoint /bin/sh "$1" -c \
        'a=$(date +%s%N); find / -xdev -perm /6000 >/dev/null 2>&1; b=$(date +%s%N); echo $(((b - a) / 1000000))'
}

cells=("shipped|$IMAGE|" "+50k files|$(derived 50000)|" "+200k files|$(derived 200000)|"
    "100k-file workspace|$IMAGE|workspace")
printf '%-22s %12s %12s %14s %14s %10s\n' "" "nnp: agent" "plain: agent" "nnp: pass" "plain: pass" "find"
for cell in "${cells[@]}"; do
    IFS='|' read -r label image mount <<<"$cell"
    to_agent "$image" nnp "$mount" >/dev/null # warm the page cache
    nnp=$(for _ in $(seq "$RUNS"); do to_agent "$image" nnp "$mount"; done | median)
    plain=$(for _ in $(seq "$RUNS"); do to_agent "$image" plain "$mount"; done | median)
    nnp_pass=$(for _ in 1 2 3; do pass_time "$image" nnp "$mount"; done | median)
    plain_pass=$(for _ in 1 2 3; do pass_time "$image" plain "$mount"; done | median)
    found=$(for _ in 1 2 3; do find_time "$image"; done | median)
    printf '%-22s %9s ms %9s ms %11s ms %11s ms %7s ms\n' "$label" "$nnp" "$plain" "$nnp_pass" "$plain_pass" "$found"
done
echo "(medians: agent columns of $RUNS runs, the others of 3; 'plain' is without --security-opt no-new-privileges;"
echo " the workspace pass is the root filesystem and the mount; find covers the root filesystem)"
