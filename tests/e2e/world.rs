//! The world: one internal network per test, with its world container.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::run::*;
use crate::setup::*;
use crate::support::workspace_root;

pub(crate) static NEXT: AtomicU32 = AtomicU32::new(0);

/// How the sandbox finds its resolver.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Dns {
    /// A user-defined network's embedded DNS: resolv.conf says 127.0.0.11, Docker forwards to
    /// `--dns` from inside the container's namespace as uid 0.
    Embedded,
    /// The default-bridge shape: resolv.conf names the world's DNS server directly
    /// (bind-mounted read-only; `--dns` too so that the embedded forwarder has no other upstream).
    Mounted,
}

pub(crate) struct World {
    pub(crate) s: &'static Setup,
    pub(crate) id: String,
    pub(crate) net: String,
    /// A dual-stack network (`--ipv6`), or an ordinary IPv4-only one as Docker creates by
    /// default (every container then has disable_ipv6=1, loopback included).
    pub(crate) ipv6: bool,
    pub(crate) p4: String,
    pub(crate) p6: String,
    pub(crate) container: String,
    pub(crate) dir: PathBuf,
    /// Containers and volumes to remove on drop.
    pub(crate) containers: Mutex<Vec<String>>,
    pub(crate) volumes: Mutex<Vec<String>>,
}

pub(crate) type Verdicts = HashMap<String, (String, String)>;

/// The real credentials the e2e tests give cordon (the TLS mock takes only these).
pub(crate) const E2E_API_KEY: &str = "sk-ant-api03-e2e-real-key-0123456789";
pub(crate) const E2E_OAUTH_TOKEN: &str = "sk-ant-oat01-e2e-real-token-0123456789";

impl World {
    /// A world on a dual-stack network.
    pub(crate) fn new() -> World {
        World::on(true)
    }

    /// A world on an IPv4-only network, the shape of Docker's ordinary networks.
    pub(crate) fn ipv4_only() -> World {
        World::on(false)
    }

