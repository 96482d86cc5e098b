//! Start-up's loading steps: where the model is (a local file or directory; a Hub name gets
//! the `fused-daemon fetch` command that brings it), reading its weights with progress lines
//! (bytes read, bytes/s), its tokenizer, an optional chat template and vocabulary patch.
//!
//! Must not: bind ports or start the engine (mod.rs does, in that order).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::{LoadFormat, ServeArgs};
use crate::model::gguf::{GgufFile, GgufSource};
use crate::model::progress::{LoadProgress, Progress};
use crate::model::safetensors::SafetensorsSource;
use crate::model::weights::TensorSource;
use crate::model::{Model, ModelConfig};
use crate::tokenizer::Codec;
use crate::vocab::serving::ServedPatch;

/// The default model's file name in the model cache (fetched by `scripts/fetch-model.sh`).
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// How often a long load logs its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// Where the default model lives: `$FUSED_MODEL_CACHE` or `~/.cache/fusedmodel/models`.
pub fn model_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FUSED_MODEL_CACHE") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    base.join("fusedmodel").join("models")
}

/// The weights to read: `spec` (MODEL / `--model`) as a local path, or the default model in the
/// cache. Cheap (no weights are read), so start-up fails here before binding the port.
pub fn model_path(spec: Option<&str>) -> anyhow::Result<PathBuf> {
    let Some(spec) = spec else {
        let default = model_cache_dir().join(DEFAULT_MODEL_FILE);
        if !default.exists() {
            bail!(
                "the default model is not in the cache ({}). Fetch it with `scripts/fetch-model.sh` \
                 (or pass MODEL: a .gguf file or an HF directory)",
                default.display()
            );
        }
        return Ok(default);
    };
    let path = PathBuf::from(spec);
    if path.exists() {
        return Ok(path);
    }
    if looks_like_hub_name(spec) {
        let name = spec.rsplit('/').next().unwrap_or(spec);
        bail!(
            "`{spec}` is not a file or directory here, and fused-daemon does not download models \
             at start-up. Fetch it into the model cache first:\n  \
             fused-daemon fetch --uri hf://{spec} --cache-dir {cache} --out-link {name}\n\
             then serve the directory: fused-daemon serve ./{name}",
            cache = model_cache_dir().display()
        );
    }
    bail!("--model {spec}: no such file or directory")
}

