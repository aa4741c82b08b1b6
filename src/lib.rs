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

/// The socket the agent listens on when nothing else is configured.
pub const DEFAULT_SOCKET: &str = "/run/strata/strata.sock";

/// Why a connection to an endpoint could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("unsupported endpoint {0:?}: expected unix:///path/to/socket")]
    Endpoint(String),
    #[error("cannot connect to {path}: {source}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
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
    let path = socket_path(endpoint)?;
    connect_path(&path).await
}

/// Connects to the unix socket at `path`.
pub async fn connect_path(path: &Path) -> Result<Channel, ConnectError> {
    // Probe first: tonic's own error for a missing socket does not name the path.
    if let Err(source) = tokio::net::UnixStream::connect(path).await {
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
