//! The DNS gateway: cordon's own resolver for the agent, which forwards only questions about
//! allowlisted names and opens what their answers hold. Built so far: its decisions without I/O
//! (`filter`), the UDP and TCP forwarding loops (`udp`, `tcp`), and answers into the fence's
//! `answered` sets (`sets`). Not built yet: the process that runs them (its own uid, restarted by
//! PID 1), the nat redirection of the agent's DNS to it, and the entrypoint's gateway mode.

pub mod filter;
pub mod sets;
pub mod tcp;
pub mod udp;
