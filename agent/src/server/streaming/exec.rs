//! One exec over SPDY: the client opens a stream per channel (`streamtype` error, stdin,
//! stdout, stderr, resize); once those the request asked for are there, the command starts
//! in the container; its output goes out as data frames, the client's stdin data goes to
//! it, and when it ends its status goes on the error stream (v4: a `metav1.Status` with the
//! exit code; before v4: text, on failure only).

use std::{collections::HashMap, sync::Arc, time::Duration};

use bytes::{Bytes, BytesMut};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    sync::{mpsc, oneshot},
};

use super::{
    ExecRequest,
    spdy::{Decoder, Frame, RST_REFUSED_STREAM},
    write_frames,
};
use crate::{oci::TtyInput, runtime::Runtime};

/// How long the client may take to open its streams.
const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the client may take to go away once the status is sent.
const CLOSE_GRACE: Duration = Duration::from_secs(10);
/// Bytes of output per data frame.
const CHUNK: usize = 32 << 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Channel {
    Error,
    Stdin,
    Stdout,
    Stderr,
    Resize,
}

impl Channel {
    fn parse(name: &str) -> Option<Channel> {
        Some(match name {
            "error" => Channel::Error,
            "stdin" => Channel::Stdin,
            "stdout" => Channel::Stdout,
            "stderr" => Channel::Stderr,
            "resize" => Channel::Resize,
            _ => return None,
        })
    }
}

/// A window size as the resize stream carries it: `{"Width":80,"Height":24}`.
fn window_size(line: &[u8]) -> Option<(u16, u16)> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Size {
        width: u16,
        height: u16,
    }
    let size: Size = serde_json::from_slice(line).ok()?;
    Some((size.width, size.height))
}

/// The channels a request needs the client to open.
fn expected(request: &ExecRequest, protocol: &str) -> Vec<Channel> {
    let mut channels = vec![Channel::Error];
    if request.stdin {
        channels.push(Channel::Stdin);
    }
    if request.stdout {
        channels.push(Channel::Stdout);
    }
    if request.stderr && !request.tty {
        channels.push(Channel::Stderr);
    }
    if request.tty && matches!(protocol, "v3.channel.k8s.io" | "v4.channel.k8s.io") {
        channels.push(Channel::Resize);
    }
    channels
}

/// The error stream's last word on a command that ran and exited with `code`.
fn exit_status(protocol: &str, code: i32) -> Option<Vec<u8>> {
    let failure = format!("command terminated with non-zero exit code: exit status {code}");
    match (protocol, code) {
        ("v4.channel.k8s.io", 0) => Some(br#"{"metadata":{},"status":"Success"}"#.to_vec()),
        ("v4.channel.k8s.io", _) => Some(
            serde_json::json!({
                "metadata": {},
                "status": "Failure",
                "message": failure,
                "reason": "NonZeroExitCode",
                "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
            })
            .to_string()
            .into_bytes(),
        ),
        (_, 0) => None,
        (_, _) => Some(failure.into_bytes()),
    }
}

/// The error stream's word on an exec that could not run.
fn internal_error(protocol: &str, error: &str) -> Vec<u8> {
    let message = format!("error executing command in container: {error}");
    if protocol == "v4.channel.k8s.io" {
        serde_json::json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("Internal error occurred: {message}"),
            "reason": "InternalError",
            "details": {"causes": [{"message": message}]},
            "code": 500,
        })
        .to_string()
        .into_bytes()
    } else {
        message.into_bytes()
    }
}

