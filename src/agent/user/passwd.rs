//! /etc/passwd and /etc/group, parsed from text (a static musl binary has no NSS, and cordon
//! wants no NSS modules anyway). Blank lines, `#` comments and NIS compat lines (`+`/`-`) are
//! skipped; any other line with the wrong number of fields or a non-numeric id is an error at
//! file:line.

use std::path::PathBuf;

use crate::error::{Error, Location, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
    pub shell: PathBuf,
    /// 1-based line number in the file, for rewriting the entry.
    pub line: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEntry {
    pub name: String,
    pub gid: u32,
    pub members: Vec<String>,
    pub line: usize,
}

pub fn parse_passwd(text: &str, source: &str) -> Result<Vec<PasswdEntry>> {
    records(text, source, 7)
        .map(|record| {
            let (line, fields) = record?;
            let at = Location::new(source, Some(line));
            Ok(PasswdEntry {
                name: name(fields[0], &at)?,
                uid: id(fields[2], "uid", &at)?,
                gid: id(fields[3], "gid", &at)?,
                home: PathBuf::from(fields[5]),
                shell: PathBuf::from(fields[6]),
                line,
            })
        })
        .collect()
}

pub fn parse_group(text: &str, source: &str) -> Result<Vec<GroupEntry>> {
    records(text, source, 4)
        .map(|record| {
            let (line, fields) = record?;
            let at = Location::new(source, Some(line));
            Ok(GroupEntry {
                name: name(fields[0], &at)?,
                gid: id(fields[2], "gid", &at)?,
                members: fields[3]
                    .split(',')
                    .map(str::trim)
                    .filter(|member| !member.is_empty())
                    .map(String::from)
                    .collect(),
                line,
            })
        })
        .collect()
}

/// Sets `uid` and `gid` (fields 3 and 4) of the entry on `line`, leaving every other byte as it
/// was.
pub fn with_ids(text: &str, line: usize, uid: u32, gid: u32) -> Option<String> {
    let mut found = false;
    let lines: Vec<String> = text
        .split_inclusive('\n')
        .enumerate()
        .map(|(index, original)| {
            if index + 1 != line {
                return original.to_string();
            }
            let mut fields: Vec<&str> = original.split(':').collect();
            if fields.len() != 7 {
                return original.to_string();
            }
            found = true;
            let (uid, gid) = (uid.to_string(), gid.to_string());
            fields[2] = &uid;
            fields[3] = &gid;
            fields.join(":")
        })
        .collect();
    found.then(|| lines.concat())
}

type Record<'a> = Result<(usize, Vec<&'a str>)>;

fn records<'a>(text: &'a str, source: &'a str, count: usize) -> impl Iterator<Item = Record<'a>> {
    text.lines().enumerate().filter_map(move |(index, raw)| {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if line.trim().is_empty() || line.starts_with(['#', '+', '-']) {
            return None;
        }
        let at = || Location::new(source, Some(index + 1));
        if line.contains('\0') {
            return Some(Err(Error::bad_input(
                at(),
                "contains a NUL byte, which no field may hold",
            )));
        }
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() != count {
            return Some(Err(Error::bad_input(
                at(),
                format!(
                    "expected {count} fields separated by `:`, found {}",
                    fields.len()
                ),
            )));
        }
        Some(Ok((index + 1, fields)))
    })
}

fn name(field: &str, at: &Location) -> Result<String> {
    if field.is_empty() || field.contains(char::is_whitespace) {
        return Err(Error::bad_input(
            at.clone(),
            format!("invalid name `{field}`"),
        ));
    }
    Ok(field.to_string())
}

