//! The DNS gateway's decisions, without any I/O: which of the agent's questions go upstream, and
//! which addresses an upstream answer opens, on which ports, for how long.
//!
//! A question goes upstream only for an allowlisted name: an exact name, or a name below a
//! wildcard entry (`*.example.com` covers `a.example.com` and `a.b.example.com`, not
//! `example.com`). Names on the wire are always absolute: a stub resolver that appends a search
//! domain asks for `api.example.com.corp.test`, which is not allowlisted and is refused. Every
//! other question is answered REFUSED by the gateway itself and never forwarded: nothing about it
//! leaves the container (the DNS tunnel). REFUSED rather than NXDOMAIN: it says "not here" without
//! claiming the name does not exist, and stub resolvers do not cache it as a negative answer.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hickory_resolver::proto::op::{
    Header, Message, MessageType, Metadata, OpCode, Query, ResponseCode,
};
use hickory_resolver::proto::rr::rdata::TXT;
use hickory_resolver::proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_resolver::proto::serialize::binary::{BinDecodable, BinDecoder};
use ipnet::IpNet;

use crate::fence::policy::{Policy, Ports, Target};
use crate::fence::resolve::{chain_addresses, embedded_ipv4, may_be_opened_by_name};

/// The shortest time an answered address stays open: a client that reconnects a little after a
/// short-TTL answer still gets through.
pub const TTL_FLOOR: Duration = Duration::from_secs(60);
/// The longest: an address a name stopped pointing to closes within the hour.
pub const TTL_CEILING: Duration = Duration::from_secs(3600);

/// The record types the agent's questions may ask upstream; a question for any other type is
/// answered REFUSED here. The agent picks a question's type freely: 16 bits of its choosing
/// would reach the upstream resolvers' operators (and logs) with every question about an
/// allowlisted name; with these 19, the choice says at most about 4 bits. Obsolete and
/// zone-transfer types, unassigned and private-use numbers are not on it; of the meta types only
/// ANY, which older tools still ask (answered minimally since RFC 8482).
pub const FORWARDED_TYPES: [RecordType; 19] = [
    RecordType::A,
    RecordType::AAAA,
    RecordType::CNAME,
    RecordType::HTTPS,
    RecordType::SVCB,
    RecordType::TXT,
    RecordType::MX,
    RecordType::SRV,
    RecordType::NS,
    RecordType::SOA,
    RecordType::PTR,
    RecordType::CAA,
    RecordType::NAPTR,
    RecordType::DS,
    RecordType::DNSKEY,
    RecordType::TLSA,
    RecordType::SSHFP,
    RecordType::OPENPGPKEY,
    RecordType::ANY,
];

/// Whether a question of its class and type may go upstream: class IN, a `FORWARDED_TYPES` type.
pub fn forwardable(question: &Query) -> bool {
    question.query_class == DNSClass::IN && FORWARDED_TYPES.contains(&question.query_type)
}

/// The name the start-up self-test asks for (TXT), answered by the gateway itself with a token
/// only PID 1 knows: an answer carrying it proves the question reached the gateway and not a
/// resolver (`.invalid` is never delegated, RFC 6761). Never forwarded.
pub const SELF_TEST_NAME: &str = "self-test.cordon.invalid";

/// The allowlist as the gateway uses it: names and their ports, and the networks of address
/// entries (a name may open an address of the container's own networks only inside one). Root
/// may change it while the gateway runs (`cordon allow` / `cordon deny`, `control`), so it sits
/// behind a lock that every question reads.
#[derive(Debug, Default)]
pub struct Names {
    table: RwLock<NameTable>,
    /// Changes since start: answers judged before a change are not answered from a cache.
    changes: AtomicU64,
    /// The TXT answer to `SELF_TEST_NAME`; without one, that name is refused like any other.
    self_test_token: Option<String>,
}

#[derive(Debug)]
struct NameTable {
    /// Lower-case name without the trailing dot → the ports of every entry naming it.
    exact: HashMap<String, Arc<[Ports]>>,
    /// The part after `*.` → the ports of every wildcard entry for it.
    below: HashMap<String, Arc<[Ports]>>,
    /// The networks of address entries, once each.
    nets: Vec<IpNet>,
    /// No ports: what a name no entry allows gets (shared, so a refusal allocates nothing).
    none: Arc<[Ports]>,
}

impl Default for NameTable {
    fn default() -> NameTable {
        NameTable {
            exact: HashMap::new(),
            below: HashMap::new(),
            nets: Vec::new(),
            none: Arc::from([]),
        }
    }
}

impl Names {
    pub fn from_policy(policy: &Policy) -> Names {
        let names = Names::default();
        for entry in &policy.entries {
            names.add(&entry.target, &entry.ports);
        }
        names
    }

    /// These names, with `SELF_TEST_NAME` answered with `token`.
    pub fn with_self_test(self, token: String) -> Names {
        Names {
            self_test_token: Some(token),
            ..self
        }
    }

    /// Adds an entry.
    pub fn add(&self, target: &Target, ports: &Ports) {
        let mut table = self.table.write().unwrap_or_else(|e| e.into_inner());
        let (map, name) = match target {
            Target::Name(name) => (&mut table.exact, name),
            Target::Wildcard(name) => (&mut table.below, name),
            Target::Net(net) => {
                if !table.nets.contains(net) {
                    table.nets.push(*net);
                }
                self.changes.fetch_add(1, Ordering::SeqCst);
                return;
            }
        };
        let list = map.entry(name.clone()).or_insert_with(|| Arc::from([]));
        if !list.contains(ports) {
            *list = list.iter().chain([ports]).cloned().collect();
        }
        self.changes.fetch_add(1, Ordering::SeqCst);
    }

