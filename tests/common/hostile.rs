//! A hostile registry for the tests: a hand-written HTTP/1.1 server on 127.0.0.1 that
//! answers what a registry meaning harm answers: error bodies of gigabytes made on the fly
//! (never buffered), bodies that stop halfway and keep the connection open, a token
//! service of its own behind a Bearer challenge, upload locations on another port. Every
//! request is recorded (method, path, Authorization), so a test can tell where
//! credentials went.
//!
//! Bounded: at most [`MAX_CONNECTIONS`] connections, each served for at most
//! [`CONNECTION_LIFETIME`]; everything (listener, stalled connections) ends when the
//! value is dropped.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinSet,
};

/// Connections served before the listener stops accepting.
pub const MAX_CONNECTIONS: usize = 512;
/// How long one connection is served (or kept stalled) at most.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(300);
/// The largest request head read.
const MAX_HEAD: usize = 64 << 10;
/// The largest request body read (and thrown away) before answering.
const MAX_REQUEST_BODY: u64 = 256 << 20;

pub const GIB: u64 = 1 << 30;
pub const MIB: u64 = 1 << 20;

/// A response body.
#[derive(Debug, Clone)]
pub enum Body {
    /// These bytes, with their Content-Length.
    Bytes(Vec<u8>),
    /// `len` zero bytes made while sending; with a Content-Length when `declared`, else
    /// ended by closing the connection.
    Zeros { len: u64, declared: bool },
    /// A Content-Length of `declared`, these bytes of it, then nothing more (the
    /// connection stays open).
    Stall { sent: Vec<u8>, declared: u64 },
}

/// What a route answers.
#[derive(Debug, Clone)]
pub enum Reply {
    Answer {
        status: u16,
        headers: Vec<(String, String)>,
        body: Body,
    },
    /// Takes the request and never answers (the connection stays open).
    Silence,
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply::Answer {
            status,
            headers: vec![],
            body: Body::Bytes(vec![]),
        }
    }

    pub fn json(status: u16, body: &str) -> Reply {
        Reply::Answer {
            status,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: Body::Bytes(body.as_bytes().to_vec()),
        }
    }

    pub fn body(status: u16, content_type: &str, body: Body) -> Reply {
        Reply::Answer {
            status,
            headers: vec![("Content-Type".into(), content_type.into())],
            body,
        }
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Reply {
        if let Reply::Answer { headers, .. } = &mut self {
            headers.push((name.into(), value.into()));
        }
        self
    }
}

/// Requests of `method` whose path (without the query) starts with `prefix` get `reply`;
/// with a `challenge`, those without an Authorization header get 401 and that
/// `WWW-Authenticate` instead.
#[derive(Debug, Clone)]
pub struct Route {
    pub method: String,
    pub prefix: String,
    pub challenge: Option<String>,
    pub reply: Reply,
}

impl Route {
    pub fn new(method: &str, prefix: &str, reply: Reply) -> Route {
        Route {
            method: method.into(),
            prefix: prefix.into(),
            challenge: None,
            reply,
        }
    }

    pub fn challenged(mut self, challenge: &str) -> Route {
        self.challenge = Some(challenge.into());
        self
    }
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// With the query.
    pub path: String,
    pub authorization: Option<String>,
}

#[derive(Default)]
struct Record {
    seen: Mutex<Vec<Seen>>,
    body_bytes: AtomicU64,
}

pub struct HostileRegistry {
    /// `127.0.0.1:port`.
    pub host: String,
    record: Arc<Record>,
    server: tokio::task::JoinHandle<()>,
}

impl HostileRegistry {
    /// Starts serving `routes(host)` (the host is known before the routes, for challenges
    /// and locations that name the server itself). Unmatched requests get 404.
    pub async fn start(routes: impl FnOnce(&str) -> Vec<Route>) -> HostileRegistry {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let host = listener.local_addr().expect("addr").to_string();
        let routes = Arc::new(routes(&host));
        let record = Arc::new(Record::default());
        let serving = record.clone();
        // The connections belong to the accept loop's task: aborting it (on drop) drops
        // the set, which aborts them all, stalled ones included.
        let server = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            for _ in 0..MAX_CONNECTIONS {
                let Ok((stream, _)) = listener.accept().await else {
                    break;
                };
                let (routes, record) = (routes.clone(), serving.clone());
                connections.spawn(async move {
                    let _ =
                        tokio::time::timeout(CONNECTION_LIFETIME, serve(stream, &routes, &record))
                            .await;
                });
                while connections.try_join_next().is_some() {}
            }
            while connections.join_next().await.is_some() {}
        });
        HostileRegistry {
            host,
            record,
            server,
        }
    }

    /// Every request so far, in order of arrival.
    pub fn seen(&self) -> Vec<Seen> {
        self.record
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Requests so far whose path contains `needle`.
    pub fn seen_for(&self, needle: &str) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.path.contains(needle))
            .collect()
    }

    /// Body bytes written to clients so far (what the kernel took, not what they read).
    pub fn body_bytes_sent(&self) -> u64 {
        self.record.body_bytes.load(Ordering::SeqCst)
    }

    /// Waits until a request whose path contains `needle` has arrived (at most `within`).
    pub async fn wait_for(&self, needle: &str, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < deadline {
            if !self.seen_for(needle).is_empty() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }
}

