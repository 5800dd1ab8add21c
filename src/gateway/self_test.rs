//! The gateway's part of the start-up self-test: as the agent's uid, the TXT question for
//! `filter::SELF_TEST_NAME` goes to each family's first resolver over UDP and over TCP, and must
//! come back with the token only this start's gateway knows. That proves nat redirects the
//! agent's DNS (to the resolver it names) to the gateway, and that the gateway answers; no
//! resolver ever sees the question.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use super::filter::{self_test_query, self_test_token_in};

/// How long each question may take (the gateway has just been forked).
const DEADLINE: Duration = Duration::from_secs(2);

/// A random token for this start.
pub fn new_token() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Asks through the first resolver of each family in `families`; returns what failed.
pub fn run(resolvers: &[IpAddr], agent_uid: u32, token: &str) -> Vec<String> {
    let mut failures = Vec::new();
    let mut first_of_family: Vec<IpAddr> = Vec::new();
    for resolver in resolvers {
        if !first_of_family
            .iter()
            .any(|r| r.is_ipv4() == resolver.is_ipv4())
        {
            first_of_family.push(*resolver);
        }
    }
    for resolver in first_of_family {
        let server = SocketAddr::new(resolver, 53);
        for (how, outcome) in [
            ("udp", as_owner(agent_uid, || over_udp(server, token))),
            ("tcp", as_owner(agent_uid, || over_tcp(server, token))),
        ] {
            if let Err(what) = outcome {
                failures.push(format!(
                    "DNS gateway {how}/{server} (as uid {agent_uid}): {what}"
                ));
            }
        }
    }
    failures
}

/// What became of a question for a name no allowlist has, sent to a server that is not the
/// resolver (`cordon check`).
#[derive(Debug, PartialEq, Eq)]
pub enum Elsewhere {
    /// Answered REFUSED: the question reached the DNS gateway (nat redirects it there).
    Refused,
    /// The fence stopped it (static mode).
    Stopped,
    /// Nothing came back.
    NoAnswer,
    /// No route to the server (a network without a default route): it cannot leave anyway.
    NoRoute,
    /// Nothing listens there (a loopback port).
    NotListening,
    /// Port unreachable came back: nothing listens where the question went (a gateway that
    /// does not run, where nat redirects DNS to it), or a server outside refused it.
    PortUnreachable,
    /// Anything else: an answer from a server, a socket error.
    Other(String),
}

/// Asks `server` for `check.cordon.invalid` (TXT) as `uid`.
pub fn ask_elsewhere(server: SocketAddr, uid: u32) -> Elsewhere {
    let outcome = as_owner(uid, || {
        let local: IpAddr = match server {
            SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
            SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
        };
        let socket = UdpSocket::bind((local, 0)).map_err(|e| e.to_string())?;
        match socket.connect(server) {
            Err(error) if error.raw_os_error() == Some(libc::ENETUNREACH) => {
                return Ok(Elsewhere::NoRoute)
            }
            Err(error) => return Err(error.to_string()),
            Ok(()) => {}
        }
        let mut query = self_test_query(rand::random::<u16>());
        rename_to_check(&mut query);
        // A datagram the fence rejects fails the send itself (EPERM); one that left this
        // namespace may still be rejected outside it, which says nothing about the fence.
        match socket.send(&query) {
            Err(error) if error.raw_os_error() == Some(libc::EPERM) => {
                return Ok(Elsewhere::Stopped)
            }
            Err(error) if error.raw_os_error() == Some(libc::ENETUNREACH) => {
                return Ok(Elsewhere::NoRoute)
            }
            Err(error) => return Ok(Elsewhere::Other(error.to_string())),
            Ok(_) => {}
        }
        socket
            .set_read_timeout(Some(Duration::from_secs(1)))
            .map_err(|e| e.to_string())?;
        let mut buffer = [0u8; 512];
        Ok(match socket.recv(&mut buffer) {
            Ok(len) if len >= 4 && buffer[3] & 0x0f == 5 => Elsewhere::Refused,
            Ok(len) => Elsewhere::Other(format!("answered ({len} bytes)")),
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => Elsewhere::NoAnswer,
            Err(error) if error.raw_os_error() == Some(libc::ECONNREFUSED) => {
                match server.ip().is_loopback() {
                    true => Elsewhere::NotListening,
                    false => Elsewhere::PortUnreachable,
                }
            }
            Err(error) => Elsewhere::Other(format!(
                "it left this container and was stopped outside it ({error}), not by its fence"
            )),
        })
    });
    outcome.unwrap_or_else(Elsewhere::Other)
}

