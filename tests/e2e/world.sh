#!/bin/sh
# The e2e suite's world container: every host the sandboxes may or may not reach, on one
# internal Docker network. Runs in cordon-test/tools with testkit bind-mounted read-only.
#
#   world.sh OUT P4 P6      e.g. world.sh /out 10.213.7 fd00:e2e:7
#   world.sh OUT P4 -       on an IPv4-only network (no IPv6 address, record or listener)
#
# The container itself is P4.2 / P6::2 (static --ip/--ip6, the sandboxes' DNS server); it adds:
#   P4.3            LAN peer (tcp 22, 80): a neighbour no allowlist names
#   P4.10 P6::ff10  "allowed": every name of the claude and anthropic-devcontainer profiles;
#                   the Messages API mock on :80, a plain TCP listener on :443 (udp 443 echo)
#   P4.20 P6::ff20  "blocked": example.com and *.test names no allowlist names (tcp 80, 443;
#                   udp 443 echo on P4.20)
#   P4.53           a second DNS server, not the sandboxes' resolver
#   P4.11           the Messages API mock over TLS on :443 (certificate for api.anthropic.com
#                   from a test CA: OUT/pki/ca.pem), taking only the credentials listed in
#                   OUT/credentials (one per line): the credential gateway's upstream, for
#                   sandboxes given `--add-host api.anthropic.com:P4.11`
#   P4.2:8080 [P6::2]:8080  listeners on addresses no name resolves to (raw-address probes)
# Logs (OUT/dns.log, listen.log, mock.log) and ready files (OUT/*.ready) land in OUT, a bind mount.
set -eu
out=$1 p4=$2 p6=$3
k=/opt/testkit/testkit

ipv6=true
[ "$p6" = - ] && ipv6=false
for a in 3 10 11 20 53; do ip addr add "$p4.$a/24" dev eth0; done
if $ipv6; then
    for a in ff10 ff20; do ip -6 addr add "$p6::$a/64" dev eth0 nodad; done
fi

allowed="api.anthropic.com claude.ai platform.claude.com registry.npmjs.org sentry.io
statsig.anthropic.com statsig.com marketplace.visualstudio.com vscode.blob.core.windows.net
update.code.visualstudio.com github.com api.github.com codeload.github.com
objects.githubusercontent.com raw.githubusercontent.com allowed.test"
blocked="example.com www.example.com blocked.test evil.test"

set --
for n in $allowed; do
    set -- "$@" --record "$n=$p4.10"
    if $ipv6; then set -- "$@" --record "$n=$p6::ff10"; fi
done
for n in $blocked; do
    set -- "$@" --record "$n=$p4.20"
    if $ipv6; then set -- "$@" --record "$n=$p6::ff20"; fi
done
set -- "$@" --record "lan.test=$p4.3"
# Any name under burst.test: a burst of distinct names at once (the allowed host's address).
set -- "$@" --wildcard "burst.test=$p4.10/32"

pids=
"$k" dns --listen "$p4.2:53" --listen "$p4.53:53" "$@" \
    --query-log "$out/dns.log" --ready-file "$out/dns.ready" &
pids="$pids $!"
set -- --tcp "$p4.10:443" --udp "$p4.10:443" --tcp "$p4.20:80" --tcp "$p4.20:443" --udp "$p4.20:443" \
    --tcp "$p4.3:22" --tcp "$p4.3:80" --tcp "$p4.2:8080"
if $ipv6; then
    set -- "$@" --tcp "[$p6::ff10]:443" --tcp "[$p6::ff20]:443" --tcp "[$p6::ff20]:80" \
        --tcp "[$p6::2]:8080"
fi
"$k" listen "$@" --log "$out/listen.log" --ready-file "$out/listen.ready" &
pids="$pids $!"
"$k" mock-api --listen "$p4.10:80" --reply "cordon-e2e-reply" \
    --log "$out/mock.log" --ready-file "$out/mock4.ready" &
pids="$pids $!"
if $ipv6; then
    "$k" mock-api --listen "[$p6::ff10]:80" --reply "cordon-e2e-reply" \
        --log "$out/mock.log" --ready-file "$out/mock6.ready" &
    pids="$pids $!"
fi

"$k" pki --dir "$out/pki" api.anthropic.com
"$k" mock-api --listen "$p4.11:443" --reply "cordon-e2e-reply" \
    --tls-cert "$out/pki/server.pem" --tls-key "$out/pki/server-key.pem" \
    --expect-credential-file "$out/credentials" \
    --log "$out/mock-tls.log" --ready-file "$out/mock-tls.ready" &
pids="$pids $!"

# PID 1 of the world: end the services on SIGTERM (docker stop / rm -f).
trap 'kill $pids 2>/dev/null; exit 0' TERM INT
wait
