//! The DNS gateway as a process of its own, beside the agent.
//!
//! PID 1 binds the gateway's sockets on loopback as root, before anything of the agent runs, and
//! holds them for the container's life; the gateway is a forked child that serves them as
//! `GATEWAY_UID` with CAP_NET_ADMIN alone (to add answered addresses to the sets), no_new_privs,
//! not dumpable. The agent, under another uid, can neither signal nor trace it, and cannot take
//! its port: the sockets stay bound while it restarts. If it dies, questions wait unanswered in
//! those sockets (names fail closed: nothing else answers the agent's DNS, which nat redirects
//! here) until PID 1 starts it again.
//!
//! Restarting needs CAP_SETUID, CAP_SETGID and CAP_NET_ADMIN, so with the gateway PID 1 keeps
//! them in its permitted set (never effective: only the forked child raises them, for the few
//! system calls before it becomes the gateway's uid). That gives the agent nothing: PID 1 is
//! root and not dumpable (the agent cannot trace it or write its memory), the agent cannot
//! signal it, and PID 1 reads nothing the agent writes; the gateway, which does, holds only
//! CAP_NET_ADMIN, as before.

use std::fs::File;
use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::unistd::Pid;

use super::block_log::{self, BlockLog};
use super::filter::{Event, Names, OwnNetworks};
use super::{control, tcp, udp};
use crate::error::{Error, Result};
use crate::fence::plan::{gateway_listen_addr, AgentDns, Family};
use crate::sys::caps::Capability;
use crate::sys::signals::Signals;
use crate::sys::{nflog, resident};

/// The gateway's uid: no account needs to exist for it. Below 65536, so it is mapped in user
/// namespaces (rootless Docker and Podman map 65,536 uids).
pub const GATEWAY_UID: u32 = 65053;
/// The loopback port the agent's DNS is redirected to (below the ephemeral range, so no
/// outgoing connection holds it).
pub const GATEWAY_PORT: u16 = 10053;

/// How the agent's DNS reaches this gateway (for the plan).
pub const AGENT_DNS: AgentDns = AgentDns::Gateway {
    uid: GATEWAY_UID,
    port: GATEWAY_PORT,
};

/// The capabilities PID 1 keeps permitted to start the gateway again.
pub const RESTART_CAPABILITIES: [Capability; 3] = [
    Capability::CAP_NET_ADMIN,
    Capability::CAP_SETUID,
    Capability::CAP_SETGID,
];

/// What the gateway serves.
pub struct Config {
    /// The resolver the questions go to (resolv.conf's first usable nameserver).
    pub upstream: SocketAddr,
    pub names: Names,
    pub own: OwnNetworks,
    /// The block log's table (`block_log::BLOCKED_FILE`), opened by PID 1.
    pub blocked_file: Option<File>,
    /// Root's live changes (`control::CONTROL_SOCKET`, `control::CHANGES_FILE`), opened by
    /// PID 1.
    pub control: Option<control::Control>,
}

/// Creates the block log's file (root-owned, 0644) and opens it for the gateway.
pub fn open_blocked_file() -> Option<File> {
    let path = std::path::Path::new(block_log::BLOCKED_FILE);
    let opened = crate::sys::run_dir::replace(path, 0o644, "").and_then(|()| {
        std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
    });
    match opened {
        Ok(file) => Some(file),
        Err(error) => {
            log::warn!(
                "cannot create {} ({error}): `cordon blocked` will have nothing to show",
                block_log::BLOCKED_FILE
            );
            None
        }
    }
}

/// The listening sockets, one UDP and one TCP per family.
pub struct Listeners {
    udp: Vec<UdpSocket>,
    tcp: Vec<TcpListener>,
}

