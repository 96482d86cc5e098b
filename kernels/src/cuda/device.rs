//! One GPU: its context, the stream every kernel of the forward pass runs on, device memory and
//! host ↔ device copies. Opening checks that the driver, NVRTC and cuBLAS libraries can be loaded
//! before touching them, and turns a panic of cudarc's loader into [`CudaError::NoDevice`].

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaEvent, CudaStream, result, sys};

use super::error::{CudaError, DriverResult};
use super::graph::Graph;

/// A GPU ready for kernels: context (event tracking off, so graphs can capture), one stream.
pub struct GpuDevice {
    context: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    name: String,
    compute_capability: (i32, i32),
    multiprocessors: usize,
}

impl std::fmt::Debug for GpuDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuDevice")
            .field("name", &self.name)
            .field("compute_capability", &self.compute_capability)
            .field("multiprocessors", &self.multiprocessors)
            .finish_non_exhaustive()
    }
}

/// Runs `f`, turning a panic of cudarc's dynamic loader (a missing library or symbol) into an
/// error that names `what`.
pub(crate) fn no_panic<T>(
    what: &str,
    f: impl FnOnce() -> Result<T, CudaError>,
) -> Result<T, CudaError> {
    catch_unwind(AssertUnwindSafe(f))
        .unwrap_or_else(|_| Err(CudaError::NoDevice(format!("loading {what} panicked"))))
}

impl GpuDevice {
    /// Opens GPU `ordinal`. Fails (never panics) without a driver, a device, NVRTC or cuBLAS.
    pub fn open(ordinal: usize) -> Result<Self, CudaError> {
        // SAFETY: each check only tries to open a shared library; nothing is called in it.
        let present = unsafe {
            [
                (
                    "the CUDA driver (libcuda)",
                    cudarc::driver::sys::is_culib_present(),
                ),
                ("NVRTC (libnvrtc)", cudarc::nvrtc::sys::is_culib_present()),
                (
                    "cuBLAS (libcublas)",
                    cudarc::cublas::sys::is_culib_present(),
                ),
            ]
        };
        if let Some((missing, _)) = present.iter().find(|(_, found)| !found) {
            return Err(CudaError::NoDevice(format!("{missing} is not installed")));
        }
        no_panic("the CUDA driver", || {
            let context = CudaContext::new(ordinal).during("cuInit / cuDevicePrimaryCtxRetain")?;
            // SAFETY: nothing has been allocated in this context through cudarc yet; graph
            // capture fails with STREAM_CAPTURE_ISOLATION if cudarc records events on buffers.
            unsafe { context.disable_event_tracking() };
            let stream = context.new_stream().during("cuStreamCreate")?;
            let compute_capability = context
                .compute_capability()
                .during("cuDeviceGetAttribute(compute capability)")?;
            let multiprocessors = context
                .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
                .during("cuDeviceGetAttribute(multiprocessors)")?;
            let name = context.name().during("cuDeviceGetName")?;
            Ok(Self {
                context,
                stream,
                name,
                compute_capability,
                multiprocessors: usize::try_from(multiprocessors).unwrap_or(1).max(1),
            })
        })
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.context
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn compute_capability(&self) -> (i32, i32) {
        self.compute_capability
    }

    /// NVRTC's name of the device's architecture, e.g. `sm_90`.
    pub fn arch(&self) -> String {
        format!(
            "sm_{}{}",
            self.compute_capability.0, self.compute_capability.1
        )
    }

    pub fn multiprocessors(&self) -> usize {
        self.multiprocessors
    }

    /// Makes the context current on the calling thread (each thread that launches must).
    pub fn bind(&self) -> Result<(), CudaError> {
        self.context.bind_to_thread().during("cuCtxSetCurrent")
    }

    /// Free and total device memory in bytes.
    pub fn memory(&self) -> Result<(usize, usize), CudaError> {
        self.context.mem_get_info().during("cuMemGetInfo")
    }

    /// Waits for all work queued on the stream.
    pub fn synchronize(&self) -> Result<(), CudaError> {
        self.stream.synchronize().during("cuStreamSynchronize")
    }

    /// `bytes` of device memory (at least 256, so that even an empty buffer has an address).
    pub fn alloc(&self, bytes: usize) -> Result<DeviceBuffer, CudaError> {
        self.bind()?;
        let bytes = bytes.max(256);
        // SAFETY: a plain allocation; the buffer frees it on drop.
        let ptr = unsafe { result::malloc_sync(bytes) }.during("cuMemAlloc")?;
        Ok(DeviceBuffer {
            ptr,
            bytes,
            context: self.context.clone(),
        })
    }

    /// Copies `data` to device address `dst` (stream-ordered; `data` may be dropped on return).
    ///
    /// # Safety
    /// `dst` must address at least `size_of_val(data)` bytes of device memory.
    pub unsafe fn upload<T: Copy>(&self, dst: u64, data: &[T]) -> Result<(), CudaError> {
        if data.is_empty() {
            return Ok(());
        }
        self.bind()?;
        // SAFETY: per the contract; pageable host memory is staged before the call returns.
        unsafe { result::memcpy_htod_async(dst, data, self.stream.cu_stream()) }
            .during("cuMemcpyHtoDAsync")
    }

    /// Copies device memory at `src` into `out`, after all work queued before it.
    ///
    /// # Safety
    /// `src` must address at least `size_of_val(out)` readable bytes of device memory, and `T`
    /// must be valid for any bit pattern.
    pub unsafe fn download<T: Copy>(&self, src: u64, out: &mut [T]) -> Result<(), CudaError> {
        if out.is_empty() {
            return Ok(());
        }
        self.bind()?;
        // SAFETY: per the contract.
        unsafe { result::memcpy_dtoh_async(out, src, self.stream.cu_stream()) }
            .during("cuMemcpyDtoHAsync")?;
        self.synchronize()
    }

    /// Sets `bytes` bytes at `dst` to `value` (used to poison outputs in checks).
    ///
    /// # Safety
    /// `dst` must address at least `bytes` bytes of device memory.
    pub unsafe fn fill_bytes(&self, dst: u64, value: u8, bytes: usize) -> Result<(), CudaError> {
        self.bind()?;
        // SAFETY: per the contract.
        unsafe { result::memset_d8_async(dst, value, bytes, self.stream.cu_stream()) }
            .during("cuMemsetD8Async")
    }

    /// Device-to-device copy (the copy-bandwidth ceiling is measured with it).
    ///
    /// # Safety
    /// Both ranges must be `bytes` long, valid and not overlapping.
    pub unsafe fn copy(&self, dst: u64, src: u64, bytes: usize) -> Result<(), CudaError> {
        self.bind()?;
        // SAFETY: per the contract.
        unsafe { result::memcpy_dtod_async(dst, src, bytes, self.stream.cu_stream()) }
            .during("cuMemcpyDtoDAsync")
    }

    /// Starts capturing the stream's work into a graph (this thread's calls only).
    pub fn begin_capture(&self) -> Result<(), CudaError> {
        self.stream
            .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .during("cuStreamBeginCapture")
    }

    /// Ends a capture and instantiates what was captured.
    pub fn end_capture(&self) -> Result<Graph, CudaError> {
        let graph = self
            .stream
            .end_capture(sys::CUgraphInstantiate_flags(0))
            .during("cuStreamEndCapture / cuGraphInstantiate")?;
        graph
            .map(Graph::new)
            .ok_or_else(|| CudaError::Invalid("the captured graph is empty".into()))
    }

    /// A pair of timing events on the stream.
    pub fn timer(&self) -> Result<GpuTimer, CudaError> {
        let flags = Some(sys::CUevent_flags::CU_EVENT_DEFAULT);
        Ok(GpuTimer {
            start: self.context.new_event(flags).during("cuEventCreate")?,
            end: self.context.new_event(flags).during("cuEventCreate")?,
            stream: self.stream.clone(),
        })
    }
}

/// Device time between two points of the stream.
pub struct GpuTimer {
    start: CudaEvent,
    end: CudaEvent,
    stream: Arc<CudaStream>,
}

impl GpuTimer {
    pub fn start(&self) -> Result<(), CudaError> {
        self.start.record(&self.stream).during("cuEventRecord")
    }

