use wasmbox::prelude::*;

#[wasmbox]
async fn run() {}

fn main() {}
