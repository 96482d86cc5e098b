//! `fused-daemon serve`'s command line: our flags, vLLM's names for them (aliases), the
//! enumerations `--help` lists, and the checks that need no I/O (values that cannot work
//! together are refused before the port is bound).
//!
//! Must not: read files or open devices (load.rs and device.rs do).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};

use crate::kv::KvLayout;
use crate::sched::{Policy, TokenBudget};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LoadFormat {
    /// GGUF file or HF directory, by what `--model` points at.
    Auto,
    /// Seeded random weights; `--model` is a shape preset or a config.json.
    Dummy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Device {
    /// The GPU when this build has CUDA and a usable GPU is there, else the CPU (with a line
    /// saying why).
    Auto,
    Cpu,
    /// GPU 0; start-up fails with the reason when there is no usable GPU.
    Cuda,
}

/// vLLM's `--dtype` values; each device computes in one type (the others are refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Dtype {
    /// The device's type: float32 on the CPU, bfloat16 on the GPU.
    Auto,
    Half,
    Float16,
    Bfloat16,
    Float,
    Float32,
}

/// vLLM's `--quantization` methods this server runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Quantization {
    /// FP8 E4M3 weights with a scale per output channel, quantized at load from the bf16, f16
    /// or f32 checkpoint (GPU; the embedding and the LM head stay bf16).
    Fp8,
    /// A GGUF file's own blocks: on the GPU its Q8_0 and Q4_K matrices stay in them (the others,
    /// the embedding and the LM head go up as bf16); the CPU reads every GGUF's blocks anyway.
    Gguf,
}

/// How a decode step of one sequence runs its layers on the GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum DecodeKernel {
    /// A kernel per operation, replayed from CUDA graphs.
    #[default]
    #[value(name = "per-op")]
    PerOp,
    /// Every layer in one persistent kernel (Llama-family bf16 models; others run per-op).
    Persistent,
}

/// Where each token's K/V lives in the KV pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KvLayoutArg {
    /// Every layer of a token on one page (fewer, fuller pages).
    Interleaved,
    /// One region per layer (vAttention's original layout).
    #[value(name = "perLayer", alias = "per-layer")]
    PerLayer,
}

