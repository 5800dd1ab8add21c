//! `testkit probe`: one connection attempt per SPEC, with the verdict named by its errno.
//! Output, one line per SPEC: `SPEC VERDICT DETAIL MILLIS` (or, with --repeat-for-ms, one
//! counter line per SPEC).

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::dnswire::{self, RData, A, AAAA, NOERROR, NXDOMAIN, TC, TXT};
use crate::net;
use crate::util::{errno_name, errno_of, fail, usage_error, Args};

const USAGE: &str = "usage: testkit probe [--uid UID] [--gid GID] [--timeout-ms N] [--mark N] \
[--repeat-for-ms N --interval-ms M] SPEC...
  SPEC: tcp:ADDR:PORT | tcpb:ADDR:PORT (a blocking connect) | udp:ADDR:PORT | udpfrom:SRC:PORT>DST:PORT | dns:NAME@SERVER[:PORT] | dns6:NAME@SERVER[:PORT] | \
txt:NAME@SERVER[:PORT] | dnstcp:NAME@SERVER[:PORT] (A over TCP) | \
dnstype:NUMBER/NAME@SERVER[:PORT] (any record type) | \
dnsfrom:SRC:PORT/NAME@SERVER[:PORT] (A, sent from SRC:PORT) | \
dnsburst:COUNT/SUFFIX@SERVER[:PORT] (A for qN.SUFFIX, N < COUNT, all sent at once) | \
http:ADDR:PORT[/PATH]   (ADDR: IPv4 or [IPv6])";

#[derive(Debug, Clone, PartialEq)]
enum Target {
    Tcp(SocketAddr),
    /// A connect on a blocking socket, as most programs make it.
    TcpBlocking(SocketAddr),
    Udp(SocketAddr),
    /// One datagram from a chosen source address and port (`udpfrom:SRC>DST`): whether the
    /// fence lets it leave (`open`: sent; `denied`: refused at the send).
    UdpFrom {
        from: SocketAddr,
        to: SocketAddr,
    },
    Dns {
        name: String,
        server: SocketAddr,
        qtype: u16,
        tcp: bool,
        /// The address and port to send from (UDP), where one is given.
        from: Option<SocketAddr>,
    },
    /// COUNT questions (A for `qN.SUFFIX`) sent back to back, as a build resolving many names
    /// at once does: `answered COUNT` when every one got an address,
    /// else `timeout`/`error` with how many did.
    DnsBurst {
        count: u16,
        suffix: String,
        server: SocketAddr,
    },
    Http {
        addr: SocketAddr,
        path: String,
    },
}

/// Declared in the order of the summary line's counters (`as usize` indexes them).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Verdict {
    Open,
    Refused,
    Rejected,
    Unreachable,
    Denied,
    Timeout,
    Answered,
    Error,
    Nxdomain,
    Http,
}

/// Every verdict, in declaration order.
const VERDICTS: [Verdict; 10] = [
    Verdict::Open,
    Verdict::Refused,
    Verdict::Rejected,
    Verdict::Unreachable,
    Verdict::Denied,
    Verdict::Timeout,
    Verdict::Answered,
    Verdict::Error,
    Verdict::Nxdomain,
    Verdict::Http,
];

impl Verdict {
    fn name(self) -> &'static str {
        match self {
            Verdict::Open => "open",
            Verdict::Refused => "refused",
            Verdict::Rejected => "rejected",
            Verdict::Unreachable => "unreachable",
            Verdict::Denied => "denied",
            Verdict::Timeout => "timeout",
            Verdict::Answered => "answered",
            Verdict::Error => "error",
            Verdict::Nxdomain => "nxdomain",
            Verdict::Http => "http",
        }
    }
}

#[derive(Debug, PartialEq)]
struct Outcome {
    verdict: Verdict,
    detail: String,
}

fn outcome(verdict: Verdict, detail: impl Into<String>) -> Outcome {
    Outcome {
        verdict,
        detail: detail.into(),
    }
}

