//! Tensor parallelism (Megatron-style), its reference on the CPU: which slice of each weight a
//! rank holds, and the all-reduce that joins the ranks' partial sums.
//!
//! A rank holds `heads / world` attention heads and `kv_heads / world` KV heads (the Q, K and V
//! rows of its heads: column-parallel), the matching columns of the output projection
//! (row-parallel), `ffn / world` rows of gate and of up, and those columns of down. Norms, the
//! embedding and the LM head are replicated. Each block then needs two all-reduces: after the
//! output projection and after down. A rank's KV holds only its KV heads.
//!
//! The GPU ranks (NCCL) implement [`Communicator`] the same way [`LocalGroup`] does here for
//! threads of one process, so the sharded forward is checked on the CPU first.

use std::sync::{Arc, Barrier, Mutex};

use super::ModelError;
use super::config::{Arch, ModelConfig};
use super::weights::{Block, Linear, Mlp, Weights};

/// Joins the partial sums of the ranks of one tensor-parallel group.
pub trait Communicator: Send + Sync {
    /// This rank, in `0..world()`.
    fn rank(&self) -> usize;
    /// Ranks in the group.
    fn world(&self) -> usize;
    /// Replaces `data` on every rank by the element-wise sum of every rank's `data`. Every rank
    /// calls it with the same length, in the same order of calls.
    fn all_reduce_sum(&self, data: &mut [f32]) -> Result<(), ModelError>;
}

/// The ranks of a group whose members are threads of this process.
pub struct LocalGroup {
    sum: Mutex<Vec<f32>>,
    arrived: Barrier,
    world: usize,
}

/// One rank of a [`LocalGroup`].
pub struct LocalRank {
    group: Arc<LocalGroup>,
    rank: usize,
}

impl LocalGroup {
    /// `world` ranks, to be moved each to its own thread.
    pub fn ranks(world: usize) -> Vec<LocalRank> {
        let group = Arc::new(Self {
            sum: Mutex::new(Vec::new()),
            arrived: Barrier::new(world),
            world,
        });
        (0..world)
            .map(|rank| LocalRank {
                group: group.clone(),
                rank,
            })
            .collect()
    }
}

impl Communicator for LocalRank {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.group.world
    }

    /// Three phases behind barriers: rank 0 resets the sum, every rank adds its part, every
    /// rank reads the total. The ranks add in turn under the lock, so the order of the
    /// additions (and so the rounding) may differ between calls; the result is the same on
    /// every rank of one call.
    fn all_reduce_sum(&self, data: &mut [f32]) -> Result<(), ModelError> {
        let group = &self.group;
        let poisoned = |_| ModelError::Device("a tensor-parallel rank panicked".into());
        if self.rank == 0 {
            let mut sum = group.sum.lock().map_err(poisoned)?;
            sum.clear();
            sum.resize(data.len(), 0.0);
        }
        group.arrived.wait();
        // A rank whose length differs still passes every barrier (no other rank is left
        // waiting) and reports the misuse; the others read a sum without its part.
        let matches = {
            let mut sum = group.sum.lock().map_err(poisoned)?;
            let matches = sum.len() == data.len();
            if matches {
                for (s, d) in sum.iter_mut().zip(data.iter()) {
                    *s += d;
                }
            }
            matches
        };
        group.arrived.wait();
        if !matches {
            group.arrived.wait();
            return Err(ModelError::Device(format!(
                "all-reduce of {} values on rank {} while rank 0 reduces another length",
                data.len(),
                self.rank
            )));
        }
        data.copy_from_slice(&group.sum.lock().map_err(poisoned)?);
        group.arrived.wait();
        Ok(())
    }
}

/// Rank `rank` of `world`: the slice of a model it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub rank: usize,
    pub world: usize,
}

impl Shard {
    /// The shape one rank computes: its heads, KV heads and MLP rows; the hidden size, the
    /// vocabulary and the layers are the model's.
    pub fn config(&self, cfg: &ModelConfig) -> Result<ModelConfig, ModelError> {
        let world = self.world;
        let refuse = |what: String| {
            Err(ModelError::Config(format!(
                "tensor parallelism over {world} ranks: {what}"
            )))
        };
        if world == 0 || self.rank >= world {
            return refuse(format!("rank {} is not one of them", self.rank));
        }
        if cfg.arch == Arch::Gpt2 {
            return refuse(
                "GPT-2 is not sharded (its output and MLP biases would be summed once per rank)"
                    .into(),
            );
        }
        for (what, n) in [
            ("attention heads", cfg.heads),
            ("KV heads", cfg.kv_heads),
            ("MLP rows", cfg.ffn),
        ] {
            if !n.is_multiple_of(world) {
                return refuse(format!("{n} {what} do not split evenly"));
            }
        }
        Ok(ModelConfig {
            heads: cfg.heads / world,
            kv_heads: cfg.kv_heads / world,
            ffn: cfg.ffn / world,
            ..cfg.clone()
        })
    }

