//! The remote API: the services of the unix socket, over TCP with TLS 1.3 and mutual TLS.
//!
//! A client shows a certificate that chains to the configured CA; its identity (the
//! subject's CN, else its first SAN) is logged with every call that changes the node.
//! Clients whose certificate matches a `read_only` entry (a CN or SAN, or `OU=name`) may
//! only read. A connection without a certificate gets through the handshake only to be
//! told UNAUTHENTICATED on every call; a certificate that does not verify (wrong CA,
//! expired) fails the handshake. The certificates and CA are read again on SIGHUP; a file
//! that does not load keeps the old ones. Open connections keep the session they have.

use std::{
    io,
    net::SocketAddr,
    path::Path,
    pin::Pin,
    sync::{Arc, RwLock},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use rustls::{
    RootCertStore,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
};
use tonic::{Status, transport::server::Connected};

use super::authority::AuthorityFront;
use crate::config::RemoteConfig;

/// How long a client may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How much of a call's path is logged (and told back in a refusal): a method's path is
/// far shorter, and a client may send kilobytes of its own.
const LOGGED_PATH: usize = 128;

/// Refused calls logged: at most 10 lines in 10 s, whoever the callers, so that a client
/// that is refused at will cannot fill the node's disk; the lines left out are counted
/// on the next one logged.
static REFUSED_CALLS: RateLimit = RateLimit::new(10, Duration::from_secs(10));

/// Refused connections (failed handshakes), the same way.
static REFUSED_CONNECTIONS: RateLimit = RateLimit::new(10, Duration::from_secs(10));

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("remote API: {path}: {message}")]
    File { path: String, message: String },
    #[error("remote API: {0}")]
    Tls(String),
    #[error("remote API: cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: io::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

/// Who is on the other end of a remote connection.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    /// The certificate's CN (or first SAN); empty without a certificate.
    pub identity: String,
    /// Showed a certificate that verified.
    pub authenticated: bool,
    /// Matches a `read_only` entry.
    pub read_only: bool,
}

/// The remote listener's TLS settings, replaced whole on reload.
pub struct Remote {
    settings: RemoteConfig,
    tls: RwLock<Arc<rustls::ServerConfig>>,
}

impl Remote {
    /// Loads the certificate, key and client CA named in `settings`.
    pub fn load(settings: RemoteConfig) -> Result<Remote> {
        let tls = server_config(&settings)?;
        Ok(Remote {
            settings,
            tls: RwLock::new(Arc::new(tls)),
        })
    }

    /// Reads the files again; new connections use them. On an error the old ones stay.
    pub fn reload(&self) -> Result<Duration> {
        let started = Instant::now();
        let tls = server_config(&self.settings)?;
        *self.tls.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(tls);
        Ok(started.elapsed())
    }