impl Drop for HostileRegistry {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn serve(mut stream: TcpStream, routes: &[Route], record: &Record) -> std::io::Result<()> {
    // One request per connection: every answer says `Connection: close`.
    let Some(head) = read_head(&mut stream).await? else {
        return Ok(());
    };
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut first = text.lines().next().unwrap_or_default().split_whitespace();
    let method = first.next().unwrap_or_default().to_string();
    let path = first.next().unwrap_or_default().to_string();
    let header = |name: &str| {
        text.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    let authorization = header("authorization");
    record
        .seen
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(Seen {
            method: method.clone(),
            path: path.clone(),
            authorization: authorization.clone(),
        });
    // Take the request's body (an upload) before answering, so that the client reads the
    // answer rather than a reset.
    let body_len = header("content-length")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        .min(MAX_REQUEST_BODY);
    let mut left = body_len;
    let mut buf = vec![0u8; 64 << 10];
    while left > 0 {
        let want = buf.len().min(left as usize);
        let n = stream.read(&mut buf[..want]).await?;
        if n == 0 {
            break;
        }
        left -= n as u64;
    }

    let bare = path.split('?').next().unwrap_or_default();
    let route = routes
        .iter()
        .find(|r| r.method.eq_ignore_ascii_case(&method) && bare.starts_with(&r.prefix));
    let reply = match route {
        Some(r) if r.challenge.is_some() && authorization.is_none() => Reply::json(
            401,
            r#"{"errors":[{"code":"UNAUTHORIZED","message":"who?"}]}"#,
        )
        .with_header(
            "WWW-Authenticate",
            r.challenge.as_deref().unwrap_or_default(),
        ),
        Some(r) => r.reply.clone(),
        None => Reply::json(
            404,
            r#"{"errors":[{"code":"NAME_UNKNOWN","message":"no"}]}"#,
        ),
    };
    let (status, headers, body) = match reply {
        Reply::Silence => return stall().await,
        Reply::Answer {
            status,
            headers,
            body,
        } => (status, headers, body),
    };
    let mut out = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (name, value) in &headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    match &body {
        Body::Bytes(bytes) => out.push_str(&format!("Content-Length: {}\r\n", bytes.len())),
        Body::Zeros {
            len,
            declared: true,
        } => out.push_str(&format!("Content-Length: {len}\r\n")),
        Body::Zeros { .. } => {}
        Body::Stall { declared, .. } => out.push_str(&format!("Content-Length: {declared}\r\n")),
    }
    out.push_str("Connection: close\r\n\r\n");
    stream.write_all(out.as_bytes()).await?;
    if method.eq_ignore_ascii_case("HEAD") {
        return stream.shutdown().await;
    }
    match body {
        Body::Bytes(bytes) => {
            stream.write_all(&bytes).await?;
            record
                .body_bytes
                .fetch_add(bytes.len() as u64, Ordering::SeqCst);
        }
        Body::Zeros { len, .. } => {
            let zeros = vec![0u8; 256 << 10];
            let mut sent = 0u64;
            while sent < len {
                let n = zeros.len().min((len - sent) as usize);
                // Ends when the client hangs up.
                stream.write_all(&zeros[..n]).await?;
                sent += n as u64;
                record.body_bytes.fetch_add(n as u64, Ordering::SeqCst);
            }
        }
        Body::Stall { sent, .. } => {
            stream.write_all(&sent).await?;
            stream.flush().await?;
            record
                .body_bytes
                .fetch_add(sent.len() as u64, Ordering::SeqCst);
            return stall().await;
        }
    }
    stream.shutdown().await
}

/// Keeps the connection open and silent until the connection's lifetime ends or the
/// server is dropped.
async fn stall() -> std::io::Result<()> {
    tokio::time::sleep(CONNECTION_LIFETIME).await;
    Ok(())
}

/// The request line and headers, or None if the client went away first.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= MAX_HEAD {
            return Ok(None);
        }
        match tokio::time::timeout(Duration::from_secs(30), stream.read(&mut byte)).await {
            Ok(Ok(1)) => head.push(byte[0]),
            _ => return Ok(None),
        }
    }
    Ok(Some(head))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        307 => "Temporary Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        500 => "Internal Server Error",
        _ => "Whatever",
    }
}
