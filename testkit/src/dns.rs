//! `testkit dns`: an authoritative-only DNS server (no upstream) on UDP and TCP.
//!
//! One thread, one poll loop. Answers wait in a FIFO until due (`--delay-ms` is the same for
//! every answer, so arrival order is due order): thousands of queries can be in flight at once.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use crate::dnswire::{self, Bad, RData, Record, A, AAAA, CNAME, NOERROR, NXDOMAIN};
use crate::net;
use crate::util::{fail, raise_fd_limit, usage_error, write_ready, Args, Log};

const USAGE: &str = "usage: testkit dns --listen IP:PORT [--listen ...] [--record NAME=IP]... \
[--cname NAME=TARGET]... [--stray NAME=IP]... [--wildcard SUFFIX=CIDR]... [--delay-ms N] [--no-answer] \
[--query-log FILE] [--ready-file FILE] [--records-file FILE] [--ttl SECONDS] \
[--forge-before NAME=COUNT]...";

/// The TTL of every record unless `--ttl` says otherwise.
const DEFAULT_TTL: u32 = 60;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cidr {
    base: IpAddr,
    prefix: u32,
}

impl std::str::FromStr for Cidr {
    type Err = ();
    fn from_str(s: &str) -> Result<Cidr, ()> {
        let (ip, prefix) = s.split_once('/').ok_or(())?;
        let (base, prefix): (IpAddr, u32) =
            (ip.parse().map_err(|_| ())?, prefix.parse().map_err(|_| ())?);
        let width = if base.is_ipv4() { 32 } else { 128 };
        (prefix <= width).then_some(Cidr { base, prefix }).ok_or(())
    }
}

/// The server's data: names are stored lowercased, without the trailing dot.
#[derive(Clone)]
pub struct Zone {
    ttl: u32,
    records: HashMap<String, Vec<IpAddr>>,
    cnames: HashMap<String, String>,
    wildcards: Vec<(String, Cidr)>,
    /// Extra A/AAAA records, owned by `stray.test` (a name outside any question's chain), added
    /// to every answer for the question named.
    strays: HashMap<String, Vec<IpAddr>>,
}

impl Default for Zone {
    fn default() -> Zone {
        Zone {
            ttl: DEFAULT_TTL,
            records: HashMap::new(),
            cnames: HashMap::new(),
            wildcards: Vec::new(),
            strays: HashMap::new(),
        }
    }
}

