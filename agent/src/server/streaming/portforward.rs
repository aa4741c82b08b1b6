//! Port-forward over SPDY (`portforward.k8s.io`): every forwarded connection is a pair of
//! client streams, `error` and `data`, with the same `requestid` and the pod's `port`. Once
//! both are there the agent connects to that port on the pod's loopback (inside the pod's
//! network namespace) and copies both ways; a failure goes as text on the error stream.

use std::{collections::HashMap, path::PathBuf, sync::Arc, time::Duration};

use bytes::{Bytes, BytesMut};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    sync::mpsc,
};

use super::{
    Activity, Limits, PortForwardRequest,
    spdy::{Decoder, Frame, RST_REFUSED_STREAM},
    write_frames,
};

/// How long a pair's second stream may take to come.
const PAIR_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes per data frame.
const CHUNK: usize = 32 << 10;

struct Pair {
    error: Option<u32>,
    data: Option<u32>,
    port: u16,
    since: tokio::time::Instant,
}

/// What a forwarded connection tells its client.
#[derive(Debug)]
pub enum Event {
    Data(Bytes),
    /// Why the connection could not be made.
    Error(String),
    /// The pod's side is done.
    End,
}

/// Runs one port-forward session on an upgraded connection, until the client closes it.
pub async fn run<IO>(io: IO, request: PortForwardRequest, limits: Limits)
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut reader, writer) = tokio::io::split(io);
    let (frames, outgoing) = mpsc::channel::<Frame>(64);
    let writing = tokio::spawn(write_frames(writer, outgoing));
    let netns = Arc::new(request.netns);
    // What the forwarded connections say, by their (data, error) streams, goes out beside
    // this loop (a connection's data must not wait on the reader).
    let (events_tx, events) = mpsc::channel::<((u32, u32), Event)>(64);
    let activity = Activity::new();
    let relaying = tokio::spawn(relay(events, frames.clone(), activity.clone()));
    let mut pending: HashMap<String, Pair> = HashMap::new();
    // Where the client's data for a forwarded connection goes (None: its end).
    let mut upstream: HashMap<u32, mpsc::Sender<Option<Bytes>>> = HashMap::new();
    // Each forwarded connection's task, by both of its streams (a reset of either ends it).
    let mut connections: HashMap<u32, tokio::task::AbortHandle> = HashMap::new();
    let mut decoder = Decoder::default();
    let mut buf = BytesMut::with_capacity(64 << 10);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            read = reader.read_buf(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(_) => activity.touch(),
            },
            () = tokio::time::sleep_until(activity.deadline(limits.idle)) => {
                if tokio::time::Instant::now() < activity.deadline(limits.idle) {
                    continue;
                }
                tracing::info!("a port-forward session was idle too long");
                break;
            }
            _ = tick.tick() => {
                // A pair whose second stream never came: told on its error stream, if any.
                let now = tokio::time::Instant::now();
                let expired: Vec<String> = pending
                    .iter()
                    .filter(|(_, p)| now.duration_since(p.since) > PAIR_TIMEOUT)
                    .map(|(id, _)| id.clone())
                    .collect();
                for id in expired {
                    let Some(pair) = pending.remove(&id) else { continue };
                    for stream in pair.data.into_iter().chain(pair.error) {
                        let message = (Some(stream) == pair.error)
                            .then(|| format!("request {id}: timed out waiting for its streams"));
                        close_with(&frames, stream, message).await;
                    }
                }
                continue;
            }
        }
        let mut closed = false;
        loop {
            let frame = match decoder.decode(&mut buf) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "bad SPDY from a port-forward client");
                    closed = true;
                    break;
                }
            };
            match frame {
                Frame::SynStream {
                    stream, headers, ..
                } => {
                    let get = |name: &str| {
                        headers
                            .iter()
                            .find(|(n, _)| n == name)
                            .map(|(_, v)| v.as_str())
                    };
                    let port = get("port")
                        .and_then(|p| p.parse::<u16>().ok())
                        .filter(|p| *p > 0);
                    let kind = get("streamtype");
                    let (Some(port), Some(kind @ ("error" | "data"))) = (port, kind) else {
                        let _ = frames
                            .send(Frame::RstStream {
                                stream,
                                status: RST_REFUSED_STREAM,
                            })
                            .await;
                        continue;
                    };
                    let id = get("requestid").map_or_else(
                        // Old clients: the data stream follows its error stream.
                        || {
                            (if kind == "error" {
                                stream
                            } else {
                                stream.saturating_sub(2)
                            })
                            .to_string()
                        },
                        str::to_string,
                    );
                    let _ = frames
                        .send(Frame::SynReply {
                            stream,
                            fin: false,
                            headers: vec![],
                        })
                        .await;
                    let pair = pending.entry(id.clone()).or_insert_with(|| Pair {
                        error: None,
                        data: None,
                        port,
                        since: tokio::time::Instant::now(),
                    });
                    pair.port = port;
                    if kind == "error" {
                        pair.error = Some(stream);
                    } else {
                        pair.data = Some(stream);
                    }
                    if let Pair {
                        error: Some(error),
                        data: Some(data),
                        port,
                        ..
                    } = *pair
                    {
                        pending.remove(&id);
                        let (tx, rx) = mpsc::channel(16);
                        upstream.insert(data, tx);
                        let task = tokio::spawn(forward(
                            Arc::clone(&netns),
                            port,
                            (data, error),
                            rx,
                            events_tx.clone(),
                        ));
                        connections.retain(|_, t| !t.is_finished());
                        connections.insert(data, task.abort_handle());
                        connections.insert(error, task.abort_handle());
                    }
                }
                Frame::Data { stream, fin, data } => {
                    if let Some(tx) = upstream.get(&stream) {
                        if !data.is_empty() && tx.send(Some(data)).await.is_err() {
                            upstream.remove(&stream);
                        } else if fin {
                            let _ = tx.send(None).await;
                            upstream.remove(&stream);
                        }
                    }
                }
                Frame::RstStream { stream, .. } => {
                    upstream.remove(&stream);
                    if let Some(task) = connections.remove(&stream) {
                        task.abort();
                    }
                }
                Frame::Ping(id) => {
                    let _ = frames.send(Frame::Ping(id)).await;
                }
                Frame::GoAway { .. } => {
                    closed = true;
                    break;
                }
                Frame::SynReply { .. }
                | Frame::Headers { .. }
                | Frame::Settings
                | Frame::WindowUpdate { .. } => {}
            }
        }
        if closed {
            break;
        }
    }
    // The session is over: its connections end with it (they see the relay gone).
    drop(upstream);
    for task in connections.values() {
        task.abort();
    }
    relaying.abort();
    let _ = relaying.await;
    drop(frames);
    super::finish_writer(writing, Duration::from_secs(10)).await;
}

