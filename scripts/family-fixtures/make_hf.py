#!/usr/bin/env python3
"""Tiny random-weight Hugging Face checkpoints + transformers reference outputs, one per family.

For every family in `FAMILIES` this script

1. trains a small tokenizer (vocabulary ~320-384) on `/work/shared/data/tinystories/val.txt`:
   * byte-level BPE (GPT-2 style, `tokenizers` library) for llama3 / qwen* / phi* / mixtral, with
     the family's real pre-tokenizer (Llama 3 regex, Qwen2 regex, or GPT-2's ByteLevel regex);
   * a SentencePiece BPE model (`sentencepiece`, byte_fallback=True) for gemma2 / gemma3 /
     mistral, saved as `tokenizer.model` and converted to `tokenizer.json` by transformers'
     `GemmaTokenizer` / `LlamaTokenizer`;
2. builds the model class with a tiny config (hidden 32, 4 heads, 2 KV heads, ...), float32,
   eager attention, and overwrites EVERY parameter with seeded random values (norm weights are
   not 1 / 0, biases are not 0, routers are far from ties);
3. saves it with `save_pretrained(..., safe_serialization=True)` to
   `crates/compress-model/tests/fixtures/families/<name>/` (config.json, generation_config.json,
   model.safetensors in float32, tokenizer.json, tokenizer_config.json [, tokenizer.model]),
   then adds the Hub-style legacy rope keys (`rope_theta`, `rope_scaling`, ...) to config.json
   next to transformers 5's `rope_parameters`, because Hub checkpoints (and readers written for
   them) use those names;
4. checks the saved tensor names/shapes against the Hub layout (MoE experts per expert, not
   fused), checks un-fused experts against the fused in-memory tensors, reloads the directory
   with `from_pretrained` and requires identical logits, reloads the tokenizer with
   `AutoTokenizer` and with the raw `tokenizers` library (and `sentencepiece`) and requires the
   same ids;
5. writes `reference.json`: 24 token ids and transformers' logits for them, a greedy
   continuation (8 new tokens, EOS disabled; checked against a cache-free argmax loop), the ids
   of a fixed text, and for MoE families the routed experts per layer and token.

It also prints, per family, how much the special features (sliding window, softcapping, rope
scaling, partial rotary, query_pre_attn_scalar) change the logits, to show that the fixture
exercises them.

Deterministic: fixed seeds everywhere, one torch thread. Rerun from the repository root with

    python3 scripts/family-fixtures/make_hf.py            # all families
    python3 scripts/family-fixtures/make_hf.py qwen2 mixtral   # some of them
    python3 scripts/family-fixtures/make_hf.py --check    # only verify the files on disk

(needs torch, transformers 5.x, tokenizers, safetensors, numpy, sentencepiece, protobuf).
Existing family directories are deleted and rewritten.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field

import numpy as np
import torch

import sentencepiece as spm
import tokenizers
import transformers
from safetensors import safe_open
from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GemmaTokenizer,
    GenerationConfig,
    LlamaTokenizer,
    PreTrainedTokenizerFast,
)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT_ROOT = os.path.join(ROOT, "crates", "compress-model", "tests", "fixtures", "families")
DATA = "/work/shared/data/tinystories/val.txt"

TEXT = "Once upon a time, there was a little girl."
N_TOKENS = 24
PROMPT_LEN = 6
NEW_TOKENS = 8

COMMON = dict(
    hidden_size=32,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=64,
    num_hidden_layers=2,
    max_position_embeddings=128,
    rms_norm_eps=1e-6,
)

# The Llama 3 and Qwen2 pre-tokenizer expressions as shipped in the Hub tokenizer.json files.
LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


@dataclass
class Tok:
    """How a family's tokenizer is built."""

    style: str  # "llama3" | "qwen2" | "gpt2" (byte-level BPE) or "sp-gemma" | "sp-llama"
    specials: list[str] = field(default_factory=list)  # byte-level only: ids 0.. in this order
    bos: str = ""
    eos: str = ""
    pad: str | None = None
    add_bos: bool = True
    vocab_size: int = 320
    # tokenizer_config.json `tokenizer_class` (the Hub's choice where it fits this tokenizer;
    # llama.cpp's Phi-3 converter only takes the byte-level path for "GPT2Tokenizer")
    tokenizer_class: str | None = None


@dataclass
class Family:
    name: str
    cls: str
    config_cls: str
    seed: int
    tok: Tok
    config: dict
    gemma_norm: bool = False  # RMSNorm computes x * (1 + w)
    moe: str | None = None  # "mixtral" | "qwen2_moe" | "qwen3_moe"
    legacy: dict = field(default_factory=dict)  # Hub-style config.json keys added after saving
    variants: dict = field(default_factory=dict)  # feature name -> config overrides (check only)


BL_LLAMA3 = Tok("llama3", ["<|begin_of_text|>", "<|end_of_text|>"], "<|begin_of_text|>", "<|end_of_text|>",
                tokenizer_class="PreTrainedTokenizerFast")
