//! The CUDA backend (feature `cuda`): the region is one `cuMemAddressReserve`; the pool is
//! `cuMemCreate` handles made up front; mapping is `cuMemMap` per page plus one `cuMemSetAccess`
//! over the whole run (its cost is per call, not per byte); unmapping is `cuMemUnmap`, and the
//! handle goes back to the pool. `cuMemRelease` and `cuMemAddressFree` run only on drop.
//!
//! The driver is loaded at run time (cudarc `dynamic-loading`): [`cuda_context`] checks for the
//! library first and turns a panic of context creation into an error. Every driver call's result
//! is checked and becomes a typed [`KvError::Driver`]; nothing exits or panics.
//!
//! A cached prefix page is one handle mapped into several places of the reservation (`cuMemMap`
//! of the same handle at several addresses). For copies between pool pages, every handle is
//! also mapped once into a second reservation, the *pool view* (made only when prefix caching
//! is on: it costs one `cuMemMap` per page at start-up and no memory); a copy is a
//! device-to-device `cuMemcpyDtoDAsync` on the backend's own stream, synchronized before the
//! job counts as done.
//!
//! Must not: track what is mapped (the mapper's page table does).

use std::sync::Arc;

use cudarc::driver::{CudaContext, sys};

use super::{PageBackend, PageId};
use crate::kv::KvError;

fn driver_error(call: &'static str, result: sys::CUresult) -> KvError {
    // The enum's own Debug is its variant name; it does not call into the driver.
    KvError::Driver {
        call,
        code: result as u32,
        name: format!("{result:?}"),
    }
}

pub(crate) fn check(call: &'static str, result: sys::CUresult) -> Result<(), KvError> {
    if result == sys::CUresult::CUDA_SUCCESS {
        Ok(())
    } else {
        Err(driver_error(call, result))
    }
}

/// The primary context of GPU `ordinal`, or an error when there is no usable CUDA driver or
/// device (never a panic, even when `libcuda` is missing).
pub fn cuda_context(ordinal: usize) -> Result<Arc<CudaContext>, KvError> {
    // SAFETY: only tries to open the library; it does not call into it.
    if !unsafe { sys::is_culib_present() } {
        return Err(KvError::NoCuda(
            "the CUDA driver library (libcuda) is not installed".into(),
        ));
    }
    match std::panic::catch_unwind(|| CudaContext::new(ordinal)) {
        Ok(Ok(context)) => Ok(context),
        Ok(Err(error)) => Err(driver_error("cuInit / cuDevicePrimaryCtxRetain", error.0)),
        Err(_) => Err(KvError::NoCuda("loading the CUDA driver panicked".into())),
    }
}

fn device_allocation(ordinal: usize) -> Result<sys::CUmemAllocationProp, KvError> {
    let id =
        i32::try_from(ordinal).map_err(|_| KvError::NoCuda(format!("device ordinal {ordinal}")))?;
    Ok(sys::CUmemAllocationProp {
        type_: sys::CUmemAllocationType::CU_MEM_ALLOCATION_TYPE_PINNED,
        requestedHandleTypes: sys::CUmemAllocationHandleType::CU_MEM_HANDLE_TYPE_NONE,
        location: sys::CUmemLocation {
            type_: sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE,
            id,
        },
        win32HandleMetaData: std::ptr::null_mut(),
        allocFlags: sys::CUmemAllocationProp_st__bindgen_ty_1 {
            compressionType: 0,
            gpuDirectRDMACapable: 0,
            usage: 0,
            reserved: [0; 4],
        },
    })
}

/// A stream of the backend's own (raw, so that the model's streams keep their mode).
struct CopyStream(sys::CUstream);

// SAFETY: a CUDA stream handle may be used from any thread that binds its context; the mapper
// thread is the only user.
unsafe impl Send for CopyStream {}

/// Every pool handle mapped once, page `i` at `base + i × page_bytes`, and the stream copies
/// between them run on.
struct PoolView {
    base: sys::CUdeviceptr,
    mapped: usize,
    stream: CopyStream,
}

/// A KV region in GPU memory.
pub struct CudaBackend {
    context: Arc<CudaContext>,
    base: sys::CUdeviceptr,
    virtual_bytes: usize,
    page_bytes: usize,
    handles: Vec<sys::CUmemGenericAllocationHandle>,
    access: sys::CUmemAccessDesc,
    view: Option<PoolView>,
}

impl std::fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaBackend")
            .field("base", &format_args!("{:#x}", self.base))
            .field("virtual_bytes", &self.virtual_bytes)
            .field("pool_pages", &self.handles.len())
            .finish_non_exhaustive()
    }
}

