//! `cordon::agent::user::resolve_in` on throw-away root filesystems (as root): `--uid-from` renumbers
//! the account's HOME and passwd entry without entering other mounts or following symlinks, and
//! never touches the workspace; a uid without entry gets a private HOME.

mod harden_scratch;
mod support;

use std::fs;
use std::path::Path;

use cordon::agent::user::{self, Account};
use cordon::error::exit;
use harden_scratch::{chown, mode, owner, Scratch};

const PASSWD: &str = "\
root:x:0:0:root:/root:/bin/bash
node:x:1000:1000::/home/node:/bin/bash
";
const GROUP: &str = "\
root:x:0:
docker:x:999:node
node:x:1000:
";

fn image(passwd: &str) -> Scratch {
    let scratch = Scratch::new("user");
    scratch.file("etc/passwd", passwd.as_bytes(), 0o644);
    scratch.file("etc/group", GROUP.as_bytes(), 0o644);
    scratch
}

/// node's home as an image leaves it, with a volume for ~/.claude; and a workspace mount owned
/// by the host user 501:20 holding one file of uid 1000.
fn image_with_workspace() -> Scratch {
    let mut scratch = image(PASSWD);
    let node = (1000, 1000);
    chown(&scratch.dir("home/node"), 1000, 1000);
    scratch.file_as("home/node/.bashrc", b"", 0o644, node);
    chown(&scratch.dir("home/node/.cache"), 1000, 1000);
    scratch.file_as("home/node/.cache/data", b"", 0o600, node);
    scratch.file_as("home/node/.cache/mixed", b"", 0o640, (1000, 42));
    scratch.file_as("home/node/root-owned", b"", 0o644, (0, 0));
    let link = scratch.symlink("home/node/shadow", "/etc/shadow");
    chown(&link, 1000, 1000);
    let claude = scratch.tmpfs("home/node/.claude");
    chown(&claude, 1000, 1000);
    scratch.file_as("home/node/.claude/settings.json", b"{}", 0o600, node);
    let workspace = scratch.tmpfs("workspace");
    chown(&workspace, 501, 20);
    scratch.file_as("workspace/from-image", b"", 0o644, node);
    scratch
}

#[test]
fn uid_from_renumbers_home_and_passwd_and_nothing_else() {
    if !support::privileged() {
        return;
    }
    let shadow_before = owner(Path::new("/etc/shadow"));
    let scratch = image_with_workspace();
    let root = &scratch.root;

    let account = user::resolve_in(root, "node", Some(&scratch.path("workspace"))).unwrap();

    assert_eq!(
        account,
        Account {
            name: "node".into(),
            uid: 501,
            gid: 20,
            groups: vec![20, 999],
            home: "/home/node".into(),
            shell: "/bin/bash".into(),
        }
    );
    for renumbered in [
        "home/node",
        "home/node/.bashrc",
        "home/node/.cache",
        "home/node/.cache/data",
        "home/node/shadow",
    ] {
        assert_eq!(owner(&root.join(renumbered)), (501, 20), "{renumbered}");
    }
    assert_eq!(owner(&root.join("home/node/.cache/mixed")), (501, 42));
    assert_eq!(owner(&root.join("home/node/root-owned")), (0, 0));
    assert_eq!(mode(&root.join("home/node/.cache/data")), 0o600);
    assert_eq!(
        owner(&root.join("home/node/.claude")),
        (1000, 1000),
        "volume chowned"
    );
    assert_eq!(
        owner(&root.join("home/node/.claude/settings.json")),
        (1000, 1000)
    );
    assert_eq!(
        owner(&root.join("workspace/from-image")),
        (1000, 1000),
        "workspace chowned"
    );
    assert_eq!(
        owner(Path::new("/etc/shadow")),
        shadow_before,
        "symlink followed"
    );

    let passwd = fs::read_to_string(root.join("etc/passwd")).unwrap();
    assert_eq!(
        passwd,
        PASSWD.replace("node:x:1000:1000:", "node:x:501:20:")
    );
    assert_eq!(mode(&root.join("etc/passwd")), 0o644);
    assert!(!root.join("etc/passwd+").exists());
}

#[test]
fn a_restart_with_the_same_owner_changes_nothing() {
    if !support::privileged() {
        return;
    }
    let scratch = image_with_workspace();
    let workspace = scratch.path("workspace");
    let first = user::resolve_in(&scratch.root, "node", Some(&workspace)).unwrap();
    scratch.file_as("home/node/later", b"", 0o644, (1000, 1000));
    let second = user::resolve_in(&scratch.root, "node", Some(&workspace)).unwrap();
    assert_eq!(first, second);
    assert_eq!(owner(&scratch.path("home/node/later")), (1000, 1000));
}