fn timed_out() -> Outcome {
    outcome(Verdict::Timeout, "-")
}

/// The verdict an errno stands for; DETAIL is the errno's name.
fn from_errno(e: i32) -> Outcome {
    let verdict = match e {
        libc::ECONNREFUSED => Verdict::Refused,
        libc::EHOSTUNREACH => Verdict::Rejected,
        libc::ENETUNREACH => Verdict::Unreachable,
        libc::EPERM | libc::EACCES => Verdict::Denied,
        libc::ETIMEDOUT => Verdict::Timeout,
        libc::EAGAIN => return timed_out(), // a std read/write timeout
        _ => Verdict::Error,
    };
    outcome(verdict, errno_name(e))
}

fn from_io(e: &io::Error) -> Outcome {
    from_errno(errno_of(e))
}

fn format_line(spec: &str, o: &Outcome, elapsed: Duration) -> String {
    format!(
        "{spec} {} {} {:.1}",
        o.verdict.name(),
        o.detail,
        elapsed.as_secs_f64() * 1000.0
    )
}

fn format_summary(spec: &str, counts: &[u64; VERDICTS.len()]) -> String {
    let mut line = spec.to_string();
    for (v, n) in VERDICTS.iter().zip(counts) {
        line += &format!(" {}={n}", v.name());
    }
    line
}

/// `IP`, `[IPv6]` or a full socket address; the port defaults to 53.
fn parse_server(s: &str) -> Option<SocketAddr> {
    let bare = s
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(s);
    s.parse()
        .ok()
        .or_else(|| bare.parse::<IpAddr>().ok().map(|ip| (ip, 53).into()))
}

fn parse_spec(spec: &str) -> Result<Target, String> {
    let bad = || format!("bad SPEC {spec:?}");
    let (kind, rest) = spec.split_once(':').ok_or_else(bad)?;
    let addr = |s: &str| s.parse::<SocketAddr>().map_err(|_| bad());
    Ok(match kind {
        "tcp" => Target::Tcp(addr(rest)?),
        "tcpb" => Target::TcpBlocking(addr(rest)?),
        "udp" => Target::Udp(addr(rest)?),
        "udpfrom" => {
            let (from, to) = rest.split_once('>').ok_or_else(bad)?;
            Target::UdpFrom {
                from: addr(from)?,
                to: addr(to)?,
            }
        }
        "dns" | "dns6" | "txt" | "dnstcp" | "dnstype" | "dnsfrom" => {
            let mut from = None;
            let (qtype, rest) = match kind {
                "dnstype" => {
                    let (number, rest) = rest.split_once('/').ok_or_else(bad)?;
                    (number.parse().map_err(|_| bad())?, rest)
                }
                "dnsfrom" => {
                    let (source, rest) = rest.split_once('/').ok_or_else(bad)?;
                    from = Some(addr(source)?);
                    (A, rest)
                }
                "dns6" => (AAAA, rest),
                "txt" => (TXT, rest),
                _ => (A, rest),
            };
            let (name, server) = rest.rsplit_once('@').ok_or_else(bad)?;
            if !dnswire::valid_name(name) {
                return Err(bad());
            }
            let server = parse_server(server).ok_or_else(bad)?;
            Target::Dns {
                name: name.to_string(),
                server,
                qtype,
                tcp: kind == "dnstcp",
                from,
            }
        }
        "dnsburst" => {
            let (count, rest) = rest.split_once('/').ok_or_else(bad)?;
            let (suffix, server) = rest.rsplit_once('@').ok_or_else(bad)?;
            if !dnswire::valid_name(suffix) {
                return Err(bad());
            }
            Target::DnsBurst {
                count: count.parse().map_err(|_| bad())?,
                suffix: suffix.trim_end_matches('.').to_string(),
                server: parse_server(server).ok_or_else(bad)?,
            }
        }
        "http" => {
            let (a, path) = rest.find('/').map_or((rest, "/"), |i| rest.split_at(i));
            Target::Http {
                addr: addr(a)?,
                path: path.to_string(),
            }
        }
        _ => return Err(bad()),
    })
}

