//! Exec, attach and port-forward through the runtime's streaming server, over WebSocket
//! (the CRI call answers with a URL; `v5.channel.k8s.io` for commands, falling back to
//! `v4.channel.k8s.io`; `v4.channel.k8s.io` for port-forward). On a terminal, stdin is put
//! in raw mode for the session and restored after, and window sizes follow the terminal.

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use futures_util::{SinkExt, StreamExt};
use strata_api::cri::{AttachRequest, ExecRequest, PortForwardRequest};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{Message, client::IntoClientRequest, http::HeaderValue},
};

use crate::Client;

/// Channel bytes of remote command.
const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
/// v5's close signal: `[CLOSE, channel]`.
const CLOSE: u8 = 255;

/// A connection to the streaming server, plain or TLS.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Runs `cmd` in container `id` on the streaming server; the command's exit code.
pub async fn exec(
    client: &Client,
    id: &str,
    cmd: &[String],
    stdin: bool,
    tty: bool,
) -> anyhow::Result<i32> {
    let request = ExecRequest {
        container_id: id.to_string(),
        cmd: cmd.to_vec(),
        tty,
        stdin,
        stdout: true,
        stderr: !tty,
        ..Default::default()
    };
    let url = client
        .call("exec", client.runtime().exec(request))
        .await?
        .url;
    remote_command(&url, stdin, tty).await
}

/// Attaches to container `id`'s stdio until it exits (or stdin ends, with `stdin`).
pub async fn attach(client: &Client, id: &str, stdin: bool, tty: bool) -> anyhow::Result<i32> {
    let request = AttachRequest {
        container_id: id.to_string(),
        stdin,
        tty,
        stdout: true,
        stderr: !tty,
        ..Default::default()
    };
    let url = client
        .call("attach", client.runtime().attach(request))
        .await?
        .url;
    remote_command(&url, stdin, tty).await
}

/// Connects to `url` as a WebSocket client offering `protocols`.
async fn connect(
    url: &str,
    protocols: &str,
) -> anyhow::Result<(WebSocketStream<Box<dyn Io>>, String)> {
    let (tls, rest) = if let Some(rest) = url.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (false, rest)
    } else {
        anyhow::bail!("the runtime answered with {url:?}, not an http(s) URL");
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let tcp = TcpStream::connect(authority)
        .await
        .with_context(|| format!("connecting to the streaming server at {authority}"))?;
    let stream: Box<dyn Io> = match tls {
        false => Box::new(tcp),
        true => {
            let host = authority
                .rsplit_once(':')
                .map_or(authority, |(h, _)| h)
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let name = rustls::pki_types::ServerName::try_from(host)
                .context("the streaming server's name")?;
            Box::new(tls_connector()?.connect(name, tcp).await.context("TLS")?)
        }
    };
    let ws_url = format!("{}://{rest}", if tls { "wss" } else { "ws" });
    let mut request = ws_url.into_client_request().context("the streaming URL")?;
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", HeaderValue::from_str(protocols)?);
    let (ws, response) = tokio_tungstenite::client_async(request, stream)
        .await
        .context("the streaming server refused the session")?;
    let protocol = response
        .headers()
        .get("Sec-WebSocket-Protocol")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    Ok((ws, protocol))
}

/// The streaming server's certificate is not checked, as crictl and the kubelet do not
/// check it: the URL's one-time token is the credential, and it came over the CRI socket.
fn tls_connector() -> anyhow::Result<tokio_rustls::TlsConnector> {
    #[derive(Debug)]
    struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);
    impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
        fn verify_server_cert(
            &self,
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &[rustls::pki_types::CertificateDer<'_>],
            _: &rustls::pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &rustls::pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &rustls::pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// Stdin in raw mode while this lives (when it is a terminal).
struct RawMode {
    saved: Option<rustix::termios::Termios>,
}

impl RawMode {
    fn enter() -> RawMode {
        let stdin = std::io::stdin();
        let saved = rustix::termios::tcgetattr(&stdin).ok();
        if let Some(saved) = &saved {
            let mut raw = saved.clone();
            raw.make_raw();
            let _ = rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &raw);
        }
        RawMode { saved }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            let _ = rustix::termios::tcsetattr(
                std::io::stdin(),
                rustix::termios::OptionalActions::Now,
                saved,
            );
        }
    }
}

