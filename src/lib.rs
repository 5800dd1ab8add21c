//! cordon: fence a container's egress, take away every way back to root, run the agent as PID 1.
//!
//! The pipeline, one folder per stage (ARCHITECTURE.md is the map):
//! `fence` (policy → resolve → plan → apply → verify) → `harden` → `agent` (environment, launch,
//! privilege drop) → `supervise`; `check` inspects a running sandbox; `sys` holds the system-call
//! plumbing the stages share.

pub mod agent;
pub mod capabilities;
pub mod check;
pub mod cli;
pub mod credential;
pub mod error;
pub mod fence;
#[doc(hidden)]
pub mod fuzz;
pub mod gateway;
pub mod harden;
pub mod logging;
pub mod supervise;
pub mod sys;
