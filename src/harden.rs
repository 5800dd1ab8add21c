//! Take away every way back to root on the root filesystem: setuid/setgid bits, file
//! capabilities, sudo.
//!
//! The walk stays on the root's own mount (see `walk`): bind mounts, volumes, /proc, /sys and
//! /dev are never entered, so the workspace and the host's files are never changed. Every
//! regular file loses its setuid and setgid bits (the other mode bits are kept) and its
//! `security.capability` attribute; sudoers rules are replaced with a comment.
//!
//! A privileged file that cannot be stripped (a read-only root filesystem, `docker run
//! --read-only`) is fatal. no_new_privs would make it useless to the agent's own processes, but
//! not to a `docker exec -u USER` session (VS Code's terminals are such sessions): the agent can
//! leave a `.bashrc` or a git hook for that session to run, which could then use the setuid
//! binary to become root and open the fence. The fix is to strip the image at build time or to
//! pass `--no-harden` knowingly. Sudoers files that cannot be emptied are only a warning: without
//! its setuid bit sudo cannot act on them.

pub mod background;
pub mod sudoers;

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{self, OFlag};
use nix::sys::stat::{self, Mode};

use crate::error::{Error, Result};
use crate::logging::count;
use crate::sys::mounts::{self, MountTable};
use crate::sys::walk::{self, Kind};

const CAPABILITY: &CStr = c"security.capability";
const SETID_BITS: u32 = 0o6000;
/// How many paths a one-line summary names before it says "and N more".
const NAMED_IN_SUMMARY: usize = 5;

/// A regular file that grants privileges when executed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Privileged {
    pub path: PathBuf,
    /// Permission bits, setuid/setgid/sticky included.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Carries a `security.capability` attribute.
    pub capability: bool,
    dev: u64,
    ino: u64,
}

impl Privileged {
    /// A file a scan found, with the identity `strip` checks before changing it.
    fn found(path: PathBuf, stat: &stat::FileStat, capability: bool) -> Privileged {
        Privileged {
            path,
            mode: stat.st_mode & 0o7777,
            uid: stat.st_uid,
            gid: stat.st_gid,
            capability,
            dev: stat.st_dev,
            ino: stat.st_ino,
        }
    }

    pub fn setuid(&self) -> bool {
        self.mode & 0o4000 != 0
    }

    pub fn setgid(&self) -> bool {
        self.mode & 0o2000 != 0
    }

    /// What makes it privileged, e.g. "setuid root, file capabilities".
    pub fn describe(&self) -> String {
        let mut what = Vec::new();
        if self.setuid() {
            what.push(format!("setuid {}", owner_name(self.uid)));
        }
        if self.setgid() {
            what.push(format!("setgid {}", self.gid));
        }
        if self.capability {
            what.push("file capabilities".to_string());
        }
        what.join(", ")
    }
}

fn owner_name(uid: u32) -> String {
    match uid {
        0 => "root".to_string(),
        uid => format!("uid {uid}"),
    }
}

/// The mode a stripped file gets: the same, without setuid and setgid.
pub fn stripped_mode(mode: u32) -> u32 {
    mode & 0o7777 & !SETID_BITS
}

/// How far harden goes at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Extent {
    /// `--no-harden`: nothing is stripped.
    Skip,
    /// The root filesystem (the default).
    #[default]
    RootFilesystem,
    /// `--strip-mounts`: the root filesystem and every other mount where the bits would work.
    AllMounts,
}

/// What a read-only pass over a root filesystem found.
#[derive(Debug)]
pub struct Scan {
    pub root: PathBuf,
    pub entries: u64,
    pub files: u64,
    pub privileged: Vec<Privileged>,
    /// Mount points and other-device directories that were not entered.
    pub skipped: Vec<PathBuf>,
    /// Directories that could not be read (as a non-root caller: those it may not list).
    pub unreadable: Vec<(PathBuf, Errno)>,
    pub root_dev: u64,
    pub elapsed: Duration,
}

/// Finds every setuid/setgid file and file with capabilities on `root`'s own mount; changes
/// nothing. Runs as any user (`cordon check`).
pub fn scan(root: &Path) -> Result<Scan> {
    scan_with(root, &MountTable::read()?)
}

