//! SPDY/3.1 frames (the kubelet's streaming protocol): whatever decodes encodes again.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use strata_agent::server::streaming::spdy::{Decoder, Encoder};

fuzz_target!(|data: &[u8]| {
    let mut decoder = Decoder::default();
    let mut encoder = Encoder::default();
    let mut input = BytesMut::from(data);
    while let Ok(Some(frame)) = decoder.decode(&mut input) {
        let mut out = BytesMut::new();
        let _ = encoder.encode(&frame, &mut out);
    }
});