impl Listeners {
    /// Binds loopback at `GATEWAY_PORT` for each family (IPv6 only where it is on).
    /// Binds loopback at `GATEWAY_PORT` for each family (IPv6 only where it is on). A port still
    /// held is tried again for up to `patience`: a gateway just killed releases its sockets only
    /// once its last thread has exited, which can come after its main thread is a zombie.
    pub fn bind(families: &[Family], patience: Duration) -> Result<Listeners> {
        let deadline = Instant::now() + patience;
        let mut listeners = Listeners {
            udp: Vec::new(),
            tcp: Vec::new(),
        };
        for family in families {
            let at = SocketAddr::new(gateway_listen_addr(*family), GATEWAY_PORT);
            let failed = |error: std::io::Error| {
                Error::CannotFence(format!(
                    "binding the DNS gateway's port {at}: {error}; free it, or start with --dns \
                     static"
                ))
            };
            let udp = resident::retry_in_use(deadline, || UdpSocket::bind(at)).map_err(failed)?;
            queue_bursts(&udp);
            let tcp = resident::retry_in_use(deadline, || TcpListener::bind(at)).map_err(failed)?;
            listeners.udp.push(udp);
            listeners.tcp.push(tcp);
        }
        Ok(listeners)
    }

    fn descriptors(&self) -> impl Iterator<Item = i32> + '_ {
        let udp = self.udp.iter().map(|s| s.as_raw_fd());
        udp.chain(self.tcp.iter().map(|s| s.as_raw_fd()))
    }
}

/// Who keeps the gateway running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keeper {
    /// cordon as the agent's supervisor (PID 1): the gateway is its child, dies with it and is
    /// started again when it dies.
    Supervisor,
    /// Nobody (`cordon firewall`, init-firewall.sh, which exit): the gateway is a daemon of its
    /// own session that outlives cordon; the next run replaces it (`replace_daemon`). If it dies,
    /// names fail closed until that run.
    Daemon,
}

/// Where `cordon firewall` notes its daemon's pid (root-owned, 0644).
pub const DAEMON_PID_FILE: &str = "/run/cordon/gateway.pid";

/// The running gateway.
pub struct Gateway {
    config: Config,
    listeners: Listeners,
    pid: Option<Pid>,
    restarts: resident::Restarts,
    keeper: Keeper,
}

impl Gateway {
    /// Forks the gateway. Call while cordon is single-threaded.
    pub fn start(
        config: Config,
        listeners: Listeners,
        signals: &Signals,
        keeper: Keeper,
    ) -> Result<Gateway> {
        let mut gateway = Gateway {
            config,
            listeners,
            pid: None,
            restarts: resident::Restarts::default(),
            keeper,
        };
        match keeper {
            Keeper::Supervisor => {
                gateway.restarts.allow();
                gateway.fork(signals)?
            }
            Keeper::Daemon => gateway.fork_daemon(signals)?,
        }
        Ok(gateway)
    }

    /// Kills the gateway and reaps it (the start failed).
    pub fn stop(&mut self) {
        if let Some(pid) = self.pid.take() {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            match self.keeper {
                Keeper::Supervisor => {
                    let _ = nix::sys::wait::waitpid(pid, None);
                }
                Keeper::Daemon => resident::wait_gone(pid, Duration::from_secs(1)),
            }
        }
    }

    /// A daemon's pid, noted for the next run (which replaces it) and `cordon check`.
    pub fn note_daemon(&self) {
        if let (Keeper::Daemon, Some(pid)) = (self.keeper, self.pid) {
            if let Err(error) = resident::note_daemon(DAEMON_PID_FILE, pid) {
                log::warn!("cannot note the DNS gateway's pid in {DAEMON_PID_FILE}: {error}");
            }
        }
    }
}

/// Stops the daemon an earlier `cordon firewall` left (named by `DAEMON_PID_FILE`, and only if
/// that process is a gateway: the gateway's uid), so that this run's can take the port. Its
/// answered addresses stay in the sets, and live flows are untouched.
pub fn replace_daemon() {
    if let Some(pid) = resident::replace_daemon(DAEMON_PID_FILE, GATEWAY_UID) {
        log::info!("replaced the DNS gateway of the previous run (pid {pid})");
    }
}

impl crate::supervise::Resident for Gateway {
    /// Starts the gateway again if it exited or is still down, within the restart budget
    /// (`resident::Restarts`; else on a later round: the supervisor
    /// wakes at least once a second).
    fn tend(&mut self, exited: &[(Pid, i32)], signals: &Signals) {
        if let Some((_, status)) = exited.iter().find(|(pid, _)| Some(*pid) == self.pid) {
            log::warn!(
                "the DNS gateway exited (status {status}): names fail closed until it is back"
            );
            self.pid = None;
        }
        if self.pid.is_some() {
            return;
        }
        if !self.restarts.allow() {
            return;
        }
        match self.fork(signals) {
            Ok(()) => log::warn!("the DNS gateway was started again"),
            Err(error) => log::error!("{error}"),
        }
    }
}

