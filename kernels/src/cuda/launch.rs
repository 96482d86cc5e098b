//! Kernel launches through `cuLaunchKernelEx`, so that a launch can carry the
//! programmatic-dependent-launch attribute (sm_90 and later): the kernel may then start while the
//! previous kernel on the stream is still running. Every kernel in `cu/` waits
//! (`griddepcontrol.wait`) before it touches memory that another kernel writes, so only its
//! prologue (a GEMV's weight prefetch, block scheduling) overlaps the previous kernel's tail.
//! Stream capture turns the attribute into programmatic edges of the graph.

use std::ffi::c_void;
use std::marker::PhantomData;

use cudarc::driver::sys;
use cudarc::driver::{CudaFunction, CudaStream, LaunchConfig};

use super::error::CudaError;

/// A kernel argument passed by value: the scalar types the kernels take.
pub(crate) trait KernelArg: Copy {}
impl KernelArg for u64 {}
impl KernelArg for i64 {}
impl KernelArg for i32 {}
impl KernelArg for f32 {}

/// One launch's function and arguments; the arguments are borrowed until it is launched.
pub(crate) struct Launch<'a> {
    function: sys::CUfunction,
    args: Vec<*mut c_void>,
    borrowed: PhantomData<&'a ()>,
}

impl<'a> Launch<'a> {
    pub(crate) fn new(function: &CudaFunction) -> Self {
        Self {
            function: function.cu_function(),
            args: Vec::with_capacity(16),
            borrowed: PhantomData,
        }
    }

    pub(crate) fn arg<T: KernelArg>(&mut self, value: &'a T) -> &mut Self {
        self.args.push(std::ptr::from_ref(value).cast_mut().cast());
        self
    }

    /// Queues the kernel on `stream`, as a programmatic dependent of the previous kernel when
    /// `dependent` is set.
    ///
    /// # Safety
    /// The arguments match the kernel's parameters in number, order and type, and every pointer
    /// among them addresses what the kernel reads and writes.
    pub(crate) unsafe fn launch(
        &mut self,
        stream: &CudaStream,
        cfg: LaunchConfig,
        dependent: bool,
        name: &'static str,
    ) -> Result<(), CudaError> {
        // SAFETY: a zeroed attribute is a valid plain-data value; its id and value are set next.
        let mut attribute: sys::CUlaunchAttribute = unsafe { std::mem::zeroed() };
        attribute.id =
            sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
        attribute.value.programmaticStreamSerializationAllowed = 1;
        let config = sys::CUlaunchConfig {
            gridDimX: cfg.grid_dim.0,
            gridDimY: cfg.grid_dim.1,
            gridDimZ: cfg.grid_dim.2,
            blockDimX: cfg.block_dim.0,
            blockDimY: cfg.block_dim.1,
            blockDimZ: cfg.block_dim.2,
            sharedMemBytes: cfg.shared_mem_bytes,
            hStream: stream.cu_stream(),
            attrs: &mut attribute,
            numAttrs: u32::from(dependent),
        };
        // SAFETY: `config` and the argument pointers live across the call; the caller vouches
        // for the arguments.
        let result = unsafe {
            sys::cuLaunchKernelEx(
                &config,
                self.function,
                self.args.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        };
        match result {
            sys::CUresult::CUDA_SUCCESS => Ok(()),
            error => Err(CudaError::driver(name, error)),
        }
    }
}
