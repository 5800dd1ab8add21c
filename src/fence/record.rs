//! What the kernel holds of the fence, read back with `iptables-save` and `ipset save`.
//!
//! "Verified" must mean the state the agent starts under. The rules are read back right after
//! loading (and checked against the plan chain by chain); immediately before the agent starts
//! (or `cordon firewall` returns) the rules are read again and compared with that record, and
//! the sets are read and compared with the plan, member by member. Any difference, say a set
//! member or a rule added by another process holding CAP_NET_ADMIN during the self-test, is
//! named and fails the start. The sets are read once only (over netlink, `set_netlink`): the plan
//! says exactly what they must hold.

use std::collections::{BTreeMap, BTreeSet};

use crate::fence::apply::Tools;
use crate::fence::plan::{
    self, Family, Ruleset, SetMembers, CHAIN_ALLOW, CHAIN_INPUT, CHAIN_OUTPUT, CHAIN_REJECT,
};
use crate::fence::policy::Ports;
use crate::sys::{nftables, run_dir, set_netlink, tool};

/// The loaded fence: each family's filter table and, when read, the members of cordon's live
/// sets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Loaded {
    /// Per family, the filter table as iptables-save prints it, without comments and counters.
    tables: BTreeMap<Family, Vec<String>>,
    /// cordon's live sets (those the rules match), name → members as ipset prints them; empty
    /// when they were not read.
    sets: BTreeMap<String, BTreeSet<String>>,
    /// nftables' generation just before the tables were read (iptables-nft only).
    generation: Option<u32>,
}

/// Reads the rules of `families` back from the kernel.
pub fn read_rules(tools: &Tools, families: &[Family]) -> Result<Loaded, String> {
    read(tools, families, false)
}

/// Reads the rules of `families` and cordon's sets back from the kernel.
pub fn read_all(tools: &Tools, families: &[Family]) -> Result<Loaded, String> {
    read(tools, families, true)
}

/// Reads the rules of `families` and cordon's sets back from the kernel, to compare with
/// `earlier`. With iptables-nft, when nftables' generation is still the one `earlier` was read
/// at, nothing was committed since: the tables are `earlier`'s, and only the sets are read.
pub fn read_again(tools: &Tools, families: &[Family], earlier: &Loaded) -> Result<Loaded, String> {
    let unchanged = earlier
        .generation
        .is_some_and(|then| nftables::generation() == Ok(then));
    if !unchanged {
        return read(tools, families, true);
    }
    Ok(Loaded {
        tables: earlier.tables.clone(),
        sets: set_netlink::members(&live_sets())?,
        generation: earlier.generation,
    })
}

/// The tables with the save tools, in parallel; the sets over netlink (`set_netlink`) meanwhile.
fn read(tools: &Tools, families: &[Family], with_sets: bool) -> Result<Loaded, String> {
    // Before the tables: a commit while they are read changes it, and the next reading reads.
    let generation = match tools.variant {
        "nft" => nftables::generation().ok(),
        _ => None,
    };
    let (saved, sets) = std::thread::scope(|scope| {
        let tables: Vec<_> = families
            .iter()
            .map(|family| {
                scope.spawn(|| {
                    tools
                        .save_tool(*family)
                        .run(&["-t", "filter"], "", tool::BOUND)
                })
            })
            .collect();
        let sets = match with_sets {
            true => set_netlink::members(&live_sets()),
            false => Ok(BTreeMap::new()),
        };
        let saved: Vec<Result<String, String>> = tables
            .into_iter()
            .map(|table| table.join().expect("save thread panicked"))
            .collect();
        (saved, sets)
    });
    let saved = saved.into_iter().collect::<Result<Vec<String>, String>>()?;
    let tables = families
        .iter()
        .copied()
        .zip(saved.iter().map(String::as_str));
    let mut loaded = Loaded::parse(tables, "");
    loaded.sets = sets?;
    loaded.generation = generation;
    Ok(loaded)
}

fn live_sets() -> Vec<String> {
    [Family::V4, Family::V6]
        .iter()
        .flat_map(|family| family.sets())
        .collect()
}

