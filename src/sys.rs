//! System plumbing the stages share: capabilities and securebits (`caps`), descriptors (`fd`),
//! signal masks and dispositions (`signals`), UDP bursts in one call (`datagrams`), trusted tools
//! run by descriptor (`tool`), the netfilter netlink socket (`nfnetlink`) with ipsets
//! (`set_netlink`), the fence's rejections (`nflog`), nftables' chains and generation
//! (`nftables`) and connection tracking (`conntrack`) over it, the file-tree walk (`walk`), the
//! mount table (`mounts`) and cordon's directory in /run (`run_dir`).

pub(crate) mod caps;
pub(crate) mod conntrack;
pub(crate) mod datagrams;
pub(crate) mod fd;
pub(crate) mod mounts;
pub(crate) mod nflog;
pub(crate) mod nfnetlink;
pub(crate) mod nftables;
pub(crate) mod resident;
pub(crate) mod run_dir;
pub(crate) mod set_netlink;
pub mod signals;
pub(crate) mod tool;
pub(crate) mod walk;
