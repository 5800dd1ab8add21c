//! The gateway's UDP loop: questions from the agent's side, judged by `filter`; allowlisted ones
//! go to the upstream resolver under a fresh random id from a socket connected to it (so only
//! the upstream can answer), and its answer goes back to the asker once what it opens has been
//! handed on as `Event::Opened` (the sets must hold an address before the agent can try to reach it), with
//! only the addresses it opened (no special-purpose address, no record off the question's CNAME
//! chain).
//!
//! A question asked again while the same one waits for upstream joins it: one upstream query,
//! and its answer goes to every asker. So the agent cannot hold many upstream ids open for one
//! question, which would let a host that forges the resolver's answers hit one of them in a
//! few tries; each question it keeps waiting gives a forger one chance in 65,536 per packet.
//!
//! Answers that match no question asked are counted (`UdpTrust`, shared by the loops of both
//! families): a host guessing ids sends many. After `UNWANTED_LIMIT` of them in the gateway's
//! life (not per period: a slow forger is counted too) no loop believes answers over UDP any
//! more: each allowlisted question is answered with TC set (the asker's resolver asks again
//! over TCP, which the TCP loop forwards over TCP, where an answer cannot be forged off the
//! path), the waiting askers too, and the caches are emptied. A forger's chances before that
//! are about `UNWANTED_LIMIT` in 65,536 in all.
//!
//! Memory stays bounded under a flood of distinct names: at most `MAX_PENDING` askers wait
//! for upstream at once (more are answered SERVFAIL), each for at most `UPSTREAM_WAIT`.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use std::sync::Arc;

use hickory_resolver::proto::op::{Message, OpCode, Query, ResponseCode};
use hickory_resolver::proto::rr::{Name, RecordType};

use super::cache::{self, AnswerCache};
use super::filter::{
    answer_for_agent, judge_answer, judge_query, reply_for_another_asker, upstream_query, Allowed,
    Event, Names, Opened, OwnNetworks, QueryVerdict,
};
use crate::sys::datagrams::{Inbox, Outbox};

/// Questions waiting for upstream at most.
pub const MAX_PENDING: usize = 4096;
/// How long a question waits for upstream; then the asker hears nothing (its stub retries).
pub const UPSTREAM_WAIT: Duration = Duration::from_secs(5);
/// A waiting question asked again (a stub's retry: the query or its answer may have been lost)
/// goes upstream again, under the same id, once this long has passed since it last went.
const RESEND_AFTER: Duration = Duration::from_secs(1);
/// Answers matching no question asked (and not a late answer: `Waiting::late`) that make the
/// gateway stop believing answers over UDP. An upstream sends next to none; a forger guessing
/// ids gets about this many chances in 65,536 in all.
pub const UNWANTED_LIMIT: u64 = 64;
/// How long an answer may still come for a question nobody waits for any more (a resolver
/// gives up on an unreachable server well before).
const LATE_WINDOW: Duration = Duration::from_secs(60);
/// Datagrams read from one socket per wake-up at most.
const BATCH: usize = 32;
/// Largest DNS message over UDP with EDNS.
const BUFFER: usize = 4096;

/// Where a forwarded question came from, and who asked the same since.
struct Pending {
    asker: SocketAddr,
    asker_id: u16,
    allowed: Allowed,
    /// When it last went upstream; it waits `UPSTREAM_WAIT` from then.
    last_sent: Instant,
    /// How many times it went upstream: an answer may come for each.
    sends: u16,
    joined: Vec<Joined>,
}

/// An asker of a question that was already waiting for upstream.
struct Joined {
    asker: SocketAddr,
    asker_id: u16,
    /// The name as this asker spelled it (its answer gets its case back).
    name: Name,
}

/// The questions waiting for upstream: by the id they went under, and by the question itself
/// (an identical question joins the one waiting).
#[derive(Default)]
struct Waiting {
    by_id: HashMap<u16, Pending>,
    by_question: HashMap<(Arc<str>, RecordType), u16>,
    askers: usize,
    /// Answers that may still come though nobody waits (a question sent more than once and
    /// answered once, or given up on), by id; for `LATE_WINDOW`, for at most `MAX_PENDING` ids.
    /// Such an answer is not counted as unwanted.
    late: HashMap<u16, Late>,
}

/// Answers still expected under an id.
struct Late {
    /// When the question last went.
    sent: Instant,
    /// Its plain name and type: only an answer to it is expected.
    question: (Arc<str>, RecordType),
    answers: u16,
}

/// Which waiting question an allowlisted one is the same as: its plain name (lower case) and
/// type; only class IN is forwarded.
fn question_key(allowed: &Allowed) -> (Arc<str>, RecordType) {
    (Arc::clone(&allowed.name), allowed.question.query_type)
}

