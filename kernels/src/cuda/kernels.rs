//! [`Kernels`]: the sources in `cu/` compiled for one device and loaded, each entry point typed by
//! its C prototype (see [`launch`](super::launch)), with the knobs benchmarks turn. The launch
//! wrappers live beside the kernels they drive: [`elementwise`](super::elementwise),
//! [`linear`](super::linear), [`attention`](super::attention).

use std::path::Path;
use std::sync::Arc;

use cudarc::driver::{CudaModule, CudaStream, LaunchConfig};
use cudarc::nvrtc::Ptx;
use half::bf16;

use super::compile::{CacheStatus, compile_cubin};
use super::device::GpuDevice;
use super::error::{CudaError, DriverResult, as_u32};
use super::launch::{In, Kernel, Nullable, NullableOut, Out, Signature};
use super::linear::{GemvBuild, OutVoid};

/// The kernel sources, in the order they are concatenated for NVRTC.
pub const SOURCES: [(&str, &str); 7] = [
    ("common.cuh", include_str!("cu/common.cuh")),
    ("elementwise.cu", include_str!("cu/elementwise.cu")),
    ("attention.cu", include_str!("cu/attention.cu")),
    ("fp8.cu", include_str!("cu/fp8.cu")),
    ("gemv.cu", include_str!("cu/gemv.cu")),
    ("blocks.cu", include_str!("cu/blocks.cu")),
    ("persist.cu", include_str!("cu/persist.cu")),
];

// The prototypes, as `cu/` declares them (parameter names in the comments; the long ones laid out
// line for line as in the source).

