//! `testkit mock-api`: an HTTP/1.1 mock of the Anthropic Messages API, enough for the real
//! Claude Code CLI (`ANTHROPIC_BASE_URL=http://HOST:PORT`, or https with `--tls-cert/--tls-key`).
//! Thread per connection, keep-alive. Each request's log line names its `anthropic-beta` list and
//! the credential it carried (`cred=x-api-key:VALUE` / `cred=bearer:VALUE` / `cred=none`); with `--expect-credential-file`
//! (credentials one per line in a file, not on a command line everyone can read) any other
//! gets 401, as from the real API. For the gateway's tests and bench: `GET
//! /v1/models/testkit-sse?events=N&interval_ms=M` (N events, M ms apart, each with the send
//! time), `GET /v1/models/testkit-download?bytes=N`, and `POST /v1/messages/count_tokens`
//! answers the body's length too (paths the credential gateway forwards).

use std::io::{self, BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;

use crate::net;
use crate::util::{fail, usage_error, write_ready, Args, Log};

const USAGE: &str = "usage: testkit mock-api --listen IP:PORT [--log FILE] [--reply TEXT] \
[--ready-file FILE] [--tls-cert PEM --tls-key PEM] [--expect-credential-file FILE]";

struct Opts {
    listen: SocketAddr,
    log: Option<String>,
    reply: String,
    ready_file: Option<String>,
    tls: Option<(String, String)>,
    expect_credentials: Option<Vec<String>>,
}

fn parse(args: &[String]) -> Result<Opts, String> {
    let (mut listen, mut log, mut reply, mut ready_file) = (None, None, "pong".to_string(), None);
    let (mut cert, mut key, mut expect_credentials) = (None, None, None);
    let mut a = Args::new(args);
    while let Some(flag) = a.next() {
        match flag {
            "--listen" => listen = Some(a.parse(flag)?),
            "--log" => log = Some(a.value(flag)?.to_string()),
            "--reply" => reply = a.value(flag)?.to_string(),
            "--ready-file" => ready_file = Some(a.value(flag)?.to_string()),
            "--tls-cert" => cert = Some(a.value(flag)?.to_string()),
            "--tls-key" => key = Some(a.value(flag)?.to_string()),
            "--expect-credential-file" => {
                let path = a.value(flag)?;
                let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
                expect_credentials = Some(text.split_whitespace().map(String::from).collect());
            }
            _ => return Err(format!("unknown argument {flag:?}")),
        }
    }
    let tls = match (cert, key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        _ => return Err("--tls-cert and --tls-key go together".into()),
    };
    Ok(Opts {
        listen: listen.ok_or("--listen is needed")?,
        log,
        reply,
        ready_file,
        tls,
        expect_credentials,
    })
}

pub fn main(args: &[String]) -> i32 {
    match parse(args) {
        Ok(o) => serve(o).map_or_else(|e| fail("mock-api", e), |()| 0),
        Err(e) => usage_error(USAGE, &e),
    }
}

struct State {
    log: Log,
    reply: String,
    next_id: AtomicU64,
    expect_credentials: Option<Vec<String>>,
}

fn tls_config(cert: &str, key: &str) -> io::Result<Arc<rustls::ServerConfig>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let other = |e: &dyn std::fmt::Display| io::Error::other(e.to_string());
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| other(&e))?
        .collect::<Result<_, _>>()
        .map_err(|e| other(&e))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| other(&e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| other(&e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| other(&e))?;
    Ok(Arc::new(config))
}

fn serve(o: Opts) -> io::Result<()> {
    let listener = net::bind_tcp(&o.listen)?;
    let tls = match &o.tls {
        Some((cert, key)) => Some(tls_config(cert, key)?),
        None => None,
    };
    let st = Arc::new(State {
        log: Log::open_or(o.log.as_deref(), Log::none)?,
        reply: o.reply,
        next_id: 0.into(),
        expect_credentials: o.expect_credentials,
    });
    write_ready(
        o.ready_file.as_deref(),
        &[format!("tcp {}", listener.local_addr()?)],
    )?;
    for s in listener.incoming().flatten() {
        // Headers and body go in separate writes: without this, Nagle holds the second until
        // the client's delayed ACK (40 ms per response).
        let _ = s.set_nodelay(true);
        let (st, tls) = (st.clone(), tls.clone());
        thread::spawn(move || {
            let _ = match tls {
                Some(config) => rustls::ServerConnection::new(config)
                    .map_err(io::Error::other)
                    .and_then(|conn| {
                        let stream = rustls::StreamOwned::new(conn, s);
                        connection(Shared::new(stream), &st)
                    }),
                None => connection(Shared::new(s), &st),
            };
        });
    }
    Ok(())
}

