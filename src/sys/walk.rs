//! A walk over one filesystem tree that never leaves it: it does not follow symlinks, does not
//! enter a directory on another device, and does not enter any mount point listed in the mount
//! table, so bind mounts of the same device (the workspace, a volume) are skipped too.
//!
//! It costs one `getdents` batch per directory, one `openat` + `fstat` per subdirectory, and
//! nothing per other entry: the file type comes from `d_type`, and a visitor that needs an
//! entry's metadata asks for it (one `fstatat` relative to the directory's descriptor). The
//! kernel's per-entry work dominates, so directories are spread over a few threads, each with
//! its own visitor.

use std::ffi::{CStr, CString, OsStr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use nix::dir::{Dir, Type};
use nix::errno::Errno;
use nix::fcntl::{self, AtFlags, OFlag};
use nix::sys::stat::{self, FileStat, Mode, SFlag};

use super::mounts::{MountTable, MountsBelow};
use crate::error::{Error, Result};

/// Threads a walk uses at most; beyond this the disk, not the CPU, is the limit.
pub const MAX_THREADS: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Dir,
    File,
    Symlink,
    Other,
}

impl Kind {
    fn from_mode(mode: u32) -> Kind {
        match SFlag::from_bits_truncate(mode & SFlag::S_IFMT.bits()) {
            SFlag::S_IFDIR => Kind::Dir,
            SFlag::S_IFREG => Kind::File,
            SFlag::S_IFLNK => Kind::Symlink,
            _ => Kind::Other,
        }
    }

    fn from_dirent(file_type: Option<Type>) -> Option<Kind> {
        match file_type? {
            Type::Directory => Some(Kind::Dir),
            Type::File => Some(Kind::File),
            Type::Symlink => Some(Kind::Symlink),
            _ => Some(Kind::Other),
        }
    }
}

/// One entry below the walk's root (the root itself is not visited).
pub struct Entry<'a> {
    dir: BorrowedFd<'a>,
    dir_path: &'a Path,
    name: &'a CStr,
    kind: Kind,
    stat: Option<FileStat>,
    dev: u64,
}

impl Entry<'_> {
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The directory holding the entry, for `*at` calls with `name`.
    pub fn dir(&self) -> BorrowedFd<'_> {
        self.dir
    }

    pub fn name(&self) -> &CStr {
        self.name
    }

    pub fn path(&self) -> PathBuf {
        self.dir_path.join(OsStr::from_bytes(self.name.to_bytes()))
    }

    /// The entry's own metadata (symlinks not followed), read at most once. An entry on another
    /// device than the root (a file bind-mounted from elsewhere) is `EXDEV`: not to be touched.
    pub fn stat(&mut self) -> nix::Result<FileStat> {
        let stat = match self.stat {
            Some(stat) => stat,
            None => stat::fstatat(self.dir, self.name, AtFlags::AT_SYMLINK_NOFOLLOW)?,
        };
        self.stat = Some(stat);
        if stat.st_dev != self.dev {
            return Err(Errno::EXDEV);
        }
        Ok(stat)
    }
}

