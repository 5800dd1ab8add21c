//! The fence: policy → resolve → plan → apply → verify, and the `plan` / `firewall` commands.

pub(crate) mod apply;
pub(crate) mod netinfo;
pub(crate) mod opened;
pub(crate) mod plan;
pub(crate) mod policy;
pub(crate) mod record;
pub(crate) mod resolv_conf;
pub(crate) mod resolve;
pub(crate) mod verify;

pub use apply::Backend;
pub use policy::{Sources, DEFAULT_CONFIG_DIR};

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::agent::user::{self, NOBODY};
use crate::capabilities;
use crate::credential::{self, service::CredentialGateway};
use crate::error::{exit, Error, Result};
use crate::gateway;
use crate::gateway::filter::{Names, OwnNetworks};
use crate::gateway::service::{self, Gateway, Keeper};
use crate::sys::caps::{self, Capability};
use crate::sys::signals::{self, Signals};
use apply::Tools;
use netinfo::{Ipv6, NetInfo};
use plan::{CredentialUpstream, Family, NatHook, Ruleset, SetMembers};
use policy::{Policy, Ports, Target};
use resolv_conf::ResolvConf;
use resolve::{Outcome, Resolution};

/// How the agent's names are resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dns {
    /// cordon's DNS gateway answers the agent (`crate::gateway`).
    Gateway,
    /// The names are resolved once, at start; the agent asks the resolvers directly.
    Static,
}

/// How the fence is built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub sources: policy::Sources,
    pub dns: Dns,
    /// Bound on the whole resolution phase.
    pub resolve_timeout: Duration,
    /// The resolver configuration.
    pub resolv_conf: PathBuf,
    pub backend: Backend,
    /// Apply even in what looks like the host's network namespace.
    pub allow_host_network: bool,
    /// After the self-test, also open a real TCP connection to each allowed name.
    pub verify_connect: bool,
    /// The credential gateway's upstream (host, port), reachable for its uid alone.
    pub credential_upstream: Option<(String, u16)>,
}

pub const DEFAULT_RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_RESOLV_CONF: &str = "/etc/resolv.conf";

impl Default for Options {
    fn default() -> Self {
        Options {
            sources: policy::Sources::default(),
            dns: Dns::Static,
            resolve_timeout: DEFAULT_RESOLVE_TIMEOUT,
            resolv_conf: PathBuf::from(DEFAULT_RESOLV_CONF),
            backend: Backend::Auto,
            allow_host_network: false,
            verify_connect: false,
            credential_upstream: None,
        }
    }
}

/// What the fence is built from: the policy, the resolvers, and the names' addresses.
struct Prepared {
    policy: Policy,
    conf: ResolvConf,
    upstream: Option<CredentialUpstream>,
    resolution: Resolution,
    ruleset: Ruleset,
}

/// The policy and the resolvers, and the credential gateway's upstream resolved now (its rules
/// name its addresses).
fn read_inputs(opts: &Options) -> Result<(Policy, ResolvConf, Option<CredentialUpstream>)> {
    let cordon_allow = std::env::var("CORDON_ALLOW").ok();
    let mut policy = policy::load(&opts.sources, cordon_allow.as_deref())?;
    if opts.dns == Dns::Static {
        policy.refuse_wildcards()?;
    }
    let conf = resolv_conf::read(&opts.resolv_conf)?;
    let upstream = match &opts.credential_upstream {
        Some((host, port)) => {
            let host = host.trim_end_matches('.');
            let agent_too = leave_the_api_to_the_credential_gateway(&mut policy, host);
            let mut upstream = resolve_credential_upstream(opts, host, *port, &conf)?;
            upstream.agent_too = agent_too;
            Some(upstream)
        }
        None => None,
    };
    Ok((policy, conf, upstream))
}

/// The Anthropic hosts the default profile gives the agent, none of which it needs when its
/// requests go through the credential gateway (which holds the credential: no login).
const CLAUDE_PROFILE_HOSTS: [&str; 3] = ["api.anthropic.com", "claude.ai", "platform.claude.com"];

