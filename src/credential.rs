//! The credential gateway: the agent never holds the Anthropic credential.
//!
//! cordon reads the real credential as root before anything of the agent exists — from a secret
//! file (`/run/secrets/anthropic_api_key`, `.../claude_code_oauth_token`,
//! `.../anthropic_auth_token`, or the file a `*_FILE` variable names) or from the variables the
//! CLI reads — and gives the agent `ANTHROPIC_BASE_URL=http://127.0.0.1:CREDENTIAL_PORT` and
//! `ANTHROPIC_AUTH_TOKEN=PLACEHOLDER` instead, the shape Claude Code takes for an LLM gateway.
//! The gateway (`service`, a process of its own uid) replaces whatever credential a request
//! carries with the real one, in the form its kind needs, and forwards it over TLS (`proxy`);
//! the fence lets only the gateway's uid reach the upstream.
//!
//! Why the placeholder is always an auth token, whatever the real credential's kind: with
//! `ANTHROPIC_API_KEY` or `CLAUDE_CODE_OAUTH_TOKEN` set, the CLI's first interactive start runs
//! a connectivity check against api.anthropic.com and platform.claude.com that ignores
//! `ANTHROPIC_BASE_URL` and ends the CLI when they cannot be reached, which is the point of the
//! gateway (measured with Claude Code 2.1.330; with `ANTHROPIC_AUTH_TOKEN` it makes no such
//! check). What the OAuth kind changes in a request, the gateway adds itself (`proxy`).

pub mod proxy;
pub mod service;

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::agent::user::Account;
use crate::error::{Error, Location, Result};

/// The loopback port the agent's API requests go to (plain HTTP, on loopback only).
pub const CREDENTIAL_PORT: u16 = 10080;
/// The uid the gateway runs as: neither the agent's nor the DNS gateway's (which may send DNS
/// to the resolvers and add to the fence's sets: nothing this process should be able to do).
pub const CREDENTIAL_UID: u32 = 65054;
/// Where the API is when the user names none.
pub const DEFAULT_UPSTREAM: &str = "https://api.anthropic.com";
/// What the agent holds instead of the credential. Any request it sends with it, or with a key
/// of its own, goes out with the user's credential.
pub const PLACEHOLDER: &str = "cordon-credential-gateway-placeholder";
/// The variable the agent's placeholder is in (see the module's documentation).
pub const AGENT_VARIABLE: &str = "ANTHROPIC_AUTH_TOKEN";
/// Where Docker and Compose mount secrets.
pub const SECRETS_DIR: &str = "/run/secrets";
/// Longest credential accepted from a file.
const MAX_SECRET_LEN: u64 = 64 * 1024;

/// Whether the gateway runs (`--credential-gateway`, `--no-credential-gateway`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// On when a credential is provided to cordon.
    #[default]
    Auto,
    /// On; no credential is an error.
    On,
    /// Off: the credential variables reach the agent as they are.
    Off,
}

/// The kinds of credential the CLI takes, and how each travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `ANTHROPIC_API_KEY`, sent as `x-api-key`.
    ApiKey,
    /// `CLAUDE_CODE_OAUTH_TOKEN` (from `claude setup-token`), sent as `Authorization: Bearer`.
    OAuthToken,
    /// `ANTHROPIC_AUTH_TOKEN` (an LLM gateway's token), sent as `Authorization: Bearer`.
    AuthToken,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::ApiKey, Kind::OAuthToken, Kind::AuthToken];

    /// The variable the CLI reads it from.
    pub fn variable(self) -> &'static str {
        match self {
            Kind::ApiKey => "ANTHROPIC_API_KEY",
            Kind::OAuthToken => "CLAUDE_CODE_OAUTH_TOKEN",
            Kind::AuthToken => "ANTHROPIC_AUTH_TOKEN",
        }
    }

    /// The variable that may name a file holding it (the `_FILE` convention of official images).
    fn file_variable(self) -> String {
        format!("{}_FILE", self.variable())
    }

    /// The secret file looked for when no variable names one.
    fn default_file(self, secrets_dir: &Path) -> PathBuf {
        secrets_dir.join(self.variable().to_ascii_lowercase())
    }
}

