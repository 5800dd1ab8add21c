//! Flushing this namespace's connection tracking table (ctnetlink): after `cordon deny`, every
//! flow is judged again at its next packet. An allowed TCP flow is picked up again mid-stream
//! (nf_conntrack_tcp_loose, on by default) and goes on; one to an address no entry opens any
//! more meets the reject rules.

use std::os::fd::AsRawFd;

use nix::errno::Errno;

use super::nfnetlink;

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;

/// Deletes every tracked connection of both families.
pub fn flush() -> Result<(), String> {
    let socket = nfnetlink::socket()?;
    for family in [libc::AF_INET, libc::AF_INET6] {
        let flags = libc::NLM_F_REQUEST | libc::NLM_F_ACK;
        // No attributes: the whole table.
        let message = nfnetlink::message(
            (NFNL_SUBSYS_CTNETLINK, IPCTNL_MSG_CT_DELETE),
            flags,
            1,
            family as u8,
            &[],
        );
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
        if got as usize >= nfnetlink::HEADER + 4 {
            let code = nfnetlink::error_code(&reply[nfnetlink::HEADER..got as usize])
                .expect("four bytes checked");
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
