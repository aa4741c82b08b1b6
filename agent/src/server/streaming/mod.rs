//! The CRI streaming server: `Exec`, `Attach` and `PortForward` answer with a URL here
//! carrying a single-use token; the client (the kubelet, crictl, kubectl) upgrades that
//! HTTP request to SPDY/3.1 or to WebSocket and speaks the Kubernetes remote-command or
//! port-forward protocol over it. Plain HTTP, or HTTPS (`[streaming] tls`).

mod exec;
mod portforward;
mod session;
pub mod spdy;
mod tls;
mod websocket;

use std::{
    collections::HashMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use spdy::{Encoder, Frame};
use tokio::{
    io::{AsyncWrite, AsyncWriteExt},
    sync::mpsc,
};

/// How long a URL may wait to be used.
const TOKEN_LIFETIME: Duration = Duration::from_secs(60);
/// Most URLs waiting to be used at once.
const MAX_PENDING: usize = 1000;
/// How long a SPDY client may take to open its streams (the kubelet's default).
const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);
/// Most ports one WebSocket port-forward takes (two channel numbers each).
const MAX_WEBSOCKET_PORTS: usize = 100;
/// How long a client may take to send its request's head.
const REQUEST_HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a TLS handshake may take.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The remote-command subprotocols, most preferred first.
const REMOTE_COMMAND_PROTOCOLS: &[&str] = &[
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];

/// The port-forward subprotocol.
const PORT_FORWARD_PROTOCOLS: &[&str] = &["portforward.k8s.io"];

/// What a URL was issued for.
#[derive(Debug, Clone)]
pub enum Session {
    Exec(ExecRequest),
    Attach(ExecRequest),
    PortForward(PortForwardRequest),
}

/// Connections to forward into a pod.
#[derive(Debug, Clone)]
pub struct PortForwardRequest {
    /// The pod's network namespace (`None`: the node's).
    pub netns: Option<std::path::PathBuf>,
    /// The request's ports: over WebSocket, the ones forwarded (over SPDY each stream
    /// names its own).
    pub ports: Vec<u16>,
}

/// When a session last carried something either way, for its idle timeout; shared by the
/// session's tasks.
#[derive(Debug, Clone)]
pub struct Activity {
    since: Instant,
    /// Milliseconds after `since`.
    last: Arc<std::sync::atomic::AtomicU64>,
}

impl Default for Activity {
    fn default() -> Self {
        Activity::new()
    }
}

impl Activity {
    pub fn new() -> Activity {
        Activity {
            since: Instant::now(),
            last: Arc::default(),
        }
    }

    pub fn touch(&self) {
        let now = u64::try_from(self.since.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(now, std::sync::atomic::Ordering::Relaxed);
    }

    /// When the session will have been idle for `idle`, as things are now.
    pub fn deadline(&self, idle: Duration) -> tokio::time::Instant {
        let last = self.last.load(std::sync::atomic::Ordering::Relaxed);
        tokio::time::Instant::from_std(self.since) + Duration::from_millis(last) + idle
    }
}

/// How long a session may take and idle.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A session carrying nothing either way for this long is closed.
    pub idle: Duration,
    /// How long a SPDY client may take to open its streams.
    pub stream_creation: Duration,
}

#[derive(Debug, Clone)]
pub struct ExecRequest {
    pub container_id: String,
    /// For Attach: the container's directory (its monitor's attach socket), no command.
    pub attach_dir: Option<std::path::PathBuf>,
    pub cmd: Vec<String>,
    pub tty: bool,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("too many streaming sessions are waiting to be used ({MAX_PENDING})")]
    TooMany,
    #[error("cannot make a token: {0}")]
    Token(std::io::Error),
    #[error("cannot serve streaming on {address}: {source}")]
    Bind {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("streaming TLS: {0}")]
    Tls(String),
}

