//! End to end, in real Docker: the image built from the public Dockerfile (offline: local Debian
//! base, this tree's static binary, the pinned Claude Code CLI installed locally), run the ways
//! users run it, on internal networks where the only other host is the test's own world.
//!
//! Setup, once per test process: tests/docker/ensure-docker.sh, base-image.sh, claude-cli.sh and
//! build-image.sh (the public Dockerfile with the offline build arguments), then the two example
//! devcontainer images (docker/devcontainer, docker/devcontainer-dropin) built on top of it.
//!
//! Each test gets its own `--internal --ipv6` network (tests/docker/test-net.sh, which also
//! isolates IPv6 on the host) and its own world container (tests/e2e/world.sh): DNS without
//! upstream, listeners, the Messages API mock, a LAN peer. Every container gets `--dns <world>`
//! (Docker's embedded DNS then forwards to the world, never to this machine's resolver) or a
//! read-only resolv.conf naming the world; nothing leaves the test network.
//!
//! World layout on P4.0/24 and P6::/64 (see tests/e2e/world.sh):
//!   P4.1 / P6::1        the network's gateway (the Docker host's bridge)
//!   P4.2 / P6::2        the world: the sandboxes' DNS server, listeners on :8080
//!   P4.3                a LAN peer (tcp 22, 80)
//!   P4.10 / P6::ff10    every allowlisted name: the Messages API mock on :80, a listener on :443
//!   P4.20 / P6::ff20    example.com, evil.test, ...: names no allowlist names (tcp 80, 443)
//!   P4.53               a DNS server that is not the sandboxes' resolver
//!   P4.128/25           where Docker puts the sandboxes

mod support;

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use support::{privileged, workspace_root};

// ---------------------------------------------------------------------------------------------
// Running commands with a deadline

struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

impl Out {
    fn ok(&self) -> bool {
        self.code == Some(0)
    }

