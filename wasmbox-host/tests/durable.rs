//! Durable boxes through the real host, each test run against both stores — a real directory
//! (`dir::`) and a real S3 server (`s3::`, SeaweedFS started by `scripts/test`): recovery after
//! a crash (the box dropped without a checkpoint, objects cut or damaged) reaches, byte for
//! byte, the state of a box that never crashed; time travel; verification; locks; retention.
//! Killing real processes is in `wasmbox-cli/tests/durable_kill.rs` and `s3_owners.rs`.

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

mod common;
#[path = "common/stores.rs"]
mod stores;

use anyhow::Result;
use common::guest;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use stores::{Kind, TestStore};
use wasmbox_host::durable::{BoxStore, Durability, DurableBox};
use wasmbox_host::snapshot::encode_file;
use wasmbox_host::{DurableError, Error, Limits, Snapshot, WasmBoxHost, WasmBoxModule};

type Outputs<Out> = Arc<Mutex<Vec<(u64, Out)>>>;

fn open<In, Out>(
    module: &WasmBoxModule,
    store: &BoxStore,
    every: u64,
) -> Result<(DurableBox<In, Out>, Outputs<Out>)>
where
    Out: DeserializeOwned + Send + 'static,
{
    let out: Outputs<Out> = Arc::default();
    let o = Arc::clone(&out);
    let b = DurableBox::<In, Out>::builder(module, store, "b")
        .checkpoint_every(every)
        .open(move |seq, x| o.lock().unwrap().push((seq, x)))?;
    Ok((b, out))
}

fn same(a: &Snapshot, b: &Snapshot, what: &str) {
    assert!(
        encode_file(a) == encode_file(b),
        "{what}: the states differ"
    );
}

/// The state of a box that ran `script` straight through (with rollback on, as a durable box).
fn straight<In: Serialize, Out: DeserializeOwned + Send + 'static>(
    module: &WasmBoxModule,
    script: &[In],
) -> Result<(Snapshot, Vec<Out>)> {
    let (cb, out) = common::collector::<Out>();
    let mut b = WasmBoxHost::<In, Out>::builder(module)
        .rollback_on_trap(true)
        .build(cb)?;
    common::take(&out);
    for m in script {
        let _ = b.message(m);
    }
    Ok((b.snapshot_state()?, common::take(&out)))
}

