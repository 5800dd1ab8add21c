//! DNS wire format, just enough for a test server and a probe: queries (one question, EDNS
//! payload size), responses with A / AAAA / CNAME records, and decoding with compression.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const A: u16 = 1;
pub const CNAME: u16 = 5;
pub const AAAA: u16 = 28;
pub const TXT: u16 = 16;
const OPT: u16 = 41;
const CLASS_IN: u16 = 1;

pub const NOERROR: u8 = 0;
pub const FORMERR: u8 = 1;
pub const NXDOMAIN: u8 = 3;
pub const NOTIMP: u8 = 4;

const QR: u16 = 0x8000;
const AA: u16 = 0x0400;
pub const TC: u16 = 0x0200;
const RD: u16 = 0x0100;
const RA: u16 = 0x0080;

pub fn type_name(t: u16) -> String {
    let n = match t {
        1 => "A",
        2 => "NS",
        5 => "CNAME",
        6 => "SOA",
        12 => "PTR",
        15 => "MX",
        16 => "TXT",
        28 => "AAAA",
        33 => "SRV",
        64 => "SVCB",
        65 => "HTTPS",
        255 => "ANY",
        _ => return format!("TYPE{t}"),
    };
    n.to_string()
}

pub fn rcode_name(r: u8) -> String {
    match r {
        0 => "NOERROR".into(),
        1 => "FORMERR".into(),
        2 => "SERVFAIL".into(),
        3 => "NXDOMAIN".into(),
        4 => "NOTIMP".into(),
        5 => "REFUSED".into(),
        _ => format!("RCODE{r}"),
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum RData {
    Ip(IpAddr),
    Name(String),
    Other(u16, Vec<u8>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub name: String,
    pub ttl: u32,
    pub data: RData,
}

impl Record {
    pub fn rtype(&self) -> u16 {
        match &self.data {
            RData::Ip(IpAddr::V4(_)) => A,
            RData::Ip(IpAddr::V6(_)) => AAAA,
            RData::Name(_) => CNAME,
            RData::Other(t, _) => *t,
        }
    }
}

/// A parsed query. `question` is the raw question section, echoed verbatim in the answer
/// (keeps the client's letter case).
#[derive(Debug)]
pub struct Query {
    pub id: u16,
    pub flags: u16,
    /// Lower case, for lookups.
    pub name: String,
    /// As the client spelled it (the query log shows what was sent).
    pub spelled: String,
    pub qtype: u16,
    pub question: Vec<u8>,
    /// The largest UDP answer the client accepts (512, or its EDNS payload size).
    pub udp_size: usize,
}

/// Why a message is not a query we can answer normally.
#[derive(Debug, PartialEq)]
pub enum Bad {
    /// Not a DNS query at all: say nothing.
    Ignore,
    /// A query header we cannot serve: reply with this header-only message.
    Reply(Vec<u8>),
}

#[derive(Debug, PartialEq)]
pub struct Response {
    pub id: u16,
    pub flags: u16,
    pub rcode: u8,
    /// The first question's name as the reply spells it (case kept), if it has one.
    pub question: Option<String>,
    pub answers: Vec<Record>,
}

fn u16_at(b: &[u8], i: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?]))
}

fn u32_at(b: &[u8], i: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(i..i + 4)?.try_into().ok()?))
}

/// Decodes the name at `pos` (following compression pointers); returns it as sent (no trailing
/// dot, "." for the root) and the offset just past it.
pub fn read_name(msg: &[u8], mut pos: usize) -> Option<(String, usize)> {
    let mut labels: Vec<String> = Vec::new();
    let mut end = None;
    for _ in 0..128 {
        let len = *msg.get(pos)? as usize;
        if len & 0xC0 == 0xC0 {
            end.get_or_insert(pos + 2);
            pos = (u16_at(msg, pos)? & 0x3FFF) as usize;
        } else if len == 0 {
            let name = if labels.is_empty() {
                ".".into()
            } else {
                labels.join(".")
            };
            return Some((name, end.unwrap_or(pos + 1)));
        } else if len > 63 {
            return None;
        } else {
            labels.push(String::from_utf8_lossy(msg.get(pos + 1..pos + 1 + len)?).into_owned());
            pos += 1 + len;
        }
    }
    None // pointer loop or absurdly long name
}

fn write_name(out: &mut Vec<u8>, name: &str) {
    for label in name.split('.').filter(|l| !l.is_empty()) {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
}

/// Checks a name given on the command line (labels of 1..=63 bytes, at most 253 in all).
pub fn valid_name(name: &str) -> bool {
    let name = name.trim_end_matches('.');
    !name.is_empty() && name.len() <= 253 && name.split('.').all(|l| (1..=63).contains(&l.len()))
}

fn header(id: u16, flags: u16, counts: [u16; 4]) -> Vec<u8> {
    let mut h = Vec::with_capacity(512);
    h.extend_from_slice(&id.to_be_bytes());
    h.extend_from_slice(&flags.to_be_bytes());
    for c in counts {
        h.extend_from_slice(&c.to_be_bytes());
    }
    h
}

/// A recursive query for `name`/`qtype` (class IN), with an EDNS OPT record offering 4096-byte
/// UDP answers.
pub fn encode_query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut m = header(id, RD, [1, 0, 0, 1]);
    write_name(&mut m, name);
    m.extend_from_slice(&qtype.to_be_bytes());
    m.extend_from_slice(&CLASS_IN.to_be_bytes());
    m.extend_from_slice(&[0, 0, 41, 0x10, 0, 0, 0, 0, 0, 0, 0]); // root, OPT, 4096, no flags
    m
}

