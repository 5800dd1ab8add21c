//! `cordon::harden` on throw-away root filesystems (as root): exactly the planted privileged
//! files on the root's own mount are stripped, nothing on other mounts is touched, sudo is
//! disabled, a read-only root that keeps a privileged file is fatal.

mod harden_scratch;
mod support;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use cordon::harden::{self, sudoers};
use harden_scratch::{has_capability, mode, setcap, Scratch};

const SUDOERS: &[u8] = b"root ALL=(ALL:ALL) ALL\n#includedir /etc/sudoers.d\n";

/// The tree most tests use, with what each planted file should look like afterwards.
struct Planted {
    scratch: Scratch,
    stripped: Vec<(&'static str, u32)>,
    untouched: Vec<PathBuf>,
}

fn plant() -> Planted {
    let mut scratch = Scratch::new("harden");
    let s = &scratch;
    s.file("usr/bin/sudo", b"\x7fELF", 0o4755);
    s.file("usr/bin/passwd", b"\x7fELF", 0o4755);
    s.file_as("usr/bin/wall", b"\x7fELF", 0o2755, (0, 5));
    setcap(&s.file("usr/bin/ping", b"\x7fELF", 0o755));
    let both = s.file("usr/local/bin/both", b"\x7fELF", 0o6750);
    setcap(&both);
    s.file_as("opt/tool/setuid-node", b"\x7fELF", 0o4711, (1000, 1000));
    s.file("home/node/notes", b"", 0o2644);
    s.file("usr/bin/plain", b"\x7fELF", 0o755);
    s.file("srv/data/shared-setuid", b"\x7fELF", 0o4755);
    s.symlink("usr/bin/host-sudo", "/usr/bin/sudo");
    s.file("etc/sudoers", SUDOERS, 0o440);
    s.file(
        "etc/sudoers.d/node",
        b"node ALL=(ALL) NOPASSWD:ALL\n",
        0o440,
    );

    let workspace = scratch.tmpfs("workspace");
    let ws_setuid = scratch.file("workspace/bin/setuid", b"\x7fELF", 0o4755);
    let ws_cap = scratch.file("workspace/bin/cap", b"\x7fELF", 0o755);
    setcap(&ws_cap);
    let volume = scratch.tmpfs("var/lib/volume");
    let hosts_source = scratch.file("var/lib/volume/hosts", b"\x7fELF", 0o4755);
    let hosts = scratch.bind(&hosts_source, "etc/hosts");
    let bound = scratch.bind(&scratch.path("srv/data"), "mnt/bound");
    let _ = (workspace, volume);

    Planted {
        scratch,
        stripped: vec![
            ("home/node/notes", 0o644),
            ("opt/tool/setuid-node", 0o711),
            ("srv/data/shared-setuid", 0o755),
            ("usr/bin/passwd", 0o755),
            ("usr/bin/ping", 0o755),
            ("usr/bin/sudo", 0o755),
            ("usr/bin/wall", 0o755),
            ("usr/local/bin/both", 0o750),
        ],
        untouched: vec![ws_setuid, ws_cap, hosts_source, hosts, bound],
    }
}

fn relative(root: &Path, paths: impl IntoIterator<Item = PathBuf>) -> BTreeSet<String> {
    paths
        .into_iter()
        .map(|path| path.strip_prefix(root).unwrap().display().to_string())
        .collect()
}

#[test]
fn strips_exactly_the_privileged_files_on_the_roots_own_mount() {
    if !support::privileged() {
        return;
    }
    let host_sudo_mode = mode(Path::new("/usr/bin/sudo"));
    let planted = plant();
    let root = &planted.scratch.root;

    let report = harden::harden(root).expect("harden");

    let expected: BTreeSet<String> = planted
        .stripped
        .iter()
        .map(|(p, _)| p.to_string())
        .collect();
    assert_eq!(
        relative(root, report.stripped.iter().map(|f| f.path.clone())),
        expected
    );
    for (path, stripped_mode) in &planted.stripped {
        let path = root.join(path);
        assert_eq!(mode(&path), *stripped_mode, "{}", path.display());
        assert!(
            !has_capability(&path),
            "{} kept its capability",
            path.display()
        );
    }
    assert_eq!(mode(&root.join("usr/bin/plain")), 0o755);
    assert_eq!(harden_scratch::owner(&root.join("usr/bin/wall")), (0, 5));
    assert_eq!(report.stripped.iter().filter(|f| f.capability).count(), 2);

    assert_eq!(
        mode(&planted.untouched[0]),
        0o4755,
        "workspace setuid file changed"
    );
    assert!(
        has_capability(&planted.untouched[1]),
        "workspace capability removed"
    );
    assert_eq!(mode(&planted.untouched[2]), 0o4755, "volume file changed");
    assert_eq!(
        mode(&planted.untouched[3]),
        0o4755,
        "file bind mount changed"
    );
    assert_eq!(
        relative(root, report.scan.skipped.clone()),
        ["etc/hosts", "mnt/bound", "var/lib/volume", "workspace"]
            .map(String::from)
            .into()
    );
    assert_eq!(mode(Path::new("/usr/bin/sudo")), host_sudo_mode);

    for sudoers in ["etc/sudoers", "etc/sudoers.d/node"] {
        let path = root.join(sudoers);
        assert_eq!(fs::read_to_string(&path).unwrap(), sudoers::DISABLED);
        assert_eq!(mode(&path), 0o440);
    }
    assert_eq!(report.sudoers_emptied.len(), 2);
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    let summary = report.summary();
    assert!(
        summary.contains("stripped 8 files (5 setuid, 3 setgid, 2 with file capabilities)"),
        "{summary}"
    );
}

/// A privileged file deeper than PATH_MAX (the agent can make such a tree under HOME, which
/// persists across starts) is found and stripped; the walk never fails on it.
#[test]
fn a_privileged_file_deeper_than_path_max_is_stripped() {
    use nix::fcntl::{openat, OFlag};
    use nix::sys::stat::{fchmod, fstat, mkdirat, Mode};
    if !support::privileged() {
        return;
    }
    let scratch = Scratch::new("deep");
    let component = "d".repeat(200);
    let mut dir = nix::fcntl::open(
        &scratch.dir("home/node"),
        OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .unwrap();
    // 25 levels of 201 bytes: more than 5,000 bytes of path.
    for _ in 0..25 {
        mkdirat(&dir, component.as_str(), Mode::from_bits_truncate(0o755)).unwrap();
        dir = openat(
            &dir,
            component.as_str(),
            OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
    }
    let file = openat(
        &dir,
        "setuid",
        OFlag::O_CREAT | OFlag::O_WRONLY | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o755),
    )
    .unwrap();
    fchmod(&file, Mode::from_bits_truncate(0o4755)).unwrap();

    let report = harden::harden(&scratch.root).expect("harden does not fail on a deep path");
    assert_eq!(report.stripped.len(), 1, "{:?}", report.stripped);
    assert!(report.stripped[0].path.as_os_str().len() > 5000);
    assert_eq!(fstat(&file).unwrap().st_mode & 0o7777, 0o755);
}

#[test]
fn a_second_run_changes_nothing_and_the_scan_finds_nothing() {
    if !support::privileged() {
        return;
    }
    let planted = plant();
    let root = &planted.scratch.root;
    harden::harden(root).expect("first harden");
    let again = harden::harden(root).expect("second harden");
    assert!(again.stripped.is_empty());
    assert!(again.sudoers_emptied.is_empty());
    let scan = harden::scan(root).expect("scan");
    assert!(scan.privileged.is_empty(), "{:?}", scan.privileged);
    assert!(!sudoers::grants(
        &fs::read_to_string(root.join("etc/sudoers")).unwrap()
    ));
}

#[test]
fn the_scan_reports_without_changing_anything() {
    if !support::privileged() {
        return;
    }
    let planted = plant();
    let root = &planted.scratch.root;
    let scan = harden::scan(root).expect("scan");
    assert_eq!(scan.privileged.len(), planted.stripped.len());
    assert_eq!(mode(&root.join("usr/bin/sudo")), 0o4755);
    assert!(has_capability(&root.join("usr/bin/ping")));
    assert_eq!(fs::read(root.join("etc/sudoers")).unwrap(), SUDOERS);
    let ping = scan
        .privileged
        .iter()
        .find(|f| f.path.ends_with("usr/bin/ping"))
        .unwrap();
    assert_eq!(ping.describe(), "file capabilities");
}

#[test]
fn a_read_only_root_with_a_privileged_file_is_fatal() {
    if !support::privileged() {
        return;
    }
    let scratch = Scratch::new("harden-ro");
    let su = scratch.file("bin/su", b"\x7fELF", 0o4755);
    scratch.file("etc/sudoers", SUDOERS, 0o440);
    scratch.remount_read_only(&scratch.root);

    let error = harden::harden(&scratch.root).expect_err("harden must fail");
    let message = error.to_string();
    assert!(message.contains(&su.display().to_string()), "{message}");
    assert!(message.contains("--no-harden"), "{message}");
    assert!(message.ends_with("Read-only file system"), "{message}");
    assert_eq!(mode(&su), 0o4755);
}

#[test]
fn a_read_only_root_without_privileged_files_only_warns_about_sudoers() {
    if !support::privileged() {
        return;
    }
    let scratch = Scratch::new("harden-ro-clean");
    scratch.file("usr/bin/sudo", b"\x7fELF", 0o755);
    scratch.file("etc/sudoers", SUDOERS, 0o440);
    scratch.remount_read_only(&scratch.root);

    let report = harden::harden(&scratch.root).expect("harden");
    assert!(report.stripped.is_empty());
    assert!(report.sudoers_emptied.is_empty());
    assert_eq!(report.warnings.len(), 1, "{:?}", report.warnings);
    assert!(
        report.warnings[0].contains("etc/sudoers left as it is"),
        "{:?}",
        report.warnings
    );
}

#[test]
fn a_bind_mounted_sudoers_belongs_to_the_host_and_is_left_alone() {
    if !support::privileged() {
        return;
    }
    let mut scratch = Scratch::new("harden-sudoers");
    scratch.tmpfs("host");
    let host_sudoers = scratch.file("host/sudoers", SUDOERS, 0o440);
    scratch.bind(&host_sudoers, "etc/sudoers");

    let report = harden::harden(&scratch.root).expect("harden");
    assert_eq!(fs::read(&host_sudoers).unwrap(), SUDOERS);
    assert!(
        report.warnings[0].contains("on another mount"),
        "{:?}",
        report.warnings
    );
}

/// A file capability works only on exec, which needs an execute bit: a root-owned file without
/// one cannot be made executable by the agent, so its capability attribute is not even read. A
/// non-executable file another uid owns can be (its owner may `chmod +x` it): it counts.
#[test]
fn file_capabilities_count_where_an_exec_could_use_them() {
    if !support::privileged() {
        return;
    }
    let scratch = Scratch::new("capability-rule");
    let inert = scratch.file("usr/share/doc/inert", b"\x7fELF", 0o644);
    setcap(&inert);
    let executable = scratch.file("usr/bin/executable", b"\x7fELF", 0o755);
    setcap(&executable);
    let owned = scratch.file_as("home/node/owned", b"\x7fELF", 0o644, (1000, 1000));
    setcap(&owned);
    let scan = harden::scan(&scratch.root).expect("scan");
    let found = relative(
        &scratch.root,
        scan.privileged.iter().map(|f| f.path.clone()),
    );
    assert_eq!(
        found,
        ["home/node/owned", "usr/bin/executable"]
            .into_iter()
            .map(String::from)
            .collect::<BTreeSet<_>>()
    );
    harden::harden(&scratch.root).expect("harden");
    assert!(!has_capability(&executable) && !has_capability(&owned));
    assert!(
        has_capability(&inert),
        "left alone: it can never be executed"
    );
}
