//! The DNS gateway: cordon's own resolver for the agent, which forwards only questions about
//! allowlisted names and opens what their answers hold. `filter` decides without I/O; `udp` and
//! `tcp` are the forwarding loops; `sets` puts answered addresses into the fence; `block_log`
//! says what was refused or rejected (the fence's rejections arrive over NFLOG, `sys::nflog`);
//! `control` takes root's live changes (`cordon allow/deny/status`); `service` is the process
//! PID 1 runs and restarts; `self_test` proves at start that the agent's DNS reaches it.

pub mod block_log;
pub mod cache;
pub mod control;
pub mod filter;
pub mod self_test;
pub mod service;
pub mod sets;
pub mod tcp;
pub mod udp;
