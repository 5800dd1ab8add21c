//! Verify: after loading, prove every verdict class against the kernel, locally, in milliseconds.
//!
//! Each probe is a connection attempt carrying `plan::PROBE_MARK`, made with the agent's uid as
//! the socket owner (the `--uid-owner` rules see it). The ruleset answers a marked packet that it
//! would let out inside the namespace (TCP reset / port unreachable → ECONNREFUSED) and rejects
//! a blocked one with admin-prohibited (EHOSTUNREACH, or EACCES over IPv6). So no probe ever
//! leaves the namespace, no remote host needs to answer, and the two verdicts cannot be confused.
//! The expected verdict of each probe comes from the plan's own model of the rules.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{
    connect, getsockopt, send, setsockopt, socket, sockopt, AddressFamily, MsgFlags, SockFlag,
    SockType, SockaddrStorage,
};

use crate::fence::netinfo::NetInfo;
use crate::fence::plan::{AgentDns, Family, Forwarder, Ruleset, Verdict, PROBE_MARK};
use crate::fence::policy::Proto;

/// How long a probe may take to get its verdict (they arrive in well under a millisecond).
const PROBE_DEADLINE: Duration = Duration::from_secs(1);

/// Addresses for the "not allowed" probes: documentation ranges (RFC 5737, RFC 3849), so even a
/// broken fence would send a probe nowhere real.
const PUBLIC_V4: [Ipv4Addr; 3] = [
    Ipv4Addr::new(203, 0, 113, 1),
    Ipv4Addr::new(198, 51, 100, 1),
    Ipv4Addr::new(192, 0, 2, 1),
];
/// A server that is not the resolver, for `cordon check`'s DNS question.
pub const DNS_ELSEWHERE: Ipv4Addr = DNS_ELSEWHERE_V4[0];
const DNS_ELSEWHERE_V4: [Ipv4Addr; 2] = [
    Ipv4Addr::new(198, 51, 100, 53),
    Ipv4Addr::new(203, 0, 113, 53),
];
const PRIVATE_V4: [Ipv4Addr; 3] = [
    Ipv4Addr::new(10, 254, 254, 254),
    Ipv4Addr::new(172, 31, 254, 254),
    Ipv4Addr::new(192, 168, 254, 254),
];
const METADATA: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
const PUBLIC_V6: [Ipv6Addr; 2] = [
    Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1),
    Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 1),
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub class: &'static str,
    pub dst: SocketAddr,
    pub proto: Proto,
    /// Probe as uid 0 (Docker's DNS forwarder) instead of as the agent.
    pub as_root: bool,
    pub expect: Verdict,
    /// Routing stops this destination before the fence sees it.
    pub unrouted: bool,
}

/// What the kernel did with one probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    /// Reached CORDON_ALLOW and was answered there.
    Allowed,
    /// Rejected by CORDON_REJECT.
    Rejected,
    /// Rejected (ICMP admin-prohibited), but the datagram had left this namespace: something
    /// outside it answered, not this container's fence. Only for unmarked UDP probes, whose
    /// send fails with EPERM when the fence drops them.
    RejectedOutside,
    /// No route: stopped before the fence.
    NoRoute,
    /// No source address for the family (EADDRNOTAVAIL: IPv6 switched off in the namespace):
    /// nothing can be sent at all.
    CannotSend,
    /// Not probed: the socket could not be given the probe's uid (no CAP_SETUID), so whatever
    /// the kernel did would not say what it does for that uid.
    NotAsOwner,
    /// Anything else: a real connection, a timeout, another error.
    Unexpected(&'static str),
}

#[derive(Debug)]
pub struct ProbeResult {
    pub probe: Probe,
    pub observed: Observed,
    pub elapsed: Duration,
}

impl ProbeResult {
    pub fn passed(&self) -> bool {
        match (self.probe.expect, self.observed) {
            (Verdict::Allow, Observed::Allowed) => true,
            (Verdict::Reject, Observed::Rejected) => true,
            // Where IPv6 is off there is no IPv6 route either: the probe is unrouted. A routed
            // destination that cannot be sent to proves nothing about the fence (for IPv4,
            // EADDRNOTAVAIL can mean ephemeral ports the agent used up).
            (_, Observed::NoRoute | Observed::CannotSend) => self.probe.unrouted,
            _ => false,
        }
    }