struct Request {
    method: String,
    target: String,
    version: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn keep_alive(&self) -> bool {
        let conn = self.header("connection").unwrap_or("").to_ascii_lowercase();
        if self.version == "HTTP/1.0" {
            conn.contains("keep-alive")
        } else {
            !conn.contains("close")
        }
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

fn read_line(r: &mut impl BufRead) -> io::Result<String> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

/// Reads one request (None at a clean end of the connection), answering `Expect: 100-continue`.
fn read_request(r: &mut impl BufRead, w: &mut impl Write) -> io::Result<Option<Request>> {
    let mut line = String::new();
    while line.trim().is_empty() {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Ok(None);
        }
    }
    let mut parts = line.split_whitespace().map(str::to_string);
    let (method, target, version) = match (parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(t), Some(v)) => (m, t, v),
        _ => return Err(invalid("bad request line")),
    };
    let mut headers = Vec::new();
    loop {
        let h = read_line(r)?;
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':').ok_or_else(|| invalid("bad header"))?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let mut req = Request {
        method,
        target,
        version,
        headers,
        body: Vec::new(),
    };
    if req
        .header("expect")
        .is_some_and(|e| e.eq_ignore_ascii_case("100-continue"))
    {
        w.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        w.flush()?;
    }
    if req
        .header("transfer-encoding")
        .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"))
    {
        loop {
            let size_line = read_line(r)?;
            let size = size_line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size, 16).map_err(|_| invalid("bad chunk size"))?;
            if size == 0 {
                while !read_line(r)?.is_empty() {} // trailers
                break;
            }
            let at = req.body.len();
            req.body.resize(at + size, 0);
            r.read_exact(&mut req.body[at..])?;
            read_line(r)?;
        }
    } else if let Some(len) = req.header("content-length") {
        let len: usize = len.parse().map_err(|_| invalid("bad content-length"))?;
        req.body.resize(len, 0);
        r.read_exact(&mut req.body)?;
    }
    Ok(Some(req))
}

/// One stream read through a buffer and written directly (a TLS stream cannot be cloned).
/// Read and written by one thread in turn (request, then response), so the lock never waits.
struct Shared<S>(Arc<std::sync::Mutex<S>>);

impl<S> Clone for Shared<S> {
    fn clone(&self) -> Self {
        Shared(self.0.clone())
    }
}

impl<S> Shared<S> {
    fn new(stream: S) -> Self {
        Shared(Arc::new(std::sync::Mutex::new(stream)))
    }
}

impl<S: io::Read> io::Read for Shared<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).read(buf)
    }
}

impl<S: Write> Write for Shared<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).flush()
    }
}

fn connection<S: io::Read + Write>(s: Shared<S>, st: &State) -> io::Result<()> {
    let mut r = BufReader::new(s.clone());
    let mut w = s;
    while let Some(req) = read_request(&mut r, &mut w)? {
        respond(&req, &mut w, st)?;
        if !req.keep_alive() {
            break;
        }
    }
    Ok(())
}

/// `s` as a JSON string literal.
fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The raw JSON text after `"key":` (whitespace skipped), found by plain string search.
fn json_value<'a>(body: &'a str, key: &str) -> Option<&'a str> {
    let at = body.find(&format!("\"{key}\""))? + key.len() + 2;
    Some(body[at..].trim_start().strip_prefix(':')?.trim_start())
}