/// The terminal's size as the resize channel carries it.
fn window_size() -> Option<Vec<u8>> {
    let size = rustix::termios::tcgetwinsize(std::io::stdout()).ok()?;
    (size.ws_col > 0).then(|| {
        serde_json::json!({"Width": size.ws_col, "Height": size.ws_row})
            .to_string()
            .into_bytes()
    })
}

/// A remote-command session: stdin (if asked) to the command, its output to ours, and its
/// status at the end.
async fn remote_command(url: &str, stdin: bool, tty: bool) -> anyhow::Result<i32> {
    let (ws, protocol) = connect(url, "v5.channel.k8s.io, v4.channel.k8s.io").await?;
    let v5 = protocol == "v5.channel.k8s.io";
    let (mut sink, mut incoming) = ws.split();
    let _raw = (tty && stdin).then(RawMode::enter);
    let (to_server, mut outgoing) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    if tty {
        let resizes = to_server.clone();
        tokio::spawn(async move {
            let Ok(mut changes) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
            else {
                return;
            };
            loop {
                if let Some(size) = window_size()
                    && resizes
                        .send([&[RESIZE], size.as_slice()].concat())
                        .await
                        .is_err()
                {
                    return;
                }
                if changes.recv().await.is_none() {
                    return;
                }
            }
        });
    }
    if stdin {
        let input = to_server.clone();
        tokio::spawn(async move {
            let mut stdin = tokio::io::stdin();
            let mut buf = vec![0u8; 32 << 10];
            loop {
                match stdin.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if input.send([&[STDIN], &buf[..n]].concat()).await.is_err() {
                            return;
                        }
                    }
                }
            }
            if v5 {
                let _ = input.send(vec![CLOSE, STDIN]).await;
            }
        });
    }
    drop(to_server);
    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    let mut status: Option<Vec<u8>> = None;
    let mut sending = true;
    loop {
        tokio::select! {
            message = incoming.next() => {
                let data = match message {
                    None | Some(Ok(Message::Close(_))) => break,
                    Some(Err(e)) => return Err(anyhow::Error::new(e).context("the streaming session")),
                    Some(Ok(Message::Binary(data))) => data,
                    Some(Ok(_)) => continue,
                };
                let Some((&channel, data)) = data.split_first() else { continue };
                match channel {
                    STDOUT => { stdout.write_all(data).await?; stdout.flush().await?; }
                    STDERR => { stderr.write_all(data).await?; stderr.flush().await?; }
                    ERROR => status.get_or_insert_with(Vec::new).extend_from_slice(data),
                    _ => {}
                }
            }
            message = outgoing.recv(), if sending => match message {
                Some(message) => {
                    if sink.send(Message::binary(message)).await.is_err() {
                        sending = false;
                    }
                }
                None => sending = false,
            },
        }
    }
    drop(_raw);
    exit_code(status.as_deref())
}

/// The command's exit code from what came on the error channel (a `metav1.Status`).
fn exit_code(status: Option<&[u8]>) -> anyhow::Result<i32> {
    let Some(status) = status.filter(|s| !s.is_empty()) else {
        return Ok(0);
    };
    let value: serde_json::Value = serde_json::from_slice(status)
        .map_err(|_| anyhow::anyhow!("{}", String::from_utf8_lossy(status).trim()))?;
    if value["status"] == "Success" {
        return Ok(0);
    }
    if value["reason"] == "NonZeroExitCode"
        && let Some(causes) = value["details"]["causes"].as_array()
        && let Some(code) = causes
            .iter()
            .find(|c| c["reason"] == "ExitCode")
            .and_then(|c| c["message"].as_str())
            .and_then(|m| m.parse().ok())
    {
        return Ok(code);
    }
    anyhow::bail!(
        "{}",
        value["message"].as_str().unwrap_or("the command failed")
    )
}

/// `[LOCAL:]REMOTE` as two ports (LOCAL 0: any free one; no LOCAL: the same as REMOTE).
pub fn parse_ports(spec: &str) -> anyhow::Result<(u16, u16)> {
    let parse = |p: &str| {
        p.parse::<u16>()
            .with_context(|| format!("{p:?} in {spec:?} is not a port"))
    };
    let (local, remote) = match spec.split_once(':') {
        Some(("", remote)) => (0, parse(remote)?),
        Some((local, remote)) => (parse(local)?, parse(remote)?),
        None => (parse(spec)?, parse(spec)?),
    };
    anyhow::ensure!(remote > 0, "the pod's port in {spec:?} must be 1-65535");
    Ok((local, remote))
}

