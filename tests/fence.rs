//! The fence, as root, in network namespaces: every verdict as the agent sees it, idempotence,
//! Docker's embedded DNS, re-applying under load, and the fail-closed cases.

mod support;

use std::process::{Command, Stdio};

use support::world::*;
use support::{cordon, privileged, run, testkit};

/// The fence most tests use: only `allowed.test`, probed as uid 1000, names resolved at start
/// (the DNS gateway's own tests are in tests/gateway.rs).
const FENCE: &[&str] = &[
    "firewall",
    "--dns",
    "static",
    "--no-default-profile",
    "--allow",
    "allowed.test",
    "--user",
    AGENT_UID,
];

fn tcp(addr: &str, port: u16) -> String {
    if addr.contains(':') {
        format!("tcp:[{addr}]:{port}")
    } else {
        format!("tcp:{addr}:{port}")
    }
}

fn specs(list: &[String]) -> Vec<&str> {
    list.iter().map(String::as_str).collect()
}

/// Probes that show egress is closed for the agent: even the allowed address is refused.
fn assert_locked_down(world: &World) {
    let probes = [
        tcp(ALLOWED, 443),
        tcp(BLOCKED, 443),
        format!("dns:allowed.test@{GATEWAY}"),
    ];
    let got = world.probe(&specs(&probes));
    for spec in &probes {
        let verdict = got[spec].as_str();
        assert!(
            verdict == "rejected" || verdict == "denied",
            "{spec} should be stopped after a failure, got {verdict}"
        );
    }
}

#[test]
fn every_verdict_holds_for_the_agent() {
    if !privileged() {
        return;
    }
    let world = World::new(WorldOpts::default());
    let open_before = world.probe(&[&tcp(BLOCKED, 443), &tcp(METADATA, 80)]);
    assert_verdicts(
        &open_before,
        &[(&tcp(BLOCKED, 443), "open"), (&tcp(METADATA, 80), "open")],
    );

    // The listeners log each connection from their own threads: wait for the two above before
    // taking the offset that separates before-fence from after-fence connections.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !(world
        .listener_log()
        .contains(&format!("tcp {BLOCKED}:443 "))
        && world
            .listener_log()
            .contains(&format!("tcp {METADATA}:80 ")))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "pre-fence connections not logged"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let log_before = world.listener_log().len();
    let output = world.cordon(FENCE);
    assert!(output.status.success());
    let report = stderr(&output);
    assert!(report.contains("self-test passed"), "{report}");
    // What the policy opens, in one line: allowed.test resolved to one IPv4 and one IPv6 address.
    assert!(
        report.contains("opened: allowed.test:80,443 (2)\n"),
        "{report}"
    );

    let dns_elsewhere = format!("dns:allowed.test@{OTHER_DNS}");
    let dns_resolver = format!("dns:allowed.test@{GATEWAY}");
    let udp_allowed_addr = format!("udp:{ALLOWED}:443");
    let probes = [
        tcp(ALLOWED, 443),
        tcp(ALLOWED, 80),
        tcp(ALLOWED6, 443),
        tcp(BLOCKED, 443),
        tcp(BLOCKED6, 443),
        tcp(LAN_PEER, 22),
        tcp(GATEWAY, 80),
        tcp(GATEWAY6, 80),
        tcp(METADATA, 80),
        dns_resolver.clone(),
        dns_elsewhere.clone(),
        udp_allowed_addr.clone(),
    ];
    let got = world.probe(&specs(&probes));
    assert_verdicts(
        &got,
        &[
            (&tcp(ALLOWED, 443), "open"),
            (&tcp(ALLOWED, 80), "open"),
            (&tcp(ALLOWED6, 443), "open"),
            // A blocked TCP connect is reset at once (see plan.rs).
            (&tcp(BLOCKED, 443), "refused"),
            (&tcp(BLOCKED6, 443), "refused"),
            (&tcp(LAN_PEER, 22), "refused"),
            (&tcp(GATEWAY, 80), "refused"),
            (&tcp(GATEWAY6, 80), "refused"),
            (&tcp(METADATA, 80), "refused"),
            (&dns_resolver, "answered"),
            (&dns_elsewhere, "rejected"),
            // Names open TCP 80 and 443 only.
            (&udp_allowed_addr, "rejected"),
        ],
    );
    // Most programs connect on blocking sockets: those fail at once too, not on the SYN's
    // retransmit a second later.
    let blocking = [
        format!("tcpb:{BLOCKED}:443"),
        format!("tcpb:[{BLOCKED6}]:443"),
        format!("tcpb:{METADATA}:80"),
    ];
    for (spec, (verdict, _, millis)) in world.probe_timed(&specs(&blocking)) {
        assert_eq!(verdict, "refused", "{spec}");
        assert!(
            millis < 100.0,
            "{spec}: a blocked blocking connect took {millis} ms"
        );
    }
    // What the listeners saw since the fence: the allowed connections, none of the blocked.
    let log = world.listener_log()[log_before..].to_string();
    assert!(
        log.contains(&format!("tcp {ALLOWED}:443 {SANDBOX}:")),
        "{log}"
    );
    for blocked in [BLOCKED, LAN_PEER, GATEWAY, METADATA, BLOCKED6] {
        assert!(
            !log.contains(&format!(" {blocked}:")),
            "{blocked} was reached:\n{log}"
        );
    }
}

#[test]
fn applying_twice_gives_the_same_ruleset_and_plan_changes_nothing() {
    if !privileged() {
        return;
    }
    let world = World::new(WorldOpts::default());
    let pristine = world.filter_rules("iptables-save");
    let plan = world.cordon(&[
        "plan",
        "--dns",
        "static",
        "--no-default-profile",
        "--allow",
        "allowed.test",
        "--allow",
        "10.9.0.0/16:5432",
    ]);
    assert!(plan.status.success());
    let text = String::from_utf8_lossy(&plan.stdout);
    assert!(
        text.contains(&format!("add cordon4-ports-new {ALLOWED},6:443")),
        "{text}"
    );
    assert!(
        text.contains("add cordon4-ports-new 10.9.0.0/16,6:5432"),
        "{text}"
    );
    assert!(
        text.contains(&format!("add cordon6-ports-new {ALLOWED6},6:443")),
        "{text}"
    );
    assert!(text.contains("-A CORDON_OUTPUT -j CORDON_REJECT"), "{text}");
    assert_eq!(
        world.filter_rules("iptables-save"),
        pristine,
        "plan changed the firewall"
    );

    let sets = || {
        // Element order and the random hash seed differ between loads of the same set.
        let mut lines: Vec<String> = world
            .sandbox(&["ipset", "save"])
            .lines()
            .map(|l| l.split(" initval ").next().unwrap().to_string())
            .collect();
        lines.sort();
        lines.join("\n")
    };
    assert!(world.cordon(FENCE).status.success());
    let first = (
        world.filter_rules("iptables-save"),
        world.filter_rules("ip6tables-save"),
        sets(),
    );
    assert!(world.cordon(FENCE).status.success());
    let second = (
        world.filter_rules("iptables-save"),
        world.filter_rules("ip6tables-save"),
        sets(),
    );
    assert_eq!(first, second);
    assert_eq!(
        first.0.matches("-j CORDON_OUTPUT").count(),
        1,
        "{}",
        first.0
    );
    assert!(
        !first.2.contains("-new"),
        "staging sets left behind:\n{}",
        first.2
    );
}

