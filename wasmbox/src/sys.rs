//! The host functions a guest imports, wrapped in safe functions. This is the only module of
//! the guest library with `unsafe` code. The names here must equal [`crate::abi`]'s constants
//! (`#[link]` takes only literals); the host refuses a guest whose imports it does not know,
//! and the integration tests load real guests, so a mismatch cannot go unnoticed.

#[cfg(target_family = "wasm")]
#[link(wasm_import_module = "wasmbox")]
unsafe extern "C" {
    #[link_name = "wasmbox_send"]
    fn wasmbox_send(ptr: u32, len: u32);
    #[link_name = "wasmbox_panic"]
    fn wasmbox_panic(ptr: u32, len: u32);
}

/// Hands one encoded output to the host, which copies it before returning.
#[cfg(target_family = "wasm")]
pub(crate) fn send(bytes: &[u8]) {
    // SAFETY: the host only reads `bytes.len()` bytes at `bytes.as_ptr()`, which is a live
    // borrow for the duration of the call (wasm32 pointers and lengths fit in u32).
    unsafe { wasmbox_send(bytes.as_ptr() as u32, bytes.len() as u32) }
}

/// Hands the text of a panic to the host.
#[cfg(target_family = "wasm")]
pub(crate) fn panic_message(text: &str) {
    // SAFETY: as for `send`: the host reads the borrowed bytes during the call only.
    unsafe { wasmbox_panic(text.as_ptr() as u32, text.len() as u32) }
}

/// Outside wasm there is no host to talk to: guests only run inside a WasmBox host.
#[cfg(not(target_family = "wasm"))]
pub(crate) fn send(_bytes: &[u8]) {
    unreachable!("wasmbox guests run only on wasm targets, inside a WasmBox host")
}

/// Outside wasm there is no host to talk to.
#[cfg(not(target_family = "wasm"))]
pub(crate) fn panic_message(_text: &str) {}
