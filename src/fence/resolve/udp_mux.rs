//! A UDP transport for hickory-resolver that carries every query over a few long-lived sockets.
//!
//! hickory's own UDP transport opens, binds, registers and closes a socket for each query and
//! decodes each message several times. Resolving 1,000 names on a dual-stack network (2,000
//! queries, 20 ms answers, two cores) took about 205 ms with it and takes about 110 ms now
//! (`cordon plan -v` in the namespaces of bench/fence-startup.sh).
//!
//! Here each nameserver gets up to `MAX_SOCKETS` sockets, each bound to a port the kernel picks
//! and connected to the server. A query takes a random id not in flight on its socket and is
//! resent (same id) if unanswered, as hickory does; one receive task per socket hands a reply to
//! the query waiting for that id only if it comes from the server and asks the same question.
//! hickory keeps everything else: nameserver order, attempts, search domains, CNAMEs, TCP on
//! truncation.
//!
//! The trade-off: a forger must still guess port and id, as with hickory's sockets, but a port
//! now serves up to ~16 queries at once for the whole phase (about 0.1 s at 1,000 names) rather
//! than one query each, and comes from the kernel's ephemeral range rather than 1024-65535.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;
use hickory_resolver::config::{ConnectionConfig, ProtocolConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::xfer::DnsExchange;
use hickory_resolver::net::{DnsHandle, NetError};
use hickory_resolver::proto::op::{DnsRequest, DnsResponse, Query, DEFAULT_RETRY_FLOOR};
use hickory_resolver::{ConnectionProvider, PoolContext};
use tokio::net::UdpSocket;
use tokio::sync::oneshot;

/// Sockets per nameserver, at most.
const MAX_SOCKETS: usize = 32;
/// A new socket is opened once every open one has this many queries in flight. resolve.rs keeps
/// at most 512 queries in flight per runtime, so a socket holds about 16: their replies fit the
/// kernel's default receive buffer (208 kB) many times over, and a burst is never dropped.
const SPREAD_AT: usize = 16;
/// Times a query is sent before its exchange gives up, as in hickory's own UDP transport.
const SENDS: usize = 3;
/// Largest UDP reply read, as in hickory's own transport; hickory advertises a smaller EDNS
/// payload size, and a server with more to say sets the truncation bit (then hickory uses TCP).
const RECEIVE_BUFFER: usize = 4096;

/// hickory's default connections, except UDP, which goes through a [`Mux`] per nameserver.
#[derive(Clone, Default)]
pub struct MuxProvider {
    tokio: TokioRuntimeProvider,
    muxes: Arc<Mutex<HashMap<SocketAddr, Arc<Mux>>>>,
    refused: Refused,
}

/// The servers that answered with ICMP port unreachable: nothing listens there.
type Refused = Arc<Mutex<Vec<SocketAddr>>>;

impl MuxProvider {
    /// The nameservers that refused (ICMP port unreachable) some query so far.
    pub fn refused_servers(&self) -> Vec<SocketAddr> {
        self.refused.lock().expect("refused list poisoned").clone()
    }
}

impl ConnectionProvider for MuxProvider {
    type Conn = Connection;
    type FutureConn = Pin<Box<dyn Future<Output = Result<Connection, NetError>> + Send>>;
    type RuntimeProvider = TokioRuntimeProvider;

    fn new_connection(
        &self,
        ip: IpAddr,
        config: &ConnectionConfig,
        cx: &PoolContext,
    ) -> Result<Self::FutureConn, NetError> {
        if !matches!(config.protocol, ProtocolConfig::Udp) {
            let connecting = self.tokio.new_connection(ip, config, cx)?;
            return Ok(Box::pin(
                async move { Ok(Connection::Other(connecting.await?)) },
            ));
        }
        let server = SocketAddr::new(ip, config.port);
        let mux = Arc::clone(
            self.muxes
                .lock()
                .expect("mux map poisoned")
                .entry(server)
                .or_insert_with(|| Arc::new(Mux::reporting(server, Arc::clone(&self.refused)))),
        );
        let timeout = cx.options.timeout;
        Ok(Box::pin(
            async move { Ok(Connection::Udp { mux, timeout }) },
        ))
    }

    fn runtime_provider(&self) -> &TokioRuntimeProvider {
        &self.tokio
    }
}

#[derive(Clone)]
pub enum Connection {
    Udp { mux: Arc<Mux>, timeout: Duration },
    Other(DnsExchange<TokioRuntimeProvider>),
}

impl DnsHandle for Connection {
    type Response = Pin<Box<dyn Stream<Item = Result<DnsResponse, NetError>> + Send>>;
    type Runtime = TokioRuntimeProvider;

    fn send(&self, request: DnsRequest) -> Self::Response {
        match self {
            Connection::Udp { mux, timeout } => {
                let (mux, timeout) = (Arc::clone(mux), *timeout);
                Box::pin(OneReply(Some(Box::pin(async move {
                    mux.exchange(request, timeout).await
                }))))
            }
            Connection::Other(exchange) => Box::pin(exchange.send(request)),
        }
    }
}

type ReplyFuture = Pin<Box<dyn Future<Output = Result<DnsResponse, NetError>> + Send>>;

/// A stream of exactly one reply, as a UDP exchange gives.
struct OneReply(Option<ReplyFuture>);

impl Stream for OneReply {
    type Item = Result<DnsResponse, NetError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let Some(future) = self.0.as_mut() else {
            return Poll::Ready(None);
        };
        let reply = std::task::ready!(future.as_mut().poll(cx));
        self.0 = None;
        Poll::Ready(Some(reply))
    }
}

