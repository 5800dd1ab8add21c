//! The agent's account, read from /etc/passwd and /etc/group directly (no NSS).
//!
//! `--user` is a name, `UID` or `UID:GID`. A name must have a passwd entry. A uid with an entry
//! takes its name, home and shell (and its gid unless one is given). A uid without one runs as
//! that uid, with gid = uid unless given, USER = the number, SHELL = /bin/sh and a private HOME
//! that cordon creates: `/home/UID`, mode 0700 (Docker would leave HOME=/, where nothing can be
//! written; cordon falls back to that, with a warning, only on a read-only root). Root is refused
//! however it is reached, and so is group 0 as the primary group; membership of group 0 in
//! /etc/group is dropped with a warning. Supplementary groups are the groups that list the
//! account's name, plus its primary group.
//!
//! `--uid-from PATH` runs the agent as the owner (uid and gid) of PATH, e.g. a bind-mounted
//! workspace, so that what it writes there belongs to the host user:
//! - if /etc/passwd has an entry with that uid, that entry is the account;
//! - otherwise the `--user` account is renumbered to the new ids, as VS Code's
//!   `updateRemoteUserUID` and `usermod -u` do. In its HOME, whatever the old uid (gid) owns is
//!   given to the new uid (gid): symlinks themselves, never their targets; other owners' files
//!   stay as they are; only on HOME's own mount (another mount inside it, such as a volume for
//!   ~/.claude, is reported instead); and not at all when HOME lies on PATH's mount (the host's
//!   files are never chowned). Then the passwd entry gets the new ids, so `docker exec -u USER`
//!   sessions and `getpwuid` agree with the agent. On a read-only root HOME or the entry stay as
//!   they are, with a warning. A restart with the same owner finds the renumbered entry and
//!   changes nothing.

mod home;
mod passwd;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
pub use passwd::{parse_group, parse_passwd, GroupEntry, PasswdEntry};

/// Who the agent should run as: `--user` and `--uid-from`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// A name, UID or UID:GID (never root).
    pub user: String,
    /// Run as the owner (uid and gid) of this path instead.
    pub uid_from: Option<PathBuf>,
}

pub const DEFAULT_USER: &str = "node";

impl Default for Request {
    fn default() -> Self {
        Request {
            user: DEFAULT_USER.to_string(),
            uid_from: None,
        }
    }
}

/// The conventional unprivileged uid: probes use it when the agent's own uid is not known.
pub const NOBODY: u32 = 65534;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups, from /etc/group, with the primary group; sorted.
    pub groups: Vec<u32>,
    pub home: PathBuf,
    pub shell: PathBuf,
}

impl Account {
    /// The overflow user, for `cordon firewall` when the agent's account does not exist here.
    pub fn nobody() -> Account {
        Account {
            name: "nobody".into(),
            uid: NOBODY,
            gid: NOBODY,
            groups: Vec::new(),
            home: PathBuf::from("/nonexistent"),
            shell: PathBuf::from("/usr/sbin/nologin"),
        }
    }

    /// Whether a directory of this owner, group and mode lets the account create files in it.
    pub fn may_write(&self, owner: u32, group: u32, mode: u32) -> bool {
        let bits = if owner == self.uid {
            mode >> 6
        } else if self.groups.contains(&group) || group == self.gid {
            mode >> 3
        } else {
            mode
        };
        bits & 0o3 == 0o3
    }

    /// A hint when the agent will start in a directory it cannot write to (a workspace
    /// mounted from a root-owned host directory, e.g. when Docker runs as root on the host).
    pub fn workspace_hint(&self, dir: &Path, owner: u32, group: u32, mode: u32) -> Option<String> {
        if dir == Path::new("/") || self.may_write(owner, group, mode) {
            return None;
        }
        let fix = match owner {
            _ if owner == self.uid => format!(
                "give its owner write access (`chmod u+rwx {}`)",
                dir.display()
            ),
            0 => format!(
                "give it to the agent on the host (`sudo chown -R {}:{} DIR`)",
                self.uid, self.gid
            ),
            _ => format!(
                "start with `--uid-from {}` (the agent then runs as its owner, uid {owner}), or \
                 give it to uid {} on the host",
                dir.display(),
                self.uid
            ),
        };
        Some(format!(
            "the working directory {} belongs to uid {owner} (mode {:o}) and {} (uid {}) \
             cannot write to it: the agent will fail to save files there; {fix}",
            dir.display(),
            mode & 0o7777,
            self.name,
            self.uid
        ))
    }
}