/// With the credential gateway the agent keeps no way to the API of its own: the built-in
/// profiles' entries for the upstream and the default profile's Anthropic hosts go. Whether an
/// entry of the user's own (`--allow`, an allowlist file, `CORDON_ALLOW`) still names the
/// upstream: then it stays open to the agent too, with a warning; otherwise the fence rejects
/// the agent's connections to its addresses whatever else would open them (another name's
/// answer, a network entry).
fn leave_the_api_to_the_credential_gateway(policy: &mut Policy, upstream: &str) -> bool {
    let from_default_profile = format!("profile {}", policy::DEFAULT_PROFILE);
    let names_upstream = |target: &Target| match target {
        Target::Name(name) => name == upstream,
        Target::Wildcard(parent) => upstream.ends_with(&format!(".{parent}")),
        Target::Net(_) => false,
    };
    policy.entries.retain(|entry| {
        let claude_host = entry.origin.source == from_default_profile
            && matches!(&entry.target, Target::Name(name) if CLAUDE_PROFILE_HOSTS.contains(&name.as_str()));
        let from_a_profile = entry.origin.source.starts_with("profile ");
        !(claude_host || from_a_profile && names_upstream(&entry.target))
    });
    let mut opened = false;
    for entry in policy.entries.iter().filter(|e| names_upstream(&e.target)) {
        opened = true;
        log::warn!(
            "{}: {} lets the agent reach the credential gateway's upstream itself, which \
             reopens the channel the gateway closes (a key of its own, an account of its own); \
             remove it unless that is what you want",
            entry.origin,
            entry.target
        );
    }
    opened
}

/// The credential gateway's upstream addresses: an address as it is, else the hosts file, else
/// the resolvers. None is an error: the agent would have no API.
fn resolve_credential_upstream(
    opts: &Options,
    host: &str,
    port: u16,
    conf: &ResolvConf,
) -> Result<CredentialUpstream> {
    let mut addrs: Vec<std::net::IpAddr> = match host.parse() {
        Ok(addr) => vec![addr],
        Err(_) => resolve::from_hosts_file(Path::new(resolve::HOSTS_FILE), &[host])
            .names
            .into_iter()
            .flat_map(|name| name.addrs)
            .collect(),
    };
    if addrs.is_empty() {
        let options = resolve::Options {
            bound: opts.resolve_timeout,
            ipv6: NetInfo::read().has_ipv6_address(),
        };
        let resolution = resolve::resolve(&[host], conf, options)?;
        addrs = resolution
            .names
            .into_iter()
            .flat_map(|name| name.addrs)
            .collect();
    }
    if addrs.is_empty() {
        return Err(Error::Resolve(format!(
            "the credential gateway's upstream {host} did not resolve: the agent would have no \
             API (check the name, or the resolver in {})",
            conf.source
        )));
    }
    Ok(CredentialUpstream {
        uid: crate::credential::CREDENTIAL_UID,
        port,
        addrs,
        agent_too: false,
    })
}

fn resolve_names(
    opts: &Options,
    policy: &Policy,
    conf: &ResolvConf,
    net: &NetInfo,
) -> Result<Resolution> {
    let options = resolve::Options {
        bound: opts.resolve_timeout,
        ipv6: net.has_ipv6_address(),
    };
    let resolution = resolve::resolve(&policy.names(), conf, options)?;
    report_resolution(&resolution, options);
    let unresolved: Vec<&str> = resolution.unresolved().map(|n| n.name.as_str()).collect();
    if policy.strict && !unresolved.is_empty() {
        return Err(Error::Resolve(format!(
            "--strict: {} did not resolve",
            unresolved.join(", ")
        )));
    }
    Ok(resolution)
}

