//! The documentation that is generated from code must match the code.

#[test]
fn docs_config_md_is_up_to_date() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/CONFIG.md");
    let on_disk = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        on_disk == keel_core::config::reference::markdown(),
        "docs/CONFIG.md is stale: regenerate it with `cargo run -p keel -- config docs > docs/CONFIG.md`"
    );
}
