//! Shows that a box's time and randomness are its own. On each message it replies with the
//! wall clock (milliseconds since the epoch), the monotonic clock (nanoseconds since the box
//! started), the order in which a `HashMap` (seeded from the box's generator) yields its keys,
//! and a random `u64`. The message `sleep N` first sleeps N milliseconds, which inside a box
//! advances the box's clock instead of blocking the host.
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use wasmbox::prelude::*;

/// What the box reports after each message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    /// `SystemTime::now()` in milliseconds since the epoch.
    pub wall_millis: u64,
    /// `Instant::now()` since the guest started, in nanoseconds.
    pub monotonic_nanos: u64,
    /// Keys of a fresh `HashMap` in iteration order.
    pub hash_order: Vec<u32>,
    /// A random number from `getrandom`.
    pub random: u64,
}

static START: OnceLock<Instant> = OnceLock::new();

#[wasmbox]
async fn run(ctx: WasmBoxContext<String, Reading>) {
    START.get_or_init(Instant::now);
    loop {
        let message = ctx.next().await;
        if let Some(ms) = message
            .strip_prefix("sleep ")
            .and_then(|n| n.trim().parse().ok())
        {
            std::thread::sleep(Duration::from_millis(ms));
        }
        let map: HashMap<u32, ()> = (0..16).map(|k| (k, ())).collect();
        let mut random = [0u8; 8];
        getrandom::fill(&mut random).expect("getrandom");
        let start = *START.get_or_init(Instant::now);
        ctx.send(Reading {
            wall_millis: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            monotonic_nanos: start.elapsed().as_nanos() as u64,
            hash_order: map.keys().copied().collect(),
            random: u64::from_le_bytes(random),
        });
    }
}
