//! The host functions a guest imports, wrapped in safe functions. This is the only module of
//! the guest library with `unsafe` code.
//!
//! `#[link]` and `#[link_name]` take only literals, so the import names cannot be written as
//! [`crate::abi`]'s constants. The `imports!` macro below takes each literal once, puts it in
//! the attribute and checks it against its constant at compile time, on every target: a name
//! that differs from the ABI's is a compile error, not a guest the host refuses at load time.

use crate::abi;

/// Whether two strings are equal, byte for byte (`str`'s `==` is not usable in constants).
const fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Declares the imports: `module "lit" == CONST;` then `fn name(args) = "lit" == CONST;` for
/// each function. Every literal is asserted equal to its constant at compile time (on every
/// target) and is the very token the `#[link]` / `#[link_name]` attribute gets (on wasm).
macro_rules! imports {
    (
        module $module:literal == $module_name:path;
        $(fn $name:ident($($arg:ident: $ty:ty),*) = $link:literal == $link_name:path;)*
    ) => {
        const _: () = assert!(
            same($module, $module_name),
            concat!("the import module ", $module, " is not ", stringify!($module_name)),
        );
        $(
            const _: () = assert!(
                same($link, $link_name),
                concat!("the import ", $link, " is not named ", stringify!($link_name)),
            );
        )*

        #[cfg(target_family = "wasm")]
        #[link(wasm_import_module = $module)]
        unsafe extern "C" {
            $(
                #[link_name = $link]
                fn $name($($arg: $ty),*);
            )*
        }
    };
}

imports! {
    module "wasmbox" == abi::IMPORT_MODULE;
    fn wasmbox_send(ptr: u32, len: u32) = "wasmbox_send" == abi::IMPORT_SEND;
    fn wasmbox_panic(ptr: u32, len: u32) = "wasmbox_panic" == abi::IMPORT_PANIC;
    fn wasmbox_reject(ptr: u32, len: u32) = "wasmbox_reject" == abi::IMPORT_REJECT;
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

/// Hands the host the reason why the current input does not decode.
#[cfg(target_family = "wasm")]
pub(crate) fn reject(reason: &str) {
    // SAFETY: as for `send`: the host reads the borrowed bytes during the call only.
    unsafe { wasmbox_reject(reason.as_ptr() as u32, reason.len() as u32) }
}

/// Outside wasm there is no host to talk to.
#[cfg(not(target_family = "wasm"))]
pub(crate) fn reject(_reason: &str) {}

/// Outside wasm there is no host to talk to: guests only run inside a WasmBox host.
#[cfg(not(target_family = "wasm"))]
pub(crate) fn send(_bytes: &[u8]) {
    unreachable!("wasmbox guests run only on wasm targets, inside a WasmBox host")
}

/// Outside wasm there is no host to talk to.
#[cfg(not(target_family = "wasm"))]
pub(crate) fn panic_message(_text: &str) {}

#[cfg(test)]
mod tests {
    use super::same;

    #[test]
    fn same_compares_bytes() {
        assert!(same("", ""));
        assert!(same("wasmbox", "wasmbox"));
        assert!(!same("wasmbox", "wasmbo"));
        assert!(!same("wasmbox", "wasmboX"));
        assert!(!same("", "x"));
    }
}
