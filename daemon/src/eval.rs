//! Offline logits for reference comparisons (`fused-daemon logits`): the same prompts run three
//! ways — one-shot prefill, chunked prefill then single-token decodes, and a varlen batch that
//! mixes a decode with a prefill — written as safetensors for a reference tool to compare.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, bail};
use candle_core::{Device, Tensor};

use crate::model::dense_kv::DenseKv;
use crate::model::{LogitsWanted, Model, SeqChunk};

/// Rows of logits, `[rows, vocab]`.
struct Rows {
    data: Vec<f32>,
    vocab: usize,
}

impl Rows {
    fn new(vocab: usize) -> Self {
        Self {
            data: Vec::new(),
            vocab,
        }
    }

    fn push(&mut self, row: &[f32]) {
        self.data.extend_from_slice(row);
    }

    fn into_tensor(self) -> candle_core::Result<Tensor> {
        let rows = self.data.len() / self.vocab;
        Tensor::from_vec(self.data, (rows, self.vocab), &Device::Cpu)
    }
}

/// Runs `a` and `b` (token ids, each at least 2 long) the three ways and writes
/// `prefill_a`, `prefill_b`, `stepwise_a` (every position of `a`, computed as a chunk of the
/// first half then one decode step per token) and `varlen` (row 0: `a`'s last position decoded
/// while, in the same batch, all of `b` is prefilled: rows 1..) into `out`.
pub fn write_logits(model: &Model, a: &[u32], b: &[u32], out: &Path) -> anyhow::Result<()> {
    if a.len() < 2 || b.is_empty() {
        bail!("prompt A needs at least 2 tokens and prompt B at least 1");
    }
    let vocab = model.config.vocab_size;
    let max_len = a.len().max(b.len());
    let kv = DenseKv::new(&model.config, 4, max_len);
    let run = |chunks: &[SeqChunk<'_>]| model.forward(chunks, &kv).context("forward pass");
    let all = |slot, tokens| SeqChunk {
        slot,
        start_pos: 0,
        tokens,
        logits: LogitsWanted::All,
    };

    let mut tensors = HashMap::new();
    for (name, slot, tokens) in [("prefill_a", 0, a), ("prefill_b", 1, b)] {
        let logits = run(&[all(slot, tokens)])?;
        let mut rows = Rows::new(vocab);
        logits.rows(0).for_each(|r| rows.push(r));
        tensors.insert(name.to_owned(), rows.into_tensor()?);
    }

    let half = a.len() / 2;
    let mut stepwise = Rows::new(vocab);
    let logits = run(&[all(2, &a[..half])])?;
    logits.rows(0).for_each(|r| stepwise.push(r));
    for pos in half..a.len() {
        let step = SeqChunk {
            slot: 2,
            start_pos: pos,
            tokens: &a[pos..=pos],
            logits: LogitsWanted::Last,
        };
        let logits = run(&[step])?;
        logits.rows(0).for_each(|r| stepwise.push(r));
    }
    tensors.insert("stepwise_a".to_owned(), stepwise.into_tensor()?);

    // Slot 3 holds a[..n-1]; then one batch decodes a's last token and prefills all of b (slot 1
    // is overwritten with the same values).
    let last = a.len() - 1;
    run(&[SeqChunk {
        slot: 3,
        start_pos: 0,
        tokens: &a[..last],
        logits: LogitsWanted::None,
    }])?;
    let batch = [
        SeqChunk {
            slot: 3,
            start_pos: last,
            tokens: &a[last..],
            logits: LogitsWanted::Last,
        },
        all(1, b),
    ];
    let logits = run(&batch)?;
    let mut varlen = Rows::new(vocab);
    logits
        .rows(0)
        .chain(logits.rows(1))
        .for_each(|r| varlen.push(r));
    tensors.insert("varlen".to_owned(), varlen.into_tensor()?);

    candle_core::safetensors::save(&tensors, out)
        .with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}

/// Bits per byte of `model` on `lines` tokenised by `codec` (patched or not): every token of a
/// line is predicted, with `prefix` (an id the model knows, e.g. `<|endoftext|>`) as its only
/// context, so two tokenisations of the same text are compared on the same bytes.
pub fn bits_per_byte(
    model: &Model,
    codec: &crate::tokenizer::Codec,
    lines: &[String],
    prefix: u32,
) -> anyhow::Result<f64> {
    let mut bits = 0.0f64;
    let mut bytes = 0usize;
    let kv = DenseKv::new(&model.config, 1, model.config.max_positions.min(1024));
    for line in lines {
        let mut ids = vec![prefix];
        ids.extend(
            codec
                .encode(line, false)
                .with_context(|| format!("encoding {line:?}"))?,
        );
        if ids.len() > kv.max_len() {
            continue;
        }
        let chunk = SeqChunk {
            slot: 0,
            start_pos: 0,
            tokens: &ids,
            logits: LogitsWanted::All,
        };
        let logits = model.forward(&[chunk], &kv).context("forward pass")?;
        for (row, &next) in logits.rows(0).zip(&ids[1..]) {
            let lp = crate::model::sampling::log_softmax(row);
            bits -= lp[next as usize] as f64 / std::f64::consts::LN_2;
        }
        bytes += line.len();
    }
    if bytes == 0 {
        bail!("no text to score");
    }
    Ok(bits / bytes as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelConfig;

    #[test]
    fn the_three_ways_agree_on_a_dummy_model() {
        let model = Model::dummy(ModelConfig::preset("tiny-llama").unwrap(), 1).unwrap();
        let dir = std::env::temp_dir().join(format!("fused-eval-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("logits.safetensors");
        write_logits(&model, &[5, 9, 200, 17, 3, 44], &[7, 8, 9], &out).unwrap();
        let t = candle_core::safetensors::load(&out, &Device::Cpu).unwrap();
        let diff = |x: &str, y: &str| {
            (t[x].clone() - t[y].clone())
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        assert!(diff("prefill_a", "stepwise_a") < 1e-4);
        let varlen_b = t["varlen"].narrow(0, 1, 3).unwrap();
        let d = (varlen_b - t["prefill_b"].clone())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        assert!(d.to_scalar::<f32>().unwrap() < 1e-4);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