/// The streaming server: issued URLs and the listener that serves them.
pub struct Server {
    base_url: String,
    pending: Mutex<HashMap<String, (Session, Instant)>>,
    runtime: Arc<crate::runtime::Runtime>,
    limits: Limits,
    /// One permit per open session.
    sessions: Arc<tokio::sync::Semaphore>,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl Server {
    /// Binds the configured address and port (port 0: any free one).
    pub async fn bind(
        config: &crate::config::StreamingConfig,
        runtime: Arc<crate::runtime::Runtime>,
    ) -> Result<(Arc<Server>, tokio::net::TcpListener), Error> {
        let (address, port) = (config.address.as_str(), config.port);
        let bind_err = |source| Error::Bind {
            address: format!("{address}:{port}"),
            source,
        };
        let tls = match config.tls {
            false => None,
            true => Some(tls::acceptor(
                config.tls_cert.as_deref().zip(config.tls_key.as_deref()),
                address,
            )?),
        };
        let listener = tokio::net::TcpListener::bind((address, port))
            .await
            .map_err(bind_err)?;
        let local = listener.local_addr().map_err(bind_err)?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let server = Server {
            base_url: format!("{scheme}://{}", url_host(local)),
            pending: Mutex::default(),
            runtime,
            limits: Limits {
                idle: Duration::from_secs(config.idle_timeout_secs),
                stream_creation: STREAM_CREATION_TIMEOUT,
            },
            sessions: Arc::new(tokio::sync::Semaphore::new(config.max_sessions)),
            tls,
        };
        Ok((Arc::new(server), listener))
    }

    /// A URL for `session`, usable once within a minute.
    pub fn issue(&self, session: Session) -> Result<String, Error> {
        let kind = match &session {
            Session::Exec(_) => "exec",
            Session::Attach(_) => "attach",
            Session::PortForward(_) => "portforward",
        };
        // 128 random bits.
        let token = crate::runtime::new_id().map_err(Error::Token)?[..32].to_string();
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        pending.retain(|_, (_, issued)| now.duration_since(*issued) < TOKEN_LIFETIME);
        if pending.len() >= MAX_PENDING {
            return Err(Error::TooMany);
        }
        pending.insert(token.clone(), (session, now));
        Ok(format!("{}/{kind}/{token}", self.base_url))
    }

    /// The session of a token, once: taken, it is gone.
    fn redeem(&self, token: &str) -> Option<Session> {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let (session, issued) = pending.remove(token)?;
        (issued.elapsed() < TOKEN_LIFETIME).then_some(session)
    }

    /// Serves connections until the listener fails.
    pub async fn serve(self: Arc<Self>, listener: tokio::net::TcpListener) {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "streaming server cannot accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            // Sessions are interactive: small frames go out at once, not after an ACK.
            let _ = stream.set_nodelay(true);
            let server = Arc::clone(&self);
            tokio::spawn(async move {
                match server.tls.clone() {
                    None => server.serve_connection(stream).await,
                    Some(acceptor) => {
                        let handshake =
                            tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream));
                        match handshake.await {
                            Ok(Ok(stream)) => server.serve_connection(stream).await,
                            Ok(Err(e)) => {
                                tracing::debug!(error = %e, "streaming TLS handshake failed")
                            }
                            Err(_) => tracing::debug!("streaming TLS handshake timed out"),
                        }
                    }
                }
            });
        }
    }

    async fn serve_connection<IO>(self: Arc<Self>, stream: IO)
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        let service = hyper::service::service_fn(move |request| {
            let server = Arc::clone(&self);
            async move { Ok::<_, Infallible>(server.handle(request)) }
        });
        // A request's head within the timeout (also the next one's, on a kept-alive
        // connection): a client without a token cannot hold connections open.
        let served = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(REQUEST_HEAD_TIMEOUT)
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades()
            .await;
        if let Err(e) = served {
            tracing::debug!(error = %e, "streaming connection ended");
        }
    }

    fn handle(self: Arc<Self>, mut request: Request<Incoming>) -> Response<Full<Bytes>> {
        if request.method() != Method::POST && request.method() != Method::GET {
            return text(StatusCode::METHOD_NOT_ALLOWED, "use GET or POST");
        }
        let path = request.uri().path().to_string();
        let Some((kind, token)) = path.trim_start_matches('/').split_once('/') else {
            return text(StatusCode::NOT_FOUND, "no such streaming session");
        };
        let session = match (kind, self.redeem(token)) {
            ("exec", Some(session @ Session::Exec(_)))
            | ("attach", Some(session @ Session::Attach(_)))
            | ("portforward", Some(session @ Session::PortForward(_))) => session,
            _ => {
                return text(
                    StatusCode::NOT_FOUND,
                    "no such streaming session (or expired)",
                );
            }
        };
        if websocket::wanted(request.headers()) {
            return self.upgrade_websocket(request, session);
        }
        let protocols = match session {
            Session::Exec(_) | Session::Attach(_) => REMOTE_COMMAND_PROTOCOLS,
            Session::PortForward(_) => PORT_FORWARD_PROTOCOLS,
        };
        let protocol = match negotiate(request.headers(), protocols) {
            Ok(protocol) => protocol,
            Err(response) => return *response,
        };
        if !wants_spdy(request.headers()) {
            return text(
                StatusCode::BAD_REQUEST,
                "unable to upgrade: missing upgrade headers in request",
            );
        }
        let Some(permit) = self.session_permit() else {
            return busy();
        };
        let upgrade = hyper::upgrade::on(&mut request);
        let runtime = Arc::clone(&self.runtime);
        let limits = self.limits;
        tokio::spawn(async move {
            let _permit = permit;
            match upgrade.await {
                Ok(upgraded) => match session {
                    Session::Exec(exec) | Session::Attach(exec) => {
                        exec::run(TokioIo::new(upgraded), runtime, exec, protocol, limits).await
                    }
                    Session::PortForward(forward) => {
                        portforward::run(TokioIo::new(upgraded), forward, limits).await
                    }
                },
                Err(e) => tracing::debug!(error = %e, "streaming upgrade failed"),
            }
        });
        switching("SPDY/3.1", &[("X-Stream-Protocol-Version", protocol)])
    }

    /// A session's permit, while fewer than the configured most are open.
    fn session_permit(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        Arc::clone(&self.sessions).try_acquire_owned().ok()
    }

    /// The WebSocket handshake, and the session served on the upgraded connection.
    fn upgrade_websocket(
        self: Arc<Self>,
        mut request: Request<Incoming>,
        session: Session,
    ) -> Response<Full<Bytes>> {
        let protocols = match session {
            Session::Exec(_) | Session::Attach(_) => websocket::REMOTE_COMMAND_PROTOCOLS,
            Session::PortForward(_) => websocket::PORT_FORWARD_PROTOCOLS,
        };
        let (accept, protocol) = match websocket::handshake(request.headers(), protocols) {
            Ok(answer) => answer,
            Err(
                websocket::Refusal::BadRequest(message) | websocket::Refusal::Protocol(message),
            ) => {
                return text(StatusCode::BAD_REQUEST, &message);
            }
        };
        if let Session::PortForward(forward) = &session
            && !(1..=MAX_WEBSOCKET_PORTS).contains(&forward.ports.len())
        {
            return text(
                StatusCode::BAD_REQUEST,
                &format!(
                    "port-forward over WebSocket forwards the PortForward request's ports (1 to {MAX_WEBSOCKET_PORTS}): it named {}",
                    forward.ports.len()
                ),
            );
        }
        let Some(permit) = self.session_permit() else {
            return busy();
        };
        let upgrade = hyper::upgrade::on(&mut request);
        let runtime = Arc::clone(&self.runtime);
        let limits = self.limits;
        tokio::spawn(async move {
            let _permit = permit;
            let upgraded = match upgrade.await {
                Ok(upgraded) => upgraded,
                Err(e) => return tracing::debug!(error = %e, "streaming upgrade failed"),
            };
            let ws = websocket::accept(TokioIo::new(upgraded)).await;
            match session {
                Session::Exec(exec) | Session::Attach(exec) => {
                    websocket::remote_command(ws, runtime, exec, protocol, limits).await
                }
                Session::PortForward(forward) => {
                    websocket::port_forward(ws, forward, protocol, limits).await
                }
            }
        });
        let mut headers = vec![("Sec-WebSocket-Accept", accept.as_str())];
        if !protocol.is_empty() {
            headers.push(("Sec-WebSocket-Protocol", protocol));
        }
        switching("websocket", &headers)
    }
}

