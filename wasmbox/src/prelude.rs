//! Everything a guest needs: `use wasmbox::prelude::*;`.

pub use crate::{WasmBox, WasmBoxContext, wasmbox, wasmbox_sync};
