//! The mount table (/proc/self/mountinfo): which paths are mount points, so that walks stay off
//! bind mounts, volumes and pseudo filesystems even when they share the root's device.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

const MOUNTINFO: &str = "/proc/self/mountinfo";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountTable {
    points: Vec<PathBuf>,
}

/// The mount points strictly below one directory, grouped by their parent directory so a walk
/// asks once per directory and not once per entry.
#[derive(Debug, Default)]
pub struct MountsBelow {
    by_parent: HashMap<PathBuf, HashSet<OsString>>,
}

impl MountTable {
    pub fn read() -> Result<Self> {
        let text = std::fs::read(MOUNTINFO).map_err(|e| {
            Error::io(
                format!(
                    "cannot read {MOUNTINFO}, needed to stay off bind mounts and volumes (mount \
                     /proc in the container)"
                ),
                e,
            )
        })?;
        Ok(Self::parse(&text))
    }

    /// Field 5 of each line is the mount point, with space, tab, newline and backslash written as
    /// octal escapes.
    pub fn parse(text: &[u8]) -> Self {
        let points = text
            .split(|&b| b == b'\n')
            .filter_map(|line| line.split(|&b| b == b' ').nth(4))
            .map(|field| PathBuf::from(OsString::from_vec(unescape(field))))
            .collect();
        MountTable { points }
    }

    pub fn below(&self, root: &Path) -> MountsBelow {
        let mut by_parent: HashMap<PathBuf, HashSet<OsString>> = HashMap::new();
        for point in &self.points {
            if point == root || !point.starts_with(root) {
                continue;
            }
            if let (Some(parent), Some(name)) = (point.parent(), point.file_name()) {
                by_parent
                    .entry(parent.to_path_buf())
                    .or_default()
                    .insert(name.to_os_string());
            }
        }
        MountsBelow { by_parent }
    }

    /// The mount point of the mount that holds `path` (an absolute path without symlinks).
    pub fn mount_of(&self, path: &Path) -> Option<&Path> {
        self.points
            .iter()
            .filter(|point| path.starts_with(point))
            .max_by_key(|point| point.components().count())
            .map(PathBuf::as_path)
    }
}

/// Filesystems that hold no files anyone put there: nothing on them can be setuid.
const KERNEL_FILESYSTEMS: &[&str] = &[
    "proc",
    "sysfs",
    "devpts",
    "devtmpfs",
    "mqueue",
    "cgroup",
    "cgroup2",
    "securityfs",
    "debugfs",
    "tracefs",
    "bpf",
    "pstore",
    "configfs",
    "fusectl",
    "hugetlbfs",
    "binfmt_misc",
    "autofs",
    "nsfs",
    "efivarfs",
    "selinuxfs",
    "rpc_pipefs",
];

/// The mount points other than `/` where a setuid bit or file capability would take effect:
/// mounted without `nosuid`, and not a kernel filesystem. Field 6 of a mountinfo line is the
/// mount's own options; the filesystem type follows the ` - ` separator.
pub fn suid_mounts(text: &[u8]) -> Vec<PathBuf> {
    let mut points = Vec::new();
    for line in text.split(|&b| b == b'\n') {
        let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
        let (Some(point), Some(options)) = (fields.get(4), fields.get(5)) else {
            continue;
        };
        let Some(separator) = fields.iter().position(|f| *f == b"-") else {
            continue;
        };
        let fstype = fields.get(separator + 1).copied().unwrap_or_default();
        let nosuid = options.split(|&b| b == b',').any(|o| o == b"nosuid");
        let kernel = KERNEL_FILESYSTEMS.iter().any(|k| k.as_bytes() == fstype);
        let point = PathBuf::from(OsString::from_vec(unescape(point)));
        if !nosuid && !kernel && point != Path::new("/") && !points.contains(&point) {
            points.push(point);
        }
    }
    points
}

impl MountsBelow {
    pub fn in_dir(&self, dir: &Path) -> Option<&HashSet<OsString>> {
        self.by_parent.get(dir)
    }

    pub fn contains(&self, path: &Path) -> bool {
        match (path.parent(), path.file_name()) {
            (Some(parent), Some(name)) => self
                .in_dir(parent)
                .is_some_and(|names| names.contains(name)),
            _ => false,
        }
    }
}

fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut rest = field;
    while let Some((&first, tail)) = rest.split_first() {
        match (first, octal_byte(tail)) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                rest = &tail[3..];
            }
            _ => {
                out.push(first);
                rest = tail;
            }
        }
    }
    out
}

fn octal_byte(text: &[u8]) -> Option<u8> {
    let digits = text.get(..3)?;
    let value = digits.iter().try_fold(0u32, |value, &digit| {
        (b'0'..=b'7')
            .contains(&digit)
            .then(|| value * 8 + u32::from(digit - b'0'))
    })?;
    u8::try_from(value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOCKER: &[u8] = b"\
1203 1090 0:83 / / rw,relatime master:301 - overlay overlay rw,lowerdir=/l,upperdir=/u,workdir=/w
1204 1203 0:86 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
1205 1203 0:87 / /dev rw,nosuid - tmpfs tmpfs rw,size=65536k,mode=755
1210 1203 254:0 /home/me/project /workspace rw,relatime - ext4 /dev/vda rw
1211 1203 254:0 /var/lib/docker/containers/abc/resolv.conf /etc/resolv.conf rw - ext4 /dev/vda rw
1212 1203 0:90 / /home/node/.claude rw - ext4 /dev/vda rw
1213 1203 0:91 / /mnt/with\\040space rw - tmpfs tmpfs rw
";

    #[test]
    fn mounts_where_setuid_would_work() {
        let text = b"21 1 0:20 / / rw,relatime - overlay overlay rw\n\
            22 21 0:21 / /proc rw,nosuid,nodev,noexec - proc proc rw\n\
            23 21 0:22 / /dev/shm rw,nosuid,nodev - tmpfs shm rw\n\
            24 21 8:1 /srv/ws /workspace rw,relatime - ext4 /dev/sda1 rw\n\
            25 21 8:1 /v/home /home/node rw,relatime master:1 - ext4 /dev/sda1 rw\n\
            26 21 8:1 /etc/hosts /etc/hosts rw,relatime - ext4 /dev/sda1 rw\n\
            27 21 0:23 / /sys/fs/cgroup ro,relatime - cgroup2 cgroup rw\n";
        assert_eq!(
            suid_mounts(text),
            [
                PathBuf::from("/workspace"),
                PathBuf::from("/home/node"),
                PathBuf::from("/etc/hosts")
            ]
        );
    }

    #[test]
    fn parses_mount_points_with_escapes() {
        let table = MountTable::parse(DOCKER);
        assert_eq!(table.points.len(), 7);
        assert_eq!(table.points[6], Path::new("/mnt/with space"));
    }

    #[test]
    fn below_root_excludes_root_and_groups_by_parent() {
        let below = MountTable::parse(DOCKER).below(Path::new("/"));
        assert!(below.contains(Path::new("/proc")));
        assert!(below.contains(Path::new("/workspace")));
        assert!(below.contains(Path::new("/etc/resolv.conf")));
        assert!(below.contains(Path::new("/home/node/.claude")));
        assert!(!below.contains(Path::new("/")));
        assert!(!below.contains(Path::new("/etc/passwd")));
        let etc = below.in_dir(Path::new("/etc")).unwrap();
        assert_eq!(etc.len(), 1);
    }

    #[test]
    fn below_a_subtree_sees_only_its_mounts() {
        let below = MountTable::parse(DOCKER).below(Path::new("/home/node"));
        assert!(below.contains(Path::new("/home/node/.claude")));
        assert!(!below.contains(Path::new("/proc")));
        assert!(below.in_dir(Path::new("/")).is_none());
    }

    #[test]
    fn mount_of_takes_the_longest_prefix() {
        let table = MountTable::parse(DOCKER);
        assert_eq!(
            table.mount_of(Path::new("/workspace/src/main.rs")),
            Some(Path::new("/workspace"))
        );
        assert_eq!(
            table.mount_of(Path::new("/home/node/.bashrc")),
            Some(Path::new("/"))
        );
        assert_eq!(
            table.mount_of(Path::new("/workspacex")),
            Some(Path::new("/"))
        );
    }

    #[test]
    fn unescape_leaves_other_backslashes() {
        assert_eq!(unescape(b"a\\134b\\011c\\9"), b"a\\b\tc\\9");
    }
}