#[test]
fn a_home_on_the_workspace_mount_is_never_chowned() {
    if !support::privileged() {
        return;
    }
    let mut scratch = image(&PASSWD.replace("/home/node", "/workspace/home"));
    let workspace = scratch.tmpfs("workspace");
    chown(&workspace, 501, 20);
    chown(&scratch.dir("workspace/home"), 1000, 1000);
    scratch.file_as("workspace/home/file", b"", 0o644, (1000, 1000));

    let account = user::resolve_in(&scratch.root, "node", Some(&workspace)).unwrap();

    assert_eq!((account.uid, account.gid), (501, 20));
    assert_eq!(owner(&scratch.path("workspace/home")), (1000, 1000));
    assert_eq!(owner(&scratch.path("workspace/home/file")), (1000, 1000));
}

#[test]
fn uid_from_an_owner_in_passwd_takes_that_account_unchanged() {
    if !support::privileged() {
        return;
    }
    let scratch = image(&format!("{PASSWD}dev:x:501:20::/home/dev:/bin/zsh\n"));
    let workspace = scratch.dir("workspace");
    chown(&workspace, 501, 20);
    let account = user::resolve_in(&scratch.root, "node", Some(&workspace)).unwrap();
    assert_eq!((account.name.as_str(), account.uid), ("dev", 501));
    assert!(fs::read_to_string(scratch.path("etc/passwd"))
        .unwrap()
        .contains("node:x:1000:1000:"));
}

#[test]
fn a_root_owned_workspace_is_refused() {
    if !support::privileged() {
        return;
    }
    let scratch = image(PASSWD);
    let workspace = scratch.dir("workspace");
    let error = user::resolve_in(&scratch.root, "node", Some(&workspace)).unwrap_err();
    assert_eq!(error.exit_code(), exit::BAD_USER);
    assert!(error.to_string().contains("owned by uid 0"), "{error}");
}

#[test]
fn a_uid_without_entry_gets_a_private_home() {
    if !support::privileged() {
        return;
    }
    let scratch = image(PASSWD);
    let account = user::resolve_in(&scratch.root, "4321", None).unwrap();
    assert_eq!(account.home, Path::new("/home/4321"));
    let home = scratch.path("home/4321");
    assert_eq!(owner(&home), (4321, 4321));
    assert_eq!(mode(&home), 0o700);
    assert_eq!(
        user::resolve_in(&scratch.root, "4321", None).unwrap(),
        account
    );
}

#[test]
fn a_private_home_taken_by_someone_else_is_an_error() {
    if !support::privileged() {
        return;
    }
    let scratch = image(PASSWD);
    scratch.dir("home/4321");
    let error = user::resolve_in(&scratch.root, "4321", None).unwrap_err();
    assert_eq!(error.exit_code(), exit::BAD_USER);
}

#[test]
fn a_read_only_root_still_resolves_with_warnings() {
    if !support::privileged() {
        return;
    }
    let scratch = image_with_workspace();
    scratch.remount_read_only(&scratch.root);
    let account =
        user::resolve_in(&scratch.root, "node", Some(&scratch.path("workspace"))).unwrap();
    assert_eq!((account.uid, account.gid), (501, 20));
    assert_eq!(owner(&scratch.path("home/node")), (1000, 1000));
    let fallback = user::resolve_in(&scratch.root, "4321", None).unwrap();
    assert_eq!(fallback.home, Path::new("/"));
}

#[test]
fn unknown_users_and_malformed_files_are_errors() {
    if !support::privileged() {
        return;
    }
    let scratch = image(PASSWD);
    let error = user::resolve_in(&scratch.root, "ghost", None).unwrap_err();
    assert_eq!(error.exit_code(), exit::BAD_USER);
    assert!(
        error.to_string().starts_with("user `ghost` not found in"),
        "{error}"
    );

    let broken = image("root:x:0:0:root:/root:/bin/bash\nnode:x:1000\n");
    let error = user::resolve_in(&broken.root, "node", None).unwrap_err();
    assert_eq!(error.exit_code(), exit::BAD_INPUT);
    assert!(
        error
            .to_string()
            .contains("etc/passwd:2: expected 7 fields"),
        "{error}"
    );
}
