//! The fence pipeline: policy → resolve → plan → apply → verify.

use crate::cli::{AgentOpts, FenceOpts};
use crate::error::Result;

pub fn plan(fence: &FenceOpts, agent: &AgentOpts) -> Result<i32> {
    let _ = (fence, agent);
    todo!()
}

pub fn firewall(fence: &FenceOpts, agent: &AgentOpts) -> Result<i32> {
    let _ = (fence, agent);
    todo!()
}

pub fn establish(fence: &FenceOpts, agent_uid: u32) -> Result<()> {
    let _ = (fence, agent_uid);
    todo!()
}