    pub(crate) fn on(ipv6: bool) -> World {
        let s = setup();
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let id = format!("{}-{n}", std::process::id());
        let net = format!("cde-{id}");
        // A free /24 in 10.213.0.0/16 (and the matching fd00:e2e:X::/64), starting from a slot
        // derived from pid and counter; Docker refuses overlapping pools, so try the next one.
        let start = (std::process::id() as usize * 7 + n as usize * 31) % 240;
        let mut chosen = None;
        for i in 0..240 {
            let x = 10 + (start + i) % 240;
            let (p4, p6) = (format!("10.213.{x}"), format!("fd00:e2e:{x:x}"));
            let mut create = script("test-net.sh");
            create.args(["create", &net, "--subnet", &format!("{p4}.0/24")]);
            if ipv6 {
                create.args(["--ipv6", "--subnet", &format!("{p6}::/64")]);
            }
            create.arg("--");
            create.args([
                "--ip-range",
                &format!("{p4}.128/25"),
                "--gateway",
                &format!("{p4}.1"),
            ]);
            let out = run_for(create, MINUTE);
            if out.ok() {
                chosen = Some((p4, p6));
                break;
            }
            assert!(
                out.stderr.contains("overlap"),
                "test-net.sh create {net} failed:\n{}",
                out.stderr
            );
        }
        let (p4, p6) = chosen.expect("no free 10.213.X.0/24 for a test network");
        let dir = std::env::temp_dir().join(format!("cordon-e2e-{id}"));
        let world = World {
            s,
            container: format!("{net}-world"),
            id,
            net,
            ipv6,
            p4,
            p6,
            dir,
            containers: Mutex::new(Vec::new()),
            volumes: Mutex::new(Vec::new()),
        };
        // Removed with the rest on drop from here on.
        let _ = std::fs::remove_dir_all(&world.dir);
        std::fs::create_dir_all(world.dir.join("mark")).unwrap();
        // The agent (node) may write here: the witness that a command ran.
        std::fs::set_permissions(
            world.dir.join("mark"),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .unwrap();
        // What the TLS mock of the API accepts: the real credentials the tests give cordon.
        std::fs::write(
            world.dir.join("credentials"),
            format!("{E2E_API_KEY}\n{E2E_OAUTH_TOKEN}\n"),
        )
        .unwrap();
        std::fs::write(
            world.dir.join("resolv.conf"),
            format!("nameserver {}\n", world.dns_ip()),
        )
        .unwrap();
        world.start_world();
        world
    }

    pub(crate) fn docker(&self) -> Command {
        let mut cmd = Command::new(&self.s.docker);
        cmd.env("DOCKER_BUILDKIT", "1");
        cmd
    }

    pub(crate) fn docker_must(&self, args: &[&str]) -> Out {
        let mut cmd = self.docker();
        cmd.args(args);
        must(cmd, MINUTE)
    }

    pub(crate) fn a(&self, host: &str) -> String {
        format!("{}.{host}", self.p4)
    }

    pub(crate) fn aaaa(&self, host: &str) -> String {
        format!("{}::{host}", self.p6)
    }

    /// The world's allowed host shares the container's own network (an internal network has
    /// nothing else), where the DNS gateway lets a name's answer open an address only if an
    /// address entry covers it: entries for the host on a port nothing uses (as CORDON_ALLOW).
    pub(crate) fn own_network_entries(&self) -> String {
        let mut entries = format!("CORDON_ALLOW={}:9", self.a("10"));
        if self.ipv6 {
            entries.push_str(&format!(" [{}]:9", self.aaaa("ff10")));
        }
        entries
    }

    pub(crate) fn dns_ip(&self) -> String {
        self.a("2")
    }

    pub(crate) fn testkit_mount(&self) -> String {
        format!("{}:/opt/testkit/testkit:ro", self.s.testkit.display())
    }

    pub(crate) fn start_world(&self) {
        self.containers.lock().unwrap().push(self.container.clone());
        let world_sh = workspace_root().join("tests/e2e/world.sh");
        let addresses = if self.ipv6 {
            vec![
                "--ip".to_string(),
                self.a("2"),
                "--ip6".into(),
                self.aaaa("2"),
            ]
        } else {
            vec!["--ip".to_string(), self.a("2")]
        };
        // world.sh takes "-" for "no IPv6".
        let p6 = if self.ipv6 { self.p6.as_str() } else { "-" };
        let mut cmd = self.docker();
        cmd.args([
            "run",
            "-d",
            "--name",
            &self.container,
            "--network",
            &self.net,
        ])
        .args(&addresses)
        .args(["--cap-add", "NET_ADMIN", "--dns", &self.dns_ip()])
        .args(["-v", &self.testkit_mount()])
        .args([
            "-v",
            &format!("{}:/opt/e2e/world.sh:ro", world_sh.display()),
        ])
        .args(["-v", &format!("{}:/out", self.dir.display())])
        .args(["--entrypoint", "/bin/sh", &self.s.tools_image])
        .args(["/opt/e2e/world.sh", "/out", &self.p4, p6]);
        must(cmd, MINUTE);
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut ready_files = vec!["dns.ready", "listen.ready", "mock4.ready", "mock-tls.ready"];
        if self.ipv6 {
            ready_files.push("mock6.ready");
        }
        for ready in ready_files {
            while !self.dir.join(ready).exists() {
                if Instant::now() > deadline {
                    panic!(
                        "world {ready} never appeared:\n{}",
                        self.logs(&self.container)
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    pub(crate) fn name(&self, tag: &str) -> String {
        let name = format!("{}-{tag}", self.net);
        self.containers.lock().unwrap().push(name.clone());
        name
    }

    pub(crate) fn dns_args(&self, dns: Dns) -> Vec<String> {
        let mut args = vec![
            "--network".into(),
            self.net.clone(),
            "--dns".into(),
            self.dns_ip(),
            "-e".into(),
            self.own_network_entries(),
        ];
        if let Dns::Mounted = dns {
            args.extend([
                "-v".into(),
                format!(
                    "{}:/etc/resolv.conf:ro",
                    self.dir.join("resolv.conf").display()
                ),
            ]);
        }
        args
    }

    /// `docker run -d` on this world's network: `--name`, DNS, testkit mounted read-only, then
    /// `args` (more options, the image, the command). Returns the container's name.
    pub(crate) fn start(&self, tag: &str, dns: Dns, args: &[&str]) -> String {
        let name = self.name(tag);
        let mut cmd = self.docker();
        cmd.args(["run", "-d", "--name", &name])
            .args(self.dns_args(dns));
        cmd.args(["-v", &self.testkit_mount()]).args(args);
        must(cmd, MINUTE);
        name
    }

    pub(crate) fn logs(&self, container: &str) -> String {
        let mut cmd = self.docker();
        cmd.args(["logs", container]);
        run_for(cmd, MINUTE).both()
    }

    /// Waits until `needle` occurs `count` times in the container's logs; returns the logs.
    pub(crate) fn wait_log(&self, container: &str, needle: &str, count: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let logs = self.logs(container);
            if logs.matches(needle).count() >= count {
                return logs;
            }
            assert!(
                Instant::now() < deadline,
                "{container}: {needle:?} not seen {count}x in its logs:\n{logs}\nstate: {}",
                self.inspect(container, "{{json .State}}")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub(crate) fn inspect(&self, container: &str, format: &str) -> String {
        let mut cmd = self.docker();
        cmd.args(["inspect", "-f", format, container]);
        run_for(cmd, MINUTE).stdout.trim().to_string()
    }

    pub(crate) fn exec(&self, user: &str, container: &str, command: &[&str]) -> Out {
        let mut cmd = self.docker();
        cmd.args(["exec", "-u", user, container]).args(command);
        run_for(cmd, MINUTE)
    }

    /// testkit probe as `node` inside the container: SPEC → (verdict, detail).
    pub(crate) fn probe(&self, container: &str, specs: &[String]) -> Verdicts {
        let mut command = vec!["/opt/testkit/testkit", "probe", "--timeout-ms", "1500"];
        command.extend(specs.iter().map(String::as_str));
        let out = self.exec("node", container, &command);
        assert!(out.ok(), "probe in {container} failed: {}", out.both());
        out.stdout
            .lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                Some((
                    w.next()?.to_string(),
                    (w.next()?.to_string(), w.next()?.to_string()),
                ))
            })
            .collect()
    }

    /// The container's IPv4 and IPv6 default gateways, from /proc/net/route and ipv6_route.
    pub(crate) fn gateways(&self, container: &str) -> (String, Option<String>) {
        let out = self.exec(
            "node",
            container,
            &["cat", "/proc/net/route", "/proc/net/ipv6_route"],
        );
        let mut v4 = None;
        let mut v6 = None;
        for line in out.stdout.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() == 11 && f[1] == "00000000" && f[2] != "00000000" {
                let g = u32::from_str_radix(f[2], 16).unwrap();
                v4 = Some(std::net::Ipv4Addr::from(g.swap_bytes()).to_string());
            }
            if f.len() == 10 && f[0] == "0".repeat(32) && f[1] == "00" && f[4] != "0".repeat(32) {
                v6 = Some(
                    std::net::Ipv6Addr::from(u128::from_str_radix(f[4], 16).unwrap()).to_string(),
                );
            }
        }
        assert!(
            v6.is_some() || !self.ipv6,
            "no IPv6 default route in {container}:\n{}",
            out.both()
        );
        (
            v4.unwrap_or_else(|| panic!("no IPv4 default route in {container}:\n{}", out.both())),
            v6,
        )
    }

    pub(crate) fn listener_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("listen.log")).unwrap_or_default()
    }

    pub(crate) fn mock_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("mock.log")).unwrap_or_default()
    }

    /// What the TLS mock of the API (the credential gateway's upstream) logged.
    pub(crate) fn tls_mock_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("mock-tls.log")).unwrap_or_default()
    }

    /// `docker run` arguments that make the TLS mock the credential gateway's upstream:
    /// api.anthropic.com in /etc/hosts (cordon looks there first; the agent's DNS is not
    /// involved) and the test CA as the store the gateway verifies it with.
    pub(crate) fn credential_upstream_args(&self) -> Vec<String> {
        vec![
            format!("--add-host=api.anthropic.com:{}", self.a("11")),
            "-v".into(),
            format!(
                "{}:/opt/e2e/ca.pem:ro",
                self.dir.join("pki/ca.pem").display()
            ),
            "-e".into(),
            "SSL_CERT_FILE=/opt/e2e/ca.pem".into(),
        ]
    }

    /// Probes every verdict class as node in `container` and asserts the fence holds: the
    /// resolver and allowlisted names work; blocked names, raw addresses, the LAN peer, the
    /// gateway, cloud metadata, IPv6 and DNS to anything but the resolver fail.
    pub(crate) fn assert_fenced(&self, container: &str, dns: Dns) {
        let problems = self.fence_problems(container, dns);
        assert!(
            problems.is_empty(),
            "{container} ({dns:?}):\n{}",
            problems.join("\n")
        );
    }

    /// What `assert_fenced` checks, as a list of what is wrong (empty: the fence holds).
    pub(crate) fn fence_problems(&self, container: &str, dns: Dns) -> Vec<String> {
        let resolver = match dns {
            Dns::Embedded => "127.0.0.11".to_string(),
            Dns::Mounted => self.dns_ip(),
        };
        let (gw, gw6) = self.gateways(container);
        let mut problems = Vec::new();
        if gw != self.a("1") {
            problems.push(format!(
                "the network's gateway is {gw}, not {}",
                self.a("1")
            ));
        }
        let tcp = |addr: &str, port: u16| {
            if addr.contains(':') {
                format!("tcp:[{addr}]:{port}")
            } else {
                format!("tcp:{addr}:{port}")
            }
        };
        let allowed = self.a("10");
        let blocked = self.a("20");
        // cordon's DNS gateway (the default) answers every question of the agent, to any
        // server, and refuses names no allowlist holds; with `--dns static` the names were
        // resolved at start and the agent's DNS goes to the resolver. The entrypoint says which
        // in the container's log; the drop-in (`cordon firewall`) notes its gateway daemon.
        let gateway = self.logs(container).contains("cordon: DNS gateway")
            || self
                .exec(
                    "root",
                    container,
                    &["test", "-e", "/run/cordon/gateway.pid"],
                )
                .ok();
        let refused = || ("error", Some("REFUSED".to_string()));
        let unlisted = match gateway {
            true => refused(),
            false => ("answered", Some(blocked.clone())),
        };
        // A blocked TCP connect is reset at once (see plan.rs); other protocols are rejected
        // with ICMP admin-prohibited.
        let mut expected: Vec<(String, &str, Option<String>)> = vec![
            // Resolution through the container's resolver, as the agent.
            (
                format!("dns:api.anthropic.com@{resolver}"),
                "answered",
                Some(allowed.clone()),
            ),
            (
                format!("dns:example.com@{resolver}"),
                unlisted.0,
                unlisted.1,
            ),
            // Allowlisted names (the default `claude` profile: TCP 80 and 443).
            (tcp(&allowed, 443), "open", None),
            (format!("http:{allowed}:80/"), "http", Some("200".into())),
            // A blocked name's addresses (example.com), listeners on both.
            (tcp(&blocked, 443), "refused", None),
            (tcp(&blocked, 80), "refused", None),
            // A raw address no name resolves to (a listener on it).
            (tcp(&self.a("2"), 8080), "refused", None),
            // The LAN peer, the gateway (the Docker host), cloud metadata.
            (tcp(&self.a("3"), 22), "refused", None),
            (tcp(&self.a("3"), 80), "refused", None),
            (tcp(&gw, 80), "refused", None),
            (tcp("169.254.169.254", 80), "refused", None),
            // Names open TCP only.
            (format!("udp:{allowed}:443"), "rejected", None),
            // DNS to a server that is not the resolver: rejected, or answered by the gateway.
            (
                format!("dns:example.com@{}", self.a("53")),
                if gateway { "error" } else { "rejected" },
                gateway.then(|| "REFUSED".to_string()),
            ),
            (
                format!("dns:api.anthropic.com@{}", self.a("53")),
                if gateway { "answered" } else { "rejected" },
                gateway.then(|| allowed.clone()),
            ),
            // Most programs connect on blocking sockets: refused at once too.
            (format!("tcpb:{blocked}:443"), "refused", None),
        ];
        if self.ipv6 {
            let (allowed6, blocked6) = (self.aaaa("ff10"), self.aaaa("ff20"));
            let gw6 = gw6.clone().unwrap_or_default();
            expected.extend([
                (
                    format!("dns6:api.anthropic.com@{resolver}"),
                    "answered",
                    Some(allowed6.clone()),
                ),
                (tcp(&allowed6, 443), "open", None),
                (format!("http:[{allowed6}]:80/"), "http", Some("200".into())),
                (tcp(&blocked6, 443), "refused", None),
                (tcp(&self.aaaa("2"), 8080), "refused", None),
                (tcp(&gw6, 80), "refused", None),
                (format!("tcpb:[{blocked6}]:443"), "refused", None),
            ]);
        } else {
            // IPv4-only: the container has no IPv6 address at all, so nothing can be sent.
            for spec in ["tcp:[2001:db8::1]:443", "udp:[2001:db8::1]:443"] {
                expected.push((spec.into(), "error", Some("EADDRNOTAVAIL".into())));
            }
        }
        match dns {
            // With the gateway, TCP to any port 53 reaches the gateway.
            _ if gateway => {
                let (verdict, detail) = refused();
                expected.push((
                    format!("dns:example.com@{}", self.dns_ip()),
                    verdict,
                    detail,
                ));
                expected.push((tcp(&self.dns_ip(), 53), "open", None));
            }
            // The world's DNS server is the embedded DNS's upstream, not the agent's resolver.
            Dns::Embedded => {
                expected.push((
                    format!("dns:example.com@{}", self.dns_ip()),
                    "rejected",
                    None,
                ));
                expected.push((tcp(&self.dns_ip(), 53), "refused", None));
            }
            Dns::Mounted => {
                expected.push((tcp(&self.dns_ip(), 53), "open", None));
            }
        }
        let specs: Vec<String> = expected.iter().map(|(s, _, _)| s.clone()).collect();
        let log_before = self.listener_log().len();
        let got = self.probe(container, &specs);
        problems.extend(
            expected
                .iter()
                .filter(|(spec, verdict, detail)| match got.get(spec) {
                    Some((v, d)) => v != verdict || detail.as_ref().is_some_and(|want| d != want),
                    None => true,
                })
                .map(|(spec, verdict, detail)| {
                    format!(
                        "{spec}: expected {verdict} {}, got {:?}",
                        detail.as_deref().unwrap_or(""),
                        got.get(spec)
                    )
                }),
        );

        // The resolver libc uses (getaddrinfo through resolv.conf) gives the world's answers.
        let getent = self.exec(
            "node",
            container,
            &["getent", "ahostsv4", "api.anthropic.com"],
        );
        if !getent.stdout.contains(&allowed) {
            problems.push(format!("getent as node: {}", getent.both()));
        }

        // What the world's listeners saw: the allowed connections, none of the blocked ones.
        let log = self.listener_log()[log_before..].to_string();
        if !log.contains(&format!("tcp {allowed}:443 ")) {
            problems.push(format!("the allowed connection was not seen:\n{log}"));
        }
        let mut never = vec![
            format!("{blocked}:"),
            format!("{}:", self.a("3")),
            format!("{}:8080", self.a("2")),
        ];
        if self.ipv6 {
            never.push(format!("[{}]:", self.aaaa("ff20")));
            never.push(format!("[{}]:8080", self.aaaa("2")));
        }
        for local in never {
            if log.contains(&format!("tcp {local}")) {
                problems.push(format!("{local} was reached:\n{log}"));
            }
        }
        problems
    }

    /// `cordon check` as `user` in the container: the problems it reports (empty: it holds).
    pub(crate) fn check_problems(&self, container: &str, user: &str) -> Vec<String> {
        let out = self.exec(user, container, &["cordon", "check"]);
        if out.ok() && out.stdout.contains("the sandbox holds") {
            return Vec::new();
        }
        vec![format!(
            "`docker exec -u {user} {container} cordon check` exited {:?}:\n{}",
            out.code,
            out.both()
        )]
    }

    /// The processes in the container: (pid, comm, Uid line, CapEff, NoNewPrivs).
    pub(crate) fn processes(&self, container: &str) -> Vec<(u32, String, String, String, String)> {
        let out = self.exec(
            "root",
            container,
            &[
                "/bin/sh",
                "-c",
                "for d in /proc/[0-9]*; do \
                 [ -r $d/status ] || continue; \
                 s=$(cat $d/status 2>/dev/null) || continue; \
                 printf '%s|%s|%s|%s|%s\\n' \"${d#/proc/}\" \"$(cat $d/comm)\" \
                 \"$(echo \"$s\" | grep '^Uid:' | tr -s '\\t ' ' ')\" \
                 \"$(echo \"$s\" | grep '^CapEff:' | tr -s '\\t ' ' ')\" \
                 \"$(echo \"$s\" | grep '^NoNewPrivs:' | tr -s '\\t ' ' ')\"; done",
            ],
        );
        out.stdout
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split('|').collect();
                (f.len() == 5).then(|| {
                    (
                        f[0].parse().unwrap(),
                        f[1].into(),
                        f[2].trim().into(),
                        f[3].trim().into(),
                        f[4].trim().into(),
                    )
                })
            })
            .collect()
    }

    /// PID 1 is cordon as root, and a process named `comm` runs as node with no capabilities.
    pub(crate) fn assert_agent_is_node(&self, container: &str, comm: &str) {
        // cordon logs "starting" before its child has exec'd: give the exec a moment.
        let deadline = Instant::now() + Duration::from_secs(5);
        let procs = loop {
            let procs = self.processes(container);
            if procs.iter().any(|p| p.1 == comm && p.0 != 1) || Instant::now() > deadline {
                break procs;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let table = format!("{procs:#?}");
        let pid1 = procs
            .iter()
            .find(|p| p.0 == 1)
            .unwrap_or_else(|| panic!("no PID 1: {table}"));
        assert_eq!(pid1.1, "cordon", "PID 1: {table}");
        let agent = procs
            .iter()
            .find(|p| p.1 == comm && p.0 != 1)
            .unwrap_or_else(|| panic!("no {comm} process: {table}"));
        assert_eq!(agent.2, "Uid: 1000 1000 1000 1000", "{comm}: {table}");
        assert_eq!(agent.3, "CapEff: 0000000000000000", "{comm}: {table}");
        assert_eq!(agent.4, "NoNewPrivs: 1", "{comm}: {table}");
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let containers = std::mem::take(&mut *self.containers.lock().unwrap());
        if !containers.is_empty() {
            let mut cmd = self.docker();
            cmd.args(["rm", "-f", "-v"]).args(&containers);
            let _ = run_for(cmd, MINUTE);
        }
        let volumes = std::mem::take(&mut *self.volumes.lock().unwrap());
        if !volumes.is_empty() {
            let mut cmd = self.docker();
            cmd.args(["volume", "rm", "-f"]).args(&volumes);
            let _ = run_for(cmd, MINUTE);
        }
        let mut rm = script("test-net.sh");
        rm.args(["rm", &self.net]);
        let out = run_for(rm, MINUTE);
        if !out.ok() {
            eprintln!("e2e: removing network {} failed: {}", self.net, out.both());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub(crate) const CAPS: [&str; 4] = ["--cap-add", "NET_ADMIN", "--cap-add", "NET_RAW"];

/// The README's minimum for `--cap-drop ALL` (harden on, no --uid-from), in the order cordon
/// names them.
pub(crate) const MINIMUM: [&str; 9] = [
    "NET_ADMIN",
    "NET_RAW",
    "SETUID",
    "DAC_OVERRIDE",
    "FOWNER",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "KILL",
];

pub(crate) fn cap_adds(caps: &[&str]) -> Vec<String> {
    caps.iter()
        .flat_map(|cap| ["--cap-add".to_string(), cap.to_string()])
        .collect()
}

pub(crate) fn args<'a>(parts: &[&'a [&'a str]]) -> Vec<&'a str> {
    parts.iter().flat_map(|p| p.iter().copied()).collect()
}
