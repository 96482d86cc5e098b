//! Launches of the row-wise kernels of `cu/elementwise.cu`: embedding gather (with learned
//! positions), RMSNorm and LayerNorm, SwiGLU, GELU, bias adds, argmax and the seeded fill. Each checks its operands' lengths against the rows and widths it
//! is given; all are safe to call.

use half::bf16;

use super::error::{CudaError, as_i32};
use super::kernels::{FillUniform, Kernels, grid};
use super::memory::{
    DeviceSlice, DeviceSliceMut, DeviceView, DeviceViewMut, Element, Indices, Positions, check_len,
};

/// Which rows of `x` an RMSNorm reads: the first `n`, or the listed ones (a gather).
#[derive(Debug, Clone, Copy)]
pub enum NormRows<'a> {
    First(usize),
    Gather(Indices<'a>),
}

/// Learned position embeddings (GPT-2's `wpe`) added to the token embeddings: each row's
/// position and the table `[positions.bound(), hidden]` bf16.
#[derive(Debug, Clone, Copy)]
pub struct PositionEmbedding<'a> {
    pub positions: Positions<'a>,
    pub table: DeviceSlice<'a, bf16>,
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

/// A launch with a row of blocks (256 threads, one element each: `width` of them) per row of
/// `rows`, the rows on the grid's `y` (at most 65535 of them).
fn per_row_grid(
    kernel: &str,
    rows: usize,
    width: usize,
) -> Result<cudarc::driver::LaunchConfig, CudaError> {
    if rows > 65_535 {
        return Err(CudaError::Invalid(format!(
            "{kernel} takes at most 65535 rows per launch, not {rows}"
        )));
    }
    grid(width.div_ceil(256), rows, 1, 256)
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
    /// `x[r] = table[tokens[r]]` as f32 (plus row `positions[r]` of the position table, when
    /// there is one and the row is not padding): `table [vocab, hidden] bf16`, `x [rows, hidden]
    /// f32`, one row per token.
    pub fn embed(
        &self,
        tokens: Indices<'_>,
        table: &impl DeviceView<bf16>,
        positions: Option<PositionEmbedding<'_>>,
        x: &mut impl DeviceViewMut<f32>,
        hidden: usize,
    ) -> Result<(), CudaError> {
        let rows = tokens.len();
        let (table, x) = (table.view(), x.view_mut());
        check_len("embedding table", table.len(), tokens.bound() * hidden)?;
        check_len("embed output", x.len(), rows * hidden)?;
        if let Some(p) = positions {
            let (positions, table_rows) = (p.positions.rows(), p.positions.bound);
            check_len("row positions", positions, rows)?;
            check_len("position table", p.table.len(), table_rows * hidden)?;
        }
        if rows == 0 {
            return Ok(());
        }
        let args = (
            tokens.values,
            table,
            positions.map(|p| p.positions.values),
            positions.map(|p| p.table),
            x,
            as_i32(hidden, "hidden")?,
        );
        // SAFETY: block `r` reads row `tokens[r]` of `table`, below `tokens.bound()` (the rows
        // checked above), row `positions[r]` of the position table unless it is padding (below
        // `bound`, the rows checked above), and writes row `r < rows` of `x` (checked above).
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
        let weights = (weight.view(), None);
        self.norm_rows(x.view(), weights, out.view_mut(), rows, hidden, eps)
    }

    /// LayerNorm: `out[r] = (x[row r] − mean) / std * weight + bias`, as [`Kernels::rms_norm`]
    /// lays out its operands (`bias [hidden]` f32).
    #[allow(clippy::too_many_arguments)]
    pub fn layer_norm(
        &self,
        x: &impl DeviceView<f32>,
        weight: &impl DeviceView<f32>,
        bias: &impl DeviceView<f32>,
        out: &mut impl DeviceViewMut<bf16>,
        rows: NormRows<'_>,
        hidden: usize,
        eps: f32,
    ) -> Result<(), CudaError> {
        let weights = (weight.view(), Some(bias.view()));
        self.norm_rows(x.view(), weights, out.view_mut(), rows, hidden, eps)
    }

    fn norm_rows(
        &self,
        x: DeviceSlice<'_, f32>,
        (weight, bias): (DeviceSlice<'_, f32>, Option<DeviceSlice<'_, f32>>),
        out: DeviceSliceMut<'_, bf16>,
        rows: NormRows<'_>,
        hidden: usize,
        eps: f32,
    ) -> Result<(), CudaError> {
        let (count, map, x_rows) = match rows {
            NormRows::First(n) => (n, None, n),
            NormRows::Gather(map) => (map.len(), Some(map.values), map.bound()),
        };
        check_len("norm input", x.len(), x_rows * hidden)?;
        check_len("norm weight", weight.len(), hidden)?;
        if let Some(bias) = bias {
            check_len("norm bias", bias.len(), hidden)?;
        }
        check_len("norm output", out.len(), count * hidden)?;
        if count == 0 {
            return Ok(());
        }
        let args = (x, weight, bias, out, map, as_i32(hidden, "hidden")?, eps);
        // SAFETY: block `r < count` reads `hidden` values of row `r` (or `map[r] < bound`) of `x`,
        // of `weight` and of `bias`, and writes row `r` of `out`: the extents checked above.
        unsafe { self.queue(&self.norm, grid(count, 1, 1, 256)?, args) }
    }

    /// `out[r, j] = gelu(input[r, j] + bias[j])` with GELU's tanh approximation (`input`, `out`
    /// `[rows, n]` bf16, `bias [n]` f32).
    pub fn gelu_bias(
        &self,
        input: &impl DeviceView<bf16>,
        bias: &impl DeviceView<f32>,
        out: &mut impl DeviceViewMut<bf16>,
        rows: usize,
        n: usize,
    ) -> Result<(), CudaError> {
        let (input, bias, out) = (input.view(), bias.view(), out.view_mut());
        check_len("GELU bias", bias.len(), n)?;
        if !RowWise::new(rows, n, n).check("gelu_bias", input.len(), out.len())? {
            return Ok(());
        }
        let args = (input, bias, out, as_i32(n, "width")?);
        // SAFETY: block `(_, r)` touches row `r < rows` of `input` and `out` and `bias`, `n`
        // values wide: the extents checked above (`per_row_grid` bounds the rows).
        unsafe { self.queue(&self.gelu_bias, per_row_grid("gelu_bias", rows, n)?, args) }
    }

    /// `x[r, j] += bias[j]` (`x [rows, n]`, `bias [n]`, f32): the bias of a projection whose
    /// product was added to `x`.
    pub fn add_bias(
        &self,
        x: &mut impl DeviceViewMut<f32>,
        bias: &impl DeviceView<f32>,
        rows: usize,
        n: usize,
    ) -> Result<(), CudaError> {
        let (x, bias) = (x.view_mut(), bias.view());
        check_len("bias", bias.len(), n)?;
        if !RowWise::new(rows, n, n).check("add_bias", x.len(), x.len())? {
            return Ok(());
        }
        let args = (x, bias, as_i32(n, "width")?);
        // SAFETY: block `(_, r)` touches row `r < rows` of `x` and `bias`, `n` values wide: the
        // extents checked above (`per_row_grid` bounds the rows).
        unsafe { self.queue(&self.add_bias, per_row_grid("add_bias", rows, n)?, args) }
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
        let cfg = per_row_grid("silu_mul", rows, ffn.div_ceil(8))?;
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
