//! The one place kernels are launched. A [`Kernel<S>`] is a compiled `extern "C" __global__`
//! function whose parameter list `S` transcribes its C prototype in Rust types — [`In<T>`] for
//! `const T*`, [`Out<T>`] for `T*`, [`Nullable<T>`] for a `const T*` that may be null
//! ([`NullableOut<T>`]: a `T*`), `i32` for
//! `int`, `i64` for `long long`, `u64` for `u64`, `f32` for `float` — so every launch is
//! type-checked against the prototype: a wrong count, order or element type of arguments does
//! not compile, and pointers can only come from typed views (which carry their lengths).
//!
//! Launches go through `cuLaunchKernelEx`, so that a launch can carry the
//! programmatic-dependent-launch attribute (sm_90 and later): the kernel may then start while the
//! previous kernel on the stream is still running. Every kernel in `cu/` waits
//! (`griddepcontrol.wait`) before it touches memory that another kernel writes, so only its
//! prologue (a GEMV's weight prefetch, block scheduling) overlaps the previous kernel's tail.
//! Stream capture turns the attribute into programmatic edges of the graph.
//!
//! Must not: check sizes (each wrapper does, against what its kernel indexes).

use std::ffi::c_void;
use std::marker::PhantomData;

use cudarc::driver::sys;
use cudarc::driver::{CudaFunction, CudaModule, LaunchConfig};

use super::error::{CudaError, DriverResult};
use super::kernels::Kernels;
use super::memory::{DeviceSlice, DeviceSliceMut, Element};

/// A `const T*` parameter: the kernel reads a [`DeviceSlice`].
pub(crate) struct In<T>(PhantomData<T>);
/// A `T*` parameter: the kernel writes a [`DeviceSliceMut`].
pub(crate) struct Out<T>(PhantomData<T>);
/// A `const T*` parameter that may be null (the kernel then does without it).
pub(crate) struct Nullable<T>(PhantomData<T>);
/// A `T*` parameter that may be null (the kernel then writes nothing there).
pub(crate) struct NullableOut<T>(PhantomData<T>);

/// One parameter's value as the driver reads it: `kernelParams[i]` points at it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Value {
    U64(u64),
    I64(i64),
    I32(i32),
    F32(f32),
}

impl Value {
    fn as_param(&mut self) -> *mut c_void {
        match self {
            Self::U64(v) => std::ptr::from_mut(v).cast(),
            Self::I64(v) => std::ptr::from_mut(v).cast(),
            Self::I32(v) => std::ptr::from_mut(v).cast(),
            Self::F32(v) => std::ptr::from_mut(v).cast(),
        }
    }
}

/// A parameter type of a kernel prototype and the Rust argument that fills it.
pub(crate) trait Param {
    type Arg<'a>;
    fn value(arg: &Self::Arg<'_>) -> Value;
}

impl<T: Element> Param for In<T> {
    type Arg<'a> = DeviceSlice<'a, T>;
    fn value(arg: &DeviceSlice<'_, T>) -> Value {
        Value::U64(arg.address())
    }
}

impl<T: Element> Param for Out<T> {
    type Arg<'a> = DeviceSliceMut<'a, T>;
    fn value(arg: &DeviceSliceMut<'_, T>) -> Value {
        Value::U64(arg.address())
    }
}

impl<T: Element> Param for Nullable<T> {
    type Arg<'a> = Option<DeviceSlice<'a, T>>;
    fn value(arg: &Option<DeviceSlice<'_, T>>) -> Value {
        Value::U64(arg.map_or(0, |slice| slice.address()))
    }
}

impl<T: Element> Param for NullableOut<T> {
    type Arg<'a> = Option<DeviceSliceMut<'a, T>>;
    fn value(arg: &Option<DeviceSliceMut<'_, T>>) -> Value {
        Value::U64(arg.as_ref().map_or(0, DeviceSliceMut::address))
    }
}

macro_rules! scalar_param {
    ($($t:ty => $variant:ident),*) => {$(
        impl Param for $t {
            type Arg<'a> = $t;
            fn value(arg: &$t) -> Value {
                Value::$variant(*arg)
            }
        }
    )*};
}
scalar_param!(u64 => U64, i64 => I64, i32 => I32, f32 => F32);

/// A kernel's whole parameter list: a tuple of [`Param`]s, filled by a tuple of their arguments.
pub(crate) trait Signature {
    type Args<'a>;
    fn values(args: &Self::Args<'_>) -> Vec<Value>;
}

macro_rules! signature {
    ($($p:ident $i:tt),+) => {
        impl<$($p: Param),+> Signature for ($($p,)+) {
            type Args<'a> = ($($p::Arg<'a>,)+);
            fn values(args: &Self::Args<'_>) -> Vec<Value> {
                vec![$($p::value(&args.$i)),+]
            }
        }
    };
}
signature!(A 0, B 1, C 2);
signature!(A 0, B 1, C 2, D 3);
signature!(A 0, B 1, C 2, D 3, E 4);
signature!(A 0, B 1, C 2, D 3, E 4, F 5);
signature!(A 0, B 1, C 2, D 3, E 4, F 5, G 6);
signature!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7);
signature!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8);
signature!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8, J 9, K 10, L 11);
signature!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8, J 9, K 10, L 11, M 12);
signature!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8, J 9, K 10, L 11, M 12, N 13);
signature!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8, J 9, K 10, L 11, M 12, N 13, O 14, P 15, Q 16);

/// A compiled kernel whose C prototype is `S`.
pub(crate) struct Kernel<S> {
    function: CudaFunction,
    name: &'static str,
    signature: PhantomData<fn(S)>,
}