/// For every k: k messages, a crash (the box dropped as it is), a reopen, the rest. The state
/// and the outputs must be those of a box that never crashed.
fn crash_everywhere<In, Out>(kind: Kind, name: &str, script: &[In]) -> Result<()>
where
    In: Serialize,
    Out: DeserializeOwned + PartialEq + Debug + Send + 'static,
{
    let module = WasmBoxModule::from_file(guest(name))?;
    let (expected, expected_out) = straight::<In, Out>(&module, script)?;
    for every in [0, 2] {
        for k in 0..=script.len() {
            let t = TestStore::new(kind)?;
            let store = t.store.clone();
            let (mut a, out) = open::<In, Out>(&module, &store, every)?;
            for m in &script[..k] {
                let _ = a.message(m);
            }
            drop(a); // the crash: nothing is written on drop
            let (mut b, out2) = open::<In, Out>(&module, &store, every)?;
            assert_eq!(b.last_seq(), k as u64, "{name}: every event came back");
            for m in &script[k..] {
                let _ = b.message(m);
            }
            let what = format!("{name}, crash after {k}, checkpoint every {every}");
            same(&b.snapshot_state()?, &expected, &what);
            let mut outputs: Vec<(u64, Out)> = std::mem::take(&mut *out.lock().unwrap());
            outputs.extend(std::mem::take(&mut *out2.lock().unwrap()));
            let seqs: Vec<u64> = outputs.iter().map(|(s, _)| *s).collect();
            assert!(seqs.windows(2).all(|w| w[0] <= w[1]), "{what}: {seqs:?}");
            let outputs: Vec<Out> = outputs.into_iter().map(|(_, o)| o).collect();
            assert_eq!(outputs, expected_out, "{what}: no output lost or repeated");
        }
    }
    Ok(())
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn accept_recovery_equals_no_crash_for_every_example_guest(kind: Kind) -> Result<()> {
    crash_everywhere::<String, String>(
        kind,
        "counter",
        &strings(&["up", "up", "x", "down", "up"]),
    )?;
    crash_everywhere::<String, String>(kind, "countersync", &strings(&["up", "down", "down"]))?;
    crash_everywhere::<String, String>(kind, "echo", &strings(&["a", "", "longer", "é"]))?;
    crash_everywhere::<String, String>(
        kind,
        "faults",
        &strings(&["up", "panic", "up", "divide", "up"]),
    )?;
    crash_everywhere::<u32, u32>(kind, "mailbox", &[1, 2, 3, 0])?;
    crash_everywhere::<u32, Vec<u8>>(kind, "random", &[4, 16, 0, 64])?;
    crash_everywhere::<String, clock::Reading>(kind, "clock", &strings(&["t", "sleep 1500", "t"]))?;
    use memory::Request;
    crash_everywhere::<Request, memory::Summary>(
        kind,
        "memory",
        &[
            Request::Grow { mib: 2, seed: 1 },
            Request::Clear,
            Request::Grow { mib: 1, seed: 3 },
        ],
    )?;
    use typed::Command;
    crash_everywhere::<Command, typed::Reply>(
        kind,
        "typed",
        &[
            Command::Open {
                account: "a".into(),
                cents: 500,
            },
            Command::Transfer {
                from: "a".into(),
                to: "b".into(),
                cents: 120,
            },
            Command::Statement,
        ],
    )
}

fn counter() -> Result<WasmBoxModule> {
    Ok(WasmBoxModule::from_file(guest("counter"))?)
}

fn accept_a_torn_tail_is_cut_and_reported(kind: Kind) -> Result<()> {
    let module = counter()?;
    let t = TestStore::new(kind)?;
    let store = t.store.clone();
    let (mut a, _) = open::<String, String>(&module, &store, 0)?;
    for _ in 0..3 {
        a.message("up")?;
    }
    drop(a);
    let seg = t.current_segment("b");
    let good = t.read("b", &seg).len() as u64;
    // Half of a fourth record, as a crash in the middle of its append would leave.
    let mut bytes = t.read("b", &seg);
    let record_len = (bytes.len() - 60) / 3;
    let half: Vec<u8> = bytes[bytes.len() - record_len..][..record_len / 2].to_vec();
    bytes.extend_from_slice(&half);
    t.write("b", &seg, &bytes);
    let (mut b, _) = open::<String, String>(&module, &store, 0)?;
    let torn = b.recovery().torn_tail.clone().expect("reported");
    assert_eq!((torn.1, torn.2), (good, (record_len / 2) as u64));
    assert_eq!(b.last_seq(), 3);
    assert_eq!(t.read("b", &seg).len() as u64, good, "cut off");
    b.message("up")?;
    drop(b);
    let (mut c, _) = open::<String, String>(&module, &store, 0)?;
    assert!(c.recovery().torn_tail.is_none());
    let (expected, _) = straight::<String, String>(&module, &strings(&["up"; 4]))?;
    same(&c.snapshot_state()?, &expected, "after a torn tail");
    Ok(())
}

fn reject_damage_in_the_middle_naming_file_and_offset_and_touch_nothing(kind: Kind) -> Result<()> {
    let module = counter()?;
    let t = TestStore::new(kind)?;
    let store = t.store.clone();
    let (mut a, _) = open::<String, String>(&module, &store, 0)?;
    for _ in 0..3 {
        a.message("up")?;
    }
    drop(a);
    let seg = t.current_segment("b");
    let mut bytes = t.read("b", &seg);
    bytes[60 + 9] ^= 0x10; // inside the first record's payload
    t.write("b", &seg, &bytes);
    let before = t.objects("b");
    let err = open::<String, String>(&module, &store, 0).unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(
            err.downcast_ref::<Error>(),
            Some(Error::Durable(DurableError::Corrupt { offset: 60, .. }))
        ),
        "{text}"
    );
    assert!(text.contains("journal-00000000000000000000.wbj"), "{text}");
    assert_eq!(t.objects("b"), before, "nothing overwritten");
    Ok(())
}

