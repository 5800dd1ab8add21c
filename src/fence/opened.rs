//! The start-up report's one line of what the policy opens: `opened: api.anthropic.com:443 (2),
//! *.npmjs.org:443, 10.1.0.0/16:5432 and 12 more`. Each entry as the user would write it, with
//! its address count where the name was resolved at start (`--dns static`, or the hosts file).

use super::policy::{Policy, Ports, Target};
use super::resolve::{Outcome, Resolution};
use crate::logging::name_a_few;

/// Entries named before "and N more".
pub const SHOWN: usize = 8;

/// What `policy` opens, `shown` entries at most. `resolution` holds the names resolved at start;
/// `api` is the credential gateway's upstream (host, port), which only the gateway reaches.
pub fn summary(
    policy: &Policy,
    resolution: &Resolution,
    api: Option<(&str, u16)>,
    shown: usize,
) -> String {
    let api = api.map_or_else(String::new, |(host, port)| {
        format!("; {host}:{port} through the credential gateway only")
    });
    if policy.entries.is_empty() {
        return format!("nothing (loopback only){api}");
    }
    let resolved = resolution.index();
    let entries = policy.entries.iter().map(|entry| {
        let ports = match &entry.ports {
            Ports::Any => String::new(),
            Ports::Listed(_) => format!(":{}", entry.ports),
        };
        // An IPv6 address or network with ports is written in brackets, as in the allowlist.
        let target = match &entry.target {
            Target::Net(net) if net.addr().is_ipv6() && !ports.is_empty() => {
                format!("[{}]", entry.target)
            }
            target => target.to_string(),
        };
        let count = match &entry.target {
            Target::Name(name) => match resolved.get(name.as_str()) {
                Some(found) if found.outcome == Outcome::Resolved => {
                    format!(" ({})", found.addrs.len())
                }
                Some(_) => " (not resolved)".to_string(),
                None => String::new(),
            },
            Target::Wildcard(_) | Target::Net(_) => String::new(),
        };
        format!("{target}{ports}{count}")
    });
    name_a_few(entries, shown, ", ") + &api
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fence::resolve::NameAddrs;

    fn resolved(name: &str, addrs: &[&str], outcome: Outcome) -> NameAddrs {
        NameAddrs {
            name: name.into(),
            addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
            outcome,
            refused: Vec::new(),
        }
    }

    #[test]
    fn names_wildcards_and_networks_with_ports_and_counts() {
        let policy = Policy::of(
            &[
                "api.anthropic.com:443",
                "*.npmjs.org:443",
                "10.1.0.0/16:5432",
                "192.0.2.7",
                "[2001:db8::1]:443",
                "2001:db8::/32",
                "gone.test",
                "github.com:22,443",
            ],
            "test",
        );
        let resolution = Resolution {
            names: vec![
                resolved(
                    "api.anthropic.com",
                    &["192.0.2.1", "2001:db8::1"],
                    Outcome::Resolved,
                ),
                resolved("gone.test", &[], Outcome::NxDomain),
            ],
            ..Resolution::default()
        };
        assert_eq!(
            summary(&policy, &resolution, None, SHOWN),
            "api.anthropic.com:443 (2), *.npmjs.org:443, 10.1.0.0/16:5432, 192.0.2.7, \
             [2001:db8::1]:443, 2001:db8::/32, gone.test:80,443 (not resolved), github.com:22,443"
        );
    }

    #[test]
    fn a_long_policy_is_cut_with_a_count_and_an_empty_one_says_so() {
        let names: Vec<String> = (0..12).map(|n| format!("n{n}.test:443")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let line = summary(&Policy::of(&names, "test"), &Resolution::default(), None, 3);
        assert_eq!(line, "n0.test:443, n1.test:443, n2.test:443 and 9 more");
        assert_eq!(
            summary(&Policy::default(), &Resolution::default(), None, SHOWN),
            "nothing (loopback only)"
        );
    }

    #[test]
    fn the_api_is_named_as_the_credential_gateways_alone() {
        let api = Some(("api.anthropic.com", 443));
        let policy = Policy::of(&["registry.npmjs.org:443"], "test");
        assert_eq!(
            summary(&policy, &Resolution::default(), api, SHOWN),
            "registry.npmjs.org:443; api.anthropic.com:443 through the credential gateway only"
        );
        assert_eq!(
            summary(&Policy::default(), &Resolution::default(), api, SHOWN),
            "nothing (loopback only); api.anthropic.com:443 through the credential gateway only"
        );
    }
}
