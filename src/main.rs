use std::ffi::OsString;
use std::path::Path;
use std::process::ExitCode;

use cordon::agent::{env, launch, user};
use cordon::capabilities::{self, Need};
use cordon::cli::{self, Invocation, Start};
use cordon::credential::{self, service::CredentialGateway};
use cordon::error::{exit, Error, Result};
use cordon::gateway::service::Keeper;
use cordon::harden::background;
use cordon::sys::signals::{self, Signals};
use cordon::{check, fence, gateway, harden, logging, supervise};

fn main() -> ExitCode {
    // Before anything else: a stop signal during set-up is held until cordon can act on it
    // (end set-up with egress locked down, at the next checkpoint or wait), never fatal half-way;
    // once the agent runs, the supervisor forwards it. The other commands get the signal state
    // they started with back.
    let signals = match Signals::block_all() {
        Ok(signals) => signals,
        Err(error) => {
            eprintln!("cordon: error: {error}");
            return ExitCode::from(exit::INTERNAL as u8);
        }
    };
    let parsed = match cli::parse(std::env::args_os().collect()) {
        Ok(parsed) => parsed,
        Err(refusal) => {
            if refusal.to_stdout {
                print!("{}", refusal.text);
            } else {
                eprintln!("cordon: error: {}", refusal.text);
            }
            return ExitCode::from(refusal.status as u8);
        }
    };
    logging::init(parsed.quiet, parsed.verbose);
    let status = match run(parsed.invocation, &signals) {
        Ok(status) => status,
        Err(error) => {
            log::error!("{error}");
            error.exit_code()
        }
    };
    ExitCode::from(u8::try_from(status).unwrap_or(u8::MAX))
}

fn run(invocation: Invocation, signals: &Signals) -> Result<i32> {
    let restore = || {
        signals
            .restore()
            .map_err(|errno| Error::sys("restoring the signal state", errno))
    };
    match invocation {
        Invocation::Plan { mut fence } => restore().and_then(|()| {
            // As the entrypoint would load it here: with a credential, its gateway's upstream.
            let vars: Vec<(OsString, OsString)> = std::env::vars_os().collect();
            let secrets = Path::new(credential::SECRETS_DIR);
            fence.credential_upstream = credential::upstream_if_present(&vars, secrets)?
                .map(|upstream| (upstream.host, upstream.port));
            fence::plan(&fence)
        }),
        Invocation::Firewall { fence, user } => {
            signals.end_set_up_on_stop();
            fence::firewall(&fence, &user, signals)
        }
        Invocation::Check(options) => restore().and_then(|()| check::run(&options)),
        Invocation::Harden => restore().and_then(|()| harden_now()),
        Invocation::Blocked { json } => restore().and_then(|()| gateway::block_log::print(json)),
        Invocation::Control(line) => restore().and_then(|()| gateway::control::request(&line)),
        Invocation::Run(start) => {
            signals.end_set_up_on_stop();
            entrypoint(start, signals)
        }
    }
}

