//! Change tracking: which 4 KiB blocks of a box's memory may have been written since a point
//! in time, at a cost that follows the writes rather than the memory.
//!
//! Two methods give the same answers (the kernel's may include a block written back with the
//! same bytes; neither ever misses a changed block):
//! - [`ChangeTracking::Kernel`]: userfaultfd write-protection and `PAGEMAP_SCAN` (`sys.rs`),
//!   Linux ≥ 6.7: a scan costs ~0.1 ms per 256 MiB plus the pages written.
//! - [`ChangeTracking::Hash`]: an xxh3 hash per block, compared with the one recorded at the
//!   previous scan; works everywhere, costs a pass over memory at near memory bandwidth.
//!
//! A [`Tracker`] starts unarmed; [`Tracker::collect`] arms it on first use. Nothing writes a
//! box's memory between its instantiation (or restore) and its first guest call, and every
//! guest call arms the tracker first, so arming late loses nothing.

use crate::error::Error;
use xxhash_rust::xxh3::xxh3_64;

/// The granularity of tracking, of deltas and of the zero blocks snapshots leave out.
pub(crate) const BLOCK: usize = 4096;

/// How a box finds the blocks of memory a message wrote (see
/// [`WasmBoxBuilder::change_tracking`](crate::WasmBoxBuilder::change_tracking) and
/// [`WasmBoxHost::change_tracking`](crate::WasmBoxHost::change_tracking)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ChangeTracking {
    /// The kernel where it can ([`ChangeTracking::Kernel`]), hashes where it cannot.
    #[default]
    Auto,
    /// The kernel records writes: userfaultfd write-protection plus the `PAGEMAP_SCAN` ioctl
    /// (Linux ≥ 6.7). Requested explicitly, a box fails with [`Error::ChangeTracking`] where
    /// the kernel offers nothing, instead of falling back.
    Kernel,
    /// An xxh3 hash of every 4 KiB block, compared with the one recorded at the last scan:
    /// portable, and O(memory) per scan.
    Hash,
}

/// A set of block indices (a bitmap).
#[derive(Clone, Debug, Default)]
pub(crate) struct Blocks {
    words: Vec<u64>,
}

impl Blocks {
    /// The blocks that overlap any of the byte ranges.
    pub fn covering(ranges: impl IntoIterator<Item = std::ops::Range<u64>>) -> Blocks {
        let mut blocks = Blocks::default();
        for r in ranges {
            if r.start < r.end {
                let (start, end) = (r.start / BLOCK as u64, r.end.div_ceil(BLOCK as u64));
                blocks.insert_range(start as usize..end as usize);
            }
        }
        blocks
    }

    pub fn insert(&mut self, block: usize) {
        let word = block / 64;
        if word >= self.words.len() {
            self.words.resize(word + 1, 0);
        }
        self.words[word] |= 1 << (block % 64);
    }

    pub fn insert_range(&mut self, blocks: std::ops::Range<usize>) {
        // Whole words at once: growth can add tens of thousands of blocks.
        let mut b = blocks.start;
        while b < blocks.end {
            if b.is_multiple_of(64) && b + 64 <= blocks.end {
                let word = b / 64;
                if word >= self.words.len() {
                    self.words.resize(word + 1, 0);
                }
                self.words[word] = u64::MAX;
                b += 64;
            } else {
                self.insert(b);
                b += 1;
            }
        }
    }

    pub fn contains(&self, block: usize) -> bool {
        self.words
            .get(block / 64)
            .is_some_and(|w| w & (1 << (block % 64)) != 0)
    }

    pub fn union(&mut self, other: &Blocks) {
        if other.words.len() > self.words.len() {
            self.words.resize(other.words.len(), 0);
        }
        for (w, o) in self.words.iter_mut().zip(&other.words) {
            *w |= o;
        }
    }

