//! The FusedModel operator: reconciles FusedModel resources into daemon replicas.

fn main() {
    println!("fused-operator: not implemented yet (issue 7)");
}
