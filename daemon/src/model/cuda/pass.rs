//! One forward pass queued on the device: the steps of the CPU's `Model::forward`
//! (`model/forward.rs`), in its order and under its names — `embed`, then for each block `norm`,
//! `attention`, `add_linear` (o), `norm`, `mlp`, `add_linear` (down), then `head` — with GPU
//! kernels in place of the CPU ops, for every architecture the CPU runs (RMSNorm or LayerNorm,
//! RoPE or learned positions, SwiGLU or GELU, biases where the weights have them). What a decode graph captures is one [`Pass::forward`].
//!
//! Must not: allocate, copy to or from the host, or lay the batch out (the plan does).

use fused_kernels::cuda::{
    Blas, DecodeSplits, DeviceBatch, DeviceBuffer, DeviceSlice, DeviceView, Kernels, Linear,
    LinearOut, LinearShape, NormRows, PersistentProgram, PositionEmbedding, RopeTables, WeightView,
};
use half::bf16;

use super::scratch::{Activations, AttentionBuffers, HeadBuffers, MlpBuffers};
use super::weights::{Activation, GpuBlock, GpuLinear, GpuNorm, GpuWeights};
use crate::model::ModelError;
use crate::model::config::ModelConfig;

/// What one pass reads: the kernels, the weights and the batch on the device.
pub(super) struct Pass<'a> {
    pub config: &'a ModelConfig,
    pub kernels: &'a Kernels,
    pub blas: &'a Blas,
    pub weights: &'a GpuWeights,
    /// `None`: the model has learned positions (added at `embed`).
    pub rope: Option<&'a RopeTables>,
    pub batch: DeviceBatch<'a>,
    /// How decode attention splits the keys (fixed for a graph's lifetime).
    pub splits: DecodeSplits,
    /// Fold SwiGLU into the gate/up GEMV when the batch is small enough for the GEMV.
    pub fused_gemv: bool,
    /// The first rows of the LM head that are scored (`GpuModel::output_ids`).
    pub output_ids: usize,
}