#[test]
fn init_firewall_name_applies_the_reference_profile() {
    if !privileged() {
        return;
    }
    let names = [
        "registry.npmjs.org",
        "api.anthropic.com",
        "sentry.io",
        "statsig.anthropic.com",
        "statsig.com",
        "marketplace.visualstudio.com",
        "vscode.blob.core.windows.net",
        "update.code.visualstudio.com",
        "github.com",
        "api.github.com",
        "codeload.github.com",
        "objects.githubusercontent.com",
        "raw.githubusercontent.com",
        "claude.ai",
        "platform.claude.com",
    ];
    let records: Vec<String> = names.iter().map(|n| format!("{n}={ALLOWED}")).collect();
    let world = World::new(WorldOpts {
        records,
        ..WorldOpts::default()
    });
    let link = world.dir.join("init-firewall.sh");
    std::os::unix::fs::symlink(cordon(), &link).unwrap();

    let output = world.cordon_with(&link, &["--dns", "static"], &[]);
    assert!(output.status.success());
    assert!(
        stderr(&output).contains("resolved 15/15 names"),
        "{}",
        stderr(&output)
    );
    let github_ssh = tcp(ALLOWED, 22);
    let got = world.probe(&[
        &tcp(ALLOWED, 443),
        &tcp(BLOCKED, 443),
        &github_ssh,
        &format!("udp:{OTHER_DNS}:53"),
    ]);
    assert_verdicts(
        &got,
        &[
            (&tcp(ALLOWED, 443), "open"),
            (&tcp(BLOCKED, 443), "refused"),
            // github.com:22 is allowed, so SSH reaches github.com's address (refused: no listener)…
            (&github_ssh, "refused"),
            // …but DNS and SSH are not open to every address, unlike the reference script.
            (&format!("udp:{OTHER_DNS}:53"), "rejected"),
        ],
    );
}

#[test]
fn docker_embedded_dns_still_resolves_through_the_root_forwarder() {
    if !privileged() {
        return;
    }
    let world = World::new(WorldOpts {
        docker_dns: true,
        ..WorldOpts::default()
    });
    let nat_before = world.sandbox(&["iptables-save", "-t", "nat"]);
    let output = world.cordon(FENCE);
    assert!(output.status.success());
    let embedded = "dns:allowed.test@127.0.0.11";
    let upstream_direct = format!("dns:allowed.test@{GATEWAY}");
    let got = world.probe(&[embedded, &upstream_direct, &tcp(ALLOWED, 443)]);
    assert_verdicts(
        &got,
        &[
            (embedded, "answered"),
            (&upstream_direct, "rejected"),
            (&tcp(ALLOWED, 443), "open"),
        ],
    );
    let strip = |t: &str| {
        t.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split(" [").next().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        strip(&world.sandbox(&["iptables-save", "-t", "nat"])),
        strip(&nat_before),
        "nat table touched"
    );
}

