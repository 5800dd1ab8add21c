//! The credential gateway as a process of its own, beside the agent.
//!
//! PID 1 binds 127.0.0.1:`CREDENTIAL_PORT` as root before anything of the agent runs and holds
//! the socket for the container's life, so the agent can never take the port. The gateway is a
//! forked child that serves it as `CREDENTIAL_UID` with no capabilities at all, no_new_privs and
//! not dumpable: the agent (another uid) can neither signal nor trace it nor read its memory or
//! /proc/PID/environ. It reaches nothing but the upstream on its port (the fence allows its uid
//! that alone, and the agent's uid not even that). If it dies, requests wait in the socket's
//! backlog or are refused, never sent another way, until PID 1 starts it again.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::unistd::Pid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use super::{proxy, Credential, Upstream, CREDENTIAL_PORT, CREDENTIAL_UID};
use crate::error::{Error, Result};
use crate::gateway::service::Keeper;
use crate::sys::caps::Capability;
use crate::sys::resident;
use crate::sys::signals::Signals;

/// The gateway's process name (`ps`, /proc/PID/comm).
pub const CREDENTIAL_NAME: &str = "cordon-cred";

/// The capabilities PID 1 keeps permitted to start the gateway again.
pub const RESTART_CAPABILITIES: [Capability; 2] = [Capability::CAP_SETUID, Capability::CAP_SETGID];

/// Connections from the agent served at once (each holds one to the upstream): the gateway's
/// descriptors and memory stay bounded whatever the agent opens.
const MAX_CONNECTIONS: usize = 256;

/// The system CA stores looked for, in order, when `SSL_CERT_FILE` names none.
const CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

const CERTIFICATE: &str = "-----BEGIN CERTIFICATE-----";

/// What the gateway serves.
pub struct Config {
    pub credential: Credential,
    pub upstream: Upstream,
    /// The upstream's addresses, resolved by the fence at start.
    pub addrs: Vec<SocketAddr>,
    /// The CA store the upstream's certificate is verified against (`find_ca_bundle`); the
    /// gateway reads it itself, so that PID 1 holds none of it.
    pub ca_bundle: PathBuf,
}

/// The CA store: `SSL_CERT_FILE` if set, else the first system bundle that holds a
/// certificate. Only looked at here: the gateway parses it.
pub fn find_ca_bundle(ssl_cert_file: Option<PathBuf>) -> Result<PathBuf> {
    let candidates: Vec<PathBuf> = match ssl_cert_file {
        Some(path) => vec![path],
        None => CA_BUNDLES.iter().map(PathBuf::from).collect(),
    };
    for path in candidates {
        let text = std::fs::read(&path).unwrap_or_default();
        if text
            .windows(CERTIFICATE.len())
            .any(|w| w == CERTIFICATE.as_bytes())
        {
            return Ok(path);
        }
    }
    Err(Error::MissingTool {
        tool: "the system's CA certificates (the credential gateway verifies the API's)".into(),
        package: "ca-certificates",
    })
}

/// Where `cordon firewall` notes its credential gateway daemon's pid (root-owned, 0644).
pub const DAEMON_PID_FILE: &str = "/run/cordon/credential-gateway.pid";
/// Where a start notes that a credential gateway serves here, and its upstream (root-owned,
/// 0644): for `cordon check`.
pub const STATE_FILE: &str = "/run/cordon/credential-gateway";

/// A start without a credential: no credential gateway serves here any longer. Stops the daemon
/// an earlier `cordon firewall` left (the fence no longer opens its upstream) and the note for
/// `cordon check` (a restarted container keeps /run).
pub fn none_here() {
    if let Some(pid) = resident::replace_daemon(DAEMON_PID_FILE, CREDENTIAL_UID) {
        log::info!(
            "stopped the credential gateway of the previous run (pid {pid}): no credential now"
        );
    }
    let _ = std::fs::remove_file(STATE_FILE);
}

/// What `cordon check` says of the credential gateway (`None` where none was started here):
/// whether a process of its name and uid runs (`proc`: /proc).
pub fn check_status(proc: &std::path::Path) -> Option<std::result::Result<String, String>> {
    let upstream = std::fs::read_to_string(STATE_FILE).ok()?;
    let upstream = upstream.trim();
    let running = std::fs::read_dir(proc).ok()?.flatten().any(|entry| {
        let status = std::fs::read_to_string(entry.path().join("status")).unwrap_or_default();
        status
            .lines()
            .any(|l| l == format!("Name:\t{CREDENTIAL_NAME}"))
            && status
                .lines()
                .any(|l| l.starts_with(&format!("Uid:\t{CREDENTIAL_UID}\t")))
    });
    Some(if running {
        Ok(format!(
            "running as uid {CREDENTIAL_UID} on 127.0.0.1:{CREDENTIAL_PORT}, for {upstream}"
        ))
    } else {
        Err(format!(
            "not running: the agent's API requests are refused until it is back (the \
             entrypoint starts it again at once; the drop-in: rerun init-firewall.sh); for \
             {upstream}"
        ))
    })
}

/// The running gateway.
pub struct CredentialGateway {
    config: Config,
    listener: TcpListener,
    pid: Option<Pid>,
    restarts: resident::Restarts,
    keeper: Keeper,
}

