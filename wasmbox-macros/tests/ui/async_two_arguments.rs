use wasmbox::prelude::*;

#[wasmbox]
async fn run(ctx: WasmBoxContext<String, String>, extra: u32) {
    let _ = (ctx, extra);
}

fn main() {}
