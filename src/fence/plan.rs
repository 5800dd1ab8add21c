//! Plan (pure): policy + resolved addresses + resolvers → the ruleset for IPv4 and IPv6, rendered
//! as `ipset restore` and `iptables-restore` input. No syscalls here: everything is unit- and
//! snapshot-tested.
//!
//! Layout, per family, in the filter table (and, with the DNS gateway, one chain of cordon's own
//! in nat; Docker's rules there are never touched):
//!
//! ```text
//! nat OUTPUT → CORDON_DNS (gateway mode, first rule): uid 0 and the gateway's uid pass; every
//!     other uid's DNS (udp/tcp 53, to any address) is redirected to the gateway on loopback
//! OUTPUT (policy DROP) → CORDON_OUTPUT: [gateway mode: a loopback resolver (Docker's 127.0.0.11,
//!     on any port) only for uid 0 and the gateway; DNS redirected to the gateway]; loopback;
//!     established/related; DNS to the resolvers [gateway mode: from uid 0 and the gateway
//!     only];
//!     [DNS from uid 0 to the embedded forwarder's upstreams]; set cordonN-ports (addr, proto,
//!     port); set cordonN-hosts (addr, any port); everything else → CORDON_REJECT
//! INPUT  (policy DROP) → CORDON_INPUT: loopback; established/related; [--inbound ports]; reject
//! CORDON_ALLOW: the verifier's marked probes are answered locally here, all else accepted
//! CORDON_REJECT: REJECT (TCP reset; icmp admin-prohibited for the rest and for marked probes),
//!     so a blocked connect fails at once
//! ```

use std::collections::BTreeSet;
use std::fmt::Write;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::error::{Error, Location, Result};
use crate::fence::policy::{Policy, PortRange, Ports, Proto, Target};
use crate::fence::resolv_conf::{ForwarderUpstreams, ResolvConf};
use crate::fence::resolve::Resolution;

pub const CHAIN_INPUT: &str = "CORDON_INPUT";
pub const CHAIN_OUTPUT: &str = "CORDON_OUTPUT";
pub const CHAIN_ALLOW: &str = "CORDON_ALLOW";
pub const CHAIN_REJECT: &str = "CORDON_REJECT";
/// cordon's chain in the nat table: the agent's DNS to the gateway.
pub const CHAIN_DNS: &str = "CORDON_DNS";

/// SO_MARK carried by the verifier's probes ("cord"). Setting a mark needs CAP_NET_ADMIN, so the
/// agent cannot produce it; a marked packet that reaches CORDON_ALLOW is answered locally and
/// never leaves the namespace.
pub const PROBE_MARK: u32 = 0x636f_7264;

/// Upper bound on set elements (ipset's maxelem); fixed so that re-creating a set is idempotent.
pub const MAX_SET_ELEMENTS: usize = 1 << 20;
/// The most set elements an allowlist may expand to, per family: loading them takes about 2 s
/// and reading them back (see `record`) about 1 s, well inside the firewall tools' time bound.
/// A million (ipset's maxelem) would take about 23 s to load.
pub const MAX_ALLOWLIST_ELEMENTS: usize = 1 << 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(addr: &IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    fn digit(self) -> char {
        match self {
            Family::V4 => '4',
            Family::V6 => '6',
        }
    }

    pub fn ports_set(self) -> String {
        format!("cordon{}-ports", self.digit())
    }

    pub fn hosts_set(self) -> String {
        format!("cordon{}-hosts", self.digit())
    }

    /// The iptables command of this family (`iptables`, `ip6tables`): tools are named after it.
    pub fn iptables(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }

    /// The resolvers (address, protocol, port 53) whose answers to cordon's own start-up
    /// queries CORDON_INPUT accepts without conntrack; empty but while names resolve.
    pub fn resolvers_set(self) -> String {
        format!("cordon{}-resolvers", self.digit())
    }

    /// (address, protocol, port) the DNS gateway opened from an answer, each for its TTL
    /// (`ipset` timeouts); empty in static mode.
    pub fn answered_ports_set(self) -> &'static str {
        match self {
            Family::V4 => "cordon4-answered",
            Family::V6 => "cordon6-answered",
        }
    }

    /// Addresses the DNS gateway opened on every port (a name entry without ports), each for its
    /// TTL; empty in static mode.
    pub fn answered_hosts_set(self) -> &'static str {
        match self {
            Family::V4 => "cordon4-answered-any",
            Family::V6 => "cordon6-answered-any",
        }
    }

    /// Every set cordon loads for this family.
    pub fn sets(self) -> [String; 5] {
        [
            self.ports_set(),
            self.hosts_set(),
            self.resolvers_set(),
            self.answered_ports_set().into(),
            self.answered_hosts_set().into(),
        ]
    }

    fn ipset_family(self) -> &'static str {
        match self {
            Family::V4 => "inet",
            Family::V6 => "inet6",
        }
    }

    fn reject_admin(self) -> &'static str {
        match self {
            Family::V4 => "icmp-admin-prohibited",
            Family::V6 => "icmp6-adm-prohibited",
        }
    }

    fn reject_port(self) -> &'static str {
        match self {
            Family::V4 => "icmp-port-unreachable",
            Family::V6 => "icmp6-port-unreachable",
        }
    }
}

/// Where uid 0 may send DNS besides the resolvers (Docker's embedded forwarder).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Forwarder {
    None,
    To(Vec<IpAddr>),
    Anywhere,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FamilyRules {
    pub family: Family,
    pub resolvers: Vec<IpAddr>,
    pub forwarder: Forwarder,
    /// Elements of the `hash:net,port` set.
    pub ports: BTreeSet<(IpNet, PortRange)>,
    /// Elements of the `hash:net` set (every port and protocol).
    pub hosts: BTreeSet<IpNet>,
}

/// Each live set's name and members, as `ipset save` prints them.
pub type SetMembers = Vec<(String, BTreeSet<String>)>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruleset {
    pub v4: FamilyRules,
    pub v6: FamilyRules,
    pub inbound: Vec<PortRange>,
    /// The connection mark of flows this policy accepted (see `flow_mark`).
    pub flow_mark: u32,
    pub agent_dns: AgentDns,
    pub credential_upstream: Option<CredentialUpstream>,
}

/// The credential gateway's way out: its `uid` reaches `addrs` on TCP `port` and nothing else
/// beyond loopback. Every other uid's connections there are rejected, whatever else would open
/// them (another name answered with the same address, a network entry), unless `agent_too`: an
/// entry of the user's names the upstream itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialUpstream {
    pub uid: u32,
    pub port: u16,
    pub addrs: Vec<IpAddr>,
    pub agent_too: bool,
}