fn accept_an_older_checkpoint_when_the_latest_is_damaged(kind: Kind) -> Result<()> {
    let module = counter()?;
    let t = TestStore::new(kind)?;
    let store = t.store.clone();
    let (mut a, _) = DurableBox::<String, String>::builder(&module, &store, "b")
        .checkpoint_every(2)
        .keep_checkpoints(3)
        .open(|_, _| {})
        .map(|b| (b, ()))?;
    for _ in 0..5 {
        a.message("up")?;
    }
    drop(a);
    // Damage the newest checkpoint (a delta at 4).
    let newest = "checkpoint-00000000000000000004.delta";
    let mut bytes = t.read("b", newest);
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    t.write("b", newest, &bytes);
    let (mut b, _) = open::<String, String>(&module, &store, 2)?;
    assert_eq!(b.recovery().checkpoint, 2, "{:?}", b.recovery());
    assert!(b.recovery().notes[0].contains("checkpoint-00000000000000000004.delta"));
    let (expected, _) = straight::<String, String>(&module, &strings(&["up"; 5]))?;
    same(&b.snapshot_state()?, &expected, "from the older checkpoint");
    b.message("up")?;
    drop(b);
    let (mut c, _) = open::<String, String>(&module, &store, 2)?;
    let (expected, _) = straight::<String, String>(&module, &strings(&["up"; 6]))?;
    same(&c.snapshot_state()?, &expected, "after the new chain");
    Ok(())
}

fn reject_a_second_owner_and_another_module(kind: Kind) -> Result<()> {
    let module = counter()?;
    let t = TestStore::new(kind)?;
    let store = t.store.clone();
    let (a, _) = open::<String, String>(&module, &store, 0)?;
    let err = open::<String, String>(&module, &store, 0).unwrap_err();
    assert!(
        matches!(
            err.downcast_ref::<Error>(),
            Some(Error::Durable(DurableError::Locked { .. }))
        ),
        "{err}"
    );
    drop(a);
    let echo = WasmBoxModule::from_file(guest("echo"))?;
    let err = open::<String, String>(&echo, &store, 0).unwrap_err();
    assert!(
        matches!(
            err.downcast_ref::<Error>(),
            Some(Error::Durable(DurableError::WrongModule { .. }))
        ),
        "{err}"
    );
    assert_eq!(store.list()?, ["b"]);
    assert!(store.delete("../x").is_err());
    store.delete("b")?;
    assert!(store.list()?.is_empty());
    Ok(())
}

fn accept_time_travel_to_every_kept_event(kind: Kind) -> Result<()> {
    let module = counter()?;
    let t = TestStore::new(kind)?;
    let store = t.store.clone();
    let mut b = DurableBox::<String, String>::builder(&module, &store, "b")
        .checkpoint_every(3)
        .keep_checkpoints(10)
        .durability(Durability::Sync)
        .open(|_, _| {})?;
    let script = strings(&["up", "up", "down", "x", "up", "up", "up", "down"]);
    let mut straight_box = WasmBoxHost::<String, String>::builder(&module)
        .rollback_on_trap(true)
        .build(|_| {})?;
    let mut states = vec![straight_box.snapshot_state()?];
    for (i, m) in script.iter().enumerate() {
        let _ = b.message(m);
        let _ = straight_box.message(m);
        states.push(straight_box.snapshot_state()?);
        if i == 4 {
            b.set_time(1_800_000_000_000)?;
            straight_box.set_time(1_800_000_000_000);
            states.push(straight_box.snapshot_state()?);
        }
    }
    for (seq, expected) in states.iter().enumerate() {
        same(&b.snapshot_at(seq as u64)?, expected, &format!("at {seq}"));
    }
    assert!(matches!(
        b.snapshot_at(99),
        Err(Error::Durable(DurableError::NotCovered { .. }))
    ));
    Ok(())
}