impl CudaBackend {
    /// Reserves `virtual_bytes` of device address space and allocates `pool_pages` handles;
    /// with `pool_view`, maps them all into a view for copies between pool pages.
    pub fn new(
        context: Arc<CudaContext>,
        virtual_bytes: usize,
        page_bytes: usize,
        pool_pages: usize,
        pool_view: bool,
    ) -> Result<Self, KvError> {
        context
            .bind_to_thread()
            .map_err(|error| driver_error("cuCtxSetCurrent", error.0))?;
        let prop = device_allocation(context.ordinal())?;
        let mut granularity = 0usize;
        let option = sys::CUmemAllocationGranularity_flags::CU_MEM_ALLOC_GRANULARITY_MINIMUM;
        // SAFETY: valid out-pointer and property struct.
        check("cuMemGetAllocationGranularity", unsafe {
            sys::cuMemGetAllocationGranularity(&mut granularity, &prop, option)
        })?;
        if granularity == 0 || !page_bytes.is_multiple_of(granularity) {
            return Err(KvError::InvalidConfig(format!(
                "page size {page_bytes} is not a multiple of the device's mapping granularity {granularity}"
            )));
        }
        let mut base: sys::CUdeviceptr = 0;
        // SAFETY: valid out-pointer; the driver picks the address.
        check("cuMemAddressReserve", unsafe {
            sys::cuMemAddressReserve(&mut base, virtual_bytes, page_bytes, 0, 0)
        })?;
        let access = sys::CUmemAccessDesc {
            location: prop.location,
            flags: sys::CUmemAccess_flags::CU_MEM_ACCESS_FLAGS_PROT_READWRITE,
        };
        // From here on, drop releases what was made, also on a failure below.
        let mut backend = Self {
            context,
            base,
            virtual_bytes,
            page_bytes,
            handles: Vec::with_capacity(pool_pages),
            access,
            view: None,
        };
        for _ in 0..pool_pages {
            let mut handle: sys::CUmemGenericAllocationHandle = 0;
            // SAFETY: valid out-pointer and property struct.
            check("cuMemCreate", unsafe {
                sys::cuMemCreate(&mut handle, page_bytes, &prop, 0)
            })?;
            backend.handles.push(handle);
        }
        if pool_view {
            backend.map_pool_view()?;
        }
        Ok(backend)
    }

    /// Maps every handle into a reservation of its own (page `i` at offset `i × page_bytes`)
    /// and makes the copy stream. On error drop releases what was made.
    fn map_pool_view(&mut self) -> Result<(), KvError> {
        let bytes = self.handles.len() * self.page_bytes;
        let mut stream: sys::CUstream = std::ptr::null_mut();
        let flags = sys::CUstream_flags::CU_STREAM_NON_BLOCKING as u32;
        // SAFETY: valid out-pointer; the context is bound to this thread.
        check("cuStreamCreate", unsafe {
            sys::cuStreamCreate(&mut stream, flags)
        })?;
        let mut base: sys::CUdeviceptr = 0;
        // SAFETY: valid out-pointer; the driver picks the address.
        let reserved = check("cuMemAddressReserve (pool view)", unsafe {
            sys::cuMemAddressReserve(&mut base, bytes, self.page_bytes, 0, 0)
        });
        let view = self.view.insert(PoolView {
            base: if reserved.is_ok() { base } else { 0 },
            mapped: 0,
            stream: CopyStream(stream),
        });
        reserved?;
        for (index, &handle) in self.handles.iter().enumerate() {
            let at = view.base + (index * self.page_bytes) as u64;
            // SAFETY: a page of the view's reservation, unmapped, and a live handle.
            check("cuMemMap (pool view)", unsafe {
                sys::cuMemMap(at, self.page_bytes, 0, handle, 0)
            })?;
            view.mapped += 1;
        }
        // SAFETY: the whole view was just mapped; one valid descriptor.
        check("cuMemSetAccess (pool view)", unsafe {
            sys::cuMemSetAccess(view.base, bytes, &self.access, 1)
        })
    }

    fn check_range(&self, offset: usize, count: usize) -> Result<(), KvError> {
        let in_range = count
            .checked_mul(self.page_bytes)
            .and_then(|bytes| bytes.checked_add(offset))
            .is_some_and(|end| end <= self.virtual_bytes);
        if !offset.is_multiple_of(self.page_bytes) || !in_range {
            return Err(KvError::Backend(format!(
                "page range at byte {offset} (+{count} pages) is outside the {}-byte region or not page-aligned",
                self.virtual_bytes
            )));
        }
        Ok(())
    }

    fn address(&self, offset: usize, page: usize) -> sys::CUdeviceptr {
        self.base + (offset + page * self.page_bytes) as u64
    }

    fn unmap_pages(&self, offset: usize, count: usize) -> Result<(), KvError> {
        let mut first_error = Ok(());
        for page in 0..count {
            // SAFETY: the address is a page of our reservation that the mapper recorded as mapped.
            let result = check("cuMemUnmap", unsafe {
                sys::cuMemUnmap(self.address(offset, page), self.page_bytes)
            });
            first_error = first_error.and(result);
        }
        first_error
    }
}

