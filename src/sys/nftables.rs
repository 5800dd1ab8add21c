//! Two questions to nftables over netlink, so that the fence need not start an iptables-nft tool
//! to ask them: does a chain exist, and which generation the ruleset is at (every commit, by
//! any process, starts a new one).

use nix::errno::Errno;

use super::nfnetlink;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_GETCHAIN: u16 = 4;
const NFT_MSG_NEWGEN: u16 = 15;
const NFT_MSG_GETGEN: u16 = 16;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_GEN_ID: u16 = 1;
/// nfgenmsg: family, version, resource id.
const NFGENMSG: usize = 4;

/// The nftables families iptables-nft and ip6tables-nft keep their tables in.
pub const IPV4: u8 = libc::NFPROTO_IPV4 as u8;
pub const IPV6: u8 = libc::NFPROTO_IPV6 as u8;

/// Whether `table` of `family` has a chain named `chain` (false when the table is missing too).
pub fn chain_exists(family: u8, table: &str, chain: &str) -> Result<bool, String> {
    let mut attributes = Vec::new();
    nfnetlink::attr(&mut attributes, NFTA_CHAIN_TABLE, &nul_terminated(table));
    nfnetlink::attr(&mut attributes, NFTA_CHAIN_NAME, &nul_terminated(chain));
    match ask(NFT_MSG_GETCHAIN, family, &attributes) {
        Ok(_) => Ok(true),
        Err(Errno::ENOENT) => Ok(false),
        Err(errno) => Err(format!(
            "asking nftables for chain {chain}: {}",
            errno.desc()
        )),
    }
}

/// The ruleset's generation: the same number twice means nothing was committed in between.
pub fn generation() -> Result<u32, String> {
    let replies = ask(NFT_MSG_GETGEN, libc::AF_UNSPEC as u8, &[])
        .map_err(|errno| format!("asking nftables for its generation: {}", errno.desc()))?;
    replies
        .iter()
        .filter(|(kind, _)| *kind == (NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWGEN))
        .find_map(|(_, payload)| {
            nfnetlink::attrs(payload.get(NFGENMSG..)?)
                .find(|(kind, _)| *kind == NFTA_GEN_ID)
                .and_then(|(_, value)| Some(u32::from_be_bytes(value.try_into().ok()?)))
        })
        .ok_or_else(|| "nftables did not say its generation".to_string())
}

fn nul_terminated(text: &str) -> Vec<u8> {
    let mut bytes = text.as_bytes().to_vec();
    bytes.push(0);
    bytes
}

/// Sends one request with an acknowledgement asked for; the messages that came before the
/// acknowledgement (type, payload), or the error it carried.
fn ask(command: u16, family: u8, attributes: &[u8]) -> Result<Vec<(u16, Vec<u8>)>, Errno> {
    let socket = nfnetlink::socket().map_err(|_| Errno::last())?;
    let flags = libc::NLM_F_REQUEST | libc::NLM_F_ACK;
    let message = nfnetlink::message(
        (NFNL_SUBSYS_NFTABLES, command),
        flags,
        1,
        family,
        attributes,
    );
    nfnetlink::send(&socket, &message).map_err(|_| Errno::last())?;
    let mut replies = Vec::new();
    let mut buffer = vec![0u8; 8192];
    loop {
        for (kind, payload) in nfnetlink::receive(&socket, &mut buffer)? {
            if kind == nfnetlink::NLMSG_ERROR {
                return match nfnetlink::error_code(payload)? {
                    0 => Ok(replies),
                    code => Err(Errno::from_raw(-code)),
                };
            }
            replies.push((kind, payload.to_vec()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    /// In a fresh network namespace (unshared by this test's own thread): no chain, then the
    /// chain iptables-nft made; the generation moves with each commit and only then.
    #[test]
    fn chains_and_generations_as_nftables_sees_them() {
        if !root() || crate::sys::tool::Tool::find("iptables-nft").is_none() {
            return;
        }
        std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            assert_eq!(chain_exists(IPV4, "nat", "CORDON_TEST"), Ok(false));
            let before = generation().unwrap();
            assert_eq!(generation().unwrap(), before, "nothing committed");
            let made = std::process::Command::new("iptables-nft")
                .args(["-t", "nat", "-N", "CORDON_TEST"])
                .status()
                .unwrap();
            assert!(made.success());
            assert_eq!(chain_exists(IPV4, "nat", "CORDON_TEST"), Ok(true));
            assert_eq!(chain_exists(IPV6, "nat", "CORDON_TEST"), Ok(false));
            assert_ne!(generation().unwrap(), before, "a commit moved it");
        })
        .join()
        .unwrap();
    }
}