fn norm(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// A 128-bit hash of `name`: two seeded FNV-1a runs, each finished with a splitmix64 mix.
fn hash128(name: &str) -> u128 {
    let h = |seed: u64| {
        let mut h = name
            .bytes()
            .fold(seed, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3));
        h = (h ^ (h >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
        h = (h ^ (h >> 27)).wrapping_mul(0x94d049bb133111eb);
        h ^ (h >> 31)
    };
    ((h(0xcbf29ce484222325) as u128) << 64) | h(0x84222325cbf29ce4) as u128
}

/// The address for `name` inside `net`: derived from a hash of the name, never the all-zeros or
/// all-ones host part (when the prefix leaves room for that).
fn wildcard_addr(name: &str, net: &Cidr) -> IpAddr {
    let (base, width) = match net.base {
        IpAddr::V4(a) => (u32::from(a) as u128, 32),
        IpAddr::V6(a) => (u128::from(a), 128),
    };
    let bits = width - net.prefix;
    let mask = if bits == 0 {
        0
    } else {
        u128::MAX >> (128 - bits)
    };
    let h = hash128(name);
    let host = if bits >= 2 {
        1 + h % (mask - 1)
    } else {
        h & mask
    };
    let v = (base & !mask) | host;
    match net.base {
        IpAddr::V4(_) => Ipv4Addr::from(v as u32).into(),
        IpAddr::V6(_) => Ipv6Addr::from(v).into(),
    }
}

impl Zone {
    fn under_wildcard<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Cidr> + 'a {
        self.wildcards
            .iter()
            .filter(move |(suffix, _)| {
                name.strip_suffix(suffix.as_str())
                    .is_some_and(|head| head.len() > 1 && head.ends_with('.'))
            })
            .map(|(_, cidr)| cidr)
    }

    fn exists(&self, name: &str) -> bool {
        self.records.contains_key(name)
            || self.cnames.contains_key(name)
            || self.wildcards.iter().any(|(s, _)| s == name)
            || self.under_wildcard(name).next().is_some()
    }

    /// The addresses of `name` in one family: its records, else its wildcard addresses.
    fn addrs(&self, name: &str, v6: bool) -> Vec<IpAddr> {
        match self.records.get(name) {
            Some(ips) => ips
                .iter()
                .copied()
                .filter(|ip| ip.is_ipv6() == v6)
                .collect(),
            None => self
                .under_wildcard(name)
                .filter(|c| c.base.is_ipv6() == v6)
                .map(|c| wildcard_addr(name, c))
                .collect(),
        }
    }

    /// This zone with the records of a NAME=ADDRESS file (unreadable lines are skipped) in place
    /// of those names' own.
    fn with_records_from(&self, path: &str) -> Zone {
        let mut zone = self.clone();
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let mut replaced = std::collections::HashSet::new();
        for (name, ip) in text.lines().filter_map(|line| line.trim().split_once('=')) {
            let Ok(ip) = ip.parse::<IpAddr>() else {
                continue;
            };
            let name = norm(name);
            if replaced.insert(name.clone()) {
                zone.records.remove(&name);
            }
            zone.records.entry(name).or_default().push(ip);
        }
        zone
    }

    /// The rcode and answer section for `name` (lowercased) and `qtype`.
    pub fn resolve(&self, name: &str, qtype: u16) -> (u8, Vec<Record>) {
        let rec = |name: &str, data| Record {
            name: name.to_string(),
            ttl: self.ttl,
            data,
        };
        let mut answers = Vec::new();
        let mut name = name.to_string();
        if qtype != CNAME {
            while let Some(target) = self.cnames.get(&name).filter(|_| answers.len() < 16) {
                answers.push(rec(&name, RData::Name(target.clone())));
                name = target.clone();
            }
        }
        if !self.exists(&name) {
            return (NXDOMAIN, answers);
        }
        match qtype {
            A | AAAA => {
                answers.extend(
                    self.addrs(&name, qtype == AAAA)
                        .into_iter()
                        .map(|ip| rec(&name, RData::Ip(ip))),
                );
                answers.extend(
                    self.strays
                        .get(&name)
                        .into_iter()
                        .flatten()
                        .filter(|ip| ip.is_ipv6() == (qtype == AAAA))
                        .map(|ip| rec("stray.test", RData::Ip(*ip))),
                );
            }
            CNAME => answers.extend(
                self.cnames
                    .get(&name)
                    .map(|t| rec(&name, RData::Name(t.clone()))),
            ),
            _ => {}
        }
        (NOERROR, answers)
    }
}

struct Opts {
    listen: Vec<SocketAddr>,
    zone: Zone,
    delay: Duration,
    no_answer: bool,
    query_log: Option<String>,
    ready_file: Option<String>,
    records_file: Option<String>,
    forge_before: HashMap<String, u16>,
}

fn pair<'a>(flag: &str, v: &'a str) -> Result<(String, &'a str), String> {
    match v.split_once('=') {
        Some((name, rhs)) if dnswire::valid_name(name) => Ok((norm(name), rhs)),
        _ => Err(format!(
            "{flag}: expected NAME=VALUE with a valid name, got {v:?}"
        )),
    }
}