/// With the gateway nothing is resolved at start, but names the hosts file answers never reach
/// it: those open their addresses now.
fn names_in_hosts_file(policy: &Policy) -> Resolution {
    let found = resolve::from_hosts_file(Path::new(resolve::HOSTS_FILE), &policy.names());
    for name in &found.names {
        let addrs: Vec<String> = name.addrs.iter().map(|a| a.to_string()).collect();
        if !addrs.is_empty() {
            log::info!(
                "{} is in {}: {} opened at start",
                name.name,
                resolve::HOSTS_FILE,
                addrs.join(" ")
            );
        }
    }
    found
}

fn prepare(opts: &Options) -> Result<Prepared> {
    let (policy, conf, upstream) = read_inputs(opts)?;
    let resolution = match opts.dns {
        Dns::Static => resolve_names(opts, &policy, &conf, &NetInfo::read())?,
        Dns::Gateway => names_in_hosts_file(&policy),
    };
    let ruleset = planned(opts, &policy, &resolution, &conf, &upstream)?;
    Ok(Prepared {
        policy,
        conf,
        upstream,
        resolution,
        ruleset,
    })
}

/// The ruleset for these inputs, with the agent's DNS where `opts.dns` sends it and the
/// credential gateway's upstream.
fn planned(
    opts: &Options,
    policy: &Policy,
    resolution: &Resolution,
    conf: &ResolvConf,
    upstream: &Option<CredentialUpstream>,
) -> Result<Ruleset> {
    let mut ruleset = plan::plan(policy, resolution, conf)?;
    if let Dns::Gateway = opts.dns {
        ruleset = ruleset.with_agent_dns(gateway::service::AGENT_DNS);
    }
    if let Some(upstream) = upstream {
        ruleset = ruleset.with_credential_upstream(upstream.clone());
    }
    Ok(ruleset)
}

/// `cordon plan`: print what would be loaded; change nothing.
pub fn plan(opts: &Options) -> Result<i32> {
    let prepared = prepare(opts)?;
    print!("{}", render_plan(&prepared));
    Ok(exit::OK)
}

/// `cordon firewall` and `init-firewall.sh`: apply, verify, exit. SIGINT, SIGTERM, SIGHUP and
/// SIGQUIT end set-up at its next checkpoint or wait (at most ~20 ms away), egress locked down,
/// with 128+n; one that comes once the fence is confirmed leaves it in place.
pub fn firewall(opts: &Options, agent: &user::Request, signals: &Signals) -> Result<i32> {
    let scope = Scope::enter(opts)?;
    let account = match user::lookup(&agent.user, agent.uid_from.as_deref()) {
        Ok(account) => account,
        Err(error) => {
            log::debug!("probing as uid {NOBODY}: {error}");
            user::Account::nobody()
        }
    };
    let probe_uid = account.uid;
    let ready = scope.ready(opts)?;
    capabilities::require(capabilities::FENCE).map_err(|e| ready.refuse(e))?;
    // A credential given to the drop-in (a secret file: sudo passes no variables) gets a
    // credential gateway daemon, for the sessions whose remoteEnv points at it.
    let mut vars: Vec<(std::ffi::OsString, std::ffi::OsString)> = std::env::vars_os().collect();
    let taken = credential::take(credential::Mode::Auto, &account, &mut vars)
        .map_err(|e| ready.refuse(e))?;
    let mut opts = opts.clone();
    opts.credential_upstream = taken.as_ref().map(credential::Taken::upstream_host_port);
    let fence = establish(&opts, ready, probe_uid)?;
    // The gateways outlive this command as daemons; a later run replaces them.
    fence.start_gateway(probe_uid, signals, Keeper::Daemon)?;
    match taken {
        Some(taken) => {
            let config = taken.config(fence.credential_upstream_addrs());
            CredentialGateway::start(config, signals, Keeper::Daemon)
                .map_err(|e| fence.refuse(e))?;
        }
        None => credential::service::none_here(),
    }
    interrupted().map_err(|e| fence.refuse(e))?;
    fence.confirm()?;
    signals::set_up_over();
    if let Some(signal) = signals.pending_stop() {
        log::warn!(
            "{}, after the fence was in place: it holds",
            Error::Interrupted { signal }
        );
        return Ok(128 + signal);
    }
    Ok(exit::OK)
}

