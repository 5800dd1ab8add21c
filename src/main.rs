use std::ffi::OsString;
use std::path::Path;
use std::process::ExitCode;

use cordon::capabilities::{self, Need};
use cordon::cli::{self, AgentOpts, FenceOpts, Invocation, SandboxOpts};
use cordon::error::{exit, Error, Result};
use cordon::{check, env, fence, harden, launch, logging, supervise, user};

fn main() -> ExitCode {
    // Before anything else: a stop signal during set-up is held until cordon can act on it
    // (forward it to the agent, or end `cordon firewall` in a consistent state), never fatal
    // half-way. The other commands get the signal state they started with back.
    let signals = match supervise::Signals::block_all() {
        Ok(signals) => signals,
        Err(error) => {
            eprintln!("cordon: error: {error}");
            return ExitCode::from(exit::INTERNAL as u8);
        }
    };
    let invocation = match cli::parse(std::env::args_os().collect()) {
        Ok(invocation) => invocation,
        Err(refusal) => {
            if refusal.to_stdout {
                print!("{}", refusal.text);
            } else {
                eprintln!("cordon: error: {}", refusal.text);
            }
            return ExitCode::from(refusal.status as u8);
        }
    };
    logging::init(invocation.output());
    let status = match run(invocation, &signals) {
        Ok(status) => status,
        Err(error) => {
            log::error!("{error}");
            error.exit_code()
        }
    };
    ExitCode::from(u8::try_from(status).unwrap_or(u8::MAX))
}

fn run(invocation: Invocation, signals: &supervise::Signals) -> Result<i32> {
    let restore = || {
        signals
            .restore()
            .map_err(|errno| Error::sys("restoring the signal state", errno))
    };
    match invocation {
        Invocation::Plan(args) => restore().and_then(|()| fence::plan(&args.fence, &args.agent)),
        Invocation::Firewall(args) => fence::firewall(&args.fence, &args.agent, signals),
        Invocation::Check(args) => restore().and_then(|()| check::run(&args)),
        Invocation::Harden(_) => restore().and_then(|()| harden_now()),
        Invocation::Run {
            fence,
            agent,
            sandbox,
            command,
            ..
        } => entrypoint(&fence, &agent, &sandbox, command, signals),
    }
}

/// The whole pipeline: fence → harden → launch → supervise. Nothing of the agent runs unless
/// every earlier stage succeeded.
fn entrypoint(
    fence_opts: &FenceOpts,
    agent: &AgentOpts,
    sandbox: &SandboxOpts,
    command: Vec<OsString>,
    signals: &supervise::Signals,
) -> Result<i32> {
    // From here on, every refusal leaves egress denied (the drop-in's container keeps running).
    let scope = fence::Scope::enter(fence_opts)?;
    let chosen = user::choose_account(&agent.user, agent.uid_from.as_deref())
        .map_err(|e| scope.refuse(e))?;
    let ready = scope.ready(fence_opts)?;
    capabilities::require(&start_needs(&chosen, sandbox)).map_err(|e| ready.refuse(e))?;
    let account = chosen.prepare().map_err(|e| ready.refuse(e))?;
    let fence = fence::establish(fence_opts, ready, account.uid, None)?;
    if sandbox.no_harden {
        log::warn!("--no-harden: setuid/setgid bits, file capabilities and sudo are left in place");
    } else {
        harden::harden(Path::new("/"))?.log();
        if sandbox.strip_mounts {
            harden::strip_other_mounts()?.log();
        }
    }
    let environment = env::agent_environment(std::env::vars_os(), &account, sandbox);
    environment.log();
    let launch = launch::Launch::new(command, environment.vars, account)?;
    fence.confirm()?;
    if sandbox.exec {
        return launch.exec(signals);
    }
    let child = launch.spawn(signals)?;
    Ok(supervise::run(child, signals, sandbox))
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
fn start_needs(chosen: &user::Chosen, sandbox: &SandboxOpts) -> Vec<Need> {
    let mut needs = capabilities::FENCE.to_vec();
    if chosen.changes_home() {
        needs.extend_from_slice(capabilities::HOME);
    }
    if !sandbox.no_harden {
        needs.extend_from_slice(capabilities::HARDEN);
    }
    needs.extend_from_slice(capabilities::DROP);
    if !sandbox.exec {
        needs.extend_from_slice(capabilities::SUPERVISE);
    }
    needs
}
