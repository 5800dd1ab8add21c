//! Live changes by root: `cordon allow ENTRY`, `cordon deny ENTRY` and `cordon status`, over a
//! Unix socket the gateway serves. PID 1 (or `cordon firewall`) binds it as root with mode 0600,
//! so only root can connect (the agent's `connect` fails with EACCES), and the gateway also
//! checks each peer's credentials (SO_PEERCRED: uid 0). One request line, one reply.
//!
//! `allow` takes a name or wildcard entry (its addresses open when the agent next asks);
//! address entries are rules of the fence and need a restart. `deny` removes a name or wildcard:
//! the gateway refuses it from then on, deletes from the `answered` sets every address that no
//! remaining entry's name had opened, and flushes connection tracking so that established flows
//! are judged again (those to the closed addresses are rejected at their next packet; allowed
//! ones are picked up again and go on).

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::filter::{Names, Opened};
use super::sets;
use crate::error::{exit, Error, Result};
use crate::fence::plan::Family;
use crate::fence::policy::{parse_entry, Ports, Target};
use crate::fence::record;
use crate::sys::set_netlink::{self, Member};

pub const CONTROL_SOCKET: &str = "/run/cordon/control";
/// Root's changes so far, one `allow ENTRY` / `deny ENTRY` line each (root-only): a gateway PID 1
/// restarts replays them, so a name root denied stays denied.
pub const CHANGES_FILE: &str = "/run/cordon/live-changes";
/// The most of `CHANGES_FILE` a restarted gateway reads.
const MAX_CHANGES: u64 = 1 << 20;
/// Addresses whose names the gateway remembers for `deny`; past that, an address closes only
/// when its timeout runs out.
const MAX_TRACKED: usize = 1 << 13;
/// Names remembered per address (the latest ones): a CDN address serves many names.
const MAX_NAMES_PER_ADDRESS: usize = 8;

/// Binds the control socket (root-owned, 0600). None, with a warning, where it cannot be made.
pub fn bind() -> Option<Control> {
    let listener = bind_socket()?;
    let path = std::path::Path::new(CHANGES_FILE);
    let journal = crate::sys::run_dir::replace(path, 0o600, "").and_then(|()| {
        std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
    });
    match journal {
        Ok(journal) => Some(Control { listener, journal }),
        Err(error) => {
            log::warn!(
                "cannot create {CHANGES_FILE} ({error}): `cordon allow/deny/status` will not work"
            );
            None
        }
    }
}

/// Root's channel to the running gateway: the socket, and the record of what root changed.
pub struct Control {
    pub listener: UnixListener,
    pub journal: std::fs::File,
}

impl Control {
    /// Applies root's earlier changes (a gateway PID 1 restarted starts from the allowlist).
    pub fn replay(&self, names: &Names) {
        use std::os::unix::fs::FileExt;
        let mut bytes = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        while (bytes.len() as u64) < MAX_CHANGES {
            match self.journal.read_at(&mut chunk, bytes.len() as u64) {
                Ok(0) | Err(_) => break,
                Ok(got) => bytes.extend_from_slice(&chunk[..got]),
            }
        }
        for line in String::from_utf8_lossy(&bytes).lines() {
            let (command, argument) = line.split_once(' ').unwrap_or((line, ""));
            let Ok((target, ports)) = parse_entry(argument) else {
                continue;
            };
            match command {
                "allow" => {
                    names.add(&target, &ports);
                }
                "deny" => {
                    names.remove(&target);
                }
                _ => {}
            }
        }
    }

    fn note(&self, line: &str) {
        if let Err(error) = (&self.journal).write_all(format!("{line}\n").as_bytes()) {
            log::warn!("DNS gateway: noting `{line}` in {CHANGES_FILE}: {error}");
        }
    }
}

fn bind_socket() -> Option<UnixListener> {
    let path = std::path::Path::new(CONTROL_SOCKET);
    let bound = crate::sys::run_dir::ensure(path.parent().expect("a directory"))
        .and_then(|()| match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        })
        .and_then(|()| {
            // Created with no permission for anyone but its owner from the start.
            // SAFETY: umask(2) only changes this process's file-creation mask.
            let previous = unsafe { libc::umask(0o177) };
            let listener = UnixListener::bind(path);
            // SAFETY: as above.
            unsafe { libc::umask(previous) };
            listener
        })
        .and_then(|listener| {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
            Ok(listener)
        });
    match bound {
        Ok(listener) => Some(listener),
        Err(error) => {
            log::warn!("cannot create {CONTROL_SOCKET} ({error}): `cordon allow/deny/status` will not work");
            None
        }
    }
}

