#!/usr/bin/env python3
"""Independent numpy forward of a Gemma 3 GGUF (as llama.cpp's src/models/gemma3.cpp builds it).

Used by make_gemma3_reference.py to measure how far a float32 forward over the dequantized
weights lands from llama.cpp, and to show where the difference comes from.

Modes
  float32   weights dequantized by gguf-py to float32, activations kept in float32, exact tanh GELU:
            what a plain float32 implementation computes.
  llamacpp  the same, but each activation row is rounded the way llama.cpp's CPU backend rounds it
            before a quantized matmul (Q8_0 blocks of 32 with an f16 scale for Q4_0/Q5_0/Q8_0
            weights, Q8_K blocks of 256 with an f32 scale for Q4_K/Q6_K weights; the integer dot
            products are then exact, so dequant(W) @ dequant(quant(x)) is the same sum), and GELU
            goes through ggml's f16 table (x rounded to f16, the result rounded to f16).
K/V are float32 by default (compare with llama.cpp's --kv-type f32 run); kv="f16" rounds q, k, v and
the attention probabilities to f16 the way llama.cpp's f16 K/V cache path does (for sensitivity tests).

Graph (llama.cpp gemma3, no soft-caps in this GGUF): x = embd[ids] * sqrt(n_embd); per layer:
h = rmsnorm(x) * attn_norm; q/k/v = h @ W; q, k rmsnorm per head (* q_norm / k_norm); NEOX RoPE
(local layers il % 6 < 5: rope.freq_base_swa, default 10000, no scaling, sliding window; global
layers: rope.freq_base and linear rope.scaling.factor); q *= 1/sqrt(head_dim); causal
softmax(q k^T) v (GQA); @ attn_output; rmsnorm * post_attention_norm; x += that; h = rmsnorm(x) *
ffn_norm; gelu(h @ gate) * (h @ up) @ down; rmsnorm * post_ffw_norm; x += that. Then rmsnorm *
output_norm and @ token_embd (tied). (The 270M's window, 512, does not matter for <= 512 tokens.)
The norm weights are used as stored (the converter already added Gemma's +1).

Run:  python3 gemma3_numpy_forward.py MODEL.gguf 2,818,5279,529,7001,563 [--mode llamacpp] [--kv f16]
Needs numpy and gguf-py (PyPI gguf 0.19.0: GGUFReader, gguf.quants.dequantize).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import gguf

Q8_0_TYPES = {"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"}  # vec_dot_type Q8_0 (Q4_1/Q5_1 use Q8_1, same rounding here)
Q8_K_TYPES = {"Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"}


def quant_q8_0(x: np.ndarray) -> np.ndarray:
    """quantize_row_q8_0 then dequantize: blocks of 32, d = amax/127 (stored f16), q = round(x/d)."""
    b = x.reshape(*x.shape[:-1], -1, 32).astype(np.float32)
    amax = np.abs(b).max(axis=-1, keepdims=True)
    d = amax / np.float32(127)
    with np.errstate(divide="ignore"):
        idv = np.where(d > 0, np.float32(1) / d, np.float32(0)).astype(np.float32)
    q = np.rint(b * idv)  # the AVX path rounds to nearest even
    dh = d.astype(np.float16).astype(np.float32)
    return (q * dh).astype(np.float32).reshape(x.shape)


def quant_q8_k(x: np.ndarray) -> np.ndarray:
    """quantize_row_q8_K then dequantize: blocks of 256, iscale = -127/max (max = value of largest |x|)."""
    b = x.reshape(*x.shape[:-1], -1, 256).astype(np.float32)
    idx = np.abs(b).argmax(axis=-1)[..., None]
    mx = np.take_along_axis(b, idx, axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        iscale = np.where(mx != 0, np.float32(-127) / mx, np.float32(0)).astype(np.float32)
        q = np.minimum(np.rint(b * iscale), 127)
        d = np.where(iscale != 0, np.float32(1) / iscale, np.float32(0)).astype(np.float32)
    return (q * d).astype(np.float32).reshape(x.shape)


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    x64 = x.astype(np.float64)
    return (0.5 * x64 * (1 + np.tanh(0.7978845608028654 * (x64 + 0.044715 * x64 ** 3)))).astype(np.float32)


def gelu_table(x: np.ndarray) -> np.ndarray:
    """ggml's GGML_GELU_FP16 path: 0 below -10, x above 10, else f16(gelu(f16(x)))."""
    xh = x.astype(np.float16).astype(np.float32)
    y = gelu_tanh(xh).astype(np.float16).astype(np.float32)
    return np.where(x <= -10, np.float32(0), np.where(x >= 10, x, y)).astype(np.float32)