/// The real credential. Its value is never printed (`Debug` hides it).
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    pub kind: Kind,
    secret: String,
    /// Where it came from, for the log (a path or a variable's name).
    pub source: String,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credential({:?} from {})", self.kind, self.source)
    }
}

impl Credential {
    pub(crate) fn new(kind: Kind, secret: &str, source: &str) -> Credential {
        Credential {
            kind,
            secret: secret.into(),
            source: source.into(),
        }
    }

    pub fn secret(&self) -> &str {
        &self.secret
    }
}

/// Where requests go: scheme https, a host, a port, and a path prefix (an LLM gateway's base
/// URL may have one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub host: String,
    pub port: u16,
    /// Empty, or starts with `/` and has no trailing `/`.
    pub path_prefix: String,
}

impl Upstream {
    /// Parses a base URL; only https (the credential never travels in clear).
    pub fn parse(url: &str, from: &str) -> Result<Upstream> {
        let bad = |why: &str| {
            Error::Usage(format!(
                "{from}={url}: {why}; the credential gateway sends the credential only over TLS \
                 to an https:// URL (or start with --no-credential-gateway)"
            ))
        };
        let uri: hyper::Uri = url.parse().map_err(|_| bad("not a URL"))?;
        if uri.scheme_str() != Some("https") {
            return Err(bad("not https://"));
        }
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad("a user or password in the URL"));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        Ok(Upstream {
            host: host.to_ascii_lowercase(),
            port: authority.port_u16().unwrap_or(443),
            path_prefix: uri.path().trim_end_matches('/').to_string(),
        })
    }

    /// `host` or `host:port` as a Host header says it.
    pub fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        match self.port {
            443 => host,
            port => format!("{host}:{port}"),
        }
    }
}

/// The URL the agent is given.
pub fn agent_base_url() -> String {
    format!("http://127.0.0.1:{CREDENTIAL_PORT}")
}

/// What intake found.
#[derive(Debug)]
pub struct Intake {
    pub credential: Credential,
    pub upstream: Upstream,
    /// Other credentials found and not used (names only).
    pub ignored: Vec<String>,
}

/// Finds the credential for `mode`: secret files first (a `*_FILE` variable's, else
/// `SECRETS_DIR`'s), then the variables; API key, OAuth token, auth token in that order. A
/// secret file the agent (`account`) could read is refused. `None` when the gateway is off, or
/// on `Auto` with nothing found.
pub fn intake(
    mode: Mode,
    vars: &[(OsString, OsString)],
    secrets_dir: &Path,
    account: &Account,
) -> Result<Option<Intake>> {
    if mode == Mode::Off {
        return Ok(None);
    }
    let var = |name: &str| {
        vars.iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty())
    };
    let mut found: Vec<Credential> = Vec::new();
    for kind in Kind::ALL {
        let named = var(&kind.file_variable()).map(PathBuf::from);
        let path = match named {
            Some(path) => Some(path),
            None => Some(kind.default_file(secrets_dir)).filter(|p| p.exists()),
        };
        if let Some(path) = path {
            found.push(read_secret_file(kind, &path, account)?);
        }
    }
    for kind in Kind::ALL {
        if let Some(value) = var(kind.variable()) {
            let secret = value.to_str().map(str::trim).unwrap_or_default();
            if !secret.is_empty() && secret != PLACEHOLDER {
                found.push(Credential {
                    kind,
                    secret: secret.to_string(),
                    source: kind.variable().to_string(),
                });
            }
            zero_os_string(value);
        }
    }
    if found.is_empty() {
        return match mode {
            Mode::On => Err(Error::Usage(format!(
                "--credential-gateway: no credential found: mount a secret file at {} (or name \
                 one with ANTHROPIC_API_KEY_FILE), or set ANTHROPIC_API_KEY or \
                 CLAUDE_CODE_OAUTH_TOKEN",
                Kind::ApiKey.default_file(secrets_dir).display()
            ))),
            _ => Ok(None),
        };
    }
    let credential = found.remove(0);
    let ignored = found.into_iter().map(|c| c.source).collect();
    Ok(Some(Intake {
        credential,
        upstream: upstream(vars)?,
        ignored,
    }))
}

