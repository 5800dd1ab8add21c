//! cordon's directory in /run: the fence's record (root-only) and the background harden status
//! (readable by all), each replaced in one step.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Creates the directory (root-owned, mode 0755), or checks that the one there is a root-owned
/// directory and not a link someone else left.
pub fn ensure(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .mode(0o755)
        .recursive(true)
        .create(dir)?;
    let meta = std::fs::symlink_metadata(dir)?;
    if !meta.is_dir() || meta.uid() != 0 {
        return Err(std::io::Error::other(format!(
            "{} is not a root-owned directory",
            dir.display()
        )));
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
}

/// Replaces `path` with `text` in one step (a staging file beside it, renamed over it), with
/// `mode`; its directory is made by `ensure`.
pub fn replace(path: &Path, mode: u32, text: &str) -> std::io::Result<()> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(std::io::Error::other("not a file path"));
    };
    ensure(dir)?;
    let staging = dir.join(format!(".{}.new", name.to_string_lossy()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&staging)?;
    file.write_all(text.as_bytes())?;
    std::fs::rename(&staging, path)
}