/// `embed_rows(tokens, table, positions, pos_table, x, hidden)`.
pub(crate) type Embed = Kernel<(
    In<u32>,
    In<bf16>,
    Nullable<u32>,
    Nullable<bf16>,
    Out<f32>,
    i32,
)>;
/// `norm_rows(x, weight, bias, out, row_map, hidden, eps)`.
pub(crate) type Norm = Kernel<(
    In<f32>,
    In<f32>,
    Nullable<f32>,
    Out<bf16>,
    Nullable<u32>,
    i32,
    f32,
)>;
/// `rope_kv_write(qkv, bias, q_out, positions, row_chunk, kv, token_stride, cos_table, sin_table,
/// heads, kv_heads, head_dim, use_rope)`.
#[rustfmt::skip]
pub(crate) type RopeKv = Kernel<(
    In<f32>, Nullable<f32>, Out<bf16>, In<u32>,
    In<u32>, In<u64>,
    i64, Nullable<f32>,
    Nullable<f32>, i32, i32,
    i32, i32,
)>;
/// `silu_mul_rows(gu, out, rows, ffn)`.
pub(crate) type SiluMul = Kernel<(In<bf16>, Out<bf16>, i32, i32)>;
/// `gelu_bias_rows(in, bias, out, n)`.
pub(crate) type GeluBias = Kernel<(In<bf16>, In<f32>, Out<bf16>, i32)>;
/// `add_bias_rows(x, bias, n)`.
pub(crate) type AddBias = Kernel<(Out<f32>, In<f32>, i32)>;
/// `argmax_rows(logits, out, vocab)`.
pub(crate) type Argmax = Kernel<(In<f32>, Out<u32>, i32)>;
/// `fill_uniform_{bf16,f32}(out, n, seed, lo, hi)`.
pub(crate) type FillUniform<T> = Kernel<(Out<T>, u64, u64, f32, f32)>;
/// `attn_prefill_d*(q, out, tile_chunk, tile_row0, chunk_q_start, chunk_len, chunk_start, kv,
/// token_stride, heads, kv_heads, scale_log2)`.
#[rustfmt::skip]
pub(crate) type Prefill = Kernel<(
    In<bf16>, Out<bf16>, In<u32>, In<u32>,
    In<u32>, In<u32>, In<u32>,
    In<u64>, i64, i32, i32, f32,
)>;
/// `attn_decode_d*_g*(q, dec_row, dec_chunk, chunk_len, chunk_start, kv, token_stride, heads,
/// kv_heads, split_len, splits, scale_log2, part_o, part_ml)`.
#[rustfmt::skip]
pub(crate) type Decode = Kernel<(
    In<bf16>, In<u32>, In<u32>,
    In<u32>, In<u32>, In<u64>,
    i64, i32, i32, i32, i32,
    f32, Out<f32>, Out<f32>,
)>;
/// `attn_decode_combine(part_o, part_ml, dec_row, out, heads, head_dim, splits)`.
pub(crate) type Combine = Kernel<(In<f32>, In<f32>, In<u32>, Out<bf16>, i32, i32, i32)>;
/// `gemv_r*_p*(x, w, y, rows, out, in, mode, ksplit)`; `y` is `void*`, typed by `mode`.
pub(crate) type Gemv = Kernel<(In<bf16>, In<bf16>, OutVoid, i32, i32, i32, i32, i32)>;
/// `gemv_fp8_r*_p*(x, w, scale, y, rows, out, in, mode, ksplit)`.
pub(crate) type GemvFp8 = Kernel<(In<bf16>, In<u8>, In<f32>, OutVoid, i32, i32, i32, i32, i32)>;
/// `quantize_fp8_rows(w, q, scale, in)`.
pub(crate) type QuantizeFp8 = Kernel<(In<bf16>, Out<u8>, Out<f32>, i32)>;
/// `dequantize_fp8_rows(q, scale, w, out, in)`.
pub(crate) type DequantizeFp8 = Kernel<(In<u8>, In<f32>, Out<bf16>, i32, i32)>;
/// `gemv_{q8_0,q4_k}_r*_p*(x, w, scales, y, rows, out, in, mode)` (`scales`: Q8_0's, null for
/// Q4_K).
pub(crate) type GemvBlocks = Kernel<(In<bf16>, In<u8>, Nullable<u16>, OutVoid, i32, i32, i32, i32)>;
/// `dequantize_q8_0_rows(codes, scales, w, out, in)`.
pub(crate) type DequantizeQ8 = Kernel<(In<u8>, In<u16>, Out<bf16>, i32, i32)>;
/// `dequantize_q4_k_rows(blocks, w, out, in)`.
pub(crate) type DequantizeQ4K = Kernel<(In<u8>, Out<bf16>, i32, i32)>;
/// `dequantize_gguf_units(blocks, w, kind, block_bytes, block_units, units)`.
pub(crate) type DequantizeGguf = Kernel<(In<u8>, Out<bf16>, i32, i32, i32, i64)>;
/// `decode_persistent(table, kv, positions, dims, x, q_buf, part_o, part_ml, act, counter,
/// cos_table, sin_table, token_stride, eps, scale_log2, base, timers)`.
#[rustfmt::skip]
pub(crate) type DecodePersistent = Kernel<(
    In<u64>, In<u64>, In<u32>, In<u32>,
    Out<f32>, Out<bf16>, Out<f32>, Out<f32>, Out<bf16>, Out<u64>,
    Nullable<f32>, Nullable<f32>, i64, f32, f32, u64, NullableOut<u64>,
)>;

/// The eight builds of a GEMV family `PREFIX_r{1,2,4,8}_p{0,1}`, at `4 pair + rows bucket`.
macro_rules! gemv_names {
    ($prefix:literal) => {
        [
            concat!($prefix, "_r1_p0"),
            concat!($prefix, "_r2_p0"),
            concat!($prefix, "_r4_p0"),
            concat!($prefix, "_r8_p0"),
            concat!($prefix, "_r1_p1"),
            concat!($prefix, "_r2_p1"),
            concat!($prefix, "_r4_p1"),
            concat!($prefix, "_r8_p1"),
        ]
    };
}

