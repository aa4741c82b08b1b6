//! Remote command over SPDY: the client opens a stream per channel (`streamtype` error,
//! stdin, stdout, stderr, resize); once those the request asked for are there, the command
//! starts ([`remote::Command`]); its output goes out as data frames on those streams, the
//! client's stdin and resize data go to it, and at its end the status goes on the error
//! stream and every stream of ours is closed.

use std::{collections::HashMap, sync::Arc, time::Duration};

use bytes::{Bytes, BytesMut};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite},
    sync::mpsc,
};

use super::{
    ExecRequest, Limits,
    remote::{self, Channel, Command, Input, Opened, Out},
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
    let mut session = Session {
        request,
        protocol,
        frames,
        streams: HashMap::new(),
        command: None,
        output: None,
    };
    let mut decoder = Decoder::default();
    let mut buf = BytesMut::with_capacity(64 << 10);
    let creation_deadline = tokio::time::Instant::now() + limits.stream_creation;
    let mut close_deadline: Option<tokio::time::Instant> = None;
    let mut idle_deadline = tokio::time::Instant::now() + limits.idle;
    loop {
        let deadline = match (close_deadline, session.command.is_some()) {
            (Some(close), _) => close,
            (None, false) => creation_deadline.min(idle_deadline),
            (None, true) => idle_deadline,
        };
        let output = async {
            match session.output.as_mut() {
                Some(rx) => rx.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            read = reader.read_buf(&mut buf) => {
                match read {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                idle_deadline = tokio::time::Instant::now() + limits.idle;
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
            out = output => {
                idle_deadline = tokio::time::Instant::now() + limits.idle;
                match out {
                    Some(out) => session.on_output(out).await,
                    None => {
                        // The command ended and its status is sent: the client closes now.
                        session.output = None;
                        session.finish().await;
                        close_deadline = Some(tokio::time::Instant::now() + CLOSE_GRACE);
                    }
                }
            }
            () = tokio::time::sleep_until(deadline) => {
                match (close_deadline, session.command.is_some()) {
                    (Some(_), _) => {}
                    (None, false) if deadline == creation_deadline => {
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
    if let Some(mut output) = session.output.take() {
        while output.recv().await.is_some() {}
    }
    drop(session);
    let _ = writing.await;
}

struct Session {
    request: ExecRequest,
    protocol: &'static str,
    frames: mpsc::Sender<Frame>,
    /// The client's streams, by id.
    streams: HashMap<u32, Channel>,
    /// Once started.
    command: Option<Command>,
    /// The command's output, until its end.
    output: Option<mpsc::Receiver<Out>>,
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
                let wanted = remote::expected(&self.request, resize_stream);
                if wanted.iter().all(|c| self.stream_of(*c).is_some()) {
                    let opened = Opened {
                        stdin: self.request.stdin,
                        stdout: self.request.stdout,
                        stderr: self.request.stderr && !self.request.tty,
                        resize: self.stream_of(Channel::Resize).is_some(),
                    };
                    let (out, output) = mpsc::channel(16);
                    self.output = Some(output);
                    self.command = Some(
                        Command::start(runtime, &self.request, self.protocol, opened, out).await,
                    );
                }
                true
            }
            Frame::Ping(id) => {
                let _ = self.frames.send(Frame::Ping(id)).await;
                true
            }
            Frame::Data { stream, fin, data } => {
                let channel = self.streams.get(&stream).copied();
                let Some(command) = self.command.as_mut() else {
                    return true;
                };
                match channel {
                    Some(Channel::Stdin) => {
                        if !data.is_empty() {
                            command.send(Input::Stdin(data)).await;
                        }
                        if fin {
                            command.send(Input::StdinEnd).await;
                        }
                    }
                    Some(Channel::Resize) => command.resize_bytes(&data).await,
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

    async fn on_output(&mut self, out: Out) {
        let (channel, data) = match out {
            Out::Data(channel, data) => (channel, data),
            Out::Status(status) => (Channel::Error, Bytes::from(status)),
        };
        if let Some(stream) = self.stream_of(channel) {
            let _ = self
                .frames
                .send(Frame::Data {
                    stream,
                    fin: false,
                    data,
                })
                .await;
        }
    }

    /// The end on our side: the outputs closed, then the error stream.
    async fn finish(&mut self) {
        for channel in [Channel::Stdout, Channel::Stderr, Channel::Error] {
            if let Some(stream) = self.stream_of(channel) {
                let _ = self
                    .frames
                    .send(Frame::Data {
                        stream,
                        fin: true,
                        data: Bytes::new(),
                    })
                    .await;
            }
        }
    }
}
