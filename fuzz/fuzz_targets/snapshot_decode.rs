//! Raw bytes as a snapshot file: `decode_file` must return `Ok` or `Err`, never panic, and
//! never allocate more than about the input's size (libFuzzer's `-malloc_limit_mb` catches a
//! huge allocation). A snapshot that decodes must survive `encode_file` → `decode_file`
//! unchanged.
//!
//! Almost every mutation breaks the header's CRC, so this target mostly explores the header
//! checks; `snapshot_content` fixes the header up to reach the content decoder.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wasmbox_host::snapshot::{decode_file, encode_file};

fuzz_target!(|data: &[u8]| {
    match decode_file(data) {
        Ok(snapshot) => {
            let again = encode_file(&snapshot);
            match decode_file(&again) {
                Ok(back) => assert!(
                    back == snapshot,
                    "a decoded snapshot changed through encode_file/decode_file"
                ),
                Err(e) => panic!("a decoded snapshot, encoded again, does not decode: {e}"),
            }
        }
        Err(e) => {
            // The message is what users see: formatting it must not panic either.
            let _ = e.to_string();
        }
    }
});