impl PageBackend for CudaBackend {
    fn name(&self) -> &'static str {
        "cuda-vmm"
    }

    fn base_address(&self) -> usize {
        self.base as usize
    }

    fn attach_thread(&self) -> Result<(), KvError> {
        self.context
            .bind_to_thread()
            .map_err(|error| driver_error("cuCtxSetCurrent", error.0))
    }

    fn map_run(&mut self, offset: usize, pages: &[PageId]) -> Result<(), KvError> {
        self.check_range(offset, pages.len())?;
        let mut mapped = 0;
        let mut result = Ok(());
        for &page in pages {
            let Some(&handle) = self.handles.get(page as usize) else {
                result = Err(KvError::Backend(format!(
                    "page {page} is not in the {}-page pool",
                    self.handles.len()
                )));
                break;
            };
            // SAFETY: a page of our reservation, unmapped (the mapper checked), and a live handle.
            result = check("cuMemMap", unsafe {
                sys::cuMemMap(self.address(offset, mapped), self.page_bytes, 0, handle, 0)
            });
            if result.is_err() {
                break;
            }
            mapped += 1;
        }
        if result.is_ok() && mapped > 0 {
            // One access call over the whole run: it costs about as much as one page.
            // SAFETY: the range was just mapped; one valid descriptor.
            result = check("cuMemSetAccess", unsafe {
                sys::cuMemSetAccess(
                    self.address(offset, 0),
                    mapped * self.page_bytes,
                    &self.access,
                    1,
                )
            });
        }
        if result.is_err() && mapped > 0 {
            // Best effort: the original error is the one worth reporting.
            let _ = self.unmap_pages(offset, mapped);
        }
        result
    }

    fn unmap_run(&mut self, offset: usize, count: usize) -> Result<(), KvError> {
        self.check_range(offset, count)?;
        self.unmap_pages(offset, count)
    }

    fn copy_pages(&mut self, from: &[PageId], to: &[PageId], bytes: usize) -> Result<(), KvError> {
        let Some(view) = &self.view else {
            return Err(KvError::Backend(
                "page copies need the pool view (made when prefix caching is on)".into(),
            ));
        };
        let in_pool = |page: &PageId| (*page as usize) < self.handles.len();
        if from.len() != to.len() || bytes > self.page_bytes || !from.iter().chain(to).all(in_pool)
        {
            return Err(KvError::Backend(format!(
                "copy of {bytes} bytes from pool pages {from:?} to {to:?} is outside the \
                 {}-page pool",
                self.handles.len()
            )));
        }
        let at = |page: PageId| view.base + (page as usize * self.page_bytes) as u64;
        for (&source, &target) in from.iter().zip(to) {
            // SAFETY: both ranges lie inside the mapped pool view; distinct pages (checked by
            // the mapper's page table) do not overlap.
            check("cuMemcpyDtoDAsync", unsafe {
                sys::cuMemcpyDtoDAsync_v2(at(target), at(source), bytes, view.stream.0)
            })?;
        }
        // SAFETY: our own stream.
        check("cuStreamSynchronize", unsafe {
            sys::cuStreamSynchronize(view.stream.0)
        })
    }
}

impl Drop for CudaBackend {
    fn drop(&mut self) {
        if let Err(error) = self.attach_thread() {
            tracing::warn!(%error, "cannot bind the CUDA context to release the KV region");
            return;
        }
        if let Some(view) = self.view.take() {
            for index in 0..view.mapped {
                let at = view.base + (index * self.page_bytes) as u64;
                // SAFETY: a page of the view we mapped.
                if let Err(error) = check("cuMemUnmap (pool view)", unsafe {
                    sys::cuMemUnmap(at, self.page_bytes)
                }) {
                    tracing::warn!(%error, "unmapping the KV pool view failed");
                }
            }
            let bytes = self.handles.len() * self.page_bytes;
            // SAFETY: the view's reservation, nothing mapped in it any more.
            if view.base != 0
                && let Err(error) = check("cuMemAddressFree (pool view)", unsafe {
                    sys::cuMemAddressFree(view.base, bytes)
                })
            {
                tracing::warn!(%error, "freeing the KV pool view reservation failed");
            }
            // SAFETY: our stream, with no work left (every copy was synchronized).
            if let Err(error) = check("cuStreamDestroy", unsafe {
                sys::cuStreamDestroy_v2(view.stream.0)
            }) {
                tracing::warn!(%error, "destroying the KV copy stream failed");
            }
        }
        for &handle in &self.handles {
            // SAFETY: a handle we created; the mapper unmapped every page before dropping us.
            if let Err(error) = check("cuMemRelease", unsafe { sys::cuMemRelease(handle) }) {
                tracing::warn!(%error, "releasing a KV page handle failed");
            }
        }
        // SAFETY: the reservation we made, with nothing mapped in it any more.
        if let Err(error) = check("cuMemAddressFree", unsafe {
            sys::cuMemAddressFree(self.base, self.virtual_bytes)
        }) {
            tracing::warn!(%error, "freeing the KV address reservation failed");
        }
    }
}
