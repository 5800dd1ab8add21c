//! A test world in two network namespaces joined by a veth pair:
//!
//! - "world": the gateway (10.77.0.1, fd77::1) running the test's own DNS server (no upstream),
//!   a LAN peer (10.77.0.3), listeners on an allowed (10.77.1.10, fd77:1::10) and a blocked
//!   (10.77.1.20, fd77:1::20) address, the cloud metadata address, and a second DNS server that
//!   is not the sandbox's resolver (10.77.1.53);
//! - "sandbox": where cordon runs (10.77.0.2, fd77::2), with its own /etc/resolv.conf through
//!   `ip netns exec`'s /etc/netns/NAME.
//!
//! Nothing is ever sent outside these namespaces.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::{cordon, run, testkit};

pub const GATEWAY: &str = "10.77.0.1";
pub const SANDBOX: &str = "10.77.0.2";
pub const LAN_PEER: &str = "10.77.0.3";
pub const ALLOWED: &str = "10.77.1.10";
pub const BLOCKED: &str = "10.77.1.20";
pub const OTHER_DNS: &str = "10.77.1.53";
/// Free for a test's own service (the credential gateway's upstream).
pub const SERVICE: &str = "10.77.1.30";
pub const METADATA: &str = "169.254.169.254";
pub const GATEWAY6: &str = "fd77::1";
pub const ALLOWED6: &str = "fd77:1::10";
pub const BLOCKED6: &str = "fd77:1::20";
/// The uid probes run as (no passwd entry needed: cordon takes `--user 1000`).
pub const AGENT_UID: &str = "1000";

#[derive(Clone)]
pub struct WorldOpts {
    /// `name=address` records for the world's DNS server, in addition to the defaults.
    pub records: Vec<String>,
    /// Extra arguments for the DNS server (e.g. `--delay-ms 20`, `--wildcard ...`).
    pub dns_args: Vec<String>,
    /// Whether the world's resolver runs at all.
    pub dns: bool,
    /// Give the sandbox Docker's embedded-DNS shape: 127.0.0.11 in resolv.conf, nat DNAT of
    /// 127.0.0.11:53 to a local port, and a forwarder running as root inside the sandbox.
    pub docker_dns: bool,
    /// Give the sandbox the shape of Docker's ordinary (IPv4-only) networks: disable_ipv6=1 on
    /// every interface, loopback included, so it has no IPv6 address at all.
    pub ipv6_off: bool,
}

impl Default for WorldOpts {
    fn default() -> Self {
        WorldOpts {
            records: Vec::new(),
            dns_args: Vec::new(),
            dns: true,
            docker_dns: false,
            ipv6_off: false,
        }
    }
}

