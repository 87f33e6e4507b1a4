//! Compile-fail tests: every misuse of `#[wasmbox]` and `#[wasmbox_sync]` must be reported as
//! the macro's own error on the offending tokens. The pass cases check the documented forms.

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
    t.pass("tests/ui-pass/*.rs");
}
