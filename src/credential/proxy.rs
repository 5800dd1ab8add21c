//! The HTTP side of the credential gateway: HTTP/1.1 from the agent on loopback, HTTP/1.1 over
//! TLS to the upstream. Each connection from the agent gets its own upstream connection, opened
//! on its first request and kept alive with it; bodies stream both ways frame by frame (server-
//! sent events arrive as they are sent, large uploads are never held whole).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{Either, Full};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::sync::Mutex;

use super::{Credential, Kind, Upstream};

/// Bound on reaching the upstream: TCP connect and TLS handshake together.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What every connection shares.
pub struct Shared {
    pub credential: Credential,
    pub upstream: Upstream,
    /// The upstream's addresses, resolved at start (the gateway itself asks no DNS).
    pub addrs: Vec<SocketAddr>,
    pub tls: tokio_rustls::TlsConnector,
}

/// A TLS client configuration that trusts `roots` (the system's CA store) alone.
pub fn tls_connector(
    roots: Vec<CertificateDer<'static>>,
) -> Result<tokio_rustls::TlsConnector, String> {
    let mut store = rustls::RootCertStore::empty();
    let (added, _) = store.add_parsable_certificates(roots);
    if added == 0 {
        return Err("no usable CA certificate".into());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// Serves one connection from the agent until it closes.
pub async fn serve_connection(stream: tokio::net::TcpStream, shared: Arc<Shared>) {
    let upstream: Arc<Mutex<Option<SendRequest<Incoming>>>> = Arc::default();
    let service = hyper::service::service_fn(move |request| {
        let (shared, upstream) = (shared.clone(), upstream.clone());
        async move { Ok::<_, Infallible>(forward(request, &shared, &upstream).await) }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
    if let Err(error) = served {
        log::debug!("credential gateway: a connection from the agent ended: {error}");
    }
}

type Body = Either<Incoming, Full<Bytes>>;

/// One request: rewritten, sent on this connection's upstream connection (opened if there is
/// none or it closed), its response passed back as it arrives.
async fn forward(
    request: Request<Incoming>,
    shared: &Shared,
    upstream: &Mutex<Option<SendRequest<Incoming>>>,
) -> Response<Body> {
    let (mut parts, body) = request.into_parts();
    if !forwarded(&parts.method, parts.uri.path()) {
        log::info!(
            "credential gateway: {} {} refused: not the Messages API",
            parts.method,
            parts.uri.path()
        );
        return error_response(
            StatusCode::FORBIDDEN,
            &format!(
                "{} {} is not forwarded: the gateway passes the Messages API alone ({})",
                parts.method,
                parts.uri.path(),
                FORWARDED.map(|(m, p)| format!("{m} {p}")).join(", ")
            ),
        );
    }
    if let Err(error) = rewrite_request(&mut parts, &shared.upstream, &shared.credential) {
        return error_response(StatusCode::BAD_REQUEST, &error);
    }
    let mut slot = upstream.lock().await;
    if slot.as_ref().is_none_or(|sender| sender.is_closed()) {
        match tokio::time::timeout(CONNECT_TIMEOUT, connect(shared)).await {
            Ok(Ok(sender)) => *slot = Some(sender),
            Ok(Err(error)) => {
                log::warn!("credential gateway: {error}");
                return error_response(StatusCode::BAD_GATEWAY, &error);
            }
            Err(_) => {
                let error = format!(
                    "no connection to {} within {} s",
                    shared.upstream.authority(),
                    CONNECT_TIMEOUT.as_secs()
                );
                log::warn!("credential gateway: {error}");
                return error_response(StatusCode::GATEWAY_TIMEOUT, &error);
            }
        }
    }
    let Some(sender) = slot.as_mut() else {
        return error_response(StatusCode::BAD_GATEWAY, "no upstream connection");
    };
    let sent = match sender.ready().await {
        Ok(()) => sender.send_request(Request::from_parts(parts, body)).await,
        Err(error) => Err(error),
    };
    match sent {
        Ok(response) => {
            let (mut parts, body) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Response::from_parts(parts, Either::Left(body))
        }
        Err(error) => {
            *slot = None;
            let error = format!(
                "the request to {} failed: {error}",
                shared.upstream.authority()
            );
            log::warn!("credential gateway: {error}");
            error_response(StatusCode::BAD_GATEWAY, &error)
        }
    }
}

/// A TLS connection to the first upstream address that answers, with HTTP/1.1 on it.
async fn connect(shared: &Shared) -> Result<SendRequest<Incoming>, String> {
    let mut last = format!("{} has no address", shared.upstream.host);
    for addr in &shared.addrs {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(tcp) => {
                let _ = tcp.set_nodelay(true);
                let name = ServerName::try_from(shared.upstream.host.clone())
                    .map_err(|e| format!("{}: {e}", shared.upstream.host))?;
                let tls = shared
                    .tls
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS with {} ({addr}): {e}", shared.upstream.host))?;
                let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                    .await
                    .map_err(|e| format!("HTTP with {addr}: {e}"))?;
                tokio::spawn(async move {
                    if let Err(error) = connection.await {
                        log::debug!("credential gateway: upstream connection ended: {error}");
                    }
                });
                return Ok(sender);
            }
            Err(error) => {
                last = format!("connecting to {} ({addr}): {error}", shared.upstream.host)
            }
        }
    }
    Err(last)
}

/// What the gateway forwards: the Messages API the CLI uses, nothing else of what the
/// credential could do (other endpoints of the account, an OAuth token's own endpoints that
/// hand out new credentials). `*` is one path segment.
pub const FORWARDED: [(&str, &str); 4] = [
    ("POST", "/v1/messages"),
    ("POST", "/v1/messages/count_tokens"),
    ("GET", "/v1/models"),
    ("GET", "/v1/models/*"),
];

/// Whether `method` `path` (without the query) is in `FORWARDED`.
pub fn forwarded(method: &hyper::Method, path: &str) -> bool {
    FORWARDED.iter().any(|(m, pattern)| {
        let segments = |p: &str| p.split('/').map(String::from).collect::<Vec<_>>();
        let (want, got) = (segments(pattern), segments(path));
        method.as_str() == *m
            && want.len() == got.len()
            && want.iter().zip(&got).all(|(w, g)| {
                if w == "*" {
                    !g.is_empty()
                        && g.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                        && g != "."
                        && g != ".."
                } else {
                    w == g
                }
            })
    })
}

/// The request as it goes upstream: the upstream's path prefix and Host, hop-by-hop headers
/// gone, and whatever credential it carried replaced by the real one. Every other header passes.
pub fn rewrite_request(
    parts: &mut hyper::http::request::Parts,
    upstream: &Upstream,
    credential: &Credential,
) -> Result<(), String> {
    if parts.uri.authority().is_some() {
        return Err("the gateway takes origin-form requests (a path), not a proxy's".into());
    }
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    parts.uri = Uri::builder()
        .path_and_query(format!("{}{path}", upstream.path_prefix))
        .build()
        .map_err(|e| e.to_string())?;
    parts.version = hyper::Version::HTTP_11;
    let headers = &mut parts.headers;
    strip_hop_by_hop(headers);
    headers.insert(
        header::HOST,
        HeaderValue::from_str(&upstream.authority()).map_err(|e| e.to_string())?,
    );
    headers.remove(header::AUTHORIZATION);
    headers.remove(X_API_KEY);
    let (name, value) = match credential.kind {
        Kind::ApiKey => (X_API_KEY, credential.secret().to_string()),
        Kind::OAuthToken | Kind::AuthToken => (
            header::AUTHORIZATION,
            format!("Bearer {}", credential.secret()),
        ),
    };
    let mut value = HeaderValue::from_str(&value)
        .map_err(|_| "the credential is not a valid header value".to_string())?;
    value.set_sensitive(true);
    headers.insert(name, value);
    if credential.kind == Kind::OAuthToken {
        add_beta(headers, OAUTH_BETA);
    }
    Ok(())
}

/// The beta the API wants with an OAuth token, which the CLI sends only when it holds one
/// itself (the agent holds an auth token: see `credential`).
const OAUTH_BETA: &str = "oauth-2025-04-20";
const ANTHROPIC_BETA: HeaderName = HeaderName::from_static("anthropic-beta");

/// Adds `beta` to the request's `anthropic-beta` list unless it is there.
fn add_beta(headers: &mut HeaderMap, beta: &str) {
    let listed: Vec<String> = headers
        .get_all(&ANTHROPIC_BETA)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|b| b.trim().to_string())
        .filter(|b| !b.is_empty())
        .collect();
    if listed.iter().any(|b| b == beta) {
        return;
    }
    let joined = listed
        .into_iter()
        .chain([beta.to_string()])
        .collect::<Vec<_>>()
        .join(",");
    if let Ok(value) = HeaderValue::from_str(&joined) {
        headers.insert(ANTHROPIC_BETA, value);
    }
}

const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// Removes the headers that concern one connection only (RFC 9110 7.6.1), and those the
/// Connection header names. hyper frames the body itself.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
}

/// An error as the Messages API words its own, so the CLI shows the message.
fn error_response(status: StatusCode, message: &str) -> Response<Body> {
    let body = format!(
        "{{\"type\":\"error\",\"error\":{{\"type\":\"api_error\",\"message\":\"cordon credential \
         gateway: {}\"}}}}",
        message.replace('\\', "\\\\").replace('"', "\\\"")
    );
    let mut response = Response::new(Either::Right(Full::new(Bytes::from(body))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn credential(kind: Kind) -> Credential {
        Credential {
            kind,
            secret: "real-secret".into(),
            source: "test".into(),
        }
    }

    fn parts(uri: &str, headers: &[(&str, &str)]) -> hyper::http::request::Parts {
        let mut builder = Request::post(uri);
        for (n, v) in headers {
            builder = builder.header(*n, *v);
        }
        builder.body(()).unwrap().into_parts().0
    }

    #[test]
    fn the_credential_is_replaced_and_every_other_header_passes() {
        let upstream = Upstream::parse("https://gw.test:8443/anthropic", "X").unwrap();
        let mut p = parts(
            "/v1/messages?beta=true",
            &[
                ("x-api-key", "placeholder"),
                ("authorization", "Bearer agents-own"),
                ("anthropic-version", "2023-06-01"),
                ("anthropic-beta", "oauth-2025-04-20"),
                ("connection", "keep-alive, x-private"),
                ("x-private", "hop"),
                ("host", "127.0.0.1:10080"),
                ("content-length", "12"),
            ],
        );
        rewrite_request(&mut p, &upstream, &credential(Kind::ApiKey)).unwrap();
        assert_eq!(p.uri, "/anthropic/v1/messages?beta=true");
        let h = &p.headers;
        assert_eq!(h["x-api-key"], "real-secret");
        assert!(h["x-api-key"].is_sensitive());
        assert!(!h.contains_key("authorization"));
        assert_eq!(h["host"], "gw.test:8443");
        assert_eq!(h["anthropic-version"], "2023-06-01");
        assert_eq!(h["anthropic-beta"], "oauth-2025-04-20");
        let mut twice = parts("/", &[("anthropic-beta", "a, oauth-2025-04-20")]);
        rewrite_request(&mut twice, &upstream, &credential(Kind::OAuthToken)).unwrap();
        assert_eq!(twice.headers["anthropic-beta"], "a, oauth-2025-04-20");
        assert_eq!(h["content-length"], "12");
        assert!(!h.contains_key("connection") && !h.contains_key("x-private"));

        for kind in [Kind::OAuthToken, Kind::AuthToken] {
            let mut p = parts(
                "/v1/messages",
                &[
                    ("x-api-key", "sk-agents-own"),
                    ("anthropic-beta", "claude-code-20250219"),
                ],
            );
            rewrite_request(
                &mut p,
                &Upstream::parse("https://a.test", "X").unwrap(),
                &credential(kind),
            )
            .unwrap();
            assert_eq!(p.headers["authorization"], "Bearer real-secret");
            assert!(!p.headers.contains_key("x-api-key"));
            assert_eq!(p.headers["host"], "a.test");
            let beta = match kind {
                Kind::OAuthToken => "claude-code-20250219,oauth-2025-04-20",
                _ => "claude-code-20250219",
            };
            assert_eq!(p.headers["anthropic-beta"], beta);
        }
    }

    #[test]
    fn only_the_messages_api_is_forwarded() {
        use hyper::Method;
        for (method, path) in [
            (Method::POST, "/v1/messages"),
            (Method::POST, "/v1/messages/count_tokens"),
            (Method::GET, "/v1/models"),
            (Method::GET, "/v1/models/claude-sonnet-4-5"),
        ] {
            assert!(forwarded(&method, path), "{method} {path}");
        }
        for (method, path) in [
            (Method::GET, "/v1/messages"),
            (Method::POST, "/v1/messages/batches"),
            (Method::GET, "/v1/files"),
            (Method::POST, "/api/oauth/claude_cli/create_api_key"),
            (Method::GET, "/v1/models/.."),
            (Method::GET, "/v1/models/%2e%2e"),
            (Method::GET, "/v1/models/a/b"),
            (Method::POST, "/v1/messages/"),
            (Method::POST, "//v1/messages"),
            (Method::TRACE, "/v1/messages"),
            (Method::POST, "/v1/../v1/messages"),
        ] {
            assert!(!forwarded(&method, path), "{method} {path}");
        }
    }

    #[test]
    fn a_proxy_form_request_is_refused() {
        let upstream = Upstream::parse("https://a.test", "X").unwrap();
        let mut p = parts("http://evil.test/x", &[]);
        assert!(rewrite_request(&mut p, &upstream, &credential(Kind::ApiKey)).is_err());
    }

    #[test]
    fn errors_are_api_errors() {
        let response = error_response(StatusCode::BAD_GATEWAY, "a \"quoted\" thing");
        assert_eq!(response.status(), 502);
        let Either::Right(body) = response.into_body() else {
            panic!("an error has a full body")
        };
        let bytes = futures_executor(body);
        let text = String::from_utf8(bytes).unwrap();
        assert!(
            text.contains("\"type\":\"error\"") && text.contains("a \\\"quoted\\\" thing"),
            "{text}"
        );
    }

    fn futures_executor(body: Full<Bytes>) -> Vec<u8> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async { body.collect().await.unwrap().to_bytes().to_vec() })
    }
}