impl Gateway {
    /// The daemon: a child that starts a session of its own and forks the gateway, which its
    /// parent then leaves to init; the gateway's pid comes back over a pipe.
    fn fork_daemon(&mut self, signals: &Signals) -> Result<()> {
        let pid = resident::fork_daemon(GATEWAY_NAME, || self.run_child(signals, false))
            .map_err(|e| Error::sys("starting the DNS gateway's daemon", e))?;
        self.pid = Some(pid);
        Ok(())
    }

    fn fork(&mut self, signals: &Signals) -> Result<()> {
        // cordon is single-threaded when it starts the gateway (before the agent, and from
        // the supervisor's loop).
        let pid = resident::fork_child(GATEWAY_NAME, || self.run_child(signals, true))
            .map_err(|e| Error::sys("fork", e))?;
        self.pid = Some(pid);
        Ok(())
    }
}

impl Gateway {
    /// The gateway process itself: confined, then serving; its exit status.
    fn run_child(&self, signals: &Signals, dies_with_parent: bool) -> i32 {
        crate::credential::forget_in_this_process();
        if !dies_with_parent {
            // A daemon outlives the command that started it: its output goes nowhere (the
            // block log's table keeps what it would print), and no pipe it held keeps a
            // caller such as `devcontainer up` waiting.
            resident::detach_stdio();
        }
        let keep: Vec<i32> =
            self.listeners
                .descriptors()
                .chain(self.config.blocked_file.iter().map(|f| f.as_raw_fd()))
                .chain(self.config.control.iter().flat_map(|control| {
                    [control.listener.as_raw_fd(), control.journal.as_raw_fd()]
                }))
                .collect();
        let confinement = resident::Confinement {
            uid: GATEWAY_UID,
            keep: &[Capability::CAP_NET_ADMIN],
            dies_with_parent,
        };
        match resident::confine(signals, &keep, &confinement) {
            Ok(()) => serve(&self.config, &self.listeners),
            Err(error) => {
                log::error!("DNS gateway: {error}");
                1
            }
        }
    }
}

/// The gateway's process name (`ps`, /proc/PID/comm), which it has from the fork on.
pub const GATEWAY_NAME: &str = "cordon-dns";

/// Serves every listener until one loop fails; returns the gateway's exit status. Beside the
/// loops, the block log: the fence's rejections (NFLOG), and its table saved once a second.
fn serve(config: &Config, listeners: &Listeners) -> i32 {
    let blocked_file = config
        .blocked_file
        .as_ref()
        .and_then(|f| f.try_clone().ok());
    let block_log = BlockLog::new(blocked_file, true);
    // Root's changes before this start (a restart by PID 1), before the first question.
    if let Some(control) = &config.control {
        control.replay(&config.names);
    }
    let live = control::Live::new(config.upstream.to_string());
    let report = |event: Event| match event {
        Event::Answered(count) => {
            live.forwarded.fetch_add(count as u64, Ordering::Relaxed);
        }
        Event::Cached(count) => {
            live.cached.fetch_add(count as u64, Ordering::Relaxed);
        }
        Event::Opened {
            opened,
            judged_under,
        } => live.open(opened, judged_under, &config.names),
        Event::Refused(question) => {
            live.refused.fetch_add(1, Ordering::Relaxed);
            block_log.refused(question);
        }
        Event::UdpDistrusted => {
            live.udp_distrusted.store(true, Ordering::Relaxed);
            log::warn!(
                "DNS gateway: {unwanted} answers from {upstream} over UDP matched no question \
                 asked, as forged answers would: from now on allowlisted names are answered \
                 over TCP only (each UDP reply tells the resolver to ask again over TCP)",
                unwanted = udp::UNWANTED_LIMIT,
                upstream = config.upstream
            );
        }
    };
    let stop = AtomicBool::new(false);
    let trust = udp::UdpTrust::default();
    let upstream = config.upstream;
    // The loops end only on a failure; the first one stops all, so PID 1 starts a fresh gateway.
    let (ended, first_end) = std::sync::mpsc::channel::<String>();
    let failure = std::thread::scope(|scope| {
        for agents in &listeners.udp {
            let (report, stop, ended, trust) = (&report, &stop, ended.clone(), &trust);
            scope.spawn(move || {
                let outcome = upstream_socket(upstream).and_then(|socket| {
                    let (names, own) = (&config.names, &config.own);
                    udp::serve(agents, &socket, names, own, report, trust, stop)
                });
                let _ = ended.send(describe(outcome));
            });
        }
        for agents in &listeners.tcp {
            let (report, stop, ended) = (&report, &stop, ended.clone());
            scope.spawn(move || {
                let outcome =
                    tcp::serve(agents, upstream, &config.names, &config.own, report, stop);
                let _ = ended.send(describe(outcome));
            });
        }
        let (block_log, live, stop) = (&block_log, &live, &stop);
        scope.spawn(move || log_rejections(block_log, live, stop));
        if let Some(control) = &config.control {
            scope.spawn(move || control::serve(control, &config.names, live, stop));
        }
        drop(ended);
        let failure = first_end.recv().unwrap_or_else(|_| "no loop ran".into());
        stop.store(true, Ordering::Relaxed);
        failure
    });
    log::error!("DNS gateway stopped: {failure}");
    1
}