fn parse(args: &[String]) -> Result<Opts, String> {
    let mut o = Opts {
        listen: vec![],
        zone: Zone::default(),
        delay: Duration::ZERO,
        no_answer: false,
        query_log: None,
        ready_file: None,
        records_file: None,
        forge_before: HashMap::new(),
    };
    let mut a = Args::new(args);
    while let Some(flag) = a.next() {
        match flag {
            "--listen" => o.listen.push(a.parse(flag)?),
            "--record" => {
                let (name, ip) = pair(flag, a.value(flag)?)?;
                let ip = ip
                    .parse()
                    .map_err(|_| format!("{flag}: bad address {ip:?}"))?;
                o.zone.records.entry(name).or_default().push(ip);
            }
            "--stray" => {
                let (name, ip) = pair(flag, a.value(flag)?)?;
                let ip = ip
                    .parse()
                    .map_err(|_| format!("{flag}: bad address {ip:?}"))?;
                o.zone.strays.entry(name).or_default().push(ip);
            }
            "--cname" => {
                let (name, target) = pair(flag, a.value(flag)?)?;
                if !dnswire::valid_name(target) {
                    return Err(format!("{flag}: bad target {target:?}"));
                }
                o.zone.cnames.insert(name, norm(target));
            }
            "--wildcard" => {
                let (suffix, cidr) = pair(flag, a.value(flag)?)?;
                let cidr = cidr
                    .parse()
                    .map_err(|_| format!("{flag}: bad CIDR {cidr:?}"))?;
                o.zone.wildcards.push((suffix, cidr));
            }
            "--ttl" => o.zone.ttl = a.parse(flag)?,
            "--delay-ms" => o.delay = Duration::from_millis(a.parse(flag)?),
            "--no-answer" => o.no_answer = true,
            "--query-log" => o.query_log = Some(a.value(flag)?.to_string()),
            "--ready-file" => o.ready_file = Some(a.value(flag)?.to_string()),
            "--records-file" => o.records_file = Some(a.value(flag)?.to_string()),
            "--forge-before" => {
                let (name, count) = pair(flag, a.value(flag)?)?;
                let count = count
                    .parse()
                    .map_err(|_| format!("{flag}: bad count {count:?}"))?;
                o.forge_before.insert(name, count);
            }
            _ => return Err(format!("unknown argument {flag:?}")),
        }
    }
    if o.listen.is_empty() {
        return Err("at least one --listen is needed".into());
    }
    Ok(o)
}

pub fn main(args: &[String]) -> i32 {
    let o = match parse(args) {
        Ok(o) => o,
        Err(e) => return usage_error(USAGE, &e),
    };
    match serve(o) {
        Ok(()) => 0,
        Err(e) => fail("dns", e),
    }
}

/// Where an answer goes.
#[derive(Clone, Copy)]
enum To {
    Udp(usize, SocketAddr),
    Tcp(u64),
}

struct Udp {
    sock: UdpSocket,
    out: VecDeque<(SocketAddr, Vec<u8>)>,
}

struct Conn {
    sock: TcpStream,
    peer: SocketAddr,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    eof: bool,
    broken: bool,
    pending: usize,
}

struct Server {
    zone: Zone,
    /// NAME=ADDRESS lines read at every question: they replace those names' records (a test
    /// changes an answer while the server runs).
    records_file: Option<String>,
    /// Names whose answer over UDP comes after this many copies under other ids, from the same
    /// address: what a host forging this server's answers sends, guessing ids.
    forge_before: HashMap<String, u16>,
    log: Log,
    delay: Duration,
    no_answer: bool,
    udp: Vec<Udp>,
    listeners: Vec<TcpListener>,
    conns: HashMap<u64, Conn>,
    next_conn: u64,
    due: VecDeque<(Instant, To, Vec<u8>)>,
}

fn serve(o: Opts) -> io::Result<()> {
    raise_fd_limit();
    let mut udp = Vec::new();
    let mut listeners = Vec::new();
    let mut ready = Vec::new();
    for addr in &o.listen {
        let u = net::bind_udp(addr)?;
        u.set_nonblocking(true)?;
        let bound = u.local_addr()?; // port 0: TCP takes the port UDP got
        let l = net::bind_tcp(&bound)?;
        l.set_nonblocking(true)?;
        ready.push(format!("udp {bound}"));
        ready.push(format!("tcp {}", l.local_addr()?));
        udp.push(Udp {
            sock: u,
            out: VecDeque::new(),
        });
        listeners.push(l);
    }
    let log = Log::open_or(o.query_log.as_deref(), Log::none)?;
    write_ready(o.ready_file.as_deref(), &ready)?;
    let mut s = Server {
        zone: o.zone,
        records_file: o.records_file,
        forge_before: o.forge_before,
        log,
        delay: o.delay,
        no_answer: o.no_answer,
        udp,
        listeners,
        conns: HashMap::new(),
        next_conn: 0,
        due: VecDeque::new(),
    };
    s.run()
}