/// The kernels `names` of `module`, in order.
fn load_family<S: Signature, const N: usize>(
    module: &Arc<CudaModule>,
    names: [&'static str; N],
) -> Result<Vec<Kernel<S>>, CudaError> {
    names
        .into_iter()
        .map(|name| Kernel::load(module, name))
        .collect()
}

/// The compiled kernels, launched on the device's stream.
pub struct Kernels {
    pub(crate) stream: Arc<CudaStream>,
    pub(crate) multiprocessors: usize,
    pub(crate) embed: Embed,
    pub(crate) norm: Norm,
    pub(crate) rope_kv: RopeKv,
    pub(crate) silu_mul: SiluMul,
    pub(crate) gelu_bias: GeluBias,
    pub(crate) add_bias: AddBias,
    pub(crate) argmax: Argmax,
    pub(crate) fill_bf16: FillUniform<bf16>,
    pub(crate) fill_f32: FillUniform<f32>,
    pub(crate) prefill_64: Prefill,
    pub(crate) prefill_128: Prefill,
    pub(crate) prefill_128_occ3: Prefill,
    /// Use the 168-register build of the d128 prefill kernel (3 blocks per SM).
    pub prefill_occupancy3: bool,
    /// `gemv_r{1,2,4,8}_p{pair}` at `4 pair + rows bucket`.
    pub(crate) gemv: Vec<Gemv>,
    /// `gemv_fp8_r{1,2,4,8}_p{pair}` at `4 pair + rows bucket`.
    pub(crate) gemv_fp8: Vec<GemvFp8>,
    /// `gemv_mma_p{pair}`: the tensor-core GEMV.
    pub(crate) gemv_mma_bf16: Vec<Gemv>,
    /// `gemv_mma_fp8_p{pair}`.
    pub(crate) gemv_mma_fp8: Vec<GemvFp8>,
    /// Which GEMV build runs each product (default: [`GemvBuild::Auto`]); benchmarks and
    /// checks pin one.
    pub gemv_build: GemvBuild,
    pub(crate) quantize_fp8: QuantizeFp8,
    pub(crate) dequantize_fp8: DequantizeFp8,
    /// `gemv_q8_0_r{1,2,4,8}_p{pair}` at `4 pair + rows bucket`.
    pub(crate) gemv_q8_0: Vec<GemvBlocks>,
    /// `gemv_q4_k_r{1,2,4,8}_p{pair}` at `4 pair + rows bucket`.
    pub(crate) gemv_q4_k: Vec<GemvBlocks>,
    pub(crate) dequantize_q8_0: DequantizeQ8,
    pub(crate) dequantize_q4_k: DequantizeQ4K,
    pub(crate) dequantize_gguf: DequantizeGguf,
    pub(crate) decode_persistent: DecodePersistent,
    /// Blocks a GEMV should have: rows are split over up to 8 warps until it has as many (the
    /// default, one block per 32 threads an SM holds, keeps every SM streaming; 0 never splits).
    pub gemv_min_blocks: usize,
    /// Decode attention by head dim (64, 128) and largest group (1, 4, 8).
    pub(crate) decode: [[Decode; 3]; 2],
    pub(crate) combine: Combine,
    /// Launch kernels as programmatic dependents of the previous one (set when the device
    /// supports it, sm_90 and later; benchmarks turn it off to measure what it brings).
    pub dependent_launch: bool,
}

impl std::fmt::Debug for Kernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kernels")
    }
}

/// A launch of `x × y × z` blocks of `block` threads.
pub(crate) fn grid(x: usize, y: usize, z: usize, block: u32) -> Result<LaunchConfig, CudaError> {
    Ok(LaunchConfig {
        grid_dim: (
            as_u32(x, "grid x")?,
            as_u32(y, "grid y")?,
            as_u32(z, "grid z")?,
        ),
        block_dim: (block, 1, 1),
        shared_mem_bytes: 0,
    })
}

impl Kernels {
    /// Compiles (or loads from `cache_dir`) the kernels for `device` and loads them.
    pub fn load(
        device: &GpuDevice,
        cache_dir: Option<&Path>,
    ) -> Result<(Self, CacheStatus), CudaError> {
        Self::load_with(device, cache_dir, &[])
    }

