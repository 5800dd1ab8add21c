//! Thin libc socket helpers for what std does not offer: IPV6_V6ONLY before bind, SO_MARK
//! before connect, a non-blocking connect, and poll with a timeout.

use std::io;
use std::mem;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use crate::util::ctx;

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// `addr` as a sockaddr for bind/connect.
pub fn sockaddr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large enough and suitably aligned for sockaddr_in.
            let sin = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from(*a.ip()).to_be();
            mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            sin6.sin6_scope_id = a.scope_id();
            mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

/// A new close-on-exec socket of `addr`'s family.
pub fn socket(addr: &SocketAddr, ty: libc::c_int) -> io::Result<OwnedFd> {
    let family = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain syscall; on success we own the returned descriptor.
    let fd = cvt(unsafe { libc::socket(family, ty | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: fd is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub fn set_int_opt(fd: RawFd, level: libc::c_int, name: libc::c_int, val: i32) -> io::Result<()> {
    let len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: val outlives the call and len matches its size.
    cvt(unsafe { libc::setsockopt(fd, level, name, &val as *const i32 as *const _, len) })?;
    Ok(())
}

pub fn bind(fd: RawFd, addr: &SocketAddr) -> io::Result<()> {
    let (ss, len) = sockaddr(addr);
    // SAFETY: ss is a valid sockaddr of length len.
    cvt(unsafe { libc::bind(fd, &ss as *const _ as *const libc::sockaddr, len) })?;
    Ok(())
}

/// connect(2); a non-blocking socket yields Err(EINPROGRESS).
pub fn connect(fd: RawFd, addr: &SocketAddr) -> io::Result<()> {
    let (ss, len) = sockaddr(addr);
    // SAFETY: ss is a valid sockaddr of length len.
    cvt(unsafe { libc::connect(fd, &ss as *const _ as *const libc::sockaddr, len) })?;
    Ok(())
}

/// A listening-side socket: SO_REUSEADDR, and IPV6_V6ONLY for IPv6 addresses.
fn bound(addr: &SocketAddr, ty: libc::c_int) -> io::Result<OwnedFd> {
    let fd = socket(addr, ty)?;
    set_int_opt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    if addr.is_ipv6() {
        set_int_opt(fd.as_raw_fd(), libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1)?;
    }
    bind(fd.as_raw_fd(), addr)?;
    Ok(fd)
}

/// A bound UDP socket with 4 MiB buffers, so bursts of thousands of datagrams are not dropped
/// (SO_RCVBUFFORCE, which root may use, goes past net.core.rmem_max).
pub fn bind_udp(addr: &SocketAddr) -> io::Result<UdpSocket> {
    let fd = bound(addr, libc::SOCK_DGRAM).map_err(ctx(format!("bind udp {addr}")))?;
    let raw = fd.as_raw_fd();
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        let _ = set_int_opt(raw, libc::SOL_SOCKET, force, 4 << 20)
            .or_else(|_| set_int_opt(raw, libc::SOL_SOCKET, plain, 4 << 20));
    }
    Ok(UdpSocket::from(fd))
}

pub fn bind_tcp(addr: &SocketAddr) -> io::Result<TcpListener> {
    let fd = bound(addr, libc::SOCK_STREAM).map_err(ctx(format!("bind tcp {addr}")))?;
    // SAFETY: fd is a valid bound stream socket.
    cvt(unsafe { libc::listen(fd.as_raw_fd(), 4096) }).map_err(ctx(format!("listen {addr}")))?;
    Ok(TcpListener::from(fd))
}

/// Waits up to `timeout` for `events` on `fd`; returns the revents (0 on timeout).
pub fn poll1(fd: RawFd, events: libc::c_short, timeout: Duration) -> io::Result<libc::c_short> {
    let mut p = [libc::pollfd {
        fd,
        events,
        revents: 0,
    }];
    poll(&mut p, Some(timeout))?;
    Ok(p[0].revents)
}

/// poll(2) with nanosecond timeout (None = forever), retrying on EINTR.
pub fn poll(fds: &mut [libc::pollfd], timeout: Option<Duration>) -> io::Result<usize> {
    let ts = timeout.map(|t| libc::timespec {
        tv_sec: t.as_secs().min(i32::MAX as u64) as _,
        tv_nsec: t.subsec_nanos() as _,
    });
    let tsp = ts.as_ref().map_or(std::ptr::null(), |t| t as *const _);
    loop {
        // SAFETY: fds is a valid slice of pollfd; tsp is null or points to a live timespec.
        let r = unsafe { libc::ppoll(fds.as_mut_ptr(), fds.len() as _, tsp, std::ptr::null()) };
        match cvt(r) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r.map(|n| n as usize),
        }
    }
}
