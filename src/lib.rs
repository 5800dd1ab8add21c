//! cordon: fence a container's egress, take away every way back to root, run the agent as PID 1.
//!
//! The pipeline, one module per stage:
//! policy → resolve → plan → apply → verify (together: `fence`) → harden → launch → supervise.

pub mod apply;
pub mod capabilities;
pub mod check;
pub mod cli;
pub mod env;
pub mod error;
pub mod fence;
pub mod harden;
pub mod inspect;
pub mod launch;
pub mod logging;
pub mod netinfo;
pub mod plan;
pub mod policy;
pub mod record;
pub mod resolv_conf;
pub mod resolve;
pub mod set_netlink;
pub mod supervise;
pub mod tool;
pub mod user;
pub mod verify;
