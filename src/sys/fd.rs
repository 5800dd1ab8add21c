//! Descriptors the agent must not inherit: marked close-on-exec after `fork`, without
//! allocating.

use std::ffi::c_int;

use nix::errno::Errno;

/// Marks every descriptor from `lowest` up close-on-exec.
pub fn mark_cloexec_from(lowest: c_int) -> nix::Result<()> {
    // SAFETY: plain system call with integer arguments.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            lowest as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    match Errno::result(rc) {
        Ok(_) => Ok(()),
        // Before Linux 5.11 (no CLOSE_RANGE_CLOEXEC) or 5.9 (no close_range).
        Err(Errno::ENOSYS | Errno::EINVAL) => mark_cloexec_listed(lowest),
        Err(errno) => Err(errno),
    }
}

/// The fallback: list /proc/self/fd with getdents64 into a stack buffer (no allocation).
fn mark_cloexec_listed(lowest: c_int) -> nix::Result<()> {
    // SAFETY: opening a constant path.
    let dir = Errno::result(unsafe {
        libc::open(
            c"/proc/self/fd".as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    })?;
    let mut buffer = [0u8; 2048];
    let result = loop {
        // SAFETY: the buffer is valid for its length.
        let read =
            unsafe { libc::syscall(libc::SYS_getdents64, dir, buffer.as_mut_ptr(), buffer.len()) };
        let len = match Errno::result(read) {
            Ok(0) => break Ok(()),
            Ok(len) => len as usize,
            Err(errno) => break Err(errno),
        };
        for fd in dirent_fds(&buffer[..len]) {
            if fd >= lowest && fd != dir {
                // SAFETY: plain system call; FD_CLOEXEC is the only descriptor flag.
                unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
            }
        }
    };
    // SAFETY: closing the descriptor opened above.
    unsafe { libc::close(dir) };
    result
}

/// The numeric names in a buffer of `struct linux_dirent64` records.
fn dirent_fds(buffer: &[u8]) -> impl Iterator<Item = c_int> + '_ {
    const NAME_OFFSET: usize = 19; // d_ino (8), d_off (8), d_reclen (2), d_type (1)
    let mut offset = 0;
    std::iter::from_fn(move || {
        while offset + NAME_OFFSET <= buffer.len() {
            let record = &buffer[offset..];
            let reclen = usize::from(u16::from_ne_bytes([record[16], record[17]]));
            if reclen == 0 || reclen > record.len() {
                return None;
            }
            offset += reclen;
            let name = &record[NAME_OFFSET..reclen];
            let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
            if let Some(fd) = parse_fd(name) {
                return Some(fd);
            }
        }
        None
    })
}

fn parse_fd(name: &[u8]) -> Option<c_int> {
    if name.is_empty() || !name.iter().all(u8::is_ascii_digit) {
        return None;
    }
    name.iter().try_fold(0 as c_int, |fd, &digit| {
        fd.checked_mul(10)?.checked_add(c_int::from(digit - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn dirent_records_yield_descriptor_numbers() {
        let mut buffer = Vec::new();
        for name in [&b"."[..], b"..", b"0", b"17", b"123"] {
            let reclen = (19 + name.len() + 1).next_multiple_of(8);
            let start = buffer.len();
            buffer.resize(start + reclen, 0);
            buffer[start + 16..start + 18].copy_from_slice(&(reclen as u16).to_ne_bytes());
            buffer[start + 19..start + 19 + name.len()].copy_from_slice(name);
        }
        assert_eq!(dirent_fds(&buffer).collect::<Vec<_>>(), [0, 17, 123]);
    }

    #[test]
    fn fallback_marks_descriptors_close_on_exec() {
        let file = std::fs::File::open("/proc/self/status").unwrap();
        let fd = file.as_raw_fd();
        // SAFETY: clearing the flag on our own descriptor.
        unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
        mark_cloexec_listed(fd).unwrap();
        // SAFETY: reading the flag of our own descriptor.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
    }
}