impl CredentialGateway {
    /// Binds the port and forks the gateway, kept by `keeper` (see `gateway::service::Keeper`:
    /// PID 1 restarts it; a daemon of `cordon firewall` is replaced by the next run and, if it
    /// dies, leaves the agent's requests refused until then). Call while single-threaded.
    pub fn start(config: Config, signals: &Signals, keeper: Keeper) -> Result<CredentialGateway> {
        let at = SocketAddr::from(([127, 0, 0, 1], CREDENTIAL_PORT));
        let patience = match keeper {
            Keeper::Daemon => {
                if let Some(pid) = resident::replace_daemon(DAEMON_PID_FILE, CREDENTIAL_UID) {
                    log::info!("replaced the credential gateway of the previous run (pid {pid})");
                }
                Duration::from_secs(2)
            }
            Keeper::Supervisor => Duration::ZERO,
        };
        let deadline = Instant::now() + patience;
        let listener =
            resident::retry_in_use(deadline, || TcpListener::bind(at)).map_err(|error| {
                Error::CannotFence(format!(
                    "binding the credential gateway's port {at}: {error}; free it, or start \
                     with --no-credential-gateway"
                ))
            })?;
        let mut gateway = CredentialGateway {
            config,
            listener,
            pid: None,
            restarts: resident::Restarts::default(),
            keeper,
        };
        match keeper {
            Keeper::Supervisor => {
                gateway.restarts.allow();
                gateway.fork(signals)?;
            }
            Keeper::Daemon => {
                let pid = resident::fork_daemon(CREDENTIAL_NAME, || gateway.run_child(signals))
                    .map_err(|e| Error::sys("starting the credential gateway's daemon", e))?;
                gateway.pid = Some(pid);
                if let Err(error) = resident::note_daemon(DAEMON_PID_FILE, pid) {
                    log::warn!(
                        "cannot note the credential gateway's pid in {DAEMON_PID_FILE}: {error}"
                    );
                }
            }
        }
        let upstream = format!(
            "https://{}{}",
            gateway.config.upstream.authority(),
            gateway.config.upstream.path_prefix
        );
        let state = std::path::Path::new(STATE_FILE);
        if let Err(error) = crate::sys::run_dir::replace(state, 0o644, &format!("{upstream}\n")) {
            log::warn!("cannot note the credential gateway in {STATE_FILE}: {error}");
        }
        log::info!(
            "credential gateway (uid {CREDENTIAL_UID}) on http://{at} sends the agent's API \
             requests to {upstream} with the credential from {}",
            gateway.config.credential.source
        );
        Ok(gateway)
    }

    fn fork(&mut self, signals: &Signals) -> Result<()> {
        // cordon is single-threaded when it starts the gateway (before the agent, and from
        // the supervisor's loop).
        let pid = resident::fork_child(CREDENTIAL_NAME, || self.run_child(signals))
            .map_err(|e| Error::sys("fork", e))?;
        self.pid = Some(pid);
        Ok(())
    }

    fn run_child(&self, signals: &Signals) -> i32 {
        let dies_with_parent = self.keeper == Keeper::Supervisor;
        if !dies_with_parent {
            // Its output goes nowhere, and no pipe it held keeps a caller waiting.
            resident::detach_stdio();
        }
        let confinement = resident::Confinement {
            uid: CREDENTIAL_UID,
            keep: &[],
            dies_with_parent,
        };
        // Read as root (the store may be anywhere), parsed once confined.
        let ca_bundle = std::fs::read(&self.config.ca_bundle);
        if let Err(error) = resident::confine(signals, &[self.listener.as_raw_fd()], &confinement) {
            log::error!("credential gateway: {error}");
            return 1;
        }
        let roots = ca_bundle.map(|pem| {
            CertificateDer::pem_slice_iter(&pem)
                .filter_map(|cert| cert.ok())
                .collect()
        });
        match roots.and_then(|roots| serve(&self.config, &self.listener, roots)) {
            Ok(()) => 0,
            Err(error) => {
                log::error!("credential gateway stopped: {error}");
                1
            }
        }
    }
}

impl crate::supervise::Resident for CredentialGateway {
    fn tend(&mut self, exited: &[(Pid, i32)], signals: &Signals) {
        if let Some((_, status)) = exited.iter().find(|(pid, _)| Some(*pid) == self.pid) {
            log::warn!(
                "the credential gateway exited (status {status}): API requests fail until it is \
                 back"
            );
            self.pid = None;
        }
        if self.pid.is_some() || !self.restarts.allow() {
            return;
        }
        match self.fork(signals) {
            Ok(()) => log::warn!("the credential gateway was started again"),
            Err(error) => log::error!("{error}"),
        }
    }
}

/// Accepts the agent's connections until the listener fails.
fn serve(
    config: &Config,
    listener: &TcpListener,
    roots: Vec<CertificateDer<'static>>,
) -> std::io::Result<()> {
    let tls = proxy::tls_connector(roots).map_err(std::io::Error::other)?;
    let shared = Arc::new(proxy::Shared {
        credential: config.credential.clone(),
        upstream: config.upstream.clone(),
        addrs: config.addrs.clone(),
        tls,
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    let listener = listener.try_clone()?;
    listener.set_nonblocking(true)?;
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        loop {
            // Beyond MAX_CONNECTIONS, connections wait in the listen backlog.
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return Ok(());
            };
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let shared = shared.clone();
            tokio::spawn(async move {
                proxy::serve_connection(stream, shared).await;
                drop(slot);
            });
        }
    })
}
