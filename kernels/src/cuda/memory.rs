//! Typed device memory, after candle's `CudaSlice<T>`: a [`DeviceBuffer<T>`] owns `len` elements
//! of `T` and frees them on drop; [`DeviceSlice`] / [`DeviceSliceMut`] borrow a range of one, so a
//! kernel wrapper knows every operand's element type and length and checks them against its shape
//! instead of trusting the caller. [`Indices`] is a `u32` view whose every value is known to be
//! below a bound (checked on the host before upload), what kernels that gather rows need.
//!
//! Must not: launch kernels or copy data (the device does); let a kernel see an address without
//! the length behind it.

use std::marker::PhantomData;
use std::ops::Range;
use std::sync::Arc;

use cudarc::driver::{CudaContext, result};
use half::bf16;

use super::error::CudaError;

mod sealed {
    pub trait Sealed {}
}

/// A plain element type of device memory: `Copy`, no padding, valid for any bit pattern (so
/// reading back memory a kernel wrote, or bytes reinterpreted, is never undefined). Sealed: only
/// the types below.
pub trait Element: sealed::Sealed + Copy + Send + Sync + 'static {}

macro_rules! element {
    ($($t:ty),*) => {$(
        impl sealed::Sealed for $t {}
        impl Element for $t {}
    )*};
}
element!(u8, u16, u32, u64, f32, bf16);

/// Device memory of `len` elements of `T`, freed on drop.
pub struct DeviceBuffer<T> {
    address: u64,
    len: usize,
    context: Arc<CudaContext>,
    element: PhantomData<T>,
}

impl<T> std::fmt::Debug for DeviceBuffer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "DeviceBuffer<{}>({:#x}, {} elements)",
            std::any::type_name::<T>(),
            self.address,
            self.len
        )
    }
}

impl<T: Element> DeviceBuffer<T> {
    /// Allocates `len` elements (at least 256 bytes, so that even an empty buffer has an
    /// address) in `context`, which must be current on this thread.
    pub(crate) fn alloc(context: &Arc<CudaContext>, len: usize) -> Result<Self, CudaError> {
        let bytes = len
            .checked_mul(size_of::<T>())
            .ok_or_else(|| CudaError::Invalid(format!("{len} elements overflow a byte count")))?;
        // SAFETY: a plain allocation of `bytes` (≥ 256) bytes; the buffer frees it once, on drop.
        let address = unsafe { result::malloc_sync(bytes.max(256)) }
            .map_err(|error| CudaError::driver("cuMemAlloc", error.0))?;
        Ok(Self {
            address,
            len,
            context: context.clone(),
            element: PhantomData,
        })
    }

    /// Elements in the buffer.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes the elements take.
    pub fn bytes(&self) -> usize {
        self.len * size_of::<T>()
    }

    /// All of the buffer, to read.
    pub fn view(&self) -> DeviceSlice<'_, T> {
        DeviceSlice {
            address: self.address,
            len: self.len,
            borrow: PhantomData,
        }
    }

    /// All of the buffer, to write.
    pub fn view_mut(&mut self) -> DeviceSliceMut<'_, T> {
        DeviceSliceMut {
            address: self.address,
            len: self.len,
            borrow: PhantomData,
        }
    }

    /// Elements `range` of the buffer.
    pub fn slice(&self, range: Range<usize>) -> Result<DeviceSlice<'_, T>, CudaError> {
        self.view().slice(range)
    }

    /// Elements `range` of the buffer, writable.
    pub fn slice_mut(&mut self, range: Range<usize>) -> Result<DeviceSliceMut<'_, T>, CudaError> {
        check_range(&range, self.len)?;
        Ok(DeviceSliceMut {
            address: self.address + (range.start * size_of::<T>()) as u64,
            len: range.len(),
            borrow: PhantomData,
        })
    }
}

