//! Replays the fuzzing corpus as an ordinary test (what CI runs of the fuzzing; the
//! coverage-guided runs themselves use `scripts/fuzz`): every seed and every committed corpus
//! and regression input of each target goes through its entry point in
//! `compress_model::fuzz`, which must return (accepting or refusing) without panicking. The
//! seeds the fuzzer starts from — the family fixtures' GGUF files, configs and tokenizers, and
//! the committed `seed-*` container — must be accepted, so a reader that starts refusing valid input fails here too.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every file under `dir` (none when it does not exist).
fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    out
}

/// The fixture files a target's fuzzing starts from.
fn seeds(target: &str) -> Vec<PathBuf> {
    let fixtures = root().join("crates/compress-model/tests/fixtures/families");
    let per_family = |file: &str| -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(&fixtures)
            .unwrap()
            .filter_map(|e| Some(e.ok()?.path().join(file)))
            .filter(|p| p.is_file())
            .collect();
        v.sort();
        v
    };
    match target {
        "gguf" => per_family("model.gguf"),
        "hf_config" => per_family("config.json"),
        "tokenizer_json" => per_family("tokenizer.json"),
        // A 4-bit RTN container of the phi4mini fixture (`compress quantize --method rtn
        // --bits 4 --group 16`), committed with the corpus.
        "container" => files(&root().join("fuzz/corpus/container"))
            .into_iter()
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("seed-"))
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn replay(target: &str, run: fn(&[u8]) -> bool) {
    let seeds = seeds(target);
    for p in &seeds {
        let data = std::fs::read(p).unwrap();
        assert!(run(&data), "{target}: the seed {} is refused", p.display());
    }
    let fuzz = root().join("fuzz");
    let found: Vec<PathBuf> = files(&fuzz.join("corpus").join(target))
        .into_iter()
        .chain(files(&fuzz.join("regressions").join(target)))
        .collect();
    for p in &found {
        let data = std::fs::read(p).unwrap();
        // Accepted or refused: either is fine; a panic fails the test, naming nothing — so say
        // which input runs first.
        eprintln!("{target}: {}", p.display());
        run(&data);
    }
    eprintln!(
        "{target}: {} seeds, {} corpus inputs",
        seeds.len(),
        found.len()
    );
}

#[test]
fn gguf_corpus() {
    replay("gguf", compress_model::fuzz::gguf);
}

#[test]
fn container_corpus() {
    replay("container", compress_model::fuzz::container);
}

#[test]
fn hf_config_corpus() {
    replay("hf_config", compress_model::fuzz::hf_config);
}

#[test]
fn tokenizer_json_corpus() {
    replay("tokenizer_json", compress_model::fuzz::tokenizer_json);
}
