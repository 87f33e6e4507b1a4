//! Holds a heap buffer whose size the host controls, to exercise large snapshots.
//!
//! * `Grow { mib, seed }` appends `mib` MiB of pseudo-random bytes (from `seed`), so the pages
//!   are really in use;
//! * `Sum` replies with a checksum of the whole buffer;
//! * `Clear` frees it (the linear memory stays as large, filled with whatever is left);
//! * `Reserve { mib }` grows the linear memory without writing to it.
use serde::{Deserialize, Serialize};
use wasmbox::prelude::*;

/// A request to the memory guest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Append `mib` MiB of bytes derived from `seed`.
    Grow { mib: u32, seed: u64 },
    /// Reply with the buffer's length and checksum.
    Sum,
    /// Drop the buffer.
    Clear,
    /// Grow the linear memory by `mib` MiB without touching it (a sparse memory).
    Reserve { mib: u32 },
}

/// The guest's answer: the buffer's length in bytes and an FNV-1a hash of its content.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Bytes held.
    pub len: u64,
    /// FNV-1a hash of the bytes.
    pub hash: u64,
}

#[wasmbox]
async fn run(ctx: WasmBoxContext<Request, Summary>) {
    let mut buffer: Vec<u8> = Vec::new();
    loop {
        match ctx.next().await {
            Request::Grow { mib, seed } => {
                let mut x = seed | 1;
                buffer.extend((0..(mib as usize) << 20).map(|_| {
                    // xorshift64
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                }));
            }
            Request::Sum => {}
            Request::Clear => buffer = Vec::new(),
            Request::Reserve { mib } => reserve(mib),
        }
        let hash = buffer.iter().fold(0xcbf29ce484222325u64, |h, &b| {
            (h ^ b as u64).wrapping_mul(0x100000001b3)
        });
        ctx.send(Summary {
            len: buffer.len() as u64,
            hash,
        });
    }
}

#[cfg(target_family = "wasm")]
fn reserve(mib: u32) {
    core::arch::wasm32::memory_grow(0, (mib as usize) * 16);
}

#[cfg(not(target_family = "wasm"))]
fn reserve(_mib: u32) {}
