//! Page-locked host memory that weights stream through on their way to the device: the loader
//! reads a file range straight into it, the copy engine reads it without a staging copy of its
//! own, and an event per buffer says when it may be refilled — so a loader alternating two of
//! them reads the next chunk from disk while the last one crosses PCIe, with host memory bounded
//! by the two buffers.
//!
//! Must not: hand out the bytes of a buffer while a copy from it is in flight.

use cudarc::driver::{CudaEvent, PinnedHostSlice, result, sys};

use super::device::GpuDevice;
use super::error::{CudaError, DriverResult};
use super::memory::{DeviceViewMut, Element, check_len};

/// One page-locked host buffer and the event of the last upload from it.
pub struct PinnedStaging {
    buffer: PinnedHostSlice<u8>,
    /// Recorded after each upload from `buffer`; waited for before its bytes are handed out.
    uploaded: CudaEvent,
}

impl std::fmt::Debug for PinnedStaging {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PinnedStaging({} bytes)", self.buffer.len())
    }
}

impl PinnedStaging {
    pub fn len(&self) -> usize {
        self.buffer.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buffer.is_empty()
    }

    /// The buffer's bytes to fill, once every upload from it has completed.
    pub fn bytes_mut(&mut self) -> Result<&mut [u8], CudaError> {
        self.uploaded.synchronize().during("cuEventSynchronize")?;
        self.buffer.as_mut_slice().during("pinned host memory")
    }
}

impl GpuDevice {
    /// `bytes` of zeroed page-locked host memory for [`upload_staged`](Self::upload_staged).
    pub fn pinned_staging(&self, bytes: usize) -> Result<PinnedStaging, CudaError> {
        self.bind()?;
        // SAFETY: the allocation is uninitialised; it is zeroed below before anything reads it
        // (through `bytes_mut`, the only access), and `u8` is valid for any bits.
        let mut buffer = unsafe { self.context().alloc_pinned_with_flags::<u8>(bytes, 0) }
            .during("cuMemHostAlloc")?;
        let start = buffer.as_mut_ptr().during("pinned host memory")?;
        // SAFETY: `start` addresses `bytes` bytes of host memory owned by `buffer`.
        unsafe { std::ptr::write_bytes(start, 0, bytes) };
        let uploaded = self
            .context()
            .new_event(Some(sys::CUevent_flags::CU_EVENT_BLOCKING_SYNC))
            .during("cuEventCreate")?;
        Ok(PinnedStaging { buffer, uploaded })
    }

    /// Queues a copy of the first `bytes` of `staging` into `dst`, starting at element
    /// `offset`; returns at once. The staging buffer's bytes are handed out again only once
    /// the copy is done.
    pub fn upload_staged<T: Element>(
        &self,
        dst: &mut impl DeviceViewMut<T>,
        offset: usize,
        staging: &mut PinnedStaging,
        bytes: usize,
    ) -> Result<(), CudaError> {
        let dst = dst.view_mut();
        let element = size_of::<T>();
        if !bytes.is_multiple_of(element) || bytes > staging.len() {
            return Err(CudaError::Invalid(format!(
                "a staged upload of {bytes} bytes from a {}-byte buffer into {}-byte elements",
                staging.len(),
                element
            )));
        }
        check_len(
            "staged upload destination",
            dst.len(),
            offset + bytes / element,
        )?;
        if bytes == 0 {
            return Ok(());
        }
        self.bind()?;
        let source = staging.bytes_mut()?;
        let address = dst.address() + (offset * element) as u64;
        // SAFETY: the destination range `offset..offset + bytes / element` lies inside the live
        // allocation behind `dst` (checked above; the view borrows it); the source is page-locked
        // memory owned by `staging`, which `bytes_mut` hands out only after the event recorded
        // below has completed, so it is not written while the copy reads it.
        unsafe { result::memcpy_htod_async(address, &source[..bytes], self.stream().cu_stream()) }
            .during("cuMemcpyHtoDAsync")?;
        staging
            .uploaded
            .record(self.stream())
            .during("cuEventRecord")
    }
}
