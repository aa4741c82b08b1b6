//! Remote command over SPDY: the client opens a stream per channel (`streamtype` error,
//! stdin, stdout, stderr, resize); once those the request asked for are there, the command
//! starts ([`session::Command`]); its output goes out as data frames on those streams, the
//! client's stdin and resize data go to it, and at its end the status goes on the error
//! stream and every stream of ours is closed.

use std::{collections::HashMap, sync::Arc, time::Duration};

use bytes::{Bytes, BytesMut};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite},
    sync::{mpsc, oneshot},
};

use super::{
    Activity, ExecRequest, Limits,
    session::{self, Channel, Command, Input, Opened, Out},
    spdy::{Decoder, Frame, RST_REFUSED_STREAM},
    write_frames,
};
use crate::runtime::Runtime;

/// How long the client may take to go away once the status is sent.
const CLOSE_GRACE: Duration = Duration::from_secs(10);

/// Runs one remote-command session on an upgraded connection, to its end.
pub async fn run<IO>(
    io: IO,
    runtime: Arc<Runtime>,
    request: ExecRequest,
    protocol: &'static str,
    limits: Limits,
) where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut reader, writer) = tokio::io::split(io);
    let (frames, outgoing) = mpsc::channel::<Frame>(64);
    let writing = tokio::spawn(write_frames(writer, outgoing));
    let activity = Activity::new();
    let mut session = Session {
        request,
        protocol,
        frames,
        streams: HashMap::new(),
        command: None,
        done: None,
        activity: activity.clone(),
    };
    let mut decoder = Decoder::default();
    let mut buf = BytesMut::with_capacity(64 << 10);
    let creation_deadline = tokio::time::Instant::now() + limits.stream_creation;
    let mut close_deadline: Option<tokio::time::Instant> = None;
    let deadline = |close: Option<tokio::time::Instant>, started: bool| match (close, started) {
        (Some(close), _) => close,
        (None, false) => creation_deadline.min(activity.deadline(limits.idle)),
        (None, true) => activity.deadline(limits.idle),
    };
    loop {
        let until = deadline(close_deadline, session.command.is_some());
        let done = async {
            match session.done.as_mut() {
                Some(rx) => {
                    let _ = rx.await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            read = reader.read_buf(&mut buf) => {
                match read {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                activity.touch();
                let mut closed = false;
                loop {
                    match decoder.decode(&mut buf) {
                        Ok(Some(frame)) => {
                            if !session.on_frame(frame, &runtime).await {
                                closed = true;
                                break;
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            tracing::debug!(error = %e, "bad SPDY from a streaming client");
                            closed = true;
                            break;
                        }
                    }
                }
                if closed {
                    break;
                }
            }
            () = done => {
                // The command ended, its status is sent and our streams closed: the client
                // closes now.
                session.done = None;
                close_deadline = Some(tokio::time::Instant::now() + CLOSE_GRACE);
            }
            () = tokio::time::sleep_until(until) => {
                let started = session.command.is_some();
                // Something was carried since the deadline was set: not idle.
                if tokio::time::Instant::now() < deadline(close_deadline, started) {
                    continue;
                }
                match (close_deadline, started) {
                    (Some(_), _) => {}
                    (None, false) if until == creation_deadline => {
                        tracing::info!("a streaming client did not open its streams in time");
                    }
                    (None, _) => tracing::info!("a streaming session was idle too long"),
                }
                break;
            }
        }
    }
    // The client is gone (or never came, or idled): a command still running is ended.
    if let Some(command) = session.command.as_mut() {
        command.cancel();
    }
    // A client that stopped reading cannot hold the session up: a grace, then the writer
    // is cut (which ends the relay and the command's pumps behind it).
    let done = session.done.take();
    drop(session);
    if let Some(done) = done {
        let _ = tokio::time::timeout(CLOSE_GRACE, done).await;
    }
    super::finish_writer(writing, CLOSE_GRACE).await;
}

struct Session {
    request: ExecRequest,
    protocol: &'static str,
    frames: mpsc::Sender<Frame>,
    /// The client's streams, by id.
    streams: HashMap<u32, Channel>,
    /// Once started.
    command: Option<Command>,
    /// Fires once the command's output, its status and our streams' ends are sent.
    done: Option<oneshot::Receiver<()>>,
    activity: Activity,
}

impl Session {
    fn stream_of(&self, channel: Channel) -> Option<u32> {
        self.streams
            .iter()
            .find_map(|(id, c)| (*c == channel).then_some(*id))
    }

    /// Handles one frame from the client; false when the client is done with us.
    async fn on_frame(&mut self, frame: Frame, runtime: &Arc<Runtime>) -> bool {
        match frame {
            Frame::SynStream {
                stream, headers, ..
            } => {
                // An unknown channel, a second one of a kind, or one after the start.
                let channel = headers
                    .iter()
                    .find(|(name, _)| name == "streamtype")
                    .and_then(|(_, value)| Channel::parse(value))
                    .filter(|c| self.stream_of(*c).is_none() && self.command.is_none());
                let Some(channel) = channel else {
                    let _ = self
                        .frames
                        .send(Frame::RstStream {
                            stream,
                            status: RST_REFUSED_STREAM,
                        })
                        .await;
                    return true;
                };
                self.streams.insert(stream, channel);
                let _ = self
                    .frames
                    .send(Frame::SynReply {
                        stream,
                        fin: false,
                        headers: vec![],
                    })
                    .await;
                let resize_stream =
                    matches!(self.protocol, "v3.channel.k8s.io" | "v4.channel.k8s.io");
                let wanted = session::expected(&self.request, resize_stream);
                if wanted.iter().all(|c| self.stream_of(*c).is_some()) {
                    let opened = Opened {
                        stdin: self.request.stdin,
                        stdout: self.request.stdout,
                        stderr: self.request.stderr && !self.request.tty,
                        resize: self.stream_of(Channel::Resize).is_some(),
                    };
                    let (out, output) = mpsc::channel(16);
                    self.command = Some(
                        Command::start(runtime, &self.request, self.protocol, opened, out).await,
                    );
                    // The output goes out beside this loop, not through it: a command
                    // that writes while its input is full must not wait on the reader.
                    let (done_tx, done_rx) = oneshot::channel();
                    self.done = Some(done_rx);
                    tokio::spawn(relay(
                        output,
                        self.frames.clone(),
                        self.streams.clone(),
                        self.activity.clone(),
                        done_tx,
                    ));
                }
                true
            }
            Frame::Ping(id) => {
                let _ = self.frames.send(Frame::Ping(id)).await;
                true
            }
            Frame::Data { stream, fin, data } => {
                let channel = self.streams.get(&stream).copied();
                let (stdin, tty) = (self.request.stdin, self.request.tty);
                let Some(command) = self.command.as_mut() else {
                    return true;
                };
                // Only the channels the request asked for carry input.
                match channel {
                    Some(Channel::Stdin) if stdin => {
                        if !data.is_empty() {
                            command.send(Input::Stdin(data)).await;
                        }
                        if fin {
                            command.send(Input::StdinEnd).await;
                        }
                    }
                    Some(Channel::Resize) if tty => command.resize_bytes(&data).await,
                    _ => {}
                }
                true
            }
            Frame::GoAway { .. } => false,
            Frame::RstStream { stream, .. } => {
                if self.streams.get(&stream) == Some(&Channel::Stdin)
                    && let Some(command) = self.command.as_mut()
                {
                    command.send(Input::StdinEnd).await;
                }
                true
            }
            Frame::SynReply { .. }
            | Frame::Headers { .. }
            | Frame::Settings
            | Frame::WindowUpdate { .. } => true,
        }
    }
}

/// Sends the command's output and status on the client's streams as it comes; at its end
/// closes the outputs, then the error stream, and says so on `done`.
async fn relay(
    mut output: mpsc::Receiver<Out>,
    frames: mpsc::Sender<Frame>,
    streams: HashMap<u32, Channel>,
    activity: Activity,
    done: oneshot::Sender<()>,
) {
    let stream_of = |channel: Channel| {
        streams
            .iter()
            .find_map(|(id, c)| (*c == channel).then_some(*id))
    };
    while let Some(out) = output.recv().await {
        activity.touch();
        let (channel, data) = match out {
            Out::Data(channel, data) => (channel, data),
            Out::Status(status) => (Channel::Error, Bytes::from(status)),
        };
        if let Some(stream) = stream_of(channel) {
            let frame = Frame::Data {
                stream,
                fin: false,
                data,
            };
            if frames.send(frame).await.is_err() {
                // The connection is gone: dropping `output` ends the command's pumps.
                return;
            }
        }
    }
    for channel in [Channel::Stdout, Channel::Stderr, Channel::Error] {
        if let Some(stream) = stream_of(channel) {
            let _ = frames.send(Frame::fin(stream)).await;
        }
    }
    let _ = done.send(());
}
