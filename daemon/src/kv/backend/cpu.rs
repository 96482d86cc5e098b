//! The CPU backend: real memory with the same shape as the GPU's. The region is one
//! `mmap(PROT_NONE)` reservation; the pool is a memfd whose pages are committed up front
//! (`fallocate`), like `cuMemCreate` handles; mapping puts pool pages at fixed addresses of the
//! reservation (`MAP_FIXED | MAP_SHARED | MAP_POPULATE`, so the forward pass never faults), and
//! unmapping puts `PROT_NONE` back, leaving the pool page's memory for the next mapping.
//!
//! Why a memfd pool rather than `mprotect` + `madvise(MADV_DONTNEED)` on anonymous memory: a
//! returned page keeps its physical memory, so remapping it costs page-table work only, where
//! the anonymous variant gives memory back to the kernel and pays for zeroed pages on the next
//! touch (measured in `benches/kv_map.rs`, numbers in docs/BENCHMARKS.md).
//!
//! A cached prefix page is mapped at several addresses at once (the same memfd offset behind
//! several fixed mappings). Copies between pool pages go through a second, whole-pool view of
//! the memfd, so they need no slot mapping.
//!
//! Must not: track which page is mapped where (the mapper's page table does).

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::{PageBackend, PageId};
use crate::kv::KvError;

const POOL_NAME: &CStr = c"fused-kv-pool";

/// A KV region in host memory.
#[derive(Debug)]
pub struct CpuBackend {
    base: usize,
    virtual_bytes: usize,
    page_bytes: usize,
    pool_pages: usize,
    pool: OwnedFd,
    /// The whole pool mapped once, page `i` at `pool_view + i × page_bytes` (for copies).
    pool_view: usize,
}

fn os_error(call: &'static str) -> KvError {
    KvError::Os {
        call,
        source: io::Error::last_os_error(),
    }
}

/// Reads `vm.max_map_count`, the kernel's limit on mappings per process, if it can be read.
fn max_map_count() -> Option<usize> {
    std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()?
        .trim()
        .parse()
        .ok()
}

impl CpuBackend {
    /// Reserves `virtual_bytes` of address space and commits a pool of `pool_pages` pages.
    pub fn new(
        virtual_bytes: usize,
        page_bytes: usize,
        pool_pages: usize,
    ) -> Result<Self, KvError> {
        let pool_bytes = pool_pages
            .checked_mul(page_bytes)
            .and_then(|bytes| libc::off_t::try_from(bytes).ok())
            .ok_or_else(|| KvError::InvalidConfig("KV pool size overflows".into()))?;
        // SAFETY: plain system call on a valid NUL-terminated name.
        let fd = unsafe { libc::memfd_create(POOL_NAME.as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(os_error("memfd_create"));
        }
        // SAFETY: `fd` was just returned by memfd_create and is owned by nobody else.
        let pool = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: plain system call on a descriptor we own.
        if unsafe { libc::fallocate(pool.as_raw_fd(), 0, 0, pool_bytes) } != 0 {
            return Err(os_error("fallocate (committing the KV pool)"));
        }
        // SAFETY: a fresh anonymous PROT_NONE mapping at an address of the kernel's choice.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                virtual_bytes,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(os_error("mmap (reserving the KV region)"));
        }
        // SAFETY: a fresh shared mapping of the whole memfd at an address of the kernel's choice.
        let pool_view = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                pool_pages * page_bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                pool.as_raw_fd(),
                0,
            )
        };
        if pool_view == libc::MAP_FAILED {
            let error = os_error("mmap (viewing the KV pool)");
            // SAFETY: the reservation just made, used by nobody.
            unsafe { libc::munmap(base, virtual_bytes) };
            return Err(error);
        }
        if let Some(limit) = max_map_count().filter(|limit| 2 * pool_pages + 64 > *limit) {
            tracing::warn!(
                pool_pages,
                limit,
                "the KV pool can split the region into more mappings than vm.max_map_count allows; \
                 raise it if mapping fails with ENOMEM"
            );
        }
        Ok(Self {
            base: base as usize,
            virtual_bytes,
            page_bytes,
            pool_pages,
            pool,
            pool_view: pool_view as usize,
        })
    }

    fn check_range(&self, offset: usize, count: usize) -> Result<(), KvError> {
        let in_range = count
            .checked_mul(self.page_bytes)
            .and_then(|bytes| bytes.checked_add(offset))
            .is_some_and(|end| end <= self.virtual_bytes);
        if !offset.is_multiple_of(self.page_bytes) || !in_range {
            return Err(KvError::Backend(format!(
                "page range at byte {offset} (+{count} pages) is outside the {}-byte region or \
                 not page-aligned",
                self.virtual_bytes
            )));
        }
        Ok(())
    }

    /// Maps pool pages `first..first + count` at `offset` with one call.
    fn map_consecutive(&self, offset: usize, first: PageId, count: usize) -> Result<(), KvError> {
        let file_offset = libc::off_t::try_from(first as usize * self.page_bytes)
            .map_err(|_| KvError::Backend("pool offset overflows".into()))?;
        // SAFETY: the target range lies inside our reservation (checked by `check_range`) and is
        // replaced atomically; nothing else maps into it.
        let mapped = unsafe {
            libc::mmap(
                (self.base + offset) as *mut libc::c_void,
                count * self.page_bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_FIXED | libc::MAP_POPULATE,
                self.pool.as_raw_fd(),
                file_offset,
            )
        };
        if mapped == libc::MAP_FAILED {
            return Err(os_error(
                "mmap (mapping KV pages; ENOMEM may mean vm.max_map_count)",
            ));
        }
        Ok(())
    }
}

