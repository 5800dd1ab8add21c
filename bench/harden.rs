//! Harden walk benchmark (issue 3: at most 150 ms median over 50,000 entries).
//!
//! Generates a tree of ENTRIES entries (2% directories, a few setuid/setgid files, symlinks, and
//! as root one file with capabilities), then times `cordon::harden::harden` on it RUNS times,
//! re-planting the privileged bits before each run, and prints the median. As root the tree
//! lives on a fresh tmpfs (like an image's files in the page cache); otherwise, or with
//! `--disk`, in a temporary directory. The tree is removed afterwards.
//!
//!     cargo bench --bench harden [-- --entries 50000 --runs 21 --disk]
//!     cargo bench --bench harden --target x86_64-unknown-linux-musl   (the shipped libc)

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

const SETUID_FILES: usize = 10;
const SETGID_FILES: usize = 5;
/// Version 2 `security.capability`, effective, permitted = cap_net_raw.
const NET_RAW_CAPABILITY: [u8; 20] = [
    0x01, 0x00, 0x00, 0x02, 0x00, 0x20, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

struct Options {
    entries: usize,
    runs: usize,
    disk: bool,
}

fn options() -> Options {
    let mut options = Options {
        entries: 50_000,
        runs: 21,
        disk: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut number = |name: &str| -> usize {
            args.next()
                .and_then(|value| value.parse().ok())
                .unwrap_or_else(|| panic!("{name} needs a number"))
        };
        match arg.as_str() {
            "--entries" => options.entries = number("--entries"),
            "--runs" => options.runs = number("--runs"),
            "--disk" => options.disk = true,
            _ => {}
        }
    }
    options
}

/// The tree's directory; unmounts the tmpfs and removes everything when dropped.
struct Tree {
    root: PathBuf,
    tmpfs: bool,
    planted: Vec<(PathBuf, u32)>,
    capability: Option<PathBuf>,
}

impl Drop for Tree {
    fn drop(&mut self) {
        if self.tmpfs {
            let _ = umount2(&self.root, MntFlags::MNT_DETACH);
        }
        let _ = fs::remove_dir_all(&self.root);
    }
}

impl Tree {
    fn generate(entries: usize, disk: bool) -> Tree {
        let root = std::env::temp_dir().join(format!("cordon-bench-harden-{}", std::process::id()));
        fs::create_dir(&root).expect("create the tree's directory");
        let is_root = nix::unistd::geteuid().is_root();
        let tmpfs = is_root && !disk;
        if tmpfs {
            mount(
                Some("tmpfs"),
                &root,
                Some("tmpfs"),
                MsFlags::empty(),
                Some("mode=755"),
            )
            .expect("mount a tmpfs");
        }
        let mut tree = Tree {
            root,
            tmpfs,
            planted: Vec::new(),
            capability: None,
        };
        tree.fill(entries, is_root);
        tree
    }

    /// Two levels of directories, files spread evenly, every 20th file a symlink.
    fn fill(&mut self, entries: usize, is_root: bool) {
        let dirs = (entries / 50).max(1);
        let top = (dirs as f64).sqrt().ceil() as usize;
        let mut dir_paths = Vec::with_capacity(dirs);
        for i in 0..dirs {
            let path = if i < top {
                self.root.join(format!("d{i}"))
            } else {
                self.root
                    .join(format!("d{}", i % top))
                    .join(format!("s{i}"))
            };
            fs::create_dir(&path).expect("create a directory");
            dir_paths.push(path);
        }
        let files = entries - dirs;
        let stride = files / (SETUID_FILES + SETGID_FILES + 1);
        for i in 0..files {
            let path = dir_paths[i % dirs].join(format!("f{i}"));
            let privileged = match (i % stride, i / stride) {
                (0, k) if (1..=SETUID_FILES).contains(&k) => Some(0o4755),
                (0, k) if (1..=SETUID_FILES + SETGID_FILES).contains(&k) => Some(0o2755),
                _ => None,
            };
            let last = i == files - 1;
            if privileged.is_none() && i % 20 == 19 && !last {
                symlink("/usr/bin/env", &path).expect("create a symlink");
                continue;
            }
            fs::write(&path, b"#!/bin/sh\n").expect("create a file");
            if let Some(mode) = privileged {
                self.planted.push((path, mode));
            } else if last && is_root {
                self.capability = Some(path);
            }
        }
    }

    fn plant(&self) {
        for (path, mode) in &self.planted {
            fs::set_permissions(path, fs::Permissions::from_mode(*mode)).expect("chmod");
        }
        if let Some(path) = &self.capability {
            set_capability(path);
        }
    }
}

fn set_capability(path: &Path) {
    let path = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: NUL-terminated strings and a buffer of the given length, all alive for the call.
    let rc = unsafe {
        libc::setxattr(
            path.as_ptr(),
            c"security.capability".as_ptr(),
            NET_RAW_CAPABILITY.as_ptr().cast(),
            NET_RAW_CAPABILITY.len(),
            0,
        )
    };
    assert_eq!(rc, 0, "setxattr: {}", std::io::Error::last_os_error());
}

fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn ms(duration: Duration) -> String {
    format!("{:.1} ms", duration.as_secs_f64() * 1000.0)
}

fn main() {
    let options = options();
    let tree = Tree::generate(options.entries, options.disk);
    let privileged = tree.planted.len() + usize::from(tree.capability.is_some());
    let mut harden_times = Vec::new();
    let mut scan_times = Vec::new();
    for _ in 0..options.runs {
        tree.plant();
        let started = Instant::now();
        let report = cordon::harden::harden(&tree.root).expect("harden");
        harden_times.push(started.elapsed());
        assert_eq!(report.scan.entries as usize, options.entries);
        assert_eq!(report.stripped.len(), privileged);
        let started = Instant::now();
        let scan = cordon::harden::scan(&tree.root).expect("scan");
        scan_times.push(started.elapsed());
        assert!(scan.privileged.is_empty());
    }
    let (min, max) = (
        *harden_times.iter().min().unwrap(),
        *harden_times.iter().max().unwrap(),
    );
    println!(
        "harden: {} entries ({privileged} privileged) on {}: median {} (min {}, max {}) over {} \
         runs; read-only scan median {}",
        options.entries,
        if tree.tmpfs {
            "tmpfs"
        } else {
            "a temporary directory"
        },
        ms(median(&mut harden_times)),
        ms(min),
        ms(max),
        options.runs,
        ms(median(&mut scan_times)),
    );
}