/// The sockets to one nameserver and the queries waiting on them.
pub struct Mux {
    server: SocketAddr,
    state: Mutex<State>,
    refused: Refused,
}

#[derive(Default)]
struct State {
    sockets: Vec<Arc<UdpSocket>>,
    in_flight: Vec<usize>,
    waiting: HashMap<(usize, u16), Waiter>,
}

struct Waiter {
    queries: Vec<Query>,
    /// Taken by the first reply that answers; the id stays reserved until the exchange ends.
    reply: Option<oneshot::Sender<Result<DnsResponse, NetError>>>,
}

/// One query's place on a socket: its id is reserved from registration until this is dropped,
/// however the exchange ends (reply, timeout, cancellation).
struct Registration<'a> {
    mux: &'a Mux,
    index: usize,
    id: u16,
    socket: Arc<UdpSocket>,
    reply: oneshot::Receiver<Result<DnsResponse, NetError>>,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        let mut state = self.mux.state.lock().expect("mux state poisoned");
        state.waiting.remove(&(self.index, self.id));
        state.in_flight[self.index] -= 1;
    }
}

impl Mux {
    #[cfg(test)]
    fn new(server: SocketAddr) -> Mux {
        Mux::reporting(server, Refused::default())
    }

    fn reporting(server: SocketAddr, refused: Refused) -> Mux {
        Mux {
            server,
            state: Mutex::new(State::default()),
            refused,
        }
    }

    /// Sends `request` and waits for its reply, sending it again (same id) every retry interval
    /// up to `SENDS` times, as hickory's own UDP transport does; `timeout` bounds it all.
    async fn exchange(
        self: Arc<Self>,
        mut request: DnsRequest,
        timeout: Duration,
    ) -> Result<DnsResponse, NetError> {
        let mut registration = self.register(&request)?;
        request.metadata.id = registration.id;
        let bytes = request.to_vec()?;
        let resend_every = request.options().retry_interval.max(DEFAULT_RETRY_FLOOR);
        let answered = async {
            for send in 1..=SENDS {
                let sent = registration.socket.send(&bytes).await?;
                if sent != bytes.len() {
                    return Err(NetError::from(format!(
                        "sent {sent} of {} bytes to {}",
                        bytes.len(),
                        self.server
                    )));
                }
                let wait = if send == SENDS { timeout } else { resend_every };
                if let Ok(reply) = tokio::time::timeout(wait, &mut registration.reply).await {
                    return reply
                        .map_err(|_| NetError::from("the DNS receive task stopped"))
                        .and_then(|answer| answer);
                }
            }
            Err(NetError::Timeout)
        };
        tokio::time::timeout(timeout, answered)
            .await
            .map_err(|_| NetError::Timeout)?
    }

