//! A thin HTTP/2 front on every accepted connection that makes the client's `:authority`
//! one h2 accepts, before h2 sees it.
//!
//! Go's gRPC (crictl and critest up to 1.26, kubelets before 1.30), grpc-java and Python's
//! grpc send the unix socket's *path* as the `:authority` of every call. h2 parses it as
//! `host[:port]`, calls it malformed and resets the stream, so those clients fail every
//! call. containerd and CRI-O accept it. The front decodes the client's header blocks
//! (HPACK, with the client's dynamic table kept in step), replaces an authority that h2
//! would refuse with `localhost`, and re-encodes the block without touching h2's dynamic
//! table. Every other byte of the client's stream, and the whole server direction, passes
//! through untouched.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::{Buf, BufMut, BytesMut};
use loona_hpack::decoder::DecoderError;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;

const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

/// h2's defaults, which the agent's server never changes: the largest frame payload it
/// accepts, and the dynamic table size it lets the client's encoder use.
const MAX_FRAME: usize = 16_384;
const HEADER_TABLE: usize = 4_096;
/// Bounds on one header block, compressed and decoded (RFC 7541 sizes: name + value + 32
/// per field). Anything past them is an attack, not a CRI call: h2 behind us refuses a
/// header list over 16 KiB anyway (hyper's default), and decoding costs CPU per byte
/// (Huffman), so little more than that is decoded.
const MAX_BLOCK: usize = 32 << 10;
const MAX_HEADER_LIST: usize = 32 << 10;

/// What an authority h2 refuses becomes; newer kubelets send this themselves.
const LOCALHOST: &[u8] = b"localhost";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("not an HTTP/2 client: the connection preface is missing")]
    NoPreface,
    #[error("a {0}-byte header frame is larger than the {MAX_FRAME} bytes the server accepts")]
    FrameTooLarge(usize),
    #[error("a header block over {MAX_BLOCK} bytes")]
    BlockTooLarge,
    #[error("a header list over {MAX_HEADER_LIST} bytes once decoded")]
    HeaderListTooLarge,
    #[error("a CONTINUATION frame without a header block to continue")]
    UnexpectedContinuation,
    #[error("a frame of type {kind:#x} inside the header block of stream {stream}")]
    InterruptedBlock { kind: u8, stream: u32 },
    #[error("a HEADERS frame whose padding or priority is longer than the frame")]
    BadPadding,
    #[error("undecodable header block: {0}")]
    Hpack(#[from] DecoderError),
}

pub type Result<T> = std::result::Result<T, Error>;

/// Where the client's byte stream is, frame by frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// `n` bytes of the connection preface seen so far.
    Preface(usize),
    /// Waiting for the 9-byte header of the next frame.
    FrameHeader,
    /// Inside a frame that passes through untouched: this many payload bytes to go.
    Passthrough(usize),
    /// Inside a HEADERS or CONTINUATION frame, whose whole payload is needed.
    HeaderFrame {
        len: usize,
        kind: u8,
        flags: u8,
        stream: u32,
    },
}

/// A header block being collected across HEADERS and CONTINUATION frames.
struct OpenBlock {
    stream: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    fragments: Vec<u8>,
}

/// The client-to-server half of the front, as a pure function of the bytes fed to it.
pub struct Rewriter {
    state: State,
    decoder: loona_hpack::Decoder<'static>,
    block: Option<OpenBlock>,
}

impl Default for Rewriter {
    fn default() -> Self {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(HEADER_TABLE);
        Rewriter {
            state: State::Preface(0),
            decoder,
            block: None,
        }
    }
}

impl Rewriter {
    /// Payload bytes of a passed-through frame still to come, if that is where the stream is.
    fn passthrough(&self) -> Option<usize> {
        match self.state {
            State::Passthrough(n) if n > 0 => Some(n),
            _ => None,
        }
    }

    /// `n` bytes of a passed-through payload went straight to the server.
    fn passed(&mut self, n: usize) {
        if let State::Passthrough(left) = &mut self.state {
            *left -= n;
        }
    }

