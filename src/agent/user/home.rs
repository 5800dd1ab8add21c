//! Makes the chosen account's HOME usable: creates the private home of an account without a
//! passwd entry, or renumbers a home (and the passwd entry) for `--uid-from`. Nothing here is
//! fatal except a private home that already exists and belongs to someone else: a HOME that
//! cannot be fixed is reported, and the agent still starts.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::os::fd::BorrowedFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::AtFlags;
use nix::unistd::{self, Gid, Uid};
use nix::NixPath;

use super::{passwd, Account, Choice, Database, HomeAction};
use crate::error::{Error, Result};
use crate::sys::mounts::MountTable;
use crate::sys::walk;

pub fn prepare(
    root: &Path,
    choice: Choice,
    db: &Database,
    uid_from: Option<&Path>,
) -> Result<Account> {
    let Choice { mut account, home } = choice;
    let real = root.join(account.home.strip_prefix("/").unwrap_or(&account.home));
    match home {
        HomeAction::Keep => warn_if_unusable(&real, &account),
        HomeAction::Create => {
            if !create_private(&real, &account)? {
                account.home = PathBuf::from("/");
            }
        }
        HomeAction::Renumber {
            from_uid,
            from_gid,
            passwd_line,
        } => {
            let ids = Ids {
                from: (from_uid, from_gid),
                to: (account.uid, account.gid),
            };
            renumber_home(root, &real, ids, uid_from);
            renumber_entry(&db.passwd_path, passwd_line, &account);
        }
    }
    Ok(account)
}

/// Whether `account` may write a directory with this mode and owner (permission bits only).
pub fn writable_by(mode: u32, owner: (u32, u32), account: &Account) -> bool {
    if owner.0 == account.uid {
        mode & 0o200 != 0
    } else if account.groups.contains(&owner.1) || owner.1 == account.gid {
        mode & 0o020 != 0
    } else {
        mode & 0o002 != 0
    }
}

fn warn_if_unusable(real: &Path, account: &Account) {
    let problem = match fs::metadata(real) {
        Err(e) => Some(e.to_string()),
        Ok(meta) if !meta.is_dir() => Some("not a directory".to_string()),
        Ok(meta) if !writable_by(meta.mode(), (meta.uid(), meta.gid()), account) => {
            Some(format!("not writable by uid {}", account.uid))
        }
        Ok(_) => None,
    };
    if let Some(problem) = problem {
        log::warn!(
            "HOME {} of user `{}` is unusable ({problem}): tools that write to ~ will fail; \
             create it in the image",
            account.home.display(),
            account.name
        );
    }
}

/// Creates the 0700 home of an account without passwd entry. Returns false (after a warning) if
/// the filesystem does not allow it.
fn create_private(real: &Path, account: &Account) -> Result<bool> {
    let created = real
        .parent()
        .map_or(Ok(()), fs::create_dir_all)
        .and_then(|()| DirBuilder::new().mode(0o700).create(real));
    match created {
        Ok(()) => match std::os::unix::fs::lchown(real, Some(account.uid), Some(account.gid)) {
            Ok(()) => Ok(true),
            Err(e) => Ok(cannot_create(account, e)),
        },
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let meta = fs::symlink_metadata(real)
                .map_err(|e| Error::io(format!("cannot inspect {}", account.home.display()), e))?;
            if meta.is_dir() && meta.uid() == account.uid {
                return Ok(true);
            }
            Err(Error::BadUser(format!(
                "HOME {} for uid {} exists but is not a directory owned by it: remove it, or add \
                 the user to /etc/passwd in the image",
                account.home.display(),
                account.uid
            )))
        }
        Err(e) => Ok(cannot_create(account, e)),
    }
}

fn cannot_create(account: &Account, e: io::Error) -> bool {
    log::warn!(
        "cannot create HOME {} for uid {} ({e}); HOME is / for this run: add the user to \
         /etc/passwd in the image",
        account.home.display(),
        account.uid
    );
    false
}

#[derive(Debug, Clone, Copy)]
struct Ids {
    from: (u32, u32),
    to: (u32, u32),
}

