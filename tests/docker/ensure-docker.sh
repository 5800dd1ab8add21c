#!/usr/bin/env bash
# Make sure a Docker engine answers and pick a client that can BuildKit-build.
#
#   eval "$(tests/docker/ensure-docker.sh)"    # sets DOCKER, exports DOCKER_BUILDKIT=1
#   . tests/docker/ensure-docker.sh            # same, plus the shell function `dk`
#   "$DOCKER" build ...   or   dk build ...
#
# - Installs docker.io with apt when no dockerd is installed (a fresh Debian CI machine).
# - Starts dockerd in the background (log: /var/log/cordon-dockerd.log) when `docker info` fails,
#   and waits until it answers (DOCKER_WAIT seconds, default 60).
# - Chooses the client: one with a working buildx plugin, or a pre-23 client whose `build` still
#   talks to the daemon's built-in BuildKit when DOCKER_BUILDKIT=1. A 23+ client without buildx
#   (e.g. /usr/local/bin/docker 28.x here, first on PATH) cannot BuildKit-build, and the classic
#   builder cannot build offline (it does not skip unused stages), so it is never chosen.
#   DOCKER=/path/to/docker in the environment overrides the choice (still checked).
# Quiet unless something fails; as a script it prints only the two assignment lines.
set -euo pipefail

_ed_log() { printf 'ensure-docker: %s\n' "$*" >&2; }

_ed_need_root() {
    if [ "$(id -u)" != 0 ]; then
        _ed_log "$1 needs root"
        return 1
    fi
}

_ed_install() {
    _ed_need_root "installing docker.io" || return 1
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -qq --no-install-recommends docker.io iptables ca-certificates >/tmp/ensure-docker-apt.log 2>&1; then
        apt-get update -qq >>/tmp/ensure-docker-apt.log 2>&1 || true
        apt-get install -y -qq --no-install-recommends docker.io iptables ca-certificates >>/tmp/ensure-docker-apt.log 2>&1 || {
            _ed_log "apt-get install docker.io failed; see /tmp/ensure-docker-apt.log"
            tail -n 20 /tmp/ensure-docker-apt.log >&2
            return 1
        }
    fi
}

# Major version of a client binary (client only; does not need the daemon).
_ed_client_major() {
    local v
    v=$("$1" version --format '{{.Client.Version}}' 2>/dev/null || true)
    v=${v%%.*}
    case "$v" in '' | *[!0-9]*) echo 0 ;; *) echo "$v" ;; esac
}

_ed_client_ok() {
    local c=$1
    [ -x "$c" ] || return 1
    if "$c" buildx version >/dev/null 2>&1; then
        return 0
    fi
    local major
    major=$(_ed_client_major "$c")
    [ "$major" -ge 17 ] && [ "$major" -lt 23 ]
}

_ed_pick_client() {
    if [ -n "${DOCKER:-}" ]; then
        if _ed_client_ok "$DOCKER"; then
            echo "$DOCKER"
            return 0
        fi
        _ed_log "DOCKER=$DOCKER cannot BuildKit-build (no buildx, client >= 23); choosing another"
    fi
    local c seen=" "
    for c in /usr/bin/docker $(type -ap docker 2>/dev/null || true); do
        c=$(readlink -f "$c" 2>/dev/null || echo "$c")
        case "$seen" in *" $c "*) continue ;; esac
        seen="$seen$c "
        if _ed_client_ok "$c"; then
            echo "$c"
            return 0
        fi
    done
    return 1
}

_ed_start_daemon() {
    local docker=$1 wait=${DOCKER_WAIT:-60} i
    if "$docker" info >/dev/null 2>&1; then
        return 0
    fi
    _ed_need_root "starting dockerd" || return 1
    if ! pgrep -x dockerd >/dev/null 2>&1; then
        local dockerd
        dockerd=$(command -v dockerd || echo /usr/sbin/dockerd)
        # setsid + nohup: the daemon outlives this script and the CI step that ran it.
        setsid nohup "$dockerd" >>/var/log/cordon-dockerd.log 2>&1 </dev/null &
    fi
    for ((i = 0; i < wait * 4; i++)); do
        if "$docker" info >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.25
    done
    _ed_log "dockerd did not answer within ${wait}s; last lines of /var/log/cordon-dockerd.log:"
    tail -n 20 /var/log/cordon-dockerd.log >&2 2>/dev/null || true
    return 1
}

ensure_docker() {
    if ! command -v dockerd >/dev/null 2>&1 && [ ! -x /usr/sbin/dockerd ] && [ ! -x /usr/bin/dockerd ]; then
        _ed_install || return 1
    fi
    local client
    if ! client=$(_ed_pick_client); then
        # dockerd exists but no usable client (only a 23+ client without buildx): Debian's
        # docker.io brings the 20.10 client as /usr/bin/docker.
        _ed_install || return 1
        client=$(_ed_pick_client) || {
            _ed_log "no docker client that can BuildKit-build (need buildx, or a client older than 23)"
            return 1
        }
    fi
    _ed_start_daemon "$client" || return 1
    DOCKER=$client
    DOCKER_BUILDKIT=1
    export DOCKER DOCKER_BUILDKIT
}

# `dk ARGS...`: the chosen client with BuildKit on.
dk() { DOCKER_BUILDKIT=1 "$DOCKER" "$@"; }

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    ensure_docker
    printf 'DOCKER=%q\nexport DOCKER_BUILDKIT=1\n' "$DOCKER"
else
    ensure_docker
fi