/// The user's `ANTHROPIC_BASE_URL`, else `DEFAULT_UPSTREAM`. The gateway's own URL (an editor's
/// settings may hand it to cordon too) is not an upstream.
fn upstream(vars: &[(OsString, OsString)]) -> Result<Upstream> {
    match vars.iter().rev().find(|(n, _)| n == "ANTHROPIC_BASE_URL") {
        Some((_, url)) if !url.is_empty() && url != OsStr::new(&agent_base_url()) => {
            Upstream::parse(&url.to_string_lossy(), "ANTHROPIC_BASE_URL")
        }
        _ => Upstream::parse(DEFAULT_UPSTREAM, "the default upstream"),
    }
}

/// The upstream the entrypoint's credential gateway would use here (a credential is present, as
/// a secret file or a variable), without reading the credential: for `cordon plan`.
pub fn upstream_if_present(
    vars: &[(OsString, OsString)],
    secrets_dir: &Path,
) -> Result<Option<Upstream>> {
    let set = |name: &str| vars.iter().any(|(n, v)| n == name && !v.is_empty());
    let present = Kind::ALL.iter().any(|kind| {
        set(&kind.file_variable())
            || kind.default_file(secrets_dir).exists()
            || vars
                .iter()
                .any(|(n, v)| n == kind.variable() && !v.is_empty() && v != PLACEHOLDER)
    });
    if !present {
        return Ok(None);
    }
    upstream(vars).map(Some)
}

/// What the entrypoint and `cordon firewall` take before the fence: the credential, its
/// upstream, and the CA store to verify the upstream with.
pub struct Taken {
    pub intake: Intake,
    pub ca_bundle: PathBuf,
}

impl Taken {
    /// What the fence opens to the gateway alone.
    pub fn upstream_host_port(&self) -> (String, u16) {
        (self.intake.upstream.host.clone(), self.intake.upstream.port)
    }

    /// The gateway's configuration, with the upstream's addresses the fence resolved.
    pub fn config(self, addrs: Vec<std::net::IpAddr>) -> service::Config {
        let port = self.intake.upstream.port;
        service::Config {
            addrs: addrs
                .into_iter()
                .map(|addr| std::net::SocketAddr::new(addr, port))
                .collect(),
            credential: self.intake.credential,
            upstream: self.intake.upstream,
            ca_bundle: self.ca_bundle,
        }
    }
}

/// The credential gateway's intake (`intake`) and the CA store, as root before anything of the
/// agent runs; the credential's values are wiped from cordon's own environment block.
pub fn take(
    mode: Mode,
    account: &Account,
    vars: &mut [(OsString, OsString)],
) -> Result<Option<Taken>> {
    let Some(intake) = intake(mode, vars, Path::new(SECRETS_DIR), account)? else {
        return Ok(None);
    };
    // The copies of the credential's variables in `vars` go now; the credential itself stays
    // for the gateway (and its restarts), noted for the processes that must forget it.
    for (name, value) in vars.iter_mut() {
        if Kind::ALL.iter().any(|k| name == k.variable()) {
            zero_os_string(std::mem::take(value));
        }
    }
    remember_to_forget(intake.credential.secret());
    if account.uid == CREDENTIAL_UID || account.gid == CREDENTIAL_UID {
        return Err(Error::BadUser(format!(
            "the agent's uid or gid ({}:{}) is the credential gateway's ({CREDENTIAL_UID}): it \
             could reach the API itself and signal the gateway; choose another user",
            account.uid, account.gid
        )));
    }
    let ssl_cert_file = vars
        .iter()
        .find(|(name, _)| name == "SSL_CERT_FILE")
        .map(|(_, value)| PathBuf::from(value));
    let ca_bundle = service::find_ca_bundle(ssl_cert_file)?;
    wipe_from_own_environment();
    log::info!(
        "credential gateway: the credential from {} ({}) stays with the gateway; the agent \
         reaches the API with ANTHROPIC_BASE_URL={} and {AGENT_VARIABLE}={PLACEHOLDER} (CA \
         certificates: {}){}",
        intake.credential.source,
        intake.credential.kind.variable(),
        agent_base_url(),
        ca_bundle.display(),
        if intake.ignored.is_empty() {
            String::new()
        } else {
            format!("; also found and not used: {}", intake.ignored.join(", "))
        }
    );
    Ok(Some(Taken { intake, ca_bundle }))
}

