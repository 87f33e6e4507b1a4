use wasmbox::prelude::*;

#[wasmbox]
async fn run(ctx: String) {
    let _ = ctx;
}

fn main() {}