/// Resolves `--user` (a name, UID or UID:GID) and `--uid-from PATH`. Never returns root. May
/// create or renumber the account's HOME (see the module documentation).
pub fn resolve(spec: &str, uid_from: Option<&Path>) -> Result<Account> {
    choose_account(spec, uid_from)?.prepare()
}

/// `resolve` against the filesystem tree at `root` (its etc/passwd, etc/group and homes).
/// `uid_from` is a path as seen from here, not from `root`.
pub fn resolve_in(root: &Path, spec: &str, uid_from: Option<&Path>) -> Result<Account> {
    choose_in(root, spec, uid_from)?.prepare()
}

/// The account `resolve` would return, without creating or renumbering anything: for callers
/// that only need the uid (`cordon firewall` probing as the agent).
pub fn lookup(spec: &str, uid_from: Option<&Path>) -> Result<Account> {
    Ok(choose_account(spec, uid_from)?.choice.account)
}

/// The first half of `resolve`: the account is chosen, nothing is changed yet.
pub fn choose_account(spec: &str, uid_from: Option<&Path>) -> Result<Chosen> {
    choose_in(Path::new("/"), spec, uid_from)
}

fn choose_in(root: &Path, spec: &str, uid_from: Option<&Path>) -> Result<Chosen> {
    let parsed = Spec::parse(spec)?;
    let db = Database::load(root)?;
    let owner = uid_from.map(owner_of).transpose()?;
    Ok(Chosen {
        choice: choose(parsed, &db, owner)?,
        db,
        root: root.to_path_buf(),
        uid_from: uid_from.map(Path::to_path_buf),
    })
}

/// An account chosen by `choose_account` whose HOME has not been prepared yet.
#[derive(Debug)]
pub struct Chosen {
    choice: Choice,
    db: Database,
    root: PathBuf,
    uid_from: Option<PathBuf>,
}

impl Chosen {
    /// Whether preparing it creates or renumbers a HOME (which takes CAP_CHOWN).
    pub fn changes_home(&self) -> bool {
        self.choice.home != HomeAction::Keep
    }

    /// Creates or renumbers its HOME as needed (see the module documentation).
    pub fn prepare(self) -> Result<Account> {
        home::prepare(&self.root, self.choice, &self.db, self.uid_from.as_deref())
    }
}

/// What `--user` asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spec<'a> {
    Name(&'a str),
    Uid(u32),
    UidGid(u32, u32),
}

impl<'a> Spec<'a> {
    pub fn parse(text: &'a str) -> Result<Spec<'a>> {
        let invalid = || {
            Error::BadUser(format!(
                "--user `{text}`: expected a user name, UID or UID:GID"
            ))
        };
        let number = |field: &str| match field.parse::<u32>() {
            Ok(value) if value != u32::MAX => Ok(value),
            _ => Err(invalid()),
        };
        let numeric = |field: &str| !field.is_empty() && field.bytes().all(|b| b.is_ascii_digit());
        match text.split_once(':') {
            Some((uid, gid)) if numeric(uid) && numeric(gid) => {
                Ok(Spec::UidGid(number(uid)?, number(gid)?))
            }
            Some(_) => Err(invalid()),
            None if numeric(text) => Ok(Spec::Uid(number(text)?)),
            None if text.is_empty() || text.contains(char::is_whitespace) => Err(invalid()),
            None => Ok(Spec::Name(text)),
        }
    }
}

/// The parsed account databases.
#[derive(Debug, Clone)]
pub struct Database {
    pub passwd: Vec<PasswdEntry>,
    pub groups: Vec<GroupEntry>,
    pub passwd_path: PathBuf,
}

impl Database {
    /// Reads etc/passwd and etc/group below `root`; a missing file counts as empty (a bare
    /// image can still run a numeric `--user`).
    pub fn load(root: &Path) -> Result<Self> {
        let passwd_path = root.join("etc/passwd");
        let group_path = root.join("etc/group");
        Ok(Database {
            passwd: parse_passwd(&read(&passwd_path)?, &passwd_path.display().to_string())?,
            groups: parse_group(&read(&group_path)?, &group_path.display().to_string())?,
            passwd_path,
        })
    }