/// What became of an asker of a question that may be waiting already.
enum Join {
    /// It waits with the others.
    Waits,
    /// It waits, and the question goes upstream again under this id (`RESEND_AFTER`).
    Resend(u16),
    /// No room for another asker (`MAX_PENDING`).
    Full,
    /// The question is not waiting.
    NotWaiting,
}

impl Waiting {
    /// Adds the asker to the identical question already waiting, if there is one (an asker
    /// already there, a stub's retry, is not added twice, and needs no room).
    fn join(&mut self, allowed: &Allowed, asker: SocketAddr, asker_id: u16, now: Instant) -> Join {
        let Some(&id) = self.by_question.get(&question_key(allowed)) else {
            return Join::NotWaiting;
        };
        let Some(pending) = self.by_id.get_mut(&id) else {
            return Join::NotWaiting;
        };
        let already = (pending.asker, pending.asker_id) == (asker, asker_id)
            || (pending.joined.iter()).any(|j| (j.asker, j.asker_id) == (asker, asker_id));
        if !already {
            if self.askers >= MAX_PENDING {
                return Join::Full;
            }
            pending.joined.push(Joined {
                asker,
                asker_id,
                name: allowed.question.name.clone(),
            });
            self.askers += 1;
        }
        if now.saturating_duration_since(pending.last_sent) < RESEND_AFTER {
            return Join::Waits;
        }
        pending.last_sent = now;
        pending.sends = pending.sends.saturating_add(1);
        Join::Resend(id)
    }

    fn insert(&mut self, id: u16, pending: Pending) {
        self.by_question.insert(question_key(&pending.allowed), id);
        self.by_id.insert(id, pending);
        self.askers += 1;
    }

    /// The question that went under `id`, no longer waiting.
    fn remove(&mut self, id: u16) -> Option<Pending> {
        let pending = self.by_id.remove(&id)?;
        let key = question_key(&pending.allowed);
        if self.by_question.get(&key) == Some(&id) {
            self.by_question.remove(&key);
        }
        self.askers -= 1 + pending.joined.len();
        Some(pending)
    }

    /// The question that went under `id`, answered: an answer may still come for each other
    /// time it went.
    fn answered(&mut self, id: u16) -> Option<Pending> {
        let pending = self.remove(id)?;
        self.expect_late(id, &pending, pending.sends - 1);
        Some(pending)
    }

    fn expect_late(&mut self, id: u16, pending: &Pending, answers: u16) {
        if answers > 0 && self.late.len() < MAX_PENDING {
            let question = question_key(&pending.allowed);
            let sent = pending.last_sent;
            let late = Late {
                sent,
                question,
                answers,
            };
            self.late.insert(id, late);
        }
    }

    /// Whether `answer`, which matched nothing waiting, was one still expected under its id
    /// for its question.
    fn took_late(&mut self, answer: &Message) -> bool {
        let id = answer.metadata.id;
        let Some(late) = self.late.get_mut(&id) else {
            return false;
        };
        let Some(question) = answer.queries.first() else {
            return false;
        };
        let key = (super::filter::plain(&question.name), question.query_type);
        if key != late.question {
            return false;
        }
        late.answers -= 1;
        if late.answers == 0 {
            self.late.remove(&id);
        }
        true
    }

    /// An id for a new question: none waiting or expected late goes under it.
    fn fresh_id(&self) -> u16 {
        loop {
            let id = rand::random::<u16>();
            if !self.by_id.contains_key(&id) && !self.late.contains_key(&id) {
                return id;
            }
        }
    }

    /// Every question waiting, no longer waiting.
    fn drain(&mut self) -> Vec<Pending> {
        self.by_question.clear();
        self.askers = 0;
        self.by_id.drain().map(|(_, pending)| pending).collect()
    }

    /// Forgets the questions that waited `UPSTREAM_WAIT` (their askers hear nothing and retry;
    /// their answers may still come), and the late answers no longer expected.
    fn expire(&mut self, now: Instant) {
        let expired: Vec<u16> = (self.by_id.iter())
            .filter(|(_, pending)| {
                now.saturating_duration_since(pending.last_sent) >= UPSTREAM_WAIT
            })
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(pending) = self.remove(id) {
                self.expect_late(id, &pending, pending.sends);
            }
        }
        (self.late).retain(|_, late| now.saturating_duration_since(late.sent) < LATE_WINDOW);
    }
}

/// Answers over UDP that matched no question asked, counted for all of the gateway's UDP
/// loops (one per family, each with its own upstream socket).
#[derive(Default)]
pub struct UdpTrust {
    unwanted: AtomicU64,
    /// For good, once `UNWANTED_LIMIT` came.
    distrusted: AtomicBool,
}