#[test]
fn reapplying_never_opens_a_window() {
    if !privileged() {
        return;
    }
    let world = World::new(WorldOpts::default());
    assert!(world.cordon(FENCE).status.success());
    let blocked = tcp(BLOCKED, 443);
    let allowed = tcp(ALLOWED, 443);
    let metadata = tcp(METADATA, 80);
    let kit = testkit();
    let prober = Command::new("ip")
        .args(["netns", "exec", &world.sandbox_ns])
        .arg(&kit)
        .args([
            "probe",
            "--uid",
            AGENT_UID,
            "--gid",
            AGENT_UID,
            "--timeout-ms",
            "500",
        ])
        // Every 4 ms: cordon's self-test is answered with ICMP errors, and the kernel sends at
        // most 1000 a second (net.ipv4.icmp_msgs_per_sec); faster probing could starve it.
        .args([
            "--repeat-for-ms",
            "4000",
            "--interval-ms",
            "4",
            &blocked,
            &allowed,
            &metadata,
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Alternate between two allowlists so the sets really change while probes run.
    let mut applied = 0;
    let started = std::time::Instant::now();
    while started.elapsed() < std::time::Duration::from_millis(3000) {
        let extra = if applied % 2 == 0 {
            "10.9.0.0/16"
        } else {
            "192.0.2.0/24:443"
        };
        let mut args = FENCE.to_vec();
        args.extend(["--allow", extra, "-q"]);
        let output = world.cordon(&args);
        assert!(output.status.success());
        // -q: warnings and errors only, not what was opened.
        assert!(!stderr(&output).contains("opened:"), "{}", stderr(&output));
        applied += 1;
    }
    let summary = String::from_utf8(prober.wait_with_output().unwrap().stdout).unwrap();
    eprintln!("{applied} re-applies while probing:\n{summary}");
    assert!(applied >= 5, "only {applied} re-applies");
    let count = |spec: &str, verdict: &str| -> u64 {
        let line = summary.lines().find(|l| l.starts_with(spec)).unwrap();
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{verdict}=")))
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(
        count(&blocked, "open"),
        0,
        "the blocked address was reached"
    );
    assert_eq!(
        count(&metadata, "open"),
        0,
        "the metadata address was reached"
    );
    assert!(count(&blocked, "refused") > 100);
    for verdict in ["rejected", "timeout", "denied", "refused"] {
        assert_eq!(
            count(&allowed, verdict),
            0,
            "the allowed address was cut off ({verdict})"
        );
    }
}

#[test]
fn an_unreachable_resolver_fails_closed() {
    if !privileged() {
        return;
    }
    // Nothing listening: queries are refused at once.
    let world = World::new(WorldOpts {
        dns: false,
        ..WorldOpts::default()
    });
    let output = world.cordon(FENCE);
    assert_eq!(output.status.code(), Some(75));
    let message = stderr(&output);
    assert!(
        message.contains("no usable answer from the nameservers"),
        "{message}"
    );
    assert!(
        message.contains("egress is now denied except loopback"),
        "{message}"
    );
    assert_locked_down(&world);

    // A resolver that never answers: bounded by --resolve-timeout.
    let world = World::new(WorldOpts {
        dns_args: vec!["--no-answer".into()],
        ..WorldOpts::default()
    });
    let started = std::time::Instant::now();
    let mut args = FENCE.to_vec();
    args.extend(["--resolve-timeout", "1"]);
    let output = world.cordon(&args);
    assert_eq!(output.status.code(), Some(75));
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
    assert_locked_down(&world);
}

#[test]
fn strict_fails_closed_on_a_name_that_does_not_resolve() {
    if !privileged() {
        return;
    }
    let world = World::new(WorldOpts::default());
    let mut args = FENCE.to_vec();
    args.extend(["--allow", "missing.test"]);
    let lenient = world.cordon(&args);
    assert!(
        lenient.status.success(),
        "without --strict a missing name is a warning"
    );
    assert!(stderr(&lenient).contains("missing.test does not exist"));

    args.push("--strict");
    let output = world.cordon(&args);
    assert_eq!(output.status.code(), Some(75));
    assert!(stderr(&output).contains("--strict: missing.test did not resolve"));
    assert_locked_down(&world);
    // The start failed after the resolvers entered their set (see the test of untracked
    // answers): the lockdown empties it.
    assert!(
        !resolver_datagram_reaches_the_agent(&world),
        "after a failed start a datagram claiming to be from the resolver reached the agent"
    );
}

/// A fake restore tool in /usr/sbin: it loads the lockdown but rejects the real ruleset, the
/// way a kernel without some match would.
fn failing_tool(name: &'static str) -> SbinView {
    let script = format!(
        "#!/bin/sh\ninput=$(cat)\ncase \"$input\" in\n  *'cordon lockdown'*) printf '%s\\n' \"$input\" | exec $REAL \"$@\" ;;\n  *) echo \"{name}: line 42 failed: Couldn't load match 'set'\" >&2; exit 1 ;;\nesac\n"
    );
    SbinView {
        scripts: vec![(name, script)],
        ..SbinView::default()
    }
}

/// An agent that plants `ipset` or an iptables tool in a directory on PATH (~/.local/bin, or a
/// relative entry such as node_modules/.bin) never gets it run as root: cordon looks for its
/// tools only in the system directories, and runs them with a fixed PATH. Neither the fence nor
/// `cordon check` as root runs a planted tool.
#[test]
fn tools_planted_on_path_are_never_run() {
    if !privileged() {
        return;
    }
    let world = World::new(WorldOpts::default());
    let marker = world.dir.join("planted-tool-ran");
    let home = world.dir.join("home");
    let relative = home.join("node_modules/.bin");
    let local = home.join(".local/bin");
    for dir in [&relative, &local] {
        std::fs::create_dir_all(dir).unwrap();
        for name in [
            "ipset",
            "iptables",
            "iptables-nft-restore",
            "ip6tables-nft-restore",
            "iptables-nft-save",
            "ip6tables-nft-save",
            "xtables-nft-multi",
        ] {
            let path = dir.join(name);
            std::fs::write(&path, format!("#!/bin/sh\ntouch {}\n", marker.display())).unwrap();
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .unwrap();
            std::os::unix::fs::chown(&path, Some(1000), Some(1000)).unwrap();
        }
    }
    let path = format!(
        "{}:node_modules/.bin:/usr/sbin:/usr/bin:/sbin:/bin",
        local.display()
    );
    let run = |args: &str| {
        world.sandbox_sh(&format!(
            "cd {} && PATH={path} exec {} {args}",
            home.display(),
            cordon().display()
        ))
    };
    let fenced = run(&FENCE.join(" "));
    assert!(fenced.status.success(), "{}", stderr(&fenced));
    // The host's own files decide the rest of the report; the fence findings must all hold.
    let check = run("check");
    let report = String::from_utf8_lossy(&check.stdout);
    let fence: Vec<&str> = report
        .lines()
        .filter(|l| l.contains(" fence") || l.contains("set cordon"))
        .collect();
    assert!(
        fence.iter().any(|l| l.contains("IPv4 fence loaded"))
            && fence.iter().all(|l| l.starts_with("ok ")),
        "fence findings:\n{report}"
    );
    assert!(!marker.exists(), "a planted tool ran as root");
    let got = world.probe(&[&tcp(ALLOWED, 443), &tcp(BLOCKED, 443)]);
    assert_verdicts(
        &got,
        &[
            (&tcp(ALLOWED, 443), "open"),
            (&tcp(BLOCKED, 443), "refused"),
        ],
    );
}

/// `cordon check` as root compares the live fence with the record the fence left: a surgical
/// change (one address added to a set, one ACCEPT inside cordon's chain, the INPUT policy turned
/// to ACCEPT, an UNTRACKED accept behind a raw-table NOTRACK) is named and fails the check.
#[test]
fn check_names_a_surgical_tamper() {
    if !privileged() {
        return;
    }
    let world = World::new(WorldOpts::default());
    let fence_findings = |tamper: &str| {
        let line = format!(
            "{cordon} {fence} >/dev/null 2>&1 || exit 9\n{tamper}\nexec {cordon} check",
            cordon = cordon().display(),
            fence = FENCE.join(" ")
        );
        let output = world.sandbox_sh(&line);
        assert_ne!(output.status.code(), Some(9), "the fence was not applied");
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|l| l.contains(" fence: the fence"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let untouched = fence_findings("true");
    assert!(
        untouched.starts_with("ok    fence: the fence is as loaded"),
        "{untouched}"
    );
    for (tamper, named) in [
        (
            format!("ipset add cordon4-hosts {BLOCKED}"),
            format!("set cordon4-hosts gained {BLOCKED}"),
        ),
        (
            format!("iptables -I CORDON_OUTPUT 3 -d {BLOCKED} -j ACCEPT"),
            format!("IPv4 rule added: `-A CORDON_OUTPUT -d {BLOCKED}/32 -j ACCEPT`"),
        ),
        (
            format!("ipset add cordon4-resolvers {GATEWAY},udp:53"),
            format!("set cordon4-resolvers gained {GATEWAY},udp:53"),
        ),
        (
            "iptables -P INPUT ACCEPT".to_string(),
            "IPv4 rule added: `:INPUT ACCEPT`".to_string(),
        ),
        (
            format!(
                "iptables -t raw -A OUTPUT -d {BLOCKED} -j NOTRACK && iptables -I CORDON_OUTPUT \
                 -m conntrack --ctstate UNTRACKED -j ACCEPT"
            ),
            "IPv4 rule added: `-A CORDON_OUTPUT -m conntrack --ctstate UNTRACKED -j ACCEPT`"
                .to_string(),
        ),
    ] {
        let found = fence_findings(&tamper);
        assert!(
            found.starts_with("FAIL  fence: the fence changed since it was loaded")
                && found.contains(&named),
            "{tamper}: expected `{named}` in\n{found}"
        );
    }
}

/// Flows opened before the fence (the drop-in runs after the container started) do not survive
/// it: a TCP and a UDP stream to the blocked address stop at their next packet. An allowed
/// stream survives a rerun, with the same allowlist and with a changed one.
#[test]
fn flows_from_before_the_fence_stop_and_allowed_ones_survive_a_rerun() {
    if !privileged() {
        return;
    }
    let world = World::new(WorldOpts::default());
    let _sink = start_sink(&world);
    // In a container connections are tracked before cordon runs (Docker's embedded DNS puts
    // nat rules in its namespace). Here a mangle rule does that: without any rule that needs
    // conntrack, a flow from before the fence would look new to it.
    world.sandbox(&[
        "iptables",
        "-t",
        "mangle",
        "-A",
        "OUTPUT",
        "-m",
        "conntrack",
        "--ctstate",
        "NEW",
        "-j",
        "ACCEPT",
    ]);
    let pause = || std::thread::sleep(std::time::Duration::from_millis(400));
    let _blocked = stream(&world, BLOCKED);
    pause();
    assert!(
        sunk(&world, "t", BLOCKED) > 2 && sunk(&world, "u", BLOCKED) > 2,
        "both streams reach the world before the fence"
    );
    let allow = format!("allowed.test:443,{STREAM_PORT}");
    let fence = |extra: &[&str]| {
        let mut args = vec![
            "firewall",
            "--dns",
            "static",
            "--no-default-profile",
            "--allow",
            &allow,
            "--user",
            AGENT_UID,
        ];
        args.extend_from_slice(extra);
        assert!(world.cordon(&args).status.success());
    };
    fence(&[]);
    let fenced_at = (sunk(&world, "t", BLOCKED), sunk(&world, "u", BLOCKED));
    pause();
    let after = (sunk(&world, "t", BLOCKED), sunk(&world, "u", BLOCKED));
    assert!(
        after.0 <= fenced_at.0 + 1 && after.1 <= fenced_at.1 + 1,
        "the streams to the blocked address went on: {fenced_at:?} then {after:?}"
    );

    let _allowed = stream(&world, ALLOWED);
    pause();
    fence(&[]);
    fence(&["--allow", "10.77.9.9"]);
    let rerun_at = sunk(&world, "t", ALLOWED);
    pause();
    assert!(
        sunk(&world, "t", ALLOWED) >= rerun_at + 4,
        "the allowed TCP stream was cut by a rerun"
    );
}

/// Whether a UDP datagram from the resolver's address and port 53 (sent from the world with a
/// raw socket, as a neighbour spoofing the resolver would) reaches a listener of the agent's uid
/// in the sandbox.
fn resolver_datagram_reaches_the_agent(world: &World) -> bool {
    use std::io::BufRead;
    const PORT: u16 = 7053;
    let listener = format!(
        "import socket\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         s.bind(('0.0.0.0', {PORT}))\n\
         s.settimeout(1.5)\n\
         print('ready', flush=True)\n\
         try:\n\ts.recv(100)\n\tprint('received')\n\
         except socket.timeout:\n\tprint('nothing')\n"
    );
    let mut listening = Command::new("ip")
        .args(["netns", "exec", &world.sandbox_ns, "setpriv"])
        .args(["--reuid", AGENT_UID, "--regid", AGENT_UID, "--clear-groups"])
        .args(["/usr/bin/python3", "-c", &listener])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut said = std::io::BufReader::new(listening.stdout.take().unwrap()).lines();
    assert_eq!(said.next().unwrap().unwrap(), "ready");
    // A raw IPPROTO_UDP socket: the kernel adds the IP header (source: the bound address), the
    // script writes the UDP header, source port 53, checksum 0 (none, allowed over IPv4).
    let spoof = format!(
        "import socket, struct\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)\n\
         s.bind(('{GATEWAY}', 0))\n\
         payload = b'claims to be an answer'\n\
         s.sendto(struct.pack('!HHHH', 53, {PORT}, 8 + len(payload), 0) + payload, \
         ('{SANDBOX}', 0))\n"
    );
    run(
        "ip",
        &[
            "netns",
            "exec",
            &world.world_ns,
            "/usr/bin/python3",
            "-c",
            &spoof,
        ],
    );
    let heard = said.next().unwrap().unwrap();
    listening.wait().unwrap();
    match heard.as_str() {
        "received" => true,
        "nothing" => false,
        other => panic!("the listener printed {other:?}"),
    }
}

/// How many packets CORDON_INPUT's rule for answers from the resolvers' set has accepted.
fn untracked_answers_accepted(world: &World) -> u64 {
    let listing = world.sandbox(&["iptables", "-w", "-L", "CORDON_INPUT", "-v", "-n", "-x"]);
    let rule = listing
        .lines()
        .find(|line| line.contains("match-set cordon4-resolvers src,src"))
        .unwrap_or_else(|| panic!("no resolver-set rule in CORDON_INPUT:\n{listing}"));
    rule.split_whitespace().next().unwrap().parse().unwrap()
}

/// The fence loads while names resolve, in a namespace where nothing made conntrack active yet:
/// an answer that arrives after the rules loaded belongs to a query conntrack never saw. Those
/// answers still get in (only while the names resolve), and afterwards a datagram that merely
/// claims to come from the resolver's port 53 does not reach the agent's listeners.
#[test]
fn answers_to_untracked_queries_get_in_and_spoofed_resolver_packets_do_not() {
    if !privileged() {
        return;
    }
    // 250 ms: after the rules have loaded, before the resolver's first retry (333 ms), which
    // conntrack would see.
    let world = World::new(WorldOpts {
        dns_args: vec!["--delay-ms".into(), "250".into()],
        ..WorldOpts::default()
    });
    world.sandbox(&[
        "/usr/bin/python3",
        "-c",
        &format!(
            "import socket\nsocket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', \
             ('{GATEWAY}', 9))"
        ),
    ]);
    assert_eq!(
        world.sandbox(&["cat", "/proc/net/nf_conntrack"]).trim(),
        "",
        "conntrack must not be active in the sandbox before the fence"
    );
    assert!(
        resolver_datagram_reaches_the_agent(&world),
        "without a fence the spoofed datagram must arrive, or this test sees nothing"
    );

    let output = world.cordon(FENCE);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        !resolver_datagram_reaches_the_agent(&world),
        "a datagram claiming to be from the resolver's port 53 reached the agent's listener"
    );
    assert!(
        untracked_answers_accepted(&world) > 0,
        "the answers should have arrived after the rules loaded, untracked"
    );
    assert_verdicts(
        &world.probe(&[&tcp(ALLOWED, 443), &tcp(BLOCKED, 443)]),
        &[
            (&tcp(ALLOWED, 443), "open"),
            (&tcp(BLOCKED, 443), "refused"),
        ],
    );
}

/// MLDv2 reports (ICMPv6 143) carry group addresses the agent chooses to the link: none leaves
/// the fence. Without it, joining a group sends one (the test can see them).
#[test]
fn no_multicast_listener_report_leaves() {
    if !privileged() {
        return;
    }
    let world = World::new(WorldOpts::default());
    let ip6tables = |args: &[&str]| {
        let mut full = vec![
            "netns",
            "exec",
            world.world_ns.as_str(),
            "ip6tables",
            "-t",
            "raw",
        ];
        full.extend_from_slice(args);
        support::run("ip", &full)
    };
    ip6tables(&[
        "-A",
        "PREROUTING",
        "-p",
        "ipv6-icmp",
        "--icmpv6-type",
        "143",
    ]);
    let reports = || {
        let listing = ip6tables(&["-L", "PREROUTING", "-v", "-x", "-n"]);
        listing
            .lines()
            .find(|l| l.contains("ipv6-icmptype 143"))
            .and_then(|l| l.split_whitespace().next()?.parse::<u64>().ok())
            .expect("the counting rule")
    };
    let join = |group: &str| {
        let script = format!(
            "import socket, struct, time\n\
             s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\n\
             index = socket.if_nameindex()[-1][0]\n\
             s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, \
             socket.inet_pton(socket.AF_INET6, '{group}') + struct.pack('@I', index))\n\
             time.sleep(1.5)\n"
        );
        support::run(
            "ip",
            &[
                "netns",
                "exec",
                &world.sandbox_ns,
                "setpriv",
                "--reuid",
                AGENT_UID,
                "--regid",
                AGENT_UID,
                "--clear-groups",
                "/usr/bin/python3",
                "-c",
                &script,
            ],
        );
    };
    join("ff15::c0de:1");
    assert!(reports() > 0, "a join sends a report without the fence");
    assert!(world.cordon(FENCE).status.success());
    ip6tables(&["-Z", "PREROUTING"]);
    join("ff15::c0de:2");
    assert_eq!(reports(), 0, "a report left the fence");
}

#[test]
fn a_restore_failing_part_way_fails_closed() {
    if !privileged() {
        return;
    }
    let world = World::new(WorldOpts::default());
    // IPv4 loads, IPv6 fails: both families must end locked down.
    let output = world.cordon_in(&failing_tool("ip6tables-nft-restore"), FENCE);
    assert_eq!(output.status.code(), Some(76));
    let message = stderr(&output);
    assert!(
        message.contains("ip6tables-nft-restore --noflush failed"),
        "{message}"
    );
    assert!(
        message.contains("modprobe"),
        "the hint names the kernel modules: {message}"
    );
    assert!(
        message.contains("egress is now denied except loopback"),
        "{message}"
    );
    assert_locked_down(&world);
    let v6 = world.probe(&[&tcp(ALLOWED6, 443)]);
    assert_eq!(v6[&tcp(ALLOWED6, 443)], "denied", "IPv6 locked down too");
}

#[test]
fn a_wrong_verdict_fails_closed() {
    if !privileged() {
        return;
    }
    let world = World::new(WorldOpts::default());
    // A rule cordon does not own drops the allowed address before the filter table sees it:
    // the self-test must notice that allowed traffic does not pass.
    world.sandbox(&[
        "iptables", "-t", "raw", "-A", "OUTPUT", "-d", ALLOWED, "-j", "DROP",
    ]);
    let output = world.cordon(FENCE);
    assert_eq!(output.status.code(), Some(78));
    let message = stderr(&output);
    assert!(
        message.contains("fence self-test failed: allowed tcp/10.77.1.10"),
        "{message}"
    );
    world.sandbox(&[
        "iptables", "-t", "raw", "-D", "OUTPUT", "-d", ALLOWED, "-j", "DROP",
    ]);
    assert_locked_down(&world);
}

#[test]
fn without_net_admin_nothing_changes_and_the_fix_is_named() {
    if !privileged() {
        return;
    }
    let world = World::new(WorldOpts::default());
    let marker = world.dir.join("agent-ran");
    let output = Command::new("ip")
        .args([
            "netns",
            "exec",
            &world.sandbox_ns,
            "capsh",
            "--drop=cap_net_admin",
            "--",
        ])
        .arg("-c")
        .arg(format!(
            "exec {} --no-default-profile --allow allowed.test --user {AGENT_UID} -- /bin/touch {}",
            cordon().display(),
            marker.display()
        ))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(77));
    let message = stderr(&output);
    assert!(
        message.contains("NET_ADMIN (loading the firewall)")
            && message.contains("with --cap-add NET_ADMIN "),
        "{message}"
    );
    assert_eq!(message.lines().count(), 1, "one line: {message}");
    assert!(!marker.exists(), "the agent ran without a fence");
}

#[test]
fn the_host_namespace_is_refused() {
    if !privileged() {
        return;
    }
    let world = World::new(WorldOpts::default());
    world.sandbox(&["ip", "link", "add", "br-test", "type", "bridge"]);
    let output = world.cordon(FENCE);
    assert_eq!(output.status.code(), Some(77));
    assert!(stderr(&output).contains("host's network namespace (found br-test)"));
    assert!(
        !world.filter_rules("iptables-save").contains("CORDON"),
        "nothing may change"
    );

    let mut forced = FENCE.to_vec();
    forced.push("--allow-host-network");
    assert!(world.cordon(&forced).status.success());
}

#[test]
fn bad_input_is_one_line_with_file_and_line() {
    if !privileged() {
        return;
    }
    let world = World::new(WorldOpts::default());
    let list = world.dir.join("allowlist");
    std::fs::write(&list, "# tools\nallowed.test\nexample.test:99999\n").unwrap();
    let list_arg = list.to_str().unwrap();
    let output = world.cordon(&[
        "firewall",
        "--no-default-profile",
        "--allowlist",
        list_arg,
        "--user",
        AGENT_UID,
    ]);
    assert_eq!(output.status.code(), Some(65));
    let message = stderr(&output);
    assert!(
        message.starts_with(&format!(
            "cordon: error: {list_arg}:3: `99999` is not a port"
        )),
        "{message}"
    );

    // Not UTF-8 on line 2: bad input with the place, not an internal error.
    std::fs::write(&list, b"allowed.test\nexample.test\xff\n").unwrap();
    let output = world.cordon(&[
        "firewall",
        "--no-default-profile",
        "--allowlist",
        list_arg,
        "--user",
        AGENT_UID,
    ]);
    assert_eq!(output.status.code(), Some(65));
    assert!(
        stderr(&output).starts_with(&format!("cordon: error: {list_arg}:2: not UTF-8")),
        "{}",
        stderr(&output)
    );

    // Writable by the agent's uid: refused, with the read-only mount as the fix.
    std::fs::write(&list, "allowed.test\n").unwrap();
    std::os::unix::fs::chown(&list, Some(1000), Some(1000)).unwrap();
    let output = world.cordon(&[
        "firewall",
        "--no-default-profile",
        "--allowlist",
        list_arg,
        "--user",
        AGENT_UID,
    ]);
    assert_eq!(output.status.code(), Some(66));
    assert!(stderr(&output).contains(":ro"), "{}", stderr(&output));

    // A read-only bind mount of the same file is fine.
    let ro = world.dir.join("ro-allowlist");
    std::fs::write(&ro, "").unwrap();
    run_ok(&[
        "mount",
        "--bind",
        "-o",
        "ro",
        list_arg,
        ro.to_str().unwrap(),
    ]);
    let mounted = world.cordon(&[
        "firewall",
        "--no-default-profile",
        "--allowlist",
        ro.to_str().unwrap(),
        "--user",
        AGENT_UID,
    ]);
    run_ok(&["umount", ro.to_str().unwrap()]);
    assert!(mounted.status.success());

    world.set_resolv_conf("nameserver 10.77.0.1\nnameserver dns.example\n");
    let output = world.cordon(FENCE);
    assert_eq!(output.status.code(), Some(65));
    assert!(stderr(&output).contains("/etc/resolv.conf:2: `dns.example` is not an IP address"));
}

fn run_ok(args: &[&str]) {
    support::run(args[0], &args[1..]);
}

#[test]
fn inbound_connections_need_an_inbound_port() {
    if !privileged() {
        return;
    }
    let world = World::new(WorldOpts::default());
    let kit = testkit();
    let mut listener = Command::new("ip")
        .args(["netns", "exec", &world.sandbox_ns])
        .arg(&kit)
        .args([
            "listen",
            "--tcp",
            &format!("{SANDBOX}:3000"),
            "--tcp",
            &format!("{SANDBOX}:3001"),
        ])
        .args(["--ready-file", &world.path("sandbox-listen.ready")])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(std::path::Path::new(&world.path("sandbox-listen.ready")));
    let mut args = FENCE.to_vec();
    args.extend(["--inbound", "3000"]);
    assert!(world.cordon(&args).status.success());
    let got = support::world::parse_probe_lines(&support::run(
        "ip",
        &[
            "netns",
            "exec",
            &world.world_ns,
            kit.to_str().unwrap(),
            "probe",
            &tcp(SANDBOX, 3000),
            &tcp(SANDBOX, 3001),
        ],
    ));
    listener.kill().unwrap();
    let _ = listener.wait();
    assert_verdicts(
        &got,
        &[
            (&tcp(SANDBOX, 3000), "open"),
            (&tcp(SANDBOX, 3001), "rejected"),
        ],
    );
}

#[test]
fn the_legacy_backend_is_detected_from_the_image_and_works() {
    if !privileged() {
        return;
    }
    let world = World::new(WorldOpts::default());
    // An image whose `iptables` is the legacy variant (as Debian's alternatives would link it).
    let legacy = SbinView {
        links: vec![("iptables", "xtables-legacy-multi")],
        ..SbinView::default()
    };
    let output = world.cordon_in(&legacy, FENCE);
    assert!(output.status.success());
    assert!(
        stderr(&output).contains("(legacy iptables)"),
        "{}",
        stderr(&output)
    );
    assert!(world
        .sandbox(&["iptables-legacy-save", "-t", "filter"])
        .contains("-A OUTPUT -j CORDON_OUTPUT"));
    assert!(!world
        .sandbox(&["iptables-nft-save", "-t", "filter"])
        .contains("CORDON"));
    let got = world.probe(&[&tcp(ALLOWED, 443), &tcp(BLOCKED, 443), &tcp(BLOCKED6, 443)]);
    assert_verdicts(
        &got,
        &[
            (&tcp(ALLOWED, 443), "open"),
            (&tcp(BLOCKED, 443), "refused"),
            (&tcp(BLOCKED6, 443), "refused"),
        ],
    );
}

#[test]
fn verify_connect_opens_real_connections_and_fails_closed_without_them() {
    if !privileged() {
        return;
    }
    let world = World::new(WorldOpts {
        records: vec![format!("silent.test={LAN_PEER}")],
        ..WorldOpts::default()
    });
    let mut args = FENCE.to_vec();
    args.push("--verify-connect");
    let output = world.cordon(&args);
    assert!(output.status.success());
    assert!(stderr(&output).contains(&format!(
        "--verify-connect: allowed.test ({ALLOWED}:80) connected"
    )));

    // The LAN peer listens on 22 only: port 80 of silent.test refuses the real connection.
    args.extend(["--allow", "silent.test"]);
    let output = world.cordon(&args);
    assert_eq!(output.status.code(), Some(78));
    assert!(stderr(&output).contains(&format!("--verify-connect: silent.test ({LAN_PEER}:80)")));
    assert_locked_down(&world);
}

#[test]
fn a_missing_firewall_tool_is_named_with_its_package() {
    if !privileged() {
        return;
    }
    let world = World::new(WorldOpts::default());
    let empty = world.dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    // Hide /usr/sbin (and /sbin, its symlink on merged-/usr systems) in a private mount namespace.
    let script = format!(
        "mount --bind {} /usr/sbin && exec {} {}",
        empty.display(),
        cordon().display(),
        FENCE.join(" ")
    );
    let output = Command::new("ip")
        .args([
            "netns",
            "exec",
            &world.sandbox_ns,
            "unshare",
            "--mount",
            "sh",
            "-c",
            &script,
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(69));
    let message = stderr(&output);
    assert!(
        message.contains("not found: install the iptables package"),
        "{message}"
    );
    // No firewall tool at all: the interfaces were set down instead.
    assert_eq!(message.lines().count(), 1, "{message}");
    assert!(
        message.contains("every interface but loopback (vs"),
        "{message}"
    );
    let got = world.probe(&[&tcp(ALLOWED, 443), &tcp(BLOCKED, 443)]);
    for (spec, verdict) in &got {
        assert_ne!(
            verdict, "allowed",
            "{spec} after the interfaces were set down"
        );
    }
}

#[test]
fn cname_chains_are_followed() {
    if !privileged() {
        return;
    }
    let world = World::new(WorldOpts::default());
    let output = world.cordon(&[
        "plan",
        "--dns",
        "static",
        "--no-default-profile",
        "--allow",
        "alias.test",
    ]);
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains(&format!("# alias.test [80,443] {ALLOWED} {ALLOWED6}")),
        "{text}"
    );
}

/// What a name may open, whatever the resolver answers: only records on the question's CNAME
/// chain, never a metadata endpoint or a refused IPv4 address in an IPv6 encoding, and a name
/// with a dot never below the search domains (Kubernetes' `ndots:5`). A single-label name goes
/// through the search list, with a warning.
#[test]
fn names_open_only_what_their_own_answer_says() {
    if !privileged() {
        return;
    }
    let world = World::new(WorldOpts {
        records: vec![
            format!("allowed.test.corp.test={BLOCKED}"),
            format!("intranet.corp.test={ALLOWED}"),
            "meta.test=100.100.100.200".into(),
            "meta.test=64:ff9b::a9fe:a9fe".into(),
            "meta.test=fd00:ec2::254".into(),
            format!("meta.test={ALLOWED}"),
        ],
        dns_args: vec!["--stray".into(), format!("alias.test={BLOCKED}")],
        ..WorldOpts::default()
    });
    world.set_resolv_conf(&format!(
        "nameserver {GATEWAY}\nsearch corp.test\noptions ndots:5\n"
    ));
    let plan = |name: &str| {
        let output = world.cordon(&[
            "plan",
            "--dns",
            "static",
            "--no-default-profile",
            "--allow",
            name,
        ]);
        assert!(output.status.success(), "{}", stderr(&output));
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let sets: String = text
            .lines()
            .filter(|l| l.starts_with("add "))
            .collect::<Vec<_>>()
            .join("\n");
        (sets, stderr(&output))
    };
    let (sets, _) = plan("allowed.test");
    assert!(
        sets.contains(ALLOWED) && !sets.contains(BLOCKED),
        "search list: {sets}"
    );
    let (sets, _) = plan("alias.test");
    assert!(
        sets.contains(ALLOWED) && !sets.contains(BLOCKED),
        "stray record: {sets}"
    );
    let (sets, warnings) = plan("meta.test");
    assert!(sets.contains(ALLOWED), "{sets}");
    for refused in ["100.100.100.200", "64:ff9b::a9fe:a9fe", "fd00:ec2::254"] {
        assert!(!sets.contains(refused), "{refused} opened by name: {sets}");
        assert!(warnings.contains(refused), "{warnings}");
    }
    let (sets, warnings) = plan("intranet");
    assert!(sets.contains(ALLOWED), "{sets}");
    assert!(
        warnings.contains(
            "intranet has no dot: resolved through the search list, as \
             intranet.corp.test."
        ),
        "{warnings}"
    );
}

#[test]
fn an_answer_too_large_for_udp_is_fetched_over_tcp() {
    if !privileged() {
        return;
    }
    // 120 A records (about 1,900 bytes) exceed the 1,232-byte EDNS size cordon advertises: the
    // server truncates the UDP answer, and every address must still arrive, over TCP.
    let addresses: Vec<String> = (1..=120).map(|i| format!("10.77.9.{i}")).collect();
    let world = World::new(WorldOpts {
        records: addresses.iter().map(|a| format!("big.test={a}")).collect(),
        ..WorldOpts::default()
    });
    let output = world.cordon(&[
        "plan",
        "--dns",
        "static",
        "--no-default-profile",
        "--allow",
        "big.test",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = String::from_utf8_lossy(&output.stdout);
    for address in &addresses {
        assert!(
            text.contains(&format!("{address},6:443")),
            "{address} missing:\n{text}"
        );
    }
    let log = std::fs::read_to_string(world.path("dns.log")).unwrap();
    assert!(log.contains(" udp big.test A"), "{log}");
    assert!(log.contains(" tcp big.test A"), "{log}");
}

/// Docker's ordinary networks are IPv4-only (disable_ipv6=1 everywhere, loopback included): a
/// normal, fenced state. The self-test takes "cannot send" over IPv6 as blocked, the IPv6 rules
/// are loaded anyway, and the report says IPv6 is off.
#[test]
fn an_ipv4_only_namespace_is_fenced() {
    if !privileged() {
        return;
    }
    let world = World::new(WorldOpts {
        ipv6_off: true,
        ..WorldOpts::default()
    });
    let output = world.cordon(FENCE);
    let message = stderr(&output);
    assert!(output.status.success(), "{message}");
    assert!(
        message.contains("IPv6 is off in this namespace"),
        "{message}"
    );
    assert!(
        world
            .sandbox(&["ip6tables-save", "-t", "filter"])
            .contains("-A OUTPUT -j CORDON_OUTPUT"),
        "the IPv6 rules are loaded anyway"
    );
    let got = world.probe_timed(&[
        &tcp(ALLOWED, 443),
        &tcp(BLOCKED, 443),
        &tcp(BLOCKED6, 443),
        &format!("udp:[{BLOCKED6}]:443"),
    ]);
    assert_eq!(got[&tcp(ALLOWED, 443)].0, "open");
    assert_eq!(got[&tcp(BLOCKED, 443)].0, "refused");
    for spec in [tcp(BLOCKED6, 443), format!("udp:[{BLOCKED6}]:443")] {
        assert_eq!(got[&spec].1, "EADDRNOTAVAIL", "{spec}: {:?}", got[&spec]);
    }
    // `cordon check` as the agent agrees (its scan of this machine's own root filesystem is
    // not the point here: only its fence lines are).
    let check = Command::new("ip")
        .args(["netns", "exec", &world.sandbox_ns, "setpriv"])
        .args(["--reuid", AGENT_UID, "--regid", AGENT_UID, "--clear-groups"])
        .arg(cordon())
        .arg("check")
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&check.stdout);
    let fence: Vec<&str> = report.lines().filter(|l| l.contains(" fence: ")).collect();
    assert!(
        fence.iter().all(|l| l.starts_with("ok ")),
        "fence findings:\n{report}"
    );
    assert!(
        fence
            .iter()
            .any(|l| l.contains("ipv6 address") && l.contains("cannot send")),
        "{report}"
    );
}

/// Where IPv6 is off, an IPv6 table that cannot be loaded is a warning, not a failure: nothing
/// can be sent over IPv6 there.
#[test]
fn an_ipv6_load_failure_is_only_a_warning_where_ipv6_is_off() {
    if !privileged() {
        return;
    }
    let world = World::new(WorldOpts {
        ipv6_off: true,
        ..WorldOpts::default()
    });
    let output = world.cordon_in(&failing_tool("ip6tables-nft-restore"), FENCE);
    let message = stderr(&output);
    assert!(output.status.success(), "{message}");
    assert!(
        message.contains("warning: /") && message.contains("IPv6 is off in this namespace"),
        "{message}"
    );
    // IPv6 egress is denied anyway, in case it is switched on later.
    assert!(
        message.contains("IPv6 egress is denied meanwhile"),
        "{message}"
    );
    let v6 = world.sandbox(&["ip6tables-save", "-t", "filter"]);
    assert!(
        v6.contains(":OUTPUT DROP") && v6.contains("-A OUTPUT -o lo -j ACCEPT"),
        "{v6}"
    );
    let got = world.probe(&[&tcp(ALLOWED, 443), &tcp(BLOCKED, 443)]);
    assert_verdicts(
        &got,
        &[
            (&tcp(ALLOWED, 443), "open"),
            (&tcp(BLOCKED, 443), "refused"),
        ],
    );
}

/// When the fence fails and the chosen variant cannot load the deny-all either, the other
/// iptables variant loads it, family by family.
#[test]
fn the_lockdown_falls_back_to_the_other_iptables_variant() {
    if !privileged() {
        return;
    }
    let world = World::new(WorldOpts::default());
    let broken = SbinView {
        broken: vec!["iptables-nft-restore"],
        ..SbinView::default()
    };
    let output = world.cordon_in(&broken, FENCE);
    assert_eq!(output.status.code(), Some(76));
    let message = stderr(&output);
    assert!(
        message.contains(
            "[egress is now denied except loopback, through iptables-legacy and iptables-nft]"
        ),
        "{message}"
    );
    let legacy = world.sandbox(&["iptables-legacy-save", "-t", "filter"]);
    assert!(legacy.contains("-A OUTPUT -o lo -j ACCEPT"), "{legacy}");
    assert_locked_down(&world);
    let v6 = world.probe(&[&tcp(ALLOWED6, 443), &tcp(BLOCKED6, 443)]);
    assert_verdicts(
        &v6,
        &[
            (&tcp(ALLOWED6, 443), "denied"),
            (&tcp(BLOCKED6, 443), "denied"),
        ],
    );
}

/// Runs `command` (a shell line) in the sandbox namespace as root, under capsh with `drop`.
fn without_caps(world: &World, drop: &str, command: &str) -> std::process::Output {
    Command::new("ip")
        .args(["netns", "exec", &world.sandbox_ns, "capsh"])
        .arg(format!("--drop={drop}"))
        .args(["--", "-c", command])
        .output()
        .unwrap()
}

/// Every capability the start lacks is named in one line, with the `--cap-add` flags, before
/// anything changes; the agent never runs.
#[test]
fn missing_capabilities_are_named_together_before_anything_changes() {
    if !privileged() {
        return;
    }
    let world = World::new(WorldOpts::default());
    let marker = world.dir.join("agent-ran");
    let output = without_caps(
        &world,
        "cap_net_raw,cap_setpcap,cap_kill",
        &format!(
            "exec {} --no-harden --no-default-profile --allow allowed.test --user {AGENT_UID} \
             -- /bin/touch {}",
            cordon().display(),
            marker.display()
        ),
    );
    let message = stderr(&output);
    assert_eq!(output.status.code(), Some(77), "{message}");
    assert_eq!(message.lines().count(), 1, "one line: {message}");
    assert!(
        message.contains("--cap-add NET_RAW --cap-add SETPCAP --cap-add KILL"),
        "{message}"
    );
    assert!(!marker.exists(), "the agent ran");
    assert!(
        !world.filter_rules("iptables-save").contains("CORDON"),
        "something changed"
    );

    // `cordon firewall` needs only the fence's own: SETUID for probing as the agent.
    let output = without_caps(
        &world,
        "cap_setuid",
        &format!("exec {} {}", cordon().display(), FENCE.join(" ")),
    );
    let message = stderr(&output);
    assert_eq!(output.status.code(), Some(77), "{message}");
    assert!(
        message.contains("SETUID (the self-test's probes"),
        "{message}"
    );
    assert!(!world.filter_rules("iptables-save").contains("CORDON"));
}

/// `cordon check` as root without CAP_SETUID cannot probe as another uid: those probes are
/// reported as not done, never as a verdict.
#[test]
fn a_probe_that_cannot_take_its_uid_is_an_error_not_a_verdict() {
    if !privileged() {
        return;
    }
    let world = World::new(WorldOpts::default());
    assert!(world.cordon(FENCE).status.success());
    let output = without_caps(
        &world,
        "cap_setuid",
        &format!("exec {} check", cordon().display()),
    );
    let report = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{report}");
    let probes: Vec<&str> = report.lines().filter(|l| l.contains(" probe ")).collect();
    assert!(!probes.is_empty(), "{report}");
    for line in probes {
        assert!(line.starts_with("FAIL "), "{line}");
        assert!(
            line.contains("not probed: cannot act as that uid"),
            "{line}"
        );
    }
}

/// `--network none`: nothing but loopback. Refused at once, nothing changed.
#[test]
fn a_namespace_with_only_loopback_is_refused_at_once() {
    if !privileged() {
        return;
    }
    let world = World::new(WorldOpts::default());
    let bare = format!("{}-lo", world.sandbox_ns);
    support::run("ip", &["netns", "add", &bare]);
    support::run("ip", &["-n", &bare, "link", "set", "lo", "up"]);
    let output = Command::new("ip")
        .args(["netns", "exec", &bare])
        .arg(cordon())
        .args(FENCE)
        .output()
        .unwrap();
    let rules = support::run("ip", &["netns", "exec", &bare, "iptables-save"]);
    support::run("ip", &["netns", "del", &bare]);
    let message = stderr(&output);
    assert_eq!(output.status.code(), Some(77), "{message}");
    assert_eq!(message.lines().count(), 1, "{message}");
    assert!(message.contains("--network none"), "{message}");
    assert!(!rules.contains("CORDON"), "something changed:\n{rules}");
}

/// The legacy backend locks /run/xtables.lock: with a read-only /run (`--read-only` without
/// `--tmpfs /run`) cordon refuses before changing anything and names the fix.
#[test]
fn the_legacy_backend_on_a_read_only_run_is_refused_before_anything_changes() {
    if !privileged() {
        return;
    }
    let world = World::new(WorldOpts::default());
    let output = world.sandbox_sh(&format!(
        "mount -t tmpfs -o ro tmpfs /run && exec {} {} --iptables-backend legacy",
        cordon().display(),
        FENCE.join(" ")
    ));
    let message = stderr(&output);
    assert_eq!(output.status.code(), Some(69), "{message}");
    assert_eq!(message.lines().count(), 1, "{message}");
    assert!(message.contains("--tmpfs /run"), "{message}");
    assert!(!world
        .sandbox(&["iptables-legacy-save", "-t", "filter"])
        .contains("CORDON"));
}

/// Signals 32-34 sent to cordon while it builds the fence (not as PID 1) never end it, and 32
/// reaches the agent as soon as it runs: its default action ends the agent, so cordon exits
/// with 128+32 (had cordon itself died, it would have no exit code; had 32 been lost, the
/// agent would sleep on). musl's posix_spawn would have unblocked 32 in cordon's main thread;
/// 33 and 34 may land in a resolver thread, where musl keeps them unblocked, and be dropped
/// (see supervise.rs).
#[test]
fn reserved_signals_during_start_up_reach_the_agent() {
    if !privileged() {
        return;
    }
    let world = World::new(WorldOpts {
        dns_args: vec!["--delay-ms".into(), "1500".into()],
        ..WorldOpts::default()
    });
    let started = std::time::Instant::now();
    let mut command = world.sandbox_command(cordon());
    command
        .args([
            "--no-harden",
            "--no-default-profile",
            "--allow",
            "allowed.test",
        ])
        .args(["--user", AGENT_UID, "--", "/bin/sleep", "10"])
        .stderr(Stdio::piped());
    // This test process ignores signal 32 (its C library's doing), and cordon gives the agent the
    // dispositions it started with: start cordon with 32 at its default action.
    // SAFETY: one system call between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, || {
            let default = [0usize; 4]; // handler SIG_DFL, no flags, no restorer, empty mask
            libc::syscall(libc::SYS_rt_sigaction, 32, default.as_ptr(), 0usize, 8usize);
            Ok(())
        })
    };
    let cordon_run = command.spawn().unwrap();
    let pid = cordon_run.id() as i32;
    // Well inside the resolution phase: the rules are loaded (tools spawned, resolver threads
    // running), the answers not yet in.
    std::thread::sleep(std::time::Duration::from_millis(700));
    for signal in [32, 33, 34] {
        // SAFETY: signalling the cordon process this test started.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "cordon is gone");
    }
    let output = cordon_run.wait_with_output().unwrap();
    let message = stderr(&output);
    assert!(message.contains("starting /bin/sleep"), "{message}");
    assert_eq!(
        output.status.code(),
        Some(128 + 32),
        "{:?}: {message}",
        output.status
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(8),
        "the agent slept on: signal 32 was lost"
    );
}

/// Without a fence, a network that itself rejects everything (ICMP admin-prohibited, what the
/// fence answers too) must not make `cordon check` as the agent certify a fence: the datagrams
/// left the namespace, so it says it cannot verify, and how to.
#[test]
fn the_unprivileged_check_does_not_take_the_networks_rejection_for_the_fence() {
    if !privileged() {
        return;
    }
    let world = World::new(WorldOpts::default());
    let in_world = |args: &[&str]| {
        let mut full = vec!["netns", "exec", world.world_ns.as_str()];
        full.extend_from_slice(args);
        support::run("ip", &full)
    };
    in_world(&[
        "sysctl",
        "-q",
        "-w",
        "net.ipv4.ip_forward=1",
        "net.ipv4.icmp_ratelimit=0",
    ]);
    for chain in ["INPUT", "FORWARD"] {
        in_world(&[
            "iptables",
            "-I",
            chain,
            "-s",
            SANDBOX,
            "-j",
            "REJECT",
            "--reject-with",
            "icmp-admin-prohibited",
        ]);
    }
    world.sandbox(&["ip", "route", "replace", "default", "via", GATEWAY]);
    let check = Command::new("ip")
        .args(["netns", "exec", &world.sandbox_ns, "setpriv"])
        .args(["--reuid", AGENT_UID, "--regid", AGENT_UID, "--clear-groups"])
        .arg(cordon())
        .arg("check")
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&check.stdout);
    let udp: Vec<&str> = report
        .lines()
        .filter(|l| l.contains("fence: probe") && l.contains(" udp/"))
        .collect();
    assert!(!udp.is_empty(), "{report}");
    // Probes the network answered say they cannot verify; none is certified.
    assert!(
        udp.iter().all(|l| l.starts_with("FAIL "))
            && udp.iter().filter(|l| l.contains("cannot verify")).count() >= 2,
        "the network's rejections were taken for the fence:\n{report}"
    );
    assert_eq!(check.status.code(), Some(1), "{report}");
}

