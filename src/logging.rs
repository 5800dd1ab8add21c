//! Logging to stderr as `cordon: ...` lines. CORDON_LOG (error|warn|info|debug|trace) overrides
//! the level chosen by -q / -v. Also how every report names a long list (`name_a_few`).

use std::fmt::Display;
use std::io::Write;

/// The first `shown` items joined by `separator`, then "and N more" for the rest:
/// "a, b, c" or "a, b, c and 7 more".
pub fn name_a_few<T: Display>(
    items: impl ExactSizeIterator<Item = T>,
    shown: usize,
    separator: &str,
) -> String {
    let total = items.len();
    let named: Vec<String> = items.take(shown).map(|item| item.to_string()).collect();
    match total.saturating_sub(named.len()) {
        0 => named.join(separator),
        more => format!("{} and {more} more", named.join(separator)),
    }
}

/// `n` and the noun, plural unless `n` is 1: "1 file", "3 files", "2 entries", "1 address".
pub fn count(n: impl Into<u64>, noun: &str) -> String {
    let n = n.into();
    if n == 1 {
        return format!("1 {noun}");
    }
    match noun.strip_suffix('y') {
        Some(stem) if !stem.ends_with(['a', 'e', 'o', 'u']) => format!("{n} {stem}ies"),
        _ if noun.ends_with('s') || noun.ends_with("sh") || noun.ends_with("ch") => {
            format!("{n} {noun}es")
        }
        _ => format!("{n} {noun}s"),
    }
}

/// `quiet` (-q) shows warnings and errors only; each `verbose` (-v) shows more.
pub fn init(quiet: bool, verbose: u8) {
    let level = match (quiet, verbose) {
        (true, _) => log::LevelFilter::Warn,
        (false, 0) => log::LevelFilter::Info,
        (false, 1) => log::LevelFilter::Debug,
        (false, _) => log::LevelFilter::Trace,
    };
    env_logger::Builder::new()
        .filter_level(level)
        .parse_env(env_logger::Env::new().filter("CORDON_LOG"))
        .format(|out, record| match record.level() {
            log::Level::Info => writeln!(out, "cordon: {}", record.args()),
            log::Level::Warn => writeln!(out, "cordon: warning: {}", record.args()),
            level => writeln!(
                out,
                "cordon: {}: {}",
                level.as_str().to_ascii_lowercase(),
                record.args()
            ),
        })
        .init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_plural_unless_one() {
        assert_eq!(count(1u64, "file"), "1 file");
        assert_eq!(count(0u64, "file"), "0 files");
        assert_eq!(count(2u64, "entry"), "2 entries");
        assert_eq!(count(1u64, "entry"), "1 entry");
        assert_eq!(count(3u64, "address"), "3 addresses");
        assert_eq!(count(2u64, "day"), "2 days");
    }

    #[test]
    fn names_a_few_then_counts() {
        assert_eq!(name_a_few(["a", "b"].iter(), 3, ", "), "a, b");
        assert_eq!(name_a_few(["a", "b", "c"].iter(), 3, " "), "a b c");
        assert_eq!(
            name_a_few(["a", "b", "c", "d", "e"].iter(), 2, ", "),
            "a, b and 3 more"
        );
    }
}
