//! Capabilities and securebits by raw system calls: what the agent's drop and the supervisor's
//! confinement use after `fork` (no allocation, no locks), and `holds` for the preflight.

use std::ffi::c_int;

use caps::CapSet;
pub use caps::Capability;
use nix::errno::Errno;

/// Capability numbers are below 64 (the kernel's cap_last_cap is about 40 today).
const CAP_LIMIT: c_int = 64;
/// CAP_KILL, the one capability the supervisor keeps (to signal the agent's processes).
pub const CAP_KILL: u32 = 5;

pub const SECBIT_NOROOT: libc::c_ulong = 1 << 0;
pub const SECBIT_NOROOT_LOCKED: libc::c_ulong = 1 << 1;
pub const SECBIT_NO_SETUID_FIXUP_LOCKED: libc::c_ulong = 1 << 3;
pub const SECBIT_KEEP_CAPS_LOCKED: libc::c_ulong = 1 << 5;
pub const SECBIT_NO_CAP_AMBIENT_RAISE: libc::c_ulong = 1 << 6;
pub const SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED: libc::c_ulong = 1 << 7;

/// Runs `f` with the file-system uid set to `uid`: sockets created meanwhile are owned by it, as
/// the firewall's owner match sees them. None if the uid could not be taken (setfsuid fails
/// silently without CAP_SETUID; asking again with an invalid uid returns the one in effect).
pub fn with_fsuid<T>(uid: u32, f: impl FnOnce() -> T) -> Option<T> {
    use nix::unistd::{setfsuid, Uid};
    let previous = setfsuid(Uid::from_raw(uid));
    let in_effect = setfsuid(Uid::from_raw(u32::MAX));
    let outcome = (in_effect.as_raw() == uid).then(f);
    setfsuid(previous);
    outcome
}

/// Whether this process holds `cap` in its effective set (cordon runs as root: what it holds is
/// its effective set).
pub fn holds(cap: Capability) -> bool {
    caps::has_cap(None, CapSet::Effective, cap).unwrap_or(false)
}

/// Sets (and, with the `_LOCKED` bits, locks) the securebits.
pub fn set_securebits(bits: libc::c_ulong) -> nix::Result<()> {
    prctl(libc::PR_SET_SECUREBITS, bits).map(drop)
}

fn prctl(option: c_int, arg: libc::c_ulong) -> nix::Result<c_int> {
    // SAFETY: plain system call with integer arguments.
    Errno::result(unsafe {
        libc::prctl(
            option,
            arg,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    })
}

/// Drops every capability still in the bounding set (dropping needs CAP_SETPCAP, so one already
/// gone is not dropped again: an empty set stays empty without it).
pub fn clear_bounding_set() -> nix::Result<()> {
    for cap in 0..CAP_LIMIT {
        match prctl(libc::PR_CAPBSET_READ, cap as libc::c_ulong) {
            Ok(0) => continue,
            Ok(_) => {}
            // Past the kernel's last capability.
            Err(Errno::EINVAL) => break,
            Err(errno) => return Err(errno),
        }
        prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong)?;
    }
    Ok(())
}

pub fn clear_ambient_set() -> nix::Result<()> {
    prctl(
        libc::PR_CAP_AMBIENT,
        libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
    )
    .map(drop)
}

/// `struct __user_cap_data_struct`: one of the two 32-bit halves of the capability sets.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct CapData {
    pub effective: u32,
    pub permitted: u32,
    pub inheritable: u32,
}

/// `struct __user_cap_header_struct`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: c_int,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

pub fn capget() -> nix::Result<[CapData; 2]> {
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: header and a two-element data array, as version 3 requires.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    Errno::result(rc).map(|_| data)
}

pub fn capset(data: [CapData; 2]) -> nix::Result<()> {
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    // SAFETY: header and a two-element data array, as version 3 requires.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    Errno::result(rc).map(drop)
}

/// Empties the inheritable set, leaving the others as they are.
pub fn clear_inheritable_set() -> nix::Result<()> {
    let [mut low, mut high] = capget()?;
    low.inheritable = 0;
    high.inheritable = 0;
    capset([low, high])
}

/// Whether every capability set (effective, permitted, inheritable, bounding, ambient) is empty.
pub fn all_empty() -> nix::Result<bool> {
    let sets = capget()?;
    if sets
        .iter()
        .any(|set| set.effective | set.permitted | set.inheritable != 0)
    {
        return Ok(false);
    }
    for cap in 0..CAP_LIMIT {
        match prctl(libc::PR_CAPBSET_READ, cap as libc::c_ulong) {
            Ok(0) => {}
            Ok(_) => return Ok(false),
            Err(Errno::EINVAL) => break,
            Err(errno) => return Err(errno),
        }
        // SAFETY: plain system call with integer arguments.
        let ambient = unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_IS_SET as libc::c_ulong,
                cap as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
            )
        };
        if Errno::result(ambient)? != 0 {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Keeps `kept` in the permitted and effective sets, as far as they are held (a container may
/// lack some), and nothing else; empties the inheritable, ambient and bounding sets (no exec can
/// gain anything back).
pub fn keep_only(kept: &[Capability]) -> nix::Result<()> {
    let [low, high] = capget()?;
    let held = u64::from(low.permitted) | u64::from(high.permitted) << 32;
    clear_ambient_set()?;
    clear_bounding_set()?;
    let bits: u64 = held & kept.iter().fold(0, |bits, cap| bits | 1 << cap.index());
    let half = |shift: u32| CapData {
        effective: (bits >> shift) as u32,
        permitted: (bits >> shift) as u32,
        inheritable: 0,
    };
    capset([half(0), half(32)])
}