/// `cordon check` as the agent probes TCP as well as UDP: a hole that lets TCP out while UDP
/// stays blocked fails it.
#[test]
fn a_tcp_only_hole_fails_the_unprivileged_check() {
    if !privileged() {
        return;
    }
    let world = World::new(WorldOpts::default());
    assert!(world.cordon(FENCE).status.success());
    let check = || {
        let output = Command::new("ip")
            .args(["netns", "exec", &world.sandbox_ns, "setpriv"])
            .args(["--reuid", AGENT_UID, "--regid", AGENT_UID, "--clear-groups"])
            .arg(cordon())
            .arg("check")
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .find(|l| l.contains("probe public address tcp/"))
            .unwrap_or_default()
            .to_string()
    };
    assert!(check().starts_with("ok "), "{}", check());
    world.sandbox(&[
        "iptables",
        "-I",
        "CORDON_OUTPUT",
        "1",
        "-p",
        "tcp",
        "-d",
        "203.0.113.1",
        "-j",
        "ACCEPT",
    ]);
    let line = check();
    assert!(
        line.starts_with("FAIL "),
        "a TCP hole went unnoticed: {line}"
    );
}

/// What the DNS gateway opens goes into the `answered` sets, each member with its TTL: the
/// fence accepts the address on the member's port only, and only until the timeout runs out.
#[test]
fn answered_addresses_open_their_ports_until_their_timeout() {
    if !privileged() {
        return;
    }
    let world = World::new(WorldOpts::default());
    let output = world.cordon(FENCE);
    assert!(output.status.success(), "{}", stderr(&output));
    let blocked = tcp(BLOCKED, 443);
    let peer = tcp(LAN_PEER, 22);
    assert_verdicts(
        &world.probe(&[&blocked, &peer]),
        &[(&blocked, "refused"), (&peer, "refused")],
    );
    world.sandbox(&[
        "ipset",
        "add",
        "cordon4-answered",
        &format!("{BLOCKED},tcp:443"),
        "timeout",
        "2",
    ]);
    world.sandbox(&[
        "ipset",
        "add",
        "cordon4-answered",
        &format!("{LAN_PEER},tcp:80"),
        "timeout",
        "30",
    ]);
    assert_verdicts(
        &world.probe(&[&blocked, &peer]),
        &[(&blocked, "open"), (&peer, "refused")],
    );
    std::thread::sleep(std::time::Duration::from_millis(2500));
    assert_verdicts(&world.probe(&[&blocked]), &[(&blocked, "refused")]);
}