/// What the gateway counts, and which names opened which addresses (for `deny`).
pub struct Live {
    pub forwarded: AtomicU64,
    pub cached: AtomicU64,
    pub refused: AtomicU64,
    /// Whether the UDP loops stopped believing answers over UDP (`udp::UdpTrust`).
    pub udp_distrusted: AtomicBool,
    started: Instant,
    upstream: String,
    owners: Mutex<HashMap<IpAddr, Owner>>,
}

#[derive(Default)]
struct Owner {
    /// The names it was answered for (one, mostly), the last answer's time.
    names: Vec<Arc<str>>,
    members: Vec<Member>,
    answered: Option<Instant>,
    /// Until when an answer put it into the sets, the latest.
    open_until: Option<Instant>,
}

/// Makes room among the tracked addresses: forgets the half answered longest ago (those close
/// when their timeout runs out, not on `deny`). Once per `MAX_TRACKED / 2` new addresses.
fn forget_older_half(owners: &mut HashMap<IpAddr, Owner>) {
    let mut times: Vec<Option<Instant>> = owners.values().map(|owner| owner.answered).collect();
    let middle = times.len() / 2;
    let (_, cut, _) = times.select_nth_unstable(middle);
    let cut = *cut;
    owners.retain(|_, owner| owner.answered > cut);
}

/// `opened` with no timeout shorter than what an earlier answer gave the same address (None:
/// none is): adding a member again sets its timeout, and a program that keeps the earlier
/// answer for its TTL (another name's, say, on the same CDN address) must find it still open.
fn never_shorter(
    owners: &HashMap<IpAddr, Owner>,
    opened: &[Opened],
    now: Instant,
) -> Option<Vec<Opened>> {
    let left = |found: &Opened| {
        let until = owners.get(&found.addr)?.open_until?;
        Some(until.saturating_duration_since(now)).filter(|left| *left > found.timeout)
    };
    opened.iter().any(|found| left(found).is_some()).then(|| {
        (opened.iter())
            .map(|found| Opened {
                // Whole seconds, rounded up: the sets count in seconds.
                timeout: left(found).map_or(found.timeout, |left| {
                    Duration::from_secs(left.as_secs() + u64::from(left.subsec_nanos() > 0))
                }),
                ..found.clone()
            })
            .collect()
    })
}

/// Adds what answers opened to the sets (`add`: `sets::open`, but for tests), no timeout
/// shorter than an earlier answer gave, and notes it as of `now`. What is noted is the answers'
/// own timeouts (each at most `TTL_CEILING`), never the lengthened ones: else each answer would
/// push an address's time further out.
fn open_and_note(
    owners: &mut HashMap<IpAddr, Owner>,
    opened: &[Opened],
    now: Instant,
    add: impl FnOnce(&[Opened]),
) {
    let lengthened = never_shorter(owners, opened, now);
    add(lengthened.as_deref().unwrap_or(opened));
    note(owners, opened, now);
}

/// Notes which name opened each address, and into which set members, as of `now`.
fn note(owners: &mut HashMap<IpAddr, Owner>, opened: &[Opened], now: Instant) {
    for found in opened {
        if owners.len() >= MAX_TRACKED && !owners.contains_key(&found.addr) {
            forget_older_half(owners);
        }
        let owner = owners.entry(found.addr).or_default();
        owner.answered = Some(now);
        owner.open_until = owner.open_until.max(Some(now + found.timeout));
        // One more at a time: most addresses have one name and a member or two, and thousands
        // are tracked (a first push would make room for four).
        if !owner.names.contains(&found.name) {
            if owner.names.len() >= MAX_NAMES_PER_ADDRESS {
                owner.names.remove(0);
            }
            owner.names.reserve_exact(1);
            owner.names.push(found.name.clone());
        }
        for (_, member) in sets::members_of(found) {
            if !owner.members.contains(&member) {
                owner.members.reserve_exact(1);
                owner.members.push(member);
            }
        }
    }
}