/// Scans every other mount where a setuid bit or file capability would take effect
/// (`mounts::suid_mounts`): volumes, bind mounts, the workspace. harden strips them only with
/// `--strip-mounts` (they are the user's); `cordon check` reports what it finds there. A mount
/// that could not be scanned is left out.
pub fn scan_other_mounts() -> Vec<Scan> {
    let Ok(text) = std::fs::read("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let table = MountTable::parse(&text);
    mounts::suid_mounts(&text)
        .into_iter()
        .filter_map(|point| match point.is_dir() {
            true => scan_with(&point, &table).ok(),
            false => scan_file(&point),
        })
        .collect()
}

/// A mount point that is a file (a bound /etc/hosts), judged by itself.
fn scan_file(path: &Path) -> Option<Scan> {
    let started = Instant::now();
    let stat = stat::lstat(path).ok()?;
    let c_path = CString::new(path.as_os_str().as_bytes()).ok()?;
    let capability = counts_as_capability(capability_attribute(&c_path));
    let regular = stat.st_mode & libc::S_IFMT == libc::S_IFREG;
    let privileged = (regular && (stat.st_mode & SETID_BITS != 0 || capability))
        .then(|| Privileged::found(path.to_path_buf(), &stat, capability));
    Some(Scan {
        root: path.to_path_buf(),
        entries: 1,
        files: u64::from(regular),
        privileged: privileged.into_iter().collect(),
        skipped: Vec::new(),
        unreadable: Vec::new(),
        root_dev: stat.st_dev,
        elapsed: started.elapsed(),
    })
}

fn scan_with(root: &Path, mounts: &MountTable) -> Result<Scan> {
    let started = Instant::now();
    let walk = walk::walk(root, mounts, walk::default_threads(), Finder::default)?;
    let mut files = 0;
    let mut privileged = Vec::new();
    for finder in walk.visitors {
        files += finder.files;
        privileged.extend(finder.privileged);
    }
    privileged.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(Scan {
        root: walk.root,
        entries: walk.entries,
        files,
        privileged,
        skipped: walk.skipped,
        unreadable: walk.unreadable,
        root_dev: walk.root_dev,
        elapsed: started.elapsed(),
    })
}

/// Entries every walk of this process has visited so far: the background pass reports it.
static VISITED: AtomicU64 = AtomicU64::new(0);

/// One walk thread's findings.
#[derive(Default)]
struct Finder {
    files: u64,
    privileged: Vec<Privileged>,
}

impl walk::Visitor for Finder {
    fn visit(&mut self, entry: &mut walk::Entry<'_>) {
        VISITED.fetch_add(1, Ordering::Relaxed);
        if entry.kind() != Kind::File {
            return;
        }
        self.files += 1;
        let Ok(stat) = entry.stat() else { return };
        let capability = capability_could_work(&stat) && has_capability(entry);
        if stat.st_mode & SETID_BITS != 0 || capability {
            self.privileged
                .push(Privileged::found(entry.path(), &stat, capability));
        }
    }
}

/// Whether a file capability on this file could ever take effect. It does only when the file is
/// executed, which needs an execute bit. A file that has one counts; so does a file owned by
/// another uid than root, whose owner (the agent, say) may `chmod +x` it. A root-owned file
/// without any execute bit can be made executable only by root or with CAP_FOWNER, which the
/// agent never has; a hard link to it shares its owner and mode, and a copy loses the attribute.
/// Asking only about these files saves the attribute read on most files of an image.
fn capability_could_work(stat: &stat::FileStat) -> bool {
    stat.st_mode & 0o111 != 0 || stat.st_uid != 0
}

/// Whether the file has a `security.capability` attribute, asked through the directory's
/// descriptor (/proc/self/fd/N/NAME): short at any depth (a tree the agent can make arbitrarily
/// deep under HOME), and no lookup of every component of the full path. Any answer but "no such
/// attribute" or "attributes not supported" counts as yes: a scan must not miss one.
fn has_capability(entry: &walk::Entry<'_>) -> bool {
    let mut path = format!("/proc/self/fd/{}/", entry.dir().as_raw_fd()).into_bytes();
    path.extend_from_slice(entry.name().to_bytes());
    let answer = CString::new(path)
        .map_err(|_| Errno::EINVAL)
        .and_then(|path| capability_attribute(&path));
    counts_as_capability(answer)
}

/// The size of `path`'s `security.capability` attribute.
fn capability_attribute(path: &CStr) -> nix::Result<isize> {
    // SAFETY: both are NUL-terminated strings that outlive the call; a null buffer of size 0
    // only asks for the attribute's size.
    let rc =
        unsafe { libc::lgetxattr(path.as_ptr(), CAPABILITY.as_ptr(), std::ptr::null_mut(), 0) };
    Errno::result(rc)
}

fn counts_as_capability(answer: nix::Result<isize>) -> bool {
    !matches!(answer, Err(Errno::ENODATA | Errno::EOPNOTSUPP))
}

/// Opens `path` with `flags`; a path longer than PATH_MAX is opened one component at a time,
/// never following a symlink on the way.
fn open_deep(path: &Path, flags: OFlag) -> nix::Result<OwnedFd> {
    match fcntl::open(path, flags, Mode::empty()) {
        Err(Errno::ENAMETOOLONG) => {}
        other => return other,
    }
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(Errno::ENAMETOOLONG);
    };
    let dir_flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mut dir = fcntl::open("/", dir_flags, Mode::empty())?;
    for component in parent.components() {
        if let std::path::Component::Normal(part) = component {
            dir = fcntl::openat(&dir, part, dir_flags, Mode::empty())?;
        }
    }
    fcntl::openat(&dir, name, flags, Mode::empty())
}

