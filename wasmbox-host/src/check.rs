//! Check: the one place that checks a snapshot against a module — format version,
//! fingerprint, memory consistency, the host's memory limit, globals — before any restore or
//! template uses it.

use crate::error::SnapshotError;
use crate::limits::Limits;
use crate::module::WasmBoxModule;
use crate::snapshot::{SnapshotView, check_memory, check_version, hex};

/// Checks that `snapshot` belongs to `module`, is consistent in itself, and (given limits)
/// fits them.
pub(crate) fn check(
    module: &WasmBoxModule,
    limits: Option<&Limits>,
    snapshot: &SnapshotView<'_>,
) -> Result<(), SnapshotError> {
    check_version(snapshot.format_version)?;
    let inner = &module.inner;
    if snapshot.module_fingerprint != inner.fingerprint {
        return Err(SnapshotError::WrongModule {
            expected: module.fingerprint_hex(),
            found: hex(&snapshot.module_fingerprint),
        });
    }
    check_memory(&snapshot.memory)?;
    check_pages(module, limits, snapshot.memory.pages)?;
    let globals = &inner.info.mutable_globals;
    let matches = snapshot.globals.len() == globals.len()
        && snapshot
            .globals
            .iter()
            .zip(globals)
            .all(|(saved, info)| saved.index == info.index && saved.value.kind() == info.ty);
    if !matches {
        return Err(SnapshotError::Malformed(
            "its globals do not match the module's".into(),
        ));
    }
    Ok(())
}

/// Checks a memory size against the module's bounds and the host's memory limit.
pub(crate) fn check_pages(
    module: &WasmBoxModule,
    limits: Option<&Limits>,
    pages: u64,
) -> Result<(), SnapshotError> {
    let info = &module.inner.info;
    let max_pages = limits.map_or(65536, Limits::max_memory_pages);
    let max_pages = info.maximum_pages.map_or(max_pages, |m| m.min(max_pages));
    if pages > max_pages {
        return Err(SnapshotError::TooLarge { pages, max_pages });
    }
    if pages < info.initial_pages {
        return Err(SnapshotError::Malformed(format!(
            "the snapshot has {pages} pages of memory, fewer than the module's minimum of {}",
            info.initial_pages
        )));
    }
    Ok(())
}
