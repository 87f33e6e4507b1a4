//! Raw bytes as a WasmBox message (`wasmbox::abi::decode`, used by both host and guest) of
//! several types. Checks: decoding returns `Ok` or `Err`, never panics, and never allocates
//! much more than the input's size (libFuzzer's `-malloc_limit_mb` / `-rss_limit_mb` catch
//! that). A value that decodes encodes again to at most as many bytes as it was decoded from,
//! and that encoding decodes and re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use wasmbox::abi::{decode, encode};

/// An enum with struct, tuple and unit variants, as a guest's `Input`/`Output` might be.
#[derive(Debug, Serialize, Deserialize)]
enum Command {
    Put {
        key: String,
        #[serde(with = "serde_bytes_like")]
        value: Vec<u8>,
        ttl: Option<u64>,
    },
    Get {
        key: String,
        default: Option<i64>,
    },
    Scale {
        factor: f64,
        flags: (bool, char, u16),
    },
    Batch {
        keys: Vec<String>,
        counts: BTreeMap<String, u32>,
        id: u128,
    },
    Pair(u32, String),
    Stop,
}

/// Encodes a `Vec<u8>` as one length-prefixed byte string (as `serde_bytes` does), which takes
/// the deserializer's `deserialize_byte_buf` path instead of a sequence of `u8`s.
mod serde_bytes_like {
    use serde::de::{Deserializer, Error, Visitor};
    use serde::ser::Serializer;
    use std::fmt;

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(bytes)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct Bytes;
        impl<'de> Visitor<'de> for Bytes {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
        }
        d.deserialize_byte_buf(Bytes)
    }
}

fn check<T: Serialize + DeserializeOwned>(data: &[u8]) {
    let Ok(value) = decode::<T>(data) else {
        return;
    };
    let encoded = encode(&value).expect("a decoded value encodes");
    assert!(
        encoded.len() <= data.len(),
        "{}: {} bytes decoded to a value that encodes to {} bytes",
        std::any::type_name::<T>(),
        data.len(),
        encoded.len()
    );
    let back: T = decode(&encoded).unwrap_or_else(|e| {
        panic!(
            "{}: a re-encoded value does not decode: {e}",
            std::any::type_name::<T>()
        )
    });
    assert!(
        encode(&back).expect("encodes") == encoded,
        "{}: encode/decode is not stable",
        std::any::type_name::<T>()
    );
}

fuzz_target!(|data: &[u8]| {
    check::<String>(data);
    check::<Vec<u8>>(data);
    check::<(u32, String)>(data);
    check::<Command>(data);
    check::<Vec<Command>>(data);
    check::<Option<Vec<String>>>(data);
});