BL_QWEN = Tok("qwen2", ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], "<|endoftext|>", "<|im_end|>",
              add_bos=False, tokenizer_class="Qwen2Tokenizer")
# (llama.cpp looks up <unk>, <s>, </s> and <|endoftext|> by name in any model whose name contains "phi3")
BL_PHI3 = Tok("gpt2", ["<unk>", "<s>", "</s>", "<|endoftext|>"], "<s>", "<|endoftext|>", pad="<|endoftext|>",
              add_bos=False, tokenizer_class="GPT2Tokenizer")
BL_PHI4 = Tok("gpt2", ["<|endoftext|>", "<|end|>"], "<|endoftext|>", "<|end|>", pad="<|endoftext|>",
              add_bos=False, tokenizer_class="GPT2Tokenizer")
# (Mixtral's Hub tokenizer is SentencePiece; this byte-level one must not claim LlamaTokenizer,
# which transformers 5 would rebuild with a Metaspace pre-tokenizer)
BL_MIXTRAL = Tok("gpt2", ["<unk>", "<s>", "</s>"], "<s>", "</s>", tokenizer_class="PreTrainedTokenizerFast")
SP_GEMMA = Tok("sp-gemma", bos="<bos>", eos="<eos>", pad="<pad>", vocab_size=384)
SP_LLAMA = Tok("sp-llama", bos="<s>", eos="</s>", vocab_size=384)

LLAMA3_SCALING = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}
GEMMA3_LAYER_TYPES = ["sliding_attention"] * 5 + ["full_attention"]