impl PageBackend for CpuBackend {
    fn name(&self) -> &'static str {
        "cpu-memfd"
    }

    fn base_address(&self) -> usize {
        self.base
    }

    fn map_run(&mut self, offset: usize, pages: &[PageId]) -> Result<(), KvError> {
        self.check_range(offset, pages.len())?;
        if let Some(bad) = pages.iter().find(|&&page| page as usize >= self.pool_pages) {
            return Err(KvError::Backend(format!(
                "page {bad} is not in the {}-page pool",
                self.pool_pages
            )));
        }
        let mut done = 0;
        while done < pages.len() {
            let consecutive = 1 + pages[done..]
                .windows(2)
                .take_while(|pair| pair[1] == pair[0].wrapping_add(1))
                .count();
            let at = offset + done * self.page_bytes;
            if let Err(error) = self.map_consecutive(at, pages[done], consecutive) {
                if done > 0 {
                    // Best effort: the original error is the one worth reporting.
                    let _ = self.unmap_run(offset, done);
                }
                return Err(error);
            }
            done += consecutive;
        }
        Ok(())
    }

    fn unmap_run(&mut self, offset: usize, count: usize) -> Result<(), KvError> {
        self.check_range(offset, count)?;
        // SAFETY: the range lies inside our reservation; it becomes PROT_NONE reserved space again.
        let reserved = unsafe {
            libc::mmap(
                (self.base + offset) as *mut libc::c_void,
                count * self.page_bytes,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if reserved == libc::MAP_FAILED {
            return Err(os_error("mmap (unmapping KV pages)"));
        }
        Ok(())
    }

    fn copy_pages(&mut self, from: &[PageId], to: &[PageId], bytes: usize) -> Result<(), KvError> {
        let in_pool = |page: &PageId| (*page as usize) < self.pool_pages;
        if from.len() != to.len() || bytes > self.page_bytes || !from.iter().chain(to).all(in_pool)
        {
            return Err(KvError::Backend(format!(
                "copy of {bytes} bytes from pool pages {from:?} to {to:?} is outside the \
                 {}-page pool",
                self.pool_pages
            )));
        }
        for (&source, &target) in from.iter().zip(to) {
            let at = |page: PageId| (self.pool_view + page as usize * self.page_bytes) as *mut u8;
            // SAFETY: both ranges lie inside the pool view (checked above); distinct pool pages
            // (the mapper's page table checked) do not overlap.
            unsafe { std::ptr::copy_nonoverlapping(at(source), at(target), bytes) };
        }
        Ok(())
    }
}

impl Drop for CpuBackend {
    fn drop(&mut self) {
        // SAFETY: the reservation is ours and nothing uses it once the backend is dropped.
        if unsafe { libc::munmap(self.base as *mut libc::c_void, self.virtual_bytes) } != 0 {
            tracing::warn!(error = %io::Error::last_os_error(), "munmap of the KV region failed");
        }
        let view_bytes = self.pool_pages * self.page_bytes;
        // SAFETY: the pool view is ours and nothing uses it once the backend is dropped.
        if unsafe { libc::munmap(self.pool_view as *mut libc::c_void, view_bytes) } != 0 {
            tracing::warn!(error = %io::Error::last_os_error(), "munmap of the KV pool view failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: usize = 2 << 20;

    #[test]
    fn pages_keep_their_memory_across_remaps() {
        let mut backend = CpuBackend::new(8 * PAGE, PAGE, 3).expect("small region");
        let base = backend.base_address() as *mut u8;
        backend.map_run(0, &[2, 0]).expect("two pages");
        // SAFETY: pages 0 and 1 of the region are mapped.
        unsafe {
            base.write(7);
            base.add(2 * PAGE - 1).write(9);
        }
        backend.unmap_run(0, 2).expect("unmap both");
        backend
            .map_run(5 * PAGE, &[0, 1, 2])
            .expect("three pages elsewhere");
        // SAFETY: pages 5..8 are mapped; pool page 2 went to region page 7, pool page 0 to 5.
        unsafe {
            assert_eq!(base.add(7 * PAGE).read(), 7, "pool page 2 kept its byte");
            assert_eq!(
                base.add(6 * PAGE - 1).read(),
                9,
                "pool page 0 kept its byte"
            );
        }
    }

    #[test]
    fn one_pool_page_at_two_addresses_and_copies_between_pages() {
        let mut backend = CpuBackend::new(8 * PAGE, PAGE, 3).expect("small region");
        let base = backend.base_address() as *mut u8;
        backend.map_run(0, &[1]).expect("page 1 at region page 0");
        backend
            .map_run(4 * PAGE, &[1])
            .expect("page 1 again at region page 4");
        backend
            .map_run(5 * PAGE, &[2])
            .expect("page 2 at region page 5");
        // SAFETY: region pages 0, 4 and 5 are mapped.
        unsafe {
            base.add(10).write(42);
            assert_eq!(
                base.add(4 * PAGE + 10).read(),
                42,
                "one page, two addresses"
            );
        }
        backend
            .copy_pages(&[1], &[2], 11)
            .expect("copy in the pool");
        // SAFETY: as above.
        unsafe {
            assert_eq!(base.add(5 * PAGE + 10).read(), 42, "copied");
            base.add(5 * PAGE + 10).write(7);
            assert_eq!(base.add(10).read(), 42, "the copy is its own page");
        }
        assert!(
            backend.copy_pages(&[1], &[3], 1).is_err(),
            "page 3 is not in the pool"
        );
        assert!(
            backend.copy_pages(&[1], &[2], PAGE + 1).is_err(),
            "past the page"
        );
    }

    #[test]
    fn bad_ranges_and_pages_are_errors() {
        let mut backend = CpuBackend::new(4 * PAGE, PAGE, 2).expect("small region");
        assert!(matches!(
            backend.map_run(3 * PAGE, &[0, 1]),
            Err(KvError::Backend(_))
        ));
        assert!(matches!(backend.map_run(1, &[0]), Err(KvError::Backend(_))));
        assert!(matches!(backend.map_run(0, &[2]), Err(KvError::Backend(_))));
        assert!(matches!(
            backend.unmap_run(4 * PAGE, 1),
            Err(KvError::Backend(_))
        ));
    }
}