impl Live {
    pub fn new(upstream: String) -> Live {
        Live {
            forwarded: AtomicU64::new(0),
            cached: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            udp_distrusted: AtomicBool::new(false),
            started: Instant::now(),
            upstream,
            owners: Mutex::default(),
        }
    }

    /// Puts what answers opened into the sets and notes it, under the lock `cordon deny` takes
    /// to find what to close. If root changed the allowlist after the answers were judged
    /// (`judged_under`), only addresses whose name still has the same ports go in: a deny
    /// either finds an address noted here or the address is not added.
    pub fn open(&self, opened: &[Opened], judged_under: u64, names: &Names) {
        let mut owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
        let judged_again: Vec<Opened>;
        let opened = match names.generation() == judged_under {
            true => opened,
            false => {
                judged_again = opened
                    .iter()
                    .filter(|found| names.ports_for_plain(&found.name)[..] == found.ports[..])
                    .cloned()
                    .collect();
                &judged_again
            }
        };
        if opened.is_empty() {
            return;
        }
        open_and_note(&mut owners, opened, Instant::now(), |opened| {
            if let Err(error) = sets::open(opened) {
                log::warn!("DNS gateway: adding answered addresses to the fence: {error}");
            }
        });
    }

    /// Notes which name opened each address, and into which set members.
    pub fn opened(&self, opened: &[Opened]) {
        note(
            &mut self.owners.lock().unwrap_or_else(|e| e.into_inner()),
            opened,
            Instant::now(),
        );
    }

    /// The name an answer for `addr` was last for, and how long ago (the block log's context).
    pub fn answered(&self, addr: IpAddr) -> Option<(String, Duration)> {
        let owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
        let owner = owners.get(&addr)?;
        Some((owner.names.last()?.to_string(), owner.answered?.elapsed()))
    }

    /// The members of every address no name `names` still allows had opened; forgotten here.
    /// Also the members of an address that its remaining names do not give it (the denied
    /// name's ports, where another name answered the same address with other ports).
    fn no_longer_allowed(&self, names: &Names) -> Vec<Member> {
        let mut owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
        let mut closed = Vec::new();
        owners.retain(|addr, owner| {
            let before = owner.names.len();
            owner
                .names
                .retain(|name| !names.ports_for_plain(name).is_empty());
            if owner.names.len() != before {
                // A denied name's answer no longer keeps the address's time.
                owner.open_until = None;
            }
            let still_given: Vec<Member> = owner
                .names
                .iter()
                .flat_map(|name| {
                    let found = Opened {
                        name: Arc::clone(name),
                        addr: *addr,
                        ports: names.ports_for_plain(name),
                        timeout: Duration::ZERO,
                    };
                    sets::members_of(&found)
                        .map(|(_, member)| member)
                        .collect::<Vec<_>>()
                })
                .collect();
            let (kept, gone) = owner
                .members
                .drain(..)
                .partition(|member| still_given.contains(member));
            owner.members = kept;
            closed.extend::<Vec<Member>>(gone);
            !owner.names.is_empty()
        });
        closed
    }
}

/// Serves root's requests until `stop`.
pub fn serve(control: &Control, names: &Names, live: &Live, stop: &AtomicBool) {
    let listener = &control.listener;
    let _ = listener.set_nonblocking(true);
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                let _ = stream.set_nonblocking(false);
                let _ = answer(stream, control, names, live);
            }
            Err(_) => {
                let mut poll = libc::pollfd {
                    fd: listener.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd for the duration of the call.
                unsafe { libc::poll(&mut poll, 1, 200) };
            }
        }
    }
}

fn answer(
    mut stream: UnixStream,
    control: &Control,
    names: &Names,
    live: &Live,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let peer = nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials);
    if peer.map(|creds| creds.uid()) != Ok(0) {
        return stream.write_all(b"error: only root may change or read the running policy\n");
    }
    let mut line = String::new();
    BufReader::new((&stream).take(4096)).read_line(&mut line)?;
    let reply = handle(line.trim(), names, live, &|change| control.note(change));
    stream.write_all(reply.as_bytes())
}

