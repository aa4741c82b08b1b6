//! The remote-command session, whatever carries it (SPDY streams or WebSocket channels):
//! the command (an exec, or an attach to the container's monitor) started once the
//! client's channels are there, its output sent as [`Out`] while it comes, the client's
//! input passed on as [`Input`], and at the end its status for the error channel. The
//! session's end is the [`Out`] channel closing.

use std::sync::Arc;

use bytes::Bytes;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWriteExt},
    sync::{mpsc, oneshot},
};

use super::ExecRequest;
use crate::{oci::TtyInput, runtime::Runtime};

/// Bytes of output per message.
const CHUNK: usize = 32 << 10;
/// Most bytes of a window-size message that is not whole yet.
const MAX_RESIZE_PENDING: usize = 4096;

/// A remote-command channel; the numbers are WebSocket's channel bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    Stdin = 0,
    Stdout = 1,
    Stderr = 2,
    Error = 3,
    Resize = 4,
}

impl Channel {
    /// As SPDY's `streamtype` header names it.
    pub fn parse(name: &str) -> Option<Channel> {
        Some(match name {
            "error" => Channel::Error,
            "stdin" => Channel::Stdin,
            "stdout" => Channel::Stdout,
            "stderr" => Channel::Stderr,
            "resize" => Channel::Resize,
            _ => return None,
        })
    }

    /// The channel of a WebSocket channel byte.
    pub fn from_byte(byte: u8) -> Option<Channel> {
        [
            Channel::Stdin,
            Channel::Stdout,
            Channel::Stderr,
            Channel::Error,
            Channel::Resize,
        ]
        .into_iter()
        .find(|c| *c as u8 == byte)
    }
}

/// The channels a request needs the client to have open before the command starts.
pub fn expected(request: &ExecRequest, resize_stream: bool) -> Vec<Channel> {
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
    if request.tty && resize_stream {
        channels.push(Channel::Resize);
    }
    channels
}

/// The protocols whose error channel carries a `metav1.Status` (the others: text, on
/// failure only).
pub fn status_is_json(protocol: &str) -> bool {
    matches!(
        protocol,
        "v5.channel.k8s.io" | "v4.channel.k8s.io" | "v4.base64.channel.k8s.io"
    )
}