/// Reads a secret file, which must be root's alone (owned by root, no permission for group or
/// others, no ACL: then no other uid can read it, whoever the agent is) and where the agent
/// cannot replace it. Checked on the descriptor that is read.
fn read_secret_file(kind: Kind, path: &Path, account: &Account) -> Result<Credential> {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let at = || Location::new(path.display().to_string(), None);
    let cannot =
        |e: std::io::Error| Error::bad_input(at(), format!("cannot read the secret file: {e}"));
    let real = std::fs::canonicalize(path).map_err(cannot)?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&real)
        .map_err(cannot)?;
    let meta = file.metadata().map_err(cannot)?;
    if !meta.is_file() {
        return Err(Error::bad_input(at(), "not a regular file"));
    }
    // SAFETY: asks the size of an extended attribute of an open descriptor, into no buffer.
    let acl = unsafe {
        libc::fgetxattr(
            file.as_raw_fd(),
            c"system.posix_acl_access".as_ptr(),
            std::ptr::null_mut(),
            0,
        )
    } > 0;
    if meta.uid() != 0 || meta.mode() & 0o077 != 0 || acl {
        return Err(Error::bad_input(
            at(),
            format!(
                "the agent ({}, uid {}) could read this secret file, or another uid could: it is \
                 owned by uid {} gid {} with mode {:04o}{}, and must be root's alone. A Compose \
                 file secret is a bind mount that keeps the host file's owner and mode (on the \
                 host: chown root:root FILE && chmod 600 FILE); a Swarm secret needs \
                 `uid: \"0\"` and `mode: 0400`",
                account.name,
                account.uid,
                meta.uid(),
                meta.gid(),
                meta.mode() & 0o7777,
                if acl { " and an ACL" } else { "" }
            ),
        ));
    }
    // A file the agent could replace (at a later start, or before a drop-in's rerun) would
    // give the gateway the agent's own credential: every request, and the workspace in it, to
    // an account of its choosing.
    if let Some(why) = replaceable_by(path, &real, account) {
        return Err(Error::bad_input(
            at(),
            format!(
                "the agent ({}, uid {}) could replace this secret file with one of its own: \
                 {why}. Keep it where only root can write, e.g. /run/secrets (a bind mount of a \
                 root-owned 0600 file from outside the workspace)",
                account.name, account.uid
            ),
        ));
    }
    let mut bytes = Vec::new();
    file.take(MAX_SECRET_LEN + 1)
        .read_to_end(&mut bytes)
        .map_err(cannot)?;
    if bytes.len() as u64 > MAX_SECRET_LEN {
        return Err(Error::bad_input(
            at(),
            "larger than 64 KiB: a secret file holds the credential alone",
        ));
    }
    let text = String::from_utf8(bytes)
        .map_err(|_| Error::bad_input(at(), "the secret file is not UTF-8 text"))?;
    let secret = text.trim();
    let credential =
        (!secret.is_empty() && !secret.contains(char::is_whitespace)).then(|| Credential {
            kind,
            secret: secret.to_string(),
            source: path.display().to_string(),
        });
    zero_os_string(text.into());
    credential.ok_or_else(|| {
        Error::bad_input(
            at(),
            "the secret file must hold the credential alone, on one line",
        )
    })
}