    /// Removes every entry for this name, wildcard or network; whether there was one.
    pub fn remove(&self, target: &Target) -> bool {
        let mut table = self.table.write().unwrap_or_else(|e| e.into_inner());
        self.changes.fetch_add(1, Ordering::SeqCst);
        match target {
            Target::Name(name) => table.exact.remove(name).is_some(),
            Target::Wildcard(name) => table.below.remove(name).is_some(),
            Target::Net(net) => {
                let before = table.nets.len();
                table.nets.retain(|kept| kept != net);
                table.nets.len() != before
            }
        }
    }

    /// Whether an address entry covers `addr`.
    pub fn covers_address(&self, addr: IpAddr) -> bool {
        let table = self.table.read().unwrap_or_else(|e| e.into_inner());
        table.nets.iter().any(|net| net.contains(&addr))
    }

    /// How many times the names changed: read before judging an answer, compared after.
    pub fn generation(&self) -> u64 {
        self.changes.load(Ordering::SeqCst)
    }

    /// How many exact names, wildcards and address entries' networks there are.
    pub fn counts(&self) -> (usize, usize, usize) {
        let table = self.table.read().unwrap_or_else(|e| e.into_inner());
        (table.exact.len(), table.below.len(), table.nets.len())
    }

    /// The ports of every entry that allows `name`; empty when none does.
    pub fn ports_for(&self, name: &Name) -> Vec<Ports> {
        self.ports_for_plain(&plain(name)).to_vec()
    }

    /// `ports_for` of a name as the allowlist writes it. A name with an escaped label (a dot or
    /// any other byte inside a label, which no entry can hold) matches nothing: read at its
    /// escaped dots, `x\.cdn.test` (the labels `x.cdn` and `test`) would seem to lie below
    /// `*.cdn.test` while its parent is `test`.
    pub fn ports_for_plain(&self, text: &str) -> Arc<[Ports]> {
        let table = self.table.read().unwrap_or_else(|e| e.into_inner());
        if text.contains('\\') {
            return Arc::clone(&table.none);
        }
        // The exact entry, then every proper suffix of the name: `a.b.example.com` →
        // `b.example.com`, `example.com`, `com`.
        // One matching entry's list is shared as it is; several are joined.
        let mut found: Option<Arc<[Ports]>> = table.exact.get(text).cloned();
        let mut rest = text;
        while let Some((_, parent)) = rest.split_once('.') {
            if let Some(ports) = table.below.get(parent) {
                found = Some(match found {
                    None => Arc::clone(ports),
                    Some(before) => before.iter().chain(ports.iter()).cloned().collect(),
                });
            }
            rest = parent;
        }
        found.unwrap_or_else(|| Arc::clone(&table.none))
    }

    pub fn allows(&self, name: &Name) -> bool {
        !self.ports_for(name).is_empty()
    }
}

/// A name as the allowlist writes it: lower case, no trailing dot. Labels of letters, digits,
/// `-` and `_` (every name an entry can match) are copied as they are; any other label is
/// escaped as `Name::to_ascii` writes it, so it can never read as a different name.
pub(super) fn plain(name: &Name) -> Arc<str> {
    // A name on the wire has at most 255 bytes, so its ordinary text form fits (one allocation
    // per question: the `Arc` itself).
    let mut text = [0u8; 255];
    let mut len = 0;
    for label in name.iter() {
        let ordinary = label.iter().enumerate().all(|(at, &byte)| {
            byte.is_ascii_alphanumeric()
                || byte == b'_'
                || (byte == b'-' && at > 0)
                || (byte == b'*' && at == 0)
        });
        let dot = usize::from(len > 0);
        if !ordinary || len + dot + label.len() > text.len() {
            return escaped(name).into();
        }
        text[len] = b'.';
        len += dot;
        for (to, byte) in text[len..].iter_mut().zip(label) {
            *to = byte.to_ascii_lowercase();
        }
        len += label.len();
    }
    // Ordinary labels are ASCII.
    std::str::from_utf8(&text[..len]).map_or_else(|_| escaped(name).into(), Arc::from)
}

/// `plain` of any name, through hickory's escaping.
fn escaped(name: &Name) -> String {
    let mut text = name.to_ascii().to_ascii_lowercase();
    if text.ends_with('.') {
        text.pop();
    }
    text
}

/// An allowlisted question, as judged: its name as the allowlist writes it, and the ports of the
/// entries that allowed it under the allowlist's change count `generation`.
#[derive(Debug)]
pub struct Allowed {
    pub question: Query,
    pub(super) name: Arc<str>,
    ports: Arc<[Ports]>,
    generation: u64,
}

impl Allowed {
    /// `question` if an entry of `names` allows it.
    pub fn judge(question: Query, names: &Names) -> Option<Allowed> {
        let name = plain(&question.name);
        Allowed::by_name(question, name, names)
    }

    fn by_name(question: Query, name: Arc<str>, names: &Names) -> Option<Allowed> {
        // Read before the ports: a change in between shows as a newer generation later.
        let generation = names.generation();
        let ports = names.ports_for_plain(&name);
        (!ports.is_empty()).then_some(Allowed {
            question,
            name,
            ports,
            generation,
        })
    }

