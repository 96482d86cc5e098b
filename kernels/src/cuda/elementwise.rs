//! Launches of the row-wise kernels of `cu/elementwise.cu`: embedding gather, RMSNorm, SwiGLU,
//! argmax and the seeded fill. Each checks its operands' lengths against the rows and widths it
//! is given; all are safe to call.

use half::bf16;

use super::error::{CudaError, as_i32};
use super::kernels::{FillUniform, Kernels, grid};
use super::memory::{DeviceSliceMut, DeviceView, DeviceViewMut, Element, Indices, check_len};

/// Which rows of `x` an RMSNorm reads: the first `n`, or the listed ones (a gather).
#[derive(Debug, Clone, Copy)]
pub enum NormRows<'a> {
    First(usize),
    Gather(Indices<'a>),
}

/// What a row-wise kernel touches: `rows` rows, `read` values of each read, `written` written.
struct RowWise {
    rows: usize,
    read: usize,
    written: usize,
}

impl RowWise {
    fn new(rows: usize, read: usize, written: usize) -> Self {
        Self {
            rows,
            read,
            written,
        }
    }

    /// Fails unless an input of `input` and an output of `output` elements hold the rows;
    /// whether there is any row to launch for.
    fn check(&self, kernel: &str, input: usize, output: usize) -> Result<bool, CudaError> {
        let (read, written) = (self.rows * self.read, self.rows * self.written);
        if input < read || output < written {
            return Err(CudaError::Invalid(format!(
                "{kernel} over {} rows reads {read} and writes {written} elements; its operands \
                 hold {input} and {output}",
                self.rows
            )));
        }
        Ok(self.rows > 0)
    }
}

/// Element types [`Kernels::fill_uniform`] writes (each has its own build of the kernel).
pub trait FillElement: Element {
    #[doc(hidden)]
    fn fill(
        kernels: &Kernels,
        out: DeviceSliceMut<'_, Self>,
        seed: u64,
        range: (f32, f32),
    ) -> Result<(), CudaError>;
}

/// Each element type fills with its own build of the kernel.
macro_rules! fill_element {
    ($($t:ty => $kernel:ident),*) => {$(
        impl FillElement for $t {
            fn fill(
                kernels: &Kernels,
                out: DeviceSliceMut<'_, Self>,
                seed: u64,
                range: (f32, f32),
            ) -> Result<(), CudaError> {
                kernels.fill_with(&kernels.$kernel, out, seed, range)
            }
        }
    )*};
}
fill_element!(bf16 => fill_bf16, f32 => fill_f32);

impl Kernels {
    /// `x[r] = table[tokens[r]]` as f32: `table [vocab, hidden] bf16`, `x [rows, hidden] f32`,
    /// one row per token.
    pub fn embed(
        &self,
        tokens: Indices<'_>,
        table: &impl DeviceView<bf16>,
        x: &mut impl DeviceViewMut<f32>,
        hidden: usize,
    ) -> Result<(), CudaError> {
        let rows = tokens.len();
        let (table, x) = (table.view(), x.view_mut());
        check_len("embedding table", table.len(), tokens.bound() * hidden)?;
        check_len("embed output", x.len(), rows * hidden)?;
        if rows == 0 {
            return Ok(());
        }
        let args = (tokens.values, table, x, as_i32(hidden, "hidden")?);
        // SAFETY: block `r` reads row `tokens[r]` of `table`, below `tokens.bound()` (the rows
        // checked above), and writes row `r < rows` of `x` (checked above).
        unsafe { self.queue(&self.embed, grid(rows, 1, 1, 256)?, args) }
    }