/// Changes cordon's sets for an address entry while the agent runs (`cordon allow` adds,
/// `cordon deny` removes), and the record with them, so that `cordon check` holds the live fence
/// to the changed policy. How many members changed.
pub fn change_address_entry(net: ipnet::IpNet, ports: &Ports, add: bool) -> Result<usize, String> {
    let members = plan::address_entry_members(net, ports);
    let ipset = tool::Tool::find("ipset").ok_or("ipset is not installed")?;
    let verb = if add { "add" } else { "del" };
    let input: String = members
        .iter()
        .map(|(set, member)| format!("{verb} {set} {member}\n"))
        .collect();
    ipset.run(&["-exist", "restore"], &input, tool::BOUND)?;
    let text = match std::fs::read_to_string(RECORD_FILE) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(members.len()),
        Err(error) => return Err(format!("reading {RECORD_FILE}: {error}")),
    };
    let (mut loaded, variant) = Loaded::load(&text)?;
    for (set, member) in &members {
        let live = loaded.sets.entry(set.clone()).or_default();
        match add {
            true => live.insert(member.clone()),
            false => live.remove(member),
        };
    }
    loaded
        .save(&variant)
        .map_err(|error| format!("writing {RECORD_FILE}: {error}"))?;
    Ok(members.len())
}

/// The chains whose rules cordon loads, in each family's filter table.
const CHAINS: [&str; 6] = [
    "INPUT",
    "OUTPUT",
    CHAIN_INPUT,
    CHAIN_OUTPUT,
    CHAIN_ALLOW,
    CHAIN_REJECT,
];

impl Loaded {
    pub fn parse<'a>(
        tables: impl IntoIterator<Item = (Family, &'a str)>,
        ipset_save: &str,
    ) -> Loaded {
        let tables = tables
            .into_iter()
            .map(|(family, text)| (family, table_lines(text)))
            .collect();
        let wanted = live_sets();
        let mut sets: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for line in ipset_save.lines() {
            let mut words = line.split_whitespace();
            let (Some(verb), Some(name)) = (words.next(), words.next()) else {
                continue;
            };
            if !wanted.iter().any(|w| w == name) {
                continue;
            }
            let members = sets.entry(name.to_string()).or_default();
            if verb == "add" {
                if let Some(member) = words.next() {
                    members.insert(member.to_string());
                }
            }
        }
        Loaded {
            tables,
            sets,
            generation: None,
        }
    }

    /// How these rules differ from what `ruleset` says was loaded, for the families whose
    /// tables must hold it. Empty when they match.
    pub fn rule_differences_from_plan(
        &self,
        ruleset: &Ruleset,
        families: &[Family],
    ) -> Vec<String> {
        let mut found = Vec::new();
        for family in families {
            let name = family.name();
            let Some(live) = self.tables.get(family) else {
                found.push(format!("the {name} filter table was not read"));
                continue;
            };
            let planned = table_lines(&ruleset.iptables_restore(*family));
            for policy in [":INPUT DROP", ":OUTPUT DROP"] {
                if !live.iter().any(|line| line == policy) {
                    found.push(format!(
                        "{name}: the {} policy is not DROP",
                        &policy[1..policy.len() - 5]
                    ));
                }
            }
            for chain in CHAINS {
                let (live_rules, planned_rules) =
                    (rules_of(live, chain), rules_of(&planned, chain));
                if live_rules.len() != planned_rules.len() {
                    found.push(format!(
                        "{name} chain {chain} holds {} rules, {} were loaded",
                        live_rules.len(),
                        planned_rules.len()
                    ));
                } else if matches!(chain, "INPUT" | "OUTPUT") && live_rules != planned_rules {
                    found.push(format!(
                        "{name} chain {chain} is `{}`, not `{}`",
                        live_rules.join("; "),
                        planned_rules.join("; ")
                    ));
                }
            }
        }
        found
    }

    /// How the sets differ from `planned` (`Ruleset::set_members`), member by member.
    pub fn set_differences_from_plan(&self, planned: &SetMembers) -> Vec<String> {
        let mut found = Vec::new();
        for (set, members) in planned {
            match self.sets.get(set) {
                Some(live) => found.extend(member_changes(set, members, live)),
                None => found.push(format!("set {set} is missing")),
            }
        }
        found
    }