    pub fn clear(&mut self) {
        self.words.iter_mut().for_each(|w| *w = 0);
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|&w| w == 0)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// The blocks in increasing order, as runs `start..end` of consecutive blocks.
    pub fn runs(&self) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
        let mut blocks = self.iter().peekable();
        std::iter::from_fn(move || {
            let start = blocks.next()?;
            let mut end = start + 1;
            while blocks.peek() == Some(&end) {
                blocks.next();
                end += 1;
            }
            Some(start..end)
        })
    }

    /// The blocks in increasing order; skips empty words, so it costs little more than the
    /// number of blocks set for a sparse set.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.words.iter().enumerate().flat_map(|(i, &word)| {
            let mut w = word;
            std::iter::from_fn(move || {
                if w == 0 {
                    return None;
                }
                let bit = w.trailing_zeros() as usize;
                w &= w - 1;
                Some(i * 64 + bit)
            })
        })
    }
}

enum Method {
    #[cfg(target_os = "linux")]
    Kernel {
        kernel: &'static crate::sys::Kernel,
        /// The tracked range `(base address, length)`, once armed.
        range: Option<(usize, usize)>,
    },
    Hash {
        /// The hash of every block at the last scan; `None` until armed.
        hashes: Option<Vec<u64>>,
    },
}

/// The tracker of one box's memory.
pub(crate) struct Tracker {
    method: Method,
    /// The kernel was requested explicitly: a failure is an error, not a fallback.
    strict: bool,
}

impl std::fmt::Debug for Tracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tracker({:?})", self.method())
    }
}

impl Tracker {
    /// A tracker by the requested method (unarmed).
    ///
    /// # Errors
    /// [`Error::ChangeTracking`] if [`ChangeTracking::Kernel`] is requested and the kernel
    /// offers nothing.
    pub fn new(requested: ChangeTracking) -> Result<Tracker, Error> {
        let hash = Method::Hash { hashes: None };
        let method = match requested {
            ChangeTracking::Hash => hash,
            #[cfg(target_os = "linux")]
            ChangeTracking::Auto | ChangeTracking::Kernel => match crate::sys::kernel() {
                Ok(kernel) => Method::Kernel {
                    kernel,
                    range: None,
                },
                Err(_) if requested == ChangeTracking::Auto => hash,
                Err(why) => return Err(Error::ChangeTracking(why)),
            },
            #[cfg(not(target_os = "linux"))]
            ChangeTracking::Auto => hash,
            #[cfg(not(target_os = "linux"))]
            ChangeTracking::Kernel => {
                return Err(Error::ChangeTracking(
                    "the kernel tracks writes only on Linux".into(),
                ));
            }
        };
        Ok(Tracker {
            method,
            strict: requested == ChangeTracking::Kernel,
        })
    }

    /// The method in use: [`ChangeTracking::Kernel`] or [`ChangeTracking::Hash`].
    pub fn method(&self) -> ChangeTracking {
        match self.method {
            #[cfg(target_os = "linux")]
            Method::Kernel { .. } => ChangeTracking::Kernel,
            Method::Hash { .. } => ChangeTracking::Hash,
        }
    }

    /// Whether the tracker has a baseline yet.
    pub fn is_armed(&self) -> bool {
        match &self.method {
            #[cfg(target_os = "linux")]
            Method::Kernel { range, .. } => range.is_some(),
            Method::Hash { hashes } => hashes.is_some(),
        }
    }