/// The reply to one request line.
/// The reply to one request line; `note` hears of each change to the names.
fn handle(line: &str, names: &Names, live: &Live, note: &dyn Fn(&str)) -> String {
    let (command, argument) = line.split_once(' ').unwrap_or((line, ""));
    match command {
        "status" => status(names, live),
        "allow" | "deny" => {
            let (target, ports) = match parse_entry(argument.trim()) {
                Ok(parsed) => parsed,
                Err(reason) => return format!("error: `{argument}`: {reason}\n"),
            };
            // An address entry's set members are changed by the root client (`request`), which
            // can also keep the fence's record; here, names learn that they may open addresses
            // of the container's own networks inside it.
            if let Target::Net(_) = target {
                let changed = match command {
                    "allow" => {
                        names.add(&target, &ports);
                        true
                    }
                    _ => names.remove(&target),
                };
                if !changed {
                    return format!("error: no entry {target} to deny\n");
                }
                note(&format!("{command} {}", argument.trim()));
                let done = if command == "allow" {
                    "allowed"
                } else {
                    "denied"
                };
                return format!("ok: {} {done}\n", argument.trim());
            }
            if command == "allow" {
                names.add(&target, &ports);
                note(&format!("allow {}", argument.trim()));
                return format!(
                    "ok: {target} allowed; its addresses open when the agent next asks for it\n"
                );
            }
            if !names.remove(&target) {
                return format!("error: no entry {target} to deny\n");
            }
            note(&format!("deny {}", argument.trim()));
            let closed = live.no_longer_allowed(names);
            let addresses: BTreeSet<IpAddr> = closed.iter().map(|m| m.addr).collect();
            let mut problems = Vec::new();
            if let Err(error) = sets::close(&closed) {
                problems.push(error);
            }
            if let Err(error) = crate::sys::conntrack::flush() {
                problems.push(error);
            }
            match problems.is_empty() {
                true => format!(
                    "ok: {target} denied; {} address(es) it opened closed; established flows \
                     judged again\n",
                    addresses.len()
                ),
                false => format!("error: {target} denied, but: {}\n", problems.join("; ")),
            }
        }
        _ => "error: unknown request (allow ENTRY, deny ENTRY, status)\n".to_string(),
    }
}

fn status(names: &Names, live: &Live) -> String {
    let (exact, wildcards, nets) = names.counts();
    let sets: Vec<String> = [Family::V4, Family::V6]
        .iter()
        .flat_map(|family| [family.answered_ports_set(), family.answered_hosts_set()])
        .map(String::from)
        .collect();
    let sizes = match set_netlink::members(&sets) {
        Ok(found) => sets
            .iter()
            .map(|set| format!("{set} {}", found.get(set).map_or(0, |m| m.len())))
            .collect::<Vec<_>>()
            .join(", "),
        Err(error) => format!("unreadable ({error})"),
    };
    format!(
        "DNS gateway: running for {} s as uid {}, asking {}\n\
         names: {exact} exact, {wildcards} wildcard(s); address entries: {nets}\n\
         answers: {} forwarded, {} from the cache, {} refused{}\n\
         sets: {sizes}\n",
        live.started.elapsed().as_secs(),
        super::service::GATEWAY_UID,
        live.upstream,
        live.forwarded.load(Ordering::Relaxed),
        live.cached.load(Ordering::Relaxed),
        live.refused.load(Ordering::Relaxed),
        match live.udp_distrusted.load(Ordering::Relaxed) {
            false => String::new(),
            true => format!(
                "; over TCP only since {} answers over UDP matched no question (forged?)",
                super::udp::UNWANTED_LIMIT
            ),
        },
    )
}