FAMILIES = [
    Family(
        "llama3", "LlamaForCausalLM", "LlamaConfig", 101, BL_LLAMA3,
        dict(rope_theta=500000.0, rope_scaling=dict(LLAMA3_SCALING), tie_word_embeddings=False, head_dim=16),
        legacy=dict(rope_theta=500000.0, rope_scaling=dict(LLAMA3_SCALING)),
        variants={"rope_scaling (llama3)": dict(rope_parameters={"rope_type": "default", "rope_theta": 500000.0})},
    ),
    Family(
        "qwen2", "Qwen2ForCausalLM", "Qwen2Config", 102, BL_QWEN,
        dict(rope_theta=1000000.0, tie_word_embeddings=True, use_sliding_window=False),
        legacy=dict(rope_theta=1000000.0, rope_scaling=None),
    ),
    Family(
        "mistral", "MistralForCausalLM", "MistralConfig", 103, SP_LLAMA,
        dict(rope_theta=10000.0, sliding_window=8, tie_word_embeddings=False, head_dim=16),
        legacy=dict(rope_theta=10000.0, rope_scaling=None),
        variants={"sliding_window 8": dict(sliding_window=None)},
    ),
    Family(
        "qwen3", "Qwen3ForCausalLM", "Qwen3Config", 104, BL_QWEN,
        dict(rope_theta=1000000.0, head_dim=16, tie_word_embeddings=True, use_sliding_window=False),
        legacy=dict(rope_theta=1000000.0, rope_scaling=None),
    ),
    Family(
        "gemma2", "Gemma2ForCausalLM", "Gemma2Config", 105, SP_GEMMA,
        dict(num_hidden_layers=4, head_dim=16, sliding_window=8, attn_logit_softcapping=50.0,
             final_logit_softcapping=30.0, query_pre_attn_scalar=24, hidden_activation="gelu_pytorch_tanh",
             rope_theta=10000.0, tie_word_embeddings=True),
        gemma_norm=True,
        legacy=dict(rope_theta=10000.0, rope_scaling=None),
        variants={
            "sliding window 8 (layers 0,2)": dict(sliding_window=128),
            "attn_logit_softcapping 50": dict(attn_logit_softcapping=None),
            "final_logit_softcapping 30": dict(final_logit_softcapping=None),
            "query_pre_attn_scalar 24 (vs head_dim 16)": dict(query_pre_attn_scalar=16),
        },
    ),
    Family(
        "gemma3", "Gemma3ForCausalLM", "Gemma3TextConfig", 106, SP_GEMMA,
        dict(num_hidden_layers=6, head_dim=16, sliding_window=8, layer_types=list(GEMMA3_LAYER_TYPES),
             rope_theta=1000000.0, rope_local_base_freq=10000.0,
             rope_scaling={"rope_type": "linear", "factor": 8.0}, query_pre_attn_scalar=24,
             hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True),
        gemma_norm=True,
        legacy=dict(rope_theta=1000000.0, rope_local_base_freq=10000.0,
                    rope_scaling={"rope_type": "linear", "factor": 8.0}, sliding_window_pattern=6),
        variants={
            "sliding window 8 (layers 0-4)": dict(sliding_window=128),
            "linear rope scaling 8 (global layer)": dict(rope_parameters={
                "full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}),
            "local rope base 10000 (vs 1e6)": dict(rope_parameters={
                "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
                "sliding_attention": {"rope_type": "default", "rope_theta": 1000000.0}}),
            "query_pre_attn_scalar 24 (vs head_dim 16)": dict(query_pre_attn_scalar=16),
        },
    ),
    Family(
        "phi3", "Phi3ForCausalLM", "Phi3Config", 107, BL_PHI3,
        dict(rope_theta=10000.0, tie_word_embeddings=False, original_max_position_embeddings=128),
        legacy=dict(rope_theta=10000.0, rope_scaling=None, partial_rotary_factor=1.0),
    ),
    Family(
        "phi4mini", "Phi3ForCausalLM", "Phi3Config", 108, BL_PHI4,
        dict(rope_theta=10000.0, partial_rotary_factor=0.75, tie_word_embeddings=True,
             original_max_position_embeddings=128),
        legacy=dict(rope_theta=10000.0, rope_scaling=None, partial_rotary_factor=0.75),
        variants={"partial_rotary_factor 0.75": dict(rope_parameters={
            "rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 1.0})},
    ),
    Family(
        "mixtral", "MixtralForCausalLM", "MixtralConfig", 109, BL_MIXTRAL,
        # Mixtral's experts use `intermediate_size` (it has no moe_intermediate_size).
        dict(intermediate_size=32, num_local_experts=4, num_experts_per_tok=2, rope_theta=1000000.0,
             sliding_window=None, tie_word_embeddings=False, head_dim=16),
        moe="mixtral",
        legacy=dict(rope_theta=1000000.0, rope_scaling=None),
    ),
    Family(
        "qwen2_moe", "Qwen2MoeForCausalLM", "Qwen2MoeConfig", 110, BL_QWEN,
        dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=48,
             decoder_sparse_step=1, mlp_only_layers=[], norm_topk_prob=False, rope_theta=1000000.0,
             tie_word_embeddings=False, use_sliding_window=False),
        moe="qwen2_moe",
        legacy=dict(rope_theta=1000000.0, rope_scaling=None),
    ),
    Family(
        "qwen3_moe", "Qwen3MoeForCausalLM", "Qwen3MoeConfig", 111, BL_QWEN,
        dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, norm_topk_prob=True,
             decoder_sparse_step=1, mlp_only_layers=[], head_dim=16, rope_theta=1000000.0,
             tie_word_embeddings=False, use_sliding_window=False),
        moe="qwen3_moe",
        legacy=dict(rope_theta=1000000.0, rope_scaling=None),
    ),
]


# --------------------------------------------------------------------------------------------
# Tokenizers
# --------------------------------------------------------------------------------------------

def corpus_lines() -> list[str]:
    with open(DATA, encoding="utf-8") as f:
        return [line for line in f.read().splitlines() if line.strip()]


def byte_level_tokenizer(spec: Tok, lines: list[str]) -> PreTrainedTokenizerFast:
    tok = tokenizers.Tokenizer(models.BPE(ignore_merges=spec.style == "llama3"))
    if spec.style == "gpt2":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    else:
        regex = LLAMA3_REGEX if spec.style == "llama3" else QWEN2_REGEX
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ])
    if spec.style == "qwen2":
        tok.normalizer = normalizers.NFC()
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        min_frequency=2,
        special_tokens=spec.specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(lines, trainer)
    post = [processors.ByteLevel(trim_offsets=False)]
    if spec.add_bos:
        bos_id = tok.token_to_id(spec.bos)
        post.append(processors.TemplateProcessing(
            single=f"{spec.bos} $A", pair=f"{spec.bos} $A {spec.bos} $B", special_tokens=[(spec.bos, bos_id)]))
    tok.post_processor = processors.Sequence(post)
    kw = dict(bos_token=spec.bos, eos_token=spec.eos)
    if spec.pad:
        kw["pad_token"] = spec.pad
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, clean_up_tokenization_spaces=False, **kw)
    hf.add_bos_token = spec.add_bos  # recorded in tokenizer_config.json (read by GGUF converters)
    return hf


def sentencepiece_tokenizer(spec: Tok, lines: list[str], workdir: str):
    """Trains `tokenizer.model` in `workdir` and returns (transformers tokenizer, model path)."""
    common = dict(
        model_type="bpe",
        vocab_size=spec.vocab_size,
        byte_fallback=True,
        character_coverage=0.9995,
        split_digits=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        num_threads=1,
        minloglevel=2,
    )
    if spec.style == "sp-gemma":  # Gemma: pad 0, eos 1, bos 2, unk 3, no dummy prefix
        ids = dict(pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>",
                   bos_piece="<bos>", unk_piece="<unk>", add_dummy_prefix=False, allow_whitespace_only_pieces=True)
    else:  # Llama / Mistral: unk 0, bos 1, eos 2, dummy prefix
        ids = dict(unk_id=0, bos_id=1, eos_id=2, pad_id=-1, add_dummy_prefix=True)
    path = os.path.join(workdir, "tokenizer.model")
    buf = io.BytesIO()  # not model_prefix: the proto would record the temporary path
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=buf, **common, **ids)
    with open(path, "wb") as f:
        f.write(buf.getvalue())
    if spec.style == "sp-gemma":
        hf = GemmaTokenizer.from_pretrained(workdir, add_bos_token=True, mask_token=None)
    else:
        hf = LlamaTokenizer.from_pretrained(workdir, add_bos_token=True)
    assert hf.bos_token == spec.bos and hf.eos_token == spec.eos, (hf.bos_token, hf.eos_token)
    assert len(hf) == spec.vocab_size, (len(hf), spec.vocab_size)
    return hf, path


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------