/// `self-test.cordon.invalid` → `check-test.cordon.invalid` (same length): a name the gateway
/// refuses like any other.
fn rename_to_check(query: &mut [u8]) {
    if let Some(at) = query.windows(9).position(|w| w == b"self-test") {
        query[at..at + 9].copy_from_slice(b"checktest");
    }
}

/// Runs `ask` with the file-system uid (which sockets are owned by, and nat's owner match
/// reads) set to `uid`.
fn as_owner<T>(uid: u32, ask: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    crate::sys::caps::with_fsuid(uid, ask)
        .unwrap_or_else(|| Err("cannot act as that uid (CAP_SETUID missing)".into()))
}

fn over_udp(server: SocketAddr, token: &str) -> Result<(), String> {
    let local: IpAddr = match server {
        SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let id = rand::random::<u16>();
    // A datagram from a port whose flow to the server is still tracked (the upstream socket of
    // a gateway just replaced, say) joins that flow instead of being redirected, and the fence
    // rejects it (EPERM): asked again from another port. Where nat does not redirect at all,
    // every try fails. A refused socket is held until the end, so the next gets another port.
    let mut refused = Vec::new();
    let socket = loop {
        let socket = UdpSocket::bind((local, 0)).map_err(|e| e.to_string())?;
        socket.connect(server).map_err(|e| e.to_string())?;
        match socket.send(&self_test_query(id)) {
            Err(error) if error.raw_os_error() == Some(libc::EPERM) && refused.len() < 2 => {
                refused.push(socket)
            }
            Err(error) => return Err(format!("sending: {error}")),
            Ok(_) => break socket,
        }
    };
    let deadline = Instant::now() + DEADLINE;
    let mut buffer = [0u8; 512];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("no answer from the gateway".into());
        }
        socket
            .set_read_timeout(Some(left))
            .map_err(|e| e.to_string())?;
        let len = socket
            .recv(&mut buffer)
            .map_err(|e| format!("no answer from the gateway ({e})"))?;
        match self_test_token_in(&buffer[..len], id) {
            Some(found) if found == token => return Ok(()),
            Some(_) => return Err("answered by something else than this gateway".into()),
            None => continue,
        }
    }
}

fn over_tcp(server: SocketAddr, token: &str) -> Result<(), String> {
    let mut stream =
        TcpStream::connect_timeout(&server, DEADLINE).map_err(|e| format!("connecting: {e}"))?;
    stream
        .set_read_timeout(Some(DEADLINE))
        .map_err(|e| e.to_string())?;
    let id = rand::random::<u16>();
    let query = self_test_query(id);
    let mut framed = (query.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&query);
    stream
        .write_all(&framed)
        .map_err(|e| format!("sending: {e}"))?;
    let mut length = [0u8; 2];
    stream
        .read_exact(&mut length)
        .map_err(|e| format!("no answer from the gateway ({e})"))?;
    let mut reply = vec![0u8; usize::from(u16::from_be_bytes(length))];
    stream
        .read_exact(&mut reply)
        .map_err(|e| format!("a short answer ({e})"))?;
    match self_test_token_in(&reply, id) {
        Some(found) if found == token => Ok(()),
        _ => Err("answered by something else than this gateway".into()),
    }
}
