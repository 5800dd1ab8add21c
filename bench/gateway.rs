//! The DNS gateway's UDP loop against asking the upstream directly: latency (p50, p99) and
//! queries per second, for allowlisted questions (distinct names, forwarded; 1,000 names asked
//! again and again, answered from the gateway's cache) and refused ones (answered by the gateway
//! itself), with a fixed number of questions in flight. Everything runs on loopback in
//! this process: an upstream that answers every question with one A record, the gateway
//! (`cordon::gateway::udp::serve`), and the load. The sets are not touched (`open` does nothing
//! here; in a container each answer adds its addresses over netlink).
//!
//!   cargo bench --bench gateway --target x86_64-unknown-linux-musl -- [QUESTIONS] [IN_FLIGHT]

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::str::FromStr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cordon::gateway::filter::{Event, OwnNetworks};
use hickory_resolver::proto::op::{Message, OpCode, Query};
use hickory_resolver::proto::rr::rdata::A;
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};

fn upstream() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buffer = [0u8; 4096];
        while let Ok((len, from)) = socket.recv_from(&mut buffer) {
            let Ok(query) = Message::from_vec(&buffer[..len]) else {
                continue;
            };
            let question = query.queries[0].clone();
            let mut answer = Message::response(query.metadata.id, OpCode::Query);
            answer.answers = vec![Record::from_rdata(
                question.name.clone(),
                300,
                RData::A(A("192.0.2.1".parse().unwrap())),
            )];
            answer.add_query(question);
            let _ = socket.send_to(&answer.to_vec().unwrap(), from);
        }
    });
    addr
}

fn gateway(upstream: SocketAddr) -> SocketAddr {
    let agents = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = agents.local_addr().unwrap();
    let to_upstream = UdpSocket::bind("127.0.0.1:0").unwrap();
    to_upstream.connect(upstream).unwrap();
    std::thread::spawn(move || {
        let names = cordon::fuzz::gateway_names();
        let stop = Arc::new(AtomicBool::new(false));
        let open = |_: Event| {};
        cordon::gateway::udp::serve(
            &agents,
            &to_upstream,
            &names,
            &OwnNetworks::default(),
            &open,
            &cordon::gateway::udp::UdpTrust::default(),
            &stop,
        )
    });
    addr
}

/// Sends `questions` questions under `suffix` to `server`, `in_flight` at a time, cycling
/// through `distinct` names; returns each one's latency and the wall time.
fn load(
    server: SocketAddr,
    suffix: &str,
    (questions, distinct): (usize, usize),
    in_flight: usize,
) -> (Vec<Duration>, Duration) {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.connect(server).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut sent: HashMap<u16, Instant> = HashMap::new();
    let mut latencies = Vec::with_capacity(questions);
    let mut next = 0usize;
    let mut buffer = [0u8; 4096];
    let started = Instant::now();
    while latencies.len() < questions {
        while sent.len() < in_flight && next < questions {
            let id = (next % 65_536) as u16;
            let mut query = Message::query();
            query.metadata.id = id;
            query.metadata.recursion_desired = true;
            let name = Name::from_str(&format!("n{}.{suffix}", next % distinct)).unwrap();
            query.add_query(Query::query(name, RecordType::A));
            socket.send(&query.to_vec().unwrap()).unwrap();
            sent.insert(id, Instant::now());
            next += 1;
        }
        let Ok(len) = socket.recv(&mut buffer) else {
            panic!("no answer within 2 s ({} outstanding)", sent.len());
        };
        let id = u16::from_be_bytes([buffer[0], buffer[1]]);
        if let Some(at) = sent.remove(&id) {
            latencies.push(at.elapsed());
        }
        let _ = len;
    }
    (latencies, started.elapsed())
}

fn report(label: &str, (mut latencies, wall): (Vec<Duration>, Duration)) {
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    println!(
        "{label:32} p50 {:7.1} µs  p99 {:7.1} µs  {:8.0} queries/s",
        at(0.5).as_secs_f64() * 1e6,
        at(0.99).as_secs_f64() * 1e6,
        latencies.len() as f64 / wall.as_secs_f64()
    );
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let questions = args.first().copied().unwrap_or(100_000);
    let in_flight = args.get(1).copied().unwrap_or(16);
    let upstream = upstream();
    let gateway = gateway(upstream);
    let distinct = (questions, questions);
    // Warm up both paths (and the gateway's cache with 1,000 names).
    load(upstream, "warm.cdn.test.", (1_000, 1_000), in_flight);
    load(gateway, "cached.cdn.test.", (1_000, 1_000), in_flight);
    println!("{questions} questions each, {in_flight} in flight");
    report(
        "direct to the upstream",
        load(upstream, "cdn.test.", distinct, in_flight),
    );
    report(
        "through the gateway (allowed)",
        load(gateway, "cdn.test.", distinct, in_flight),
    );
    report(
        "gateway, cached (1,000 names)",
        load(gateway, "cached.cdn.test.", (questions, 1_000), in_flight),
    );
    report(
        "through the gateway (refused)",
        load(gateway, "refused.test.", distinct, in_flight),
    );
}
