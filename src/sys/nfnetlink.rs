//! The netfilter netlink socket the sets (`set_netlink`), the block log's NFLOG (`nflog`) and the
//! conntrack flush (`conntrack`) talk to the kernel through.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::errno::Errno;

/// A NETLINK_NETFILTER socket.
pub fn socket() -> Result<OwnedFd, String> {
    // SAFETY: a plain socket(2); the descriptor is owned right below.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_NETFILTER,
        )
    };
    if fd < 0 {
        return Err(format!("netfilter netlink: {}", Errno::last().desc()));
    }
    // SAFETY: fd was just returned by socket(2) and is not owned elsewhere.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sends one message (or a batch) to the kernel.
pub fn send(socket: &OwnedFd, message: &[u8]) -> Result<(), String> {
    // SAFETY: the buffer is valid for its length; a zeroed sockaddr_nl addresses the kernel.
    let sent = unsafe {
        let mut kernel: libc::sockaddr_nl = std::mem::zeroed();
        kernel.nl_family = libc::AF_NETLINK as u16;
        libc::sendto(
            socket.as_raw_fd(),
            message.as_ptr().cast(),
            message.len(),
            0,
            (&kernel as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    match sent {
        n if n == message.len() as isize => Ok(()),
        _ => Err(format!("netfilter netlink: {}", Errno::last().desc())),
    }
}