#[derive(Clone, Copy)]
enum Slot {
    Udp(usize),
    Listener(usize),
    Conn(u64),
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

impl Server {
    fn run(&mut self) -> io::Result<()> {
        let mut buf = vec![0u8; 65536];
        loop {
            self.deliver_due();
            let (mut fds, mut slots) = (Vec::new(), Vec::new());
            let mut add = |fd, events, slot| {
                fds.push(libc::pollfd {
                    fd,
                    events,
                    revents: 0,
                });
                slots.push(slot);
            };
            for (i, u) in self.udp.iter().enumerate() {
                let out = if u.out.is_empty() { 0 } else { libc::POLLOUT };
                add(u.sock.as_raw_fd(), libc::POLLIN | out, Slot::Udp(i));
            }
            for (i, l) in self.listeners.iter().enumerate() {
                add(l.as_raw_fd(), libc::POLLIN, Slot::Listener(i));
            }
            for (id, c) in &self.conns {
                let ev = if c.eof { 0 } else { libc::POLLIN }
                    | if c.wbuf.is_empty() { 0 } else { libc::POLLOUT };
                if ev != 0 {
                    add(c.sock.as_raw_fd(), ev, Slot::Conn(*id));
                }
            }
            let timeout = self
                .due
                .front()
                .map(|d| d.0.saturating_duration_since(Instant::now()));
            net::poll(&mut fds, timeout)?;
            for (p, slot) in fds.iter().zip(slots) {
                if p.revents != 0 {
                    self.event(slot, p.revents, &mut buf);
                }
            }
        }
    }

    fn event(&mut self, slot: Slot, revents: libc::c_short, buf: &mut [u8]) {
        match slot {
            Slot::Udp(i) => {
                if revents & libc::POLLOUT != 0 {
                    flush_udp(&mut self.udp[i]);
                }
                if revents & !libc::POLLOUT != 0 {
                    // Drain every queued datagram; errors (none expected) end the round.
                    while let Ok((n, peer)) = self.udp[i].sock.recv_from(buf) {
                        self.query(&buf[..n], To::Udp(i, peer), peer);
                    }
                }
            }
            Slot::Listener(i) => {
                while let Ok((sock, peer)) = self.listeners[i].accept() {
                    if sock.set_nonblocking(true).is_ok() {
                        let c = Conn {
                            sock,
                            peer,
                            rbuf: vec![],
                            wbuf: vec![],
                            eof: false,
                            broken: false,
                            pending: 0,
                        };
                        self.conns.insert(self.next_conn, c);
                        self.next_conn += 1;
                    }
                }
            }
            Slot::Conn(id) => {
                let Some(c) = self.conns.get_mut(&id) else {
                    return;
                };
                let peer = c.peer;
                if revents & !libc::POLLOUT != 0 {
                    read_conn(c, buf);
                }
                // Complete length-prefixed messages.
                let mut msgs = Vec::new();
                while c.rbuf.len() >= 2 {
                    let len = u16::from_be_bytes([c.rbuf[0], c.rbuf[1]]) as usize;
                    if c.rbuf.len() < 2 + len {
                        break;
                    }
                    msgs.push(c.rbuf[2..2 + len].to_vec());
                    c.rbuf.drain(..2 + len);
                }
                for m in msgs {
                    self.query(&m, To::Tcp(id), peer);
                }
            }
        }
    }

