//! Sends every message back unchanged.
use wasmbox::prelude::*;

#[wasmbox]
async fn run(ctx: WasmBoxContext<String, String>) {
    loop {
        let message = ctx.next().await;
        ctx.send(message);
    }
}