    pub fn describe(&self) -> String {
        let who = if self.probe.as_root {
            " (as uid 0)"
        } else {
            ""
        };
        let expected = match self.probe.expect {
            Verdict::Allow => "allowed",
            Verdict::Reject => "blocked",
        };
        let observed = match self.observed {
            Observed::Allowed => "allowed",
            Observed::Rejected => "blocked",
            Observed::RejectedOutside => {
                "rejected outside this container, not by its fence: cannot verify the fence as \
                 this user (as root it can be read: docker exec -u root CONTAINER cordon check)"
            }
            Observed::NoRoute => "no route",
            Observed::CannotSend => "cannot send (no source address)",
            Observed::NotAsOwner => {
                "not probed: cannot act as that uid (CAP_SETUID missing: --cap-add SETUID)"
            }
            Observed::Unexpected(what) => what,
        };
        format!(
            "{} {}/{}{who}: expected {expected}, got {observed}",
            self.probe.class,
            self.probe.proto.as_str(),
            self.probe.dst,
        )
    }
}

/// The destinations no allowlist opens unless it names them, as (class, address, protocol,
/// port): `cordon check`, which has no allowlist, probes these (and DNS to another server with
/// a real question: the gateway answers it where nat redirects DNS, see `DNS_ELSEWHERE`).
pub fn unallowed_classes(net: &NetInfo) -> Vec<(&'static str, IpAddr, Proto, u16)> {
    let mut targets = vec![
        ("public address", IpAddr::V4(PUBLIC_V4[0]), Proto::Tcp, 443),
        ("cloud metadata", IpAddr::V4(METADATA), Proto::Tcp, 80),
    ];
    targets.extend(
        net.gateways
            .iter()
            .filter(|g| g.is_ipv4())
            .map(|g| ("gateway", *g, Proto::Tcp, 80)),
    );
    if net.ipv6.in_kernel() {
        // A datagram: a rejected IPv6 SYN fails connect() only on its retransmit (see plan.rs).
        targets.push(("ipv6 address", IpAddr::V6(PUBLIC_V6[0]), Proto::Udp, 443));
    }
    targets
}