/// Why `account` could put a file of its own at `path` (as given, and as resolved: `real`), or
/// `None`: it owns the file or a directory on either path, or may write to such a directory
/// (unless the directory is sticky and not its own, where it can remove only its own files).
fn replaceable_by(path: &Path, real: &Path, account: &Account) -> Option<String> {
    let file = std::fs::metadata(real).ok()?;
    if file.uid() == account.uid {
        return Some(format!("it is owned by uid {}", file.uid()));
    }
    let given = path
        .parent()
        .map(|dir| dir.ancestors())
        .into_iter()
        .flatten();
    for dir in given.chain(real.ancestors().skip(1)) {
        let Ok(meta) = std::fs::metadata(dir) else {
            continue;
        };
        let sticky = meta.mode() & 0o1000 != 0;
        let owned = meta.uid() == account.uid;
        if owned || (account_may(account, &meta, 0o2) && !sticky) {
            return Some(format!(
                "{} is {} (uid {}, mode {:04o})",
                dir.display(),
                if owned { "its own" } else { "writable by it" },
                meta.uid(),
                meta.mode() & 0o7777
            ));
        }
    }
    None
}

/// Whether `account` has permission `bit` (4 read, 2 write, 1 search) on a file of `meta`:
/// owner, group and other bits as the kernel applies them (ACLs are not read).
fn account_may(account: &Account, meta: &std::fs::Metadata, bit: u32) -> bool {
    let mode = meta.mode();
    if meta.uid() == account.uid {
        mode & (bit << 6) != 0
    } else if account.groups.contains(&meta.gid()) || meta.gid() == account.gid {
        mode & (bit << 3) != 0
    } else {
        mode & bit != 0
    }
}

/// Overwrites a string's bytes before it is freed: freed memory is not cleared, and a process
/// forked later would find the bytes in its heap.
fn zero_os_string(value: OsString) {
    use std::os::unix::ffi::OsStringExt;
    let mut bytes = value.into_vec();
    bytes.fill(0);
    std::hint::black_box(&bytes);
}

/// Where the credential lives in this process (address and length of its one long-lived
/// copy), for `forget_in_this_process`.
static LONG_LIVED: std::sync::Mutex<Vec<(usize, usize)>> = std::sync::Mutex::new(Vec::new());

fn remember_to_forget(secret: &str) {
    if let Ok(mut places) = LONG_LIVED.lock() {
        places.push((secret.as_ptr() as usize, secret.len()));
    }
}

/// Overwrites the credential in a process forked from cordon that has no use for it (the DNS
/// gateway, the harden helper): their copy of cordon's memory holds it too, and the DNS gateway
/// parses what the agent sends. Call in the child, right after the fork.
pub fn forget_in_this_process() {
    if let Ok(places) = LONG_LIVED.lock() {
        for (address, len) in places.iter() {
            // SAFETY: each entry is the heap buffer of a credential this process's parent
            // noted and holds until it exits (never freed: the gateway keeps it for restarts);
            // after fork the child owns its copy of that memory, and nothing reads it again.
            unsafe { std::ptr::write_bytes(*address as *mut u8, 0, *len) };
        }
    }
}

/// The agent's variables with the gateway on: every credential variable (and `*_FILE`,
/// `ANTHROPIC_BASE_URL`) removed, the gateway's URL and the placeholder token added.
pub fn agent_variables(
    vars: impl IntoIterator<Item = (OsString, OsString)>,
) -> Vec<(OsString, OsString)> {
    let replaced = |name: &OsStr| {
        let name = name.as_bytes();
        name == b"ANTHROPIC_BASE_URL"
            || Kind::ALL
                .iter()
                .any(|k| name == k.variable().as_bytes() || name == k.file_variable().as_bytes())
    };
    let mut kept: Vec<(OsString, OsString)> =
        vars.into_iter().filter(|(n, _)| !replaced(n)).collect();
    kept.push(("ANTHROPIC_BASE_URL".into(), agent_base_url().into()));
    kept.push((AGENT_VARIABLE.into(), PLACEHOLDER.into()));
    kept
}

