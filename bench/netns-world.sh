# Sourced by the namespace benches: two network namespaces joined by a veth pair, the world
# (10.NET.0.1, the bench's own DNS server without upstream) and the sandbox (10.NET.0.2, whose
# resolv.conf names it), removed on exit with everything in $work.
#
#   name=bench net=79; source bench/netns-world.sh
#   start_world [testkit dns options...]     # after $testkit is set
#   add_ipv6                                 # fdNET:1::1 / fdNET:1::2, default routes
# Sets: world, sandbox, work.

world=cordon-$name-w
sandbox=cordon-$name-s
work=

cleanup() {
    [ -n "${dns_pid:-}" ] && kill "$dns_pid" 2>/dev/null || true
    ip netns del "$sandbox" 2>/dev/null || true
    ip netns del "$world" 2>/dev/null || true
    rm -rf "/etc/netns/$sandbox" ${work:+"$work"}
}
trap cleanup EXIT
cleanup
work=$(mktemp -d "/tmp/cordon-$name.XXXXXX")

start_world() {
    ip netns add "$world"
    ip netns add "$sandbox"
    ip link add "c$name-w" type veth peer name "c$name-s"
    ip link set "c$name-w" netns "$world"
    ip link set "c$name-s" netns "$sandbox"
    ip -n "$world" addr add "10.$net.0.1/24" dev "c$name-w"
    ip -n "$sandbox" addr add "10.$net.0.2/24" dev "c$name-s"
    for ns in "$world" "$sandbox"; do ip -n "$ns" link set lo up; done
    ip -n "$world" link set "c$name-w" up
    ip -n "$sandbox" link set "c$name-s" up
    ip -n "$sandbox" route add default via "10.$net.0.1"
    mkdir -p "/etc/netns/$sandbox"
    echo "nameserver 10.$net.0.1" > "/etc/netns/$sandbox/resolv.conf"

    ip netns exec "$world" "$testkit" dns --listen "10.$net.0.1:53" "$@" \
        --ready-file "$work/dns.ready" >/dev/null 2>&1 &
    dns_pid=$!
    for _ in $(seq 500); do [ -e "$work/dns.ready" ] && break; sleep 0.01; done
    [ -e "$work/dns.ready" ] || { echo "the bench DNS server did not start" >&2; exit 1; }
}

add_ipv6() {
    ip -n "$world" addr add "fd$net:1::1/64" dev "c$name-w" nodad
    ip -n "$sandbox" addr add "fd$net:1::2/64" dev "c$name-s" nodad
    ip -n "$sandbox" -6 route add default via "fd$net:1::1"
}
