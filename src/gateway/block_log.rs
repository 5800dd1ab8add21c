//! The block log: what the fence and the gateway stopped, said so that the user knows what to
//! add. Refused names come from the gateway's loops; rejected connections from the fence's
//! reject chain (NFLOG, read by the gateway). Each distinct block is printed once on PID 1's
//! stderr (at most `LINES_PER_WINDOW` new lines per `WINDOW`; the rest are counted), e.g.
//!
//! ```text
//! cordon: refused name: evil.example (A) — allow with: evil.example
//! cordon: blocked: tcp 203.0.113.5:22 (github.com, answered 12 s ago) — allow with: github.com:22
//! ```
//!
//! and kept with counts and first/last time in a bounded table that the gateway writes to
//! `BLOCKED_FILE` for `cordon blocked`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs::File;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::FileExt;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hickory_resolver::proto::op::Query;
use hickory_resolver::proto::rr::DNSClass;

/// Where the gateway keeps the table (created by PID 1, root-owned 0644: the agent may read
/// what it was refused).
pub const BLOCKED_FILE: &str = "/run/cordon/blocked";
/// Distinct blocks kept; the least recently seen goes first.
pub const MAX_ENTRIES: usize = 1000;
const LINES_PER_WINDOW: usize = 20;
const WINDOW: Duration = Duration::from_secs(10);

/// One kind of block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Blocked {
    /// A question about a name no entry allows: (name, record type).
    Name { name: String, kind: String },
    /// A question of a class or record type the gateway never forwards (only class IN, and
    /// `filter::FORWARDED_TYPES`): (name, class and type).
    Type { name: String, kind: String },
    /// A connection the fence rejected: protocol (6 TCP, 17 UDP, else other) and destination.
    Connection { proto: u8, dst: SocketAddr },
}

/// One row of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub count: u64,
    pub first: u64,
    pub last: u64,
    /// What was blocked: `name evil.example (A)` or `tcp 203.0.113.5:22`.
    pub what: String,
    /// The entry that would allow it.
    pub allow_with: String,
    /// The name that answered the address, and when, if one did.
    pub context: String,
}

#[derive(Default)]
struct Table {
    entries: HashMap<String, (Entry, Instant)>,
    printed: Vec<Instant>,
    suppressed: u64,
    changed: bool,
}

/// The log, shared by the gateway's loops.
pub struct BlockLog {
    table: Mutex<Table>,
    file: Option<File>,
    print: bool,
}

impl BlockLog {
    /// A log that prints (`print`) and keeps its table in `file`.
    pub fn new(file: Option<File>, print: bool) -> BlockLog {
        BlockLog {
            table: Mutex::default(),
            file,
            print,
        }
    }

    pub fn refused(&self, question: &Query) {
        let mut name = question.name.to_ascii().to_ascii_lowercase();
        if name.ends_with('.') {
            name.pop();
        }
        // `cordon check`'s own question (the HEALTHCHECK asks it every 30 s): not the agent's.
        if name.ends_with(".cordon.invalid") {
            return;
        }
        let kind = match question.query_class {
            DNSClass::IN => question.query_type.to_string(),
            class => format!("{class} {}", question.query_type),
        };
        let blocked = match super::filter::forwardable(question) {
            true => Blocked::Name { name, kind },
            false => Blocked::Type { name, kind },
        };
        self.record(blocked, None);
    }

    /// A rejected connection; `answered`: the name an answer for its address was for, and how
    /// long ago (`control::Live` remembers them).
    pub fn rejected(&self, proto: u8, dst: SocketAddr, answered: Option<(String, Duration)>) {
        self.record(Blocked::Connection { proto, dst }, answered);
    }

