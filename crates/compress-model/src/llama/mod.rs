//! The decoder of every supported family on burn tensors.
//!
//! `tokens → embedding → N × [x + attn(norm(x)); x + mlp(norm(x))] → norm → head → logits`,
//! the pre-norm transformer of Llama (Touvron et al. 2023, arXiv:2302.13971) with RMSNorm, RoPE,
//! grouped-query attention and a gated MLP, plus what the other families add to it
//! ([`Variant`](crate::config::Variant)): norms on the sub-layer outputs (Gemma's sandwich),
//! q/k norms, GELU-tanh, sliding-window layers with their own RoPE, soft-capping, embedding
//! scaling, scaled or partial RoPE. Every projection is a [`CompressedLinear`], so compressed
//! layers drop in.

mod attention;
pub(crate) mod build;
mod cache;
pub mod calibrate;
mod gates;
mod mlp;
mod moe;
mod nested;
mod norm;
pub(crate) mod rope;
mod surgery;

pub use attention::{Attention, AttentionPrecision};
pub use build::random_model;
pub use cache::{KvCache, LayerCache};
pub use gates::TaylorScores;
pub use mlp::Mlp;
pub use moe::{FeedForward, Moe, Routing};
pub use nested::{BlockGates, PrefixWidth};
pub use norm::RmsNorm;
pub use rope::Rope;
pub use surgery::HeadShape;

use burn::module::{Module, Param};
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use compress_core::layer_id::{Expert, LinearId, LinearKind};
use compress_core::linear::CompressedLinear;

use crate::config::LlamaConfig;
use crate::error::ModelError;

/// The linears of a dense block, in the order the block computes them (the order of
/// [`Block::linears`] for a dense MLP).
pub const BLOCK_LINEARS: [LinearKind; 7] = [
    LinearKind::Q,
    LinearKind::K,
    LinearKind::V,
    LinearKind::O,
    LinearKind::Gate,
    LinearKind::Up,
    LinearKind::Down,
];

/// One pre-norm decoder block.
#[derive(Module, Debug)]
pub struct Block {
    /// Norm before attention.
    pub attn_norm: RmsNorm,
    /// Self-attention.
    pub attn: Attention,
    /// Norm of the attention output before the residual add (Gemma's sandwich norms).
    pub post_attn_norm: Option<RmsNorm>,
    /// Norm before the MLP.
    pub ffn_norm: RmsNorm,
    /// Feed-forward network: a gated MLP or a mixture of experts.
    pub mlp: FeedForward,
    /// Norm of the MLP output before the residual add (Gemma's sandwich norms).
    pub post_ffn_norm: Option<RmsNorm>,
    /// The block attends within a sliding window (and with the local RoPE where there is one).
    #[module(skip)]
    pub sliding: bool,
}

impl Block {
    /// `x + post_norm(attn_out)`: the residual after attention.
    pub fn attn_residual(&self, x: Tensor<3>, attn_out: Tensor<3>) -> Tensor<3> {
        match &self.post_attn_norm {
            Some(n) => x + n.forward(attn_out),
            None => x + attn_out,
        }
    }

    /// `h + post_norm(mlp_out)`: the block's output.
    pub fn mlp_residual(&self, h: Tensor<3>, mlp_out: Tensor<3>) -> Tensor<3> {
        match &self.post_ffn_norm {
            Some(n) => h + n.forward(mlp_out),
            None => h + mlp_out,
        }
    }

    /// The block's linear `id` (the block index of `id` is not checked).
    pub fn linear(&self, id: LinearId) -> Option<&CompressedLinear> {
        let a = &self.attn;
        match (id.expert_ref(), id.kind(), &self.mlp) {
            (None, LinearKind::Q, _) => Some(&a.q_proj),
            (None, LinearKind::K, _) => Some(&a.k_proj),
            (None, LinearKind::V, _) => Some(&a.v_proj),
            (None, LinearKind::O, _) => Some(&a.o_proj),
            (None, k, FeedForward::Dense(m)) => m.linear(k),
            (None, LinearKind::Router, FeedForward::Moe(m)) => Some(&m.router),
            (Some(Expert::Routed(e)), k, FeedForward::Moe(m)) => {
                m.experts.get(e as usize)?.linear(k)
            }
            (Some(Expert::Shared), LinearKind::Router, FeedForward::Moe(m)) => {
                m.shared_gate.as_ref()
            }
            (Some(Expert::Shared), k, FeedForward::Moe(m)) => m.shared.as_ref()?.linear(k),
            _ => None,
        }
    }