    fn current(&self) -> Arc<rustls::ServerConfig> {
        Arc::clone(&self.tls.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Binds the configured address.
    pub async fn bind(&self) -> Result<TcpListener> {
        let addr = self.settings.listen.clone().unwrap_or_default();
        TcpListener::bind(&addr)
            .await
            .map_err(|source| Error::Bind { addr, source })
    }

    /// Accepts connections and hands those whose handshake succeeds to `incoming`, until
    /// the receiver is gone. Each handshake runs on its own, so a slow client stalls
    /// nobody.
    pub async fn accept(
        self: Arc<Self>,
        listener: TcpListener,
        incoming: tokio::sync::mpsc::Sender<io::Result<Connection>>,
    ) {
        loop {
            let (tcp, addr) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "remote API: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            if incoming.is_closed() {
                return;
            }
            let (remote, incoming) = (Arc::clone(&self), incoming.clone());
            tokio::spawn(async move {
                match remote.handshake(tcp, addr).await {
                    Ok(conn) => {
                        let _ = incoming.send(Ok(conn)).await;
                    }
                    Err(why) => {
                        if let Some(suppressed) = REFUSED_CONNECTIONS.admit(Instant::now()) {
                            let suppressed = (suppressed > 0).then_some(suppressed);
                            tracing::warn!(peer = %addr, error = %why, suppressed, "refusing a remote connection");
                        }
                    }
                }
            });
        }
    }

    async fn handshake(
        &self,
        tcp: TcpStream,
        addr: SocketAddr,
    ) -> std::result::Result<Connection, String> {
        let _ = tcp.set_nodelay(true);
        // A plain-text HTTP/2 client starts with its preface; say so rather than "corrupt
        // message".
        let mut first = [0u8; 3];
        if let Ok(Ok(3)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, tcp.peek(&mut first)).await
            && &first == b"PRI"
        {
            return Err("plain-text HTTP/2 on the TLS port".into());
        }
        let acceptor = tokio_rustls::TlsAcceptor::from(self.current());
        let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
            .await
            .map_err(|_| format!("no TLS handshake within {HANDSHAKE_TIMEOUT:?}"))?
            .map_err(|e| format!("TLS handshake: {e}"))?;
        let peer = match tls.get_ref().1.peer_certificates().and_then(|c| c.first()) {
            Some(cert) => {
                let names = Names::of(cert);
                Peer {
                    addr,
                    identity: names.identity(),
                    authenticated: true,
                    read_only: names.matches(&self.settings.read_only),
                }
            }
            None => Peer {
                addr,
                identity: String::new(),
                authenticated: false,
                read_only: true,
            },
        };
        tracing::debug!(peer = %addr, identity = %peer.identity, read_only = peer.read_only, "remote client connected");
        Ok(AuthorityFront::new(Tagged { inner: tls, peer }))
    }
}

/// An accepted remote connection, as the gRPC server reads it.
pub type Connection = AuthorityFront<Tagged<tokio_rustls::server::TlsStream<TcpStream>>>;

fn server_config(settings: &RemoteConfig) -> Result<rustls::ServerConfig> {
    let (cert, key, ca) = match (&settings.cert, &settings.key, &settings.client_ca) {
        (Some(cert), Some(key), Some(ca)) => (cert, key, ca),
        _ => return Err(Error::Tls("cert, key and client_ca are all needed".into())),
    };
    let chain = read_certs(cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| file_error(key, e))?;
    let mut roots = RootCertStore::empty();
    for cert in read_certs(ca)? {
        roots
            .add(cert)
            .map_err(|e| file_error(ca, format!("not a CA certificate: {e}")))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| file_error(ca, e))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| file_error(cert, e))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| file_error(path, e))?;
    if certs.is_empty() {
        return Err(file_error(path, "no certificate in it"));
    }
    Ok(certs)
}