impl Pass<'_> {
    /// Queues every kernel of the pass; the logits and greedy picks land in `s.head`. `dense`
    /// is where FP8 matrices are expanded for GEMMs of more rows than the GEMV takes.
    pub fn forward(
        &self,
        s: &mut Activations,
        dense: &mut DeviceBuffer<bf16>,
    ) -> Result<(), ModelError> {
        self.embed(&mut s.x)?;
        for (layer, block) in self.weights.blocks.iter().enumerate() {
            let rows = NormRows::First(self.rows());
            self.norm(&block.attn_norm, &s.x, &mut s.normed, rows)?;
            let attn = self.attention(layer, block, &s.normed, &mut s.attn, dense)?;
            self.add_linear(&block.o, &attn, &mut s.x, dense)?;
            self.norm(&block.mlp_norm, &s.x, &mut s.normed, rows)?;
            let hidden = self.mlp(block, &s.normed, &mut s.mlp, dense)?;
            self.add_linear(&block.down, &hidden, &mut s.x, dense)?;
        }
        self.head(&s.x, &mut s.normed, &mut s.head)
    }

    /// [`Pass::forward`] of a one-sequence decode step with the layers in the persistent kernel
    /// of `program`.
    pub fn forward_persistent(
        &self,
        s: &mut Activations,
        program: &mut PersistentProgram,
    ) -> Result<(), ModelError> {
        self.embed(&mut s.x)?;
        self.kernels.decode_persistent(
            program,
            &self.batch,
            self.rope,
            self.weights.eps,
            &mut s.x,
            &mut s.attn.q,
            &mut s.mlp.hidden,
        )?;
        self.head(&s.x, &mut s.normed, &mut s.head)
    }

    fn rows(&self) -> usize {
        self.batch.rows()
    }

    fn hidden(&self) -> usize {
        self.config.hidden
    }

    fn embed(&self, x: &mut DeviceBuffer<f32>) -> Result<(), ModelError> {
        let w = self.weights;
        let positions = w.positions.as_ref().map(|table| PositionEmbedding {
            positions: self.batch.positions(),
            table: table.view(),
        });
        let tokens = self.batch.tokens();
        Ok(self
            .kernels
            .embed(tokens, &w.embed, positions, x, self.hidden())?)
    }

    /// RMSNorm or LayerNorm of `rows` of `x` into `out`.
    fn norm(
        &self,
        norm: &GpuNorm,
        x: &DeviceBuffer<f32>,
        out: &mut DeviceBuffer<bf16>,
        rows: NormRows<'_>,
    ) -> Result<(), ModelError> {
        let (k, hidden, eps) = (self.kernels, self.hidden(), self.weights.eps);
        match &norm.bias {
            None => k.rms_norm(x, &norm.weight, out, rows, hidden, eps)?,
            Some(bias) => k.layer_norm(x, &norm.weight, bias, out, rows, hidden, eps)?,
        }
        Ok(())
    }

    /// QKV projection, its bias (Qwen2, GPT-2) and RoPE (none with learned positions), K/V
    /// written to the region, causal attention per sequence (prefill tiles and split-KV decodes).
    fn attention<'b>(
        &self,
        layer: usize,
        block: &GpuBlock,
        normed: &DeviceBuffer<bf16>,
        a: &'b mut AttentionBuffers,
        dense: &mut DeviceBuffer<bf16>,
    ) -> Result<DeviceSlice<'b, bf16>, ModelError> {
        self.project(&block.qkv, normed, LinearOut::f32(&mut a.qkv), dense)?;
        let (k, batch) = (self.kernels, self.batch.layer(layer)?);
        k.rope_kv_write(&batch, &a.qkv, block.qkv.bias.as_ref(), &mut a.q, self.rope)?;
        k.attention_prefill(&batch, &a.q, &mut a.out)?;
        k.attention_decode(
            &batch,
            &a.q,
            &mut a.out,
            self.splits,
            &mut a.part_o,
            &mut a.part_ml,
        )?;
        Ok(a.out.view())
    }

    /// `y = input · Wᵀ` (as `y` says: set, accumulated or bf16).
    fn project(
        &self,
        layer: &GpuLinear,
        input: &impl DeviceView<bf16>,
        y: LinearOut<'_>,
        dense: &mut DeviceBuffer<bf16>,
    ) -> Result<(), ModelError> {
        let shape = LinearShape {
            rows: self.rows(),
            out: layer.out,
            inner: layer.inner,
        };
        let layer = Linear::new(input, &layer.weight, y, shape)?;
        Ok(self.kernels.linear_dense(self.blas, layer, dense)?)
    }

    /// `x += input · Wᵀ + b` (the residual add folded into the layer, the bias added after).
    fn add_linear(
        &self,
        layer: &GpuLinear,
        input: &impl DeviceView<bf16>,
        x: &mut DeviceBuffer<f32>,
        dense: &mut DeviceBuffer<bf16>,
    ) -> Result<(), ModelError> {
        self.project(layer, input, LinearOut::add_f32(x), dense)?;
        if let Some(bias) = &layer.bias {
            (self.kernels).add_bias(x, bias, self.rows(), layer.out)?;
        }
        Ok(())
    }

    /// The MLP up to (not including) its output projection: SwiGLU of the gate/up projection
    /// (in one GEMV for a few rows), or GELU of the input projection plus its bias.
    fn mlp<'b>(
        &self,
        block: &GpuBlock,
        normed: &DeviceBuffer<bf16>,
        m: &'b mut MlpBuffers,
        dense: &mut DeviceBuffer<bf16>,
    ) -> Result<DeviceSlice<'b, bf16>, ModelError> {
        let (k, rows, up) = (self.kernels, self.rows(), &block.up);
        match block.activation {
            Activation::SwiGlu => {
                let ffn = up.out / 2;
                if self.fused_gemv && Kernels::gemv_takes(&up.weight.weights(), rows, up.inner) {
                    let shape = LinearShape {
                        rows,
                        out: ffn,
                        inner: up.inner,
                    };
                    k.gemv_swiglu(normed, &up.weight, &mut m.hidden, shape)?;
                } else {
                    self.project(up, normed, LinearOut::bf16(&mut m.gate_up), dense)?;
                    k.silu_mul(&m.gate_up, &mut m.hidden, rows, ffn)?;
                }
            }
            Activation::Gelu => {
                let bias = up.bias.as_ref().ok_or_else(|| {
                    ModelError::Config("a GELU MLP's input projection has no bias".into())
                })?;
                self.project(up, normed, LinearOut::bf16(&mut m.gate_up), dense)?;
                k.gelu_bias(&m.gate_up, bias, &mut m.hidden, rows, up.out)?;
            }
        }
        Ok(m.hidden.view())
    }

    /// Final norm and LM head over the rows the chunks asked for, and the device's greedy pick
    /// of each.
    fn head(
        &self,
        x: &DeviceBuffer<f32>,
        normed: &mut DeviceBuffer<bf16>,
        out: &mut HeadBuffers,
    ) -> Result<(), ModelError> {
        let (k, w, hidden) = (self.kernels, self.weights, self.hidden());
        let rows = self.batch.head_rows();
        let (count, vocab) = (rows.len(), self.output_ids);
        self.norm(&w.final_norm, x, normed, NormRows::Gather(rows))?;
        let shape = LinearShape {
            rows: count,
            out: vocab,
            inner: hidden,
        };
        let logits = LinearOut::f32(&mut out.logits);
        k.linear(self.blas, Linear::new(normed, w.lm_head(), logits, shape)?)?;
        Ok(k.argmax(&out.logits, &mut out.picked, count, vocab)?)
    }
}
