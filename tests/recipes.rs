//! Every recipe shipped in `examples/recipes/` parses, validates and builds a pipeline.

#[test]
fn shipped_recipes_build() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/recipes");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let r = compress::recipe::Recipe::from_file(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let p = r.pipeline().unwrap();
            assert!(!p.steps.is_empty(), "{}", path.display());
            n += 1;
        }
    }
    assert!(n >= 3, "expected the shipped recipes in {}", dir.display());
}
