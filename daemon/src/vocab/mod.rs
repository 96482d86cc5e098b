//! AdaptiVocab: domain patch tokenizers — building them and applying them when serving.