    fn by_name(&self, name: &str) -> Option<&PasswdEntry> {
        self.passwd.iter().find(|entry| entry.name == name)
    }

    fn by_uid(&self, uid: u32) -> Option<&PasswdEntry> {
        self.passwd.iter().find(|entry| entry.uid == uid)
    }

    /// The primary group and every group listing `name`, sorted; group 0 dropped with a warning.
    fn groups_of(&self, name: &str, primary: u32) -> Vec<u32> {
        let mut groups: Vec<u32> = self
            .groups
            .iter()
            .filter(|group| group.members.iter().any(|member| member == name))
            .map(|group| group.gid)
            .chain([primary])
            .collect();
        if groups.contains(&0) {
            log::warn!(
                "user `{name}` is a member of group 0 (root) in /etc/group; the agent does not get \
                 that group"
            );
            groups.retain(|&gid| gid != 0);
        }
        groups.sort_unstable();
        groups.dedup();
        groups
    }
}

fn read(path: &Path) -> Result<String> {
    match fs::read_to_string(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        other => other.map_err(|e| Error::io(format!("cannot read {}", path.display()), e)),
    }
}

/// The uid and gid that own `path` (symlinks followed).
fn owner_of(path: &Path) -> Result<(u32, u32)> {
    let meta = fs::metadata(path).map_err(|e| {
        Error::BadUser(format!(
            "--uid-from {}: {e}: mount the workspace there or drop --uid-from",
            path.display()
        ))
    })?;
    match (meta.uid(), meta.gid()) {
        (0, _) => Err(Error::BadUser(format!(
            "refusing to run the agent as root: --uid-from {} is owned by uid 0; chown it to your \
             user on the host, or drop --uid-from",
            path.display()
        ))),
        (_, 0) => Err(Error::BadUser(format!(
            "refusing to run the agent in group root: --uid-from {} belongs to gid 0; chgrp it on \
             the host, or drop --uid-from",
            path.display()
        ))),
        ids => Ok(ids),
    }
}

/// What must happen to HOME for the chosen account to use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HomeAction {
    /// Use the home that passwd names, as it is.
    Keep,
    /// The account took new ids from `--uid-from`: give what the old ids own in HOME to the new
    /// ones, and rewrite the passwd entry on `passwd_line`.
    Renumber {
        from_uid: u32,
        from_gid: u32,
        passwd_line: usize,
    },
    /// No passwd entry: create the private home.
    Create,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub account: Account,
    pub home: HomeAction,
}

/// Picks the account for `spec` and the `--uid-from` owner, without touching anything.
pub fn choose(spec: Spec<'_>, db: &Database, owner: Option<(u32, u32)>) -> Result<Choice> {
    let (entry, uid, gid) = match spec {
        Spec::Name(name) => {
            let entry = db.by_name(name).ok_or_else(|| {
                Error::BadUser(format!(
                    "user `{name}` not found in {}: create it in the image or pass --user UID:GID",
                    db.passwd_path.display()
                ))
            })?;
            (Some(entry), entry.uid, entry.gid)
        }
        Spec::Uid(uid) => {
            let entry = db.by_uid(uid);
            (entry, uid, entry.map_or(uid, |entry| entry.gid))
        }
        Spec::UidGid(uid, gid) => (db.by_uid(uid), uid, gid),
    };
    refuse_root(uid, gid, &spec)?;
    let Some((new_uid, new_gid)) = owner.filter(|&owner| owner != (uid, gid)) else {
        return Ok(choice_for(entry, uid, gid, db));
    };
    refuse_root(new_uid, new_gid, &spec)?;
    if let Some(owner_entry) = db.by_uid(new_uid) {
        return Ok(choice_for(Some(owner_entry), new_uid, new_gid, db));
    }
    let Some(entry) = entry else {
        return Ok(choice_for(None, new_uid, new_gid, db));
    };
    let home = HomeAction::Renumber {
        from_uid: entry.uid,
        from_gid: entry.gid,
        passwd_line: entry.line,
    };
    Ok(Choice {
        account: account_from(entry, new_uid, new_gid, db),
        home,
    })
}

