//! One GPU: its context, the stream every kernel of the forward pass runs on, device memory and
//! host ↔ device copies. Opening checks that the driver, NVRTC and cuBLAS libraries can be loaded
//! before touching them, and turns a panic of cudarc's loader into [`CudaError::NoDevice`].

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaEvent, CudaStream, result, sys};

use super::error::{CudaError, DriverResult};
use super::graph::Graph;
use super::memory::{DeviceBuffer, DeviceView, DeviceViewMut, Element, check_len};

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

    /// `len` elements of device memory (uninitialised: a kernel or an upload writes them).
    pub fn alloc<T: Element>(&self, len: usize) -> Result<DeviceBuffer<T>, CudaError> {
        self.bind()?;
        DeviceBuffer::alloc(&self.context, len)
    }

    /// A new buffer holding a copy of `data`.
    pub fn upload_new<T: Element>(&self, data: &[T]) -> Result<DeviceBuffer<T>, CudaError> {
        let mut buffer = self.alloc(data.len())?;
        self.upload(&mut buffer, data)?;
        Ok(buffer)
    }

    /// Fails unless the device side of a copy (`len` elements) holds the `count` copied; binds
    /// the context; whether there is anything to copy.
    fn ready_to_copy(&self, what: &str, len: usize, count: usize) -> Result<bool, CudaError> {
        check_len(what, len, count)?;
        self.bind()?;
        Ok(count > 0)
    }

    /// Copies `data` into the first elements of `dst` (stream-ordered; `data` may be dropped on
    /// return).
    pub fn upload<T: Element>(
        &self,
        dst: &mut impl DeviceViewMut<T>,
        data: &[T],
    ) -> Result<(), CudaError> {
        let dst = dst.view_mut();
        if !self.ready_to_copy("upload destination", dst.len(), data.len())? {
            return Ok(());
        }
        // SAFETY: `dst` is a live allocation of at least `data.len()` elements of `T` (checked
        // above; the view borrows its buffer); pageable host memory is staged before the call
        // returns, so `data` need not outlive it.
        unsafe { result::memcpy_htod_async(dst.address(), data, self.stream.cu_stream()) }
            .during("cuMemcpyHtoDAsync")
    }

    /// Copies the first `out.len()` elements of `src` into `out`, after all work queued before.
    pub fn download<T: Element>(
        &self,
        src: &impl DeviceView<T>,
        out: &mut [T],
    ) -> Result<(), CudaError> {
        let src = src.view();
        if !self.ready_to_copy("download source", src.len(), out.len())? {
            return Ok(());
        }
        // SAFETY: `src` is a live allocation of at least `out.len()` elements (checked above);
        // `T` is an `Element`, valid for whatever bits the device holds; the synchronisation
        // below completes the copy before `out` is used again.
        unsafe { result::memcpy_dtoh_async(out, src.address(), self.stream.cu_stream()) }
            .during("cuMemcpyDtoHAsync")?;
        self.synchronize()
    }

    /// Sets every byte of `dst` to `value` (used to poison outputs in checks).
    pub fn fill_bytes<T: Element>(
        &self,
        dst: &mut impl DeviceViewMut<T>,
        value: u8,
    ) -> Result<(), CudaError> {
        let dst = dst.view_mut();
        self.bind()?;
        // SAFETY: the range is exactly the view's elements, inside a live allocation.
        unsafe {
            result::memset_d8_async(
                dst.address(),
                value,
                dst.len() * size_of::<T>(),
                self.stream.cu_stream(),
            )
        }
        .during("cuMemsetD8Async")
    }

    /// Device-to-device copy of all of `src` into the start of `dst` (the copy-bandwidth ceiling
    /// is measured with it).
    pub fn copy<T: Element>(
        &self,
        dst: &mut impl DeviceViewMut<T>,
        src: &impl DeviceView<T>,
    ) -> Result<(), CudaError> {
        let (dst, src) = (dst.view_mut(), src.view());
        check_len("copy destination", dst.len(), src.len())?;
        self.bind()?;
        // SAFETY: both ranges lie in live allocations (lengths checked above) and cannot overlap:
        // `dst` is borrowed mutably while `src` is borrowed, so they are different buffers.
        unsafe {
            result::memcpy_dtod_async(
                dst.address(),
                src.address(),
                src.len() * size_of::<T>(),
                self.stream.cu_stream(),
            )
        }
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