/// Batch composition policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SchedulerArg {
    /// Sarathi-Serve: decodes first, prefills chunked into the token budget (stall-free).
    Sarathi,
    /// vLLM v0: whole prefills first, decodes wait.
    PrefillFirst,
    /// Orca-like: decodes, then whole prompts piggybacked.
    DecodeFirst,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// The model, as `vllm serve MODEL` takes it: the same as `--model`.
    #[arg(value_name = "MODEL")]
    pub model_tag: Option<String>,
    /// A GGUF file or an HF directory (config.json + safetensors). With `--load-format dummy`: a
    /// shape preset (smollm2-135m, llama-2-7b, llama-3-8b, gpt2, tiny-llama) or a config.json.
    /// Default: SmolLM2-135M-Instruct in the model cache. A Hub name (org/name) is not fetched
    /// here: `fused-daemon fetch --uri hf://org/name` does that.
    #[arg(long, env = "FUSED_MODEL")]
    pub model: Option<String>,
    #[arg(long, value_enum, default_value = "auto")]
    pub load_format: LoadFormat,
    /// Seed of dummy weights.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Tokenizer (tokenizer.json, HF directory or GGUF); default: the model's own.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// A Jinja chat template (a file, or the template itself) in place of the model's own.
    #[arg(long)]
    pub chat_template: Option<String>,
    /// AdaptiVocab patch directory (built by `fused-daemon vocab build`, embeddings added by
    /// `vocab init-embeddings`). The daemon refuses a patch built for another base tokenizer.
    #[arg(long, env = "FUSED_PATCH_TOKENIZER")]
    pub patch_tokenizer: Option<PathBuf>,
    /// Expected sha256 of the patch artifact (the CRD's `patchTokenizer.sha256`).
    #[arg(long, requires = "patch_tokenizer")]
    pub patch_sha256: Option<String>,
    /// KV page size in bytes (a multiple of 2 MiB).
    #[arg(long, default_value_t = 2 * 1024 * 1024)]
    pub kv_block_size: usize,
    /// KV layout.
    #[arg(long, value_enum, ignore_case = true, default_value = "interleaved")]
    pub kv_layout: KvLayoutArg,
    /// Physical KV memory in MiB: the host pool on the CPU (default 1024); on the GPU, a cap on
    /// the pool `--gpu-memory-utilization` leaves (default: none), so that runs on different
    /// cards can hold the same KV budget.
    #[arg(long)]
    pub kv_memory_mib: Option<usize>,
    /// On the GPU: the share of device memory the daemon may use (vLLM's meaning). The KV pool
    /// is what stays free after the weights and work buffers, less the other `1 − this` share
    /// (and at most `--kv-memory-mib`).
    #[arg(long, default_value_t = 0.9)]
    pub gpu_memory_utilization: f64,
    /// Allocate each sequence's KV for the whole context at admission (ablation: the world
    /// before vAttention) instead of page by page on demand.
    #[arg(long)]
    pub eager_kv: bool,
    /// Sequences that hold KV at once (KV slots; also the scheduler's max running).
    #[arg(long, visible_alias = "max-num-seqs", default_value_t = 16)]
    pub max_seqs: usize,
    /// Context length per sequence (prompt + output), at most the model's.
    #[arg(long, visible_alias = "max-model-len", default_value_t = 2048)]
    pub max_context: usize,
    /// Tokens per iteration: a number, or `auto` (largest budget under --tbt-target-ms).
    #[arg(long, visible_alias = "max-num-batched-tokens", default_value = "512")]
    pub token_budget: String,
    /// Inter-token latency target of `--token-budget auto`.
    #[arg(long, default_value_t = 100)]
    pub tbt_target_ms: u64,
    /// Requests waiting for admission at most; beyond it the server answers 503.
    #[arg(long, default_value_t = 256)]
    pub max_queue: usize,
    /// Batch composition.
    #[arg(long, value_enum, default_value = "sarathi")]
    pub scheduler: SchedulerArg,
    /// Where the model runs.
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: Device,
    /// Compute type (vLLM's `--dtype`): the CPU computes in float32, the GPU in bfloat16.
    #[arg(long, value_enum, default_value = "auto")]
    pub dtype: Dtype,
    /// Quantize the weights at load (vLLM's `--quantization`, `-q`): `fp8` on the GPU; `gguf`
    /// keeps a GGUF file's Q8_0 / Q4_K blocks on the GPU. GGUF files are served in their own
    /// blocks on the CPU without it.
    #[arg(long, value_enum)]
    pub quantization: Option<Quantization>,
    /// How one sequence's decode step runs its layers on the GPU: `per-op` kernels replayed from
    /// CUDA graphs, or `persistent` (one kernel for every layer; not yet measured on a device).
    #[arg(long, value_enum, default_value = "per-op")]
    pub decode_kernel: DecodeKernel,
    /// Run decode iterations eagerly instead of replaying CUDA graphs.
    #[arg(long, visible_alias = "enforce-eager")]
    pub no_cuda_graphs: bool,
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Name clients use in `model`; default: the model file's stem.
    #[arg(long)]
    pub served_model_name: Option<String>,
    /// Require `Authorization: Bearer <key>` on the API routes (`/v1/*`, `/tokenize`,
    /// `/detokenize`). Prefer the environment variable: arguments show in `ps`. `/health`,
    /// `/ready` and `/version` stay open (probes); `/metrics` too unless `--protect-metrics`.
    #[arg(long, env = "FUSED_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Require the API key on `/metrics` too (Prometheus then scrapes with a bearer token).
    #[arg(long, requires = "api_key")]
    pub protect_metrics: bool,
    /// Seconds in-flight requests may take to finish after SIGTERM.
    #[arg(long, default_value_t = 30)]
    pub drain_timeout_s: u64,
    /// Open HTTP connections at most; more are closed on accept (descriptors and memory stay
    /// bounded, probes keep working).
    #[arg(long, default_value_t = 1024)]
    pub max_connections: usize,
    /// Seconds a client may take to send a request's headers; idle keep-alive connections are
    /// closed after this too.
    #[arg(long, default_value_t = 30)]
    pub http_timeout_s: u64,
    /// Seconds a response write may make no progress (a client that stops reading) before the
    /// connection is closed and its request cancelled.
    #[arg(long, default_value_t = 60)]
    pub write_timeout_s: u64,
    /// Export spans (each request's, with the engine's per choice under it) to this
    /// OpenTelemetry collector traces URL over OTLP/HTTP, e.g.
    /// `http://otel-collector:4318/v1/traces` (vLLM's flag). Off by default.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")]
    pub otlp_traces_endpoint: Option<String>,
    /// No log line per finished request (by default each request logs its id, finish reason,
    /// token counts and timings, as vLLM does).
    #[arg(long)]
    pub disable_log_requests: bool,
    /// Automatic prefix caching (on by default, as in vLLM v1): KV pages of prompts and outputs
    /// stay cached by their token ids until memory is needed, and a request whose tokens start
    /// with a cached prefix maps those pages instead of computing them.
    #[arg(long, overrides_with = "no_enable_prefix_caching")]
    pub enable_prefix_caching: bool,
    /// Turn automatic prefix caching off.
    #[arg(long, overrides_with = "enable_prefix_caching")]
    pub no_enable_prefix_caching: bool,
    /// GPUs per replica for tensor parallelism: 1 (tensor parallelism is not implemented; run
    /// one replica per GPU).
    #[arg(long, default_value_t = 1, help_heading = "vLLM compatibility")]
    pub tensor_parallel_size: usize,
    /// Pipeline stages: 1 (pipeline parallelism is not implemented).
    #[arg(long, default_value_t = 1, help_heading = "vLLM compatibility")]
    pub pipeline_parallel_size: usize,
    /// Accepted: fused-daemon executes no code from the model repository.
    #[arg(long, help_heading = "vLLM compatibility")]
    pub trust_remote_code: bool,
    /// Accepted: prefills are always chunked (Sarathi-Serve); see --scheduler.
    #[arg(long, help_heading = "vLLM compatibility")]
    pub enable_chunked_prefill: bool,
    /// Accepted: the daemon logs no periodic throughput lines (Prometheus has them).
    #[arg(long, help_heading = "vLLM compatibility")]
    pub disable_log_stats: bool,
}