struct Opts {
    uid: Option<u32>,
    gid: Option<u32>,
    timeout: Duration,
    mark: Option<u32>,
    repeat: Option<Duration>,
    interval: Duration,
    specs: Vec<(String, Target)>,
}

fn parse(args: &[String]) -> Result<Opts, String> {
    let mut o = Opts {
        uid: None,
        gid: None,
        timeout: Duration::from_millis(1000),
        mark: None,
        repeat: None,
        interval: Duration::from_millis(100),
        specs: vec![],
    };
    let ms = |v: u64| Duration::from_millis(v);
    let mut a = Args::new(args);
    while let Some(arg) = a.next() {
        match arg {
            "--uid" => o.uid = Some(a.parse(arg)?),
            "--gid" => o.gid = Some(a.parse(arg)?),
            "--timeout-ms" => o.timeout = ms(a.parse(arg)?),
            "--mark" => o.mark = Some(a.parse(arg)?),
            "--repeat-for-ms" => o.repeat = Some(ms(a.parse(arg)?)),
            "--interval-ms" => o.interval = ms(a.parse(arg)?),
            _ if arg.starts_with("--") => return Err(format!("unknown argument {arg:?}")),
            _ => o.specs.push((arg.to_string(), parse_spec(arg)?)),
        }
    }
    if o.specs.is_empty() {
        return Err("no SPEC given".into());
    }
    Ok(o)
}

/// setgroups([]), setgid, setuid, each checked; then makes sure there is no way back.
fn drop_privileges(uid: Option<u32>, gid: Option<u32>) -> Result<(), String> {
    if uid.is_none() && gid.is_none() {
        return Ok(());
    }
    let check = |what: String, r: libc::c_int| match r {
        0 => Ok(()),
        _ => Err(format!("{what}: {}", io::Error::last_os_error())),
    };
    // SAFETY: plain syscalls without pointers (setgroups with an empty list).
    unsafe {
        check("setgroups([])".into(), libc::setgroups(0, std::ptr::null()))?;
        if let Some(g) = gid {
            check(format!("setgid({g})"), libc::setgid(g))?;
        }
        if let Some(u) = uid {
            check(format!("setuid({u})"), libc::setuid(u))?;
            if u != 0 && libc::setuid(0) == 0 {
                return Err(format!("setuid({u}) left a way back to uid 0"));
            }
        }
    }
    Ok(())
}

struct Prober {
    timeout: Duration,
    mark: Option<u32>,
}

fn left(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

/// A DNS message id that differs from run to run.
fn query_id() -> u16 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (t.subsec_nanos() ^ std::process::id().rotate_left(16)) as u16
}

