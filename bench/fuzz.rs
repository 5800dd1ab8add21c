//! A mutation fuzzer for every parser that reads what the agent controls: the DNS gateway's
//! handling of the agent's queries and of upstream answers, allowlist entries, resolv.conf,
//! /etc/passwd and /etc/group, the headers of rejected packets the block log reads (NFLOG), and
//! the block log's table. Starts from valid inputs, mutates them (bit flips, random bytes,
//! insertions, deletions, truncation, splices), and calls `cordon::fuzz`; a panic is reported
//! with its input and counted.
//!
//!   cargo bench --bench fuzz --target x86_64-unknown-linux-musl -- [EXECUTIONS] [SEED]
//!
//! (default 10,000,000 executions, seed from the clock; the seed is printed for a rerun).

use std::panic::{self, AssertUnwindSafe};
use std::str::FromStr;
use std::time::Instant;

use cordon::fuzz;
use hickory_resolver::proto::op::{Message, OpCode, Query};
use hickory_resolver::proto::rr::rdata::{A, AAAA, CNAME, TXT};
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};

/// xorshift64*: fast and reproducible from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(out.len() + 1);
        // A byte position for the changes that need one.
        let byte = at.min(out.len().saturating_sub(1));
        match rng.below(7) {
            0 if !out.is_empty() => out[byte] ^= 1 << rng.below(8),
            1 if !out.is_empty() => out[byte] = rng.next() as u8,
            2 => out.insert(at, rng.next() as u8),
            3 if !out.is_empty() => {
                out.remove(byte);
            }
            4 => out.truncate(at),
            5 if !other.is_empty() => {
                let from = rng.below(other.len());
                let len = rng.below(other.len() - from) + 1;
                let chunk = other[from..from + len].to_vec();
                out.splice(at..at, chunk);
            }
            6 if !out.is_empty() => {
                // An interesting value: lengths and counts at their edges.
                let value = [0u8, 1, 0x3f, 0x40, 0x7f, 0x80, 0xc0, 0xff][rng.below(8)];
                out[byte] = value;
            }
            _ => {}
        }
    }
    out
}

fn name(text: &str) -> Name {
    Name::from_str(text).unwrap()
}

fn dns_corpus() -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let mut queries = Vec::new();
    for (text, kind) in [
        ("api.example.test.", RecordType::A),
        ("a.cdn.test.", RecordType::AAAA),
        ("6a6f6b65.x.attacker.test.", RecordType::TXT),
        ("cdn.test.", RecordType::ANY),
    ] {
        let mut query = Message::query();
        query.metadata.id = 0x1234;
        query.metadata.recursion_desired = true;
        query.add_query(Query::query(name(text), kind));
        queries.push(query.to_vec().unwrap());
    }
    let mut answers = Vec::new();
    let record = |owner: &str, data: RData| Record::from_rdata(name(owner), 300, data);
    let sets = [
        vec![
            record(
                "api.example.test.",
                RData::CNAME(CNAME(name("edge.cdn.test."))),
            ),
            record("edge.cdn.test.", RData::A(A("192.0.2.1".parse().unwrap()))),
            record(
                "edge.cdn.test.",
                RData::AAAA(AAAA("2001:db8::1".parse().unwrap())),
            ),
        ],
        vec![
            record(
                "api.example.test.",
                RData::A(A("169.254.169.254".parse().unwrap())),
            ),
            record("stray.test.", RData::A(A("198.51.100.1".parse().unwrap()))),
            record("api.example.test.", RData::TXT(TXT::new(vec!["x".into()]))),
        ],
    ];
    for records in sets {
        let mut answer = Message::response(0x1234, OpCode::Query);
        answer.add_query(Query::query(name("api.example.test."), RecordType::A));
        answer.answers = records;
        answers.push(answer.to_vec().unwrap());
    }
    (queries, answers)
}