impl From<KvLayoutArg> for KvLayout {
    fn from(layout: KvLayoutArg) -> Self {
        match layout {
            KvLayoutArg::Interleaved => KvLayout::Interleaved,
            KvLayoutArg::PerLayer => KvLayout::PerLayer,
        }
    }
}

impl From<SchedulerArg> for Policy {
    fn from(policy: SchedulerArg) -> Self {
        match policy {
            SchedulerArg::Sarathi => Policy::Sarathi,
            SchedulerArg::PrefillFirst => Policy::PrefillFirst,
            SchedulerArg::DecodeFirst => Policy::DecodeFirst,
        }
    }
}

impl Dtype {
    /// Refuses a `--dtype` the device does not compute in (`gpu`: the GPU path runs).
    pub fn check(self, gpu: bool) -> anyhow::Result<()> {
        let ok = match self {
            Dtype::Auto => true,
            Dtype::Float | Dtype::Float32 => !gpu,
            Dtype::Bfloat16 => gpu,
            Dtype::Half | Dtype::Float16 => false,
        };
        if !ok {
            let (device, dtype) = if gpu {
                ("the GPU runs bf16 weights", "auto or bfloat16")
            } else {
                (
                    "the CPU computes in float32 (GGUF blocks are decoded on the fly)",
                    "auto or float32",
                )
            };
            let given = self
                .to_possible_value()
                .map_or_else(|| format!("{self:?}"), |v| v.get_name().to_owned());
            bail!("--dtype {given} is not supported: {device}; use --dtype {dtype}");
        }
        Ok(())
    }
}

