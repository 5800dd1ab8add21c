//! `testkit forward`: a DNS forwarder shaped like Docker's embedded DNS. Every UDP query goes
//! upstream from a fresh UDP socket (one poll loop for all of them); every TCP query over a fresh
//! upstream TCP connection (a thread per client connection).

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::thread;
use std::time::{Duration, Instant};

use crate::net;
use crate::util::{fail, raise_fd_limit, usage_error, write_ready, Args};

const USAGE: &str =
    "usage: testkit forward --listen IP:PORT [--listen ...] --upstream IP:PORT [--ready-file FILE]";

const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(5);

struct Opts {
    listen: Vec<SocketAddr>,
    upstream: SocketAddr,
    ready_file: Option<String>,
}

fn parse(args: &[String]) -> Result<Opts, String> {
    let (mut listen, mut upstream, mut ready_file) = (vec![], None, None);
    let mut a = Args::new(args);
    while let Some(flag) = a.next() {
        match flag {
            "--listen" => listen.push(a.parse(flag)?),
            "--upstream" => upstream = Some(a.parse(flag)?),
            "--ready-file" => ready_file = Some(a.value(flag)?.to_string()),
            _ => return Err(format!("unknown argument {flag:?}")),
        }
    }
    let upstream = upstream.ok_or("--upstream is needed")?;
    if listen.is_empty() {
        return Err("at least one --listen is needed".into());
    }
    Ok(Opts {
        listen,
        upstream,
        ready_file,
    })
}

pub fn main(args: &[String]) -> i32 {
    match parse(args) {
        Ok(o) => serve(o).map_or_else(|e| fail("forward", e), |()| 0),
        Err(e) => usage_error(USAGE, &e),
    }
}

/// Runs `f` on a new thread with a small stack (thousands may be in flight).
fn spawn(f: impl FnOnce() + Send + 'static) {
    let _ = thread::Builder::new().stack_size(128 << 10).spawn(f);
}

fn serve(o: Opts) -> io::Result<()> {
    raise_fd_limit();
    let (mut ready, mut udp) = (Vec::new(), Vec::new());
    for addr in &o.listen {
        let u = net::bind_udp(addr)?;
        u.set_nonblocking(true)?;
        let bound = u.local_addr()?; // port 0: TCP takes the port UDP got
        let tcp = net::bind_tcp(&bound)?;
        ready.push(format!("udp {bound}"));
        ready.push(format!("tcp {}", tcp.local_addr()?));
        udp.push(u);
        let up = o.upstream;
        thread::spawn(move || tcp_loop(tcp, up));
    }
    write_ready(o.ready_file.as_deref(), &ready)?;
    udp_loop(udp, o.upstream)
}

/// A query waiting for the upstream's answer on its own socket.
struct InFlight {
    sock: UdpSocket,
    listener: usize,
    peer: SocketAddr,
    born: Instant,
}

/// All UDP forwarding in one poll loop: thousands of queries can be in flight at once.
fn udp_loop(listeners: Vec<UdpSocket>, upstream: SocketAddr) -> io::Result<()> {
    let mut flights: Vec<InFlight> = Vec::new(); // oldest first
    let mut buf = vec![0u8; 65536];
    loop {
        let socks = listeners.iter().chain(flights.iter().map(|f| &f.sock));
        let mut fds: Vec<_> = socks
            .map(|s| libc::pollfd {
                fd: s.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let expiry = flights.first().map(|f| f.born + UPSTREAM_TIMEOUT);
        net::poll(
            &mut fds,
            expiry.map(|t| t.saturating_duration_since(Instant::now())),
        )?;
        let (ours, theirs) = fds.split_at(listeners.len());
        let now = Instant::now();
        let mut answered = theirs.iter().map(|p| p.revents != 0);
        flights.retain(|f| {
            if answered.next() == Some(true) {
                if let Ok(n) = f.sock.recv(&mut buf) {
                    let _ = listeners[f.listener].send_to(&buf[..n], f.peer);
                }
                return false;
            }
            now < f.born + UPSTREAM_TIMEOUT
        });
        for (i, l) in listeners
            .iter()
            .enumerate()
            .filter(|(i, _)| ours[*i].revents != 0)
        {
            while let Ok((n, peer)) = l.recv_from(&mut buf) {
                if let Ok(sock) = send_upstream(&buf[..n], upstream) {
                    flights.push(InFlight {
                        sock,
                        listener: i,
                        peer,
                        born: Instant::now(),
                    });
                }
            }
        }
    }
}

/// Sends `query` to `upstream` from a fresh (non-blocking) UDP socket.
fn send_upstream(query: &[u8], upstream: SocketAddr) -> io::Result<UdpSocket> {
    let local: SocketAddr = match upstream {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let s = UdpSocket::bind(local)?;
    s.set_nonblocking(true)?;
    s.connect(upstream)?;
    s.send(query)?;
    Ok(s)
}

fn tcp_loop(listener: TcpListener, upstream: SocketAddr) {
    for client in listener.incoming().flatten() {
        spawn(move || {
            let _ = tcp_client(client, upstream);
        });
    }
}

fn read_frame(s: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 2];
    s.read_exact(&mut len)?;
    let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut msg)?;
    Ok(msg)
}

fn write_frame(s: &mut TcpStream, msg: &[u8]) -> io::Result<()> {
    let mut framed = (msg.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(msg);
    s.write_all(&framed)
}

/// Serves one client connection: each query over its own upstream connection, in order.
fn tcp_client(mut client: TcpStream, upstream: SocketAddr) -> io::Result<()> {
    client.set_read_timeout(Some(Duration::from_secs(30)))?;
    loop {
        let query = read_frame(&mut client)?;
        let mut up = TcpStream::connect_timeout(&upstream, UPSTREAM_TIMEOUT)?;
        up.set_read_timeout(Some(UPSTREAM_TIMEOUT))?;
        write_frame(&mut up, &query)?;
        let answer = read_frame(&mut up)?;
        write_frame(&mut client, &answer)?;
    }
}