    /// [`Kernels::load`] with build-time knobs of the sources set (`#define NAME value` ahead of
    /// them, e.g. `GEMV_UNROLL`): what benchmarks use to compare variants in one process.
    pub fn load_with(
        device: &GpuDevice,
        cache_dir: Option<&Path>,
        defines: &[(&str, i64)],
    ) -> Result<(Self, CacheStatus), CudaError> {
        let source: String = defines
            .iter()
            .map(|(name, value)| format!("#define {name} {value}\n"))
            .chain(SOURCES.iter().map(|(_, text)| format!("{text}\n")))
            .collect();
        let (cubin, status) = compile_cubin(&source, &device.arch(), cache_dir)?;
        let module = device
            .context()
            .load_module(Ptx::from_binary(cubin))
            .during("cuModuleLoadData")?;
        let m = &module;
        let kernels = Self {
            stream: device.stream().clone(),
            multiprocessors: device.multiprocessors(),
            embed: Kernel::load(m, "embed_rows")?,
            norm: Kernel::load(m, "norm_rows")?,
            rope_kv: Kernel::load(m, "rope_kv_write")?,
            silu_mul: Kernel::load(m, "silu_mul_rows")?,
            gelu_bias: Kernel::load(m, "gelu_bias_rows")?,
            add_bias: Kernel::load(m, "add_bias_rows")?,
            argmax: Kernel::load(m, "argmax_rows")?,
            fill_bf16: Kernel::load(m, "fill_uniform_bf16")?,
            fill_f32: Kernel::load(m, "fill_uniform_f32")?,
            prefill_64: Kernel::load(m, "attn_prefill_d64")?,
            prefill_128: Kernel::load(m, "attn_prefill_d128")?,
            prefill_128_occ3: Kernel::load(m, "attn_prefill_d128_occ3")?,
            prefill_occupancy3: false,
            gemv: load_family(m, gemv_names!("gemv"))?,
            gemv_fp8: load_family(m, gemv_names!("gemv_fp8"))?,
            gemv_mma_bf16: load_family(m, ["gemv_mma_p0", "gemv_mma_p1"])?,
            gemv_mma_fp8: load_family(m, ["gemv_mma_fp8_p0", "gemv_mma_fp8_p1"])?,
            gemv_build: GemvBuild::default(),
            quantize_fp8: Kernel::load(m, "quantize_fp8_rows")?,
            dequantize_fp8: Kernel::load(m, "dequantize_fp8_rows")?,
            gemv_q8_0: load_family(m, gemv_names!("gemv_q8_0"))?,
            gemv_q4_k: load_family(m, gemv_names!("gemv_q4_k"))?,
            dequantize_q8_0: Kernel::load(m, "dequantize_q8_0_rows")?,
            dequantize_q4_k: Kernel::load(m, "dequantize_q4_k_rows")?,
            dequantize_gguf: Kernel::load(m, "dequantize_gguf_units")?,
            decode_persistent: Kernel::load(m, "decode_persistent")?,
            gemv_min_blocks: 8 * device.multiprocessors(),
            decode: [
                [
                    Kernel::load(m, "attn_decode_d64_g1")?,
                    Kernel::load(m, "attn_decode_d64_g4")?,
                    Kernel::load(m, "attn_decode_d64_g8")?,
                ],
                [
                    Kernel::load(m, "attn_decode_d128_g1")?,
                    Kernel::load(m, "attn_decode_d128_g4")?,
                    Kernel::load(m, "attn_decode_d128_g8")?,
                ],
            ],
            combine: Kernel::load(m, "attn_decode_combine")?,
            dependent_launch: device.compute_capability().0 >= 9,
        };
        Ok((kernels, status))
    }

    pub fn multiprocessors(&self) -> usize {
        self.multiprocessors
    }