    /// This rank's weights of a model of shape `cfg`. Checkpoint block formats are not
    /// sliced: a shard multiplies f32.
    pub fn weights(&self, cfg: &ModelConfig, weights: &Weights) -> Result<Weights, ModelError> {
        let local = self.config(cfg)?;
        let (q, kv) = (local.q_dim(), local.kv_dim());
        let blocks = weights
            .blocks
            .iter()
            .map(|block| {
                let Mlp::SwiGlu { gate_up, down } = &block.mlp else {
                    return Err(ModelError::Config(
                        "tensor parallelism shards SwiGLU MLPs only".into(),
                    ));
                };
                if block.o.bias.is_some() || down.bias.is_some() {
                    return Err(ModelError::Config(
                        "tensor parallelism shards output and down projections without biases"
                            .into(),
                    ));
                }
                let (full_q, full_kv) = (cfg.q_dim(), cfg.kv_dim());
                // Rows [q; k; v] of the full QKV: this rank's block of each.
                let qkv_rows = [
                    (self.rank * q, q),
                    (full_q + self.rank * kv, kv),
                    (full_q + full_kv + self.rank * kv, kv),
                ];
                let gate_up_rows = [
                    (self.rank * local.ffn, local.ffn),
                    (cfg.ffn + self.rank * local.ffn, local.ffn),
                ];
                Ok(Block {
                    attn_norm: block.attn_norm.clone(),
                    qkv: rows_of(&block.qkv, cfg.hidden, &qkv_rows),
                    o: columns_of(&block.o, cfg.q_dim(), self.rank * q, q),
                    mlp_norm: block.mlp_norm.clone(),
                    mlp: Mlp::SwiGlu {
                        gate_up: rows_of(gate_up, cfg.hidden, &gate_up_rows),
                        down: columns_of(down, cfg.ffn, self.rank * local.ffn, local.ffn),
                    },
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(weights.with_blocks(blocks))
    }
}

/// The rows `(first, count)` of `layer` (`inner` columns), stacked in the order given, with
/// the matching bias entries.
fn rows_of(layer: &Linear, inner: usize, ranges: &[(usize, usize)]) -> Linear {
    let take = |values: &[f32], width: usize| -> Vec<f32> {
        ranges
            .iter()
            .flat_map(|&(first, count)| &values[first * width..(first + count) * width])
            .copied()
            .collect()
    };
    Linear {
        weight: take(&layer.weight, inner),
        packed: None,
        bias: layer.bias.as_deref().map(|b| take(b, 1)),
        out: ranges.iter().map(|&(_, count)| count).sum(),
    }
}

/// Columns `first..first + count` of `layer` (`inner` columns per row). A row-parallel layer
/// has no bias here: it would be added once per rank.
fn columns_of(layer: &Linear, inner: usize, first: usize, count: usize) -> Linear {
    Linear {
        weight: layer
            .weight
            .chunks_exact(inner)
            .flat_map(|row| &row[first..first + count])
            .copied()
            .collect(),
        packed: None,
        bias: None,
        out: layer.out,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::dense_kv::DenseKv;
    use crate::model::tests::max_diff;
    use crate::model::{LogitsWanted, Model, SeqChunk};

    fn chunk(
        slot: crate::kv::SlotId,
        start_pos: usize,
        tokens: &[u32],
        logits: LogitsWanted,
    ) -> SeqChunk<'_> {
        SeqChunk {
            slot,
            start_pos,
            tokens,
            logits,
        }
    }

    /// What one model computes on a fixed script: a prefill of A (every row), a varlen pass (A
    /// decoding its greedy pick while B is prefilled), then `steps` greedy decode steps of both.
    fn script(model: &Model, steps: usize) -> (Vec<Vec<f32>>, Vec<u32>) {
        let vocab = model.config.vocab_size as u32;
        let a: Vec<u32> = (0..13).map(|i| (i * 37 + 5) % vocab).collect();
        let b: Vec<u32> = (0..9).map(|i| (i * 101 + 3) % vocab).collect();
        let kv = DenseKv::new(&model.config, 2, 64);
        let mut rows = Vec::new();
        let mut picks = Vec::new();
        let pick = |row: &[f32]| crate::model::sampling::argmax(row) as u32;
        let first = model
            .forward(&[chunk(0, 0, &a, LogitsWanted::All)], &kv)
            .expect("prefill A");
        rows.extend(first.rows(0).map(<[f32]>::to_vec));
        let mut next = [pick(rows.last().expect("a row")), 0];
        let mut lens = [a.len(), 0];
        let varlen = model
            .forward(
                &[
                    chunk(0, lens[0], &next[..1], LogitsWanted::Last),
                    chunk(1, 0, &b, LogitsWanted::Last),
                ],
                &kv,
            )
            .expect("varlen");
        lens = [lens[0] + 1, b.len()];
        for (i, next) in next.iter_mut().enumerate() {
            let row = varlen.rows(i).next().expect("a row").to_vec();
            *next = pick(&row);
            rows.push(row);
        }
        for _ in 0..steps {
            let (x, y) = ([next[0]], [next[1]]);
            let step = model
                .forward(
                    &[
                        chunk(0, lens[0], &x, LogitsWanted::Last),
                        chunk(1, lens[1], &y, LogitsWanted::Last),
                    ],
                    &kv,
                )
                .expect("decode");
            for i in 0..2 {
                let row = step.rows(i).next().expect("a row").to_vec();
                next[i] = pick(&row);
                picks.push(next[i]);
                rows.push(row);
                lens[i] += 1;
            }
        }
        (rows, picks)
    }

    #[test]
    fn a_sharded_forward_matches_the_whole_model() {
        for preset in ["tiny-llama3", "tiny-qwen2"] {
            let config = ModelConfig::preset(preset).expect("preset");
            let model = Model::dummy(config, 5).expect("dummy");
            let (want, want_picks) = script(&model, 24);
            for world in [1, 2] {
                let ranks = LocalGroup::ranks(world);
                let results: Vec<_> = std::thread::scope(|scope| {
                    let model = &model;
                    let handles: Vec<_> = ranks
                        .into_iter()
                        .map(|rank| {
                            scope.spawn(move || {
                                let sharded = model.shard(Arc::new(rank)).expect("shard");
                                assert_eq!(sharded.config.heads, model.config.heads / world);
                                script(&sharded, 24)
                            })
                        })
                        .collect();
                    handles
                        .into_iter()
                        .map(|h| h.join().expect("rank thread"))
                        .collect()
                });
                for (rank, (rows, picks)) in results.iter().enumerate() {
                    let diff = max_diff(&rows.concat(), &want.concat());
                    assert!(
                        diff < 1e-4,
                        "{preset}, rank {rank} of {world}: logits differ by {diff}"
                    );
                    assert_eq!(picks, &want_picks, "{preset}, rank {rank} of {world}");
                    assert_eq!(rows, &results[0].0, "every rank reads the same sums");
                }
            }
        }
    }

    #[test]
    fn an_all_reduce_sums_every_rank_and_a_wrong_length_is_an_error_not_a_hang() {
        let results: Vec<_> = std::thread::scope(|scope| {
            let handles: Vec<_> = LocalGroup::ranks(3)
                .into_iter()
                .map(|rank| {
                    scope.spawn(move || {
                        let r = rank.rank() as f32;
                        let mut good = vec![r, 10.0 * r];
                        rank.all_reduce_sum(&mut good).expect("same lengths");
                        let mut odd = vec![1.0; if rank.rank() == 2 { 3 } else { 2 }];
                        let odd_result = rank.all_reduce_sum(&mut odd);
                        (good, odd_result.is_ok(), odd)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("rank thread"))
                .collect()
        });
        for (rank, (good, odd_ok, odd)) in results.iter().enumerate() {
            assert_eq!(good, &[3.0, 30.0], "rank {rank}: 0 + 1 + 2");
            assert_eq!(*odd_ok, rank != 2, "rank {rank}");
            if rank != 2 {
                assert_eq!(
                    odd,
                    &[2.0, 2.0],
                    "rank {rank}: the sum without rank 2's part"
                );
            }
        }
    }

    #[test]
    fn shapes_that_do_not_split_are_refused() {
        let config = ModelConfig::preset("tiny-llama3").expect("preset");
        let err = Shard { rank: 0, world: 3 }
            .config(&config)
            .expect_err("4 heads over 3 ranks");
        assert!(err.to_string().contains("4 attention heads"), "{err}");
        let err = Shard { rank: 2, world: 2 }
            .config(&config)
            .expect_err("rank 2 of 2");
        assert!(err.to_string().contains("rank 2"), "{err}");
        let gpt2 = ModelConfig::preset("gpt2").expect("preset");
        let err = Shard { rank: 0, world: 2 }
            .config(&gpt2)
            .expect_err("GPT-2");
        assert!(err.to_string().contains("GPT-2"), "{err}");
    }
}
