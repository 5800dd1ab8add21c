//! The gateway over TCP (RFC 7766: each message preceded by its 2-byte length): what stub
//! resolvers use when a UDP answer came back truncated. One thread per connection from the agent,
//! at most `MAX_CONNECTIONS` at once (more are closed at once); each question judged by `filter`
//! like over UDP, an allowlisted one sent upstream over a TCP connection of its own.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hickory_resolver::proto::op::Message;

use super::filter::{
    answer_for_agent, judge_answer, judge_query, upstream_query, Event, Names, OwnNetworks,
    QueryVerdict,
};

/// Connections from the agent served at once.
pub const MAX_CONNECTIONS: usize = 64;
/// How long a whole message may take to arrive (from the agent, after its last one; from
/// upstream, after the question), so that a trickle of bytes does not hold a connection.
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
                let _ = connection(stream, upstream, names, own, report, IDLE);
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

/// Every question on one connection from the agent, until it closes or a message takes longer
/// than `idle`.
fn connection(
    mut stream: TcpStream,
    upstream: SocketAddr,
    names: &Names,
    own: &OwnNetworks,
    report: &(dyn Fn(Event) + Sync),
    idle: Duration,
) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_write_timeout(Some(idle))?;
    while let Some(query) = read_message(&mut stream, idle)? {
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
        let mut up = TcpStream::connect_timeout(&upstream, idle)?;
        up.set_write_timeout(Some(idle))?;
        write_message(&mut up, &bytes)?;
        let Some(answer) = read_message(&mut up, idle)? else {
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

/// One length-prefixed message, whole within `within`; `None` at a clean end of the stream.
fn read_message(stream: &mut TcpStream, within: Duration) -> io::Result<Option<Vec<u8>>> {
    let deadline = Instant::now() + within;
    let mut length = [0u8; 2];
    match read_by(stream, &mut length, deadline) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut message = vec![0u8; usize::from(u16::from_be_bytes(length))];
    read_by(stream, &mut message, deadline)?;
    Ok(Some(message))
}

/// Fills `buffer` from `stream` by `deadline` (a timeout per read would let each byte that
/// arrives in time start the wait again).
fn read_by(stream: &mut TcpStream, buffer: &mut [u8], deadline: Instant) -> io::Result<()> {
    let mut filled = 0;
    while filled < buffer.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut buffer[filled..]) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(read) => filled += read,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // A read timeout comes back as EAGAIN.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(io::ErrorKind::TimedOut.into())
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
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
                while let Ok(Some(query)) = read_message(&mut stream, IDLE) {
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
        let answer = Message::from_vec(&read_message(stream, IDLE).unwrap().unwrap()).unwrap();
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

    #[test]
    fn a_message_that_trickles_in_does_not_hold_its_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (stream, _) = listener.accept().unwrap();
        let idle = Duration::from_millis(500);
        let served = std::thread::spawn(move || {
            let started = Instant::now();
            let allowed = names(&["*.example.test"]);
            let resolver = "127.0.0.1:9".parse().unwrap();
            let outcome = connection(
                stream,
                resolver,
                &allowed,
                &OwnNetworks::default(),
                &|_| {},
                idle,
            );
            (outcome.map_err(|e| e.kind()), started.elapsed())
        });
        // A length of 40, then a byte every 100 ms: each arrives well within `idle` of the last.
        client.write_all(&[0, 40]).unwrap();
        for _ in 0..30 {
            std::thread::sleep(Duration::from_millis(100));
            if client.write_all(&[0]).is_err() || served.is_finished() {
                break;
            }
        }
        let (outcome, took) = served.join().unwrap();
        assert_eq!(outcome, Err(io::ErrorKind::TimedOut));
        assert!(took < Duration::from_millis(900), "held for {took:?}");
    }
}
