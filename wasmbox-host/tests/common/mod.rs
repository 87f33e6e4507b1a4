//! Shared by the integration tests: builds the example guests for wasm32-wasip1 once per test
//! binary (cargo's own lock serialises concurrent builds) and hands out their paths.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The workspace root.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
}

/// Path of the built example guest `name` (e.g. `counter`).
pub fn guest(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        let target_dir = root().join("target").join("guests");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args([
                "build",
                "--release",
                "--target",
                "wasm32-wasip1",
                "--manifest-path",
            ])
            .arg(root().join("examples").join("Cargo.toml"))
            .arg("--target-dir")
            .arg(&target_dir)
            .status()
            .expect("run cargo to build the example guests");
        assert!(status.success(), "building the example guests failed");
        target_dir.join("wasm32-wasip1").join("release")
    });
    let path = dir.join(format!("{name}.wasm"));
    assert!(path.exists(), "no guest at {}", path.display());
    path
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
