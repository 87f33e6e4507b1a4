//! Replies to each message `n` (a number of bytes, at most 64) with `n` random bytes from
//! `getrandom`, which inside a box come from the box's seeded generator.
use wasmbox::prelude::*;

#[wasmbox]
async fn run(ctx: WasmBoxContext<u32, Vec<u8>>) {
    loop {
        let n = ctx.next().await.min(64) as usize;
        let mut bytes = vec![0u8; n];
        getrandom::fill(&mut bytes).expect("getrandom");
        ctx.send(bytes);
    }
}