    fn both(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

fn show(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd` to completion or until `limit`, then kills it. Never hangs the suite.
fn run_for(mut cmd: Command, limit: Duration) -> Out {
    let what = show(&cmd);
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let reader = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = reader(Box::new(child.stdout.take().unwrap()));
    let err = reader(Box::new(child.stderr.take().unwrap()));
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "timed out after {limit:?}: {what}\n{}{}",
                out.join().unwrap(),
                err.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Out {
        code: status.code(),
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
        elapsed: started.elapsed(),
    }
}

fn must(cmd: Command, limit: Duration) -> Out {
    let what = show(&cmd);
    let out = run_for(cmd, limit);
    assert!(
        out.ok(),
        "{what} failed ({:?}):\n{}{}",
        out.code,
        out.stdout,
        out.stderr
    );
    out
}

/// `KEY=VALUE` lines as the tests/docker scripts print them.
fn assignments(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
        .collect()
}

const MINUTE: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// Setup, once per process: engine, images

struct Setup {
    docker: PathBuf,
    /// The image built from the public Dockerfile.
    image: String,
    /// docker/devcontainer/Dockerfile on top of it.
    devcontainer_image: String,
    /// docker/devcontainer-dropin/Dockerfile on the tools base.
    dropin_image: String,
    tools_image: String,
    testkit: PathBuf,
}

fn script(name: &str) -> Command {
    Command::new(workspace_root().join("tests/docker").join(name))
}

/// Progress of the shared setup, written past libtest's output capture (it runs inside whichever
/// test comes first, and on a cold machine it takes minutes).
macro_rules! progress {
    ($($arg:tt)*) => {{
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

fn build_setup() -> Result<Setup, String> {
    let started = Instant::now();
    let step = |name: &str, cmd: Command, limit: Duration| -> Result<Out, String> {
        let what = show(&cmd);
        let t = Instant::now();
        let out = run_for(cmd, limit);
        progress!("e2e setup: {name} {:.1}s", t.elapsed().as_secs_f64());
        if out.ok() {
            Ok(out)
        } else {
            Err(format!(
                "{what} failed ({:?}):\n{}{}",
                out.code, out.stdout, out.stderr
            ))
        }
    };
    let engine =
        assignments(&step("ensure-docker.sh", script("ensure-docker.sh"), 10 * MINUTE)?.stdout);
    let docker = PathBuf::from(
        engine
            .get("DOCKER")
            .ok_or("ensure-docker.sh printed no DOCKER=")?,
    );
    sweep(&docker);
    let bases = assignments(&step("base-image.sh", script("base-image.sh"), 30 * MINUTE)?.stdout);
    let tools_image = bases
        .get("TOOLS_IMAGE")
        .ok_or("base-image.sh printed no TOOLS_IMAGE=")?
        .clone();
    step("claude-cli.sh", script("claude-cli.sh"), 30 * MINUTE)?;

    let binary = support::cordon();
    let testkit = support::testkit();
    // Tagged by the binary's hash: parallel runs with different binaries never share a tag.
    let mut sum = Command::new("sha256sum");
    sum.arg(&binary);
    let hash = must(sum, MINUTE).stdout[..12].to_string();
    let tag = format!("e2e-{hash}");
    let mut build = script("build-image.sh");
    build
        .arg("--binary")
        .arg(&binary)
        .args(["--tag", &format!("cordon-test/cordon:{tag}")]);
    let built = assignments(&step("build-image.sh", build, 30 * MINUTE)?.stdout);
    let image = built
        .get("IMAGE")
        .ok_or("build-image.sh printed no IMAGE=")?
        .clone();

    let example = |dir: &str, args: &[String], name: &str| -> Result<String, String> {
        let mut cmd = Command::new(&docker);
        cmd.env("DOCKER_BUILDKIT", "1")
            .args(["build", "-q", "-t", name]);
        for a in args {
            cmd.args(["--build-arg", a]);
        }
        cmd.arg(workspace_root().join(dir));
        step(dir, cmd, 10 * MINUTE)?;
        Ok(name.to_string())
    };
    let devcontainer_image = example(
        "docker/devcontainer",
        &[format!("CORDON_IMAGE={image}")],
        &format!("cordon-test/devcontainer:{tag}"),
    )?;
    let dropin_image = example(
        "docker/devcontainer-dropin",
        &[
            format!("CORDON_IMAGE={image}"),
            format!("BASE_IMAGE={tools_image}"),
        ],
        &format!("cordon-test/dropin:{tag}"),
    )?;
    prune_old_tags(&docker, &tag);
    progress!(
        "e2e setup: ready in {:.1}s (image {image})",
        started.elapsed().as_secs_f64()
    );
    Ok(Setup {
        docker,
        image,
        devcontainer_image,
        dropin_image,
        tools_image,
        testkit,
    })
}

/// The test process that created a resource named `cde-PID-N...` (or `...-ws-PID-N-...`).
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name
        .split_once("cde-")
        .or_else(|| name.split_once("ws-"))?
        .1;
    let (pid, n) = rest.split_once('-')?;
    n.chars().next().filter(char::is_ascii_digit)?;
    pid.parse().ok()
}

/// Removes what earlier runs that were killed (no Drop ran) left behind: containers, volumes and
/// networks (with their host ip6tables rules) named after a test process that no longer exists.
fn sweep(docker: &Path) {
    let list = |args: &[&str]| {
        let mut cmd = Command::new(docker);
        cmd.args(args);
        run_for(cmd, MINUTE).stdout
    };
    let dead = |name: &&str| {
        owner_pid(name).is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
    };
    let containers = list(&[
        "ps",
        "-a",
        "--filter",
        "name=cde-",
        "--format",
        "{{.Names}}",
    ]);
    let containers: Vec<&str> = containers.lines().filter(dead).collect();
    let volumes = list(&["volume", "ls", "-q"]);
    let volumes: Vec<&str> = volumes
        .lines()
        .filter(|v| v.starts_with("cde-") || v.starts_with("cordon-claude-ws-"))
        .filter(dead)
        .collect();
    let networks = list(&[
        "network",
        "ls",
        "--filter",
        "name=cde-",
        "--format",
        "{{.Name}}",
    ]);
    let networks: Vec<&str> = networks.lines().filter(dead).collect();
    if containers.is_empty() && volumes.is_empty() && networks.is_empty() {
        return;
    }
    progress!(
        "e2e setup: removing leftovers of killed runs: {containers:?} {volumes:?} {networks:?}"
    );
    for (verb, names) in [
        (&["rm", "-f", "-v"][..], &containers),
        (&["volume", "rm", "-f"][..], &volumes),
    ] {
        if !names.is_empty() {
            let mut cmd = Command::new(docker);
            cmd.args(verb).args(names.iter());
            run_for(cmd, MINUTE);
        }
    }
    for net in networks {
        let mut rm = script("test-net.sh");
        rm.args(["rm", net]);
        run_for(rm, MINUTE);
    }
}

/// Untags this suite's images of other binaries built more than a day ago. `docker rmi` without
/// `-f` leaves any image a container (a concurrent run's) still uses.
fn prune_old_tags(docker: &Path, current: &str) {
    let mut date = Command::new("date");
    date.args(["-u", "-d", "1 day ago", "+%Y-%m-%dT%H:%M:%S"]);
    let cutoff = run_for(date, MINUTE).stdout.trim().to_string();
    let mut ls = Command::new(docker);
    ls.args([
        "images",
        "--format",
        "{{.Repository}}:{{.Tag}}",
        "--filter",
        "reference=cordon-test/*:e2e-*",
    ]);
    let old: Vec<String> = run_for(ls, MINUTE)
        .stdout
        .lines()
        .filter(|t| !t.ends_with(&format!(":{current}")))
        .filter(|t| {
            let mut inspect = Command::new(docker);
            inspect.args(["image", "inspect", "-f", "{{.Created}}", t]);
            let created = run_for(inspect, MINUTE).stdout;
            !cutoff.is_empty() && created.trim() < cutoff.as_str()
        })
        .map(String::from)
        .collect();
    if !old.is_empty() {
        let mut rmi = Command::new(docker);
        rmi.arg("rmi").args(&old);
        run_for(rmi, MINUTE);
    }
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Result<Setup, String>> = OnceLock::new();
    match SETUP.get_or_init(build_setup) {
        Ok(s) => s,
        Err(e) => panic!("e2e setup failed: {e}"),
    }
}

// ---------------------------------------------------------------------------------------------
// The world: one internal network per test, with its world container

static NEXT: AtomicU32 = AtomicU32::new(0);

/// How the sandbox finds its resolver.
#[derive(Clone, Copy, Debug)]
enum Dns {
    /// A user-defined network's embedded DNS: resolv.conf says 127.0.0.11, Docker forwards to
    /// `--dns` from inside the container's namespace as uid 0.
    Embedded,
    /// The default-bridge shape: resolv.conf names the world's DNS server directly
    /// (bind-mounted read-only; `--dns` too so that the embedded forwarder has no other upstream).
    Mounted,
}

struct World {
    s: &'static Setup,
    id: String,
    net: String,
    /// A dual-stack network (`--ipv6`), or an ordinary IPv4-only one as Docker creates by
    /// default (every container then has disable_ipv6=1, loopback included).
    ipv6: bool,
    p4: String,
    p6: String,
    container: String,
    dir: PathBuf,
    /// Containers and volumes to remove on drop.
    containers: Mutex<Vec<String>>,
    volumes: Mutex<Vec<String>>,
}

type Verdicts = HashMap<String, (String, String)>;

impl World {
    /// A world on a dual-stack network.
    fn new() -> World {
        World::on(true)
    }

    /// A world on an IPv4-only network, the shape of Docker's ordinary networks.
    fn ipv4_only() -> World {
        World::on(false)
    }

    fn on(ipv6: bool) -> World {
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
        std::fs::write(
            world.dir.join("resolv.conf"),
            format!("nameserver {}\n", world.dns_ip()),
        )
        .unwrap();
        world.start_world();
        world
    }

    fn docker(&self) -> Command {
        let mut cmd = Command::new(&self.s.docker);
        cmd.env("DOCKER_BUILDKIT", "1");
        cmd
    }

    fn docker_must(&self, args: &[&str]) -> Out {
        let mut cmd = self.docker();
        cmd.args(args);
        must(cmd, MINUTE)
    }

    fn a(&self, host: &str) -> String {
        format!("{}.{host}", self.p4)
    }

    fn aaaa(&self, host: &str) -> String {
        format!("{}::{host}", self.p6)
    }

    fn dns_ip(&self) -> String {
        self.a("2")
    }

    fn testkit_mount(&self) -> String {
        format!("{}:/opt/testkit/testkit:ro", self.s.testkit.display())
    }

    fn start_world(&self) {
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
        let mut ready_files = vec!["dns.ready", "listen.ready", "mock4.ready"];
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

    fn name(&self, tag: &str) -> String {
        let name = format!("{}-{tag}", self.net);
        self.containers.lock().unwrap().push(name.clone());
        name
    }

    fn dns_args(&self, dns: Dns) -> Vec<String> {
        let mut args = vec![
            "--network".into(),
            self.net.clone(),
            "--dns".into(),
            self.dns_ip(),
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
    fn start(&self, tag: &str, dns: Dns, args: &[&str]) -> String {
        let name = self.name(tag);
        let mut cmd = self.docker();
        cmd.args(["run", "-d", "--name", &name])
            .args(self.dns_args(dns));
        cmd.args(["-v", &self.testkit_mount()]).args(args);
        must(cmd, MINUTE);
        name
    }

    fn logs(&self, container: &str) -> String {
        let mut cmd = self.docker();
        cmd.args(["logs", container]);
        run_for(cmd, MINUTE).both()
    }

    /// Waits until `needle` occurs `count` times in the container's logs; returns the logs.
    fn wait_log(&self, container: &str, needle: &str, count: usize) -> String {
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

    fn inspect(&self, container: &str, format: &str) -> String {
        let mut cmd = self.docker();
        cmd.args(["inspect", "-f", format, container]);
        run_for(cmd, MINUTE).stdout.trim().to_string()
    }

    fn exec(&self, user: &str, container: &str, command: &[&str]) -> Out {
        let mut cmd = self.docker();
        cmd.args(["exec", "-u", user, container]).args(command);
        run_for(cmd, MINUTE)
    }

    /// testkit probe as `node` inside the container: SPEC → (verdict, detail).
    fn probe(&self, container: &str, specs: &[String]) -> Verdicts {
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
    fn gateways(&self, container: &str) -> (String, Option<String>) {
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

    fn listener_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("listen.log")).unwrap_or_default()
    }

    fn mock_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("mock.log")).unwrap_or_default()
    }

    /// Probes every verdict class as node in `container` and asserts the fence holds: the
    /// resolver and allowlisted names work; blocked names, raw addresses, the LAN peer, the
    /// gateway, cloud metadata, IPv6 and DNS to anything but the resolver fail.
    fn assert_fenced(&self, container: &str, dns: Dns) {
        let problems = self.fence_problems(container, dns);
        assert!(
            problems.is_empty(),
            "{container} ({dns:?}):\n{}",
            problems.join("\n")
        );
    }

    /// What `assert_fenced` checks, as a list of what is wrong (empty: the fence holds).
    fn fence_problems(&self, container: &str, dns: Dns) -> Vec<String> {
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
                "answered",
                Some(blocked.clone()),
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
            // DNS to a server that is not the resolver.
            (
                format!("dns:example.com@{}", self.a("53")),
                "rejected",
                None,
            ),
            (
                format!("dns:api.anthropic.com@{}", self.a("53")),
                "rejected",
                None,
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
    fn check_problems(&self, container: &str, user: &str) -> Vec<String> {
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
    fn processes(&self, container: &str) -> Vec<(u32, String, String, String, String)> {
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
    fn assert_agent_is_node(&self, container: &str, comm: &str) {
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

const CAPS: [&str; 4] = ["--cap-add", "NET_ADMIN", "--cap-add", "NET_RAW"];

/// The README's minimum for `--cap-drop ALL` (harden on, no --uid-from), in the order cordon
/// names them.
const MINIMUM: [&str; 9] = [
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

fn cap_adds(caps: &[&str]) -> Vec<String> {
    caps.iter()
        .flat_map(|cap| ["--cap-add".to_string(), cap.to_string()])
        .collect()
}

fn args<'a>(parts: &[&'a [&'a str]]) -> Vec<&'a str> {
    parts.iter().flat_map(|p| p.iter().copied()).collect()
}

// ---------------------------------------------------------------------------------------------
// The tests

/// The README's run command (docker/cordon-run) starts the real Claude Code CLI behind the fence:
/// `claude --dangerously-skip-permissions -p ...` completes against the Messages API mock at
/// http://api.anthropic.com (resolved by the world, allowed by the default `claude` profile).
#[test]
fn the_real_claude_cli_answers_through_the_fence() {
    if !privileged() {
        return;
    }
    let world = World::new();
    let workspace = world.dir.join(format!("ws-{}", world.id));
    std::fs::create_dir_all(&workspace).unwrap();
    let name = world.name("claude");
    let base = format!("ws-{}", world.id);
    let key = "sk-ant-e2e-dummy-key";
    let launcher = |dry_run: bool| {
        let mut cmd = Command::new(workspace_root().join("docker/cordon-run"));
        cmd.current_dir(&workspace)
            .env("DOCKER", &world.s.docker)
            .env("ANTHROPIC_API_KEY", key)
            .args(["--image", &world.s.image, "--name", &name])
            .args(["-e", "ANTHROPIC_BASE_URL=http://api.anthropic.com"])
            .arg(format!("--docker-arg=--network={}", world.net))
            .arg(format!("--docker-arg=--dns={}", world.dns_ip()));
        if dry_run {
            cmd.arg("--dry-run");
        }
        cmd.args([
            "claude",
            "--dangerously-skip-permissions",
            "-p",
            "Say hello",
        ]);
        cmd
    };
    // The key goes by name only, never on the docker command line.
    let dry = must(launcher(true), MINUTE).stdout;
    assert!(
        dry.contains(" -e ANTHROPIC_API_KEY ") && !dry.contains(key),
        "{dry}"
    );
    eprintln!("cordon-run → {dry}");

    let out = run_for(launcher(false), 3 * MINUTE);
    // cordon-run's per-project ~/.claude volume.
    let mut ls = world.docker();
    ls.args([
        "volume",
        "ls",
        "-q",
        "--filter",
        &format!("name=cordon-home-{base}-"),
    ]);
    world.volumes.lock().unwrap().extend(
        run_for(ls, MINUTE)
            .stdout
            .split_whitespace()
            .map(String::from),
    );
    eprintln!(
        "claude exited {:?} after {:.1}s\n{}",
        out.code,
        out.elapsed.as_secs_f64(),
        out.stderr
    );
    assert_eq!(
        out.code,
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        out.stdout,
        out.stderr
    );
    assert!(
        out.stdout.contains("cordon-e2e-reply"),
        "the mock's reply: {}",
        out.stdout
    );
    assert!(out.stderr.contains("cordon: fence ready"), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("cordon: starting claude as node (uid 1000"),
        "{}",
        out.stderr
    );
    let mock = world.mock_log();
    assert!(
        mock.contains("POST /v1/messages"),
        "the mock saw no request:\n{mock}"
    );
    assert_eq!(world.volumes.lock().unwrap().len(), 1, "one HOME volume");
}

#[test]
fn verdicts_hold_with_dockers_embedded_dns() {
    if !privileged() {
        return;
    }
    let world = World::new();
    let c = world.start(
        "embedded",
        Dns::Embedded,
        &args(&[&CAPS, &[&world.s.image, "sleep", "infinity"]]),
    );
    world.wait_log(&c, "cordon: starting sleep as node", 1);
    let resolv = world.exec("node", &c, &["cat", "/etc/resolv.conf"]).stdout;
    assert!(resolv.contains("nameserver 127.0.0.11"), "{resolv}");
    world.assert_fenced(&c, Dns::Embedded);
}

#[test]
fn verdicts_hold_with_a_resolv_conf_naming_the_resolver() {
    if !privileged() {
        return;
    }
    let world = World::new();
    let c = world.start(
        "mounted",
        Dns::Mounted,
        &args(&[&CAPS, &[&world.s.image, "sleep", "infinity"]]),
    );
    world.wait_log(&c, "cordon: starting sleep as node", 1);
    let resolv = world.exec("node", &c, &["cat", "/etc/resolv.conf"]).stdout;
    assert_eq!(resolv.trim(), format!("nameserver {}", world.dns_ip()));
    world.assert_fenced(&c, Dns::Mounted);
}

/// `docker stop` ends the container within 2 s with the agent's status: 143 for an agent killed
/// by SIGTERM, the agent's own code when it traps SIGTERM.
#[test]
fn docker_stop_ends_within_two_seconds_with_the_agents_status() {
    if !privileged() {
        return;
    }
    let world = World::new();
    let image = world.s.image.as_str();
    let dies = world.start(
        "stop-dies",
        Dns::Embedded,
        &args(&[&CAPS, &[image, "sleep", "infinity"]]),
    );
    let traps = world.start(
        "stop-traps",
        Dns::Embedded,
        &args(&[
            &CAPS,
            &[
                image,
                "/bin/sh",
                "-c",
                "trap 'exit 7' TERM; while :; do sleep 1 & wait $!; done",
            ],
        ]),
    );
    world.wait_log(&dies, "cordon: starting sleep as node", 1);
    world.wait_log(&traps, "cordon: starting /bin/sh as node", 1);
    for (c, code) in [(&dies, "143"), (&traps, "7")] {
        let out = world.docker_must(&["stop", c]);
        assert!(
            out.elapsed < Duration::from_secs(2),
            "docker stop {c} took {:?}",
            out.elapsed
        );
        assert_eq!(
            world.inspect(c, "{{.State.ExitCode}}"),
            code,
            "{c}: {}",
            world.logs(c)
        );
        eprintln!(
            "docker stop {c}: {:.2}s, exit {code}",
            out.elapsed.as_secs_f64()
        );
    }
}

/// `docker restart` starts cordon again in a fresh network namespace on the same filesystem: the
/// fence is applied again without errors and holds.
#[test]
fn docker_restart_reapplies_the_fence() {
    if !privileged() {
        return;
    }
    let world = World::new();
    let c = world.start(
        "restart",
        Dns::Embedded,
        &args(&[&CAPS, &[&world.s.image, "sleep", "infinity"]]),
    );
    world.wait_log(&c, "cordon: starting sleep as node", 1);
    let out = world.docker_must(&["restart", c.as_str()]);
    eprintln!("docker restart: {:.2}s", out.elapsed.as_secs_f64());
    let logs = world.wait_log(&c, "cordon: starting sleep as node", 2);
    assert_eq!(logs.matches("cordon: fence ready").count(), 2, "{logs}");
    assert_eq!(
        logs.matches("cordon: self-test passed").count(),
        2,
        "{logs}"
    );
    let noise: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("error") || l.contains("warn") || l.contains("WARN"))
        .collect();
    assert!(
        noise.is_empty(),
        "errors or warnings across the restart:\n{logs}"
    );
    world.assert_fenced(&c, Dns::Embedded);
}

/// Without NET_ADMIN cordon cannot fence: it exits at once with status 77 and one line naming
/// the fix, and the agent never runs.
#[test]
fn without_net_admin_it_exits_at_once_and_the_agent_never_runs() {
    if !privileged() {
        return;
    }
    let world = World::new();
    let mark = format!("{}:/mark", world.dir.join("mark").display());
    let run = |caps: &[&str], file: &str| {
        let name = world.name(&format!("nocap-{file}"));
        let mut cmd = world.docker();
        cmd.args(["run", "--rm", "--name", &name])
            .args(world.dns_args(Dns::Embedded));
        cmd.args(caps).args([
            "-v",
            &mark,
            &world.s.image,
            "touch",
            &format!("/mark/{file}"),
        ]);
        run_for(cmd, MINUTE)
    };
    let out = run(&[], "without");
    eprintln!(
        "without NET_ADMIN: {:?} in {:.2}s: {}",
        out.code,
        out.elapsed.as_secs_f64(),
        out.stderr
    );
    assert_eq!(out.code, Some(77), "{}", out.both());
    assert!(
        out.elapsed < Duration::from_secs(5),
        "took {:?}",
        out.elapsed
    );
    assert_eq!(out.stderr.lines().count(), 1, "one line: {}", out.stderr);
    assert!(
        out.stderr
            .contains("run the container with --cap-add NET_ADMIN ("),
        "{}",
        out.stderr
    );
    assert!(
        !world.dir.join("mark/without").exists(),
        "the agent ran without a fence"
    );

    // The same command with the capabilities does run (the marker is a valid witness).
    let out = run(&CAPS, "with");
    assert!(out.ok(), "{}", out.both());
    assert!(world.dir.join("mark/with").exists());
}

/// VS Code keeps the ENTRYPOINT and replaces CMD with its keep-alive shell: cordon fences, then
/// runs it as node; the editor's `docker exec -u node` sessions are behind the fence.
#[test]
fn devcontainer_keep_alive_cmd_runs_as_node_behind_the_fence() {
    if !privileged() {
        return;
    }
    let world = World::new();
    // VS Code's keep-alive (overrideCommand with the image's ENTRYPOINT kept).
    let keep_alive = "echo Container started; trap \"exit 0\" 15; exec \"$@\"; while sleep 1 & wait $!; do :; done";
    let c = world.start(
        "vscode",
        Dns::Embedded,
        &args(&[&CAPS, &[&world.s.image, "/bin/sh", "-c", keep_alive, "-"]]),
    );
    let logs = world.wait_log(&c, "cordon: starting /bin/sh as node", 1);
    world.wait_log(&c, "Container started", 1);
    assert!(logs.contains("cordon: fence ready"), "{logs}");
    world.assert_agent_is_node(&c, "sh");
    world.assert_fenced(&c, Dns::Embedded);
    // The keep-alive traps SIGTERM with `exit 0`: docker stop gives that status, at once.
    let out = world.docker_must(&["stop", c.as_str()]);
    assert!(
        out.elapsed < Duration::from_secs(2),
        "docker stop took {:?}",
        out.elapsed
    );
    assert_eq!(world.inspect(&c, "{{.State.ExitCode}}"), "0");
}

/// The devcontainer CLI with docker/devcontainer/devcontainer.json ("overrideCommand": false):
/// `--entrypoint /bin/sh IMAGE -c '<its script>' - <image ENTRYPOINT> <image CMD>`, i.e. the shell
/// execs `cordon sleep infinity`; cordon becomes PID 1 and runs the keep-alive as node.
#[test]
fn devcontainer_cli_form_runs_cordon_as_pid1_and_the_keep_alive_as_node() {
    if !privileged() {
        return;
    }
    let world = World::new();
    let image = world.s.devcontainer_image.as_str();
    // What the devcontainer CLI appends: the image's ENTRYPOINT and CMD.
    let config = world.docker_must(&[
        "image",
        "inspect",
        "-f",
        "{{range .Config.Entrypoint}}{{println .}}{{end}}{{range .Config.Cmd}}{{println .}}{{end}}",
        image,
    ]);
    let tail: Vec<&str> = config.stdout.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(tail, ["/usr/local/bin/cordon", "sleep", "infinity"]);
    // The devcontainer CLI's script (src/spec-node/singleContainer.ts), no custom entrypoints.
    let script = "echo Container started\ntrap \"exit 0\" 15\n\nexec \"$@\"\nwhile sleep 1 & wait $!; do :; done";
    let workspace = world.dir.join("workspace");
    std::fs::create_dir_all(&workspace).unwrap();
    let volume = format!("{}-claude", world.net);
    world.volumes.lock().unwrap().push(volume.clone());
    let mut parts = vec![
        "--mount".to_string(),
        format!("type=bind,src={},dst=/workspace", workspace.display()),
        "--mount".into(),
        format!("source={volume},target=/home/node/.claude,type=volume"),
        "-e".into(),
        "CORDON_PROFILE=vscode".into(),
    ];
    // The example's runArgs, as the CLI passes them.
    let config_text =
        std::fs::read_to_string(workspace_root().join("docker/devcontainer/devcontainer.json"))
            .unwrap();
    let run_args = config_text
        .lines()
        .find_map(|l| l.trim().strip_prefix("\"runArgs\":"))
        .expect("runArgs in devcontainer.json");
    let run_args: Vec<String> = run_args
        .split('"')
        .skip(1)
        .step_by(2)
        .map(String::from)
        .collect();
    assert!(
        run_args.contains(&"--security-opt=no-new-privileges".to_string()),
        "{run_args:?}"
    );
    parts.extend(run_args);
    parts.extend([
        "--entrypoint".into(),
        "/bin/sh".into(),
        image.into(),
        "-c".into(),
        script.into(),
        "-".into(),
    ]);
    parts.extend(tail.iter().map(|s| s.to_string()));
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    let c = world.start("devcontainer", Dns::Embedded, &parts);
    let logs = world.wait_log(&c, "cordon: starting sleep as node", 1);
    assert!(logs.starts_with("Container started"), "{logs}");
    world.assert_agent_is_node(&c, "sleep");
    world.assert_fenced(&c, Dns::Embedded);
    // A terminal (docker exec as node) gets no_new_privs too: no setuid file can raise it.
    let status = world.exec("node", &c, &["cat", "/proc/self/status"]);
    assert!(
        status.stdout.lines().any(|l| l == "NoNewPrivs:\t1"),
        "{}",
        status.stdout
    );
    // The `vscode` profile from containerEnv is in the allowlist (its names are the world's
    // allowed address too, so this shows the profile was read without a separate address).
    assert!(
        logs.contains("resolved 6/6 names"),
        "claude + vscode profiles: {logs}"
    );
    let out = world.docker_must(&["stop", c.as_str()]);
    assert!(
        out.elapsed < Duration::from_secs(2),
        "docker stop took {:?}",
        out.elapsed
    );
    assert_eq!(world.inspect(&c, "{{.State.ExitCode}}"), "143");
}

/// An existing devcontainer with cordon dropped in as /usr/local/bin/init-firewall.sh
/// (docker/devcontainer-dropin): the container runs as node from the start, and
/// `sudo /usr/local/bin/init-firewall.sh` (its postStartCommand) fences it. The sudoers rule
/// allows exactly that, without arguments.
#[test]
fn dropin_init_firewall_via_sudo_fences_the_container() {
    if !privileged() {
        return;
    }
    let world = World::new();
    // VS Code with overrideCommand (the default): its keep-alive replaces the entrypoint.
    let script = "echo Container started\ntrap \"exit 0\" 15\n\nexec \"$@\"\nwhile sleep 1 & wait $!; do :; done";
    let c = world.start(
        "dropin",
        Dns::Embedded,
        &args(&[
            &["--user", "node"],
            &CAPS,
            &[
                "--entrypoint",
                "/bin/sh",
                &world.s.dropin_image,
                "-c",
                script,
                "-",
            ],
        ]),
    );
    world.wait_log(&c, "Container started", 1);
    let blocked = format!("tcp:{}:443", world.a("20"));
    let before = world.probe(&c, std::slice::from_ref(&blocked));
    assert_eq!(
        before[&blocked].0, "open",
        "no fence before the postStartCommand"
    );
    // Flows the agent opens before the postStartCommand: a TCP and a UDP stream to the blocked
    // address, one socket each, a line every 100 ms (bash's /dev/tcp and /dev/udp). The TCP one
    // leaves a mark when a write fails.
    let streams = format!(
        "trap '' PIPE; exec 3<>/dev/tcp/{b}/443 4>/dev/udp/{b}/443; while echo x >&3; do echo x >&4; sleep \
         0.1; done 2>/dev/null; touch /tmp/tcp-ended; while :; do echo x >&4; sleep 0.1; done \
         2>/dev/null",
        b = world.a("20")
    );
    world.docker_must(&[
        "exec",
        "-d",
        "-u",
        "node",
        c.as_str(),
        "bash",
        "-c",
        &streams,
    ]);
    let datagrams = || {
        let needle = format!("udp {}:443 ", world.a("20"));
        std::fs::read_to_string(world.dir.join("listen.log"))
            .unwrap_or_default()
            .matches(&needle)
            .count()
    };
    let tcp_ended = || {
        world
            .exec("root", &c, &["test", "-e", "/tmp/tcp-ended"])
            .ok()
    };
    std::thread::sleep(Duration::from_millis(600));
    assert!(
        datagrams() > 2,
        "the UDP stream reaches the world before the fence"
    );
    assert!(!tcp_ended(), "the TCP stream is alive before the fence");

    // The postStartCommand, as the container's user (node).
    let out = world.exec("node", &c, &["sudo", "/usr/local/bin/init-firewall.sh"]);
    eprintln!(
        "sudo init-firewall.sh: {:?} in {:.2}s\n{}",
        out.code,
        out.elapsed.as_secs_f64(),
        out.stderr
    );
    assert!(out.ok(), "{}", out.both());
    assert!(
        out.stderr.contains("resolved 15/15 names"),
        "anthropic-devcontainer profile: {}",
        out.stderr
    );
    assert!(out.stderr.contains("cordon: fence ready"), "{}", out.stderr);
    world.assert_fenced(&c, Dns::Embedded);
    // The streams from before the fence are judged again at their next packet.
    let fenced_at = datagrams();
    std::thread::sleep(Duration::from_millis(600));
    assert!(
        datagrams() <= fenced_at + 1,
        "the UDP stream from before the fence went on: {fenced_at} then {}",
        datagrams()
    );
    assert!(tcp_ended(), "the TCP stream from before the fence went on");

    // node cannot widen it: arguments are not in the sudoers rule, and no other rule exists.
    let widen = world.exec(
        "node",
        &c,
        &[
            "sudo",
            "/usr/local/bin/init-firewall.sh",
            "--allow",
            "evil.test",
        ],
    );
    assert_eq!(widen.code, Some(1), "{}", widen.both());
    assert!(
        widen.stderr.contains("password is required") || widen.stderr.contains("not allowed"),
        "sudo refuses: {}",
        widen.stderr
    );
    let other = world.exec("node", &c, &["sudo", "-n", "true"]);
    assert_eq!(other.code, Some(1), "{}", other.both());
    let after = world.probe(
        &c,
        &[blocked.clone(), "dns:evil.test@127.0.0.11".to_string()],
    );
    assert_eq!(
        after[&blocked].0, "refused",
        "evil.test's address stays blocked"
    );
    assert_eq!(after["dns:evil.test@127.0.0.11"].1, world.a("20"));
    // The postStartCommand runs again on every start: idempotent.
    let again = world.exec("node", &c, &["sudo", "/usr/local/bin/init-firewall.sh"]);
    assert!(again.ok(), "{}", again.both());
    world.assert_fenced(&c, Dns::Embedded);
}

/// The drop-in shape keeps the container running whatever cordon does: when `sudo
/// init-firewall.sh` refuses (here the container lacks NET_RAW, which the set match needs), it
/// still leaves egress denied, and says so in its one error line.
#[test]
fn dropin_refusal_leaves_the_running_container_denied() {
    if !privileged() {
        return;
    }
    let world = World::new();
    let c = world.start(
        "dropin-no-raw",
        Dns::Embedded,
        &[
            "--user",
            "node",
            "--cap-add",
            "NET_ADMIN",
            "--cap-drop",
            "NET_RAW",
            "--entrypoint",
            "/bin/sh",
            &world.s.dropin_image,
            "-c",
            "echo Container started; exec sleep infinity",
        ],
    );
    world.wait_log(&c, "Container started", 1);
    let blocked = format!("tcp:{}:443", world.a("20"));
    let allowed = format!("tcp:{}:443", world.a("10"));
    let before = world.probe(&c, std::slice::from_ref(&blocked));
    assert_eq!(
        before[&blocked].0, "open",
        "no fence before init-firewall.sh"
    );

    let out = world.exec("node", &c, &["sudo", "/usr/local/bin/init-firewall.sh"]);
    eprintln!("sudo init-firewall.sh: {:?}\n{}", out.code, out.stderr);
    assert_eq!(out.code, Some(77), "{}", out.both());
    let errors: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("cordon: error:"))
        .collect();
    assert_eq!(errors.len(), 1, "{}", out.stderr);
    assert!(
        errors[0].contains("--cap-add NET_RAW")
            && errors[0].ends_with("[egress is now denied except loopback]"),
        "{}",
        errors[0]
    );
    let after = world.probe(&c, &[blocked.clone(), allowed.clone()]);
    for spec in [&blocked, &allowed] {
        assert_ne!(after[spec].0, "open", "{spec} after the refusal");
    }
}

/// The image's HEALTHCHECK (`cordon check --quiet`) and `cordon check` by hand, as root and as
/// node, report that the sandbox holds once the agent runs; in both DNS shapes.
#[test]
fn cordon_check_and_the_healthcheck_report_healthy() {
    if !privileged() {
        return;
    }
    let world = World::new();
    let mut failures = Vec::new();
    let mut containers = Vec::new();
    for (tag, dns) in [
        ("health-embedded", Dns::Embedded),
        ("health-mounted", Dns::Mounted),
    ] {
        // Only the interval is shortened (the Dockerfile's is 30 s); command and retries are the image's.
        let c = world.start(
            tag,
            dns,
            &args(&[
                &CAPS,
                &[
                    "--health-interval",
                    "1s",
                    &world.s.image,
                    "sleep",
                    "infinity",
                ],
            ]),
        );
        containers.push((c, dns));
    }
    for (c, dns) in &containers {
        world.wait_log(c, "cordon: starting sleep as node", 1);
        for user in ["root", "node"] {
            let out = world.exec(user, c, &["cordon", "check"]);
            eprintln!(
                "{dns:?}: cordon check as {user}: {:?}\n{}",
                out.code,
                out.both()
            );
            if !out.ok() {
                failures.push(format!(
                    "{dns:?}: `docker exec -u {user} C cordon check` exited {:?}:\n{}",
                    out.code,
                    out.both()
                ));
            }
        }
    }
    for (c, dns) in &containers {
        // Failures during the 15 s start period do not count; a success turns it healthy at once.
        let deadline = Instant::now() + Duration::from_secs(25);
        let status = loop {
            let status = world.inspect(c, "{{.State.Health.Status}}");
            if status != "starting" || Instant::now() > deadline {
                break status;
            }
            std::thread::sleep(Duration::from_millis(250));
        };
        if status != "healthy" {
            failures.push(format!(
                "{dns:?}: health {status}; exit codes of the checks: {}; the first one said:\n{}",
                world.inspect(c, "{{range .State.Health.Log}}{{.ExitCode}} {{end}}"),
                world.inspect(c, "{{with index .State.Health.Log 0}}{{.Output}}{{end}}")
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));

    // A surgical tamper (one blocked address added to an allowed set, as a process holding
    // NET_ADMIN could) leaves every structural check intact; the record catches it and the
    // HEALTHCHECK turns unhealthy (three failed checks, 1 s apart).
    let (c, _) = &containers[0];
    let blocked = world.a("20");
    world.docker_must(&[
        "exec",
        "-u",
        "root",
        c,
        "ipset",
        "add",
        "cordon4-hosts",
        &blocked,
    ]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        let status = world.inspect(c, "{{.State.Health.Status}}");
        if status != "healthy" || Instant::now() > deadline {
            break status;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let said = world.inspect(c, "{{range .State.Health.Log}}{{.Output}}{{end}}");
    assert_eq!(status, "unhealthy", "{said}");
    let check = world.exec("root", c, &["cordon", "check", "--quiet"]);
    assert_eq!(check.code, Some(1), "{}", check.both());
    assert!(
        check
            .stdout
            .contains(&format!("set cordon4-hosts gained {blocked}")),
        "{}",
        check.stdout
    );
}

/// The agent plants firewall tools where the container's PATH looks first: a directory it owns
/// (~/.local/bin) and a relative entry (node_modules/.bin, resolved against the working
/// directory). Neither the HEALTHCHECK (`cordon check` as root) nor the entrypoint after a
/// `docker restart` runs them; the fence holds and the container stays healthy.
#[test]
fn tools_the_agent_plants_on_path_never_run_as_root() {
    if !privileged() {
        return;
    }
    let world = World::new();
    let path = "PATH=/home/node/.local/bin:node_modules/.bin:/usr/local/sbin:/usr/local/bin:\
                /usr/sbin:/usr/bin:/sbin:/bin";
    let c = world.start(
        "planted",
        Dns::Embedded,
        &args(&[
            &CAPS,
            &[
                "-e",
                path,
                "-w",
                "/tmp",
                "--health-interval",
                "1s",
                &world.s.image,
                "sleep",
                "infinity",
            ],
        ]),
    );
    world.wait_log(&c, "cordon: starting sleep as node", 1);
    let plant = "for dir in /home/node/.local/bin /tmp/node_modules/.bin; do mkdir -p $dir; \
                 for tool in ipset iptables iptables-nft-restore ip6tables-nft-restore \
                 iptables-nft-save ip6tables-nft-save iptables-legacy-save xtables-nft-multi; do \
                 printf '#!/bin/sh\\ntouch /tmp/planted-ran\\n' > $dir/$tool; chmod 755 \
                 $dir/$tool; done; done";
    let planted = world.exec("node", &c, &["sh", "-c", plant]);
    assert!(planted.ok(), "{}", planted.both());
    // Let the HEALTHCHECK run a few times with the planted tools in place.
    std::thread::sleep(Duration::from_secs(3));
    world.docker_must(&["restart", c.as_str()]);
    world.wait_log(&c, "cordon: starting sleep as node", 2);
    std::thread::sleep(Duration::from_secs(2));
    let ran = world.exec("root", &c, &["test", "-e", "/tmp/planted-ran"]);
    assert_eq!(ran.code, Some(1), "a planted tool ran as root");
    world.assert_fenced(&c, Dns::Embedded);
    let deadline = Instant::now() + Duration::from_secs(15);
    let health = loop {
        let status = world.inspect(&c, "{{.State.Health.Status}}");
        if status != "starting" || Instant::now() > deadline {
            break status;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(health, "healthy");
}

/// harden strips only the root filesystem: a setuid file on a volume stays, and `cordon check`
/// names it. It fails while an exec session runs without no_new_privs (the agent could drive it
/// through ptrace to run the file); under `--security-opt no-new-privileges` the file is inert
/// and the check says so.
#[test]
fn check_names_setuid_files_on_other_mounts() {
    if !privileged() {
        return;
    }
    let world = World::new();
    let volume = format!("{}-suid", world.net);
    world.volumes.lock().unwrap().push(volume.clone());
    let mount = format!("type=volume,src={volume},dst=/data");
    world.docker_must(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--mount",
        &mount,
        "--entrypoint",
        "/bin/sh",
        &world.s.image,
        "-c",
        "cp /bin/true /data/suid && chmod 4755 /data/suid",
    ]);
    for (tag, extra) in [
        ("suid-plain", None),
        ("suid-nnp", Some("no-new-privileges")),
    ] {
        let mut parts: Vec<&str> = CAPS.to_vec();
        parts.extend(["--mount", &mount]);
        if let Some(option) = extra {
            parts.extend(["--security-opt", option]);
        }
        parts.extend([world.s.image.as_str(), "sleep", "infinity"]);
        let c = world.start(tag, Dns::Embedded, &parts);
        world.wait_log(&c, "cordon: starting sleep as node", 1);
        // An editor's terminal: an exec session of the agent's user.
        world.docker_must(&["exec", "-d", "-u", "node", c.as_str(), "sleep", "60"]);
        let check = world.exec("root", &c, &["cordon", "check"]);
        let line = check
            .stdout
            .lines()
            .find(|l| l.contains(" other mounts: "))
            .unwrap_or_default()
            .to_string();
        assert!(
            line.contains("/data/suid (setuid root"),
            "{tag}: {}",
            check.stdout
        );
        match extra {
            None => {
                assert!(line.starts_with("FAIL "), "{tag}: {line}");
                assert_eq!(check.code, Some(1), "{tag}");
            }
            Some(_) => assert!(
                line.starts_with("note ") && line.contains("inert"),
                "{tag}: {line}"
            ),
        }
    }

    // A file --strip-mounts cannot strip (a read-only mount) stops the start before the agent.
    let read_only = format!("{mount},readonly");
    let mut parts: Vec<&str> = CAPS.to_vec();
    parts.extend(["--mount", &read_only, world.s.image.as_str()]);
    parts.extend(["--strip-mounts", "sh", "-c", "echo agent-ran"]);
    let c = world.start("suid-strip-ro", Dns::Embedded, &parts);
    let mut wait = world.docker();
    wait.args(["wait", c.as_str()]);
    let code = must(wait, MINUTE).stdout.trim().to_string();
    let logs = world.logs(&c);
    assert_ne!(code, "0", "{logs}");
    assert!(
        logs.contains("--strip-mounts: cannot remove") && logs.contains("/data/suid"),
        "{logs}"
    );
    assert!(!logs.contains("agent-ran"), "{logs}");

    // --strip-mounts strips the file before the agent starts (this changes the volume: last).
    let mut parts: Vec<&str> = CAPS.to_vec();
    parts.extend(["--mount", &mount, world.s.image.as_str()]);
    parts.extend(["--strip-mounts", "sleep", "infinity"]);
    let c = world.start("suid-strip", Dns::Embedded, &parts);
    world.wait_log(&c, "cordon: starting sleep as node", 1);
    let logs = world.logs(&c);
    assert!(
        logs.contains("--strip-mounts: ") && logs.contains("stripped /data/suid (setuid root"),
        "{logs}"
    );
    let mode = world.exec("root", &c, &["stat", "-c", "%a", "/data/suid"]);
    assert_eq!(mode.stdout.trim(), "755");
    world.docker_must(&["exec", "-d", "-u", "node", c.as_str(), "sleep", "60"]);
    let check = world.exec("root", &c, &["cordon", "check"]);
    assert!(
        check
            .stdout
            .lines()
            .any(|l| l.starts_with("ok    other mounts: ")),
        "{}",
        check.stdout
    );
}

/// The shapes users bring, on Docker's ordinary IPv4-only network (disable_ipv6=1 in every
/// container): embedded DNS, the default bridge's resolv.conf, `--read-only` with the README's
/// tmpfs mounts, `--cap-drop ALL` with the README's minimum, `--init`, and the legacy backend.
/// Each must start the agent behind a verified fence that holds, with `cordon check` ok as node.
#[test]
fn every_container_shape_works_on_an_ipv4_only_network() {
    if !privileged() {
        return;
    }
    let world = World::ipv4_only();
    let image = world.s.image.as_str();
    let minimum: Vec<String> = ["--cap-drop".to_string(), "ALL".into()]
        .into_iter()
        .chain(cap_adds(&MINIMUM))
        .collect();
    let minimum: Vec<&str> = minimum.iter().map(String::as_str).collect();
    let cells: Vec<(&str, Dns, Vec<&str>)> = vec![
        ("embedded", Dns::Embedded, CAPS.to_vec()),
        ("default-bridge", Dns::Mounted, CAPS.to_vec()),
        (
            "read-only",
            Dns::Embedded,
            args(&[
                &CAPS,
                &["--read-only", "--tmpfs", "/run", "--tmpfs", "/tmp"],
            ]),
        ),
        ("cap-minimum", Dns::Embedded, minimum),
        ("init", Dns::Embedded, args(&[&CAPS, &["--init"]])),
        (
            "legacy",
            Dns::Embedded,
            args(&[&CAPS, &["-e", "CORDON_IPTABLES=legacy"]]),
        ),
    ];
    let started: Vec<(&str, Dns, String)> = cells
        .into_iter()
        .map(|(tag, dns, options)| {
            let command = [image, "sleep", "infinity"];
            let run = args(&[&options, &command]);
            (tag, dns, world.start(&format!("v4-{tag}"), dns, &run))
        })
        .collect();
    let mut failures = Vec::new();
    for (tag, dns, c) in &started {
        let logs = world.wait_log(c, "cordon: starting sleep as node", 1);
        if !logs.contains("IPv6 is off in this namespace") {
            failures.push(format!(
                "{tag}: the report does not say IPv6 is off:\n{logs}"
            ));
        }
        let mut problems = world.fence_problems(c, *dns);
        problems.extend(world.check_problems(c, "node"));
        problems.extend(world.check_problems(c, "root"));
        match *tag {
            "init" => {
                let procs = world.processes(c);
                let pid1 = procs.iter().find(|p| p.0 == 1).map(|p| p.1.as_str());
                if pid1 != Some("docker-init") || !procs.iter().any(|p| p.1 == "cordon") {
                    problems.push(format!(
                        "PID 1 is not docker-init with cordon below: {procs:#?}"
                    ));
                }
            }
            "legacy" if !logs.contains("(legacy iptables)") => {
                problems.push(format!("not loaded with iptables-legacy:\n{logs}"));
            }
            _ => {}
        }
        failures.extend(problems.into_iter().map(|p| format!("{tag}: {p}")));
    }
    // `docker stop` under --init: docker-init forwards SIGTERM to cordon, which forwards it on;
    // well before Docker's 10 s SIGKILL (the bound is loose: other suites run meanwhile).
    let init = &started.iter().find(|cell| cell.0 == "init").unwrap().2;
    let out = world.docker_must(&["stop", init.as_str()]);
    if out.elapsed > Duration::from_secs(5) || world.inspect(init, "{{.State.ExitCode}}") != "143" {
        failures.push(format!(
            "init: docker stop took {:?}, exit {}",
            out.elapsed,
            world.inspect(init, "{{.State.ExitCode}}")
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// What cannot work is refused at once, in one line that names the fix, and the agent never
/// runs: `--network none`, `--cap-drop ALL` (alone, and with one capability short of the
/// minimum), a mistyped option, the legacy backend on a read-only /run.
#[test]
fn what_cannot_work_is_refused_at_once_with_the_fix() {
    if !privileged() {
        return;
    }
    let world = World::ipv4_only();
    let mark = format!("{}:/mark", world.dir.join("mark").display());
    let refused = |tag: &str, options: &[&str], cordon: &[&str]| -> Out {
        let name = world.name(tag);
        let mut cmd = world.docker();
        cmd.args(["run", "--rm", "--name", &name]);
        if !options.contains(&"--network") {
            cmd.args(world.dns_args(Dns::Embedded));
        }
        cmd.args(options)
            .args(["-v", &mark, &world.s.image])
            .args(cordon)
            .args(["--", "touch", &format!("/mark/{tag}")]);
        let out = run_for(cmd, MINUTE);
        eprintln!(
            "{tag}: {:?} in {:.2}s: {}",
            out.code,
            out.elapsed.as_secs_f64(),
            out.stderr
        );
        assert!(
            !world.dir.join("mark").join(tag).exists(),
            "{tag}: the agent ran"
        );
        assert!(
            out.elapsed < Duration::from_secs(5),
            "{tag}: took {:?}",
            out.elapsed
        );
        assert_eq!(
            out.stderr.lines().count(),
            1,
            "{tag}: one line: {}",
            out.stderr
        );
        out
    };

    let none = refused(
        "none",
        &["--network", "none", "--cap-add", "NET_ADMIN"],
        &[],
    );
    assert_eq!(none.code, Some(77));
    assert!(none.stderr.contains("--network none"), "{}", none.stderr);

    let all_dropped = refused("cap-drop-all", &["--cap-drop", "ALL"], &[]);
    assert_eq!(all_dropped.code, Some(77));
    let fix = cap_adds(&MINIMUM).join(" ");
    assert!(
        all_dropped
            .stderr
            .contains(&format!("run the container with {fix} (")),
        "the whole minimum, in one line: {}",
        all_dropped.stderr
    );

    let short: Vec<&str> = MINIMUM
        .iter()
        .copied()
        .filter(|c| *c != "SETPCAP")
        .collect();
    let short: Vec<String> = ["--cap-drop".to_string(), "ALL".into()]
        .into_iter()
        .chain(cap_adds(&short))
        .collect();
    let short: Vec<&str> = short.iter().map(String::as_str).collect();
    let one_short = refused("cap-one-short", &short, &[]);
    assert_eq!(one_short.code, Some(77));
    assert!(
        one_short
            .stderr
            .contains("SETPCAP (emptying the agent's capability sets")
            && one_short.stderr.contains("with --cap-add SETPCAP ("),
        "{}",
        one_short.stderr
    );

    let typo = refused("typo", &CAPS, &["--alow", "example.com"]);
    assert_eq!(typo.code, Some(64));
    assert!(typo.stderr.contains("'--allow'"), "{}", typo.stderr);

    let legacy_ro = refused(
        "legacy-read-only",
        &args(&[&CAPS, &["--read-only", "-e", "CORDON_IPTABLES=legacy"]]),
        &[],
    );
    assert_eq!(legacy_ro.code, Some(69));
    assert!(
        legacy_ro.stderr.contains("--tmpfs /run"),
        "{}",
        legacy_ro.stderr
    );
}

/// `docker/cordon-run` runs the agent as the owner of the current directory when that is not
/// node (`--uid-from /workspace`), with a HOME volume it can write, and passes cordon's own
/// options through.
#[test]
fn cordon_run_runs_the_agent_as_the_workspace_owner() {
    if !privileged() {
        return;
    }
    let world = World::ipv4_only();
    let workspace = world.dir.join(format!("ws-{}", world.id));
    std::fs::create_dir_all(&workspace).unwrap();
    std::os::unix::fs::chown(&workspace, Some(2345), Some(2345)).unwrap();
    let base = format!("ws-{}", world.id);
    let run = |tag: &str| {
        let mut cmd = Command::new(workspace_root().join("docker/cordon-run"));
        cmd.current_dir(&workspace)
            .env("DOCKER", &world.s.docker)
            .args(["--image", &world.s.image, "--name", &world.name(tag)])
            .arg(format!("--docker-arg=--network={}", world.net))
            .arg(format!("--docker-arg=--dns={}", world.dns_ip()))
            // cordon's own options, passed through.
            .args(["-q", "--strict", "--grace", "1"])
            .args([
                "--",
                "sh",
                "-c",
                "id -u; touch /workspace/made-by-agent ~/.claude/ok ~/.claude.json && echo wrote",
            ]);
        run_for(cmd, 2 * MINUTE)
    };
    let first = run("cordon-run-1");
    let mut ls = world.docker();
    ls.args([
        "volume",
        "ls",
        "-q",
        "--filter",
        &format!("name=cordon-home-{base}-"),
    ]);
    world.volumes.lock().unwrap().extend(
        run_for(ls, MINUTE)
            .stdout
            .split_whitespace()
            .map(String::from),
    );
    assert!(first.ok(), "{}", first.both());
    assert_eq!(
        first.stdout.lines().collect::<Vec<_>>(),
        ["2345", "wrote"],
        "{}",
        first.both()
    );
    assert!(
        !first.stderr.contains("cordon: starting"),
        "-q reached cordon: {}",
        first.stderr
    );
    let made = std::fs::metadata(workspace.join("made-by-agent")).unwrap();
    assert_eq!(
        (
            std::os::unix::fs::MetadataExt::uid(&made),
            std::os::unix::fs::MetadataExt::gid(&made)
        ),
        (2345, 2345)
    );
    assert_eq!(world.volumes.lock().unwrap().len(), 1, "one HOME volume");
    // The next start finds the renumbered HOME volume and works the same.
    let second = run("cordon-run-2");
    assert!(second.ok(), "{}", second.both());
    assert_eq!(second.stdout.lines().collect::<Vec<_>>(), ["2345", "wrote"]);
}

/// docker/cordon-run forwards cordon's options; the ones that take a value take the next word.
/// Its list of those must match `cordon --help`.
#[test]
fn cordon_run_knows_which_cordon_options_take_a_value() {
    let help = Command::new(support::cordon())
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    let launcher = std::fs::read_to_string(workspace_root().join("docker/cordon-run")).unwrap();
    // cordon-run handles these itself.
    let own = ["--allow", "--allowlist", "--profile", "--uid-from"];
    for line in help.lines().map(str::trim) {
        let Some(rest) = line
            .strip_prefix("--")
            .or_else(|| line.split_once(", --").map(|x| x.1))
        else {
            continue;
        };
        let Some((name, _)) = rest.split_once(" <") else {
            continue;
        };
        let option = format!("--{name}");
        if own.contains(&option.as_str()) {
            continue;
        }
        assert!(
            launcher.contains(&format!(" {option} |")) || launcher.contains(&format!(" {option})")),
            "docker/cordon-run does not know that {option} takes a value"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Podman, rootful and rootless (tests/docker/podman.sh prepares both)

/// How to call podman in one of its two modes.
struct Podman {
    rootless: bool,
    binary: String,
    user: (String, String),
    home: String,
}

impl Podman {
    fn both() -> [Podman; 2] {
        let s = setup();
        let mut prepare = script("podman.sh");
        prepare.args([s.image.as_str(), s.tools_image.as_str()]);
        let vars = assignments(&must(prepare, 10 * MINUTE).stdout);
        let var = |name: &str| {
            vars.get(name)
                .unwrap_or_else(|| panic!("podman.sh printed no {name}="))
                .clone()
        };
        let user = (var("ROOTLESS_UID"), var("ROOTLESS_GID"));
        [false, true].map(|rootless| Podman {
            rootless,
            binary: var("PODMAN"),
            user: user.clone(),
            home: var("ROOTLESS_HOME"),
        })
    }

    fn mode(&self) -> &'static str {
        if self.rootless {
            "rootless"
        } else {
            "rootful"
        }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = if self.rootless {
            let mut cmd = Command::new("setpriv");
            cmd.args([
                "--reuid",
                &self.user.0,
                "--regid",
                &self.user.1,
                "--init-groups",
            ])
            .arg(&self.binary)
            .current_dir(&self.home)
            .env("HOME", &self.home)
            .env("XDG_RUNTIME_DIR", format!("/run/user/{}", self.user.0));
            cmd
        } else {
            Command::new(&self.binary)
        };
        cmd.args(["--log-level=error", "--runtime", "runc"])
            .args(args);
        cmd
    }

    fn run(&self, args: &[&str]) -> Out {
        run_for(self.cmd(args), MINUTE)
    }

    /// `podman run -d` with the options every container here needs (see podman.sh).
    fn start(&self, name: &str, args: &[&str]) -> Out {
        let mut full = vec![
            "run",
            "-d",
            "--name",
            name,
            "--no-healthcheck",
            "--ulimit",
            "nofile=4096:4096",
            "--ulimit",
            "nproc=4096:4096",
        ];
        full.extend_from_slice(args);
        self.run(&full)
    }
}

/// Rootful and rootless Podman (4.3, Debian's) run the image unchanged: on an internal network
/// with the world's DNS, the agent starts behind a verified fence that holds, and `cordon check`
/// is ok as node.
#[test]
fn podman_rootful_and_rootless_run_the_image_unchanged() {
    if !privileged() {
        return;
    }
    let s = setup();
    let mut failures = Vec::new();
    for (n, podman) in Podman::both().iter().enumerate() {
        let mode = podman.mode();
        let tag = format!("cde-{}-p{n}", std::process::id());
        let p4 = format!(
            "10.217.{}",
            10 + (std::process::id() as usize * 3 + n) % 240
        );
        let dir = std::env::temp_dir().join(&tag);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // The world's root is the rootless user's uid outside: let it write its logs.
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .unwrap();
        let (world, sandbox) = (format!("{tag}-world"), format!("{tag}-sandbox"));
        let cleanup = || {
            podman.run(&["rm", "-f", "-t", "0", &world, &sandbox]);
            podman.run(&["network", "rm", "-f", &tag]);
        };
        cleanup();
        let created = podman.run(&[
            "network",
            "create",
            "--internal",
            "--subnet",
            &format!("{p4}.0/24"),
            &tag,
        ]);
        assert!(created.ok(), "{mode}: {}", created.both());
        // Rootful bridges are forwarded by this host, whose FORWARD policy Docker set to DROP.
        let bridge = podman.run(&["network", "inspect", "-f", "{{.NetworkInterface}}", &tag]);
        let bridge = bridge.stdout.trim().to_string();
        let forward = [
            "FORWARD",
            "-i",
            &bridge,
            "-o",
            &bridge,
            "-m",
            "comment",
            "--comment",
            &tag,
            "-j",
            "ACCEPT",
        ];
        if !podman.rootless {
            support::run("iptables", &[&["-I"][..], &forward].concat());
        }
        let testkit = format!("{}:/opt/testkit/testkit:ro", s.testkit.display());
        let world_sh = format!(
            "{}:/opt/e2e/world.sh:ro",
            workspace_root().join("tests/e2e/world.sh").display()
        );
        let out_dir = format!("{}:/out", dir.display());
        let started = podman.start(
            &world,
            &[
                "--network",
                &tag,
                "--ip",
                &format!("{p4}.2"),
                "--cap-add",
                "NET_ADMIN",
                "-v",
                &testkit,
                "-v",
                &world_sh,
                "-v",
                &out_dir,
                "--entrypoint",
                "/bin/sh",
                &s.tools_image,
                "/opt/e2e/world.sh",
                "/out",
                &p4,
                "-",
            ],
        );
        assert!(started.ok(), "{mode} world: {}", started.both());
        let deadline = Instant::now() + Duration::from_secs(20);
        while !["dns.ready", "listen.ready"]
            .iter()
            .all(|f| dir.join(f).exists())
        {
            assert!(
                Instant::now() < deadline,
                "{mode}: the world never got ready"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // The first container a fresh netavark (1.4) bridge connects after the world gets no ARP
        // answer from it (measured here, cordon aside: a plain probe container times out, the
        // next one is answered). A throwaway probe container goes first, until one is answered.
        let resolver = format!("dns:api.anthropic.com@{p4}.2");
        let warmed = (0..5).any(|_| {
            let probe = podman.run(&[
                "run",
                "--rm",
                "--no-healthcheck",
                "--ulimit",
                "nofile=4096:4096",
                "--ulimit",
                "nproc=4096:4096",
                "--network",
                &tag,
                "-v",
                &testkit,
                "--entrypoint",
                "/opt/testkit/testkit",
                &s.tools_image,
                "probe",
                "--timeout-ms",
                "1000",
                &resolver,
            ]);
            probe.stdout.contains(" answered ")
        });
        assert!(
            warmed,
            "{mode}: no container on the network reaches the world"
        );
        let started = podman.start(
            &sandbox,
            &[
                "--network",
                &tag,
                "--dns",
                &format!("{p4}.2"),
                "--cap-add",
                "NET_ADMIN",
                "--cap-add",
                "NET_RAW",
                "-v",
                &testkit,
                &s.image,
                "sleep",
                "infinity",
            ],
        );
        assert!(started.ok(), "{mode} sandbox: {}", started.both());
        let deadline = Instant::now() + Duration::from_secs(30);
        let logs = loop {
            let logs = podman.run(&["logs", &sandbox]).both();
            if logs.contains("cordon: starting sleep as node") || Instant::now() > deadline {
                break logs;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut problems = Vec::new();
        if !logs.contains("cordon: starting sleep as node") {
            let state = podman.run(&["ps", "-a", "--format", "{{.Names}} {{.Status}}"]);
            problems.push(format!(
                "the agent never started:\n{logs}\n{}",
                state.both()
            ));
        } else {
            let specs = [
                format!("dns:api.anthropic.com@{p4}.2"),
                format!("tcp:{p4}.10:443"),
                format!("tcp:{p4}.20:443"),
                format!("tcp:{p4}.3:22"),
                format!("udp:{p4}.10:443"),
                format!("dns:example.com@{p4}.53"),
                "tcp:169.254.169.254:80".to_string(),
            ];
            let mut probe = vec![
                "exec",
                "-u",
                "node",
                &sandbox,
                "/opt/testkit/testkit",
                "probe",
            ];
            probe.extend(specs.iter().map(String::as_str));
            let got = podman.run(&probe).stdout;
            eprintln!("podman {mode}: probes as node:\n{got}");
            let verdict = |spec: &str| -> String {
                got.lines()
                    .find(|l| l.starts_with(&format!("{spec} ")))
                    .map(|l| {
                        l.split_whitespace()
                            .skip(1)
                            .take(2)
                            .collect::<Vec<_>>()
                            .join(" ")
                    })
                    .unwrap_or_default()
            };
            let expect = |spec: &String, ok: &[&str], problems: &mut Vec<String>| {
                let v = verdict(spec);
                if !ok.iter().any(|want| v.starts_with(want)) {
                    problems.push(format!("{spec}: expected {ok:?}, got {v:?}"));
                }
            };
            expect(&specs[0], &[&format!("answered {p4}.10")], &mut problems);
            expect(&specs[1], &["open"], &mut problems);
            for blocked in &specs[2..4] {
                expect(blocked, &["refused"], &mut problems);
            }
            for blocked in &specs[4..6] {
                expect(blocked, &["rejected"], &mut problems);
            }
            // An internal Podman network has no default route: routing stops this one.
            expect(&specs[6], &["refused", "unreachable"], &mut problems);
            let listened = std::fs::read_to_string(dir.join("listen.log")).unwrap_or_default();
            if !listened.contains(&format!("tcp {p4}.10:443 ")) {
                problems.push(format!("the allowed connection was not seen:\n{listened}"));
            }
            for never in [format!("tcp {p4}.20:"), format!("tcp {p4}.3:")] {
                if listened.contains(&never) {
                    problems.push(format!("{never} was reached:\n{listened}"));
                }
            }
            let check = podman.run(&["exec", "-u", "node", &sandbox, "cordon", "check"]);
            if !check.ok() || !check.stdout.contains("the sandbox holds") {
                problems.push(format!("cordon check as node: {}", check.both()));
            }
        }
        cleanup();
        if !podman.rootless {
            support::run("iptables", &[&["-D"][..], &forward].concat());
        }
        let _ = std::fs::remove_dir_all(&dir);
        failures.extend(problems.into_iter().map(|p| format!("{mode}: {p}")));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
