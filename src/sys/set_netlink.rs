//! ipsets straight from the kernel over netfilter netlink: `members` lists them (IPSET_CMD_LIST),
//! printed as `ipset save` prints them, and `flush` empties them (IPSET_CMD_FLUSH). `ipset save`
//! looks each member's protocol up in /etc/protocols, about 10 µs per member: at 8,000 members
//! that is most of the time cordon spends reading its fence back before the agent starts. This
//! takes a few milliseconds. `flush` is for the lockdown, which must not depend on a tool.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, OwnedFd};

use nix::errno::Errno;

use super::nfnetlink;

const NFNL_SUBSYS_IPSET: u16 = 6;
const IPSET_CMD_FLUSH: u16 = 4;
const IPSET_CMD_LIST: u16 = 7;
const IPSET_CMD_ADD: u16 = 9;
const IPSET_CMD_DEL: u16 = 10;
const IPSET_PROTOCOL: u8 = 7;
// Attributes at command level.
const ATTR_PROTOCOL: u16 = 1;
const ATTR_SETNAME: u16 = 2;
const ATTR_DATA: u16 = 7;
const ATTR_ADT: u16 = 8;
const ATTR_LINENO: u16 = 9;
// Attributes of one member.
const ATTR_IP: u16 = 1;
const ATTR_CIDR: u16 = 3;
const ATTR_PORT: u16 = 4;
const ATTR_PORT_TO: u16 = 5;
const ATTR_TIMEOUT: u16 = 6;
const ATTR_PROTO: u16 = 7;
/// Attribute type flags: the payload is nested / in network byte order.
const NESTED: u16 = 0x8000;
const NET_ORDER: u16 = 0x4000;
const ATTR_IPADDR_IPV4: u16 = 1;
const ATTR_IPADDR_IPV6: u16 = 2;
/// The flag bits of an attribute's type (nested, network byte order).
use nfnetlink::{HEADER, NLMSG_DONE, NLMSG_ERROR};

/// Each named set's members; a set that does not exist is absent.
pub fn members(sets: &[String]) -> Result<BTreeMap<String, BTreeSet<String>>, String> {
    let socket = nfnetlink::socket()?;
    let mut found = BTreeMap::new();
    for (seq, set) in sets.iter().enumerate() {
        let flags = libc::NLM_F_REQUEST | libc::NLM_F_DUMP;
        nfnetlink::send(
            &socket,
            &request(IPSET_CMD_LIST, flags, set, seq as u32 + 1),
        )?;
        match receive(&socket) {
            Ok(members) => {
                found.insert(set.clone(), members);
            }
            Err(Errno::ENOENT) => {}
            Err(errno) => return Err(format!("listing set {set}: {}", errno.desc())),
        }
    }
    Ok(found)
}

/// Empties each named set; a set that does not exist is not an error.
pub fn flush(sets: &[String]) -> Result<(), String> {
    let socket = nfnetlink::socket()?;
    for (seq, set) in sets.iter().enumerate() {
        let flags = libc::NLM_F_REQUEST | libc::NLM_F_ACK;
        nfnetlink::send(
            &socket,
            &request(IPSET_CMD_FLUSH, flags, set, seq as u32 + 1),
        )?;
        match acknowledged(&socket) {
            Ok(_) | Err(Errno::ENOENT) => {}
            Err(errno) => return Err(format!("flushing set {set}: {}", errno.desc())),
        }
    }
    Ok(())
}

/// One member to add: an address, and a protocol with a port range for `hash:ip,port` sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    pub addr: IpAddr,
    /// (protocol number, first port, last port).
    pub ports: Option<(u8, u16, u16)>,
}

/// Members in one request at most: the largest (IPv6, a port range, a timeout) takes 60 bytes,
/// so 512 of them stay well inside the 64 KiB a netlink attribute can hold.
const MEMBERS_PER_REQUEST: usize = 512;

/// A netfilter netlink socket kept open to add members: the DNS gateway adds one per answered
/// address, and a socket per add would cost more than the add.
pub struct Adder {
    socket: OwnedFd,
}

impl Adder {
    pub fn open() -> Result<Adder, String> {
        Ok(Adder {
            socket: nfnetlink::socket()?,
        })
    }

    /// Adds each member to `set` for its timeout in seconds (a set created with `timeout`),
    /// renewing the timeout of a member already there, in one request. The kernel handles the
    /// request within the send, so the members are in the set when this returns; the
    /// acknowledgement says whether they were.
    pub fn add(&mut self, set: &str, members: &[(Member, u32)]) -> Result<(), String> {
        self.change(IPSET_CMD_ADD, set, members)
            .map_err(|error| format!("adding {error}"))
    }

