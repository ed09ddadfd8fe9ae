//! The `compress` binary end to end on stories260K (embedded, and `../shared` for texts and
//! tasks): the documented commands run, their JSON output says what they did, the files they
//! write load back, and errors exit with the documented codes naming what is at fault.

mod common;

use std::path::Path;
use std::process::Command;

use common::{compress, f64s, json, s, shared, workspace};

#[test]
fn generate_inspect_and_quantize_to_a_container() {
    // Greedy continuation of the embedded stories260K: the reference text of ../shared.
    let g = json(&["generate", "--max-tokens", "20"]);
    let text = g["text"].as_str().unwrap();
    assert!(
        text.starts_with(", there was a little girl named Lily. She loved to play"),
        "{text}"
    );

    let plots = tempfile::tempdir().unwrap();
    let svg = plots.path().join("spectrum.svg");
    let i = json(&["inspect", "--spectrum", "--plot", s(&svg)]);
    let drawn = std::fs::read_to_string(&svg).unwrap();
    for name in ["attn.q_proj", "mlp.down_proj"] {
        assert!(drawn.contains(name), "the chart's legend names {name}");
    }
    assert_eq!(i["config"]["num_layers"], 5);
    assert_eq!(i["linear_bits_per_weight"], 32.0);
    for l in i["layers"].as_array().unwrap().iter().take(35) {
        let s = &l["spectrum"];
        let full = l["shape"][0]
            .as_f64()
            .unwrap()
            .min(l["shape"][1].as_f64().unwrap());
        let eff = s["effective_rank"].as_f64().unwrap();
        assert!(eff >= 1.0 && eff <= full, "{l}");
        let e: Vec<f64> = (0..3)
            .map(|k| s["energy_at_10_25_50"][k].as_f64().unwrap())
            .collect();
        assert!(e[0] <= e[1] && e[1] <= e[2] && e[2] <= 1.0 + 1e-12, "{l}");
    }

    let Some(calib) = shared("data/tinystories/val.txt") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("w4.safetensors");
    let r = json(&[
        "quantize",
        "--method",
        "gptq",
        "--bits",
        "4",
        "--group",
        "32",
        "--nsamples",
        "16",
        "--calib",
        s(&calib),
        "--output",
        s(&out),
        "--eval",
        s(&calib),
        "--limit",
        "4",
        "--repeat-seeds",
        "3",
    ]);
    assert_eq!(r["output"]["format"], "container");
    assert_eq!(r["layer_steps"], 35);
    // Three calibration seeds: the first run is the one written and evaluated above, and the
    // seeds' calibration windows differ, so their models do too.
    let seeds = &r["seeds"];
    assert_eq!(seeds["seeds"], serde_json::json!([0, 1, 2]));
    let kld_values = f64s(&seeds["kld"]["values"]);
    assert_eq!(kld_values[0], r["eval"]["kld"]["mean"].as_f64().unwrap());
    assert!(
        kld_values[1] != kld_values[0] && kld_values[2] != kld_values[0],
        "{kld_values:?}"
    );
    assert!(seeds["kld"]["std"].as_f64().unwrap() > 0.0);
    // 4-bit codes + one f16 scale per 32 weights (+ the ragged last group of the 172-wide
    // down projections): between 4.5 and 4.7 bits per weight.
    let bits = r["linear_bits_per_weight"].as_f64().unwrap();
    assert!((4.5..4.7).contains(&bits), "{bits}");
    let kld = r["eval"]["kld"]["mean"].as_f64().unwrap();
    assert!(kld > 0.0 && kld < 0.5, "KLD {kld}");
    assert!(r["recipe"].as_str().unwrap().contains("method = \"gptq\""));

    // The same with bf16 calibration: written into the recipe, and the model about as good.
    let out16 = dir.path().join("w4-bf16.safetensors");
    let r16 = json(&[
        "quantize",
        "--method",
        "gptq",
        "--bits",
        "4",
        "--group",
        "32",
        "--nsamples",
        "16",
        "--calib",
        s(&calib),
        "--output",
        s(&out16),
        "--eval",
        s(&calib),
        "--limit",
        "4",
        "--calib-precision",
        "bf16",
    ]);
    assert!(r16["recipe"]
        .as_str()
        .unwrap()
        .contains("precision = \"bf16\""));
    let kld16 = r16["eval"]["kld"]["mean"].as_f64().unwrap();
    assert!(kld16 > 0.0 && kld16 < 0.5, "KLD {kld16}");

    let i = json(&["inspect", "--model", s(&out)]);
    assert_eq!(i["format"], "container");
    assert!((i["linear_bits_per_weight"].as_f64().unwrap() - bits).abs() < 1e-9);
    assert!(i["provenance"]["recipe"].as_str().unwrap().contains("gptq"));
    assert_eq!(i["layers"][0]["storage"], "int4 g32 sym");
}

