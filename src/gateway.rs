//! The DNS gateway (issue in progress): cordon's own resolver for the agent, which forwards only
//! questions about allowlisted names and opens what their answers hold. So far: its decisions,
//! without I/O (`filter`); the process that runs them is not built yet.

pub mod filter;
pub mod sets;
pub mod udp;
