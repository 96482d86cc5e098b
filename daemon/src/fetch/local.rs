//! `file://` artifacts: a file, or a directory (walked recursively; symlinks are followed), as
//! seen by the fetcher (a path in the image or on a mounted volume).

use std::path::Path;

use super::error::FetchError;
use super::plan::{Part, Plan};
use super::transfer::Source;

/// The plan for the file or directory at `path`.
pub fn plan(path: &Path) -> Result<Plan, FetchError> {
    let metadata = std::fs::metadata(path).map_err(|e| not_found_or_unreachable(path, e))?;
    if !metadata.is_dir() {
        return Ok(Plan::File(Part::unverified(Source::Local(path.to_owned()))));
    }
    let mut files = Vec::new();
    walk(path, "", &mut files)?;
    if files.is_empty() {
        return Err(FetchError::NotFound {
            location: path.display().to_string(),
            detail: "the directory holds no files".into(),
        });
    }
    Ok(Plan::Dir(files))
}

fn walk(dir: &Path, prefix: &str, files: &mut Vec<(String, Part)>) -> Result<(), FetchError> {
    let entries = std::fs::read_dir(dir).map_err(|e| not_found_or_unreachable(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| not_found_or_unreachable(dir, e))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let relative = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let metadata = std::fs::metadata(&path).map_err(|e| not_found_or_unreachable(&path, e))?;
        if metadata.is_dir() {
            walk(&path, &relative, files)?;
        } else {
            files.push((relative, Part::unverified(Source::Local(path))));
        }
    }
    Ok(())
}

fn not_found_or_unreachable(path: &Path, error: std::io::Error) -> FetchError {
    let location = path.display().to_string();
    if error.kind() == std::io::ErrorKind::NotFound {
        FetchError::NotFound {
            location,
            detail: "no such file or directory".into(),
        }
    } else {
        FetchError::Unreachable {
            location,
            detail: error.to_string(),
        }
    }
}
