#!/usr/bin/env python3
"""GGUF versions of the family fixtures + llama.cpp reference outputs for them.

For every family directory `crates/compress-model/tests/fixtures/families/<name>/` (the tiny
Hugging Face checkpoints made by `make_hf.py`) this script

1. converts the checkpoint with llama.cpp's `convert_hf_to_gguf.py --outtype f16
   --model-name tiny-<name>` to `model.gguf` (2-D weights f16, norms/biases f32 as the converter
   decides). The byte-level BPE tokenizers are new, so the converter does not recognise their
   pre-tokenizer hash; the name is forced (`PRE_TOKENIZER`) by patching
   `conversion.base.TextModel.get_vocab_base_pre` before calling the converter's `main()` (in a
   subprocess, so the converter's vendored gguf-py never mixes with the PyPI one used here).
   `--model-name` is needed for phi3: llama.cpp treats any model whose `general.name` contains
   "phi3" as real Phi-3 and looks up its special tokens;
2. loads the GGUF in llama.cpp (CPU, 2 threads, f32 K/V cache, no flash attention, whole
   sequence in one batch) through `llamacpp_logits.py`'s `Runner` and writes `llamacpp.json`:

       {"llama_cpp": commit, "kv_type": "f32", "outtype": "f16",
        "tokens": reference.json tokens, "logits": [[n_vocab floats] x 24],
        "greedy": {"prompt": reference.json greedy.prompt, "tokens": [8 argmax ids, EOS ignored]},
        "text": reference text,
        "text_ids": llama_tokenize(text, add_special=True, parse_special=False),
        "vs_transformers": {"max_abs_logit_diff", "max_abs_logit_diff_per_position" (3 digits),
                            "greedy_equal", "text_ids_equal"}}   # informational

   Floats are the shortest decimal that reads back as exactly the float32 value. The
   `vs_transformers` block compares with reference.json; differences are expected from the f16
   weights, and larger ones for mistral (llama.cpp ignores the sliding window) and gemma2/gemma3
   (llama.cpp scales attention by 1/sqrt(head_dim), ignoring `query_pre_attn_scalar`);
3. reads each GGUF back with the PyPI `gguf` package (0.19.0) and rewrites the section between
   the `gguf-listing` markers in README.md ("What llama.cpp's converter writes": architecture,
   arch-specific metadata, block-0 tensors), when all families are run.

Run from the repository root (about 1 min, CPU only):

    python3 scripts/family-fixtures/make_gguf.py               # all families
    python3 scripts/family-fixtures/make_gguf.py qwen2 gemma3  # some (README section untouched)

Outputs are rewritten in place (atomically) and are byte-for-byte reproducible.

Needs (see /work/ref/README-local.md and /work/shared/BUILD-NOTES.md):
* llama.cpp from the llama-cpp-python 0.3.36 sdist (vendored commit 0c1e570), built with CMake
  as a shared library (`cmake -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON
  -DGGML_NATIVE=OFF -DGGML_AVX512=ON ... -DGGML_AMX_*=OFF -DLLAMA_CURL=OFF`, then
  `cmake --build build --target llama`); `LLAMA_DIR` below (or `$LLAMA_CPP_DIR`) is that source
  tree, holding `convert_hf_to_gguf.py`, `conversion/`, `gguf-py/` and `build/bin/libllama.so`;
* the Python bindings without a C build: `pip install diskcache` and
  `CMAKE_ARGS="-DLLAMA_BUILD=OFF" pip install --no-deps llama_cpp_python-0.3.36.tar.gz`
  (`LLAMA_CPP_LIB_PATH` defaults to `$LLAMA_DIR/build/bin`);
* torch + transformers (the converter), numpy, and PyPI `gguf` 0.19.0 for the listing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
FAMILIES_DIR = os.path.join(ROOT, "crates", "compress-model", "tests", "fixtures", "families")
README = os.path.join(HERE, "README.md")
LLAMA_DIR = os.environ.get("LLAMA_CPP_DIR", "/work/ref/llama_cpp_python-0.3.36/vendor/llama.cpp")
LLAMA_CPP_COMMIT = "0c1e57098bba43ac29e6e3b677cdceebdd22334f"
os.environ.setdefault("LLAMA_CPP_LIB_PATH", os.path.join(LLAMA_DIR, "build", "bin"))

FAMILIES = ["llama3", "qwen2", "mistral", "qwen3", "gemma2", "gemma3", "phi3", "phi4mini",
            "mixtral", "qwen2_moe", "qwen3_moe"]
# tokenizer.ggml.pre forced for the byte-level BPE fixtures (SentencePiece ones need nothing)
PRE_TOKENIZER = {"llama3": "llama-bpe", "qwen2": "qwen2", "qwen3": "qwen2", "qwen2_moe": "qwen2",
                 "qwen3_moe": "qwen2", "phi3": "gpt-2", "phi4mini": "gpt-2", "mixtral": "gpt-2"}
OUTTYPE, KV_TYPE, THREADS = "f16", "f32", 2
MARK_BEGIN, MARK_END = "<!-- gguf-listing:begin -->", "<!-- gguf-listing:end -->"


# ------------------------------------------------------------------------------------------
# 1. conversion (runs in a subprocess: `make_gguf.py --convert-one HF_DIR OUT NAME PRE`)
# ------------------------------------------------------------------------------------------

def convert_one(hf_dir: str, out: str, name: str, pre: str) -> None:
    sys.path.insert(0, LLAMA_DIR)  # `conversion` package; the converter adds its gguf-py itself
    import convert_hf_to_gguf  # noqa: PLC0415
    import conversion.base  # noqa: PLC0415

    if pre != "-":
        conversion.base.TextModel.get_vocab_base_pre = lambda self, tokenizer: pre
    sys.argv = ["convert_hf_to_gguf.py", hf_dir, "--outtype", OUTTYPE, "--outfile", out,
                "--model-name", f"tiny-{name}"]
    convert_hf_to_gguf.main()


def convert(name: str) -> str:
    d = os.path.join(FAMILIES_DIR, name)
    out, tmp = os.path.join(d, "model.gguf"), os.path.join(d, "model.gguf.tmp")
    cmd = [sys.executable, os.path.abspath(__file__), "--convert-one", d, tmp, name,
           PRE_TOKENIZER.get(name, "-")]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0 or not os.path.exists(tmp):
        if os.path.exists(tmp):
            os.remove(tmp)
        raise RuntimeError(f"{name}: conversion failed\n{p.stdout[-3000:]}{p.stderr[-3000:]}")
    os.replace(tmp, out)
    return out


# ------------------------------------------------------------------------------------------
# 2. llama.cpp outputs
# ------------------------------------------------------------------------------------------

def fmt_f32(x) -> str:
    """Shortest decimal that reads back as exactly this float32 (also when parsed as f64 first)."""
    assert np.isfinite(x)
    s = str(x)
    if np.float32(float(s)) != x:  # guard against double rounding f64 -> f32
        s = repr(float(x))
    assert np.float32(json.loads(s)) == x
    return s


def llamacpp_outputs(gguf_path: str, ref: dict) -> dict:
    sys.path.insert(0, HERE)
    import llamacpp_logits as L  # noqa: PLC0415

    L.quiet_logs(False)
    commit = L.runtime_version()
    assert f"commit {LLAMA_CPP_COMMIT[:7]}" in commit, f"unexpected llama.cpp library: {commit}"

    tokens, prompt = ref["tokens"], ref["greedy"]["prompt"]
    n_new = len(ref["greedy"]["tokens"])

    r = L.Runner(gguf_path, max(64, len(tokens)), THREADS, KV_TYPE)
    r.check(tokens)
    logits = r.decode(tokens, all_logits=True)
    # tokenization with the GGUF's own add_bos / add_eos settings
    text = ref["text"].encode("utf-8")
    buf = (L.C.llama_token * (len(text) + 8))()
    n = L.C.llama_tokenize(r.vocab, text, len(text), buf, len(buf), True, False)
    assert n >= 0, n
    text_ids = [int(buf[i]) for i in range(n)]
    r.close()

    r = L.Runner(gguf_path, max(64, len(prompt) + n_new), THREADS, KV_TYPE)
    r.check(prompt)
    greedy, last = [], r.decode(prompt, all_logits=False)[0]
    while True:
        greedy.append(int(np.argmax(last)))  # ties -> lowest id; EOS does not stop it
        if len(greedy) == n_new:
            break
        last = r.decode([greedy[-1]], all_logits=False)[0]
    r.close()

    want = np.array(ref["logits"], dtype=np.float32)
    diff = np.abs(logits.astype(np.float64) - want.astype(np.float64))
    per_pos = diff.max(axis=1)
    return {
        "llama_cpp": LLAMA_CPP_COMMIT, "kv_type": KV_TYPE, "outtype": OUTTYPE,
        "tokens": tokens, "logits": logits,
        "greedy": {"prompt": prompt, "tokens": greedy},
        "text": ref["text"], "text_ids": text_ids,
        "vs_transformers": {
            "max_abs_logit_diff": float(np.float32(diff.max())),
            "max_abs_logit_diff_per_position": [float(f"{x:.3g}") for x in per_pos],
            "greedy_equal": greedy == ref["greedy"]["tokens"],
            "text_ids_equal": text_ids == ref["text_ids"],
        },
    }


def write_llamacpp_json(path: str, res: dict) -> None:
    parts = ["{"]
    for k, v in res.items():
        if k == "logits":
            rows = ["    [" + ",".join(fmt_f32(x) for x in row) + "]" for row in v]
            parts.append('  "logits": [\n' + ",\n".join(rows) + "\n  ],")
        else:
            parts.append(f"  {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)},")
    parts[-1] = parts[-1].rstrip(",")
    text = "\n".join(parts + ["}"]) + "\n"
    back = json.loads(text)
    assert np.array_equal(np.array(back["logits"], dtype=np.float32), res["logits"])
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


# ------------------------------------------------------------------------------------------
# 3. what the converter wrote (PyPI gguf reader)
# ------------------------------------------------------------------------------------------

def gguf_listing(name: str, path: str) -> str:
    # PyPI gguf, imported only here: the --convert-one subprocess must get the vendored gguf-py
    from gguf import GGUFReader  # noqa: PLC0415

    rd = GGUFReader(path)

    def val(key):
        f = rd.fields[key]
        v = f.contents()
        if isinstance(v, float):
                    v = fmt_f32(np.float32(v))
        elif isinstance(v, list):
            v = "[" + ",".join(str(x) for x in v) + "]"
        return v

    arch = val("general.architecture")
    keys = [f"{k[len(arch) + 1:]}={val(k)}" for k in rd.fields if k.startswith(arch + ".")]
    tok = [f"{k.split('.')[-1]}={val(k)}" for k in rd.fields
           if k in ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.add_bos_token")]

    def t(x):
        return f"{x.name} {x.tensor_type.name} {list(map(int, x.shape))}"

    blk0 = [t(x).replace("blk.0.", "") for x in rd.tensors if x.name.startswith("blk.0.")]
    rest = [t(x) for x in rd.tensors if not x.name.startswith("blk.")]
    return "\n".join([
        f"{name}: {arch}  ({', '.join(tok)}; {os.path.getsize(path)} bytes)",
        f"  {arch}.*: {', '.join(keys)}",
        f"  blk.0: {', '.join(blk0)}",
        f"  other: {', '.join(rest)}",
    ])


def update_readme(listing: list[str]) -> None:
    with open(README, encoding="utf-8") as f:
        text = f.read()
    if MARK_BEGIN not in text:
        print(f"README has no {MARK_BEGIN} marker; section not written", file=sys.stderr)
        return
    head, rest = text.split(MARK_BEGIN, 1)
    _, tail = rest.split(MARK_END, 1)
    body = "\n```\n" + "\n".join(listing) + "\n```\n"
    with open(README, "w", encoding="utf-8") as f:
        f.write(head + MARK_BEGIN + body + MARK_END + tail)


def main() -> None:
    if len(sys.argv) == 6 and sys.argv[1] == "--convert-one":
        convert_one(*sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("families", nargs="*", help=f"default: all ({' '.join(FAMILIES)})")
    args = ap.parse_args()
    names = args.families or FAMILIES
    unknown = set(names) - set(FAMILIES)
    if unknown:
        sys.exit(f"unknown families: {sorted(unknown)}")

    listing, failed = [], []
    for name in names:
        d = os.path.join(FAMILIES_DIR, name)
        try:
            path = convert(name)
            with open(os.path.join(d, "reference.json"), encoding="utf-8") as f:
                ref = json.load(f)
            res = llamacpp_outputs(path, ref)
        except (Exception, SystemExit) as e:  # report and go on with the other families
            failed.append(name)
            print(f"{name}: FAILED: {e}", file=sys.stderr)
            continue
        write_llamacpp_json(os.path.join(d, "llamacpp.json"), res)
        listing.append(gguf_listing(name, path))
        v = res["vs_transformers"]
        pp = v["max_abs_logit_diff_per_position"]
        print(f"{name:10s} {os.path.getsize(path):7d} B  max|dlogit| {v['max_abs_logit_diff']:.3g} "
              f"(positions 0-7: {max(pp[:8]):.3g}, 8-23: {max(pp[8:]):.3g})  "
              f"greedy equal {v['greedy_equal']}  text_ids equal {v['text_ids_equal']}", flush=True)
    if not failed and names == FAMILIES:
        update_readme(listing)
    if failed:
        sys.exit(f"failed: {failed}")


if __name__ == "__main__":
    main()