pub fn parse_query(msg: &[u8]) -> Result<Query, Bad> {
    let (id, flags) = match (u16_at(msg, 0), u16_at(msg, 2)) {
        (Some(id), Some(flags)) if msg.len() >= 12 && flags & QR == 0 => (id, flags),
        _ => return Err(Bad::Ignore),
    };
    let err = |rcode: u8| {
        Bad::Reply(header(
            id,
            QR | (flags & (0x7800 | RD)) | RA | rcode as u16,
            [0; 4],
        ))
    };
    if (flags >> 11) & 0xF != 0 {
        return Err(err(NOTIMP));
    }
    if u16_at(msg, 4) != Some(1) {
        return Err(err(FORMERR));
    }
    let (name, pos) = read_name(msg, 12).ok_or_else(|| err(FORMERR))?;
    let qtype = u16_at(msg, pos).ok_or_else(|| err(FORMERR))?;
    u16_at(msg, pos + 2).ok_or_else(|| err(FORMERR))?;
    let question = msg[12..pos + 4].to_vec();
    // EDNS: an OPT record as the first additional record (after no answers/authorities).
    let mut udp_size = 512;
    if u16_at(msg, 6) == Some(0) && u16_at(msg, 8) == Some(0) && u16_at(msg, 10) >= Some(1) {
        if let Some((_, p)) = read_name(msg, pos + 4) {
            if u16_at(msg, p) == Some(OPT) {
                udp_size = u16_at(msg, p + 2).unwrap_or(512).clamp(512, 4096) as usize;
            }
        }
    }
    Ok(Query {
        id,
        flags,
        name: name.to_ascii_lowercase(),
        spelled: name,
        qtype,
        question,
        udp_size,
    })
}

/// The answer to `q`. The first name equal to the question's is written as a pointer to it.
/// When the message would exceed `max_len`, the answers are left out and TC is set.
pub fn encode_response(q: &Query, rcode: u8, answers: &[Record], max_len: usize) -> Vec<u8> {
    let flags = QR | (q.flags & RD) | AA | RA | rcode as u16;
    let mut m = header(q.id, flags, [1, answers.len() as u16, 0, 0]);
    m.extend_from_slice(&q.question);
    for r in answers {
        if r.name.eq_ignore_ascii_case(&q.name) {
            m.extend_from_slice(&[0xC0, 0x0C]);
        } else {
            write_name(&mut m, &r.name);
        }
        m.extend_from_slice(&r.rtype().to_be_bytes());
        m.extend_from_slice(&CLASS_IN.to_be_bytes());
        m.extend_from_slice(&r.ttl.to_be_bytes());
        let rdata = match &r.data {
            RData::Ip(IpAddr::V4(a)) => a.octets().to_vec(),
            RData::Ip(IpAddr::V6(a)) => a.octets().to_vec(),
            RData::Name(n) => {
                let mut v = Vec::new();
                write_name(&mut v, n);
                v
            }
            RData::Other(_, d) => d.clone(),
        };
        m.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        m.extend_from_slice(&rdata);
    }
    if m.len() > max_len {
        m.truncate(12 + q.question.len());
        m[2..4].copy_from_slice(&(flags | TC).to_be_bytes());
        m[6..8].copy_from_slice(&[0, 0]);
    }
    m
}