/// `org/name` as the Hugging Face Hub spells a repository (not a relative path that exists).
fn looks_like_hub_name(spec: &str) -> bool {
    let mut parts = spec.split('/');
    let ok = |part: Option<&str>| {
        part.is_some_and(|p| {
            !p.is_empty()
                && !p.starts_with('.')
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
    };
    ok(parts.next()) && ok(parts.next()) && parts.next().is_none()
}

/// What loading produced: host weights (`None` for dummy weights the GPU makes itself), the
/// model's shape, its tokenizer and the name it is served under by default.
pub struct Loaded {
    pub model: Option<Model>,
    /// A vocabulary patch whose rows the GPU lays into its own embedding and head once its
    /// weights are there (`model` is `None`); a host model is patched here already.
    pub vocab_patch: Option<ServedPatch>,
    pub config: ModelConfig,
    pub codec: Codec,
    pub default_name: String,
}

/// Loads what `args` names. `on_gpu`: the GPU makes dummy weights itself and streams an HF
/// checkpoint to the device itself (no host copy: `model` is `None`). `step` is told where the
/// load is (for `/ready`).
pub fn load(args: &ServeArgs, on_gpu: bool, step: &dyn Fn(String)) -> anyhow::Result<Loaded> {
    let host_dummy = !on_gpu;
    let started = Instant::now();
    let spec = args.model_spec()?;
    let (mut model, config, codec, default_name) = match args.load_format {
        LoadFormat::Dummy => {
            let shape = spec.context("--load-format dummy needs --model <preset|config.json>")?;
            let config = match ModelConfig::preset(shape) {
                Some(c) => c,
                None if Path::new(shape).is_file() => ModelConfig::from_hf_json(Path::new(shape))?,
                None => bail!(
                    "unknown shape `{shape}`: use a preset ({}) or a config.json",
                    ModelConfig::PRESETS.join(", ")
                ),
            };
            let tokenizer = args
                .tokenizer
                .as_deref()
                .context("dummy weights have no tokenizer: pass --tokenizer")?;
            step(format!("reading the tokenizer {}", tokenizer.display()));
            let codec = Codec::from_path(tokenizer)
                .with_context(|| format!("loading tokenizer {}", tokenizer.display()))?;
            tracing::info!(
                shape,
                params = config.parameter_count(),
                "generating dummy weights"
            );
            step(format!("generating dummy weights ({shape})"));
            let model = if host_dummy {
                Some(Model::dummy(config.clone(), args.seed)?)
            } else {
                None
            };
            (model, config, codec, format!("dummy-{shape}"))
        }
        LoadFormat::Auto => {
            let path = model_path(spec)?;
            let name = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "model".into());
            if on_gpu && streams_to_gpu(args, &path) {
                step(format!(
                    "reading {} (its weights stream to the GPU)",
                    path.display()
                ));
                let config = ModelConfig::from_hf_json(&path.join("config.json"))?;
                let codec = Codec::from_path(args.tokenizer.as_deref().unwrap_or(&path))?;
                (None, config, codec, name)
            } else {
                let (model, codec) =
                    open_model_reporting(&path, args.tokenizer.as_deref(), on_gpu, step)?;
                let config = model.config.clone();
                (Some(model), config, codec, name)
            }
        }
    };
    let codec = match &args.chat_template {
        None => codec,
        Some(template) => codec.with_chat_template(chat_template_source(template)?)?,
    };
    let sha256 = args.patch_sha256.as_deref();
    let (codec, vocab_patch) = match (&args.patch_tokenizer, model.as_mut()) {
        (None, _) => (codec, None),
        (Some(dir), Some(model)) => {
            step("applying the vocabulary patch".into());
            (apply_patch(model, codec, dir, sha256)?, None)
        }
        (Some(dir), None) => {
            step("reading the vocabulary patch (the GPU applies it to its weights)".into());
            let (codec, patch) = load_patch(dir, sha256, codec)?;
            if patch.rows.hidden != config.hidden {
                bail!(
                    "the patch {} has rows of {} values; the model's hidden size is {}",
                    dir.display(),
                    patch.rows.hidden,
                    config.hidden
                );
            }
            (codec, Some(patch))
        }
    };
    if codec.vocab_size() > config.vocab_size {
        bail!(
            "the tokenizer has {} ids but the model only {} embedding rows",
            codec.vocab_size(),
            config.vocab_size
        );
    }
    tracing::info!(
        seconds = started.elapsed().as_secs_f64(),
        params = config.parameter_count(),
        "model loaded"
    );
    Ok(Loaded {
        model,
        vocab_patch,
        config,
        codec,
        default_name,
    })
}

/// Whether the GPU loads `path` itself, streaming the checkpoint to the device: an HF directory
/// of a family the GPU streams (GPT-2's goes through the host, which transposes its matrices).
pub fn streams_to_gpu(args: &ServeArgs, path: &Path) -> bool {
    let streamable = || {
        ModelConfig::from_hf_json(&path.join("config.json")).is_ok_and(|c| c.arch.streams_to_gpu())
    };
    args.load_format == LoadFormat::Auto && path.is_dir() && streamable()
}

/// `--chat-template`: a file's contents, or the value itself when it is a template (vLLM's
/// rule); a value that is neither is refused.
fn chat_template_source(value: &str) -> anyhow::Result<String> {
    let path = Path::new(value);
    if path.is_file() {
        return std::fs::read_to_string(path)
            .with_context(|| format!("reading --chat-template {}", path.display()));
    }
    if value.contains("{{") || value.contains("{%") {
        return Ok(value.to_owned());
    }
    bail!("--chat-template {value}: no such file, and not a Jinja template either")
}

/// A model and its tokenizer (its own, or `tokenizer`) from a GGUF file or an HF directory.
pub fn open_model(path: &Path, tokenizer: Option<&Path>) -> anyhow::Result<(Model, Codec)> {
    open_model_reporting(path, tokenizer, false, &|_| {})
}

/// [`open_model`], logging the load's progress (and telling `step`) every few seconds and its
/// rate at the end. `for_gpu`: the model is only uploaded, so a GGUF's block matrices come
/// without their f32 values (the device expands the blocks).
fn open_model_reporting(
    path: &Path,
    tokenizer: Option<&Path>,
    for_gpu: bool,
    step: &dyn Fn(String),
) -> anyhow::Result<(Model, Codec)> {
    let bytes_total = checkpoint_bytes(path);
    tracing::info!(model = %path.display(), bytes = bytes_total, "reading weights");
    step(format!("reading weights from {}", path.display()));
    let mut report = |p: LoadProgress| {
        let line = format!(
            "reading weights: {:.0}% ({:.1} of {:.1} MB, {:.1} MB/s)",
            100.0 * p.fraction(),
            p.bytes_read as f64 / 1e6,
            p.bytes_total as f64 / 1e6,
            p.rate() / 1e6
        );
        tracing::info!("{line}");
        step(line);
    };
    let (model, codec, progress) = if path.is_dir() {
        let codec = Codec::from_path(tokenizer.unwrap_or(path))?;
        let config = ModelConfig::from_hf_json(&path.join("config.json"))?;
        let mut source = SafetensorsSource::open(path)?;
        let (model, progress) = load_reporting(config, &mut source, bytes_total, &mut report)?;
        (model, codec, progress)
    } else {
        let file = GgufFile::open(path)?;
        let codec = match tokenizer {
            Some(t) => Codec::from_path(t)?,
            None => Codec::from_gguf(&file.content)
                .context("reading the tokenizer from GGUF metadata")?,
        };
        let config = file.config()?;
        let mut source = GgufSource::new(file, &config);
        if for_gpu {
            source = source.blocks_only();
        }
        let (model, progress) = load_reporting(config, &mut source, bytes_total, &mut report)?;
        (model, codec, progress)
    };
    tracing::info!(
        bytes = progress.bytes_read,
        seconds = progress.elapsed.as_secs_f64(),
        mb_per_s = progress.rate() / 1e6,
        "weights read: {:.1} MB in {:.2} s ({:.1} MB/s)",
        progress.bytes_read as f64 / 1e6,
        progress.elapsed.as_secs_f64(),
        progress.rate() / 1e6
    );
    Ok((model, codec))
}

/// Loads `config`'s weights from `source` through a progress counter; returns the last
/// progress (every byte read).
fn load_reporting(
    config: ModelConfig,
    source: &mut dyn TensorSource,
    bytes_total: u64,
    report: &mut dyn FnMut(LoadProgress),
) -> anyhow::Result<(Model, LoadProgress)> {
    let params = config.parameter_count() as u64;
    let mut progress = Progress::new(source, params, bytes_total, PROGRESS_EVERY, report);
    let model = Model::load(config, &mut progress)?;
    let done = LoadProgress {
        bytes_read: bytes_total,
        ..progress.now()
    };
    Ok((model, done))
}

/// Bytes of the checkpoint at `path`: the GGUF file, or a directory's safetensors files.
fn checkpoint_bytes(path: &Path) -> u64 {
    let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    if !path.is_dir() {
        return size(path);
    }
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
                .map(|p| size(&p))
                .sum()
        })
        .unwrap_or(0)
}

