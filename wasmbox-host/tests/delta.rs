//! Incremental snapshots through the real host: a full snapshot rolled forward by every delta
//! equals, byte for byte, the full snapshot a box that never took a delta gives — at every
//! step, for every example guest, with both change-tracking methods, across restores, forks,
//! templates (copy-on-write pages), the pooling allocator, many boxes and several threads.
//! Also: delta files, wrong parents, damaged deltas, and rollback by deltas.

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

mod common;

use anyhow::Result;
use common::{collector, guest, take};
use proptest::prelude::*;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use wasmbox_host::snapshot::{decode_delta_file, encode_delta_file, encode_file};
use wasmbox_host::{
    ChangeTracking, Error, ModuleOptions, Snapshot, SnapshotError, WasmBoxHost, WasmBoxModule,
};

const METHODS: [ChangeTracking; 2] = [ChangeTracking::Kernel, ChangeTracking::Hash];

fn same_bytes(a: &Snapshot, b: &Snapshot, what: &str) {
    assert!(
        encode_file(a) == encode_file(b),
        "{what}: the snapshots differ\n{a:?}\n{b:?}"
    );
}

/// For each method: box A takes a full snapshot, then only deltas; box B runs straight
/// through. After every message the chain, materialised, must equal B's full snapshot, and
/// A's outputs B's. Every other delta goes through a delta file.
fn chain_differential<In, Out>(name: &str, script: &[In]) -> Result<()>
where
    In: Serialize,
    Out: DeserializeOwned + PartialEq + Debug + Send + 'static,
{
    let module = WasmBoxModule::from_file(guest(name))?;
    for method in METHODS {
        let (cb_a, out_a) = collector::<Out>();
        let (cb_b, out_b) = collector::<Out>();
        let mut a = WasmBoxHost::<In, Out>::builder(&module)
            .change_tracking(method)
            .build(cb_a)?;
        let mut b = WasmBoxHost::<In, Out>::new(&module, cb_b)?;
        assert_eq!(a.change_tracking(), method);
        let mut chain = a.snapshot_state()?;
        for (i, m) in script.iter().enumerate() {
            a.message(m)?;
            b.message(m)?;
            let delta = a.snapshot_delta()?;
            let delta = if i % 2 == 0 {
                delta
            } else {
                decode_delta_file(&encode_delta_file(&delta, None))?
            };
            chain.apply(&delta)?;
            let what = format!("{name}, {method:?}, after message {i}");
            same_bytes(&chain, &b.snapshot_state()?, &what);
            assert_eq!(take(&out_a), take(&out_b), "{what}: outputs");
        }
        // The chain restores into a fresh box, which goes on like B.
        let (cb_c, _) = collector::<Out>();
        let mut c = WasmBoxHost::<In, Out>::builder(&WasmBoxModule::from_file(guest(name))?)
            .restore(&chain, cb_c)?;
        same_bytes(&c.snapshot_state()?, &b.snapshot_state()?, name);
    }
    Ok(())
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn accept_chains_of_every_example_guest() -> Result<()> {
    chain_differential::<String, String>("counter", &strings(&["up", "up", "x", "down", "up"]))?;
    chain_differential::<String, String>("countersync", &strings(&["up", "down", "down"]))?;
    chain_differential::<String, String>("echo", &strings(&["a", "a", "", "longer text", "é"]))?;
    chain_differential::<String, String>("faults", &strings(&["up", "up", "x"]))?;
    chain_differential::<u32, u32>("mailbox", &[1, 2, 3, 0])?;
    chain_differential::<u32, Vec<u8>>("random", &[4, 16, 0, 64])?;
    chain_differential::<String, clock::Reading>("clock", &strings(&["t", "sleep 1500", "t"]))?;
    use memory::Request;
    chain_differential::<Request, memory::Summary>(
        "memory",
        &[
            Request::Grow { mib: 2, seed: 1 },
            Request::Sum,
            Request::Clear,
            Request::Reserve { mib: 8 },
            Request::Grow { mib: 1, seed: 3 },
        ],
    )?;
    use typed::Command;
    chain_differential::<Command, typed::Reply>(
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

#[derive(Clone, Debug)]
enum Op {
    /// Fill `len` bytes at `at` (from 64 KiB on, inside the memory) with `value`.
    Fill {
        at: u32,
        len: u32,
        value: u8,
    },
    Grow(u8),
    Trap,
    /// Add the bytes of `[at, at + len)` to the guest's `$sum` global.
    Sum {
        at: u32,
        len: u32,
    },
}

fn encode(ops: &[Op]) -> Vec<u8> {
    ops.iter()
        .flat_map(|op| match *op {
            Op::Fill { at, len, value } => common::op(0, value, at, len),
            Op::Grow(pages) => common::op(1, pages, 0, 0),
            Op::Trap => common::op(2, 0, 0, 0),
            Op::Sum { at, len } => common::op(3, 0, at, len),
        })
        .collect()
}

/// What happens to box A between messages.
#[derive(Clone, Debug)]
enum Between {
    Nothing,
    /// Restore the materialised chain into A.
    Restore,
    /// Replace A by a fork of itself.
    Fork,
    /// Restore a template of the materialised chain into A.
    Template,
    /// A full snapshot in the middle of the chain (the chain continues from it).
    Full,
}

fn poke_module(pooling: bool) -> WasmBoxModule {
    let wasm = wat::parse_str(common::POKE).unwrap();
    let options = if pooling {
        ModuleOptions::default().pooling(8)
    } else {
        ModuleOptions::default()
    };
    WasmBoxModule::from_bytes_with(&wasm, &options).unwrap()
}

/// A message: up to 6 fills (zeros and repeated values included), maybe a growth.
fn message(max_pages: u32) -> impl Strategy<Value = Vec<Op>> {
    let fill = (
        1u32..max_pages * 16,
        1u32..3 * 4096,
        prop_oneof![Just(0u8), Just(7), any::<u8>()],
    )
        .prop_map(|(block, len, value)| Op::Fill {
            at: block * 4096 + (len % 977),
            len,
            value,
        });
    let op = prop_oneof![8 => fill, 1 => (0u8..3).prop_map(Op::Grow)];
    proptest::collection::vec(op, 0..6)
}

fn between() -> impl Strategy<Value = Between> {
    prop_oneof![
        6 => Just(Between::Nothing),
        1 => Just(Between::Restore),
        1 => Just(Between::Fork),
        1 => Just(Between::Template),
        1 => Just(Between::Full),
    ]
}

/// Fills are kept inside the memory the box has when they run: A and B see the same ops.
fn clamp(ops: &mut [Op], pages: &mut u32) {
    for op in ops {
        match op {
            Op::Fill { at, len, .. } => {
                let size = *pages * 65536;
                *at = 65536 + (*at % (size - 65536));
                *len = (*len).min(size - *at);
            }
            Op::Grow(n) => *pages += u32::from(*n),
            Op::Trap | Op::Sum { .. } => {}
        }
    }
}

fn run_poke_chain(
    module: &WasmBoxModule,
    method: ChangeTracking,
    script: &[(Vec<Op>, Between)],
) -> Result<()> {
    let (cb, _) = collector::<u8>();
    let mut a = WasmBoxHost::<Vec<u8>, u8>::builder(module)
        .change_tracking(method)
        .build(cb)?;
    let (cb, _) = collector::<u8>();
    let mut b = WasmBoxHost::<Vec<u8>, u8>::new(module, cb)?;
    let mut chain = a.snapshot_state()?;
    let mut pages = 2;
    for (i, (ops, between)) in script.iter().enumerate() {
        let mut ops = ops.clone();
        clamp(&mut ops, &mut pages);
        let input = encode(&ops);
        a.message(&input)?;
        b.message(&input)?;
        match between {
            Between::Nothing => {}
            Between::Restore => {
                let full = chain_after(&mut a, &mut chain)?;
                a.restore_snapshot(&full)?;
            }
            Between::Fork => {
                let full = chain_after(&mut a, &mut chain)?;
                a = a.fork(|_| {})?;
                // A fork continues the state it copied: its deltas continue that snapshot.
                assert_eq!(a.state_id(), full.id);
            }
            Between::Template => {
                let full = chain_after(&mut a, &mut chain)?;
                a.restore_template(&module.prepare_template(&full)?)?;
            }
            Between::Full => chain = a.snapshot_state()?,
        }
        let delta = a.snapshot_delta()?;
        chain.apply(&delta)?;
        same_bytes(
            &chain,
            &b.snapshot_state()?,
            &format!("{method:?}, step {i}"),
        );
    }
    Ok(())
}

/// Brings the chain up to date with A and returns it.
fn chain_after(a: &mut WasmBoxHost<Vec<u8>, u8>, chain: &mut Snapshot) -> Result<Snapshot> {
    chain.apply(&a.snapshot_delta()?)?;
    Ok(chain.clone())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn accept_chains_of_random_writes_with_both_methods(
        script in proptest::collection::vec((message(8), between()), 1..10),
        pooling in any::<bool>(),
    ) {
        let module = poke_module(pooling);
        for method in METHODS {
            run_poke_chain(&module, method, &script).unwrap();
        }
    }
}

#[test]
fn accept_many_boxes_on_several_threads() -> Result<()> {
    let module = poke_module(false);
    let threads: Vec<_> = (0..4u8)
        .map(|t| {
            let module = module.clone();
            std::thread::spawn(move || -> Result<()> {
                // Each thread keeps 8 boxes and writes to them in turn.
                let script: Vec<(Vec<Op>, Between)> = (0..6u32)
                    .map(|i| {
                        let ops = vec![
                            Op::Fill {
                                at: 65536 + (i * 7919 + u32::from(t) * 131) % 60000,
                                len: 5000,
                                value: t + i as u8,
                            },
                            Op::Grow(u8::from(i == 3)),
                        ];
                        (ops, Between::Nothing)
                    })
                    .collect();
                for k in 0..8 {
                    let method = METHODS[k % 2];
                    run_poke_chain(&module, method, &script)?;
                }
                Ok(())
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap()?;
    }
    Ok(())
}

#[test]
fn accept_kernel_tracking_is_the_default_here() -> Result<()> {
    let module = poke_module(false);
    let (cb, _) = collector::<u8>();
    let mut a = WasmBoxHost::<Vec<u8>, u8>::new(&module, cb)?;
    a.message(&encode(&[Op::Fill {
        at: 65536,
        len: 10,
        value: 1,
    }]))?;
    let expected = if cfg!(target_os = "linux") {
        ChangeTracking::Kernel
    } else {
        ChangeTracking::Hash
    };
    assert_eq!(a.change_tracking(), expected);
    Ok(())
}

/// A box with the kernel's tracking reads only the memory that may be in use when it takes a
/// full snapshot (pages a grown memory never touched are skipped); one with hashes reads all
/// of it. Both must store exactly the same state after every step — messages that grow the
/// memory with and without writing it, restores, templates (whose image is mapped, not
/// copied), forks, snapshots taken before any message after a restore — and the kernel's
/// snapshot of the sparse memory must stay small.
#[test]
fn accept_kernel_snapshots_equal_full_reads_of_sparse_memory() -> Result<()> {
    use memory::{Request, Summary};
    let module = WasmBoxModule::from_file(guest("memory"))?;
    let new = |method| {
        WasmBoxHost::<Request, Summary>::builder(&module)
            .change_tracking(method)
            .build(|_| {})
    };
    let (mut kernel, mut hash) = (new(ChangeTracking::Kernel)?, new(ChangeTracking::Hash)?);
    let script = [
        Request::Reserve { mib: 60 },
        Request::Grow { mib: 1, seed: 3 },
        Request::Reserve { mib: 3 },
        Request::Sum,
        Request::Grow { mib: 2, seed: 4 },
        Request::Clear,
        Request::Reserve { mib: 1 },
        Request::Grow { mib: 1, seed: 5 },
    ];
    for (i, request) in script.iter().enumerate() {
        kernel.message(request)?;
        hash.message(request)?;
        let (k, h) = (kernel.snapshot_state()?, hash.snapshot_state()?);
        same_bytes(&k, &h, &format!("step {i}"));
        assert!(
            k.memory.stored_bytes() <= 8 << 20,
            "step {i}: {} bytes stored",
            k.memory.stored_bytes()
        );
        match i % 3 {
            0 => {
                kernel.restore_snapshot(&h)?;
                hash.restore_snapshot(&h)?;
            }
            1 => {
                let template = module.prepare_template(&h)?;
                kernel.restore_template(&template)?;
                hash.restore_template(&template)?;
            }
            _ => {
                kernel = kernel.fork(|_| {})?;
                hash = hash.fork(|_| {})?;
            }
        }
        same_bytes(
            &kernel.snapshot_state()?,
            &hash.snapshot_state()?,
            &format!("step {i}, before any message of the restored box"),
        );
    }
    assert_eq!(kernel.change_tracking(), ChangeTracking::Kernel);
    Ok(())
}

/// A restore fills a large memory on huge pages (fresh instance, or a small box grown in
/// place); the kernel's tracking must still find a message's writes per 4 KiB block after it,
/// not per 2 MiB page, and the delta must be right.
#[test]
fn accept_deltas_stay_per_block_after_a_restore_on_huge_pages() -> Result<()> {
    use memory::{Request, Summary};
    let module = WasmBoxModule::from_file(guest("memory"))?;
    let builder = || WasmBoxHost::<Request, Summary>::builder(&module);
    let mut source = builder().build(|_| {})?;
    source.message(&Request::Grow { mib: 64, seed: 9 })?;
    let full = source.snapshot_state()?;
    let mut fresh = builder().restore(&full, |_| {})?;
    let mut in_place = builder().build(|_| {})?;
    in_place.restore_snapshot(&full)?;
    for (what, restored) in [("fresh", &mut fresh), ("in place", &mut in_place)] {
        restored.message(&Request::Sum)?;
        let delta = restored.snapshot_delta()?;
        let written: usize = delta.chunks.iter().map(|c| c.bytes.len()).sum();
        assert!(
            written <= 64 << 10,
            "{what}: a message that wrote a few blocks gave a delta of {written} bytes"
        );
        let mut chain = full.clone();
        chain.apply(&delta)?;
        same_bytes(&chain, &restored.snapshot_state()?, what);
    }
    Ok(())
}

/// Restoring in place must clear what the box wrote after the snapshot where the snapshot
/// holds zeros — whether the tracker has not reported those writes yet, they are in the box's
/// record of changes (rollback on), or already part of its baseline (a delta was taken). The
/// guest then reads the whole memory (into a global): its sum must be a fresh restore's.
#[test]
fn accept_restore_in_place_clears_what_the_snapshot_holds_as_zeros() -> Result<()> {
    let module = poke_module(false);
    let fill = |at, len, value| Op::Fill { at, len, value };
    for (case, rollback, delta_first) in [
        ("not reported yet", false, false),
        ("recorded for rollback", true, false),
        ("in the baseline", false, true),
    ] {
        let mut a = WasmBoxHost::<Vec<u8>, u8>::builder(&module)
            .rollback_on_trap(rollback)
            .build(|_| {})?;
        a.message(&encode(&[Op::Grow(1), fill(65536 + 4096, 100, 1)]))?;
        let snapshot = a.snapshot_state()?;
        a.message(&encode(&[
            fill(65536 + 8 * 4096, 5000, 9),
            fill(2 * 65536 + 100, 10, 3),
        ]))?;
        if delta_first {
            a.snapshot_delta()?;
        }
        a.restore_snapshot(&snapshot)?;
        let mut fresh = WasmBoxHost::<Vec<u8>, u8>::builder(&module).restore(&snapshot, |_| {})?;
        let read_all = encode(&[Op::Sum {
            at: 0,
            len: 3 * 65536,
        }]);
        a.message(&read_all)?;
        fresh.message(&read_all)?;
        same_bytes(&a.snapshot_state()?, &fresh.snapshot_state()?, case);
    }
    Ok(())
}

#[test]
fn accept_deltas_hold_only_the_written_blocks() -> Result<()> {
    let module = poke_module(false);
    for method in METHODS {
        let (cb, _) = collector::<u8>();
        let mut a = WasmBoxHost::<Vec<u8>, u8>::builder(&module)
            .change_tracking(method)
            .build(cb)?;
        a.message(&encode(&[Op::Grow(62)]))?; // 4 MiB
        a.snapshot_state()?;
        let ops: Vec<Op> = (0..16)
            .map(|i| Op::Fill {
                at: 65536 + i * 200_000 / 4096 * 4096,
                len: 4096,
                value: 3,
            })
            .collect();
        a.message(&encode(&ops))?;
        let delta = a.snapshot_delta()?;
        // 16 blocks, plus the input buffer's block (kernel: and the stack's, if any).
        assert!(
            (17..=18).contains(&delta.changed_blocks()),
            "{method:?}: {} blocks",
            delta.changed_blocks()
        );
        let empty = a.snapshot_delta()?;
        assert_eq!(empty.changed_blocks(), 0, "{method:?}");
        assert_eq!(empty.parent, delta.id);
        assert_eq!(empty.id, delta.id, "no message: the same state");
    }
    Ok(())
}

#[test]
fn reject_a_delta_of_another_parent_or_damaged() -> Result<()> {
    let module = poke_module(false);
    let (cb, _) = collector::<u8>();
    let mut a = WasmBoxHost::<Vec<u8>, u8>::new(&module, cb)?;
    let base = a.snapshot_state()?;
    a.message(&encode(&[Op::Fill {
        at: 70000,
        len: 100,
        value: 1,
    }]))?;
    let d1 = a.snapshot_delta()?;
    a.message(&encode(&[Op::Fill {
        at: 90000,
        len: 100,
        value: 2,
    }]))?;
    let d2 = a.snapshot_delta()?;
    // d2 skips d1.
    let mut target = base.clone();
    let err = target.apply(&d2).unwrap_err();
    assert!(matches!(err, SnapshotError::WrongParent { .. }), "{err}");
    assert!(target == base, "a refused delta leaves the snapshot");
    // A damaged delta file is refused before anything is applied.
    let mut bytes = encode_delta_file(&d1, None);
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    assert!(matches!(
        decode_delta_file(&bytes),
        Err(SnapshotError::Checksum { .. })
    ));
    // A snapshot file is not a delta file, and the reverse.
    assert!(matches!(
        decode_delta_file(&encode_file(&base)),
        Err(SnapshotError::WrongKind { .. })
    ));
    assert!(matches!(
        wasmbox_host::snapshot::decode_file(&encode_delta_file(&d1, None)),
        Err(SnapshotError::WrongKind { .. })
    ));
    // A box restored from a snapshot continues it.
    target.apply(&d1)?;
    target.apply(&d2)?;
    let (cb, _) = collector::<u8>();
    let mut c = WasmBoxHost::<Vec<u8>, u8>::builder(&module).restore(&base, cb)?;
    c.message(&encode(&[Op::Fill {
        at: 70000,
        len: 100,
        value: 1,
    }]))?;
    let mut from_c = base.clone();
    from_c.apply(&c.snapshot_delta()?)?;
    assert!(from_c == c.snapshot_state()?);
    // The same message on the same state: the same id, so d2 continues c's state too.
    from_c.apply(&d2)?;
    assert!(from_c == target);
    Ok(())
}

#[test]
fn accept_rollback_undoes_in_place_and_deltas_agree() -> Result<()> {
    let module = poke_module(false);
    for method in METHODS {
        let (cb, _) = collector::<u8>();
        let mut a = WasmBoxHost::<Vec<u8>, u8>::builder(&module)
            .change_tracking(method)
            .rollback_on_trap(true)
            .build(cb)?;
        let (cb, _) = collector::<u8>();
        let mut b = WasmBoxHost::<Vec<u8>, u8>::new(&module, cb)?;
        let mut chain = a.snapshot_state()?;
        let good = encode(&[Op::Fill {
            at: 65536 + 5000,
            len: 9000,
            value: 4,
        }]);
        a.message(&good)?;
        b.message(&good)?;
        for (i, bad) in [
            // Writes 64 KiB, then traps.
            vec![
                Op::Fill {
                    at: 65536,
                    len: 65536,
                    value: 9,
                },
                Op::Trap,
            ],
            // Grows the memory, writes the new pages, then traps.
            vec![
                Op::Grow(2),
                Op::Fill {
                    at: 2 * 65536,
                    len: 100_000,
                    value: 5,
                },
                Op::Trap,
            ],
            // Zeroes what the first message wrote, then traps.
            vec![
                Op::Fill {
                    at: 65536 + 5000,
                    len: 9000,
                    value: 0,
                },
                Op::Trap,
            ],
        ]
        .into_iter()
        .enumerate()
        {
            chain.apply(&a.snapshot_delta()?)?;
            let before = chain.clone();
            let err = a.message(&encode(&bad)).unwrap_err();
            assert!(matches!(err, Error::GuestTrapped { .. }), "{err}");
            assert!(a.poisoned().is_none());
            let what = format!("{method:?}, failed message {i}");
            same_bytes(&a.snapshot_state()?, &before, &what);
            a.message(&good)?;
            b.message(&good)?;
            chain.apply(&a.snapshot_delta()?)?;
            same_bytes(&chain, &b.snapshot_state()?, &what);
        }
    }
    Ok(())
}

#[test]
fn accept_sealed_delta_files_and_reject_unsealed_ones_with_a_key() -> Result<()> {
    use wasmbox_host::SnapshotKey;
    use wasmbox_host::snapshot::decode_delta_file_keyed;
    let key = SnapshotKey::derive("wasmbox delta test", b"secret");
    let module = poke_module(false);
    let (cb, _) = collector::<u8>();
    let mut a = WasmBoxHost::<Vec<u8>, u8>::builder(&module)
        .snapshot_key(key.clone())
        .build(cb)?;
    let mut base = a.snapshot_state()?;
    a.message(&encode(&[Op::Fill {
        at: 65536,
        len: 3,
        value: 8,
    }]))?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("d1.delta");
    a.snapshot_delta_to_file(&path)?;
    let bytes = std::fs::read(&path)?;
    let delta = decode_delta_file_keyed(&bytes, Some(&key))?;
    let other = SnapshotKey::derive("wasmbox delta test", b"other");
    assert!(matches!(
        decode_delta_file_keyed(&bytes, Some(&other)),
        Err(SnapshotError::MacMismatch)
    ));
    assert!(matches!(
        decode_delta_file_keyed(&encode_delta_file(&delta, None), Some(&key)),
        Err(SnapshotError::MacMissing)
    ));
    base.apply(&delta)?;
    assert!(base == a.snapshot_state()?);
    Ok(())
}

#[test]
fn accept_a_delta_file_that_cannot_be_written_leaves_the_chain_whole() -> Result<()> {
    let module = poke_module(false);
    let (cb, _) = collector::<u8>();
    let mut a = WasmBoxHost::<Vec<u8>, u8>::new(&module, cb)?;
    let mut chain = a.snapshot_state()?;
    a.message(&encode(&[Op::Fill {
        at: 70000,
        len: 100,
        value: 1,
    }]))?;
    let err = a
        .snapshot_delta_to_file("/nonexistent-dir/d.delta")
        .unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    a.message(&encode(&[Op::Fill {
        at: 110_000,
        len: 100,
        value: 2,
    }]))?;
    // The next delta holds both messages' blocks and continues `chain`.
    chain.apply(&a.snapshot_delta()?)?;
    same_bytes(&chain, &a.snapshot_state()?, "after a failed delta file");
    Ok(())
}
