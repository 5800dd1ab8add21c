//! The DNS gateway (`--dns gateway`), as root, in network namespaces: the agent's DNS to any
//! server reaches only the gateway, only allowlisted names reach the world's resolver, answers
//! open what they name (wildcards too) and nothing special-purpose, the gateway runs confined,
//! fails closed when it stops and comes back when it dies; behind Docker's embedded DNS and on
//! an IPv4-only network too.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use support::world::*;
use support::{cordon, privileged};

const GATEWAY_UID: &str = "65053";

/// cordon running `/bin/sleep` as the agent with the gateway, allowing `allow`.
fn start_sandbox(world: &World, allow: &[&str]) -> SleepingAgent {
    let mut command = world.sandbox_command(cordon());
    command.args(["--dns", "gateway", "--no-harden", "--no-default-profile"]);
    for entry in allow {
        command.args(["--allow", entry]);
    }
    command.args(["--user", AGENT_UID, "--", "/bin/sleep", "300"]);
    SleepingAgent::start(command, world.path(&format!("cordon-{}.log", allow.len())))
}

/// `cordon ARGS` as root in the sandbox: its status and everything it printed.
fn cordon_as_root(world: &World, args: &[&str]) -> (Option<i32>, String) {
    let output = world.sandbox_command(cordon()).args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code(), text)
}

fn dns_log(world: &World) -> String {
    std::fs::read_to_string(world.path("dns.log")).unwrap_or_default()
}

/// The gateway: the one process of the gateway's uid (in this test's sandbox: a child of
/// `sandbox`).
fn gateway_pid(sandbox: &SleepingAgent) -> Option<u32> {
    let children =
        std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", sandbox.pid())).ok()?;
    children
        .split_whitespace()
        .filter_map(|pid| pid.parse::<u32>().ok())
        .find(|pid| status_field(*pid, "Uid").is_some_and(|uid| uid.starts_with(GATEWAY_UID)))
}

/// The local ports of the gateway's upstream sockets (one per listening family) connected to
/// `remote` as /proc/net/udp writes it (`01004D0A:0035` is 10.77.0.1:53), which any uid reads.
fn upstream_ports(world: &World, remote: &str) -> Vec<u16> {
    let udp = world.sandbox(&["cat", "/proc/net/udp"]);
    let ports: Vec<u16> = udp
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .filter(|fields| fields.get(2) == Some(&remote) && fields.get(7) == Some(&GATEWAY_UID))
        .filter_map(|fields| u16::from_str_radix(fields[1].split(':').nth(1)?, 16).ok())
        .collect();
    assert!(!ports.is_empty(), "the gateway's upstream sockets:\n{udp}");
    ports
}