impl UdpTrust {
    /// Counts one; true when this one makes the gateway distrust UDP (once).
    fn count(&self) -> bool {
        let total = self.unwanted.fetch_add(1, Ordering::Relaxed) + 1;
        if total != UNWANTED_LIMIT {
            return false;
        }
        self.distrusted.store(true, Ordering::Relaxed);
        true
    }

    fn distrusted(&self) -> bool {
        self.distrusted.load(Ordering::Relaxed)
    }
}

/// Serves until `stop` is set (checked every 100 ms). `agents` receives the agent's questions;
/// `upstream` is connected to the resolver. Each wake-up reads a burst from each socket in one
/// call, answers what it can from the cache, puts everything the burst opens into the sets in
/// one request per set, and only then sends every reply, in one call.
pub fn serve(
    agents: &UdpSocket,
    upstream: &UdpSocket,
    names: &Names,
    own: &OwnNetworks,
    report: &dyn Fn(Event),
    trust: &UdpTrust,
    stop: &AtomicBool,
) -> io::Result<()> {
    let mut pending = Waiting::default();
    let mut cache = AnswerCache::default();
    let mut inbox = Inbox::new(BATCH, BUFFER);
    let (mut replies, mut forwards) = (Outbox::default(), Outbox::default());
    let mut opened: Vec<Opened> = Vec::new();
    // Whether this loop has stopped believing UDP (its askers sent to TCP, its cache emptied).
    let mut distrusted = false;
    let mut swept = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let (agent_ready, upstream_ready) = wait_readable(agents, upstream, 100)?;
        if trust.distrusted() && !distrusted {
            distrust(&mut pending, &mut cache, &mut replies);
            distrusted = true;
        }
        let (generation, now) = (names.generation(), Instant::now());
        let (mut cached, mut answered) = (0, 0);
        // A burst from each socket per wake-up: a flood on one side cannot starve the other.
        if agent_ready {
            inbox.receive(agents.as_fd())?;
            for datagram in inbox.iter() {
                let Some(asker) = datagram.sender.filter(|_| !datagram.truncated) else {
                    continue;
                };
                let allowed = match judge_query(datagram.bytes, names) {
                    QueryVerdict::Drop => continue,
                    QueryVerdict::Answer(reply) => {
                        replies.push(reply, Some(asker));
                        continue;
                    }
                    QueryVerdict::Refused { reply, question } => {
                        replies.push(reply, Some(asker));
                        report(Event::Refused(&question));
                        continue;
                    }
                    QueryVerdict::Forward(allowed) => allowed,
                };
                let asker_id = u16::from_be_bytes([datagram.bytes[0], datagram.bytes[1]]);
                if distrusted {
                    to_tcp(&mut replies, allowed.question, asker_id, asker);
                    continue;
                }
                if let Some(hit) = cache.lookup(&allowed, asker_id, generation, now) {
                    opened.extend(hit.reopen);
                    replies.push(hit.reply, Some(asker));
                    cached += 1;
                    continue;
                }
                match forward(allowed, asker, asker_id, &mut pending, now) {
                    Ok(Some(query)) => forwards.push(query, None),
                    Ok(None) => {}
                    Err(Some(reply)) => replies.push(reply, Some(asker)),
                    Err(None) => {}
                }
            }
            forwards.send(upstream.as_fd());
        }
        if upstream_ready {
            inbox.receive(upstream.as_fd())?;
            for datagram in inbox.iter().filter(|datagram| !datagram.truncated) {
                // Once distrusted, what comes is read and dropped.
                if distrusted {
                    break;
                }
                let answer = Answer {
                    wire: datagram.bytes,
                    generation,
                    now,
                };
                let judged = answer.judge(
                    names,
                    own,
                    &mut pending,
                    &mut cache,
                    &mut opened,
                    &mut replies,
                );
                match judged {
                    Judged::Answered(askers) => answered += askers,
                    Judged::Ignored => {}
                    Judged::Unwanted(answer) if pending.took_late(&answer) => {}
                    Judged::Unwanted(_) => {
                        if trust.count() {
                            report(Event::UdpDistrusted);
                        }
                        if trust.distrusted() {
                            distrust(&mut pending, &mut cache, &mut replies);
                            distrusted = true;
                        }
                    }
                }
            }
        }
        // The sets hold every address before any asker hears of it.
        if !opened.is_empty() {
            report(Event::Opened {
                opened: &opened,
                judged_under: generation,
            });
            opened.clear();
        }
        if answered > 0 {
            report(Event::Answered(answered));
        }
        if cached > 0 {
            report(Event::Cached(cached));
        }
        replies.send(agents.as_fd());
        if swept.elapsed() >= Duration::from_millis(100) {
            swept = Instant::now();
            pending.expire(swept);
        }
    }
    Ok(())
}