    fn query(&mut self, msg: &[u8], to: To, peer: SocketAddr) {
        let max = match to {
            To::Udp(..) => 512,
            To::Tcp(_) => 65535,
        };
        let mut forged = 0;
        let reply = match dnswire::parse_query(msg) {
            Err(Bad::Ignore) => return,
            Err(Bad::Reply(r)) => r,
            Ok(q) => {
                if let To::Udp(..) = to {
                    forged = self.forge_before.get(&q.name).copied().unwrap_or(0);
                }
                let transport = match to {
                    To::Udp(..) => "udp",
                    To::Tcp(_) => "tcp",
                };
                self.log.line(&format!(
                    "{peer} {transport} {} {}",
                    q.spelled,
                    dnswire::type_name(q.qtype)
                ));
                let (rcode, answers) = match &self.records_file {
                    Some(path) => self.zone.with_records_from(path).resolve(&q.name, q.qtype),
                    None => self.zone.resolve(&q.name, q.qtype),
                };
                dnswire::encode_response(&q, rcode, &answers, max.max(q.udp_size))
            }
        };
        if self.no_answer {
            return;
        }
        if let To::Tcp(id) = to {
            if let Some(c) = self.conns.get_mut(&id) {
                c.pending += 1;
            }
        }
        let due = Instant::now() + self.delay;
        for guess in 1..=forged {
            let mut copy = reply.clone();
            let id = u16::from_be_bytes([copy[0], copy[1]]) ^ guess;
            copy[..2].copy_from_slice(&id.to_be_bytes());
            self.due.push_back((due, to, copy));
        }
        self.due.push_back((due, to, reply));
    }