    /// The ports its answer opens: those judged with the question, unless root changed the
    /// allowlist since (`cordon allow`, `cordon deny`), then as the allowlist reads now.
    fn ports_now(&self, names: &Names) -> Arc<[Ports]> {
        if names.generation() == self.generation {
            Arc::clone(&self.ports)
        } else {
            names.ports_for_plain(&self.name)
        }
    }
}

/// What to do with a datagram or TCP message the agent sent to the gateway.
#[derive(Debug)]
pub enum QueryVerdict {
    /// An allowlisted question: send it upstream as it is.
    Forward(Allowed),
    /// Answer the agent with these bytes, upstream never sees the question.
    Answer(Vec<u8>),
    /// A question about a name no entry allows: answer REFUSED with `reply`, upstream never
    /// sees it (the block log names it).
    Refused { reply: Vec<u8>, question: Query },
    /// Not even a DNS query header: say nothing.
    Drop,
}

/// Judges one message from the agent.
pub fn judge_query(wire: &[u8], names: &Names) -> QueryVerdict {
    let Some(id) = wire.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]])) else {
        return QueryVerdict::Drop;
    };
    // A response (QR set) is never answered, whatever follows.
    if wire.get(2).is_some_and(|flags| flags & 0x80 != 0) {
        return QueryVerdict::Drop;
    }
    // Only the header and the question are read: nothing else of the agent's message is used
    // (nor forwarded).
    let mut decoder = BinDecoder::new(wire);
    let Ok(Header { metadata, counts }) = Header::read(&mut decoder) else {
        return answer(Message::error_msg(id, OpCode::Query, ResponseCode::FormErr));
    };
    if metadata.message_type != MessageType::Query {
        return QueryVerdict::Drop;
    }
    let question = match counts.queries {
        0 => None,
        _ => match Query::read(&mut decoder) {
            Ok(question) => Some(question),
            Err(_) => return answer(Message::error_msg(id, OpCode::Query, ResponseCode::FormErr)),
        },
    };
    if metadata.op_code != OpCode::Query {
        return refuse(&metadata, question, ResponseCode::NotImp);
    }
    let question = match (question, counts.queries) {
        (Some(question), 1) => question,
        (first, _) => return refuse(&metadata, first, ResponseCode::FormErr),
    };
    let name = plain(&question.name);
    if let Some(token) = &names.self_test_token {
        if question.query_type == RecordType::TXT && &*name == SELF_TEST_NAME {
            return self_test_answer(&metadata, question, token);
        }
    }
    let allowed = match forwardable(&question) {
        true => Allowed::by_name(question.clone(), name, names),
        false => None,
    };
    match allowed {
        Some(allowed) => QueryVerdict::Forward(allowed),
        None => match refuse(&metadata, Some(question.clone()), ResponseCode::Refused) {
            QueryVerdict::Answer(reply) => QueryVerdict::Refused { reply, question },
            other => other,
        },
    }
}

/// An answer to the query with this header and `question` with `code`, the question echoed as
/// stub resolvers expect.
fn refuse(query: &Metadata, question: Option<Query>, code: ResponseCode) -> QueryVerdict {
    let mut reply = Message::error_msg(query.id, query.op_code, code);
    reply.metadata.recursion_desired = query.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.queries.extend(question);
    answer(reply)
}

fn self_test_answer(query: &Metadata, question: Query, token: &str) -> QueryVerdict {
    let mut reply = Message::error_msg(query.id, OpCode::Query, ResponseCode::NoError);
    reply.metadata.recursion_desired = query.recursion_desired;
    let name = question.name.clone();
    reply.add_query(question);
    reply.add_answer(Record::from_rdata(
        name,
        0,
        RData::TXT(TXT::new(vec![token.to_string()])),
    ));
    answer(reply)
}

/// The token in a TXT answer to `SELF_TEST_NAME` under `id`, if `wire` is one.
pub fn self_test_token_in(wire: &[u8], id: u16) -> Option<String> {
    let reply = Message::from_vec(wire).ok()?;
    if reply.metadata.id != id || reply.metadata.message_type != MessageType::Response {
        return None;
    }
    reply.answers.iter().find_map(|record| match &record.data {
        RData::TXT(txt) => txt
            .txt_data
            .first()
            .map(|bytes| String::from_utf8_lossy(bytes).into_owned()),
        _ => None,
    })
}

/// The self-test's question under `id`.
pub fn self_test_query(id: u16) -> Vec<u8> {
    let mut message = Message::query();
    message.metadata.id = id;
    message.metadata.recursion_desired = true;
    let name = Name::from_ascii(format!("{SELF_TEST_NAME}.")).expect("a valid name");
    message.add_query(Query::query(name, RecordType::TXT));
    message.to_vec().expect("a small query encodes")
}

fn answer(message: Message) -> QueryVerdict {
    match message.to_vec() {
        Ok(bytes) => QueryVerdict::Answer(bytes),
        Err(_) => QueryVerdict::Drop,
    }
}