impl Prober {
    /// A non-blocking socket, marked if asked.
    fn socket(&self, addr: &SocketAddr, ty: libc::c_int) -> io::Result<OwnedFd> {
        let fd = net::socket(addr, ty | libc::SOCK_NONBLOCK)?;
        if let Some(m) = self.mark {
            net::set_int_opt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_MARK, m as i32)?;
        }
        Ok(fd)
    }

    fn probe(&self, t: &Target) -> Outcome {
        let deadline = Instant::now() + self.timeout;
        match t {
            Target::Tcp(addr) => self
                .connect(addr, deadline)
                .map_or_else(|o| o, |_| outcome(Verdict::Open, "-")),
            Target::TcpBlocking(addr) => self.connect_blocking(addr),
            Target::Udp(addr) => self.datagram(addr, None, b"x", deadline, |_| {
                Some(outcome(Verdict::Open, "-"))
            }),
            Target::UdpFrom { from, to } => {
                let sent = self.socket(to, libc::SOCK_DGRAM).and_then(|fd| {
                    net::bind(fd.as_raw_fd(), from)?;
                    UdpSocket::from(fd).send_to(b"x", to)
                });
                match sent {
                    Ok(_) => outcome(Verdict::Open, "sent"),
                    Err(e) => from_io(&e),
                }
            }
            Target::Dns {
                name,
                server,
                qtype,
                tcp,
                from,
            } => {
                let id = query_id();
                let query = dnswire::encode_query(id, name, *qtype);
                if !tcp {
                    let judge = |reply: &[u8]| dns_outcome(reply, id, name);
                    return self.datagram(server, from.as_ref(), &query, deadline, judge);
                }
                match self.connect(server, deadline) {
                    Ok(s) => dns_over_tcp(s, &query, id, name, deadline),
                    Err(o) => o,
                }
            }
            Target::Http { addr, path } => match self.connect(addr, deadline) {
                Ok(s) => http_get(s, &format!("{addr}"), path, deadline),
                Err(o) => o,
            },
            Target::DnsBurst {
                count,
                suffix,
                server,
            } => self.burst(*count, suffix, server, deadline),
        }
    }

    /// Sends every question of a burst without waiting for answers, spread over one socket per
    /// `PER_SOCKET` questions (stub resolvers ask from a socket per lookup; one socket's own
    /// buffer is then never what overflows), and then waits for the answers.
    fn burst(&self, count: u16, suffix: &str, server: &SocketAddr, deadline: Instant) -> Outcome {
        const PER_SOCKET: usize = 25;
        let name = |id: u16| format!("q{id}.{suffix}");
        let mut sockets = Vec::new();
        for _ in 0..usize::from(count).div_ceil(PER_SOCKET) {
            let connected = self.socket(server, libc::SOCK_DGRAM).and_then(|fd| {
                let s = UdpSocket::from(fd);
                s.connect(server)?;
                Ok(s)
            });
            match connected {
                Ok(s) => sockets.push(s),
                Err(e) => return from_io(&e),
            }
        }
        for id in 0..count {
            let query = dnswire::encode_query(id, &name(id), A);
            let s = &sockets[usize::from(id) / PER_SOCKET];
            loop {
                match s.send(&query) {
                    Ok(_) => break,
                    Err(e)
                        if e.kind() == io::ErrorKind::WouldBlock && !left(deadline).is_zero() =>
                    {
                        let _ = net::poll1(s.as_raw_fd(), libc::POLLOUT, left(deadline));
                    }
                    Err(e) => return from_io(&e),
                }
            }
        }
        let (mut answered, mut failed) = (vec![false; usize::from(count)], 0u32);
        let mut buf = vec![0u8; 65536];
        let mut fds: Vec<libc::pollfd> = (sockets.iter())
            .map(|s| libc::pollfd {
                fd: s.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        while answered.contains(&false) && !left(deadline).is_zero() {
            let millis = left(deadline).as_millis().clamp(1, 1000) as libc::c_int;
            // SAFETY: fds is a valid array of pollfd for the duration of the call.
            if unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, millis) } < 0 {
                break;
            }
            for (pollfd, s) in fds.iter().zip(&sockets) {
                if pollfd.revents == 0 {
                    continue;
                }
                while let Ok(n) = s.recv(&mut buf) {
                    let Some(id) = dnswire::parse_response(&buf[..n]).map(|r| r.id) else {
                        continue;
                    };
                    let Some(seen) = answered.get_mut(usize::from(id)) else {
                        continue;
                    };
                    match dns_outcome(&buf[..n], id, &name(id)) {
                        Some(o) if o.verdict == Verdict::Answered && o.detail != "-" => {
                            *seen = true
                        }
                        Some(_) => failed += 1,
                        None => {}
                    }
                }
            }
        }
        let got = answered.iter().filter(|seen| **seen).count();
        match (got == usize::from(count), failed) {
            (true, _) => outcome(Verdict::Answered, count.to_string()),
            (false, 0) => outcome(Verdict::Timeout, format!("{got}/{count}")),
            (false, _) => outcome(Verdict::Error, format!("{got}/{count}+{failed}")),
        }
    }

    /// A blocking connect bounded by SO_SNDTIMEO (when it expires connect gives EINPROGRESS).
    fn connect_blocking(&self, addr: &SocketAddr) -> Outcome {
        let fd = match net::socket(addr, libc::SOCK_STREAM) {
            Ok(fd) => fd,
            Err(e) => return from_io(&e),
        };
        let timeout = libc::timeval {
            tv_sec: self.timeout.as_secs() as _,
            tv_usec: self.timeout.subsec_micros() as _,
        };
        // SAFETY: the timeval outlives the call and the length matches it.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_SNDTIMEO,
                &timeout as *const libc::timeval as *const _,
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if let Some(m) = self.mark {
            if let Err(e) =
                net::set_int_opt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_MARK, m as i32)
            {
                return from_io(&e);
            }
        }
        match net::connect(fd.as_raw_fd(), addr) {
            Ok(()) => outcome(Verdict::Open, "-"),
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => timed_out(),
            Err(e) => from_io(&e),
        }
    }

    /// Non-blocking connect, waiting for the outcome until `deadline`.
    fn connect(&self, addr: &SocketAddr, deadline: Instant) -> Result<TcpStream, Outcome> {
        let fd = self
            .socket(addr, libc::SOCK_STREAM)
            .map_err(|e| from_io(&e))?;
        match net::connect(fd.as_raw_fd(), addr) {
            Ok(()) => return Ok(TcpStream::from(fd)),
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(from_io(&e)),
        }
        match net::poll1(fd.as_raw_fd(), libc::POLLOUT, left(deadline)) {
            Ok(0) => Err(timed_out()),
            Ok(_) => {
                let s = TcpStream::from(fd);
                match s.take_error() {
                    Ok(None) => Ok(s),
                    Ok(Some(e)) | Err(e) => Err(from_io(&e)),
                }
            }
            Err(e) => Err(from_io(&e)),
        }
    }

    /// Sends `payload` on a connected UDP socket and waits for a reply that `accept` takes,
    /// or for an error. A send refused locally (EPERM/EACCES: netfilter dropped it) still
    /// waits for the ICMP error a REJECT rule sends right after; none means `denied`.
    fn datagram(
        &self,
        addr: &SocketAddr,
        from: Option<&SocketAddr>,
        payload: &[u8],
        deadline: Instant,
        mut accept: impl FnMut(&[u8]) -> Option<Outcome>,
    ) -> Outcome {
        let bound = self.socket(addr, libc::SOCK_DGRAM).and_then(|fd| {
            if let Some(from) = from {
                net::bind(fd.as_raw_fd(), from)?;
            }
            Ok(fd)
        });
        let s = match bound {
            Ok(fd) => UdpSocket::from(fd),
            Err(e) => return from_io(&e),
        };
        if let Err(e) = s.connect(addr) {
            return from_io(&e);
        }
        let refused_locally = match s.send(payload) {
            Ok(_) => None,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM | libc::EACCES)) => {
                Some(from_io(&e))
            }
            Err(e) => return from_io(&e),
        };
        let mut buf = vec![0u8; 65536];
        loop {
            match net::poll1(s.as_raw_fd(), libc::POLLIN, left(deadline)) {
                Ok(0) => return refused_locally.unwrap_or_else(timed_out),
                Ok(_) => {}
                Err(e) => return from_io(&e),
            }
            // recv also reports a pending ICMP error (ECONNREFUSED, EHOSTUNREACH, ...).
            match s.recv(&mut buf) {
                Ok(n) if refused_locally.is_none() => {
                    if let Some(o) = accept(&buf[..n]) {
                        return o;
                    }
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return from_io(&e),
            }
        }
    }
}