fn accept_retention_deletes_old_checkpoints_and_journal(kind: Kind) -> Result<()> {
    let module = counter()?;
    let t = TestStore::new(kind)?;
    let store = t.store.clone();
    let mut b = DurableBox::<String, String>::builder(&module, &store, "b")
        .checkpoint_every(2)
        .keep_checkpoints(2)
        .open(|_, _| {})?;
    // Enough checkpoints for the deltas to outgrow half the memory: then a full one.
    let n = 600;
    for _ in 0..n {
        b.message("up")?;
    }
    let names = t.names("b");
    let checkpoints: Vec<&String> = names
        .iter()
        .filter(|n| n.starts_with("checkpoint-"))
        .collect();
    let segments = names.iter().filter(|n| n.ends_with(".wbj")).count();
    // Kept: the two newest checkpoints and the chain back to the full snapshot they need;
    // gone: everything older, and the journal before the oldest kept.
    assert!(checkpoints[0].ends_with(".snap"), "{names:?}");
    assert!(
        !names.contains(&"checkpoint-00000000000000000000.snap".to_string()),
        "{names:?}"
    );
    assert!(
        checkpoints.len() < n / 2,
        "{} checkpoints kept",
        checkpoints.len()
    );
    assert_eq!(segments, 2, "{names:?}");
    assert!(matches!(
        b.snapshot_at(10),
        Err(Error::Durable(DurableError::NotCovered { .. }))
    ));
    drop(b);
    let (mut c, _) = open::<String, String>(&module, &store, 2)?;
    let (expected, _) = straight::<String, String>(&module, &vec!["up".to_string(); n])?;
    same(&c.snapshot_state()?, &expected, "after retention");
    Ok(())
}

fn reject_a_journal_that_does_not_reproduce_its_checkpoint(kind: Kind) -> Result<()> {
    let module = counter()?;
    let t = TestStore::new(kind)?;
    let store = t.store.clone();
    let (mut a, _) = open::<String, String>(&module, &store, 2)?;
    for _ in 0..3 {
        a.message("up")?;
    }
    drop(a);
    let verified = DurableBox::<String, String>::builder(&module, &store, "b")
        .verify(true)
        .open(|_, _| {})?;
    assert_eq!(verified.recovery().verified, Some(2));
    drop(verified);
    // Rewrite the message of event 1 ("up" → "x", a different message with a valid checksum):
    // replaying from checkpoint 0 no longer reaches checkpoint 2.
    let seg = "journal-00000000000000000000.wbj";
    let mut bytes = t.read("b", seg);
    let at = 60 + bytes[60..].windows(2).position(|w| w == b"up").unwrap();
    bytes[at] = b'd';
    bytes[at + 1] = b'n';
    let payload_len = u32::from_le_bytes(bytes[60..64].try_into()?) as usize;
    let crc = crc32(&bytes[68..68 + payload_len]);
    bytes[64..68].copy_from_slice(&crc.to_le_bytes());
    t.write("b", seg, &bytes);
    let err = DurableBox::<String, String>::builder(&module, &store, "b")
        .verify(true)
        .open(|_, _| {})
        .unwrap_err();
    assert!(
        matches!(err, Error::Durable(DurableError::Diverged { seq: 2 })),
        "{err}"
    );
    Ok(())
}