    /// Grid-stride launches: enough blocks to fill the device, no more.
    pub(crate) fn stride_blocks(&self, n: usize, block: usize) -> usize {
        n.div_ceil(block).clamp(1, self.multiprocessors * 16)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Compiles the real sources with the real NVRTC (it needs no GPU: `scripts/test.sh` installs
    /// the library, so CI compiles every kernel on each run) and checks that every entry point
    /// [`Kernels::load_with`] looks up is in the cubin with the parameters its Rust prototype
    /// passes (count and byte size of each, from the cubin's `EIATTR_KPARAM_INFO`): a kernel
    /// renamed, or a parameter added, on one side only fails here rather than at a device's
    /// start or as a launch that reads garbage. Elsewhere, without the library, it skips loudly.
    #[test]
    fn kernel_sources_compile_with_nvrtc_and_match_their_rust_prototypes() {
        // SAFETY: only tries to open the library.
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            assert!(
                std::env::var_os("CI").is_none(),
                "libnvrtc is not on the library path: CI compiles the kernels with it \
                 (scripts/setup-nvrtc.sh prints the directory to put on LD_LIBRARY_PATH)"
            );
            eprintln!("SKIPPED kernel_sources_compile_with_nvrtc: libnvrtc is not installed here");
            return;
        }
        let source: String = SOURCES.iter().map(|(_, t)| format!("{t}\n")).collect();
        let (cubin, status) = compile_cubin(&source, "sm_90", None).expect("sources compile");
        assert_eq!(status, CacheStatus::Disabled);
        assert_eq!(&cubin[..4], b"\x7fELF", "a cubin is an ELF image");
        let loaded = prototypes::loaded(include_str!("kernels.rs"));
        assert!(loaded.len() > 40, "the loads were read: {loaded:?}");
        let mut wrong = Vec::new();
        for (name, rust) in &loaded {
            match prototypes::in_cubin(&cubin, name) {
                Some(cubin) if cubin == *rust => {}
                found => wrong.push(format!(
                    "{name}: Rust passes {rust:?}, the cubin has {found:?}"
                )),
            }
        }
        assert!(
            wrong.is_empty(),
            "parameter bytes differ:\n{}",
            wrong.join("\n")
        );
        assert_eq!(prototypes::in_cubin(&cubin, "no_such_kernel"), None);
        let broken = format!("{source}\nextern \"C\" __global__ void broken() {{ undefined(); }}");
        let error = compile_cubin(&broken, "sm_90", None).expect_err("broken source");
        assert!(error.to_string().contains("undefined"), "{error}");
    }

    /// The two sides of a kernel's prototype: what this file's Rust passes, and what a cubin's
    /// entry point takes (bytes of each parameter, in order).
    mod prototypes {
        use std::collections::HashMap;

        /// Each entry point `load_with` (in `text`, this file) looks up, with the bytes of the
        /// parameters of the `Kernel<(…)>` alias typing the field it fills: the names of
        /// `Kernel::load(m, "…")`, of `load_family(m, [...])` and of each `gemv_names!("…")`
        /// family (expanded with the suffixes the macro's `concat!`s add).
        pub fn loaded(text: &str) -> Vec<(String, Vec<usize>)> {
            let aliases = aliases(text);
            let fields = fields(text);
            let suffixes: Vec<String> = (section(text, "macro_rules! gemv_names", "\n}\n").lines())
                .filter_map(|l| l.trim().strip_prefix("concat!($prefix, "))
                .flat_map(quoted)
                .collect();
            assert_eq!(suffixes.len(), 8, "{suffixes:?}");
            let mut loaded = Vec::new();
            let mut field = "";
            for line in section(text, "pub fn load_with(", "\n    }\n").lines() {
                let line = line.trim();
                if let Some((name, _)) = line.split_once(": ")
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                {
                    field = name;
                }
                let mut names = Vec::new();
                if let Some((_, rest)) = line.split_once("Kernel::load(m, ") {
                    names.extend(quoted(rest).into_iter().take(1));
                } else if let Some((_, rest)) = line.split_once("load_family(m, gemv_names!(") {
                    let prefix = &quoted(rest)[0];
                    names.extend(suffixes.iter().map(|s| format!("{prefix}{s}")));
                } else if let Some((_, rest)) = line.split_once("load_family(m, ") {
                    names.extend(quoted(rest));
                }
                for name in names {
                    let alias = fields.get(field).unwrap_or_else(|| panic!("field {field}"));
                    let params = aliases
                        .get(*alias)
                        .unwrap_or_else(|| panic!("type {alias}"));
                    loaded.push((name, params.clone()));
                }
            }
            loaded
        }

        /// Bytes of each parameter of `name` in `cubin` (its `.nv.info.NAME` section's
        /// `EIATTR_KPARAM_INFO` records, by ordinal), or `None` without such a section.
        pub fn in_cubin(cubin: &[u8], name: &str) -> Option<Vec<usize>> {
            let u16_at = |at: usize| usize::from(u16::from_le_bytes([cubin[at], cubin[at + 1]]));
            let u32_at = |at: usize| u32::from_le_bytes(cubin[at..at + 4].try_into().expect("4"));
            let u64_at = |at: usize| {
                usize::try_from(u64::from_le_bytes(cubin[at..at + 8].try_into().expect("8")))
                    .expect("an offset")
            };
            let (table, entry, count, names) =
                (u64_at(0x28), u16_at(0x3a), u16_at(0x3c), u16_at(0x3e));
            let header = |i: usize| table + i * entry;
            let strings = u64_at(header(names) + 0x18);
            let wanted = format!(".nv.info.{name}\0");
            let info = (0..count).map(header).find(|&h| {
                let at = strings + u32_at(h) as usize;
                cubin[at..].starts_with(wanted.as_bytes())
            })?;
            let (start, len) = (u64_at(info + 0x18), u64_at(info + 0x20));
            let mut params = Vec::new();
            let mut at = start;
            while at < start + len {
                let (format, attribute) = (cubin[at], cubin[at + 1]);
                // EIFMT_SVAL: a u16 size and that many bytes; the others: two bytes.
                let size = if format == 4 { u16_at(at + 2) } else { 0 };
                if format == 4 && attribute == 0x17 {
                    // EIATTR_KPARAM_INFO: index u32, ordinal u16, offset u16, flags u32 (size
                    // in bits 18..32).
                    let ordinal = u16_at(at + 8);
                    let bytes = (u32_at(at + 12) >> 18) as usize;
                    params.push((ordinal, bytes));
                }
                at += 4 + size;
            }
            params.sort_unstable();
            Some(params.into_iter().map(|(_, bytes)| bytes).collect())
        }

        /// `Kernel<(…)>` aliases: name → bytes of each parameter.
        fn aliases(text: &str) -> HashMap<String, Vec<usize>> {
            let mut aliases = HashMap::new();
            let code = &text[..text.find("#[cfg(test)]").expect("the tests")];
            for piece in code.split("pub(crate) type ").skip(1) {
                let name: String = piece.chars().take_while(|c| c.is_alphanumeric()).collect();
                let Some((_, tuple)) = piece.split_once("Kernel<(") else {
                    continue;
                };
                let tuple = &tuple[..tuple.find(")>;").expect("the alias ends")];
                let mut depth = 0;
                let params: Vec<usize> = (tuple.split(|c| {
                    depth += match c {
                        '<' => 1,
                        '>' => -1,
                        _ => 0,
                    };
                    c == ',' && depth == 0
                }))
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(param_bytes)
                .collect();
                aliases.insert(name, params);
            }
            aliases
        }

        /// `Kernels`' fields: name → the alias naming its kernels' type.
        fn fields(text: &str) -> HashMap<&str, &str> {
            (section(text, "pub struct Kernels {", "\n}\n").lines())
                .filter_map(|l| l.trim().strip_prefix("pub(crate) ")?.split_once(": "))
                .map(|(name, ty)| {
                    let ty = ty.trim_start_matches("Vec<").trim_start_matches('[');
                    let end = ty.find(|c: char| !c.is_alphanumeric()).unwrap_or(ty.len());
                    (name, &ty[..end])
                })
                .collect()
        }

        fn param_bytes(param: &str) -> usize {
            let pointer = ["In<", "Out<", "Nullable<", "NullableOut<"];
            match param {
                "OutVoid" | "i64" | "u64" => 8,
                "i32" | "f32" => 4,
                p if pointer.iter().any(|k| p.starts_with(k)) => 8,
                other => panic!("a parameter type this check does not know: {other}"),
            }
        }

        /// `text` from `start` to the first `end` after it.
        fn section<'a>(text: &'a str, start: &str, end: &str) -> &'a str {
            let from = &text[text.find(start).unwrap_or_else(|| panic!("{start}"))..];
            &from[..from
                .find(end)
                .unwrap_or_else(|| panic!("the end of {start}"))]
        }

        /// The "…" strings of `s`.
        fn quoted(s: &str) -> Vec<String> {
            s.split('"').skip(1).step_by(2).map(str::to_owned).collect()
        }
    }
}
