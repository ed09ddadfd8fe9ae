#!/usr/bin/env python3
"""Dump llama.cpp's logits (or greedy continuation) for given token ids.

Reference-runtime helper for the family fixtures: it feeds token ids straight
to llama.cpp (no tokenizer involved) and records what llama.cpp computes.

Needs
  * the `llama_cpp` Python package (llama-cpp-python 0.3.36 was used; its import
    also needs numpy, jinja2, typing-extensions and diskcache), and
  * a shared `libllama.so` (plus its libggml*.so) that matches those bindings.
    Point `LLAMA_CPP_LIB_PATH` at the directory holding it, e.g. a CMake build
    of the llama.cpp vendored in the llama-cpp-python sdist:
        export LLAMA_CPP_LIB_PATH=/work/ref/llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin
    If unset, that path is used when it exists; otherwise the wheel's own copy.

Run
  # logits for every position, one batch, JSON on stdout (or --out FILE)
  python3 llamacpp_logits.py MODEL.gguf --tokens 1,403,407,261,378 --out logits.json
  python3 llamacpp_logits.py MODEL.gguf --tokens-json ids.json   # [ints] or {"tokens": [ints]}
  # greedy (argmax, no sampling) continuation of N tokens after the prompt ids
  python3 llamacpp_logits.py MODEL.gguf --greedy 16 --prompt 1,403,407

Output
  logits: {"llama_cpp": ..., "model": ..., "kv_type": ..., "tokens": [...],
           "logits": [[n_vocab floats] per position]}
  greedy: {"llama_cpp": ..., "model": ..., "kv_type": ..., "prompt": [...],
           "greedy": [N ids]}
  Floats are float32 values written as the exactly equal double (lossless).

Settings: CPU only (n_gpu_layers=0), n_threads=2, n_ctx >= 64, the whole
sequence in one batch/ubatch, flash attention off, one sequence. The K/V cache
is f16 by default, as in llama.cpp / llama-cpp-python (the shared
reference/stories260K_llamacpp.json only matches with f16); note that this rounds K, V and Q to f16 inside attention.
`--kv-type f32` gives an all-f32 forward instead (on stories260K the two differ
by up to ~0.013 in the logits). Greedy mode never stops early unless
`--stop-eog` is given; ties go to the lowest id.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import pathlib
import sys

DEFAULT_LIB = "/work/ref/llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin"
if "LLAMA_CPP_LIB_PATH" not in os.environ and pathlib.Path(DEFAULT_LIB, "libllama.so").exists():
    os.environ["LLAMA_CPP_LIB_PATH"] = DEFAULT_LIB

import numpy as np  # noqa: E402
import llama_cpp  # noqa: E402
import llama_cpp.llama_cpp as C  # noqa: E402

GGML_TYPE = {"f32": 0, "f16": 1}
GGML_LOG_LEVEL_ERROR = 4  # ggml.h: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5


def quiet_logs(verbose: bool) -> None:
    """Route llama.cpp's log to stderr: everything with --verbose, else errors only."""

    @C.llama_log_callback
    def cb(level, text, _user):
        if verbose or level == GGML_LOG_LEVEL_ERROR:
            sys.stderr.write(text.decode("utf-8", "replace"))

    quiet_logs.cb = cb  # keep the callback alive
    C.llama_log_set(cb, ctypes.c_void_p(0))


def parse_ids(text: str) -> list[int]:
    text = text.strip()
    if text.startswith("["):
        return [int(x) for x in json.loads(text)]
    return [int(x) for x in text.replace(",", " ").split()]


def load_ids_json(path: str) -> list[int]:
    data = json.loads(pathlib.Path(path).read_text())
    if isinstance(data, dict):
        data = data["tokens"]
    return [int(x) for x in data]


def runtime_version() -> str:
    """llama-cpp-python version + llama.cpp version/commit reported by the loaded libraries."""
    parts = [f"llama-cpp-python {llama_cpp.__version__}"]
    try:
        fn = C._lib.llama_version
        fn.restype = ctypes.c_char_p
        parts.append(f"llama.cpp {fn().decode()}")
    except AttributeError:
        pass
    lib_dir = os.environ.get("LLAMA_CPP_LIB_PATH")
    if lib_dir and pathlib.Path(lib_dir, "libggml-base.so").exists():
        try:
            base = ctypes.CDLL(str(pathlib.Path(lib_dir, "libggml-base.so")))
            base.ggml_commit.restype = ctypes.c_char_p
            parts.append(f"commit {base.ggml_commit().decode()}")
        except (OSError, AttributeError):
            pass
    return ", ".join(parts)


