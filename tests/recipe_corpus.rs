//! Replays the recipe fuzzing corpus as an ordinary test (see `crates/compress-model/tests/
//! fuzz_corpus.rs` for the model readers): every shipped recipe is accepted, and every committed
//! corpus or regression input of the `recipe` target is accepted or refused without a panic.

use std::path::{Path, PathBuf};

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| Some(e.ok()?.path())).collect())
        .unwrap_or_default();
    out.retain(|p| p.is_file());
    out.sort();
    out
}

#[test]
fn recipe_corpus() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let seeds = files(&root.join("examples/recipes"));
    assert!(!seeds.is_empty());
    for p in &seeds {
        let data = std::fs::read(p).unwrap();
        assert!(compress::fuzz::recipe(&data), "{} is refused", p.display());
    }
    let found: Vec<PathBuf> = files(&root.join("fuzz/corpus/recipe"))
        .into_iter()
        .chain(files(&root.join("fuzz/regressions/recipe")))
        .collect();
    for p in &found {
        eprintln!("recipe: {}", p.display());
        compress::fuzz::recipe(&std::fs::read(p).unwrap());
    }
    eprintln!(
        "recipe: {} seeds, {} corpus inputs",
        seeds.len(),
        found.len()
    );
}