/// Forwards local ports on 127.0.0.1 to pod `pod`'s ports until interrupted: every local
/// connection gets a port-forward session of its own.
pub async fn port_forward(client: &Client, pod: &str, specs: &[String]) -> anyhow::Result<()> {
    let mut listeners = Vec::new();
    for spec in specs {
        let (local, remote) = parse_ports(spec)?;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", local))
            .await
            .with_context(|| format!("listening on 127.0.0.1:{local}"))?;
        let bound = listener.local_addr()?.port();
        println!("Forwarding from 127.0.0.1:{bound} -> {remote}");
        listeners.push((listener, remote));
    }
    let client = Arc::new(Client {
        channel: client.channel.clone(),
        timeout: client.timeout,
    });
    let mut accepting = tokio::task::JoinSet::new();
    for (listener, remote) in listeners {
        let client = Arc::clone(&client);
        let pod = pod.to_string();
        accepting.spawn(async move {
            loop {
                let Ok((local, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                println!("Handling connection for {remote}");
                let (client, pod) = (Arc::clone(&client), pod.clone());
                tokio::spawn(async move {
                    if let Err(e) = forward_one(&client, &pod, remote, local).await {
                        eprintln!("stratactl: port {remote}: {}", crate::one_line(&e));
                    }
                });
            }
        });
    }
    tokio::select! {
        _ = tokio::signal::ctrl_c() => Ok(()),
        _ = accepting.join_next() => Ok(()),
    }
}

/// One local connection through its own port-forward session.
async fn forward_one(
    client: &Client,
    pod: &str,
    port: u16,
    local: TcpStream,
) -> anyhow::Result<()> {
    let request = PortForwardRequest {
        pod_sandbox_id: pod.to_string(),
        port: vec![i32::from(port)],
    };
    let url = client
        .call("port-forward", client.runtime().port_forward(request))
        .await?
        .url;
    let (ws, _) = connect(&url, "v4.channel.k8s.io").await?;
    let (mut sink, mut incoming) = ws.split();
    let (mut from_local, mut to_local) = local.into_split();
    // Each channel's first two bytes are the port.
    let mut heads = [2usize, 2usize];
    let mut buf = vec![0u8; 32 << 10];
    let mut local_open = true;
    loop {
        tokio::select! {
            read = from_local.read(&mut buf), if local_open => match read {
                Ok(0) | Err(_) => local_open = false,
                Ok(n) => sink.send(Message::binary([&[0u8], &buf[..n]].concat())).await?,
            },
            message = incoming.next() => {
                let data = match message {
                    None | Some(Ok(Message::Close(_))) | Some(Err(_)) => break,
                    Some(Ok(Message::Binary(data))) => data,
                    Some(Ok(_)) => continue,
                };
                let Some((&channel, mut data)) = data.split_first() else { continue };
                let Some(head) = heads.get_mut(usize::from(channel)) else { continue };
                let skip = (*head).min(data.len());
                *head -= skip;
                data = &data[skip..];
                if data.is_empty() {
                    continue;
                }
                if channel == 1 {
                    anyhow::bail!("{}", String::from_utf8_lossy(data).trim());
                }
                to_local.write_all(data).await?;
            }
        }
    }
    let _ = to_local.shutdown().await;
    let _ = sink.close().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_specs_read_as_crictls() {
        assert_eq!(parse_ports("8080:80").unwrap(), (8080, 80));
        assert_eq!(parse_ports(":80").unwrap(), (0, 80));
        assert_eq!(parse_ports("80").unwrap(), (80, 80));
        assert!(parse_ports("80:0").is_err());
        assert!(parse_ports("x:80").is_err());
        assert!(parse_ports("70000").is_err());
    }

    #[test]
    fn exit_codes_come_from_the_status() {
        assert_eq!(exit_code(None).unwrap(), 0);
        assert_eq!(
            exit_code(Some(br#"{"metadata":{},"status":"Success"}"#)).unwrap(),
            0
        );
        let failed = br#"{"status":"Failure","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}"#;
        assert_eq!(exit_code(Some(failed)).unwrap(), 3);
        let internal = br#"{"status":"Failure","message":"Internal error occurred: no such container","reason":"InternalError"}"#;
        let e = exit_code(Some(internal)).unwrap_err().to_string();
        assert!(e.contains("no such container"), "{e}");
        assert!(exit_code(Some(b"plain text failure")).is_err());
    }
}
