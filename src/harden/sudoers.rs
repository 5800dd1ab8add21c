//! sudo's rules: /etc/sudoers and /etc/sudoers.d/*. Harden replaces them with a comment (the
//! sudo binary loses its setuid bit in the same pass); `check` asks whether any rule is left.

use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::mounts::MountsBelow;

pub const DISABLED: &str = "# sudo was disabled by cordon when the container started: nothing \
                            here grants root to anyone.\n# Run `cordon check` to see the state of \
                            the sandbox.\n";

/// Whether the text holds anything sudo acts on: a rule, a Defaults line or an include
/// directive (`#include` and `#includedir` are directives, not comments).
pub fn grants(text: &str) -> bool {
    text.lines()
        .map(str::trim)
        .any(|line| !line.is_empty() && (!line.starts_with('#') || line.starts_with("#include")))
}

/// /etc/sudoers and every file in /etc/sudoers.d, below `root`.
pub fn files(root: &Path) -> Vec<PathBuf> {
    let etc = root.join("etc");
    let mut files = vec![etc.join("sudoers")];
    if let Ok(entries) = fs::read_dir(etc.join("sudoers.d")) {
        let mut included: Vec<PathBuf> = entries.flatten().map(|entry| entry.path()).collect();
        included.sort();
        files.extend(included);
    }
    files.retain(|path| path.symlink_metadata().is_ok());
    files
}

#[derive(Debug, Default)]
pub struct Disabled {
    pub emptied: Vec<PathBuf>,
    pub warnings: Vec<String>,
}

/// Replaces every sudoers file on the root's own filesystem with `DISABLED`. Files on other
/// mounts (a bind-mounted sudoers belongs to the host) and symlinks are left alone and reported.
pub fn disable(root: &Path, root_dev: u64, mounts: &MountsBelow) -> Disabled {
    let mut done = Disabled::default();
    for path in files(root) {
        match disable_one(&path, root_dev, mounts) {
            Ok(true) => done.emptied.push(path),
            Ok(false) => {}
            Err(why) => done.warnings.push(format!(
                "sudoers file {} left as it is: {why} (sudo itself has lost its setuid bit)",
                path.display()
            )),
        }
    }
    done
}

fn disable_one(path: &Path, root_dev: u64, mounts: &MountsBelow) -> Result<bool, String> {
    let meta = path.symlink_metadata().map_err(|e| e.to_string())?;
    if !meta.file_type().is_file() {
        return Err("not a regular file".into());
    }
    if meta.dev() != root_dev || mounts.contains(path) {
        return Err("it is on another mount".into());
    }
    if fs::read(path).map_err(|e| e.to_string())? == DISABLED.as_bytes() {
        return Ok(false);
    }
    OpenOptions::new()
        .write(true)
        .truncate(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .and_then(|mut file| file.write_all(DISABLED.as_bytes()))
        .map_err(|e| e.to_string())?;
    Ok(true)
}

/// Names under which a file would be a way to root if it kept its setuid bit.
pub fn is_elevation_tool(path: &Path) -> bool {
    matches!(
        path.file_name().and_then(OsStr::to_str),
        Some("sudo" | "sudoedit" | "su" | "doas" | "pkexec")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_and_blank_lines_grant_nothing() {
        assert!(!grants(""));
        assert!(!grants("# nothing\n\n   # indented comment\n"));
        assert!(!grants(DISABLED));
    }

    #[test]
    fn rules_defaults_and_includes_count() {
        assert!(grants("node ALL=(ALL) NOPASSWD:ALL\n"));
        assert!(grants("# comment\n%sudo ALL=(ALL:ALL) ALL"));
        assert!(grants("Defaults env_reset"));
        assert!(grants("#includedir /etc/sudoers.d\n"));
        assert!(grants("#include /etc/sudoers.local\n"));
        assert!(grants("@includedir /etc/sudoers.d\n"));
    }

    #[test]
    fn elevation_tools_by_name() {
        assert!(is_elevation_tool(Path::new("/usr/bin/sudo")));
        assert!(is_elevation_tool(Path::new("/bin/su")));
        assert!(!is_elevation_tool(Path::new("/usr/bin/passwd")));
    }
}