#[test]
fn prune_and_run_a_recipe_to_gguf_then_evaluate() {
    let Some(calib) = shared("data/tinystories/val.txt") else {
        return;
    };
    let Some(tasks) = shared("data/tasks") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("p.gguf");
    let r = json(&[
        "prune",
        "--method",
        "sparsegpt",
        "--nm",
        "2:4",
        "--quantize-bits",
        "4",
        "--quantize-group",
        "32",
        "--nsamples",
        "16",
        "--calib",
        s(&calib),
        "--output",
        s(&gguf),
        "--dense-fallback",
    ]);
    assert_eq!(r["output"]["format"], "gguf");
    // stories260K's down projections are 172 wide: not whole Q4_0 blocks, written dense.
    let fallbacks = r["output"]["dense_fallbacks"].as_array().unwrap();
    assert_eq!(fallbacks.len(), 5, "{fallbacks:?}");
    let i = json(&["inspect", "--model", s(&gguf)]);
    assert_eq!(i["gguf_tensor_types"]["Q4_0"], 30);

    let ct = dir.path().join("ct");
    let r = json(&[
        "quantize",
        "--method",
        "rtn",
        "--bits",
        "4",
        "--group",
        "32",
        "--calib",
        s(&calib),
        "--output",
        s(&ct),
        "--format",
        "compressed-tensors",
        "--dense-fallback",
    ]);
    assert_eq!(r["output"]["format"], "compressed-tensors");
    assert_eq!(r["output"]["dense_fallbacks"].as_array().unwrap().len(), 5);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ct.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["quantization_config"]["format"], "pack-quantized");
    assert!(ct.join("model.safetensors").is_file() && ct.join("tokenizer.json").is_file());

    let recipe = workspace().join("examples/recipes/wanda-50-gptq-w4.toml");
    let container = dir.path().join("r.safetensors");
    let r = json(&[
        "run",
        s(&recipe),
        "--nsamples",
        "16",
        "--seqlen",
        "64",
        "--calib",
        s(&calib),
        "--output",
        s(&container),
    ]);
    assert!(r["layer_steps"].as_u64().unwrap() >= 35);

    let lr = dir.path().join("lr.safetensors");
    let r = json(&[
        "lowrank",
        "--method",
        "svd-llm",
        "--ratio",
        "0.8",
        "--nsamples",
        "16",
        "--calib",
        s(&calib),
        "--output",
        s(&lr),
    ]);
    assert_eq!(r["layer_steps"], 35);
    let i = json(&["inspect", "--model", s(&lr)]);
    assert!(i["layers"][0]["storage"]
        .as_str()
        .unwrap()
        .starts_with("low-rank r"));
    // 80% of the parameters in f32 factors: at most 0.8 · 32 bits per dense-equivalent weight.
    let bits = i["linear_bits_per_weight"].as_f64().unwrap();
    assert!(bits <= 0.8 * 32.0 && bits > 0.6 * 32.0, "{bits}");

    // The same budget allocated from measured sensitivity: a per-layer recipe is saved, the
    // measurement is reused for another budget, and both models meet their budgets.
    let sens = dir.path().join("sens.json");
    let planned = dir.path().join("planned.toml");
    let alloc = dir.path().join("alloc.safetensors");
    let common = [
        "--nsamples",
        "8",
        "--seqlen",
        "64",
        "--calib",
        s(&calib),
        "--allocate",
        "--probe-samples",
        "2",
    ];
    // Allocates at `ratio` (with `extra` flags) and returns the written model's bits/weight.
    let allocated_bits = |ratio: &str, extra: &[&str]| {
        let mut args = vec!["lowrank", "--ratio", ratio, "--output", s(&alloc)];
        args.extend(common);
        args.extend(extra);
        let r = json(&args);
        let bits = json(&["inspect", "--model", s(&alloc)])["linear_bits_per_weight"]
            .as_f64()
            .unwrap();
        (r, bits)
    };
    let (r, bits) = allocated_bits(
        "0.8",
        &["--save-sensitivity", s(&sens), "--save-recipe", s(&planned)],
    );
    let steps = r["layer_steps"].as_u64().unwrap();
    assert!(steps > 0 && steps <= 35, "{steps}");
    let text = std::fs::read_to_string(&planned).unwrap();
    assert_eq!(text.matches("[[step]]").count() as u64, steps, "{text}");
    assert!(text.contains(r"layers = '^layers\.0\."), "{text}");
    assert!(bits <= 0.8 * 32.0 + 1e-9, "{bits}");
    let (_, bits) = allocated_bits("0.6", &["--sensitivity", s(&sens)]);
    assert!(bits <= 0.6 * 32.0 + 1e-9, "{bits}");
    // A measurement of other candidates is refused, naming them.
    let mut args = vec!["lowrank", "--ratio", "0.6", "--output", s(&alloc)];
    args.extend(common);
    args.extend(["--sensitivity", s(&sens), "--candidates", "0.5"]);
    let out = compress(&args);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("[0.5]"));

    let report = dir.path().join("report.json");
    let e = json(&[
        "eval",
        "--report",
        s(&report),
        "--speed",
        "4",
        "--method",
        "wanda-50-gptq-w4",
        "--model",
        s(&container),
        "--base-model",
        s(&gguf),
        "--text",
        s(&calib),
        "--limit",
        "3",
        "--scoring",
        "both",
        "--tasks",
        "arc_easy",
        "--task-dir",
        s(&tasks),
        "--task-limit",
        "10",
    ]);
    assert_eq!(e["perplexity"].as_array().unwrap().len(), 2);
    assert!(e["perplexity"][0]["ppl"].as_f64().unwrap().is_finite());
    assert!(e["kld"]["kld"]["mean"].as_f64().unwrap() > 0.0);
    assert_eq!(e["tasks"][0]["report"]["n"], 10);
    // The report holds the same numbers, the size and the speed.
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(r["version"], 1);
    assert_eq!(r["method"], "wanda-50-gptq-w4");
    assert_eq!(r["perplexity"], e["perplexity"][0]);
    assert_eq!(r["kld"], e["kld"]);
    assert_eq!(r["tasks"]["arc_easy"]["n"], 10);
    assert_eq!(r["speed"]["new_tokens"], 4);
    let bits = r["size"]["linear_bits_per_weight"].as_f64().unwrap();
    assert!(bits < 32.0, "the blocks are 4-bit: {bits}");
    // Generation through the fused kernels at both activation precisions, and without them.
    for mode in ["f32", "int8", "off"] {
        let g = json(&[
            "generate",
            "--model",
            s(&container),
            "--max-tokens",
            "6",
            "--kernels",
            mode,
        ]);
        assert_eq!(g["tokens"].as_array().unwrap().len(), 6, "{mode}");
    }
}