/// Called for every entry; each thread of a walk has its own.
pub trait Visitor: Send {
    fn visit(&mut self, entry: &mut Entry<'_>);
}

/// What a walk saw, and the visitors that saw it.
#[derive(Debug)]
pub struct Walk<V> {
    /// The root, absolute and without symlinks.
    pub root: PathBuf,
    pub root_dev: u64,
    /// Entries below the root, including the skipped mount points.
    pub entries: u64,
    /// Mount points and other-device directories that were not entered.
    pub skipped: Vec<PathBuf>,
    /// Directories that could not be read, with why.
    pub unreadable: Vec<(PathBuf, Errno)>,
    pub visitors: Vec<V>,
}

/// Walks `root` (symlinks in `root` itself are resolved) with up to `threads` threads (fewer if
/// the system will not start more; the calling thread if none), each calling its own visitor
/// from `new_visitor` for every entry on the root's filesystem and mount.
pub fn walk<V: Visitor>(
    root: &Path,
    mounts: &MountTable,
    threads: usize,
    new_visitor: impl Fn() -> V + Sync,
) -> Result<Walk<V>> {
    let root = std::fs::canonicalize(root)
        .map_err(|e| Error::io(format!("cannot resolve {}", root.display()), e))?;
    let fd = fcntl::open(&root, directory_flags(), Mode::empty())
        .map_err(|e| Error::sys(format!("cannot open {}", root.display()), e))?;
    let root_dev = stat::fstat(&fd)
        .map_err(|e| Error::sys(format!("cannot stat {}", root.display()), e))?
        .st_dev;
    let shared = Shared {
        queue: Mutex::new(Queue {
            jobs: vec![Job::Root {
                fd,
                path: root.clone(),
            }],
            busy: 0,
        }),
        changed: Condvar::new(),
        dev: root_dev,
        below: mounts.below(&root),
    };
    let run = || {
        let mut worker = Worker::new(new_visitor());
        worker.run(&shared);
        worker
    };
    let workers: Vec<Worker<V>> = std::thread::scope(|scope| {
        let spawned: Vec<_> = (0..threads.clamp(1, MAX_THREADS))
            .map_while(|_| std::thread::Builder::new().spawn_scoped(scope, run).ok())
            .collect();
        if spawned.is_empty() {
            return vec![run()];
        }
        spawned
            .into_iter()
            .map(|handle| {
                handle
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    });
    let mut walk = Walk {
        root,
        root_dev,
        entries: 0,
        skipped: Vec::new(),
        unreadable: Vec::new(),
        visitors: Vec::with_capacity(workers.len()),
    };
    for worker in workers {
        walk.entries += worker.entries;
        walk.skipped.extend(worker.skipped);
        walk.unreadable.extend(worker.unreadable);
        walk.visitors.push(worker.visitor);
    }
    walk.skipped.sort();
    walk.unreadable.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(walk)
}

/// The threads to use: the CPUs this process may use, within `MAX_THREADS`.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_THREADS))
}

fn directory_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

/// A directory waiting to be read.
enum Job {
    Root {
        fd: OwnedFd,
        path: PathBuf,
    },
    /// Opened relative to its parent, so no path is resolved twice and no symlink is followed.
    Child {
        parent: Arc<OwnedFd>,
        name: CString,
        path: PathBuf,
    },
}

struct Queue {
    jobs: Vec<Job>,
    /// Jobs taken and not finished; the walk is over when none is queued and none is busy.
    busy: usize,
}

struct Shared {
    queue: Mutex<Queue>,
    changed: Condvar,
    dev: u64,
    below: MountsBelow,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn take(&self) -> Option<InFlight<'_>> {
        let mut queue = self.lock();
        loop {
            if let Some(job) = queue.jobs.pop() {
                queue.busy += 1;
                return Some(InFlight {
                    shared: self,
                    job: Some(job),
                    children: Vec::new(),
                });
            }
            if queue.busy == 0 {
                return None;
            }
            queue = self
                .changed
                .wait(queue)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }
}

/// A job being worked on; queues its children and wakes the other threads when dropped, also
/// when a visitor panics, so no thread waits forever.
struct InFlight<'a> {
    shared: &'a Shared,
    job: Option<Job>,
    children: Vec<Job>,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut queue = self.shared.lock();
        queue.busy -= 1;
        queue.jobs.append(&mut self.children);
        drop(queue);
        self.shared.changed.notify_all();
    }
}

struct Worker<V> {
    visitor: V,
    entries: u64,
    skipped: Vec<PathBuf>,
    unreadable: Vec<(PathBuf, Errno)>,
}

impl<V: Visitor> Worker<V> {
    fn new(visitor: V) -> Self {
        Worker {
            visitor,
            entries: 0,
            skipped: Vec::new(),
            unreadable: Vec::new(),
        }
    }

    fn run(&mut self, shared: &Shared) {
        while let Some(mut in_flight) = shared.take() {
            if let Some(job) = in_flight.job.take() {
                in_flight.children = self.job(shared, job);
            }
        }
    }

    /// Reads one directory; returns its subdirectories as new jobs.
    fn job(&mut self, shared: &Shared, job: Job) -> Vec<Job> {
        let (fd, path) = match job {
            Job::Root { fd, path } => (fd, path),
            Job::Child { parent, name, path } => match self.enter(shared, &parent, &name, path) {
                Some(entered) => entered,
                None => return Vec::new(),
            },
        };
        let fd = Arc::new(fd);
        match self.entries(shared, &fd, &path) {
            Ok(subdirs) => subdirs
                .into_iter()
                .map(|name| Job::Child {
                    parent: Arc::clone(&fd),
                    path: path.join(OsStr::from_bytes(name.to_bytes())),
                    name,
                })
                .collect(),
            Err(errno) => {
                self.unreadable.push((path, errno));
                Vec::new()
            }
        }
    }

    /// Opens a subdirectory and visits it, unless it is on another device or cannot be opened.
    fn enter(
        &mut self,
        shared: &Shared,
        parent: &OwnedFd,
        name: &CStr,
        path: PathBuf,
    ) -> Option<(OwnedFd, PathBuf)> {
        let opened = fcntl::openat(parent, name, directory_flags(), Mode::empty())
            .and_then(|fd| stat::fstat(&fd).map(|stat| (fd, stat)));
        match opened {
            Ok((fd, stat)) if stat.st_dev == shared.dev => {
                self.visitor.visit(&mut Entry {
                    dir: parent.as_fd(),
                    dir_path: path.parent().unwrap_or(&path),
                    name,
                    kind: Kind::Dir,
                    stat: Some(stat),
                    dev: shared.dev,
                });
                Some((fd, path))
            }
            Ok(_) => {
                self.skipped.push(path);
                None
            }
            Err(errno) => {
                self.unreadable.push((path, errno));
                None
            }
        }
    }

