//! Resolve: every allowlisted name, A and AAAA in parallel, through the nameservers of
//! resolv.conf, with the whole phase bounded. A current-thread runtime exists only for this stage.
//! hickory-resolver does the DNS; its UDP queries travel over the shared sockets of `udp_mux`.

use std::collections::HashMap;
use std::ffi::c_int;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::proto::rr::{DNSClass, Name, RData, Record};
use hickory_resolver::Resolver;

use crate::error::{Error, Result};
use crate::fence::resolv_conf::ResolvConf;
use crate::sys::signals;

mod udp_mux;

type MuxResolver = Resolver<udp_mux::MuxProvider>;

/// Names being looked up at once per runtime; each lookup is up to two queries (A and AAAA).
const LOOKUPS_IN_FLIGHT: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Resolved,
    /// The name exists but has no A or AAAA records.
    NoAddress,
    NxDomain,
    /// No usable answer: timeout, refused, server failure.
    Failed(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameAddrs {
    pub name: String,
    pub addrs: Vec<IpAddr>,
    pub outcome: Outcome,
    /// Answers dropped because a name must never open them (see `may_be_opened_by_name`).
    pub refused: Vec<IpAddr>,
}

#[derive(Debug, Clone, Default)]
pub struct Resolution {
    pub names: Vec<NameAddrs>,
    pub elapsed: Duration,
}

impl Resolution {
    /// Each name's result, by name.
    pub fn index(&self) -> HashMap<&str, &NameAddrs> {
        self.names.iter().map(|n| (n.name.as_str(), n)).collect()
    }

    pub fn unresolved(&self) -> impl Iterator<Item = &NameAddrs> {
        self.names.iter().filter(|n| n.outcome != Outcome::Resolved)
    }
}

/// How to resolve.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Upper bound on the whole phase.
    pub bound: Duration,
    /// Also ask for AAAA records. Without an IPv6 address in the namespace they could never be
    /// used (such connections fail before the fence), and they are half of all queries.
    pub ipv6: bool,
}

/// Resolves `names`. Unresolvable names are reported in the result (the caller decides whether
/// that is fatal); an error means the resolvers gave no usable answer at all.
pub fn resolve(names: &[&str], conf: &ResolvConf, options: Options) -> Result<Resolution> {
    let started = Instant::now();
    if names.is_empty() {
        return Ok(Resolution::default());
    }
    // One current-thread runtime for all names. Two (one per core, each with half the names)
    // finish 1,000 names with 20 ms answers ~30 ms sooner but cost 1.75x the CPU when answers
    // come at once (bench/resolve-vs-dnsperf.sh: 140 against 80 ms).
    let found = resolve_on_own_runtime(names, conf, options)?;
    let (all, refused) = (found.names, found.refused);
    let resolution = Resolution {
        names: all,
        elapsed: started.elapsed(),
    };
    let answered = resolution
        .names
        .iter()
        .any(|n| !matches!(n.outcome, Outcome::Failed(_)));
    if !answered {
        let servers: Vec<String> = conf.nameservers.iter().map(|a| a.to_string()).collect();
        let reason = match &resolution.names[0].outcome {
            _ if !refused.is_empty() => format!(
                "nothing listens for DNS at {} (ICMP port unreachable: connection refused)",
                refused
                    .iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Outcome::Failed(reason) => reason.clone(),
            _ => unreachable!("checked above"),
        };
        return Err(Error::Resolve(format!(
            "no usable answer from the nameservers in {} ({}) for any of {} names (first: {} — \
             {reason}); check the container's DNS (docker run --dns ADDRESS)",
            conf.source,
            servers.join(", "),
            resolution.names.len(),
            resolution.names[0].name,
        )));
    }
    Ok(resolution)
}

/// The names' results, and the servers that refused queries.
struct Found {
    names: Vec<NameAddrs>,
    refused: Vec<SocketAddr>,
}

fn resolve_on_own_runtime(names: &[&str], conf: &ResolvConf, options: Options) -> Result<Found> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("starting the DNS runtime", e))?;
    runtime.block_on(resolve_all(names, conf, options))
}

