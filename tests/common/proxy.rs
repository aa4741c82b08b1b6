//! A fault-injecting HTTP proxy in front of the test registry: requests whose path
//! contains a chosen string get a response cut short (the connection closed) or stalled
//! (kept open with no more bytes), the first `times` times. Request bodies (uploads) pass
//! through as they come, except those of requests cut or stalled: the registry never gets
//! their bodies, so `Truncate(0)` on an upload fails it before the registry answers.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Send this many bytes of the response, then close the connection.
    Truncate(usize),
    /// Send this many bytes of the response, then send nothing more.
    Stall(usize),
    /// Flip the bits of the response byte at this offset of the body.
    Corrupt(usize),
}

struct Inner {
    upstream: String,
    target: String,
    fault: Fault,
    times: usize,
    hits: AtomicUsize,
}

pub struct FaultyProxy {
    inner: Arc<Inner>,
    pub host: String,
}

impl FaultyProxy {
    /// Proxies to `upstream` (host:port), applying `fault` to the first `times` requests
    /// whose path contains `target`.
    pub async fn start(upstream: &str, target: &str, fault: Fault, times: usize) -> FaultyProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr: SocketAddr = listener.local_addr().expect("addr");
        let inner = Arc::new(Inner {
            upstream: upstream.to_string(),
            target: target.to_string(),
            fault,
            times,
            hits: AtomicUsize::new(0),
        });
        let serving = inner.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let inner = serving.clone();
                tokio::spawn(async move {
                    let _ = handle(inner, client).await;
                });
            }
        });
        FaultyProxy {
            inner,
            host: addr.to_string(),
        }
    }

    /// Requests for the target seen so far.
    pub fn hits(&self) -> usize {
        self.inner.hits.load(Ordering::SeqCst)
    }
}

async fn handle(inner: Arc<Inner>, mut client: TcpStream) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if client.read(&mut byte).await? == 0 {
            return Ok(());
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let path = text
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string();
    // One request per upstream connection, so every request passes through here.
    let rewritten: String = text
        .split("\r\n")
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
        .collect::<Vec<_>>()
        .join("\r\n");
    let rewritten =
        rewritten.trim_end_matches("\r\n").to_string() + "\r\nConnection: close\r\n\r\n";
    let mut upstream = TcpStream::connect(&inner.upstream).await?;
    upstream.write_all(rewritten.as_bytes()).await?;
    let fault = if path.contains(&inner.target) {
        let n = inner.hits.fetch_add(1, Ordering::SeqCst);
        (n < inner.times).then_some(inner.fault)
    } else {
        None
    };
    // Only the head has been read from the client: its body (if any) follows as it comes,
    // unless the request is cut or stalled, when the registry gets none of it.
    let (mut client_read, mut client) = client.into_split();
    let (mut upstream, mut upstream_write) = upstream.into_split();
    let faulty = matches!(fault, Some(Fault::Stall(_) | Fault::Truncate(_)));
    let body = tokio::spawn(async move {
        if !faulty {
            let _ = tokio::io::copy(&mut client_read, &mut upstream_write).await;
        }
    });
    let limit = match fault {
        Some(Fault::Truncate(n)) | Some(Fault::Stall(n)) => n,
        _ => usize::MAX,
    };
    let mut sent = 0usize;
    let mut body_start = None;
    let mut response_head = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    while sent < limit {
        let n = upstream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        if body_start.is_none() {
            response_head.extend_from_slice(&buf[..n]);
            if let Some(i) = response_head.windows(4).position(|w| w == b"\r\n\r\n") {
                body_start = Some(i + 4);
            }
        }
        if let (Some(Fault::Corrupt(offset)), Some(start)) = (fault, body_start) {
            let at = start + offset;
            if at >= sent && at < sent + n {
                buf[at - sent] ^= 0xff;
            }
        }
        let take = n.min(limit - sent);
        client.write_all(&buf[..take]).await?;
        sent += take;
        if sent >= limit {
            break;
        }
    }
    if let Some(Fault::Stall(_)) = fault {
        tokio::time::sleep(Duration::from_secs(120)).await;
    }
    body.abort();
    client.shutdown().await
}

/// A hostile "registry" that answers every request with the same body, for what a real
/// registry refuses to store (a manifest over 4 MiB, say). Returns its host:port.
pub async fn serve_static(body: Vec<u8>, content_type: &'static str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let host = listener.local_addr().expect("addr").to_string();
    let body = Arc::new(body);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match stream.read(&mut byte).await {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                let header = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(header.as_bytes()).await;
                let _ = stream.write_all(&body).await;
            });
        }
    });
    host
}