impl<S: Signature> Kernel<S> {
    /// Looks `name` up in `module`. `S` must transcribe the prototype of `name` in `cu/`: the
    /// claim [`Kernels::queue`] rests on, written once per kernel (the aliases in `kernels.rs`).
    pub(crate) fn load(
        module: &std::sync::Arc<CudaModule>,
        name: &'static str,
    ) -> Result<Self, CudaError> {
        Ok(Self {
            function: module.load_function(name).during("cuModuleGetFunction")?,
            name,
            signature: PhantomData,
        })
    }
}

/// How a kernel is launched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Launch {
    /// As a programmatic dependent of the previous kernel, where enabled.
    Dependent,
    /// Cooperatively: every block resident at once, or the launch fails.
    Cooperative,
}

impl Kernels {
    /// Queues `kernel` with `args` on the device's stream, as a programmatic dependent of the
    /// previous kernel where enabled: the launch helper every kernel wrapper goes through.
    ///
    /// # Safety
    /// Every element the kernel touches for this grid and these arguments lies inside the views
    /// passed: the wrapper checks the views' lengths against the extents its kernel indexes
    /// (rows × widths from the shape arguments; indices the kernel reads from device memory come
    /// as [`Indices`](super::Indices) or in a [`DeviceBatch`](super::DeviceBatch), whose bounds
    /// are part of those types).
    pub(crate) unsafe fn queue<S: Signature>(
        &self,
        kernel: &Kernel<S>,
        cfg: LaunchConfig,
        args: S::Args<'_>,
    ) -> Result<(), CudaError> {
        // SAFETY: this function's contract.
        unsafe { self.launch(kernel, cfg, args, Launch::Dependent) }
    }

    /// [`Kernels::queue`] for a kernel whose blocks wait for each other (grid barriers): a
    /// cooperative launch, which the driver refuses when the grid cannot be resident at once
    /// (the barrier would never release) rather than letting it hang.
    ///
    /// # Safety
    /// As [`Kernels::queue`].
    pub(crate) unsafe fn queue_cooperative<S: Signature>(
        &self,
        kernel: &Kernel<S>,
        cfg: LaunchConfig,
        args: S::Args<'_>,
    ) -> Result<(), CudaError> {
        // SAFETY: this function's contract.
        unsafe { self.launch(kernel, cfg, args, Launch::Cooperative) }
    }

    /// The launch itself (`queue`'s contract).
    unsafe fn launch<S: Signature>(
        &self,
        kernel: &Kernel<S>,
        cfg: LaunchConfig,
        args: S::Args<'_>,
        how: Launch,
    ) -> Result<(), CudaError> {
        let mut values = S::values(&args);
        let mut params: Vec<*mut c_void> = values.iter_mut().map(Value::as_param).collect();
        // SAFETY: a zeroed attribute is a valid plain-data value; its id and value are set next.
        let mut attribute: sys::CUlaunchAttribute = unsafe { std::mem::zeroed() };
        let attributes = match how {
            Launch::Dependent => {
                attribute.id =
                    sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
                attribute.value.programmaticStreamSerializationAllowed = 1;
                u32::from(self.dependent_launch)
            }
            Launch::Cooperative => {
                attribute.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_COOPERATIVE;
                attribute.value.cooperative = 1;
                1
            }
        };
        let config = sys::CUlaunchConfig {
            gridDimX: cfg.grid_dim.0,
            gridDimY: cfg.grid_dim.1,
            gridDimZ: cfg.grid_dim.2,
            blockDimX: cfg.block_dim.0,
            blockDimY: cfg.block_dim.1,
            blockDimZ: cfg.block_dim.2,
            sharedMemBytes: cfg.shared_mem_bytes,
            hStream: self.stream.cu_stream(),
            attrs: &mut attribute,
            numAttrs: attributes,
        };
        // SAFETY: `params` holds one pointer per parameter of the kernel's prototype, in order,
        // each to a value of that parameter's C type (`S` transcribes the prototype and `args`
        // has type `S::Args`); `values`, `params` and `config` live across the call, which copies
        // them. The kernel stays inside the views (this function's contract); the views borrow
        // live buffers, and a buffer is freed only after the stream's work is done.
        let result = unsafe {
            sys::cuLaunchKernelEx(
                &config,
                kernel.function.cu_function(),
                params.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        };
        match result {
            sys::CUresult::CUDA_SUCCESS => Ok(()),
            error => Err(CudaError::driver(kernel.name, error)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::memory::fake_views;

    /// Reads a parameter back as the driver does: `size_of` the C type from the pointer.
    fn read<T: Copy>(param: *mut c_void) -> T {
        // SAFETY: the test passes the type the value was stored as.
        unsafe { *param.cast::<T>() }
    }

    #[test]
    fn parameters_point_at_values_of_their_c_types_in_order() {
        let (input, _) = fake_views::<u32>(0xabc0, 4);
        let (_, output) = fake_views::<f32>(0xdef0, 4);
        type S = (In<u32>, Out<f32>, Nullable<u32>, i32, i64, u64, f32);
        let args = (input, output, None, -7i32, 1i64 << 40, u64::MAX, 0.5f32);
        let mut values = S::values(&args);
        let params: Vec<*mut c_void> = values.iter_mut().map(Value::as_param).collect();
        assert_eq!(params.len(), 7);
        assert_eq!(read::<u64>(params[0]), 0xabc0);
        assert_eq!(read::<u64>(params[1]), 0xdef0);
        assert_eq!(
            read::<u64>(params[2]),
            0,
            "a missing nullable pointer is null"
        );
        assert_eq!(read::<i32>(params[3]), -7);
        assert_eq!(read::<i64>(params[4]), 1 << 40);
        assert_eq!(read::<u64>(params[5]), u64::MAX);
        assert_eq!(read::<f32>(params[6]), 0.5);
    }
}
