//! Answers the gateway passed on, kept for their TTL: a question asked again is answered from
//! here, with no round trip upstream and, mostly, no set update.
//!
//! What keeps a cached answer honest about the fence:
//! - its lifetime is the smallest TTL of its records, at most `TTL_CEILING`, and it is served
//!   only while `MARGIN` of that remains, with every TTL counted down and none beyond the
//!   lifetime: an asker never hears an address is good for longer than the sets hold it (each
//!   address went in for its record's TTL clamped to [`TTL_FLOOR`, `TTL_CEILING`]);
//! - a hit re-adds the answer's addresses once `REFRESH` (half `TTL_FLOOR`) has passed since
//!   they were last added, so at every hit the sets hold them for `REFRESH` more (also where
//!   the gateway has forgotten an address, and with it the time an answer gave it, `control`);
//! - any change to the allowlist (`cordon allow`, `cordon deny`) empties the cache (`Names`
//!   counts changes), so a denied name is never answered from here.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_resolver::proto::op::{Message, Query, ResponseCode};
use hickory_resolver::proto::rr::{Name, RecordType};

use super::filter::{Allowed, Opened, TTL_CEILING, TTL_FLOOR};

/// Answers kept at most (per loop); past that, the older half goes.
pub const MAX_ENTRIES: usize = 1024;
/// An answer is served from here only while this much of its lifetime remains.
const MARGIN: Duration = Duration::from_secs(2);
/// Answers that live shorter than this are not kept.
const SHORTEST: Duration = Duration::from_secs(5);
/// A hit re-adds the answer's addresses to the sets when they went in this long ago.
const REFRESH: Duration = Duration::from_secs(TTL_FLOOR.as_secs() / 2);

#[derive(Default)]
pub struct AnswerCache {
    /// By the name as the allowlist writes it (`Allowed::name`, judged with the question: lower
    /// case, one entry for every spelling; a `str` hashes in one go, a `Name` byte by byte) and
    /// the record type.
    entries: HashMap<(Arc<str>, RecordType), Entry>,
    /// The allowlist's change count the entries were judged under.
    generation: u64,
}

struct Entry {
    /// The answer as the agent got it (only the addresses it opened).
    wire: Vec<u8>,
    stored: Instant,
    lifetime: Duration,
    opened: Vec<Opened>,
    /// When its addresses last went into the sets.
    added: Instant,
    /// The last reply built from it: askers in the same second, spelling the name the same
    /// way, get the same bytes under their own id.
    last_reply: Option<(u64, Name, Vec<u8>)>,
}

/// A cached answer for one asker, and the addresses to add to the sets again before it goes
/// out (empty unless `REFRESH` has passed).
pub struct Hit {
    pub reply: Vec<u8>,
    pub reopen: Vec<Opened>,
}

/// How long `answer` may be served from the cache; None for one not worth keeping (an error,
/// no records, truncated, or too short-lived).
pub fn lifetime(answer: &Message) -> Option<Duration> {
    if answer.metadata.response_code != ResponseCode::NoError
        || answer.metadata.truncation
        || answer.answers.is_empty()
    {
        return None;
    }
    let shortest = answer.answers.iter().map(|record| record.ttl).min()?;
    let lifetime = Duration::from_secs(shortest.into()).min(TTL_CEILING);
    (lifetime >= SHORTEST).then_some(lifetime)
}

/// The cached answer `wire` for `question` as its asker spells it, every TTL at most
/// `remaining`.
fn reply(wire: &[u8], question: &Query, remaining: u32) -> Option<Vec<u8>> {
    let mut reply = Message::from_vec(wire).ok()?;
    reply.queries = vec![question.clone()];
    for record in reply
        .answers
        .iter_mut()
        .chain(reply.authorities.iter_mut())
        .chain(reply.additionals.iter_mut())
    {
        record.ttl = record.ttl.min(remaining);
    }
    reply.to_vec().ok().filter(|bytes| bytes.len() >= 2)
}