fn id(field: &str, what: &str, at: &Location) -> Result<u32> {
    match field.parse::<u32>() {
        Ok(value) if value != u32::MAX => Ok(value),
        _ => Err(Error::bad_input(
            at.clone(),
            format!("{what} `{field}` is not a number below 4294967295"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "\
root:x:0:0:root:/root:/bin/bash
# a comment
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin

node:x:1000:1000::/home/node:/bin/bash\r
+@netgroup::::::
";

    const GROUP: &str = "\
root:x:0:
sudo:x:27:node,alice
docker:x:999: node , bob
node:x:1000:
";

    #[test]
    fn a_nul_byte_is_bad_input_with_its_line() {
        let text = "root:x:0:0::/root:/bin/sh\nnode:x:1000:1000::/home/no\0de:/bin/sh\n";
        let error = parse_passwd(text, "/etc/passwd").unwrap_err();
        assert_eq!(error.exit_code(), crate::error::exit::BAD_INPUT);
        assert!(
            error
                .to_string()
                .starts_with("/etc/passwd:2: contains a NUL byte"),
            "{error}"
        );
    }

    #[test]
    fn passwd_entries_keep_fields_and_line_numbers() {
        let entries = parse_passwd(PASSWD, "/etc/passwd").unwrap();
        assert_eq!(entries.len(), 3);
        assert_eq!(
            entries[2],
            PasswdEntry {
                name: "node".into(),
                uid: 1000,
                gid: 1000,
                home: "/home/node".into(),
                shell: "/bin/bash".into(),
                line: 5,
            }
        );
    }

    #[test]
    fn group_members_are_trimmed_and_empty_lists_are_empty() {
        let groups = parse_group(GROUP, "/etc/group").unwrap();
        assert_eq!(groups[0].members, Vec::<String>::new());
        assert_eq!(groups[1].members, ["node", "alice"]);
        assert_eq!(groups[2].members, ["node", "bob"]);
        assert_eq!(groups[2].line, 3);
    }

    fn error(result: Result<impl std::fmt::Debug>) -> String {
        result.unwrap_err().to_string()
    }

    #[test]
    fn missing_fields_are_reported_at_file_and_line() {
        assert_eq!(
            error(parse_passwd(
                "root:x:0:0:root:/root:/bin/sh\nnode:x:1000\n",
                "/etc/passwd"
            )),
            "/etc/passwd:2: expected 7 fields separated by `:`, found 3"
        );
        assert_eq!(
            error(parse_group("a:x:1:\nb:x:2\n", "/etc/group")),
            "/etc/group:2: expected 4 fields separated by `:`, found 3"
        );
    }

    #[test]
    fn bad_ids_and_names_are_reported() {
        assert_eq!(
            error(parse_passwd("node:x:10o0:1000::/h:/bin/sh", "p")),
            "p:1: uid `10o0` is not a number below 4294967295"
        );
        assert_eq!(
            error(parse_passwd("node:x:1000:-1::/h:/bin/sh", "p")),
            "p:1: gid `-1` is not a number below 4294967295"
        );
        assert_eq!(
            error(parse_passwd("node:x:4294967295:1::/h:/bin/sh", "p")),
            "p:1: uid `4294967295` is not a number below 4294967295"
        );
        assert_eq!(
            error(parse_passwd(":x:1000:1000::/h:/bin/sh", "p")),
            "p:1: invalid name ``"
        );
        assert_eq!(
            error(parse_group("g:x::", "g")),
            "g:1: gid `` is not a number below 4294967295"
        );
    }

    #[test]
    fn rewriting_ids_touches_only_that_line() {
        let rewritten = with_ids(PASSWD, 5, 501, 20).unwrap();
        assert!(rewritten.contains("node:x:501:20::/home/node:/bin/bash\r\n"));
        assert!(rewritten.starts_with("root:x:0:0:root:/root:/bin/bash\n# a comment\n"));
        assert_eq!(rewritten.len(), PASSWD.len() - 3);
        assert_eq!(with_ids(PASSWD, 2, 1, 1), None);
        assert_eq!(with_ids(PASSWD, 99, 1, 1), None);
    }
}