fn text_corpus() -> [Vec<Vec<u8>>; 4] {
    let entries = [
        "api.example.com",
        "api.example.com:443,8443",
        "*.example.com:tcp/22,udp/53,8000-8010",
        "10.1.0.0/16:5432",
        "[2001:db8::/32]:443",
        "2001:db8::1",
        "192.0.2.7",
    ];
    let resolv = [
        "nameserver 10.0.0.2\nsearch corp.test example.test\noptions ndots:5 timeout:2 attempts:3\n",
        "nameserver 127.0.0.11\noptions ndots:0\n# ExtServers: [192.0.2.53 host(127.0.0.53)]\n",
        "nameserver fe80::1%eth0\nnameserver 2001:db8::53\ndomain x.test\n",
    ];
    let passwd = [
        "root:x:0:0:root:/root:/bin/bash\nnode:x:1000:1000::/home/node:/bin/bash\n",
        "docker:x:999:node,other\nnode:x:1000:\n",
    ];
    let blocked = [
        "3\t100\t160\tname evil.example (A)\tevil.example\t\n",
        "1\t90\t90\ttcp 203.0.113.5:22\tgithub.com:22\tgithub.com, answered 2 s ago\n",
    ];
    let bytes = |list: &[&str]| list.iter().map(|t| t.as_bytes().to_vec()).collect();
    [
        bytes(&entries),
        bytes(&resolv),
        bytes(&passwd),
        bytes(&blocked),
    ]
}

/// Requests as the agent sends them to the credential gateway (target, then headers).
fn request_corpus() -> Vec<Vec<u8>> {
    [
        "/v1/messages?beta=true\nx-api-key: sk-ant-own\nanthropic-version: 2023-06-01\ncontent-length: 10",
        "/v1/messages\nauthorization: Bearer placeholder\nanthropic-beta: a,oauth-2025-04-20\nhost: x",
        "/v1/models\nconnection: keep-alive, x-y\nx-y: 1\ntransfer-encoding: chunked\nX-Api-Key: a\nx-api-key: b",
        "http://evil.test/v1/messages\nhost: evil.test",
    ]
    .iter()
    .map(|r| r.as_bytes().to_vec())
    .collect()
}

/// Packets as the reject chain logs them: IPv4 TCP and UDP, IPv6 UDP.
fn packet_corpus() -> Vec<Vec<u8>> {
    let mut v4 = vec![
        0x45, 0, 0, 40, 0, 0, 0, 0, 64, 6, 0, 0, 10, 0, 0, 2, 203, 0, 113, 5,
    ];
    v4.extend_from_slice(&[0x9c, 0x40, 0, 22]);
    let mut udp = v4.clone();
    udp[9] = 17;
    let mut v6 = vec![0x60, 0, 0, 0, 0, 8, 17, 64];
    v6.extend_from_slice(&[0; 16]);
    v6.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    v6.extend_from_slice(&[0x9c, 0x40, 0, 53]);
    vec![v4, udp, v6]
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let executions: u64 = args
        .first()
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000_000);
    let seed: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1
    });
    println!("fuzz: {executions} executions, seed {seed}");
    let mut rng = Rng(seed);
    let names = fuzz::gateway_names();
    let (queries, answers) = dns_corpus();
    let [entries, resolv, passwd, blocked] = text_corpus();
    let packets = packet_corpus();
    let requests = request_corpus();
    let corpora: [(&str, &Vec<Vec<u8>>); 8] = [
        ("gateway query", &queries),
        ("gateway answer", &answers),
        ("allowlist entry", &entries),
        ("resolv.conf", &resolv),
        ("passwd/group", &passwd),
        ("rejected packet", &packets),
        ("blocked table", &blocked),
        ("credential request", &requests),
    ];
    panic::set_hook(Box::new(|_| {}));
    let started = Instant::now();
    let mut crashes = 0u64;
    let mut per_target = [0u64; 8];
    for run in 0..executions {
        let target = (run % 8) as usize;
        let (label, corpus) = corpora[target];
        let input = &corpus[rng.below(corpus.len())];
        let other = &corpus[rng.below(corpus.len())];
        let mutated = mutate(&mut rng, input, other);
        let text = String::from_utf8_lossy(&mutated);
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| match target {
            0 => fuzz::gateway_query(&mutated, &names),
            1 => fuzz::gateway_answer(&mutated, &names),
            2 => fuzz::allowlist_entry(&text),
            3 => fuzz::resolv_conf(&text),
            4 => fuzz::passwd(&text),
            5 => fuzz::rejected_packet(&mutated),
            6 => fuzz::blocked_table(&text),
            _ => fuzz::credential_request(&mutated),
        }));
        per_target[target] += 1;
        if outcome.is_err() {
            crashes += 1;
            if crashes <= 10 {
                println!("CRASH in {label}: input {mutated:02x?}");
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "fuzz: {executions} executions in {elapsed:.1} s ({:.0}/s): {} per target \
         (query, answer, entry, resolv.conf, passwd, packet, blocked table, credential request); \
         {crashes} crashes",
        executions as f64 / elapsed,
        per_target[0]
    );
    if crashes > 0 {
        std::process::exit(1);
    }
}