/// What a forwarding loop hands on besides its answers: what an answer opened (into the sets,
/// before the answer goes on), and the questions it refused (to the block log).
pub enum Event<'a> {
    /// This many upstream answers went on to askers (reported once per burst).
    Answered(usize),
    /// This many questions were answered from the cache.
    Cached(usize),
    /// Addresses answers opened, judged under the allowlist's change count `judged_under` (read
    /// before judging): if root changed the allowlist since, they are checked again before
    /// they go into the sets.
    Opened {
        opened: &'a [Opened],
        judged_under: u64,
    },
    Refused(&'a Query),
    /// The UDP loops stopped believing their upstream's answers over UDP after
    /// `udp::UNWANTED_LIMIT` matched no question asked (forged, most likely): their askers are
    /// sent to TCP from now on.
    UdpDistrusted,
}

/// One address an answer opens, with the ports of the entries that allow the name asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// The name asked, as the allowlist writes names (shared by every address of an answer,
    /// the cache and the gateway's bookkeeping).
    pub name: Arc<str>,
    pub addr: IpAddr,
    pub ports: Arc<[Ports]>,
    /// How long it stays open for new connections (the record's TTL, clamped).
    pub timeout: Duration,
}

/// What an upstream answer to an allowlisted question opens, and the addresses it may not open
/// (special-purpose, or this container's own networks and gateways, which only an address entry
/// opens): those are dropped from the answer the agent gets.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct AnswerVerdict {
    pub opened: Vec<Opened>,
    pub refused: Vec<IpAddr>,
}

/// The question as it goes upstream: under `id` (fresh and random, so that only the upstream
/// that got it can answer it), recursion desired, the name in lower case (the case of each
/// letter, one bit of the agent's choosing, stays here; `answer_for_agent` gives it back).
pub fn upstream_query(question: &Query, id: u16) -> Vec<u8> {
    // Written out rather than through `Message::to_vec`, which costs more than the rest of
    // forwarding a question (its encoder keeps every name suffix for compression): the header
    // (`id`, flags with only RD set, one question) and the question. A parsed `Name` holds
    // labels of at most 63 bytes, 255 in all, so the labels go out as they are.
    let mut bytes = Vec::with_capacity(12 + question.name.len() + 6);
    bytes.extend_from_slice(&id.to_be_bytes());
    bytes.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in question.name.iter() {
        bytes.push(label.len() as u8);
        bytes.extend(label.iter().map(u8::to_ascii_lowercase));
    }
    bytes.push(0);
    bytes.extend_from_slice(&u16::from(question.query_type).to_be_bytes());
    bytes.extend_from_slice(&u16::from(question.query_class).to_be_bytes());
    bytes
}

/// The upstream's answer (`wire`, parsed as `answer`) to the agent's question `asked` as the
/// agent gets it: under the agent's own id, its question's name in the agent's own case, with
/// only the addresses it opened (no refused address, no record off the question's CNAME
/// chain), and no TTL beyond `TTL_CEILING` (the longest an answered address stays open: a
/// program that keeps an answer as long as its TTL says asks again before it closes). When
/// nothing is left out or shortened, the upstream's bytes go on with the id and case restored.
pub fn answer_for_agent(
    wire: &[u8],
    mut answer: Message,
    asked: &Query,
    asker_id: u16,
    verdict: &AnswerVerdict,
) -> Option<Vec<u8>> {
    let kept = |record: &Record| match record.data.ip_addr() {
        Some(addr) => verdict.opened.iter().any(|opened| opened.addr == addr),
        None => true,
    };
    let ceiling = TTL_CEILING.as_secs() as u32;
    let records = |answer: &Message| {
        let sections = [&answer.answers, &answer.authorities, &answer.additionals];
        sections.into_iter().flatten().all(|r| r.ttl <= ceiling)
    };
    if wire.len() >= 2 && answer.answers.iter().all(kept) && records(&answer) {
        let mut bytes = wire.to_vec();
        bytes[..2].copy_from_slice(&asker_id.to_be_bytes());
        restore_case(&mut bytes, &asked.name);
        return Some(bytes);
    }
    answer.answers.retain(kept);
    for record in (answer.answers.iter_mut())
        .chain(answer.authorities.iter_mut())
        .chain(answer.additionals.iter_mut())
    {
        record.ttl = record.ttl.min(ceiling);
    }
    answer.metadata.id = asker_id;
    if let Some(question) = answer.queries.first_mut() {
        question.name = asked.name.clone();
    }
    answer.to_vec().ok()
}

/// The reply `answer_for_agent` made for one asker, for another asker of the same question:
/// under its id, the question name in its case.
pub fn reply_for_another_asker(reply: &[u8], asker_id: u16, asked: &Name) -> Vec<u8> {
    let mut bytes = reply.to_vec();
    if bytes.len() >= 2 {
        bytes[..2].copy_from_slice(&asker_id.to_be_bytes());
        restore_case(&mut bytes, asked);
    }
    bytes
}

/// Writes `asked`'s labels over the question name of `reply` (right after the header) where
/// that is the same name in another case, as the upstream echoes the lower-case name it was
/// asked. Stub resolvers that check the case they sent (DNS 0x20) accept the answer.
fn restore_case(reply: &mut [u8], asked: &Name) {
    let mut at = 12;
    for label in asked.iter() {
        let end = at + 1 + label.len();
        let same = reply.get(at..end).is_some_and(|wire| {
            usize::from(wire[0]) == label.len() && wire[1..].eq_ignore_ascii_case(label)
        });
        if !same {
            return;
        }
        at = end;
    }
    if reply.get(at) != Some(&0) {
        return;
    }
    let mut at = 12;
    for label in asked.iter() {
        reply[at + 1..at + 1 + label.len()].copy_from_slice(label);
        at += 1 + label.len();
    }
}