    /// Consumes every complete unit of `input` and appends what the server is to see to
    /// `out`. An incomplete frame stays in `input` until more bytes arrive.
    pub fn process(&mut self, input: &mut BytesMut, out: &mut BytesMut) -> Result<()> {
        loop {
            match self.state {
                State::Preface(seen) => {
                    let n = (PREFACE.len() - seen).min(input.len());
                    if input[..n] != PREFACE[seen..seen + n] {
                        return Err(Error::NoPreface);
                    }
                    out.put(input.split_to(n));
                    self.state = if seen + n == PREFACE.len() {
                        State::FrameHeader
                    } else {
                        State::Preface(seen + n)
                    };
                    if input.is_empty() {
                        return Ok(());
                    }
                }
                State::FrameHeader => {
                    if input.len() < FRAME_HEADER {
                        return Ok(());
                    }
                    let len = usize::from(input[0]) << 16
                        | usize::from(input[1]) << 8
                        | usize::from(input[2]);
                    let (kind, flags) = (input[3], input[4]);
                    let stream =
                        u32::from_be_bytes([input[5], input[6], input[7], input[8]]) & 0x7fff_ffff;
                    if let Some(block) = &self.block
                        && (kind != CONTINUATION || stream != block.stream)
                    {
                        return Err(Error::InterruptedBlock {
                            kind,
                            stream: block.stream,
                        });
                    }
                    match kind {
                        HEADERS | CONTINUATION => {
                            if kind == CONTINUATION && self.block.is_none() {
                                return Err(Error::UnexpectedContinuation);
                            }
                            if len > MAX_FRAME {
                                return Err(Error::FrameTooLarge(len));
                            }
                            input.advance(FRAME_HEADER);
                            self.state = State::HeaderFrame {
                                len,
                                kind,
                                flags,
                                stream,
                            };
                        }
                        _ => {
                            out.put(input.split_to(FRAME_HEADER));
                            self.state = State::Passthrough(len);
                        }
                    }
                }
                State::Passthrough(0) => self.state = State::FrameHeader,
                State::Passthrough(left) => {
                    let n = left.min(input.len());
                    if n == 0 {
                        return Ok(());
                    }
                    out.put(input.split_to(n));
                    self.state = State::Passthrough(left - n);
                }
                State::HeaderFrame {
                    len,
                    kind,
                    flags,
                    stream,
                } => {
                    if input.len() < len {
                        return Ok(());
                    }
                    let payload = input.split_to(len);
                    self.header_frame(kind, flags, stream, &payload, out)?;
                    self.state = State::FrameHeader;
                }
            }
        }
    }

    fn header_frame(
        &mut self,
        kind: u8,
        flags: u8,
        stream: u32,
        payload: &[u8],
        out: &mut BytesMut,
    ) -> Result<()> {
        let fragment = if kind == HEADERS {
            let mut rest = payload;
            let mut pad = 0;
            if flags & PADDED != 0 {
                let (&n, tail) = rest.split_first().ok_or(Error::BadPadding)?;
                pad = usize::from(n);
                rest = tail;
            }
            let mut priority = None;
            if flags & PRIORITY != 0 {
                let (head, tail) = rest.split_at_checked(5).ok_or(Error::BadPadding)?;
                priority = Some(<[u8; 5]>::try_from(head).map_err(|_| Error::BadPadding)?);
                rest = tail;
            }
            let end = rest.len().checked_sub(pad).ok_or(Error::BadPadding)?;
            self.block = Some(OpenBlock {
                stream,
                end_stream: flags & END_STREAM != 0,
                priority,
                fragments: Vec::new(),
            });
            &rest[..end]
        } else {
            payload
        };
        let Some(block) = &mut self.block else {
            return Err(Error::UnexpectedContinuation);
        };
        if block.fragments.len() + fragment.len() > MAX_BLOCK {
            return Err(Error::BlockTooLarge);
        }
        block.fragments.extend_from_slice(fragment);
        if flags & END_HEADERS != 0
            && let Some(block) = self.block.take()
        {
            self.finish(block, out)?;
        }
        Ok(())
    }