/// Overwrites, in this process's own environment block (what /proc/1/environ shows), the
/// values of the credential variables, so that no copy of the credential stays there or in the
/// children forked from it. Call while single-threaded, after the values were read.
pub fn wipe_from_own_environment() {
    extern "C" {
        static mut environ: *mut *mut libc::c_char;
    }
    let names: Vec<String> = Kind::ALL.iter().map(|k| k.variable().to_string()).collect();
    // SAFETY: single-threaded; each entry is a NUL-terminated "NAME=value" string the process
    // owns, overwritten in place within its own length.
    unsafe {
        let mut entry = environ;
        while !entry.is_null() && !(*entry).is_null() {
            let text = std::ffi::CStr::from_ptr(*entry).to_bytes();
            if let Some(eq) = text.iter().position(|b| *b == b'=') {
                if names.iter().any(|n| n.as_bytes() == &text[..eq]) {
                    let value = (*entry).add(eq + 1);
                    std::ptr::write_bytes(value, b'x', text.len() - eq - 1);
                }
            }
            entry = entry.add(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn account() -> Account {
        Account {
            name: "agent".into(),
            uid: 4242,
            gid: 4242,
            groups: vec![4242],
            home: "/home/agent".into(),
            shell: "/bin/sh".into(),
        }
    }

    fn vars(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        pairs
            .iter()
            .map(|(n, v)| ((*n).into(), (*v).into()))
            .collect()
    }

    #[test]
    fn upstreams_are_https_only() {
        let up = Upstream::parse("https://gw.example.test:8443/anthropic/", "X").unwrap();
        assert_eq!(up.host, "gw.example.test");
        assert_eq!(up.port, 8443);
        assert_eq!(up.path_prefix, "/anthropic");
        assert_eq!(up.authority(), "gw.example.test:8443");
        let default = Upstream::parse(DEFAULT_UPSTREAM, "X").unwrap();
        assert_eq!(
            (default.authority(), default.path_prefix),
            ("api.anthropic.com".into(), String::new())
        );
        for bad in [
            "http://api.anthropic.com",
            "https://u:p@x.test",
            "not a url",
            "ftp://x",
        ] {
            let err = Upstream::parse(bad, "ANTHROPIC_BASE_URL")
                .unwrap_err()
                .to_string();
            assert!(err.contains("only over TLS"), "{bad}: {err}");
        }
    }

    #[test]
    fn variables_are_found_in_order_and_the_rest_named() {
        let dir = std::env::temp_dir().join(format!("cordon-cred-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let env = vars(&[
            ("CLAUDE_CODE_OAUTH_TOKEN", "oauth-secret"),
            ("ANTHROPIC_API_KEY", "sk-ant-real"),
        ]);
        let found = intake(Mode::Auto, &env, &dir, &account()).unwrap().unwrap();
        assert_eq!(found.credential.kind, Kind::ApiKey);
        assert_eq!(found.credential.secret(), "sk-ant-real");
        assert_eq!(found.ignored, ["CLAUDE_CODE_OAUTH_TOKEN"]);
        assert_eq!(found.upstream.host, "api.anthropic.com");
        assert!(!format!("{found:?}").contains("sk-ant-real"));
        assert!(intake(Mode::Off, &env, &dir, &account()).unwrap().is_none());
        assert!(intake(Mode::Auto, &[], &dir, &account()).unwrap().is_none());
        let none = intake(Mode::On, &[], &dir, &account())
            .unwrap_err()
            .to_string();
        assert!(none.contains("no credential found"), "{none}");
        // The agent's own gateway URL (a devcontainer's containerEnv) is not an upstream.
        let env = vars(&[
            ("ANTHROPIC_API_KEY", "k"),
            ("ANTHROPIC_BASE_URL", &agent_base_url()),
        ]);
        let found = intake(Mode::Auto, &env, &dir, &account()).unwrap().unwrap();
        assert_eq!(found.upstream.host, "api.anthropic.com");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_secret_file_the_agent_could_read_is_refused() {
        let dir = std::env::temp_dir().join(format!("cordon-secrets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let file = dir.join("anthropic_api_key");
        std::fs::write(&file, "sk-ant-from-file\n").unwrap();
        let agent = account();
        let refusal = |dir: &Path| {
            intake(Mode::Auto, &[], dir, &agent)
                .unwrap_err()
                .to_string()
        };
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = refusal(&dir);
        assert!(
            err.contains("could read this secret file") && err.contains("chmod 600"),
            "{err}"
        );
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        if !nix::unistd::geteuid().is_root() {
            // Not root's: refused whoever the agent is (the rest needs root to chown).
            assert!(refusal(&dir).contains("must be root's alone"));
            std::fs::remove_dir_all(&dir).unwrap();
            return;
        }
        let found = intake(Mode::Auto, &[], &dir, &agent).unwrap().unwrap();
        assert_eq!(found.credential.secret(), "sk-ant-from-file");
        assert_eq!(found.credential.source, file.display().to_string());
        // Root's but the group may read: refused (the group may be the agent's, or another
        // uid's).
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(refusal(&dir).contains("mode 0640"));
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert!(intake(Mode::Auto, &[], &dir, &agent).unwrap().is_some());
        // Owned by the agent: refused (it could chmod it).
        let chown = |path: &Path, uid: u32| {
            nix::unistd::chown(path, Some(nix::unistd::Uid::from_raw(uid)), None).unwrap()
        };
        chown(&file, 4242);
        assert!(refusal(&dir).contains("owned by uid 4242"));
        chown(&file, 0);
        // A directory the agent may write (not sticky): it could put its own key there.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(refusal(&dir).contains("could replace this secret file"));
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(
            intake(Mode::Auto, &[], &dir, &agent).unwrap().is_some(),
            "sticky"
        );
        // A directory the agent owns: it could rename the file away.
        chown(&dir, 4242);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(refusal(&dir).contains("its own"));
        chown(&dir, 0);
        // A variable naming the file takes precedence over the default path, and wins over
        // the variables.
        let other = dir.join("elsewhere");
        std::fs::write(&other, "oauth-from-file").unwrap();
        std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o600)).unwrap();
        let env = vars(&[
            ("CLAUDE_CODE_OAUTH_TOKEN_FILE", other.to_str().unwrap()),
            ("ANTHROPIC_API_KEY", "sk-var"),
        ]);
        std::fs::remove_file(&file).unwrap();
        let found = intake(Mode::Auto, &env, &dir, &agent).unwrap().unwrap();
        assert_eq!(found.credential.kind, Kind::OAuthToken);
        assert_eq!(found.ignored, ["ANTHROPIC_API_KEY"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn cordon_plan_sees_a_credential_without_reading_it() {
        let dir = std::env::temp_dir().join(format!("cordon-plan-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(upstream_if_present(&[], &dir).unwrap(), None);
        let placeholder = vars(&[("ANTHROPIC_AUTH_TOKEN", PLACEHOLDER)]);
        assert_eq!(upstream_if_present(&placeholder, &dir).unwrap(), None);
        let key = vars(&[
            ("ANTHROPIC_API_KEY", "k"),
            ("ANTHROPIC_BASE_URL", "https://gw.test/x"),
        ]);
        let up = upstream_if_present(&key, &dir).unwrap().unwrap();
        assert_eq!(
            (up.host.as_str(), up.path_prefix.as_str()),
            ("gw.test", "/x")
        );
        // A secret file that is there, whatever its mode (nothing is read).
        std::fs::write(dir.join("claude_code_oauth_token"), "t").unwrap();
        let up = upstream_if_present(&[], &dir).unwrap().unwrap();
        assert_eq!(up.host, "api.anthropic.com");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_agent_gets_the_gateway_and_a_placeholder() {
        let env = vars(&[
            ("PATH", "/bin"),
            ("ANTHROPIC_API_KEY", "sk-real"),
            ("ANTHROPIC_API_KEY_FILE", "/run/secrets/x"),
            ("CLAUDE_CODE_OAUTH_TOKEN", "tok"),
            ("ANTHROPIC_BASE_URL", "https://gw.test"),
        ]);
        let out = agent_variables(env);
        let text = format!("{out:?}");
        assert!(!text.contains("sk-real") && !text.contains("tok\"") && !text.contains("gw.test"));
        assert!(out.contains(&("ANTHROPIC_AUTH_TOKEN".into(), PLACEHOLDER.into())));
        assert!(out.contains(&("ANTHROPIC_BASE_URL".into(), agent_base_url().into())));
        assert!(out.contains(&("PATH".into(), "/bin".into())));
        assert_eq!(out.len(), 3);
    }
}