/// Where the DNS of every uid but root goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentDns {
    /// To the resolvers (static mode: the names were resolved once, at start).
    Resolvers,
    /// Redirected to cordon's DNS gateway, which runs as `uid` and listens on loopback at
    /// `port`; only it and root reach the resolvers.
    Gateway { uid: u32, port: u16 },
}

/// Where `CORDON_DNS` stands in a family's nat OUTPUT chain, read before loading: its jump must
/// be the chain's first rule (before Docker's DNAT of 127.0.0.11), exactly once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatHook {
    /// OUTPUT's first rule is the jump, and no other rule is.
    First,
    /// The jump is not there (`count` 0) or not only first (`count` jumps somewhere).
    Misplaced { count: usize },
}

impl NatHook {
    /// Reads an `iptables-save -t nat` text.
    pub fn read(saved: &str) -> NatHook {
        let jump = format!("-A OUTPUT -j {CHAIN_DNS}");
        let output: Vec<&str> = saved
            .lines()
            .map(str::trim)
            .filter(|line| line.starts_with("-A OUTPUT "))
            .collect();
        let count = output.iter().filter(|line| **line == jump).count();
        if count == 1 && output.first() == Some(&jump.as_str()) {
            NatHook::First
        } else {
            NatHook::Misplaced { count }
        }
    }
}

/// What the ruleset does with one connection attempt; mirrors the rendered rule order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Reject,
}

pub fn plan(policy: &Policy, resolution: &Resolution, conf: &ResolvConf) -> Result<Ruleset> {
    let (v4, v6) = (
        FamilyRules::new(Family::V4, conf),
        FamilyRules::new(Family::V6, conf),
    );
    let mut ruleset = Ruleset {
        flow_mark: flow_mark(policy, &v4, &v6),
        v4,
        v6,
        inbound: policy.inbound.clone(),
        agent_dns: AgentDns::Resolvers,
        credential_upstream: None,
    };
    let resolved = resolution.index();
    for entry in &policy.entries {
        let nets: Vec<IpNet> = match &entry.target {
            Target::Net(net) => vec![*net],
            Target::Name(name) => resolved
                .get(name.as_str())
                .map_or(&[][..], |found| &found.addrs)
                .iter()
                .map(|addr| IpNet::from(*addr))
                .collect(),
            Target::Wildcard(_) => Vec::new(),
        };
        for net in nets {
            let rules = ruleset.family_mut(Family::of(&net.addr()));
            match &entry.ports {
                Ports::Any => {
                    rules.hosts.insert(net);
                }
                Ports::Listed(ranges) => {
                    for range in ranges {
                        rules.ports.insert((net, *range));
                    }
                }
            }
        }
    }
    for rules in [&ruleset.v4, &ruleset.v6] {
        let elements = rules.port_elements() + rules.hosts.len();
        if elements > MAX_ALLOWLIST_ELEMENTS {
            return Err(Error::bad_input(
                Location::new("allowlist", None),
                format!(
                    "the {} entries expand to {elements} set elements (at most \
                     {MAX_ALLOWLIST_ELEMENTS}); use networks or fewer port ranges",
                    rules.family.name()
                ),
            ));
        }
    }
    Ok(ruleset)
}

/// Established flows skip the verdict rules only if this policy accepted them: CORDON_ALLOW marks
/// each flow it lets through with this connection mark. A flow opened before the fence (the
/// drop-in runs after the container started) or accepted under another policy carries no or
/// another mark, so its next packet is judged like a new one, and a blocked one is rejected at
/// once (TCP with a reset). The mark is a hash of what the policy says, without the addresses
/// names resolve to: the same allowlist applied again keeps live flows on the fast path, a
/// changed one judges every flow again (allowed flows are marked anew and go on).
fn flow_mark(policy: &Policy, v4: &FamilyRules, v6: &FamilyRules) -> u32 {
    let entries: Vec<_> = policy
        .entries
        .iter()
        .map(|entry| (&entry.target, &entry.ports))
        .collect();
    let text = format!("{entries:?}{:?}{v4:?}{v6:?}", policy.inbound);
    fnv1a(&text).max(1)
}

