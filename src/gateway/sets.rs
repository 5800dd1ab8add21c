//! What an answer opens, into the fence: each address goes into the family's `answered` sets
//! with the entry's ports (or the `answered-any` set for a name entry without ports), for the
//! record's TTL, renewed by every later answer. An address whose timeout ran out takes no new
//! connection; established flows go on through conntrack.

use super::filter::Opened;
use crate::fence::plan::Family;
use crate::fence::policy::Ports;
use std::cell::RefCell;

use crate::sys::set_netlink::{Adder, Member};

thread_local! {
    /// Each loop's own netlink socket, opened on first use.
    static ADDER: RefCell<Option<Adder>> = const { RefCell::new(None) };
}

/// Adds every opened address to the sets; the first failure is returned after trying all.
pub fn open(opened: &[Opened]) -> Result<(), String> {
    ADDER.with_borrow_mut(|adder| {
        if adder.is_none() {
            *adder = Some(Adder::open()?);
        }
        let adder = adder.as_mut().expect("opened above");
        open_with(adder, opened)
    })
}

/// The (set, member) pairs an opened address goes into: the `answered` set with each port
/// range of the entry, or `answered-any` for an entry without ports.
pub fn members_of(found: &Opened) -> impl Iterator<Item = (&'static str, Member)> + '_ {
    let family = Family::of(&found.addr);
    let addr = found.addr;
    found.ports.iter().flat_map(move |ports| {
        let (any, ranges) = match ports {
            Ports::Any => (true, &[][..]),
            Ports::Listed(ranges) => (false, ranges.as_slice()),
        };
        let host = any.then_some((family.answered_hosts_set(), Member { addr, ports: None }));
        host.into_iter().chain(ranges.iter().map(move |range| {
            let ports = Some((range.proto.number(), range.first, range.last));
            (family.answered_ports_set(), Member { addr, ports })
        }))
    })
}

/// One request per set: every member an answer opens there.
fn open_with(adder: &mut Adder, opened: &[Opened]) -> Result<(), String> {
    let mut per_set: Vec<(&str, Vec<(Member, u32)>)> = Vec::new();
    for found in opened {
        let timeout = found.timeout.as_secs().try_into().unwrap_or(u32::MAX);
        for (set, member) in members_of(found) {
            match per_set.iter_mut().find(|(name, _)| *name == set) {
                Some((_, list)) => list.push((member, timeout)),
                None => per_set.push((set, vec![(member, timeout)])),
            }
        }
    }
    let mut first_failure = None;
    for (set, members) in &per_set {
        if let Err(error) = adder.add(set, members) {
            first_failure.get_or_insert(error);
        }
    }
    first_failure.map_or(Ok(()), Err)
}

/// The `answered` set a member belongs in: by family, and whether it has ports.
pub fn set_of(member: &Member) -> &'static str {
    let family = Family::of(&member.addr);
    match member.ports {
        Some(_) => family.answered_ports_set(),
        None => family.answered_hosts_set(),
    }
}