    /// Hands every due answer to its socket, writes what can be written (this also serves
    /// POLLOUT), drops finished TCP connections.
    fn deliver_due(&mut self) {
        let now = Instant::now();
        while self.due.front().is_some_and(|d| d.0 <= now) {
            let (_, to, msg) = self.due.pop_front().expect("checked");
            match to {
                To::Udp(i, peer) => self.udp[i].out.push_back((peer, msg)),
                To::Tcp(id) => {
                    if let Some(c) = self.conns.get_mut(&id) {
                        c.pending -= 1;
                        c.wbuf.extend_from_slice(&(msg.len() as u16).to_be_bytes());
                        c.wbuf.extend_from_slice(&msg);
                    }
                }
            }
        }
        self.udp
            .iter_mut()
            .filter(|u| !u.out.is_empty())
            .for_each(flush_udp);
        for c in self.conns.values_mut() {
            while !c.wbuf.is_empty() && !c.broken {
                match c.sock.write(&c.wbuf) {
                    Ok(n) if n > 0 => drop(c.wbuf.drain(..n)),
                    Err(e) if would_block(&e) => break,
                    _ => c.broken = true,
                }
            }
        }
        // Keep a connection until it broke, or the client finished and got every answer.
        let finished = |c: &Conn| c.broken || (c.eof && c.pending == 0 && c.wbuf.is_empty());
        self.conns.retain(|_, c| !finished(c));
    }
}

fn read_conn(c: &mut Conn, buf: &mut [u8]) {
    loop {
        match c.sock.read(buf) {
            Ok(0) => return c.eof = true,
            Ok(n) => c.rbuf.extend_from_slice(&buf[..n]),
            Err(e) if would_block(&e) => return,
            Err(_) => return c.broken = true,
        }
    }
}

/// Sends queued datagrams until the socket would block; a failed send drops that datagram.
fn flush_udp(u: &mut Udp) {
    while let Some((peer, msg)) = u.out.front() {
        match u.sock.send_to(msg, peer) {
            Err(e) if would_block(&e) => return,
            _ => drop(u.out.pop_front()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone(args: &[&str]) -> Zone {
        let mut v: Vec<String> = vec!["--listen".into(), "127.0.0.1:53".into()];
        v.extend(args.iter().map(|s| s.to_string()));
        parse(&v).unwrap().zone
    }

    fn ips(z: &Zone, name: &str, qtype: u16) -> (u8, Vec<String>) {
        let (rc, answers) = z.resolve(name, qtype);
        let data = answers
            .iter()
            .map(|r| match &r.data {
                RData::Ip(ip) => ip.to_string(),
                RData::Name(n) => format!("{}>{n}", r.name),
                RData::Other(..) => "?".into(),
            })
            .collect();
        (rc, data)
    }

    #[test]
    fn records_by_family_and_case() {
        let z = zone(&[
            "--record",
            "Multi.TEST.=10.0.0.1",
            "--record",
            "multi.test=10.0.0.2",
            "--record",
            "multi.test=fd00::1",
        ]);
        assert_eq!(
            ips(&z, "multi.test", A),
            (NOERROR, vec!["10.0.0.1".into(), "10.0.0.2".into()])
        );
        assert_eq!(
            ips(&z, "multi.test", AAAA),
            (NOERROR, vec!["fd00::1".into()])
        );
        assert_eq!(ips(&z, "multi.test", 16), (NOERROR, vec![]));
        assert_eq!(ips(&z, "other.test", A), (NXDOMAIN, vec![]));
    }

    #[test]
    fn cname_chain_is_followed() {
        let z = zone(&[
            "--cname",
            "a.test=b.test",
            "--cname",
            "b.test=c.test",
            "--record",
            "c.test=10.0.0.3",
        ]);
        let chain = vec!["a.test>b.test".to_string(), "b.test>c.test".into()];
        let mut with_a = chain.clone();
        with_a.push("10.0.0.3".into());
        assert_eq!(ips(&z, "a.test", A), (NOERROR, with_a));
        assert_eq!(ips(&z, "a.test", AAAA), (NOERROR, chain));
        assert_eq!(
            ips(&z, "a.test", CNAME),
            (NOERROR, vec!["a.test>b.test".into()])
        );
        let z = zone(&[
            "--cname",
            "x.test=gone.test",
            "--cname",
            "loop.test=loop.test",
        ]);
        assert_eq!(
            ips(&z, "x.test", A),
            (NXDOMAIN, vec!["x.test>gone.test".into()])
        );
        assert_eq!(ips(&z, "loop.test", A).1.len(), 16);
    }

    #[test]
    fn wildcards_are_deterministic_and_inside_the_cidr() {
        let z = zone(&[
            "--wildcard",
            "bench.test=10.200.0.0/16",
            "--wildcard",
            "bench.test=fd00:aa::/64",
        ]);
        let (rc, a) = ips(&z, "n1.bench.test", A);
        assert_eq!(rc, NOERROR);
        assert_eq!(a, ips(&z, "n1.bench.test", A).1);
        let v4: Ipv4Addr = a[0].parse().unwrap();
        assert_eq!(v4.octets()[..2], [10, 200]);
        assert_ne!(a, ips(&z, "n2.bench.test", A).1);
        let v6: Ipv6Addr = ips(&z, "deep.n1.bench.test", AAAA).1[0].parse().unwrap();
        assert_eq!(v6.segments()[..4], [0xfd00, 0xaa, 0, 0]);
        assert_eq!(ips(&z, "bench.test", A), (NOERROR, vec![]));
        assert_eq!(ips(&z, "xbench.test", A).0, NXDOMAIN);
        // Host part never all-zeros or all-ones, even in a /30.
        let net: Cidr = "10.0.0.4/30".parse().unwrap();
        for i in 0..200 {
            let ip = wildcard_addr(&format!("h{i}"), &net);
            assert!(["10.0.0.5", "10.0.0.6"].contains(&ip.to_string().as_str()));
        }
        assert_eq!(
            wildcard_addr("x", &"10.1.2.3/32".parse().unwrap()).to_string(),
            "10.1.2.3"
        );
    }

    #[test]
    fn bad_arguments_are_rejected() {
        let bad = |v: &[&str]| parse(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>()).is_err();
        assert!(bad(&[]));
        assert!(bad(&["--listen", "127.0.0.1"]));
        assert!(bad(&[
            "--listen",
            "127.0.0.1:53",
            "--record",
            "a.test=nope"
        ]));
        assert!(bad(&[
            "--listen",
            "127.0.0.1:53",
            "--wildcard",
            "w.test=10.0.0.0/33"
        ]));
        assert!(bad(&["--listen", "127.0.0.1:53", "--frob"]));
    }
}