/// Runs one exec session on an upgraded connection, to its end.
pub async fn run<IO>(io: IO, runtime: Arc<Runtime>, request: ExecRequest, protocol: &'static str)
where
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
        stdin: None,
        cancel: None,
        done: None,
        started: false,
        resize: Vec::new(),
    };
    let mut decoder = Decoder::default();
    let mut buf = BytesMut::with_capacity(64 << 10);
    let creation_deadline = tokio::time::Instant::now() + STREAM_CREATION_TIMEOUT;
    let mut close_deadline: Option<tokio::time::Instant> = None;
    loop {
        let deadline = close_deadline.unwrap_or(creation_deadline);
        let timer_armed = close_deadline.is_some() || !session.started;
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
                // The command ended and its status is sent: the client closes now.
                session.done = None;
                close_deadline = Some(tokio::time::Instant::now() + CLOSE_GRACE);
            }
            () = tokio::time::sleep_until(deadline), if timer_armed => {
                if close_deadline.is_none() {
                    tracing::info!("a streaming client did not open its streams in time");
                }
                break;
            }
        }
    }
    // The client is gone (or never came): a command still running is ended.
    if let Some(cancel) = session.cancel.take() {
        let _ = cancel.send(());
    }
    if let Some(done) = session.done.take() {
        let _ = done.await;
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
    /// Where the client's stdin data goes, while the command reads it.
    stdin: Option<mpsc::Sender<Bytes>>,
    /// Ends the command early (the client went away).
    cancel: Option<oneshot::Sender<()>>,
    /// Fires once the command's status is sent.
    done: Option<oneshot::Receiver<()>>,
    started: bool,
    /// What came on the resize stream and is not a whole line yet.
    resize: Vec<u8>,
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
                    .filter(|c| self.stream_of(*c).is_none() && !self.started);
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
                let wanted = expected(&self.request, self.protocol);
                if wanted.iter().all(|c| self.stream_of(*c).is_some()) {
                    self.start(runtime).await;
                }
                true
            }
            Frame::Ping(id) => {
                let _ = self.frames.send(Frame::Ping(id)).await;
                true
            }
            Frame::Data { stream, fin, data } => {
                match self.streams.get(&stream) {
                    Some(Channel::Stdin) if self.request.tty => {
                        if !data.is_empty() {
                            self.send_to_command(TtyInput::Data(data.to_vec()).encode())
                                .await;
                        }
                        if fin {
                            // A terminal stays: the end of input is its EOF character.
                            self.send_to_command(TtyInput::End.encode()).await;
                        }
                    }
                    Some(Channel::Stdin) => {
                        if !data.is_empty() {
                            self.send_to_command(data.to_vec()).await;
                        }
                        if fin {
                            // End of the client's input: the command's stdin closes.
                            self.stdin = None;
                        }
                    }
                    Some(Channel::Resize) => {
                        self.resize.extend_from_slice(&data);
                        while let Some(end) = self.resize.iter().position(|b| *b == b'\n') {
                            let line: Vec<u8> = self.resize.drain(..=end).collect();
                            if let Some((cols, rows)) = window_size(&line) {
                                self.send_to_command(TtyInput::Resize { cols, rows }.encode())
                                    .await;
                            }
                        }
                        if self.resize.len() > 4096 {
                            self.resize.clear();
                        }
                    }
                    _ => {}
                }
                true
            }
            Frame::GoAway { .. } => false,
            Frame::RstStream { stream, .. } => {
                if self.streams.get(&stream) == Some(&Channel::Stdin) {
                    self.stdin = None;
                }
                true
            }
            Frame::SynReply { .. }
            | Frame::Headers { .. }
            | Frame::Settings
            | Frame::WindowUpdate { .. } => true,
        }
    }

    /// Starts the command, with a task that sends its output and then its status.
    async fn start(&mut self, runtime: &Arc<Runtime>) {
        if let Some(dir) = self.request.attach_dir.clone() {
            return self.start_attach(&dir).await;
        }
        self.started = true;
        let error_stream = self.stream_of(Channel::Error).unwrap_or_default();
        let (done_tx, done_rx) = oneshot::channel();
        self.done = Some(done_rx);
        let frames = self.frames.clone();
        let protocol = self.protocol;
        let mut process = match runtime
            .start_exec(
                &self.request.container_id,
                self.request.cmd.clone(),
                self.request.tty,
            )
            .await
        {
            Ok(process) => process,
            Err(e) => {
                tracing::info!(container = %self.request.container_id, error = %e, "a streaming exec could not start");
                let body = internal_error(protocol, &e.to_string());
                tokio::spawn(async move {
                    finish_streams(&frames, &[], error_stream, Some(body)).await;
                    let _ = done_tx.send(());
                });
                return;
            }
        };
        // The client's input, or none: the command reads end of file at once.
        if let Some(mut child_stdin) = process.child.stdin.take()
            && self.stdin_wanted()
        {
            let (tx, mut rx) = mpsc::channel::<Bytes>(16);
            self.stdin = Some(tx);
            tokio::spawn(async move {
                while let Some(data) = rx.recv().await {
                    if child_stdin.write_all(&data).await.is_err() {
                        break;
                    }
                }
            });
        }
        let outputs: Vec<u32> = [Channel::Stdout, Channel::Stderr]
            .into_iter()
            .filter_map(|c| self.stream_of(c))
            .collect();
        let stdout = process.child.stdout.take();
        let stderr = process.child.stderr.take();
        let pumps = [
            tokio::spawn(pump(
                stdout,
                self.stream_of(Channel::Stdout),
                frames.clone(),
            )),
            tokio::spawn(pump(
                stderr,
                self.stream_of(Channel::Stderr),
                frames.clone(),
            )),
        ];
        let (cancel_tx, cancel_rx) = oneshot::channel::<()>();
        self.cancel = Some(cancel_tx);
        tokio::spawn(async move {
            let code = process
                .finish(async {
                    let _ = cancel_rx.await;
                })
                .await;
            for pump in pumps {
                let _ = pump.await;
            }
            finish_streams(&frames, &outputs, error_stream, exit_status(protocol, code)).await;
            let _ = done_tx.send(());
        });
    }

    /// Attaches to the container's monitor: its output (the frames of its attach socket) to
    /// the client's streams, the client's input to the container's stdin; the session ends
    /// when the container's output does (it exited), with a success.
    async fn start_attach(&mut self, dir: &std::path::Path) {
        self.started = true;
        let error_stream = self.stream_of(Channel::Error).unwrap_or_default();
        let (done_tx, done_rx) = oneshot::channel();
        self.done = Some(done_rx);
        let frames = self.frames.clone();
        let protocol = self.protocol;
        let connected = match crate::oci::attach_socket(dir) {
            Ok((_dirfd, path)) => tokio::net::UnixStream::connect(path).await,
            Err(e) => Err(e),
        };
        let socket = match connected {
            Ok(socket) => socket,
            Err(e) => {
                let body = internal_error(protocol, &format!("the container's monitor: {e}"));
                tokio::spawn(async move {
                    finish_streams(&frames, &[], error_stream, Some(body)).await;
                    let _ = done_tx.send(());
                });
                return;
            }
        };
        let (mut from_monitor, mut to_monitor) = socket.into_split();
        let (stdin_tx, mut stdin_rx) = mpsc::channel::<Bytes>(16);
        if self.request.stdin && self.stream_of(Channel::Stdin).is_some() {
            self.stdin = Some(stdin_tx);
        } else {
            drop(stdin_tx);
        }
        tokio::spawn(async move {
            while let Some(data) = stdin_rx.recv().await {
                if to_monitor.write_all(&data).await.is_err() {
                    return;
                }
            }
            // The client's input ended: the monitor hears it (and, with stdin_once, the
            // container reads end of file).
            let _ = to_monitor.shutdown().await;
        });
        let (stdout, stderr) = (
            self.stream_of(Channel::Stdout),
            self.stream_of(Channel::Stderr),
        );
        let outputs: Vec<u32> = stdout.into_iter().chain(stderr).collect();
        let (cancel_tx, cancel_rx) = oneshot::channel::<()>();
        self.cancel = Some(cancel_tx);
        tokio::spawn(async move {
            let relay = async {
                let mut head = [0u8; 5];
                let mut data = Vec::new();
                loop {
                    if from_monitor.read_exact(&mut head).await.is_err() {
                        return;
                    }
                    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
                    data.resize(len.min(1 << 20), 0);
                    if len > 1 << 20 || from_monitor.read_exact(&mut data).await.is_err() {
                        return;
                    }
                    let stream = match head[0] {
                        1 => stdout,
                        2 => stderr,
                        _ => None,
                    };
                    if let Some(stream) = stream {
                        let frame = Frame::Data {
                            stream,
                            fin: false,
                            data: Bytes::copy_from_slice(&data),
                        };
                        if frames.send(frame).await.is_err() {
                            return;
                        }
                    }
                }
            };
            tokio::select! {
                () = relay => {}
                _ = cancel_rx => {}
            }
            finish_streams(&frames, &outputs, error_stream, exit_status(protocol, 0)).await;
            let _ = done_tx.send(());
        });
    }

    /// Whether the command's stdin stays open: for the client's input, and on a terminal
    /// for its window sizes too.
    fn stdin_wanted(&self) -> bool {
        (self.request.stdin && self.stream_of(Channel::Stdin).is_some())
            || (self.request.tty && self.stream_of(Channel::Resize).is_some())
    }

    /// Bytes for the command's stdin, while it is open.
    async fn send_to_command(&mut self, bytes: Vec<u8>) {
        if let Some(stdin) = &self.stdin
            && stdin.send(Bytes::from(bytes)).await.is_err()
        {
            self.stdin = None;
        }
    }
}