    fn record(&self, blocked: Blocked, answered: Option<(String, Duration)>) {
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let entry = describe(&blocked, answered);
        let key = entry.what.clone();
        if let Some((known, seen)) = table.entries.get_mut(&key) {
            known.count += 1;
            known.last = unix;
            *seen = now;
            table.changed = true;
            return;
        }
        if table.entries.len() >= MAX_ENTRIES {
            // The more recently seen half stays: a flood of distinct blocks costs one selection
            // per MAX_ENTRIES / 2 of them, not a scan each.
            let mut seen: Vec<Instant> = table.entries.values().map(|(_, at)| *at).collect();
            let middle = seen.len() / 2;
            let cut = *seen.select_nth_unstable(middle).1;
            table.entries.retain(|_, (_, at)| *at > cut);
        }
        let line = line(&entry);
        table.entries.insert(
            key,
            (
                Entry {
                    count: 1,
                    first: unix,
                    last: unix,
                    ..entry
                },
                now,
            ),
        );
        table.changed = true;
        if !self.print {
            return;
        }
        table.printed.retain(|at| now.duration_since(*at) < WINDOW);
        if table.printed.len() >= LINES_PER_WINDOW {
            table.suppressed += 1;
            return;
        }
        table.printed.push(now);
        let suppressed = std::mem::take(&mut table.suppressed);
        drop(table);
        if suppressed > 0 {
            log::warn!("{suppressed} more blocked, not shown: `cordon blocked` lists them all");
        }
        log::warn!("{line}");
    }

    /// Writes the table to the file if it changed since the last write.
    pub fn save(&self) {
        let Some(file) = &self.file else { return };
        let text = {
            let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
            if !std::mem::take(&mut table.changed) {
                return;
            }
            let mut rows: Vec<&Entry> = table.entries.values().map(|(e, _)| e).collect();
            rows.sort_by_key(|e| std::cmp::Reverse(e.last));
            format_table(&rows)
        };
        let _ = file.set_len(0);
        let _ = file.write_all_at(text.as_bytes(), 0);
    }
}

/// What a block is, what allows it, and the name behind its address.
fn describe(blocked: &Blocked, answered: Option<(String, Duration)>) -> Entry {
    let (what, allow_with, context) = match blocked {
        Blocked::Name { name, kind } => {
            (format!("name {name} ({kind})"), name.clone(), String::new())
        }
        // No entry allows it: nothing to suggest.
        Blocked::Type { name, kind } => (
            format!("type {name} ({kind})"),
            String::new(),
            String::new(),
        ),
        Blocked::Connection { proto, dst } => {
            let (proto_name, port) = match proto {
                6 => ("tcp", dst.port().to_string()),
                17 => ("udp", format!("udp/{}", dst.port())),
                _ => ("ip", String::new()),
            };
            let host = match dst.ip() {
                IpAddr::V6(v6) => format!("[{v6}]"),
                v4 => v4.to_string(),
            };
            let what = match proto {
                6 | 17 => format!("{proto_name} {dst}"),
                other => format!("protocol {other} to {}", dst.ip()),
            };
            // DNS to a server that is not the gateway (an agent joining a flow the redirect
            // never saw): no entry would let it through, and none should.
            if matches!(proto, 6 | 17) && dst.port() == 53 {
                return Entry {
                    count: 0,
                    first: 0,
                    last: 0,
                    what,
                    allow_with: String::new(),
                    context: String::new(),
                };
            }
            match answered {
                Some((name, ago)) => {
                    let allow = match port.is_empty() {
                        true => name.clone(),
                        false => format!("{name}:{port}"),
                    };
                    let ago = ago.as_secs();
                    (what, allow, format!("{name}, answered {ago} s ago"))
                }
                None => {
                    let allow = match port.is_empty() {
                        true => host,
                        false => format!("{host}:{port}"),
                    };
                    (what, allow, String::new())
                }
            }
        }
    };
    Entry {
        count: 0,
        first: 0,
        last: 0,
        what,
        allow_with,
        context,
    }
}

