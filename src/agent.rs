//! The agent's side of the start: its account and HOME (`user`), its environment (`env`), the
//! fork and exec that start it (`launch`), and the privilege drop in between (`drop`).

mod drop;
pub mod env;
pub mod launch;
pub mod user;