/// The agent keeps cordon's working directory. One it cannot write to (a workspace mounted from
/// a root-owned host directory) gets a warning at start naming the fix; one it owns gets none.
#[test]
fn a_workspace_the_agent_cannot_write_is_named_at_start() {
    if !privileged() {
        return;
    }
    let world = World::new(WorldOpts::default());
    let root_owned = world.dir.join("root-owned");
    let agents = world.dir.join("agents");
    for dir in [&root_owned, &agents] {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    let uid: u32 = AGENT_UID.parse().unwrap();
    std::os::unix::fs::chown(&agents, Some(uid), Some(uid)).unwrap();
    let start_in = |dir: &std::path::Path| {
        let mut command = world.sandbox_command(cordon());
        command
            .current_dir(dir)
            .args(["--dns", "static", "--no-harden", "--no-default-profile"])
            .args([
                "--allow",
                "allowed.test",
                "--user",
                AGENT_UID,
                "--",
                "/bin/true",
            ]);
        let output = command.output().unwrap();
        assert!(output.status.success(), "{}", stderr(&output));
        stderr(&output)
    };
    let warned = start_in(&root_owned);
    let line = warned
        .lines()
        .find(|line| line.contains("cannot write to it"))
        .unwrap_or_else(|| panic!("no warning for a root-owned workspace:\n{warned}"));
    assert!(
        line.starts_with("cordon: warning: the working directory")
            && line.contains("belongs to uid 0")
            && line.contains(&format!("sudo chown -R {uid}:")),
        "{line}"
    );
    let quiet = start_in(&agents);
    assert!(!quiet.contains("cannot write to it"), "{quiet}");
}

/// `cordon check` where no fence was ever loaded, as root (no cordon chain, no record) and as the
/// agent (nothing stopped, something got out): the fence is one line, saying it is absent and
/// how to apply it; once the fence is loaded, that line is gone.
#[test]
fn check_in_a_namespace_without_a_fence_says_it_is_absent_in_one_line() {
    if !privileged() {
        return;
    }
    let world = World::new(WorldOpts::default());
    let cordon = cordon().display().to_string();
    let check_as = |who: &str| {
        let line = match who {
            "root" => format!("exec {cordon} check"),
            _ => format!(
                "exec setpriv --reuid {AGENT_UID} --regid {AGENT_UID} --clear-groups {cordon} check"
            ),
        };
        let output = world.sandbox_sh(&line);
        let report = String::from_utf8_lossy(&output.stdout).into_owned();
        (output.status.code(), report)
    };
    for who in ["root", "agent"] {
        let (code, report) = check_as(who);
        let fence: Vec<&str> = report.lines().filter(|l| l.contains(" fence: ")).collect();
        assert_eq!(code, Some(1), "{who}: {report}");
        assert_eq!(fence.len(), 1, "{who}: {report}");
        assert!(
            fence[0].starts_with("FAIL  fence: absent")
                && fence[0].contains("sudo /usr/local/bin/init-firewall.sh"),
            "{who}: {report}"
        );
    }
    // A failed run leaves egress locked down (a DROP policy, no cordon chain): not "absent".
    world.set_resolv_conf("nameserver 192.0.2.53\n");
    let failed = world.cordon(&[FENCE, &["--resolve-timeout", "1"]].concat());
    assert_eq!(failed.status.code(), Some(75), "{}", stderr(&failed));
    for who in ["root", "agent"] {
        let (code, report) = check_as(who);
        assert_eq!(code, Some(1), "{who}: {report}");
        assert!(!report.contains("fence: absent"), "{who}: {report}");
    }
    world.set_resolv_conf(&format!("nameserver {GATEWAY}\n"));
    assert!(world.cordon(FENCE).status.success());
    for who in ["root", "agent"] {
        let (_, report) = check_as(who);
        assert!(!report.contains("fence: absent"), "{who}: {report}");
        assert!(report.contains("ok    fence: "), "{who}: {report}");
    }
}