impl Quantization {
    /// Refuses quantizing for a device that does not run it (`gpu`: the GPU path runs).
    pub fn check(quantization: Option<Self>, gpu: bool) -> anyhow::Result<()> {
        if quantization == Some(Self::Fp8) && !gpu {
            bail!(
                "--quantization fp8 runs on the GPU (--device cuda); the CPU serves a GGUF's \
                 blocks as stored (Q4_0/Q4_1/Q5_0/Q5_1/Q8_0/Q4_K/Q5_K/Q6_K)"
            );
        }
        Ok(())
    }

    /// Refuses `gguf` for a model that is not a GGUF file (`model`: the model's path, or `None`
    /// when its weights are not read from a file: `--load-format dummy`).
    pub fn check_model(quantization: Option<Self>, model: Option<&Path>) -> anyhow::Result<()> {
        let gguf = model.is_some_and(Path::is_file);
        if quantization == Some(Self::Gguf) && !gguf {
            let what = model.map_or("dummy weights".to_owned(), |p| p.display().to_string());
            bail!("--quantization gguf keeps a GGUF file's blocks; {what} is not a GGUF file");
        }
        Ok(())
    }
}

impl ServeArgs {
    /// The model spec (`MODEL` or `--model`), refusing two different ones.
    pub fn model_spec(&self) -> anyhow::Result<Option<&str>> {
        match (self.model_tag.as_deref(), self.model.as_deref()) {
            (Some(tag), Some(flag)) if tag != flag => {
                bail!("the model is given twice (MODEL `{tag}` and --model `{flag}`): give it once")
            }
            (tag, flag) => Ok(tag.or(flag)),
        }
    }

    /// Refuses flag values that cannot work, before anything is bound, read or opened.
    pub fn check(&self) -> anyhow::Result<()> {
        self.model_spec()?;
        if self.tensor_parallel_size != 1 {
            bail!(
                "--tensor-parallel-size {}: tensor parallelism is not implemented; run one replica per GPU",
                self.tensor_parallel_size
            );
        }
        if self.pipeline_parallel_size != 1 {
            bail!(
                "--pipeline-parallel-size {}: pipeline parallelism is not implemented",
                self.pipeline_parallel_size
            );
        }
        if !(self.gpu_memory_utilization > 0.0 && self.gpu_memory_utilization <= 1.0) {
            bail!(
                "--gpu-memory-utilization must be in (0, 1], got {}",
                self.gpu_memory_utilization
            );
        }
        match self.device {
            Device::Cpu => {
                self.dtype.check(false)?;
                Quantization::check(self.quantization, false)?;
                if self.decode_kernel == DecodeKernel::Persistent {
                    bail!("--decode-kernel persistent runs on the GPU (--device cuda)");
                }
            }
            Device::Cuda => self.dtype.check(true)?,
            // Checked once the device is known.
            Device::Auto => {}
        }
        self.token_budget()?;
        Ok(())
    }

