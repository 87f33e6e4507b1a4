//! Restore: the one routine that builds a box's instance from a saved state. Every way of
//! restoring goes through [`restore`] — a snapshot value, a file, the builder, a template, a
//! fork, the rollback of a message that grew the memory — and every caller swaps the instance it returns in only once it
//! succeeded, so an error leaves the box as it was.
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
            live.nonzero.clone_from(&t.nonzero);
            (live, t.clock, t.rng.clone(), t.id)
        }
    };
    live.install(clock, rng);
    // The state it came from is the parent of its next delta.
    live.id = id;
    live.mark_captured();
    Ok(live)
}