/// Decodes a response's header and answer section (A, AAAA and CNAME data decoded).
pub fn parse_response(msg: &[u8]) -> Option<Response> {
    let (id, flags) = (u16_at(msg, 0)?, u16_at(msg, 2)?);
    if flags & QR == 0 || msg.len() < 12 {
        return None;
    }
    let mut pos = 12;
    let mut question = None;
    for _ in 0..u16_at(msg, 4)? {
        let (name, end) = read_name(msg, pos)?;
        question.get_or_insert(name);
        pos = end + 4;
    }
    let mut answers = Vec::new();
    for _ in 0..u16_at(msg, 6)? {
        let (name, p) = read_name(msg, pos)?;
        let (rtype, ttl, len) = (
            u16_at(msg, p)?,
            u32_at(msg, p + 4)?,
            u16_at(msg, p + 8)? as usize,
        );
        let rdata = msg.get(p + 10..p + 10 + len)?;
        let data = match (rtype, len) {
            (A, 4) => RData::Ip(Ipv4Addr::from(<[u8; 4]>::try_from(rdata).ok()?).into()),
            (AAAA, 16) => RData::Ip(Ipv6Addr::from(<[u8; 16]>::try_from(rdata).ok()?).into()),
            (CNAME, _) => RData::Name(read_name(msg, p + 10)?.0),
            _ => RData::Other(rtype, rdata.to_vec()),
        };
        answers.push(Record { name, ttl, data });
        pos = p + 10 + len;
    }
    Some(Response {
        id,
        flags,
        rcode: (flags & 0xF) as u8,
        question,
        answers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(name: &str, data: RData) -> Record {
        Record {
            name: name.into(),
            ttl: 60,
            data,
        }
    }

    #[test]
    fn query_round_trip() {
        let q = parse_query(&encode_query(0xBEEF, "WwW.Example.TEST", AAAA)).unwrap();
        assert_eq!(
            (q.id, q.name.as_str(), q.qtype, q.udp_size),
            (0xBEEF, "www.example.test", AAAA, 4096)
        );
        assert_eq!(q.flags & RD, RD);
        assert_eq!(q.question.len(), 18 + 4);
    }

    #[test]
    fn edns_payload_size_is_read() {
        let mut m = encode_query(1, "a.test", A);
        let n = m.len();
        m[n - 8..n - 6].copy_from_slice(&1232u16.to_be_bytes());
        assert_eq!(parse_query(&m).unwrap().udp_size, 1232);
        m.truncate(n - 11);
        m[11] = 0; // no OPT record: the classic 512 bytes
        assert_eq!(parse_query(&m).unwrap().udp_size, 512);
    }

    #[test]
    fn response_round_trip_keeps_case_and_chain() {
        let q = parse_query(&encode_query(7, "Alias.TEST", A)).unwrap();
        let answers = [
            rec("alias.test", RData::Name("b.test".into())),
            rec("b.test", RData::Ip("10.0.0.1".parse().unwrap())),
            rec("b.test", RData::Ip("fd00::1".parse().unwrap())),
        ];
        let wire = encode_response(&q, NOERROR, &answers, 512);
        let r = parse_response(&wire).unwrap();
        assert_eq!((r.id, r.rcode), (7, NOERROR));
        assert_eq!(r.flags & (QR | AA | RD | TC), QR | AA | RD);
        assert_eq!(r.answers[0].name, "Alias.TEST"); // pointer to the question as sent
        assert_eq!(&r.answers[1..], &answers[1..]);
        assert_eq!(r.answers[0].data, answers[0].data);
        assert_eq!(
            r.answers.iter().map(Record::rtype).collect::<Vec<_>>(),
            [CNAME, A, AAAA]
        );
    }

    #[test]
    fn oversized_answer_is_truncated() {
        let q = parse_query(&encode_query(9, "big.test", AAAA)).unwrap();
        let answers: Vec<_> = (0..40u16)
            .map(|i| {
                rec(
                    "big.test",
                    RData::Ip(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, i).into()),
                )
            })
            .collect();
        let r = parse_response(&encode_response(&q, NOERROR, &answers, 512)).unwrap();
        assert_eq!((r.flags & TC, r.answers.len()), (TC, 0));
        let r = parse_response(&encode_response(&q, NOERROR, &answers, 65535)).unwrap();
        assert_eq!((r.flags & TC, r.answers.len()), (0, 40));
    }

    #[test]
    fn compressed_cname_target_is_decoded() {
        // Question "a.test", answer: ptr(12) CNAME "b" + ptr(14) ("test").
        let mut m = header(3, QR | RD | RA, [1, 1, 0, 0]);
        m.extend_from_slice(b"\x01a\x04test\x00\x00\x01\x00\x01");
        m.extend_from_slice(&[0xC0, 12, 0, 5, 0, 1, 0, 0, 0, 30, 0, 4, 1, b'b', 0xC0, 14]);
        let r = parse_response(&m).unwrap();
        assert_eq!(
            r.answers,
            [Record {
                name: "a.test".into(),
                ttl: 30,
                data: RData::Name("b.test".into())
            }]
        );
    }

    #[test]
    fn garbage_is_ignored_or_refused() {
        assert_eq!(parse_query(b"hello").unwrap_err(), Bad::Ignore);
        let mut resp = encode_query(1, "x.test", A);
        resp[2] |= 0x80; // a response, not a query
        assert_eq!(parse_query(&resp).unwrap_err(), Bad::Ignore);
        let mut notify = encode_query(2, "x.test", A);
        notify[2] |= 4 << 3; // opcode NOTIFY
        let Err(Bad::Reply(r)) = parse_query(&notify) else {
            panic!()
        };
        assert_eq!(parse_response(&r).unwrap().rcode, NOTIMP);
        let Err(Bad::Reply(r)) = parse_query(&encode_query(3, "x.test", A)[..20]) else {
            panic!()
        };
        assert_eq!(parse_response(&r).unwrap().rcode, FORMERR);
        // A pointer loop must not hang.
        let mut looped = header(4, 0, [1, 0, 0, 0]);
        looped.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1]);
        assert!(matches!(parse_query(&looped), Err(Bad::Reply(_))));
    }

    #[test]
    fn names_are_validated() {
        assert!(valid_name("a.test") && valid_name("a.test."));
        assert!(!valid_name("") && !valid_name("a..test") && !valid_name(&"x".repeat(64)));
    }
}
