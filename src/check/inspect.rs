//! What fence is in place, as `cordon check` sees it from inside the container.
//!
//! As root (with CAP_NET_ADMIN): the loaded chains, policies, counters and set sizes, plus marked
//! probes of the verdict classes that never depend on the allowlist. As anyone else, who cannot
//! read the firewall: the same probes unmarked, each of which must be rejected at once.

use std::net::SocketAddr;

use crate::agent::user::NOBODY;
use crate::fence::apply::{Backend, Tools};
use crate::fence::netinfo::{Ipv6, NetInfo};
use crate::fence::plan::{self, Family, Verdict, CHAIN_OUTPUT, CHAIN_REJECT};
use crate::fence::policy::Proto;
use crate::fence::record::{self, Loaded};
use crate::fence::verify::{self, Observed, Probe};
use crate::gateway;
use crate::gateway::self_test::{self, Elsewhere};
use crate::sys::caps::{self, Capability};
use crate::sys::tool;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FenceStatus {
    /// One per fact (chains, set sizes, counters, probe verdicts), each judged on its own.
    pub facts: Vec<FenceFact>,
    /// No fence at all (e.g. a drop-in container restarted without its postStartCommand): not one
    /// probe stopped, something got out, and, as root, the IPv4 table read back with neither
    /// cordon's chain nor an OUTPUT policy of DROP (a lockdown has the policy).
    pub absent: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FenceFact {
    pub ok: bool,
    pub text: String,
}

impl FenceStatus {
    fn ok(&mut self, text: String) {
        self.facts.push(FenceFact { ok: true, text });
    }

    fn fail(&mut self, text: String) {
        self.facts.push(FenceFact { ok: false, text });
    }
}

/// `backend`: the iptables variant to read (as the entrypoint chose it).
pub fn fence(backend: Backend) -> FenceStatus {
    let mut status = FenceStatus::default();
    let net = NetInfo::read();
    let can_read = nix::unistd::geteuid().is_root() && caps::holds(Capability::CAP_NET_ADMIN);
    let mut no_fence_read = false;
    if can_read {
        let recorded = std::fs::read_to_string(record::RECORD_FILE);
        let recorded = match &recorded {
            Ok(text) => Some(Loaded::load(text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => Some(Err(format!("cannot read {}: {e}", record::RECORD_FILE))),
        };
        // The variant the fence was loaded with, unless one was named.
        let backend = match (backend, &recorded) {
            (Backend::Auto, Some(Ok((_, variant)))) if variant == "legacy" => Backend::Legacy,
            (Backend::Auto, Some(Ok((_, variant)))) if variant == "nft" => Backend::Nft,
            _ => backend,
        };
        match Tools::locate(backend) {
            Ok(tools) => {
                no_fence_read = read_rules(&tools, &net, &mut status);
                compare_with_record(&tools, &net, recorded, &mut status);
            }
            Err(error) => status.fail(format!("cannot read the firewall: {error}")),
        }
    } else {
        status.ok("not root: the firewall cannot be read, only probed".to_string());
    }
    let probes = probe_blocked_classes(&net, can_read, &mut status);
    // Nothing stopped here and something got out; a rejection from outside the container
    // (RejectedOutside) is reported probe by probe instead (it cannot be verified).
    status.absent = probes.stopped == 0
        && probes.escaped > 0
        && probes.rejected_outside == 0
        && (!can_read || no_fence_read);
    status
}

/// Judges each family's loaded rules and the sets; whether the IPv4 table was read and holds
/// neither cordon's chain nor an OUTPUT policy of DROP.
fn read_rules(tools: &Tools, net: &NetInfo, status: &mut FenceStatus) -> bool {
    let mut no_fence = false;
    let families: &[Family] = if net.ipv6.in_kernel() {
        &[Family::V4, Family::V6]
    } else {
        &[Family::V4]
    };
    for family in families {
        let tool = tools.save_tool(*family);
        match tool.run(&["-c", "-t", "filter"], "", tool::BOUND) {
            Ok(text) => {
                let rules = SavedRules::parse(&text);
                no_fence |=
                    *family == Family::V4 && !rules.chain_loaded && !rules.output_policy_drop;
                match rules.problem() {
                    None => status.ok(format!(
                        "{} fence loaded: OUTPUT policy DROP, {} allowed and {} rejected packets \
                         so far",
                        family.name(),
                        rules.allowed_packets,
                        rules.rejected_packets
                    )),
                    // Where IPv6 is off nothing can be sent over it, whatever its rules say.
                    Some(problem) if *family == Family::V6 && net.ipv6 == Ipv6::Off => {
                        status.ok(format!(
                            "IPv6 fence: {problem}; IPv6 is off in this namespace (no IPv6 \
                             address), so nothing can be sent over it"
                        ))
                    }
                    Some(problem) => status.fail(format!("{} fence: {problem}", family.name())),
                }
            }
            Err(detail) => status.fail(format!("cannot read the firewall: {detail}")),
        }
    }
    match tools.ipset.run(&["list", "-t"], "", tool::BOUND) {
        Ok(text) => {
            let sizes = set_sizes(&text);
            if sizes.is_empty() {
                status.fail("no cordon sets are loaded".to_string());
            }
            for (name, size) in sizes {
                status.ok(format!(
                    "set {name}: {}",
                    crate::logging::count(size, "entry")
                ));
            }
        }
        Err(detail) => status.fail(format!("cannot list the ipsets: {detail}")),
    }
    no_fence
}

/// Compares the live fence with the record the entrypoint or `cordon firewall` left: every rule
/// of the filter table and every set member. Catches what the structural checks above cannot: one
/// address added to a set, one ACCEPT inside a chain, a policy changed back.
fn compare_with_record(
    tools: &Tools,
    net: &NetInfo,
    recorded: Option<Result<(Loaded, String), String>>,
    status: &mut FenceStatus,
) {
    let recorded = match recorded {
        None => {
            status.ok(format!(
                "no record of the loaded fence in {} (cordon could not write it, e.g. a \
                 read-only /run): the live fence was checked as above only",
                record::RECORD_FILE
            ));
            return;
        }
        Some(Err(reason)) => return status.fail(reason),
        Some(Ok((recorded, _))) => recorded,
    };
    let families = if net.ipv6.in_kernel() {
        &[Family::V4, Family::V6][..]
    } else {
        &[Family::V4][..]
    };
    match record::read_all(tools, families) {
        Ok(live) => {
            let changes = live.changes_since(&recorded);
            let (rules, members) = recorded.size();
            if changes.is_empty() {
                status.ok(format!(
                    "the fence is as loaded: {rules} rules and {members} set members compared"
                ));
            } else {
                status.fail(format!(
                    "the fence changed since it was loaded: {}",
                    changes.join(", ")
                ));
            }
        }
        Err(detail) => status.fail(format!("cannot read the fence back: {detail}")),
    }
}

/// The facts `check` needs from `iptables-save -c -t filter`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SavedRules {
    chain_loaded: bool,
    output_policy_drop: bool,
    output_jumps_first: bool,
    output_ends_in_reject: bool,
    allowed_packets: u64,
    rejected_packets: u64,
}

impl SavedRules {
    pub fn parse(text: &str) -> SavedRules {
        let mut rules = SavedRules::default();
        let mut first_output_rule = None;
        let mut last_cordon_output_rule = None;
        for line in text.lines() {
            if line.starts_with(":OUTPUT DROP") {
                rules.output_policy_drop = true;
            }
            if line.starts_with(&format!(":{CHAIN_OUTPUT} ")) {
                rules.chain_loaded = true;
            }
            let (packets, rule) = match line.strip_prefix('[').and_then(|r| r.split_once("] ")) {
                Some((counters, rule)) => (
                    counters
                        .split(':')
                        .next()
                        .and_then(|p| p.parse::<u64>().ok())
                        .unwrap_or(0),
                    rule,
                ),
                None => (0, line),
            };
            if rule.starts_with("-A OUTPUT ") && first_output_rule.is_none() {
                first_output_rule = Some(rule.to_string());
            }
            if rule.starts_with(&format!("-A {CHAIN_OUTPUT} ")) {
                last_cordon_output_rule = Some(rule.to_string());
            }
            if rule == plan::allow_accept_rule() {
                rules.allowed_packets += packets;
            }
            if rule.starts_with(&format!("-A {CHAIN_REJECT} ")) {
                rules.rejected_packets += packets;
            }
        }
        rules.output_jumps_first = first_output_rule == Some(plan::output_hook());
        rules.output_ends_in_reject = last_cordon_output_rule == Some(plan::output_last_rule());
        rules
    }

    fn problem(&self) -> Option<&'static str> {
        if !self.output_jumps_first {
            Some("OUTPUT does not start with cordon's chain (cordon never ran, or was undone)")
        } else if !self.output_ends_in_reject {
            Some("cordon's chain does not end in its reject rule")
        } else if !self.output_policy_drop {
            Some("the OUTPUT policy is not DROP")
        } else {
            None
        }
    }
}

fn set_sizes(text: &str) -> Vec<(String, u64)> {
    let mut sizes = Vec::new();
    let mut name = None;
    for line in text.lines() {
        if let Some(n) = line.strip_prefix("Name: ") {
            name = n.starts_with("cordon").then(|| n.to_string());
        }
        if let (Some(n), Some(count)) = (&name, line.strip_prefix("Number of entries: ")) {
            sizes.push((n.clone(), count.trim().parse().unwrap_or(0)));
        }
    }
    sizes
}

/// How the probes of `probe_blocked_classes` came out.
#[derive(Default)]
struct ProbeCounts {
    /// Rejected by this namespace's fence.
    stopped: usize,
    /// Not stopped, and not for want of a route, a source address or the probe's uid: they
    /// got out.
    escaped: usize,
    /// Rejected by something outside this namespace.
    rejected_outside: usize,
}

/// Destinations that no allowlist opens unless it names them explicitly; `check` has no
/// allowlist, so it only probes these.
fn probe_blocked_classes(net: &NetInfo, marked: bool, status: &mut FenceStatus) -> ProbeCounts {
    let mut targets = verify::unallowed_classes(net);
    if !marked {
        // Unmarked, a blocked SYN is answered with the fence's reset, which looks like a host
        // that refuses: these probes are datagrams, which are rejected with ICMP. The public
        // address is probed both ways (see below for its TCP probe).
        let public = *targets
            .iter()
            .find(|target| target.0 == "public address")
            .expect("a public address among the classes");
        for target in &mut targets {
            target.2 = Proto::Udp;
        }
        targets.push(public);
    }
    let probes = targets
        .into_iter()
        .map(|(class, addr, proto, port)| Probe {
            class,
            dst: SocketAddr::new(addr, port),
            proto,
            as_root: false,
            expect: Verdict::Reject,
            unrouted: !net.routes(addr),
        })
        .collect();
    // The probes stand for the agent: as root, own the sockets as nobody, or the uid-0 DNS
    // exception for Docker's forwarder would answer for them.
    let uid = match nix::unistd::getuid().as_raw() {
        0 => NOBODY,
        uid => uid,
    };
    probe_dns_elsewhere(uid, status);
    let mut counts = ProbeCounts::default();
    for mut result in verify::run_probes(probes, uid, marked) {
        // An unmarked SYN to a documentation address (routed nowhere) that is refused at once
        // was refused by the fence's reset: without a fence it would leave and go unanswered.
        if !marked && result.probe.proto == Proto::Tcp && result.observed == Observed::Allowed {
            result.observed = Observed::Rejected;
        }
        let line = format!("probe {}", result.describe());
        match result.observed {
            Observed::Rejected => counts.stopped += 1,
            Observed::RejectedOutside => counts.rejected_outside += 1,
            _ => {}
        }
        if result.passed() {
            status.ok(line);
        } else {
            if !matches!(
                result.observed,
                Observed::NoRoute | Observed::CannotSend | Observed::NotAsOwner
            ) {
                counts.escaped += 1;
            }
            status.fail(line);
        }
    }
    counts
}

/// A question to a server that is not the resolver: the fence rejects it (static mode), or nat
/// redirects it to the DNS gateway, which refuses it. No answer means the gateway is down (names
/// fail closed meanwhile). Where that server has no route (an internal network), the gateway's
/// own port is asked instead.
fn probe_dns_elsewhere(uid: u32, status: &mut FenceStatus) {
    let server = SocketAddr::new(verify::DNS_ELSEWHERE.into(), 53);
    let gateway = SocketAddr::new(
        plan::gateway_listen_addr(Family::V4),
        gateway::service::GATEWAY_PORT,
    );
    let mut gateway_down = false;
    let (asked, outcome) = match self_test::ask_elsewhere(server, uid) {
        Elsewhere::NoRoute => (gateway, self_test::ask_elsewhere(gateway, uid)),
        // Redirected to a gateway port nothing listens on, or refused outside: the gateway's
        // own port tells which.
        Elsewhere::PortUnreachable => match self_test::ask_elsewhere(gateway, uid) {
            Elsewhere::NotListening => {
                gateway_down = true;
                (gateway, Elsewhere::NotListening)
            }
            _ => (
                server,
                Elsewhere::Other("port unreachable, from outside this container".into()),
            ),
        },
        outcome => (server, outcome),
    };
    match outcome {
        Elsewhere::Refused => status.ok(format!(
            "dns: a question to {asked} as uid {uid} reached cordon's DNS gateway, which \
             refused it"
        )),
        Elsewhere::Stopped => status.ok(format!("dns: a question to {asked} was blocked")),
        Elsewhere::NotListening if gateway_down => status.fail(format!(
            "dns: questions are redirected to the DNS gateway ({gateway}), which is not \
             running: names fail closed; restart the container (the drop-in: rerun \
             init-firewall.sh)"
        )),
        Elsewhere::NoRoute | Elsewhere::NotListening | Elsewhere::PortUnreachable => status.ok(
            format!("dns: {server} has no route from here, and no DNS gateway runs (--dns static)"),
        ),
        Elsewhere::NoAnswer => status.fail(format!(
            "dns: a question to {asked} got no answer: the DNS gateway is not answering, so \
             names fail closed; restart the container (or rerun cordon)"
        )),
        Elsewhere::Other(what) => status.fail(format!(
            "dns: a question to {asked} was not stopped: {what}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAVED: &str = "# Generated by iptables-nft-save\n*filter\n:INPUT DROP [0:0]\n\
        :FORWARD ACCEPT [0:0]\n:OUTPUT DROP [0:0]\n:CORDON_ALLOW - [0:0]\n\
        :CORDON_OUTPUT - [0:0]\n:CORDON_REJECT - [0:0]\n\
        [120:9000] -A OUTPUT -j CORDON_OUTPUT\n\
        [3:180] -A CORDON_ALLOW -p tcp -m mark --mark 0x636f7264 -j REJECT --reject-with tcp-reset\n\
        [40:3000] -A CORDON_ALLOW -j ACCEPT\n\
        [0:0] -A CORDON_OUTPUT -o lo -j CORDON_ALLOW\n\
        [7:420] -A CORDON_OUTPUT -j CORDON_REJECT\n\
        [7:420] -A CORDON_REJECT -j REJECT --reject-with icmp-admin-prohibited\nCOMMIT\n";

    #[test]
    fn a_loaded_fence_and_its_counters() {
        let rules = SavedRules::parse(SAVED);
        assert_eq!(rules.problem(), None);
        assert_eq!((rules.allowed_packets, rules.rejected_packets), (40, 7));
    }

    #[test]
    fn a_missing_or_weakened_fence_is_named() {
        let empty = SavedRules::parse("*filter\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n");
        assert!(empty.problem().unwrap().contains("never ran"));
        let accepting = SavedRules::parse(&SAVED.replace(":OUTPUT DROP", ":OUTPUT ACCEPT"));
        assert!(accepting.problem().unwrap().contains("policy"));
        let bypass = SavedRules::parse(&SAVED.replace(
            "[120:9000] -A OUTPUT -j CORDON_OUTPUT",
            "[0:0] -A OUTPUT -j ACCEPT\n[120:9000] -A OUTPUT -j CORDON_OUTPUT",
        ));
        assert!(bypass.problem().is_some());
    }

    #[test]
    fn set_sizes_from_ipset_list() {
        let text = "Name: cordon4-ports\nType: hash:net,port\nNumber of entries: 4\n\
                    Name: other\nNumber of entries: 9\nName: cordon6-hosts\nNumber of entries: 0\n";
        assert_eq!(
            set_sizes(text),
            [
                ("cordon4-ports".to_string(), 4),
                ("cordon6-hosts".to_string(), 0)
            ]
        );
    }
}
