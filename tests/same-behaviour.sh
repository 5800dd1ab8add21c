#!/usr/bin/env bash
# Runs two cordon binaries on a fixed set of inputs and compares what a user sees: stdout, stderr
# and the exit status. For changes that must not change behaviour (moves, renames, refactors).
#
#   sudo tests/same-behaviour.sh OLD_CORDON NEW_CORDON
#
# Nothing here changes this machine: `plan` only reads; every other command runs in a network
# namespace of its own with loopback only (`unshare -n`), where cordon refuses before it changes
# anything, or as an unprivileged user. No packet leaves: `plan` gets address entries only.
set -euo pipefail
old=$(realpath "$1") new=$(realpath "$2")
dir=$(mktemp -d /tmp/cordon-same.XXXXXX)
trap 'rm -rf "$dir"' EXIT
chmod 755 "$dir"

printf 'nameserver 10.0.0.2\nsearch corp.test\n' > "$dir/resolv.conf"
printf 'nameserver 127.0.0.11\noptions ndots:0\n# ExtServers: [192.0.2.53]\n' > "$dir/docker-resolv.conf"
printf 'nameserver 10.0.0.2\nnameserver 2001:db8::53\n' > "$dir/dual-resolv.conf"
printf 'nameserver\n' > "$dir/broken-resolv.conf"
printf '10.1.0.0/16:5432\n# a comment\n192.0.2.7\n' > "$dir/allowlist"
printf '10.1.0.0/16:5432\nnot an entry:\n' > "$dir/bad-allowlist"
printf '10.1.0.0/16:99999\n' > "$dir/bad-port"
printf '\xff\xfe\n' > "$dir/non-utf8"

cases=(
    "--help"
    "--version"
    "plan --help"
    "firewall --help"
    "check --help"
    "harden --help"
    "plan --no-default-profile --allow 10.0.0.1:443 --resolv-conf $dir/resolv.conf"
    "plan --no-default-profile --allow 10.0.0.0/8 --allow [2001:db8::/32]:443,8443 --inbound 8080 --resolv-conf $dir/dual-resolv.conf"
    "plan --no-default-profile --allowlist $dir/allowlist --allow 10.9.0.1:udp/53,8000-8010 --resolv-conf $dir/docker-resolv.conf"
    "plan --no-default-profile --allowlist $dir/bad-allowlist --resolv-conf $dir/resolv.conf"
    "plan --no-default-profile --allowlist $dir/bad-port --resolv-conf $dir/resolv.conf"
    "plan --no-default-profile --allowlist $dir/non-utf8 --resolv-conf $dir/resolv.conf"
    "plan --no-default-profile --allowlist $dir/missing --resolv-conf $dir/resolv.conf"
    "plan --no-default-profile --allow 10.0.0.1 --resolv-conf $dir/broken-resolv.conf"
    "plan --no-default-profile --allow 169.254.169.254 --resolv-conf $dir/resolv.conf"
    "plan --no-default-profile --profile nosuch --resolv-conf $dir/resolv.conf"
    "plan --no-default-profile --allow 10.0.0.1 --iptables-backend other --resolv-conf $dir/resolv.conf"
    "--alow x.test -- true"
    "-weird"
    "--grace x -- true"
    "netns: --exec --signal-group -- true"
    "netns: firewall --no-default-profile --allow 10.0.0.1 --resolv-conf $dir/resolv.conf"
    "netns: --no-default-profile --allow 10.0.0.1 --resolv-conf $dir/resolv.conf -- true"
    "netns: --user nosuchuser --no-default-profile --allow 10.0.0.1 -- true"
    "nobody: firewall --no-default-profile --allow 10.0.0.1"
    "nobody: harden"
    "nobody: --no-default-profile --allow 10.0.0.1 -- true"
)

run() {
    local binary=$1 spec=$2 how=plain
    case $spec in
        netns:*) how=netns spec=${spec#netns: } ;;
        nobody:*) how=nobody spec=${spec#nobody: } ;;
    esac
    # shellcheck disable=SC2086 # the case is a word list
    case $how in
        plain) env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin "$binary" $spec ;;
        netns) env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin unshare -n "$binary" $spec ;;
        nobody) env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin setpriv --reuid 65534 --regid 65534 \
            --clear-groups "$binary" $spec ;;
    esac
}

# Both are called `cordon` (clap prints the name in usage lines).
mkdir "$dir/old" "$dir/new"
cp "$old" "$dir/old/cordon"
cp "$new" "$dir/new/cordon"
differ=0
for spec in "${cases[@]}"; do
    for side in old new; do
        set +e
        run "$dir/$side/cordon" "$spec" >"$dir/$side.out" 2>"$dir/$side.err"
        echo "exit $?" >>"$dir/$side.out"
        set -e
        # The binary's own path and timings are not behaviour.
        sed -i -E "s#$dir/$side/cordon#cordon#g; s/[0-9]+\.[0-9] ms/N ms/g" \
            "$dir/$side.out" "$dir/$side.err"
    done
    diff -u "$dir/old.out" "$dir/new.out" >"$dir/diff" || true
    diff -u "$dir/old.err" "$dir/new.err" >>"$dir/diff" || true
    if [ ! -s "$dir/diff" ]; then
        printf 'same     %s (%s)\n' "$spec" "$(tail -1 "$dir/new.out")"
    else
        printf 'DIFFERS  %s\n' "$spec"
        cat "$dir/diff"
        differ=1
    fi
done
exit $differ