/// 101 Switching Protocols to `upgrade`, with `headers`.
fn switching(upgrade: &'static str, headers: &[(&'static str, &str)]) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let map = response.headers_mut();
    map.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("Upgrade"),
    );
    map.insert(header::UPGRADE, header::HeaderValue::from_static(upgrade));
    for (name, value) in headers {
        if let Ok(value) = header::HeaderValue::from_str(value) {
            map.insert(*name, value);
        }
    }
    response
}

/// The answer when the most sessions are open.
fn busy() -> Response<Full<Bytes>> {
    text(
        StatusCode::SERVICE_UNAVAILABLE,
        "too many streaming sessions are open; try again later",
    )
}

/// Waits up to `grace` for a session's writer to send what is left, then cuts it: a client
/// that stopped reading cannot hold a session (and its permit) for good.
async fn finish_writer(mut writing: tokio::task::JoinHandle<()>, grace: Duration) {
    if tokio::time::timeout(grace, &mut writing).await.is_err() {
        writing.abort();
        let _ = writing.await;
    }
}

/// Writes the session's frames in order until every sender is gone.
async fn write_frames<W: AsyncWrite + Unpin>(mut writer: W, mut frames: mpsc::Receiver<Frame>) {
    let mut encoder = Encoder::default();
    let mut buf = BytesMut::new();
    while let Some(frame) = frames.recv().await {
        buf.clear();
        if let Err(e) = encoder.encode(&frame, &mut buf) {
            tracing::warn!(error = %e, "cannot encode a SPDY frame");
            break;
        }
        if writer.write_all(&buf).await.is_err() {
            break;
        }
    }
    let _ = writer.shutdown().await;
}