/// One probe per verdict class (pure: from the ruleset and what the namespace looks like).
pub fn plan_probes(ruleset: &Ruleset, net: &NetInfo) -> Vec<Probe> {
    let mut probes = Vec::new();
    let mut add = |class: &'static str, addr: IpAddr, proto: Proto, port: u16, as_root: bool| {
        // A rejected IPv6 SYN only fails connect() on its retransmit, a second later (see
        // plan.rs): probe IPv6 rejections with a datagram, which takes the same reject rule.
        let proto = match (addr, ruleset.verdict(as_root, addr, proto, port)) {
            (IpAddr::V6(_), Verdict::Reject) => Proto::Udp,
            _ => proto,
        };
        let routed = net.routes(addr);
        probes.push(Probe {
            class,
            dst: SocketAddr::new(addr, port),
            proto,
            as_root,
            expect: ruleset.verdict(as_root, addr, proto, port),
            unrouted: !routed,
        });
    };

    for family in [Family::V4, Family::V6] {
        let rules = ruleset.family(family);
        for (net_, range) in sample(&rules.ports) {
            add(
                "allowed",
                probe_addr(*net_),
                range.proto,
                range.first,
                false,
            );
        }
        for net_ in sample(&rules.hosts) {
            add("allowed", probe_addr(*net_), Proto::Tcp, 443, false);
        }
        for resolver in &rules.resolvers {
            add("resolver", *resolver, Proto::Udp, 53, false);
        }
        if ruleset.agent_dns != AgentDns::Resolvers {
            // The gateway asks the resolvers as its own uid; root may too.
            for resolver in &rules.resolvers {
                add("resolver", *resolver, Proto::Udp, 53, true);
            }
            // Docker's DNS on a port of its own, which any uid can read from /proc/net/udp.
            for resolver in rules.gateway_only_resolvers() {
                add("resolver's own port", resolver, Proto::Udp, 5300, false);
            }
        }
        if let Some(upstream) = &ruleset.credential_upstream {
            // Open to the credential gateway's uid alone: the agent's own attempt meets what
            // its allowlist says (without an entry of its own for it, a rejection).
            for addr in upstream.addrs.iter().filter(|a| Family::of(a) == family) {
                add(
                    "credential gateway's upstream",
                    *addr,
                    Proto::Tcp,
                    upstream.port,
                    false,
                );
            }
        }
        match &rules.forwarder {
            Forwarder::None => {}
            Forwarder::To(upstreams) => {
                for upstream in upstreams {
                    add("dns forwarder", *upstream, Proto::Udp, 53, true);
                }
            }
            Forwarder::Anywhere if family == Family::V4 => {
                add(
                    "dns forwarder",
                    IpAddr::V4(DNS_ELSEWHERE_V4[0]),
                    Proto::Udp,
                    53,
                    true,
                );
            }
            Forwarder::Anywhere => {}
        }
    }

    let blocked = |candidates: &[IpAddr], proto: Proto, port: u16| -> Option<IpAddr> {
        candidates
            .iter()
            .copied()
            .find(|a| ruleset.verdict(false, *a, proto, port) == Verdict::Reject)
            .or(candidates.first().copied())
    };
    let v4 = |list: &[Ipv4Addr]| list.iter().map(|a| IpAddr::V4(*a)).collect::<Vec<_>>();
    if let Some(addr) = blocked(&v4(&PUBLIC_V4), Proto::Tcp, 443) {
        add("public address", addr, Proto::Tcp, 443, false);
    }
    if let Some(addr) = blocked(&v4(&DNS_ELSEWHERE_V4), Proto::Udp, 53) {
        add("dns to a non-resolver", addr, Proto::Udp, 53, false);
    }
    let private: Vec<IpAddr> = v4(&PRIVATE_V4)
        .into_iter()
        .filter(|a| !net.addrs.iter().any(|n| n.contains(a)))
        .collect();
    if let Some(addr) = blocked(&private, Proto::Tcp, 443) {
        add("private address", addr, Proto::Tcp, 443, false);
    }
    for peer in lan_peers(net) {
        add("lan peer", peer, Proto::Tcp, 22, false);
    }
    for gateway in &net.gateways {
        add("gateway", *gateway, Proto::Tcp, 80, false);
    }
    add(
        "cloud metadata",
        IpAddr::V4(METADATA),
        Proto::Tcp,
        80,
        false,
    );
    if net.ipv6.in_kernel() {
        let v6: Vec<IpAddr> = PUBLIC_V6.iter().map(|a| IpAddr::V6(*a)).collect();
        if let Some(addr) = blocked(&v6, Proto::Tcp, 443) {
            add("ipv6 address", addr, Proto::Tcp, 443, false);
        }
    }
    probes
}

/// First, middle and last element: enough to show the set is loaded and matched by the rule;
/// membership itself is the kernel's business.
fn sample<T>(set: &std::collections::BTreeSet<T>) -> Vec<&T> {
    let items: Vec<&T> = set.iter().collect();
    let mut picked: Vec<&T> = Vec::new();
    for index in [0, items.len() / 2, items.len().saturating_sub(1)] {
        if let Some(item) = items.get(index) {
            if !picked.iter().any(|p| std::ptr::eq(*p, *item)) {
                picked.push(item);
            }
        }
    }
    picked
}

/// An address inside `net` to connect to: the address itself for a host, else the first host.
fn probe_addr(net: IpNet) -> IpAddr {
    if net.prefix_len() + 1 >= net.max_prefix_len() {
        return net.addr();
    }
    net.hosts().next().unwrap_or(net.addr())
}

/// For each IPv4 subnet this namespace sits on, one address that is neither ours nor a gateway.
fn lan_peers(net: &NetInfo) -> Vec<IpAddr> {
    net.addrs
        .iter()
        .filter(|n| n.addr().is_ipv4() && n.prefix_len() < 31)
        .filter_map(|n| {
            n.hosts()
                .take(16)
                .find(|a| *a != n.addr() && !net.gateways.contains(a))
        })
        .collect()
}