/// Copies one of the command's outputs to its stream (or drops it, when the client did not
/// ask for it), until end of file; the stream is closed by [`finish_streams`].
async fn pump(
    output: Option<impl AsyncRead + Unpin>,
    stream: Option<u32>,
    frames: mpsc::Sender<Frame>,
) {
    let Some(mut output) = output else { return };
    let mut buf = vec![0u8; CHUNK];
    loop {
        match output.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if let Some(stream) = stream {
                    let frame = Frame::Data {
                        stream,
                        fin: false,
                        data: Bytes::copy_from_slice(&buf[..n]),
                    };
                    if frames.send(frame).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

/// The end of a session on our side: the outputs closed, the status on the error stream,
/// and the error stream closed.
async fn finish_streams(
    frames: &mpsc::Sender<Frame>,
    outputs: &[u32],
    error_stream: u32,
    status: Option<Vec<u8>>,
) {
    for stream in outputs {
        let _ = frames
            .send(Frame::Data {
                stream: *stream,
                fin: true,
                data: Bytes::new(),
            })
            .await;
    }
    if error_stream == 0 {
        return;
    }
    if let Some(status) = status {
        let _ = frames
            .send(Frame::Data {
                stream: error_stream,
                fin: false,
                data: Bytes::from(status),
            })
            .await;
    }
    let _ = frames
        .send(Frame::Data {
            stream: error_stream,
            fin: true,
            data: Bytes::new(),
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(tty: bool, stdin: bool) -> ExecRequest {
        ExecRequest {
            container_id: "c".into(),
            attach_dir: None,
            cmd: vec!["true".into()],
            tty,
            stdin,
            stdout: true,
            stderr: !tty,
        }
    }

    #[test]
    fn the_channels_a_request_waits_for() {
        use Channel::*;
        assert_eq!(
            expected(&request(false, false), "v4.channel.k8s.io"),
            vec![Error, Stdout, Stderr]
        );
        assert_eq!(
            expected(&request(true, true), "v4.channel.k8s.io"),
            vec![Error, Stdin, Stdout, Resize]
        );
        // No resize stream before v3.
        assert_eq!(
            expected(&request(true, true), "v2.channel.k8s.io"),
            vec![Error, Stdin, Stdout]
        );
    }

    #[test]
    fn exit_codes_go_on_the_error_stream_as_the_client_reads_them() {
        assert_eq!(
            exit_status("v4.channel.k8s.io", 0).unwrap(),
            br#"{"metadata":{},"status":"Success"}"#
        );
        let failed: serde_json::Value =
            serde_json::from_slice(&exit_status("v4.channel.k8s.io", 3).unwrap()).unwrap();
        assert_eq!(failed["status"], "Failure");
        assert_eq!(failed["reason"], "NonZeroExitCode");
        assert_eq!(failed["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(failed["details"]["causes"][0]["message"], "3");
        // Before v4: nothing on success, text on failure.
        assert_eq!(exit_status("v3.channel.k8s.io", 0), None);
        assert!(
            String::from_utf8(exit_status("v2.channel.k8s.io", 7).unwrap())
                .unwrap()
                .contains("exit status 7")
        );
        let internal: serde_json::Value =
            serde_json::from_slice(&internal_error("v4.channel.k8s.io", "gone")).unwrap();
        assert_eq!(internal["reason"], "InternalError");
        assert_eq!(internal["code"], 500);
    }
}
