//! Many UDP datagrams per system call (`recvmmsg`, `sendmmsg`): the DNS gateway reads and answers
//! a burst of questions with two calls instead of two per question.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd};

use nix::sys::socket::{SockaddrLike, SockaddrStorage};

/// How much each of the gateway's UDP sockets may queue while it is busy (the kernel doubles
/// it and counts each datagram at its buffer's full size, about 830 bytes): some ten thousand
/// questions, so a burst (a build resolving hundreds of names at once) waits instead of being
/// dropped. Kernel memory, taken only while datagrams wait.
pub const QUEUE_BYTES: usize = 4 << 20;

/// Lets `socket` queue `bytes` of datagrams: beyond net.core.rmem_max this needs CAP_NET_ADMIN
/// (SO_RCVBUFFORCE); without it (rootless containers) as much as rmem_max allows. The size the
/// kernel granted.
pub fn enlarge_receive_queue(socket: BorrowedFd<'_>, bytes: usize) -> usize {
    use nix::sys::socket::{getsockopt, setsockopt, sockopt};
    if setsockopt(&socket, sockopt::RcvBufForce, &bytes).is_err() {
        let _ = setsockopt(&socket, sockopt::RcvBuf, &bytes);
    }
    getsockopt(&socket, sockopt::RcvBuf).unwrap_or(0)
}

/// Receive buffers for up to `capacity` datagrams of up to `size` bytes each, allocated once.
pub struct Inbox {
    size: usize,
    buffers: Vec<u8>,
    lengths: Vec<usize>,
    truncated: Vec<bool>,
    senders: Vec<libc::sockaddr_storage>,
    vectors: Vec<libc::iovec>,
    headers: Vec<libc::mmsghdr>,
    count: usize,
}

impl Inbox {
    pub fn new(capacity: usize, size: usize) -> Inbox {
        Inbox {
            size,
            buffers: vec![0; capacity * size],
            lengths: vec![0; capacity],
            truncated: vec![false; capacity],
            // SAFETY: sockaddr_storage and mmsghdr are plain data; all zeroes is a valid value.
            senders: vec![unsafe { std::mem::zeroed() }; capacity],
            vectors: Vec::with_capacity(capacity),
            headers: vec![unsafe { std::mem::zeroed() }; capacity],
            count: 0,
        }
    }

    /// Reads what is waiting on `socket` (non-blocking), up to the capacity; how many came.
    pub fn receive(&mut self, socket: BorrowedFd<'_>) -> io::Result<usize> {
        let capacity = self.lengths.len();
        self.vectors.clear();
        self.vectors.extend(
            self.buffers
                .chunks_mut(self.size)
                .map(|buffer| libc::iovec {
                    iov_base: buffer.as_mut_ptr().cast(),
                    iov_len: buffer.len(),
                }),
        );
        for ((header, vector), sender) in self
            .headers
            .iter_mut()
            .zip(self.vectors.iter_mut())
            .zip(self.senders.iter_mut())
        {
            // SAFETY: as in `new`.
            *header = unsafe { std::mem::zeroed() };
            header.msg_hdr.msg_name = (sender as *mut libc::sockaddr_storage).cast();
            header.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as _;
            header.msg_hdr.msg_iov = vector;
            header.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: `capacity` headers, each pointing at its own buffer and address storage, all
        // owned by `self` and alive for the call.
        let received = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                self.headers.as_mut_ptr(),
                capacity as _,
                libc::MSG_DONTWAIT as _,
                std::ptr::null_mut(),
            )
        };
        self.count = 0;
        if received < 0 {
            let error = io::Error::last_os_error();
            // Only a broken call ends the reading. Anything else is nothing waiting, or an
            // error the kernel reports for an earlier datagram: on a connected socket an ICMP
            // error from the peer (port or host unreachable, administratively prohibited,
            // parameter problem: ECONNREFUSED, EHOSTUNREACH, EPROTO, ...), which anyone who
            // can send from the peer's address can forge; the next read goes on.
            let broken = [libc::EBADF, libc::EFAULT, libc::EINVAL, libc::ENOTSOCK];
            return match error.raw_os_error() {
                Some(errno) if broken.contains(&errno) => Err(error),
                _ => Ok(0),
            };
        }
        self.count = received as usize;
        for (i, header) in self.headers.iter().take(self.count).enumerate() {
            self.lengths[i] = header.msg_len as usize;
            self.truncated[i] = header.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
        }
        Ok(self.count)
    }

    /// The datagrams of the last `receive`: bytes, whether they were cut to the buffer size, and
    /// the sender (None on a socket the kernel gave no address for).
    pub fn iter(&self) -> impl Iterator<Item = Datagram<'_>> {
        (0..self.count).map(|i| Datagram {
            bytes: &self.buffers[i * self.size..i * self.size + self.lengths[i]],
            truncated: self.truncated[i],
            sender: socket_addr(&self.senders[i]),
        })
    }
}