pub struct World {
    pub world_ns: String,
    pub sandbox_ns: String,
    pub dir: PathBuf,
    children: Vec<Child>,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

fn ip(args: &[&str]) {
    run("ip", args);
}

impl World {
    pub fn new(opts: WorldOpts) -> World {
        let id = format!(
            "{:x}{}",
            std::process::id() & 0xffff,
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let dir = std::env::temp_dir().join(format!("cordon-world-{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut world = World {
            world_ns: format!("cdw-{id}"),
            sandbox_ns: format!("cds-{id}"),
            dir,
            children: Vec::new(),
        };
        world.build_network(&id);
        if opts.ipv6_off {
            world.sandbox(&[
                "sysctl",
                "-q",
                "-w",
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
                "net.ipv6.conf.lo.disable_ipv6=1",
            ]);
        }
        world.start_services(&opts);
        world
    }

    fn build_network(&mut self, id: &str) {
        let (w, s) = (self.world_ns.as_str(), self.sandbox_ns.as_str());
        let (vw, vs) = (format!("vw{id}"), format!("vs{id}"));
        ip(&["netns", "add", w]);
        ip(&["netns", "add", s]);
        ip(&["link", "add", &vw, "type", "veth", "peer", "name", &vs]);
        ip(&["link", "set", &vw, "netns", w]);
        ip(&["link", "set", &vs, "netns", s]);
        for ns in [w, s] {
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        for addr in [&format!("{GATEWAY}/24"), &format!("{LAN_PEER}/24")] {
            ip(&["-n", w, "addr", "add", addr, "dev", &vw]);
        }
        ip(&[
            "-n",
            w,
            "addr",
            "add",
            &format!("{GATEWAY6}/64"),
            "dev",
            &vw,
            "nodad",
        ]);
        for addr in [ALLOWED, BLOCKED, OTHER_DNS, METADATA, SERVICE] {
            ip(&["-n", w, "addr", "add", &format!("{addr}/32"), "dev", "lo"]);
        }
        for addr in [ALLOWED6, BLOCKED6] {
            ip(&["-n", w, "addr", "add", &format!("{addr}/128"), "dev", "lo"]);
        }
        ip(&["-n", w, "link", "set", &vw, "up"]);
        ip(&["-n", s, "addr", "add", &format!("{SANDBOX}/24"), "dev", &vs]);
        ip(&["-n", s, "addr", "add", "fd77::2/64", "dev", &vs, "nodad"]);
        ip(&["-n", s, "link", "set", &vs, "up"]);
        ip(&["-n", s, "route", "add", "default", "via", GATEWAY]);
        ip(&["-n", s, "-6", "route", "add", "default", "via", GATEWAY6]);
    }

    fn start_services(&mut self, opts: &WorldOpts) {
        let kit = testkit();
        let kit = kit.to_str().unwrap();
        let mut records: Vec<String> = [
            format!("allowed.test={ALLOWED}"),
            format!("allowed.test={ALLOWED6}"),
            format!("blocked.test={BLOCKED}"),
            format!("blocked.test={BLOCKED6}"),
        ]
        .into();
        records.extend(opts.records.iter().cloned());
        if opts.dns {
            let mut args: Vec<String> = vec!["dns".into()];
            for listen in [format!("{GATEWAY}:53"), format!("{OTHER_DNS}:53")] {
                args.extend(["--listen".into(), listen]);
            }
            for record in &records {
                args.extend(["--record".into(), record.clone()]);
            }
            args.extend(["--cname".into(), "alias.test=allowed.test".into()]);
            args.extend(opts.dns_args.iter().cloned());
            args.extend(["--query-log".into(), self.path("dns.log")]);
            self.spawn_ready(&self.world_ns.clone(), kit, args, "dns.ready");
        }
        let mut listen: Vec<String> = vec!["listen".into()];
        for addr in [
            format!("{ALLOWED}:80"),
            format!("{ALLOWED}:443"),
            format!("{BLOCKED}:443"),
            format!("{LAN_PEER}:22"),
            format!("{GATEWAY}:80"),
            format!("{METADATA}:80"),
            format!("[{ALLOWED6}]:443"),
            format!("[{BLOCKED6}]:443"),
            format!("[{GATEWAY6}]:80"),
        ] {
            listen.extend(["--tcp".into(), addr]);
        }
        for addr in [format!("{ALLOWED}:443"), format!("{BLOCKED}:443")] {
            listen.extend(["--udp".into(), addr]);
        }
        listen.extend(["--log".into(), self.path("listen.log")]);
        self.spawn_ready(&self.world_ns.clone(), kit, listen, "listen.ready");

        let etc = self.netns_etc();
        std::fs::create_dir_all(&etc).unwrap();
        let resolver = if opts.docker_dns {
            "127.0.0.11"
        } else {
            GATEWAY
        };
        std::fs::write(etc.join("resolv.conf"), format!("nameserver {resolver}\n")).unwrap();
        if opts.docker_dns {
            // As Docker sets it in every container: any uid may bind ports below 1024.
            self.sandbox(&["sysctl", "-qw", "net.ipv4.ip_unprivileged_port_start=0"]);
            for proto in ["udp", "tcp"] {
                self.sandbox(&[
                    "iptables",
                    "-t",
                    "nat",
                    "-A",
                    "OUTPUT",
                    "-d",
                    "127.0.0.11/32",
                    "-p",
                    proto,
                    "--dport",
                    "53",
                    "-j",
                    "DNAT",
                    "--to-destination",
                    "127.0.0.11:5300",
                ]);
            }
            let args = vec![
                "forward".into(),
                "--listen".into(),
                "127.0.0.11:5300".into(),
                "--upstream".into(),
                format!("{GATEWAY}:53"),
            ];
            self.spawn_ready(&self.sandbox_ns.clone(), kit, args, "forward.ready");
        }
    }

    /// Starts `testkit ARGS` in the world namespace and waits until it is ready; it runs as long
    /// as the world.
    pub fn spawn_in_world(&mut self, args: Vec<String>, ready: &str) {
        let kit = testkit();
        self.spawn_ready(&self.world_ns.clone(), kit.to_str().unwrap(), args, ready);
    }

    fn spawn_ready(&mut self, ns: &str, program: &str, mut args: Vec<String>, ready: &str) {
        let ready_file = self.path(ready);
        args.extend(["--ready-file".into(), ready_file.clone()]);
        let child = Command::new("ip")
            .args(["netns", "exec", ns, program])
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn world service");
        self.children.push(child);
        wait_for(Path::new(&ready_file));
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.join(name).to_str().unwrap().to_string()
    }

    fn netns_etc(&self) -> PathBuf {
        Path::new("/etc/netns").join(&self.sandbox_ns)
    }

    pub fn set_resolv_conf(&self, text: &str) {
        std::fs::write(self.netns_etc().join("resolv.conf"), text).unwrap();
    }

    /// The sandbox's /etc/hosts (`ip netns exec` mounts it over the host's).
    pub fn set_hosts(&self, text: &str) {
        std::fs::write(self.netns_etc().join("hosts"), text).unwrap();
    }

    /// Runs a command in the sandbox namespace, panicking if it fails; returns stdout.
    pub fn sandbox(&self, args: &[&str]) -> String {
        let mut full = vec!["netns", "exec", &self.sandbox_ns];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Runs a shell line in the sandbox namespace, in a mount namespace of its own with a
    /// private /run (`private_run`), so it may mount over /usr/sbin, /run and the like.
    pub fn sandbox_sh(&self, line: &str) -> Output {
        self.sandbox_command("sh")
            .args(["-c", line])
            .output()
            .expect("run a shell in the sandbox")
    }

    /// Shell lines that give a private mount namespace its own /run, with this world's
    /// /run/cordon (where cordon leaves the record of its fence) kept across runs: worlds run in
    /// parallel, and the host's /run is not the tests' to write.
    pub fn private_run(&self) -> String {
        let kept = self.dir.join("run-cordon");
        std::fs::create_dir_all(&kept).unwrap();
        std::fs::set_permissions(&kept, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .unwrap();
        format!(
            "mount -t tmpfs -o mode=755 tmpfs /run && mkdir /run/cordon && mount --bind {} \
             /run/cordon",
            kept.display()
        )
    }

    /// A command that runs `program` in the sandbox namespace with a private /run (see
    /// `private_run`); add its arguments.
    pub fn sandbox_command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let line = format!("{} && exec \"$0\" \"$@\"", self.private_run());
        let mut command = Command::new("ip");
        command
            .args([
                "netns",
                "exec",
                &self.sandbox_ns,
                "unshare",
                "-m",
                "sh",
                "-c",
                &line,
            ])
            .arg(program);
        command
    }

    /// Runs cordon in the sandbox namespace.
    pub fn cordon(&self, args: &[&str]) -> Output {
        self.cordon_with(Path::new(&cordon()), args, &[])
    }

    pub fn cordon_with(&self, binary: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
        let output = self
            .sandbox_command(binary)
            .args(args)
            .envs(env.iter().copied())
            .output()
            .expect("run cordon");
        eprintln!(
            "cordon {args:?} → {}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    /// Probes from the sandbox as the agent's uid; returns SPEC → verdict.
    pub fn probe(&self, specs: &[&str]) -> HashMap<String, String> {
        self.probe_as(Some(AGENT_UID), specs)
    }

    /// Probes as the agent; returns SPEC → (verdict, detail, milliseconds).
    pub fn probe_timed(&self, specs: &[&str]) -> HashMap<String, (String, String, f64)> {
        self.probe_output(Some(AGENT_UID), specs)
            .lines()
            .filter_map(|line| {
                let words: Vec<&str> = line.split_whitespace().collect();
                let [spec, verdict, detail, millis] = words[..] else {
                    return None;
                };
                Some((
                    spec.to_string(),
                    (
                        verdict.to_string(),
                        detail.to_string(),
                        millis.parse().ok()?,
                    ),
                ))
            })
            .collect()
    }

    pub fn probe_as(&self, uid: Option<&str>, specs: &[&str]) -> HashMap<String, String> {
        parse_probe_lines(&self.probe_output(uid, specs))
    }

    /// `testkit probe` in the sandbox, as `uid` (else root): its output lines.
    fn probe_output(&self, uid: Option<&str>, specs: &[&str]) -> String {
        let kit = testkit();
        let mut args = vec![
            "netns",
            "exec",
            &self.sandbox_ns,
            kit.to_str().unwrap(),
            "probe",
        ];
        if let Some(uid) = uid {
            args.extend(["--uid", uid, "--gid", uid]);
        }
        args.extend(["--timeout-ms", "1500"]);
        args.extend_from_slice(specs);
        run("ip", &args)
    }

    /// The filter table as `iptables-save` prints it, without counters or comments.
    pub fn filter_rules(&self, tool: &str) -> String {
        self.sandbox(&[tool, "-t", "filter"])
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| match l.strip_prefix(':') {
                Some(chain) => chain.split(" [").next().unwrap().to_string(),
                None => l.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Lines the world's listeners logged (`tcp LOCAL PEER` / `udp LOCAL PEER`).
    pub fn listener_log(&self) -> String {
        std::fs::read_to_string(self.path("listen.log")).unwrap_or_default()
    }
}

/// How a test changes /usr/sbin for one run of cordon: in a private mount namespace the
/// directory is replaced by a view of itself, where some tools are hidden or replaced. The real
/// directory stays reachable at `{World::dir}/sbin/real` (see `World::sbin_setup`).
#[derive(Default)]
pub struct SbinView {
    pub hidden: Vec<&'static str>,
    /// Replaced by a script that prints `NAME: broken` and fails.
    pub broken: Vec<&'static str>,
    /// Replaced by an empty executable file.
    pub empty: Vec<&'static str>,
    /// Replaced by this shell script; `$REAL` in it stands for the real tool.
    pub scripts: Vec<(&'static str, String)>,
    /// Replaced by a symlink to this tool of the real directory.
    pub links: Vec<(&'static str, &'static str)>,
}

impl World {
    /// Builds the view (as root, so every entry is root-owned) and returns the shell lines that
    /// mount it over /usr/sbin; run them with `sandbox_sh` before cordon.
    pub fn sbin_setup(&self, view: &SbinView) -> String {
        use std::os::unix::fs::{symlink, PermissionsExt};
        let dir = self.dir.join("sbin");
        let _ = std::fs::remove_dir_all(&dir);
        let (real, shown) = (dir.join("real"), dir.join("view"));
        std::fs::create_dir_all(&real).unwrap();
        std::fs::create_dir_all(&shown).unwrap();
        for entry in std::fs::read_dir("/usr/sbin").unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name();
            let target = match std::fs::read_link(entry.path()) {
                Ok(link) => link,
                Err(_) => real.join(&name),
            };
            symlink(target, shown.join(&name)).unwrap();
        }
        let replace = |name: &str, text: &str| {
            let path = shown.join(name);
            let _ = std::fs::remove_file(&path);
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        };
        for name in &view.hidden {
            std::fs::remove_file(shown.join(name)).unwrap();
        }
        for name in &view.broken {
            replace(
                name,
                &format!("#!/bin/sh\necho '{name}: broken' >&2\nexit 1\n"),
            );
        }
        for name in &view.empty {
            replace(name, "");
        }
        for (name, script) in &view.scripts {
            let real_tool = real.join(name);
            replace(name, &script.replace("$REAL", real_tool.to_str().unwrap()));
        }
        for (name, tool) in &view.links {
            let path = shown.join(name);
            let _ = std::fs::remove_file(&path);
            symlink(real.join(tool), path).unwrap();
        }
        format!(
            "mount --bind /usr/sbin {}\nmount --bind {} /usr/sbin",
            real.display(),
            shown.display()
        )
    }

    /// Runs cordon in the sandbox with /usr/sbin changed as `view` says.
    pub fn cordon_in(&self, view: &SbinView, args: &[&str]) -> Output {
        let line = format!(
            "set -e\n{}\nexec {} {}",
            self.sbin_setup(view),
            cordon().display(),
            args.join(" ")
        );
        let output = self.sandbox_sh(&line);
        eprintln!(
            "cordon {args:?} → {}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in [&self.sandbox_ns, &self.world_ns] {
            // What still runs there: e.g. the DNS gateway a `cordon firewall` left as a daemon.
            if let Ok(pids) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
                    if let Ok(pid) = pid.parse::<i32>() {
                        // SAFETY: a signal to a process in this test's own namespace.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
            }
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = std::fs::remove_dir_all(self.netns_etc());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The port the stream tests use: a sink in the world that logs every TCP chunk and UDP
/// datagram it receives (`t ADDR` / `u ADDR` lines in `streams.log`) and echoes each datagram:
/// a UDP flow with replies is ESTABLISHED to conntrack, as real ones are.
pub const STREAM_PORT: u16 = 9443;

/// A child process killed when dropped, so that a failing test does not leave it running (and
/// holding the test harness's output open).
pub struct Killed(pub std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn start_sink(world: &World) -> Killed {
    let log = world.path("streams.log");
    let script = format!(
        "import socket, threading\n\
         lock = threading.Lock()\n\
         def note(line):\n\
         \twith lock, open('{log}', 'a') as f:\n\t\tf.write(line + '\\n')\n\
         def sink(c, addr):\n\
         \twhile c.recv(4096):\n\t\tnote('t ' + addr)\n\
         def tcp(addr):\n\
         \ts = socket.socket()\n\ts.bind((addr, {STREAM_PORT}))\n\ts.listen()\n\
         \twhile True:\n\t\tc, _ = s.accept()\n\
         \t\tthreading.Thread(target=sink, args=(c, addr), daemon=True).start()\n\
         def udp(addr):\n\
         \ts = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\ts.bind((addr, {STREAM_PORT}))\n\
         \twhile True:\n\t\tdata, peer = s.recvfrom(4096)\n\t\tnote('u ' + addr)\n\
         \t\ts.sendto(data, peer)\n\
         for addr in ['{ALLOWED}', '{BLOCKED}']:\n\
         \tthreading.Thread(target=tcp, args=(addr,), daemon=True).start()\n\
         \tthreading.Thread(target=udp, args=(addr,), daemon=True).start()\n\
         open('{log}', 'a').close()\n\
         threading.Event().wait()\n"
    );
    let child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &world.world_ns,
            "/usr/bin/python3",
            "-c",
            &script,
        ])
        .spawn()
        .unwrap();
    let child = Killed(child);
    wait_for(std::path::Path::new(&log));
    std::thread::sleep(std::time::Duration::from_millis(200));
    child
}

/// How many TCP chunks (`t`) or UDP datagrams (`u`) from the sandbox reached ADDR's sink.
pub fn sunk(world: &World, kind: &str, addr: &str) -> usize {
    std::fs::read_to_string(world.path("streams.log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| *l == format!("{kind} {addr}"))
        .count()
}

/// A stream started by the agent's uid in the sandbox: python3 sending a byte to ADDR's sink
/// every 50 ms over TCP and over UDP, ignoring send errors, until killed.
pub fn stream(world: &World, addr: &str) -> Killed {
    let script = format!(
        "import socket, time\n\
         t = socket.create_connection(('{addr}', {STREAM_PORT}))\n\
         u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         u.connect(('{addr}', {STREAM_PORT}))\n\
         while True:\n\
         \tfor s in (t, u):\n\t\ttry:\n\t\t\ts.send(b'x')\n\t\texcept OSError:\n\t\t\tpass\n\
         \ttime.sleep(0.05)\n"
    );
    Killed(
        Command::new("ip")
            .args(["netns", "exec", &world.sandbox_ns, "setpriv"])
            .args(["--reuid", AGENT_UID, "--regid", AGENT_UID, "--clear-groups"])
            .args(["/usr/bin/python3", "-c", &script])
            .spawn()
            .unwrap(),
    )
}

pub fn parse_probe_lines(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            Some((words.next()?.to_string(), words.next()?.to_string()))
        })
        .collect()
}

pub fn wait_for(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Asserts each SPEC got the verdict given, with every mismatch in one message.
pub fn assert_verdicts(got: &HashMap<String, String>, expected: &[(&str, &str)]) {
    let wrong: Vec<String> = expected
        .iter()
        .filter(|(spec, verdict)| got.get(*spec).map(String::as_str) != Some(*verdict))
        .map(|(spec, verdict)| format!("{spec}: expected {verdict}, got {:?}", got.get(*spec)))
        .collect();
    assert!(wrong.is_empty(), "wrong verdicts:\n{}", wrong.join("\n"));
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// cordon started in the sandbox with `/bin/sleep` as the agent, its stderr in a log file; the
/// tests probe as the agent's uid from outside (the fence goes by uid, not by process). Stopped
/// with SIGTERM when dropped, its log printed.
pub struct SleepingAgent {
    pub child: Child,
    pub log: String,
}

impl SleepingAgent {
    /// Spawns `command` (cordon, whose agent is `/bin/sleep`) with stderr to `log`, and waits
    /// until the agent starts.
    pub fn start(mut command: Command, log: String) -> SleepingAgent {
        command
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        let mut child = command.spawn().expect("start cordon");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("starting /bin/sleep") {
                break;
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!("cordon exited ({status}) before the agent started:\n{text}");
            }
            assert!(Instant::now() < deadline, "cordon did not start:\n{text}");
            std::thread::sleep(Duration::from_millis(20));
        }
        SleepingAgent { child, log }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// cordon's children (the agent, the gateways).
    pub fn children(&self) -> Vec<u32> {
        std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", self.pid()))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|pid| pid.parse().ok())
            .collect()
    }

    /// The child whose every uid is `uid`, waiting up to 5 s for it (the agent's process
    /// changes its uid only after cordon logs that it starts it).
    pub fn wait_child_of_uid(&self, uid: &str) -> Option<u32> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match self.child_of_uid(uid) {
                Some(pid) => return Some(pid),
                None if Instant::now() > deadline => return None,
                None => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }

    /// The child whose every uid is `uid`.
    pub fn child_of_uid(&self, uid: &str) -> Option<u32> {
        self.children().into_iter().find(|pid| {
            status_field(*pid, "Uid").is_some_and(|u| u.split_whitespace().all(|u| u == uid))
        })
    }
}

impl Drop for SleepingAgent {
    fn drop(&mut self) {
        // SAFETY: signalling the cordon process this test started; the agent exits on it.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        eprintln!("cordon's log:\n{}", self.log());
    }
}

/// A field of /proc/PID/status.
pub fn status_field(pid: u32, key: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        (k == key).then(|| v.trim().to_string())
    })
}
