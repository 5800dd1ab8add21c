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
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::filter::{Names, Opened};
use super::sets;
use crate::error::{exit, Error, Result};
use crate::fence::plan::Family;
use crate::fence::policy::{parse_entry, Target};
use crate::sys::set_netlink::{self, Member};

pub const CONTROL_SOCKET: &str = "/run/cordon/control";
/// Addresses whose names the gateway remembers for `deny`; past that, an address closes only
/// when its timeout runs out.
const MAX_TRACKED: usize = 1 << 13;
/// Names remembered per address (the latest ones): a CDN address serves many names.
const MAX_NAMES_PER_ADDRESS: usize = 8;

/// Binds the control socket (root-owned, 0600). None, with a warning, where it cannot be made.
pub fn bind() -> Option<UnixListener> {
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
    started: Instant,
    upstream: String,
    owners: Mutex<HashMap<IpAddr, Owner>>,
}

#[derive(Default)]
struct Owner {
    /// The names it was answered for (one, mostly), the last answer's time.
    names: Vec<String>,
    members: Vec<Member>,
    answered: Option<Instant>,
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

impl Live {
    pub fn new(upstream: String) -> Live {
        Live {
            forwarded: AtomicU64::new(0),
            cached: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            started: Instant::now(),
            upstream,
            owners: Mutex::default(),
        }
    }

    /// Notes which name opened each address, and into which set members.
    pub fn opened(&self, opened: &[Opened]) {
        let mut owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
        for found in opened {
            if owners.len() >= MAX_TRACKED && !owners.contains_key(&found.addr) {
                forget_older_half(&mut owners);
            }
            let owner = owners.entry(found.addr).or_default();
            owner.answered = Some(Instant::now());
            if !owner.names.contains(&found.name) {
                if owner.names.len() >= MAX_NAMES_PER_ADDRESS {
                    owner.names.remove(0);
                }
                owner.names.push(found.name.clone());
            }
            for (_, member) in sets::members_of(found) {
                if !owner.members.contains(&member) {
                    owner.members.push(member);
                }
            }
        }
    }

    /// The name an answer for `addr` was last for, and how long ago (the block log's context).
    pub fn answered(&self, addr: IpAddr) -> Option<(String, Duration)> {
        let owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
        let owner = owners.get(&addr)?;
        Some((owner.names.last()?.clone(), owner.answered?.elapsed()))
    }

    /// The members of every address no name `names` still allows had opened; forgotten here.
    fn no_longer_allowed(&self, names: &Names) -> Vec<Member> {
        let mut owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
        let mut closed = Vec::new();
        owners.retain(|_, owner| {
            owner
                .names
                .retain(|name| !names.ports_for_plain(name).is_empty());
            if owner.names.is_empty() {
                closed.append(&mut owner.members);
                false
            } else {
                true
            }
        });
        closed
    }
}

/// Serves root's requests until `stop`.
pub fn serve(listener: &UnixListener, names: &Names, live: &Live, stop: &AtomicBool) {
    let _ = listener.set_nonblocking(true);
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                let _ = stream.set_nonblocking(false);
                let _ = answer(stream, names, live);
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

fn answer(mut stream: UnixStream, names: &Names, live: &Live) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let peer = nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials);
    if peer.map(|creds| creds.uid()) != Ok(0) {
        return stream.write_all(b"error: only root may change or read the running policy\n");
    }
    let mut line = String::new();
    BufReader::new((&stream).take(4096)).read_line(&mut line)?;
    let reply = handle(line.trim(), names, live);
    stream.write_all(reply.as_bytes())
}

