//! Embeds the repository's feeds/*.toml into the crate, so the binary carries its default feeds.

include!("../roost-rules/embed_toml.rs");

fn main() {
    println!("cargo:rerun-if-changed=../roost-rules/embed_toml.rs");
    embed_toml("feeds", "embedded_feeds.rs");
}
