//! The fence's rejections as the kernel reports them: with the DNS gateway, the reject chain
//! sends each rejected packet's headers to NFLOG group `GROUP` (LOG targets print nothing inside
//! a container's namespace; NFLOG reaches a netlink socket opened in it, with CAP_NET_ADMIN),
//! and the gateway reads them here. Messages are built and parsed with netlink-packet-netfilter.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_netfilter::nflog::{
    config_request, ConfigCmd, ConfigMode, PacketNla, ULogMessage,
};
use netlink_packet_netfilter::{NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily};
use nix::errno::Errno;

use super::nfnetlink;

/// The NFLOG group of cordon's reject rules.
pub const GROUP: u16 = 10053;
/// Bytes of each packet copied: the IPv6 header and the ports behind it.
const COPY: u32 = 64;

/// A netlink socket bound to `GROUP`.
pub struct Listener {
    socket: OwnedFd,
}

impl Listener {
    pub fn bind() -> Result<Listener, String> {
        let fail = |what: &str| format!("NFLOG {what}: {}", Errno::last().desc());
        let socket = nfnetlink::socket()?;
        // SAFETY: a zeroed sockaddr_nl lets the kernel choose the port id.
        let bound = unsafe {
            let mut local: libc::sockaddr_nl = std::mem::zeroed();
            local.nl_family = libc::AF_NETLINK as u16;
            libc::bind(
                socket.as_raw_fd(),
                (&local as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if bound < 0 {
            return Err(fail("bind"));
        }
        let listener = Listener { socket };
        listener.configure(vec![ConfigCmd::Bind.into()])?;
        listener.configure(vec![ConfigMode::new_packet(COPY).into()])?;
        Ok(listener)
    }

    fn configure(
        &self,
        settings: Vec<netlink_packet_netfilter::nflog::ConfigNla>,
    ) -> Result<(), String> {
        let request = config_request(NetfilterProtoFamily::Unspec, GROUP, settings);
        let mut bytes = vec![0; request.header.length as usize];
        request.serialize(&mut bytes);
        nfnetlink::send(&self.socket, &bytes).map_err(|e| format!("NFLOG config: {e}"))?;
        let mut buffer = [0u8; 1024];
        // SAFETY: the buffer is valid for its length.
        let got = unsafe {
            libc::recv(
                self.socket.as_raw_fd(),
                buffer.as_mut_ptr().cast(),
                buffer.len(),
                0,
            )
        };
        let got = Errno::result(got).map_err(|e| format!("NFLOG config: {}", e.desc()))?;
        match NetlinkMessage::<NetfilterMessage>::deserialize(&buffer[..got as usize]) {
            Ok(message) => match message.payload {
                NetlinkPayload::Error(error) => match error.code {
                    None => Ok(()),
                    Some(code) => Err(format!(
                        "NFLOG config: {}",
                        Errno::from_raw(-code.get()).desc()
                    )),
                },
                _ => Ok(()),
            },
            Err(error) => Err(format!("NFLOG config: {error}")),
        }
    }

    /// Waits up to `timeout` for rejected packets; returns each one's protocol and destination.
    pub fn receive(&self, timeout: Duration) -> Result<Vec<(u8, SocketAddr)>, String> {
        let mut poll = libc::pollfd {
            fd: self.socket.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let millis = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd for the duration of the call.
        match unsafe { libc::poll(&mut poll, 1, millis) } {
            0 => return Ok(Vec::new()),
            n if n < 0 && Errno::last() == Errno::EINTR => return Ok(Vec::new()),
            n if n < 0 => return Err(format!("NFLOG poll: {}", Errno::last().desc())),
            _ => {}
        }
        let mut buffer = vec![0u8; 1 << 16];
        // SAFETY: the buffer is valid for its length.
        let got = unsafe {
            libc::recv(
                self.socket.as_raw_fd(),
                buffer.as_mut_ptr().cast(),
                buffer.len(),
                libc::MSG_DONTWAIT,
            )
        };
        let got = match Errno::result(got) {
            Ok(got) => got as usize,
            Err(Errno::EAGAIN | Errno::EINTR) => return Ok(Vec::new()),
            // The kernel dropped messages (a burst): the next ones still come.
            Err(Errno::ENOBUFS) => return Ok(Vec::new()),
            Err(errno) => return Err(format!("NFLOG receive: {}", errno.desc())),
        };
        let mut found = Vec::new();
        let mut rest = &buffer[..got];
        while let Ok(message) = NetlinkMessage::<NetfilterMessage>::deserialize(rest) {
            let length = (message.header.length as usize).next_multiple_of(4);
            if let NetlinkPayload::InnerMessage(NetfilterMessage {
                inner: NetfilterMessageInner::ULog(ULogMessage::Packet(nlas)),
                ..
            }) = &message.payload
            {
                let packet = nlas.iter().find_map(|nla| match nla {
                    PacketNla::Payload(bytes) => Some(bytes.as_slice()),
                    _ => None,
                });
                found.extend(packet.and_then(destination));
            }
            if length == 0 || length >= rest.len() {
                break;
            }
            rest = &rest[length..];
        }
        Ok(found)
    }
}

/// The protocol and destination of an IPv4 or IPv6 packet (port 0 for protocols without one).
pub fn destination(packet: &[u8]) -> Option<(u8, SocketAddr)> {
    let (proto, dst, transport) = match packet.first()? >> 4 {
        4 => {
            let header = usize::from(packet.first()? & 0x0f) * 4;
            let dst = Ipv4Addr::from(<[u8; 4]>::try_from(packet.get(16..20)?).ok()?);
            (*packet.get(9)?, IpAddr::V4(dst), packet.get(header..))
        }
        6 => {
            let dst = Ipv6Addr::from(<[u8; 16]>::try_from(packet.get(24..40)?).ok()?);
            (*packet.get(6)?, IpAddr::V6(dst), packet.get(40..))
        }
        _ => return None,
    };
    let port = match (proto, transport) {
        (6 | 17, Some(ports)) if ports.len() >= 4 => u16::from_be_bytes([ports[2], ports[3]]),
        _ => 0,
    };
    Some((proto, SocketAddr::new(dst, port)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_of_ipv4_and_ipv6_packets() {
        // IPv4, IHL 5, TCP, to 203.0.113.5:22.
        let mut v4 = vec![
            0x45, 0, 0, 40, 0, 0, 0, 0, 64, 6, 0, 0, 10, 0, 0, 2, 203, 0, 113, 5,
        ];
        v4.extend_from_slice(&[0x9c, 0x40, 0, 22]);
        assert_eq!(
            destination(&v4),
            Some((6, "203.0.113.5:22".parse().unwrap()))
        );
        // IPv6, UDP, to 2001:db8::1 port 53.
        let mut v6 = vec![0x60, 0, 0, 0, 0, 8, 17, 64];
        v6.extend_from_slice(&[0; 16]);
        v6.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        v6.extend_from_slice(&[0x9c, 0x40, 0, 53]);
        assert_eq!(
            destination(&v6),
            Some((17, "[2001:db8::1]:53".parse().unwrap()))
        );
        // ICMP: no port; truncated and garbage: nothing.
        let mut icmp = v4.clone();
        icmp[9] = 1;
        assert_eq!(
            destination(&icmp),
            Some((1, "203.0.113.5:0".parse().unwrap()))
        );
        assert_eq!(destination(&v4[..12]), None);
        assert_eq!(destination(&[0x15, 1, 2]), None);
        assert_eq!(destination(&[]), None);
    }
}