/// The reply to one request line.
fn handle(line: &str, names: &Names, live: &Live) -> String {
    let (command, argument) = line.split_once(' ').unwrap_or((line, ""));
    match command {
        "status" => status(names, live),
        "allow" | "deny" => {
            let (target, ports) = match parse_entry(argument.trim()) {
                Ok(parsed) => parsed,
                Err(reason) => return format!("error: `{argument}`: {reason}\n"),
            };
            if let Target::Net(_) = target {
                return format!(
                    "error: `{argument}` is an address entry: those are rules of the fence; add \
                     it to the allowlist and restart the container\n"
                );
            }
            if command == "allow" {
                names.add(&target, &ports);
                return format!(
                    "ok: {target} allowed; its addresses open when the agent next asks for it\n"
                );
            }
            if !names.remove(&target) {
                return format!("error: no entry {target} to deny\n");
            }
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
    let (exact, wildcards) = names.counts();
    let sets: Vec<String> = [Family::V4, Family::V6]
        .iter()
        .flat_map(|family| [family.answered_ports_set(), family.answered_hosts_set()])
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
         names: {exact} exact, {wildcards} wildcard(s)\n\
         answers: {} forwarded, {} from the cache, {} refused\n\
         sets: {sizes}\n",
        live.started.elapsed().as_secs(),
        super::service::GATEWAY_UID,
        live.upstream,
        live.forwarded.load(Ordering::Relaxed),
        live.cached.load(Ordering::Relaxed),
        live.refused.load(Ordering::Relaxed),
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
    match reply.strip_prefix("error: ") {
        Some(problem) => {
            eprintln!("cordon: error: {}", problem.trim_end());
            Ok(exit::CHECK_FAILED)
        }
        None => {
            print!("{reply}");
            Ok(exit::OK)
        }
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
                name: format!("n{i}.cdn.test"),
                addr: addr(i),
                ports: vec![crate::fence::policy::Ports::Any],
                timeout: Duration::from_secs(60),
            }]);
        }
        let owners = live.owners.lock().unwrap();
        assert!(owners.len() <= MAX_TRACKED, "{}", owners.len());
        assert!(owners.contains_key(&addr(last)), "the latest is kept");
        assert!(!owners.contains_key(&addr(0)), "the oldest made room");
    }

    #[test]
    fn allow_and_deny_change_the_names_and_what_stays_open() {
        let allowed = names(&["api.example.test", "*.cdn.test:443"]);
        let live = Live::new("10.0.0.2:53".into());
        let opened = |name: &str, addr: &str| Opened {
            name: name.into(),
            addr: addr.parse().unwrap(),
            ports: allowed.ports_for(&Name::from_str(&format!("{name}.")).unwrap()),
            timeout: Duration::from_secs(60),
        };
        live.opened(&[
            opened("a.cdn.test", "192.0.2.1"),
            opened("b.cdn.test", "192.0.2.2"),
        ]);
        live.opened(&[opened("api.example.test", "192.0.2.2")]);

        assert!(handle("allow new.example.test:22", &allowed, &live).starts_with("ok: "));
        assert!(allowed.allows(&Name::from_str("new.example.test.").unwrap()));
        let refused = handle("allow 10.0.0.0/8", &allowed, &live);
        assert!(
            refused.starts_with("error: `10.0.0.0/8` is an address entry"),
            "{refused}"
        );
        assert!(handle("allow ::bad::", &allowed, &live).starts_with("error: "));
        assert!(handle("deny gone.test", &allowed, &live).starts_with("error: no entry"));

        // 192.0.2.2 was opened by api.example.test too: only 192.0.2.1 closes.
        allowed.remove(&Target::Wildcard("cdn.test".into()));
        let closed = live.no_longer_allowed(&allowed);
        let addresses: BTreeSet<String> = closed.iter().map(|m| m.addr.to_string()).collect();
        assert_eq!(addresses, BTreeSet::from(["192.0.2.1".to_string()]));
        assert_eq!(sets::set_of(&closed[0]), "cordon4-answered");
        assert!(!allowed.allows(&Name::from_str("a.cdn.test.").unwrap()));
        assert!(handle("bogus", &allowed, &live).starts_with("error: unknown request"));
    }
}
