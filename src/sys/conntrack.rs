//! Flushing this namespace's connection tracking table (ctnetlink): after `cordon deny`, every
//! flow is judged again at its next packet. An allowed TCP flow is picked up again mid-stream
//! (nf_conntrack_tcp_loose, on by default) and goes on; one to an address no entry opens any
//! more meets the reject rules.

use std::os::fd::AsRawFd;

use nix::errno::Errno;

use super::nfnetlink;

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const HEADER: usize = 16;

/// Deletes every tracked connection of both families.
pub fn flush() -> Result<(), String> {
    let socket = nfnetlink::socket()?;
    for family in [libc::AF_INET, libc::AF_INET6] {
        let flags = (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16;
        let mut message = Vec::with_capacity(HEADER + 4);
        message.extend_from_slice(&((HEADER + 4) as u32).to_ne_bytes());
        message.extend_from_slice(
            &((NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE).to_ne_bytes(),
        );
        message.extend_from_slice(&flags.to_ne_bytes());
        message.extend_from_slice(&1u32.to_ne_bytes());
        message.extend_from_slice(&0u32.to_ne_bytes());
        // nfgenmsg: the family, version 0, resource id 0; no attributes: the whole table.
        message.extend_from_slice(&[family as u8, 0, 0, 0]);
        nfnetlink::send(&socket, &message).map_err(|e| format!("ctnetlink flush: {e}"))?;
        let mut reply = [0u8; 256];
        // SAFETY: the buffer is valid for its length.
        let got = unsafe {
            libc::recv(
                socket.as_raw_fd(),
                reply.as_mut_ptr().cast(),
                reply.len(),
                0,
            )
        };
        let got = Errno::result(got).map_err(|e| format!("ctnetlink flush: {}", e.desc()))?;
        if got as usize >= HEADER + 4 {
            let code = i32::from_ne_bytes(reply[HEADER..HEADER + 4].try_into().unwrap());
            // ENOENT: nothing tracked in that family.
            if code != 0 && code != -libc::ENOENT {
                return Err(format!(
                    "ctnetlink flush: {}",
                    Errno::from_raw(-code).desc()
                ));
            }
        }
    }
    Ok(())
}