def randomize(model: torch.nn.Module, fam: Family, seed: int) -> None:
    """Overwrites every parameter (in `named_parameters` order) with seeded random values.

    Linear weights ~ N(0, (g / sqrt(fan_in))^2) with g = 1, 1.5 for q/k projections (sharper
    attention), 3 for MoE routers (clear routing), 2 for the shared-expert gate, and an untied
    lm_head with g = 4 (logits spread over several units). Norm weights are 1 + 0.3 N(0,1)
    (Gemma's `x * (1 + w)` norms: w = 0.3 N(0,1)); biases 0.5 N(0,1); embeddings N(0,1).

    Tied-embedding models otherwise mostly predict the current token again (its own embedding
    dominates the residual stream and the logit), so for them: embeddings 0.5 N(0,1), output
    projections (o_proj, down_proj, expert down_proj) g = 2, final norm weight +1 (about 2x);
    and for Gemma also the post-attention / post-feedforward norms get w = 3 + 0.3 N(0,1), so
    the layers' outputs are not swamped by the sqrt(hidden)-scaled embedding.
    """
    g = torch.Generator().manual_seed(seed)
    hidden = model.config.hidden_size
    tied = model.config.tie_word_embeddings
    with torch.no_grad():
        for name, p in model.named_parameters():
            n = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if name.endswith("norm.weight"):
                base = 0.0 if fam.gemma_norm else 1.0
                if tied and name == "model.norm.weight":
                    base += 1.0
                if tied and fam.gemma_norm and name.endswith(
                        ("post_attention_layernorm.weight", "post_feedforward_layernorm.weight")):
                    base += 3.0
                v = base + 0.3 * n
            elif name.endswith(".bias"):
                v = 0.5 * n
            elif name.endswith("embed_tokens.weight"):
                v = n * (0.5 if tied else 1.0)
            elif name == "lm_head.weight":
                v = n * (4.0 / math.sqrt(hidden))
            elif name.endswith("mlp.gate.weight"):  # MoE router
                v = n * (3.0 / math.sqrt(hidden))
            elif name.endswith("shared_expert_gate.weight"):
                v = n * (2.0 / math.sqrt(hidden))
            elif name.endswith(("q_proj.weight", "k_proj.weight", "qkv_proj.weight")):
                v = n * (1.5 / math.sqrt(p.shape[-1]))
            elif name.endswith(("o_proj.weight", "down_proj.weight", "experts.down_proj")):
                v = n * ((2.0 if tied else 1.0) / math.sqrt(p.shape[-1]))
            else:  # other linear weights and fused expert tensors [E, out, in]
                assert p.dim() >= 2, name
                v = n / math.sqrt(p.shape[-1])
            p.copy_(v)