async fn resolve_all(names: &[&str], conf: &ResolvConf, options: Options) -> Result<Found> {
    let bound = options.bound;
    let provider = udp_mux::MuxProvider::default();
    let resolver = Arc::new(build_resolver(conf, options.ipv6, provider.clone())?);
    // A fixed set of lanes, each resolving one name after another, rather than a task per name:
    // the lanes' memory is reused from name to name instead of being allocated for all at once.
    let queue: Arc<[String]> = names.iter().map(|name| name.to_string()).collect();
    let next = Arc::new(AtomicUsize::new(0));
    let found: Arc<Mutex<Vec<Option<NameAddrs>>>> = Arc::new(Mutex::new(vec![None; names.len()]));
    let mut lanes = tokio::task::JoinSet::new();
    for _ in 0..LOOKUPS_IN_FLIGHT.min(names.len()) {
        let (resolver, queue, next, found) = (
            Arc::clone(&resolver),
            Arc::clone(&queue),
            Arc::clone(&next),
            Arc::clone(&found),
        );
        lanes.spawn(async move {
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let Some(name) = queue.get(index) else { break };
                let result = lookup(&resolver, name.clone()).await;
                found.lock().expect("results poisoned")[index] = Some(result);
            }
        });
    }
    let interrupted = wait_for_lanes(&mut lanes, bound).await;
    lanes.abort_all();
    if let Some(signal) = interrupted {
        return Err(Error::Interrupted { signal });
    }

    let found = std::mem::take(&mut *found.lock().expect("results poisoned"));
    let names = found
        .into_iter()
        .zip(names)
        .map(|(result, name)| {
            result.unwrap_or_else(|| NameAddrs {
                name: name.to_string(),
                addrs: Vec::new(),
                outcome: Outcome::Failed(format!(
                    "no answer within the {:.1} s bound (--resolve-timeout)",
                    bound.as_secs_f64()
                )),
                refused: Vec::new(),
            })
        })
        .collect();
    Ok(Found {
        names,
        refused: provider.refused_servers(),
    })
}

