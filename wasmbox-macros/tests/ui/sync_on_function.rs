use wasmbox::prelude::*;

#[wasmbox_sync]
fn counter() {}

fn main() {}