impl DeviceBuffer<u8> {
    /// `len` elements of `U` starting `offset` bytes in: typed views of one buffer that holds
    /// several arrays (uploaded in one transfer). The offset must be aligned for `U`.
    pub fn cast_slice<U: Element>(
        &self,
        offset: usize,
        len: usize,
    ) -> Result<DeviceSlice<'_, U>, CudaError> {
        if !offset.is_multiple_of(align_of::<U>()) {
            return Err(CudaError::Invalid(format!(
                "offset {offset} is not aligned for {}",
                std::any::type_name::<U>()
            )));
        }
        let bytes = len * size_of::<U>();
        check_range(&(offset..offset + bytes), self.len)?;
        Ok(DeviceSlice {
            address: self.address + offset as u64,
            len,
            borrow: PhantomData,
        })
    }
}

impl<T> Drop for DeviceBuffer<T> {
    fn drop(&mut self) {
        // Errors cannot be returned from drop; a failed free leaks device memory only.
        if self.context.bind_to_thread().is_ok() {
            // SAFETY: our allocation, freed once; the stream's users synchronised before drop.
            let _ = unsafe { result::free_sync(self.address) };
        }
    }
}

fn check_range(range: &Range<usize>, len: usize) -> Result<(), CudaError> {
    if range.start > range.end || range.end > len {
        return Err(CudaError::Invalid(format!(
            "range {range:?} is outside a buffer of {len} elements"
        )));
    }
    Ok(())
}

/// Borrowed, read-only elements of device memory (what a kernel's `const T*` parameter gets).
#[derive(Clone, Copy)]
pub struct DeviceSlice<'a, T> {
    address: u64,
    len: usize,
    borrow: PhantomData<&'a [T]>,
}

/// Borrowed, writable elements of device memory (what a kernel's `T*` parameter gets).
pub struct DeviceSliceMut<'a, T> {
    address: u64,
    len: usize,
    borrow: PhantomData<&'a mut [T]>,
}

impl<T> std::fmt::Debug for DeviceSlice<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceSlice({:#x}, {} elements)", self.address, self.len)
    }
}

impl<T> std::fmt::Debug for DeviceSliceMut<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "DeviceSliceMut({:#x}, {} elements)",
            self.address, self.len
        )
    }
}

impl<'a, T: Element> DeviceSlice<'a, T> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Elements `range` of this slice.
    pub fn slice(&self, range: Range<usize>) -> Result<DeviceSlice<'a, T>, CudaError> {
        check_range(&range, self.len)?;
        Ok(DeviceSlice {
            address: self.address + (range.start * size_of::<T>()) as u64,
            len: range.len(),
            borrow: PhantomData,
        })
    }

    /// The first element's device address: what a kernel parameter holds, and what a table of
    /// addresses (a batch's K/V addresses) is made of — using one takes
    /// [`DeviceBatch::new`](super::DeviceBatch::new).
    pub fn address(&self) -> u64 {
        self.address
    }
}

impl<T: Element> DeviceSliceMut<'_, T> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(crate) fn address(&self) -> u64 {
        self.address
    }
}

/// What a kernel may read: a buffer or a view of one.
pub trait DeviceView<T: Element> {
    fn view(&self) -> DeviceSlice<'_, T>;
}

/// What a kernel may write: a buffer or a writable view of one.
pub trait DeviceViewMut<T: Element>: DeviceView<T> {
    fn view_mut(&mut self) -> DeviceSliceMut<'_, T>;
}

impl<T: Element> DeviceView<T> for DeviceBuffer<T> {
    fn view(&self) -> DeviceSlice<'_, T> {
        DeviceBuffer::view(self)
    }
}

impl<T: Element> DeviceViewMut<T> for DeviceBuffer<T> {
    fn view_mut(&mut self) -> DeviceSliceMut<'_, T> {
        DeviceBuffer::view_mut(self)
    }
}

impl<T: Element> DeviceView<T> for DeviceSlice<'_, T> {
    fn view(&self) -> DeviceSlice<'_, T> {
        *self
    }
}