/// The whole pipeline: fence → harden → launch → supervise. Nothing of the agent runs unless
/// every earlier stage succeeded.
fn entrypoint(mut start: Start, signals: &Signals) -> Result<i32> {
    // Before cordon sets no_new_privs on anything: did the container start with it?
    let no_new_privs_everywhere = background::started_with_no_new_privs();
    // From here on, every refusal leaves egress denied (the drop-in's container keeps running).
    let scope = fence::Scope::enter(&start.fence)?;
    let chosen = user::choose_account(&start.user.user, start.user.uid_from.as_deref())
        .map_err(|e| scope.refuse(e))?;
    let ready = scope.ready(&start.fence)?;
    capabilities::require(&start_needs(&chosen, &start)).map_err(|e| ready.refuse(e))?;
    let account = chosen.prepare().map_err(|e| ready.refuse(e))?;
    hint_if_the_workspace_is_not_writable(&account);
    if start.exec && start.fence.dns == fence::Dns::Gateway {
        return Err(ready.refuse(Error::Usage(
            "--dns gateway needs cordon to stay as the supervisor, which --exec gives up: use \
             --dns static with --exec"
                .into(),
        )));
    }
    // The credential, read as root before anything of the agent runs.
    let mut vars: Vec<(OsString, OsString)> = std::env::vars_os().collect();
    let taken = credential::take(start.credential, &account, &mut vars)
        .and_then(|taken| match taken {
            Some(_) if start.exec => Err(Error::Usage(
                "the credential gateway needs cordon to stay as the supervisor, which --exec \
                 gives up: use --no-credential-gateway with --exec (the agent then holds the \
                 credential)"
                    .into(),
            )),
            taken => Ok(taken),
        })
        .map_err(|e| ready.refuse(e))?;
    if let Some(taken) = &taken {
        start.fence.credential_upstream = Some(taken.upstream_host_port());
    }
    let fence = fence::establish(&start.fence, ready, account.uid)?;
    let mut gateway = fence.start_gateway(account.uid, signals, Keeper::Supervisor)?;
    let mut credential_gateway = match taken {
        Some(taken) => {
            vars = credential::agent_variables(vars);
            let config = taken.config(fence.credential_upstream_addrs());
            let started = CredentialGateway::start(config, signals, Keeper::Supervisor)
                .map_err(|e| fence.refuse(e))?;
            Some(started)
        }
        None => {
            credential::service::none_here();
            None
        }
    };
    fence::interrupted().map_err(|e| fence.refuse(e))?;
    let beside_the_agent = harden_before_the_agent(&start, no_new_privs_everywhere)?;
    fence::interrupted().map_err(|e| fence.refuse(e))?;
    let environment = env::agent_environment(vars, &account, &start.env);
    environment.log();
    let mut launch = launch::Launch::new(start.command, environment.vars, account)?;
    let mut kept = Vec::new();
    if gateway.is_some() {
        kept.extend_from_slice(&gateway::service::RESTART_CAPABILITIES);
    }
    if credential_gateway.is_some() {
        kept.extend_from_slice(&credential::service::RESTART_CAPABILITIES);
    }
    if !kept.is_empty() {
        launch = launch.supervisor_keeps(&kept);
    }
    fence.confirm()?;
    // The last checkpoint: from here a stop signal is the agent's (the supervisor forwards it).
    fence::interrupted().map_err(|e| fence.refuse(e))?;
    signals::set_up_over();
    if start.exec {
        return launch.exec(signals);
    }
    if let Some(work) = beside_the_agent {
        if let Err(error) = background::start(work, signals) {
            // Never an agent next to privileged files it could use: harden now instead.
            log::warn!("{error}: hardening before the agent starts");
            if let background::Work::Everything { strip_mounts } = work {
                harden::harden(Path::new("/"))?.log();
                if strip_mounts {
                    harden::strip_other_mounts()?.log();
                }
            }
        }
    }
    let child = launch.spawn(signals)?;
    let mut residents: Vec<&mut dyn supervise::Resident> = Vec::new();
    if let Some(gateway) = gateway.as_mut() {
        residents.push(gateway);
    }
    if let Some(gateway) = credential_gateway.as_mut() {
        residents.push(gateway);
    }
    Ok(supervise::run(
        child,
        signals,
        &start.supervise,
        &mut residents,
    ))
}

/// The harden stage: what must happen before the agent starts, and what may run beside it
/// (returned). Beside it only when every process in the container has no_new_privs, which makes
/// setuid bits and file capabilities inert, and when cordon stays as PID 1 to start the helper.
fn harden_before_the_agent(
    start: &Start,
    no_new_privs_everywhere: bool,
) -> Result<Option<background::Work>> {
    let supervised = !start.exec;
    let strip_mounts = start.harden == harden::Extent::AllMounts;
    match start.harden {
        harden::Extent::Skip => {
            log::warn!(
                "--no-harden: setuid/setgid bits, file capabilities and sudo are left in place"
            );
            return Ok(None);
        }
        _ if supervised && no_new_privs_everywhere => {
            return Ok(Some(background::Work::Everything { strip_mounts }));
        }
        _ => {}
    }
    harden::harden(Path::new("/"))?.log();
    if strip_mounts {
        harden::strip_other_mounts()?.log();
    }
    if !no_new_privs_everywhere {
        log::info!(
            "hint: docker run --security-opt no-new-privileges makes start-up independent of the \
             image's size (harden runs beside the agent) and stops docker exec sessions from \
             using setuid files"
        );
    }
    Ok((supervised && !strip_mounts).then_some(background::Work::ReportMounts))
}

/// The agent keeps cordon's working directory: say so at start if it cannot write there.
fn hint_if_the_workspace_is_not_writable(account: &user::Account) {
    use std::os::unix::fs::MetadataExt;
    let Ok(dir) = std::env::current_dir() else {
        return;
    };
    if let Ok(meta) = std::fs::metadata(&dir) {
        if let Some(hint) = account.workspace_hint(&dir, meta.uid(), meta.gid(), meta.mode()) {
            log::warn!("{hint}");
        }
    }
}

/// `cordon harden`: strip the root filesystem now (at image build time), then exit.
fn harden_now() -> Result<i32> {
    if !nix::unistd::geteuid().is_root() {
        return Err(Error::NotRoot {
            action: "cordon harden",
        });
    }
    capabilities::require(capabilities::HARDEN)?;
    harden::harden(Path::new("/"))?.log();
    Ok(exit::OK)
}

/// Every capability the start will use, so that one line can name all that are missing.
fn start_needs(chosen: &user::Chosen, start: &Start) -> Vec<Need> {
    let mut needs = capabilities::FENCE.to_vec();
    if chosen.changes_home() {
        needs.extend_from_slice(capabilities::HOME);
    }
    if start.harden != harden::Extent::Skip {
        needs.extend_from_slice(capabilities::HARDEN);
    }
    needs.extend_from_slice(capabilities::DROP);
    if !start.exec {
        needs.extend_from_slice(capabilities::SUPERVISE);
    }
    needs
}