/// The verdict a DNS reply gives (None: not the answer to query `id`).
/// The outcome of `reply` to the question for `name` under `id`; None for a reply to another
/// question. A reply whose question spells the name in another case is an error, as for a stub
/// that checks the case it sent (DNS 0x20).
fn dns_outcome(reply: &[u8], id: u16, name: &str) -> Option<Outcome> {
    let r = dnswire::parse_response(reply).filter(|r| r.id == id)?;
    if r.question
        .as_deref()
        .is_some_and(|q| q != name.trim_end_matches('.'))
    {
        return Some(outcome(Verdict::Error, "CASE"));
    }
    let ips: Vec<String> = (r.answers.iter())
        .filter_map(|a| match a.data {
            RData::Ip(ip) => Some(ip.to_string()),
            _ => None,
        })
        .collect();
    Some(match r.rcode {
        _ if r.flags & TC != 0 && r.answers.is_empty() => outcome(Verdict::Error, "TRUNCATED"),
        NOERROR if ips.is_empty() => outcome(Verdict::Answered, "-"),
        NOERROR => outcome(Verdict::Answered, ips.join(",")),
        NXDOMAIN => outcome(Verdict::Nxdomain, "-"),
        rc => outcome(Verdict::Error, dnswire::rcode_name(rc)),
    })
}