fn crc32(bytes: &[u8]) -> u32 {
    // CRC-32 (IEEE), bitwise: the tests need no crate for it.
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn accept_failures_by_deadline_are_journaled_and_not_rerun(kind: Kind) -> Result<()> {
    let module = WasmBoxModule::from_file(guest("faults"))?;
    let t = TestStore::new(kind)?;
    let store = t.store.clone();
    let limits = Limits {
        deadline_per_message: Some(std::time::Duration::from_millis(100)),
        ..Limits::default()
    };
    let mut a = DurableBox::<String, String>::builder(&module, &store, "b")
        .checkpoint_every(0)
        .configure(|b| b.limits(limits))
        .open(|_, _| {})?;
    a.message("up")?;
    let err = a.message("loop").unwrap_err();
    assert!(matches!(err, Error::LimitExceeded { .. }), "{err}");
    a.message("up")?;
    drop(a);
    // Without the journaled failure, the replay would run the loop again (for ten times the
    // deadline) and report it in the notes: open in a thread, and give up after a minute.
    let (tx, rx) = std::sync::mpsc::channel();
    let (m, st) = (module.clone(), store.clone());
    std::thread::spawn(move || {
        let opened = DurableBox::<String, String>::builder(&m, &st, "b")
            .configure(|b| b.limits(limits))
            .open(|_, _| {});
        let _ = tx.send(opened);
    });
    let mut b = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("recovery re-ran the message that failed by its deadline")?;
    assert_eq!(b.last_seq(), 3);
    assert!(b.recovery().notes.is_empty(), "{:?}", b.recovery().notes);
    let (expected, _) = straight::<String, String>(&module, &strings(&["up", "up"]))?;
    let got = b.snapshot_state()?;
    assert!(got.memory == expected.memory && got.globals == expected.globals);
    Ok(())
}

fn reject_a_journal_with_a_missing_segment(kind: Kind) -> Result<()> {
    let module = counter()?;
    let t = TestStore::new(kind)?;
    let store = t.store.clone();
    let mut a = DurableBox::<String, String>::builder(&module, &store, "b")
        .checkpoint_every(2)
        .keep_checkpoints(3)
        .open(|_, _| {})?;
    for _ in 0..5 {
        a.message("up")?;
    }
    drop(a);
    // Recovery must go back to checkpoint 2 (4 is damaged), and the journal after 2 is gone:
    // replaying the segment after 4 onto the state at 2 would be silently wrong.
    t.write("b", "checkpoint-00000000000000000004.delta", b"damaged");
    t.remove("b", "journal-00000000000000000002.wbj");
    let err = open::<String, String>(&module, &store, 2).unwrap_err();
    assert!(
        matches!(
            err.downcast_ref::<Error>(),
            Some(Error::Durable(DurableError::Corrupt { .. }))
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains("journal-00000000000000000004.wbj"),
        "{err}"
    );
    Ok(())
}

fn accept_sync_boxes_of_one_store_on_many_threads(kind: Kind) -> Result<()> {
    let module = counter()?;
    let t = TestStore::new(kind)?;
    let store = t.store.clone();
    std::thread::scope(|s| {
        for t in 0..8 {
            let (module, store) = (&module, &store);
            s.spawn(move || {
                let mut b =
                    DurableBox::<String, String>::builder(module, store, &format!("box-{t}"))
                        .durability(Durability::Sync)
                        .checkpoint_every(7)
                        .open(|_, _| {})
                        .unwrap();
                for _ in 0..20 + t {
                    b.message("up").unwrap();
                }
            });
        }
    });
    assert_eq!(store.list()?.len(), 8);
    for t in 0..8 {
        let mut b = DurableBox::<String, String>::builder(&module, &store, &format!("box-{t}"))
            .open(|_, _| {})?;
        let (expected, _) = straight::<String, String>(&module, &vec!["up".to_string(); 20 + t])?;
        same(&b.snapshot_state()?, &expected, &format!("box {t}"));
    }
    Ok(())
}

fn accept_a_failure_whose_record_was_lost_is_skipped_on_replay(kind: Kind) -> Result<()> {
    let module = WasmBoxModule::from_file(guest("faults"))?;
    let t = TestStore::new(kind)?;
    let store = t.store.clone();
    let (mut a, _) = open::<String, String>(&module, &store, 0)?;
    a.message("up")?;
    assert!(a.message("panic").is_err());
    a.message("up")?;
    drop(a);
    // Cut the `Failed` record of message 2 out, as if the crash had come before it.
    let seg = t.current_segment("b");
    let bytes = t.read("b", &seg);
    let mut records = Vec::new();
    let mut at = 60;
    while at < bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into()?) as usize;
        records.push(bytes[at..at + 8 + len].to_vec());
        at += 8 + len;
    }
    assert_eq!(records.len(), 4, "up, panic, its failure, up");
    let mut cut = bytes[..60].to_vec();
    for (i, r) in records.iter().enumerate() {
        if i != 2 {
            cut.extend_from_slice(r);
        }
    }
    t.write("b", &seg, &cut);
    let (mut b, _) = open::<String, String>(&module, &store, 0)?;
    assert!(
        b.recovery().notes[0].contains("message 2 failed again"),
        "{:?}",
        b.recovery()
    );
    let (expected, _) = straight::<String, String>(&module, &strings(&["up", "up"]))?;
    same(
        &b.snapshot_state()?,
        &expected,
        "the failed message skipped",
    );
    Ok(())
}

