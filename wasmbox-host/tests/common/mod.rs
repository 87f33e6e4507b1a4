//! Shared by the integration tests: builds the example guests for wasm32-wasip1 once per test
//! binary (cargo's own lock serialises concurrent builds) and hands out their paths.
#![allow(dead_code)]

use std::path::PathBuf;

#[path = "guests.rs"]
mod guests;
pub use guests::*;

#[path = "poke.rs"]
mod poke;
#[allow(unused_imports)] // Not every test binary pokes.
pub use poke::{POKE, op};

/// Path of the built example guest `name` (e.g. `counter`).
pub fn guest(name: &str) -> PathBuf {
    try_guest(name).unwrap_or_else(|e| panic!("{e}"))
}

/// Bytes of the built example guest `name`.
pub fn guest_bytes(name: &str) -> Vec<u8> {
    std::fs::read(guest(name)).expect("read guest")
}

/// A callback that collects outputs, and the place they are collected.
pub fn collector<T: Send + 'static>() -> (
    impl FnMut(T) + Send + 'static,
    std::sync::Arc<std::sync::Mutex<Vec<T>>>,
) {
    let store = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = store.clone();
    (move |t| s.lock().unwrap().push(t), store)
}

/// Takes everything collected so far.
pub fn take<T>(store: &std::sync::Arc<std::sync::Mutex<Vec<T>>>) -> Vec<T> {
    std::mem::take(&mut *store.lock().unwrap())
}