    /// [`Self::linear`], to replace it.
    pub fn linear_mut(&mut self, id: LinearId) -> Option<&mut CompressedLinear> {
        let a = &mut self.attn;
        match (id.expert_ref(), id.kind(), &mut self.mlp) {
            (None, LinearKind::Q, _) => Some(&mut a.q_proj),
            (None, LinearKind::K, _) => Some(&mut a.k_proj),
            (None, LinearKind::V, _) => Some(&mut a.v_proj),
            (None, LinearKind::O, _) => Some(&mut a.o_proj),
            (None, k, FeedForward::Dense(m)) => m.linear_mut(k),
            (None, LinearKind::Router, FeedForward::Moe(m)) => Some(&mut m.router),
            (Some(Expert::Routed(e)), k, FeedForward::Moe(m)) => {
                m.experts.get_mut(e as usize)?.linear_mut(k)
            }
            (Some(Expert::Shared), LinearKind::Router, FeedForward::Moe(m)) => {
                m.shared_gate.as_mut()
            }
            (Some(Expert::Shared), k, FeedForward::Moe(m)) => m.shared.as_mut()?.linear_mut(k),
            _ => None,
        }
    }

    /// The ids of the block's linears (block index `block`), in the order the block computes
    /// them: q/k/v/o, then the MLP's gate/up/down, or the router, the shared expert's gate
    /// (router) / gate / up / down and each expert's gate/up/down.
    pub fn linear_ids(&self, block: usize) -> Vec<LinearId> {
        let mut ids: Vec<LinearId> = [LinearKind::Q, LinearKind::K, LinearKind::V, LinearKind::O]
            .map(|k| LinearId::block(block, k))
            .to_vec();
        let mlp = [LinearKind::Gate, LinearKind::Up, LinearKind::Down];
        match &self.mlp {
            FeedForward::Dense(_) => ids.extend(mlp.map(|k| LinearId::block(block, k))),
            FeedForward::Moe(m) => {
                ids.push(LinearId::block(block, LinearKind::Router));
                if m.shared_gate.is_some() {
                    ids.push(LinearId::expert(block, Expert::Shared, LinearKind::Router));
                }
                if m.shared.is_some() {
                    ids.extend(mlp.map(|k| LinearId::expert(block, Expert::Shared, k)));
                }
                for e in 0..m.experts.len() as u32 {
                    ids.extend(mlp.map(|k| LinearId::expert(block, Expert::Routed(e), k)));
                }
            }
        }
        ids
    }

    /// The block's linears with their ids, in [`Self::linear_ids`] order.
    pub fn linears(&self, block: usize) -> Vec<(LinearId, &CompressedLinear)> {
        self.linear_ids(block)
            .into_iter()
            .filter_map(|id| self.linear(id).map(|l| (id, l)))
            .collect()
    }

    /// Every linear of the block, to change them in place (in [`Self::linear_ids`] order).
    pub fn linears_mut(&mut self) -> Vec<&mut CompressedLinear> {
        let a = &mut self.attn;
        let mut out = vec![&mut a.q_proj, &mut a.k_proj, &mut a.v_proj, &mut a.o_proj];
        match &mut self.mlp {
            FeedForward::Dense(m) => out.extend(m.linears_mut()),
            FeedForward::Moe(m) => {
                out.push(&mut m.router);
                if let Some(g) = &mut m.shared_gate {
                    out.push(g);
                }
                if let Some(s) = &mut m.shared {
                    out.extend(s.linears_mut());
                }
                for e in &mut m.experts {
                    out.extend(e.linears_mut());
                }
            }
        }
        out
    }

