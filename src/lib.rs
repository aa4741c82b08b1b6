//! The Kubernetes CRI v1 API (`runtime.v1`) as generated Rust code, and a client that
//! connects to a CRI endpoint over a unix socket.
//!
//! Every message also has protobuf-JSON serde impls (camelCase field names, enums by name),
//! which accept the snake_case field names of crictl's config files as well.

#![deny(unsafe_code)]

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};

/// Generated code for package `runtime.v1`.
pub mod runtime {
    pub mod v1 {
        #![allow(clippy::all, clippy::pedantic, missing_docs)]
        tonic::include_proto!("runtime.v1");
        include!(concat!(env!("OUT_DIR"), "/runtime.v1.serde.rs"));
    }
}

/// Generated code for package `strata.v1`, strata's own extensions.
pub mod strata {
    pub mod v1 {
        #![allow(clippy::all, clippy::pedantic, missing_docs)]
        tonic::include_proto!("strata.v1");
        include!(concat!(env!("OUT_DIR"), "/strata.v1.serde.rs"));
    }
}

pub use runtime::v1 as cri;
pub use strata::v1 as ext;

/// The civil date (year, month 1–12, day 1–31) `days` after 1970-01-01, in the proleptic
/// Gregorian calendar (Howard Hinnant's algorithm): for the times the agent writes and the
/// client prints.
pub fn civil_date(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// The socket the agent listens on when nothing else is configured.
pub const DEFAULT_SOCKET: &str = "/run/strata/strata.sock";

/// The largest gRPC message either side takes: the agent's requests, and the replies its
/// clients read (a pod's annotations come back in every list and status). The kubelet and
/// crictl use the same 16 MiB; tonic's own default is 4 MiB.
pub const MAX_MESSAGE_SIZE: usize = 16 << 20;

/// The proto files the services are generated from (`build.rs`).
const PROTO_SOURCES: [&str; 2] = [
    include_str!("../proto/runtime/v1/api.proto"),
    include_str!("../proto/strata/v1/strata.proto"),
];

/// The path (`/package.Service/Method`) of every RPC the generated services declare, read
/// off the proto files they are generated from: the names a server may know.
pub fn rpc_paths() -> Vec<String> {
    let word = |text: &str| -> String {
        text.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '.')
            .collect()
    };
    let mut paths = Vec::new();
    for source in PROTO_SOURCES {
        let (mut package, mut service) = (String::new(), String::new());
        for line in source.lines().map(str::trim_start) {
            if let Some(rest) = line.strip_prefix("package ") {
                package = word(rest);
            } else if let Some(rest) = line.strip_prefix("service ") {
                service = word(rest);
            } else if let Some(rest) = line.strip_prefix("rpc ") {
                paths.push(format!("/{package}.{service}/{}", word(rest.trim_start())));
            }
        }
    }
    paths
}

/// Why a connection to an endpoint could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("unsupported endpoint {0:?}: expected unix:///path/to/socket or https://host:port")]
    Endpoint(String),
    #[error("cannot connect to {path}: {source}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot connect to {path}: permission denied; the socket is for root{group} only \
         (run as root, or ask for the daemon's socket_group)"
    )]
    PermissionDenied { path: PathBuf, group: String },
    #[error("cannot connect to {endpoint}: {message}")]
    Remote { endpoint: String, message: String },
    #[error("{endpoint} needs {what}")]
    TlsConfig { endpoint: String, what: String },
}

/// The files a client shows and trusts on an `https://` endpoint (mutual TLS).
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    /// The CA the server's certificate must chain to (PEM).
    pub ca: Option<PathBuf>,
    /// The client's certificate chain and key (PEM); without them the server refuses
    /// every call.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// Parses a CRI endpoint (`unix:///run/x.sock`, or a bare absolute path) into a socket path.
pub fn socket_path(endpoint: &str) -> Result<PathBuf, ConnectError> {
    let path = endpoint.strip_prefix("unix://").unwrap_or(endpoint);
    if path.starts_with('/') {
        Ok(PathBuf::from(path))
    } else {
        Err(ConnectError::Endpoint(endpoint.to_string()))
    }
}