/// The line printed for a new block.
pub fn line(entry: &Entry) -> String {
    let context = match entry.context.is_empty() {
        true => String::new(),
        false => format!(" ({})", entry.context),
    };
    let allow = &entry.allow_with;
    match (
        entry.what.strip_prefix("name "),
        entry.what.strip_prefix("type "),
    ) {
        (Some(name), _) => format!("refused name: {name} — allow with: {allow}"),
        (_, Some(question)) => format!(
            "refused question type: {question} — cordon forwards only class IN questions of \
             common record types"
        ),
        _ if allow.is_empty() => format!(
            "blocked: {}{context} — DNS goes only through cordon's DNS gateway: allow names, \
             not DNS servers",
            entry.what
        ),
        _ => format!("blocked: {}{context} — allow with: {allow}", entry.what),
    }
}

/// The file's text: one tab-separated row per block, most recent first.
fn format_table(rows: &[&Entry]) -> String {
    let mut out = String::new();
    for e in rows {
        let _ = writeln!(
            out,
            "{}\t{}\t{}\t{}\t{}\t{}",
            e.count, e.first, e.last, e.what, e.allow_with, e.context
        );
    }
    out
}

/// Reads the file's text back (`cordon blocked`); malformed rows are skipped.
pub fn parse_table(text: &str) -> Vec<Entry> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split('\t');
            Some(Entry {
                count: fields.next()?.parse().ok()?,
                first: fields.next()?.parse().ok()?,
                last: fields.next()?.parse().ok()?,
                what: fields.next()?.to_string(),
                allow_with: fields.next()?.to_string(),
                context: fields.next().unwrap_or_default().to_string(),
            })
        })
        .collect()
}

/// `cordon blocked`: the table, most recent first, as text or JSON.
pub fn print(json: bool) -> crate::error::Result<i32> {
    let text = match std::fs::read_to_string(BLOCKED_FILE) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            if !json {
                println!(
                    "no block log here: the DNS gateway does not run in this container \
                     (--dns static, --exec or the drop-in)"
                );
            }
            return Ok(crate::error::exit::OK);
        }
        Err(error) => return Err(crate::error::Error::io(BLOCKED_FILE, error)),
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    print!("{}", render(&parse_table(&text), now, json));
    Ok(crate::error::exit::OK)
}

fn render(entries: &[Entry], now: u64, json: bool) -> String {
    let mut out = String::new();
    if json {
        for e in entries {
            let _ = writeln!(
                out,
                "{{\"count\":{},\"first\":{},\"last\":{},\"what\":{},\"allow_with\":{},\"context\":{}}}",
                e.count,
                e.first,
                e.last,
                json_string(&e.what),
                json_string(&e.allow_with),
                json_string(&e.context)
            );
        }
        return out;
    }
    if entries.is_empty() {
        out.push_str("nothing blocked so far\n");
        return out;
    }
    let _ = writeln!(
        out,
        "{:>6}  {:>9}  {:>9}  BLOCKED — ALLOW WITH",
        "COUNT", "FIRST", "LAST"
    );
    for e in entries {
        let _ = writeln!(
            out,
            "{:>6}  {:>9}  {:>9}  {}",
            e.count,
            ago(now, e.first),
            ago(now, e.last),
            line(e)
        );
    }
    out
}

/// `12s ago`, `3m ago`, `2h ago`, `4d ago`.
fn ago(now: u64, then: u64) -> String {
    let secs = now.saturating_sub(then);
    match secs {
        0..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m ago", secs / 60),
        3600..86400 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86400),
    }
}

