//! NVRTC compilation of the kernel sources to a cubin for one architecture, cached on disk under
//! a name made of the hash of (source, architecture, options), so a second start loads in
//! milliseconds and a changed source never loads a stale cubin.

use std::ffi::{CString, c_char};
use std::path::{Path, PathBuf};

use cudarc::nvrtc::{result, sys};

use super::device::no_panic;
use super::error::CudaError;

/// Options every compile uses (besides the architecture).
const OPTIONS: &[&str] = &["-std=c++17", "--extra-device-vectorization"];

/// What the cache did for one [`compile_cubin`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheStatus {
    /// Loaded from this file; nothing compiled.
    Hit(PathBuf),
    /// Compiled and stored in this file.
    Stored(PathBuf),
    /// Compiled, but the file could not be written (the reason).
    NotStored(PathBuf, String),
    /// Compiled with no cache directory.
    Disabled,
}

/// 64-bit FNV-1a: a stable hash (unlike `DefaultHasher`) for cache file names.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for part in parts {
        for &byte in *part {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        hash ^= 0xff;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// The cubin of `source` for `arch` (`sm_90`), from `cache_dir` when present there.
pub fn compile_cubin(
    source: &str,
    arch: &str,
    cache_dir: Option<&Path>,
) -> Result<(Vec<u8>, CacheStatus), CudaError> {
    let options = OPTIONS.join(" ");
    let key = fnv1a(&[source.as_bytes(), arch.as_bytes(), options.as_bytes()]);
    let path = cache_dir.map(|dir| dir.join(format!("fused-kernels-{key:016x}-{arch}.cubin")));
    if let Some(path) = &path
        && let Ok(cubin) = std::fs::read(path)
        && !cubin.is_empty()
    {
        return Ok((cubin, CacheStatus::Hit(path.clone())));
    }
    let cubin = no_panic("NVRTC", || nvrtc_cubin(source, arch))?;
    let status = match path {
        None => CacheStatus::Disabled,
        Some(path) => match store(&path, &cubin) {
            Ok(()) => CacheStatus::Stored(path),
            Err(error) => CacheStatus::NotStored(path, error.to_string()),
        },
    };
    Ok((cubin, status))
}

/// Writes through a temporary file and a rename, so a concurrent reader never sees half a file.
fn store(path: &Path, cubin: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, cubin)?;
    std::fs::rename(&tmp, path)
}

fn nvrtc_cubin(source: &str, arch: &str) -> Result<Vec<u8>, CudaError> {
    let invalid = |what: &str| CudaError::Compile {
        name: "invalid input".into(),
        log: format!("{what} contains a NUL byte"),
    };
    let src = CString::new(source).map_err(|_| invalid("the source"))?;
    let mut options = vec![format!("--gpu-architecture={arch}")];
    options.extend(OPTIONS.iter().map(|o| o.to_string()));
    if options.iter().any(|o| o.contains('\0')) {
        return Err(invalid("an option"));
    }
    let nvrtc_error = |e: result::NvrtcError| CudaError::Compile {
        name: format!("{:?}", e.0),
        log: String::new(),
    };
    let program = result::create_program(&src, Some(c"fused-kernels.cu")).map_err(nvrtc_error)?;
    // SAFETY: `program` is live until destroyed below; `src` outlives it.
    let compiled = unsafe { result::compile_program(program, &options) };
    let outcome = match compiled {
        Ok(()) => read_cubin(program).map_err(nvrtc_error),
        Err(e) => {
            // SAFETY: `program` is live.
            let log = unsafe { result::get_program_log(program) }
                .map(|chars| c_chars_to_string(&chars))
                .unwrap_or_default();
            Err(CudaError::Compile {
                name: format!("{:?}", e.0),
                log,
            })
        }
    };
    // SAFETY: created above and destroyed once.
    let _ = unsafe { result::destroy_program(program) };
    outcome
}

fn read_cubin(program: sys::nvrtcProgram) -> Result<Vec<u8>, result::NvrtcError> {
    let mut size = 0usize;
    // SAFETY: `program` was compiled; valid out-pointer.
    unsafe { sys::nvrtcGetCUBINSize(program, &mut size) }.result()?;
    let mut cubin = vec![0u8; size];
    // SAFETY: the buffer holds `size` bytes as NVRTC asked.
    unsafe { sys::nvrtcGetCUBIN(program, cubin.as_mut_ptr().cast::<c_char>()) }.result()?;
    Ok(cubin)
}

fn c_chars_to_string(chars: &[c_char]) -> String {
    let bytes: Vec<u8> = chars
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_separates_parts_and_is_stable() {
        assert_ne!(fnv1a(&[b"ab", b"c"]), fnv1a(&[b"a", b"bc"]));
        assert_eq!(fnv1a(&[b"x"]), fnv1a(&[b"x"]));
    }

    #[test]
    fn a_cached_cubin_is_read_without_compiling() {
        let dir = std::env::temp_dir().join(format!("fused-cubin-test-{}", std::process::id()));
        let source = "extern \"C\" __global__ void k() {}";
        let key = fnv1a(&[source.as_bytes(), b"sm_90", OPTIONS.join(" ").as_bytes()]);
        let path = dir.join(format!("fused-kernels-{key:016x}-sm_90.cubin"));
        store(&path, b"not really a cubin").expect("temp dir is writable");
        let (cubin, status) = compile_cubin(source, "sm_90", Some(&dir)).expect("cache hit");
        assert_eq!(cubin, b"not really a cubin");
        assert_eq!(status, CacheStatus::Hit(path));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