/// Runs every probe at once and collects the verdicts. Unmarked probes (`cordon check` as a
/// non-root user) can only show rejections: an allowed one would really leave.
pub fn run_probes(probes: Vec<Probe>, agent_uid: u32, marked: bool) -> Vec<ProbeResult> {
    let started = Instant::now();
    let mut pending: Vec<(Probe, Result<Sent, Observed>)> = probes
        .into_iter()
        .map(|probe| {
            let socket = open_probe(&probe, agent_uid, marked);
            (probe, socket)
        })
        .collect();

    let mut results: Vec<ProbeResult> = Vec::new();
    let deadline = started + PROBE_DEADLINE;
    loop {
        let mut waiting: Vec<(Probe, Sent)> = Vec::new();
        for (probe, socket) in pending.drain(..) {
            match socket {
                Err(observed) => results.push(ProbeResult {
                    probe,
                    observed,
                    elapsed: started.elapsed(),
                }),
                Ok(sent) => waiting.push((probe, sent)),
            }
        }
        if waiting.is_empty() {
            break;
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            results.extend(waiting.into_iter().map(|(probe, _)| ProbeResult {
                probe,
                observed: Observed::Unexpected("no verdict within 1 s"),
                elapsed: started.elapsed(),
            }));
            break;
        }
        let ready: Vec<bool> = {
            let mut fds: Vec<PollFd> = waiting
                .iter()
                .map(|(probe, sent)| {
                    let wanted = match probe.proto {
                        Proto::Tcp => PollFlags::POLLOUT,
                        Proto::Udp => PollFlags::POLLIN,
                    };
                    PollFd::new(sent.fd.as_fd(), wanted)
                })
                .collect();
            let timeout = PollTimeout::try_from(remaining.as_millis().max(1) as u64)
                .unwrap_or(PollTimeout::MAX);
            let _ = nix::poll::poll(&mut fds, timeout);
            fds.iter()
                .map(|fd| fd.revents().is_some_and(|r| !r.is_empty()))
                .collect()
        };
        for ((probe, sent), is_ready) in waiting.into_iter().zip(ready) {
            match is_ready.then(|| settle(&probe, &sent.fd)).flatten() {
                Some(Observed::Rejected) if sent.left => results.push(ProbeResult {
                    probe,
                    observed: Observed::RejectedOutside,
                    elapsed: started.elapsed(),
                }),
                Some(observed) => results.push(ProbeResult {
                    probe,
                    observed,
                    elapsed: started.elapsed(),
                }),
                None => pending.push((probe, Ok(sent))),
            }
        }
    }
    results
}

/// A probe on its way: its socket, and whether its datagram left the namespace (an unmarked UDP
/// probe whose send the fence did not refuse).
struct Sent {
    fd: OwnedFd,
    left: bool,
}