    /// Picks a socket (opening one while all are busy) and an id not in flight on it.
    fn register(self: &Arc<Self>, request: &DnsRequest) -> Result<Registration<'_>, NetError> {
        let mut state = self.state.lock().expect("mux state poisoned");
        let least_busy = (0..state.sockets.len()).min_by_key(|&i| state.in_flight[i]);
        let index = match least_busy {
            Some(i) if state.in_flight[i] < SPREAD_AT || state.sockets.len() == MAX_SOCKETS => i,
            _ => {
                let socket = Arc::new(self.open_socket()?);
                let index = state.sockets.len();
                state.sockets.push(Arc::clone(&socket));
                state.in_flight.push(0);
                tokio::spawn(Arc::clone(self).receive(index, socket));
                index
            }
        };
        let id = loop {
            let id: u16 = rand::random();
            if !state.waiting.contains_key(&(index, id)) {
                break id;
            }
        };
        let (sender, reply) = oneshot::channel();
        let waiter = Waiter {
            queries: request.queries.clone(),
            reply: Some(sender),
        };
        state.waiting.insert((index, id), waiter);
        state.in_flight[index] += 1;
        Ok(Registration {
            mux: self,
            index,
            id,
            socket: Arc::clone(&state.sockets[index]),
            reply,
        })
    }

    fn open_socket(&self) -> io::Result<UdpSocket> {
        let any: IpAddr = match self.server {
            SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
            SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
        };
        let socket = std::net::UdpSocket::bind(SocketAddr::new(any, 0))?;
        socket.connect(self.server)?;
        socket.set_nonblocking(true)?;
        UdpSocket::from_std(socket)
    }

    /// Hands each reply on socket `index` to the query it answers; drops anything else.
    async fn receive(self: Arc<Self>, index: usize, socket: Arc<UdpSocket>) {
        let mut buffer = vec![0u8; RECEIVE_BUFFER];
        loop {
            let (length, from) = match socket.recv_from(&mut buffer).await {
                Ok(received) => received,
                // ICMP port unreachable: nothing listens on the server's port. Every query
                // waiting on this socket fails now rather than at its timeout, and hickory moves
                // on (to the next server, or TCP).
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    log::debug!("DNS socket to {}: {e}", self.server);
                    self.fail_all(index, &e);
                    continue;
                }
                // Another ICMP error for an earlier query: the queries resend, then time out.
                Err(e) => {
                    log::debug!("DNS socket to {}: {e}", self.server);
                    continue;
                }
            };
            // A connected socket only takes datagrams from the server, except any that arrived
            // between bind and connect; check the source as hickory does.
            let from_server = from.ip().to_canonical() == self.server.ip().to_canonical()
                && from.port() == self.server.port();
            if !from_server {
                continue;
            }
            let Some(id) = buffer[..length]
                .first_chunk::<2>()
                .map(|b| u16::from_be_bytes(*b))
            else {
                continue;
            };
            if !self.is_waiting(index, id) {
                continue;
            }
            let Ok(response) = DnsResponse::from_buffer(buffer[..length].to_vec()) else {
                log::debug!("undecodable reply from {} ignored", self.server);
                continue;
            };
            let mut state = self.state.lock().expect("mux state poisoned");
            let Some(waiter) = state.waiting.get_mut(&(index, id)) else {
                continue;
            };
            let answers_question = waiter.queries.len() == response.queries.len()
                && response.queries.iter().all(|q| waiter.queries.contains(q));
            if !answers_question {
                log::debug!("reply from {} with a foreign question ignored", self.server);
                continue;
            }
            if let Some(reply) = waiter.reply.take() {
                let _ = reply.send(Ok(response));
            }
        }
    }

    fn fail_all(&self, index: usize, error: &io::Error) {
        let mut refused = self.refused.lock().expect("refused list poisoned");
        if !refused.contains(&self.server) {
            refused.push(self.server);
        }
        drop(refused);
        let mut state = self.state.lock().expect("mux state poisoned");
        for ((on, _), waiter) in state.waiting.iter_mut() {
            if *on != index {
                continue;
            }
            if let Some(reply) = waiter.reply.take() {
                let _ = reply.send(Err(NetError::from(io::Error::new(
                    error.kind(),
                    error.to_string(),
                ))));
            }
        }
    }

    fn is_waiting(&self, index: usize, id: u16) -> bool {
        let state = self.state.lock().expect("mux state poisoned");
        state
            .waiting
            .get(&(index, id))
            .is_some_and(|waiter| waiter.reply.is_some())
    }
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket as StdUdpSocket;
    use std::sync::Arc;
    use std::time::Duration;

    use hickory_resolver::proto::op::{DnsRequestOptions, Message, OpCode};
    use hickory_resolver::proto::rr::rdata::A;
    use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};

    use super::*;

    fn request(name: &str) -> DnsRequest {
        let query = Query::query(Name::from_ascii(name).unwrap(), RecordType::A);
        DnsRequest::from_query(query, DnsRequestOptions::default())
    }

    /// A reply to `query_bytes` under message id `id`, answering `address`.
    fn reply(query_bytes: &[u8], id: u16, address: Ipv4Addr) -> Vec<u8> {
        let question = Message::from_vec(query_bytes).unwrap().queries[0].clone();
        let name = question.name().clone();
        let mut message = Message::response(id, OpCode::Query);
        message.add_query(question);
        message.add_answer(Record::from_rdata(name, 60, RData::A(A(address))));
        message.to_vec().unwrap()
    }

    fn answer(response: &DnsResponse) -> Ipv4Addr {
        match &response.answers[0].data {
            RData::A(A(address)) => *address,
            other => panic!("not an A record: {other:?}"),
        }
    }

    /// The address the fake server gives `nINDEX.test`.
    fn address_of(name: &str) -> Ipv4Addr {
        let index: u32 = name
            .trim_start_matches('n')
            .split('.')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        Ipv4Addr::from(0x0a00_0000 + index)
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn replies_reach_their_queries_whatever_the_order() {
        const QUERIES: usize = 600;
        const BATCH: usize = 50;
        let server = StdUdpSocket::bind("127.0.0.1:0").unwrap();
        let address = server.local_addr().unwrap();
        // Answers each batch of queries in reverse order; records the client ports seen.
        let serving = std::thread::spawn(move || {
            let mut ports = std::collections::HashSet::new();
            let mut buffer = [0u8; 512];
            for _ in 0..QUERIES / BATCH {
                let mut batch = Vec::new();
                while batch.len() < BATCH {
                    let (length, from) = server.recv_from(&mut buffer).unwrap();
                    ports.insert(from.port());
                    batch.push((buffer[..length].to_vec(), from));
                }
                for (query, from) in batch.into_iter().rev() {
                    let message = Message::from_vec(&query).unwrap();
                    let name = message.queries[0].name().to_ascii();
                    let bytes = reply(&query, message.metadata.id, address_of(&name));
                    server.send_to(&bytes, from).unwrap();
                }
            }
            ports
        });

        let mux = Arc::new(Mux::new(address));
        let answers = runtime().block_on(async {
            // At most 150 queries outstanding, so the server's receive buffer never overflows.
            let gate = Arc::new(tokio::sync::Semaphore::new(150));
            let mut tasks = tokio::task::JoinSet::new();
            for index in 0..QUERIES {
                let (mux, gate) = (Arc::clone(&mux), Arc::clone(&gate));
                tasks.spawn(async move {
                    let _turn = gate.acquire().await.unwrap();
                    let name = format!("n{index}.test.");
                    let response = mux.exchange(request(&name), Duration::from_secs(5)).await;
                    (name, answer(&response.unwrap()))
                });
            }
            tasks.join_all().await
        });
        assert_eq!(answers.len(), QUERIES);
        for (name, address) in answers {
            assert_eq!(address, address_of(&name), "{name}");
        }
        let ports = serving.join().unwrap();
        assert!(
            (2..=MAX_SOCKETS).contains(&ports.len()),
            "{} sockets",
            ports.len()
        );
        let state = mux.state.lock().unwrap();
        assert!(state.waiting.is_empty());
        assert!(state.in_flight.iter().all(|&n| n == 0));
    }

    #[test]
    fn forged_replies_are_ignored() {
        let server = StdUdpSocket::bind("127.0.0.1:0").unwrap();
        let forger = StdUdpSocket::bind("127.0.0.1:0").unwrap();
        let address = server.local_addr().unwrap();
        let real = Ipv4Addr::new(10, 0, 0, 1);
        let forged = Ipv4Addr::new(6, 6, 6, 6);
        let serving = std::thread::spawn(move || {
            let mut buffer = [0u8; 512];
            let (length, client) = server.recv_from(&mut buffer).unwrap();
            let query = &buffer[..length];
            let id = Message::from_vec(query).unwrap().metadata.id;
            // Right id and question, wrong source: the connected socket never delivers it.
            forger.send_to(&reply(query, id, forged), client).unwrap();
            // Right source and question, wrong id.
            server
                .send_to(&reply(query, id.wrapping_add(1), forged), client)
                .unwrap();
            // Right source and id, another question.
            let mut other = Message::from_vec(query).unwrap();
            other.queries[0] = Query::query(Name::from_ascii("evil.test.").unwrap(), RecordType::A);
            let other = other.to_vec().unwrap();
            server.send_to(&reply(&other, id, forged), client).unwrap();
            // Not DNS at all.
            server.send_to(&[0xde], client).unwrap();
            std::thread::sleep(Duration::from_millis(50));
            server.send_to(&reply(query, id, real), client).unwrap();
        });

        let mux = Arc::new(Mux::new(address));
        let response = runtime()
            .block_on(Arc::clone(&mux).exchange(request("a.test."), Duration::from_secs(5)))
            .unwrap();
        serving.join().unwrap();
        assert_eq!(answer(&response), real);
        assert_eq!(response.answers.len(), 1);
    }

    #[test]
    fn an_unanswered_query_times_out_and_gives_back_its_place() {
        let server = StdUdpSocket::bind("127.0.0.1:0").unwrap();
        let mux = Arc::new(Mux::new(server.local_addr().unwrap()));
        let result = runtime().block_on(
            Arc::clone(&mux).exchange(request("silent.test."), Duration::from_millis(50)),
        );
        assert!(matches!(result, Err(NetError::Timeout)), "{result:?}");
        let mut buffer = [0u8; 512];
        let (length, _) = server.recv_from(&mut buffer).unwrap();
        let asked = Message::from_vec(&buffer[..length]).unwrap();
        assert_eq!(asked.queries[0].name().to_ascii(), "silent.test.");
        let state = mux.state.lock().unwrap();
        assert!(state.waiting.is_empty());
        assert_eq!(state.in_flight, vec![0]);
    }

    #[test]
    fn a_port_nothing_listens_on_fails_the_query_at_once() {
        // A port that was just free: the kernel answers with ICMP port unreachable.
        let address = StdUdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let mux = Arc::new(Mux::new(address));
        let started = std::time::Instant::now();
        let result = runtime()
            .block_on(Arc::clone(&mux).exchange(request("gone.test."), Duration::from_secs(5)));
        let took = started.elapsed();
        let error = result.expect_err("nothing listens");
        assert!(
            error.to_string().to_lowercase().contains("refused"),
            "{error}"
        );
        assert!(took < Duration::from_secs(1), "took {took:?}");
    }

    #[test]
    fn a_lost_query_is_sent_again_with_the_same_id() {
        let server = StdUdpSocket::bind("127.0.0.1:0").unwrap();
        let address = server.local_addr().unwrap();
        let serving = std::thread::spawn(move || {
            let mut buffer = [0u8; 512];
            let (length, _) = server.recv_from(&mut buffer).unwrap();
            let first = Message::from_vec(&buffer[..length]).unwrap().metadata.id;
            // The first copy is "lost"; the resend is answered.
            let (length, client) = server.recv_from(&mut buffer).unwrap();
            let query = &buffer[..length];
            let second = Message::from_vec(query).unwrap().metadata.id;
            let real = Ipv4Addr::new(10, 0, 0, 1);
            server.send_to(&reply(query, second, real), client).unwrap();
            (first, second)
        });

        let mux = Arc::new(Mux::new(address));
        let started = std::time::Instant::now();
        let response = runtime()
            .block_on(Arc::clone(&mux).exchange(request("a.test."), Duration::from_secs(5)))
            .unwrap();
        let (first, second) = serving.join().unwrap();
        assert_eq!(first, second);
        assert_eq!(answer(&response), Ipv4Addr::new(10, 0, 0, 1));
        assert!(
            started.elapsed() >= DEFAULT_RETRY_FLOOR,
            "{:?}",
            started.elapsed()
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
}