/// Reads the fence's rejections into the block log and saves its table once a second, until
/// `stop`. Without NFLOG (a kernel without nfnetlink_log) only refused names are logged.
fn log_rejections(block_log: &BlockLog, live: &control::Live, stop: &AtomicBool) {
    let listener = match nflog::Listener::bind() {
        Ok(listener) => Some(listener),
        Err(error) => {
            log::warn!("DNS gateway: {error}: rejected connections will not be logged");
            None
        }
    };
    while !stop.load(Ordering::Relaxed) {
        match &listener {
            Some(listener) => match listener.receive(Duration::from_secs(1)) {
                Ok(rejected) => {
                    // TCP and UDP to unicast addresses: what the agent's programs tried. The
                    // rest is the kernel's own (multicast listener reports, rejected by design).
                    for (proto, dst) in rejected {
                        if matches!(proto, 6 | 17) && !dst.ip().is_multicast() {
                            block_log.rejected(proto, dst, live.answered(dst.ip()));
                        }
                    }
                }
                Err(error) => {
                    log::warn!("DNS gateway: {error}");
                    std::thread::sleep(Duration::from_secs(1));
                }
            },
            None => std::thread::sleep(Duration::from_secs(1)),
        }
        block_log.save();
    }
}

/// A UDP socket connected to the resolver: only it can answer on this socket. The agent may
/// have sent to the resolver from this port before (nat redirected it here, and connection
/// tracking keeps that redirect for the port while the flow lasts): that flow is forgotten
/// first, or the gateway's questions would be redirected to itself. The agent cannot start it
/// again: the port is the gateway's now.
fn upstream_socket(upstream: SocketAddr) -> std::io::Result<UdpSocket> {
    let local: IpAddr = match upstream {
        SocketAddr::V4(_) => std::net::Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
    };
    let socket = UdpSocket::bind((local, 0))?;
    socket.connect(upstream)?;
    if let Err(error) = crate::sys::conntrack::forget_udp(socket.local_addr()?, upstream) {
        log::warn!("DNS gateway: {error}");
    }
    queue_bursts(&socket);
    Ok(socket)
}

/// A deep receive queue (`datagrams::QUEUE_BYTES`): a burst of questions, or of their answers,
/// waits for the gateway instead of being dropped.
fn queue_bursts(socket: &UdpSocket) {
    use std::os::fd::AsFd;
    let granted = crate::sys::datagrams::enlarge_receive_queue(
        socket.as_fd(),
        crate::sys::datagrams::QUEUE_BYTES,
    );
    // The kernel grants twice what is asked (its bookkeeping's share).
    if granted < 2 * crate::sys::datagrams::QUEUE_BYTES {
        log::debug!("DNS gateway: a receive queue of {granted} bytes (net.core.rmem_max)");
    }
}

fn describe(outcome: std::io::Result<()>) -> String {
    match outcome {
        Ok(()) => "a loop ended".into(),
        Err(error) => error.to_string(),
    }
}
