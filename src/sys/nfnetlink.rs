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

/// Appends a netlink attribute (padded to 4 bytes). Always inlined: the DNS gateway writes a
/// few attributes of 1 to 16 bytes per answered address, and out of line each piece was a call
/// to musl's `memcpy`, a tenth of the gateway's time for first-time names.
#[inline(always)]
pub fn attr(out: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let length = 4 + payload.len();
    out.reserve(length.next_multiple_of(4));
    out.extend(
        ((length as u16).to_ne_bytes())
            .into_iter()
            .chain(kind.to_ne_bytes()),
    );
    out.extend(payload.iter().copied());
    out.resize(out.len().next_multiple_of(4), 0);
}

/// Appends a nested attribute whose payload `fill` appends in place (no buffer per level).
pub fn nested(out: &mut Vec<u8>, kind: u16, fill: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    fill(out);
    out.resize(out.len().next_multiple_of(4), 0);
    let length = (out.len() - start) as u16;
    out[start..start + 2].copy_from_slice(&length.to_ne_bytes());
    out[start + 2..start + 4].copy_from_slice(&kind.to_ne_bytes());
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

/// Length of a netlink message header.
pub const HEADER: usize = 16;
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;

/// A netfilter request: the netlink header for `subsystem`'s `command`, the nfgenmsg for
/// `family`, then `attributes`.
pub fn message(
    (subsystem, command): (u16, u16),
    flags: i32,
    seq: u32,
    family: u8,
    attributes: &[u8],
) -> Vec<u8> {
    let length = HEADER + 4 + attributes.len();
    let mut message = Vec::with_capacity(length);
    message.extend_from_slice(&(length as u32).to_ne_bytes());
    message.extend_from_slice(&((subsystem << 8) | command).to_ne_bytes());
    message.extend_from_slice(&(flags as u16).to_ne_bytes());
    message.extend_from_slice(&seq.to_ne_bytes());
    message.extend_from_slice(&0u32.to_ne_bytes());
    // nfgenmsg: family, version 0, resource id 0.
    message.extend_from_slice(&[family, 0, 0, 0]);
    message.extend_from_slice(attributes);
    message
}

/// Receives one datagram into `buffer`: its netlink messages, (type, payload).
pub fn receive<'a>(socket: &OwnedFd, buffer: &'a mut [u8]) -> Result<Vec<(u16, &'a [u8])>, Errno> {
    // SAFETY: the buffer is valid for its length.
    let got = unsafe {
        libc::recv(
            socket.as_raw_fd(),
            buffer.as_mut_ptr().cast(),
            buffer.len(),
            0,
        )
    };
    let mut rest = &buffer[..Errno::result(got)? as usize];
    let mut messages = Vec::new();
    while rest.len() >= HEADER {
        let length = u32::from_ne_bytes(rest[0..4].try_into().unwrap()) as usize;
        let kind = u16::from_ne_bytes([rest[4], rest[5]]);
        if length < HEADER || length > rest.len() {
            return Err(Errno::EBADMSG);
        }
        messages.push((kind, &rest[HEADER..length]));
        rest = &rest[length.next_multiple_of(4).min(rest.len())..];
    }
    Ok(messages)
}

/// The error code of an NLMSG_ERROR payload (0: an acknowledgement).
pub fn error_code(payload: &[u8]) -> Result<i32, Errno> {
    payload
        .get(..4)
        .map(|code| i32::from_ne_bytes(code.try_into().unwrap()))
        .ok_or(Errno::EBADMSG)
}