    /// What changed between `earlier` and this reading. Empty when nothing did.
    pub fn changes_since(&self, earlier: &Loaded) -> Vec<String> {
        let mut found = Vec::new();
        for (family, before) in &earlier.tables {
            let empty = Vec::new();
            let now = self.tables.get(family).unwrap_or(&empty);
            let name = family.name();
            let added: Vec<&String> = now.iter().filter(|l| !before.contains(l)).collect();
            let removed: Vec<&String> = before.iter().filter(|l| !now.contains(l)).collect();
            found.extend(added.iter().map(|l| format!("{name} rule added: `{l}`")));
            found.extend(
                removed
                    .iter()
                    .map(|l| format!("{name} rule removed: `{l}`")),
            );
            if added.is_empty() && removed.is_empty() && now != before {
                found.push(format!("{name} rules were reordered"));
            }
        }
        for (set, before) in &earlier.sets {
            match self.sets.get(set) {
                Some(now) => found.extend(member_changes(set, before, now)),
                None => found.push(format!("set {set} is gone")),
            }
        }
        found
    }
}

/// Where the entrypoint and `cordon firewall` leave the record of the fence they loaded, for
/// `cordon check` as root: in a root-only directory, so that a process that can change the rules
/// (CAP_NET_ADMIN) but is not root cannot change the record to match.
pub const RECORD_FILE: &str = "/run/cordon/fence";

impl Loaded {
    /// These rules, with the sets as `planned` says they hold.
    pub fn with_sets(&self, planned: &SetMembers) -> Loaded {
        Loaded {
            tables: self.tables.clone(),
            sets: planned.iter().cloned().collect(),
            generation: self.generation,
        }
    }

    /// Writes the record (rules and sets), replacing any earlier one in one step.
    pub fn save(&self, variant: &str) -> std::io::Result<()> {
        run_dir::replace(
            std::path::Path::new(RECORD_FILE),
            0o600,
            &self.record_text(variant),
        )
    }

    fn record_text(&self, variant: &str) -> String {
        let mut text = format!(
            "# cordon: the fence as loaded; `cordon check` compares with it\nvariant {variant}\n"
        );
        for (family, lines) in &self.tables {
            text.push_str(&format!("table {}\n", family.name()));
            for line in lines {
                text.push_str(&format!("  {line}\n"));
            }
        }
        for (set, members) in &self.sets {
            text.push_str(&format!("set {set}\n"));
            for member in members {
                text.push_str(&format!("  {member}\n"));
            }
        }
        text
    }

    /// Reads a record `save` wrote: the rules and sets, and the iptables variant.
    pub fn load(text: &str) -> Result<(Loaded, String), String> {
        let mut loaded = Loaded::default();
        let mut variant = None;
        enum Section {
            None,
            Table(Family),
            Set(String),
        }
        let mut section = Section::None;
        for (index, line) in text.lines().enumerate() {
            let bad = || {
                format!(
                    "{RECORD_FILE}:{}: `{line}` is not part of a record",
                    index + 1
                )
            };
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            if let Some(item) = line.strip_prefix("  ") {
                match &section {
                    Section::Table(family) => loaded
                        .tables
                        .entry(*family)
                        .or_default()
                        .push(item.to_string()),
                    Section::Set(set) => {
                        loaded
                            .sets
                            .entry(set.clone())
                            .or_default()
                            .insert(item.to_string());
                    }
                    Section::None => return Err(bad()),
                }
                continue;
            }
            match line.split_once(' ') {
                Some(("variant", name)) => variant = Some(name.to_string()),
                Some(("table", "IPv4")) => section = Section::Table(Family::V4),
                Some(("table", "IPv6")) => section = Section::Table(Family::V6),
                Some(("set", name)) => {
                    loaded.sets.entry(name.to_string()).or_default();
                    section = Section::Set(name.to_string());
                }
                _ => return Err(bad()),
            }
        }
        let variant = variant.ok_or_else(|| format!("{RECORD_FILE}: no variant line"))?;
        Ok((loaded, variant))
    }

