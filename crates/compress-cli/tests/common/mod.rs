//! Helpers shared by the `compress` binary's end-to-end tests.
#![allow(dead_code)] // each test file uses a subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `../shared/data/...`, or `None` with the reason printed (a failure under `CI=true`).
pub fn shared(rel: &str) -> Option<PathBuf> {
    let p = workspace().join("../shared").join(rel);
    if p.exists() {
        return Some(p);
    }
    assert!(
        std::env::var("CI").map_or(true, |v| v != "true"),
        "{} is missing under CI=true",
        p.display()
    );
    eprintln!("SKIPPED: {} not found", p.display());
    None
}

/// Runs the `compress` binary in the workspace root.
pub fn compress(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_compress"))
        .args(args)
        .current_dir(workspace())
        .output()
        .expect("run compress")
}

/// Runs a command that must succeed and returns its JSON output.
pub fn json(args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.push("--json");
    let out = compress(&all);
    assert!(
        out.status.success(),
        "compress {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}", String::from_utf8_lossy(&out.stdout));
    })
}

/// A JSON array of numbers.
pub fn f64s(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// A path as `&str` (test paths are UTF-8).
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}
