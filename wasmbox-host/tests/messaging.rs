//! Every example guest, built for wasm32-wasip1, driven through the real host with typed
//! messages.

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

mod common;

use anyhow::Result;
use common::{collector, guest, guest_bytes, take};
use typed::{Account, Command, Refusal, Reply};
use wasmbox_host::{Error, WasmBoxHost, WasmBoxModule};

#[test]
fn accept_async_counter() -> Result<()> {
    let (cb, out) = collector::<String>();
    let mut host = WasmBoxHost::<String, String>::from_wasm_file(guest("counter"), cb)?;
    for m in ["up", "up", "noise", "down", "up"] {
        host.message(m)?;
    }
    assert_eq!(take(&out), ["value=1", "value=2", "value=1", "value=2"]);
    Ok(())
}

#[test]
fn accept_sync_counter_and_it_looks_the_same() -> Result<()> {
    let script = ["down", "up", "up", "x", "down", "up", "up"];
    let mut seen = Vec::new();
    for name in ["counter", "countersync"] {
        let (cb, out) = collector::<String>();
        let mut host = WasmBoxHost::<String, String>::from_wasm_bytes(&guest_bytes(name), cb)?;
        for m in script {
            host.message(&m.to_string())?;
        }
        seen.push(take(&out));
    }
    assert_eq!(
        seen[0],
        [
            "value=-1", "value=0", "value=1", "value=0", "value=1", "value=2"
        ]
    );
    assert_eq!(
        seen[0], seen[1],
        "the sync counter goes below zero as the async one does"
    );
    Ok(())
}

#[test]
fn accept_echo_of_any_string() -> Result<()> {
    let (cb, out) = collector::<String>();
    let mut host = WasmBoxHost::<String, String>::from_wasm_file(guest("echo"), cb)?;
    let big = "é".repeat(100_000);
    for m in ["", "hello", "with\nnewline", big.as_str()] {
        host.message(m)?;
    }
    assert_eq!(take(&out), ["", "hello", "with\nnewline", big.as_str()]);
    Ok(())
}

#[test]
fn accept_typed_enum_commands_and_struct_replies() -> Result<()> {
    let (cb, out) = collector::<Reply>();
    let mut host =
        WasmBoxHost::<Command, Reply>::new(&WasmBoxModule::from_file(guest("typed"))?, cb)?;
    let open = |a: &str, c| Command::Open {
        account: a.into(),
        cents: c,
    };
    host.message(&open("alice", 1000))?;
    host.message(&open("bob", 50))?;
    host.message(&open("bob", 1))?;
    host.message(&Command::Transfer {
        from: "alice".into(),
        to: "bob".into(),
        cents: 300,
    })?;
    host.message(&Command::Transfer {
        from: "bob".into(),
        to: "alice".into(),
        cents: 10_000,
    })?;
    host.message(&Command::Transfer {
        from: "carol".into(),
        to: "bob".into(),
        cents: 1,
    })?;
    host.message(&Command::Balance {
        account: "bob".into(),
    })?;
    host.message(&Command::Statement)?;
    assert_eq!(
        take(&out),
        vec![
            Reply::Done { sequence: 1 },
            Reply::Done { sequence: 2 },
            Reply::Refused(Refusal::AlreadyOpen("bob".into())),
            Reply::Done { sequence: 3 },
            Reply::Refused(Refusal::InsufficientFunds {
                account: "bob".into(),
                cents: 350
            }),
            Reply::Refused(Refusal::NoSuchAccount("carol".into())),
            Reply::Balance(Account {
                name: "bob".into(),
                cents: 350
            }),
            Reply::Statement(vec![
                Account {
                    name: "alice".into(),
                    cents: 700
                },
                Account {
                    name: "bob".into(),
                    cents: 350
                },
            ]),
        ]
    );
    Ok(())
}