    /// Deletes each member from `set` (the timeouts are not used); members already gone are
    /// not an error.
    pub fn delete(&mut self, set: &str, members: &[Member]) -> Result<(), String> {
        let members: Vec<(Member, u32)> = members.iter().map(|m| (*m, 0)).collect();
        match self.change(IPSET_CMD_DEL, set, &members) {
            Ok(()) => Ok(()),
            Err(error) => Err(format!("deleting {error}")),
        }
    }

    /// One request per `MEMBERS_PER_REQUEST` members: a netlink attribute's length is 16 bits,
    /// and the list of members is one attribute (`cordon deny` may close thousands).
    fn change(&mut self, command: u16, set: &str, members: &[(Member, u32)]) -> Result<(), String> {
        let mut first_failure = None;
        for chunk in members.chunks(MEMBERS_PER_REQUEST) {
            if let Err(error) = self.change_at_once(command, set, chunk) {
                first_failure.get_or_insert(error);
            }
        }
        first_failure.map_or(Ok(()), Err)
    }

    fn change_at_once(
        &mut self,
        command: u16,
        set: &str,
        members: &[(Member, u32)],
    ) -> Result<(), String> {
        // Without NLM_F_EXCL re-adding a member (or deleting one not there) is not an error;
        // an added member's timeout is renewed.
        let flags = libc::NLM_F_REQUEST | libc::NLM_F_ACK;
        let mut message = request(command, flags, set, 1);
        message.reserve(16 + 48 * members.len());
        // A list of members (ADT) comes with a line number, for `ipset restore`'s errors.
        nfnetlink::attr(&mut message, ATTR_LINENO | NET_ORDER, &0u32.to_be_bytes());
        nfnetlink::nested(&mut message, ATTR_ADT | NESTED, |list| {
            for (member, timeout) in members {
                nfnetlink::nested(list, ATTR_DATA | NESTED, |data| {
                    nfnetlink::nested(data, ATTR_IP | NESTED, |ip| match member.addr {
                        IpAddr::V4(v4) => {
                            nfnetlink::attr(ip, ATTR_IPADDR_IPV4 | NET_ORDER, &v4.octets())
                        }
                        IpAddr::V6(v6) => {
                            nfnetlink::attr(ip, ATTR_IPADDR_IPV6 | NET_ORDER, &v6.octets())
                        }
                    });
                    if let Some((proto, first, last)) = member.ports {
                        nfnetlink::attr(data, ATTR_PORT | NET_ORDER, &first.to_be_bytes());
                        if last != first {
                            nfnetlink::attr(data, ATTR_PORT_TO | NET_ORDER, &last.to_be_bytes());
                        }
                        nfnetlink::attr(data, ATTR_PROTO, &[proto]);
                    }
                    if command == IPSET_CMD_ADD {
                        nfnetlink::attr(data, ATTR_TIMEOUT | NET_ORDER, &timeout.to_be_bytes());
                    }
                });
            }
        });
        let length = message.len() as u32;
        message[..4].copy_from_slice(&length.to_ne_bytes());
        nfnetlink::send(&self.socket, &message)?;
        acknowledged(&self.socket).map_err(|errno| {
            let first = members.first().map(|(m, _)| m.addr.to_string());
            format!(
                "{} in set {set}: {}",
                first.unwrap_or_default(),
                errno.desc()
            )
        })
    }
}

/// Reads the acknowledgement of one request (an NLMSG_ERROR, 0 for success).
fn acknowledged(socket: &OwnedFd) -> Result<(), Errno> {
    // The error message, the request's header and a few bytes of slack.
    let mut buffer = [0u8; 256];
    loop {
        // SAFETY: the buffer is valid for its length.
        let got = unsafe {
            libc::recv(
                socket.as_raw_fd(),
                buffer.as_mut_ptr().cast(),
                buffer.len(),
                libc::MSG_TRUNC,
            )
        };
        let got = Errno::result(got)? as usize;
        let message = &buffer[..got.min(buffer.len())];
        if message.len() < HEADER + 4 {
            return Err(Errno::EBADMSG);
        }
        if u16::from_ne_bytes([message[4], message[5]]) == NLMSG_ERROR {
            let code = i32::from_ne_bytes(message[HEADER..HEADER + 4].try_into().unwrap());
            return match code {
                0 => Ok(()),
                code => Err(Errno::from_raw(-code)),
            };
        }
    }
}

