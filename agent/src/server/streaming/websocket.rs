//! The streaming protocols over WebSocket, for newer kubectl and for browsers: every
//! message is one channel's, its first byte the channel (binary protocols) or the channel
//! as an ASCII digit followed by the data in base64 (`base64.` protocols, text messages).
//! Remote command: channels 0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize, every one the
//! request asked for open from the start; in `v5.channel.k8s.io` a client message
//! `[255, channel]` closes that channel (stdin's end). Port-forward: two channels per port
//! of the request, data (`2i`) and error (`2i+1`), each first carrying the port as two
//! little-endian bytes.

use std::{sync::Arc, time::Duration};

use base64::Engine;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt, stream::SplitSink};
use http::HeaderMap;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::mpsc,
};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{Message, protocol::Role, protocol::WebSocketConfig},
};

use super::{
    Activity, ExecRequest, Limits, PortForwardRequest,
    portforward::{Event, forward},
    session::{Channel, Command, Input, Opened, Out},
};
use crate::runtime::Runtime;

/// The remote-command protocols, as the client may name them in `Sec-WebSocket-Protocol`;
/// a client naming none gets `channel.k8s.io`'s framing.
pub const REMOTE_COMMAND_PROTOCOLS: &[&str] = &[
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v4.base64.channel.k8s.io",
    "channel.k8s.io",
    "base64.channel.k8s.io",
];

/// The port-forward protocols.
pub const PORT_FORWARD_PROTOCOLS: &[&str] = &["v4.channel.k8s.io", "v4.base64.channel.k8s.io"];

/// v5's close signal, from the client: `[CLOSE, channel]`.
const CLOSE: u8 = 255;
/// Largest message taken from a client.
const MAX_MESSAGE: usize = 1 << 20;
/// How long the client may take to answer our close.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// An upgrade to WebSocket is asked for.
pub fn wanted(headers: &HeaderMap) -> bool {
    let has = |name: http::header::HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.to_ascii_lowercase().contains(token))
    };
    has(http::header::CONNECTION, "upgrade") && has(http::header::UPGRADE, "websocket")
}

/// Why a WebSocket handshake is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No key, or a version other than 13.
    BadRequest(String),
    /// None of the client's protocols is ours.
    Protocol(String),
}

/// The handshake's answer: `Sec-WebSocket-Accept`, and the protocol chosen (the client's
/// first that is ours; empty when it named none).
pub fn handshake(
    headers: &HeaderMap,
    ours: &[&'static str],
) -> Result<(String, &'static str), Refusal> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if get("sec-websocket-version").map(str::trim) != Some("13") {
        return Err(Refusal::BadRequest(
            "unable to upgrade: Sec-WebSocket-Version must be 13".into(),
        ));
    }
    let Some(key) = get("sec-websocket-key")
        .map(str::trim)
        .filter(|k| !k.is_empty())
    else {
        return Err(Refusal::BadRequest(
            "unable to upgrade: Sec-WebSocket-Key is missing".into(),
        ));
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let offered: Vec<&str> = headers
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    if offered.is_empty() {
        return Ok((accept, ""));
    }
    offered
        .iter()
        .find_map(|p| ours.iter().find(|o| *o == p))
        .map(|chosen| (accept, *chosen))
        .ok_or_else(|| {
            Refusal::Protocol(format!(
                "unable to upgrade: none of the requested protocols {offered:?} is supported (supported: {ours:?})"
            ))
        })
}

/// How a protocol frames a channel's bytes.
#[derive(Debug, Clone, Copy)]
struct Codec {
    base64: bool,
}

impl Codec {
    fn of(protocol: &str) -> Codec {
        Codec {
            base64: protocol.contains("base64"),
        }
    }

    fn encode(self, channel: u8, data: &[u8]) -> Message {
        if self.base64 {
            let mut text = String::with_capacity(1 + data.len().div_ceil(3) * 4);
            // '0' + channel, as the kubelet writes it (':' for 10 and so on).
            text.push(char::from(b'0'.saturating_add(channel)));
            base64::engine::general_purpose::STANDARD.encode_string(data, &mut text);
            Message::text(text)
        } else {
            let mut bytes = Vec::with_capacity(1 + data.len());
            bytes.push(channel);
            bytes.extend_from_slice(data);
            Message::binary(bytes)
        }
    }

    /// A client message as (channel, data); `None` for one that is neither.
    fn decode(self, message: &Message) -> Option<(u8, Bytes)> {
        match (message, self.base64) {
            (Message::Binary(bytes), false) => {
                let (&channel, _) = bytes.split_first()?;
                Some((channel, bytes.slice(1..)))
            }
            (Message::Text(text), true) => {
                let (first, rest) = text.as_str().split_at_checked(1)?;
                let channel = first.as_bytes()[0].checked_sub(b'0')?;
                let data = base64::engine::general_purpose::STANDARD
                    .decode(rest)
                    .ok()?;
                Some((channel, Bytes::from(data)))
            }
            _ => None,
        }
    }
}

/// The upgraded connection as a server's WebSocket.
pub async fn accept<IO>(io: IO) -> WebSocketStream<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE));
    WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await
}