fn refuse_root(uid: u32, gid: u32, spec: &Spec<'_>) -> Result<()> {
    let asked = match spec {
        Spec::Name(name) => format!("--user {name}"),
        Spec::Uid(uid) => format!("--user {uid}"),
        Spec::UidGid(uid, gid) => format!("--user {uid}:{gid}"),
    };
    match (uid, gid) {
        (0, _) => Err(Error::BadUser(format!(
            "refusing to run the agent as root ({asked} is uid 0): pass an unprivileged user, \
             e.g. --user node"
        ))),
        (_, 0) => Err(Error::BadUser(format!(
            "refusing to run the agent in group root ({asked} has gid 0): pass --user UID:GID \
             with another group"
        ))),
        _ => Ok(()),
    }
}

fn choice_for(entry: Option<&PasswdEntry>, uid: u32, gid: u32, db: &Database) -> Choice {
    match entry {
        Some(entry) => Choice {
            account: account_from(entry, uid, gid, db),
            home: HomeAction::Keep,
        },
        None => Choice {
            account: Account {
                name: uid.to_string(),
                uid,
                gid,
                groups: vec![gid],
                home: PathBuf::from(format!("/home/{uid}")),
                shell: PathBuf::from("/bin/sh"),
            },
            home: HomeAction::Create,
        },
    }
}