/// Connects to a CRI endpoint. The connection is made eagerly so that a dead socket is
/// reported here, with its path, rather than on the first call.
pub async fn connect(endpoint: &str) -> Result<Channel, ConnectError> {
    connect_with(endpoint, &TlsFiles::default()).await
}

/// Connects to a unix endpoint, or to `https://host:port` with `tls`.
pub async fn connect_with(endpoint: &str, tls: &TlsFiles) -> Result<Channel, ConnectError> {
    match endpoint.strip_prefix("https://") {
        Some(address) => connect_tls(endpoint, address.trim_end_matches('/'), tls).await,
        None => connect_path(&socket_path(endpoint)?).await,
    }
}

/// Connects to the unix socket at `path`.
pub async fn connect_path(path: &Path) -> Result<Channel, ConnectError> {
    // Probe first: tonic's own error for a missing socket does not name the path.
    if let Err(source) = tokio::net::UnixStream::connect(path).await {
        if source.kind() == std::io::ErrorKind::PermissionDenied {
            return Err(ConnectError::PermissionDenied {
                path: path.to_path_buf(),
                group: socket_group(path),
            });
        }
        return Err(ConnectError::Connect {
            path: path.to_path_buf(),
            source,
        });
    }
    let target = path.to_path_buf();
    // The URI is required by the transport but never resolved: the connector dials the socket.
    let endpoint = Endpoint::from_static("http://localhost");
    endpoint
        .connect_with_connector(tower::service_fn(move |_| {
            let target = target.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(target).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
        .map_err(|e| ConnectError::Connect {
            path: path.to_path_buf(),
            source: std::io::Error::other(e),
        })
}

/// " and group N" for a socket whose group may use it, as far as it can be seen (through
/// its directory's group when the socket itself cannot be looked at).
fn socket_group(path: &Path) -> String {
    use std::os::unix::fs::MetadataExt as _;
    let group = match std::fs::metadata(path) {
        Ok(meta) => (meta.mode() & 0o060 != 0).then_some(meta.gid()),
        Err(_) => path
            .parent()
            .and_then(|dir| std::fs::metadata(dir).ok())
            .and_then(|meta| (meta.mode() & 0o010 != 0).then_some(meta.gid())),
    };
    match group {
        Some(gid) if gid != 0 => format!(" and group {gid}"),
        _ => String::new(),
    }
}

async fn connect_tls(
    endpoint: &str,
    address: &str,
    files: &TlsFiles,
) -> Result<Channel, ConnectError> {
    let remote = |message: String| ConnectError::Remote {
        endpoint: endpoint.to_string(),
        message,
    };
    let config = std::sync::Arc::new(client_config(endpoint, files)?);
    let host = match address.rsplit_once(':') {
        Some((host, _)) => host.trim_start_matches('[').trim_end_matches(']'),
        None => return Err(ConnectError::Endpoint(endpoint.to_string())),
    };
    let name = rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| remote(format!("{host:?} is not a host name: {e}")))?;
    let dial = {
        let (address, name, config) = (address.to_string(), name.clone(), config.clone());
        move || {
            let (address, name, config) = (address.clone(), name.clone(), config.clone());
            async move {
                let tcp = tokio::net::TcpStream::connect(&address).await?;
                let _ = tcp.set_nodelay(true);
                tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await
            }
        }
    };
    // Probe first, so that a refusal is reported as what it is. In TLS 1.3 the server
    // judges the client's certificate after the client thinks the handshake done: only
    // its first answer (its HTTP/2 settings, or an alert) tells.
    let probe = async {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut tls = dial().await?;
        tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
            .await?;
        tls.flush().await?;
        let mut answer = [0u8; 9];
        tls.read_exact(&mut answer).await.map(drop)
    };
    probe.await.map_err(|e| {
        let refused = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .is_some_and(|e| matches!(e, rustls::Error::AlertReceived(_)));
        match refused {
            true => remote(format!(
                "the server refused this client's certificate ({e})"
            )),
            false => remote(format!("TLS: {e}")),
        }
    })?;
    let dial = move || {
        let dial = dial.clone();
        async move { dial().await.map(TokioIo::new) }
    };
    let uri = format!("http://{address}");
    Endpoint::from_shared(uri)
        .map_err(|e| remote(e.to_string()))?
        .connect_with_connector(tower::service_fn(move |_| dial()))
        .await
        .map_err(|e| remote(e.to_string()))
}

fn client_config(endpoint: &str, files: &TlsFiles) -> Result<rustls::ClientConfig, ConnectError> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let needs = |what: &str| ConnectError::TlsConfig {
        endpoint: endpoint.to_string(),
        what: what.to_string(),
    };
    let ca = files
        .ca
        .as_ref()
        .ok_or_else(|| needs("--cacert (the CA its certificate chains to)"))?;
    let certs = |path: &Path| {
        CertificateDer::pem_file_iter(path)
            .and_then(|c| c.collect::<Result<Vec<_>, _>>())
            .map_err(|e| needs(&format!("a readable PEM file: {}: {e}", path.display())))
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs(ca)? {
        roots
            .add(cert)
            .map_err(|e| needs(&format!("a CA certificate in {}: {e}", ca.display())))?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| needs(&e.to_string()))?
        .with_root_certificates(roots);
    let mut config = match (&files.cert, &files.key) {
        (Some(cert), Some(key)) => {
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| needs(&format!("a readable PEM key: {}: {e}", key.display())))?;
            builder
                .with_client_auth_cert(certs(cert)?, key)
                .map_err(|e| needs(&format!("a matching certificate and key: {e}")))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => return Err(needs("both --cert and --key, or neither")),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        assert_eq!(
            socket_path("unix:///run/strata/strata.sock").unwrap(),
            PathBuf::from("/run/strata/strata.sock")
        );
        assert_eq!(
            socket_path("/tmp/a.sock").unwrap(),
            PathBuf::from("/tmp/a.sock")
        );
        assert!(matches!(
            socket_path("tcp://1.2.3.4:5"),
            Err(ConnectError::Endpoint(_))
        ));
        assert!(matches!(
            socket_path("relative.sock"),
            Err(ConnectError::Endpoint(_))
        ));
    }

    #[test]
    fn rpc_paths_name_every_method_of_the_generated_services() {
        let paths = rpc_paths();
        for path in [
            "/runtime.v1.RuntimeService/Version",
            "/runtime.v1.RuntimeService/StreamPodSandboxMetrics",
            "/runtime.v1.ImageService/ImageFsInfo",
            "/strata.v1.Images/CheckStore",
        ] {
            assert!(paths.iter().any(|p| p == path), "{path} in {paths:?}");
        }
        let services = [
            cri::runtime_service_server::SERVICE_NAME,
            cri::image_service_server::SERVICE_NAME,
            ext::images_server::SERVICE_NAME,
        ];
        for path in &paths {
            let (service, method) = path[1..].split_once('/').expect("/service/method");
            assert!(services.contains(&service), "{path}");
            assert!(
                method.starts_with(|c: char| c.is_ascii_uppercase())
                    && method.chars().all(|c| c.is_ascii_alphanumeric()),
                "{path}"
            );
        }
        let declared: usize = PROTO_SOURCES
            .iter()
            .map(|s| {
                s.lines()
                    .filter(|l| l.trim_start().starts_with("rpc "))
                    .count()
            })
            .sum();
        assert_eq!(paths.len(), declared);
    }

    #[test]
    fn json_uses_proto_names_and_accepts_crictl_snake_case() {
        let resp = cri::VersionResponse {
            version: "0.1.0".into(),
            runtime_name: "strata".into(),
            runtime_version: "0.1.0".into(),
            runtime_api_version: "v1".into(),
        };
        let json = serde_json::to_value(&resp).unwrap();
        assert_eq!(json["runtimeName"], "strata");
        let cfg: cri::PodSandboxConfig = serde_json::from_str(
            r#"{"metadata":{"name":"p","namespace":"default","uid":"u1"},"log_directory":"/tmp/l"}"#,
        )
        .unwrap();
        assert_eq!(cfg.log_directory, "/tmp/l");
        assert_eq!(cfg.metadata.unwrap().name, "p");
    }
}
