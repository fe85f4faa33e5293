//! Embeds the repository's rules/*.toml into the crate, so the binary carries its default rules.

include!("embed_toml.rs");

fn main() {
    println!("cargo:rerun-if-changed=embed_toml.rs");
    embed_toml("rules", "embedded_rules.rs");
}