fn account_from(entry: &PasswdEntry, uid: u32, gid: u32, db: &Database) -> Account {
    Account {
        name: entry.name.clone(),
        uid,
        gid,
        groups: db.groups_of(&entry.name, gid),
        home: entry.home.clone(),
        shell: entry.shell.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "\
root:x:0:0:root:/root:/bin/bash
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
node:x:1000:1000::/home/node:/bin/bash
claude:x:1001:1001::/home/claude:/bin/zsh
toor:x:0:0::/root:/bin/sh
";
    const GROUP: &str = "\
root:x:0:claude
sudo:x:27:node
docker:x:999:node,claude
node:x:1000:
claude:x:1001:
";

    fn db() -> Database {
        Database {
            passwd: parse_passwd(PASSWD, "/etc/passwd").unwrap(),
            groups: parse_group(GROUP, "/etc/group").unwrap(),
            passwd_path: "/etc/passwd".into(),
        }
    }

    fn pick(spec: &str, owner: Option<(u32, u32)>) -> Result<Choice> {
        choose(Spec::parse(spec)?, &db(), owner)
    }

    fn error(result: Result<impl std::fmt::Debug>) -> String {
        result.unwrap_err().to_string()
    }

    #[test]
    fn specs_parse() {
        assert_eq!(Spec::parse("node").unwrap(), Spec::Name("node"));
        assert_eq!(Spec::parse("1000").unwrap(), Spec::Uid(1000));
        assert_eq!(Spec::parse("1000:20").unwrap(), Spec::UidGid(1000, 20));
        assert_eq!(Spec::parse("-1").unwrap(), Spec::Name("-1"));
        for bad in [
            "",
            "1000:",
            ":20",
            "node:staff",
            "1:2:3",
            "4294967295",
            "99999999999",
            "a b",
        ] {
            assert!(Spec::parse(bad).is_err(), "{bad} accepted");
        }
        assert_eq!(
            error(Spec::parse("node:staff")),
            "--user `node:staff`: expected a user name, UID or UID:GID"
        );
    }

    #[test]
    fn a_name_takes_its_entry_and_group_memberships() {
        let choice = pick("node", None).unwrap();
        assert_eq!(
            choice.account,
            Account {
                name: "node".into(),
                uid: 1000,
                gid: 1000,
                groups: vec![27, 999, 1000],
                home: "/home/node".into(),
                shell: "/bin/bash".into(),
            }
        );
        assert_eq!(choice.home, HomeAction::Keep);
    }

    #[test]
    fn an_unknown_name_is_an_error_never_a_fallback() {
        assert_eq!(
            error(pick("ghost", None)),
            "user `ghost` not found in /etc/passwd: create it in the image or pass --user UID:GID"
        );
    }

    #[test]
    fn a_uid_takes_the_entry_with_that_uid() {
        let choice = pick("1001", None).unwrap();
        assert_eq!(choice.account.name, "claude");
        assert_eq!(choice.account.gid, 1001);
        let choice = pick("1001:999", None).unwrap();
        assert_eq!(choice.account.gid, 999);
        assert_eq!(choice.account.groups, vec![999]);
    }

    #[test]
    fn membership_of_group_root_is_dropped() {
        assert_eq!(
            pick("claude", None).unwrap().account.groups,
            vec![999, 1001]
        );
    }

    #[test]
    fn a_uid_without_entry_gets_a_private_home() {
        let choice = pick("4321", None).unwrap();
        assert_eq!(
            choice.account,
            Account {
                name: "4321".into(),
                uid: 4321,
                gid: 4321,
                groups: vec![4321],
                home: "/home/4321".into(),
                shell: "/bin/sh".into(),
            }
        );
        assert_eq!(choice.home, HomeAction::Create);
        assert_eq!(pick("4321:55", None).unwrap().account.groups, vec![55]);
    }

    #[test]
    fn root_is_refused_by_every_form() {
        for spec in ["root", "toor", "0", "0:1000"] {
            assert!(
                error(pick(spec, None)).starts_with("refusing to run the agent as root"),
                "{spec}"
            );
        }
        assert!(error(pick("1000:0", None)).starts_with("refusing to run the agent in group root"));
        assert!(error(pick("node", Some((0, 0)))).starts_with("refusing to run the agent as root"));
        assert!(error(pick("node", Some((1000, 0)))).contains("group root"));
    }

    #[test]
    fn uid_from_with_a_known_owner_takes_that_entry() {
        let choice = pick("node", Some((1001, 1001))).unwrap();
        assert_eq!(choice.account.name, "claude");
        assert_eq!(choice.account.home, Path::new("/home/claude"));
        assert_eq!(choice.home, HomeAction::Keep);
    }

    #[test]
    fn uid_from_matching_the_user_changes_nothing() {
        assert_eq!(
            pick("node", Some((1000, 1000))).unwrap(),
            pick("node", None).unwrap()
        );
    }

    #[test]
    fn a_workspace_the_agent_cannot_write_gets_a_hint_naming_the_fix() {
        let node = Account {
            name: "node".into(),
            uid: 1000,
            gid: 1000,
            groups: vec![1000],
            home: PathBuf::from("/home/node"),
            shell: PathBuf::from("/bin/bash"),
        };
        let dir = Path::new("/workspace");
        assert_eq!(node.workspace_hint(dir, 1000, 1000, 0o755), None);
        assert_eq!(node.workspace_hint(dir, 0, 1000, 0o775), None);
        assert_eq!(node.workspace_hint(dir, 0, 0, 0o1777), None);
        assert_eq!(node.workspace_hint(Path::new("/"), 0, 0, 0o755), None);
        let root_owned = node.workspace_hint(dir, 0, 0, 0o755).unwrap();
        assert!(
            root_owned.contains("sudo chown -R 1000:1000 DIR"),
            "{root_owned}"
        );
        let other = node.workspace_hint(dir, 1001, 1001, 0o700).unwrap();
        assert!(other.contains("--uid-from /workspace"), "{other}");
        // Write without search (x) is no write; the owner is told to chmod, not to --uid-from.
        let own = node.workspace_hint(dir, 1000, 1000, 0o600).unwrap();
        assert!(own.contains("chmod u+rwx /workspace"), "{own}");
    }

    #[test]
    fn uid_from_with_the_same_uid_takes_the_owners_gid() {
        let choice = pick("node", Some((1000, 20))).unwrap();
        assert_eq!((choice.account.uid, choice.account.gid), (1000, 20));
        assert_eq!(choice.account.groups, vec![20, 27, 999]);
        assert_eq!(choice.home, HomeAction::Keep);
    }

    #[test]
    fn uid_from_with_an_unknown_owner_renumbers_the_user() {
        let choice = pick("node", Some((501, 20))).unwrap();
        assert_eq!(
            choice.account,
            Account {
                name: "node".into(),
                uid: 501,
                gid: 20,
                groups: vec![20, 27, 999],
                home: "/home/node".into(),
                shell: "/bin/bash".into(),
            }
        );
        assert_eq!(
            choice.home,
            HomeAction::Renumber {
                from_uid: 1000,
                from_gid: 1000,
                passwd_line: 3
            }
        );
    }

    #[test]
    fn uid_from_with_an_unknown_owner_and_a_bare_uid_creates_a_home() {
        let choice = pick("4321", Some((501, 20))).unwrap();
        assert_eq!(choice.account.uid, 501);
        assert_eq!(choice.account.home, Path::new("/home/501"));
        assert_eq!(choice.home, HomeAction::Create);
    }
}