impl AnswerCache {
    /// The cached answer to the question `asked` under the asker's id, if one is fresh enough.
    /// Entries judged under another `generation` of the allowlist are dropped first.
    pub fn lookup(
        &mut self,
        asked: &Allowed,
        asker_id: u16,
        generation: u64,
        now: Instant,
    ) -> Option<Hit> {
        self.follow(generation);
        let question = &asked.question;
        let key = (Arc::clone(&asked.name), question.query_type);
        let entry = self.entries.get_mut(&key)?;
        let age = now.saturating_duration_since(entry.stored);
        if age + MARGIN > entry.lifetime {
            self.entries.remove(&key);
            return None;
        }
        let second = age.as_secs();
        let reusable =
            |(at, name, _): &(u64, Name, Vec<u8>)| *at == second && name.eq_case(&question.name);
        if !entry.last_reply.as_ref().is_some_and(reusable) {
            let remaining = (entry.lifetime - age).as_secs() as u32;
            entry.last_reply = Some((
                second,
                question.name.clone(),
                reply(&entry.wire, question, remaining)?,
            ));
        }
        let (_, _, bytes) = entry.last_reply.as_ref()?;
        let mut reply = bytes.clone();
        reply[..2].copy_from_slice(&asker_id.to_be_bytes());
        let mut reopen = Vec::new();
        if now.saturating_duration_since(entry.added) >= REFRESH {
            entry.added = now;
            reopen = entry
                .opened
                .iter()
                .map(|found| Opened {
                    timeout: found.timeout.saturating_sub(age).max(TTL_FLOOR),
                    ..found.clone()
                })
                .collect();
        }
        Some(Hit { reply, reopen })
    }

    /// Keeps the answer (`wire`, as the agent got it) to `asked` for `lifetime`; `opened`
    /// went into the sets just now. `generation` is the allowlist's change count read before
    /// the answer was judged: if it changed since, the answer is not kept.
    pub fn store(
        &mut self,
        asked: &Allowed,
        wire: &[u8],
        lifetime: Duration,
        opened: &[Opened],
        generation: u64,
        now: Instant,
    ) {
        self.follow(generation);
        if generation != self.generation {
            return;
        }
        if self.entries.len() >= MAX_ENTRIES {
            self.make_room(now);
        }
        self.entries.insert(
            (Arc::clone(&asked.name), asked.question.query_type),
            Entry {
                wire: wire.to_vec(),
                stored: now,
                lifetime,
                opened: opened.to_vec(),
                added: now,
                last_reply: None,
            },
        );
    }

    /// Drops the answers that ran out and, if that freed less than half, the half stored
    /// longest ago: once per `MAX_ENTRIES / 2` new answers at most.
    fn make_room(&mut self, now: Instant) {
        self.entries.retain(|_, entry| {
            now.saturating_duration_since(entry.stored) + MARGIN <= entry.lifetime
        });
        if self.entries.len() > MAX_ENTRIES / 2 {
            let mut times: Vec<Instant> = self.entries.values().map(|entry| entry.stored).collect();
            let middle = times.len() / 2;
            let cut = *times.select_nth_unstable(middle).1;
            self.entries.retain(|_, entry| entry.stored > cut);
        }
    }

