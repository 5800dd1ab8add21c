//! The gateway's own CPU per question, without sockets: judge the agent's question, build the
//! upstream query, parse and judge the answer, build the agent's reply, cache it.
//!
//!   cargo bench --bench gateway_cpu --target x86_64-unknown-linux-musl -- [QUESTIONS]

use std::alloc::{GlobalAlloc, Layout, System};
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// The system allocator, counting allocations.
struct Counting;
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, size) }
    }
}
#[global_allocator]
static COUNTING: Counting = Counting;

use cordon::gateway::cache::{self, AnswerCache};
use cordon::gateway::filter::{
    answer_for_agent, judge_answer, judge_query, upstream_query, OwnNetworks, QueryVerdict,
};
use hickory_resolver::proto::op::{Message, OpCode, Query};
use hickory_resolver::proto::rr::rdata::A;
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};

fn main() {
    let count: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200_000);
    let names = cordon::fuzz::gateway_names();
    let own = OwnNetworks::default();
    let questions: Vec<Vec<u8>> = (0..count)
        .map(|i| {
            let mut m = Message::query();
            m.metadata.id = i as u16;
            m.metadata.recursion_desired = true;
            m.add_query(Query::query(
                Name::from_str(&format!("name{i}.cdn.test.")).unwrap(),
                RecordType::A,
            ));
            m.to_vec().unwrap()
        })
        .collect();
    let answer_for = |query: &[u8]| {
        let q = Message::from_vec(query).unwrap();
        let question = q.queries[0].clone();
        let mut a = Message::response(q.metadata.id, OpCode::Query);
        a.answers = vec![Record::from_rdata(
            question.name.clone(),
            300,
            RData::A(A("192.0.2.1".parse().unwrap())),
        )];
        a.add_query(question);
        a.to_vec().unwrap()
    };
    let mut cache = AnswerCache::default();
    let (mut t_query, mut t_up, mut t_answer) = (0u128, 0u128, 0u128);
    let (mut a_query, mut a_up, mut a_answer) = (0usize, 0usize, 0usize);
    let started = Instant::now();
    for wire in &questions {
        let t0 = Instant::now();
        let c0 = ALLOCATIONS.load(Ordering::Relaxed);
        let QueryVerdict::Forward(allowed) = judge_query(wire, &names) else {
            panic!()
        };
        let question = &allowed.question;
        let miss = cache.lookup(&allowed, 1, 0, t0).is_none();
        assert!(miss);
        let t1 = Instant::now();
        let c1 = ALLOCATIONS.load(Ordering::Relaxed);
        let up = upstream_query(question, 77);
        let t2 = Instant::now();
        let c2 = ALLOCATIONS.load(Ordering::Relaxed);
        let reply = answer_for(&up);
        let t3 = Instant::now();
        let c3 = ALLOCATIONS.load(Ordering::Relaxed);
        let answer = Message::from_vec(&reply).unwrap();
        assert!(answer.queries.first() == Some(question));
        let verdict = judge_answer(&allowed, &answer, &names, &own);
        let lifetime = cache::lifetime(&answer);
        let bytes = answer_for_agent(&reply, answer, question, 5, &verdict).unwrap();
        cache.store(&allowed, &bytes, lifetime.unwrap(), &verdict.opened, 0, t3);
        let t4 = Instant::now();
        a_query += c1 - c0;
        a_up += c2 - c1;
        a_answer += ALLOCATIONS.load(Ordering::Relaxed) - c3;
        t_query += (t1 - t0).as_nanos();
        t_up += (t2 - t1).as_nanos();
        t_answer += (t4 - t3).as_nanos();
    }
    let total = started.elapsed();
    let per = |t: u128| t as f64 / count as f64 / 1000.0;
    println!(
        "allocations per question: judge query {:.1}, upstream query {:.1}, answer {:.1}",
        a_query as f64 / count as f64,
        a_up as f64 / count as f64,
        a_answer as f64 / count as f64
    );
    println!(
        "per question: judge query {:.2} µs, upstream query {:.2} µs, answer {:.2} µs (total loop {:.2} µs incl. test upstream)",
        per(t_query), per(t_up), per(t_answer), total.as_nanos() as f64 / count as f64 / 1000.0
    );
}
