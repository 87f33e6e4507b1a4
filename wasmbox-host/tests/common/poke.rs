//! The `poke` guest, shared by the tests and the benchmarks: a WAT module whose messages (a
//! bincode `Vec<u8>`) are lists of 10-byte memory operations, so that a message writes exactly
//! the blocks a test or a figure needs.
#![allow(dead_code)]

/// A message is a list of 10-byte operations — kind, value, address (u32), length (u32): kind
/// 0 fills `[address, address + length)` with `value`, kind 1 grows the memory by `value`
/// pages, kind 2 traps, kind 3 adds the bytes of `[address, address + length)` to a global
/// (`$sum`: what the guest reads becomes part of every snapshot, whatever the snapshot reads
/// of memory). Every message also bumps a global. The input buffer is at 1024;
/// operations should touch memory from 64 KiB on.
pub const POKE: &str = r#"(module
  (memory (export "memory") 2)
  (global $count (mut i32) (i32.const 0))
  (global $sum (mut i32) (i32.const 0))
  (func (export "wasmbox_abi_version") (result i32) i32.const 2)
  (func (export "wasmbox_codecs") (result i32) i32.const 1)
  (func (export "wasmbox_init") (param i32) (result i32) i32.const 0)
  (func (export "wasmbox_input_buffer") (param i32) (result i32) i32.const 1024)
  (func (export "wasmbox_message") (param $len i32) (param $codec i32) (result i32)
    (local $p i32) (local $end i32) (local $kind i32) (local $val i32) (local $a i32) (local $e i32)
    (local.set $end (i32.add (i32.const 1024) (local.get $len)))
    (local.set $p (i32.add (i32.const 1024)
      (select (i32.const 1) (i32.const 3)
        (i32.lt_u (i32.load8_u (i32.const 1024)) (i32.const 251)))))
    (global.set $count (i32.add (global.get $count) (i32.const 1)))
    (block $done
      (loop $next
        (br_if $done (i32.gt_u (i32.add (local.get $p) (i32.const 10)) (local.get $end)))
        (local.set $kind (i32.load8_u (local.get $p)))
        (local.set $val (i32.load8_u offset=1 (local.get $p)))
        (if (i32.eq (local.get $kind) (i32.const 0))
          (then (memory.fill (i32.load offset=2 (local.get $p)) (local.get $val)
                             (i32.load offset=6 (local.get $p)))))
        (if (i32.eq (local.get $kind) (i32.const 1))
          (then (drop (memory.grow (local.get $val)))))
        (if (i32.eq (local.get $kind) (i32.const 2))
          (then unreachable))
        (if (i32.eq (local.get $kind) (i32.const 3))
          (then
            (local.set $a (i32.load offset=2 (local.get $p)))
            (local.set $e (i32.add (local.get $a) (i32.load offset=6 (local.get $p))))
            (block $summed
              (loop $byte
                (br_if $summed (i32.ge_u (local.get $a) (local.get $e)))
                (global.set $sum (i32.add (global.get $sum) (i32.load8_u (local.get $a))))
                (local.set $a (i32.add (local.get $a) (i32.const 1)))
                (br $byte)))))
        (local.set $p (i32.add (local.get $p) (i32.const 10)))
        (br $next)))
    (i32.const 0)))"#;

/// One operation of a `POKE` message.
pub fn op(kind: u8, value: u8, at: u32, len: u32) -> [u8; 10] {
    let mut b = [0u8; 10];
    b[0] = kind;
    b[1] = value;
    b[2..6].copy_from_slice(&at.to_le_bytes());
    b[6..10].copy_from_slice(&len.to_le_bytes());
    b
}
