//! The seam between the base tokenizer and a vocabulary patch: what [`super::Codec`] needs from a
//! patch to encode, decode and stream patched ids. Implemented by `crate::vocab::PatchTokenizer`;
//! this trait keeps the tokenizer module free of any knowledge of how patches are built.

/// Maps between the base tokenizer's ids and a patched vocabulary's ids (same vocabulary size).
pub trait VocabPatch: Send + Sync + std::fmt::Debug {
    /// Digest of the base tokenizer this patch was built for (compared with
    /// [`super::Codec::base_digest`]).
    fn base_digest(&self) -> &str;

    /// Number of ids of the patched vocabulary.
    fn vocab_size(&self) -> usize;

    /// Re-tokenizes a base id sequence (the base tokenizer's output) into patched ids.
    fn patch_ids(&self, base_ids: &[u32]) -> Vec<u32>;

    /// The base ids a patched id stands for, in order; `None` when the id is out of range.
    fn base_ids_of(&self, patched_id: u32) -> Option<&[u32]>;

    /// The patched id of a base token kept as it is (special tokens are always kept); `None` when
    /// the base token was removed by the patch.
    fn patched_id_of(&self, base_id: u32) -> Option<u32>;
}