fn accept_one_thread_submits_to_many_sync_boxes_and_commits_once(kind: Kind) -> Result<()> {
    let module = counter()?;
    let t = TestStore::new(kind)?;
    let store = t.store.clone();
    let out: Outputs<String> = Arc::default();
    let mut boxes: Vec<DurableBox<String, String>> = (0..3)
        .map(|i| {
            let o = Arc::clone(&out);
            DurableBox::<String, String>::builder(&module, &store, &format!("b{i}"))
                .durability(Durability::Sync)
                .open(move |seq, x| o.lock().unwrap().push((seq, x)))
                .unwrap()
        })
        .collect();
    for b in &mut boxes {
        assert_eq!(b.submit("up")?, 1);
        assert_eq!(b.submit("up")?, 2);
    }
    assert!(out.lock().unwrap().is_empty(), "held until durable");
    store.commit()?;
    for b in &mut boxes {
        b.deliver()?;
    }
    let got: Vec<(u64, String)> = std::mem::take(&mut *out.lock().unwrap());
    assert_eq!(got.len(), 6);
    assert_eq!(got[0], (1, "value=1".to_string()));
    assert_eq!(got[1], (2, "value=2".to_string()));
    // Without a commit, `deliver` syncs the box's own journal; `message` delivers held ones first.
    boxes[0].submit("up")?;
    boxes[0].message("up")?;
    let got: Vec<(u64, String)> = std::mem::take(&mut *out.lock().unwrap());
    assert_eq!(
        got,
        [(3, "value=3".to_string()), (4, "value=4".to_string())]
    );
    drop(boxes);
    let mut b = DurableBox::<String, String>::builder(&module, &store, "b0").open(|_, _| {})?;
    let (expected, _) = straight::<String, String>(&module, &strings(&["up"; 4]))?;
    same(&b.snapshot_state()?, &expected, "after submit and commit");
    Ok(())
}

/// The head in the bucket is untrusted input too: a part whose length it misstates (as 2^62
/// bytes) is reported as damage, never allocated; an epoch that cannot grow is refused.
#[test]
fn reject_a_head_that_lies_in_object_storage() -> Result<()> {
    let module = counter()?;
    let t = TestStore::new(Kind::S3)?;
    let (mut a, _) = open::<String, String>(&module, &t.store, 0)?;
    a.message("up")?;
    drop(a);
    let seg = t.current_segment("b");
    let honest = t.read("b", &seg);
    t.edit_head("b", |h| h.objects.get_mut(&seg).unwrap()[0].1 = 1 << 62);
    let err = open::<String, String>(&module, &t.store, 0).unwrap_err();
    assert!(
        matches!(
            err.downcast_ref::<Error>(),
            Some(Error::Durable(DurableError::Corrupt { .. }))
        ) && err
            .to_string()
            .contains("the box's head says 4611686018427387904"),
        "{err}"
    );
    t.write("b", &seg, &honest);
    t.edit_head("b", |h| {
        h.rest.insert("epoch".into(), u64::MAX.into());
    });
    let err = open::<String, String>(&module, &t.store, 0).unwrap_err();
    assert!(err.to_string().contains("epoch cannot grow"), "{err}");
    Ok(())
}

