//! The gateway over TCP (RFC 7766: each message preceded by its 2-byte length): what stub
//! resolvers use when a UDP answer came back truncated. One thread per connection from the agent,
//! at most `MAX_CONNECTIONS` at once (more are closed at once); each question judged by `filter`
//! like over UDP, an allowlisted one sent upstream over a TCP connection of its own.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use hickory_resolver::proto::op::Message;

use super::filter::{
    answer_for_agent, judge_answer, judge_query, upstream_query, Event, Names, OwnNetworks,
    QueryVerdict,
};

/// Connections from the agent served at once.
pub const MAX_CONNECTIONS: usize = 64;
/// How long a connection may sit idle, and how long upstream may take.
const IDLE: Duration = Duration::from_secs(10);

/// Serves until `stop` is set (checked every 100 ms).
pub fn serve(
    agents: &TcpListener,
    upstream: SocketAddr,
    names: &Names,
    own: &OwnNetworks,
    report: &(dyn Fn(Event) + Sync),
    stop: &AtomicBool,
) -> io::Result<()> {
    agents.set_nonblocking(true)?;
    let active = AtomicUsize::new(0);
    std::thread::scope(|scope| -> io::Result<()> {
        while !stop.load(Ordering::Relaxed) {
            let stream = match agents.accept() {
                Ok((stream, _)) => stream,
                // Nothing pending, or the connection failed before it was taken (or out of
                // descriptors for now): wait for the next one.
                Err(_) => {
                    wait_for_connection(agents, 100)?;
                    continue;
                }
            };
            if active.fetch_add(1, Ordering::Relaxed) >= MAX_CONNECTIONS {
                active.fetch_sub(1, Ordering::Relaxed);
                continue;
            }
            let active = &active;
            scope.spawn(move || {
                let _ = connection(stream, upstream, names, own, report);
                active.fetch_sub(1, Ordering::Relaxed);
            });
        }
        Ok(())
    })
}

/// Waits until a connection is pending or `millis` passed.
fn wait_for_connection(listener: &TcpListener, millis: i32) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut fd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    if unsafe { libc::poll(&mut fd, 1, millis) } < 0 {
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
    Ok(())
}

/// Every question on one connection from the agent, until it closes or idles.
fn connection(
    mut stream: TcpStream,
    upstream: SocketAddr,
    names: &Names,
    own: &OwnNetworks,
    report: &(dyn Fn(Event) + Sync),
) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(IDLE))?;
    stream.set_write_timeout(Some(IDLE))?;
    while let Some(query) = read_message(&mut stream)? {
        let generation = names.generation();
        let allowed = match judge_query(&query, names) {
            QueryVerdict::Drop => return Ok(()),
            QueryVerdict::Answer(reply) => {
                write_message(&mut stream, &reply)?;
                continue;
            }
            QueryVerdict::Refused { reply, question } => {
                write_message(&mut stream, &reply)?;
                report(Event::Refused(&question));
                continue;
            }
            QueryVerdict::Forward(allowed) => allowed,
        };
        let asker_id = u16::from_be_bytes([query[0], query[1]]);
        let id: u16 = rand::random();
        let bytes = upstream_query(&allowed.question, id);
        let mut up = TcpStream::connect_timeout(&upstream, IDLE)?;
        up.set_read_timeout(Some(IDLE))?;
        up.set_write_timeout(Some(IDLE))?;
        write_message(&mut up, &bytes)?;
        let Some(answer) = read_message(&mut up)? else {
            return Ok(());
        };
        let wire = answer;
        let Ok(answer) = Message::from_vec(&wire) else {
            return Ok(());
        };
        if answer.metadata.id != id || answer.queries.first() != Some(&allowed.question) {
            return Ok(());
        }
        let verdict = judge_answer(&allowed, &answer, names, own);
        if !verdict.opened.is_empty() {
            report(Event::Opened {
                opened: &verdict.opened,
                judged_under: generation,
            });
        }
        report(Event::Answered(1));
        if let Some(reply) = answer_for_agent(&wire, answer, &allowed.question, asker_id, &verdict)
        {
            write_message(&mut stream, &reply)?;
        }
    }
    Ok(())
}