fn json_string(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_resolver::proto::rr::{Name, RecordType};
    use std::str::FromStr;

    fn rows(log: &BlockLog) -> Vec<Entry> {
        let table = log.table.lock().unwrap();
        let mut rows: Vec<Entry> = table.entries.values().map(|(e, _)| e.clone()).collect();
        rows.sort_by(|a, b| a.what.cmp(&b.what));
        rows
    }

    #[test]
    fn each_block_says_what_would_allow_it() {
        let log = BlockLog::new(None, false);
        let github = || Some(("github.com".to_string(), Duration::from_millis(300)));
        log.rejected(6, "203.0.113.5:22".parse().unwrap(), github());
        log.rejected(6, "203.0.113.5:22".parse().unwrap(), github());
        log.rejected(17, "198.51.100.7:53".parse().unwrap(), None);
        log.rejected(6, "[2001:db8::1]:443".parse().unwrap(), None);
        let question = Query::query(Name::from_str("Evil.Example.").unwrap(), RecordType::TXT);
        log.refused(&question);
        let check = Query::query(
            Name::from_str("checktest.cordon.invalid.").unwrap(),
            RecordType::TXT,
        );
        log.refused(&check);
        let odd = Query::query(Name::from_str("api.example.").unwrap(), RecordType::NULL);
        log.refused(&odd);
        let mut chaos = Query::query(Name::from_str("api.example.").unwrap(), RecordType::TXT);
        chaos.query_class = DNSClass::CH;
        log.refused(&chaos);
        let lines: Vec<String> = rows(&log).iter().map(line).collect();
        assert_eq!(
            lines,
            [
                "refused name: evil.example (TXT) — allow with: evil.example",
                "blocked: tcp 203.0.113.5:22 (github.com, answered 0 s ago) — allow with: github.com:22",
                "blocked: tcp [2001:db8::1]:443 — allow with: [2001:db8::1]:443",
                "refused question type: api.example (CH TXT) — cordon forwards only class IN \
                 questions of common record types",
                "refused question type: api.example (NULL) — cordon forwards only class IN \
                 questions of common record types",
                "blocked: udp 198.51.100.7:53 — DNS goes only through cordon's DNS gateway: \
                 allow names, not DNS servers",
            ]
        );
        assert_eq!(
            rows(&log)[1].count,
            2,
            "the same block is counted, not repeated"
        );
    }

    #[test]
    fn cordon_blocked_prints_a_table_or_json() {
        let entries = parse_table(
            "3\t100\t160\tname evil.example (A)\tevil.example\t\n\
             1\t90\t90\ttcp 203.0.113.5:22\tgithub.com:22\tgithub.com, answered 2 s ago\n",
        );
        let text = render(&entries, 170, false);
        assert_eq!(
            text,
            " COUNT      FIRST       LAST  BLOCKED — ALLOW WITH\n     \
             3     1m ago    10s ago  refused name: evil.example (A) — allow with: evil.example\n     \
             1     1m ago     1m ago  blocked: tcp 203.0.113.5:22 (github.com, answered 2 s ago) — \
             allow with: github.com:22\n"
        );
        let json = render(&entries, 170, true);
        assert_eq!(
            json.lines().next().unwrap(),
            "{\"count\":3,\"first\":100,\"last\":160,\"what\":\"name evil.example (A)\",\
             \"allow_with\":\"evil.example\",\"context\":\"\"}"
        );
        assert_eq!(json_string("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000a\"");
        assert_eq!(render(&[], 0, false), "nothing blocked so far\n");
    }

    #[test]
    fn the_table_is_bounded_and_reads_back() {
        let log = BlockLog::new(None, false);
        for port in 0..(MAX_ENTRIES as u16 + 50) {
            log.rejected(6, SocketAddr::from(([192, 0, 2, 1], port)), None);
        }
        let kept = rows(&log);
        assert!(
            kept.len() <= MAX_ENTRIES && kept.len() > 50,
            "{}",
            kept.len()
        );
        let last = format!("tcp 192.0.2.1:{}", MAX_ENTRIES + 49);
        assert!(
            kept.iter().any(|e| e.what == last),
            "the latest block is kept"
        );
        let refs: Vec<&Entry> = kept.iter().collect();
        assert_eq!(parse_table(&format_table(&refs)), kept);
        assert!(parse_table("garbage\n1\tx\n").is_empty());
    }
}