fn file_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::File {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// The names a client certificate carries.
#[derive(Debug, Default, PartialEq, Eq)]
struct Names {
    common_names: Vec<String>,
    units: Vec<String>,
    alternative: Vec<String>,
}

impl Names {
    fn of(cert: &CertificateDer<'_>) -> Names {
        use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
        let Ok((_, cert)) = X509Certificate::from_der(cert) else {
            return Names::default();
        };
        let text = |attrs: Vec<&x509_parser::x509::AttributeTypeAndValue<'_>>| -> Vec<String> {
            attrs
                .into_iter()
                .filter_map(|a| a.as_str().ok().map(str::to_string))
                .collect()
        };
        let subject = cert.subject();
        let alternative = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        GeneralName::DNSName(s)
                        | GeneralName::URI(s)
                        | GeneralName::RFC822Name(s) => Some(s.to_string()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        Names {
            common_names: text(subject.iter_common_name().collect()),
            units: text(subject.iter_organizational_unit().collect()),
            alternative,
        }
    }

    fn identity(&self) -> String {
        self.common_names
            .first()
            .or(self.alternative.first())
            .cloned()
            .unwrap_or_else(|| "(a certificate without names)".into())
    }

    /// Matches one of `entries`: `OU=name` against the organizational units, anything
    /// else against the common names and alternative names.
    fn matches(&self, entries: &[String]) -> bool {
        entries.iter().any(|entry| match entry.strip_prefix("OU=") {
            Some(unit) => self.units.iter().any(|u| u == unit),
            None => self
                .common_names
                .iter()
                .chain(&self.alternative)
                .any(|n| n == entry),
        })
    }
}

/// A stream that knows its peer (for the calls it carries).
pub struct Tagged<S> {
    inner: S,
    peer: Peer,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tagged<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tagged<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<S> Connected for Tagged<S> {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        self.peer.clone()
    }
}

/// Whether the RPC at `path` (`/package.Service/Method`) only reads.
pub fn reads_only(path: &str) -> bool {
    let method = path.rsplit('/').next().unwrap_or_default();
    method.starts_with("List")
        || method.starts_with("Stream")
        || method.ends_with("Status")
        || method.ends_with("Stats")
        || matches!(
            method,
            "Version"
                | "ImageFsInfo"
                | "GetContainerEvents"
                | "RuntimeConfig"
                | "ImageHistory"
                | "DiskUsage"
                | "Check"
                | "Watch"
        )
}

/// What the caller of `path` may do: nothing is refused on the unix socket (no `peer`).
pub fn admit(peer: Option<&Peer>, path: &str) -> std::result::Result<(), Status> {
    let Some(peer) = peer else {
        return Ok(());
    };
    let method = logged(path);
    if !peer.authenticated {
        if let Some(suppressed) = REFUSED_CALLS.admit(Instant::now()) {
            let suppressed = (suppressed > 0).then_some(suppressed);
            tracing::warn!(peer = %peer.addr, %method, suppressed, "refused: no client certificate");
        }
        return Err(Status::unauthenticated(
            "a client certificate signed by the node's client CA is required",
        ));
    }
    if reads_only(path) {
        return Ok(());
    }
    if peer.read_only {
        if let Some(suppressed) = REFUSED_CALLS.admit(Instant::now()) {
            let suppressed = (suppressed > 0).then_some(suppressed);
            tracing::warn!(peer = %peer.addr, identity = %peer.identity, %method, suppressed, "refused: read-only client");
        }
        return Err(Status::permission_denied(format!(
            "{} may only read; {method} changes the node",
            peer.identity
        )));
    }
    tracing::info!(peer = %peer.addr, identity = %peer.identity, %method, "remote call");
    Ok(())
}

/// `path` as logged: whole if short, else its first [`LOGGED_PATH`] bytes (cut on a
/// character boundary) and its length.
fn logged(path: &str) -> std::borrow::Cow<'_, str> {
    if path.len() <= LOGGED_PATH {
        return path.into();
    }
    let mut end = LOGGED_PATH;
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &path[..end], path.len()).into()
}

/// Lets at most `burst` events through in each `window` (from the first event after the
/// last window ended) and counts the others.
struct RateLimit {
    burst: u32,
    window: Duration,
    state: std::sync::Mutex<Window>,
}

struct Window {
    started: Option<Instant>,
    passed: u32,
    suppressed: u64,
}

impl RateLimit {
    const fn new(burst: u32, window: Duration) -> RateLimit {
        RateLimit {
            burst,
            window,
            state: std::sync::Mutex::new(Window {
                started: None,
                passed: 0,
                suppressed: 0,
            }),
        }
    }