/// Creates the probe's socket (owned by the agent's uid unless it probes as root), marks it and
/// starts the connection. An immediate verdict comes back as `Err`.
fn open_probe(probe: &Probe, agent_uid: u32, marked: bool) -> Result<Sent, Observed> {
    let family = match probe.dst {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let kind = match probe.proto {
        Proto::Tcp => SockType::Stream,
        Proto::Udp => SockType::Datagram,
    };
    let owner = if probe.as_root { 0 } else { agent_uid };
    // The owner match reads the credentials the socket was created with.
    let created = crate::sys::caps::with_fsuid(owner, || {
        socket(
            family,
            kind,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            None,
        )
    })
    .ok_or(Observed::NotAsOwner);
    let fd = created?.map_err(|e| Observed::Unexpected(e.desc()))?;
    if marked {
        setsockopt(&fd, sockopt::Mark, &PROBE_MARK).map_err(|e| Observed::Unexpected(e.desc()))?;
    }

    let addr = SockaddrStorage::from(probe.dst);
    match connect(fd.as_raw_fd(), &addr) {
        Ok(()) | Err(Errno::EINPROGRESS) => {}
        Err(errno) => return Err(classify(errno)),
    }
    let mut left = false;
    if probe.proto == Proto::Udp {
        // A filtered datagram fails the send with EPERM whatever the verdict; the verdict itself
        // arrives as the socket error the ICMP answer sets. A send that succeeds let the
        // datagram out of the namespace (marked probes never leave: the fence answers them).
        match send(fd.as_raw_fd(), b"cordon-probe", MsgFlags::empty()) {
            Ok(_) => left = !marked,
            Err(Errno::EPERM) => {}
            Err(errno) => return Err(classify(errno)),
        }
    }
    Ok(Sent { fd, left })
}

/// The verdict of a probe whose socket became ready, or `None` to keep waiting.
fn settle(probe: &Probe, fd: &OwnedFd) -> Option<Observed> {
    match getsockopt(fd, sockopt::SocketError) {
        Ok(0) => match probe.proto {
            Proto::Tcp => Some(Observed::Unexpected(
                "connected (the packet left the namespace)",
            )),
            // A datagram from the peer can be a late answer to an earlier query that used the
            // same port; the probe's own verdict is the socket error still to come.
            Proto::Udp => {
                let mut discard = [0u8; 512];
                let _ =
                    nix::sys::socket::recv(fd.as_raw_fd(), &mut discard, MsgFlags::MSG_DONTWAIT);
                None
            }
        },
        Ok(errno) => Some(classify(Errno::from_raw(errno))),
        Err(errno) => Some(Observed::Unexpected(errno.desc())),
    }
}

fn classify(errno: Errno) -> Observed {
    match errno {
        Errno::ECONNREFUSED => Observed::Allowed,
        // IPv4 admin-prohibited maps to EHOSTUNREACH, ICMPv6 adm-prohibited to EACCES.
        Errno::EHOSTUNREACH | Errno::EACCES => Observed::Rejected,
        Errno::ENETUNREACH => Observed::NoRoute,
        Errno::EADDRNOTAVAIL => Observed::CannotSend,
        other => Observed::Unexpected(other.desc()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Location;
    use crate::fence::netinfo::Ipv6;
    use crate::fence::plan::plan;
    use crate::fence::policy::{parse_entry, Entry, Policy};
    use crate::fence::resolv_conf;
    use crate::fence::resolve::{NameAddrs, Outcome, Resolution};

    fn ruleset(entries: &[&str], resolv: &str) -> Ruleset {
        let policy = Policy {
            entries: entries
                .iter()
                .map(|t| {
                    let (target, ports) = parse_entry(t).unwrap();
                    Entry {
                        target,
                        ports,
                        origin: Location::new("test", None),
                    }
                })
                .collect(),
            ..Policy::default()
        };
        let resolution = Resolution {
            names: vec![NameAddrs {
                name: "api.example.test".into(),
                addrs: vec![
                    "192.0.2.10".parse().unwrap(),
                    "2001:db8::10".parse().unwrap(),
                ],
                outcome: Outcome::Resolved,
                refused: vec![],
            }],
            elapsed: Duration::ZERO,
        };
        plan(
            &policy,
            &resolution,
            &resolv_conf::parse(resolv, "r").unwrap(),
        )
        .unwrap()
    }

    fn container_net() -> NetInfo {
        NetInfo {
            addrs: vec!["172.18.0.5/16".parse().unwrap()],
            gateways: vec!["172.18.0.1".parse().unwrap()],
            ipv6: Ipv6::On,
        }
    }

    fn classes(probes: &[Probe]) -> Vec<String> {
        probes
            .iter()
            .map(|p| {
                format!(
                    "{} {}/{} {:?}{}{}",
                    p.class,
                    p.proto.as_str(),
                    p.dst,
                    p.expect,
                    if p.as_root { " root" } else { "" },
                    if p.unrouted { " unrouted" } else { "" }
                )
            })
            .collect()
    }

    #[test]
    fn every_verdict_class_is_probed() {
        let probes = plan_probes(
            &ruleset(&["api.example.test"], "nameserver 127.0.0.11\n"),
            &container_net(),
        );
        assert_eq!(
            classes(&probes),
            [
                "allowed tcp/192.0.2.10:80 Allow",
                "allowed tcp/192.0.2.10:443 Allow",
                "resolver udp/127.0.0.11:53 Allow",
                "dns forwarder udp/198.51.100.53:53 Allow root",
                "allowed tcp/[2001:db8::10]:80 Allow unrouted",
                "allowed tcp/[2001:db8::10]:443 Allow unrouted",
                "public address tcp/203.0.113.1:443 Reject",
                "dns to a non-resolver udp/198.51.100.53:53 Reject",
                "private address tcp/10.254.254.254:443 Reject",
                "lan peer tcp/172.18.0.2:22 Reject",
                "gateway tcp/172.18.0.1:80 Reject",
                "cloud metadata tcp/169.254.169.254:80 Reject",
                "ipv6 address udp/[2001:db8::1]:443 Reject unrouted",
            ]
        );
    }

    /// The credential gateway's upstream is probed as the agent: rejected (an IPv6 rejection
    /// with a datagram, as every one).
    #[test]
    fn the_credential_gateways_upstream_is_probed_as_the_agent() {
        let upstream = crate::fence::plan::CredentialUpstream {
            uid: 65054,
            port: 443,
            addrs: vec![
                "203.0.113.7".parse().unwrap(),
                "2001:db8::7".parse().unwrap(),
            ],
            agent_too: false,
        };
        let probes = plan_probes(
            &ruleset(&["api.example.test"], "nameserver 127.0.0.11\n")
                .with_credential_upstream(upstream),
            &container_net(),
        );
        let upstream: Vec<String> = classes(&probes)
            .into_iter()
            .filter(|class| class.starts_with("credential"))
            .collect();
        assert_eq!(
            upstream,
            [
                "credential gateway's upstream tcp/203.0.113.7:443 Reject",
                "credential gateway's upstream udp/[2001:db8::7]:443 Reject unrouted",
            ]
        );
    }

    #[test]
    fn with_the_dns_gateway_the_agents_dns_is_redirected_and_dockers_own_port_closed() {
        let gateway = AgentDns::Gateway {
            uid: 65053,
            port: 10053,
        };
        let probes = plan_probes(
            &ruleset(&["10.1.0.0/16:5432"], "nameserver 127.0.0.11\n").with_agent_dns(gateway),
            &container_net(),
        );
        let dns: Vec<String> = classes(&probes)
            .into_iter()
            .filter(|class| class.contains(":53 ") || class.contains("own port"))
            .collect();
        assert_eq!(
            dns,
            [
                "resolver udp/127.0.0.11:53 Allow",
                "resolver udp/127.0.0.11:53 Allow root",
                "resolver's own port udp/127.0.0.11:5300 Reject",
                "dns forwarder udp/198.51.100.53:53 Allow root",
                // Redirected to the gateway.
                "dns to a non-resolver udp/198.51.100.53:53 Allow",
            ]
        );
    }

    #[test]
    fn an_entry_that_names_the_gateway_flips_its_expectation() {
        let probes = plan_probes(
            &ruleset(
                &["172.18.0.1:80", "203.0.113.1:443"],
                "nameserver 10.0.0.2\n",
            ),
            &container_net(),
        );
        let gateway = probes.iter().find(|p| p.class == "gateway").unwrap();
        assert_eq!(gateway.expect, Verdict::Allow);
        let public = probes.iter().find(|p| p.class == "public address").unwrap();
        assert_eq!(
            public.dst.ip(),
            "198.51.100.1".parse::<IpAddr>().unwrap(),
            "skips the allowed candidate"
        );
        assert_eq!(public.expect, Verdict::Reject);
    }

    #[test]
    fn outcomes_pass_only_on_the_expected_verdict() {
        let probe = |expect, unrouted| Probe {
            class: "x",
            dst: "192.0.2.1:443".parse().unwrap(),
            proto: Proto::Tcp,
            as_root: false,
            expect,
            unrouted,
        };
        let result = |probe, observed| ProbeResult {
            probe,
            observed,
            elapsed: Duration::ZERO,
        };
        assert!(result(probe(Verdict::Allow, false), Observed::Allowed).passed());
        assert!(!result(probe(Verdict::Allow, false), Observed::Rejected).passed());
        assert!(result(probe(Verdict::Reject, false), Observed::Rejected).passed());
        assert!(!result(
            probe(Verdict::Reject, false),
            Observed::Unexpected("connected")
        )
        .passed());
        assert!(!result(probe(Verdict::Reject, false), Observed::NoRoute).passed());
        assert!(result(probe(Verdict::Reject, true), Observed::NoRoute).passed());
        // IPv6 switched off: no route and no source address, nothing can be sent at all. Only
        // an unrouted destination may fail that way.
        assert!(result(probe(Verdict::Reject, true), Observed::CannotSend).passed());
        assert!(result(probe(Verdict::Allow, true), Observed::CannotSend).passed());
        assert!(!result(probe(Verdict::Reject, false), Observed::CannotSend).passed());
        assert!(!result(probe(Verdict::Allow, false), Observed::CannotSend).passed());
    }
}