class Runner:
    def __init__(self, model_path: str, n_ctx: int, n_threads: int, kv_type: str):
        C.llama_backend_init()
        mp = C.llama_model_default_params()
        mp.n_gpu_layers = 0
        self.model = C.llama_model_load_from_file(model_path.encode(), mp)
        if not self.model:
            sys.exit(f"failed to load {model_path}")
        self.vocab = C.llama_model_get_vocab(self.model)
        self.n_vocab = C.llama_vocab_n_tokens(self.vocab)
        cp = C.llama_context_default_params()
        cp.n_ctx = n_ctx
        cp.n_batch = n_ctx
        cp.n_ubatch = n_ctx  # whole sequence in one physical batch
        cp.n_seq_max = 1
        cp.n_threads = n_threads
        cp.n_threads_batch = n_threads
        cp.flash_attn_type = 0  # LLAMA_FLASH_ATTN_TYPE_DISABLED
        cp.type_k = GGML_TYPE[kv_type]
        cp.type_v = GGML_TYPE[kv_type]
        cp.no_perf = True
        self.ctx = C.llama_init_from_model(self.model, cp)
        if not self.ctx:
            sys.exit("failed to create llama context")
        self.n_past = 0

    def check(self, ids: list[int]) -> None:
        bad = [t for t in ids if not 0 <= t < self.n_vocab]
        if bad:
            sys.exit(f"token ids out of range [0, {self.n_vocab}): {bad}")

    def decode(self, ids: list[int], all_logits: bool) -> np.ndarray:
        """Evaluate ids in one llama_decode call; return logits [n_out, n_vocab] (float32)."""
        n = len(ids)
        batch = C.llama_batch_init(n, 0, 1)
        try:
            for i, t in enumerate(ids):
                batch.token[i] = t
                batch.pos[i] = self.n_past + i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = 1 if (all_logits or i == n - 1) else 0
            batch.n_tokens = n
            rc = C.llama_decode(self.ctx, batch)
            if rc != 0:
                sys.exit(f"llama_decode failed with {rc}")
        finally:
            C.llama_batch_free(batch)
        self.n_past += n
        rows = range(n) if all_logits else [n - 1]
        out = np.empty((len(rows), self.n_vocab), dtype=np.float32)
        for k, i in enumerate(rows):
            ptr = C.llama_get_logits_ith(self.ctx, i)
            out[k] = np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))
        return out

    def close(self) -> None:
        C.llama_free(self.ctx)
        C.llama_model_free(self.model)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="GGUF file")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--tokens", "--prompt", dest="tokens", help="ids: '1,2,3', '1 2 3' or '[1,2,3]'")
    src.add_argument("--tokens-json", help="JSON file: [ids] or {\"tokens\": [ids]}")
    ap.add_argument("--greedy", type=int, metavar="N", help="write N greedy continuation ids instead of logits")
    ap.add_argument("--stop-eog", action="store_true", help="greedy: stop after an end-of-generation token")
    ap.add_argument("--out", help="output JSON file (default: stdout)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-ctx", type=int, default=0, help="context size (default: max(64, needed))")
    ap.add_argument("--kv-type", choices=sorted(GGML_TYPE), default="f16",
                    help="K/V cache type (default f16 = llama.cpp's default; f32 = no f16 rounding in attention)")
    ap.add_argument("--verbose", action="store_true", help="show llama.cpp's log")
    args = ap.parse_args()

    quiet_logs(args.verbose)
    ids = parse_ids(args.tokens) if args.tokens is not None else load_ids_json(args.tokens_json)
    if not ids:
        sys.exit("no token ids given")
    need = len(ids) + (args.greedy or 0)
    n_ctx = max(64, need, args.n_ctx)

    r = Runner(args.model, n_ctx, args.threads, args.kv_type)
    r.check(ids)
    result = {"llama_cpp": runtime_version(), "model": os.path.basename(args.model), "kv_type": args.kv_type}
    if args.greedy is None:
        logits = r.decode(ids, all_logits=True)
        result["tokens"] = ids
        result["logits"] = logits.tolist()  # float32 -> exactly equal Python floats
    else:
        out: list[int] = []
        last = r.decode(ids, all_logits=False)[0]
        while len(out) < args.greedy:
            nxt = int(np.argmax(last))
            out.append(nxt)
            if args.stop_eog and C.llama_vocab_is_eog(r.vocab, nxt):
                break
            if len(out) < args.greedy:
                last = r.decode([nxt], all_logits=False)[0]
        result["prompt"] = ids
        result["greedy"] = out
    r.close()

    text = json.dumps(result)
    if args.out:
        pathlib.Path(args.out).write_text(text + "\n")
    else:
        print(text)


if __name__ == "__main__":
    main()
