#!/usr/bin/env bash
# Build the local Debian bookworm base images the Docker tests use instead of a registry.
#
#   eval "$(tests/docker/base-image.sh)"   # sets BASE_IMAGE and TOOLS_IMAGE
#
# BASE_IMAGE  (cordon-test/base:bookworm)  stands in for node:22-slim: debootstrap minbase plus
#             exactly what the public Dockerfile installs (ca-certificates iptables ipset), and a
#             `node` user/group 1000:1000 with home /home/node as in the official node images.
#             Nothing else, so a test cannot pass only because the test base has a tool that
#             node:22-slim lacks. The Dockerfile's apt step is then a no-op (offline build).
# TOOLS_IMAGE (cordon-test/tools:bookworm) is the same plus debugging/network tools, sudo and a
#             DNS server: for the "world" container, probes, and the drop-in devcontainer test.
#
# Cached: each image carries the label org.cordon.test.base-hash (a hash of every input: suite,
# mirror, package lists, the build and import steps) and is skipped when it matches. The root
# filesystem tarballs are kept under .cache/base-image/ (gitignored) so re-importing is fast, and
# downloaded .debs under .cache/base-image/debs. Needs root (debootstrap). Quiet unless failing.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CACHE=${CORDON_CACHE:-$ROOT/.cache}/base-image

SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
BASE_IMAGE=${BASE_IMAGE:-cordon-test/base:bookworm}
TOOLS_IMAGE=${TOOLS_IMAGE:-cordon-test/tools:bookworm}
BASE_PKGS=ca-certificates,iptables,ipset,passwd
TOOLS_PKGS=$BASE_PKGS,procps,sudo,iproute2,iputils-ping,netcat-openbsd,dnsmasq-base,bind9-dnsutils,curl,less
LABEL=org.cordon.test.base-hash

log() { printf 'base-image: %s\n' "$*" >&2; }

# shellcheck source=tests/docker/ensure-docker.sh
. "$HERE/ensure-docker.sh"

if [ "$(id -u)" != 0 ]; then
    log "needs root (debootstrap, chroot)"
    exit 1
fi

image_hash() {
    "$DOCKER" image inspect -f "{{index .Config.Labels \"$LABEL\"}}" "$1" 2>/dev/null || true
}

ensure_debootstrap() {
    command -v debootstrap >/dev/null 2>&1 && return 0
    export DEBIAN_FRONTEND=noninteractive
    { apt-get install -y -qq debootstrap || { apt-get update -qq && apt-get install -y -qq debootstrap; }; } \
        >/tmp/base-image-apt.log 2>&1 || {
        log "apt-get install debootstrap failed; see /tmp/base-image-apt.log"
        exit 1
    }
}

# build_rootfs NAME PACKAGES TARBALL
build_rootfs() {
    local name=$1 pkgs=$2 tarball=$3 dir
    ensure_debootstrap
    mkdir -p "$CACHE/debs"
    dir=$(mktemp -d "$CACHE/rootfs-$name.XXXXXX")
    # shellcheck disable=SC2064
    trap "rm -rf '$dir'" EXIT
    if ! debootstrap --variant=minbase --include="$pkgs" --cache-dir="$CACHE/debs" \
        "$SUITE" "$dir" "$MIRROR" >"$CACHE/debootstrap-$name.log" 2>&1; then
        log "debootstrap failed; last lines of $CACHE/debootstrap-$name.log:"
        tail -n 30 "$CACHE/debootstrap-$name.log" >&2
        exit 1
    fi
    # The node user of the official node images (groupadd --gid 1000 node && useradd --uid 1000
    # --gid node --shell /bin/bash --create-home node).
    chroot "$dir" groupadd --gid 1000 node
    chroot "$dir" useradd --uid 1000 --gid node --shell /bin/bash --create-home node
    cat >"$dir/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb http://deb.debian.org/debian-security $SUITE-security main
EOF
    # Docker provides these at run time; keep the image free of the host's.
    : >"$dir/etc/resolv.conf"
    : >"$dir/etc/hostname"
    rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/* "$dir"/var/log/*.log \
        "$dir"/tmp/* "$dir"/var/tmp/*
    rm -f "$tarball".tmp
    tar --numeric-owner --xattrs -C "$dir" -cf "$tarball".tmp .
    mv "$tarball".tmp "$tarball"
    rm -rf "$dir"
    trap - EXIT
}

# ensure_image NAME IMAGE PACKAGES
ensure_image() {
    local name=$1 image=$2 pkgs=$3 tarball
    if [ "$(image_hash "$image")" = "$HASH" ]; then
        return 0
    fi
    tarball=$CACHE/$name-$SUITE-$HASH.tar
    if [ ! -s "$tarball" ]; then
        mkdir -p "$CACHE"
        # Drop stale tarballs of earlier versions of this script.
        rm -f "$CACHE/$name-$SUITE-"*.tar
        build_rootfs "$name" "$pkgs" "$tarball"
    fi
    "$DOCKER" import \
        --change "LABEL $LABEL=$HASH" \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["bash"]' \
        "$tarball" "$image" >/dev/null
}

# The cache key: every input of the images (not this file's comments).
HASH=$(printf '%s\n' "$SUITE" "$MIRROR" "$BASE_PKGS" "$TOOLS_PKGS" "$(uname -m)" \
    "$(declare -f build_rootfs)" "$(declare -f ensure_image)" | sha256sum | cut -c1-16)

# One builder at a time (parallel test jobs share the cache and the image names).
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9

ensure_image base "$BASE_IMAGE" "$BASE_PKGS"
ensure_image tools "$TOOLS_IMAGE" "$TOOLS_PKGS"

printf 'BASE_IMAGE=%q\nTOOLS_IMAGE=%q\n' "$BASE_IMAGE" "$TOOLS_IMAGE"