    /// How many rules and set members this holds, for reports.
    pub fn size(&self) -> (usize, usize) {
        (
            self.tables.values().map(Vec::len).sum(),
            self.sets.values().map(BTreeSet::len).sum(),
        )
    }
}

/// The lines of an iptables-save (or restore) text that say what the table holds: chain
/// policies without counters, and rules.
fn table_lines(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            if let Some(chain) = line.strip_prefix(':') {
                // ":OUTPUT DROP [12:345]" → ":OUTPUT DROP"
                let mut words = chain.split_whitespace();
                let (name, policy) = (words.next()?, words.next()?);
                return Some(format!(":{name} {policy}"));
            }
            line.starts_with("-A ").then(|| line.to_string())
        })
        .collect()
}

fn rules_of<'a>(lines: &'a [String], chain: &str) -> Vec<&'a str> {
    let prefix = format!("-A {chain} ");
    lines
        .iter()
        .filter(|line| line.starts_with(&prefix))
        .map(String::as_str)
        .collect()
}

/// "set cordon4-hosts gained 203.0.113.7", naming at most three members of each kind.
fn member_changes(set: &str, before: &BTreeSet<String>, now: &BTreeSet<String>) -> Vec<String> {
    let gained: Vec<&String> = now.difference(before).collect();
    let lost: Vec<&String> = before.difference(now).collect();
    let mut found = Vec::new();
    if !gained.is_empty() {
        found.push(format!("set {set} gained {}", some_of(&gained)));
    }
    if !lost.is_empty() {
        found.push(format!("set {set} lost {}", some_of(&lost)));
    }
    found
}

