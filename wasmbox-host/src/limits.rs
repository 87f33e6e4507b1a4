//! Limits on what a box may use. They belong to the host: a box runs under the limits its
//! builder chose, always. Snapshots record the limits a box ran under, but no restore adopts
//! them (a snapshot is untrusted input, and a crafted one could otherwise lift every limit).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

/// How often the engine's epoch advances; deadlines are enforced with this granularity.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Limits on one box. All are optional; [`Limits::default`] documents the defaults.
///
/// ```
/// use std::time::Duration;
/// let limits = wasmbox_host::Limits {
///     fuel_per_message: Some(50_000_000),
///     deadline_per_message: Some(Duration::from_millis(200)),
///     ..Default::default()
/// };
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// WebAssembly instructions (wasmtime "fuel") one guest call may execute: one message, or
    /// the guest's initialisation. Deterministic: the same message runs out at the same point
    /// every time. Default: `None` (no limit).
    pub fuel_per_message: Option<u64>,
    /// Wall-clock time one guest call may take, enforced within a few milliseconds. Default:
    /// 10 seconds, so that a runaway loop cannot hang the host.
    pub deadline_per_message: Option<Duration>,
    /// Largest linear memory the guest may grow to, in bytes. A guest trying to grow further
    /// traps. Default: 1 GiB (the wasm32 maximum is 4 GiB).
    pub max_memory_bytes: u64,
    /// Largest encoded message in either direction, in bytes. Default: 64 MiB.
    pub max_message_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            fuel_per_message: None,
            deadline_per_message: Some(Duration::from_secs(10)),
            max_memory_bytes: 1 << 30,
            max_message_bytes: 64 << 20,
        }
    }
}

impl Limits {
    /// No limits at all (apart from what wasm32 itself allows).
    pub fn unlimited() -> Limits {
        Limits {
            fuel_per_message: None,
            deadline_per_message: None,
            max_memory_bytes: 1 << 32,
            max_message_bytes: u64::MAX,
        }
    }

    /// The memory limit in 64 KiB pages.
    pub fn max_memory_pages(&self) -> u64 {
        self.max_memory_bytes / crate::PAGE_SIZE
    }

    /// Epoch ticks for the deadline. wasmtime adds this to the current epoch without
    /// saturating, so "no deadline" is a number of ticks that can never be reached (at one
    /// tick per [`EPOCH_TICK`], `u64::MAX / 2` ticks is billions of years) but cannot overflow.
    pub(crate) fn deadline_ticks(&self) -> u64 {
        const NEVER: u64 = u64::MAX / 2;
        match self.deadline_per_message {
            // In u64 arithmetic (this runs before every guest call): whole seconds, then the
            // rest, as a tick divides a second.
            Some(d) => {
                const TICK_NANOS: u64 = EPOCH_TICK.as_nanos() as u64;
                const PER_SECOND: u64 = 1_000_000_000 / TICK_NANOS;
                d.as_secs()
                    .saturating_mul(PER_SECOND)
                    .saturating_add(u64::from(d.subsec_nanos()) / TICK_NANOS)
                    .saturating_add(1)
                    .min(NEVER)
            }
            None => NEVER,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_ticks_never_overflow_the_epoch() {
        let huge = Limits {
            deadline_per_message: Some(Duration::MAX),
            ..Limits::default()
        };
        for limits in [Limits::unlimited(), huge] {
            assert!(limits.deadline_ticks().checked_add(u64::MAX / 4).is_some());
        }
        let ms = Limits {
            deadline_per_message: Some(Duration::from_millis(50)),
            ..Limits::default()
        };
        assert_eq!(ms.deadline_ticks(), 11);
        // The same as the exact division, for durations around tick and second boundaries.
        for nanos in [
            0u64,
            1,
            4_999_999,
            5_000_000,
            999_999_999,
            1_000_000_000,
            7_123_456_789,
        ] {
            let d = Duration::from_nanos(nanos);
            let limits = Limits {
                deadline_per_message: Some(d),
                ..Limits::default()
            };
            let exact = (d.as_nanos() / EPOCH_TICK.as_nanos()) as u64 + 1;
            assert_eq!(limits.deadline_ticks(), exact, "{d:?}");
        }
    }
}

/// Which limit a guest ran into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LimitKind {
    /// [`Limits::fuel_per_message`].
    Fuel,
    /// [`Limits::deadline_per_message`].
    Deadline,
    /// [`Limits::max_memory_bytes`].
    Memory,
}

impl fmt::Display for LimitKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LimitKind::Fuel => "fuel (instructions per message)",
            LimitKind::Deadline => "time per message",
            LimitKind::Memory => "memory size",
        })
    }
}

/// Enforces [`Limits::max_memory_bytes`] and records that the guest ran into it.
#[derive(Debug)]
pub(crate) struct Limiter {
    pub max_memory_bytes: u64,
    pub hit: bool,
}

impl wasmtime::ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired as u64 > self.max_memory_bytes {
            self.hit = true;
            return Err(wasmtime::Error::msg(format!(
                "memory limit: the guest tried to grow its memory to {desired} bytes, more than the limit of {}",
                self.max_memory_bytes
            )));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1 << 20)
    }
}