#[test]
fn accept_random_bytes_from_the_seeded_generator() -> Result<()> {
    let module = WasmBoxModule::from_file(guest("random"))?;
    let run = |seed: u64| -> Result<Vec<Vec<u8>>> {
        let (cb, out) = collector::<Vec<u8>>();
        let mut host = WasmBoxHost::<u32, Vec<u8>>::builder(&module)
            .seed(seed)
            .build(cb)?;
        for n in [8, 0, 64, 1000] {
            host.message(&n)?;
        }
        Ok(take(&out))
    };
    let a = run(1)?;
    assert_eq!(a.iter().map(Vec::len).collect::<Vec<_>>(), [8, 0, 64, 64]);
    assert_ne!(a[0], vec![0; 8], "bytes are random, not zero");
    assert_ne!(a[2][..8], a[0][..], "each call gets new bytes");
    assert_eq!(a, run(1)?, "the same seed gives the same bytes");
    assert_ne!(a, run(2)?, "another seed gives other bytes");
    Ok(())
}

#[test]
fn reject_mismatched_message_types() -> Result<()> {
    // The counter takes Strings; a u64 does not decode as one (its varint bytes are not a
    // valid String length + UTF-8 here).
    let (cb, _out) = collector::<String>();
    let mut host =
        WasmBoxHost::<Vec<u8>, String>::new(&WasmBoxModule::from_file(guest("counter"))?, cb)?;
    assert!(matches!(
        host.message(&vec![5u8, 0xff, 0xfe, 0xfd, 0xfc, 0xfb]),
        Err(Error::InputRejected { .. })
    ));
    // The box is not harmed: a valid String (as bytes) still works.
    host.message(&b"up".to_vec())?;
    // And an Output type that does not match is reported, not a panic.
    let (cb, _out) = collector::<u64>();
    let mut host =
        WasmBoxHost::<String, u64>::new(&WasmBoxModule::from_file(guest("counter"))?, cb)?;
    assert!(matches!(host.message("up"), Err(Error::OutputDecode(_))));
    Ok(())
}

#[test]
fn reject_modules_that_are_not_guests() {
    let wat = |s: &str| wat::parse_str(s).unwrap();
    let cases = [
        (b"garbage".to_vec(), "not a valid WebAssembly module"),
        (
            wat("(module (memory 1))"),
            "no function export `wasmbox_abi_version`",
        ),
        (
            wat(r#"(module (memory 1) (func (export "wasmbox_abi_version") (param i32)))"#),
            "wrong signature",
        ),
    ];
    for (bytes, expected) in cases {
        let err = WasmBoxHost::<String, String>::from_wasm_bytes(&bytes, |_| {}).unwrap_err();
        assert!(
            err.to_string().contains(expected),
            "{err} should mention {expected:?}"
        );
    }
}

#[test]
fn reject_wrong_abi_version() {
    let wasm = wat::parse_str(
        r#"(module (memory (export "memory") 1)
             (func (export "wasmbox_abi_version") (result i32) i32.const 99)
             (func (export "wasmbox_codecs") (result i32) i32.const 1)
             (func (export "wasmbox_init") (param i32) (result i32) i32.const 0)
             (func (export "wasmbox_input_buffer") (param i32) (result i32) i32.const 0)
             (func (export "wasmbox_message") (param i32 i32) (result i32) i32.const 0))"#,
    )
    .unwrap();
    let err = WasmBoxHost::<String, String>::from_wasm_bytes(&wasm, |_| {}).unwrap_err();
    assert!(
        matches!(
            err,
            Error::AbiVersion {
                found: 99,
                expected: 2
            }
        ),
        "{err}"
    );
}

#[test]
fn reject_unknown_imports() {
    // A complete guest in every other respect: without the import, it loads and runs.
    let guest = |import: &str| {
        wat::parse_str(format!(
            r#"(module {import} (memory (export "memory") 1)
                 (func (export "wasmbox_abi_version") (result i32) i32.const 2)
  (func (export "wasmbox_codecs") (result i32) i32.const 1)
                 (func (export "wasmbox_init") (param i32) (result i32) i32.const 0)
                 (func (export "wasmbox_input_buffer") (param i32) (result i32) i32.const 0)
                 (func (export "wasmbox_message") (param i32 i32) (result i32) i32.const 0))"#
        ))
        .unwrap()
    };
    let mut host = WasmBoxHost::<String, String>::from_wasm_bytes(&guest(""), |_| {}).unwrap();
    host.message("hello").unwrap();
    let err = WasmBoxHost::<String, String>::from_wasm_bytes(
        &guest(r#"(import "env" "open_socket" (func))"#),
        |_| {},
    )
    .unwrap_err();
    assert!(
        matches!(&err, Error::NotAGuest(m) if m.contains("open_socket")),
        "{err}"
    );
}
