//! AdaptiVocab domain patch tokenizers (Nakash et al., 2025): swap base tokens that are rare in a
//! domain for frequent domain n-grams, so domain text takes fewer tokens with the same model.
//!
//! - building: [`corpus`] (tokenize the domain text) → [`removal`] (what to remove, decomposed
//!   along the BPE merges) → [`ngrams`] (what to add, greedy with overlap correction) →
//!   [`builder`] (ids, the [`artifact::PatchSpec`]); [`embeddings`] computes the new rows;
//! - serving: [`serving::load_for_serving`] checks and loads an [`artifact::PatchArtifact`],
//!   [`patch::PatchTokenizer`] (trie scan in [`matcher`]) plugs into the base
//!   [`crate::tokenizer::Codec`] and remaps the embedding / LM-head rows;
//! - [`eval`] measures a patch; [`cli`] is `fused-daemon vocab …`.
//!
//! Nothing here runs the model; quality (bits per byte) is measured by the model layer.

pub mod artifact;
pub mod base_vocab;
pub mod builder;
pub mod cli;
pub mod corpus;
pub mod embeddings;
mod error;
pub mod eval;
#[cfg(test)]
pub(crate) mod fixtures;
pub mod matcher;
pub mod ngrams;
pub mod patch;
pub mod removal;
pub mod serving;

pub use artifact::{NewRows, PatchArtifact, PatchSpec};
pub use builder::{BuildOptions, build};
pub use error::{Result, VocabError};
pub use matcher::MatchRule;
pub use ngrams::OverlapCorrection;
pub use patch::PatchTokenizer;
pub use serving::{ServedPatch, load_for_serving};
