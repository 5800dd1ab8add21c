#!/usr/bin/env bash
# Podman, rootful and rootless, for the e2e suite's Podman cells. Needs root.
#
#   tests/docker/podman.sh IMAGE...
#
# - Installs podman (Debian 12: 4.3) with apt when it is missing, with what rootless needs
#   (uidmap, slirp4netns, netavark, aardvark-dns).
# - Rootless: a user `cordon-podman` with subordinate ids, its runtime directory, native overlay
#   storage (the vfs fallback gives a root directory the container's non-root users cannot
#   search), and /dev/net/tun usable by it (slirp4netns opens it as that user; on this machine
#   kind it is 0600 root).
# - Loads each IMAGE from Docker into both stores (once per image ID) and removes this suite's
#   older images from them.
# Prints PODMAN=..., ROOTLESS_USER=..., ROOTLESS_UID=..., ROOTLESS_GID=..., ROOTLESS_HOME=...
#
# Every podman call of the suite passes `--runtime runc` (crun refuses this machine's hybrid
# cgroup layout) and small --ulimit values: root here lacks CAP_SYS_RESOURCE, and Podman's
# rootful defaults raise RLIMIT_NPROC/NOFILE above what conmon was started with.
set -euo pipefail

log() { printf 'podman.sh: %s\n' "$*" >&2; }
[ "$(id -u)" = 0 ] || { log "needs root"; exit 1; }

if ! command -v podman >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends podman uidmap slirp4netns netavark \
        aardvark-dns >/tmp/podman-apt.log 2>&1 || {
        log "apt-get install podman failed; see /tmp/podman-apt.log"
        tail -n 20 /tmp/podman-apt.log >&2
        exit 1
    }
fi
PODMAN=$(command -v podman)

user=cordon-podman
if ! id "$user" >/dev/null 2>&1; then
    useradd --create-home --shell /bin/sh "$user"
fi
uid=$(id -u "$user")
gid=$(id -g "$user")
home=$(getent passwd "$user" | cut -d: -f6)
grep -q "^$user:" /etc/subuid || usermod --add-subuids 300000-365535 "$user"
grep -q "^$user:" /etc/subgid || usermod --add-subgids 300000-365535 "$user"
install -d -m 0700 -o "$uid" -g "$gid" "/run/user/$uid"
install -d -o "$uid" -g "$gid" "$home/.config" "$home/.config/containers"
printf '[storage]\ndriver = "overlay"\n' >"$home/.config/containers/storage.conf"
chown "$uid:$gid" "$home/.config/containers/storage.conf"
if ! setpriv --reuid "$uid" --regid "$gid" --init-groups test -r /dev/net/tun -a -w /dev/net/tun; then
    chmod 0666 /dev/net/tun
fi

rootless() {
    (cd "$home" && setpriv --reuid "$uid" --regid "$gid" --init-groups \
        env HOME="$home" XDG_RUNTIME_DIR="/run/user/$uid" "$PODMAN" --log-level=error "$@")
}
rootful() { "$PODMAN" --log-level=error "$@"; }

for image in "$@"; do
    id=$(docker image inspect -f '{{.Id}}' "$image")
    for store in rootful rootless; do
        have=$($store image inspect -f '{{.Id}}' "localhost/$image" 2>/dev/null || true)
        if [ "sha256:$have" != "$id" ] && [ "$have" != "$id" ]; then
            docker save "$image" | $store load -q >/dev/null
            log "loaded $image into the $store store"
        fi
    done
done
# Older images of this suite (tagged by the cordon binary's hash).
for store in rootful rootless; do
    for old in $($store images --format '{{.Repository}}:{{.Tag}}' | grep '^localhost/cordon-test/' || true); do
        keep=0
        for image in "$@"; do [ "$old" = "localhost/$image" ] && keep=1; done
        [ "$keep" = 1 ] || $store rmi -f "$old" >/dev/null 2>&1 || true
    done
done

# Leftovers of killed test runs: containers and networks named cde-PID-pN (with the host FORWARD
# rule of a rootful one, tagged with the same name) whose test process is gone.
dead() { local pid=${1#cde-}; pid=${pid%%-*}; [ -n "$pid" ] && [ ! -d "/proc/$pid" ]; }
for store in rootful rootless; do
    for name in $($store ps -a --format '{{.Names}}' | grep '^cde-[0-9]*-p' || true); do
        dead "$name" && $store rm -f -t 0 "$name" >/dev/null 2>&1 || true
    done
    for name in $($store network ls --format '{{.Name}}' | grep '^cde-[0-9]*-p' || true); do
        dead "$name" && $store network rm -f "$name" >/dev/null 2>&1 || true
    done
done
{ iptables -S FORWARD | grep -- '--comment "\{0,1\}cde-[0-9]*-p' || true; } | while read -r _ rule; do
    name=$(printf '%s\n' "$rule" | sed -n 's/.*--comment "\{0,1\}\(cde-[0-9]*-p[0-9]*\).*/\1/p')
    if [ -n "$name" ] && dead "$name"; then
        eval "iptables -D $rule" || true
    fi
done

printf 'PODMAN=%s\nROOTLESS_USER=%s\nROOTLESS_UID=%s\nROOTLESS_GID=%s\nROOTLESS_HOME=%s\n' \
    "$PODMAN" "$user" "$uid" "$gid" "$home"