pub struct Datagram<'a> {
    pub bytes: &'a [u8],
    pub truncated: bool,
    pub sender: Option<SocketAddr>,
}

fn socket_addr(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    let len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: the storage is fully initialised and large enough for any address family.
    let address = unsafe {
        SockaddrStorage::from_raw((storage as *const libc::sockaddr_storage).cast(), Some(len))
    }?;
    if let Some(v4) = address.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    address
        .as_sockaddr_in6()
        .map(|v6| SocketAddr::V6((*v6).into()))
}

/// Messages waiting to be sent, each to its address (or on a connected socket with None); the
/// system call's arrays are kept between sends.
#[derive(Default)]
pub struct Outbox {
    messages: Vec<(Vec<u8>, Option<SocketAddr>)>,
    addresses: Vec<Option<SockaddrStorage>>,
    vectors: Vec<libc::iovec>,
    headers: Vec<libc::mmsghdr>,
}

impl Outbox {
    pub fn push(&mut self, bytes: Vec<u8>, to: Option<SocketAddr>) {
        self.messages.push((bytes, to));
    }

    /// Sends every message with as few calls as the kernel allows and empties the box; a
    /// message the kernel refuses is dropped, as a lost datagram. How many were sent.
    pub fn send(&mut self, socket: BorrowedFd<'_>) -> usize {
        if self.messages.is_empty() {
            return 0;
        }
        self.addresses.clear();
        self.addresses.extend(
            self.messages
                .iter()
                .map(|(_, to)| to.map(SockaddrStorage::from)),
        );
        self.vectors.clear();
        self.vectors
            .extend(self.messages.iter().map(|(bytes, _)| libc::iovec {
                iov_base: bytes.as_ptr() as *mut libc::c_void,
                iov_len: bytes.len(),
            }));
        self.headers.clear();
        for (vector, address) in self.vectors.iter_mut().zip(self.addresses.iter()) {
            // SAFETY: mmsghdr is plain data; every pointer field is set here.
            let mut header: libc::mmsghdr = unsafe { std::mem::zeroed() };
            if let Some(address) = address {
                header.msg_hdr.msg_name = address.as_ptr() as *mut libc::c_void;
                header.msg_hdr.msg_namelen = address.len();
            }
            header.msg_hdr.msg_iov = vector;
            header.msg_hdr.msg_iovlen = 1;
            self.headers.push(header);
        }
        let mut sent = 0;
        let mut next = 0;
        while next < self.headers.len() {
            // The system call itself: musl's sendmmsg() on 64-bit sends one message per
            // sendmsg() (to rewrite control messages, which these have none of; the zeroed
            // padding of its msghdr matches the kernel's layout).
            // SAFETY: the headers from `next` on point at buffers and addresses owned by `self`.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_sendmmsg,
                    socket.as_raw_fd(),
                    self.headers[next..].as_mut_ptr(),
                    (self.headers.len() - next) as libc::c_uint,
                    libc::MSG_DONTWAIT as libc::c_uint,
                )
            };
            if rc > 0 {
                sent += rc as usize;
                next += rc as usize;
            } else if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                // The message at `next` failed (a full buffer, an ICMP error pending): drop
                // it and go on with the rest.
                next += 1;
            }
        }
        self.messages.clear();
        self.headers.clear();
        self.vectors.clear();
        sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsFd;

    #[test]
    fn a_burst_goes_out_and_comes_back_in_one_call_each() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = Some(server.local_addr().unwrap());
        let mut outbox = Outbox::default();
        for i in 0u8..5 {
            outbox.push(vec![i; usize::from(i) + 1], to);
        }
        assert_eq!(outbox.send(client.as_fd()), 5);
        assert_eq!(
            outbox.send(client.as_fd()),
            0,
            "sent messages leave the box"
        );
        let mut inbox = Inbox::new(8, 3);
        let mut got = Vec::new();
        while got.len() < 5 {
            inbox.receive(server.as_fd()).unwrap();
            got.extend(
                inbox
                    .iter()
                    .map(|d| (d.bytes.to_vec(), d.truncated, d.sender)),
            );
        }
        let from = Some(client.local_addr().unwrap());
        assert_eq!(
            got,
            [
                (vec![0], false, from),
                (vec![1, 1], false, from),
                (vec![2, 2, 2], false, from),
                (vec![3, 3, 3], true, from),
                (vec![4, 4, 4], true, from),
            ]
        );
        assert_eq!(inbox.receive(server.as_fd()).unwrap(), 0, "nothing waits");
    }
}