/// Addresses a name must not open in this container: its own networks and gateways (besides
/// special-purpose addresses), unless an address entry of the allowlist opens them already
/// (`Names::covers_address`).
#[derive(Debug, Default, Clone)]
pub struct OwnNetworks {
    pub nets: Vec<IpNet>,
    pub gateways: Vec<IpAddr>,
}

impl OwnNetworks {
    /// Whether `addr`, or the IPv4 address an IPv6 address carries (NAT64, 6to4, ...), is one
    /// of these: through a NAT64 gateway, 64:ff9b::a00:5 reaches 10.0.0.5.
    fn contain(&self, addr: IpAddr) -> bool {
        let own = |addr: IpAddr| {
            self.gateways.contains(&addr) || self.nets.iter().any(|net| net.contains(&addr))
        };
        let carried = match addr {
            IpAddr::V6(v6) => embedded_ipv4(v6).any(|v4| own(v4.into())),
            IpAddr::V4(_) => false,
        };
        own(addr) || carried
    }
}

/// Judges an upstream answer to the question `judge_query` forwarded: the addresses of the
/// records on the question's CNAME chain only.
pub fn judge_answer(
    allowed: &Allowed,
    answer: &Message,
    names: &Names,
    own: &OwnNetworks,
) -> AnswerVerdict {
    let ports = allowed.ports_now(names);
    let mut verdict = AnswerVerdict::default();
    if ports.is_empty() {
        return verdict;
    }
    for (addr, ttl) in chain_addresses(&allowed.question.name, &answer.answers) {
        if (!may_be_opened_by_name(addr) || own.contain(addr)) && !names.covers_address(addr) {
            verdict.refused.push(addr);
            continue;
        }
        verdict.opened.push(Opened {
            name: Arc::clone(&allowed.name),
            addr,
            ports: Arc::clone(&ports),
            timeout: Duration::from_secs(ttl.into()).clamp(TTL_FLOOR, TTL_CEILING),
        });
    }
    verdict
}