/// A network namespace cordon may fence: cordon is root, and the namespace is a container's (not
/// the host's, unless `--allow-host-network`) with a network (not `--network none`). Nothing has
/// changed yet. From here on a refusal leaves egress denied where cordon can change the firewall
/// (`refuse`): the drop-in shape keeps the container running after cordon exits.
pub struct Scope {
    net: NetInfo,
    may_cut_links: bool,
    timings: Timings,
}

impl Scope {
    pub fn enter(opts: &Options) -> Result<Scope> {
        let timings = Timings::start();
        if !nix::unistd::geteuid().is_root() {
            return Err(Error::NotRoot {
                action: "applying the firewall",
            });
        }
        if !opts.allow_host_network {
            let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
            let devices = netinfo::host_namespace_devices(
                Path::new("/proc/net/dev"),
                Path::new("/sys/class/net"),
                netinfo::in_kata_guest(&mountinfo),
            );
            if !devices.is_empty() {
                return Err(Error::HostNetwork { devices });
            }
        }
        let net = NetInfo::read();
        if net.addrs.is_empty() && net.gateways.is_empty() {
            return Err(Error::NoNetwork);
        }
        Ok(Scope {
            net,
            // Never in a namespace the user said may be the host's.
            may_cut_links: !opts.allow_host_network,
            timings,
        })
    }

    /// `error`, after locking egress down where cordon holds CAP_NET_ADMIN (without it nothing
    /// can have changed, and nothing can be done).
    pub fn refuse(&self, error: Error) -> Error {
        self.refuse_with(None, error)
    }

    fn refuse_with(&self, variant: Option<&'static str>, error: Error) -> Error {
        // A tool or lookup that a stop cut short failed because of it: say so. Any other
        // failure (a wrong verdict, say) is reported as what it is.
        let error = match signals::stop_during_set_up() {
            Some(signal) if error.cut_short_by_stop() => Error::Interrupted { signal },
            _ => error,
        };
        // Set-up is over: the lockdown's own tools must run to the end.
        signals::set_up_over();
        if !caps::holds(Capability::CAP_NET_ADMIN) {
            return error;
        }
        Error::FailedClosed {
            cause: Box::new(error),
            state: apply::lockdown(variant, self.families(), self.may_cut_links),
        }
    }

    fn families(&self) -> &'static [Family] {
        apply::families(self.net.ipv6.in_kernel())
    }

    /// Finds the firewall tools and checks that the kernel can take a firewall.
    pub fn ready(self, opts: &Options) -> Result<Ready> {
        let found = Tools::locate(opts.backend).and_then(|tools| {
            apply::netfilter_netlink()?;
            if tools.variant == "legacy" {
                apply::legacy_lock_writable()?;
            }
            Ok(tools)
        });
        match found {
            Ok(tools) => Ok(Ready { scope: self, tools }),
            Err(error) => Err(self.refuse_with(opts.backend.variant(), error)),
        }
    }
}

/// Everything the fence needs, found before anything changed.
pub struct Ready {
    scope: Scope,
    tools: Tools,
}

impl Ready {
    /// `error`, after locking egress down (see `Scope::refuse`).
    pub fn refuse(&self, error: Error) -> Error {
        self.scope.refuse_with(Some(self.tools.variant), error)
    }
}

/// A fence that was loaded and passed its self-test, with the record of its rules and the set
/// members the plan gives.
pub struct Fence {
    ready: Ready,
    record: record::Loaded,
    planned_sets: SetMembers,
    dns: Dns,
    policy: Policy,
    conf: ResolvConf,
    upstream: Option<CredentialUpstream>,
}

impl Fence {
    /// `error`, after locking egress down.
    pub fn refuse(&self, error: Error) -> Error {
        self.ready.refuse(error)
    }

    /// The credential gateway's upstream addresses (none without it).
    pub fn credential_upstream_addrs(&self) -> Vec<std::net::IpAddr> {
        self.upstream
            .as_ref()
            .map_or_else(Vec::new, |upstream| upstream.addrs.clone())
    }