    /// The norms a family adds to the llama block, with the names containers store them under.
    pub fn variant_norms(&self) -> Vec<(&'static str, &RmsNorm)> {
        [
            ("q_norm", self.attn.q_norm.as_ref()),
            ("k_norm", self.attn.k_norm.as_ref()),
            ("post_attn_norm", self.post_attn_norm.as_ref()),
            ("post_ffn_norm", self.post_ffn_norm.as_ref()),
        ]
        .into_iter()
        .filter_map(|(n, norm)| norm.map(|norm| (n, norm)))
        .collect()
    }

    /// The gated MLPs of the block's feed-forward layer, each named by its unit: `None` for a
    /// dense MLP, `Some(expert)` for each routed expert (in order) and the shared one.
    pub fn ffn_units(&self) -> Vec<Option<Expert>> {
        match &self.mlp {
            FeedForward::Dense(_) => vec![None],
            FeedForward::Moe(m) => (0..m.experts.len() as u32)
                .map(|e| Some(Expert::Routed(e)))
                .chain(m.shared.as_ref().map(|_| Some(Expert::Shared)))
                .collect(),
        }
    }

    /// The gated MLP `unit` of the block (see [`Self::ffn_units`]), or an error naming the block
    /// and unit when the block has no such MLP.
    pub fn mlp_of(&self, block: usize, unit: Option<Expert>) -> Result<&Mlp, ModelError> {
        let found = match (&self.mlp, unit) {
            (FeedForward::Dense(m), None) => Some(m),
            (FeedForward::Moe(m), Some(Expert::Routed(e))) => m.experts.get(e as usize),
            (FeedForward::Moe(m), Some(Expert::Shared)) => m.shared.as_ref(),
            _ => None,
        };
        found.ok_or_else(|| missing_mlp(block, unit, &self.mlp))
    }

    /// [`Self::mlp_of`], to change it.
    pub fn mlp_of_mut(
        &mut self,
        block: usize,
        unit: Option<Expert>,
    ) -> Result<&mut Mlp, ModelError> {
        let err = missing_mlp(block, unit, &self.mlp);
        let found = match (&mut self.mlp, unit) {
            (FeedForward::Dense(m), None) => Some(m),
            (FeedForward::Moe(m), Some(Expert::Routed(e))) => m.experts.get_mut(e as usize),
            (FeedForward::Moe(m), Some(Expert::Shared)) => m.shared.as_mut(),
            _ => None,
        };
        found.ok_or(err)
    }

    /// `x + attn(norm(x))`, then `h + mlp(norm(h))`, for `x: [batch, seq, hidden]`.
    pub fn forward(
        &self,
        x: Tensor<3>,
        rope: &Rope,
        positions: Tensor<2, Int>,
        mask: Option<Tensor<4, Bool>>,
        cache: Option<&mut LayerCache>,
    ) -> Tensor<3> {
        self.forward_gated(x, rope, positions, mask, cache, None)
    }

    /// [`Self::forward`] with every head's context multiplied by `gates.0[head]` before `o_proj`
    /// and every FFN neuron's activation by `gates.1[neuron]` before `down_proj` — the hooks of
    /// the Taylor importance (gates of 1 that require a gradient) and of masked-structure checks.
    pub fn forward_gated(
        &self,
        x: Tensor<3>,
        rope: &Rope,
        positions: Tensor<2, Int>,
        mask: Option<Tensor<4, Bool>>,
        cache: Option<&mut LayerCache>,
        gates: Option<(&Tensor<1>, &Tensor<1>)>,
    ) -> Tensor<3> {
        let normed = self.attn_norm.forward(x.clone());
        let attn = match gates {
            None => self.attn.forward(normed, rope, positions, mask, cache),
            Some((heads, _)) => {
                let ctx = self.attn.context(normed, rope, positions, mask, cache);
                let [b, t, _] = ctx.dims();
                let (nh, hd) = (self.attn.num_heads, self.attn.head_dim);
                let ctx = (ctx.reshape([b, t, nh, hd]) * heads.clone().reshape([1, 1, nh, 1]))
                    .reshape([b, t, nh * hd]);
                self.attn.o_proj.forward(ctx)
            }
        };
        let h = self.attn_residual(x, attn);
        let normed = self.ffn_norm.forward(h.clone());
        let mlp = match (gates, &self.mlp) {
            (Some((_, ffn)), FeedForward::Dense(m)) => m
                .down_proj
                .forward(m.gated(normed) * ffn.clone().unsqueeze::<3>()),
            // FFN gates are per neuron of a dense MLP; callers refuse them for experts.
            (_, ffn) => ffn.forward(normed),
        };
        self.mlp_residual(h, mlp)
    }
}