def build_config(fam: Family, tok, **overrides):
    cfg_cls = getattr(transformers, fam.config_cls)
    kw = dict(COMMON)
    kw.update(fam.config)
    kw.update(
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    if "rope_parameters" in overrides:  # the legacy keys would be merged into it otherwise
        for k in ("rope_theta", "rope_scaling", "rope_local_base_freq", "partial_rotary_factor"):
            kw.pop(k, None)
    kw.update(overrides)
    cfg = cfg_cls(**kw)
    cfg._attn_implementation = "eager"
    cfg.dtype = torch.float32
    return cfg


def routers(model) -> list[torch.nn.Module]:
    return [layer.mlp.gate for layer in model.model.layers]


def forward_logits(model, ids: list[int], capture_routing: bool = False):
    """Logits [T, V] for `ids` (no cache); with `capture_routing` also per-layer router outputs."""
    captured = []
    hooks = []
    if capture_routing:
        for r in routers(model):
            hooks.append(r.register_forward_hook(
                lambda _m, _i, out: captured.append((out[0].detach().clone(), out[2].detach().clone()))))
    try:
        with torch.no_grad():
            out = model(torch.tensor([ids]), use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return out.logits[0].float(), captured


def routing_summary(captured, top_k: int):
    """[[top-k expert ids per token] per layer] and the smallest logit gap that decides them."""
    routing, min_gap = [], float("inf")
    for router_logits, indices in captured:
        routing.append([[int(e) for e in row] for row in indices.tolist()])
        s = torch.sort(router_logits.double(), dim=-1, descending=True).values
        gaps = s[:, : top_k] - s[:, 1: top_k + 1]  # order inside top-k and the k / k+1 boundary
        min_gap = min(min_gap, float(gaps.min()))
        # the hook's indices must be the top-k by logit, sorted by weight descending
        ref = torch.argsort(router_logits.double(), dim=-1, descending=True)[:, :top_k]
        assert torch.equal(ref, indices), "router indices are not sorted by weight"
    return routing, min_gap


def greedy_loop(model, prompt: list[int], n: int):
    """Cache-free argmax continuation and the smallest top-1/top-2 logit margin on the way."""
    ids = list(prompt)
    margin = float("inf")
    for _ in range(n):
        logits, _ = forward_logits(model, ids)
        last = logits[-1].double()
        top2 = torch.topk(last, 2)
        margin = min(margin, float(top2.values[0] - top2.values[1]))
        ids.append(int(top2.indices[0]))
    return ids[len(prompt):], margin


def hf_generate(model, prompt: list[int], n: int, pad_id: int) -> list[int]:
    gen = GenerationConfig(do_sample=False, max_new_tokens=n, eos_token_id=None, pad_token_id=pad_id)
    saved_eos = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = None  # no stop token at all: exactly n tokens come out
    try:
        with torch.no_grad():
            out = model.generate(torch.tensor([prompt]), generation_config=gen,
                                 attention_mask=torch.ones(1, len(prompt), dtype=torch.long))
    finally:
        model.generation_config.eos_token_id = saved_eos  # saved generation_config.json keeps it
    new = out[0, len(prompt):].tolist()
    assert len(new) == n, new
    return new


# --------------------------------------------------------------------------------------------
# Hub layout
# --------------------------------------------------------------------------------------------

def expected_hub_tensors(fam: Family, cfg) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a Hub checkpoint of this family."""
    h = cfg.hidden_size
    nh, nkv = cfg.num_attention_heads, cfg.num_key_value_heads
    hd = getattr(cfg, "head_dim", None) or h // nh
    v = cfg.vocab_size
    t = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,)}
    if not cfg.tie_word_embeddings:
        t["lm_head.weight"] = (v, h)
    for l in range(cfg.num_hidden_layers):
        p = f"model.layers.{l}."
        t[p + "input_layernorm.weight"] = (h,)
        t[p + "post_attention_layernorm.weight"] = (h,)
        if fam.gemma_norm:
            t[p + "pre_feedforward_layernorm.weight"] = (h,)
            t[p + "post_feedforward_layernorm.weight"] = (h,)
        a = p + "self_attn."
        if fam.cls == "Phi3ForCausalLM":
            t[a + "qkv_proj.weight"] = ((nh + 2 * nkv) * hd, h)
        else:
            t[a + "q_proj.weight"] = (nh * hd, h)
            t[a + "k_proj.weight"] = (nkv * hd, h)
            t[a + "v_proj.weight"] = (nkv * hd, h)
        if fam.name in ("qwen2", "qwen2_moe"):
            t[a + "q_proj.bias"] = (nh * hd,)
            t[a + "k_proj.bias"] = (nkv * hd,)
            t[a + "v_proj.bias"] = (nkv * hd,)
        t[a + "o_proj.weight"] = (h, nh * hd)
        if fam.name in ("qwen3", "qwen3_moe", "gemma3"):
            t[a + "q_norm.weight"] = (hd,)
            t[a + "k_norm.weight"] = (hd,)
        if fam.moe == "mixtral":
            m, i = p + "block_sparse_moe.", cfg.intermediate_size
            t[m + "gate.weight"] = (cfg.num_local_experts, h)
            for e in range(cfg.num_local_experts):
                t[m + f"experts.{e}.w1.weight"] = (i, h)
                t[m + f"experts.{e}.w2.weight"] = (h, i)
                t[m + f"experts.{e}.w3.weight"] = (i, h)
        elif fam.moe in ("qwen2_moe", "qwen3_moe"):
            m, i = p + "mlp.", cfg.moe_intermediate_size
            t[m + "gate.weight"] = (cfg.num_experts, h)
            for e in range(cfg.num_experts):
                t[m + f"experts.{e}.gate_proj.weight"] = (i, h)
                t[m + f"experts.{e}.up_proj.weight"] = (i, h)
                t[m + f"experts.{e}.down_proj.weight"] = (h, i)
            if fam.moe == "qwen2_moe":
                s = cfg.shared_expert_intermediate_size
                t[m + "shared_expert.gate_proj.weight"] = (s, h)
                t[m + "shared_expert.up_proj.weight"] = (s, h)
                t[m + "shared_expert.down_proj.weight"] = (h, s)
                t[m + "shared_expert_gate.weight"] = (1, h)
        elif fam.cls == "Phi3ForCausalLM":
            t[p + "mlp.gate_up_proj.weight"] = (2 * cfg.intermediate_size, h)
            t[p + "mlp.down_proj.weight"] = (h, cfg.intermediate_size)
        else:
            i = cfg.intermediate_size
            t[p + "mlp.gate_proj.weight"] = (i, h)
            t[p + "mlp.up_proj.weight"] = (i, h)
            t[p + "mlp.down_proj.weight"] = (h, i)
    return t


def check_saved_tensors(fam: Family, model, path: str) -> dict:
    """Saved names/shapes/dtypes == Hub layout; saved experts == slices of the fused memory tensors."""
    want = expected_hub_tensors(fam, model.config)
    with safe_open(path, "pt") as f:
        keys = set(f.keys())
        got = {k: tuple(f.get_slice(k).get_shape()) for k in keys}
        dtypes = {f.get_slice(k).get_dtype() for k in keys}
        assert keys == set(want), f"saved names differ from Hub: extra {sorted(keys - set(want))}, " \
                                  f"missing {sorted(set(want) - keys)}"
        assert got == want, {k: (got[k], want[k]) for k in want if got[k] != want[k]}
        assert dtypes == {"F32"}, dtypes
        sd = model.state_dict()
        n_compared = 0
        for k in keys:  # non-expert tensors: same name in memory (after Mixtral's block_sparse_moe rename)
            mk = k.replace(".block_sparse_moe.", ".mlp.")
            if mk in sd:
                assert torch.equal(sd[mk], f.get_tensor(k)), k
                n_compared += 1
        if fam.moe:
            for l, layer in enumerate(model.model.layers):
                ex = layer.mlp.experts
                gate_up, down = ex.gate_up_proj.detach(), ex.down_proj.detach()
                i = gate_up.shape[1] // 2
                for e in range(gate_up.shape[0]):
                    if fam.moe == "mixtral":
                        pre = f"model.layers.{l}.block_sparse_moe.experts.{e}."
                        names = (pre + "w1.weight", pre + "w3.weight", pre + "w2.weight")
                    else:
                        pre = f"model.layers.{l}.mlp.experts.{e}."
                        names = (pre + "gate_proj.weight", pre + "up_proj.weight", pre + "down_proj.weight")
                    assert torch.equal(f.get_tensor(names[0]), gate_up[e, :i]), names[0]
                    assert torch.equal(f.get_tensor(names[1]), gate_up[e, i:]), names[1]
                    assert torch.equal(f.get_tensor(names[2]), down[e]), names[2]
                    n_compared += 3
        assert n_compared == len(keys), (n_compared, len(keys))
        return {"n_tensors": len(keys), "metadata": f.metadata()}


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------

def fmt_f32(x: np.float32) -> str:
    """Shortest decimal that reads back as exactly this float32 (also when parsed as f64 first)."""
    assert np.isfinite(x)
    s = str(x)
    if np.float32(float(s)) != x:  # guard against double rounding f64 -> f32
        s = repr(float(x))
    assert np.float32(json.loads(s)) == x
    return s


def write_reference(path: str, ref: dict, logits: np.ndarray) -> None:
    head = {k: v for k, v in ref.items() if k not in ("logits", "routing")}
    parts = ["{"]
    items = list(head.items())
    for k, v in items:
        parts.append(f"  {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)},")
    rows = ["    [" + ",".join(fmt_f32(x) for x in row) + "]" for row in logits]
    parts.append('  "logits": [\n' + ",\n".join(rows) + "\n  ]" + ("," if "routing" in ref else ""))
    if "routing" in ref:
        layers = ["    " + json.dumps(layer, separators=(",", ":")) for layer in ref["routing"]]
        parts.append('  "routing": [\n' + ",\n".join(layers) + "\n  ]")
    parts.append("}")
    text = "\n".join(parts) + "\n"
    back = json.loads(text)  # round trip
    assert back["tokens"] == ref["tokens"]
    assert np.array_equal(np.array(back["logits"], dtype=np.float32), logits)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def patch_config(out: str, fam: Family) -> None:
    """Adds the Hub-style keys next to transformers 5's `rope_parameters` (absent ones only)."""
    path = os.path.join(out, "config.json")
    with open(path) as f:
        cfg = json.load(f)
    for k, v in fam.legacy.items():
        cfg.setdefault(k, v)
    with open(path, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")


def clean_tokenizer_config(out: str, spec: Tok) -> None:
    """Drops keys that only describe where the tokenizer was built (temp paths); sets the class."""
    path = os.path.join(out, "tokenizer_config.json")
    with open(path) as f:
        cfg = json.load(f)
    for k in ("vocab_file", "is_local", "local_files_only"):
        cfg.pop(k, None)
    if spec.tokenizer_class:
        cfg["tokenizer_class"] = spec.tokenizer_class
    with open(path, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")


# --------------------------------------------------------------------------------------------
# One family
# --------------------------------------------------------------------------------------------

def pick_ids(rng: np.random.Generator, allowed: np.ndarray, n: int, bos: int) -> list[int]:
    return [bos] + [int(x) for x in rng.choice(allowed, size=n - 1, replace=True)]


def make_family(fam: Family, lines: list[str], tok_cache: dict) -> dict:
    print(f"\n=== {fam.name} ({fam.cls})", flush=True)
    out = os.path.join(OUT_ROOT, fam.name)
    if os.path.isdir(out):
        shutil.rmtree(out)
    os.makedirs(out)

    # ---- tokenizer
    spec = fam.tok
    with tempfile.TemporaryDirectory() as td:
        sp_path = None
        if spec.style.startswith("sp-"):
            tok, sp_path = sentencepiece_tokenizer(spec, lines, td)
            shutil.copyfile(sp_path, os.path.join(out, "tokenizer.model"))
        else:
            key = (spec.style, tuple(spec.specials), spec.add_bos)
            if key not in tok_cache:
                tok_cache[key] = byte_level_tokenizer(spec, lines)
            tok = tok_cache[key]
        tok.save_pretrained(out)
    clean_tokenizer_config(out, spec)
    vocab = len(tok)
    special = set(tok.all_special_ids)
    allowed = np.array([i for i in range(vocab) if i not in special])
    bos = tok.bos_token_id

    # ---- model
    torch.manual_seed(fam.seed)
    cfg = build_config(fam, tok)
    model = getattr(transformers, fam.cls)(cfg).eval()
    randomize(model, fam, fam.seed)
    if cfg.tie_word_embeddings:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert model.config._attn_implementation == "eager"
    assert all(p.dtype == torch.float32 for p in model.parameters())

    top_k = getattr(cfg, "num_experts_per_tok", 0)
    rng = np.random.default_rng(fam.seed)

    # ---- reference tokens (MoE: resample until no router decision is within 1e-3 of a tie)
    for attempt in range(100):
        tokens = pick_ids(rng, allowed, N_TOKENS, bos)
        logits, captured = forward_logits(model, tokens, capture_routing=bool(fam.moe))
        routing, route_gap = routing_summary(captured, top_k) if fam.moe else (None, float("inf"))
        if route_gap >= 1e-3:
            break
    else:
        raise RuntimeError("no token draw with clear routing")

    # ---- greedy prompt: clear argmax margins (>= 0.05) and routing gaps (>= 1e-3); among the
    # first 100 draws that have them, the first with >= 5 distinct new tokens, else the most varied
    best = None
    for attempt in range(100):
        prompt = pick_ids(rng, allowed, PROMPT_LEN, bos)
        new, margin = greedy_loop(model, prompt, NEW_TOKENS)
        gap = float("inf")
        if fam.moe:
            _, cap = forward_logits(model, prompt + new, capture_routing=True)
            _, gap = routing_summary(cap, top_k)
        if margin >= 0.05 and gap >= 1e-3 and (best is None or len(set(new)) > len(set(best[1]))):
            best = (prompt, new, margin, gap, attempt)
            if len(set(new)) >= 5:
                break
    assert best is not None, "no greedy prompt with clear margins"
    prompt, new, margin, gen_gap, prompt_attempt = best
    generated = hf_generate(model, prompt, NEW_TOKENS, tok.pad_token_id if tok.pad_token_id is not None else 0)
    assert generated == new, f"generate() {generated} != argmax loop {new}"

    # ---- save + hub layout
    model.save_pretrained(out, safe_serialization=True)
    patch_config(out, fam)
    st = check_saved_tensors(fam, model, os.path.join(out, "model.safetensors"))

    # ---- reload model
    re_model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, attn_implementation="eager").eval()
    assert type(re_model).__name__ == fam.cls, type(re_model).__name__
    assert re_model.config.rope_parameters == model.config.rope_parameters, \
        (re_model.config.rope_parameters, model.config.rope_parameters)
    for attr in ("layer_types", "sliding_window", "head_dim", "query_pre_attn_scalar", "attn_logit_softcapping",
                 "final_logit_softcapping", "tie_word_embeddings", "norm_topk_prob"):
        if hasattr(model.config, attr):
            assert getattr(re_model.config, attr) == getattr(model.config, attr), attr
    re_logits, re_cap = forward_logits(re_model, tokens, capture_routing=bool(fam.moe))
    reload_diff = float((re_logits - logits).abs().max())
    assert reload_diff <= 1e-6, reload_diff
    if fam.moe:
        assert routing_summary(re_cap, top_k)[0] == routing
    re_new, _ = greedy_loop(re_model, prompt, NEW_TOKENS)
    assert re_new == new

    # ---- reload tokenizer: transformers, raw tokenizers, sentencepiece must agree
    re_tok = AutoTokenizer.from_pretrained(out)
    text_ids = re_tok(TEXT).input_ids
    raw = tokenizers.Tokenizer.from_file(os.path.join(out, "tokenizer.json"))
    assert raw.encode(TEXT).ids == text_ids, (raw.encode(TEXT).ids, text_ids)
    assert len(re_tok) == vocab == re_model.config.vocab_size == raw.get_vocab_size()
    assert re_tok.bos_token_id == re_model.config.bos_token_id == bos
    assert re_tok.eos_token_id == re_model.config.eos_token_id
    assert (text_ids[0] == bos) == spec.add_bos
    tok_mismatch = 0
    sample = lines[:300] + ["Tom's 3 cats don't like 1234 fish!!  ok\n\nyes", "café — naïve 😀"]
    for line in sample:
        a = re_tok(line, add_special_tokens=False).input_ids
        assert raw.encode(line, add_special_tokens=False).ids == a
        assert re_tok.decode(a) == line
        if sp_path:
            tok_mismatch += spm.SentencePieceProcessor(model_file=os.path.join(out, "tokenizer.model")).encode(line) != a
    assert tok_mismatch == 0, f"{tok_mismatch} lines tokenize differently in sentencepiece"

    # ---- feature checks: how much each special feature moves the logits
    features = {}
    sd = model.state_dict()
    for label, over in fam.variants.items():
        vcfg = build_config(fam, tok, **over)
        vm = getattr(transformers, fam.cls)(vcfg).eval()
        vm.load_state_dict(sd, strict=True)
        vl, _ = forward_logits(vm, tokens)
        d = (vl - logits).abs().max(dim=-1).values
        nz = torch.nonzero(d > 0)
        features[label] = (float(d.max()), int(nz[0]) if len(nz) else None)

    # ---- reference.json
    ref = {
        "family": fam.name,
        "class": fam.cls,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "tokens": tokens,
        "greedy": {"prompt": prompt, "tokens": new},
        "text": TEXT,
        "text_ids": text_ids,
    }
    if fam.moe:
        ref["routing"] = routing
    logits_np = logits.numpy().astype(np.float32)
    write_reference(os.path.join(out, "reference.json"), ref, logits_np)

    summary = {
        "vocab": vocab,
        "logits_std": float(logits_np.std()),
        "logits_std_across_positions": float(logits_np.std(axis=0).mean()),
        "logits_range": (float(logits_np.min()), float(logits_np.max())),
        "greedy": new,
        "greedy_distinct": len(set(new)),
        "greedy_min_margin": margin,
        "prompt_attempt": prompt_attempt,
        "route_gap_tokens": route_gap,
        "route_gap_greedy": gen_gap,
        "reload_max_diff": reload_diff,
        "reload_bit_identical": bool(torch.equal(re_logits, logits)),
        "n_tensors": st["n_tensors"],
        "features": features,
        "rope_parameters": model.config.rope_parameters,
        "layer_types": getattr(model.config, "layer_types", None),
        "tokenizer_class": type(re_tok).__name__,
        "text_ids": text_ids,
        "bytes": {f: os.path.getsize(os.path.join(out, f)) for f in sorted(os.listdir(out))},
    }
    for k, v in summary.items():
        print(f"  {k}: {v}")
    return summary


def check_family(fam: Family) -> None:
    """Recomputes reference.json from the files on disk alone (fresh load) and compares exactly."""
    out = os.path.join(OUT_ROOT, fam.name)
    with open(os.path.join(out, "reference.json")) as f:
        ref = json.load(f)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, attn_implementation="eager").eval()
    tok = AutoTokenizer.from_pretrained(out)
    with safe_open(os.path.join(out, "model.safetensors"), "pt") as f:
        for k in f.keys():
            t = f.get_tensor(k)
            assert t.dtype == torch.float32 and t.unique().numel() > 1, f"{k} is constant"
    logits, cap = forward_logits(model, ref["tokens"], capture_routing=bool(fam.moe))
    want = torch.tensor(np.array(ref["logits"], dtype=np.float32))
    diff = float((logits - want).abs().max())
    assert diff <= 1e-6, diff
    if fam.moe:
        assert routing_summary(cap, model.config.num_experts_per_tok)[0] == ref["routing"]
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    assert hf_generate(model, ref["greedy"]["prompt"], NEW_TOKENS, pad) == ref["greedy"]["tokens"]
    assert tok(ref["text"]).input_ids == ref["text_ids"]
    assert ref["family"] == fam.name and ref["class"] == type(model).__name__ == fam.cls
    print(f"  {fam.name}: ok (max |logit diff| {diff:g}, bit-identical {diff == 0.0})")


def main(argv: list[str]) -> None:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    transformers.logging.set_verbosity_error()
    if argv[:1] == ["--check"]:
        names = set(argv[1:])
        print("checking fixtures on disk against their reference.json")
        for fam in FAMILIES:
            if not names or fam.name in names:
                check_family(fam)
        return
    names = set(argv)
    unknown = names - {f.name for f in FAMILIES}
    if unknown:
        sys.exit(f"unknown families: {sorted(unknown)}")
    lines = corpus_lines()
    os.makedirs(OUT_ROOT, exist_ok=True)
    tok_cache: dict = {}
    summaries = {}
    for fam in FAMILIES:
        if names and fam.name not in names:
            continue
        summaries[fam.name] = make_family(fam, lines, tok_cache)
    total = sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(OUT_ROOT) for f in fs)
    print(f"\ntransformers {transformers.__version__}, torch {torch.__version__}, tokenizers "
          f"{tokenizers.__version__}, sentencepiece {spm.__version__}")
    print(f"{'family':<10} {'vocab':>5} {'std':>6} {'pos-std':>7} {'greedy distinct':>15} {'margin':>7} "
          f"{'bit-identical':>13}")
    for name, s in summaries.items():
        print(f"{name:<10} {s['vocab']:>5} {s['logits_std']:>6.3f} {s['logits_std_across_positions']:>7.3f} "
              f"{s['greedy_distinct']:>15} {s['greedy_min_margin']:>7.3f} {str(s['reload_bit_identical']):>13}")
    print(f"total size of {os.path.relpath(OUT_ROOT, ROOT)}: {total} bytes ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main(sys.argv[1:])