/// The upstream query for an allowlisted question, now pending under a fresh id (None: the
/// asker joined the same question, already waiting, and it need not go again); or the reply
/// the asker gets instead (SERVFAIL when `MAX_PENDING` askers wait already).
fn forward(
    allowed: Allowed,
    asker: SocketAddr,
    asker_id: u16,
    pending: &mut Waiting,
    now: Instant,
) -> Result<Option<Vec<u8>>, Option<Vec<u8>>> {
    let full = match pending.join(&allowed, asker, asker_id, now) {
        Join::Waits => return Ok(None),
        Join::Resend(id) => return Ok(Some(upstream_query(&allowed.question, id))),
        Join::Full => true,
        Join::NotWaiting => pending.askers >= MAX_PENDING,
    };
    if full {
        let mut reply = Message::error_msg(asker_id, OpCode::Query, ResponseCode::ServFail);
        reply.add_query(allowed.question);
        return Err(reply.to_vec().ok());
    }
    let id = pending.fresh_id();
    let query = upstream_query(&allowed.question, id);
    let waiting = Pending {
        asker,
        asker_id,
        allowed,
        last_sent: now,
        sends: 1,
        joined: Vec::new(),
    };
    pending.insert(id, waiting);
    Ok(Some(query))
}

/// Stops believing answers over UDP: every asker waiting is told to ask again over TCP, and
/// what the cache holds (perhaps a forged answer that came before) is dropped.
fn distrust(pending: &mut Waiting, cache: &mut AnswerCache, replies: &mut Outbox) {
    for waiting in pending.drain() {
        let question = &waiting.allowed.question;
        to_tcp(replies, question.clone(), waiting.asker_id, waiting.asker);
        for joined in waiting.joined {
            let mut question = question.clone();
            question.name = joined.name;
            to_tcp(replies, question, joined.asker_id, joined.asker);
        }
    }
    *cache = AnswerCache::default();
}

/// The reply that sends an asker to TCP: its question, no records, TC set.
fn to_tcp(replies: &mut Outbox, question: Query, asker_id: u16, asker: SocketAddr) {
    let mut reply = Message::response(asker_id, OpCode::Query);
    reply.metadata.truncation = true;
    reply.metadata.recursion_desired = true;
    reply.metadata.recursion_available = true;
    reply.add_query(question);
    if let Ok(reply) = reply.to_vec() {
        replies.push(reply, Some(asker));
    }
}

/// What became of a datagram from upstream.
enum Judged {
    /// It answered the question waiting under its id: this many askers.
    Answered(usize),
    /// It is no DNS message, or one without a question (an error reply may have none), which
    /// answers nothing and so cannot be a forged answer either.
    Ignored,
    /// It carries a question, but nothing waits under its id for that question.
    Unwanted(Message),
}

/// An upstream answer as it arrived, with the allowlist's change count and the time read
/// before the burst.
struct Answer<'a> {
    wire: &'a [u8],
    generation: u64,
    now: Instant,
}

impl Answer<'_> {
    /// The replies to the askers waiting for this answer, into `replies`, with what it opens
    /// appended to `opened`; kept in the cache if it may be.
    fn judge(
        &self,
        names: &Names,
        own: &OwnNetworks,
        pending: &mut Waiting,
        cache: &mut AnswerCache,
        opened: &mut Vec<Opened>,
        replies: &mut Outbox,
    ) -> Judged {
        let Ok(answer) = Message::from_vec(self.wire) else {
            return Judged::Ignored;
        };
        if answer.queries.is_empty() {
            return Judged::Ignored;
        }
        // Only the answer to the question sent under this id counts (the socket is connected,
        // so only the upstream's address gets here; the random id and the question guard the
        // rest).
        let matches = (pending.by_id.get(&answer.metadata.id))
            .is_some_and(|waiting| answer.queries.first() == Some(&waiting.allowed.question));
        if !matches {
            return Judged::Unwanted(answer);
        }
        let waiting = pending
            .answered(answer.metadata.id)
            .expect("checked just above");
        let verdict = judge_answer(&waiting.allowed, &answer, names, own);
        let lifetime = cache::lifetime(&answer);
        let asked = &waiting.allowed.question;
        let Some(bytes) = answer_for_agent(self.wire, answer, asked, waiting.asker_id, &verdict)
        else {
            return Judged::Answered(0);
        };
        if let Some(lifetime) = lifetime {
            let (asked, opened) = (&waiting.allowed, &verdict.opened);
            let (generation, now) = (self.generation, self.now);
            cache.store(asked, &bytes, lifetime, opened, generation, now);
        }
        opened.extend(verdict.opened);
        for joined in &waiting.joined {
            let reply = reply_for_another_asker(&bytes, joined.asker_id, &joined.name);
            replies.push(reply, Some(joined.asker));
        }
        replies.push(bytes, Some(waiting.asker));
        Judged::Answered(1 + waiting.joined.len())
    }
}