/// A llama-family causal language model.
#[derive(Module, Debug)]
pub struct LlamaModel {
    /// Token embedding, `[vocab, hidden]`.
    pub embedding: Param<Tensor<2>>,
    /// The decoder blocks, in order.
    pub layers: Vec<Block>,
    /// Final norm.
    pub norm: RmsNorm,
    /// Output head, `[vocab, hidden]` (a copy of the embedding when tied).
    pub lm_head: CompressedLinear,
    /// RoPE tables shared by every global block (every block without local tables).
    pub rope: Rope,
    /// RoPE tables of the sliding-window blocks when they differ (Gemma 3's local base).
    pub rope_local: Option<Rope>,
    #[module(skip)]
    pub(crate) config: LlamaConfig,
    /// Folds of input scales into an `up_proj` so far: a kept `down_proj` input computed under
    /// an older count is stale.
    #[module(skip)]
    pub(crate) mlp_folds: usize,
    /// Where a lazily loaded model reads its embedding again (see [`Self::release_embedding`]).
    #[module(skip)]
    pub(crate) embedding_source: Option<build::EmbeddingSource>,
}

impl LlamaModel {
    /// The hyper-parameters the model was built with.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// Number of decoder blocks.
    pub fn num_blocks(&self) -> usize {
        self.layers.len()
    }

    /// The linear `id` (a block projection or the output head), if the model has it.
    pub fn linear(&self, id: LinearId) -> Option<&CompressedLinear> {
        match id.block_index() {
            None => Some(&self.lm_head),
            Some(b) => self.layers.get(b)?.linear(id),
        }
    }

    /// The linear `id`, to replace it.
    pub fn linear_mut(&mut self, id: LinearId) -> Option<&mut CompressedLinear> {
        match id.block_index() {
            None => Some(&mut self.lm_head),
            Some(b) => self.layers.get_mut(b)?.linear_mut(id),
        }
    }

    /// Sets the numeric precision of every attention layer (see [`AttentionPrecision`]).
    pub fn set_attention_precision(&mut self, precision: AttentionPrecision) {
        for layer in &mut self.layers {
            layer.attn.precision = precision;
        }
    }

    /// The numeric precision of the attention layers.
    pub fn attention_precision(&self) -> AttentionPrecision {
        self.layers
            .first()
            .map_or_else(AttentionPrecision::default, |l| l.attn.precision)
    }

    /// Chooses how every quantized layer multiplies (see
    /// [`QuantizedLinear::kernel`](compress_core::linear::QuantizedLinear::kernel)): fused CPU
    /// kernels with f32 activations (`Some(Activations::F32)`, the default), with int8
    /// activations on VNNI CPUs (`Some(Activations::Int8)`), or the dequantized weight (`None`).
    /// Returns, per quantized matrix in order (blocks, then the head; `V̂` then `Û` of a
    /// low-rank layer with quantized factors), the kernel tier it will run on, `None` where it
    /// uses the dequantized weight (pruned layers, GPU backends, autodiff).
    pub fn set_kernels(
        &mut self,
        mode: Option<compress_core::kernels::Activations>,
    ) -> Vec<Option<compress_core::kernels::Tier>> {
        let mut tiers = Vec::new();
        let mut set = |l: &mut CompressedLinear| match l {
            CompressedLinear::Quantized(q) => {
                q.kernel = mode;
                tiers.push(q.kernel_tier());
            }
            CompressedLinear::QuantizedLowRank(f) => {
                for q in [&mut f.down, &mut f.up] {
                    q.kernel = mode;
                    tiers.push(q.kernel_tier());
                }
            }
            _ => {}
        };
        for layer in &mut self.layers {
            for l in layer.linears_mut() {
                set(l);
            }
        }
        set(&mut self.lm_head);
        tiers
    }