/// Kills the gateway `first` and waits for the supervisor's next one.
fn kill_and_wait_for_the_next_gateway(sandbox: &SleepingAgent, first: u32) -> u32 {
    // SAFETY: signalling the gateway this test's cordon started.
    unsafe { libc::kill(first as i32, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match gateway_pid(sandbox) {
            Some(pid) if pid != first => return pid,
            _ => assert!(Instant::now() < deadline, "the gateway was not restarted"),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `SPEC VERDICT DETAIL` per probe, as the agent.
fn probe(world: &World, specs: &[&str]) -> HashMap<String, (String, String)> {
    world
        .probe_timed(specs)
        .into_iter()
        .map(|(spec, (verdict, detail, _))| (spec, (verdict, detail)))
        .collect()
}

fn verdict(world: &World, spec: &str) -> (String, String) {
    probe(world, &[spec]).remove(spec).expect("a probe line")
}

/// Hex of a would-be secret, as a DNS tunnel puts it in a name.
const TUNNEL: &str = "6768705f5365637265745f746f6b656e";

#[test]
fn only_allowlisted_names_reach_the_resolver_and_their_answers_open_them() {
    if !privileged() {
        return;
    }
    let world = World::new(WorldOpts {
        records: vec![
            format!("x.wild.test={BLOCKED}"),
            format!("rebind.test={METADATA}"),
            format!("lan.test={LAN_PEER}"),
        ],
        ..WorldOpts::default()
    });
    let sandbox = start_sandbox(
        &world,
        &["allowed.test", "*.wild.test", "rebind.test", "lan.test"],
    );
    assert!(
        sandbox.log().contains("DNS gateway (uid 65053)"),
        "{}",
        sandbox.log()
    );

    // Nothing is open by name until the agent asks for it.
    let blocked = format!("tcp:{BLOCKED}:443");
    assert_eq!(verdict(&world, &blocked).0, "refused");
    let asked = verdict(&world, &format!("dns:x.wild.test@{GATEWAY}"));
    assert_eq!(asked, ("answered".into(), BLOCKED.into()));
    assert_eq!(verdict(&world, &blocked).0, "open", "the answer opened it");
    assert_eq!(
        verdict(&world, &format!("dnstcp:allowed.test@{GATEWAY}")),
        ("answered".into(), ALLOWED.into())
    );

    // The tunnel: a secret under a name nobody allowed, to every server, in every form.
    let tunnel: Vec<String> = [
        format!("dns:{TUNNEL}.a.tunnel.test@{GATEWAY}"),
        format!("txt:{TUNNEL}.b.tunnel.test@{GATEWAY}"),
        format!("dnstcp:{TUNNEL}.c.tunnel.test@{GATEWAY}"),
        format!("dns:{TUNNEL}.d.tunnel.test@{OTHER_DNS}"),
        format!("dns:{TUNNEL}.e.tunnel.test@[{GATEWAY6}]"),
        format!("dns:{TUNNEL}.f.tunnel.test@127.0.0.1"),
        // A wildcard covers names below it, not itself.
        "dns:wild.test@10.77.0.1".to_string(),
    ]
    .into();
    let specs: Vec<&str> = tunnel.iter().map(String::as_str).collect();
    let got = probe(&world, &specs);
    for spec in &specs {
        assert_eq!(
            got[*spec],
            ("error".into(), "REFUSED".into()),
            "{spec}: the gateway refuses it"
        );
    }

    // The agent's choice of letter case and of record type stays here: upstream hears the name
    // in lower case (the probe accepts only an answer in its own case, as a stub doing DNS 0x20
    // does), and a record type the gateway does not forward is refused here.
    assert_eq!(
        verdict(&world, &format!("dns:X.WiLd.TeSt@{GATEWAY}")),
        ("answered".into(), BLOCKED.into()),
        "asked again in another case: answered from the cache in the agent's case"
    );
    assert_eq!(
        verdict(&world, &format!("dns:NeW.WiLd.TeSt@{GATEWAY}")).0,
        "nxdomain",
        "forwarded, answered in the agent's case"
    );
    assert_eq!(
        verdict(&world, &format!("dnstype:65280/allowed.test@{GATEWAY}")),
        ("error".into(), "REFUSED".into())
    );
    assert_eq!(
        verdict(&world, &format!("dnstype:16/allowed.test@{GATEWAY}")).0,
        "answered",
        "TXT is forwarded"
    );

    // Rebinding: an allowed name that answers with a metadata or LAN address opens nothing.
    assert_eq!(
        verdict(&world, &format!("dns:rebind.test@{GATEWAY}")),
        ("answered".into(), "-".into())
    );
    assert_eq!(
        verdict(&world, &format!("dns:lan.test@{GATEWAY}")),
        ("answered".into(), "-".into())
    );
    assert_eq!(verdict(&world, &format!("tcp:{METADATA}:80")).0, "refused");
    assert_eq!(verdict(&world, &format!("tcp:{LAN_PEER}:22")).0, "refused");

    let log = dns_log(&world);
    assert!(log.contains("x.wild.test"), "{log}");
    assert!(log.contains("rebind.test"), "{log}");
    assert!(
        !log.contains("tunnel") && !log.contains(TUNNEL) && !log.contains(" wild.test"),
        "a refused name reached the world's DNS server:\n{log}"
    );
    assert!(
        !log.contains("self-test.cordon.invalid"),
        "the self-test's name left the sandbox:\n{log}"
    );
    assert!(log.contains("new.wild.test A"), "{log}");
    assert!(log.contains("allowed.test TXT"), "{log}");
    assert!(
        !log.contains("WiLd") && !log.contains("TYPE65280"),
        "the agent's letter case or record type reached the world's DNS server:\n{log}"
    );
}

/// A name whose address changes while the agent runs (a CDN moving, with the short TTL CDNs
/// give) keeps working: the new answer opens the new address, no restart.
#[test]
fn a_name_that_moves_to_a_new_address_keeps_working() {
    if !privileged() {
        return;
    }
    let records = std::env::temp_dir().join(format!("cordon-moving-{}", std::process::id()));
    std::fs::write(&records, format!("moving.test={ALLOWED}\n")).unwrap();
    let world = World::new(WorldOpts {
        dns_args: vec![
            "--records-file".into(),
            records.display().to_string(),
            "--ttl".into(),
            "1".into(),
        ],
        ..WorldOpts::default()
    });
    let _sandbox = start_sandbox(&world, &["moving.test"]);
    let ask = format!("dns:moving.test@{GATEWAY}");
    assert_eq!(verdict(&world, &ask), ("answered".into(), ALLOWED.into()));
    assert_eq!(verdict(&world, &format!("tcp:{ALLOWED}:443")).0, "open");
    let moved_to = format!("tcp:{BLOCKED}:443");
    assert_eq!(
        verdict(&world, &moved_to).0,
        "refused",
        "not yet its address"
    );

    std::fs::write(&records, format!("moving.test={BLOCKED}\n")).unwrap();
    assert_eq!(verdict(&world, &ask), ("answered".into(), BLOCKED.into()));
    assert_eq!(
        verdict(&world, &moved_to).0,
        "open",
        "the new address opened"
    );
    let _ = std::fs::remove_file(&records);
}

/// A host that sends from the resolver's address, guessing ids (the world's server sends 70
/// copies of one name's answer under other ids before the real one): the gateway stops
/// believing answers over UDP at the 64th, sends the agent's resolver to TCP, and names still
/// resolve over TCP.
#[test]
fn forged_answers_send_the_agents_dns_to_tcp() {
    if !privileged() {
        return;
    }
    let world = World::new(WorldOpts {
        records: vec![format!("forged.test={ALLOWED}")],
        dns_args: vec!["--forge-before".into(), "forged.test=70".into()],
        ..WorldOpts::default()
    });
    let sandbox = start_sandbox(&world, &["allowed.test", "forged.test"]);
    let truncated = ("error".to_string(), "TRUNCATED".to_string());
    let forged = verdict(&world, &format!("dns:forged.test@{GATEWAY}"));
    assert_eq!(forged, truncated, "the asker waiting at the 64th");
    let later = verdict(&world, &format!("dns:allowed.test@{GATEWAY}"));
    assert_eq!(later, truncated, "a later question over UDP");
    let over_tcp = verdict(&world, &format!("dnstcp:allowed.test@{GATEWAY}"));
    assert_eq!(over_tcp, ("answered".to_string(), ALLOWED.to_string()));
    let (code, status) = cordon_as_root(&world, &["status"]);
    assert_eq!(code, Some(0), "{status}");
    assert!(status.contains("over TCP only"), "{status}");
    let log = sandbox.log();
    assert!(log.contains("matched no question"), "{log}");
    assert_eq!(
        dns_log(&world).matches("udp allowed.test").count(),
        0,
        "went upstream over UDP after the flood:\n{}",
        dns_log(&world)
    );
}

/// A burst of questions at once, as a build resolving hundreds of names sends: every one is
/// answered, none dropped while the gateway is busy with the ones before it.
#[test]
fn a_burst_of_questions_is_answered_without_loss() {
    if !privileged() {
        return;
    }
    let world = World::new(WorldOpts {
        dns_args: vec!["--wildcard".into(), "burst.test=10.200.0.0/16".into()],
        ..WorldOpts::default()
    });
    let _sandbox = start_sandbox(&world, &["*.burst.test"]);
    let burst = format!("dnsburst:3000/burst.test@{GATEWAY}");
    assert_eq!(verdict(&world, &burst), ("answered".into(), "3000".into()));
}

/// A name asked again within its TTL is answered by the gateway's cache: the world's server
/// hears it once and the address stays open (the TTL's count-down: `gateway::cache`'s tests).
#[test]
fn a_name_asked_again_within_its_ttl_is_answered_from_the_cache() {
    if !privileged() {
        return;
    }
    let world = World::new(WorldOpts {
        dns_args: vec!["--ttl".into(), "30".into()],
        ..WorldOpts::default()
    });
    let _sandbox = start_sandbox(&world, &["allowed.test"]);
    let ask = format!("dns:allowed.test@{GATEWAY}");
    let heard = || {
        dns_log(&world)
            .lines()
            .filter(|line| line.contains("allowed.test"))
            .count()
    };
    assert_eq!(verdict(&world, &ask), ("answered".into(), ALLOWED.into()));
    let first = heard();
    assert!(first >= 1, "the first question went upstream");
    for _ in 0..3 {
        assert_eq!(verdict(&world, &ask), ("answered".into(), ALLOWED.into()));
    }
    assert_eq!(heard(), first, "asked again: answered by the gateway alone");
    assert_eq!(verdict(&world, &format!("tcp:{ALLOWED}:443")).0, "open");
    let status = world
        .sandbox_command(cordon())
        .arg("status")
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&status.stdout);
    let cached: u64 = status
        .split_once(" forwarded, ")
        .and_then(|(_, rest)| rest.split_once(" from the cache"))
        .and_then(|(count, _)| count.parse().ok())
        .unwrap_or_else(|| panic!("no cache count in:\n{status}"));
    assert!(cached >= 3, "{status}");
}

/// Names the hosts file answers (Docker's `--add-host`) never reach the gateway: an allowlisted
/// one opens its address at start; one nobody allowed opens nothing.
#[test]
fn allowlisted_names_in_the_hosts_file_open_at_start() {
    if !privileged() {
        return;
    }
    let world = World::new(WorldOpts::default());
    world.set_hosts(&format!(
        "127.0.0.1 localhost\n{ALLOWED} hosted.test\n{BLOCKED} unlisted.test\n"
    ));
    let sandbox = start_sandbox(&world, &["hosted.test:443"]);
    assert!(
        sandbox.log().contains(&format!(
            "hosted.test is in /etc/hosts: {ALLOWED} opened at start"
        )),
        "{}",
        sandbox.log()
    );
    assert_eq!(verdict(&world, &format!("tcp:{ALLOWED}:443")).0, "open");
    assert_eq!(verdict(&world, &format!("tcp:{ALLOWED}:80")).0, "refused");
    assert_eq!(verdict(&world, &format!("tcp:{BLOCKED}:443")).0, "refused");
}

/// What the gateway refused and the fence rejected is named on cordon's stderr with the entry
/// that would allow it (a rejected connection to an address a name answered names the name),
/// once per block, and `cordon blocked` lists them with counts.
#[test]
fn each_block_is_named_with_what_would_allow_it() {
    if !privileged() {
        return;
    }
    let world = World::new(WorldOpts::default());
    let sandbox = start_sandbox(&world, &["allowed.test"]);
    let got = probe(
        &world,
        &[
            &format!("dns:{TUNNEL}.evil.test@{GATEWAY}"),
            &format!("tcp:{BLOCKED}:443"),
            &format!("tcp:{BLOCKED}:443"),
            &format!("dns:allowed.test@{GATEWAY}"),
            &format!("tcp:{ALLOWED}:8080"),
        ],
    );
    assert_eq!(got[&format!("tcp:{ALLOWED}:8080")].0, "refused");
    let expected = [
        format!("refused name: {TUNNEL}.evil.test (A) — allow with: {TUNNEL}.evil.test"),
        format!("blocked: tcp {BLOCKED}:443 — allow with: {BLOCKED}:443"),
        format!("blocked: tcp {ALLOWED}:8080 (allowed.test, answered "),
        "— allow with: allowed.test:8080".to_string(),
    ];
    let deadline = Instant::now() + Duration::from_secs(5);
    let listed = loop {
        let listed = world
            .sandbox_command(cordon())
            .arg("blocked")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&listed.stdout).into_owned();
        if expected.iter().all(|line| text.contains(line.as_str())) {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "cordon blocked:\n{text}\ncordon's log:\n{}",
            sandbox.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let log = sandbox.log();
    for line in &expected {
        assert_eq!(
            log.matches(line.as_str()).count(),
            1,
            "{line} once in:\n{log}"
        );
    }
    // The same block twice is one row, counted twice.
    let row = listed
        .lines()
        .find(|l| l.contains(&format!("tcp {BLOCKED}:443")))
        .unwrap();
    assert!(row.trim_start().starts_with("2 "), "{listed}");
    let json = world
        .sandbox_command(cordon())
        .args(["blocked", "--json"])
        .output()
        .unwrap();
    let json = String::from_utf8_lossy(&json.stdout);
    assert!(
        json.contains(&format!("\"allow_with\":\"{BLOCKED}:443\"")),
        "{json}"
    );
}

/// Root changes the running allowlist (`cordon allow`, `cordon deny`, `cordon status`) without a
/// restart; the agent cannot; a denied name's addresses close and its established flows stop,
/// while other allowed names and flows go on.
#[test]
fn root_changes_the_running_allowlist_and_the_agent_cannot() {
    if !privileged() {
        return;
    }
    let world = World::new(WorldOpts {
        records: vec![
            format!("later.test={BLOCKED}"),
            format!("kept.test={ALLOWED}"),
        ],
        ..WorldOpts::default()
    });
    let _sink = start_sink(&world);
    let sandbox = start_sandbox(&world, &["allowed.test"]);
    let control = |args: &[&str]| cordon_as_root(&world, args);
    let later = format!("dns:later.test@{GATEWAY}");
    assert_eq!(verdict(&world, &later).1, "REFUSED");

    let as_agent = world
        .sandbox_command("setpriv")
        .args(["--reuid", AGENT_UID, "--regid", AGENT_UID, "--clear-groups"])
        .arg(cordon())
        .args(["allow", "later.test"])
        .output()
        .unwrap();
    assert_eq!(as_agent.status.code(), Some(77), "{as_agent:?}");
    assert!(String::from_utf8_lossy(&as_agent.stderr).contains("needs root"));
    assert_eq!(
        verdict(&world, &later).1,
        "REFUSED",
        "the agent changed nothing"
    );

    let allow = format!("later.test:443,{STREAM_PORT}");
    let (code, text) = control(&["allow", &allow]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.starts_with("ok: later.test"), "{text}");
    assert_eq!(verdict(&world, &later), ("answered".into(), BLOCKED.into()));
    assert_eq!(verdict(&world, &format!("tcp:{BLOCKED}:443")).0, "open");
    assert_eq!(
        verdict(&world, &format!("dns:allowed.test@{GATEWAY}")).0,
        "answered"
    );
    let _later_flow = stream(&world, BLOCKED);
    let (code, text) = control(&["status"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("names: 2 exact, 0 wildcard(s)"), "{text}");
    assert!(text.contains("cordon4-answered "), "{text}");

    // ALLOWED is open on 443 only for allowed.test: allow its stream port too, so that both
    // flows run before the deny.
    let (code, _) = control(&["allow", &format!("allowed.test:{STREAM_PORT}")]);
    assert_eq!(code, Some(0));
    assert_eq!(
        verdict(&world, &format!("dns:allowed.test@{GATEWAY}")).0,
        "answered"
    );
    let _allowed_flow = stream(&world, ALLOWED);
    let pause = || std::thread::sleep(Duration::from_millis(400));
    pause();
    assert!(sunk(&world, "t", BLOCKED) > 2 && sunk(&world, "t", ALLOWED) > 2);

    let (code, text) = control(&["deny", "later.test"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("1 address(es) it opened closed"), "{text}");
    let denied_at = (sunk(&world, "t", BLOCKED), sunk(&world, "t", ALLOWED));
    pause();
    assert!(
        sunk(&world, "t", BLOCKED) <= denied_at.0 + 1,
        "the denied name's flow went on"
    );
    assert!(
        sunk(&world, "t", ALLOWED) >= denied_at.1 + 4,
        "the other allowed flow was cut"
    );
    assert_eq!(verdict(&world, &later).1, "REFUSED");
    assert_eq!(verdict(&world, &format!("tcp:{BLOCKED}:443")).0, "refused");
    let (code, text) = control(&["deny", "later.test"]);
    assert_eq!(code, Some(1), "{text}");

    // A gateway the supervisor starts again keeps root's changes: later.test stays denied,
    // kept.test allowed.
    let kept = format!("dns:kept.test@{GATEWAY}");
    assert_eq!(control(&["allow", "kept.test"]).0, Some(0));
    assert_eq!(verdict(&world, &kept).0, "answered");
    let first = gateway_pid(&sandbox).expect("a gateway process");
    // SAFETY: signalling the gateway this test's cordon started.
    unsafe { libc::kill(first as i32, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(5);
    while gateway_pid(&sandbox).is_none_or(|pid| pid == first) {
        assert!(Instant::now() < deadline, "the gateway was not restarted");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(verdict(&world, &later).1, "REFUSED", "the deny was lost");
    assert_eq!(verdict(&world, &kept), ("answered".into(), ALLOWED.into()));
    let (_, text) = control(&["status"]);
    assert!(text.contains("names: 2 exact, 0 wildcard(s)"), "{text}");
}

/// Address entries change while the agent runs too: `cordon allow ADDRESS:PORT` opens it at
/// once (the sets and the fence's record change together, so `cordon check` still finds the
/// fence as loaded), `cordon deny` closes it and cuts its established flows, and a name may
/// open an address of the container's own network only while an address entry covers it.
#[test]
fn root_allows_and_denies_address_entries_while_the_agent_runs() {
    if !privileged() {
        return;
    }
    let world = World::new(WorldOpts {
        records: vec![format!("peer.test={LAN_PEER}")],
        ..WorldOpts::default()
    });
    let _sink = start_sink(&world);
    let _sandbox = start_sandbox(&world, &["allowed.test", "peer.test"]);
    let control = |args: &[&str]| cordon_as_root(&world, args);
    let fence_finding = || {
        let (_, text) = control(&["check"]);
        text.lines()
            .find(|line| line.contains(" fence: the fence"))
            .unwrap_or_default()
            .to_string()
    };
    let blocked = format!("tcp:{BLOCKED}:443");
    assert_eq!(verdict(&world, &blocked).0, "refused");

    let entry = format!("{BLOCKED}:443,{STREAM_PORT}");
    let (code, text) = control(&["allow", &entry]);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(
        verdict(&world, &blocked).0,
        "open",
        "the address entry opened it"
    );
    assert_eq!(verdict(&world, &format!("tcp:{BLOCKED}:80")).0, "refused");
    assert!(
        fence_finding().starts_with("ok    fence: the fence is as loaded"),
        "{}",
        fence_finding()
    );
    let (_, status) = control(&["status"]);
    assert!(status.contains("address entries: 1"), "{status}");

    // peer.test points into the container's own network: refused until an entry covers it.
    let peer = format!("dns:peer.test@{GATEWAY}");
    assert_eq!(verdict(&world, &peer), ("answered".into(), "-".into()));
    assert_eq!(control(&["allow", &format!("{LAN_PEER}/32:22")]).0, Some(0));
    assert_eq!(verdict(&world, &peer), ("answered".into(), LAN_PEER.into()));

    let _flow = stream(&world, BLOCKED);
    std::thread::sleep(Duration::from_millis(400));
    assert!(sunk(&world, "t", BLOCKED) > 2, "the stream flows");
    let (code, text) = control(&["deny", &entry]);
    assert_eq!(code, Some(0), "{text}");
    let denied_at = sunk(&world, "t", BLOCKED);
    std::thread::sleep(Duration::from_millis(400));
    assert!(
        sunk(&world, "t", BLOCKED) <= denied_at + 1,
        "the denied entry's flow went on"
    );
    assert_eq!(verdict(&world, &blocked).0, "refused");
    assert!(
        fence_finding().starts_with("ok    fence: the fence is as loaded"),
        "{}",
        fence_finding()
    );
    let (code, _) = control(&["deny", &entry]);
    assert_eq!(code, Some(1), "denied twice");
}

/// The gateway holds CAP_NET_ADMIN alone under its own uid, not dumpable, no_new_privs, and the
/// agent can neither signal it nor take its port; the supervisor keeps what a restart needs in
/// its permitted set only.
#[test]
fn the_gateway_runs_confined_and_out_of_the_agents_reach() {
    if !privileged() {
        return;
    }
    let world = World::new(WorldOpts::default());
    let sandbox = start_sandbox(&world, &["allowed.test"]);
    let pid = gateway_pid(&sandbox).expect("a gateway process");
    let field = |key: &str| status_field(pid, key).unwrap();
    assert_eq!(field("Name"), "cordon-dns");
    assert!(field("Uid")
        .split_whitespace()
        .all(|uid| uid == GATEWAY_UID));
    assert!(field("Gid")
        .split_whitespace()
        .all(|gid| gid == GATEWAY_UID));
    assert_eq!(field("Groups"), "");
    assert_eq!(field("CapEff"), "0000000000001000", "CAP_NET_ADMIN only");
    assert_eq!(field("CapPrm"), "0000000000001000");
    for set in ["CapInh", "CapBnd", "CapAmb"] {
        assert_eq!(field(set), "0000000000000000", "{set}");
    }
    assert_eq!(field("NoNewPrivs"), "1");
    // Not dumpable: its /proc files belong to root.
    let owner = std::os::unix::fs::MetadataExt::uid(
        &std::fs::metadata(format!("/proc/{pid}/environ")).unwrap(),
    );
    assert_eq!(owner, 0, "the gateway is dumpable");

    let supervisor = |key: &str| status_field(sandbox.pid(), key).unwrap();
    // "starting" is logged just before the supervisor's own drop.
    let deadline = Instant::now() + Duration::from_secs(2);
    while supervisor("CapEff") != "0000000000000020" && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    // CAP_KILL effective; CAP_SETGID, CAP_SETUID, CAP_NET_ADMIN permitted only.
    assert_eq!(supervisor("CapEff"), "0000000000000020");
    assert_eq!(supervisor("CapPrm"), "00000000000010e0");
    assert_eq!(supervisor("CapBnd"), "0000000000000000");

    let as_agent = world.sandbox_sh(&format!(
        "setpriv --reuid {AGENT_UID} --regid {AGENT_UID} --clear-groups sh -c \
         'kill -9 {pid}; echo kill=$?; \
          /usr/bin/python3 -c \"import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); \
          s.bind((\\\"127.0.0.1\\\", 10053))\" 2>/dev/null; echo bind=$?'"
    ));
    let text = String::from_utf8_lossy(&as_agent.stdout);
    assert!(
        text.contains("kill=1"),
        "the agent signalled the gateway: {text}"
    );
    assert!(
        text.contains("bind=1"),
        "the agent took the gateway's port: {text}"
    );
    assert_eq!(gateway_pid(&sandbox), Some(pid));
}

/// A stopped gateway answers nothing and nothing else answers (names fail closed, the world's
/// resolver hears nothing); a killed one is started again by the supervisor.
#[test]
fn names_fail_closed_while_the_gateway_is_down_and_it_comes_back() {
    if !privileged() {
        return;
    }
    let world = World::new(WorldOpts::default());
    let sandbox = start_sandbox(&world, &["allowed.test"]);
    let first = gateway_pid(&sandbox).expect("a gateway process");
    let ask = format!("dns:allowed.test@{GATEWAY}");
    assert_eq!(verdict(&world, &ask).0, "answered");

    // SAFETY: signalling the gateway this test's cordon started.
    unsafe { libc::kill(first as i32, libc::SIGSTOP) };
    let queries_before = dns_log(&world).lines().count();
    assert_eq!(
        verdict(&world, &ask).0,
        "timeout",
        "answered without the gateway"
    );
    assert_eq!(
        verdict(&world, &format!("dns:allowed.test@{OTHER_DNS}")).0,
        "timeout"
    );
    assert_eq!(
        dns_log(&world).lines().count(),
        queries_before,
        "a query reached the world's resolver while the gateway was stopped"
    );

    let second = kill_and_wait_for_the_next_gateway(&sandbox, first);
    assert_eq!(verdict(&world, &ask), ("answered".into(), ALLOWED.into()));
    assert_eq!(status_field(second, "CapEff").unwrap(), "0000000000001000");
    assert!(sandbox.log().contains("the DNS gateway was started again"));
}

/// A flow the fence accepted stays tracked for a while after its socket is gone, and nat is
/// consulted only for a flow's first packet: the agent must not reach a real DNS server by
/// joining one. Here the upstream flow of a gateway that died: its port, which any uid reads
/// from /proc/net/udp, is free once it is gone.
#[test]
fn the_agent_cannot_join_the_upstream_flow_of_a_gateway_that_died() {
    if !privileged() {
        return;
    }
    let world = World::new(WorldOpts::default());
    let sandbox = start_sandbox(&world, &["allowed.test"]);
    let first = gateway_pid(&sandbox).expect("a gateway process");
    // The gateway asks the world's resolver: its upstream flow is tracked and answered.
    let ask = format!("dns:allowed.test@{GATEWAY}");
    assert_eq!(verdict(&world, &ask).0, "answered");
    assert!(dns_log(&world).contains("allowed.test A"), "asked upstream");
    // Its upstream sockets (one of them asked).
    let upstream_ports = upstream_ports(&world, "01004D0A:0035");
    kill_and_wait_for_the_next_gateway(&sandbox, first);
    // From each of the dead gateway's ports, a question no entry allows: refused by the new
    // gateway (a flow nobody had is redirected to it) or stopped by the fence, never answered
    // by the world's resolver. (A port the new gateway took again cannot be bound.)
    for port in upstream_ports {
        let join = format!("dnsfrom:{SANDBOX}:{port}/{TUNNEL}.{port}.tunnel.test@{GATEWAY}");
        let got = verdict(&world, &join);
        let stopped = ["denied", "rejected"].contains(&got.0.as_str());
        let refused = got == ("error".into(), "REFUSED".into());
        let taken = got.1 == "EADDRINUSE";
        assert!(stopped || refused || taken, "{join}: {got:?}");
    }
    let log = dns_log(&world);
    assert!(
        !log.contains("tunnel"),
        "a question reached the world's resolver:\n{log}"
    );
    // The agent's DNS still reaches the new gateway.
    assert_eq!(verdict(&world, &ask), ("answered".into(), ALLOWED.into()));
}

/// The agent sends to the resolver from every port a restarted gateway might take: nat
/// redirects each to the gateway, and connection tracking keeps that redirect for the port a
/// while. The gateway started again forgets the flow of each port it takes, so its questions go
/// to the resolver, not back to itself.
#[test]
fn a_restarted_gateway_does_not_take_over_a_redirect_the_agent_left() {
    if !privileged() {
        return;
    }
    let world = World::new(WorldOpts {
        records: vec![format!("again.test={ALLOWED}")],
        ..WorldOpts::default()
    });
    // A hundred ports to choose from, so that the agent can cover them all.
    world.sandbox(&["sysctl", "-qw", "net.ipv4.ip_local_port_range=40000 40099"]);
    let sandbox = start_sandbox(&world, &["allowed.test", "again.test"]);
    let ask = |name: &str| verdict(&world, &format!("dns:{name}@{GATEWAY}"));
    assert_eq!(ask("allowed.test").0, "answered");
    let mut gateway = gateway_pid(&sandbox).expect("a gateway process");
    let mut before = upstream_ports(&world, "01004D0A:0035");
    for attempt in 0.. {
        let plant: Vec<String> = (40000..40100)
            .filter(|port| !before.contains(port))
            .map(|port| format!("udpfrom:0.0.0.0:{port}>{GATEWAY}:53"))
            .collect();
        let planted = world.probe_timed(&plant.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(
            planted.values().all(|(verdict, _, _)| verdict == "open"),
            "{planted:?}"
        );
        gateway = kill_and_wait_for_the_next_gateway(&sandbox, gateway);
        let now = upstream_ports(&world, "01004D0A:0035");
        // The new gateway took a port the agent had sent from (else it took the old ones again:
        // once more).
        if now.iter().any(|port| !before.contains(port)) {
            break;
        }
        assert!(attempt < 3, "the gateway kept its ports: {before:?}");
        before = now;
    }
    assert_eq!(
        ask("again.test"),
        ("answered".into(), ALLOWED.into()),
        "the restarted gateway's question did not reach the resolver"
    );
}

/// Behind Docker's embedded DNS (127.0.0.11, DNAT to a port of its own, a forwarder running as
/// root): the agent's questions reach the gateway, and the forwarder's real port, which any uid
/// can read from /proc/net/udp, is closed to the agent.
#[test]
fn behind_docker_embedded_dns_the_forwarders_own_port_is_closed_to_the_agent() {
    if !privileged() {
        return;
    }
    let world = World::new(WorldOpts {
        docker_dns: true,
        ..WorldOpts::default()
    });
    let _sandbox = start_sandbox(&world, &["allowed.test"]);
    let got = probe(
        &world,
        &[
            "dns:allowed.test@127.0.0.11",
            &format!("dns:{TUNNEL}.tunnel.test@127.0.0.11"),
            &format!("dns:{TUNNEL}.real-port.tunnel.test@127.0.0.11:5300"),
            &format!("dnstcp:{TUNNEL}.real-port.tunnel.test@127.0.0.11:5300"),
        ],
    );
    assert_eq!(got["dns:allowed.test@127.0.0.11"].1, ALLOWED);
    assert_eq!(
        got[&format!("dns:{TUNNEL}.tunnel.test@127.0.0.11")],
        ("error".into(), "REFUSED".into())
    );
    for spec in [
        format!("dns:{TUNNEL}.real-port.tunnel.test@127.0.0.11:5300"),
        format!("dnstcp:{TUNNEL}.real-port.tunnel.test@127.0.0.11:5300"),
    ] {
        let (verdict, _) = &got[&spec];
        assert!(
            verdict == "rejected" || verdict == "refused" || verdict == "denied",
            "{spec}: {verdict}"
        );
    }
    let log = dns_log(&world);
    assert!(log.contains("allowed.test"), "{log}");
    assert!(
        !log.contains("tunnel"),
        "the tunnel reached the world:\n{log}"
    );

    // Port 53 of Docker's resolver address is free (its resolver listens elsewhere) and any uid
    // may bind it in a container: the agent must not speak from there to the gateway's
    // upstream socket (read from /proc/net/udp like any uid can), neither to answer a question
    // itself nor to open a tracked flow the gateway's next question would follow.
    for upstream_port in upstream_ports(&world, "0B00007F:0035") {
        let spoof = format!("udpfrom:127.0.0.11:53>127.0.0.1:{upstream_port}");
        assert_eq!(verdict(&world, &spoof).0, "denied", "{spoof}");
    }
    // Not in the gateway's cache (AAAA): this one goes upstream.
    assert_eq!(
        verdict(&world, "dns6:allowed.test@127.0.0.11").0,
        "answered",
        "the gateway's questions still reach Docker's resolver"
    );
}

/// Docker's ordinary networks have no IPv6 at all: the gateway listens on IPv4 only and works.
#[test]
fn an_ipv4_only_namespace_gets_the_gateway() {
    if !privileged() {
        return;
    }
    let world = World::new(WorldOpts {
        ipv6_off: true,
        ..WorldOpts::default()
    });
    let _sandbox = start_sandbox(&world, &["allowed.test"]);
    let got = probe(
        &world,
        &[
            &format!("dns:allowed.test@{GATEWAY}"),
            &format!("dns:{TUNNEL}.tunnel.test@{GATEWAY}"),
        ],
    );
    assert_eq!(got[&format!("dns:allowed.test@{GATEWAY}")].1, ALLOWED);
    assert_eq!(
        got[&format!("dns:{TUNNEL}.tunnel.test@{GATEWAY}")].1,
        "REFUSED"
    );
    assert_eq!(verdict(&world, &format!("tcp:{ALLOWED}:443")).0, "open");
}

/// The drop-in shape: `cordon firewall` (what init-firewall.sh runs) exits and leaves the
/// gateway running as a daemon; a rerun replaces it without cutting a live allowed flow (the
/// answered addresses stay in their sets); when the daemon dies, names fail closed until the
/// next run, and `cordon check` says so.
#[test]
fn the_drop_in_leaves_the_gateway_as_a_daemon_that_a_rerun_replaces() {
    if !privileged() {
        return;
    }
    let world = World::new(WorldOpts::default());
    let _sink = start_sink(&world);
    let allow = format!("allowed.test:443,{STREAM_PORT}");
    let firewall = || {
        let output = world.cordon(&[
            "firewall",
            "--no-default-profile",
            "--allow",
            &allow,
            "--user",
            AGENT_UID,
        ]);
        assert!(output.status.success(), "{}", stderr(&output));
        assert!(stderr(&output).contains("DNS gateway (uid 65053)"));
        std::fs::read_to_string(world.path("run-cordon/gateway.pid"))
            .unwrap()
            .trim()
            .parse::<u32>()
            .unwrap()
    };
    let first = firewall();
    assert_eq!(
        status_field(first, "Uid")
            .unwrap()
            .split_whitespace()
            .next(),
        Some(GATEWAY_UID)
    );
    let ask = format!("dns:allowed.test@{GATEWAY}");
    assert_eq!(verdict(&world, &ask), ("answered".into(), ALLOWED.into()));
    let tunnel = format!("dns:{TUNNEL}.dropin.tunnel.test@{GATEWAY}");
    assert_eq!(verdict(&world, &tunnel).1, "REFUSED");

    let _allowed = stream(&world, ALLOWED);
    let pause = || std::thread::sleep(Duration::from_millis(400));
    pause();
    let before = sunk(&world, "t", ALLOWED);
    assert!(before > 2, "the allowed stream flows");
    let second = firewall();
    assert_ne!(second, first);
    assert!(
        !std::path::Path::new(&format!("/proc/{first}")).exists()
            || status_field(first, "State").is_some_and(|s| s.starts_with('Z')),
        "the first run's gateway still runs"
    );
    let rerun_at = sunk(&world, "t", ALLOWED);
    pause();
    assert!(
        sunk(&world, "t", ALLOWED) >= rerun_at + 4,
        "the allowed stream was cut by the rerun"
    );
    assert_eq!(verdict(&world, &ask), ("answered".into(), ALLOWED.into()));
    assert_eq!(verdict(&world, &tunnel).1, "REFUSED");
    assert!(!dns_log(&world).contains("tunnel"));
    // The rerun found its chain hooked already (the first run, with no CORDON_DNS chain yet,
    // did not read the nat table): still one jump, first, in each family.
    for save in ["iptables-save", "ip6tables-save"] {
        let nat = world
            .sandbox_command(save)
            .args(["-t", "nat"])
            .output()
            .unwrap();
        let nat = String::from_utf8_lossy(&nat.stdout);
        let output: Vec<&str> = nat
            .lines()
            .filter(|l| l.starts_with("-A OUTPUT "))
            .collect();
        assert_eq!(
            output.first(),
            Some(&"-A OUTPUT -j CORDON_DNS"),
            "{save}:\n{nat}"
        );
        let jumps = output.iter().filter(|l| l.contains("CORDON_DNS")).count();
        assert_eq!(jumps, 1, "{save}:\n{nat}");
    }

    // SAFETY: a signal to the daemon this test's cordon started.
    unsafe { libc::kill(second as i32, libc::SIGKILL) };
    std::thread::sleep(Duration::from_millis(100));
    // Nothing answers (the port is free now: refused at once), and nothing reaches the world.
    let queries = dns_log(&world).lines().count();
    let (failed, _) = verdict(&world, &ask);
    assert!(
        failed == "refused" || failed == "timeout",
        "names fail closed: {failed}"
    );
    assert_eq!(dns_log(&world).lines().count(), queries);
    // The port is free now, but a server the agent binds there cannot answer: the redirected
    // question reaches it, its answer is rejected (EPERM) and never arrives.
    let script = world.path("fake-gateway.py");
    std::fs::write(
        &script,
        format!(
            r#"import socket
server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
server.bind(("127.0.0.1", 10053))
client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
client.settimeout(1)
client.sendto(b"question", ("{GATEWAY}", 53))
data, asker = server.recvfrom(100)
print("heard", data.decode())
try:
    server.sendto(b"answer", asker)
    print("answered")
except OSError as error:
    print("rejected", error.errno)
try:
    print("got", client.recv(100))
except OSError:
    print("nothing came")
"#
        ),
    )
    .unwrap();
    let fake = world.sandbox_sh(&format!(
        "setpriv --reuid {AGENT_UID} --regid {AGENT_UID} --clear-groups /usr/bin/python3 {script}"
    ));
    let text = String::from_utf8_lossy(&fake.stdout);
    assert!(
        text.contains("heard question") && text.contains("nothing came"),
        "{text}{}",
        String::from_utf8_lossy(&fake.stderr)
    );
    let check = world
        .sandbox_command(cordon())
        .arg("check")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&check.stdout);
    assert_eq!(check.status.code(), Some(1), "{text}");
    assert!(
        text.contains("FAIL  fence: dns: questions are redirected to the DNS gateway")
            && text.contains("which is not running"),
        "{text}"
    );
}

/// Where the gateway cannot serve, the command line says so at once: with --exec (nothing
/// would be left to run it), and wildcards without it.
#[test]
fn the_gateway_is_refused_with_exec_and_wildcards_need_it() {
    if !privileged() {
        return;
    }
    let world = World::new(WorldOpts::default());
    let wildcard = world.cordon(&[
        "firewall",
        "--dns",
        "static",
        "--no-default-profile",
        "--allow",
        "*.wild.test",
    ]);
    assert_eq!(wildcard.status.code(), Some(65), "{}", stderr(&wildcard));
    assert!(stderr(&wildcard).contains("--dns gateway"));
    let exec = world.cordon(&[
        "--dns",
        "gateway",
        "--exec",
        "--no-harden",
        "--no-default-profile",
        "--user",
        AGENT_UID,
        "--",
        "/bin/true",
    ]);
    assert_eq!(exec.status.code(), Some(64), "{}", stderr(&exec));
}
