//! The input is the *content* of a snapshot file (the bincode part); the target puts a correct
//! 64-byte header (magic, version, flags, length, CRC-32, no MAC) in front so that every input reaches the
//! bincode decoder and, when it decodes, the host's consistency checks on restore.
//!
//! Checks:
//! * `decode_file` returns `Ok` or `Err`, never panics; a decoded snapshot survives
//!   `encode_file` → `decode_file` unchanged.
//! * `restore_snapshot` into a box of the `counter` guest returns `Ok` or `Err`, never panics.
//! * After a refused restore the box is left as it was: it still answers `up` with `value=N`.
//! * After an accepted restore (the guest's memory may now be garbage) sending `up` may fail
//!   in any way the API describes, but must not panic the host.
//!
//! A snapshot whose module fingerprint is not the counter's is first restored as it is (it must
//! be refused), then again with the counter's fingerprint so that the later checks are reached.
//! The box runs under the host's own limits (deadline 100 ms, memory 256 MiB), which no
//! restore lifts whatever the snapshot records, so that a restored guest looping or growing
//! memory on `up` does not look like a hang or an out-of-memory crash.
//!
//! The guest is read from `$WASMBOX_FUZZ_GUEST`, by default
//! `../target/guests/wasm32-wasip1/release/counter.wasm` (see README.md to build it).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use wasmbox_host::snapshot::{FORMAT_VERSION, MAGIC, decode_file, encode_file};
use wasmbox_host::{Limits, Snapshot, WasmBoxHost, WasmBoxModule};

const DEFAULT_GUEST: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../target/guests/wasm32-wasip1/release/counter.wasm"
);
const MAX_DEADLINE: Duration = Duration::from_millis(100);
const MAX_MEMORY_BYTES: u64 = 256 << 20;

struct Fixture {
    host: WasmBoxHost<String, String>,
    /// The box's state right after it was built: restored again after an accepted restore.
    good: Snapshot,
    fingerprint: [u8; 32],
    outputs: Arc<Mutex<Vec<String>>>,
    /// Whether the box holds a fuzzed state (after an accepted restore).
    dirty: bool,
}

fn fixture() -> &'static Mutex<Fixture> {
    static FIXTURE: OnceLock<Mutex<Fixture>> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let path = std::env::var("WASMBOX_FUZZ_GUEST").unwrap_or_else(|_| DEFAULT_GUEST.into());
        let wasm = std::fs::read(&path).unwrap_or_else(|e| {
            panic!("cannot read the counter guest {path}: {e} (build it first, see fuzz/README.md)")
        });
        let module = WasmBoxModule::from_bytes(&wasm).expect("the counter guest compiles");
        let outputs = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&outputs);
        let limits = Limits {
            deadline_per_message: Some(MAX_DEADLINE),
            max_memory_bytes: MAX_MEMORY_BYTES,
            ..Limits::default()
        };
        let mut host = WasmBoxHost::<String, String>::builder(&module)
            .limits(limits)
            .build(move |out| sink.lock().unwrap_or_else(|e| e.into_inner()).push(out))
            .expect("a counter box starts");
        let good = host.snapshot_state().expect("a fresh box snapshots");
        Mutex::new(Fixture {
            host,
            good,
            fingerprint: module.fingerprint(),
            outputs,
            dirty: false,
        })
    })
}

impl Fixture {
    fn take_outputs(&self) -> Vec<String> {
        std::mem::take(&mut *self.outputs.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn restore(&mut self, snapshot: &Snapshot) {
        if self.dirty {
            self.host
                .restore_snapshot(&self.good)
                .expect("the box's own first snapshot restores");
            self.dirty = false;
        }
        self.take_outputs();
        match self.host.restore_snapshot(snapshot) {
            Err(refused) => {
                let _ = refused.to_string();
                if let Err(e) = self.host.message("up") {
                    panic!("after a refused restore ({refused}) the box fails on `up`: {e}");
                }
                let outputs = self.take_outputs();
                assert!(
                    outputs.len() == 1 && outputs[0].starts_with("value="),
                    "after a refused restore ({refused}) the box answered `up` with {outputs:?}"
                );
            }
            Ok(()) => {
                self.dirty = true;
                // Garbage memory may make the guest trap, reject the input or send odd
                // outputs: any `Result` is fine, a host panic is not.
                if let Err(e) = self.host.message("up") {
                    let _ = e.to_string();
                }
                self.take_outputs();
            }
        }
    }
}

/// A snapshot file holding `content`, with a correct header and no MAC.
fn with_header(content: &[u8]) -> Vec<u8> {
    let mut file = Vec::with_capacity(64 + content.len());
    file.extend_from_slice(&MAGIC);
    file.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    file.extend_from_slice(&0u32.to_le_bytes()); // flags: no MAC
    file.extend_from_slice(&(content.len() as u64).to_le_bytes());
    file.extend_from_slice(&crc32fast::hash(content).to_le_bytes());
    file.extend_from_slice(&[0; 36]); // reserved word and MAC
    file.extend_from_slice(content);
    file
}

fuzz_target!(|content: &[u8]| {
    let mut snapshot = match decode_file(&with_header(content)) {
        Ok(snapshot) => snapshot,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    match decode_file(&encode_file(&snapshot)) {
        Ok(back) => assert!(
            back == snapshot,
            "a decoded snapshot changed through encode_file/decode_file"
        ),
        Err(e) => panic!("a decoded snapshot, encoded again, does not decode: {e}"),
    }

    let mut fx = fixture().lock().unwrap_or_else(|e| e.into_inner());
    if snapshot.module_fingerprint != fx.fingerprint {
        fx.restore(&snapshot);
        snapshot.module_fingerprint = fx.fingerprint;
    }
    fx.restore(&snapshot);
});
