#!/usr/bin/env bash
# Internal Docker networks for the tests, isolated for IPv6 too.
#
#   tests/docker/test-net.sh create NAME [--ipv6] [--subnet CIDR]... [-- EXTRA docker network create ARGS]
#   tests/docker/test-net.sh rm NAME
#
# Why: on Docker 20.10 without `"ip6tables": true` (the default), `docker network create
# --internal --ipv6` installs the IPv4 isolation rules only. The host forwards the network's IPv6
# traffic like any other (measured here: a container on one internal network reached a container
# on another one over IPv6, and `ip -6 route get` sends anything else out of the host's uplink).
# So `create --ipv6` adds two host ip6tables FORWARD rules that drop everything entering or
# leaving the network's bridge except bridge-internal traffic (what Docker does for IPv4), and
# `rm` removes them. Rules are tagged with the comment "cordon-test:NAME".
# Idempotent: `create` on an existing network only (re)checks the rules; `rm` of a missing one is
# a no-op. Needs root for ip6tables. Quiet unless failing.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/docker/ensure-docker.sh
. "$HERE/ensure-docker.sh"

die() {
    printf 'test-net: %s\n' "$*" >&2
    exit 1
}

bridge_of() {
    local id
    id=$("$DOCKER" network inspect -f '{{.Id}}' "$1" 2>/dev/null) || return 1
    local name
    name=$("$DOCKER" network inspect -f '{{index .Options "com.docker.network.bridge.name"}}' "$1")
    if [ -n "$name" ] && [ "$name" != "<no value>" ]; then
        echo "$name"
    else
        echo "br-${id:0:12}"
    fi
}

rules() { # rules add|del BRIDGE NAME
    local action=$1 br=$2 name=$3
    local spec1=(-i "$br" ! -o "$br" -m comment --comment "cordon-test:$name" -j DROP)
    local spec2=(-o "$br" ! -i "$br" -m comment --comment "cordon-test:$name" -j DROP)
    case "$action" in
    add)
        ip6tables -w -C FORWARD "${spec1[@]}" 2>/dev/null || ip6tables -w -I FORWARD 1 "${spec1[@]}"
        ip6tables -w -C FORWARD "${spec2[@]}" 2>/dev/null || ip6tables -w -I FORWARD 1 "${spec2[@]}"
        ;;
    del)
        while ip6tables -w -D FORWARD "${spec1[@]}" 2>/dev/null; do :; done
        while ip6tables -w -D FORWARD "${spec2[@]}" 2>/dev/null; do :; done
        ;;
    esac
}

cmd=${1:-}
name=${2:-}
if [ -z "$cmd" ] || [ -z "$name" ]; then die "usage: test-net.sh create NAME [--ipv6] [--subnet CIDR]... | rm NAME"; fi
shift 2

case "$cmd" in
create)
    ipv6=0
    create_args=(--internal)
    while [ $# -gt 0 ]; do
        case "$1" in
        --ipv6) ipv6=1; create_args+=(--ipv6); shift ;;
        --subnet) create_args+=(--subnet "$2"); shift 2 ;;
        --) shift; create_args+=("$@"); break ;;
        *) die "unknown argument $1" ;;
        esac
    done
    if ! "$DOCKER" network inspect "$name" >/dev/null 2>&1; then
        "$DOCKER" network create "${create_args[@]}" "$name" >/dev/null
    fi
    [ "$("$DOCKER" network inspect -f '{{.Internal}}' "$name")" = true ] || die "network $name exists and is not internal"
    if [ "$ipv6" = 1 ] || [ "$("$DOCKER" network inspect -f '{{.EnableIPv6}}' "$name")" = true ]; then
        command -v ip6tables >/dev/null 2>&1 || die "ip6tables is missing (apt-get install iptables)"
        br=$(bridge_of "$name") || die "cannot inspect network $name"
        rules add "$br" "$name"
    fi
    ;;
rm)
    # Network first: if it cannot go (containers still attached), its rules must stay.
    if br=$(bridge_of "$name"); then
        "$DOCKER" network rm "$name" >/dev/null
        if command -v ip6tables >/dev/null 2>&1; then rules del "$br" "$name"; fi
    fi
    ;;
*) die "unknown command $cmd" ;;
esac
