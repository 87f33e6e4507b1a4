//! Raw system calls, Linux only. **The only module that makes them**: the kernel's write
//! tracking — userfaultfd in asynchronous write-protect mode plus the `PAGEMAP_SCAN` ioctl
//! (Linux ≥ 6.7) — `syncfs`, which durable boxes use for group commit, and `madvise` for huge
//! pages under large fresh buffers.
//!
//! A tracked range is registered with one process-wide userfaultfd in write-protect mode and
//! write-protected. With `UFFD_FEATURE_WP_ASYNC` a write to a protected page never blocks and
//! never reaches user space: the kernel lifts the protection and the page counts as written.
//! `PAGEMAP_SCAN` with `PM_SCAN_WP_MATCHING` then returns the written pages of a range and
//! protects them again, in one call. Registration is per range, so each box tracks its own
//! memory without disturbing any other (soft-dirty bits, by contrast, are cleared for the
//! whole process).
//!
//! The constants are written out here because the C headers of older distributions lack them;
//! they were checked against `linux/userfaultfd.h` of 6.18 (`c018aa3f`, `c020aa00`, ...).

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::OnceLock;

const UFFD_API: u64 = 0xAA;
const UFFD_USER_MODE_ONLY: libc::c_int = 1;
const UFFD_FEATURE_WP_HUGETLBFS_SHMEM: u64 = 1 << 12;
const UFFD_FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;
const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1 << 0;

const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;
const PAGE_IS_WRITTEN: u64 = 1 << 1;
const PAGE_IS_PRESENT: u64 = 1 << 3;
const PAGE_IS_SWAPPED: u64 = 1 << 4;

/// With `huge`, asks the kernel to back the whole pages of `[ptr, ptr + len)` with transparent
/// huge pages when they are first touched (`MADV_HUGEPAGE`): a fresh 64 MiB buffer then costs
/// 32 faults instead of 16,384 (each 2–3 µs on this kind of VM). Without, asks it not to for
/// pages touched from now on (`MADV_NOHUGEPAGE`; huge pages already there stay). Advice only:
/// nothing happens where the kernel cannot or will not.
pub(crate) fn advise_huge_pages(ptr: *const u8, len: usize, huge: bool) {
    const PAGE: usize = 4096;
    let start = (ptr as usize).next_multiple_of(PAGE);
    let end = (ptr as usize + len) & !(PAGE - 1);
    let advice = if huge {
        libc::MADV_HUGEPAGE
    } else {
        libc::MADV_NOHUGEPAGE
    };
    if end > start {
        // SAFETY: these two pieces of advice change how the kernel backs the range, never its
        // contents or its mapping, and the range lies within memory the caller owns (a live
        // allocation or a box's linear memory); the kernel checks the range itself.
        let _ = unsafe { libc::madvise(start as *mut libc::c_void, end - start, advice) };
    }
}

/// Makes everything written to the file system that holds `file` durable, in one call:
/// `syncfs(2)`. A group commit of many boxes' journals costs one of these instead of one
/// `fsync` per box.
pub(crate) fn syncfs(file: &File) -> std::io::Result<()> {
    // SAFETY: `syncfs` takes a file descriptor only, which `file` keeps open for the call.
    if unsafe { libc::syncfs(file.as_raw_fd()) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The pages the kernel tracks: this module needs them to be the 4 KiB blocks snapshots use.
pub(crate) const PAGE: usize = 4096;

const fn ioc(dir: u64, ty: u8, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | ((ty as u64) << 8) | nr
}
const IOC_READ_WRITE: u64 = 3;
const IOC_READ: u64 = 2;

#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioRange {
    start: u64,
    len: u64,
}

#[repr(C)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioWriteprotect {
    range: UffdioRange,
    mode: u64,
}

#[repr(C)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct PageRegion {
    start: u64,
    end: u64,
    categories: u64,
}

const UFFDIO_API: u64 = ioc(IOC_READ_WRITE, 0xAA, 0x3F, size_of::<UffdioApi>());
const UFFDIO_REGISTER: u64 = ioc(IOC_READ_WRITE, 0xAA, 0x00, size_of::<UffdioRegister>());
const UFFDIO_UNREGISTER: u64 = ioc(IOC_READ, 0xAA, 0x01, size_of::<UffdioRange>());
const UFFDIO_WRITEPROTECT: u64 = ioc(IOC_READ_WRITE, 0xAA, 0x06, size_of::<UffdioWriteprotect>());
const PAGEMAP_SCAN: u64 = ioc(IOC_READ_WRITE, b'f', 16, size_of::<PmScanArg>());

/// The process's userfaultfd and `/proc/self/pagemap`, opened once.
pub(crate) struct Kernel {
    uffd: OwnedFd,
    pagemap: File,
}

/// The kernel tracker of this process, or why there is none (another kernel, a sandbox that
/// forbids userfaultfd, pages that are not 4 KiB).
pub(crate) fn kernel() -> Result<&'static Kernel, String> {
    static KERNEL: OnceLock<Result<Kernel, String>> = OnceLock::new();
    KERNEL.get_or_init(open).as_ref().map_err(Clone::clone)
}

