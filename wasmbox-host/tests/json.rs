//! The JSON codec: guests built with the `json` feature of `wasmbox` take and send JSON text,
//! with the same limits and errors as bincode; the codec is per call, not part of the state.

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

mod common;

use anyhow::{Result, ensure};
use common::{collector, guest, take};
use serde_json::{Value, json};
use typed::{Account, Command, Reply};
use wasmbox_host::{Codec, Error, WasmBoxHost, WasmBoxModule};

fn ledger_script() -> Vec<Command> {
    vec![
        Command::Open {
            account: "ana".into(),
            cents: 500,
        },
        Command::Open {
            account: "bob".into(),
            cents: 0,
        },
        Command::Transfer {
            from: "ana".into(),
            to: "bob".into(),
            cents: 120,
        },
        Command::Statement,
    ]
}

#[test]
fn accept_typed_messages_as_json_values() -> Result<()> {
    let module = WasmBoxModule::from_file(guest("typed"))?;
    let (cb, out) = collector::<Value>();
    let mut host = WasmBoxHost::<Value, Value>::builder(&module)
        .codec(Codec::Json)
        .build(cb)?;
    for command in ledger_script() {
        host.message(&serde_json::to_value(&command)?)?;
    }
    assert_eq!(
        take(&out).last().unwrap(),
        &json!({"Statement": [{"name": "ana", "cents": 380}, {"name": "bob", "cents": 120}]})
    );
    // The same typed values through either codec give the same replies and the same state.
    let mut states = Vec::new();
    for codec in [Codec::Bincode, Codec::Json] {
        let (cb, out) = collector::<Reply>();
        let mut host = WasmBoxHost::<Command, Reply>::builder(&module)
            .codec(codec)
            .build(cb)?;
        for command in ledger_script() {
            host.message(&command)?;
        }
        assert_eq!(
            take(&out).last().unwrap(),
            &Reply::Statement(vec![
                Account {
                    name: "ana".into(),
                    cents: 380
                },
                Account {
                    name: "bob".into(),
                    cents: 120
                },
            ])
        );
        states.push(host.snapshot_state()?.memory.pages);
    }
    ensure!(states[0] == states[1]);
    Ok(())
}

#[test]
fn accept_snapshots_move_between_codecs() -> Result<()> {
    let module = WasmBoxModule::from_file(guest("typed"))?;
    let (cb, _out) = collector::<Value>();
    let mut json_box = WasmBoxHost::<Value, Value>::builder(&module)
        .codec(Codec::Json)
        .build(cb)?;
    for command in &ledger_script()[..3] {
        json_box.message(&serde_json::to_value(command)?)?;
    }
    let snapshot = json_box.snapshot_state()?;
    let (cb, out) = collector::<Reply>();
    let mut typed_box = WasmBoxHost::<Command, Reply>::new(&module, cb)?;
    typed_box.restore_snapshot(&snapshot)?;
    typed_box.message(&Command::Balance {
        account: "bob".into(),
    })?;
    assert_eq!(
        take(&out),
        [Reply::Balance(Account {
            name: "bob".into(),
            cents: 120
        })]
    );
    Ok(())
}

#[test]
fn reject_json_that_is_not_the_guests_input_with_serdes_message() -> Result<()> {
    let module = WasmBoxModule::from_file(guest("typed"))?;
    let (cb, out) = collector::<Value>();
    let mut host = WasmBoxHost::<Value, Value>::builder(&module)
        .codec(Codec::Json)
        .build(cb)?;
    host.message(&json!({"Open": {"account": "ana", "cents": 5}}))?;
    take(&out);
    let err = host.message(&json!({"Open": {"account": 5}})).unwrap_err();
    ensure!(
        matches!(&err, Error::InputRejected { reason }
            if reason.contains("invalid type: integer `5`") && reason.contains("column")),
        "{err}"
    );
    ensure!(
        host.poisoned().is_none(),
        "a rejected input does not poison the box"
    );
    host.message(&json!({"Balance": {"account": "ana"}}))?;
    assert_eq!(
        take(&out),
        [json!({"Balance": {"name": "ana", "cents": 5}})]
    );
    // The bincode path names its problem too.
    let (cb, _out) = collector::<String>();
    let mut mismatched = WasmBoxHost::<u64, String>::new(&module, cb)?;
    let err = mismatched.message(&7u64).unwrap_err();
    ensure!(
        matches!(&err, Error::InputRejected { reason } if !reason.is_empty()),
        "{err}"
    );
    Ok(())
}

#[test]
fn reject_json_for_a_guest_built_without_the_feature() -> Result<()> {
    let module = WasmBoxModule::from_file(guest("counter"))?;
    let err = WasmBoxHost::<Value, Value>::builder(&module)
        .codec(Codec::Json)
        .build(|_| {})
        .unwrap_err();
    ensure!(
        matches!(err, Error::CodecUnsupported { codec: Codec::Json }),
        "{err}"
    );
    ensure!(err.to_string().contains("`json` feature"), "{err}");
    // Restoring into a JSON box is refused the same way, before anything runs.
    let (cb, _o) = collector::<String>();
    let mut counter = WasmBoxHost::<String, String>::new(&module, cb)?;
    let snapshot = counter.snapshot_state()?;
    let err = WasmBoxHost::<Value, Value>::builder(&module)
        .codec(Codec::Json)
        .restore(&snapshot, |_| {})
        .unwrap_err();
    ensure!(matches!(err, Error::CodecUnsupported { .. }), "{err}");
    Ok(())
}

#[test]
fn reject_json_outputs_larger_than_the_limit() -> Result<()> {
    let module = WasmBoxModule::from_file(guest("random"))?;
    let limits = wasmbox_host::Limits {
        max_message_bytes: 16,
        ..Default::default()
    };
    let (cb, out) = collector::<Value>();
    let mut host = WasmBoxHost::<Value, Value>::builder(&module)
        .codec(Codec::Json)
        .limits(limits)
        .rollback_on_trap(true)
        .build(cb)?;
    host.message(&json!(2))?;
    assert_eq!(take(&out)[0].as_array().unwrap().len(), 2);
    let err = host.message(&json!(64)).unwrap_err();
    ensure!(matches!(err, Error::MessageTooLarge { .. }), "{err}");
    let err = host
        .message(&json!("a string far longer than sixteen bytes"))
        .unwrap_err();
    ensure!(matches!(err, Error::MessageTooLarge { .. }), "{err}");
    Ok(())
}