    /// Verified means now: reads the fence back and compares it with the record taken after
    /// loading. Called immediately before the agent starts; any change fails closed. When it
    /// holds, the record is left for `cordon check` (`record::RECORD_FILE`).
    pub fn confirm(&self) -> Result<()> {
        let now = record::read_again(&self.ready.tools, self.ready.scope.families(), &self.record)
            .map_err(|detail| self.ready.refuse(failed_read(detail)))?;
        let mut changes = now.changes_since(&self.record);
        changes.extend(now.set_differences_from_plan(&self.planned_sets));
        if changes.is_empty() {
            let loaded = self.record.with_sets(&self.planned_sets);
            if let Err(e) = loaded.save(self.ready.tools.variant) {
                log::warn!(
                    "cannot leave the record of the fence in {} ({e}): `cordon check` will not \
                     compare the live fence with it",
                    record::RECORD_FILE
                );
            }
            return Ok(());
        }
        Err(self.ready.refuse(Error::NotAsLoaded(format!(
            "the fence changed after the self-test: {}",
            changes.join(", ")
        ))))
    }
}

impl Fence {
    /// With the DNS gateway: binds its port, starts it (`gateway::service`, kept by `keeper`)
    /// and proves that the agent's DNS reaches it (`gateway::self_test`). Call while cordon is
    /// single-threaded. Any failure leaves egress locked down.
    pub fn start_gateway(
        &self,
        agent_uid: u32,
        signals: &Signals,
        keeper: Keeper,
    ) -> Result<Option<Gateway>> {
        if self.dns != Dns::Gateway {
            return Ok(None);
        }
        self.try_start_gateway(agent_uid, signals, keeper)
            .map(Some)
            .map_err(|error| self.ready.refuse(error))
    }

    fn try_start_gateway(
        &self,
        agent_uid: u32,
        signals: &Signals,
        keeper: Keeper,
    ) -> Result<Gateway> {
        let started = Instant::now();
        let net = &self.ready.scope.net;
        let families = apply::families(net.ipv6 == Ipv6::On);
        let usable: Vec<std::net::IpAddr> = self
            .conf
            .nameservers
            .iter()
            .copied()
            .filter(|addr| families.contains(&Family::of(addr)))
            .collect();
        let Some(upstream) = usable.first() else {
            return Err(Error::CannotFence(format!(
                "{} names no nameserver this namespace can reach (IPv6 is off here): the DNS \
                 gateway has no upstream",
                self.conf.source
            )));
        };
        if agent_uid == service::GATEWAY_UID {
            return Err(Error::BadUser(format!(
                "the agent's uid {agent_uid} is the DNS gateway's: choose another user, or start \
                 with --dns static"
            )));
        }
        let token = gateway::self_test::new_token();
        let config = service::Config {
            upstream: std::net::SocketAddr::new(*upstream, 53),
            names: Names::from_policy(&self.policy).with_self_test(token.clone()),
            own: OwnNetworks {
                nets: net.addrs.clone(),
                gateways: net.gateways.clone(),
            },
            blocked_file: service::open_blocked_file(),
            control: gateway::control::bind(),
        };
        let patience = match keeper {
            Keeper::Daemon => {
                service::replace_daemon();
                Duration::from_secs(2)
            }
            Keeper::Supervisor => Duration::ZERO,
        };
        let listeners = service::Listeners::bind(families, patience)?;
        let mut running = Gateway::start(config, listeners, signals, keeper)?;
        let failures = gateway::self_test::run(&usable, agent_uid, &token);
        if !failures.is_empty() {
            running.stop();
            return Err(Error::Verify { failures });
        }
        running.note_daemon();
        log::info!(
            "DNS gateway (uid {}) answers the agent's DNS, asks {upstream} for allowlisted \
             names only; self-test passed in {:.1} ms",
            service::GATEWAY_UID,
            started.elapsed().as_secs_f64() * 1e3
        );
        Ok(running)
    }
}

