//! The netfilter netlink socket the sets (`set_netlink`), the block log's NFLOG (`nflog`) and the
//! conntrack flush (`conntrack`) and the nftables questions (`nftables`) talk to the kernel through.

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

/// Appends a netlink attribute (padded to 4 bytes).
pub fn attr(out: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    out.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(payload);
    out.resize(out.len().next_multiple_of(4), 0);
}

/// Netlink attributes: (type without flags, payload).
pub fn attrs(mut data: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if data.len() < 4 {
            return None;
        }
        let length = u16::from_ne_bytes([data[0], data[1]]) as usize;
        let kind = u16::from_ne_bytes([data[2], data[3]]) & 0x3fff;
        if length < 4 || length > data.len() {
            return None;
        }
        let payload = &data[4..length];
        data = &data[length.next_multiple_of(4).min(data.len())..];
        Some((kind, payload))
    })
}
