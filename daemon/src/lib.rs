//! FusedModel serving daemon library.