fn failed_read(detail: String) -> Error {
    Error::Apply {
        step: "reading the fence back".into(),
        detail,
    }
}

/// Builds the fence and proves it. Once cordon is able to change the firewall, any failure —
/// a bad entry, an unreachable resolver, a rejected restore, a wrong verdict, a stop signal
/// during set-up (`interrupted`) — leaves egress locked down instead of open.
pub fn establish(opts: &Options, mut ready: Ready, agent_uid: u32) -> Result<Fence> {
    let mut timings = std::mem::replace(&mut ready.scope.timings, Timings::start());
    match build(opts, agent_uid, &ready, &mut timings) {
        Ok((record, prepared)) => {
            log::info!("fence ready in {}", timings.summary());
            Ok(Fence {
                ready,
                record,
                planned_sets: prepared.ruleset.set_members(),
                dns: opts.dns,
                policy: prepared.policy,
                conf: prepared.conf,
                upstream: prepared.upstream,
            })
        }
        Err(cause) => Err(ready.refuse(cause)),
    }
}

/// Set-up's checkpoint: a pending stop signal ends it here (see `Signals::end_set_up_on_stop`).
pub fn interrupted() -> Result<()> {
    match signals::stop_during_set_up() {
        Some(signal) => Err(Error::Interrupted { signal }),
        None => Ok(()),
    }
}

fn build(
    opts: &Options,
    agent_uid: u32,
    ready: &Ready,
    timings: &mut Timings,
) -> Result<(record::Loaded, Prepared)> {
    let (tools, net) = (&ready.tools, &ready.scope.net);
    interrupted()?;
    let (policy, conf, upstream) = read_inputs(opts)?;
    timings.mark("policy");
    let nat_reads = apply::NatReads::start(tools, net.ipv6, opts.dns == Dns::Gateway);
    let (ruleset, resolution) = match opts.dns {
        // The gateway opens each name's addresses as the agent asks for it: nothing to resolve
        // (but the hosts file), every set member is known now.
        Dns::Gateway => {
            let resolution = names_in_hosts_file(&policy);
            let ruleset = planned(opts, &policy, &resolution, &conf, &upstream)?;
            apply::load_rules(tools, &ruleset, net.ipv6, nat_reads, apply::Sets::FillNow)?;
            interrupted()?;
            timings.mark("rules+sets");
            (ruleset, resolution)
        }
        // The rules do not depend on any address (addresses live in the sets), so they load
        // while the names resolve; the sets are filled and swapped in once the addresses are
        // known.
        Dns::Static => {
            let rules_only = planned(opts, &policy, &Resolution::default(), &conf, &upstream)?;
            let (loaded, resolution) = std::thread::scope(|scope| {
                let resolving = scope.spawn(|| resolve_names(opts, &policy, &conf, net));
                let loaded =
                    apply::load_rules(tools, &rules_only, net.ipv6, nat_reads, apply::Sets::Later);
                (loaded, resolving.join().expect("resolution panicked"))
            });
            loaded?;
            let resolution = resolution?;
            interrupted()?;
            timings.mark("resolve+rules");
            let ruleset = planned(opts, &policy, &resolution, &conf, &upstream)?;
            apply::load_sets(tools, &ruleset)?;
            timings.mark("sets");
            (ruleset, resolution)
        }
    };
    let record = record::read_rules(tools, ready.scope.families()).map_err(failed_read)?;
    // Where IPv6 is off, a failed IPv6 load was only a warning: its table is not held to the plan.
    let planned_families = apply::families(net.ipv6 == Ipv6::On);
    let differences = record.rule_differences_from_plan(&ruleset, planned_families);
    if !differences.is_empty() {
        return Err(Error::NotAsLoaded(format!(
            "the loaded fence differs from the plan: {}",
            differences.join(", ")
        )));
    }
    timings.mark("record");
    interrupted()?;
    log::info!(
        "fence loaded ({} iptables): {}{}",
        tools.variant,
        describe_sets(&ruleset),
        match net.ipv6 {
            Ipv6::On => "",
            Ipv6::Off =>
                "; IPv6 is off in this namespace (no IPv6 address, e.g. Docker's \
                          ordinary networks): nothing can be sent over it, its rules are loaded \
                          anyway",
            Ipv6::Absent => "; the kernel has no IPv6",
        }
    );
    let prepared = Prepared {
        policy,
        conf,
        upstream,
        resolution,
        ruleset,
    };

    let mut results =
        verify::run_probes(verify::plan_probes(&prepared.ruleset, net), agent_uid, true);
    // A probe sends from a random port; one that lands on a flow tracked before it (the
    // upstream socket's of a gateway a rerun just replaced) meets that flow, not the rule it
    // tests. Failed probes run once more from fresh ports: a wrong rule fails again.
    let failed: Vec<verify::Probe> = (results.iter())
        .filter(|r| !r.passed())
        .map(|r| r.probe.clone())
        .collect();
    if !failed.is_empty() {
        results.retain(|r| r.passed());
        results.extend(verify::run_probes(failed, agent_uid, true));
    }
    for result in &results {
        log::debug!("probe {}", result.describe());
    }
    if results
        .iter()
        .any(|r| r.observed == verify::Observed::NotAsOwner)
    {
        // Normally caught by the preflight; never report it as a verdict.
        return Err(Error::MissingCapabilities {
            missing: vec![capabilities::PROBES],
        });
    }
    let mut failures: Vec<String> = results
        .iter()
        .filter(|r| !r.passed())
        .map(|r| r.describe())
        .collect();
    if failures.is_empty() && opts.verify_connect {
        interrupted()?;
        failures.extend(connect_to_allowed_names(&prepared));
    }
    timings.mark("verify");
    if !failures.is_empty() {
        return Err(Error::Verify { failures });
    }
    interrupted()?;
    let blocked = results
        .iter()
        .filter(|r| r.probe.expect == plan::Verdict::Reject)
        .count();
    log::info!(
        "self-test passed: {} ({} allowed, {} blocked) in {:.1} ms",
        crate::logging::count(results.len() as u64, "probe"),
        results.len() - blocked,
        blocked,
        results
            .iter()
            .map(|r| r.elapsed)
            .max()
            .unwrap_or_default()
            .as_secs_f64()
            * 1e3
    );
    log::info!(
        "opened: {}",
        opened::summary(
            &prepared.policy,
            &prepared.resolution,
            opts.credential_upstream
                .as_ref()
                .map(|(host, port)| (host.as_str(), *port)),
            opened::SHOWN
        )
    );
    Ok((record, prepared))
}

