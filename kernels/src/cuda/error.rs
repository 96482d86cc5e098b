//! Typed errors of the CUDA layer. Driver errors are reported by their `CUresult` name and code
//! (never through `DriverError`'s `Debug`, which calls back into the driver).

use cudarc::driver::sys;

#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    #[error("no usable CUDA device: {0}")]
    NoDevice(String),
    #[error("CUDA {call} failed with {name} ({code})")]
    Driver {
        call: &'static str,
        code: u32,
        name: String,
    },
    #[error("cuBLAS {call} failed with {name} ({code})")]
    Blas {
        call: &'static str,
        code: u32,
        name: String,
    },
    #[error("NVRTC could not compile the kernels ({name}): {log}")]
    Compile { name: String, log: String },
    #[error("invalid kernel arguments: {0}")]
    Invalid(String),
}

impl CudaError {
    pub(crate) fn driver(call: &'static str, result: sys::CUresult) -> Self {
        // CUresult's Debug is its variant name; it does not call into the driver.
        Self::Driver {
            call,
            code: result as u32,
            name: format!("{result:?}"),
        }
    }
}

/// `?`-able conversion of cudarc's driver errors, tagged with the call that failed.
pub(crate) trait DriverResult<T> {
    fn during(self, call: &'static str) -> Result<T, CudaError>;
}

impl<T> DriverResult<T> for Result<T, cudarc::driver::DriverError> {
    fn during(self, call: &'static str) -> Result<T, CudaError> {
        self.map_err(|error| CudaError::driver(call, error.0))
    }
}

/// A count or size that must fit a kernel's `int` argument.
pub(crate) fn as_i32(value: usize, what: &str) -> Result<i32, CudaError> {
    i32::try_from(value).map_err(|_| CudaError::Invalid(format!("{what} = {value} exceeds i32")))
}

/// A grid dimension.
pub(crate) fn as_u32(value: usize, what: &str) -> Result<u32, CudaError> {
    u32::try_from(value).map_err(|_| CudaError::Invalid(format!("{what} = {value} exceeds u32")))
}