    /// Whether an event at `now` goes through: with how many were held back since the
    /// last that did, or `None` when it is held back itself.
    fn admit(&self, now: Instant) -> Option<u64> {
        let mut w = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if w.started
            .is_none_or(|started| now.saturating_duration_since(started) >= self.window)
        {
            w.started = Some(now);
            w.passed = 0;
        }
        if w.passed < self.burst {
            w.passed += 1;
            Some(std::mem::take(&mut w.suppressed))
        } else {
            w.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reading_calls_are_told_from_writing_ones() {
        for read in [
            "/runtime.v1.RuntimeService/ListContainers",
            "/runtime.v1.RuntimeService/ContainerStatus",
            "/runtime.v1.RuntimeService/PodSandboxStatus",
            "/runtime.v1.RuntimeService/ListContainerStats",
            "/runtime.v1.RuntimeService/Version",
            "/runtime.v1.RuntimeService/Status",
            "/runtime.v1.RuntimeService/GetContainerEvents",
            "/runtime.v1.ImageService/ImageFsInfo",
            "/runtime.v1.ImageService/ImageStatus",
            "/grpc.health.v1.Health/Check",
        ] {
            assert!(reads_only(read), "{read}");
        }
        for write in [
            "/runtime.v1.RuntimeService/StopContainer",
            "/runtime.v1.RuntimeService/ExecSync",
            "/runtime.v1.RuntimeService/Exec",
            "/runtime.v1.RuntimeService/UpdateRuntimeConfig",
            "/runtime.v1.ImageService/PullImage",
            "/runtime.v1.ImageService/RemoveImage",
            "/strata.v1.Images/CommitContainer",
            "/strata.v1.Images/CheckStore",
        ] {
            assert!(!reads_only(write), "{write}");
        }
    }

    #[test]
    fn identities_match_by_name_or_unit() {
        let mut params = rcgen::CertificateParams::new(vec!["node-7.fleet".to_string()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "dashboard");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationalUnitName, "observers");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let names = Names::of(cert.der());
        assert_eq!(names.identity(), "dashboard");
        assert!(names.matches(&["dashboard".into()]));
        assert!(names.matches(&["node-7.fleet".into()]));
        assert!(names.matches(&["OU=observers".into()]));
        assert!(!names.matches(&["OU=dashboard".into(), "observers".into()]));
        assert!(!names.matches(&[]));
        assert_eq!(
            Names::of(&CertificateDer::from(vec![1, 2, 3])),
            Names::default()
        );
    }

    #[test]
    fn logged_paths_are_cut_on_a_character_boundary() {
        let method = "/runtime.v1.RuntimeService/StopContainer";
        assert_eq!(logged(method), method);
        let long = format!("/a.B/{}", "x".repeat(15_000));
        let cut = logged(&long);
        assert!(cut.len() < LOGGED_PATH + 32, "{cut}");
        assert!(cut.starts_with(&long[..LOGGED_PATH]), "{cut}");
        assert!(cut.ends_with("(15005 bytes)"), "{cut}");
        // A two-byte character across the limit is left out whole.
        let wide = format!("/{}{}", "x".repeat(LOGGED_PATH - 2), "é".repeat(100));
        let cut = logged(&wide);
        assert!(
            cut.starts_with(&format!("/{}...", "x".repeat(LOGGED_PATH - 2))),
            "{cut}"
        );
    }

    #[test]
    fn refusals_are_logged_a_few_per_window_with_a_count_of_the_rest() {
        let limit = RateLimit::new(3, Duration::from_secs(10));
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let seen: Vec<Option<u64>> = (0..10).map(|i| limit.admit(at(i))).collect();
        assert_eq!(seen[..3], [Some(0), Some(0), Some(0)]);
        assert!(seen[3..].iter().all(Option::is_none), "{seen:?}");
        // The next window: the first line says how many were left out.
        assert_eq!(limit.admit(at(10_000)), Some(7));
        assert_eq!(limit.admit(at(10_001)), Some(0));
        assert_eq!(limit.admit(at(10_002)), Some(0));
        assert_eq!(limit.admit(at(10_003)), None);
        assert_eq!(limit.admit(at(25_000)), Some(1));
    }

    #[test]
    fn unix_callers_pass_and_remote_ones_are_judged() {
        let peer = |authenticated, read_only| Peer {
            addr: "10.0.0.1:5000".parse().unwrap(),
            identity: "ops".into(),
            authenticated,
            read_only,
        };
        let stop = "/runtime.v1.RuntimeService/StopContainer";
        let list = "/runtime.v1.RuntimeService/ListContainers";
        assert!(admit(None, stop).is_ok());
        assert!(admit(Some(&peer(true, false)), stop).is_ok());
        assert!(admit(Some(&peer(true, true)), list).is_ok());
        let denied = admit(Some(&peer(true, true)), stop).unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        assert!(denied.message().contains("ops"), "{denied:?}");
        let anonymous = admit(Some(&peer(false, true)), list).unwrap_err();
        assert_eq!(anonymous.code(), tonic::Code::Unauthenticated);
        // A refusal tells a long path back only in part.
        let long = format!("/runtime.v1.RuntimeService/{}", "x".repeat(15_000));
        let denied = admit(Some(&peer(true, true)), &long).unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        assert!(denied.message().len() < 256, "{}", denied.message());
    }
}