/// A recipe's `[heal]` stage runs after its steps: Wanda 50% then a short LoRA heal is closer
/// to the dense model than Wanda alone, keeps the sparsity, and heal after quantization is
/// refused (healing trains dense layers).
#[test]
fn heal_stage_runs_after_the_steps() {
    let Some(calib) = shared("data/tinystories/val.txt") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, body: &str| {
        let p = dir.path().join(name);
        std::fs::write(
            &p,
            format!("version = 1\n[calibration]\nnsamples = 16\nseqlen = 64\nseed = 0\n{body}"),
        )
        .unwrap();
        p
    };
    let wanda = "[[step]]\nmethod = \"wanda\"\nsparsity = 0.5\n";
    let heal = "[heal]\nrank = 8\nsteps = 20\nbatch_size = 8\nlr = 5e-3\n";
    let out = dir.path().join("o.safetensors");
    let run = |recipe: &Path| {
        json(&[
            "run",
            s(recipe),
            "--calib",
            s(&calib),
            "--output",
            s(&out),
            "--eval",
            s(&calib),
            "--context",
            "128",
            "--limit",
            "8",
        ])
    };
    let plain = run(&write("w.toml", wanda));
    let healed = run(&write("h.toml", &format!("{wanda}{heal}")));
    assert!(plain["heal"].is_null());
    assert_eq!(healed["heal"]["steps"], 20);
    let kl = &healed["heal"]["kl_first_last"];
    assert!(kl[1].as_f64().unwrap() < kl[0].as_f64().unwrap(), "{kl}");
    let (k0, k1) = (
        plain["eval"]["kld"]["mean"].as_f64().unwrap(),
        healed["eval"]["kld"]["mean"].as_f64().unwrap(),
    );
    assert!(k1 < k0, "healed KLD {k1} vs pruned {k0}");
    let i = json(&["inspect", "--model", s(&out)]);
    assert!(
        i["layers"][0]["storage"]
            .as_str()
            .unwrap()
            .contains("50.0% pruned"),
        "{}",
        i["layers"][0]
    );

    let gptq = "[[step]]\nmethod = \"gptq\"\nbits = 4\n";
    let p = write("q.toml", &format!("{gptq}{heal}"));
    let r = compress(&["run", s(&p), "--calib", s(&calib), "--output", s(&out)]);
    assert_eq!(r.status.code(), Some(2));
    let e = String::from_utf8_lossy(&r.stderr);
    assert!(e.contains("[heal]") && e.contains("dense"), "{e}");
    let p = write("bad.toml", &format!("{wanda}[heal]\nsteps = 0\n"));
    let r = compress(&["run", s(&p), "--calib", s(&calib), "--output", s(&out)]);
    assert_eq!(r.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&r.stderr).contains("heal.steps"));
}

