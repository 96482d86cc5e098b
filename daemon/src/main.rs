//! `fused-daemon` command line entry point.

fn main() {}
