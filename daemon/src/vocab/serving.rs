//! Loading a patch to serve with: verify the artifact digest, refuse a patch made for another base
//! tokenizer, read the new embedding rows, and attach the patch to the model's [`Codec`].

use std::path::Path;
use std::sync::Arc;

use super::artifact::{NewRows, PatchArtifact};
use super::error::{Result, VocabError};
use super::patch::PatchTokenizer;
use crate::tokenizer::Codec;

/// A patch ready to serve: the patched codec's tokenizer and the rows to patch the weights with
/// ([`PatchTokenizer::remap_embedding_and_head`]).
#[derive(Debug)]
pub struct ServedPatch {
    pub artifact: PatchArtifact,
    pub tokenizer: Arc<PatchTokenizer>,
    pub rows: NewRows,
}

/// Loads the artifact at `path` (checked against `expected_sha256`, the CRD's
/// `patchTokenizer.sha256`, when given) and applies it to `codec`, the model's own tokenizer.
pub fn load_for_serving(
    path: &Path,
    expected_sha256: Option<&str>,
    codec: Codec,
) -> Result<(Codec, ServedPatch)> {
    let artifact = PatchArtifact::load(path, expected_sha256)?;
    check_base(&artifact, &codec)?;
    let rows = artifact.load_rows()?;
    let tokenizer = Arc::new(PatchTokenizer::from_artifact(&artifact)?);
    let codec = codec.with_patch(tokenizer.clone())?;
    Ok((
        codec,
        ServedPatch {
            artifact,
            tokenizer,
            rows,
        },
    ))
}

/// Applies a patch to `codec` for tokenizing only (no weights needed: eval, `/tokenize` tests).
pub fn attach_tokenizer(artifact: &PatchArtifact, codec: Codec) -> Result<Codec> {
    check_base(artifact, &codec)?;
    Ok(codec.with_patch(Arc::new(PatchTokenizer::from_artifact(artifact)?))?)
}

fn check_base(artifact: &PatchArtifact, codec: &Codec) -> Result<()> {
    let base = &artifact.spec.base;
    if base.digest != codec.base_digest() {
        return Err(VocabError::BaseMismatch {
            patch_base: base.digest.clone(),
            patch_source: base.source.clone(),
            model_base: codec.base_digest().to_owned(),
            model_source: codec.source().to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vocab::fixtures;

    #[test]
    fn a_patch_for_another_tokenizer_is_refused_clearly() {
        let (Some((_, spec)), Some(mistral_dir)) = (
            fixtures::patched_smollm2(),
            crate::tokenizer::fixtures::mistral_dir(),
        ) else {
            return;
        };
        let dir = fixtures::scratch_dir("mismatch");
        PatchArtifact::save(&dir, &spec).unwrap();
        let artifact = PatchArtifact::load(&dir, None).unwrap();
        let mistral = Codec::from_hf_dir(&mistral_dir).unwrap();
        let err = attach_tokenizer(&artifact, mistral).unwrap_err();
        assert!(matches!(err, VocabError::BaseMismatch { .. }), "{err}");
        let message = err.to_string();
        assert!(
            message.contains("gguf:") && message.contains("hf:"),
            "names both tokenizers: {message}"
        );

        // The codec's own check holds too, without the artifact wrapper.
        let mistral = Codec::from_hf_dir(&mistral_dir).unwrap();
        let patch = Arc::new(PatchTokenizer::from_artifact(&artifact).unwrap());
        assert!(matches!(
            mistral.with_patch(patch),
            Err(crate::tokenizer::TokenizerError::PatchMismatch { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