impl Ids {
    /// The owner and group to set on something owned by `owner`, `None` where it keeps its own.
    fn change(&self, owner: (u32, u32)) -> Option<(Option<Uid>, Option<Gid>)> {
        let uid = (owner.0 == self.from.0).then(|| Uid::from_raw(self.to.0));
        let gid = (owner.1 == self.from.1).then(|| Gid::from_raw(self.to.1));
        (uid.is_some() || gid.is_some()).then_some((uid, gid))
    }
}

fn renumber_home(root: &Path, real: &Path, ids: Ids, uid_from: Option<&Path>) {
    let (uid, gid) = ids.to;
    match fs::symlink_metadata(real) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let made = DirBuilder::new()
                .mode(0o755)
                .create(real)
                .and_then(|()| std::os::unix::fs::lchown(real, Some(uid), Some(gid)));
            if let Err(e) = made {
                log::warn!("cannot create HOME {} for uid {uid}: {e}", real.display());
            }
            return;
        }
        Err(e) => return log::warn!("cannot inspect HOME {}: {e}", real.display()),
        Ok(meta) if !meta.is_dir() => {
            return log::warn!(
                "HOME {} is not a directory: left as it is for uid {uid}",
                real.display()
            )
        }
        Ok(_) => {}
    }
    let mounts = match MountTable::read() {
        Ok(mounts) => mounts,
        Err(e) => return log::warn!("HOME {} left to uid {}: {e}", real.display(), ids.from.0),
    };
    if let Some(from) = uid_from.filter(|from| on_protected_mount(root, real, from, &mounts)) {
        return log::warn!(
            "HOME {} is on the same mount as --uid-from {}: left as it is",
            real.display(),
            from.display()
        );
    }
    match renumber_tree(real, ids, &mounts) {
        Ok(renumbered) => renumbered.log(real, ids),
        Err(e) => log::warn!("HOME {} not renumbered: {e}", real.display()),
    }
}

/// Gives what the old ids own in the tree at `real` (itself included) to the new ids.
fn renumber_tree(real: &Path, ids: Ids, mounts: &MountTable) -> Result<Renumbered> {
    let mut top = Renumber::new(ids);
    let meta = fs::symlink_metadata(real)
        .map_err(|e| Error::io(format!("cannot inspect {}", real.display()), e))?;
    top.chown(nix::fcntl::AT_FDCWD, real, (meta.uid(), meta.gid()), || {
        real.to_path_buf()
    });
    let walked = walk::walk(real, mounts, 1, || Renumber::new(ids))?;
    let mut renumbered = Renumbered {
        changed: top.changed,
        failed: top.failed,
        other_mounts: walked.skipped,
    };
    for visitor in walked.visitors {
        renumbered.changed += visitor.changed;
        renumbered.failed = renumbered.failed.or(visitor.failed);
    }
    Ok(renumbered)
}

struct Renumbered {
    changed: usize,
    failed: Option<(PathBuf, nix::Error)>,
    other_mounts: Vec<PathBuf>,
}

impl Renumbered {
    fn log(&self, real: &Path, ids: Ids) {
        let (uid, gid) = ids.to;
        let gave = format!(
            "HOME {}: gave {} entries of uid {}/gid {} to uid {uid}/gid {gid}",
            real.display(),
            self.changed,
            ids.from.0,
            ids.from.1
        );
        match &self.failed {
            None => log::info!("{gave}"),
            Some((path, errno)) => log::warn!(
                "{gave}, but not {} ({}): the agent may not be able to write in its HOME",
                path.display(),
                errno.desc()
            ),
        }
        for mount in &self.other_mounts {
            log::warn!(
                "{} is another mount and keeps its owner: the agent (uid {uid}) may not be able \
                 to write there",
                mount.display()
            );
        }
    }
}

/// Gives what the old ids own to the new ones, one entry at a time.
struct Renumber {
    ids: Ids,
    changed: usize,
    failed: Option<(PathBuf, nix::Error)>,
}

impl Renumber {
    fn new(ids: Ids) -> Self {
        Renumber {
            ids,
            changed: 0,
            failed: None,
        }
    }

