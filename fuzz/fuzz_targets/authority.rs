//! The HTTP/2 front of the socket: arbitrary frames after the client preface, fed in chunks
//! of a size the input picks. It may refuse a connection, never panic or loop.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use strata_agent::server::authority::Rewriter;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, frames)) = data.split_first() else {
        return;
    };
    let mut rewriter = Rewriter::default();
    let mut input = BytesMut::from(PREFACE);
    let mut out = BytesMut::new();
    for piece in frames.chunks(usize::from(chunk) + 1) {
        input.extend_from_slice(piece);
        if rewriter.process(&mut input, &mut out).is_err() {
            return;
        }
    }
});