    /// Empties the cache when the allowlist changed after its entries were judged.
    fn follow(&mut self, generation: u64) {
        if generation > self.generation {
            self.entries.clear();
            self.generation = generation;
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fence::policy::Ports;
    use hickory_resolver::proto::op::OpCode;
    use hickory_resolver::proto::rr::rdata::A;
    use hickory_resolver::proto::rr::{RData, Record};
    use std::str::FromStr;

    /// `name` as the gateway forwards it, judged under an allowlist holding every `.test` name.
    fn asked_for(name: &str) -> Allowed {
        Allowed::judge(question(name), &crate::gateway::filter::names(&["*.test"])).unwrap()
    }

    fn question(name: &str) -> Query {
        // from_ascii keeps the case (from_str lowercases).
        Query::query(Name::from_ascii(name).unwrap(), RecordType::A)
    }

    fn answer(name: &str, ttl: u32) -> Message {
        let mut answer = Message::response(1, OpCode::Query);
        answer.add_query(question(name));
        answer.add_answer(Record::from_rdata(
            Name::from_str(name).unwrap(),
            ttl,
            RData::A(A([192, 0, 2, 1].into())),
        ));
        answer
    }

    fn opened(ttl: u64) -> Opened {
        Opened {
            name: "api.example.test".into(),
            addr: [192, 0, 2, 1].into(),
            ports: vec![Ports::Any].into(),
            timeout: Duration::from_secs(ttl).clamp(TTL_FLOOR, TTL_CEILING),
        }
    }

    fn reply_ttl(hit: &Hit) -> (u16, String, u32) {
        let reply = Message::from_vec(&hit.reply).unwrap();
        (
            reply.metadata.id,
            reply.queries[0].name.to_string(),
            reply.answers[0].ttl,
        )
    }

    #[test]
    fn an_answer_is_served_with_its_ttl_counted_down_until_the_margin() {
        let mut cache = AnswerCache::default();
        let t0 = Instant::now();
        let stored = answer("api.example.test.", 30);
        let lifetime = lifetime(&stored).unwrap();
        let q = asked_for("api.example.test.");
        cache.store(
            &q,
            &stored.to_vec().unwrap(),
            lifetime,
            &[opened(30)],
            0,
            t0,
        );

        let asked = asked_for("API.Example.Test.");
        let hit = cache
            .lookup(&asked, 77, 0, t0 + Duration::from_secs(10))
            .unwrap();
        assert_eq!(reply_ttl(&hit), (77, "API.Example.Test.".into(), 20));
        assert!(hit.reopen.is_empty(), "added 10 s ago: no refresh yet");

        assert!(cache
            .lookup(&q, 1, 0, t0 + Duration::from_secs(28))
            .is_some());
        assert!(
            cache
                .lookup(&q, 1, 0, t0 + Duration::from_secs(29))
                .is_none(),
            "less than the margin left"
        );
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn no_ttl_outlives_the_ceiling_and_hits_refresh_the_sets_every_half_floor() {
        let mut cache = AnswerCache::default();
        let t0 = Instant::now();
        let stored = answer("api.example.test.", 86_400);
        let lifetime = lifetime(&stored).unwrap();
        assert_eq!(lifetime, TTL_CEILING);
        let q = asked_for("api.example.test.");
        cache.store(
            &q,
            &stored.to_vec().unwrap(),
            lifetime,
            &[opened(86_400)],
            0,
            t0,
        );

        let at = |secs| t0 + Duration::from_secs(secs);
        let hit = cache.lookup(&q, 1, 0, at(100)).unwrap();
        assert_eq!(reply_ttl(&hit).2, 3500, "the ceiling, counted down");
        assert_eq!(hit.reopen.len(), 1, "added 100 s ago");
        assert_eq!(hit.reopen[0].timeout, Duration::from_secs(3500));
        assert!(cache.lookup(&q, 1, 0, at(120)).unwrap().reopen.is_empty());
        let late = cache.lookup(&q, 1, 0, at(3590)).unwrap();
        assert_eq!(late.reopen[0].timeout, TTL_FLOOR, "never below the floor");
    }

    #[test]
    fn a_change_to_the_allowlist_empties_it_and_an_answer_judged_before_is_not_kept() {
        let mut cache = AnswerCache::default();
        let t0 = Instant::now();
        let stored = answer("api.example.test.", 300);
        let wire = stored.to_vec().unwrap();
        let q = asked_for("api.example.test.");
        cache.store(&q, &wire, lifetime(&stored).unwrap(), &[opened(300)], 0, t0);
        assert!(cache.lookup(&q, 1, 0, t0).is_some());
        assert!(cache.lookup(&q, 1, 1, t0).is_none(), "allowlist changed");

        cache.store(&q, &wire, lifetime(&stored).unwrap(), &[opened(300)], 0, t0);
        assert!(
            cache.lookup(&q, 1, 1, t0).is_none(),
            "judged under the old allowlist"
        );
    }

    #[test]
    fn errors_empty_truncated_and_short_lived_answers_are_not_kept() {
        assert!(lifetime(&answer("a.test.", 4)).is_none());
        assert!(lifetime(&answer("a.test.", 5)).is_some());
        let mut empty = answer("a.test.", 60);
        empty.answers.clear();
        assert!(lifetime(&empty).is_none());
        let mut truncated = answer("a.test.", 60);
        truncated.metadata.truncation = true;
        assert!(lifetime(&truncated).is_none());
        let mut failed = answer("a.test.", 60);
        failed.metadata.response_code = ResponseCode::ServFail;
        assert!(lifetime(&failed).is_none());
    }

    #[test]
    fn it_stays_bounded_under_a_flood_of_names_and_keeps_the_latest() {
        let mut cache = AnswerCache::default();
        let t0 = Instant::now();
        let keep = |cache: &mut AnswerCache, name: &str, at: Instant| {
            let stored = answer(name, 60);
            let wire = stored.to_vec().unwrap();
            cache.store(
                &asked_for(name),
                &wire,
                lifetime(&stored).unwrap(),
                &[],
                0,
                at,
            );
        };
        let last = MAX_ENTRIES + 99;
        for i in 0..=last {
            let at = t0 + Duration::from_millis(i as u64);
            keep(&mut cache, &format!("n{i}.example.test."), at);
            assert!(cache.len() <= MAX_ENTRIES);
        }
        let at = t0 + Duration::from_millis(last as u64);
        let latest = asked_for(&format!("n{last}.example.test."));
        assert!(
            cache.lookup(&latest, 1, 0, at).is_some(),
            "the latest is kept"
        );
        assert!(cache
            .lookup(&asked_for("n0.example.test."), 1, 0, at)
            .is_none());

        // Past their lifetime, the ones that ran out make room.
        let later = t0 + Duration::from_secs(100);
        for i in 0..=MAX_ENTRIES / 2 {
            keep(&mut cache, &format!("late{i}.example.test."), later);
        }
        assert_eq!(cache.len(), MAX_ENTRIES / 2 + 1);
    }
}