fn report_resolution(resolution: &Resolution, options: resolve::Options) {
    for name in &resolution.names {
        let addrs: Vec<String> = name.addrs.iter().map(|a| a.to_string()).collect();
        match &name.outcome {
            Outcome::Resolved => log::debug!("{} → {}", name.name, addrs.join(" ")),
            Outcome::NoAddress => {
                log::warn!("{} has no A or AAAA records: not reachable", name.name)
            }
            Outcome::NxDomain => {
                log::warn!("{} does not exist (NXDOMAIN): not reachable", name.name)
            }
            Outcome::Failed(reason) => {
                log::warn!("{} did not resolve ({reason}): not reachable", name.name)
            }
        }
        if !name.refused.is_empty() {
            let refused: Vec<String> = name.refused.iter().map(|a| a.to_string()).collect();
            log::warn!(
                "{} resolved to {}: loopback, link-local, multicast and cloud metadata answers \
                 are ignored (allow the address itself if it is meant)",
                name.name,
                refused.join(" ")
            );
        }
    }
    let resolved = resolution
        .names
        .iter()
        .filter(|n| n.outcome == Outcome::Resolved)
        .count();
    if !resolution.names.is_empty() {
        log::info!(
            "resolved {resolved}/{} names in {:.1} ms{}",
            resolution.names.len(),
            resolution.elapsed.as_secs_f64() * 1e3,
            if options.ipv6 {
                ""
            } else {
                " (IPv4 only: no IPv6 address in this namespace)"
            }
        );
    }
}