    /// Drops the resident token embedding of a lazily loaded model ([`crate::load`] of a file),
    /// and the tied output head's while it is still the embedding: both are read from the file
    /// again on their next use, as the blocks' weights are. Returns whether anything was
    /// released; a model built from memory keeps its embedding. The calibration pipeline calls
    /// it once the calibration set is embedded (113 MB in f32 for SmolLM2-135M).
    pub fn release_embedding(&mut self) -> bool {
        let Some(source) = &self.embedding_source else {
            return false;
        };
        let id = self.embedding.id;
        let fresh = source.param_with_id(id);
        if let CompressedLinear::Dense(head) = &mut self.lm_head {
            if head.weight.id == id {
                head.weight = fresh.clone();
            }
        }
        self.embedding = fresh;
        true
    }

    /// The device the weights live on.
    pub fn device(&self) -> Device {
        self.embedding.lazy_device()
    }

    /// Logits `[batch, seq, vocab]` for a batch of token ids `[batch, seq]`.
    ///
    /// `padding: [batch, seq]` is true for real tokens and false for padding (left or right):
    /// padded keys are never attended to and each real token's position counts only the real
    /// tokens before it, so a padded row gives the same logits as the row alone. Logits at padded
    /// positions are meaningless.
    pub fn forward(
        &self,
        tokens: Tensor<2, Int>,
        padding: Option<Tensor<2, Bool>>,
    ) -> Result<Tensor<3>, ModelError> {
        let [b, t] = tokens.dims();
        self.check_len(t)?;
        let device = tokens.device();
        let (full_positions, causal) = full_sequence(b, t, &device);
        let (positions, mask) = match padding {
            None => (full_positions, causal),
            Some(pad) => {
                let positions = (pad.clone().int().cumsum(1) - 1).clamp_min(0);
                let blocked_keys = pad
                    .bool_not()
                    .unsqueeze_dims::<4>(&[1, 2])
                    .expand([b, 1, t, t]);
                (positions, causal.bool_or(blocked_keys))
            }
        };
        let windowed = self.window().map(|w| {
            mask.clone().bool_or(
                window_mask(t, 0, w, &device)
                    .unsqueeze_dims::<4>(&[0, 1])
                    .expand([b, 1, t, t]),
            )
        });
        let mut x = self.embed(tokens);
        for (l, layer) in self.layers.iter().enumerate() {
            let m = match (&windowed, layer.sliding) {
                (Some(w), true) => w.clone(),
                _ => mask.clone(),
            };
            x = layer.forward(x, self.rope_of(l), positions.clone(), Some(m), None);
        }
        Ok(self.logits_of(x))
    }

    /// Logits `[batch, seq, vocab]` for `tokens` that continue the sequences in `cache` (no
    /// padding); appends their keys and values to the cache.
    pub fn forward_cached(
        &self,
        tokens: Tensor<2, Int>,
        cache: &mut KvCache,
    ) -> Result<Tensor<3>, ModelError> {
        let x = self.hidden_cached(tokens, cache)?;
        Ok(self.logits_of(x))
    }

    /// Like [`Self::forward_cached`], but returns only the last position's logits
    /// `[batch, 1, vocab]`: what generation needs, without the output head's cost for every
    /// prompt token (a quarter of a 135M model's prefill FLOPs).
    pub fn forward_cached_last(
        &self,
        tokens: Tensor<2, Int>,
        cache: &mut KvCache,
    ) -> Result<Tensor<3>, ModelError> {
        let x = self.hidden_cached(tokens, cache)?;
        let t = x.dims()[1];
        Ok(self.logits_of(x.narrow(1, t - 1, 1)))
    }