    /// Records the end, waits for it and returns the milliseconds since `start`.
    pub fn stop_ms(&self) -> Result<f32, CudaError> {
        self.end.record(&self.stream).during("cuEventRecord")?;
        self.end.synchronize().during("cuEventSynchronize")?;
        self.start
            .elapsed_ms(&self.end)
            .during("cuEventElapsedTime")
    }
}

/// Device memory freed on drop.
pub struct DeviceBuffer {
    ptr: u64,
    bytes: usize,
    context: Arc<CudaContext>,
}

impl std::fmt::Debug for DeviceBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceBuffer({:#x}, {} bytes)", self.ptr, self.bytes)
    }
}

impl DeviceBuffer {
    /// The first byte's device address.
    pub fn ptr(&self) -> u64 {
        self.ptr
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The address `offset` bytes in, checked against the buffer's size.
    pub fn at(&self, offset: usize) -> Result<u64, CudaError> {
        if offset > self.bytes {
            return Err(CudaError::Invalid(format!(
                "offset {offset} is past the end of a {}-byte buffer",
                self.bytes
            )));
        }
        Ok(self.ptr + offset as u64)
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        // Errors cannot be returned from drop; a failed free leaks device memory only.
        if self.context.bind_to_thread().is_ok() {
            // SAFETY: our allocation, freed once; the stream's users synchronised before drop.
            let _ = unsafe { result::free_sync(self.ptr) };
        }
    }
}