/// Which of the two sockets can be read, waiting up to `millis`.
fn wait_readable(a: &UdpSocket, b: &UdpSocket, millis: i32) -> io::Result<(bool, bool)> {
    use std::os::fd::AsRawFd;
    let mut fds = [
        libc::pollfd {
            fd: a.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: b.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    // SAFETY: two valid pollfd entries for the duration of the call.
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, millis) };
    if rc < 0 {
        let error = io::Error::last_os_error();
        return match error.kind() {
            io::ErrorKind::Interrupted => Ok((false, false)),
            _ => Err(error),
        };
    }
    Ok((fds[0].revents != 0, fds[1].revents != 0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::filter::names;
    use hickory_resolver::proto::op::{MessageType, Query};
    use hickory_resolver::proto::rr::rdata::{A, CNAME};
    use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
    use std::str::FromStr;
    use std::sync::{Arc, Mutex};

    fn name(text: &str) -> Name {
        Name::from_str(text).unwrap()
    }

    /// An upstream resolver: answers from `records`, logs every name it is asked.
    fn upstream(records: Vec<Record>, asked: Arc<Mutex<Vec<String>>>) -> SocketAddr {
        slow_upstream(records, asked, Duration::ZERO)
    }

    /// An upstream resolver that answers each question `delay` after it came.
    fn slow_upstream(
        records: Vec<Record>,
        asked: Arc<Mutex<Vec<String>>>,
        delay: Duration,
    ) -> SocketAddr {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = socket.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok((len, from)) = socket.recv_from(&mut buffer) {
                std::thread::sleep(delay);
                let query = Message::from_vec(&buffer[..len]).unwrap();
                let question = query.queries[0].clone();
                asked.lock().unwrap().push(question.name.to_ascii());
                let mut answer = Message::response(query.metadata.id, OpCode::Query);
                answer.add_query(question);
                answer.answers = records.clone();
                socket.send_to(&answer.to_vec().unwrap(), from).unwrap();
            }
        });
        addr
    }

    fn ask(client: &UdpSocket, gateway: SocketAddr, text: &str) -> Message {
        let mut query = Message::query();
        query.metadata.id = 7;
        query.metadata.recursion_desired = true;
        query.add_query(Query::query(name(text), RecordType::A));
        client.send_to(&query.to_vec().unwrap(), gateway).unwrap();
        let mut buffer = [0u8; 4096];
        let len = client.recv(&mut buffer).unwrap();
        let answer = Message::from_vec(&buffer[..len]).unwrap();
        assert_eq!(
            (answer.metadata.id, answer.metadata.message_type),
            (7, MessageType::Response)
        );
        answer
    }

    /// The gateway serving `allowed` in a thread, forwarding to `resolver`; stopped when the
    /// returned flag is set.
    fn serving(
        allowed: &'static [&'static str],
        resolver: SocketAddr,
    ) -> (SocketAddr, Arc<AtomicBool>) {
        serving_with(allowed, resolver, Arc::default())
    }

    /// As `serving`, counting unwanted answers in `trust`.
    fn serving_with(
        allowed: &'static [&'static str],
        resolver: SocketAddr,
        trust: Arc<UdpTrust>,
    ) -> (SocketAddr, Arc<AtomicBool>) {
        let agents = UdpSocket::bind("127.0.0.1:0").unwrap();
        let gateway = agents.local_addr().unwrap();
        let to_upstream = UdpSocket::bind("127.0.0.1:0").unwrap();
        to_upstream.connect(resolver).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        std::thread::spawn(move || {
            let names = names(allowed);
            let own = OwnNetworks::default();
            serve(
                &agents,
                &to_upstream,
                &names,
                &own,
                &|_| {},
                &trust,
                &stopped,
            )
        });
        (gateway, stop)
    }

    #[test]
    fn a_question_asked_again_while_it_waits_joins_it_and_every_asker_is_answered() {
        let asked = Arc::new(Mutex::new(Vec::new()));
        let record = Record::from_rdata(
            name("slow.example.test."),
            30,
            RData::A(A("192.0.2.10".parse().unwrap())),
        );
        let delay = Duration::from_millis(300);
        let resolver = slow_upstream(vec![record], Arc::clone(&asked), delay);
        let (gateway, stop) = serving(&["slow.example.test"], resolver);
        // Many askers (each its own socket and id, some in another case, one sending twice)
        // while the first question waits for the slow upstream.
        let spellings = [
            "slow.example.test.",
            "SLOW.example.TEST.",
            "sLoW.eXaMpLe.TeSt.",
        ];
        let askers: Vec<(UdpSocket, u16, &str)> = (0..30u16)
            .map(|i| {
                let client = UdpSocket::bind("127.0.0.1:0").unwrap();
                client
                    .set_read_timeout(Some(Duration::from_secs(5)))
                    .unwrap();
                (client, 100 + i, spellings[usize::from(i) % 3])
            })
            .collect();
        for (client, id, spelled) in &askers {
            let mut query = Message::query();
            query.metadata.id = *id;
            query.metadata.recursion_desired = true;
            query.add_query(Query::query(
                Name::from_ascii(spelled).unwrap(),
                RecordType::A,
            ));
            client.send_to(&query.to_vec().unwrap(), gateway).unwrap();
            if *id == 100 {
                client.send_to(&query.to_vec().unwrap(), gateway).unwrap();
            }
        }
        for (client, id, spelled) in &askers {
            let mut buffer = [0u8; 4096];
            let len = client.recv(&mut buffer).unwrap();
            let answer = Message::from_vec(&buffer[..len]).unwrap();
            assert_eq!(answer.metadata.id, *id);
            let question = &answer.queries[0].name;
            assert!(
                question.eq_case(&Name::from_ascii(spelled).unwrap()),
                "{question} for {spelled}"
            );
            let address = answer.answers[0].data.ip_addr().map(|a| a.to_string());
            assert_eq!(address.as_deref(), Some("192.0.2.10"));
        }
        // The asker that sent twice is answered once.
        let (first, _, _) = &askers[0];
        first
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        assert!(
            first.recv(&mut [0u8; 512]).is_err(),
            "a second answer for one asker"
        );
        stop.store(true, Ordering::Relaxed);
        assert_eq!(
            *asked.lock().unwrap(),
            ["slow.example.test."],
            "one upstream query for all of them"
        );
    }

    /// The question's first query (or its answer) lost: the asker's retry sends it again.
    #[test]
    fn a_retry_of_a_waiting_question_sends_it_upstream_again() {
        let asked = Arc::new(Mutex::new(Vec::new()));
        let record = Record::from_rdata(
            name("lossy.example.test."),
            30,
            RData::A(A("192.0.2.10".parse().unwrap())),
        );
        // Drops the first query it gets, answers the ones after.
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let resolver = socket.local_addr().unwrap();
        let heard = Arc::clone(&asked);
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok((len, from)) = socket.recv_from(&mut buffer) {
                let query = Message::from_vec(&buffer[..len]).unwrap();
                let mut heard = heard.lock().unwrap();
                heard.push(query.metadata.id);
                if heard.len() == 1 {
                    continue;
                }
                let mut answer = Message::response(query.metadata.id, OpCode::Query);
                answer.add_query(query.queries[0].clone());
                answer.answers = vec![record.clone()];
                socket.send_to(&answer.to_vec().unwrap(), from).unwrap();
            }
        });
        let (gateway, stop) = serving(&["lossy.example.test"], resolver);
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_millis(1500)))
            .unwrap();
        let mut query = Message::query();
        query.metadata.id = 7;
        query.add_query(Query::query(name("lossy.example.test."), RecordType::A));
        let query = query.to_vec().unwrap();
        client.send_to(&query, gateway).unwrap();
        assert!(
            client.recv(&mut [0u8; 512]).is_err(),
            "the first went unanswered"
        );
        // The stub's retry, more than `RESEND_AFTER` later.
        client.send_to(&query, gateway).unwrap();
        let mut buffer = [0u8; 4096];
        let len = client.recv(&mut buffer).expect("the retry is answered");
        assert_eq!(Message::from_vec(&buffer[..len]).unwrap().metadata.id, 7);
        stop.store(true, Ordering::Relaxed);
        let ids = asked.lock().unwrap().clone();
        assert_eq!(ids.len(), 2, "sent twice: {ids:?}");
        assert_eq!(ids[0], ids[1], "under the same id");
    }

    #[test]
    fn only_allowlisted_questions_reach_upstream_and_answers_open_before_they_arrive() {
        let asked = Arc::new(Mutex::new(Vec::new()));
        let a = |owner: &str, addr: &str| {
            Record::from_rdata(name(owner), 30, RData::A(A(addr.parse().unwrap())))
        };
        let records = vec![
            Record::from_rdata(
                name("api.example.test."),
                30,
                RData::CNAME(CNAME(name("edge.cdn.test."))),
            ),
            a("edge.cdn.test.", "192.0.2.10"),
            a("edge.cdn.test.", "169.254.169.254"),
            a("stray.test.", "198.51.100.7"),
        ];
        let resolver = upstream(records, Arc::clone(&asked));
        let agents = UdpSocket::bind("127.0.0.1:0").unwrap();
        let gateway = agents.local_addr().unwrap();
        let to_upstream = UdpSocket::bind("127.0.0.1:0").unwrap();
        to_upstream.connect(resolver).unwrap();
        let opened: Arc<Mutex<Vec<super::super::filter::Opened>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let server = {
            let (opened, stop) = (Arc::clone(&opened), Arc::clone(&stop));
            std::thread::spawn(move || {
                let allowed = names(&["api.example.test:443"]);
                let open = |event: Event| {
                    if let Event::Opened { opened: found, .. } = event {
                        opened.lock().unwrap().extend_from_slice(found)
                    }
                };
                serve(
                    &agents,
                    &to_upstream,
                    &allowed,
                    &OwnNetworks::default(),
                    &open,
                    &UdpTrust::default(),
                    &stop,
                )
            })
        };
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();

        let answer = ask(&client, gateway, "api.example.test.");
        let addresses: Vec<String> = answer
            .answers
            .iter()
            .filter_map(|r| r.data.ip_addr())
            .map(|a| a.to_string())
            .collect();
        assert_eq!(
            addresses,
            ["192.0.2.10"],
            "metadata and the stray record dropped"
        );
        let opened_now: Vec<String> = opened
            .lock()
            .unwrap()
            .iter()
            .map(|o| o.addr.to_string())
            .collect();
        assert_eq!(
            opened_now,
            ["192.0.2.10"],
            "open before the answer, chain only"
        );

        let refused = ask(&client, gateway, "6a6f6b65.x.attacker.test.");
        assert_eq!(refused.metadata.response_code, ResponseCode::Refused);
        stop.store(true, Ordering::Relaxed);
        server.join().unwrap().unwrap();
        assert_eq!(*asked.lock().unwrap(), ["api.example.test."]);
    }

    /// A host that can send from the resolver's address, guessing ids: once `UNWANTED_LIMIT`
    /// answers matched nothing asked, the waiting askers and every later one are sent to TCP,
    /// and nothing more goes upstream over UDP or comes back from it.
    #[test]
    fn a_flood_of_answers_to_no_question_sends_the_askers_to_tcp() {
        let resolver = UdpSocket::bind("127.0.0.1:0").unwrap();
        resolver
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        // The other family's loop, counting with this one.
        let trust = Arc::new(UdpTrust::default());
        let other_resolver = UdpSocket::bind("127.0.0.1:0").unwrap();
        let (other, other_stop) = serving_with(
            &["*.example.test"],
            other_resolver.local_addr().unwrap(),
            Arc::clone(&trust),
        );
        let (gateway, stop) =
            serving_with(&["*.example.test"], resolver.local_addr().unwrap(), trust);
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let query_for = |text: &str| {
            let mut query = Message::query();
            query.metadata.id = 7;
            query.metadata.recursion_desired = true;
            query.add_query(Query::query(name(text), RecordType::A));
            query.to_vec().unwrap()
        };
        let upstream_gets = || {
            let mut buffer = [0u8; 4096];
            let (len, gateway_side) = resolver.recv_from(&mut buffer).unwrap();
            (Message::from_vec(&buffer[..len]).unwrap(), gateway_side)
        };
        let answer = |query: &Message, id: u16| {
            let mut answer = Message::response(id, OpCode::Query);
            answer.add_query(query.queries[0].clone());
            answer.answers = vec![Record::from_rdata(
                query.queries[0].name.clone(),
                30,
                RData::A(A("192.0.2.66".parse().unwrap())),
            )];
            answer.to_vec().unwrap()
        };
        let reply = || {
            let mut buffer = [0u8; 4096];
            let len = client.recv(&mut buffer).unwrap();
            Message::from_vec(&buffer[..len]).unwrap()
        };

        // One short of the limit: the real answer still goes to the asker.
        client
            .send_to(&query_for("a.example.test."), gateway)
            .unwrap();
        let (query, gateway_side) = upstream_gets();
        let real = query.metadata.id;
        // Replies without a question answer nothing: not counted.
        for guess in 1..=100 {
            let mut empty = Message::response(real ^ guess, OpCode::Query);
            empty.metadata.response_code = ResponseCode::FormErr;
            resolver
                .send_to(&empty.to_vec().unwrap(), gateway_side)
                .unwrap();
        }
        for guess in 1..UNWANTED_LIMIT as u16 {
            let forged = answer(&query, real ^ guess);
            resolver.send_to(&forged, gateway_side).unwrap();
        }
        resolver
            .send_to(&answer(&query, real), gateway_side)
            .unwrap();
        let believed = reply();
        assert!(!believed.metadata.truncation, "{believed:?}");
        assert_eq!(believed.answers.len(), 1, "{believed:?}");

        // The limit reached while a question waits: its asker is sent to TCP.
        client
            .send_to(&query_for("c.example.test."), gateway)
            .unwrap();
        let (waiting, _) = upstream_gets();
        let forged = answer(&waiting, waiting.metadata.id ^ 1);
        resolver.send_to(&forged, gateway_side).unwrap();
        let sent_away = reply();
        assert!(sent_away.metadata.truncation, "{sent_away:?}");
        assert_eq!(
            (sent_away.metadata.id, sent_away.answers.len()),
            (7, 0),
            "{sent_away:?}"
        );
        assert_eq!(sent_away.queries[0].name, name("c.example.test."));
        // Its real answer, late, is not believed either.
        let late = answer(&waiting, waiting.metadata.id);
        resolver.send_to(&late, gateway_side).unwrap();

        // A new question: to TCP at once, and nothing goes upstream over UDP.
        client
            .send_to(&query_for("b.example.test."), gateway)
            .unwrap();
        let later = reply();
        assert!(later.metadata.truncation, "{later:?}");
        assert_eq!(later.answers.len(), 0, "{later:?}");
        client
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        assert!(client.recv(&mut [0u8; 512]).is_err(), "nothing more");
        resolver
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        assert!(
            resolver.recv(&mut [0u8; 512]).is_err(),
            "a question went upstream over UDP after the flood"
        );
        // The other family's loop too.
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        client
            .send_to(&query_for("d.example.test."), other)
            .unwrap();
        let other_loop = reply();
        assert!(other_loop.metadata.truncation, "{other_loop:?}");
        stop.store(true, Ordering::Relaxed);
        other_stop.store(true, Ordering::Relaxed);
    }

    /// Answers the gateway may still get for questions nobody waits for (sent twice and
    /// answered once, or given up on) are expected once each, not counted as unwanted.
    #[test]
    fn late_answers_are_expected_once_and_unwanted_ones_counted() {
        let names = names(&["*.example.test"]);
        let allowed =
            |text: &str| Allowed::judge(Query::query(name(text), RecordType::A), &names).unwrap();
        let answer = |id: u16, text: &str| {
            let mut answer = Message::response(id, OpCode::Query);
            answer.add_query(Query::query(name(text), RecordType::A));
            answer
        };
        let asker: SocketAddr = "127.0.0.1:5353".parse().unwrap();
        let start = Instant::now();
        let mut waiting = Waiting::default();
        let ask = |text: &str, asker_id: u16, at: Instant, waiting: &mut Waiting| {
            let sent = forward(allowed(text), asker, asker_id, waiting, at);
            assert!(matches!(sent, Ok(Some(_))), "{text} goes upstream");
        };

        // Sent three times (a retry a second or more apart each time), answered once: two more
        // answers are expected, for that question only.
        ask("thrice.example.test.", 1, start, &mut waiting);
        let id = *waiting.by_id.keys().next().unwrap();
        ask(
            "thrice.example.test.",
            1,
            start + RESEND_AFTER,
            &mut waiting,
        );
        ask(
            "thrice.example.test.",
            1,
            start + 2 * RESEND_AFTER,
            &mut waiting,
        );
        assert!(waiting.answered(id).is_some(), "its first answer");
        let late = answer(id, "THRICE.example.test.");
        assert!(
            !waiting.took_late(&answer(id, "other.example.test.")),
            "another question"
        );
        assert!(waiting.took_late(&late), "its second answer is expected");
        assert!(waiting.took_late(&late), "its third too");
        assert!(!waiting.took_late(&late), "a fourth is not");

        // Given up on after sending it once: its one answer is expected.
        ask("slow.example.test.", 2, start, &mut waiting);
        let id = *waiting.by_id.keys().next().unwrap();
        waiting.expire(start + UPSTREAM_WAIT);
        assert!(waiting.by_id.is_empty());
        let late = answer(id, "slow.example.test.");
        assert!(waiting.took_late(&late), "an answer after the wait");
        assert!(!waiting.took_late(&late), "one answer only");

        // Sent once and answered: nothing more is expected.
        ask("once.example.test.", 3, start, &mut waiting);
        let id = *waiting.by_id.keys().next().unwrap();
        waiting.answered(id);
        assert!(!waiting.took_late(&answer(id, "once.example.test.")));

        // Expected for `LATE_WINDOW` only.
        ask("forgotten.example.test.", 4, start, &mut waiting);
        let id = *waiting.by_id.keys().next().unwrap();
        waiting.expire(start + UPSTREAM_WAIT);
        waiting.expire(start + LATE_WINDOW);
        assert!(!waiting.took_late(&answer(id, "forgotten.example.test.")));

        let trust = UdpTrust::default();
        for _ in 1..UNWANTED_LIMIT {
            assert!(!trust.count());
        }
        assert!(!trust.distrusted());
        assert!(trust.count(), "the limit");
        assert!(!trust.count(), "reported once");
        assert!(trust.distrusted());
    }
}
