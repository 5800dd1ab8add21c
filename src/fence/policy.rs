//! Policy: what the agent may reach. Entries come from built-in profiles, /etc/cordon, `--allowlist`
//! files, CORDON_ALLOW and `--allow`; each is parsed, validated and tagged with where it came from.
//!
//! Entry grammar:
//!
//! ```text
//! entry   = target [ ":" ports ]
//! target  = name | "*." name | ipv4 [ "/" len ] | "[" ipv6 [ "/" len ] "]" | ipv6 [ "/" len ]
//! ports   = port-spec { "," port-spec }        (a bare IPv6 target takes no ports)
//! port-spec = [ "tcp/" | "udp/" ] port [ "-" port ]
//! ```
//!
//! A name without ports means TCP 80 and 443; an address or network without ports means every
//! port and protocol.

use std::fmt;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use ipnet::IpNet;

use crate::error::{Error, Location, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }

    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
        }
    }
}

/// An inclusive range of ports of one protocol; a single port has `first == last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    pub proto: Proto,
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub const fn tcp(port: u16) -> Self {
        PortRange {
            proto: Proto::Tcp,
            first: port,
            last: port,
        }
    }

    pub fn contains(&self, proto: Proto, port: u16) -> bool {
        self.proto == proto && (self.first..=self.last).contains(&port)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.proto == Proto::Udp {
            write!(f, "udp/")?;
        }
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// The widest port range one entry may list: each port becomes a set element per address.
pub const MAX_PORT_RANGE: u32 = 1024;

pub const DEFAULT_NAME_PORTS: [PortRange; 2] = [PortRange::tcp(80), PortRange::tcp(443)];

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Ports {
    /// Every port and protocol (an address or network entry without a port list).
    Any,
    Listed(Vec<PortRange>),
}

impl fmt::Display for Ports {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ports::Any => write!(f, "any port"),
            Ports::Listed(ranges) => {
                let parts: Vec<String> = ranges.iter().map(|r| r.to_string()).collect();
                write!(f, "{}", parts.join(","))
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// A DNS name, lower-case, without a trailing dot.
    Name(String),
    /// `*.name`: every name under `name`.
    Wildcard(String),
    Net(IpNet),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Name(name) => write!(f, "{name}"),
            Target::Wildcard(name) => write!(f, "*.{name}"),
            Target::Net(net) if net.prefix_len() == net.max_prefix_len() => {
                write!(f, "{}", net.addr())
            }
            Target::Net(net) => write!(f, "{net}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub target: Target,
    pub ports: Ports,
    pub origin: Location,
}

/// The validated, merged policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    pub entries: Vec<Entry>,
    /// Ports accepted for inbound connections.
    pub inbound: Vec<PortRange>,
    pub strict: bool,
}

impl Policy {
    /// A policy of these entries, written as in an allowlist file (tests and the fuzzer);
    /// panics on an entry that does not parse.
    pub(crate) fn of(entries: &[&str], origin: &str) -> Policy {
        let entries = entries
            .iter()
            .map(|text| {
                let (target, ports) =
                    parse_entry(text).unwrap_or_else(|e| panic!("entry {text}: {e}"));
                Entry {
                    target,
                    ports,
                    origin: Location::new(origin, None),
                }
            })
            .collect();
        Policy {
            entries,
            inbound: Vec::new(),
            strict: false,
        }
    }

    /// Static mode resolves names once, at start: a wildcard names no address to resolve, so
    /// only the DNS gateway (which sees each name as it is asked) can serve one.
    pub fn refuse_wildcards(&self) -> Result<()> {
        match self
            .entries
            .iter()
            .find(|entry| matches!(entry.target, Target::Wildcard(_)))
        {
            Some(Entry {
                target: Target::Wildcard(name),
                origin,
                ..
            }) => Err(Error::bad_input(
                origin.clone(),
                format!(
                    "`*.{name}`: wildcard entries need the DNS gateway (--dns gateway), and \
                     --dns static resolves names once at start; use the gateway or list the \
                     names you need (e.g. api.{name})"
                ),
            )),
            _ => Ok(()),
        }
    }

    /// The distinct names to resolve, in first-seen order.
    pub fn names(&self) -> Vec<&str> {
        let mut seen = std::collections::HashSet::new();
        self.entries
            .iter()
            .filter_map(|entry| match &entry.target {
                Target::Name(name) if seen.insert(name.as_str()) => Some(name.as_str()),
                _ => None,
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Profiles

/// Built-in profiles. `@name` includes another profile.
pub const PROFILES: &[(&str, &[&str])] = &[
    (
        "claude",
        &["api.anthropic.com", "claude.ai", "platform.claude.com"],
    ),
    ("npm", &["registry.npmjs.org"]),
    ("pypi", &["pypi.org", "files.pythonhosted.org"]),
    (
        "github",
        &[
            "github.com:22,443",
            "api.github.com",
            "codeload.github.com",
            "objects.githubusercontent.com",
            "raw.githubusercontent.com",
        ],
    ),
    (
        "vscode",
        &[
            "marketplace.visualstudio.com",
            "vscode.blob.core.windows.net",
            "update.code.visualstudio.com",
        ],
    ),
    (
        // What Anthropic's reference init-firewall.sh allows (GitHub by name rather than by its
        // published ranges, and SSH only to github.com instead of to every address).
        "anthropic-devcontainer",
        &[
            "@npm",
            "@github",
            "@vscode",
            "api.anthropic.com",
            "sentry.io",
            "statsig.anthropic.com",
            "statsig.com",
        ],
    ),
];

pub const DEFAULT_PROFILE: &str = "claude";

fn profile_entries(name: &str) -> Option<Vec<&'static str>> {
    let (_, items) = PROFILES.iter().find(|(n, _)| *n == name)?;
    let mut entries = Vec::new();
    for item in *items {
        match item.strip_prefix('@') {
            Some(included) => entries.extend(profile_entries(included)?),
            None => entries.push(*item),
        }
    }
    Some(entries)
}

fn profile_names() -> String {
    let names: Vec<&str> = PROFILES.iter().map(|(n, _)| *n).collect();
    names.join(", ")
}

// ---------------------------------------------------------------------------------------------
// Parsing

/// Splits text holding several entries (a file line, CORDON_ALLOW) on whitespace and commas,
/// re-attaching port tokens to the entry before them: `a.test:443,8443 b.test` is two entries.
pub fn split_entries(text: &str) -> Result<Vec<String>, String> {
    let mut entries: Vec<String> = Vec::new();
    for token in text.split(|c: char| c.is_whitespace() || c == ',') {
        if token.is_empty() {
            continue;
        }
        if is_port_token(token) {
            match entries.last_mut() {
                Some(previous) if has_port_list(previous) => {
                    previous.push(',');
                    previous.push_str(token);
                    continue;
                }
                _ => {
                    return Err(format!(
                        "`{token}` is a port without an entry before it; write NAME:{token}"
                    ))
                }
            }
        }
        entries.push(token.to_string());
    }
    Ok(entries)
}

fn is_port_token(token: &str) -> bool {
    let spec = token
        .strip_prefix("tcp/")
        .or_else(|| token.strip_prefix("udp/"))
        .unwrap_or(token);
    !spec.is_empty() && spec.chars().all(|c| c.is_ascii_digit() || c == '-')
}

fn has_port_list(entry: &str) -> bool {
    match entry.strip_prefix('[') {
        Some(rest) => rest.contains("]:"),
        None => entry.matches(':').count() == 1,
    }
}

/// Parses one entry into its target and ports.
pub fn parse_entry(text: &str) -> Result<(Target, Ports), String> {
    let (host, ports) = split_host_ports(text)?;
    let target = parse_target(host)?;
    let ports = match ports {
        Some(list) => Ports::Listed(parse_ports(list)?),
        None => match target {
            Target::Net(_) => Ports::Any,
            Target::Name(_) | Target::Wildcard(_) => Ports::Listed(DEFAULT_NAME_PORTS.to_vec()),
        },
    };
    Ok((target, ports))
}

fn split_host_ports(text: &str) -> Result<(&str, Option<&str>), String> {
    if let Some(rest) = text.strip_prefix('[') {
        let (inside, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("`{text}`: missing `]` after the IPv6 address"))?;
        if !inside.contains(':') {
            return Err(format!("`{text}`: brackets are only for IPv6 addresses"));
        }
        return match after {
            "" => Ok((inside, None)),
            _ => match after.strip_prefix(':') {
                Some(ports) => Ok((inside, Some(ports))),
                None => Err(format!("`{text}`: expected `:PORTS` after `]`")),
            },
        };
    }
    if text.matches(':').count() > 1 {
        // A bare IPv6 address or network: it cannot carry ports without brackets.
        return Ok((text, None));
    }
    match text.split_once(':') {
        Some((host, ports)) => Ok((host, Some(ports))),
        None => Ok((text, None)),
    }
}

fn parse_target(host: &str) -> Result<Target, String> {
    if host.is_empty() {
        return Err("empty entry".into());
    }
    if let Some(name) = host.strip_prefix("*.") {
        return Ok(Target::Wildcard(parse_name(name)?));
    }
    if host.contains(':') || looks_numeric(host) {
        return parse_net(host).map(Target::Net);
    }
    parse_name(host).map(Target::Name)
}

/// Dotted digits (and an optional /len) are meant as an IPv4 address, never as a name.
fn looks_numeric(host: &str) -> bool {
    host.chars()
        .all(|c| c.is_ascii_digit() || c == '.' || c == '/')
}

fn parse_net(text: &str) -> Result<IpNet, String> {
    let (addr_text, prefix) = match text.split_once('/') {
        Some((addr, len)) => (addr, Some(len)),
        None => (text, None),
    };
    let addr: IpAddr = addr_text.parse().map_err(|_| {
        if addr_text.contains(':') {
            format!("`{addr_text}` is not a valid IPv6 address")
        } else {
            format!("`{addr_text}` is not a valid IPv4 address")
        }
    })?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len = match prefix {
        None => max,
        Some(len) => len
            .parse::<u8>()
            .ok()
            .filter(|len| *len <= max)
            .ok_or_else(|| format!("`/{len}` is not a prefix length between 0 and {max}"))?,
    };
    let net = IpNet::new(addr, len).map_err(|e| e.to_string())?;
    if net.network() != addr {
        return Err(format!(
            "`{text}` has host bits set; the network is {}",
            net.trunc()
        ));
    }
    Ok(net)
}

fn parse_name(text: &str) -> Result<String, String> {
    let name = text.strip_suffix('.').unwrap_or(text).to_ascii_lowercase();
    if name.is_empty() || name.len() > 253 {
        return Err(format!(
            "`{text}` is not a valid DNS name (1 to 253 characters)"
        ));
    }
    for label in name.split('.') {
        let valid = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid {
            return Err(format!(
                "`{text}` is not a valid DNS name (label `{label}`: letters, digits, `-` and `_`, \
                 at most 63, not starting or ending with `-`)"
            ));
        }
    }
    if name
        .rsplit('.')
        .next()
        .is_some_and(|tld| tld.chars().all(|c| c.is_ascii_digit()))
    {
        return Err(format!(
            "`{text}` is neither a valid address nor a DNS name"
        ));
    }
    Ok(name)
}

pub fn parse_ports(list: &str) -> Result<Vec<PortRange>, String> {
    if list.is_empty() {
        return Err("empty port list after `:`".into());
    }
    let mut ranges: Vec<PortRange> = Vec::new();
    for spec in list.split(',') {
        let range = parse_port_spec(spec)?;
        if !ranges.contains(&range) {
            ranges.push(range);
        }
    }
    Ok(ranges)
}

fn parse_port_spec(spec: &str) -> Result<PortRange, String> {
    let (proto, ports) = if let Some(rest) = spec.strip_prefix("tcp/") {
        (Proto::Tcp, rest)
    } else if let Some(rest) = spec.strip_prefix("udp/") {
        (Proto::Udp, rest)
    } else {
        (Proto::Tcp, spec)
    };
    let port = |text: &str| -> Result<u16, String> {
        text.parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("`{spec}` is not a port (1-65535, optionally tcp/ or udp/)"))
    };
    let (first, last) = match ports.split_once('-') {
        Some((a, b)) => (port(a)?, port(b)?),
        None => {
            let p = port(ports)?;
            (p, p)
        }
    };
    if first > last {
        return Err(format!("`{spec}`: the range runs backwards"));
    }
    if u32::from(last - first) >= MAX_PORT_RANGE {
        return Err(format!(
            "`{spec}`: ranges are limited to {MAX_PORT_RANGE} ports; allow the address without \
             ports to open all of them"
        ));
    }
    Ok(PortRange { proto, first, last })
}

// ---------------------------------------------------------------------------------------------
// Sources

/// Where the allowlist comes from, besides CORDON_ALLOW.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sources {
    /// `--allow` entries.
    pub allow: Vec<String>,
    /// `--allowlist` files.
    pub allowlist: Vec<PathBuf>,
    /// Built-in profiles, besides the default one.
    pub profiles: Vec<String>,
    /// Whether the `claude` profile is included.
    pub default_profile: bool,
    /// `--inbound` port lists.
    pub inbound: Vec<String>,
    /// A name that does not resolve is an error.
    pub strict: bool,
    /// Holds `allowlist` and `allowlist.d/`, read when present.
    pub config_dir: PathBuf,
}

pub const DEFAULT_CONFIG_DIR: &str = "/etc/cordon";

impl Default for Sources {
    fn default() -> Self {
        Sources {
            allow: Vec::new(),
            allowlist: Vec::new(),
            profiles: Vec::new(),
            default_profile: true,
            inbound: Vec::new(),
            strict: false,
            config_dir: PathBuf::from(DEFAULT_CONFIG_DIR),
        }
    }
}

/// Loads and merges every source. `cordon_allow` is the value of CORDON_ALLOW, if set.
pub fn load(opts: &Sources, cordon_allow: Option<&str>) -> Result<Policy> {
    let mut builder = Builder::default();

    let mut profiles: Vec<&str> = Vec::new();
    if opts.default_profile {
        profiles.push(DEFAULT_PROFILE);
    }
    profiles.extend(
        opts.profiles
            .iter()
            .map(|p| p.trim())
            .filter(|p| !p.is_empty()),
    );
    for profile in profiles {
        let entries = profile_entries(profile).ok_or_else(|| {
            Error::Usage(format!(
                "unknown profile `{profile}`; the profiles are {}",
                profile_names()
            ))
        })?;
        let at = Location::new(format!("profile {profile}"), None);
        for entry in entries {
            builder.add_text(entry, &at)?;
        }
    }

    for file in config_files(&opts.config_dir)? {
        builder.add_file(&file)?;
    }
    for file in &opts.allowlist {
        builder.add_file(file)?;
    }
    if let Some(text) = cordon_allow {
        builder.add_text(text, &Location::new("CORDON_ALLOW", None))?;
    }
    for text in &opts.allow {
        builder.add_text(text, &Location::new("--allow", None))?;
    }

    let mut inbound = Vec::new();
    for list in &opts.inbound {
        let at = Location::new("--inbound", None);
        for spec in list.split(|c: char| c == ',' || c.is_whitespace()) {
            if !spec.is_empty() {
                inbound.extend(
                    parse_ports(spec).map_err(|reason| Error::bad_input(at.clone(), reason))?,
                );
            }
        }
    }
    inbound.sort();
    inbound.dedup();

    Ok(Policy {
        entries: builder.entries,
        inbound,
        strict: opts.strict,
    })
}

#[derive(Default)]
struct Builder {
    entries: Vec<Entry>,
    /// (target, ports) of every entry so far, to drop repeats in constant time.
    seen: std::collections::HashSet<(Target, Ports)>,
}

impl Builder {
    fn add_text(&mut self, text: &str, at: &Location) -> Result<()> {
        let tokens = split_entries(text).map_err(|reason| Error::bad_input(at.clone(), reason))?;
        for token in tokens {
            self.add(&token, at)?;
        }
        Ok(())
    }

    fn add(&mut self, text: &str, at: &Location) -> Result<()> {
        let (target, ports) =
            parse_entry(text).map_err(|reason| Error::bad_input(at.clone(), reason))?;
        if let Target::Net(net) = &target {
            if net.prefix_len() == 0 {
                log::warn!("{at}: `{text}` allows every {} address", family_name(net));
            }
        }
        if self.seen.insert((target.clone(), ports.clone())) {
            self.entries.push(Entry {
                target,
                ports,
                origin: at.clone(),
            });
        }
        Ok(())
    }

    fn add_file(&mut self, path: &Path) -> Result<()> {
        ensure_not_agent_writable(path)?;
        let bytes = std::fs::read(path)
            .map_err(|e| Error::io(format!("reading allowlist {}", path.display()), e))?;
        for (index, line) in bytes.split(|&b| b == b'\n').enumerate() {
            let at = Location::new(path.display().to_string(), Some(index + 1));
            let Ok(line) = std::str::from_utf8(line) else {
                return Err(Error::bad_input(
                    at,
                    "not UTF-8 text: save the allowlist as UTF-8",
                ));
            };
            let content = line.split('#').next().unwrap_or("");
            self.add_text(content.trim_end_matches('\r'), &at)?;
        }
        Ok(())
    }
}

fn family_name(net: &IpNet) -> &'static str {
    match net {
        IpNet::V4(_) => "IPv4",
        IpNet::V6(_) => "IPv6",
    }
}

/// `DIR/allowlist` and the regular files of `DIR/allowlist.d/` (sorted, dot-files skipped).
fn config_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let main = dir.join("allowlist");
    if main.exists() {
        files.push(main);
    }
    let drop_in = dir.join("allowlist.d");
    match std::fs::read_dir(&drop_in) {
        Ok(listing) => {
            ensure_not_agent_writable(&drop_in)?;
            let mut found: Vec<PathBuf> = Vec::new();
            for item in listing {
                let item =
                    item.map_err(|e| Error::io(format!("reading {}", drop_in.display()), e))?;
                let hidden = item.file_name().to_string_lossy().starts_with('.');
                if !hidden && item.path().is_file() {
                    found.push(item.path());
                }
            }
            found.sort();
            files.extend(found);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(format!("reading {}", drop_in.display()), e)),
    }
    Ok(files)
}

/// Refuses a configuration file (or directory) that anyone but root could change: owned by
/// another user, writable by group or others, or inside a directory they could write — unless it
/// sits on a read-only mount, where nobody inside the container can change it.
pub fn ensure_not_agent_writable(path: &Path) -> Result<()> {
    if on_read_only_mount(path) {
        return Ok(());
    }
    let absolute = std::path::absolute(path)
        .map_err(|e| Error::io(format!("resolving {}", path.display()), e))?;
    let meta = std::fs::metadata(&absolute)
        .map_err(|e| Error::io(format!("reading {}", absolute.display()), e))?;
    if let Some(why) = writable_by_others(&meta, false) {
        return Err(Error::UnsafeConfig {
            path: absolute,
            why,
        });
    }
    for dir in absolute.ancestors().skip(1) {
        let Ok(meta) = std::fs::metadata(dir) else {
            continue;
        };
        if let Some(why) = writable_by_others(&meta, true) {
            return Err(Error::UnsafeConfig {
                path: absolute.clone(),
                why: format!("its directory {} {why}", dir.display()),
            });
        }
    }
    Ok(())
}

fn writable_by_others(meta: &std::fs::Metadata, is_ancestor: bool) -> Option<String> {
    const GROUP_OR_OTHER_WRITE: u32 = 0o022;
    const STICKY: u32 = 0o1000;
    if meta.uid() != 0 {
        return Some(format!("is owned by uid {}, not root", meta.uid()));
    }
    let mode = meta.mode();
    // A sticky directory (like /tmp) only lets others replace their own entries.
    if mode & GROUP_OR_OTHER_WRITE != 0 && !(is_ancestor && mode & STICKY != 0) {
        return Some(format!(
            "is writable by group or others (mode {:o})",
            mode & 0o7777
        ));
    }
    None
}

fn on_read_only_mount(path: &Path) -> bool {
    nix::sys::statvfs::statvfs(path)
        .map(|s| s.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(text: &str) -> (Target, Ports) {
        parse_entry(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn net(text: &str) -> Target {
        Target::Net(text.parse().unwrap())
    }

    fn tcp(ports: &[u16]) -> Ports {
        Ports::Listed(ports.iter().map(|p| PortRange::tcp(*p)).collect())
    }

    #[test]
    fn names_default_to_http_and_https() {
        assert_eq!(
            entry("API.Example.test."),
            (Target::Name("api.example.test".into()), tcp(&[80, 443]))
        );
    }

    #[test]
    fn ports_protocols_and_ranges() {
        assert_eq!(entry("a.test:443,8443").1, tcp(&[443, 8443]));
        assert_eq!(
            entry("a.test:udp/53,tcp/22,8000-8010").1,
            Ports::Listed(vec![
                PortRange {
                    proto: Proto::Udp,
                    first: 53,
                    last: 53
                },
                PortRange::tcp(22),
                PortRange {
                    proto: Proto::Tcp,
                    first: 8000,
                    last: 8010
                },
            ])
        );
    }

    #[test]
    fn addresses_and_networks() {
        assert_eq!(
            entry("10.1.0.0/16:5432"),
            (net("10.1.0.0/16"), tcp(&[5432]))
        );
        assert_eq!(entry("192.0.2.7"), (net("192.0.2.7/32"), Ports::Any));
        assert_eq!(
            entry("[2001:db8::/32]:443"),
            (net("2001:db8::/32"), tcp(&[443]))
        );
        assert_eq!(entry("[2001:db8::1]"), (net("2001:db8::1/128"), Ports::Any));
        assert_eq!(entry("2001:db8::/32"), (net("2001:db8::/32"), Ports::Any));
        assert_eq!(entry("fe80::1"), (net("fe80::1/128"), Ports::Any));
    }

    #[test]
    fn wildcards_parse() {
        assert_eq!(
            entry("*.example.test").0,
            Target::Wildcard("example.test".into())
        );
    }

    #[test]
    fn bad_entries_say_why() {
        let cases = [
            ("", "empty"),
            ("a.test:", "empty port list"),
            ("a.test:0", "not a port"),
            ("a.test:70000", "not a port"),
            ("a.test:10-5", "backwards"),
            ("a.test:1-2000", "limited to 1024"),
            ("a.test:sctp/5", "not a port"),
            ("10.1.2.3/16", "host bits set; the network is 10.1.0.0/16"),
            ("10.0.0.0/33", "prefix length"),
            ("1.2.3.256", "not a valid IPv4 address"),
            ("1.2.3", "not a valid IPv4 address"),
            ("[2001:db8::1", "missing `]`"),
            ("[10.0.0.1]:80", "only for IPv6"),
            ("2001:db8::zz", "not a valid IPv6"),
            ("-bad.test", "not a valid DNS name"),
            ("a..test", "not a valid DNS name"),
            ("under score.test", "not a valid DNS name"),
            ("a.123", "neither a valid address nor a DNS name"),
        ];
        for (text, expected) in cases {
            let error = parse_entry(text).expect_err(text);
            assert!(error.contains(expected), "{text}: {error}");
        }
    }

    #[test]
    fn splitting_keeps_port_lists_together() {
        assert_eq!(
            split_entries("a.test:443,8443 b.test, 10.0.0.0/8:22,udp/53\t[2001:db8::1]:80,81")
                .unwrap(),
            [
                "a.test:443,8443",
                "b.test",
                "10.0.0.0/8:22,udp/53",
                "[2001:db8::1]:80,81"
            ]
        );
        assert!(split_entries("a.test,443")
            .unwrap_err()
            .contains("port without an entry"));
    }

    #[test]
    fn every_profile_parses_and_includes_resolve() {
        for (name, _) in PROFILES {
            for text in profile_entries(name).unwrap() {
                parse_entry(text).unwrap_or_else(|e| panic!("profile {name}: {e}"));
            }
        }
        let reference = profile_entries("anthropic-devcontainer").unwrap();
        assert!(reference.contains(&"registry.npmjs.org"));
        assert!(reference.contains(&"github.com:22,443"));
        assert!(reference.contains(&"statsig.com"));
    }

    fn opts() -> Sources {
        Sources {
            config_dir: PathBuf::from("/nonexistent/cordon-test"),
            ..Sources::default()
        }
    }

    #[test]
    fn sources_merge_in_order_and_deduplicate() {
        let mut o = opts();
        o.profiles = vec!["npm".into()];
        o.allow = vec!["api.anthropic.com".into(), "x.test:22".into()];
        let policy = load(&o, Some("npm.test, 10.0.0.0/8:5432,5433")).unwrap();
        let described: Vec<String> = policy
            .entries
            .iter()
            .map(|e| format!("{} {} ({})", e.target, e.ports, e.origin))
            .collect();
        assert_eq!(
            described,
            [
                "api.anthropic.com 80,443 (profile claude)",
                "claude.ai 80,443 (profile claude)",
                "platform.claude.com 80,443 (profile claude)",
                "registry.npmjs.org 80,443 (profile npm)",
                "npm.test 80,443 (CORDON_ALLOW)",
                "10.0.0.0/8 5432,5433 (CORDON_ALLOW)",
                "x.test 22 (--allow)",
            ]
        );
    }

    #[test]
    fn no_default_profile_and_unknown_profile() {
        let mut o = opts();
        o.default_profile = false;
        assert!(load(&o, None).unwrap().entries.is_empty());
        o.profiles = vec!["nope".into()];
        let error = load(&o, None).unwrap_err().to_string();
        assert!(
            error.contains("unknown profile `nope`") && error.contains("pypi"),
            "{error}"
        );
    }

    #[test]
    fn static_mode_refuses_a_wildcard_with_the_place_it_came_from() {
        let mut o = opts();
        o.allow = vec!["*.example.test".into()];
        let policy = load(&o, None).unwrap();
        let error = policy.refuse_wildcards().unwrap_err().to_string();
        assert!(
            error.starts_with("--allow: `*.example.test`: wildcard"),
            "{error}"
        );
        o.allow = vec!["api.example.test".into()];
        assert!(load(&o, None).unwrap().refuse_wildcards().is_ok());
    }

    #[test]
    fn inbound_ports() {
        let mut o = opts();
        o.inbound = vec!["3000,udp/5353".into(), "8080".into()];
        let policy = load(&o, None).unwrap();
        assert_eq!(policy.inbound.len(), 3);
    }

    proptest! {
        #[test]
        fn parser_never_panics(text in "\\PC{0,40}") {
            let _ = parse_entry(&text);
            let _ = split_entries(&text);
        }

        #[test]
        fn rendered_entries_parse_back(
            labels in prop::collection::vec("[a-z][a-z0-9-]{0,10}[a-z0-9]", 1..4),
            ports in prop::collection::vec(1u16.., 0..4),
            udp in any::<bool>(),
        ) {
            let name = format!("{}.test", labels.join("."));
            let list: Vec<String> = ports
                .iter()
                .map(|p| if udp { format!("udp/{p}") } else { p.to_string() })
                .collect();
            let text = if list.is_empty() { name.clone() } else { format!("{name}:{}", list.join(",")) };
            let (target, parsed) = parse_entry(&text).unwrap();
            prop_assert_eq!(target, Target::Name(name));
            if !list.is_empty() {
                prop_assert_eq!(parsed.to_string(), {
                    let mut seen: Vec<String> = Vec::new();
                    for item in list { if !seen.contains(&item) { seen.push(item); } }
                    seen.join(",")
                });
            }
        }

        #[test]
        fn addresses_round_trip(addr in any::<std::net::Ipv4Addr>(), len in 0u8..=32, port in 1u16..) {
            let net = IpNet::new(IpAddr::V4(addr), len).unwrap().trunc();
            let (target, ports) = parse_entry(&format!("{net}:{port}")).unwrap();
            prop_assert_eq!(target, Target::Net(net));
            prop_assert_eq!(ports, Ports::Listed(vec![PortRange::tcp(port)]));
        }

        #[test]
        fn ipv6_round_trip(addr in any::<std::net::Ipv6Addr>(), len in 0u8..=128, port in 1u16..) {
            let net = IpNet::new(IpAddr::V6(addr), len).unwrap().trunc();
            let (target, _) = parse_entry(&format!("[{net}]:{port}")).unwrap();
            prop_assert_eq!(target, Target::Net(net));
        }
    }
}