/// One length-prefixed message; `None` at a clean end of the stream.
fn read_message(stream: &mut TcpStream) -> io::Result<Option<Vec<u8>>> {
    let mut length = [0u8; 2];
    match stream.read_exact(&mut length) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut message = vec![0u8; usize::from(u16::from_be_bytes(length))];
    stream.read_exact(&mut message)?;
    Ok(Some(message))
}

fn write_message(stream: &mut TcpStream, message: &[u8]) -> io::Result<()> {
    let length = u16::try_from(message.len()).map_err(io::Error::other)?;
    let mut framed = Vec::with_capacity(message.len() + 2);
    framed.extend_from_slice(&length.to_be_bytes());
    framed.extend_from_slice(message);
    stream.write_all(&framed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::filter::names;
    use hickory_resolver::proto::op::{OpCode, Query, ResponseCode};
    use hickory_resolver::proto::rr::rdata::A;
    use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
    use std::str::FromStr;
    use std::sync::{Arc, Mutex};

    /// An upstream over TCP answering every question with one A record; logs the names.
    fn upstream(asked: Arc<Mutex<Vec<String>>>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                while let Ok(Some(query)) = read_message(&mut stream) {
                    let query = Message::from_vec(&query).unwrap();
                    let question = query.queries[0].clone();
                    asked.lock().unwrap().push(question.name.to_ascii());
                    let mut answer = Message::response(query.metadata.id, OpCode::Query);
                    answer.answers = vec![Record::from_rdata(
                        question.name.clone(),
                        300,
                        RData::A(A("192.0.2.20".parse().unwrap())),
                    )];
                    answer.add_query(question);
                    write_message(&mut stream, &answer.to_vec().unwrap()).unwrap();
                }
            }
        });
        addr
    }

    fn ask(stream: &mut TcpStream, text: &str) -> Message {
        let mut query = Message::query();
        query.metadata.id = 9;
        query.add_query(Query::query(Name::from_str(text).unwrap(), RecordType::A));
        write_message(stream, &query.to_vec().unwrap()).unwrap();
        let answer = Message::from_vec(&read_message(stream).unwrap().unwrap()).unwrap();
        assert_eq!(answer.metadata.id, 9);
        answer
    }

    #[test]
    fn over_tcp_only_allowlisted_questions_reach_upstream() {
        let asked = Arc::new(Mutex::new(Vec::new()));
        let resolver = upstream(Arc::clone(&asked));
        let agents = TcpListener::bind("127.0.0.1:0").unwrap();
        let gateway = agents.local_addr().unwrap();
        let opened: Arc<Mutex<Vec<super::super::filter::Opened>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let server = {
            let (opened, stop) = (Arc::clone(&opened), Arc::clone(&stop));
            std::thread::spawn(move || {
                let allowed = names(&["*.example.test"]);
                let open = |event: Event| {
                    if let Event::Opened { opened: found, .. } = event {
                        opened.lock().unwrap().extend_from_slice(found)
                    }
                };
                serve(
                    &agents,
                    resolver,
                    &allowed,
                    &OwnNetworks::default(),
                    &open,
                    &stop,
                )
            })
        };
        let mut stream = TcpStream::connect(gateway).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let refused = ask(&mut stream, "evil.test.");
        assert_eq!(refused.metadata.response_code, ResponseCode::Refused);
        // The same connection goes on after a refusal.
        let answer = ask(&mut stream, "a.example.test.");
        assert_eq!(answer.answers.len(), 1);
        assert_eq!(opened.lock().unwrap()[0].addr.to_string(), "192.0.2.20");
        drop(stream);
        stop.store(true, Ordering::Relaxed);
        server.join().unwrap().unwrap();
        assert_eq!(*asked.lock().unwrap(), ["a.example.test."]);
    }
}
