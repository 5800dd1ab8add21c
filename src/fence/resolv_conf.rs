//! The resolver configuration: /etc/resolv.conf parsed strictly enough that a fence can be built
//! from it (every nameserver becomes the only place DNS may go).

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::Duration;

use crate::error::{Error, Location, Result};

/// Docker's embedded DNS server on user-defined networks.
pub const DOCKER_EMBEDDED_DNS: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 11));

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvConf {
    pub source: String,
    pub nameservers: Vec<IpAddr>,
    pub search: Vec<String>,
    pub ndots: Option<usize>,
    pub timeout: Option<Duration>,
    pub attempts: Option<usize>,
    /// Docker's `# ExtServers: [...]` comment, naming the upstreams its embedded DNS forwards to.
    /// `None` when the comment is absent (Docker before 23 never writes it).
    pub docker_upstreams: Option<Vec<Upstream>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Upstream {
    pub addr: IpAddr,
    /// `host(ADDR)`: Docker forwards from the host's namespace, not from the container's.
    pub from_host: bool,
}

/// Where uid 0 (Docker's embedded forwarder runs as root inside the container's namespace) may
/// send DNS besides the configured nameservers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwarderUpstreams {
    /// Not Docker's embedded DNS, or every upstream is reached from the host's namespace.
    None,
    /// Known from the ExtServers comment.
    Listed(Vec<IpAddr>),
    /// Embedded DNS without an ExtServers comment: the upstream is not knowable from inside.
    Unknown,
}

impl ResolvConf {
    pub fn uses_docker_embedded_dns(&self) -> bool {
        self.nameservers.contains(&DOCKER_EMBEDDED_DNS)
    }

    pub fn forwarder_upstreams(&self) -> ForwarderUpstreams {
        if !self.uses_docker_embedded_dns() {
            return ForwarderUpstreams::None;
        }
        match &self.docker_upstreams {
            None => ForwarderUpstreams::Unknown,
            Some(upstreams) => {
                let in_namespace: Vec<IpAddr> = upstreams
                    .iter()
                    .filter(|u| !u.from_host)
                    .map(|u| u.addr)
                    .collect();
                if in_namespace.is_empty() {
                    ForwarderUpstreams::None
                } else {
                    ForwarderUpstreams::Listed(in_namespace)
                }
            }
        }
    }
}

pub fn read(path: &Path) -> Result<ResolvConf> {
    let source = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::bad_input(
            Location::new(source.clone(), None),
            format!(
                "cannot read the resolver configuration ({e}); the fence needs the nameservers \
                 it lists (run the container with Docker's default DNS or --dns ADDRESS)"
            ),
        )
    })?;
    parse(&text, &source)
}

pub fn parse(text: &str, source: &str) -> Result<ResolvConf> {
    let mut conf = ResolvConf {
        source: source.to_string(),
        nameservers: Vec::new(),
        search: Vec::new(),
        ndots: None,
        timeout: None,
        attempts: None,
        docker_upstreams: None,
    };
    for (index, line) in text.lines().enumerate() {
        let at = || Location::new(source, Some(index + 1));
        let line = line.trim();
        if let Some(comment) = line.strip_prefix('#') {
            if let Some(list) = comment.trim().strip_prefix("ExtServers:") {
                conf.docker_upstreams =
                    Some(parse_ext_servers(list).map_err(|r| Error::bad_input(at(), r))?);
            }
            continue;
        }
        if line.starts_with(';') || line.is_empty() {
            continue;
        }
        let mut words = line.split_whitespace();
        let keyword = words.next().unwrap_or_default();
        match keyword {
            "nameserver" => {
                let value = words
                    .next()
                    .ok_or_else(|| Error::bad_input(at(), "`nameserver` without an address"))?;
                let addr = parse_nameserver(value).ok_or_else(|| {
                    Error::bad_input(at(), format!("`{value}` is not an IP address"))
                })?;
                if !conf.nameservers.contains(&addr) {
                    conf.nameservers.push(addr);
                }
            }
            // The last of `search` and `domain` wins, as in libc.
            "search" => conf.search = words.map(str::to_string).collect(),
            "domain" => conf.search = words.next().map(str::to_string).into_iter().collect(),
            "options" => {
                for option in words {
                    apply_option(&mut conf, option);
                }
            }
            other => log::debug!("{}: ignoring `{other}`", at()),
        }
    }
    if conf.nameservers.is_empty() {
        return Err(Error::bad_input(
            Location::new(source, None),
            "no `nameserver` line; the fence allows DNS only to listed nameservers (run the \
             container with Docker's default DNS or --dns ADDRESS)",
        ));
    }
    Ok(conf)
}

/// Accepts `ADDR` and `ADDR%zone` (zones only matter for link-local IPv6 and carry no policy).
fn parse_nameserver(value: &str) -> Option<IpAddr> {
    let addr = value.split('%').next()?;
    addr.parse().ok()
}