/// In object storage, a `Buffered` box's records are uploaded by its flusher within the batch
/// delay while the box sits idle (nothing flushes, checkpoints or drops it): a crash loses at
/// most that delay.
#[test]
fn accept_buffered_records_reach_object_storage_while_the_box_is_idle() -> Result<()> {
    let module = counter()?;
    let t = TestStore::new(Kind::S3)?;
    let (mut a, _) = open::<String, String>(&module, &t.store, 0)?;
    let seg = t.current_segment("b");
    let before = t.read("b", &seg).len();
    a.message("up")?;
    let start = std::time::Instant::now();
    while t.read("b", &seg).len() == before {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(5),
            "the record was not uploaded while the box sat idle"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(a.last_seq(), 1);
    Ok(())
}

/// A live owner renews its lease in the background: idle for three times its time-to-live,
/// its box is still its own — another host is refused — and takes messages.
#[test]
fn accept_a_live_owner_keeps_its_box_past_the_lease_timeout() -> Result<()> {
    let module = counter()?;
    let t = TestStore::new(Kind::S3)?;
    let a_store = BoxStore::open_url(&format!("{}&holder=A&lease_ttl_ms=300", t.url))?;
    let b_store = BoxStore::open_url(&format!("{}&holder=B&lease_ttl_ms=300", t.url))?;
    let (mut a, _) = open::<String, String>(&module, &a_store, 0)?;
    a.message("up")?;
    std::thread::sleep(std::time::Duration::from_millis(900));
    let err = open::<String, String>(&module, &b_store, 0).unwrap_err();
    assert!(
        matches!(
            err.downcast_ref::<Error>(),
            Some(Error::Durable(DurableError::Locked { .. }))
        ),
        "{err}"
    );
    a.message("up")?;
    Ok(())
}

/// `release()` moves a box to another host at once — no waiting for the lease (a minute
/// here) — and the box goes on there as if it had never moved.
#[test]
fn accept_release_moves_a_box_to_another_host_at_once() -> Result<()> {
    let module = counter()?;
    let t = TestStore::new(Kind::S3)?;
    let a_store = BoxStore::open_url(&format!("{}&holder=A&lease_ttl_ms=60000", t.url))?;
    let b_store = BoxStore::open_url(&format!("{}&holder=B&lease_ttl_ms=60000", t.url))?;
    let (mut a, _) = open::<String, String>(&module, &a_store, 0)?;
    a.message("up")?;
    a.message("up")?;
    a.release()?;
    let (mut b, out) = open::<String, String>(&module, &b_store, 0)?;
    assert_eq!(b.recovery().replayed, 0, "released with a checkpoint");
    b.message("up")?;
    assert_eq!(*out.lock().unwrap(), [(3, "value=3".to_string())]);
    let (expected, _) = straight::<String, String>(&module, &strings(&["up"; 3]))?;
    same(&b.snapshot_state()?, &expected, "after moving");
    // And back: A may not write to it meanwhile, and gets it again once B releases it.
    assert!(open::<String, String>(&module, &a_store, 0).is_err());
    b.release()?;
    let (mut a, _) = open::<String, String>(&module, &a_store, 0)?;
    let (expected, _) = straight::<String, String>(&module, &strings(&["up"; 3]))?;
    same(&a.snapshot_state()?, &expected, "moved back");
    Ok(())
}

/// Each test, once per store.
macro_rules! both_stores {
    ($($test:ident),* $(,)?) => {
        mod dir {
            $(#[test]
            fn $test() -> anyhow::Result<()> {
                super::$test(super::Kind::Dir)
            })*
        }
        mod s3 {
            $(#[test]
            fn $test() -> anyhow::Result<()> {
                super::$test(super::Kind::S3)
            })*
        }
    };
}

both_stores!(
    accept_recovery_equals_no_crash_for_every_example_guest,
    accept_a_torn_tail_is_cut_and_reported,
    reject_damage_in_the_middle_naming_file_and_offset_and_touch_nothing,
    accept_an_older_checkpoint_when_the_latest_is_damaged,
    reject_a_second_owner_and_another_module,
    accept_time_travel_to_every_kept_event,
    accept_retention_deletes_old_checkpoints_and_journal,
    reject_a_journal_that_does_not_reproduce_its_checkpoint,
    accept_failures_by_deadline_are_journaled_and_not_rerun,
    reject_a_journal_with_a_missing_segment,
    accept_sync_boxes_of_one_store_on_many_threads,
    accept_a_failure_whose_record_was_lost_is_skipped_on_replay,
    accept_one_thread_submits_to_many_sync_boxes_and_commits_once
);
