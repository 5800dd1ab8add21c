//! Entry points for `bench/fuzz.rs`: every parser that reads what the agent (or an image) can
//! write, called with arbitrary input. Each returns normally or with an error; a panic is a bug.

use crate::agent::user;
use crate::fence::{policy, resolv_conf};
use crate::gateway::filter::{self, Names, OwnNetworks};
use hickory_resolver::proto::op::{Message, Query};
use hickory_resolver::proto::rr::{Name, RecordType};

/// The names the gateway targets use.
pub fn gateway_names() -> Names {
    Names::from_policy(&policy::Policy::of(
        &["api.example.test:443", "*.cdn.test", "10.0.0.0/8:5432"],
        "fuzz",
    ))
}

/// A message from the agent to the gateway.
pub fn gateway_query(wire: &[u8], names: &Names) {
    if let filter::QueryVerdict::Forward(allowed) = filter::judge_query(wire, names) {
        let name = &allowed.question.name;
        assert!(names.allows(name), "forwarded a name not allowed");
    }
}

/// An upstream answer to an allowlisted question.
pub fn gateway_answer(wire: &[u8], names: &Names) {
    let question = Query::query(
        Name::from_ascii("api.example.test.").expect("a valid name"),
        RecordType::A,
    );
    let allowed = filter::Allowed::judge(question.clone(), names).expect("an allowlisted name");
    if let Ok(answer) = Message::from_vec(wire) {
        let verdict = filter::judge_answer(&allowed, &answer, names, &OwnNetworks::default());
        for opened in &verdict.opened {
            assert!(
                crate::fence::resolve::may_be_opened_by_name(opened.addr),
                "opened {}",
                opened.addr
            );
        }
        let _ = filter::answer_for_agent(wire, answer, &question, 1, &verdict);
    }
}

/// One allowlist entry, as a line of an allowlist file.
pub fn allowlist_entry(text: &str) {
    let _ = policy::parse_entry(text);
}

/// A resolv.conf.
pub fn resolv_conf(text: &str) {
    let _ = resolv_conf::parse(text, "fuzz");
}

/// /etc/passwd and /etc/group.
pub fn passwd(text: &str) {
    let _ = user::parse_passwd(text, "fuzz");
    let _ = user::parse_group(text, "fuzz");
}

/// A rejected packet's headers as NFLOG hands them to the gateway (the agent chose the packet).
pub fn rejected_packet(bytes: &[u8]) {
    if let Some((_, dst)) = crate::sys::nflog::destination(bytes) {
        let log = crate::gateway::block_log::BlockLog::new(None, false);
        log.rejected(bytes.first().copied().unwrap_or(6), dst, None);
    }
}

/// The block log's table as `cordon blocked` reads it back.
pub fn blocked_table(text: &str) {
    let _ = crate::gateway::block_log::parse_table(text);
}

/// A request from the agent to the credential gateway: the first line a request target, each
/// further line `name: value`. Whatever it carries, what goes upstream has the real credential
/// alone, in the one header its kind takes, and the upstream's Host.
pub fn credential_request(bytes: &[u8]) {
    use crate::credential::{proxy, Credential, Kind, Upstream};
    let text = String::from_utf8_lossy(bytes);
    let mut lines = text.lines();
    let mut builder = hyper::Request::post(lines.next().unwrap_or("/"));
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            builder = builder.header(name.trim(), value.trim());
        }
    }
    let Ok(request) = builder.body(()) else {
        return;
    };
    let (parts, ()) = request.into_parts();
    let upstream = Upstream::parse("https://api.example.test/prefix", "fuzz").expect("an upstream");
    for kind in [Kind::ApiKey, Kind::OAuthToken] {
        let credential = Credential::new(kind, "real-secret", "fuzz");
        let mut parts = parts.clone();
        if proxy::rewrite_request(&mut parts, &upstream, &credential).is_err() {
            continue;
        }
        let h = &parts.headers;
        let (carrier, other, value) = match kind {
            Kind::ApiKey => ("x-api-key", "authorization", "real-secret"),
            _ => ("authorization", "x-api-key", "Bearer real-secret"),
        };
        let carried: Vec<_> = h.get_all(carrier).iter().collect();
        assert!(carried.len() == 1 && carried[0] == value, "{carried:?}");
        assert!(
            !h.contains_key(other),
            "another credential header went along"
        );
        assert_eq!(h.get_all("host").iter().count(), 1);
        assert_eq!(h["host"], "api.example.test");
        assert!(parts.uri.path().starts_with("/prefix"), "{}", parts.uri);
    }
}