/// The host part of a URL for `addr` (an IPv6 address in brackets).
fn url_host(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) => a.to_string(),
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
    }
}

fn text(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(message.to_string())));
    *response.status_mut() = status;
    response
}

/// The client's first offered protocol that we speak (the client's order wins), or the
/// answer when there is none.
fn negotiate(
    headers: &HeaderMap,
    ours: &[&'static str],
) -> Result<&'static str, Box<Response<Full<Bytes>>>> {
    let offered: Vec<String> = headers
        .get_all("X-Stream-Protocol-Version")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect();
    if offered.is_empty() {
        // Clients from before protocol negotiation speak the oldest protocol.
        if let Some(oldest) = ours.last() {
            return Ok(oldest);
        }
    }
    if let Some(chosen) = offered
        .iter()
        .find_map(|p| ours.iter().find(|o| **o == p.as_str()))
    {
        return Ok(chosen);
    }
    let mut response = text(
        StatusCode::FORBIDDEN,
        &format!("unable to upgrade: none of the offered protocols {offered:?} is supported"),
    );
    for protocol in ours {
        response.headers_mut().append(
            "X-Accepted-Stream-Protocol-Versions",
            header::HeaderValue::from_static(protocol),
        );
    }
    Err(Box::new(response))
}

/// An upgrade to SPDY/3.1 is asked for.
fn wants_spdy(headers: &HeaderMap) -> bool {
    let has = |name: header::HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.to_ascii_lowercase().contains(token))
    };
    has(header::CONNECTION, "upgrade") && has(header::UPGRADE, "spdy/3.1")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(*k, header::HeaderValue::from_static(v));
        }
        map
    }

    #[test]
    fn the_clients_order_wins_and_unknown_protocols_are_refused() {
        let h = headers(&[
            ("x-stream-protocol-version", "v9.channel.k8s.io"),
            (
                "x-stream-protocol-version",
                "v3.channel.k8s.io, v4.channel.k8s.io",
            ),
        ]);
        assert_eq!(
            negotiate(&h, REMOTE_COMMAND_PROTOCOLS).unwrap(),
            "v3.channel.k8s.io"
        );
        let refused = negotiate(
            &headers(&[("x-stream-protocol-version", "v9.channel.k8s.io")]),
            REMOTE_COMMAND_PROTOCOLS,
        )
        .unwrap_err();
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            refused
                .headers()
                .get_all("X-Accepted-Stream-Protocol-Versions")
                .iter()
                .count(),
            4
        );
        // No header: the oldest protocol, as for clients from before negotiation.
        assert_eq!(
            negotiate(&HeaderMap::new(), REMOTE_COMMAND_PROTOCOLS).unwrap(),
            "channel.k8s.io"
        );
        assert_eq!(
            negotiate(&HeaderMap::new(), PORT_FORWARD_PROTOCOLS).unwrap(),
            "portforward.k8s.io"
        );
    }

    #[test]
    fn only_a_spdy_upgrade_is_one() {
        assert!(wants_spdy(&headers(&[
            ("connection", "Upgrade"),
            ("upgrade", "SPDY/3.1")
        ])));
        assert!(!wants_spdy(&headers(&[("connection", "Upgrade")])));
        assert!(!wants_spdy(&headers(&[
            ("connection", "keep-alive"),
            ("upgrade", "SPDY/3.1")
        ])));
        assert!(!wants_spdy(&headers(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket")
        ])));
    }

    #[test]
    fn ipv6_hosts_are_bracketed() {
        assert_eq!(
            url_host("127.0.0.1:10010".parse().unwrap()),
            "127.0.0.1:10010"
        );
        assert_eq!(url_host("[::1]:80".parse().unwrap()), "[::1]:80");
    }
}
