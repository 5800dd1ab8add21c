//! Fault injection: each test breaks one thing cordon depends on (a capability, a tool, the
//! resolver, the input, the kernel state, the lock, a signal, the rules after the self-test) and
//! checks the invariant README.md promises in "When something fails":
//!
//!   either the agent starts behind a verified fence, or cordon exits with the documented
//!   status and one error line, the agent never runs, and uid 1000 cannot reach the blocked
//!   address afterwards — within the documented time bound.
//!
//! Each fault is a row of README.md's failure table, found by its name: the status and the
//! state of egress measured here must be the ones the table states.
//!
//! Every case runs in fresh network namespaces (tests/support/world.rs), each in a private mount
//! namespace where tools are hidden or replaced by bind mounts; nothing touches the host.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::world::*;
use support::{cordon, privileged};

/// The longest any failure may take to be reported (README: "When something fails").
const BOUND: Duration = Duration::from_secs(20);

/// How cordon is started.
#[derive(Clone, Copy)]
enum As {
    Root,
    /// Root without these capabilities (capsh --drop=...).
    RootWithout(&'static str),
    /// A plain user: uid and gid 1000.
    User,
}

/// How one start ended.
struct Start {
    code: Option<i32>,
    stderr: String,
    elapsed: Duration,
    agent_ran: bool,
}

impl Start {
    /// The outcome of a start that began at `started`; the agent ran if it left `marker`.
    fn of(output: &std::process::Output, started: Instant, marker: &std::path::Path) -> Start {
        Start {
            code: output.status.code(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            elapsed: started.elapsed(),
            agent_ran: marker.exists(),
        }
    }

    fn errors(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| l.starts_with("cordon: error:"))
            .collect()
    }
}

/// Runs cordon as the entrypoint in the sandbox, its agent `touch MARKER` as uid 1000, after
/// `setup` (shell lines run as root in the same private mount namespace).
fn start(world: &World, setup: &str, who: As, args: &[&str]) -> Start {
    let marks = world.dir.join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    std::fs::set_permissions(&marks, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let marker = marks.join("agent-ran");
    let _ = std::fs::remove_file(&marker);
    let mut words = vec![cordon().display().to_string()];
    words.extend(["--no-harden", "--no-default-profile"].map(String::from));
    if !args.contains(&"--user") {
        words.extend(["--user", AGENT_UID].map(String::from));
    }
    // The table's rows are about resolving at start (static mode) unless a case names the
    // gateway: the invariants it checks (the allowed address reachable by address) are static.
    if !args.contains(&"--dns") {
        words.extend(["--dns", "static"].map(String::from));
    }
    words.extend(args.iter().map(|a| a.to_string()));
    words.extend(["--", "/bin/touch"].map(String::from));
    words.push(marker.display().to_string());
    let command = words.join(" ");
    let line = match who {
        As::Root => format!("exec {command}"),
        As::RootWithout(caps) => format!("exec capsh --drop={caps} -- -c '{command}'"),
        As::User => format!("exec setpriv --reuid 1000 --regid 1000 --clear-groups {command}"),
    };
    let started = Instant::now();
    let output = world.sandbox_sh(&format!("set -e\n{setup}\n{line}"));
    let start = Start::of(&output, started, &marker);
    eprintln!(
        "→ {:?} in {:.0} ms, agent ran: {}\n{}",
        start.code,
        start.elapsed.as_secs_f64() * 1e3,
        start.agent_ran,
        start.stderr
    );
    start
}

/// What README.md's failure table says of a fault: its status and where egress is left.
fn documented(fault: &str) -> (i32, String) {
    let readme = std::fs::read_to_string(support::workspace_root().join("README.md")).unwrap();
    let section = readme
        .split("### When something fails")
        .nth(1)
        .expect("README.md has a \"When something fails\" section");
    let row = section
        .lines()
        .take_while(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(&format!("| {fault} |")))
        .unwrap_or_else(|| panic!("README.md's failure table has no row `| {fault} |`"));
    let cells: Vec<&str> = row.split('|').map(str::trim).collect();
    let status = cells[2]
        .parse()
        .unwrap_or_else(|_| panic!("status of `{fault}`: {}", cells[2]));
    (status, cells[3].to_string())
}

/// Whether the agent's uid can open a connection to `addr`:443.
fn reachable(world: &World, addr: &str) -> bool {
    let spec = if addr.contains(':') {
        format!("tcp:[{addr}]:443")
    } else {
        format!("tcp:{addr}:443")
    };
    world.probe(&[&spec])[&spec] == "open"
}

/// The invariant for a start that must fail: the documented status, one error line naming
/// `hint`, no agent, within `bound`, and egress as the table says: `denied` (even the allowed
/// address is unreachable), `cut` (the interfaces are down) or `unchanged` (cordon could not
/// change the firewall; the namespace is as it was).
fn assert_refused(world: &World, fault: &str, start: &Start, hint: &str, bound: Duration) {
    let (status, egress) = documented(fault);
    assert_eq!(
        start.code,
        Some(status),
        "{fault}: status\n{}",
        start.stderr
    );
    let errors = start.errors();
    assert_eq!(errors.len(), 1, "{fault}: one error line\n{}", start.stderr);
    assert!(
        errors[0].contains(hint),
        "{fault}: `{hint}` in {}",
        errors[0]
    );
    assert!(!start.agent_ran, "{fault}: the agent ran");
    assert!(
        start.elapsed <= bound && bound <= BOUND,
        "{fault}: took {:?}",
        start.elapsed
    );
    match egress.as_str() {
        "denied" | "cut" => {
            for addr in [BLOCKED, BLOCKED6, ALLOWED] {
                assert!(!reachable(world, addr), "{fault}: {addr} reachable");
            }
            let rules = world.filter_rules("iptables-save");
            let says = match egress.as_str() {
                "denied" => "egress is now denied except loopback",
                _ => "was set down",
            };
            assert!(
                errors[0].contains(says),
                "{fault}: {says}: {}\n{rules}",
                errors[0]
            );
        }
        "unchanged" => {
            assert!(
                !world.filter_rules("iptables-save").contains("CORDON")
                    && !world.filter_rules("iptables-save").contains("OUTPUT DROP"),
                "{fault}: nothing may change"
            );
        }
        other => panic!("{fault}: unknown egress state `{other}` in README.md"),
    }
}

/// The invariant for a start that must succeed: the agent ran behind a verified fence.
fn assert_fenced(world: &World, fault: &str, start: &Start) {
    let (status, egress) = documented(fault);
    assert_eq!(
        (status, egress.as_str()),
        (0, "fenced"),
        "{fault} in README.md"
    );
    assert_eq!(start.code, Some(0), "{fault}\n{}", start.stderr);
    assert!(start.agent_ran, "{fault}: the agent did not run");
    assert!(
        start.stderr.contains("self-test passed"),
        "{}",
        start.stderr
    );
    assert!(reachable(world, ALLOWED), "{fault}: the allowed address");
    assert!(!reachable(world, BLOCKED), "{fault}: the blocked address");
}

/// Shell lines that make /usr/sbin a view of itself without `hidden` and with `broken` replaced
/// by a script that fails (or, for `empty`, by empty files).
fn sbin_view(
    world: &World,
    hidden: &[&'static str],
    broken: &[&'static str],
    empty: &[&'static str],
) -> String {
    world.sbin_setup(&SbinView {
        hidden: hidden.to_vec(),
        broken: broken.to_vec(),
        empty: empty.to_vec(),
        ..SbinView::default()
    })
}

const ALLOW: [&str; 2] = ["--allow", "allowed.test"];

fn world() -> World {
    World::new(WorldOpts::default())
}

#[test]
fn no_net_admin() {
    if !privileged() {
        return;
    }
    let world = world();
    let start = start(&world, "", As::RootWithout("cap_net_admin"), &ALLOW);
    assert_refused(
        &world,
        "no NET_ADMIN",
        &start,
        "--cap-add NET_ADMIN",
        secs(2),
    );
}

#[test]
fn no_net_raw() {
    if !privileged() {
        return;
    }
    let world = world();
    let start = start(&world, "", As::RootWithout("cap_net_raw"), &ALLOW);
    assert_refused(&world, "no NET_RAW", &start, "--cap-add NET_RAW", secs(2));
}

#[test]
fn not_root() {
    if !privileged() {
        return;
    }
    let world = world();
    let start = start(&world, "", As::User, &ALLOW);
    assert_refused(&world, "not root", &start, "needs root", secs(2));
}

#[test]
fn missing_ipset() {
    if !privileged() {
        return;
    }
    let world = world();
    let setup = sbin_view(&world, &["ipset"], &[], &[]);
    let start = start(&world, &setup, As::Root, &ALLOW);
    assert_refused(&world, "ipset missing", &start, "ipset not found", secs(2));
}

#[test]
fn broken_ipset() {
    if !privileged() {
        return;
    }
    let world = world();
    let setup = sbin_view(&world, &[], &["ipset"], &[]);
    let start = start(&world, &setup, As::Root, &ALLOW);
    assert_refused(&world, "ipset broken", &start, "ipset: broken", secs(3));
}

#[test]
fn missing_ip6tables_restore() {
    if !privileged() {
        return;
    }
    let world = world();
    let setup = sbin_view(&world, &["ip6tables-nft-restore"], &[], &[]);
    let start = start(&world, &setup, As::Root, &ALLOW);
    assert_refused(
        &world,
        "ip6tables-restore missing",
        &start,
        "ip6tables-nft-restore not found",
        secs(2),
    );
    // IPv6 was denied through the other variant.
    assert!(start.errors()[0].contains("through iptables-nft and iptables-legacy"));
}

#[test]
fn broken_iptables_restore() {
    if !privileged() {
        return;
    }
    let world = world();
    let setup = sbin_view(&world, &[], &["iptables-nft-restore"], &[]);
    let start = start(&world, &setup, As::Root, &ALLOW);
    assert_refused(
        &world,
        "iptables-restore broken",
        &start,
        "iptables-nft-restore: broken",
        secs(3),
    );
}

/// An empty file over `iptables` follows its symlinks to xtables-nft-multi: every nft tool is
/// empty. The deny-all is loaded with iptables-legacy.
#[test]
fn empty_iptables_binary() {
    if !privileged() {
        return;
    }
    let world = world();
    let setup = sbin_view(&world, &[], &[], &["xtables-nft-multi"]);
    let start = start(&world, &setup, As::Root, &ALLOW);
    assert_refused(&world, "iptables empty", &start, "failed", secs(3));
    assert!(start.errors()[0].contains("through iptables-legacy"));
}

/// Neither iptables variant works: the interfaces are set down.
#[test]
fn no_iptables_works() {
    if !privileged() {
        return;
    }
    let world = world();
    let setup = sbin_view(
        &world,
        &[],
        &[],
        &["xtables-nft-multi", "xtables-legacy-multi"],
    );
    let start = start(&world, &setup, As::Root, &ALLOW);
    assert_refused(&world, "no iptables works", &start, "failed", secs(3));
}

/// Nothing but the lockdown can hold and the interfaces may not be set down (the user said the
/// namespace may be the host's): cordon says the namespace is open, with its own status.
#[test]
fn nothing_can_deny_egress() {
    if !privileged() {
        return;
    }
    let world = world();
    let setup = sbin_view(
        &world,
        &[],
        &[],
        &["xtables-nft-multi", "xtables-legacy-multi"],
    );
    let mut args = ALLOW.to_vec();
    args.push("--allow-host-network");
    let start = start(&world, &setup, As::Root, &args);
    let (status, egress) = documented("nothing can deny egress");
    assert_eq!((start.code, egress.as_str()), (Some(status), "open"));
    assert_eq!(start.errors().len(), 1, "{}", start.stderr);
    assert!(start.errors()[0].contains("treat this network namespace as unfenced"));
    assert!(!start.agent_ran);
}

/// Devices only the host's namespace has: cordon refuses before changing anything.
#[test]
fn host_namespace() {
    if !privileged() {
        return;
    }
    let world = world();
    world.sandbox(&["ip", "link", "add", "br-test", "type", "bridge"]);
    let start = start(&world, "", As::Root, &ALLOW);
    assert_refused(
        &world,
        "host's network namespace",
        &start,
        "--allow-host-network",
        secs(2),
    );
}

#[test]
fn ipv6_disabled() {
    if !privileged() {
        return;
    }
    let world = World::new(WorldOpts {
        ipv6_off: true,
        ..WorldOpts::default()
    });
    let start = start(&world, "", As::Root, &ALLOW);
    assert_fenced(&world, "IPv6 disabled", &start);
}

/// Nothing listens on the resolver's port: the kernel answers ICMP port unreachable, and the
/// start fails at once rather than after the resolve bound.
#[test]
fn resolver_port_unreachable() {
    if !privileged() {
        return;
    }
    let world = World::new(WorldOpts {
        dns: false,
        ..WorldOpts::default()
    });
    let start = start(&world, "", As::Root, &ALLOW);
    assert_refused(&world, "DNS port unreachable", &start, "refused", secs(2));
}

#[test]
fn resolver_blackholed() {
    if !privileged() {
        return;
    }
    let world = world();
    for proto in ["udp", "tcp"] {
        run_in(
            &world.world_ns,
            &[
                "iptables", "-A", "INPUT", "-p", proto, "--dport", "53", "-j", "DROP",
            ],
        );
    }
    let mut args = ALLOW.to_vec();
    args.extend(["--resolve-timeout", "2"]);
    let start = start(&world, "", As::Root, &args);
    assert_refused(
        &world,
        "DNS blackholed",
        &start,
        "--resolve-timeout",
        secs(4),
    );
}

/// With the DNS gateway, a process already holding the gateway's port stops the start: the
/// agent's DNS would have no gateway to reach.
#[test]
fn gateway_port_taken() {
    if !privileged() {
        return;
    }
    let world = world();
    let setup = "/usr/bin/python3 -c 'import socket,time\n\
s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((\"127.0.0.1\", 10053))\n\
time.sleep(5)' </dev/null >/dev/null 2>&1 &\nsleep 0.3";
    let mut args = ALLOW.to_vec();
    args.extend(["--dns", "gateway"]);
    let start = start(&world, setup, As::Root, &args);
    assert_refused(
        &world,
        "gateway port taken",
        &start,
        "--dns static",
        secs(2),
    );
}

/// A credential in a secret file the agent's uid could read: refused with the fix, nothing of
/// the agent runs (it would find the credential where cordon did).
#[test]
fn secret_file_readable_by_the_agent() {
    if !privileged() {
        return;
    }
    let world = world();
    let setup = "mkdir -p /run/secrets && echo sk-ant-fault-key > /run/secrets/anthropic_api_key \
                 && chmod 644 /run/secrets/anthropic_api_key";
    let start = start(&world, setup, As::Root, &ALLOW);
    assert_refused(
        &world,
        "secret file readable by the agent",
        &start,
        "chmod 600",
        secs(2),
    );
    assert!(
        !start.stderr.contains("sk-ant-fault-key"),
        "{}",
        start.stderr
    );
}

/// With a credential, a process already holding the credential gateway's port stops the start:
/// the agent's API requests would go to whoever holds it.
#[test]
fn credential_gateway_port_taken() {
    if !privileged() {
        return;
    }
    let world = World::new(WorldOpts {
        records: vec![format!("api.anthropic.com={ALLOWED}")],
        ..WorldOpts::default()
    });
    let setup = "/usr/bin/python3 -c 'import socket,time\n\
s=socket.socket(); s.bind((\"127.0.0.1\", 10080)); s.listen()\n\
time.sleep(5)' </dev/null >/dev/null 2>&1 &\nsleep 0.3\nexport ANTHROPIC_API_KEY=sk-ant-fault-key";
    let start = start(&world, setup, As::Root, &ALLOW);
    assert_refused(
        &world,
        "credential gateway port taken",
        &start,
        "--no-credential-gateway",
        secs(2),
    );
}

/// One name resolves, one does not: the agent starts with what resolved; `--strict` refuses.
#[test]
fn resolver_answers_partly() {
    if !privileged() {
        return;
    }
    let world = world();
    let mut args = ALLOW.to_vec();
    args.extend(["--allow", "missing.test"]);
    let start_lenient = start(&world, "", As::Root, &args);
    assert_fenced(&world, "DNS partial", &start_lenient);
    assert!(start_lenient.stderr.contains("missing.test does not exist"));
    args.push("--strict");
    let strict = start(&world, "", As::Root, &args);
    assert_refused(
        &world,
        "DNS partial, --strict",
        &strict,
        "missing.test",
        secs(2),
    );
}

fn resolv_conf_case(fault: &str, content: Option<&str>, hint: &str) {
    let world = world();
    let path = world.dir.join("resolv.conf");
    if let Some(text) = content {
        std::fs::write(&path, text).unwrap();
    }
    let path = path.display().to_string();
    let mut args = ALLOW.to_vec();
    args.extend(["--resolv-conf", &path]);
    let start = start(&world, "", As::Root, &args);
    assert_refused(&world, fault, &start, hint, secs(2));
}

#[test]
fn resolv_conf_missing() {
    if privileged() {
        resolv_conf_case("resolv.conf missing", None, "resolv.conf");
    }
}

#[test]
fn resolv_conf_empty() {
    if privileged() {
        resolv_conf_case("resolv.conf empty", Some(""), "resolv.conf");
    }
}

#[test]
fn resolv_conf_garbage() {
    if privileged() {
        resolv_conf_case(
            "resolv.conf garbage",
            Some("nameserver not-an-address\n"),
            "resolv.conf:1",
        );
    }
}

#[test]
fn agent_user_missing() {
    if !privileged() {
        return;
    }
    let world = world();
    let mut args = ALLOW.to_vec();
    args.extend(["--user", "nosuchuser"]);
    let start = start(&world, "", As::Root, &args);
    assert_refused(&world, "agent user missing", &start, "nosuchuser", secs(2));
}

/// A set of cordon's name exists with another type (left by another tool).
#[test]
fn set_type_conflict() {
    if !privileged() {
        return;
    }
    let world = world();
    world.sandbox(&[
        "ipset",
        "create",
        "cordon4-hosts",
        "hash:ip",
        "family",
        "inet",
    ]);
    let start = start(&world, "", As::Root, &ALLOW);
    assert_refused(
        &world,
        "set type conflict",
        &start,
        "ipset destroy",
        secs(2),
    );
}

/// A chain of cordon's name exists that iptables did not create (an nft base chain).
#[test]
fn chain_name_conflict() {
    if !privileged() {
        return;
    }
    let world = world();
    world.sandbox(&["nft", "add", "table", "ip", "filter"]);
    world.sandbox(&[
        "nft",
        "add chain ip filter CORDON_OUTPUT { type filter hook output priority 10; policy accept; }",
    ]);
    let start = start(&world, "", As::Root, &ALLOW);
    assert_refused(
        &world,
        "chain name conflict",
        &start,
        "nft delete chain",
        secs(2),
    );
}

/// An allowlist that expands to exactly the most set elements cordon loads starts; one more
/// element is refused as bad input.
#[test]
fn allowlist_at_and_over_the_set_limit() {
    if !privileged() {
        return;
    }
    let world = world();
    let dir = world.dir.join("allowlist.d");
    std::fs::create_dir_all(&dir).unwrap();
    // 64 addresses x 1,024 ports = 65,536 elements, plus allowed.test (two ports) over IPv4.
    let mut lines: Vec<String> = (0..63).map(|i| format!("10.200.0.{i}:1-1024")).collect();
    lines.push("10.200.0.63:1-1022".into());
    std::fs::write(dir.join("big"), lines.join("\n") + "\n").unwrap();
    let config = world.dir.display().to_string();
    let mut args = ALLOW.to_vec();
    args.extend(["--config-dir", &config]);
    let full = start(&world, "", As::Root, &args);
    assert_fenced(&world, "allowlist at the limit", &full);

    lines.push("10.200.1.1".into());
    std::fs::write(dir.join("big"), lines.join("\n") + "\n").unwrap();
    let over = start(&world, "", As::Root, &args);
    assert_refused(&world, "allowlist over the limit", &over, "65536", secs(5));
}

/// iptables-legacy on a read-only /run (docker run --read-only): the deny-all is loaded with
/// iptables-nft.
#[test]
fn legacy_backend_on_a_read_only_run() {
    if !privileged() {
        return;
    }
    let world = world();
    let mut args = ALLOW.to_vec();
    args.extend(["--iptables-backend", "legacy"]);
    let start = start(&world, "mount -t tmpfs -o ro tmpfs /run", As::Root, &args);
    assert_refused(
        &world,
        "legacy, /run read-only",
        &start,
        "--tmpfs /run",
        secs(2),
    );
    assert!(start.errors()[0].contains("through iptables-nft"));
}

/// Another process holds iptables-legacy's lock for longer than cordon waits: the load gives up,
/// and the deny-all is loaded with iptables-nft.
#[test]
fn legacy_backend_with_the_lock_held() {
    if !privileged() {
        return;
    }
    let world = world();
    let mut args = ALLOW.to_vec();
    args.extend(["--iptables-backend", "legacy"]);
    let setup =
        "mount -t tmpfs tmpfs /run\nflock /run/xtables.lock sleep 15 </dev/null >/dev/null \
                 2>&1 &\nsleep 0.2";
    let start = start(&world, setup, As::Root, &args);
    assert_refused(
        &world,
        "legacy, lock held",
        &start,
        "holding the xtables lock",
        secs(9),
    );
    assert!(start.errors()[0].contains("through iptables-nft"));
}

/// Another process with CAP_NET_ADMIN changes the fence after the self-test, while
/// `--verify-connect` waits for a connection: `cordon firewall` names the change and locks down.
fn changed_during_verification(fault: &str, tamper: &[&str], named: &str) {
    let world = world();
    // The first SYN to the allowed listener is dropped in the world: the connection completes on
    // the retransmit a second later, which is the window the change is made in.
    let sandbox_ip = format!("{SANDBOX}/32");
    let syn = [
        "-p",
        "tcp",
        "--syn",
        "-s",
        &sandbox_ip,
        "-d",
        ALLOWED,
        "--dport",
        "443",
    ];
    let mut seen = vec!["iptables", "-A", "INPUT"];
    seen.extend(syn);
    seen.extend(["-m", "recent", "--name", "seen", "--rcheck", "-j", "ACCEPT"]);
    run_in(&world.world_ns, &seen);
    let mut first = vec!["iptables", "-A", "INPUT"];
    first.extend(syn);
    first.extend(["-m", "recent", "--name", "seen", "--set", "-j", "DROP"]);
    run_in(&world.world_ns, &first);

    let started = Instant::now();
    let mut child = world
        .sandbox_command(cordon())
        .args([
            "firewall",
            "--dns",
            "static",
            "--no-default-profile",
            "--user",
            AGENT_UID,
            "--verify-connect",
        ])
        .args(["--allow", "allowed.test:443"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = String::new();
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        // Logged after the record is taken, before the self-test and --verify-connect.
        if line.contains("fence loaded") {
            let mut command = vec!["netns", "exec", world.sandbox_ns.as_str()];
            command.extend(tamper);
            support::run("ip", &command);
        }
        stderr.push_str(&line);
        stderr.push('\n');
    }
    let status = child.wait().unwrap();
    let start = Start {
        code: status.code(),
        stderr,
        elapsed: started.elapsed(),
        agent_ran: false,
    };
    eprintln!("→ {:?}\n{}", start.code, start.stderr);
    assert!(start.stderr.contains("--verify-connect: allowed.test"));
    assert_refused(&world, fault, &start, named, secs(4));
    assert!(start.errors()[0].contains("the fence changed after the self-test"));
}

#[test]
fn set_changed_during_verification() {
    if privileged() {
        changed_during_verification(
            "set changed after the self-test",
            &["ipset", "add", "cordon4-hosts", BLOCKED],
            &format!("set cordon4-hosts gained {BLOCKED}"),
        );
    }
}

#[test]
fn rules_changed_during_verification() {
    if privileged() {
        changed_during_verification(
            "rules changed after the self-test",
            &["iptables", "-I", "OUTPUT", "-d", BLOCKED, "-j", "ACCEPT"],
            &format!("IPv4 rule added: `-A OUTPUT -d {BLOCKED}/32 -j ACCEPT`"),
        );
    }
}

/// SIGTERM and SIGINT at several points of `cordon firewall`'s set-up (the resolver answers after
/// 300 ms): it exits 128+n, saying whether it stopped before or after the fence was in place,
/// and egress is denied or fenced either way.
#[test]
fn signals_during_firewall_set_up() {
    if !privileged() {
        return;
    }
    for (signal, number) in [("TERM", 15), ("INT", 2)] {
        for delay_ms in [2, 50, 200, 1000] {
            let world = World::new(WorldOpts {
                dns_args: vec!["--delay-ms".into(), "300".into()],
                ..WorldOpts::default()
            });
            let started = Instant::now();
            let child = in_sandbox(&world)
                .args(["firewall", "--dns", "static", "--no-default-profile"])
                .args(["--user", AGENT_UID])
                .args(ALLOW)
                .args([
                    "--resolv-conf",
                    &format!("/etc/netns/{}/resolv.conf", world.sandbox_ns),
                ])
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            std::thread::sleep(Duration::from_millis(delay_ms));
            // Unreaped, the pid is cordon's even if it has exited.
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::try_from(number).unwrap(),
            )
            .unwrap();
            let output = child.wait_with_output().unwrap();
            let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
            let case = format!("SIG{signal} at {delay_ms} ms");
            eprintln!("{case}: {:?}\n{stderr}", output.status.code());
            assert!(started.elapsed() < secs(3), "{case}");
            let interrupted = format!("set-up interrupted by SIG{signal}");
            let fenced_first =
                stderr.contains(&format!("{interrupted}, after the fence was in place"));
            if fenced_first || output.status.code() == Some(0) {
                let expected = if fenced_first { 128 + number } else { 0 };
                assert_eq!(output.status.code(), Some(expected), "{case}");
                assert!(stderr.contains("self-test passed"), "{case}");
                assert!(reachable(&world, ALLOWED), "{case}: fenced");
            } else {
                let start = Start {
                    code: output.status.code(),
                    stderr,
                    elapsed: started.elapsed(),
                    agent_ran: false,
                };
                let fault = format!("SIG{signal} during set-up");
                assert_refused(&world, &fault, &start, &interrupted, secs(3));
            }
            assert!(!reachable(&world, BLOCKED), "{case}: blocked address");
        }
    }
}

/// ^C (SIGINT) or SIGTERM while `--dns static` waits on a resolver that answers after 5 s, for
/// the entrypoint and for `cordon firewall`: set-up ends within 200 ms of the signal, exit 128+n,
/// one line saying it was interrupted, egress denied, the agent never started.
#[test]
fn a_stop_during_a_slow_resolution_ends_set_up_at_once() {
    if !privileged() {
        return;
    }
    for (signal, number) in [("INT", 2), ("TERM", 15)] {
        for firewall in [false, true] {
            let world = World::new(WorldOpts {
                dns_args: vec!["--delay-ms".into(), "5000".into()],
                ..WorldOpts::default()
            });
            let marker = world.dir.join("agent-ran");
            let mut command = in_sandbox(&world);
            if firewall {
                command.arg("firewall");
            }
            command
                .args([
                    "--dns",
                    "static",
                    "--no-default-profile",
                    "--user",
                    AGENT_UID,
                ])
                .args(ALLOW)
                .args([
                    "--resolv-conf",
                    &format!("/etc/netns/{}/resolv.conf", world.sandbox_ns),
                ])
                .stderr(Stdio::piped());
            if !firewall {
                command
                    .args(["--no-harden", "--", "/bin/touch"])
                    .arg(&marker);
            }
            let started = Instant::now();
            let child = command.spawn().unwrap();
            // The rules load in well under this; the answers are seconds away.
            std::thread::sleep(Duration::from_millis(700));
            let signalled = Instant::now();
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::try_from(number).unwrap(),
            )
            .unwrap();
            let output = child.wait_with_output().unwrap();
            let after_signal = signalled.elapsed();
            let shape = if firewall { "firewall" } else { "entrypoint" };
            let case = format!("{shape}, SIG{signal} during the resolution");
            let start = Start::of(&output, started, &marker);
            eprintln!(
                "{case}: {:?} {:.0} ms after the signal\n{}",
                start.code,
                after_signal.as_secs_f64() * 1e3,
                start.stderr
            );
            assert!(
                after_signal < Duration::from_millis(200),
                "{case}: took {after_signal:?} after the signal"
            );
            let fault = format!("SIG{signal} during set-up");
            let hint = format!("set-up interrupted by SIG{signal}");
            assert_refused(&world, &fault, &start, &hint, secs(2));
        }
    }
}

/// cordon itself (no `ip netns exec` in between, so a signal reaches it and nothing else) in the
/// sandbox's network namespace; give it `--resolv-conf` (the sandbox's is under /etc/netns).
fn in_sandbox(world: &World) -> Command {
    use std::ffi::CString;
    use std::os::unix::process::CommandExt;
    let namespace = std::fs::File::open(format!("/var/run/netns/{}", world.sandbox_ns)).unwrap();
    let (none, root, run, tmpfs) = (
        CString::new("none").unwrap(),
        CString::new("/").unwrap(),
        CString::new("/run").unwrap(),
        CString::new("tmpfs").unwrap(),
    );
    let mut command = Command::new(cordon());
    // SAFETY: only system calls, on values prepared before the fork and owned by the closure.
    unsafe {
        command.pre_exec(move || {
            nix::sched::setns(&namespace, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)?;
            // A private /run, as `World::private_run` gives the other cases; each step only if
            // the one before held (never over the host's /run).
            let check = |rc: libc::c_int| match rc {
                0 => Ok(()),
                _ => Err(std::io::Error::last_os_error()),
            };
            check(libc::unshare(libc::CLONE_NEWNS))?;
            check(libc::mount(
                none.as_ptr(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ))?;
            check(libc::mount(
                tmpfs.as_ptr(),
                run.as_ptr(),
                tmpfs.as_ptr(),
                0,
                std::ptr::null(),
            ))
        });
    }
    command
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn run_in(ns: &str, args: &[&str]) {
    let mut command = vec!["netns", "exec", ns];
    command.extend_from_slice(args);
    support::run("ip", &command);
}
