//! CUDA graphs: a captured run of launches replayed with one call. Kernel arguments are frozen at
//! capture, so what changes between replays must live in device memory the graph reads.

use cudarc::driver::CudaGraph;

use super::error::{CudaError, DriverResult};

/// An instantiated graph bound to the stream it was captured on.
pub struct Graph {
    inner: CudaGraph,
}

impl std::fmt::Debug for Graph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Graph")
    }
}

impl Graph {
    pub(crate) fn new(inner: CudaGraph) -> Self {
        Self { inner }
    }

    /// Queues one replay on the capture stream.
    ///
    /// # Safety
    /// Every buffer the captured kernels address is still allocated (the graph holds addresses,
    /// not borrows), and what they read from device memory satisfies what the captured launches
    /// assumed: for a forward pass, the batch arrays now in its buffer meet the contract of the
    /// [`DeviceBatch`](super::DeviceBatch) it was captured with, with the same lengths.
    pub unsafe fn launch(&self) -> Result<(), CudaError> {
        self.inner.launch().during("cuGraphLaunch")
    }
}