/// `cordon allow ENTRY`, `cordon deny ENTRY`, `cordon status`: one request to the gateway.
pub fn request(line: &str) -> Result<i32> {
    let mut stream = match UnixStream::connect(CONTROL_SOCKET) {
        Ok(stream) => stream,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::CannotFence(format!(
                "no DNS gateway runs here ({CONTROL_SOCKET} is missing): the container runs \
                 with --dns static or --exec, so the allowlist changes only with a restart"
            )))
        }
        Err(error) if error.kind() == std::io::ErrorKind::PermissionDenied => {
            return Err(Error::NotRoot {
                action: "changing or reading the running policy (docker exec -u root CONTAINER \
                         cordon ...)",
            })
        }
        Err(error) => return Err(Error::io(CONTROL_SOCKET, error)),
    };
    // An address entry: its set members are opened before the gateway hears of it, and closed
    // after (then established flows are judged again).
    let address = address_entry(line);
    if let Some((true, net, ports)) = &address {
        record::change_address_entry(*net, ports, true).map_err(|detail| Error::Apply {
            step: format!("adding {net} to the fence's sets"),
            detail,
        })?;
    }
    stream
        .write_all(format!("{line}\n").as_bytes())
        .map_err(|e| Error::io(CONTROL_SOCKET, e))?;
    let _ = stream.shutdown(std::net::Shutdown::Write);
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| Error::io(CONTROL_SOCKET, e))?;
    let mut reply = String::new();
    stream
        .read_to_string(&mut reply)
        .map_err(|e| Error::io(CONTROL_SOCKET, e))?;
    if let Some(problem) = reply.strip_prefix("error: ") {
        eprintln!("cordon: error: {}", problem.trim_end());
        return Ok(exit::CHECK_FAILED);
    }
    print!("{reply}");
    if let Some((false, net, ports)) = address {
        let step = format!("removing {net} from the fence's sets");
        let closed = record::change_address_entry(net, &ports, false)
            .map_err(|detail| Error::Apply { step, detail })?;
        crate::sys::conntrack::flush().map_err(|detail| Error::Apply {
            step: "flushing connection tracking".into(),
            detail,
        })?;
        println!("{closed} set member(s) removed; established flows judged again");
    }
    Ok(exit::OK)
}

