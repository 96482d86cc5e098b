//! Writes the FusedModel CRD YAML into the CRD chart (`charts/fused-crds/templates/`).
//!
//! Usage: `cargo run -p fused-crds --bin crdgen [-- --stdout]`.

use std::path::PathBuf;

use anyhow::Context;

fn main() -> anyhow::Result<()> {
    let yaml = fused_crds::render_crd_yaml()?;
    if std::env::args().any(|a| a == "--stdout") {
        print!("{yaml}");
        return Ok(());
    }
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(fused_crds::CRD_CHART_PATH);
    std::fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("wrote {}", path.display());
    Ok(())
}