/// FNV-1a: stable across builds and platforms (std's hashers are not).
fn fnv1a(text: &str) -> u32 {
    text.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

impl FamilyRules {
    fn new(family: Family, conf: &ResolvConf) -> Self {
        let in_family = |addrs: &[IpAddr]| -> Vec<IpAddr> {
            addrs
                .iter()
                .filter(|a| Family::of(a) == family)
                .copied()
                .collect()
        };
        let forwarder = match conf.forwarder_upstreams() {
            ForwarderUpstreams::None => Forwarder::None,
            ForwarderUpstreams::Unknown => Forwarder::Anywhere,
            ForwarderUpstreams::Listed(addrs) => match in_family(&addrs) {
                listed if listed.is_empty() => Forwarder::None,
                listed => Forwarder::To(listed),
            },
        };
        FamilyRules {
            family,
            resolvers: in_family(&conf.nameservers),
            forwarder,
            ports: BTreeSet::new(),
            hosts: BTreeSet::new(),
        }
    }

    /// Loopback resolvers other than the gateway's own address (Docker's 127.0.0.11): the
    /// resolver listens there on ports other than 53 too, which any uid can read from
    /// /proc/net/udp. With the gateway, only root and the gateway may reach them.
    pub fn gateway_only_resolvers(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.resolvers
            .iter()
            .copied()
            .filter(|addr| addr.is_loopback() && *addr != gateway_listen_addr(Family::of(addr)))
    }

    /// Number of kernel set elements of the ports set (a port range is one element per port).
    pub fn port_elements(&self) -> usize {
        self.ports
            .iter()
            .map(|(net, range)| set_nets(*net).len() * (usize::from(range.last - range.first) + 1))
            .sum()
    }

    /// The verdict for a new connection from a process of the given uid class (root, or the
    /// agent).
    pub fn verdict(
        &self,
        agent_dns: AgentDns,
        as_root: bool,
        dst: IpAddr,
        proto: Proto,
        port: u16,
    ) -> Verdict {
        let dns = port == 53 && matches!(proto, Proto::Udp | Proto::Tcp);
        if let AgentDns::Gateway { .. } = agent_dns {
            if !as_root && dns {
                // Redirected to the gateway, on loopback.
                return Verdict::Allow;
            }
            if !as_root && self.gateway_only_resolvers().any(|r| r == dst) {
                return Verdict::Reject;
            }
        }
        let resolvers_open_to_all = agent_dns == AgentDns::Resolvers || as_root;
        let allowed = dst.is_loopback()
            || (dns && resolvers_open_to_all && self.resolvers.contains(&dst))
            || (dns
                && as_root
                && match &self.forwarder {
                    Forwarder::None => false,
                    Forwarder::To(upstreams) => upstreams.contains(&dst),
                    Forwarder::Anywhere => true,
                })
            || self
                .ports
                .iter()
                .any(|(net, range)| net.contains(&dst) && range.contains(proto, port))
            || self.hosts.iter().any(|net| net.contains(&dst));
        if allowed {
            Verdict::Allow
        } else {
            Verdict::Reject
        }
    }
}

impl Ruleset {
    pub fn family(&self, family: Family) -> &FamilyRules {
        match family {
            Family::V4 => &self.v4,
            Family::V6 => &self.v6,
        }
    }

    fn family_mut(&mut self, family: Family) -> &mut FamilyRules {
        match family {
            Family::V4 => &mut self.v4,
            Family::V6 => &mut self.v6,
        }
    }

    pub fn verdict(&self, as_root: bool, dst: IpAddr, proto: Proto, port: u16) -> Verdict {
        if let Some(upstream) = &self.credential_upstream {
            if !upstream.agent_too
                && proto == Proto::Tcp
                && port == upstream.port
                && upstream.addrs.contains(&dst)
            {
                return Verdict::Reject;
            }
        }
        self.family(Family::of(&dst))
            .verdict(self.agent_dns, as_root, dst, proto, port)
    }

    /// This ruleset with the credential gateway's upstream (its flows are marked as this
    /// policy's only if the same upstream is planned again).
    pub fn with_credential_upstream(self, upstream: CredentialUpstream) -> Ruleset {
        let flow_mark = fnv1a(&format!("{:x}{upstream:?}", self.flow_mark)).max(1);
        Ruleset {
            flow_mark,
            credential_upstream: Some(upstream),
            ..self
        }
    }

    /// This ruleset with the agent's DNS going to the gateway.
    pub fn with_agent_dns(self, agent_dns: AgentDns) -> Ruleset {
        Ruleset { agent_dns, ..self }
    }

    /// `ipset restore` input (run with `-exist`) that creates the live sets if missing and leaves
    /// existing ones as they are: the rules refer to them, so they must exist first.
    pub fn ipset_create(&self) -> String {
        let mut out = String::new();
        for rules in [&self.v4, &self.v6] {
            let family = rules.family;
            for (name, kind) in set_kinds(family) {
                let _ = writeln!(out, "create {name} {}", set_options(kind, family));
            }
            for member in resolver_members(rules) {
                let _ = writeln!(out, "add {} {member}", family.resolvers_set());
            }
        }
        out
    }

    /// `ipset restore` input (run with `-exist`): each set is filled under a temporary name and
    /// swapped in, so a live set changes in one step. Protocols are written as numbers (6, 17):
    /// ipset reads /etc/protocols for every element that names one, 5x slower at 4,000 elements.
    pub fn ipset_restore(&self) -> String {
        let mut out = String::new();
        for rules in [&self.v4, &self.v6] {
            let family = rules.family;
            let ports: Vec<String> = rules
                .ports
                .iter()
                .flat_map(|(net, range)| {
                    set_nets(*net).into_iter().map(move |net| {
                        format!(
                            "{},{}:{}",
                            set_net(net),
                            range.proto.number(),
                            port_text(range)
                        )
                    })
                })
                .collect();
            let hosts: Vec<String> = rules
                .hosts
                .iter()
                .flat_map(|net| set_nets(*net).into_iter().map(set_net))
                .collect();
            write_set(
                &mut out,
                &family.ports_set(),
                "hash:net,port",
                family,
                &ports,
            );
            write_set(&mut out, &family.hosts_set(), "hash:net", family, &hosts);
            // The names have resolved: from here on answers to cordon's queries ride conntrack.
            let _ = writeln!(out, "flush {}", family.resolvers_set());
        }
        out
    }

    /// The members of each live set as `ipset save` prints them: one per port of a range, the
    /// protocol by name, a single address without its prefix length.
    pub fn set_members(&self) -> SetMembers {
        let mut sets = Vec::new();
        for rules in [&self.v4, &self.v6] {
            let ports = rules
                .ports
                .iter()
                .flat_map(|(net, range)| port_members(*net, *range))
                .collect();
            let hosts = rules
                .hosts
                .iter()
                .flat_map(|net| host_members(*net))
                .collect();
            sets.push((rules.family.ports_set(), ports));
            sets.push((rules.family.hosts_set(), hosts));
            sets.push((rules.family.resolvers_set(), BTreeSet::new()));
            // Static mode: nothing answers, so nothing is opened by an answer. With the gateway
            // they change with every answer and are not held to a plan.
            if self.agent_dns == AgentDns::Resolvers {
                sets.push((rules.family.answered_ports_set().into(), BTreeSet::new()));
                sets.push((rules.family.answered_hosts_set().into(), BTreeSet::new()));
            }
        }
        sets
    }

    /// `iptables-restore --noflush` (or `ip6tables-restore`) input for one family. Loaded in one
    /// transaction: the chains are rebuilt and re-linked atomically.
    pub fn iptables_restore(&self, family: Family) -> String {
        let mut lines = vec![
            format!(
                "# cordon {} ruleset ({}-restore --noflush)",
                family.name(),
                family.iptables()
            ),
            "*filter".to_string(),
            ":INPUT DROP [0:0]".to_string(),
            ":OUTPUT DROP [0:0]".to_string(),
        ];
        for chain in [CHAIN_INPUT, CHAIN_OUTPUT, CHAIN_ALLOW, CHAIN_REJECT] {
            lines.push(format!(":{chain} - [0:0]"));
        }
        lines.extend([
            "-F INPUT".to_string(),
            "-F OUTPUT".to_string(),
            format!("-A INPUT -j {CHAIN_INPUT}"),
            output_hook(),
        ]);
        lines.extend(
            self.input_chain(family)
                .map(|rule| format!("-A {CHAIN_INPUT} {rule}")),
        );
        lines.extend(
            self.output_chain(family)
                .map(|rule| format!("-A {CHAIN_OUTPUT} {rule}")),
        );
        lines.push(output_last_rule());
        lines.extend(allow_chain(family, self.flow_mark));
        lines.extend(
            self.reject_chain(family)
                .map(|rule| format!("-A {CHAIN_REJECT} {rule}")),
        );
        lines.push("COMMIT".to_string());
        lines.join("\n") + "\n"
    }

    /// `iptables-restore --noflush` input for the family's nat table: cordon's own chain, hooked
    /// first into OUTPUT as `hook` requires; empty in static mode. Docker's rules stay as they
    /// are (nat is never flushed).
    pub fn nat_restore(&self, family: Family, hook: NatHook) -> String {
        let AgentDns::Gateway { uid, port } = self.agent_dns else {
            return String::new();
        };
        let mut lines = vec![
            format!(
                "# cordon {} DNS redirect ({}-restore --noflush)",
                family.name(),
                family.iptables()
            ),
            "*nat".to_string(),
            format!(":{CHAIN_DNS} - [0:0]"),
        ];
        if let NatHook::Misplaced { count } = hook {
            lines.extend((0..count).map(|_| format!("-D OUTPUT -j {CHAIN_DNS}")));
            lines.push(format!("-I OUTPUT 1 -j {CHAIN_DNS}"));
        }
        lines.extend([
            format!("-A {CHAIN_DNS} -m owner --uid-owner 0 -j RETURN"),
            format!("-A {CHAIN_DNS} -m owner --uid-owner {uid} -j RETURN"),
        ]);
        for proto in ["udp", "tcp"] {
            lines.push(format!(
                "-A {CHAIN_DNS} -p {proto} -m {proto} --dport 53 -j REDIRECT --to-ports {port}"
            ));
        }
        lines.push("COMMIT".to_string());
        lines.join("\n") + "\n"
    }

    fn input_chain(&self, family: Family) -> impl Iterator<Item = String> {
        let mut chain = vec![
            "-i lo -j ACCEPT".to_string(),
            "-m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT".to_string(),
        ];
        // Answers to cordon's own queries, which may have left before conntrack was active in
        // this namespace (the rules load while names resolve, and a namespace without any rule
        // that needs conntrack tracks nothing): conntrack takes such an answer for a new flow.
        // The set holds the resolvers only while the names resolve (`ipset_create` fills it,
        // `ipset_restore` empties it), so no packet that merely claims to come from a
        // resolver's port 53 reaches the agent's listeners.
        chain.push(format!(
            "-m set --match-set {} src,src -j ACCEPT",
            family.resolvers_set()
        ));
        if family == Family::V6 {
            chain.extend(
                NEIGHBOUR_DISCOVERY_IN
                    .iter()
                    .map(|kind| neighbour_discovery(kind)),
            );
        }
        // Through CORDON_ALLOW, which marks the flow: the replies leave on the fast path.
        for range in &self.inbound {
            chain.push(format!("{} -j {CHAIN_ALLOW}", port_match(range)));
        }
        chain.push(format!("-j REJECT --reject-with {}", family.reject_admin()));
        chain.into_iter()
    }

    fn output_chain(&self, family: Family) -> impl Iterator<Item = String> {
        let rules = self.family(family);
        let mut chain = Vec::new();
        // Only these uids may send DNS to the resolvers themselves.
        let resolver_owners: Vec<String> = match self.agent_dns {
            AgentDns::Resolvers => vec![String::new()],
            AgentDns::Gateway { uid, .. } => [0, uid]
                .iter()
                .map(|uid| format!(" -m owner --uid-owner {uid}"))
                .collect(),
        };
        if let AgentDns::Gateway { .. } = self.agent_dns {
            for resolver in rules.gateway_only_resolvers() {
                let dst = host_net(resolver);
                for owner in &resolver_owners {
                    chain.push(format!("-d {dst} -o lo{owner} -j {CHAIN_ALLOW}"));
                }
                chain.push(format!("-d {dst} -o lo -j {CHAIN_REJECT}"));
                // Nor may anyone else speak from it. Docker's resolver listens on a port of its
                // own and leaves port 53 of its address free, which any uid may bind in a
                // container: from there the agent could answer the gateway's upstream socket
                // (which trusts its peer's address), or open a tracked flow that the gateway's
                // next question to port 53 would join, skipping Docker's DNAT, and become its
                // upstream. As for the gateway's port, TCP is held at the SYN-ACK.
                for (proto, only) in [("udp", ""), ("tcp", " --tcp-flags SYN,ACK SYN,ACK")] {
                    let from = format!("-s {dst} -o lo -p {proto} -m {proto}{only}");
                    for owner in &resolver_owners {
                        chain.push(format!("{from}{owner} -j {CHAIN_ALLOW}"));
                    }
                    chain.push(format!("{from} -j {CHAIN_REJECT}"));
                }
            }
        }
        if let AgentDns::Gateway { port, .. } = self.agent_dns {
            // DNS that nat redirected to the gateway: filter OUTPUT still sees the interface the
            // packet was first routed to (`-o lo` does not match it), and its new destination.
            let gateway = host_net(gateway_listen_addr(family));
            for proto in ["udp", "tcp"] {
                chain.push(format!(
                    "-d {gateway} -p {proto} -m {proto} --dport {port} -j {CHAIN_ALLOW}"
                ));
            }
        }
        if let AgentDns::Gateway { port, .. } = self.agent_dns {
            // Answers from the gateway's port come from the gateway only (its sockets are
            // root's, bound before it starts; or its own uid's). Where its port is free (the
            // drop-in's daemon died), a server the agent binds there gets the redirected
            // questions, but its answers (over TCP: its SYN-ACK) go nowhere. Other TCP packets
            // are left alone: a closed connection's last ACK has no socket to own it.
            for (proto, only) in [("udp", ""), ("tcp", " --tcp-flags SYN,ACK SYN,ACK")] {
                let from = format!("-o lo -p {proto} -m {proto} --sport {port}{only}");
                for owner in &resolver_owners {
                    chain.push(format!("{from}{owner} -j {CHAIN_ALLOW}"));
                }
                chain.push(format!("{from} -j {CHAIN_REJECT}"));
            }
        }
        if let AgentDns::Gateway { uid, .. } = self.agent_dns {
            // nat redirects every other uid's DNS to the gateway, so a datagram of theirs that
            // still goes to port 53 here joined a flow tracked before: one of a gateway that
            // died (its port is free then, and readable in /proc/net/udp), of root's, or of
            // Docker's forwarder. Those flows are marked as accepted, so the shortcut below
            // would let it through to a real server. (Only in a flow's original direction: the
            // agent may answer a client of its own whose port is 53.) Over TCP a SYN on a
            // closed flow mostly starts a new, redirected one, but one on a half-open or
            // half-closed flow does not; SYNs only, as a closed socket's last segments have no
            // owner to match.
            let others = format!("-m owner ! --uid-owner 0 -m owner ! --uid-owner {uid}");
            chain.extend([
                format!(
                    "-p udp -m udp --dport 53 -m conntrack --ctdir ORIGINAL {others} \
                     -j {CHAIN_REJECT}"
                ),
                format!(
                    "-p tcp -m tcp --dport 53 --tcp-flags FIN,SYN,RST,ACK SYN {others} \
                     -j {CHAIN_REJECT}"
                ),
            ]);
        }
        chain.extend([
            format!("-o lo -j {CHAIN_ALLOW}"),
            // Only flows this policy accepted take this shortcut (see `flow_mark`). Probes never
            // do: a probe's source port may match a flow cordon's own DNS queries just used, and
            // it must still reach the verdict rules.
            format!(
                "-m conntrack --ctstate ESTABLISHED -m connmark --mark {:#x} -m mark ! --mark \
                 {PROBE_MARK:#x} -j ACCEPT",
                self.flow_mark
            ),
            // ICMP errors about packets that came in, e.g. CORDON_INPUT's rejections, whose
            // flows no policy accepted.
            format!("-m conntrack --ctstate RELATED -m mark ! --mark {PROBE_MARK:#x} -j ACCEPT"),
        ]);
        if family == Family::V6 {
            // Neighbour discovery never leaves the link (hop limit 255) and only the kernel sends
            // it: without it IPv6 cannot reach even an allowed address. MLDv2 reports (type 143)
            // are rejected: they carry group addresses any process can choose (by joining a
            // group) to the link, a covert channel, and neighbour discovery works without them
            // on Docker's bridges (verified by the dual-stack end-to-end tests).
            chain.extend(
                NEIGHBOUR_DISCOVERY_OUT
                    .iter()
                    .map(|kind| neighbour_discovery(kind)),
            );
        }
        if let Some(upstream) = &self.credential_upstream {
            let owner = format!("-m owner --uid-owner {}", upstream.uid);
            for addr in upstream.addrs.iter().filter(|a| Family::of(a) == family) {
                let to = format!(
                    "-d {} -p tcp -m tcp --dport {}",
                    host_net(*addr),
                    upstream.port
                );
                chain.push(format!("{to} {owner} -j {CHAIN_ALLOW}"));
                if !upstream.agent_too {
                    chain.push(format!("{to} -j {CHAIN_REJECT}"));
                }
            }
            chain.push(format!("{owner} -j {CHAIN_REJECT}"));
        }
        for resolver in &rules.resolvers {
            for proto in ["udp", "tcp"] {
                for owner in &resolver_owners {
                    chain.push(format!(
                        "-d {} -p {proto} -m {proto} --dport 53{owner} -j {CHAIN_ALLOW}",
                        host_net(*resolver)
                    ));
                }
            }
        }
        let forwarder_targets: Vec<Option<IpAddr>> = match &rules.forwarder {
            Forwarder::None => Vec::new(),
            Forwarder::Anywhere => vec![None],
            Forwarder::To(addrs) => addrs.iter().copied().map(Some).collect(),
        };
        for target in forwarder_targets {
            let dst = target
                .map(|a| format!("-d {} ", host_net(a)))
                .unwrap_or_default();
            for proto in ["udp", "tcp"] {
                chain.push(format!(
                    "{dst}-p {proto} -m {proto} --dport 53 -m owner --uid-owner 0 -j {CHAIN_ALLOW}"
                ));
            }
        }
        chain.extend([
            format!(
                "-m set --match-set {} dst,dst -j {CHAIN_ALLOW}",
                family.ports_set()
            ),
            format!(
                "-m set --match-set {} dst -j {CHAIN_ALLOW}",
                family.hosts_set()
            ),
            format!(
                "-m set --match-set {} dst,dst -j {CHAIN_ALLOW}",
                family.answered_ports_set()
            ),
            format!(
                "-m set --match-set {} dst -j {CHAIN_ALLOW}",
                family.answered_hosts_set()
            ),
        ]);
        chain.into_iter()
    }
}

/// Where the gateway listens: loopback, where nat's REDIRECT sends the agent's DNS.
pub fn gateway_listen_addr(family: Family) -> IpAddr {
    match family {
        Family::V4 => IpAddr::from([127, 0, 0, 1]),
        Family::V6 => IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
    }
}

/// OUTPUT's one rule: everything goes through cordon's chain first.
pub fn output_hook() -> String {
    format!("-A OUTPUT -j {CHAIN_OUTPUT}")
}

/// CORDON_OUTPUT's last rule: what no earlier rule accepted is rejected.
pub fn output_last_rule() -> String {
    format!("-A {CHAIN_OUTPUT} -j {CHAIN_REJECT}")
}

/// CORDON_ALLOW's last rule, which counts every accepted packet.
pub fn allow_accept_rule() -> String {
    format!("-A {CHAIN_ALLOW} -j ACCEPT")
}

/// The verifier's marked probes are answered here, inside the namespace; all else is marked as
/// accepted by this policy (`flow_mark`) and accepted. Not a RELATED packet: a rejection's ICMP
/// error or reset goes to this host over loopback carrying the rejected flow's conntrack entry,
/// and marking it would let the rejected flow (one from before the fence, with replies) take the
/// fast path from its next packet on.
fn allow_chain(family: Family, flow_mark: u32) -> impl Iterator<Item = String> {
    [
        format!("-p tcp -m mark --mark {PROBE_MARK:#x} -j REJECT --reject-with tcp-reset"),
        format!(
            "-m mark --mark {PROBE_MARK:#x} -j REJECT --reject-with {}",
            family.reject_port()
        ),
        format!("-m conntrack ! --ctstate RELATED -j CONNMARK --set-mark {flow_mark:#x}"),
    ]
    .into_iter()
    .map(|rule| format!("-A {CHAIN_ALLOW} {rule}"))
    .chain([allow_accept_rule()])
}

impl Ruleset {
    /// An ICMP error for a SYN arrives while connect() holds the socket and only fails a
    /// blocking connect on the retransmit a second later (both families, measured); a reset
    /// fails it at once. Marked probes keep the ICMP answer so the verifier can tell a rejection
    /// from CORDON_ALLOW's reset. With the gateway, each rejected packet's headers first go to
    /// its block log (NFLOG; at most 20 a second, bursts of 100), probes excepted.
    fn reject_chain(&self, family: Family) -> impl Iterator<Item = String> {
        let log = match self.agent_dns {
            AgentDns::Gateway { .. } => Some(format!(
                "-m mark ! --mark {PROBE_MARK:#x} -m limit --limit 20/sec --limit-burst 100 -j \
                 NFLOG --nflog-group {} --nflog-size 64",
                crate::sys::nflog::GROUP
            )),
            AgentDns::Resolvers => None,
        };
        log.into_iter().chain([
            format!("-p tcp -m mark ! --mark {PROBE_MARK:#x} -j REJECT --reject-with tcp-reset"),
            format!("-j REJECT --reject-with {}", family.reject_admin()),
        ])
    }
}

const NEIGHBOUR_DISCOVERY_IN: [&str; 3] = [
    "router-advertisement",
    "neighbour-solicitation",
    "neighbour-advertisement",
];
const NEIGHBOUR_DISCOVERY_OUT: [&str; 3] = [
    "router-solicitation",
    "neighbour-solicitation",
    "neighbour-advertisement",
];

fn neighbour_discovery(kind: &str) -> String {
    format!("-p ipv6-icmp -m icmp6 --icmpv6-type {kind} -m hl --hl-eq 255 -j ACCEPT")
}

/// The fallback when applying or verifying fails: nothing leaves but loopback — and DNS from
/// uid 0, so that the next start of cordon (and Docker's embedded forwarder) can still resolve
/// names and replace the lockdown. The agent never runs as uid 0.
pub fn lockdown_restore(family: Family) -> String {
    let mut out = String::from("# cordon lockdown: deny all egress but loopback and root's DNS\n");
    out.push_str("*filter\n:OUTPUT DROP [0:0]\n-F OUTPUT\n-A OUTPUT -o lo -j ACCEPT\n");
    for proto in ["udp", "tcp"] {
        let _ = writeln!(
            out,
            "-A OUTPUT -p {proto} -m {proto} --dport 53 -m owner --uid-owner 0 -j ACCEPT"
        );
    }
    let _ = writeln!(
        out,
        "-A OUTPUT -j REJECT --reject-with {}",
        family.reject_admin()
    );
    out.push_str("COMMIT\n");
    out
}

/// Each set's name and `ipset create` type and options (after the family).
fn set_kinds(family: Family) -> [(String, &'static str); 5] {
    [
        (family.ports_set(), "hash:net,port"),
        (family.hosts_set(), "hash:net"),
        (family.resolvers_set(), "hash:net,port"),
        // Every member carries its own timeout (the record's TTL, clamped); 60 s is only the
        // default of a member added without one.
        (
            family.answered_ports_set().into(),
            "hash:ip,port timeout 60",
        ),
        (family.answered_hosts_set().into(), "hash:ip timeout 60"),
    ]
}

/// `RESOLVER,udp:53` and `RESOLVER,tcp:53` for each resolver (protocols as numbers).
fn resolver_members(rules: &FamilyRules) -> impl Iterator<Item = String> + '_ {
    rules.resolvers.iter().flat_map(|resolver| {
        [Proto::Udp, Proto::Tcp].map(|proto| format!("{resolver},{}:53", proto.number()))
    })
}

fn set_options(kind: &str, family: Family) -> String {
    let (kind, extra) = kind.split_once(' ').unwrap_or((kind, ""));
    let extra = if extra.is_empty() {
        String::new()
    } else {
        format!(" {extra}")
    };
    format!(
        "{kind} family {} hashsize 1024 maxelem {MAX_SET_ELEMENTS}{extra}",
        family.ipset_family()
    )
}

fn write_set(out: &mut String, name: &str, kind: &str, family: Family, elements: &[String]) {
    let staging = format!("{name}-new");
    let options = set_options(kind, family);
    let _ = writeln!(out, "create {name} {options}");
    let _ = writeln!(out, "create {staging} {options}");
    let _ = writeln!(out, "flush {staging}");
    for element in elements {
        let _ = writeln!(out, "add {staging} {element}");
    }
    let _ = writeln!(out, "swap {staging} {name}");
    let _ = writeln!(out, "destroy {staging}");
}

/// ipset's hash:net types cannot hold a /0: split it into its two halves.
/// The members, as ipset lists them, of the ports set for `net` on `range`: one per port.
fn port_members(net: IpNet, range: PortRange) -> impl Iterator<Item = String> {
    set_nets(net).into_iter().flat_map(move |net| {
        (range.first..=range.last)
            .map(move |port| format!("{},{}:{port}", set_net(net), range.proto.as_str()))
    })
}

/// The members, as ipset lists them, of the any-port set for `net`.
fn host_members(net: IpNet) -> impl Iterator<Item = String> {
    set_nets(net).into_iter().map(set_net)
}

/// The (set, member) pairs an address entry puts into the fence's sets: what `cordon allow` adds
/// and `cordon deny` removes while the agent runs.
pub fn address_entry_members(net: IpNet, ports: &Ports) -> Vec<(String, String)> {
    let family = Family::of(&net.addr());
    match ports {
        Ports::Any => host_members(net)
            .map(|member| (family.hosts_set(), member))
            .collect(),
        Ports::Listed(ranges) => ranges
            .iter()
            .flat_map(|range| port_members(net, *range))
            .map(|member| (family.ports_set(), member))
            .collect(),
    }
}

fn set_nets(net: IpNet) -> Vec<IpNet> {
    if net.prefix_len() == 0 {
        net.subnets(1)
            .map(|s| s.collect())
            .unwrap_or_else(|_| vec![net])
    } else {
        vec![net]
    }
}

fn set_net(net: IpNet) -> String {
    if net.prefix_len() == net.max_prefix_len() {
        net.addr().to_string()
    } else {
        net.to_string()
    }
}

fn host_net(addr: IpAddr) -> String {
    IpNet::from(addr).to_string()
}

fn port_text(range: &PortRange) -> String {
    if range.first == range.last {
        range.first.to_string()
    } else {
        format!("{}-{}", range.first, range.last)
    }
}

fn port_match(range: &PortRange) -> String {
    let proto = range.proto.as_str();
    let port = if range.first == range.last {
        range.first.to_string()
    } else {
        format!("{}:{}", range.first, range.last)
    };
    format!("-p {proto} -m {proto} --dport {port}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fence::resolv_conf;
    use crate::fence::resolve::{NameAddrs, Outcome};

    fn policy(entries: &[&str], inbound: &[PortRange]) -> Policy {
        Policy {
            inbound: inbound.to_vec(),
            ..Policy::of(entries, "test")
        }
    }

    #[test]
    fn an_address_entry_changes_the_members_the_plan_would_have_given_it() {
        let members = |entry: &str| {
            let (target, ports) = crate::fence::policy::parse_entry(entry).unwrap();
            let Target::Net(net) = target else {
                panic!("{entry} is not an address entry")
            };
            address_entry_members(net, &ports)
        };
        let pair = |set: &str, member: &str| (set.to_string(), member.to_string());
        assert_eq!(
            members("10.1.0.0/16:5432,6000-6001"),
            [
                pair("cordon4-ports", "10.1.0.0/16,tcp:5432"),
                pair("cordon4-ports", "10.1.0.0/16,tcp:6000"),
                pair("cordon4-ports", "10.1.0.0/16,tcp:6001"),
            ]
        );
        assert_eq!(
            members("::/0"),
            [
                pair("cordon6-hosts", "::/1"),
                pair("cordon6-hosts", "8000::/1")
            ]
        );
        // The same strings the whole plan gives the entry.
        let planned = plan(
            &policy(&["10.1.0.0/16:5432,6000-6001"], &[]),
            &Resolution::default(),
            &resolv_conf::parse("nameserver 10.0.0.2\n", "test").unwrap(),
        )
        .unwrap()
        .set_members();
        let ports: Vec<(String, String)> = planned
            .iter()
            .filter(|(set, _)| set == "cordon4-ports")
            .flat_map(|(set, found)| found.iter().map(|m| pair(set, m)))
            .collect();
        assert_eq!(ports, members("10.1.0.0/16:5432,6000-6001"));
    }

    fn resolved(names: &[(&str, &[&str])]) -> Resolution {
        Resolution {
            names: names
                .iter()
                .map(|(name, addrs)| NameAddrs {
                    name: name.to_string(),
                    addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
                    outcome: Outcome::Resolved,
                    refused: Vec::new(),
                })
                .collect(),
            elapsed: Default::default(),
        }
    }

    fn conf(text: &str) -> ResolvConf {
        resolv_conf::parse(text, "resolv.conf").unwrap()
    }

    fn render(ruleset: &Ruleset) -> String {
        format!(
            "## ipset restore (create)\n{}\n## ipset restore\n{}\n## iptables-restore\n{}\n## ip6tables-restore\n{}",
            ruleset.ipset_create(),
            ruleset.ipset_restore(),
            ruleset.iptables_restore(Family::V4),
            ruleset.iptables_restore(Family::V6)
        )
    }

    #[test]
    fn an_allowlist_over_the_set_size_is_bad_input() {
        // 64 addresses with 1,024 ports each reach the limit exactly; one more address is over.
        let entries: Vec<String> = (0..64)
            .map(|i| format!("10.0.{}.{}:1-1024", i / 256, i % 256))
            .collect();
        let mut entries: Vec<&str> = entries.iter().map(String::as_str).collect();
        let nameserver = conf("nameserver 10.0.0.2\n");
        let full = plan(&policy(&entries, &[]), &Resolution::default(), &nameserver).unwrap();
        assert_eq!(full.v4.port_elements(), MAX_ALLOWLIST_ELEMENTS);
        entries.push("10.1.0.1");
        let error = plan(&policy(&entries, &[]), &Resolution::default(), &nameserver).unwrap_err();
        assert_eq!(error.exit_code(), crate::error::exit::BAD_INPUT, "{error}");
        assert!(error.to_string().starts_with("allowlist: "), "{error}");
    }

    /// Only the credential gateway's uid reaches its upstream, and that uid reaches nothing
    /// else; the agent's rules are those of the same plan without it.
    #[test]
    fn credential_upstream_for_its_uid_only() {
        let without = plan(
            &policy(&["api.example.test"], &[]),
            &resolved(&[("api.example.test", &["192.0.2.10"])]),
            &conf("nameserver 10.0.0.2\n"),
        )
        .unwrap()
        .with_agent_dns(AgentDns::Gateway {
            uid: 65053,
            port: 10053,
        });
        // The upstream shares an address with an allowlisted name (192.0.2.10): still closed
        // to the agent on the upstream's port, open on the others the name allows.
        let upstream = CredentialUpstream {
            uid: 65054,
            port: 443,
            addrs: vec![
                "192.0.2.10".parse().unwrap(),
                "2001:db8::7".parse().unwrap(),
            ],
            agent_too: false,
        };
        let ruleset = without.clone().with_credential_upstream(upstream.clone());
        assert_ne!(ruleset.flow_mark, without.flow_mark);
        let agent =
            |r: &Ruleset, dst: &str, port| r.verdict(false, dst.parse().unwrap(), Proto::Tcp, port);
        assert_eq!(agent(&without, "192.0.2.10", 443), Verdict::Allow);
        assert_eq!(agent(&ruleset, "192.0.2.10", 443), Verdict::Reject);
        assert_eq!(agent(&ruleset, "192.0.2.10", 80), Verdict::Allow);
        assert_eq!(agent(&ruleset, "2001:db8::7", 443), Verdict::Reject);
        // An entry of the user's for the upstream opens it to the agent too.
        let opened = without
            .clone()
            .with_credential_upstream(CredentialUpstream {
                agent_too: true,
                ..upstream
            });
        assert_eq!(agent(&opened, "192.0.2.10", 443), Verdict::Allow);
        let closing = "-d 192.0.2.10/32 -p tcp -m tcp --dport 443 -j CORDON_REJECT";
        assert!(!opened.iptables_restore(Family::V4).contains(closing));
        assert!(ruleset.iptables_restore(Family::V4).contains(closing));
        insta::assert_snapshot!(format!(
            "{}\n{}",
            ruleset.iptables_restore(Family::V4),
            ruleset.iptables_restore(Family::V6)
        ));
    }

    #[test]
    fn ipv4_only() {
        let ruleset = plan(
            &policy(&["api.example.test"], &[]),
            &resolved(&[("api.example.test", &["192.0.2.10", "192.0.2.11"])]),
            &conf("nameserver 10.0.0.2\n"),
        )
        .unwrap();
        insta::assert_snapshot!(render(&ruleset));
    }

    #[test]
    fn ipv4_and_ipv6() {
        let ruleset = plan(
            &policy(&["api.example.test", "[2001:db8:5::/48]:443"], &[]),
            &resolved(&[("api.example.test", &["192.0.2.10", "2001:db8::10"])]),
            &conf("nameserver 10.0.0.2\nnameserver 2001:db8::53\n"),
        )
        .unwrap();
        insta::assert_snapshot!(render(&ruleset));
    }

    #[test]
    fn ports_ranges_udp_and_inbound() {
        let ruleset = plan(
            &policy(
                &[
                    "git.example.test:22,443",
                    "vpn.example.test:udp/51820,8000-8003",
                ],
                &[
                    PortRange::tcp(3000),
                    PortRange {
                        proto: Proto::Udp,
                        first: 6000,
                        last: 6001,
                    },
                ],
            ),
            &resolved(&[
                ("git.example.test", &["192.0.2.20"]),
                ("vpn.example.test", &["192.0.2.30"]),
            ]),
            &conf("nameserver 10.0.0.2\n"),
        )
        .unwrap();
        assert_eq!(ruleset.v4.port_elements(), 2 + 1 + 4);
        insta::assert_snapshot!(render(&ruleset));
    }

    #[test]
    fn cidrs_with_and_without_ports() {
        let ruleset = plan(
            &policy(
                &[
                    "10.1.0.0/16:5432",
                    "192.0.2.0/24",
                    "0.0.0.0/0:443",
                    "[2001:db8::/32]",
                ],
                &[],
            ),
            &resolved(&[]),
            &conf("nameserver 10.0.0.2\n"),
        )
        .unwrap();
        insta::assert_snapshot!(render(&ruleset));
    }

    #[test]
    fn docker_embedded_dns_without_ext_servers() {
        let ruleset = plan(
            &policy(&["api.example.test"], &[]),
            &resolved(&[("api.example.test", &["192.0.2.10"])]),
            &conf("nameserver 127.0.0.11\noptions ndots:0\n"),
        )
        .unwrap();
        assert_eq!(ruleset.v4.forwarder, Forwarder::Anywhere);
        insta::assert_snapshot!(render(&ruleset));
    }

    #[test]
    fn docker_embedded_dns_with_ext_servers() {
        let ruleset = plan(
            &policy(&["api.example.test"], &[]),
            &resolved(&[("api.example.test", &["192.0.2.10"])]),
            &conf(
                "nameserver 127.0.0.11\n# ExtServers: [192.0.2.53 host(127.0.0.53) 2001:db8::53]\n",
            ),
        )
        .unwrap();
        insta::assert_snapshot!(render(&ruleset));
    }

    const GATEWAY: AgentDns = AgentDns::Gateway {
        uid: 65053,
        port: 10053,
    };

    #[test]
    fn gateway_behind_docker_embedded_dns() {
        let ruleset = plan(
            &policy(
                &[
                    "api.example.test",
                    "*.cdn.example.test:443",
                    "10.1.0.0/16:5432",
                ],
                &[],
            ),
            &Resolution::default(),
            &conf("nameserver 127.0.0.11\noptions ndots:0\n"),
        )
        .unwrap()
        .with_agent_dns(GATEWAY);
        insta::assert_snapshot!(format!(
            "{}\n## nat, first load\n{}\n## nat, hooked\n{}\n## nat, hook moved\n{}",
            render(&ruleset),
            ruleset.nat_restore(Family::V4, NatHook::Misplaced { count: 0 }),
            ruleset.nat_restore(Family::V4, NatHook::First),
            ruleset.nat_restore(Family::V6, NatHook::Misplaced { count: 2 }),
        ));
        let members = ruleset.set_members();
        assert!(
            members.iter().all(|(set, _)| !set.contains("answered")),
            "{members:?}"
        );
    }

    #[test]
    fn static_mode_has_no_nat() {
        let ruleset = plan(
            &policy(&["api.example.test"], &[]),
            &Resolution::default(),
            &conf("nameserver 127.0.0.11\n"),
        )
        .unwrap();
        assert_eq!(
            ruleset.nat_restore(Family::V4, NatHook::Misplaced { count: 0 }),
            ""
        );
        assert!(ruleset
            .set_members()
            .iter()
            .any(|(set, members)| set == "cordon4-answered" && members.is_empty()));
    }

    #[test]
    fn the_nat_hook_is_read_from_iptables_save() {
        let docker = "*nat\n:OUTPUT ACCEPT [0:0]\n:DOCKER_OUTPUT - [0:0]\n\
                      -A OUTPUT -d 127.0.0.11/32 -j DOCKER_OUTPUT\nCOMMIT\n";
        assert_eq!(NatHook::read(docker), NatHook::Misplaced { count: 0 });
        let hooked = "*nat\n-A OUTPUT -j CORDON_DNS\n-A OUTPUT -d 127.0.0.11/32 -j DOCKER_OUTPUT\n";
        assert_eq!(NatHook::read(hooked), NatHook::First);
        let behind = "*nat\n-A OUTPUT -d 127.0.0.11/32 -j DOCKER_OUTPUT\n-A OUTPUT -j CORDON_DNS\n";
        assert_eq!(NatHook::read(behind), NatHook::Misplaced { count: 1 });
        let twice = "-A OUTPUT -j CORDON_DNS\n-A OUTPUT -j CORDON_DNS\n";
        assert_eq!(NatHook::read(twice), NatHook::Misplaced { count: 2 });
    }

    #[test]
    fn with_the_gateway_only_root_and_the_gateway_reach_the_resolvers() {
        let ruleset = plan(
            &policy(&["10.1.0.0/16:5432"], &[]),
            &Resolution::default(),
            &conf("nameserver 127.0.0.11\nnameserver 10.0.0.2\n"),
        )
        .unwrap()
        .with_agent_dns(GATEWAY);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        use Verdict::*;
        let cases = [
            // The agent's DNS anywhere is redirected to the gateway on loopback.
            (false, "10.0.0.2", Proto::Udp, 53, Allow),
            (false, "198.51.100.53", Proto::Tcp, 53, Allow),
            // Docker's DNS on its real port: root only.
            (false, "127.0.0.11", Proto::Udp, 43117, Reject),
            (true, "127.0.0.11", Proto::Udp, 43117, Allow),
            (true, "10.0.0.2", Proto::Udp, 53, Allow),
            (false, "127.0.0.1", Proto::Tcp, 10053, Allow),
            (false, "10.1.2.3", Proto::Tcp, 5432, Allow),
            (false, "10.0.0.2", Proto::Tcp, 443, Reject),
        ];
        for (root, dst, proto, port, expected) in cases {
            assert_eq!(
                ruleset.verdict(root, ip(dst), proto, port),
                expected,
                "{dst} {proto:?} {port} root={root}"
            );
        }
    }

    #[test]
    fn unresolved_names_open_nothing() {
        let ruleset = plan(
            &policy(&["gone.example.test"], &[]),
            &resolved(&[]),
            &conf("nameserver 10.0.0.2\n"),
        )
        .unwrap();
        assert!(ruleset.v4.ports.is_empty() && ruleset.v6.ports.is_empty());
    }

    #[test]
    fn lockdown() {
        insta::assert_snapshot!(format!(
            "{}{}",
            lockdown_restore(Family::V4),
            lockdown_restore(Family::V6)
        ));
    }

    #[test]
    fn the_model_matches_the_rules() {
        let ruleset = plan(
            &policy(
                &["api.example.test", "10.1.0.0/16:5432", "192.0.2.128/25"],
                &[],
            ),
            &resolved(&[("api.example.test", &["192.0.2.10", "2001:db8::10"])]),
            &conf("nameserver 127.0.0.11\n"),
        )
        .unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        use Verdict::*;
        let cases = [
            (false, "192.0.2.10", Proto::Tcp, 443, Allow),
            (false, "192.0.2.10", Proto::Tcp, 22, Reject),
            (false, "192.0.2.10", Proto::Udp, 443, Reject),
            (false, "2001:db8::10", Proto::Tcp, 80, Allow),
            (false, "10.1.7.7", Proto::Tcp, 5432, Allow),
            (false, "10.1.7.7", Proto::Tcp, 5433, Reject),
            (false, "192.0.2.200", Proto::Udp, 9, Allow),
            (false, "127.0.0.11", Proto::Udp, 53, Allow),
            (false, "198.51.100.1", Proto::Udp, 53, Reject),
            (true, "198.51.100.1", Proto::Udp, 53, Allow),
            (true, "198.51.100.1", Proto::Tcp, 443, Reject),
            (false, "169.254.169.254", Proto::Tcp, 80, Reject),
        ];
        for (root, dst, proto, port, expected) in cases {
            assert_eq!(
                ruleset.verdict(root, ip(dst), proto, port),
                expected,
                "{dst} {proto:?} {port} root={root}"
            );
        }
    }
}