    /// Adds to `written` every block of `memory` that may have changed since the last call,
    /// and makes `memory` as it is now the baseline of the next. The first call only arms the
    /// tracker (nothing was written before it: see the module docs). Blocks added by memory
    /// growth count as written (the kernel's: those that were touched since).
    ///
    /// If the kernel refuses to track or scan the memory, the tracker switches to hashes (the
    /// blocks it could not account for are reported as written).
    ///
    /// # Errors
    /// [`Error::ChangeTracking`] for such a refusal when the kernel was requested explicitly.
    pub fn collect(&mut self, memory: &[u8], written: &mut Blocks) -> Result<(), Error> {
        let blocks = memory.len() / BLOCK;
        match &mut self.method {
            #[cfg(target_os = "linux")]
            Method::Kernel { kernel, range } => {
                let base = memory.as_ptr() as usize;
                let result = match *range {
                    None => kernel.track(base, memory.len()),
                    Some((tracked_base, tracked_len)) if tracked_base == base => kernel
                        .scan(base, tracked_len, true, |s, e| {
                            written.insert_range(s / BLOCK..e.div_ceil(BLOCK));
                        })
                        .and_then(|()| {
                            // Growth: the new pages were never protected. Those the kernel
                            // never gave a page are still the zeros growth made (growth maps
                            // anonymous memory: a module's or template's image lies within its
                            // initial size), so only the touched ones may have changed.
                            let grown = memory.len() - tracked_len;
                            kernel.touched(base + tracked_len, grown, |s, e| {
                                written.insert_range(
                                    (tracked_len + s) / BLOCK..(tracked_len + e).div_ceil(BLOCK),
                                );
                            })?;
                            kernel.track(base + tracked_len, grown)
                        }),
                    Some(_) => {
                        // The memory moved (a memory that is not statically reserved grew):
                        // the old range went with its mapping.
                        written.insert_range(0..blocks);
                        kernel.track(base, memory.len())
                    }
                };
                match result {
                    Ok(()) => {
                        *range = Some((base, memory.len()));
                        Ok(())
                    }
                    Err(why) => {
                        if let Some((b, l)) = *range
                            && b == base
                        {
                            kernel.untrack(b, l);
                        }
                        if range.is_some() {
                            written.insert_range(0..blocks);
                        }
                        self.method = Method::Hash {
                            hashes: Some(hash_blocks(memory)),
                        };
                        if self.strict {
                            Err(Error::ChangeTracking(why))
                        } else {
                            Ok(())
                        }
                    }
                }
            }
            Method::Hash { hashes } => {
                match hashes {
                    None => *hashes = Some(hash_blocks(memory)),
                    Some(hashes) => {
                        for (i, block) in memory.chunks_exact(BLOCK).enumerate() {
                            let h = xxh3_64(block);
                            match hashes.get_mut(i) {
                                Some(old) if *old == h => {}
                                Some(old) => {
                                    *old = h;
                                    written.insert(i);
                                }
                                None => {
                                    hashes.push(h);
                                    written.insert(i);
                                }
                            }
                        }
                    }
                }
                Ok(())
            }
        }
    }

    /// Adds to `touched` every block of `memory` the kernel has given a page (or swapped out)
    /// — a superset of the blocks that are not zero, outside a module's or template's image —
    /// and returns `true`; returns `false` where the kernel cannot say (hash tracking).
    pub fn touched(&self, memory: &[u8], touched: &mut Blocks) -> bool {
        match &self.method {
            #[cfg(target_os = "linux")]
            Method::Kernel { kernel, .. } => kernel
                .touched(memory.as_ptr() as usize, memory.len(), |s, e| {
                    touched.insert_range(s / BLOCK..e.div_ceil(BLOCK));
                })
                .is_ok(),
            Method::Hash { .. } => {
                let _ = (memory, touched);
                false
            }
        }
    }

    /// Adds to `written` the blocks `collect` would report, without making the present the
    /// new baseline: for a rollback, which puts those blocks back as they were at the
    /// baseline and then calls [`Tracker::rearm`] on them.
    ///
    /// # Errors
    /// [`Error::ChangeTracking`] if the tracker is not armed or the kernel fails (the caller
    /// then restores the whole memory).
    pub fn peek(&mut self, memory: &[u8], written: &mut Blocks) -> Result<(), Error> {
        let blocks = memory.len() / BLOCK;
        match &self.method {
            #[cfg(target_os = "linux")]
            Method::Kernel { kernel, range } => {
                let base = memory.as_ptr() as usize;
                match *range {
                    Some((tracked_base, tracked_len)) if tracked_base == base => {
                        kernel
                            .scan(base, tracked_len, false, |s, e| {
                                written.insert_range(s / BLOCK..e.div_ceil(BLOCK));
                            })
                            .map_err(Error::ChangeTracking)?;
                        written.insert_range(tracked_len / BLOCK..blocks);
                        Ok(())
                    }
                    _ => Err(Error::ChangeTracking("the tracker lost its range".into())),
                }
            }
            Method::Hash { hashes } => {
                let Some(hashes) = hashes else {
                    return Err(Error::ChangeTracking("the tracker is not armed".into()));
                };
                for (i, block) in memory.chunks_exact(BLOCK).enumerate() {
                    if hashes.get(i) != Some(&xxh3_64(block)) {
                        written.insert(i);
                    }
                }
                Ok(())
            }
        }
    }

