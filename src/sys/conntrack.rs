//! This namespace's connection tracking table (ctnetlink). `flush`: after `cordon deny`, every
//! flow is judged again at its next packet. An allowed TCP flow is picked up again mid-stream
//! (nf_conntrack_tcp_loose, on by default) and goes on; one to an address no entry opens any
//! more meets the reject rules. `forget_udp`: a flow the DNS gateway's upstream socket is about
//! to use is not one the agent left behind (see `gateway::service::upstream_socket`).

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::errno::Errno;

use super::nfnetlink;

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const NESTED: u16 = 0x8000;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;

/// Deletes every tracked connection of both families.
pub fn flush() -> Result<(), String> {
    let socket = nfnetlink::socket()?;
    for family in [libc::AF_INET, libc::AF_INET6] {
        // No attributes: the whole table.
        delete(&socket, family, &[]).map_err(|e| format!("ctnetlink flush: {e}"))?;
    }
    Ok(())
}

/// Deletes the tracked UDP flow from `local` to `remote` (either way round), if there is one.
pub fn forget_udp(local: SocketAddr, remote: SocketAddr) -> Result<(), String> {
    let socket = nfnetlink::socket()?;
    let (family, addresses) = match (local, remote) {
        (SocketAddr::V4(l), SocketAddr::V4(r)) => (
            libc::AF_INET,
            [
                (CTA_IP_V4_SRC, l.ip().octets().to_vec()),
                (CTA_IP_V4_DST, r.ip().octets().to_vec()),
            ],
        ),
        (SocketAddr::V6(l), SocketAddr::V6(r)) => (
            libc::AF_INET6,
            [
                (CTA_IP_V6_SRC, l.ip().octets().to_vec()),
                (CTA_IP_V6_DST, r.ip().octets().to_vec()),
            ],
        ),
        _ => return Err(format!("{local} and {remote} are of two families")),
    };
    let mut tuple = Vec::new();
    nfnetlink::nested(&mut tuple, CTA_TUPLE_ORIG | NESTED, |orig| {
        nfnetlink::nested(orig, CTA_TUPLE_IP | NESTED, |ip| {
            for (kind, octets) in &addresses {
                nfnetlink::attr(ip, *kind, octets);
            }
        });
        nfnetlink::nested(orig, CTA_TUPLE_PROTO | NESTED, |proto| {
            nfnetlink::attr(proto, CTA_PROTO_NUM, &[libc::IPPROTO_UDP as u8]);
            nfnetlink::attr(proto, CTA_PROTO_SRC_PORT, &local.port().to_be_bytes());
            nfnetlink::attr(proto, CTA_PROTO_DST_PORT, &remote.port().to_be_bytes());
        });
    });
    delete(&socket, family, &tuple)
        .map_err(|e| format!("ctnetlink delete {local} -> {remote}: {e}"))
}

/// One delete request and its acknowledgement; nothing to delete (ENOENT) is not an error.
fn delete(socket: &OwnedFd, family: i32, attributes: &[u8]) -> Result<(), String> {
    let flags = libc::NLM_F_REQUEST | libc::NLM_F_ACK;
    let message = nfnetlink::message(
        (NFNL_SUBSYS_CTNETLINK, IPCTNL_MSG_CT_DELETE),
        flags,
        1,
        family as u8,
        attributes,
    );
    nfnetlink::send(socket, &message)?;
    let mut reply = [0u8; 512];
    // SAFETY: the buffer is valid for its length.
    let got = unsafe {
        libc::recv(
            socket.as_raw_fd(),
            reply.as_mut_ptr().cast(),
            reply.len(),
            0,
        )
    };
    let got = Errno::result(got).map_err(|e| e.desc().to_string())? as usize;
    if got >= nfnetlink::HEADER + 4 {
        let code =
            nfnetlink::error_code(&reply[nfnetlink::HEADER..got]).expect("four bytes checked");
        if code != 0 && code != -libc::ENOENT {
            return Err(Errno::from_raw(-code).desc().into());
        }
    }
    Ok(())
}