/// Loads the AdaptiVocab patch in `dir` onto `codec` (refusing one built for another base
/// tokenizer, or whose digest is not `sha256`), keeping its rows for the weights.
fn load_patch(
    dir: &Path,
    sha256: Option<&str>,
    codec: Codec,
) -> anyhow::Result<(Codec, ServedPatch)> {
    crate::vocab::serving::load_for_serving(dir, sha256, codec)
        .with_context(|| format!("loading the patch tokenizer {}", dir.display()))
}

/// Loads the AdaptiVocab patch in `dir` onto `codec` (refusing one built for another base
/// tokenizer, or whose digest is not `sha256`) and patches `model`'s embedding and LM head.
pub fn apply_patch(
    model: &mut Model,
    codec: Codec,
    dir: &Path,
    sha256: Option<&str>,
) -> anyhow::Result<Codec> {
    let (codec, patch) = load_patch(dir, sha256, codec)?;
    let weights = &mut model.weights;
    let (embed, head) = patch.tokenizer.remap_embedding_and_head(
        &weights.embed,
        weights.lm_head(),
        model.config.vocab_size,
        &patch.rows,
    )?;
    weights.set_vocab(embed, head);
    tracing::info!(patch = %dir.display(), new_tokens = patch.rows.ids.len(), "vocabulary patch applied");
    Ok(codec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hub_name_that_is_not_a_path_says_how_to_fetch_it() {
        let error = model_path(Some("HuggingFaceTB/SmolLM2-135M-Instruct"))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains(
                "fused-daemon fetch --uri hf://HuggingFaceTB/SmolLM2-135M-Instruct --cache-dir"
            ) && error.contains("--out-link SmolLM2-135M-Instruct"),
            "{error}"
        );
        let error = model_path(Some("/no/such/model.gguf"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("no such file"), "{error}");
        assert!(!looks_like_hub_name("./x/y") && !looks_like_hub_name("a/b/c"));
        assert!(looks_like_hub_name("meta-llama/Llama-3.1-8B-Instruct"));
    }

    #[test]
    fn only_checkpoints_of_families_the_gpu_streams_skip_the_host_load() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            serve: ServeArgs,
        }
        let args = |extra: &[&str]| {
            let argv = std::iter::once("serve").chain(extra.iter().copied());
            Cli::try_parse_from(argv).expect("valid flags").serve
        };
        let dir = tempfile::tempdir().unwrap();
        for (preset, streams) in [
            ("smollm2-135m", true),
            ("qwen2.5-0.5b", true),
            ("gpt2", false),
        ] {
            let model = dir.path().join(preset);
            std::fs::create_dir_all(&model).unwrap();
            let config = ModelConfig::preset(preset).expect("preset").to_hf_json();
            std::fs::write(model.join("config.json"), config.to_string()).unwrap();
            assert_eq!(streams_to_gpu(&args(&[]), &model), streams, "{preset}");
        }
        // A patch is laid into the GPU's own matrices; an unreadable config loads on the host,
        // which reports it.
        let llama = dir.path().join("smollm2-135m");
        assert!(streams_to_gpu(&args(&["--patch-tokenizer", "p"]), &llama));
        std::fs::write(llama.join("config.json"), "{").unwrap();
        assert!(!streams_to_gpu(&args(&[]), &llama));
    }

    #[test]
    fn a_chat_template_is_a_file_or_a_template() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("t.jinja");
        std::fs::write(&file, "{{ messages[0].content }}").unwrap();
        assert_eq!(
            chat_template_source(file.to_str().unwrap()).unwrap(),
            "{{ messages[0].content }}"
        );
        assert_eq!(
            chat_template_source("{% if x %}y{% endif %}").unwrap(),
            "{% if x %}y{% endif %}"
        );
        assert!(chat_template_source("template.jinja").is_err());
    }
}
