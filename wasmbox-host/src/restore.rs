//! Restore: the one routine that builds a box's instance from a saved state. Every way of
//! restoring goes through [`restore`] — a snapshot value, a file, the builder, a template, a
//! fork, the rollback of a message that grew the memory — and every caller swaps the instance
//! it returns in only once it succeeded, so an error leaves the box as it was. A snapshot
//! restored into an existing healthy box may instead be written into its instance in place
//! ([`restore_in_place`]), which checks everything before it changes anything, and shares the
//! memory loading with [`restore`].
//!
//! The rule for limits is simple: **the host's limits, always**. The instance is made under the
//! limits of the box being restored into (its builder's); the limits a snapshot records are
//! never adopted, and a snapshot or template whose memory exceeds the host's memory limit is
//! refused (`check.rs`).

use crate::check::{check, check_pages};
use crate::error::Error;
use crate::live::{BoxOptions, Live};
use crate::module::WasmBoxModule;
use crate::snapshot::SnapshotView;
use crate::template::Template;
use crate::tracking::ChangeTracking;

/// Where a restored state comes from.
pub(crate) enum Source<'s, 'a> {
    /// A snapshot: its memory is copied into a fresh instance of the module.
    Snapshot(&'s SnapshotView<'a>),
    /// A template of the module: its memory is mapped copy-on-write at instantiation.
    Template(&'s Template),
}

/// A fresh instance of `module` holding exactly the state `source` describes, under
/// `options`' limits; the start function and the guest's init do not run. Everything is
/// checked before the instance is made.
///
/// # Errors
/// [`Error::Snapshot`] for a snapshot that does not fit the module or the limits,
/// [`Error::ForeignTemplate`] for a template of another module, instantiation errors.
pub(crate) fn restore(
    module: &WasmBoxModule,
    options: &BoxOptions,
    source: Source<'_, '_>,
) -> Result<Live, Error> {
    let (mut live, clock, rng, id) = match source {
        Source::Snapshot(view) => {
            check(module, Some(&options.limits), view)?;
            let mut live = Live::instantiate(module, &module.inner.pre, options)?;
            live.load_memory(&view.memory)?;
            live.write_globals(&view.globals)?;
            (live, view.clock, view.rng.clone(), view.id)
        }
        Source::Template(template) => {
            let t = &template.inner;
            if !t.base.is(module) {
                return Err(Error::ForeignTemplate);
            }
            check_pages(module, Some(&options.limits), t.pages)?;
            let mut live = Live::instantiate(module, &t.pre, options)?;
            live.nonzero().clone_from(&t.nonzero);
            (live, t.clock, t.rng.clone(), t.id)
        }
    };
    live.install(clock, rng);
    // The state it came from is the parent of its next delta.
    live.id = id;
    live.mark_captured();
    Ok(live)
}

/// Replaces the state of `live`, a healthy instance of `module`, by the snapshot's in place —
/// the memory is already mapped and resident, so the copy costs no page faults — when the
/// kernel tracks its writes (the blocks that may be non-zero are then known without reading
/// the memory) and its memory is not larger than the snapshot's (wasm memories do not
/// shrink). Returns `Ok(false)`, having changed no state, when it cannot; the caller then
/// restores into a fresh instance.
///
/// # Errors
/// As [`restore`]'s checks, or the memory cannot grow; the box is unchanged. (Nothing fails
/// after the memory has grown: the checks guarantee that the chunks lie inside it and that
/// the globals are the module's, of their types.)
pub(crate) fn restore_in_place(
    live: &mut Live,
    module: &WasmBoxModule,
    options: &BoxOptions,
    view: &SnapshotView<'_>,
) -> Result<bool, Error> {
    check(module, Some(&options.limits), view)?;
    if live.tracker.method() != ChangeTracking::Kernel
        || view.memory.pages < live.memory.size(&live.store)
    {
        return Ok(false);
    }
    // What the guest wrote since the tracker last reported, into `changed`: with `nonzero`,
    // every block that may be non-zero. Then the tracker stops, as in a fresh instance, until
    // the next guest call: the restore's own writes are not the guest's.
    if live.tracker.is_armed() {
        let data = live.memory.data(&live.store);
        if live.tracker.peek(data, &mut live.changed).is_err() {
            return Ok(false);
        }
    }
    live.tracker.disarm();
    live.load_memory(&view.memory)?;
    live.write_globals(&view.globals)?;
    live.reset_store_state(options);
    live.install(view.clock, view.rng.clone());
    live.id = view.id;
    live.mark_captured();
    Ok(true)
}