/// `slice` cuts real smaller models: post-hoc sorted at half width (fewer parameters, the
/// shapes in the saved file), and the shipped nested model at 75% width with its 4-bit codes
/// read from nested 8-bit ones; a width of 0 is a usage error naming the field.
#[test]
fn slice_writes_smaller_models() {
    let Some(calib) = shared("data/tinystories/val.txt") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let half = dir.path().join("half.safetensors");
    let r = json(&[
        "slice",
        "--sort",
        "--width",
        "0.5",
        "--calib",
        s(&calib),
        "--output",
        s(&half),
    ]);
    // stories260K: FFN 172 → 86, 4 KV groups → 2.
    assert_eq!(
        (r["ffn"].as_u64(), r["kv_groups"].as_u64()),
        (Some(86), Some(2))
    );
    assert_eq!(r["parameters"][0], 292_800);
    assert_eq!(r["parameters"][1], 179_520);
    let i = json(&["inspect", "--model", s(&half)]);
    assert_eq!(i["config"]["intermediate_size"], 86);
    assert_eq!(i["config"]["num_kv_heads"], 2);

    let nested = workspace().join("assets/matryoshka/nested.compress");
    let small = dir.path().join("n75w4.safetensors");
    let r = json(&[
        "slice",
        "--model",
        s(&nested),
        "--width",
        "0.75",
        "--nest-bits",
        "--bits",
        "4",
        "--output",
        s(&small),
        "--eval",
        s(&calib),
        "--limit",
        "4",
    ]);
    assert_eq!(r["bits"], 4);
    let kld = r["eval"]["kld"]["mean"].as_f64().unwrap();
    assert!(kld > 0.0 && kld.is_finite(), "KLD {kld}");
    let i = json(&["inspect", "--model", s(&small)]);
    assert_eq!(i["layers"][0]["storage"], "int4 g32 asym");
    assert_eq!(i["config"]["intermediate_size"], 129);
    // The header's nesting follows the slice: of the trained 25/50/75% widths, 25% and 50% of
    // the original are a third and two thirds of the 75% slice.
    assert_eq!(i["nesting"]["order"], "trained");
    let widths = f64s(&i["nesting"]["widths"]);
    assert_eq!(widths.len(), 2, "{widths:?}");
    assert!((widths[0] - 1.0 / 3.0).abs() < 1e-9 && (widths[1] - 2.0 / 3.0).abs() < 1e-9);
    // A width the model was not trained at is cut, with a note saying so.
    let out = compress(&[
        "slice",
        "--model",
        s(&nested),
        "--width",
        "0.6",
        "--output",
        s(&dir.path().join("w60.safetensors")),
    ]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not one of them"));

    let out = compress(&[
        "slice",
        "--width",
        "0",
        "--output",
        s(&dir.path().join("x")),
    ]);
    assert_eq!(out.status.code(), Some(2));
    // Refused by the flag's parser, with the accepted range.
    assert!(String::from_utf8_lossy(&out.stderr).contains("(0, 1]"));
}

/// The command-line block of the workspace README runs as written (in a scratch directory laid
/// out like the repository: `examples/` and `../shared` beside it), so the documented commands
/// cannot rot.
#[test]
fn readme_command_line_examples_run() {
    if shared("data/tinystories/val.txt").is_none() {
        return;
    }
    let readme = std::fs::read_to_string(workspace().join("README.md")).unwrap();
    let section = readme
        .split("## Command line")
        .nth(1)
        .expect("README has a Command line section");
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a sh block in the Command line section");
    let script = block.replace("\\\n", " ");
    let commands: Vec<&str> = script
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("target/release/compress"))
        .collect();
    assert!(commands.len() >= 6, "{commands:?}");

    let scratch = tempfile::tempdir().unwrap();
    let root = scratch.path().join("repo");
    std::fs::create_dir(&root).unwrap();
    std::os::unix::fs::symlink(workspace().join("examples"), root.join("examples")).unwrap();
    std::os::unix::fs::symlink(workspace().join("../shared"), scratch.path().join("shared"))
        .unwrap();
    for cmd in commands {
        let cmd = cmd.replacen("target/release/compress", env!("CARGO_BIN_EXE_compress"), 1);
        let out = Command::new("bash")
            .args(["-c", &cmd])
            .current_dir(&root)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "README command failed: {cmd}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(root.join("r.safetensors").exists() && root.join("p.gguf").exists());
}

/// Numeric flags are checked when the command line is parsed: NaN, infinities, zero, negative
/// and out-of-range values exit with the usage code (2) naming the accepted range, before any
/// model is loaded.
#[test]
fn bad_numeric_flags_are_usage_errors() {
    for (args, range) in [
        (vec!["generate", "--temperature", "NaN"], "finite"),
        (vec!["generate", "--temperature=-1"], "(0, 100]"),
        (vec!["generate", "--top-p", "inf"], "finite"),
        (vec!["generate", "--max-tokens", "0"], "from 1"),
        (vec!["quantize", "--bits", "9", "--output", "x"], "2 to 8"),
        (vec!["quantize", "--group", "0", "--output", "x"], "from 1"),
        (
            vec!["prune", "--sparsity", "1.5", "--output", "x"],
            "[0, 1)",
        ),
        (vec!["lowrank", "--ratio", "NaN", "--output", "x"], "finite"),
        (vec!["slice", "--width", "0", "--output", "x"], "(0, 1]"),
    ] {
        let out = compress(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(range), "{args:?}: {err}");
    }
}
