//! The `compress` binary's errors: bad input exits with the documented codes and a message
//! naming what is at fault.

mod common;

use std::path::Path;
use std::process::Output;

use common::{compress, json, s, shared};

#[test]
fn errors_exit_with_their_codes_and_name_the_culprit() {
    let dir = tempfile::tempdir().unwrap();
    let stderr = |o: &Output| String::from_utf8_lossy(&o.stderr).into_owned();

    // Usage: an unknown flag (clap) and an invalid recipe field exit with 2.
    let o = compress(&["quantize", "--bitz", "4", "--output", "x"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "version = 1\n[[step]]\nmethod = \"gptq\"\nbits = 4\ngroupsize = 32\n",
    )
    .unwrap();
    let o = compress(&["run", s(&bad), "--output", s(&dir.path().join("o"))]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("groupsize") && stderr(&o).contains("bad.toml"),
        "{}",
        stderr(&o)
    );
    let o = compress(&[
        "quantize",
        "--bits",
        "9",
        "--output",
        s(&dir.path().join("o")),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let o = compress(&[
        "quantize",
        "--calib-precision",
        "f8",
        "--output",
        s(&dir.path().join("o")),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("f32 or bf16"), "{}", stderr(&o));

    // Input: a model file that does not exist, and one that is not a model, exit with 3.
    let o = compress(&["inspect", "--model", "no-such-model.gguf"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("no-such-model.gguf"), "{}", stderr(&o));
    let junk = dir.path().join("junk.gguf");
    std::fs::write(&junk, b"GGUF\x03\x00\x00\x00 truncated").unwrap();
    let o = compress(&["generate", "--model", s(&junk)]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));

    // A GGUF export the format cannot express fails (1) without leaving a file.
    let Some(calib) = shared("data/tinystories/val.txt") else {
        return;
    };
    let out = dir.path().join("g128.gguf");
    let o = compress(&[
        "quantize",
        "--method",
        "rtn",
        "--group",
        "128",
        "--calib",
        s(&calib),
        "--output",
        s(&out),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("groups of 32"), "{}", stderr(&o));
    assert!(!out.exists());

    // k-quants: stories260K's rows (64 and 172 wide) are not whole 256-weight super-blocks, so
    // Q4_K-fitted codes are written as Q4_1 (llama.cpp's fallback), and Q6_K's 6-bit groups of
    // 16, which have no other ggml type, are refused naming the reason; a k-quant with a
    // quantizer that cannot fit it, or an unknown name, is a usage error.
    let q4k = dir.path().join("q4k.gguf");
    let k = |fmt: &str, method: &str, out: &Path| {
        compress(&[
            "quantize",
            "--method",
            method,
            "--k-quant",
            fmt,
            "--layers",
            "attn\\.",
            "--calib",
            s(&calib),
            "--output",
            s(out),
        ])
    };
    let o = k("q4_k", "rtn", &q4k);
    assert!(o.status.success(), "{}", stderr(&o));
    let i = json(&["inspect", "--model", s(&q4k)]);
    assert_eq!(i["gguf_tensor_types"]["Q4_1"], 20, "{i}");
    let o = k("q6_k", "gptq", &out);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("q6_k needs rows of whole 256-weight super-blocks"),
        "{}",
        stderr(&o)
    );
    assert!(!out.exists());
    let o = k("q4_k", "hqq", &out);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("rtn or gptq"), "{}", stderr(&o));
    let o = k("q4_0", "rtn", &out);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("unknown k-quant"), "{}", stderr(&o));

    // --embedding-q8 stores the token embedding as Q8_0 in GGUF (the attention projections as
    // Q4_0; the 172-wide MLP rows have no 32-block format), and is refused elsewhere.
    let emb = dir.path().join("emb.gguf");
    let q = |out: &Path| {
        compress(&[
            "quantize",
            "--method",
            "rtn",
            "--group",
            "32",
            "--layers",
            "attn\\.",
            "--embedding-q8",
            "--calib",
            s(&calib),
            "--output",
            s(out),
        ])
    };
    let o = q(&emb);
    assert!(o.status.success(), "{}", stderr(&o));
    let i = json(&["inspect", "--model", s(&emb)]);
    assert_eq!(i["gguf_tensor_types"]["Q8_0"], 1, "{i}");
    let o = q(&dir.path().join("emb.safetensors"));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("--embedding-q8 applies to GGUF"),
        "{}",
        stderr(&o)
    );
}