    /// RMSNorm: `out[r] = norm(x[row r]) * weight` for the rows `rows` names (`x` f32
    /// `[.., hidden]`, `weight [hidden]` f32, `out [rows, hidden]` bf16).
    pub fn rms_norm(
        &self,
        x: &impl DeviceView<f32>,
        weight: &impl DeviceView<f32>,
        out: &mut impl DeviceViewMut<bf16>,
        rows: NormRows<'_>,
        hidden: usize,
        eps: f32,
    ) -> Result<(), CudaError> {
        let (x, weight, out) = (x.view(), weight.view(), out.view_mut());
        let (count, map, x_rows) = match rows {
            NormRows::First(n) => (n, None, n),
            NormRows::Gather(map) => (map.len(), Some(map.values), map.bound()),
        };
        check_len("norm input", x.len(), x_rows * hidden)?;
        check_len("norm weight", weight.len(), hidden)?;
        check_len("norm output", out.len(), count * hidden)?;
        if count == 0 {
            return Ok(());
        }
        let args = (x, weight, out, map, as_i32(hidden, "hidden")?, eps);
        // SAFETY: block `r < count` reads `hidden` values of row `r` (or `map[r] < bound`) of `x`
        // and of `weight`, and writes row `r` of `out`: the extents checked above.
        unsafe { self.queue(&self.rms_norm, grid(count, 1, 1, 256)?, args) }
    }

    /// `out[r, j] = silu(gu[r, j]) · gu[r, ffn + j]` (`gu [rows, 2 ffn]`, `out [rows, ffn]`, bf16).
    pub fn silu_mul(
        &self,
        gate_up: &impl DeviceView<bf16>,
        out: &mut impl DeviceViewMut<bf16>,
        rows: usize,
        ffn: usize,
    ) -> Result<(), CudaError> {
        let (gate_up, out) = (gate_up.view(), out.view_mut());
        if !RowWise::new(rows, 2 * ffn, ffn).check("silu_mul", gate_up.len(), out.len())? {
            return Ok(());
        }
        if rows > 65_535 {
            return Err(CudaError::Invalid(format!(
                "silu_mul takes at most 65535 rows per launch, not {rows}"
            )));
        }
        let cfg = grid(ffn.div_ceil(8 * 256), rows, 1, 256)?;
        let args = (gate_up, out, as_i32(rows, "rows")?, as_i32(ffn, "ffn")?);
        // SAFETY: block `(_, r)` touches row `r < rows` of both operands, `2 ffn` and `ffn`
        // values wide: the extents checked above.
        unsafe { self.queue(&self.silu_mul, cfg, args) }
    }

    /// `out[r]` = first index of the largest of `logits[r, ..vocab]` (f32 in, u32 out).
    pub fn argmax(
        &self,
        logits: &impl DeviceView<f32>,
        out: &mut impl DeviceViewMut<u32>,
        rows: usize,
        vocab: usize,
    ) -> Result<(), CudaError> {
        let (logits, out) = (logits.view(), out.view_mut());
        if !RowWise::new(rows, vocab, 1).check("argmax", logits.len(), out.len())? {
            return Ok(());
        }
        let args = (logits, out, as_i32(vocab, "vocab")?);
        // SAFETY: block `r < rows` reads row `r` of `logits` (`vocab` wide) and writes `out[r]`:
        // the extents checked above.
        unsafe { self.queue(&self.argmax, grid(rows, 1, 1, 1024)?, args) }
    }

    /// Fills all of `out` (bf16 or f32) with uniform values in `[lo, hi)` that depend only on
    /// `(seed, index)`.
    pub fn fill_uniform<T: FillElement>(
        &self,
        out: &mut impl DeviceViewMut<T>,
        seed: u64,
        lo: f32,
        hi: f32,
    ) -> Result<(), CudaError> {
        T::fill(self, out.view_mut(), seed, (lo, hi))
    }

    fn fill_with<T: Element>(
        &self,
        kernel: &FillUniform<T>,
        out: DeviceSliceMut<'_, T>,
        seed: u64,
        (lo, hi): (f32, f32),
    ) -> Result<(), CudaError> {
        let n = out.len();
        if n == 0 {
            return Ok(());
        }
        let cfg = grid(self.stride_blocks(n, 256), 1, 1, 256)?;
        let args = (out, n as u64, seed, lo, hi);
        // SAFETY: the kernel writes elements `0..n`, `n` being the view's own length.
        unsafe { self.queue(kernel, cfg, args) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_wise_operands_must_hold_every_row() {
        let extent = RowWise::new(3, 8, 4);
        assert!(extent.check("k", 24, 12).expect("fits"));
        assert!(extent.check("k", 23, 12).is_err());
        assert!(extent.check("k", 24, 11).is_err());
        assert!(!RowWise::new(0, 8, 4).check("k", 0, 0).expect("empty"));
    }
}