/// Waits until every lane is done or `bound` has passed; a stop signal during set-up ends the
/// wait at once (looked for every 20 ms) and is returned.
async fn wait_for_lanes(lanes: &mut tokio::task::JoinSet<()>, bound: Duration) -> Option<c_int> {
    const LOOK_FOR_STOP: Duration = Duration::from_millis(20);
    let deadline = tokio::time::Instant::now() + bound;
    let all_done = async { while lanes.join_next().await.is_some() {} };
    let mut all_done = std::pin::pin!(all_done);
    loop {
        let until = deadline.min(tokio::time::Instant::now() + LOOK_FOR_STOP);
        if tokio::time::timeout_at(until, &mut all_done).await.is_ok() {
            return None;
        }
        if let Some(signal) = signals::stop_during_set_up() {
            return Some(signal);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
    }
}

fn build_resolver(
    conf: &ResolvConf,
    ipv6: bool,
    provider: udp_mux::MuxProvider,
) -> Result<MuxResolver> {
    let servers = conf
        .nameservers
        .iter()
        .map(|addr| NameServerConfig::udp_and_tcp(*addr))
        .collect();
    let search = conf
        .search
        .iter()
        .filter_map(|domain| Name::from_str_relaxed(domain).ok())
        .collect();
    let config = ResolverConfig::from_parts(None, search, servers);

    let mut options = ResolverOpts::default();
    options.ip_strategy = if ipv6 {
        LookupIpStrategy::Ipv4AndIpv6
    } else {
        LookupIpStrategy::Ipv4Only
    };
    options.cache_size = 0;
    options.max_active_requests = 2 * LOOKUPS_IN_FLIGHT;
    if let Some(ndots) = conf.ndots {
        options.ndots = ndots;
    }
    if let Some(timeout) = conf.timeout {
        options.timeout = timeout;
    }
    if let Some(attempts) = conf.attempts {
        options.attempts = attempts;
    }
    Resolver::builder_with_config(config, provider)
        .with_options(options)
        .build()
        .map_err(|e| Error::Resolve(format!("cannot set up the resolver: {e}")))
}

async fn lookup(resolver: &MuxResolver, name: String) -> NameAddrs {
    let mut result = NameAddrs {
        name,
        addrs: Vec::new(),
        outcome: Outcome::Resolved,
        refused: Vec::new(),
    };
    // A name with a dot is absolute: never tried below the search domains (with `search
    // corp.test` and `ndots:5`, api.example.com would otherwise open whatever
    // api.example.com.corp.test resolves to).
    let query = match result.name.contains('.') {
        true => format!("{}.", result.name),
        false => result.name.clone(),
    };
    match resolver.lookup_ip(query.as_str()).await {
        Ok(lookup) => {
            if !result.name.contains('.') {
                log::warn!(
                    "{} has no dot: resolved through the search list, as {}",
                    result.name,
                    lookup.query().name()
                );
            }
            let lookup = lookup.as_lookup();
            for (addr, _) in chain_addresses(lookup.query().name(), lookup.answers()) {
                let list = if may_be_opened_by_name(addr) {
                    &mut result.addrs
                } else {
                    &mut result.refused
                };
                if !list.contains(&addr) {
                    list.push(addr);
                }
            }
            result.addrs.sort();
            if result.addrs.is_empty() {
                result.outcome = Outcome::NoAddress;
            }
        }
        Err(e) if e.is_nx_domain() => result.outcome = Outcome::NxDomain,
        Err(e) if e.is_no_records_found() => result.outcome = Outcome::NoAddress,
        Err(e) => result.outcome = Outcome::Failed(e.to_string()),
    }
    result
}

/// Where the agent's resolver finds names before asking DNS.
pub const HOSTS_FILE: &str = "/etc/hosts";

/// The addresses the hosts file gives allowlisted names (exact names; Docker's `--add-host`,
/// Compose's `extra_hosts`). With the DNS gateway the agent's resolver answers these from the
/// file, so no question would open them: they are opened at start, as static mode resolves.
/// An unreadable file gives nothing.
pub fn from_hosts_file(path: &std::path::Path, names: &[&str]) -> Resolution {
    use hickory_resolver::proto::op::Query;
    use hickory_resolver::proto::rr::RecordType;
    let mut hosts = hickory_resolver::Hosts::default();
    let read = std::fs::File::open(path).and_then(|file| hosts.read_hosts_conf(file));
    if read.is_err() {
        return Resolution::default();
    }
    let mut found = Vec::new();
    for name in names {
        let Ok(mut fqdn) = Name::from_ascii(name) else {
            continue;
        };
        fqdn.set_fqdn(true);
        let mut result = NameAddrs {
            name: name.to_string(),
            addrs: Vec::new(),
            outcome: Outcome::Resolved,
            refused: Vec::new(),
        };
        for kind in [RecordType::A, RecordType::AAAA] {
            let Some(lookup) = hosts.lookup_static_host(&Query::query(fqdn.clone(), kind)) else {
                continue;
            };
            for addr in lookup.answers().iter().filter_map(|r| r.data.ip_addr()) {
                let list = match may_be_opened_by_name(addr) {
                    true => &mut result.addrs,
                    false => &mut result.refused,
                };
                if !list.contains(&addr) {
                    list.push(addr);
                }
            }
        }
        if !result.addrs.is_empty() || !result.refused.is_empty() {
            found.push(result);
        }
    }
    Resolution {
        names: found,
        elapsed: Duration::ZERO,
    }
}

/// The addresses (with TTLs) of the Internet-class records on `question`'s CNAME chain: the
/// name asked, and each name a CNAME on the chain points to. Records for any other name in the
/// answer, or of another class, are ignored. Also the DNS gateway's rule.
pub(crate) fn chain_addresses(question: &Name, answers: &[Record]) -> Vec<(IpAddr, u32)> {
    let answers: Vec<&Record> = (answers.iter())
        .filter(|record| record.dns_class == DNSClass::IN)
        .collect();
    let mut chain: Vec<&Name> = vec![question];
    loop {
        let next: Vec<&Name> = answers
            .iter()
            .filter(|record| chain.contains(&&record.name))
            .filter_map(|record| match &record.data {
                RData::CNAME(target) => Some(&target.0),
                _ => None,
            })
            .filter(|target| !chain.contains(target))
            .collect();
        if next.is_empty() {
            break;
        }
        chain.extend(next);
    }
    answers
        .iter()
        .filter(|record| chain.contains(&&record.name))
        .filter_map(|record| record.data.ip_addr().map(|addr| (addr, record.ttl)))
        .collect()
}

/// A DNS answer may open a public or private address, never loopback (always reachable anyway),
/// link-local (cloud metadata lives at 169.254.169.254), multicast or unspecified, a cloud
/// metadata or platform endpoint (`METADATA`), nor an IPv6 address that carries a refused IPv4
/// address (the encodings `embedded_ipv4` reads, and IPv4-mapped): those need an address entry
/// that names them.
pub fn may_be_opened_by_name(addr: IpAddr) -> bool {
    if METADATA.contains(&addr) {
        return false;
    }
    match addr {
        IpAddr::V4(v4) => {
            !(v4.is_loopback()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_unspecified()
                || v4.is_broadcast())
        }
        IpAddr::V6(v6) => {
            let mapped = v6.to_ipv4_mapped().is_some();
            let carried = embedded_ipv4(v6).any(|v4| !may_be_opened_by_name(v4.into()));
            !(v6.is_loopback()
                || v6.is_unicast_link_local()
                || v6.is_multicast()
                || v6.is_unspecified()
                || mapped
                || carried)
        }
    }
}

/// Cloud metadata and platform endpoints outside the link-local range, exact addresses only
/// (100.100.100.200 is one address of 100.64.0.0/10, which Tailscale names use).
pub const METADATA: [IpAddr; 4] = [
    // Azure's platform endpoint (wireserver).
    IpAddr::V4(std::net::Ipv4Addr::new(168, 63, 129, 16)),
    // Alibaba Cloud's metadata service.
    IpAddr::V4(std::net::Ipv4Addr::new(100, 100, 100, 200)),
    // AWS's IPv6 instance metadata.
    IpAddr::V6(std::net::Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)),
    // Google Cloud's IPv6 metadata server.
    IpAddr::V6(std::net::Ipv6Addr::new(0xfd20, 0xce, 0, 0, 0, 0, 0, 0x254)),
];

