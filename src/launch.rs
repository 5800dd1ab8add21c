//! Start the agent: fork, and in the child drop every privilege in a fixed order, then exec.

use std::ffi::OsString;

use nix::unistd::Pid;

use crate::error::Result;
use crate::supervise::Signals;
use crate::user::Account;

pub struct Launch {}

impl Launch {
    pub fn new(
        command: Vec<OsString>,
        env: Vec<(OsString, OsString)>,
        account: crate::user::Account,
    ) -> Result<Self> {
        let _ = (command, env, account);
        todo!("issue 3: launch")
    }

    pub fn spawn(&self, signals: &Signals) -> Result<Pid> {
        let _ = signals;
        todo!("issue 3: fork and drop privileges")
    }

    /// `--exec`: become the agent (no supervisor). Returns only on failure.
    pub fn exec(&self, signals: &Signals) -> Result<i32> {
        let _ = signals;
        todo!("issue 3: exec without supervisor")
    }
}

#[allow(dead_code)]
fn _account(_: &Account) {}
