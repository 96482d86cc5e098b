//! Physical page backends: one virtual reservation for the whole region, a pool of physical
//! pages made up front, mapping / unmapping of pool pages at page-aligned offsets (a cached
//! prefix page at several offsets at once), and copies between pool pages.
//!
//! The CPU backend is real memory (an `mmap(PROT_NONE)` reservation over a memfd pool); the CUDA
//! backend (feature `cuda`) uses the driver's virtual memory management.
//!
//! Must not: decide which page goes where (the accounting does) or track what is mapped (the
//! mapper's page table does); a backend only carries out checked calls and reports typed errors.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;

use super::KvError;

/// Index of a physical page in a backend's pool.
pub type PageId = u32;

/// One kind of physical memory behind a KV region.
pub trait PageBackend: Send {
    /// A short name for logs and benchmark tables.
    fn name(&self) -> &'static str;
    /// Address of the reservation's first byte: a host pointer (CPU) or a device address (CUDA).
    /// It never changes for the life of the backend.
    fn base_address(&self) -> usize;
    /// Prepares the calling thread to make calls (the CUDA backend binds its context).
    fn attach_thread(&self) -> Result<(), KvError> {
        Ok(())
    }
    /// Maps pool page `pages[i]` at byte `offset + i × page_bytes` of the reservation.
    /// On error nothing of this call stays mapped.
    fn map_run(&mut self, offset: usize, pages: &[PageId]) -> Result<(), KvError>;
    /// Unmaps `count` pages from byte `offset`; their pool pages keep their memory for reuse.
    fn unmap_run(&mut self, offset: usize, count: usize) -> Result<(), KvError>;
    /// Copies the first `bytes` bytes of pool page `from[i]` to pool page `to[i]`, wherever
    /// (and however often) they are mapped; done when the call returns.
    fn copy_pages(&mut self, from: &[PageId], to: &[PageId], bytes: usize) -> Result<(), KvError>;
}