/// Deletes these members from their sets (`cordon deny`).
pub fn close(members: &[Member]) -> Result<(), String> {
    let mut adder = Adder::open()?;
    let mut first_failure = None;
    let mut sets: Vec<&str> = members.iter().map(set_of).collect();
    sets.sort();
    sets.dedup();
    for set in &sets {
        let in_set: Vec<Member> = members
            .iter()
            .filter(|member| set_of(member) == *set)
            .copied()
            .collect();
        if let Err(error) = adder.delete(set, &in_set) {
            first_failure.get_or_insert(error);
        }
    }
    first_failure.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fence::policy::{PortRange, Proto};
    use crate::sys::set_netlink;
    use std::process::Command;
    use std::time::Duration;

    fn root() -> bool {
        let root = nix::unistd::geteuid().is_root();
        if !root && std::env::var_os("CORDON_REQUIRE_PRIVILEGED").is_some() {
            panic!("this test needs root (CORDON_REQUIRE_PRIVILEGED is set)");
        }
        root
    }

    /// Runs `check` in a network namespace of its own, on a thread that entered it (namespaces
    /// are per thread; the tools it starts inherit it).
    fn in_a_new_namespace(check: impl FnOnce() + Send + 'static) {
        std::thread::spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
            check();
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    }

    fn ipset(args: &[&str]) -> String {
        let output = Command::new("ipset")
            .args(args)
            .output()
            .expect("run ipset");
        assert!(output.status.success(), "ipset {args:?}: {output:?}");
        String::from_utf8(output.stdout).unwrap()
    }

    #[test]
    fn opened_addresses_enter_the_answered_sets_with_their_ports_and_timeout() {
        if !root() {
            return;
        }
        in_a_new_namespace(|| {
            for family in ["inet", "inet6"] {
                let digit = if family == "inet" { '4' } else { '6' };
                let timeout = ["timeout", "60"];
                let mut create = vec!["create"];
                let ports = format!("cordon{digit}-answered");
                let any = format!("cordon{digit}-answered-any");
                create.extend([ports.as_str(), "hash:ip,port", "family", family]);
                create.extend(timeout);
                ipset(&create);
                ipset(&["create", &any, "hash:ip", "family", family, "timeout", "60"]);
            }
            let tcp = |first, last| PortRange {
                proto: Proto::Tcp,
                first,
                last,
            };
            let opened = vec![
                Opened {
                    name: "a.example.test".into(),
                    addr: "192.0.2.10".parse().unwrap(),
                    ports: vec![Ports::Listed(vec![tcp(443, 443), tcp(8000, 8002)])].into(),
                    timeout: Duration::from_secs(90),
                },
                Opened {
                    name: "b.example.test".into(),
                    addr: "2001:db8::10".parse().unwrap(),
                    ports: vec![Ports::Any].into(),
                    timeout: Duration::from_secs(120),
                },
            ];
            open(&opened).expect("open");
            // Again: renews, no error.
            open(&opened).expect("open again");
            let members = set_netlink::members(&[
                Family::V4.answered_ports_set().into(),
                Family::V6.answered_hosts_set().into(),
            ])
            .unwrap();
            let v4: Vec<&str> = members["cordon4-answered"]
                .iter()
                .map(String::as_str)
                .collect();
            assert_eq!(
                v4,
                [
                    "192.0.2.10,tcp:443",
                    "192.0.2.10,tcp:8000",
                    "192.0.2.10,tcp:8001",
                    "192.0.2.10,tcp:8002"
                ]
            );
            let v6: Vec<&String> = members["cordon6-answered-any"].iter().collect();
            assert_eq!(v6, ["2001:db8::10"]);
            let listed = ipset(&["list", "cordon4-answered"]);
            let left: u32 = listed
                .lines()
                .find_map(|line| line.strip_prefix("192.0.2.10,tcp:443 timeout "))
                .and_then(|seconds| seconds.trim().parse().ok())
                .unwrap_or_else(|| panic!("no timeout on the member: {listed}"));
            assert!(
                (85..=90).contains(&left),
                "about 90 s left, not {left}: {listed}"
            );
        });
    }

    #[test]
    fn thousands_of_members_go_in_and_out_in_requests_the_kernel_accepts() {
        if !root() {
            return;
        }
        in_a_new_namespace(|| {
            let set = Family::V4.answered_hosts_set();
            ipset(&["create", set, "hash:ip", "family", "inet", "timeout", "60"]);
            // More than a 16-bit attribute length holds in one list (16 bytes per member).
            let opened: Vec<Opened> = (0..5000u32)
                .map(|i| Opened {
                    name: "many.example.test".into(),
                    addr: std::net::IpAddr::from((0x0a00_0000 + i).to_be_bytes()),
                    ports: vec![Ports::Any].into(),
                    timeout: Duration::from_secs(60),
                })
                .collect();
            open(&opened).expect("open");
            let count = || set_netlink::members(&[set.into()]).unwrap()[set].len();
            assert_eq!(count(), 5000);
            let members: Vec<Member> = opened
                .iter()
                .flat_map(|found| members_of(found).map(|(_, member)| member))
                .collect();
            close(&members).expect("close");
            assert_eq!(count(), 0);
        });
    }
}