/// One remote-command session over WebSocket, to its end. The command's output goes out
/// from a task of its own, beside the loop that reads the client (a command writing while
/// its input is full must not wait on that loop).
pub async fn remote_command<IO>(
    ws: WebSocketStream<IO>,
    runtime: Arc<Runtime>,
    request: ExecRequest,
    protocol: &'static str,
    limits: Limits,
) where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let codec = Codec::of(protocol);
    let v5 = protocol == "v5.channel.k8s.io";
    let (sink, mut incoming) = ws.split();
    let opened = Opened {
        stdin: request.stdin,
        stdout: request.stdout,
        stderr: request.stderr && !request.tty,
        resize: request.tty,
    };
    // The client hears that the session is up: an empty message on the lowest channel it
    // reads.
    let first = if opened.stdout {
        Channel::Stdout
    } else if opened.stderr {
        Channel::Stderr
    } else {
        Channel::Error
    };
    let (out, output) = mpsc::channel(16);
    // An empty protocol is channel.k8s.io's: text statuses.
    let status_protocol = if protocol.is_empty() {
        "channel.k8s.io"
    } else {
        protocol
    };
    let activity = Activity::new();
    let mut command = Command::start(&runtime, &request, status_protocol, opened, out).await;
    let mut writer = tokio::spawn(write_output(sink, output, codec, first, activity.clone()));
    let mut close_deadline: Option<tokio::time::Instant> = None;
    loop {
        let until = close_deadline.unwrap_or_else(|| activity.deadline(limits.idle));
        tokio::select! {
            message = incoming.next() => {
                activity.touch();
                let message = match message {
                    Some(Ok(Message::Close(_))) | None => break,
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "a WebSocket streaming client failed");
                        break;
                    }
                    Some(Ok(message)) => message,
                };
                let Some((channel, data)) = codec.decode(&message) else { continue };
                match (channel, Channel::from_byte(channel)) {
                    (CLOSE, _) if v5 && data.first() == Some(&(Channel::Stdin as u8)) => {
                        command.send(Input::StdinEnd).await;
                    }
                    (_, Some(Channel::Stdin)) if opened.stdin => {
                        command.send(Input::Stdin(data)).await;
                    }
                    (_, Some(Channel::Resize)) if opened.resize => {
                        command.resize_bytes(&data).await;
                    }
                    _ => {}
                }
            }
            // The command ended, its status is sent and our close too: the client answers.
            _ = &mut writer, if close_deadline.is_none() => {
                close_deadline = Some(tokio::time::Instant::now() + CLOSE_GRACE);
            }
            () = tokio::time::sleep_until(until) => {
                if close_deadline.is_none() {
                    if tokio::time::Instant::now() < activity.deadline(limits.idle) {
                        continue;
                    }
                    tracing::info!("a WebSocket streaming session was idle too long");
                }
                break;
            }
        }
    }
    command.cancel();
    if close_deadline.is_none() {
        // The command's end still goes out, if the client still reads.
        if tokio::time::timeout(CLOSE_GRACE, &mut writer)
            .await
            .is_err()
        {
            writer.abort();
        }
    }
}

/// Sends the session's first (empty) message, then the command's output and status as
/// they come, then our close.
async fn write_output<IO>(
    mut sink: SplitSink<WebSocketStream<IO>, Message>,
    mut output: mpsc::Receiver<Out>,
    codec: Codec,
    first: Channel,
    activity: Activity,
) where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    if sink.send(codec.encode(first as u8, &[])).await.is_err() {
        return;
    }
    while let Some(out) = output.recv().await {
        activity.touch();
        let message = match out {
            Out::Data(channel, data) => codec.encode(channel as u8, &data),
            Out::Status(status) => codec.encode(Channel::Error as u8, &status),
        };
        if sink.send(message).await.is_err() {
            // The client is gone: dropping `output` ends the command's pumps.
            return;
        }
    }
    let _ = sink.close().await;
}

