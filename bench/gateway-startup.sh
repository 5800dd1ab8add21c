#!/usr/bin/env bash
# `docker run` → the agent's first instruction with the DNS gateway (the default), at 0 and at
# 1,000 allowlisted names, against the same container without cordon (`--entrypoint date`: the
# no-firewall baseline) and with `--dns static` at 0 names. Containers run with
# `--security-opt no-new-privileges` (harden runs beside the agent, so the figures are the fence
# and the gateway), on an --internal network with Docker's embedded DNS; the gateway resolves
# nothing at start, so no DNS server is needed.
#
#   sudo bench/gateway-startup.sh [RUNS]      (RUNS rounds, default 9; medians are printed)
#
# Offline, like the tests: the image is built by tests/docker/build-image.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-9}

eval "$(tests/docker/ensure-docker.sh)" # DOCKER: a client with BuildKit
eval "$(tests/docker/build-image.sh)"
docker() { "$DOCKER" "$@"; }
NET=cordon-bench-gateway
work=$(mktemp -d /tmp/cordon-bench-gateway.XXXXXX)
chmod 755 "$work"
docker network rm "$NET" >/dev/null 2>&1 || true
docker network create --internal "$NET" >/dev/null
trap 'docker network rm "$NET" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT

seq 1 1000 | sed 's/^/name/; s/$/.bench.test/' > "$work/1000"
chmod 644 "$work/1000"
# Every cell mounts the 1,000-name file (only the last reads it), so mounts cost the same.
COMMON=(--rm --network "$NET" --security-opt no-new-privileges --cap-add NET_ADMIN --cap-add NET_RAW
    -v "$work/1000:/opt/bench/1000:ro")

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# docker run ARGS... → ms until the agent's first instruction (`date +%s%N` in the container).
to_agent() {
    local t0 t1
    t0=$(date +%s%N)
    t1=$(docker run "$@" 2>/dev/null | tail -1)
    echo $(((t1 - t0) / 1000000))
}

# The cells, run in rounds (each round runs every cell once, so a slower moment of the machine
# hits all of them); per cell the median and the median of its per-round difference from the
# baseline.
labels=("no firewall (--entrypoint date)" "cordon --dns static, 0 names"
    "cordon (DNS gateway), 0 names" "cordon (DNS gateway), 1,000 names")
run_cell() { # INDEX
    case $1 in
    0) to_agent "${COMMON[@]}" --entrypoint date "$IMAGE" +%s%N ;;
    1) to_agent "${COMMON[@]}" "$IMAGE" -q --dns static --no-default-profile -- date +%s%N ;;
    2) to_agent "${COMMON[@]}" "$IMAGE" -q --no-default-profile -- date +%s%N ;;
    3) to_agent "${COMMON[@]}" "$IMAGE" -q --no-default-profile --allowlist /opt/bench/1000 \
        -- date +%s%N ;;
    esac
}
for cell in 0 1 2 3; do run_cell "$cell" >/dev/null; done # warm-up
for round in $(seq "$RUNS"); do
    for cell in 0 1 2 3; do echo "$round $cell $(run_cell "$cell")"; done
done > "$work/times"

echo "docker run → agent's first instruction, medians of $RUNS rounds:"
for cell in 0 1 2 3; do
    times=$(awk -v c="$cell" '$2 == c {print $3}' "$work/times")
    over=$(awk -v c="$cell" '$2 == 0 {base[$1] = $3} $2 == c {print $3 - base[$1]}' "$work/times")
    printf '%-36s %5s ms  %+5s ms over the baseline   (runs: %s)\n' "${labels[$cell]}" \
        "$(median <<<"$times")" "$(median <<<"$over")" "$(tr '\n' ' ' <<<"$times")"
done
echo "one start with the gateway and 1,000 names, cordon's own report:"
docker run "${COMMON[@]}" "$IMAGE" --no-default-profile --allowlist /opt/bench/1000 -- true 2>&1 |
    grep -E 'fence ready|DNS gateway'