    /// Runs `tokens` `[batch, seq]` through the blocks, appending their keys and values to
    /// `cache`, without the output head: a prompt or shared prefix that
    /// [`Self::forward_cached`] will continue.
    pub fn prefill(&self, tokens: Tensor<2, Int>, cache: &mut KvCache) -> Result<(), ModelError> {
        self.hidden_cached(tokens, cache).map(|_| ())
    }

    /// Hidden states after the last block for `tokens` continuing `cache`.
    fn hidden_cached(
        &self,
        tokens: Tensor<2, Int>,
        cache: &mut KvCache,
    ) -> Result<Tensor<3>, ModelError> {
        let [b, t] = tokens.dims();
        let offset = cache.len();
        self.check_len(offset + t)?;
        if cache.layers.len() != self.layers.len() {
            return Err(ModelError::InvalidInput(format!(
                "cache has {} layers, model has {}",
                cache.layers.len(),
                self.layers.len()
            )));
        }
        let device = tokens.device();
        // One new token may see every cached key: no mask to build, upload or apply.
        let mask = (t > 1).then(|| {
            causal_mask(t, offset, &device)
                .unsqueeze_dims::<4>(&[0, 1])
                .expand([b, 1, t, offset + t])
        });
        // A sliding layer cannot see keys `window` or more positions back.
        let windowed = self.window().filter(|&w| offset + t > w).map(|w| {
            let keys = offset + t;
            let win = window_mask(t, offset, w, &device)
                .unsqueeze_dims::<4>(&[0, 1])
                .expand([b, 1, t, keys]);
            match &mask {
                Some(m) => m.clone().bool_or(win),
                None => win,
            }
        });
        let positions = positions_from(offset, b, t, &device);
        let mut x = self.embed(tokens);
        for (l, (layer, lc)) in self.layers.iter().zip(cache.layers.iter_mut()).enumerate() {
            let m = match (&windowed, layer.sliding) {
                (Some(w), true) => Some(w.clone()),
                _ => mask.clone(),
            };
            x = layer.forward(x, self.rope_of(l), positions.clone(), m, Some(lc));
        }
        Ok(x)
    }

    /// A fresh cache for [`Self::forward_cached`].
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.layers.len())
    }

    /// Embeds token ids `[batch, seq]` into `[batch, seq, hidden]` (scaled where the family
    /// scales embeddings).
    pub fn embed(&self, tokens: Tensor<2, Int>) -> Tensor<3> {
        let [b, t] = tokens.dims();
        let d = self.config.hidden_size;
        let x = self
            .embedding
            .val()
            .select(0, tokens.reshape([b * t]))
            .reshape([b, t, d]);
        match self.config.variant.embedding_scale {
            Some(s) => x * s as f64,
            None => x,
        }
    }

    /// Logits from the last block's output: final norm, head, and the family's soft-cap.
    pub fn logits_of(&self, x: Tensor<3>) -> Tensor<3> {
        soft_cap(
            self.lm_head.forward(self.norm.forward(x)),
            self.config.variant.final_softcap,
        )
    }

    /// The RoPE tables block `layer` uses.
    pub fn rope_of(&self, layer: usize) -> &Rope {
        match (
            &self.rope_local,
            self.layers.get(layer).is_some_and(|l| l.sliding),
        ) {
            (Some(local), true) => local,
            _ => &self.rope,
        }
    }

    /// The sliding window, if any block has one.
    fn window(&self) -> Option<usize> {
        self.layers
            .iter()
            .any(|l| l.sliding)
            .then_some(self.config.variant.sliding_window)
            .flatten()
    }

    /// The attention mask of block `block` for full sequences: `causal` itself, or with keys
    /// beyond the sliding window blocked too.
    pub(crate) fn layer_mask(&self, block: usize, causal: Tensor<4, Bool>) -> Tensor<4, Bool> {
        match (self.window(), self.layers[block].sliding) {
            (Some(w), true) => {
                let [b, _, t, s] = causal.dims();
                let win = window_mask(t, s - t, w, &causal.device())
                    .unsqueeze_dims::<4>(&[0, 1])
                    .expand([b, 1, t, s]);
                causal.bool_or(win)
            }
            _ => causal,
        }
    }

    /// Refuses sequences past the context, and grows the RoPE tables to cover positions
    /// `0..len` (every entry point that runs tokens calls this first).
    pub(crate) fn check_len(&self, len: usize) -> Result<(), ModelError> {
        let max = self.rope.max_positions();
        if len > max {
            return Err(ModelError::ContextTooLong { len, max });
        }
        self.rope.ensure(len);
        if let Some(local) = &self.rope_local {
            local.ensure(len);
        }
        Ok(())
    }
}

