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
    fn names_a_few_then_counts() {
        assert_eq!(name_a_few(["a", "b"].iter(), 3, ", "), "a, b");
        assert_eq!(name_a_few(["a", "b", "c"].iter(), 3, " "), "a b c");
        assert_eq!(
            name_a_few(["a", "b", "c", "d", "e"].iter(), 2, ", "),
            "a, b and 3 more"
        );
    }
}