fn remove_capability(fd: BorrowedFd<'_>) -> nix::Result<()> {
    // SAFETY: the descriptor is open for the duration of the call; the name is NUL-terminated.
    let rc = unsafe { libc::fremovexattr(fd.as_raw_fd(), CAPABILITY.as_ptr()) };
    match Errno::result(rc) {
        Ok(_) | Err(Errno::ENODATA) => Ok(()),
        Err(errno) => Err(errno),
    }
}

/// What `harden` changed.
#[derive(Debug)]
pub struct Report {
    pub scan: Scan,
    /// The files that were privileged, as they were before stripping.
    pub stripped: Vec<Privileged>,
    pub sudoers_emptied: Vec<PathBuf>,
    pub warnings: Vec<String>,
    pub elapsed: Duration,
}

impl Report {
    pub fn log(&self) {
        log::info!("{}", self.summary());
        for warning in &self.warnings {
            log::warn!("{warning}");
        }
        for file in &self.stripped {
            log::debug!("stripped {} ({})", file.path.display(), file.describe());
        }
        for path in &self.scan.skipped {
            log::debug!("harden: not entered (another mount): {}", path.display());
        }
    }

    pub fn summary(&self) -> String {
        let stripped = if self.stripped.is_empty() {
            "no setuid/setgid files or file capabilities".to_string()
        } else {
            let of_kind =
                |pick: fn(&Privileged) -> bool| self.stripped.iter().filter(|f| pick(f)).count();
            format!(
                "stripped {} ({} setuid, {} setgid, {} with file capabilities): {}",
                count(self.stripped.len() as u64, "file"),
                of_kind(Privileged::setuid),
                of_kind(Privileged::setgid),
                of_kind(|f| f.capability),
                name_a_few(self.stripped.iter().map(|f| &f.path))
            )
        };
        let sudo = if self.sudoers_emptied.is_empty() {
            "no sudoers rules to remove".to_string()
        } else {
            format!(
                "sudoers rules removed from {}",
                name_a_few(self.sudoers_emptied.iter())
            )
        };
        format!(
            "hardened {}: {} ({}) in {} ms; {stripped}; {sudo}",
            self.scan.root.display(),
            count(self.scan.entries, "entry"),
            count(self.scan.files, "file"),
            self.elapsed.as_millis()
        )
    }
}

/// "a, b, c" or "a, b, c, d, e and 7 more".
pub fn name_a_few<'a>(paths: impl ExactSizeIterator<Item = &'a PathBuf>) -> String {
    crate::logging::name_a_few(paths.map(|path| path.display()), NAMED_IN_SUMMARY, ", ")
}

/// Strips every privileged file on `root`'s own mount and disables sudo. Fails, after trying
/// every file, if any privileged file is left.
pub fn harden(root: &Path) -> Result<Report> {
    let started = Instant::now();
    let mounts = MountTable::read()?;
    let scan = scan_with(root, &mounts)?;
    let (stripped, left) = strip_each(&scan.privileged);
    if let Some(&(_, errno)) = left.first() {
        return Err(Error::sys(
            format!(
                "cannot remove setuid/setgid bits or file capabilities from {} (strip them in the \
                 image with `chmod ug-s FILE` and `setcap -r FILE`, or pass --no-harden to accept \
                 the risk)",
                name_a_few(left.iter().map(|(path, _)| path))
            ),
            errno,
        ));
    }
    let sudo = sudoers::disable(&scan.root, scan.root_dev, &mounts.below(&scan.root));
    let mut warnings = sudo.warnings;
    warnings.extend(unreadable_warning(&scan));
    Ok(Report {
        scan,
        stripped,
        sudoers_emptied: sudo.emptied,
        warnings,
        elapsed: started.elapsed(),
    })
}

/// What `--strip-mounts` changed on the other mounts.
#[derive(Debug)]
pub struct MountsReport {
    pub mounts: Vec<PathBuf>,
    pub entries: u64,
    pub stripped: Vec<Privileged>,
    pub elapsed: Duration,
}

impl MountsReport {
    pub fn summary(&self) -> String {
        let stripped = match self.stripped.len() {
            0 => "no setuid/setgid files or file capabilities".to_string(),
            n => format!(
                "stripped {}: {}",
                count(n as u64, "file"),
                name_a_few(self.stripped.iter().map(|f| &f.path))
            ),
        };
        format!(
            "--strip-mounts: {} ({}) in {} ms; {stripped}",
            count(self.mounts.len() as u64, "other mount"),
            count(self.entries, "entry"),
            self.elapsed.as_millis()
        )
    }