/// `allow NET...` (true) or `deny NET...` (false): an address entry.
fn address_entry(line: &str) -> Option<(bool, ipnet::IpNet, Ports)> {
    let (command, argument) = line.split_once(' ')?;
    let add = match command {
        "allow" => true,
        "deny" => false,
        _ => return None,
    };
    match parse_entry(argument.trim()) {
        Ok((Target::Net(net), ports)) => Some((add, net, ports)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::filter::names;
    use hickory_resolver::proto::rr::Name;
    use std::str::FromStr;

    #[test]
    fn tracked_addresses_stay_bounded_and_the_latest_are_kept() {
        let live = Live::new("10.0.0.2:53".into());
        let addr = |i: u32| IpAddr::from((0x0a00_0000u32 + i).to_be_bytes());
        let last = MAX_TRACKED as u32 * 3 / 2 - 1;
        for i in 0..=last {
            live.opened(&[Opened {
                name: format!("n{i}.cdn.test").into(),
                addr: addr(i),
                ports: vec![crate::fence::policy::Ports::Any].into(),
                timeout: Duration::from_secs(60),
            }]);
        }
        let owners = live.owners.lock().unwrap();
        assert!(owners.len() <= MAX_TRACKED, "{}", owners.len());
        assert!(owners.contains_key(&addr(last)), "the latest is kept");
        assert!(!owners.contains_key(&addr(0)), "the oldest made room");
    }

    #[test]
    fn root_s_changes_are_noted_and_a_restarted_gateway_replays_them() {
        let dir = std::env::temp_dir().join(format!("cordon-control-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let _ = std::fs::remove_file(dir.join("control"));
        std::fs::write(dir.join("changes"), "").unwrap();
        let control = Control {
            listener: UnixListener::bind(dir.join("control")).unwrap(),
            journal: std::fs::OpenOptions::new()
                .read(true)
                .append(true)
                .open(dir.join("changes"))
                .unwrap(),
        };
        let allowed = names(&["api.example.test", "*.cdn.test:443"]);
        let live = Live::new("10.0.0.2:53".into());
        let noted = std::cell::RefCell::new(Vec::new());
        let note = |change: &str| {
            noted.borrow_mut().push(change.to_string());
            control.note(change);
        };
        assert!(handle("allow new.example.test:22", &allowed, &live, &note).starts_with("ok: "));
        assert!(handle("deny gone.test", &allowed, &live, &note).starts_with("error: "));
        assert!(handle("allow 10.0.0.0/8:5432", &allowed, &live, &note).starts_with("ok: "));
        assert!(handle("deny 10.9.0.0/16", &allowed, &live, &note).starts_with("error: "));
        assert_eq!(
            *noted.borrow(),
            ["allow new.example.test:22", "allow 10.0.0.0/8:5432"]
        );
        // (A deny that succeeds flushes conntrack: tested in a namespace, tests/gateway.rs.)
        control.note("deny api.example.test");
        control.note("nonsense");

        let restarted = names(&["api.example.test", "*.cdn.test:443"]);
        control.replay(&restarted);
        let name = |text: &str| Name::from_str(text).unwrap();
        assert!(restarted.allows(&name("new.example.test.")));
        assert!(!restarted.allows(&name("api.example.test.")));
        assert!(restarted.allows(&name("a.cdn.test.")));
        assert!(restarted.covers_address("10.1.2.3".parse().unwrap()));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_deny_closes_the_ports_only_the_denied_name_gave_an_address_shared_with_another() {
        let allowed = names(&["github.test:22", "*.github.test:443"]);
        let live = Live::new("10.0.0.2:53".into());
        let opened = |name: &str| Opened {
            name: name.into(),
            addr: "192.0.2.7".parse().unwrap(),
            ports: allowed
                .ports_for(&Name::from_str(&format!("{name}.")).unwrap())
                .into(),
            timeout: Duration::from_secs(60),
        };
        live.opened(&[opened("github.test"), opened("www.github.test")]);
        allowed.remove(&Target::Name("github.test".into()));
        let ports = |members: &[Member]| -> Vec<u16> {
            members
                .iter()
                .filter_map(|m| m.ports.map(|p| p.1))
                .collect()
        };
        assert_eq!(ports(&live.no_longer_allowed(&allowed)), [22]);
        let owners = live.owners.lock().unwrap();
        let left = &owners[&"192.0.2.7".parse::<IpAddr>().unwrap()];
        assert_eq!(ports(&left.members), [443]);
        assert_eq!(left.names, [Arc::<str>::from("www.github.test")]);
    }

    #[test]
    fn a_later_answer_never_shortens_how_long_an_address_stays_open_nor_lengthens_it() {
        let allowed = names(&["a.cdn.test:443", "b.cdn.test:443"]);
        let opened = |name: &str, addr: &str, seconds: u64| Opened {
            name: name.into(),
            addr: addr.parse().unwrap(),
            ports: allowed
                .ports_for(&Name::from_str(&format!("{name}.")).unwrap())
                .into(),
            timeout: Duration::from_secs(seconds),
        };
        let mut owners = HashMap::new();
        let start = Instant::now();
        let added = |owners: &mut HashMap<IpAddr, Owner>, found: &[Opened], now: Instant| {
            let mut seconds = Vec::new();
            open_and_note(owners, found, now, |added| {
                seconds.extend(added.iter().map(|o| o.timeout.as_secs()))
            });
            seconds
        };
        assert_eq!(
            added(
                &mut owners,
                &[opened("a.cdn.test", "192.0.2.7", 3600)],
                start
            ),
            [3600]
        );
        // Another name's answer for the same address, with a short TTL, a second later: the
        // address keeps the hour the first answer gave it; a new address its own 60 s.
        let later = [
            opened("b.cdn.test", "192.0.2.7", 60),
            opened("b.cdn.test", "192.0.2.8", 60),
        ];
        let second = start + Duration::from_secs(1);
        assert_eq!(added(&mut owners, &later, second), [3599, 60]);
        // Ten thousand such answers do not push the address's time past the first answer's.
        for step in 0..10_000u64 {
            let now = second + Duration::from_micros(step * 100 + 37);
            added(&mut owners, &later[..1], now);
        }
        let until = owners[&"192.0.2.7".parse::<IpAddr>().unwrap()]
            .open_until
            .unwrap();
        assert!(
            until <= start + Duration::from_secs(3600),
            "{:?}",
            until - start
        );
        // A longer timeout, or an address not seen before, goes in as it is.
        let now = second;
        assert!(never_shorter(&owners, &[opened("b.cdn.test", "192.0.2.7", 3600)], now).is_none());
        assert!(never_shorter(&owners, &[opened("b.cdn.test", "192.0.2.9", 60)], now).is_none());
    }

    #[test]
    fn a_denied_names_answer_no_longer_keeps_an_address_open() {
        let allowed = names(&["a.cdn.test:443", "b.cdn.test:443"]);
        let opened = |name: &str, seconds: u64| Opened {
            name: name.into(),
            addr: "192.0.2.7".parse().unwrap(),
            ports: allowed
                .ports_for(&Name::from_str(&format!("{name}.")).unwrap())
                .into(),
            timeout: Duration::from_secs(seconds),
        };
        let live = Live::new("test".into());
        live.opened(&[opened("a.cdn.test", 3600), opened("b.cdn.test", 60)]);
        allowed.remove(&Target::Name("a.cdn.test".into()));
        live.no_longer_allowed(&allowed);
        let owners = live.owners.lock().unwrap();
        let b = [opened("b.cdn.test", 60)];
        assert!(
            never_shorter(&owners, &b, Instant::now()).is_none(),
            "b's own 60 s"
        );
    }

    #[test]
    fn an_answer_judged_before_a_deny_does_not_open_after_it() {
        let allowed = names(&["*.cdn.test:443"]);
        let live = Live::new("10.0.0.2:53".into());
        let judged_under = allowed.generation();
        let opened = Opened {
            name: "a.cdn.test".into(),
            addr: "192.0.2.1".parse().unwrap(),
            ports: allowed
                .ports_for(&Name::from_str("a.cdn.test.").unwrap())
                .into(),
            timeout: Duration::from_secs(60),
        };
        // The deny runs to its end between the answer's judgement and its addresses going in.
        allowed.remove(&Target::Wildcard("cdn.test".into()));
        assert!(live.no_longer_allowed(&allowed).is_empty());
        live.open(std::slice::from_ref(&opened), judged_under, &allowed);
        assert_eq!(live.answered(opened.addr), None, "not added, so not noted");
        // Allowed again with other ports: the answer judged under the first entry stays out.
        let (target, port_22) = crate::fence::policy::parse_entry("*.cdn.test:22").unwrap();
        allowed.add(&target, &port_22);
        live.open(std::slice::from_ref(&opened), judged_under, &allowed);
        assert_eq!(live.answered(opened.addr), None);
    }

    #[test]
    fn allow_and_deny_change_the_names_and_what_stays_open() {
        let allowed = names(&["api.example.test", "*.cdn.test:443"]);
        let live = Live::new("10.0.0.2:53".into());
        let opened = |name: &str, addr: &str| Opened {
            name: name.into(),
            addr: addr.parse().unwrap(),
            ports: allowed
                .ports_for(&Name::from_str(&format!("{name}.")).unwrap())
                .into(),
            timeout: Duration::from_secs(60),
        };
        live.opened(&[
            opened("a.cdn.test", "192.0.2.1"),
            opened("b.cdn.test", "192.0.2.2"),
        ]);
        live.opened(&[opened("api.example.test", "192.0.2.2")]);

        assert!(handle("allow new.example.test:22", &allowed, &live, &|_| {}).starts_with("ok: "));
        assert!(allowed.allows(&Name::from_str("new.example.test.").unwrap()));
        assert!(!allowed.covers_address("10.1.2.3".parse().unwrap()));
        assert!(handle("allow 10.0.0.0/8", &allowed, &live, &|_| {}).starts_with("ok: "));
        assert!(allowed.covers_address("10.1.2.3".parse().unwrap()));
        assert!(handle("deny 10.0.0.0/8", &allowed, &live, &|_| {}).starts_with("ok: "));
        assert!(!allowed.covers_address("10.1.2.3".parse().unwrap()));
        assert!(handle("allow ::bad::", &allowed, &live, &|_| {}).starts_with("error: "));
        assert!(handle("deny gone.test", &allowed, &live, &|_| {}).starts_with("error: no entry"));

        // 192.0.2.2 was opened by api.example.test too: only 192.0.2.1 closes.
        allowed.remove(&Target::Wildcard("cdn.test".into()));
        let closed = live.no_longer_allowed(&allowed);
        let addresses: BTreeSet<String> = closed.iter().map(|m| m.addr.to_string()).collect();
        assert_eq!(addresses, BTreeSet::from(["192.0.2.1".to_string()]));
        assert_eq!(sets::set_of(&closed[0]), "cordon4-answered");
        assert!(!allowed.allows(&Name::from_str("a.cdn.test.").unwrap()));
        assert!(handle("bogus", &allowed, &live, &|_| {}).starts_with("error: unknown request"));
    }
}