/// The error channel's last word on a command that ran and exited with `code`.
pub fn exit_status(json: bool, code: i32) -> Option<Vec<u8>> {
    let failure = format!("command terminated with non-zero exit code: exit status {code}");
    match (json, code) {
        (true, 0) => Some(br#"{"metadata":{},"status":"Success"}"#.to_vec()),
        (true, _) => Some(
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
        (false, 0) => None,
        (false, _) => Some(failure.into_bytes()),
    }
}

/// The error channel's word on a command that could not run.
pub fn internal_error(json: bool, error: &str) -> Vec<u8> {
    let message = format!("error executing command in container: {error}");
    if json {
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

/// Window sizes as the resize channel carries them: JSON objects, `{"Width":80,"Height":24}`,
/// one after another (with or without newlines between), split anywhere by the transport.
#[derive(Default)]
pub struct Resizes {
    pending: Vec<u8>,
}

impl Resizes {
    /// The whole sizes `data` completes (columns, rows); a value that is no size is skipped.
    pub fn push(&mut self, data: &[u8]) -> Vec<(u16, u16)> {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Size {
            width: u16,
            height: u16,
        }
        self.pending.extend_from_slice(data);
        let mut sizes = Vec::new();
        let mut used = 0;
        let mut values =
            serde_json::Deserializer::from_slice(&self.pending).into_iter::<serde_json::Value>();
        loop {
            match values.next() {
                Some(Ok(value)) => {
                    used = values.byte_offset();
                    if let Ok(size) = serde_json::from_value::<Size>(value) {
                        sizes.push((size.width, size.height));
                    }
                }
                // Not whole yet: kept for the next push.
                Some(Err(e)) if e.is_eof() => break,
                // Not JSON: dropped.
                Some(Err(_)) => {
                    used = self.pending.len();
                    break;
                }
                None => {
                    used = self.pending.len();
                    break;
                }
            }
        }
        self.pending.drain(..used);
        if self.pending.len() > MAX_RESIZE_PENDING {
            self.pending.clear();
        }
        sizes
    }
}

/// What the session sends the client.
#[derive(Debug)]
pub enum Out {
    Data(Channel, Bytes),
    /// For the error channel, before the end.
    Status(Vec<u8>),
}

/// The client's input for the command.
#[derive(Debug)]
pub enum Input {
    Stdin(Bytes),
    /// The client's stdin ended.
    StdinEnd,
    Resize {
        cols: u16,
        rows: u16,
    },
}

/// Which of the request's channels the client opened.
#[derive(Debug, Clone, Copy, Default)]
pub struct Opened {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub resize: bool,
}

/// A started command: where the client's input goes, and how it is ended early.
pub struct Command {
    input: Option<mpsc::Sender<Input>>,
    cancel: Option<oneshot::Sender<()>>,
    resizes: Resizes,
}

impl Command {
    /// Starts the request's command (or attaches to the container); its output and then
    /// its status go to `out`, which is dropped at the end.
    pub async fn start(
        runtime: &Arc<Runtime>,
        request: &ExecRequest,
        protocol: &str,
        opened: Opened,
        out: mpsc::Sender<Out>,
    ) -> Command {
        let json = status_is_json(protocol);
        let started = match &request.attach_dir {
            Some(dir) => attach(dir, opened, out.clone(), json).await,
            None => exec(runtime, request, opened, out.clone(), json).await,
        };
        match started {
            Ok(command) => command,
            Err(message) => {
                tracing::info!(container = %request.container_id, error = %message, "a streaming session could not start");
                let _ = out.send(Out::Status(internal_error(json, &message))).await;
                Command {
                    input: None,
                    cancel: None,
                    resizes: Resizes::default(),
                }
            }
        }
    }

    /// Passes the client's input on, while the command takes it.
    pub async fn send(&mut self, input: Input) {
        if let Some(tx) = &self.input
            && tx.send(input).await.is_err()
        {
            self.input = None;
        }
    }

    /// Bytes from the resize channel.
    pub async fn resize_bytes(&mut self, data: &[u8]) {
        for (cols, rows) in self.resizes.push(data) {
            self.send(Input::Resize { cols, rows }).await;
        }
    }

    /// The client went away: the command is ended.
    pub fn cancel(&mut self) {
        if let Some(cancel) = self.cancel.take() {
            let _ = cancel.send(());
        }
        self.input = None;
    }
}

/// An exec: the command in the container, through the exec helper.
async fn exec(
    runtime: &Arc<Runtime>,
    request: &ExecRequest,
    opened: Opened,
    out: mpsc::Sender<Out>,
    json: bool,
) -> Result<Command, String> {
    let mut process = runtime
        .start_exec(&request.container_id, request.cmd.clone(), request.tty)
        .await
        .map_err(|e| e.to_string())?;
    // The client's input, or none: the command reads end of file at once. On a terminal
    // the helper's stdin also carries the window sizes, as frames.
    let keep_stdin = (request.stdin && opened.stdin) || (request.tty && opened.resize);
    let input = match process.child.stdin.take() {
        Some(stdin) if keep_stdin => Some(feed(
            stdin,
            match request.tty {
                true => Feed::Terminal,
                false => Feed::Raw,
            },
        )),
        _ => None,
    };
    let stdout = process.child.stdout.take();
    let stderr = process.child.stderr.take();
    let pumps = [
        tokio::spawn(pump(stdout, opened.stdout, Channel::Stdout, out.clone())),
        tokio::spawn(pump(stderr, opened.stderr, Channel::Stderr, out.clone())),
    ];
    let (cancel_tx, cancel_rx) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let code = process
            .finish(async {
                let _ = cancel_rx.await;
            })
            .await;
        for pump in pumps {
            let _ = pump.await;
        }
        if let Some(status) = exit_status(json, code) {
            let _ = out.send(Out::Status(status)).await;
        }
    });
    Ok(Command {
        input,
        cancel: Some(cancel_tx),
        resizes: Resizes::default(),
    })
}

/// An attach: the container's output from its monitor's socket (frames of a stream byte,
/// a 32-bit big-endian length and the bytes), the client's input to it as
/// [`TtyInput`] frames. It ends when the container's output does, with a success.
async fn attach(
    dir: &std::path::Path,
    opened: Opened,
    out: mpsc::Sender<Out>,
    json: bool,
) -> Result<Command, String> {
    let connected = match crate::oci::attach_socket(dir) {
        Ok((_dirfd, path)) => tokio::net::UnixStream::connect(path).await,
        Err(e) => Err(e),
    };
    let socket = connected.map_err(|e| format!("the container's monitor: {e}"))?;
    let (mut from_monitor, to_monitor) = socket.into_split();
    let input = Some(feed(
        to_monitor,
        Feed::Monitor {
            stdin: opened.stdin,
        },
    ));
    let (cancel_tx, cancel_rx) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let relay = async {
            let mut head = [0u8; 5];
            let mut data = Vec::new();
            loop {
                if from_monitor.read_exact(&mut head).await.is_err() {
                    return;
                }
                let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
                if len > 1 << 20 {
                    return;
                }
                data.resize(len, 0);
                if from_monitor.read_exact(&mut data).await.is_err() {
                    return;
                }
                let channel = match head[0] {
                    1 if opened.stdout => Channel::Stdout,
                    2 if opened.stderr => Channel::Stderr,
                    _ => continue,
                };
                if out
                    .send(Out::Data(channel, Bytes::copy_from_slice(&data)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        };
        tokio::select! {
            () = relay => {}
            _ = cancel_rx => {}
        }
        if let Some(status) = exit_status(json, 0) {
            let _ = out.send(Out::Status(status)).await;
        }
    });
    Ok(Command {
        input,
        cancel: Some(cancel_tx),
        resizes: Resizes::default(),
    })
}

/// How the client's input is written.
#[derive(Debug, Clone, Copy)]
enum Feed {
    /// As it is, to a command's stdin pipe; its end closes the pipe.
    Raw,
    /// As [`TtyInput`] frames, to a terminal exec's helper.
    Terminal,
    /// As [`TtyInput`] frames, to the container's monitor; with `stdin`, the input's end
    /// (or the client's going away) is said with an End frame, without, stdin is dropped.
    Monitor { stdin: bool },
}

/// A task writing the client's input to `sink`, as `mode` says; `sink` is shut at the end.
fn feed<W>(mut sink: W, mode: Feed) -> mpsc::Sender<Input>
where
    W: tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (tx, mut rx) = mpsc::channel::<Input>(16);
    tokio::spawn(async move {
        let mut ended = false;
        while let Some(input) = rx.recv().await {
            let bytes = match (input, mode) {
                (Input::Stdin(data), Feed::Raw) => data.to_vec(),
                (Input::StdinEnd, Feed::Raw) => break,
                (Input::Resize { .. }, Feed::Raw) => continue,
                (Input::Stdin(_) | Input::StdinEnd, Feed::Monitor { stdin: false }) => continue,
                // A frame carries at most MAX_TTY_FRAME bytes; a client's message, more.
                (Input::Stdin(data), _) => data
                    .chunks(crate::oci::MAX_TTY_FRAME)
                    .flat_map(|chunk| TtyInput::Data(chunk.to_vec()).encode())
                    .collect(),
                (Input::Resize { cols, rows }, _) => TtyInput::Resize { cols, rows }.encode(),
                (Input::StdinEnd, _) if ended => continue,
                (Input::StdinEnd, _) => {
                    ended = true;
                    TtyInput::End.encode()
                }
            };
            if sink.write_all(&bytes).await.is_err() {
                return;
            }
        }
        if let (Feed::Monitor { stdin: true }, false) = (mode, ended) {
            let _ = sink.write_all(&TtyInput::End.encode()).await;
        }
        let _ = sink.shutdown().await;
    });
    tx
}

/// Copies one of the command's outputs to its channel (or drops it, when the client did
/// not open that channel), until end of file.
async fn pump(
    output: Option<impl AsyncRead + Unpin>,
    wanted: bool,
    channel: Channel,
    out: mpsc::Sender<Out>,
) {
    let Some(mut output) = output else { return };
    let mut buf = vec![0u8; CHUNK];
    loop {
        match output.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if wanted
                    && out
                        .send(Out::Data(channel, Bytes::copy_from_slice(&buf[..n])))
                        .await
                        .is_err()
                {
                    return;
                }
            }
        }
    }
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
            expected(&request(false, false), true),
            vec![Error, Stdout, Stderr]
        );
        assert_eq!(
            expected(&request(true, true), true),
            vec![Error, Stdin, Stdout, Resize]
        );
        // No resize stream before v3.
        assert_eq!(
            expected(&request(true, true), false),
            vec![Error, Stdin, Stdout]
        );
    }

    #[test]
    fn channel_bytes_are_websockets() {
        for c in [
            Channel::Stdin,
            Channel::Stdout,
            Channel::Stderr,
            Channel::Error,
            Channel::Resize,
        ] {
            assert_eq!(Channel::from_byte(c as u8), Some(c));
        }
        assert_eq!(Channel::from_byte(5), None);
        assert_eq!(Channel::from_byte(255), None);
    }

    #[test]
    fn exit_codes_go_on_the_error_channel_as_the_client_reads_them() {
        assert!(status_is_json("v4.channel.k8s.io"));
        assert!(status_is_json("v5.channel.k8s.io"));
        assert!(!status_is_json("channel.k8s.io"));
        assert_eq!(
            exit_status(true, 0).unwrap(),
            br#"{"metadata":{},"status":"Success"}"#
        );
        let failed: serde_json::Value =
            serde_json::from_slice(&exit_status(true, 3).unwrap()).unwrap();
        assert_eq!(failed["status"], "Failure");
        assert_eq!(failed["reason"], "NonZeroExitCode");
        assert_eq!(failed["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(failed["details"]["causes"][0]["message"], "3");
        // Before v4: nothing on success, text on failure.
        assert_eq!(exit_status(false, 0), None);
        assert!(
            String::from_utf8(exit_status(false, 7).unwrap())
                .unwrap()
                .contains("exit status 7")
        );
        let internal: serde_json::Value =
            serde_json::from_slice(&internal_error(true, "gone")).unwrap();
        assert_eq!(internal["reason"], "InternalError");
        assert_eq!(internal["code"], 500);
    }

    #[test]
    fn window_sizes_are_read_across_splits_and_garbage_is_dropped() {
        let mut r = Resizes::default();
        assert_eq!(r.push(br#"{"Width":80,"#), vec![]);
        assert_eq!(r.push(b"\"Height\":24}\n{\"Width\":1"), vec![(80, 24)]);
        assert_eq!(
            r.push(br#"20,"Height":40}{"Width":5,"Height":6}"#),
            vec![(120, 40), (5, 6)]
        );
        // A value of the wrong shape is skipped; bytes that are no JSON are dropped.
        assert_eq!(
            r.push(br#"{"Width":-1,"Height":2} [1] {"Width":9,"Height":9}"#),
            vec![(9, 9)]
        );
        assert_eq!(r.push(b"}}}garbage"), vec![]);
        assert_eq!(r.push(br#"{"Width":3,"Height":4}"#), vec![(3, 4)]);
        // A size that never ends is not kept without bound.
        r.push(&[b'['; 10_000]);
        assert!(r.pending.len() <= MAX_RESIZE_PENDING);
    }
}