/// The IPv4 addresses an IPv6 address may carry in the well-known encodings: NAT64
/// (64:ff9b::/96; in the local-use 64:ff9b:1::/48 the operator's prefix may be a /48, /56, /64
/// or /96, and RFC 6052 puts the IPv4 address at a different place for each, so all four are
/// read), IPv4-translated (SIIT, ::ffff:0:0:0/96), IPv4-compatible (::/96, except :: and ::1)
/// and 6to4 (2002::/16). (IPv4-mapped ::ffff:0:0/96 is refused as a whole by
/// `may_be_opened_by_name`.)
pub(crate) fn embedded_ipv4(v6: std::net::Ipv6Addr) -> impl Iterator<Item = std::net::Ipv4Addr> {
    let (s, o) = (v6.segments(), v6.octets());
    let at = |i: [usize; 4]| Some(std::net::Ipv4Addr::new(o[i[0]], o[i[1]], o[i[2]], o[i[3]]));
    let low = at([12, 13, 14, 15]);
    let carried: [Option<std::net::Ipv4Addr>; 4] = if s[..3] == [0x64, 0xff9b, 1] {
        // RFC 6052 §2.2: /48, /56, /64 (bits 64..71 are always zero, skipped), /96. A reading
        // of all zeros is the padding of another layout, not an address.
        [
            at([6, 7, 9, 10]),
            at([7, 9, 10, 11]),
            at([9, 10, 11, 12]),
            low,
        ]
        .map(|v4| v4.filter(|v4| !v4.is_unspecified()))
    } else if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0]
        || s[..6] == [0, 0, 0, 0, 0xffff, 0]
        || (s[..6] == [0; 6] && !v6.is_unspecified() && !v6.is_loopback())
    {
        [low, None, None, None]
    } else if s[0] == 0x2002 {
        [at([2, 3, 4, 5]), None, None, None]
    } else {
        [None; 4]
    };
    carried.into_iter().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowlisted_names_of_the_hosts_file_open_their_addresses_and_nothing_special() {
        let path = std::env::temp_dir().join(format!("cordon-hosts-{}", std::process::id()));
        std::fs::write(
            &path,
            "127.0.0.1 localhost\n\
             10.1.2.3 db.test cache.test # Compose's extra_hosts\n\
             fd00::3 db.test\n\
             169.254.169.254 metadata.test\n\
             192.0.2.9 other.test\n",
        )
        .unwrap();
        let found = from_hosts_file(&path, &["db.test", "metadata.test", "absent.test"]);
        let _ = std::fs::remove_file(&path);
        let summary: Vec<(String, Vec<String>, Vec<String>)> = found
            .names
            .iter()
            .map(|n| {
                let text = |list: &[IpAddr]| list.iter().map(|a| a.to_string()).collect();
                (n.name.clone(), text(&n.addrs), text(&n.refused))
            })
            .collect();
        assert_eq!(
            summary,
            [
                (
                    "db.test".into(),
                    vec!["10.1.2.3".into(), "fd00::3".into()],
                    vec![]
                ),
                (
                    "metadata.test".into(),
                    vec![],
                    vec!["169.254.169.254".into()]
                ),
            ]
        );
        let missing = std::path::Path::new("/nonexistent/hosts");
        assert!(from_hosts_file(missing, &["db.test"]).names.is_empty());
    }

    #[test]
    fn names_never_open_link_local_or_loopback() {
        for refused in [
            "169.254.169.254",
            "127.0.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "fe80::1",
            "::1",
            "::ffff:10.0.0.1",
            // Metadata endpoints, and refused IPv4 addresses in IPv6 encodings.
            "168.63.129.16",
            "100.100.100.200",
            "fd00:ec2::254",
            "fd20:ce::254",
            "64:ff9b::a9fe:a9fe",
            "::a9fe:a9fe",
            "::7f00:1",
            "2002:a9fe:a9fe::1",
            "64:ff9b:1::a9fe:a9fe",
            "64:ff9b:1:2:3:4:7f00:1",
            // 169.254.169.254 where a /48, /56 or /64 local-use NAT64 prefix puts it.
            "64:ff9b:1:a9fe:a9:fe00::",
            "64:ff9b:1:1a9:fe:a9fe::",
            "64:ff9b:1:1:a9:fea9:fe00:0",
            "::ffff:0:a9fe:a9fe",
        ] {
            assert!(
                !may_be_opened_by_name(refused.parse().unwrap()),
                "{refused}"
            );
        }
        for allowed in [
            "10.1.2.3",
            "192.0.2.1",
            "172.18.0.2",
            "2001:db8::1",
            "fd00::1",
            // Neighbours of the exact metadata addresses (Tailscale's 100.64.0.0/10), and public
            // IPv4 addresses in IPv6 encodings.
            "100.100.100.100",
            "100.64.0.1",
            "168.63.129.17",
            "64:ff9b::c000:201",
            "2002:c000:201::1",
            "64:ff9b:1::c000:201",
            "::ffff:0:c000:201",
        ] {
            assert!(may_be_opened_by_name(allowed.parse().unwrap()), "{allowed}");
        }
    }
}