/// One port-forward session over WebSocket: a connection to each of the request's ports,
/// made at once, until every one has ended or the client goes away. What the pod sends
/// goes out from a task of its own, beside the loop that reads the client.
pub async fn port_forward<IO>(
    ws: WebSocketStream<IO>,
    request: PortForwardRequest,
    protocol: &'static str,
    limits: Limits,
) where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let codec = Codec::of(protocol);
    let (sink, mut incoming) = ws.split();
    let netns = Arc::new(request.netns);
    let (events_tx, events) = mpsc::channel::<(usize, Event)>(64);
    let activity = Activity::new();
    let mut upstream = Vec::new();
    for (i, port) in request.ports.iter().enumerate() {
        let (tx, rx) = mpsc::channel(16);
        upstream.push(Some(tx));
        tokio::spawn(forward(Arc::clone(&netns), *port, i, rx, events_tx.clone()));
    }
    drop(events_tx);
    let mut writer = tokio::spawn(write_events(
        sink,
        events,
        codec,
        request.ports.clone(),
        activity.clone(),
    ));
    loop {
        tokio::select! {
            message = incoming.next() => {
                activity.touch();
                let message = match message {
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(message)) => message,
                };
                let Some((channel, data)) = codec.decode(&message) else { continue };
                let port = usize::from(channel) / 2;
                if channel % 2 == 0
                    && !data.is_empty()
                    && let Some(Some(tx)) = upstream.get(port)
                    && tx.send(Some(data)).await.is_err()
                {
                    upstream[port] = None;
                }
            }
            // Every connection has ended (or the client stopped reading).
            _ = &mut writer => break,
            () = tokio::time::sleep_until(activity.deadline(limits.idle)) => {
                if tokio::time::Instant::now() < activity.deadline(limits.idle) {
                    continue;
                }
                tracing::info!("a WebSocket port-forward session was idle too long");
                break;
            }
        }
    }
    // The connections end with the session (they see the writer gone).
    drop(upstream);
    writer.abort();
}

/// Sends each port's two opening messages, then what the connections say, then our close.
async fn write_events<IO>(
    mut sink: SplitSink<WebSocketStream<IO>, Message>,
    mut events: mpsc::Receiver<(usize, Event)>,
    codec: Codec,
    ports: Vec<u16>,
    activity: Activity,
) where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    for (i, port) in ports.iter().enumerate() {
        let head = port.to_le_bytes();
        for channel in [2 * i, 2 * i + 1] {
            if sink.send(codec.encode(channel as u8, &head)).await.is_err() {
                return;
            }
        }
    }
    while let Some((i, event)) = events.recv().await {
        activity.touch();
        let message = match event {
            Event::Data(data) => codec.encode((2 * i) as u8, &data),
            Event::Error(text) => codec.encode((2 * i + 1) as u8, text.as_bytes()),
            Event::End => continue,
        };
        if sink.send(message).await.is_err() {
            return;
        }
    }
    let _ = sink.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(*k, http::header::HeaderValue::from_static(v));
        }
        map
    }

    #[test]
    fn the_handshake_answers_rfc_6455s_example_and_the_clients_first_protocol() {
        let h = headers(&[
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            (
                "sec-websocket-protocol",
                "v9.channel.k8s.io, v4.base64.channel.k8s.io",
            ),
            ("sec-websocket-protocol", "v5.channel.k8s.io"),
        ]);
        let (accept, protocol) = handshake(&h, REMOTE_COMMAND_PROTOCOLS).unwrap();
        assert_eq!(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(protocol, "v4.base64.channel.k8s.io");
        // No protocol named: the plain framing.
        let none = headers(&[
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ]);
        assert_eq!(handshake(&none, REMOTE_COMMAND_PROTOCOLS).unwrap().1, "");
    }

    #[test]
    fn bad_handshakes_are_refused() {
        let key = ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
        assert!(matches!(
            handshake(&headers(&[key]), REMOTE_COMMAND_PROTOCOLS),
            Err(Refusal::BadRequest(_))
        ));
        assert!(matches!(
            handshake(
                &headers(&[("sec-websocket-version", "13")]),
                REMOTE_COMMAND_PROTOCOLS
            ),
            Err(Refusal::BadRequest(_))
        ));
        assert!(matches!(
            handshake(
                &headers(&[
                    ("sec-websocket-version", "13"),
                    key,
                    ("sec-websocket-protocol", "portforward.k8s.io")
                ]),
                REMOTE_COMMAND_PROTOCOLS
            ),
            Err(Refusal::Protocol(_))
        ));
        assert!(wanted(&headers(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "WebSocket")
        ])));
        assert!(!wanted(&headers(&[
            ("connection", "Upgrade"),
            ("upgrade", "SPDY/3.1")
        ])));
    }

    #[test]
    fn channels_frame_as_bytes_or_base64_text() {
        let binary = Codec { base64: false };
        let m = binary.encode(1, b"hi");
        assert_eq!(m, Message::binary(vec![1, b'h', b'i']));
        assert_eq!(binary.decode(&m), Some((1, Bytes::from_static(b"hi"))));
        assert_eq!(
            binary.decode(&Message::binary(vec![CLOSE, 0])),
            Some((CLOSE, Bytes::from_static(&[0])))
        );
        let text = Codec { base64: true };
        let m = text.encode(2, b"hello");
        assert_eq!(m, Message::text("2aGVsbG8="));
        assert_eq!(text.decode(&m), Some((2, Bytes::from_static(b"hello"))));
        // Wrong kinds and broken messages are nothing.
        assert_eq!(text.decode(&Message::binary(vec![0, 1])), None);
        assert_eq!(binary.decode(&Message::text("0aGk=")), None);
        assert_eq!(binary.decode(&Message::binary(Vec::new())), None);
        assert_eq!(text.decode(&Message::text("0***")), None);
        assert_eq!(text.decode(&Message::text("")), None);
        assert_eq!(text.decode(&Message::text("\u{e9}x")), None);
    }
}