    /// After a [`Tracker::peek`] whose blocks were put back as they were at the baseline:
    /// those blocks are clean again.
    ///
    /// # Errors
    /// [`Error::ChangeTracking`] if the kernel fails.
    pub fn rearm(&mut self, memory: &[u8], blocks: &Blocks) -> Result<(), Error> {
        match &self.method {
            #[cfg(target_os = "linux")]
            Method::Kernel { kernel, .. } => {
                let base = memory.as_ptr() as usize;
                let end = memory.len();
                for run in blocks.runs() {
                    let (s, e) = ((run.start * BLOCK).min(end), (run.end * BLOCK).min(end));
                    if s < e {
                        kernel
                            .protect(base + s, base + e)
                            .map_err(Error::ChangeTracking)?;
                    }
                }
                Ok(())
            }
            // The recorded hashes are the baseline's, and so is the content again.
            Method::Hash { .. } => Ok(()),
        }
    }

    /// Stops tracking (the kernel's registration is dropped). Called before the memory goes.
    pub fn disarm(&mut self) {
        match &mut self.method {
            #[cfg(target_os = "linux")]
            Method::Kernel { kernel, range } => {
                if let Some((base, len)) = range.take() {
                    kernel.untrack(base, len);
                }
            }
            Method::Hash { hashes } => *hashes = None,
        }
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.disarm();
    }
}

fn hash_blocks(memory: &[u8]) -> Vec<u64> {
    memory.chunks_exact(BLOCK).map(xxh3_64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_block_sets_iterate_in_runs() {
        let mut b = Blocks::default();
        b.insert(3);
        b.insert_range(60..130);
        b.insert(200);
        b.insert(4);
        assert_eq!(b.runs().collect::<Vec<_>>(), [3..5, 60..130, 200..201]);
        assert_eq!(b.len(), 2 + 70 + 1);
        b.clear();
        assert!(b.is_empty());
    }

    fn both() -> Vec<Tracker> {
        let mut trackers = vec![Tracker::new(ChangeTracking::Hash).unwrap()];
        if cfg!(target_os = "linux") {
            let kernel = Tracker::new(ChangeTracking::Kernel).expect("this kernel tracks writes");
            assert_eq!(kernel.method(), ChangeTracking::Kernel);
            trackers.push(kernel);
        }
        trackers
    }

    #[test]
    fn accept_both_methods_find_the_changed_blocks() {
        for mut tracker in both() {
            // A page-aligned region, as a wasm memory is.
            let mut backing = vec![0u8; 34 * BLOCK];
            let at = backing.as_ptr().align_offset(BLOCK);
            let memory = &mut backing[at..at + 32 * BLOCK];
            let mut written = Blocks::default();
            tracker.collect(memory, &mut written).unwrap();
            assert!(written.is_empty(), "arming reports nothing");
            memory[5 * BLOCK + 1] = 1;
            memory[20 * BLOCK..22 * BLOCK].fill(3);
            tracker.collect(memory, &mut written).unwrap();
            assert_eq!(written.runs().collect::<Vec<_>>(), [5..6, 20..22]);
            written.clear();
            memory[5 * BLOCK + 1] = 0; // back to zero: changed, must be found
            tracker.collect(memory, &mut written).unwrap();
            assert_eq!(written.iter().collect::<Vec<_>>(), [5]);
            written.clear();
            tracker.collect(memory, &mut written).unwrap();
            assert!(written.is_empty(), "{:?}", tracker.method());
            // A shorter view of the same memory, then the whole: the rest counts as grown.
            tracker.disarm();
            let mut t2 = Tracker::new(tracker.method()).unwrap();
            t2.collect(&memory[..16 * BLOCK], &mut written).unwrap();
            memory[31 * BLOCK] = 1;
            t2.collect(memory, &mut written).unwrap();
            assert_eq!(written.runs().collect::<Vec<_>>(), vec![16..32]);
            t2.disarm();
        }
    }
}