/// Positions `0..t` and the causal mask `[b, 1, t, t]` of `b` unpadded sequences of `t` tokens.
pub(crate) fn full_sequence(
    b: usize,
    t: usize,
    device: &Device,
) -> (Tensor<2, Int>, Tensor<4, Bool>) {
    let mask = causal_mask(t, 0, device)
        .unsqueeze_dims::<4>(&[0, 1])
        .expand([b, 1, t, t]);
    (positions_from(0, b, t, device), mask)
}

/// `c·tanh(x/c)` (Gemma 2's soft-capping of attention scores and logits), or `x` without a cap.
pub(crate) fn soft_cap<const D: usize>(x: Tensor<D>, cap: Option<f32>) -> Tensor<D> {
    match cap {
        Some(c) => (x / c as f64).tanh() * c as f64,
        None => x,
    }
}

/// `[seq, offset + seq]`, true where query `i` (at position `offset + i`) must not see key `j`.
fn causal_mask(seq: usize, offset: usize, device: &Device) -> Tensor<2, Bool> {
    let keys = offset + seq;
    let data: Vec<bool> = (0..seq)
        .flat_map(|i| (0..keys).map(move |j| j > offset + i))
        .collect();
    Tensor::from_data(TensorData::new(data, [seq, keys]), device)
}

/// `[seq, offset + seq]`, true where query `i` (at position `offset + i`) is `window` or more
/// positions past key `j`: what a sliding-window layer may not see (transformers' and
/// llama.cpp's rule: a query sees itself and the `window − 1` keys before it).
fn window_mask(seq: usize, offset: usize, window: usize, device: &Device) -> Tensor<2, Bool> {
    let keys = offset + seq;
    let data: Vec<bool> = (0..seq)
        .flat_map(|i| (0..keys).map(move |j| offset + i >= j + window))
        .collect();
    Tensor::from_data(TensorData::new(data, [seq, keys]), device)
}

/// Positions `offset..offset + seq` for every row of a batch.
fn positions_from(offset: usize, batch: usize, seq: usize, device: &Device) -> Tensor<2, Int> {
    Tensor::<1, Int>::arange(offset as i64..(offset + seq) as i64, device)
        .unsqueeze_dim::<2>(0)
        .expand([batch, seq])
}

/// The error for a feed-forward unit block `block` does not have.
fn missing_mlp(block: usize, unit: Option<Expert>, ffn: &FeedForward) -> ModelError {
    let have = match ffn {
        FeedForward::Dense(_) => "a dense MLP".to_string(),
        FeedForward::Moe(m) => format!(
            "{} routed experts{}",
            m.experts.len(),
            if m.shared.is_some() {
                " and a shared one"
            } else {
                ""
            }
        ),
    };
    let asked = match unit {
        None => "a dense MLP".to_string(),
        Some(Expert::Routed(e)) => format!("routed expert {e}"),
        Some(Expert::Shared) => "a shared expert".to_string(),
    };
    ModelError::InvalidInput(format!("layers.{block}.mlp has {have}, not {asked}"))
}