fn describe_sets(ruleset: &Ruleset) -> String {
    [Family::V4, Family::V6]
        .iter()
        .map(|family| {
            let rules = ruleset.family(*family);
            format!(
                "{} {} (address, port) + {} any-port",
                family.name(),
                rules.port_elements(),
                rules.hosts.len()
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `--verify-connect`: one real TCP connection per allowed name, to its first address and port.
fn connect_to_allowed_names(prepared: &Prepared) -> Vec<String> {
    let resolved = prepared.resolution.index();
    let mut failures = Vec::new();
    for entry in &prepared.policy.entries {
        let (Target::Name(name), Ports::Listed(ranges)) = (&entry.target, &entry.ports) else {
            continue;
        };
        let Some(range) = ranges.iter().find(|r| r.proto == policy::Proto::Tcp) else {
            continue;
        };
        let Some(addr) = resolved.get(name.as_str()).and_then(|n| n.addrs.first()) else {
            continue;
        };
        let target = std::net::SocketAddr::new(*addr, range.first);
        match std::net::TcpStream::connect_timeout(&target, Duration::from_secs(5)) {
            Ok(_) => log::info!("--verify-connect: {name} ({target}) connected"),
            Err(e) => failures.push(format!("--verify-connect: {name} ({target}): {e}")),
        }
    }
    failures
}

fn render_plan(prepared: &Prepared) -> String {
    let resolved = prepared.resolution.index();
    let mut out = String::new();
    out.push_str("# Allowlist\n");
    for entry in &prepared.policy.entries {
        let addrs = match &entry.target {
            Target::Name(name) => match resolved.get(name.as_str()) {
                Some(n) if n.outcome == Outcome::Resolved => n
                    .addrs
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(" "),
                Some(n) => format!("(unresolved: {:?})", n.outcome),
                None => "(unresolved)".into(),
            },
            _ => String::new(),
        };
        out.push_str(&format!(
            "# {} [{}] {}  ({})\n",
            entry.target, entry.ports, addrs, entry.origin
        ));
    }
    if !prepared.policy.inbound.is_empty() {
        let inbound: Vec<String> = prepared
            .policy
            .inbound
            .iter()
            .map(|p| p.to_string())
            .collect();
        out.push_str(&format!("# Inbound ports: {}\n", inbound.join(",")));
    }
    out.push_str(&format!(
        "# Resolvers ({}): {}\n\n",
        prepared.conf.source,
        prepared
            .conf
            .nameservers
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(" ")
    ));
    out.push_str("# ipset -exist restore\n");
    out.push_str(&prepared.ruleset.ipset_restore());
    out.push('\n');
    out.push_str(&prepared.ruleset.iptables_restore(Family::V4));
    out.push('\n');
    out.push_str(&prepared.ruleset.iptables_restore(Family::V6));
    for family in [Family::V4, Family::V6] {
        let nat = prepared
            .ruleset
            .nat_restore(family, NatHook::Misplaced { count: 0 });
        if !nat.is_empty() {
            out.push('\n');
            out.push_str(&nat);
        }
    }
    out
}

/// Wall-clock time per phase, for the startup report.
struct Timings {
    last: Instant,
    started: Instant,
    phases: Vec<(&'static str, Duration)>,
}

impl Timings {
    fn start() -> Self {
        let now = Instant::now();
        Timings {
            last: now,
            started: now,
            phases: Vec::new(),
        }
    }

    fn mark(&mut self, phase: &'static str) {
        let now = Instant::now();
        self.phases.push((phase, now - self.last));
        self.last = now;
    }

    fn summary(&self) -> String {
        let phases: Vec<String> = self
            .phases
            .iter()
            .map(|(name, took)| format!("{name} {:.1}", took.as_secs_f64() * 1e3))
            .collect();
        format!(
            "{:.1} ms ({} ms)",
            self.started.elapsed().as_secs_f64() * 1e3,
            phases.join(", ")
        )
    }
}
