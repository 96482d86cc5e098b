//! The FusedModel custom resource (`fused.dev/v1alpha1`).
