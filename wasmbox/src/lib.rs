//! # wasmbox — the guest library
//!
//! Write a guest once, run it inside a [WasmBox host](https://docs.rs/wasmbox-host), and its
//! whole state — memory, globals, clock, random generator — becomes a value the host can
//! snapshot, store and restore, even in another process.
//!
//! A guest is a `cdylib` crate built for `wasm32-wasip1` with one of two interfaces:
//!
//! ```ignore
//! use wasmbox::prelude::*;
//!
//! #[wasmbox]
//! async fn run(ctx: WasmBoxContext<String, String>) {
//!     loop {
//!         let message = ctx.next().await;
//!         ctx.send(format!("you said {message}"));
//!     }
//! }
//! ```
//!
//! or a type implementing [`WasmBox`], marked with `#[wasmbox_sync]`. Both look the same to
//! the host. Input and output may be any serde types.
//!
//! # Features
//! - `json` (off by default): the guest also takes and sends JSON text
//!   ([`abi::Codec::Json`]), for hosts that speak JSON such as `wasmbox-cli run --json`.
//!   Without it, guests do not carry `serde_json`.
//!
//! The byte-level contract with the host is described in [`abi`].
#![deny(missing_docs)]

pub mod abi;
pub mod prelude;
mod runtime;
mod sys;

pub use runtime::{__private, WasmBox, WasmBoxContext};
pub use wasmbox_macros::{wasmbox, wasmbox_sync};