class Gemma3:
    def __init__(self, path: str, mode: str = "float32"):
        assert mode in ("float32", "llamacpp")
        self.mode = mode
        self.f64_matmul = False
        r = gguf.GGUFReader(path)

        def kv(name, default=None):
            f = r.fields.get(name)
            if f is None:
                return default
            v = f.contents()
            return v

        arch = kv("general.architecture")
        assert arch == "gemma3", arch
        self.n_layer = int(kv("gemma3.block_count"))
        self.n_embd = int(kv("gemma3.embedding_length"))
        self.n_head = int(kv("gemma3.attention.head_count"))
        self.n_head_kv = int(kv("gemma3.attention.head_count_kv"))
        self.head_dim = int(kv("gemma3.attention.key_length"))
        self.eps = float(np.float32(kv("gemma3.attention.layer_norm_rms_epsilon")))
        self.base = float(kv("gemma3.rope.freq_base", 10000.0))
        self.base_swa = float(kv("gemma3.rope.freq_base_swa", 10000.0))
        assert kv("gemma3.rope.scaling.type") in (None, "none", "linear")
        self.scale = 1.0 / float(kv("gemma3.rope.scaling.factor", 1.0))  # linear: global layers only
        self.n_swa = int(kv("gemma3.attention.sliding_window", 0))
        assert kv("gemma3.final_logit_softcapping") is None and kv("gemma3.attn_logit_softcapping") is None
        self.w, self.wtype = {}, {}
        for t in r.tensors:
            a = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
            self.w[t.name] = a
            self.wtype[t.name] = t.tensor_type.name
        self.out_name = "output.weight" if "output.weight" in self.w else "token_embd.weight"

    def mm(self, x: np.ndarray, name: str) -> np.ndarray:
        w = self.w[name]  # (out, in)
        if self.f64_matmul:
            return (x.astype(np.float64) @ w.T.astype(np.float64)).astype(np.float32)
        if self.mode == "llamacpp":
            t = self.wtype[name]
            if t in Q8_0_TYPES:
                x = quant_q8_0(x)
            elif t in Q8_K_TYPES:
                x = quant_q8_k(x)
            # F32 / F16 weights: no activation quantization needed here (F16 would round x to f16)
            elif t == "F16":
                x = x.astype(np.float16).astype(np.float32)
        return (x @ w.T).astype(np.float32)

    def rms(self, x: np.ndarray, name: str) -> np.ndarray:
        x64 = x.astype(np.float64)
        scale = (1.0 / np.sqrt((x64 * x64).mean(axis=-1, keepdims=True) + self.eps)).astype(np.float32)
        return (x * scale * self.w[name]).astype(np.float32)

    def rope(self, x: np.ndarray, pos: np.ndarray, base: float, scale: float) -> np.ndarray:
        """NEOX: rotate (x[i], x[i + d/2]) by scale * pos * base^(-2i/d)."""
        d = x.shape[-1]
        half = d // 2
        theta = scale * pos[:, None].astype(np.float64) * base ** (-2.0 * np.arange(half) / d)  # (T, half)
        c = np.cos(theta).astype(np.float32)[:, None, :]
        s = np.sin(theta).astype(np.float32)[:, None, :]
        x0, x1 = x[..., :half], x[..., half:]
        return np.concatenate([x0 * c - x1 * s, x0 * s + x1 * c], axis=-1).astype(np.float32)

    def forward(self, ids: list[int], kv: str = "f32", gelu: str | None = None, f64_matmul: bool = False) -> np.ndarray:
        """Logits [len(ids), n_vocab] (float32). kv="f16": round q, k, v and the attention probabilities to f16.
        gelu: "exact" or "table" (default: the mode's). f64_matmul: float64 dot products (precision check)."""
        assert kv in ("f32", "f16") and gelu in (None, "exact", "table")
        self.f64_matmul = f64_matmul
        r16 = (lambda a: a.astype(np.float16).astype(np.float32)) if kv == "f16" else (lambda a: a)
        T, H, Hkv, D = len(ids), self.n_head, self.n_head_kv, self.head_dim
        pos = np.arange(T)
        x = (self.w["token_embd.weight"][ids] * np.float32(np.sqrt(np.float32(self.n_embd)))).astype(np.float32)
        mask = np.triu(np.full((T, T), -np.inf, dtype=np.float32), 1)
        swa_mask = mask.copy()
        if self.n_swa > 0:  # LLAMA_SWA_TYPE_STANDARD: key p0 hidden from query p1 when p1 - p0 >= n_swa
            swa_mask[pos[:, None] - pos[None, :] >= self.n_swa] = -np.inf
        gelu = gelu_table if (gelu or ("table" if self.mode == "llamacpp" else "exact")) == "table" else gelu_tanh
        for il in range(self.n_layer):
            p = f"blk.{il}."
            swa = self.n_swa > 0 and il % 6 < 5  # sliding-window pattern 6: layers 5, 11, 17 are global
            base, scale, m = (self.base_swa, 1.0, swa_mask) if swa else (self.base, self.scale, mask)
            h = self.rms(x, p + "attn_norm.weight")
            q = self.mm(h, p + "attn_q.weight").reshape(T, H, D)
            k = self.mm(h, p + "attn_k.weight").reshape(T, Hkv, D)
            v = self.mm(h, p + "attn_v.weight").reshape(T, Hkv, D)
            q = self.rope(self.rms(q, p + "attn_q_norm.weight"), pos, base, scale)
            k = self.rope(self.rms(k, p + "attn_k_norm.weight"), pos, base, scale)
            q = r16((q * np.float32(1.0 / np.sqrt(D))).astype(np.float32))
            k, v = r16(k), r16(v)
            g = H // Hkv
            out = np.empty((T, H, D), dtype=np.float32)
            for hh in range(H):
                kk, vv = k[:, hh // g], v[:, hh // g]
                s = q[:, hh] @ kk.T + m
                s = s - s.max(axis=-1, keepdims=True)
                e = np.exp(s.astype(np.float64))
                pr = r16((e / e.sum(axis=-1, keepdims=True)).astype(np.float32))
                out[:, hh] = pr @ vv
            a = self.mm(out.reshape(T, H * D), p + "attn_output.weight")
            x = (x + self.rms(a, p + "post_attention_norm.weight")).astype(np.float32)
            h = self.rms(x, p + "ffn_norm.weight")
            f = gelu(self.mm(h, p + "ffn_gate.weight")) * self.mm(h, p + "ffn_up.weight")
            f = self.mm(f.astype(np.float32), p + "ffn_down.weight")
            x = (x + self.rms(f, p + "post_ffw_norm.weight")).astype(np.float32)
        x = self.rms(x, "output_norm.weight")
        out = self.mm(x, self.out_name)
        self.f64_matmul = False
        return out


def forward(path: str, ids: list[int], mode: str = "float32", kv: str = "f32") -> np.ndarray:
    return Gemma3(path, mode).forward(ids, kv)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("ids", help="comma-separated token ids")
    ap.add_argument("--mode", choices=["float32", "llamacpp"], default="float32")
    ap.add_argument("--kv", choices=["f32", "f16"], default="f32")
    a = ap.parse_args()
    ids = [int(t) for t in a.ids.split(",")]
    logits = forward(a.model, ids, a.mode, a.kv)
    row = logits[-1]
    top = np.argsort(-row, kind="stable")[:5]
    print("last position top-5:", [(int(i), float(row[i])) for i in top], file=sys.stderr)


if __name__ == "__main__":
    main()