    pub fn token_budget(&self) -> anyhow::Result<TokenBudget> {
        if self.token_budget == "auto" {
            return Ok(TokenBudget::Auto {
                tbt_target: Duration::from_millis(self.tbt_target_ms),
                min: self.max_seqs.max(64),
                max: 4096,
            });
        }
        let tokens: usize = self
            .token_budget
            .parse()
            .context("--token-budget (--max-num-batched-tokens) must be a number or `auto`")?;
        Ok(TokenBudget::Fixed(tokens))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn parse(args: &[&str]) -> Result<ServeArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("serve").chain(args.iter().copied())).map(|c| c.serve)
    }

    #[test]
    fn a_vllm_command_line_parses_into_our_flags() {
        let args = parse(&[
            "Qwen/Qwen2.5-0.5B-Instruct",
            "--max-model-len",
            "4096",
            "--max-num-seqs",
            "32",
            "--max-num-batched-tokens",
            "1024",
            "--gpu-memory-utilization",
            "0.85",
            "--enforce-eager",
            "--served-model-name",
            "qwen",
            "--dtype",
            "bfloat16",
            "--tensor-parallel-size",
            "1",
            "--trust-remote-code",
            "--disable-log-requests",
            "--seed",
            "7",
        ])
        .unwrap();
        assert_eq!(
            args.model_spec().unwrap(),
            Some("Qwen/Qwen2.5-0.5B-Instruct")
        );
        assert_eq!((args.max_context, args.max_seqs), (4096, 32));
        assert_eq!(args.token_budget().unwrap(), TokenBudget::Fixed(1024));
        assert!(args.no_cuda_graphs && args.disable_log_requests && args.trust_remote_code);
        assert_eq!((args.gpu_memory_utilization, args.seed), (0.85, 7));
        assert_eq!(args.dtype, Dtype::Bfloat16);
        // bf16 is the GPU's type: on the CPU (the default device) it is refused by name.
        let error = args.check().unwrap_err().to_string();
        assert!(
            error.contains("--dtype bfloat16") && error.contains("float32"),
            "{error}"
        );
    }

    #[test]
    fn enumerations_are_checked_by_clap_and_listed() {
        let error = parse(&["--device", "tpu"]).unwrap_err().to_string();
        assert!(
            error.contains("auto") && error.contains("cpu") && error.contains("cuda"),
            "{error}"
        );
        let error = parse(&["--scheduler", "fcfs"]).unwrap_err().to_string();
        assert!(error.contains("prefill-first"), "{error}");
        assert_eq!(
            parse(&["--kv-layout", "perLayer"]).unwrap().kv_layout,
            KvLayoutArg::PerLayer
        );
        assert_eq!(
            parse(&["--kv-layout", "PERLAYER"]).unwrap().kv_layout,
            KvLayoutArg::PerLayer
        );
        assert!(parse(&["--dtype", "int4"]).is_err());
    }

    #[test]
    fn quantization_gguf_is_for_gguf_files() {
        let q = parse(&["--quantization", "gguf"]).unwrap().quantization;
        assert_eq!(q, Some(Quantization::Gguf));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("m.gguf");
        std::fs::write(&file, b"GGUF").unwrap();
        Quantization::check_model(q, Some(&file)).unwrap();
        Quantization::check(q, false).unwrap();
        let error = Quantization::check_model(q, Some(dir.path()))
            .unwrap_err()
            .to_string();
        assert!(error.contains("not a GGUF file"), "{error}");
        let error = Quantization::check_model(q, None).unwrap_err().to_string();
        assert!(error.contains("dummy weights"), "{error}");
        Quantization::check_model(None, None).unwrap();
    }

    #[test]
    fn values_that_cannot_work_are_refused_before_start_up() {
        let refuse = |args: &[&str], says: &str| {
            let error = parse(args).unwrap().check().unwrap_err().to_string();
            assert!(error.contains(says), "{args:?}: {error}");
        };
        refuse(&["--tensor-parallel-size", "2"], "one replica per GPU");
        refuse(&["--pipeline-parallel-size", "2"], "pipeline parallelism");
        refuse(&["--gpu-memory-utilization", "1.5"], "(0, 1]");
        refuse(&["--device", "cuda", "--dtype", "float32"], "bfloat16");
        refuse(&["--dtype", "half"], "float32");
        refuse(
            &["--device", "cpu", "--quantization", "fp8"],
            "runs on the GPU",
        );
        refuse(&["--max-num-batched-tokens", "lots"], "a number or `auto`");
        refuse(
            &["--device", "cpu", "--decode-kernel", "persistent"],
            "runs on the GPU",
        );
        refuse(&["a.gguf", "--model", "b.gguf"], "given twice");
        parse(&["a.gguf", "--model", "a.gguf"])
            .unwrap()
            .check()
            .unwrap();
        parse(&["--device", "auto", "--dtype", "auto"])
            .unwrap()
            .check()
            .unwrap();
    }
}