impl<T: Element> DeviceView<T> for DeviceSliceMut<'_, T> {
    fn view(&self) -> DeviceSlice<'_, T> {
        DeviceSlice {
            address: self.address,
            len: self.len,
            borrow: PhantomData,
        }
    }
}

impl<T: Element> DeviceViewMut<T> for DeviceSliceMut<'_, T> {
    fn view_mut(&mut self) -> DeviceSliceMut<'_, T> {
        DeviceSliceMut {
            address: self.address,
            len: self.len,
            borrow: PhantomData,
        }
    }
}

/// Row indices on the device, each below `bound` (a gather's source rows, a token's embedding
/// row). Made only by [`IndexBuffer::upload`], which checks every value on the host, or by a
/// [`DeviceBatch`](super::DeviceBatch), whose constructor's contract states it.
#[derive(Debug, Clone, Copy)]
pub struct Indices<'a> {
    pub(crate) values: DeviceSlice<'a, u32>,
    pub(crate) bound: usize,
}

impl Indices<'_> {
    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Every index is below this.
    pub fn bound(&self) -> usize {
        self.bound
    }
}

/// Each row's position on the device: below `bound`, or `u32::MAX` for a padding row. Made from
/// [`Indices`] (every index a valid position) or by a [`DeviceBatch`](super::DeviceBatch), whose
/// constructor's contract states it.
#[derive(Debug, Clone, Copy)]
pub struct Positions<'a> {
    pub(crate) values: DeviceSlice<'a, u32>,
    pub(crate) bound: usize,
}

impl Positions<'_> {
    /// Rows (one position each).
    pub(crate) fn rows(&self) -> usize {
        self.values.len()
    }
}

impl<'a> From<Indices<'a>> for Positions<'a> {
    fn from(indices: Indices<'a>) -> Self {
        Self {
            values: indices.values,
            bound: indices.bound,
        }
    }
}

/// Device memory holding indices checked against a bound when they were uploaded.
#[derive(Debug)]
pub struct IndexBuffer {
    values: DeviceBuffer<u32>,
    bound: usize,
}

impl IndexBuffer {
    /// Uploads `values` after checking that each is below `bound`.
    pub fn upload(
        device: &super::GpuDevice,
        values: &[u32],
        bound: usize,
    ) -> Result<Self, CudaError> {
        if let Some(bad) = values.iter().find(|&&v| v as usize >= bound) {
            return Err(CudaError::Invalid(format!(
                "index {bad} is not below its bound {bound}"
            )));
        }
        Ok(Self {
            values: device.upload_new(values)?,
            bound,
        })
    }

    pub fn indices(&self) -> Indices<'_> {
        Indices {
            values: self.values.view(),
            bound: self.bound,
        }
    }
}

/// Views of no memory, for tests of the host-side checks (nothing may launch with them).
#[cfg(test)]
pub(crate) fn fake_views<'a, T>(
    address: u64,
    len: usize,
) -> (DeviceSlice<'a, T>, DeviceSliceMut<'a, T>) {
    (
        DeviceSlice {
            address,
            len,
            borrow: PhantomData,
        },
        DeviceSliceMut {
            address,
            len,
            borrow: PhantomData,
        },
    )
}

/// Fails unless a `what` operand of `len` elements holds the `needed` a kernel will touch.
pub(crate) fn check_len(what: &str, len: usize, needed: usize) -> Result<(), CudaError> {
    if len < needed {
        return Err(CudaError::Invalid(format!(
            "{what} holds {len} elements; the kernel touches {needed}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_stay_inside_their_view_and_advance_by_elements() {
        let (view, _) = fake_views::<f32>(0x1000, 10);
        let tail = view.slice(4..10).expect("inside");
        assert_eq!((tail.address(), tail.len()), (0x1000 + 16, 6));
        assert!(view.slice(4..11).is_err());
        assert!(tail.slice(0..7).is_err());
        assert!(check_len("x", 3, 4).is_err() && check_len("x", 4, 4).is_ok());
    }
}