fn last_error(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

/// `ioctl(fd, request, arg)`, with the error as text.
fn ioctl<T>(fd: &impl AsRawFd, request: u64, arg: &mut T, what: &str) -> Result<i64, String> {
    // SAFETY: `arg` is a valid, exclusive pointer to a `#[repr(C)]` struct of exactly the size
    // encoded in `request` (see the constants above), which is what each of these ioctls reads
    // and writes; the kernel validates everything else (fd, addresses, ranges).
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), request as _, std::ptr::from_mut(arg)) };
    if r < 0 {
        Err(last_error(what))
    } else {
        Ok(i64::from(r))
    }
}

fn open() -> Result<Kernel, String> {
    // SAFETY: `sysconf` has no memory-safety preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if page != PAGE as libc::c_long {
        return Err(format!("the page size is {page} bytes, not {PAGE}"));
    }
    let pagemap =
        File::open("/proc/self/pagemap").map_err(|e| format!("/proc/self/pagemap: {e}"))?;
    // Try with write-protection of shared-memory mappings (copy-on-write memory images are
    // private mappings of a memfd), then without.
    let mut last = String::new();
    for features in [
        UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED | UFFD_FEATURE_WP_HUGETLBFS_SHMEM,
        UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED,
    ] {
        // SAFETY: the userfaultfd system call takes flags only and returns a new descriptor
        // (or -1), which is owned here and nowhere else.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_userfaultfd,
                libc::O_CLOEXEC | libc::O_NONBLOCK | UFFD_USER_MODE_ONLY,
            )
        };
        if fd < 0 {
            return Err(last_error("userfaultfd"));
        }
        // SAFETY: `fd` was just returned by the kernel and is not owned by anything else.
        let uffd = unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) };
        let mut api = UffdioApi {
            api: UFFD_API,
            features,
            ioctls: 0,
        };
        match ioctl(&uffd, UFFDIO_API, &mut api, "UFFDIO_API") {
            Ok(_) => {
                let kernel = Kernel { uffd, pagemap };
                kernel.probe()?;
                return Ok(kernel);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

impl Kernel {
    /// Checks once that `PAGEMAP_SCAN` works (it needs Linux ≥ 6.7), on a private mapping of
    /// our own.
    fn probe(&self) -> Result<(), String> {
        let mut page = vec![0u8; 4 * PAGE];
        let offset = page.as_ptr().align_offset(PAGE);
        let Some(aligned) = page.get_mut(offset..offset + PAGE) else {
            return Err("cannot align a probe page".into());
        };
        aligned[0] = 1;
        let (base, len) = (aligned.as_ptr() as usize, PAGE);
        self.track(base, len)?;
        aligned[0] = 2;
        let mut written = 0;
        let scanned = self.scan(base, len, true, |_, _| written += 1);
        self.untrack(base, len);
        scanned?;
        if written != 1 {
            return Err(format!(
                "PAGEMAP_SCAN reported {written} written pages for 1"
            ));
        }
        Ok(())
    }

    /// Registers `[base, base + len)` (page-aligned) and write-protects it: from now on the
    /// kernel records which of its pages are written.
    pub(crate) fn track(&self, base: usize, len: usize) -> Result<(), String> {
        if len == 0 {
            return Ok(());
        }
        let range = || UffdioRange {
            start: base as u64,
            len: len as u64,
        };
        let mut register = UffdioRegister {
            range: range(),
            mode: UFFDIO_REGISTER_MODE_WP,
            ioctls: 0,
        };
        ioctl(
            &self.uffd,
            UFFDIO_REGISTER,
            &mut register,
            "UFFDIO_REGISTER",
        )?;
        let mut protect = UffdioWriteprotect {
            range: range(),
            mode: UFFDIO_WRITEPROTECT_MODE_WP,
        };
        if let Err(e) = ioctl(
            &self.uffd,
            UFFDIO_WRITEPROTECT,
            &mut protect,
            "UFFDIO_WRITEPROTECT",
        ) {
            self.untrack(base, len);
            return Err(e);
        }
        Ok(())
    }

    /// Stops tracking `[base, base + len)`; the kernel lifts the protection. Must be called
    /// while the range is still mapped (an unmapped range has no registration left, and its
    /// addresses may already belong to another mapping).
    pub(crate) fn untrack(&self, base: usize, len: usize) {
        if len == 0 {
            return;
        }
        let mut range = UffdioRange {
            start: base as u64,
            len: len as u64,
        };
        // Nothing to do on failure: the range is then not registered.
        let _ = ioctl(
            &self.uffd,
            UFFDIO_UNREGISTER,
            &mut range,
            "UFFDIO_UNREGISTER",
        );
    }

    /// Write-protects `[start, end)` of a tracked range again (after the caller put back what
    /// was written there).
    pub(crate) fn protect(&self, start: usize, end: usize) -> Result<(), String> {
        let mut protect = UffdioWriteprotect {
            range: UffdioRange {
                start: start as u64,
                len: (end - start) as u64,
            },
            mode: UFFDIO_WRITEPROTECT_MODE_WP,
        };
        ioctl(
            &self.uffd,
            UFFDIO_WRITEPROTECT,
            &mut protect,
            "UFFDIO_WRITEPROTECT",
        )
        .map(drop)
    }

    /// Calls `written(start, end)` (byte offsets from `base`) for every run of pages of the
    /// tracked range `[base, base + len)` written since it was protected or last scanned, and
    /// with `rearm` protects them again — atomically, page by page, in the kernel.
    pub(crate) fn scan(
        &self,
        base: usize,
        len: usize,
        rearm: bool,
        written: impl FnMut(usize, usize),
    ) -> Result<(), String> {
        let flags = if rearm {
            PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC
        } else {
            PM_SCAN_CHECK_WPASYNC
        };
        self.pagemap_scan(base, len, flags, (PAGE_IS_WRITTEN, 0), written)
    }

    /// Calls `touched(start, end)` (byte offsets from `base`) for every run of pages of
    /// `[base, base + len)` that has a page or a swap entry: the pages of an anonymous mapping
    /// that are *not* reported were never touched and read as zeros. (Not so in a file
    /// mapping, whose absent pages hold the file's bytes: callers pass anonymous ranges only.)
    pub(crate) fn touched(
        &self,
        base: usize,
        len: usize,
        touched: impl FnMut(usize, usize),
    ) -> Result<(), String> {
        self.pagemap_scan(
            base,
            len,
            0,
            (0, PAGE_IS_PRESENT | PAGE_IS_SWAPPED),
            touched,
        )
    }

    /// One `PAGEMAP_SCAN` walk of `[base, base + len)` with `flags`, reporting the runs of
    /// pages that have all categories of `all` and any of `any`.
    fn pagemap_scan(
        &self,
        base: usize,
        len: usize,
        flags: u64,
        (all, any): (u64, u64),
        mut found: impl FnMut(usize, usize),
    ) -> Result<(), String> {
        let mut regions = [PageRegion::default(); 64];
        let end = (base + len) as u64;
        let mut start = base as u64;
        while start < end {
            let mut arg = PmScanArg {
                size: size_of::<PmScanArg>() as u64,
                flags,
                start,
                end,
                walk_end: 0,
                vec: regions.as_mut_ptr() as u64,
                vec_len: regions.len() as u64,
                max_pages: 0,
                category_inverted: 0,
                category_mask: all,
                category_anyof_mask: any,
                return_mask: all | any,
            };
            let n = ioctl(&self.pagemap, PAGEMAP_SCAN, &mut arg, "PAGEMAP_SCAN")?;
            let n = usize::try_from(n).unwrap_or(0).min(regions.len());
            for r in &regions[..n] {
                found(
                    (r.start - base as u64) as usize,
                    (r.end - base as u64) as usize,
                );
            }
            if arg.walk_end <= start {
                return Err("PAGEMAP_SCAN made no progress".into());
            }
            start = arg.walk_end;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_written_pages_are_reported_once() {
        let kernel = kernel().expect("this machine's kernel tracks writes");
        let mut memory = vec![0u8; 66 * PAGE];
        let offset = memory.as_ptr().align_offset(PAGE);
        let region = &mut memory[offset..offset + 64 * PAGE];
        region.fill(1);
        let (base, len) = (region.as_ptr() as usize, region.len());
        kernel.track(base, len).unwrap();
        for page in [3, 4, 40] {
            region[page * PAGE + 17] = 9;
        }
        region[3 * PAGE] = 1; // the same bytes written again: still a write
        let mut runs = Vec::new();
        let mut peeked = Vec::new();
        kernel
            .scan(base, len, false, |s, e| peeked.push((s, e)))
            .unwrap();
        kernel
            .scan(base, len, true, |s, e| runs.push((s, e)))
            .unwrap();
        assert_eq!(runs, [(3 * PAGE, 5 * PAGE), (40 * PAGE, 41 * PAGE)]);
        assert_eq!(
            peeked, runs,
            "a scan without rearm leaves the pages written"
        );
        let mut again = Vec::new();
        kernel
            .scan(base, len, true, |s, e| again.push((s, e)))
            .unwrap();
        assert!(again.is_empty(), "a scan re-protects: {again:?}");
        region[63 * PAGE] = 5;
        kernel
            .scan(base, len, false, |s, e| again.push((s, e)))
            .unwrap();
        assert_eq!(again, [(63 * PAGE, 64 * PAGE)]);
        kernel.protect(base + 63 * PAGE, base + 64 * PAGE).unwrap();
        again.clear();
        kernel
            .scan(base, len, true, |s, e| again.push((s, e)))
            .unwrap();
        assert!(again.is_empty(), "protect re-arms: {again:?}");
        kernel.untrack(base, len);
    }
}