/// One question over an open TCP connection (RFC 7766 framing).
fn dns_over_tcp(mut s: TcpStream, query: &[u8], id: u16, name: &str, deadline: Instant) -> Outcome {
    let io = |s: &mut TcpStream| -> io::Result<Vec<u8>> {
        s.set_nonblocking(false)?;
        s.set_read_timeout(Some(left(deadline).max(Duration::from_millis(1))))?;
        let mut framed = (query.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(query);
        s.write_all(&framed)?;
        let mut len = [0u8; 2];
        s.read_exact(&mut len)?;
        let mut reply = vec![0u8; usize::from(u16::from_be_bytes(len))];
        s.read_exact(&mut reply)?;
        Ok(reply)
    };
    match io(&mut s) {
        Ok(reply) => {
            dns_outcome(&reply, id, name).unwrap_or_else(|| outcome(Verdict::Error, "WRONG_ID"))
        }
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => outcome(Verdict::Error, "CLOSED"),
        Err(e) => from_io(&e),
    }
}

/// Sends a GET and reads the status line.
fn http_get(mut s: TcpStream, host: &str, path: &str, deadline: Instant) -> Outcome {
    let io = |s: &mut TcpStream| -> io::Result<Option<String>> {
        s.set_nonblocking(false)?;
        s.set_write_timeout(Some(left(deadline).max(Duration::from_millis(1))))?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: testkit\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes())?;
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(2).any(|w| w == b"\r\n") {
            let rest = left(deadline);
            if rest.is_zero() {
                return Err(io::ErrorKind::TimedOut.into());
            }
            s.set_read_timeout(Some(rest))?;
            match s.read(&mut buf)? {
                0 => return Ok(None),
                n => head.extend_from_slice(&buf[..n]),
            }
        }
        let line = String::from_utf8_lossy(&head)
            .lines()
            .next()
            .unwrap_or_default()
            .to_string();
        Ok(line
            .split_whitespace()
            .nth(1)
            .filter(|c| c.len() == 3 && line.starts_with("HTTP/"))
            .map(str::to_string))
    };
    match io(&mut s) {
        Ok(Some(code)) => outcome(Verdict::Http, code),
        Ok(None) => outcome(Verdict::Error, "BADRESPONSE"),
        Err(e) if e.raw_os_error().is_none() && e.kind() == io::ErrorKind::TimedOut => timed_out(),
        Err(e) => from_io(&e),
    }
}