/// The string value of `key` as it appears in the JSON text (still escaped, quotes dropped).
fn json_string_field<'a>(body: &'a str, key: &str) -> Option<&'a str> {
    let v = json_value(body, key)?.strip_prefix('"')?;
    let mut escaped = false;
    let end = v.char_indices().find(|&(_, c)| {
        let end = c == '"' && !escaped;
        escaped = c == '\\' && !escaped;
        end
    })?;
    Some(&v[..end.0])
}

fn send(w: &mut impl Write, req: &Request, status: &str, body: &str) -> io::Result<()> {
    let conn = if req.keep_alive() {
        "keep-alive"
    } else {
        "close"
    };
    write!(
        w,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
request-id: req_testkit\r\nConnection: {conn}\r\n\r\n",
        body.len()
    )?;
    if req.method != "HEAD" {
        w.write_all(body.as_bytes())?;
    }
    w.flush()
}

/// The streaming answer: the Messages API's SSE event sequence, one HTTP chunk per event.
fn sse_events(id: &str, model: &str, reply: &str) -> Vec<(&'static str, String)> {
    let text = json_str(reply);
    vec![
        (
            "message_start",
            format!(
                r#"{{"type":"message_start","message":{{"id":"{id}","type":"message","role":"assistant","model":"{model}","content":[],"stop_reason":null,"stop_sequence":null,"usage":{{"input_tokens":1,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":1}}}}}}"#
            ),
        ),
        ("content_block_start", r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#.into()),
        ("ping", r#"{"type":"ping"}"#.into()),
        ("content_block_delta", format!(r#"{{"type":"content_block_delta","index":0,"delta":{{"type":"text_delta","text":{text}}}}}"#)),
        ("content_block_stop", r#"{"type":"content_block_stop","index":0}"#.into()),
        (
            "message_delta",
            r#"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":1}}"#.into(),
        ),
        ("message_stop", r#"{"type":"message_stop"}"#.into()),
    ]
}

fn message_json(id: &str, model: &str, reply: &str) -> String {
    format!(
        r#"{{"id":"{id}","type":"message","role":"assistant","model":"{model}","content":[{{"type":"text","text":{}}}],"stop_reason":"end_turn","stop_sequence":null,"usage":{{"input_tokens":1,"output_tokens":1}}}}"#,
        json_str(reply)
    )
}

/// The credential a request carries, as the log names it.
fn credential(req: &Request) -> String {
    if let Some(key) = req.header("x-api-key") {
        return format!("x-api-key:{key}");
    }
    match req.header("authorization") {
        Some(value) => match value.strip_prefix("Bearer ") {
            Some(token) => format!("bearer:{token}"),
            None => format!("authorization:{value}"),
        },
        None => "none".into(),
    }
}

/// A query parameter's number, or `default`.
fn query_number(target: &str, name: &str, default: u64) -> u64 {
    let query = target.split_once('?').map_or("", |(_, q)| q);
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == name)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(default)
}

fn unix_micros() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros())
}

fn respond(req: &Request, w: &mut impl Write, st: &State) -> io::Result<()> {
    let path = req.target.split('?').next().unwrap_or("");
    let cred = credential(req);
    let beta = req
        .header("anthropic-beta")
        .map_or(String::new(), |b| format!(" beta={b}"));
    st.log
        .line(&format!("{} {}{beta} cred={cred}", req.method, req.target));
    if let Some(expected) = &st.expect_credentials {
        let carried = cred.split_once(':').map_or("", |(_, v)| v);
        if !expected.iter().any(|e| e == carried) {
            let body = r#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}"#;
            return send(w, req, "401 Unauthorized", body);
        }
    }
    match (req.method.as_str(), path) {
        ("GET", "/v1/models/testkit-sse") => {
            let events = query_number(&req.target, "events", 3);
            let interval =
                std::time::Duration::from_millis(query_number(&req.target, "interval_ms", 100));
            write!(
                w,
                "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
            )?;
            w.flush()?;
            for n in 0..events {
                if n > 0 {
                    thread::sleep(interval);
                }
                let chunk = format!("event: tick\ndata: {n} {}\n\n", unix_micros());
                write!(w, "{:x}\r\n{chunk}\r\n", chunk.len())?;
                w.flush()?;
            }
            w.write_all(b"0\r\n\r\n")?;
            w.flush()
        }
        ("GET", "/v1/models/testkit-download") => {
            let bytes = query_number(&req.target, "bytes", 0) as usize;
            write!(
                w,
                "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {bytes}\r\n\r\n"
            )?;
            let block = [b'x'; 16384];
            let mut left = bytes;
            while left > 0 {
                let n = left.min(block.len());
                w.write_all(&block[..n])?;
                left -= n;
            }
            w.flush()
        }
        ("HEAD" | "GET", _) => send(w, req, "200 OK", "{}"),
        ("POST", "/v1/messages") => {
            let body = String::from_utf8_lossy(&req.body);
            // The model's text is echoed as found: still valid JSON string content.
            let model = json_string_field(&body, "model").unwrap_or("claude-mock");
            let stream = json_value(&body, "stream").is_some_and(|v| v.starts_with("true"));
            st.log.line(&format!("  model={model} stream={stream}"));
            let id = format!(
                "msg_testkit{:012}",
                st.next_id.fetch_add(1, Ordering::Relaxed)
            );
            if !stream {
                return send(w, req, "200 OK", &message_json(&id, model, &st.reply));
            }
            let conn = if req.keep_alive() {
                "keep-alive"
            } else {
                "close"
            };
            write!(
                w,
                "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nCache-Control: no-cache\r\n\
request-id: req_testkit\r\nTransfer-Encoding: chunked\r\nConnection: {conn}\r\n\r\n"
            )?;
            for (event, data) in sse_events(&id, model, &st.reply) {
                let chunk = format!("event: {event}\ndata: {data}\n\n");
                write!(w, "{:x}\r\n{chunk}\r\n", chunk.len())?;
                w.flush()?;
            }
            w.write_all(b"0\r\n\r\n")?;
            w.flush()
        }
        ("POST", "/v1/messages/count_tokens") => send(
            w,
            req,
            "200 OK",
            &format!(r#"{{"input_tokens":1,"bytes":{}}}"#, req.body.len()),
        ),
        _ => {
            st.log
                .line(&format!("  -> 404 {} {}", req.method, req.target));
            let msg = json_str(&format!("Not found: {} {path}", req.method));
            send(
                w,
                req,
                "404 Not Found",
                &format!(
                    r#"{{"type":"error","error":{{"type":"not_found_error","message":{msg}}}}}"#
                ),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_found_by_search() {
        let body = r#"{"model": "claude-x\"y", "messages":[{"content":"say \"model\""}], "stream" : true}"#;
        assert_eq!(json_string_field(body, "model"), Some(r#"claude-x\"y"#));
        assert!(json_value(body, "stream").unwrap().starts_with("true"));
        assert_eq!(json_value(r#"{"stream":false}"#, "stream"), Some("false}"));
        assert_eq!(json_str("a\"b\\\n\u{1}"), r#""a\"b\\\n\u0001""#);
    }

    #[test]
    fn requests_are_read_with_both_body_framings() {
        let raw =
            "POST /v1/messages?beta=true HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
3\r\n{\"a\r\n2;ext=1\r\n\":\r\n1\r\n1\r\n1\r\n}\r\n0\r\n\r\n\
GET / HTTP/1.1\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi";
        let mut r = BufReader::new(raw.as_bytes());
        let mut sink = Vec::new();
        let req = read_request(&mut r, &mut sink).unwrap().unwrap();
        assert_eq!(
            (req.method.as_str(), req.target.as_str()),
            ("POST", "/v1/messages?beta=true")
        );
        assert_eq!(req.body, br#"{"a":1}"#);
        assert!(req.keep_alive());
        let req = read_request(&mut r, &mut sink).unwrap().unwrap();
        assert_eq!((req.body.as_slice(), req.keep_alive()), (&b"hi"[..], false));
        assert!(read_request(&mut r, &mut sink).unwrap().is_none());
    }

    #[test]
    fn sse_sequence_is_complete() {
        let names: Vec<_> = sse_events("msg_1", "m", "pong")
            .into_iter()
            .map(|e| e.0)
            .collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "ping",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
    }
}