/// The names of allowlist entries written as in an allowlist file.
#[cfg(test)]
pub(crate) fn names(entries: &[&str]) -> Names {
    Names::from_policy(&Policy::of(entries, "test"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_resolver::proto::rr::rdata::{A, CNAME};
    use hickory_resolver::proto::rr::{RData, Record, RecordType};
    use proptest::prelude::*;
    use std::str::FromStr;

    fn name(text: &str) -> Name {
        Name::from_str(text).unwrap()
    }

    fn query(text: &str, kind: RecordType) -> Vec<u8> {
        let mut message = Message::query();
        message.metadata.id = 0x4242;
        message.metadata.recursion_desired = true;
        message.add_query(Query::query(name(text), kind));
        message.to_vec().unwrap()
    }

    fn code(verdict: QueryVerdict) -> ResponseCode {
        match verdict {
            QueryVerdict::Answer(bytes) | QueryVerdict::Refused { reply: bytes, .. } => {
                let reply = Message::from_vec(&bytes).unwrap();
                assert_eq!(reply.metadata.id, 0x4242);
                assert_eq!(reply.metadata.message_type, MessageType::Response);
                reply.metadata.response_code
            }
            other => panic!("expected an answer, got {other:?}"),
        }
    }

    #[test]
    fn the_self_test_name_is_answered_here_with_the_token_and_never_forwarded() {
        let query = self_test_query(0x4242);
        let with_token = names(&["*.invalid"]).with_self_test("f00d".into());
        let QueryVerdict::Answer(reply) = judge_query(&query, &with_token) else {
            panic!("the gateway answers its own name");
        };
        assert_eq!(self_test_token_in(&reply, 0x4242).as_deref(), Some("f00d"));
        assert_eq!(self_test_token_in(&reply, 0x4243), None, "another id");
        // Without a token (or asked for another type) it is a name like any other.
        assert_eq!(
            code(judge_query(&query, &names(&["api.example.test"]))),
            ResponseCode::Refused
        );
        let a = self::query("self-test.cordon.invalid.", RecordType::A);
        let wildcard = names(&["*.cordon.invalid"]).with_self_test("f00d".into());
        assert!(matches!(
            judge_query(&a, &wildcard),
            QueryVerdict::Forward(_)
        ));
    }

    #[test]
    fn exact_names_and_names_below_a_wildcard_go_upstream() {
        let allowed = names(&["api.example.test", "*.cdn.test:443"]);
        for asked in [
            "api.example.test.",
            "API.Example.Test.",
            "a.cdn.test.",
            "a.b.cdn.test.",
        ] {
            assert!(
                matches!(
                    judge_query(&query(asked, RecordType::A), &allowed),
                    QueryVerdict::Forward(_)
                ),
                "{asked}"
            );
        }
        for asked in [
            "cdn.test.",
            "example.test.",
            "x.api.example.test.",
            "api.example.test.corp.test.",
            "6a6f6b65.x.attacker.test.",
        ] {
            let verdict = judge_query(&query(asked, RecordType::TXT), &allowed);
            assert_eq!(code(verdict), ResponseCode::Refused, "{asked}");
        }
    }

    #[test]
    fn the_ports_are_those_of_every_entry_that_allows_the_name() {
        let allowed = names(&["a.cdn.test:22", "*.cdn.test:443"]);
        let ports: Vec<String> = allowed
            .ports_for(&name("a.cdn.test."))
            .iter()
            .map(|p| p.to_string())
            .collect();
        assert_eq!(ports.len(), 2, "{ports:?}");
    }

    #[test]
    fn what_is_not_a_plain_query_is_never_forwarded() {
        let allowed = names(&["api.example.test"]);
        assert!(matches!(judge_query(&[], &allowed), QueryVerdict::Drop));
        assert!(matches!(judge_query(&[0x42], &allowed), QueryVerdict::Drop));
        // A query header (QR clear), then bytes that are no question.
        let mut garbage = vec![0x42, 0x42, 0x01, 0x00];
        garbage.extend([0xff; 20]);
        assert_eq!(code(judge_query(&garbage, &allowed)), ResponseCode::FormErr);
        // With QR set, short or garbage: no reply at all.
        for len in [3, 11, 24] {
            let response = [0x42, 0x42, 0xff].into_iter().chain([0xff; 21]);
            let response: Vec<u8> = response.take(len).collect();
            assert!(matches!(
                judge_query(&response, &allowed),
                QueryVerdict::Drop
            ));
        }
        // No question: FORMERR.
        let mut none = Message::query();
        none.metadata.id = 0x4242;
        assert_eq!(
            code(judge_query(&none.to_vec().unwrap(), &allowed)),
            ResponseCode::FormErr
        );
        let mut two = Message::query();
        two.metadata.id = 0x4242;
        two.add_query(Query::query(name("api.example.test."), RecordType::A));
        two.add_query(Query::query(name("evil.test."), RecordType::A));
        assert_eq!(
            code(judge_query(&two.to_vec().unwrap(), &allowed)),
            ResponseCode::FormErr
        );
        let mut chaos = Message::query();
        chaos.metadata.id = 0x4242;
        let mut question = Query::query(name("api.example.test."), RecordType::TXT);
        question.query_class = DNSClass::CH;
        chaos.add_query(question);
        assert_eq!(
            code(judge_query(&chaos.to_vec().unwrap(), &allowed)),
            ResponseCode::Refused
        );
        let mut response = Message::from_vec(&query("api.example.test.", RecordType::A)).unwrap();
        response.metadata.message_type = MessageType::Response;
        assert!(matches!(
            judge_query(&response.to_vec().unwrap(), &allowed),
            QueryVerdict::Drop
        ));
    }

    fn a(owner: &str, addr: &str, ttl: u32) -> Record {
        Record::from_rdata(name(owner), ttl, RData::A(A(addr.parse().unwrap())))
    }

    fn cname(owner: &str, target: &str) -> Record {
        Record::from_rdata(name(owner), 300, RData::CNAME(CNAME(name(target))))
    }

    #[test]
    fn an_answer_opens_its_chain_only_for_the_ttl_within_bounds() {
        let allowed = names(&["api.example.test:443"]);
        let question = Query::query(name("api.example.test."), RecordType::A);
        let question = Allowed::judge(question, &allowed).unwrap();
        let mut answer = Message::response(1, OpCode::Query);
        answer.answers = vec![
            cname("api.example.test.", "edge.cdn.test."),
            a("edge.cdn.test.", "192.0.2.10", 20),
            a("edge.cdn.test.", "192.0.2.11", 86_400),
            a("stray.test.", "192.0.2.99", 300),
            a("edge.cdn.test.", "169.254.169.254", 300),
            a("edge.cdn.test.", "10.1.2.3", 300),
            a("edge.cdn.test.", "10.9.0.1", 300),
        ];
        // Not an Internet (IN) record: it names no address of the Internet.
        let mut chaos = a("edge.cdn.test.", "198.51.100.66", 300);
        chaos.dns_class = DNSClass::CH;
        answer.answers.push(chaos);
        let own = OwnNetworks {
            nets: vec!["10.1.2.0/24".parse().unwrap()],
            gateways: vec!["10.9.0.1".parse().unwrap()],
        };
        let verdict = judge_answer(&question, &answer, &allowed, &own);
        let opened: Vec<(String, u64)> = verdict
            .opened
            .iter()
            .map(|o| (o.addr.to_string(), o.timeout.as_secs()))
            .collect();
        assert_eq!(
            opened,
            [("192.0.2.10".into(), 60), ("192.0.2.11".into(), 3600)]
        );
        assert_eq!(verdict.opened[0].ports[0].to_string(), "443");
        let refused: Vec<String> = verdict.refused.iter().map(|a| a.to_string()).collect();
        assert_eq!(refused, ["169.254.169.254", "10.1.2.3", "10.9.0.1"]);
        // An address entry covering one of them (say `10.1.2.0/28:5432`) lets the name open it.
        allowed.add(&Target::Net("10.1.2.0/28".parse().unwrap()), &Ports::Any);
        let verdict = judge_answer(&question, &answer, &allowed, &own);
        assert!(verdict
            .opened
            .iter()
            .any(|o| o.addr.to_string() == "10.1.2.3"));
        assert!(!verdict.refused.iter().any(|a| a.to_string() == "10.1.2.3"));
    }

    #[test]
    fn a_dot_inside_a_label_does_not_make_a_name_lie_below_a_wildcard() {
        let allowed = names(&["*.cdn.test", "api.example.test"]);
        for labels in [
            &["x.cdn", "test"][..],
            &["a", "x.cdn", "test"],
            &["api.example", "test"],
            &["x", "cdn\\", "test"],
        ] {
            let raw: Vec<&[u8]> = labels.iter().map(|label| label.as_bytes()).collect();
            let mut name = Name::from_labels(raw).unwrap();
            name.set_fqdn(true);
            let question = Query::query(name, RecordType::A);
            let verdict = judge_query(&query_of(&question), &allowed);
            assert!(
                matches!(verdict, QueryVerdict::Refused { .. }),
                "{labels:?}: {verdict:?}"
            );
        }
        // The same names spelled with real label boundaries are allowed.
        let question = Query::query(name("x.cdn.test."), RecordType::A);
        assert!(matches!(
            judge_query(&query_of(&question), &allowed),
            QueryVerdict::Forward(_)
        ));
    }

    #[test]
    fn an_answer_opens_the_ports_the_allowlist_holds_when_it_arrives() {
        let allowed = names(&["api.example.test:443"]);
        let question = Query::query(name("api.example.test."), RecordType::A);
        let QueryVerdict::Forward(forwarded) = judge_query(&query_of(&question), &allowed) else {
            panic!("an allowlisted name is forwarded");
        };
        let mut answer = Message::response(1, OpCode::Query);
        answer.answers = vec![a("api.example.test.", "192.0.2.10", 300)];
        let ports = |verdict: AnswerVerdict| -> Vec<String> {
            let opened = verdict.opened.iter();
            opened
                .flat_map(|o| o.ports.iter().map(|p| p.to_string()))
                .collect()
        };
        assert_eq!(
            ports(judge_answer(
                &forwarded,
                &answer,
                &allowed,
                &OwnNetworks::default()
            )),
            ["443"]
        );
        // Root changes the entry while the question is upstream: the answer follows the change.
        let (target, port_80) = crate::fence::policy::parse_entry("api.example.test:80").unwrap();
        allowed.remove(&target);
        let own = OwnNetworks::default();
        assert!(judge_answer(&forwarded, &answer, &allowed, &own)
            .opened
            .is_empty());
        allowed.add(&target, &port_80);
        assert_eq!(
            ports(judge_answer(&forwarded, &answer, &allowed, &own)),
            ["80"]
        );
    }

    #[test]
    fn the_upstream_query_is_the_question_alone_in_lower_case_as_a_message_would_write_it() {
        let longest = format!("{0}.{0}.{0}.{1}.", "a".repeat(63), "B".repeat(61));
        for text in ["api.example.test.", "A.b-C.cdn.test", ".", &longest] {
            // `from_ascii` keeps the case (`from_str` lowers it).
            let question = Query::query(Name::from_ascii(text).unwrap(), RecordType::AAAA);
            let mut message = Message::query();
            message.metadata.id = 0xbeef;
            message.metadata.recursion_desired = true;
            message.add_query(Query::query(name(text).to_lowercase(), RecordType::AAAA));
            let sent = upstream_query(&question, 0xbeef);
            assert_eq!(sent, message.to_vec().unwrap(), "{text}");
            assert!(!sent.iter().any(u8::is_ascii_uppercase), "{text}");
        }
    }

    #[test]
    fn the_agents_choice_of_case_and_record_type_stays_here() {
        let allowed = names(&["api.example.test"]);
        // The case of the agent's letters: not upstream, but back in the agent's answer.
        let asked = Query::query(
            Name::from_ascii("ApI.eXaMpLe.TEST.").unwrap(),
            RecordType::A,
        );
        assert!(!asked.name.eq_case(&name("api.example.test.")));
        let QueryVerdict::Forward(forwarded) = judge_query(&query_of(&asked), &allowed) else {
            panic!("an allowlisted name is forwarded in any case");
        };
        let sent = Message::from_vec(&upstream_query(&forwarded.question, 0x1111)).unwrap();
        assert!(sent.queries[0].name.eq_case(&name("api.example.test.")));
        let mut upstream = Message::response(0x1111, OpCode::Query);
        upstream.add_query(sent.queries[0].clone());
        upstream.answers = vec![a("api.example.test.", "192.0.2.10", 300)];
        // The agent's reply to the upstream's answer, and what the answer opened.
        let reply_to = |upstream: &Message| {
            let wire = upstream.to_vec().unwrap();
            let parsed = Message::from_vec(&wire).unwrap();
            let verdict = judge_answer(&forwarded, &parsed, &allowed, &OwnNetworks::default());
            let reply = answer_for_agent(&wire, parsed, &asked, 0x4242, &verdict).unwrap();
            (Message::from_vec(&reply).unwrap(), verdict)
        };
        let (reply, _) = reply_to(&upstream);
        assert_eq!(reply.metadata.id, 0x4242);
        assert!(reply.queries[0].name.eq_case(&asked.name), "{reply}");
        assert_eq!(reply.answers.len(), 1);
        // Also where a record is left out and the answer is written anew.
        upstream
            .answers
            .push(a("api.example.test.", "169.254.169.254", 300));
        let (reply, _) = reply_to(&upstream);
        assert!(reply.queries[0].name.eq_case(&asked.name), "{reply}");
        assert_eq!(reply.answers.len(), 1);
        // And where a TTL is longer than an answered address stays open.
        upstream.answers = vec![a("api.example.test.", "192.0.2.10", 86_400)];
        let (reply, verdict) = reply_to(&upstream);
        assert!(reply.queries[0].name.eq_case(&asked.name), "{reply}");
        assert_eq!(reply.answers[0].ttl, TTL_CEILING.as_secs() as u32);
        assert_eq!(verdict.opened[0].timeout, TTL_CEILING);
        // A reply whose question is not the agent's name in another case is left as it is.
        for other in [
            "api.example.tes.",
            "xpi.example.test.",
            "api.example.test.x.",
        ] {
            let mut reply = Message::response(1, OpCode::Query);
            reply.add_query(Query::query(name(other), RecordType::A));
            let mut bytes = reply.to_vec().unwrap();
            let before = bytes.clone();
            restore_case(&mut bytes, &asked.name);
            assert_eq!(bytes, before, "{other}");
        }

        // Record types: the common ones go upstream, any other number is refused here.
        for kind in FORWARDED_TYPES {
            let question = Query::query(name("api.example.test."), kind);
            let verdict = judge_query(&query_of(&question), &allowed);
            assert!(matches!(verdict, QueryVerdict::Forward(_)), "{kind}");
        }
        for number in [0, 10, 41, 250, 252, 65280, 65535, 4242] {
            let kind = RecordType::from(number);
            let question = Query::query(name("api.example.test."), kind);
            let verdict = judge_query(&query_of(&question), &allowed);
            assert!(matches!(verdict, QueryVerdict::Refused { .. }), "{number}");
        }
    }

    #[test]
    fn an_ipv6_answer_carrying_an_own_network_address_does_not_open() {
        let allowed = names(&["api.example.test"]);
        let question = Query::query(name("api.example.test."), RecordType::AAAA);
        let forwarded = Allowed::judge(question, &allowed).unwrap();
        let aaaa = |addr: &str| {
            Record::from_rdata(
                name("api.example.test."),
                300,
                RData::AAAA(hickory_resolver::proto::rr::rdata::AAAA(
                    addr.parse().unwrap(),
                )),
            )
        };
        let mut answer = Message::response(1, OpCode::Query);
        // 10.1.2.3 and the gateway 10.9.0.1 through NAT64 (well-known and local-use prefixes),
        // 6to4 and SIIT; then a public address through NAT64.
        answer.answers = [
            "64:ff9b::a01:203",
            "64:ff9b:1::a09:1",
            "2002:a01:203::1",
            "::ffff:0:a01:203",
        ]
        .into_iter()
        .chain(["64:ff9b::c000:20a"])
        .map(aaaa)
        .collect();
        let own = OwnNetworks {
            nets: vec!["10.1.2.0/24".parse().unwrap()],
            gateways: vec!["10.9.0.1".parse().unwrap()],
        };
        let verdict = judge_answer(&forwarded, &answer, &allowed, &own);
        let opened: Vec<String> = verdict.opened.iter().map(|o| o.addr.to_string()).collect();
        assert_eq!(opened, ["64:ff9b::c000:20a"]);
        assert_eq!(verdict.refused.len(), 4);
    }

    /// A query message for `question` under id 0x4242.
    fn query_of(question: &Query) -> Vec<u8> {
        let mut message = Message::query();
        message.metadata.id = 0x4242;
        message.add_query(question.clone());
        message.to_vec().unwrap()
    }

    proptest! {
        /// Any name reads as the allowlist writes names exactly as through hickory's escaping:
        /// the copy of ordinary labels cannot make a name read as another.
        #[test]
        fn plain_names_read_as_hickory_writes_them(labels in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..8), 0..5), fqdn in any::<bool>()) {
            let labels: Vec<&[u8]> = labels.iter().map(Vec::as_slice).collect();
            if let Ok(mut name) = Name::from_labels(labels) {
                name.set_fqdn(fqdn);
                prop_assert_eq!(plain(&name).to_string(), escaped(&name));
            }
        }

        /// Ordinary names, in any case, take the copying path and agree too.
        #[test]
        fn ordinary_names_read_as_hickory_writes_them(text in "[a-zA-Z0-9_*][a-zA-Z0-9_-]{0,5}(\\.[a-zA-Z0-9_][a-zA-Z0-9_-]{0,5}){0,3}\\.?") {
            if let Ok(name) = Name::from_ascii(&text) {
                prop_assert_eq!(plain(&name).to_string(), escaped(&name));
            }
        }

        /// Whatever the agent sends, the gateway neither panics nor forwards a name the
        /// allowlist does not hold.
        #[test]
        fn any_bytes_from_the_agent_are_judged_without_panic(wire in proptest::collection::vec(any::<u8>(), 0..600)) {
            let allowed = names(&["api.example.test", "*.cdn.test"]);
            if let QueryVerdict::Forward(forwarded) = judge_query(&wire, &allowed) {
                prop_assert!(allowed.allows(&forwarded.question.name));
                // Only names of ordinary labels can be allowed: one with a byte escaped (a dot
                // inside a label) never is.
                prop_assert!(!plain(&forwarded.question.name).contains('\\'));
            }
        }

        /// Whatever upstream answers, the gateway neither panics nor opens a special-purpose
        /// address.
        #[test]
        fn any_upstream_answer_is_judged_without_panic(wire in proptest::collection::vec(any::<u8>(), 0..600)) {
            let allowed = names(&["api.example.test"]);
            let question = Query::query(name("api.example.test."), RecordType::A);
            let question = Allowed::judge(question, &allowed).unwrap();
            if let Ok(answer) = Message::from_vec(&wire) {
                let verdict = judge_answer(&question, &answer, &allowed, &OwnNetworks::default());
                for opened in verdict.opened {
                    prop_assert!(may_be_opened_by_name(opened.addr));
                }
            }
        }
    }
}
