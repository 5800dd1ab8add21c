//! The agent's environment: credentials removed (not blanked), cordon's own settings dropped,
//! HOME/USER/LOGNAME/SHELL from the account.

use std::ffi::OsString;

use crate::cli::SandboxOpts;
use crate::user::Account;

pub struct AgentEnvironment {
    pub vars: Vec<(OsString, OsString)>,
    /// Names (never values) of the variables that were removed.
    pub removed: Vec<String>,
}

impl AgentEnvironment {
    pub fn log(&self) {
        todo!("issue 3: report removed variable names")
    }
}

pub fn agent_environment(
    vars: impl IntoIterator<Item = (OsString, OsString)>,
    account: &Account,
    sandbox: &SandboxOpts,
) -> AgentEnvironment {
    let _ = (vars.into_iter(), account, sandbox);
    todo!("issue 3: environment scrubbing")
}
