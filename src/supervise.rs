//! PID 1 duties: forward signals, reap every zombie, sweep the rest when the agent exits, and exit
//! with the agent's status.

use nix::unistd::Pid;

use crate::cli::SandboxOpts;
use crate::error::Result;

pub struct Signals {}

impl Signals {
    /// Blocks every catchable signal, remembering the original mask and dispositions so the
    /// child can get them back.
    pub fn block_all() -> Result<Self> {
        todo!("issue 3: signal setup")
    }
}

pub fn run(child: Pid, signals: &Signals, opts: &SandboxOpts) -> i32 {
    let _ = (child, signals, opts);
    todo!("issue 3: supervise")
}
