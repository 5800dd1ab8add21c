//! A throw-away root filesystem for the harden and user suites: a tmpfs on a fresh directory,
//! with more mounts inside as a test needs them. Everything is unmounted and removed when the
//! guard drops, also when the test fails. Tests point cordon only at these trees, never at the
//! machine's own files.
#![allow(dead_code)]

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

pub struct Scratch {
    pub root: PathBuf,
    mounts: Vec<PathBuf>,
}

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let root = std::env::temp_dir().join(format!(
            "cordon-{tag}-{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir(&root).expect("create the scratch directory");
        let mut scratch = Scratch {
            root: root.clone(),
            mounts: Vec::new(),
        };
        scratch.tmpfs_at(&root);
        scratch
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.root.join(relative)
    }

    fn tmpfs_at(&mut self, target: &Path) {
        mount(
            Some("tmpfs"),
            target,
            Some("tmpfs"),
            MsFlags::empty(),
            Some("mode=755"),
        )
        .unwrap_or_else(|e| panic!("mount tmpfs on {}: {e}", target.display()));
        self.mounts.push(target.to_path_buf());
    }

    /// A second tmpfs at `relative` (a separate device: a volume or a bind-mounted workspace).
    pub fn tmpfs(&mut self, relative: &str) -> PathBuf {
        let target = self.dir(relative);
        self.tmpfs_at(&target);
        target
    }

    /// Binds `from` (any path) onto `relative`, a directory or file in the tree.
    pub fn bind(&mut self, from: &Path, relative: &str) -> PathBuf {
        let target = self.path(relative);
        if !target.exists() {
            if from.is_dir() {
                fs::create_dir_all(&target).unwrap();
            } else {
                self.file(relative, b"", 0o644);
            }
        }
        mount(
            Some(from),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .unwrap_or_else(|e| panic!("bind {} on {}: {e}", from.display(), target.display()));
        self.mounts.push(target.clone());
        target
    }

    pub fn remount_read_only(&self, path: &Path) {
        mount(
            None::<&str>,
            path,
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .unwrap_or_else(|e| panic!("remount {} read-only: {e}", path.display()));
    }

    pub fn dir(&self, relative: &str) -> PathBuf {
        let path = self.path(relative);
        fs::create_dir_all(&path).unwrap();
        path
    }

    pub fn file(&self, relative: &str, contents: &[u8], mode: u32) -> PathBuf {
        let path = self.path(relative);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, contents).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    /// A file with an owner; the mode is set after the owner, as chown clears setuid/setgid.
    pub fn file_as(
        &self,
        relative: &str,
        contents: &[u8],
        mode: u32,
        owner: (u32, u32),
    ) -> PathBuf {
        let path = self.file(relative, contents, 0o600);
        chown(&path, owner.0, owner.1);
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    pub fn symlink(&self, relative: &str, target: &str) -> PathBuf {
        let path = self.path(relative);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        symlink(target, &path).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for target in self.mounts.iter().rev() {
            let _ = umount2(target, MntFlags::MNT_DETACH);
        }
        if fs::read_dir(&self.root).is_ok_and(|mut entries| entries.next().is_none()) {
            let _ = fs::remove_dir(&self.root);
        }
    }
}

pub fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::MetadataExt;
    fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

pub fn owner(path: &Path) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::symlink_metadata(path).unwrap();
    (meta.uid(), meta.gid())
}

pub fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).unwrap();
}

pub fn setcap(path: &Path) {
    let status = std::process::Command::new("setcap")
        .arg("cap_net_raw+ep")
        .arg(path)
        .status()
        .expect("run setcap (apt-get install libcap2-bin)");
    assert!(status.success(), "setcap failed on {}", path.display());
    assert!(has_capability(path));
}

pub fn has_capability(path: &Path) -> bool {
    let path = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: NUL-terminated strings; a null buffer of size 0 asks for the size only.
    let size = unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            c"security.capability".as_ptr(),
            std::ptr::null_mut(),
            0,
        )
    };
    size >= 0
}