fn request(command: u16, flags: i32, set: &str, seq: u32) -> Vec<u8> {
    let mut attributes = Vec::new();
    nfnetlink::attr(&mut attributes, ATTR_PROTOCOL, &[IPSET_PROTOCOL]);
    let mut name = set.as_bytes().to_vec();
    name.push(0);
    nfnetlink::attr(&mut attributes, ATTR_SETNAME, &name);
    let family = libc::AF_INET as u8;
    nfnetlink::message(
        (NFNL_SUBSYS_IPSET, command),
        flags,
        seq,
        family,
        &attributes,
    )
}

/// Reads a dump to its end: every member of the set.
fn receive(socket: &OwnedFd) -> Result<BTreeSet<String>, Errno> {
    let mut members = BTreeSet::new();
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        for (kind, payload) in nfnetlink::receive(socket, &mut buffer)? {
            match kind {
                NLMSG_DONE => return Ok(members),
                NLMSG_ERROR => match nfnetlink::error_code(payload)? {
                    0 => {}
                    code => return Err(Errno::from_raw(-code)),
                },
                _ => collect_members(&payload[4.min(payload.len())..], &mut members),
            }
        }
    }
}

fn collect_members(message: &[u8], members: &mut BTreeSet<String>) {
    for (kind, adt) in nfnetlink::attrs(message) {
        if kind != ATTR_ADT {
            continue;
        }
        for (kind, data) in nfnetlink::attrs(adt) {
            if kind == ATTR_DATA {
                if let Some(member) = member(data) {
                    members.insert(member);
                }
            }
        }
    }
}

/// One member as `ipset save` prints it: `ADDR`, `NET/LEN`, or either with `,PROTO:PORT`.
fn member(data: &[u8]) -> Option<String> {
    let (mut addr, mut width, mut cidr, mut port, mut proto) = (None, 32, None, None, None);
    for (kind, payload) in nfnetlink::attrs(data) {
        match kind {
            ATTR_IP => {
                for (family, bytes) in nfnetlink::attrs(payload) {
                    match (family, bytes.len()) {
                        (ATTR_IPADDR_IPV4, 4) => {
                            let octets: [u8; 4] = bytes.try_into().ok()?;
                            addr = Some(Ipv4Addr::from(octets).to_string());
                        }
                        (ATTR_IPADDR_IPV6, 16) => {
                            let octets: [u8; 16] = bytes.try_into().ok()?;
                            addr = Some(Ipv6Addr::from(octets).to_string());
                            width = 128;
                        }
                        _ => {}
                    }
                }
            }
            ATTR_CIDR => cidr = payload.first().copied(),
            ATTR_PORT if payload.len() == 2 => {
                port = Some(u16::from_be_bytes([payload[0], payload[1]]))
            }
            ATTR_PROTO => proto = payload.first().copied(),
            _ => {}
        }
    }
    let mut text = addr?;
    if let Some(len) = cidr.filter(|&len| u32::from(len) != width) {
        text.push_str(&format!("/{len}"));
    }
    if let (Some(port), Some(proto)) = (port, proto) {
        let name = match proto {
            6 => "tcp".to_string(),
            17 => "udp".to_string(),
            other => other.to_string(),
        };
        text.push_str(&format!(",{name}:{port}"));
    }
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(kind: u16, inner: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        nfnetlink::attr(&mut out, kind | 0x8000, inner);
        out
    }

    #[test]
    fn members_print_as_ipset_save_prints_them() {
        let mut ip = Vec::new();
        nfnetlink::attr(&mut ip, ATTR_IPADDR_IPV4 | 0x4000, &[10, 0, 0, 0]);
        let mut data = nested(ATTR_IP, &ip);
        nfnetlink::attr(&mut data, ATTR_CIDR, &[24]);
        nfnetlink::attr(&mut data, ATTR_PORT | 0x4000, &443u16.to_be_bytes());
        nfnetlink::attr(&mut data, ATTR_PROTO, &[6]);
        assert_eq!(member(&data).as_deref(), Some("10.0.0.0/24,tcp:443"));

        let mut ip = Vec::new();
        nfnetlink::attr(
            &mut ip,
            ATTR_IPADDR_IPV6 | 0x4000,
            &"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets(),
        );
        let mut host = nested(ATTR_IP, &ip);
        nfnetlink::attr(&mut host, ATTR_CIDR, &[128]);
        assert_eq!(member(&host).as_deref(), Some("2001:db8::1"));
    }
}