/// `[8.8.8.8 host(127.0.0.53) 2001:db8::1]`
fn parse_ext_servers(list: &str) -> Result<Vec<Upstream>, String> {
    let inner = list
        .trim()
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .ok_or_else(|| {
            format!(
                "Docker's ExtServers comment `{}` is not a [list]",
                list.trim()
            )
        })?;
    inner
        .split_whitespace()
        .map(|item| {
            let (text, from_host) =
                match item.strip_prefix("host(").and_then(|r| r.strip_suffix(')')) {
                    Some(addr) => (addr, true),
                    None => (item, false),
                };
            parse_nameserver(text)
                .map(|addr| Upstream { addr, from_host })
                .ok_or_else(|| format!("ExtServers entry `{item}` is not an address"))
        })
        .collect()
}

fn apply_option(conf: &mut ResolvConf, option: &str) {
    let (name, value) = match option.split_once(':') {
        Some((name, value)) => (name, value.parse::<usize>().ok()),
        None => (option, None),
    };
    // Bounds as in glibc's resolv.h (RES_MAXNDOTS, RES_MAXRETRANS, RES_MAXRETRY).
    match (name, value) {
        ("ndots", Some(n)) => conf.ndots = Some(n.min(15)),
        ("timeout", Some(n)) => conf.timeout = Some(Duration::from_secs(n.clamp(1, 30) as u64)),
        ("attempts", Some(n)) => conf.attempts = Some(n.clamp(1, 5)),
        _ => log::debug!("{}: ignoring option `{option}`", conf.source),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> ResolvConf {
        parse(text, "resolv.conf").unwrap()
    }

    fn error(text: &str) -> String {
        parse(text, "resolv.conf").unwrap_err().to_string()
    }

    #[test]
    fn docker_embedded_dns_without_ext_servers() {
        let conf = ok("search example.internal\nnameserver 127.0.0.11\noptions ndots:0\n");
        assert!(conf.uses_docker_embedded_dns());
        assert_eq!(conf.forwarder_upstreams(), ForwarderUpstreams::Unknown);
        assert_eq!(conf.ndots, Some(0));
        assert_eq!(conf.search, ["example.internal"]);
    }

    #[test]
    fn docker_ext_servers_comment() {
        let conf = ok("# Generated by Docker Engine.\n\
             nameserver 127.0.0.11\n\
             options ndots:0\n\n\
             # Based on host file: '/etc/resolv.conf' (internal resolver)\n\
             # ExtServers: [host(127.0.0.53) 192.0.2.53 2001:db8::53]\n\
             # Overrides: []\n");
        assert_eq!(
            conf.forwarder_upstreams(),
            ForwarderUpstreams::Listed(vec![
                "192.0.2.53".parse().unwrap(),
                "2001:db8::53".parse().unwrap()
            ])
        );
        let host_only = ok("nameserver 127.0.0.11\n# ExtServers: [host(127.0.0.53)]\n");
        assert_eq!(host_only.forwarder_upstreams(), ForwarderUpstreams::None);
    }

    #[test]
    fn plain_and_ipv6_nameservers_and_options() {
        let conf = ok(
            "nameserver 192.0.2.1\nnameserver fe80::1%eth0\nnameserver 2001:db8::1\n\
             nameserver 192.0.2.1\n; comment\noptions timeout:2 attempts:9 rotate edns0\n\
             domain corp.test\n",
        );
        assert_eq!(conf.nameservers.len(), 3, "duplicates merged");
        assert_eq!(conf.nameservers[1], "fe80::1".parse::<IpAddr>().unwrap());
        assert_eq!(conf.timeout, Some(Duration::from_secs(2)));
        assert_eq!(conf.attempts, Some(5));
        assert_eq!(conf.search, ["corp.test"]);
        assert!(!conf.uses_docker_embedded_dns());
        assert_eq!(conf.forwarder_upstreams(), ForwarderUpstreams::None);
    }

    #[test]
    fn garbage_is_an_error_with_the_line() {
        assert_eq!(
            error("nameserver 10.0.0.1\nnameserver dns.example\n"),
            "resolv.conf:2: `dns.example` is not an IP address"
        );
        assert_eq!(
            error("nameserver\n"),
            "resolv.conf:1: `nameserver` without an address"
        );
        assert!(error("# ExtServers: 1.2.3.4\nnameserver 127.0.0.11").starts_with("resolv.conf:1:"));
        assert!(error("search x\n\u{0}\u{1}garbage").contains("no `nameserver` line"));
        assert!(error("").contains("no `nameserver` line"));
    }

    #[test]
    fn unknown_keywords_and_options_are_ignored_like_libc() {
        let conf = ok("sortlist 10.0.0.0\nnameserver 10.0.0.2\noptions ndots:x trust-ad\n");
        assert_eq!(conf.ndots, None);
    }

    #[test]
    fn missing_file_says_how_to_fix() {
        let error = read(Path::new("/nonexistent/resolv.conf"))
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("/nonexistent/resolv.conf: cannot read"),
            "{error}"
        );
        assert!(error.contains("--dns"), "{error}");
    }
}