/// The forwarded connections' events as frames on their streams.
async fn relay(
    mut events: mpsc::Receiver<((u32, u32), Event)>,
    frames: mpsc::Sender<Frame>,
    activity: Activity,
) {
    while let Some(((data, error), event)) = events.recv().await {
        activity.touch();
        match event {
            Event::Data(bytes) => {
                let frame = Frame::Data {
                    stream: data,
                    fin: false,
                    data: bytes,
                };
                if frames.send(frame).await.is_err() {
                    return;
                }
            }
            Event::Error(message) => {
                close_with(&frames, error, Some(message)).await;
                close_with(&frames, data, None).await;
            }
            Event::End => {
                close_with(&frames, data, None).await;
                close_with(&frames, error, None).await;
            }
        }
    }
}

/// Closes our side of `stream`, after `message` on it, if any.
async fn close_with(frames: &mpsc::Sender<Frame>, stream: u32, message: Option<String>) {
    if let Some(message) = message {
        let _ = frames
            .send(Frame::Data {
                stream,
                fin: false,
                data: Bytes::from(message),
            })
            .await;
    }
    let _ = frames.send(Frame::fin(stream)).await;
}

/// One forwarded connection: the pod's port to the client and back, until the pod's side
/// ends (then [`Event::End`]) or cannot be reached (then [`Event::Error`]); `key` names the
/// connection in `events`.
pub async fn forward<K: Copy + Send + 'static>(
    netns: Arc<Option<PathBuf>>,
    port: u16,
    key: K,
    mut from_client: mpsc::Receiver<Option<Bytes>>,
    events: mpsc::Sender<(K, Event)>,
) {
    let connected = {
        let netns = Arc::clone(&netns);
        tokio::task::spawn_blocking(move || {
            crate::sys::net::connect_loopback(netns.as_deref(), port)
        })
        .await
    };
    let socket = match connected {
        Ok(Ok(socket)) => socket
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpStream::from_std(socket)),
        Ok(Err(e)) => Err(e),
        Err(e) => Err(std::io::Error::other(e.to_string())),
    };
    let socket = match socket {
        Ok(socket) => socket,
        Err(e) => {
            let message = format!("error forwarding port {port} to the pod: {e}");
            let _ = events.send((key, Event::Error(message))).await;
            return;
        }
    };
    let (mut down, mut up) = socket.into_split();
    let to_pod = async move {
        while let Some(Some(bytes)) = from_client.recv().await {
            if up.write_all(&bytes).await.is_err() {
                break;
            }
        }
        // The client's end: the pod reads end of file, and may still answer.
        let _ = up.shutdown().await;
    };
    // Until the pod's side ends, or the session does (its events unread: nobody to answer).
    let to_client = {
        let events = events.clone();
        async move {
            let mut buf = vec![0u8; CHUNK];
            loop {
                let read = tokio::select! {
                    read = down.read(&mut buf) => read,
                    () = events.closed() => return false,
                };
                match read {
                    Ok(0) | Err(_) => return true,
                    Ok(n) => {
                        let event = Event::Data(Bytes::copy_from_slice(&buf[..n]));
                        if events.send((key, event)).await.is_err() {
                            return false;
                        }
                    }
                }
            }
        }
    };
    let to_pod = tokio::spawn(to_pod);
    if to_client.await {
        let _ = events.send((key, Event::End)).await;
    }
    to_pod.abort();
}
