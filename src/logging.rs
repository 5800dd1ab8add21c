//! Logging to stderr as `cordon: ...` lines. CORDON_LOG (error|warn|info|debug|trace) overrides
//! the level chosen by -q / -v.

use std::io::Write;

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