fn some_of(members: &[&String]) -> String {
    crate::logging::name_a_few(members.iter(), 3, " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const V4: &str = "# Generated by iptables-nft-save v1.8.9 on Tue Dec  1 07:00:00 2026\n\
        *filter\n:INPUT DROP [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT DROP [3:180]\n\
        :CORDON_OUTPUT - [0:0]\n-A OUTPUT -j CORDON_OUTPUT\n\
        -A CORDON_OUTPUT -m set --match-set cordon4-hosts dst -j CORDON_ALLOW\nCOMMIT\n\
        # Completed on Tue Dec  1 07:00:00 2026\n";
    const SETS: &str = "create cordon4-hosts hash:net family inet hashsize 1024 maxelem 1048576 \
        bucketsize 12 initval 0x1\nadd cordon4-hosts 10.77.1.10\ncreate other hash:net\n\
        add other 203.0.113.9\ncreate cordon4-ports hash:net,port family inet\n";

    #[test]
    fn counters_comments_and_foreign_sets_are_not_part_of_the_record() {
        let loaded = Loaded::parse([(Family::V4, V4)], SETS);
        let later = Loaded::parse(
            [(
                Family::V4,
                &*V4.replace("[3:180]", "[90:5400]").replace("07:00", "07:01"),
            )],
            &SETS.replace("203.0.113.9", "203.0.113.10"),
        );
        assert_eq!(later.changes_since(&loaded), Vec::<String>::new());
        assert!(loaded.sets["cordon4-ports"].is_empty());
        assert!(!loaded.sets.contains_key("other"));
    }

    #[test]
    fn every_change_is_named() {
        let loaded = Loaded::parse([(Family::V4, V4)], SETS);
        let tampered = Loaded::parse(
            [(
                Family::V4,
                &*V4.replace(
                    "-A OUTPUT -j CORDON_OUTPUT",
                    "-A OUTPUT -d 203.0.113.7/32 -j ACCEPT\n-A OUTPUT -j CORDON_OUTPUT",
                ),
            )],
            &SETS.replace(
                "add cordon4-hosts 10.77.1.10",
                "add cordon4-hosts 10.77.1.10\nadd cordon4-hosts 10.77.1.20",
            ),
        );
        assert_eq!(
            tampered.changes_since(&loaded),
            [
                "IPv4 rule added: `-A OUTPUT -d 203.0.113.7/32 -j ACCEPT`",
                "set cordon4-hosts gained 10.77.1.20",
            ]
        );
        let emptied = Loaded::parse([(Family::V4, V4)], "");
        assert_eq!(
            emptied.changes_since(&loaded),
            ["set cordon4-hosts is gone", "set cordon4-ports is gone"]
        );
    }

    fn ruleset() -> Ruleset {
        use crate::error::Location;
        use crate::fence::policy::{parse_entry, Entry, Policy};
        let (target, ports) = parse_entry("10.77.1.10:443").unwrap();
        let policy = Policy {
            entries: vec![Entry {
                target,
                ports,
                origin: Location::new("test", None),
            }],
            inbound: Vec::new(),
            strict: false,
        };
        let conf =
            crate::fence::resolv_conf::parse("nameserver 10.0.0.2\n", "resolv.conf").unwrap();
        crate::fence::plan::plan(&policy, &Default::default(), &conf).unwrap()
    }

    const LOADED_SETS: &str = "create cordon4-ports hash:net,port family inet\n\
        add cordon4-ports 10.77.1.10,tcp:443\ncreate cordon4-hosts hash:net family inet\n\
        create cordon4-resolvers hash:net,port family inet\n\
        create cordon4-answered hash:ip,port family inet\ncreate cordon4-answered-any hash:ip family inet\n\
        create cordon6-ports hash:net,port family inet6\ncreate cordon6-hosts hash:net family inet6\n\
        create cordon6-resolvers hash:net,port family inet6\n\
        create cordon6-answered hash:ip,port family inet6\ncreate cordon6-answered-any hash:ip family inet6\n";

    #[test]
    fn the_record_is_held_to_the_plan() {
        let planned = ruleset();
        let v4 = planned.iptables_restore(Family::V4);
        let as_planned = Loaded::parse([(Family::V4, v4.as_str())], LOADED_SETS);
        assert_eq!(
            as_planned.rule_differences_from_plan(&planned, &[Family::V4]),
            Vec::<String>::new()
        );
        assert_eq!(
            as_planned.set_differences_from_plan(&planned.set_members()),
            Vec::<String>::new()
        );
        let one_rule_short = v4.replace("-A CORDON_OUTPUT -o lo -j CORDON_ALLOW\n", "");
        let extra_member = LOADED_SETS.replace(
            "add cordon4-ports 10.77.1.10,tcp:443\n",
            "add cordon4-ports 10.77.1.10,tcp:443\nadd cordon4-ports 10.77.1.20,tcp:443\n",
        );
        let drifted = Loaded::parse([(Family::V4, one_rule_short.as_str())], &extra_member);
        let mut found = drifted.rule_differences_from_plan(&planned, &[Family::V4]);
        found.extend(drifted.set_differences_from_plan(&planned.set_members()));
        assert!(
            found
                .iter()
                .any(|d| d.starts_with("IPv4 chain CORDON_OUTPUT holds"))
                && found.contains(&"set cordon4-ports gained 10.77.1.20,tcp:443".to_string()),
            "{found:?}"
        );
        let accepting = Loaded::parse(
            [(Family::V4, &*v4.replace(":OUTPUT DROP", ":OUTPUT ACCEPT"))],
            LOADED_SETS,
        );
        assert_eq!(
            accepting.rule_differences_from_plan(&planned, &[Family::V4]),
            ["IPv4: the OUTPUT policy is not DROP"]
        );
    }

    #[test]
    fn a_record_reads_back_as_written() {
        let planned = ruleset();
        let v4 = planned.iptables_restore(Family::V4);
        let loaded =
            Loaded::parse([(Family::V4, v4.as_str())], "").with_sets(&planned.set_members());
        let text = loaded.record_text("nft");
        let (back, variant) = Loaded::load(&text).unwrap();
        assert_eq!((back, variant.as_str()), (loaded, "nft"));
        assert!(Loaded::load("nonsense\n").is_err());
    }

    #[test]
    fn long_lists_are_cut() {
        let before = BTreeSet::new();
        let now: BTreeSet<String> = (1..=5).map(|i| format!("10.0.0.{i}")).collect();
        assert_eq!(
            member_changes("s", &before, &now),
            ["set s gained 10.0.0.1 10.0.0.2 10.0.0.3 and 2 more"]
        );
    }
}