    /// Decodes a complete block, mends its authority and writes it out again as HEADERS
    /// (and CONTINUATION frames when the new encoding is longer than a frame).
    fn finish(&mut self, block: OpenBlock, out: &mut BytesMut) -> Result<()> {
        let mut size = 0usize;
        let mut fields: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        self.decoder
            .decode_with_cb(&block.fragments, |name, value| {
                // The decoder must see the whole block to keep its table in step; past the
                // bound nothing more is kept.
                size = size.saturating_add(name.len() + value.len() + 32);
                if size <= MAX_HEADER_LIST {
                    fields.push((name.into_owned(), value.into_owned()));
                }
            })?;
        if size > MAX_HEADER_LIST {
            return Err(Error::HeaderListTooLarge);
        }
        let mut encoded = Vec::with_capacity(block.fragments.len() + 16);
        for (name, value) in &fields {
            let value = match name.as_slice() {
                b":authority" if !acceptable_authority(value) => LOCALHOST,
                _ => value.as_slice(),
            };
            encode_field(name, value, &mut encoded);
        }

        let priority = block.priority.as_ref().map_or(&[][..], |p| &p[..]);
        let first = encoded.len().min(MAX_FRAME - priority.len());
        let mut flags = if block.end_stream { END_STREAM } else { 0 };
        if !priority.is_empty() {
            flags |= PRIORITY;
        }
        if first == encoded.len() {
            flags |= END_HEADERS;
        }
        put_frame_header(out, priority.len() + first, HEADERS, flags, block.stream);
        out.put_slice(priority);
        out.put_slice(&encoded[..first]);
        let mut rest = &encoded[first..];
        while !rest.is_empty() {
            let n = rest.len().min(MAX_FRAME);
            let flags = if n == rest.len() { END_HEADERS } else { 0 };
            put_frame_header(out, n, CONTINUATION, flags, block.stream);
            out.put_slice(&rest[..n]);
            rest = &rest[n..];
        }
        Ok(())
    }
}

/// True when h2 takes `value` as an authority as it is (the same parser h2 uses).
fn acceptable_authority(value: &[u8]) -> bool {
    http::uri::Authority::try_from(value).is_ok()
}

fn put_frame_header(out: &mut BytesMut, len: usize, kind: u8, flags: u8, stream: u32) {
    // `len` is at most MAX_FRAME, so it fits the 24-bit length.
    out.put_slice(&(len as u32).to_be_bytes()[1..]);
    out.put_u8(kind);
    out.put_u8(flags);
    out.put_u32(stream);
}

/// HPACK's static table (RFC 7541, appendix A); index = position + 1.
const STATIC_TABLE: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// Encodes one field without ever touching the server's dynamic table: a static-table
/// index when the whole field is there, else a never-indexed literal (the representation
/// RFC 7541 §6.2.3 asks an intermediary to keep for sensitive fields, safe for all).
fn encode_field(name: &[u8], value: &[u8], out: &mut Vec<u8>) {
    let mut name_index = 0;
    for (i, (n, v)) in STATIC_TABLE.iter().enumerate() {
        if n.as_bytes() == name {
            if v.as_bytes() == value {
                encode_integer(i + 1, 7, 0x80, out);
                return;
            }
            if name_index == 0 {
                name_index = i + 1;
            }
        }
    }
    encode_integer(name_index, 4, 0x10, out);
    if name_index == 0 {
        encode_string(name, out);
    }
    encode_string(value, out);
}

fn encode_string(s: &[u8], out: &mut Vec<u8>) {
    encode_integer(s.len(), 7, 0x00, out);
    out.extend_from_slice(s);
}