    /// Visits every entry of one directory except its subdirectories, which it returns.
    fn entries(&mut self, shared: &Shared, fd: &OwnedFd, path: &Path) -> nix::Result<Vec<CString>> {
        let mounts_here = shared.below.in_dir(path);
        let duplicate = fd
            .try_clone()
            .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EMFILE)))?;
        let mut dir = Dir::from_fd(duplicate)?;
        let mut subdirs = Vec::new();
        for entry in dir.iter() {
            let entry = entry?;
            let name = entry.file_name();
            if name == c"." || name == c".." {
                continue;
            }
            self.entries += 1;
            let name_os = OsStr::from_bytes(name.to_bytes());
            if mounts_here.is_some_and(|names| names.contains(name_os)) {
                self.skipped.push(path.join(name_os));
                continue;
            }
            let (kind, stat) = match Kind::from_dirent(entry.file_type()) {
                Some(kind) => (kind, None),
                None => match stat::fstatat(fd, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
                    Ok(stat) => (Kind::from_mode(stat.st_mode), Some(stat)),
                    Err(_) => continue,
                },
            };
            if kind == Kind::Dir {
                subdirs.push(name.to_owned());
                continue;
            }
            self.visitor.visit(&mut Entry {
                dir: fd.as_fd(),
                dir_path: path,
                name,
                kind,
                stat,
                dev: shared.dev,
            });
        }
        Ok(subdirs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::fs;

    /// A directory under the system's temporary directory, removed when dropped.
    struct TempTree(PathBuf);

    impl TempTree {
        fn new() -> TempTree {
            let path = std::env::temp_dir().join(format!(
                "cordon-walk-test-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = fs::remove_dir_all(&path);
            fs::create_dir_all(&path).unwrap();
            TempTree(fs::canonicalize(path).unwrap())
        }
    }

    impl Drop for TempTree {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[derive(Debug, Default)]
    struct Seen(Vec<(String, Kind)>);

    impl Visitor for Seen {
        fn visit(&mut self, entry: &mut Entry<'_>) {
            entry.stat().expect("stat through the directory descriptor");
            self.0
                .push((entry.path().display().to_string(), entry.kind()));
        }
    }

    fn seen(walk: Walk<Seen>, root: &Path) -> BTreeSet<(String, Kind)> {
        walk.visitors
            .into_iter()
            .flat_map(|seen| seen.0)
            .map(|(path, kind)| (path.replacen(&root.display().to_string(), "", 1), kind))
            .collect()
    }

    #[test]
    fn kinds_from_modes() {
        assert_eq!(Kind::from_mode(0o040755), Kind::Dir);
        assert_eq!(Kind::from_mode(0o104755), Kind::File);
        assert_eq!(Kind::from_mode(0o120777), Kind::Symlink);
        assert_eq!(Kind::from_mode(0o020666), Kind::Other);
    }

    #[test]
    fn visits_everything_once_without_following_symlinks_or_entering_mounts() {
        let tree = TempTree::new();
        let root = &tree.0;
        for dir in ["a/b/c", "mnt/volume/inside", "outside/deep"] {
            fs::create_dir_all(root.join(dir)).unwrap();
        }
        for file in ["top", "a/one", "a/b/two", "a/b/c/three", "outside/deep/x"] {
            fs::write(root.join(file), b"").unwrap();
        }
        std::os::unix::fs::symlink(root.join("outside"), root.join("a/link")).unwrap();
        let mounts = MountTable::parse(
            format!(
                "1 0 0:1 / / rw - ext4 x rw\n2 1 0:2 / {}/mnt/volume rw - tmpfs t rw\n",
                root.display()
            )
            .as_bytes(),
        );

        for threads in [1, 2, 4] {
            let walk = walk(&root.join("a/../a"), &mounts, threads, Seen::default).unwrap();
            assert_eq!(walk.root, root.join("a"));
            assert_eq!(walk.entries, 6);
            let expected: BTreeSet<(String, Kind)> = [
                ("/a/one", Kind::File),
                ("/a/b", Kind::Dir),
                ("/a/b/two", Kind::File),
                ("/a/b/c", Kind::Dir),
                ("/a/b/c/three", Kind::File),
                ("/a/link", Kind::Symlink),
            ]
            .map(|(path, kind)| (path.to_string(), kind))
            .into();
            assert_eq!(seen(walk, root), expected, "{threads} threads");
        }

        let walk = walk(root, &mounts, 2, Seen::default).unwrap();
        assert_eq!(walk.skipped, [root.join("mnt/volume")]);
        let seen = seen(walk, root);
        assert!(seen.contains(&("/mnt".to_string(), Kind::Dir)));
        assert!(!seen.iter().any(|(path, _)| path.starts_with("/mnt/volume")));
        assert!(seen.contains(&("/outside/deep/x".to_string(), Kind::File)));
    }

    #[test]
    fn an_unreadable_root_is_an_error() {
        let error = walk(
            Path::new("/nonexistent/cordon"),
            &MountTable::parse(b""),
            1,
            Seen::default,
        )
        .unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("cannot resolve /nonexistent/cordon"),
            "{error}"
        );
    }
}
