//! System plumbing the stages share: capabilities and securebits (`caps`), descriptors (`fd`),
//! signal masks and dispositions (`signals`),
//! trusted tools run by descriptor (`tool`), ipsets over netlink (`set_netlink`), the file-tree
//! walk (`walk`) and the mount table (`mounts`).

pub mod caps;
pub mod fd;
pub mod mounts;
pub mod set_netlink;
pub mod signals;
pub mod tool;
pub mod walk;