pub fn main(args: &[String]) -> i32 {
    let o = match parse(args) {
        Ok(o) => o,
        Err(e) => return usage_error(USAGE, &e),
    };
    if let Err(e) = drop_privileges(o.uid, o.gid) {
        return fail("probe", e);
    }
    let p = Prober {
        timeout: o.timeout,
        mark: o.mark,
    };
    if o.mark.is_some() {
        // Fail loudly up front rather than report every probe as an error.
        if let Err(e) = p.socket(&"127.0.0.1:0".parse().expect("literal"), libc::SOCK_DGRAM) {
            return fail("probe", format!("SO_MARK: {e}"));
        }
    }
    let Some(total) = o.repeat else {
        for (spec, t) in &o.specs {
            let start = Instant::now();
            let out = p.probe(t);
            println!("{}", format_line(spec, &out, start.elapsed()));
        }
        return 0;
    };
    // Rounds start every interval (at once if a round overran) until the time is up.
    let mut counts = vec![[0u64; VERDICTS.len()]; o.specs.len()];
    let (start, mut next) = (Instant::now(), Instant::now());
    while next < start + total {
        std::thread::sleep(left(next));
        for ((_, t), c) in o.specs.iter().zip(&mut counts) {
            let v = p.probe(t).verdict;
            c[v as usize] += 1;
        }
        next = (next + o.interval).max(Instant::now());
    }
    for ((spec, _), c) in o.specs.iter().zip(&counts) {
        println!("{}", format_summary(spec, c));
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_formatted() {
        let o = from_errno(libc::EHOSTUNREACH);
        assert_eq!(
            format_line("tcp:10.9.9.9:80", &o, Duration::from_micros(250)),
            "tcp:10.9.9.9:80 rejected EHOSTUNREACH 0.2"
        );
        let o = outcome(Verdict::Answered, "10.0.0.1,10.0.0.2");
        assert_eq!(
            format_line("dns:a.test@10.0.0.53", &o, Duration::from_millis(12)),
            "dns:a.test@10.0.0.53 answered 10.0.0.1,10.0.0.2 12.0"
        );
        assert_eq!(
            format_line("udp:[::1]:9", &timed_out(), Duration::from_secs(1)),
            "udp:[::1]:9 timeout - 1000.0"
        );
    }

    #[test]
    fn dns_replies_give_verdicts() {
        use crate::dnswire::{encode_response, parse_query, Record};
        let q = parse_query(&dnswire::encode_query(42, "a.test", A)).unwrap();
        let ip = |s: &str| Record {
            name: "a.test".into(),
            ttl: 60,
            data: RData::Ip(s.parse().unwrap()),
        };
        let cname = Record {
            name: "a.test".into(),
            ttl: 60,
            data: RData::Name("b.test".into()),
        };
        let reply = |rcode, answers: &[Record], max| encode_response(&q, rcode, answers, max);
        let two = [cname, ip("10.0.0.1"), ip("10.0.0.2")];
        let got = |wire: Vec<u8>| dns_outcome(&wire, 42, "a.test").unwrap();
        assert_eq!(
            got(reply(NOERROR, &two, 512)),
            outcome(Verdict::Answered, "10.0.0.1,10.0.0.2")
        );
        assert_eq!(
            got(reply(NOERROR, &[], 512)),
            outcome(Verdict::Answered, "-")
        );
        assert_eq!(
            got(reply(NXDOMAIN, &[], 512)),
            outcome(Verdict::Nxdomain, "-")
        );
        assert_eq!(got(reply(2, &[], 512)), outcome(Verdict::Error, "SERVFAIL"));
        assert_eq!(
            got(reply(NOERROR, &two, 40)),
            outcome(Verdict::Error, "TRUNCATED")
        );
        assert_eq!(dns_outcome(&reply(NOERROR, &two, 512), 43, "a.test"), None); // someone else's answer
        assert_eq!(
            dns_outcome(&reply(NOERROR, &two, 512), 42, "A.test"),
            Some(outcome(Verdict::Error, "CASE"))
        );
    }

    #[test]
    fn summary_has_every_counter() {
        let mut c = [0u64; VERDICTS.len()];
        c[Verdict::Rejected as usize] = 5;
        c[Verdict::Error as usize] = 1;
        assert!(VERDICTS.iter().enumerate().all(|(i, v)| *v as usize == i));
        assert_eq!(
            format_summary("tcp:1.2.3.4:80", &c),
            "tcp:1.2.3.4:80 open=0 refused=0 rejected=5 unreachable=0 denied=0 timeout=0 answered=0 error=1 \
nxdomain=0 http=0"
        );
    }

    #[test]
    fn errnos_map_to_verdicts() {
        let v = |e| from_errno(e).verdict;
        assert_eq!(v(libc::ECONNREFUSED), Verdict::Refused);
        assert_eq!(v(libc::EHOSTUNREACH), Verdict::Rejected);
        assert_eq!(v(libc::ENETUNREACH), Verdict::Unreachable);
        assert_eq!(
            (v(libc::EPERM), v(libc::EACCES)),
            (Verdict::Denied, Verdict::Denied)
        );
        assert_eq!(
            from_errno(libc::ECONNRESET),
            outcome(Verdict::Error, "ECONNRESET")
        );
        assert_eq!(from_errno(libc::EAGAIN), timed_out());
    }

    #[test]
    fn specs_are_parsed() {
        let sa = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(
            parse_spec("dnsburst:500/burst.test@10.0.0.1"),
            Ok(Target::DnsBurst {
                count: 500,
                suffix: "burst.test".into(),
                server: sa("10.0.0.1:53"),
            })
        );
        assert!(parse_spec("dnsburst:70000/burst.test@10.0.0.1").is_err());
        assert_eq!(
            parse_spec("tcp:10.0.0.1:80"),
            Ok(Target::Tcp(sa("10.0.0.1:80")))
        );
        assert_eq!(
            parse_spec("tcpb:10.0.0.1:80"),
            Ok(Target::TcpBlocking(sa("10.0.0.1:80")))
        );
        assert_eq!(
            parse_spec("udp:[fd00::1]:53"),
            Ok(Target::Udp(sa("[fd00::1]:53")))
        );
        let dns = |name: &str, server: &str, qtype| {
            Ok(Target::Dns {
                name: name.into(),
                server: sa(server),
                qtype,
                tcp: false,
                from: None,
            })
        };
        assert_eq!(
            parse_spec("dns:a.test@10.0.0.53"),
            dns("a.test", "10.0.0.53:53", A)
        );
        assert_eq!(
            parse_spec("dns6:a.test@10.0.0.53:5353"),
            dns("a.test", "10.0.0.53:5353", AAAA)
        );
        assert_eq!(
            parse_spec("txt:a.test@10.0.0.53"),
            dns("a.test", "10.0.0.53:53", TXT)
        );
        assert_eq!(
            parse_spec("dnstcp:a.test@10.0.0.53"),
            Ok(Target::Dns {
                name: "a.test".into(),
                server: sa("10.0.0.53:53"),
                qtype: A,
                tcp: true,
                from: None,
            })
        );
        assert_eq!(
            parse_spec("dnsfrom:10.0.0.2:4000/a.test@10.0.0.53"),
            Ok(Target::Dns {
                name: "a.test".into(),
                server: sa("10.0.0.53:53"),
                qtype: A,
                tcp: false,
                from: Some(sa("10.0.0.2:4000")),
            })
        );
        assert_eq!(parse_spec("dns:a.test@[::1]"), dns("a.test", "[::1]:53", A));
        assert_eq!(
            parse_spec("dns:a.test@[::1]:5300"),
            dns("a.test", "[::1]:5300", A)
        );
        let http = |addr: &str, path: &str| {
            Ok(Target::Http {
                addr: sa(addr),
                path: path.into(),
            })
        };
        assert_eq!(
            parse_spec("http:[::1]:8080/v1/x?y=1"),
            http("[::1]:8080", "/v1/x?y=1")
        );
        assert_eq!(parse_spec("http:127.0.0.1:80"), http("127.0.0.1:80", "/"));
        for bad in [
            "tcp:10.0.0.1",
            "ftp:1.2.3.4:21",
            "dns:@1.2.3.4",
            "dns:a.test",
            "udp:::1:53",
            "x",
        ] {
            assert!(parse_spec(bad).is_err(), "{bad}");
        }
    }
}