    fn chown(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &(impl NixPath + ?Sized),
        owner: (u32, u32),
        path: impl FnOnce() -> PathBuf,
    ) {
        let Some((uid, gid)) = self.ids.change(owner) else {
            return;
        };
        match unistd::fchownat(dir, name, uid, gid, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(()) => self.changed += 1,
            Err(errno) => {
                self.failed.get_or_insert_with(|| (path(), errno));
            }
        }
    }
}

impl walk::Visitor for Renumber {
    fn visit(&mut self, entry: &mut walk::Entry<'_>) {
        let Ok(stat) = entry.stat() else { return };
        self.chown(
            entry.dir(),
            entry.name(),
            (stat.st_uid, stat.st_gid),
            || entry.path(),
        );
    }
}

/// Whether HOME lies on the mount that holds the `--uid-from` path, that mount not being the
/// root's own (a bind-mounted workspace belongs to the host: never chowned).
fn on_protected_mount(root: &Path, home: &Path, uid_from: &Path, mounts: &MountTable) -> bool {
    let (Ok(root), Ok(home), Ok(from)) = (
        fs::canonicalize(root),
        fs::canonicalize(home),
        fs::canonicalize(uid_from),
    ) else {
        return true;
    };
    let from_mount = mounts.mount_of(&from);
    from_mount != mounts.mount_of(&root) && mounts.mount_of(&home) == from_mount
}

fn renumber_entry(passwd_path: &Path, line: usize, account: &Account) {
    let rewritten = fs::read_to_string(passwd_path)
        .and_then(|text| {
            passwd::with_ids(&text, line, account.uid, account.gid)
                .ok_or_else(|| io::Error::other(format!("line {line} changed since it was read")))
        })
        .and_then(|text| replace_file(passwd_path, &text));
    match rewritten {
        Ok(()) => log::info!(
            "{}: user `{}` is now uid {} gid {}",
            passwd_path.display(),
            account.name,
            account.uid,
            account.gid
        ),
        Err(e) => log::warn!(
            "cannot give user `{}` uid {} in {} ({e}): programs that look the agent up by uid \
             will not find it",
            account.name,
            account.uid,
            passwd_path.display()
        ),
    }
}

/// Replaces `path` atomically (a sibling `NAME+` renamed over it), keeping its mode and owner.
fn replace_file(path: &Path, contents: &str) -> io::Result<()> {
    let meta = fs::symlink_metadata(path)?;
    if !meta.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push("+");
    let temporary = path.with_file_name(name);
    let _ = fs::remove_file(&temporary);
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(meta.mode() & 0o7777)
        .open(&temporary)
        .and_then(|mut file| {
            file.write_all(contents.as_bytes())?;
            std::os::unix::fs::fchown(&file, Some(meta.uid()), Some(meta.gid()))?;
            file.sync_all()
        })
        .and_then(|()| fs::rename(&temporary, path));
    if written.is_err() {
        let _ = fs::remove_file(&temporary);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(uid: u32, gid: u32, groups: &[u32]) -> Account {
        Account {
            name: "node".into(),
            uid,
            gid,
            groups: groups.to_vec(),
            home: "/home/node".into(),
            shell: "/bin/sh".into(),
        }
    }

    #[test]
    fn writability_follows_the_class_that_applies() {
        let node = account(1000, 1000, &[27, 1000]);
        assert!(writable_by(0o700, (1000, 5), &node));
        assert!(!writable_by(0o577, (1000, 1000), &node));
        assert!(writable_by(0o770, (0, 27), &node));
        assert!(!writable_by(0o757, (0, 27), &node));
        assert!(writable_by(0o1777, (0, 0), &node));
        assert!(!writable_by(0o755, (0, 0), &node));
    }

    #[test]
    fn renumbering_changes_only_the_old_ids() {
        let ids = Ids {
            from: (1000, 1000),
            to: (501, 20),
        };
        let (uid, gid) = (Some(Uid::from_raw(501)), Some(Gid::from_raw(20)));
        assert_eq!(ids.change((1000, 1000)), Some((uid, gid)));
        assert_eq!(ids.change((1000, 0)), Some((uid, None)));
        assert_eq!(ids.change((0, 1000)), Some((None, gid)));
        assert_eq!(ids.change((0, 0)), None);
        assert_eq!(ids.change((501, 20)), None);
    }
}
