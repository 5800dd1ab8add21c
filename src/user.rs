//! The agent's account, read from /etc/passwd and /etc/group directly (no NSS).

use std::path::{Path, PathBuf};

use crate::error::Result;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups, from /etc/group.
    pub groups: Vec<u32>,
    pub home: PathBuf,
    pub shell: PathBuf,
}

/// Resolves `--user` (a name, UID or UID:GID) and `--uid-from PATH`. Never returns root.
pub fn resolve(spec: &str, uid_from: Option<&Path>) -> Result<Account> {
    let _ = (spec, uid_from);
    todo!("issue 3: user resolution")
}
