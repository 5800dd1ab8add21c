//! `testkit listen`: TCP listeners that say `hello\n` (or answer HTTP with `world\n`) and UDP
//! echo sockets, logging every accept and datagram.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crate::net;
use crate::util::{fail, usage_error, write_ready, Args, Log};

const USAGE: &str =
    "usage: testkit listen [--tcp IP:PORT]... [--udp IP:PORT]... [--http] [--log FILE] [--ready-file FILE]";

struct Opts {
    tcp: Vec<SocketAddr>,
    udp: Vec<SocketAddr>,
    http: bool,
    log: Option<String>,
    ready_file: Option<String>,
}

fn parse(args: &[String]) -> Result<Opts, String> {
    let mut o = Opts {
        tcp: vec![],
        udp: vec![],
        http: false,
        log: None,
        ready_file: None,
    };
    let mut a = Args::new(args);
    while let Some(flag) = a.next() {
        match flag {
            "--tcp" => o.tcp.push(a.parse(flag)?),
            "--udp" => o.udp.push(a.parse(flag)?),
            "--http" => o.http = true,
            "--log" => o.log = Some(a.value(flag)?.to_string()),
            "--ready-file" => o.ready_file = Some(a.value(flag)?.to_string()),
            _ => return Err(format!("unknown argument {flag:?}")),
        }
    }
    if o.tcp.is_empty() && o.udp.is_empty() {
        return Err("give at least one --tcp or --udp".into());
    }
    Ok(o)
}

pub fn main(args: &[String]) -> i32 {
    match parse(args) {
        Ok(o) => serve(o).map_or_else(|e| fail("listen", e), |()| 0),
        Err(e) => usage_error(USAGE, &e),
    }
}

fn serve(o: Opts) -> io::Result<()> {
    let log = Arc::new(Log::open_or(o.log.as_deref(), Log::stdout)?);
    let tcp = o
        .tcp
        .iter()
        .map(net::bind_tcp)
        .collect::<io::Result<Vec<_>>>()?;
    let udp = o
        .udp
        .iter()
        .map(net::bind_udp)
        .collect::<io::Result<Vec<_>>>()?;
    let mut ready = Vec::new();
    let mut threads = Vec::new();
    for l in tcp {
        ready.push(format!("tcp {}", l.local_addr()?));
        let (log, http) = (log.clone(), o.http);
        threads.push(thread::spawn(move || accept_loop(l, http, log)));
    }
    for u in udp {
        ready.push(format!("udp {}", u.local_addr()?));
        let log = log.clone();
        threads.push(thread::spawn(move || echo_loop(u, log)));
    }
    write_ready(o.ready_file.as_deref(), &ready)?;
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

fn accept_loop(l: TcpListener, http: bool, log: Arc<Log>) {
    for s in l.incoming().flatten() {
        if let (Ok(local), Ok(peer)) = (s.local_addr(), s.peer_addr()) {
            log.line(&format!("tcp {local} {peer}"));
        }
        thread::spawn(move || {
            let _ = greet(s, http);
        });
    }
}

fn greet(mut s: TcpStream, http: bool) -> io::Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    if http {
        // Read the request head (up to the blank line), then answer whatever it was.
        let mut req = Vec::new();
        let mut buf = [0u8; 4096];
        while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 65536 {
            match s.read(&mut buf)? {
                0 => break,
                n => req.extend_from_slice(&buf[..n]),
            }
        }
        let body = if req.starts_with(b"HEAD ") {
            ""
        } else {
            "world\n"
        };
        let head = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 6\r\nConnection: close\r\n\r\n";
        s.write_all(format!("{head}{body}").as_bytes())?;
    } else {
        s.write_all(b"hello\n")?;
    }
    // Lingering close: unread input at close() would turn our FIN into a RST.
    s.shutdown(Shutdown::Write)?;
    s.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut sink = [0u8; 4096];
    while s.read(&mut sink)? > 0 {}
    Ok(())
}

fn echo_loop(u: UdpSocket, log: Arc<Log>) {
    let local = u.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let mut buf = vec![0u8; 65536];
    loop {
        if let Ok((n, peer)) = u.recv_from(&mut buf) {
            log.line(&format!("udp {local} {peer}"));
            let _ = u.send_to(&buf[..n], peer);
        }
    }
}
