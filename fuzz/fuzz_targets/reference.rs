//! Image references: whatever parses prints as a reference that parses to the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_agent::image::{digest::Digest, reference::Reference};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(reference) = Reference::parse(text) {
        let printed = reference.to_string();
        let again = Reference::parse(&printed)
            .unwrap_or_else(|e| panic!("{text:?} parsed, but its print {printed:?} does not: {e}"));
        assert_eq!(again.to_string(), printed);
    }
    if let Ok(digest) = Digest::parse(text) {
        assert_eq!(Digest::parse(&digest.to_string()).ok(), Some(digest));
    }
});