/// An HPACK integer with an `prefix`-bit prefix, `mask` holding the first byte's other bits.
fn encode_integer(mut value: usize, prefix: u8, mask: u8, out: &mut Vec<u8>) {
    let max = (1usize << prefix) - 1;
    if value < max {
        out.push(mask | value as u8);
        return;
    }
    out.push(mask | max as u8);
    value -= max;
    while value >= 0x80 {
        out.push((value & 0x7f) as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// An accepted connection seen through the front: reads are the rewritten client stream,
/// writes go to the client untouched.
pub struct AuthorityFront<S> {
    inner: S,
    rewriter: Rewriter,
    input: BytesMut,
    output: BytesMut,
    scratch: Box<[u8]>,
    failed: bool,
}

impl<S> AuthorityFront<S> {
    pub fn new(inner: S) -> Self {
        AuthorityFront {
            inner,
            rewriter: Rewriter::default(),
            input: BytesMut::new(),
            output: BytesMut::new(),
            scratch: vec![0; MAX_FRAME].into_boxed_slice(),
            failed: false,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFront<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.failed {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "connection refused by the HTTP/2 front",
            )));
        }
        loop {
            if !this.output.is_empty() {
                let n = this.output.len().min(buf.remaining());
                buf.put_slice(&this.output[..n]);
                this.output.advance(n);
                return Poll::Ready(Ok(()));
            }
            // Inside a passed-through payload (DATA, most of all) with nothing buffered:
            // read straight into the caller's buffer, no copy.
            if this.input.is_empty()
                && let Some(left) = this.rewriter.passthrough()
            {
                let limit = left.min(buf.remaining());
                let mut direct = ReadBuf::new(buf.initialize_unfilled_to(limit));
                ready!(Pin::new(&mut this.inner).poll_read(cx, &mut direct))?;
                let n = direct.filled().len();
                buf.advance(n);
                this.rewriter.passed(n);
                return Poll::Ready(Ok(()));
            }
            if !this.input.is_empty() {
                if let Err(e) = this.rewriter.process(&mut this.input, &mut this.output) {
                    this.failed = true;
                    tracing::warn!(error = %e, "refusing a client connection");
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
                }
                if !this.output.is_empty() || this.input.is_empty() {
                    continue;
                }
            }
            let mut read = ReadBuf::new(&mut this.scratch);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                // End of stream; a frame cut short is h2's to notice.
                return Poll::Ready(Ok(()));
            }
            this.input.extend_from_slice(read.filled());
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFront<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<S: Connected> Connected for AuthorityFront<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Fields = Vec<(Vec<u8>, Vec<u8>)>;

    fn fields(list: &[(&str, &str)]) -> Fields {
        list.iter()
            .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        put_frame_header(&mut out, payload.len(), kind, flags, stream);
        out.put_slice(payload);
        out.to_vec()
    }

    /// A literal with incremental indexing and a new name, as Go's encoder sends a path
    /// authority the first time (so that later requests refer to it by index).
    fn indexed_literal(name: &str, value: &str) -> Vec<u8> {
        let mut out = vec![0x40];
        encode_string(name.as_bytes(), &mut out);
        encode_string(value.as_bytes(), &mut out);
        out
    }

    fn request_block(authority: &str) -> Vec<u8> {
        let mut block = vec![0x83, 0x86]; // :method POST, :scheme http
        block.extend(indexed_literal(
            ":path",
            "/runtime.v1.RuntimeService/Version",
        ));
        block.extend(indexed_literal(":authority", authority));
        block.extend(indexed_literal("content-type", "application/grpc"));
        block
    }

    fn connection(frames: &[Vec<u8>]) -> Vec<u8> {
        let mut bytes = PREFACE.to_vec();
        for f in frames {
            bytes.extend_from_slice(f);
        }
        bytes
    }

    /// Runs `bytes` through a rewriter in pieces of `chunk` bytes.
    fn rewrite(bytes: &[u8], chunk: usize) -> Result<Vec<u8>> {
        let mut rewriter = Rewriter::default();
        let (mut input, mut out) = (BytesMut::new(), BytesMut::new());
        for piece in bytes.chunks(chunk) {
            input.extend_from_slice(piece);
            rewriter.process(&mut input, &mut out)?;
        }
        assert!(input.is_empty(), "left over: {input:?}");
        Ok(out.to_vec())
    }

    /// What h2 sees: the frames of a rewritten stream, each header block decoded by one
    /// decoder kept across the connection, as h2's is.
    #[derive(Debug, PartialEq)]
    enum Seen {
        Headers {
            stream: u32,
            flags: u8,
            priority: Option<Vec<u8>>,
            fields: Fields,
            frames: usize,
        },
        Other {
            kind: u8,
            flags: u8,
            stream: u32,
            payload: Vec<u8>,
        },
    }

    /// A header block being read back: stream, first frame's flags, priority, fragments,
    /// frame count.
    type Open = (u32, u8, Option<Vec<u8>>, Vec<u8>, usize);

    fn parse(bytes: &[u8]) -> Vec<Seen> {
        assert_eq!(&bytes[..24], PREFACE);
        let mut rest = &bytes[24..];
        let mut decoder = loona_hpack::Decoder::new();
        let mut seen = Vec::new();
        let mut open: Option<Open> = None;
        while !rest.is_empty() {
            let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
            let (kind, flags) = (rest[3], rest[4]);
            let stream = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]);
            assert!(len <= MAX_FRAME, "frame of {len} bytes");
            let payload = &rest[9..9 + len];
            rest = &rest[9 + len..];
            match kind {
                HEADERS => {
                    assert!(open.is_none());
                    assert_eq!(flags & PADDED, 0, "padding is dropped");
                    let (priority, fragment) = if flags & PRIORITY != 0 {
                        (Some(payload[..5].to_vec()), &payload[5..])
                    } else {
                        (None, payload)
                    };
                    open = Some((stream, flags, priority, fragment.to_vec(), 1));
                }
                CONTINUATION => {
                    let block = open.as_mut().expect("continuation after headers");
                    assert_eq!(block.0, stream);
                    block.3.extend_from_slice(payload);
                    block.4 += 1;
                }
                _ => {
                    assert!(open.is_none());
                    seen.push(Seen::Other {
                        kind,
                        flags,
                        stream,
                        payload: payload.to_vec(),
                    });
                    continue;
                }
            }
            if flags & END_HEADERS != 0 {
                let (stream, first_flags, priority, block, frames) = open.take().unwrap();
                seen.push(Seen::Headers {
                    stream,
                    flags: first_flags & (END_STREAM | PRIORITY),
                    priority,
                    fields: decoder
                        .decode(&block)
                        .expect("h2 can decode what the front sends"),
                    frames,
                });
            }
        }
        assert!(open.is_none(), "block left open");
        seen
    }

    fn expected_request(stream: u32, authority: &str) -> Seen {
        Seen::Headers {
            stream,
            flags: 0,
            priority: None,
            fields: fields(&[
                (":method", "POST"),
                (":scheme", "http"),
                (":path", "/runtime.v1.RuntimeService/Version"),
                (":authority", authority),
                ("content-type", "application/grpc"),
            ]),
            frames: 1,
        }
    }

    #[test]
    fn path_authority_becomes_localhost_and_the_rest_passes_untouched() {
        let settings = frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100]);
        let data = frame(0x0, END_STREAM, 1, &[0, 0, 0, 0, 4, 10, 2, b'v', b'1']);
        let input = connection(&[
            settings.clone(),
            frame(
                HEADERS,
                END_HEADERS,
                1,
                &request_block("/run/strata/strata.sock"),
            ),
            data.clone(),
        ]);
        let out = rewrite(&input, usize::MAX).unwrap();
        let seen = parse(&out);
        assert_eq!(seen.len(), 3);
        assert_eq!(
            seen[0],
            Seen::Other {
                kind: 0x4,
                flags: 0,
                stream: 0,
                payload: settings[9..].to_vec()
            }
        );
        assert_eq!(seen[1], expected_request(1, "localhost"));
        assert_eq!(
            seen[2],
            Seen::Other {
                kind: 0,
                flags: END_STREAM,
                stream: 1,
                payload: data[9..].to_vec()
            }
        );
        // Byte for byte, everything but the header block is what the client sent.
        assert!(out.ends_with(&data));
        assert!(out.starts_with(&connection(&[settings])));
    }

    #[test]
    fn dynamic_table_references_resolve_to_what_the_client_meant() {
        // The second request refers to the first one's dynamic-table entries (newest first:
        // content-type 62, :authority 63, :path 64), as Go's encoder does.
        let second = vec![0x83, 0x86, 0x80 | 64, 0x80 | 63, 0x80 | 62];
        // A table size update at the start of a block, then a literal that evicts nothing.
        let mut third = vec![0x3f, 0xe1, 0x1f]; // size update to 4096
        third.extend([0x83, 0x86, 0x80 | 64]);
        third.extend(indexed_literal(":authority", "localhost:10010"));
        third.push(0x80 | 63); // content-type, pushed one down
        let input = connection(&[
            frame(
                HEADERS,
                END_HEADERS,
                1,
                &request_block("/run/strata/strata.sock"),
            ),
            frame(HEADERS, END_HEADERS, 3, &second),
            frame(HEADERS, END_HEADERS, 5, &third),
        ]);
        let seen = parse(&rewrite(&input, usize::MAX).unwrap());
        assert_eq!(
            seen,
            vec![
                expected_request(1, "localhost"),
                expected_request(3, "localhost"),
                expected_request(5, "localhost:10010"),
            ]
        );
    }

    #[test]
    fn every_authority_h2_refuses_is_replaced_and_valid_ones_are_kept() {
        for (sent, seen) in [
            ("/run/strata/strata.sock", "localhost"),
            ("%2Frun%2Fstrata%2Fstrata.sock", "localhost"),
            ("", "localhost"),
            ("unix:///run/x.sock", "localhost"),
            ("a b", "localhost"),
            ("localhost", "localhost"),
            ("10.0.0.1:10010", "10.0.0.1:10010"),
        ] {
            let input = connection(&[frame(HEADERS, END_HEADERS, 1, &request_block(sent))]);
            let out = parse(&rewrite(&input, usize::MAX).unwrap());
            assert_eq!(out, vec![expected_request(1, seen)], "sent {sent:?}");
            assert!(
                acceptable_authority(seen.as_bytes()),
                "{seen:?} must pass h2"
            );
        }
    }

    #[test]
    fn padding_is_dropped_priority_kept_and_continuations_joined() {
        let block = request_block("/s.sock");
        let (a, rest) = block.split_at(7);
        let (b, c) = rest.split_at(20);
        let mut headers = vec![3]; // pad length
        headers.extend([0x80, 0, 0, 1, 42]); // exclusive dependency on stream 1, weight 42
        headers.extend_from_slice(a);
        headers.extend([0, 0, 0]);
        let input = connection(&[
            frame(HEADERS, PADDED | PRIORITY | END_STREAM, 3, &headers),
            frame(CONTINUATION, 0, 3, b),
            frame(CONTINUATION, END_HEADERS, 3, c),
        ]);
        let seen = parse(&rewrite(&input, usize::MAX).unwrap());
        let Seen::Headers { fields, .. } = expected_request(3, "localhost") else {
            unreachable!()
        };
        assert_eq!(
            seen,
            vec![Seen::Headers {
                stream: 3,
                flags: END_STREAM | PRIORITY,
                priority: Some(vec![0x80, 0, 0, 1, 42]),
                fields,
                frames: 1,
            }]
        );
    }

    #[test]
    fn a_block_longer_than_a_frame_after_rewriting_is_split() {
        let big = "x".repeat(MAX_FRAME + 500);
        // Sent as HEADERS + CONTINUATION, and re-encoded into two frames again.
        let mut block = request_block("/s.sock");
        block.extend(indexed_literal("x-big", &big));
        let input = connection(&[
            frame(HEADERS, 0, 1, &block[..MAX_FRAME]),
            frame(CONTINUATION, END_HEADERS, 1, &block[MAX_FRAME..]),
        ]);
        let seen = parse(&rewrite(&input, usize::MAX).unwrap());
        let Seen::Headers { fields, frames, .. } = &seen[0] else {
            panic!("{seen:?}")
        };
        assert_eq!(*frames, 2);
        assert_eq!(fields[3], (b":authority".to_vec(), b"localhost".to_vec()));
        assert_eq!(fields[5], (b"x-big".to_vec(), big.into_bytes()));
    }

    #[test]
    fn byte_at_a_time_gives_the_same_stream() {
        let input = connection(&[
            frame(0x4, 0, 0, &[]),
            frame(
                HEADERS,
                END_HEADERS,
                1,
                &request_block("/run/strata/strata.sock"),
            ),
            frame(0x0, END_STREAM, 1, &[7; 300]),
            frame(0x6, 0, 0, &[1; 8]), // PING
        ]);
        let whole = rewrite(&input, usize::MAX).unwrap();
        assert_eq!(rewrite(&input, 1).unwrap(), whole);
        assert_eq!(rewrite(&input, 10).unwrap(), whole);
    }

    #[test]
    fn hostile_streams_are_refused() {
        let headers = frame(HEADERS, END_HEADERS, 1, &request_block("/s"));
        let open = frame(HEADERS, 0, 1, &request_block("/s"));
        type Case = (Vec<u8>, fn(&Error) -> bool);
        let cases: Vec<Case> = vec![
            (b"GET / HTTP/1.1\r\n\r\n".to_vec(), |e| {
                matches!(e, Error::NoPreface)
            }),
            (
                connection(&[frame(CONTINUATION, END_HEADERS, 1, &[0x83])]),
                |e| matches!(e, Error::UnexpectedContinuation),
            ),
            (
                connection(&[open.clone(), frame(0x0, 0, 1, b"data")]),
                |e| matches!(e, Error::InterruptedBlock { kind: 0, stream: 1 }),
            ),
            (
                connection(&[open.clone(), frame(CONTINUATION, END_HEADERS, 3, &[0x83])]),
                |e| {
                    matches!(
                        e,
                        Error::InterruptedBlock {
                            kind: CONTINUATION,
                            stream: 1
                        }
                    )
                },
            ),
            (connection(&[frame(HEADERS, PADDED, 1, &[9, 1, 2])]), |e| {
                matches!(e, Error::BadPadding)
            }),
            (connection(&[frame(HEADERS, PRIORITY, 1, &[1, 2])]), |e| {
                matches!(e, Error::BadPadding)
            }),
            (
                connection(&[frame(HEADERS, END_HEADERS, 1, &[0x80 | 70])]),
                |e| matches!(e, Error::Hpack(_)),
            ),
            (
                {
                    let mut f = frame(HEADERS, END_HEADERS, 1, &[]);
                    f[..3].copy_from_slice(&[0x01, 0x00, 0x00]); // 65536 > MAX_FRAME
                    connection(&[f])
                },
                |e| matches!(e, Error::FrameTooLarge(65536)),
            ),
            (
                // A size update past the 4096 bytes the server allows.
                connection(&[frame(HEADERS, END_HEADERS, 1, &[0x3f, 0xe1, 0x3f, 0x83])]),
                |e| matches!(e, Error::Hpack(DecoderError::InvalidMaxDynamicSize)),
            ),
        ];
        for (input, expected) in cases {
            let err = rewrite(&input, usize::MAX).expect_err("refused");
            assert!(expected(&err), "{err:?} for {input:?}");
        }
        // A valid block after a valid one is fine: the cases above failed for their reason.
        rewrite(&connection(&[headers.clone(), headers]), 3).unwrap();
    }

    #[test]
    fn huge_blocks_and_decompression_bombs_are_refused() {
        // Endless CONTINUATION frames.
        let mut frames = vec![frame(HEADERS, 0, 1, &[0x83])];
        frames.extend(
            (0..=MAX_BLOCK / MAX_FRAME).map(|_| frame(CONTINUATION, 0, 1, &[0x86; MAX_FRAME])),
        );
        let err = rewrite(&connection(&frames), usize::MAX).expect_err("refused");
        assert!(matches!(err, Error::BlockTooLarge), "{err:?}");

        // One 4000-byte table entry referenced over and over: small on the wire, ~64 MiB
        // decoded.
        let mut block = indexed_literal("x-bomb", &"b".repeat(4000));
        block.extend(std::iter::repeat_n(0x80 | 62, MAX_FRAME - block.len()));
        let err = rewrite(
            &connection(&[frame(HEADERS, END_HEADERS, 1, &block)]),
            usize::MAX,
        )
        .expect_err("refused");
        assert!(matches!(err, Error::HeaderListTooLarge), "{err:?}");
    }

    #[test]
    fn random_bytes_never_panic() {
        // A fixed xorshift stream: the same cases on every run.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..2000 {
            let len = (next() % 64) as usize;
            let kind = [HEADERS, CONTINUATION, 0, 4][(next() % 4) as usize];
            let flags = (next() & 0x2d) as u8;
            let payload: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let input = connection(&[
                frame(HEADERS, END_HEADERS, 1, &request_block("/s")),
                frame(kind, flags, (next() % 4) as u32, &payload),
            ]);
            let _ = rewrite(&input, (next() % 16 + 1) as usize);
        }
    }

    #[test]
    fn the_encoder_round_trips_through_a_real_decoder() {
        let list = fields(&[
            (":method", "GET"),
            (":method", "PUT"),
            (":status", "500"),
            ("www-authenticate", "x"),
            ("accept-encoding", "gzip, deflate"),
            ("grpc-timeout", "1S"),
            ("x-long", &"y".repeat(300)),
        ]);
        let mut encoded = Vec::new();
        for (n, v) in &list {
            encode_field(n, v, &mut encoded);
        }
        let mut decoder = loona_hpack::Decoder::new();
        assert_eq!(decoder.decode(&encoded).unwrap(), list);
        // Nothing went into the decoder's dynamic table: a reference to 62 is out of range.
        assert!(decoder.decode(&[0x80 | 62]).is_err());
    }
}