    pub fn log(&self) {
        log::info!("{}", self.summary());
        for file in &self.stripped {
            log::info!("stripped {} ({})", file.path.display(), file.describe());
        }
    }
}

/// `--strip-mounts`: strips every privileged file `scan_other_mounts` finds. Fails, after trying
/// every file, if any is left (a read-only mount).
pub fn strip_other_mounts() -> Result<MountsReport> {
    let started = Instant::now();
    let scans = scan_other_mounts();
    let (stripped, left) = strip_each(scans.iter().flat_map(|scan| &scan.privileged));
    if let Some(&(_, errno)) = left.first() {
        return Err(Error::sys(
            format!(
                "--strip-mounts: cannot remove setuid/setgid bits or file capabilities from {} \
                 (strip them where the mount comes from, with `chmod ug-s FILE` and `setcap -r \
                 FILE`; or start the container with --security-opt no-new-privileges, which \
                 makes them inert, and leave out --strip-mounts)",
                name_a_few(left.iter().map(|(path, _)| path))
            ),
            errno,
        ));
    }
    Ok(MountsReport {
        mounts: scans.iter().map(|scan| scan.root.clone()).collect(),
        entries: scans.iter().map(|scan| scan.entries).sum(),
        stripped,
        elapsed: started.elapsed(),
    })
}

fn unreadable_warning(scan: &Scan) -> Option<String> {
    let (first, errno) = scan.unreadable.first()?;
    Some(format!(
        "could not read {} directories, so they were not hardened: {} ({})",
        scan.unreadable.len(),
        first.display(),
        errno.desc()
    ))
}

/// Strips every file, trying each: those stripped, and those left with why.
fn strip_each<'a>(
    files: impl IntoIterator<Item = &'a Privileged>,
) -> (Vec<Privileged>, Vec<(PathBuf, Errno)>) {
    let mut stripped = Vec::new();
    let mut left = Vec::new();
    for file in files {
        match strip(file) {
            Ok(()) => stripped.push(file.clone()),
            Err(errno) => left.push((file.path.clone(), errno)),
        }
    }
    (stripped, left)
}

/// Removes setuid/setgid and file capabilities from one file, after checking through the open
/// descriptor that it is still the file the walk saw (same device and inode).
fn strip(file: &Privileged) -> nix::Result<()> {
    let flags = OFlag::O_RDONLY
        | OFlag::O_NOFOLLOW
        | OFlag::O_NONBLOCK
        | OFlag::O_NOCTTY
        | OFlag::O_CLOEXEC;
    let fd = open_deep(&file.path, flags)?;
    let now = stat::fstat(&fd)?;
    if (now.st_dev, now.st_ino) != (file.dev, file.ino) {
        return Err(Errno::ESTALE);
    }
    if now.st_mode & SETID_BITS != 0 {
        stat::fchmod(&fd, Mode::from_bits_truncate(stripped_mode(now.st_mode)))?;
    }
    if file.capability {
        remove_capability(fd.as_fd())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, mode: u32, capability: bool) -> Privileged {
        Privileged {
            path: PathBuf::from(path),
            mode,
            uid: 0,
            gid: 42,
            capability,
            dev: 1,
            ino: 2,
        }
    }

    #[test]
    fn stripping_keeps_every_other_bit() {
        assert_eq!(stripped_mode(0o104755), 0o755);
        assert_eq!(stripped_mode(0o2755), 0o755);
        assert_eq!(stripped_mode(0o7777), 0o1777);
        assert_eq!(stripped_mode(0o644), 0o644);
    }

    #[test]
    fn describes_what_makes_a_file_privileged() {
        assert_eq!(file("/su", 0o4755, false).describe(), "setuid root");
        assert_eq!(
            file("/x", 0o6755, true).describe(),
            "setuid root, setgid 42, file capabilities"
        );
        assert_eq!(file("/ping", 0o755, true).describe(), "file capabilities");
    }

    #[test]
    fn names_a_few_paths_then_counts() {
        let few: Vec<PathBuf> = ["/a", "/b"].iter().map(PathBuf::from).collect();
        assert_eq!(name_a_few(few.iter()), "/a, /b");
        let many: Vec<PathBuf> = (0..8).map(|i| PathBuf::from(format!("/f{i}"))).collect();
        assert_eq!(
            name_a_few(many.iter()),
            "/f0, /f1, /f2, /f3, /f4 and 3 more"
        );
    }
}

#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    /// A privileged file as a scan would report it; file capabilities when no setid bit is set.
    pub fn privileged(path: &str, mode: u32, uid: u32) -> Privileged {
        Privileged {
            path: PathBuf::from(path),
            mode,
            uid,
            gid: 0,
            capability: mode & SETID_BITS == 0,
            dev: 1,
            ino: 2,
        }
    }
}
