//! Grouped-query causal self-attention (Ainslie et al. 2023, arXiv:2305.13245).
//!
//! `num_heads` query heads share `num_kv_heads` key/value heads, each serving a contiguous group
//! of `num_heads / num_kv_heads` query heads (llama.cpp and HF use the same grouping).

use burn::module::Module;
use burn::tensor::activation::softmax;
use burn::tensor::{Bool, FloatDType, Int, Tensor, TensorData};
use compress_core::backend::{runs_cpu_kernels, with_host_f32};
use compress_core::kernels;
use compress_core::linear::CompressedLinear;

use super::cache::LayerCache;
use super::norm::RmsNorm;
use super::rope::Rope;

/// Value written into blocked attention scores before the softmax. Finite (not −∞) so that a row
/// with every key blocked — a padding query — gives a uniform, NaN-free distribution whose output
/// is ignored anyway.
const MASKED: f32 = -1.0e30;

/// Numeric precision of the attention products.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AttentionPrecision {
    /// Queries, keys, values and attention weights in f32 (the default).
    #[default]
    F32,
    /// llama.cpp's default on CPU: keys and values are rounded to f16 as they enter the KV cache,
    /// and the query and the attention weights are rounded to f16 before the two products (ggml
    /// converts the f32 operand of a mat-mul with an f16 matrix to f16). Products and sums stay
    /// f32. Use it to compare with llama.cpp's output; the cache still stores f32 tensors.
    F16KvCache,
}

/// The attention mask `[batch, 1, queries, keys]` (`len` values) as host booleans, for the
/// fused CPU kernels: `Some(None)` without a mask, `None` if it cannot be read back.
fn host_mask(mask: Option<&Tensor<4, Bool>>, len: usize) -> Option<Option<Vec<bool>>> {
    match mask {
        Some(m) => m
            .clone()
            .reshape([len])
            .into_data()
            .try_into_vec::<bool>()
            .ok()
            .map(Some),
        None => Some(None),
    }
}

/// Rounds every element to the nearest f16 value (ties to even), keeping the f32 dtype.
fn round_to_f16(x: Tensor<4>) -> Tensor<4> {
    x.cast(FloatDType::F16).cast(FloatDType::F32)
}

/// The attention sub-layer of a decoder block.
#[derive(Module, Debug)]
pub struct Attention {
    /// Query projection, `[num_heads · head_dim, hidden]`.
    pub q_proj: CompressedLinear,
    /// Key projection, `[num_kv_heads · head_dim, hidden]`.
    pub k_proj: CompressedLinear,
    /// Value projection, `[num_kv_heads · head_dim, hidden]`.
    pub v_proj: CompressedLinear,
    /// Output projection, `[hidden, num_heads · head_dim]`.
    pub o_proj: CompressedLinear,
    /// RMSNorm over each query head before RoPE (Qwen3, Gemma 3), gain `[head_dim]`.
    pub q_norm: Option<RmsNorm>,
    /// RMSNorm over each key head before RoPE, gain `[head_dim]`.
    pub k_norm: Option<RmsNorm>,
    /// Score scale (`1/√head_dim` unless the family says otherwise).
    #[module(skip)]
    pub(crate) scale: f32,
    /// Scores soft-capped as `c·tanh(s/c)` before masking and softmax (Gemma 2).
    #[module(skip)]
    pub(crate) softcap: Option<f32>,
    #[module(skip)]
    pub(crate) num_heads: usize,
    #[module(skip)]
    pub(crate) num_kv_heads: usize,
    #[module(skip)]
    pub(crate) head_dim: usize,
    #[module(skip)]
    pub(crate) precision: AttentionPrecision,
}

impl Attention {
    /// Attention of `x: [batch, seq, hidden]` whose tokens sit at `positions: [batch, seq]`.
    ///
    /// `mask: [batch, 1, seq, keys]` is true where a query must not see a key (causality and
    /// padding); `None` when every query may see every key (a single new token after a cache). With a `cache`, the new keys/values are appended to it and attention runs over
    /// every cached key (`keys = cached + seq`).
    pub fn forward(
        &self,
        x: Tensor<3>,
        rope: &Rope,
        positions: Tensor<2, Int>,
        mask: Option<Tensor<4, Bool>>,
        cache: Option<&mut LayerCache>,
    ) -> Tensor<3> {
        self.o_proj
            .forward(self.context(x, rope, positions, mask, cache))
    }

    /// The attention output before the output projection, `[batch, seq, heads · head_dim]`
    /// (the input of `o_proj`, which calibration captures).
    pub fn context(
        &self,
        x: Tensor<3>,
        rope: &Rope,
        positions: Tensor<2, Int>,
        mask: Option<Tensor<4, Bool>>,
        cache: Option<&mut LayerCache>,
    ) -> Tensor<3> {
        let [b, t, _] = x.dims();
        if cache.is_none() {
            if let Some(out) = self.fused_projections(&x, rope, &positions, mask.as_ref()) {
                return out;
            }
        }
        let (q, k, v) = self.qkv(x, rope, positions, cache);
        if let Some(out) = self.fused(&q, &k, &v, mask.as_ref()) {
            return out;
        }
        let (probs, v) = self.probs(q, k, v, mask);
        probs
            .matmul(v)
            .swap_dims(1, 2)
            .reshape([b, t, self.num_heads * self.head_dim])
    }

    /// The context without a cache on the CPU backends, with no tensor operation between the
    /// projections and the output: the projections' `[batch, seq, heads · head_dim]` outputs are
    /// rotated on the host (compress-kernels' `rope`) and attended to where they lie (the fused
    /// attention's token-major layout), so no `[batch, heads, seq, head_dim]` copy is made.
    /// Same conditions and numerics as [`Self::fused`]; `None` where it does not apply.
    fn fused_projections(
        &self,
        x: &Tensor<3>,
        rope: &Rope,
        positions: &Tensor<2, Int>,
        mask: Option<&Tensor<4, Bool>>,
    ) -> Option<Tensor<3>> {
        let device = x.device();
        if !self.fuses(&device) {
            return None;
        }
        let [b, t, _] = x.dims();
        let (h, kvh, hd) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let pos: Vec<usize> = positions
            .clone()
            .reshape([b * t])
            .into_data()
            .convert::<i64>()
            .try_into_vec::<i64>()
            .ok()?
            .into_iter()
            .map(|p| usize::try_from(p).ok())
            .collect::<Option<_>>()?;
        let blocked = host_mask(mask, b * t * t)?;
        let rotated = |proj: &CompressedLinear, norm: Option<&RmsNorm>, heads: usize| {
            let mut y = proj.forward(x.clone());
            if let Some(norm) = norm {
                y = norm
                    .forward(y.reshape([b, t, heads, hd]))
                    .reshape([b, t, heads * hd]);
            }
            let mut out = vec![0f32; b * t * heads * hd];
            with_host_f32(&y, |ys| rope.apply_host(ys, &mut out, heads, &pos).ok())??;
            Some(out)
        };
        let q = rotated(&self.q_proj, self.q_norm.as_ref(), h)?;
        let k = rotated(&self.k_proj, self.k_norm.as_ref(), kvh)?;
        let v = self.v_proj.forward(x.clone());
        let shape = kernels::attention::AttentionShape {
            batch: b,
            heads: h,
            kv_heads: kvh,
            queries: t,
            keys: t,
            head_dim: hd,
        };
        let mut out = vec![0f32; b * t * h * hd];
        let scale = self.scale;
        with_host_f32(&v, |vs| {
            kernels::attention::attention_in(
                &shape,
                kernels::attention::QkvLayout::TokenMajor,
                &q,
                &k,
                vs,
                blocked.as_deref(),
                scale,
                &mut out,
            )
            .ok()
        })??;
        Some(Tensor::from_data(
            TensorData::new(out, [b, t, h * hd]),
            &device,
        ))
    }

    /// The context through compress-kernels' fused CPU attention (no score tensor; blocked keys
    /// skipped), when it applies: f32 attention numerics on a CPU backend without autodiff
    /// (the kernel would cut the gradient graph). `None` otherwise, or should the kernel refuse
    /// the shapes (it cannot: they come from the model), and the unfused path runs.
    fn fused(
        &self,
        q: &Tensor<4>,
        k: &Tensor<4>,
        v: &Tensor<4>,
        mask: Option<&Tensor<4, Bool>>,
    ) -> Option<Tensor<3>> {
        let device = q.device();
        if !self.fuses(&device) {
            return None;
        }
        let [b, h, t, hd] = q.dims();
        let [_, kvh, s, _] = k.dims();
        let blocked = host_mask(mask, b * t * s)?;
        let shape = kernels::attention::AttentionShape {
            batch: b,
            heads: h,
            kv_heads: kvh,
            queries: t,
            keys: s,
            head_dim: hd,
        };
        let mut out = vec![0f32; b * t * h * hd];
        let scale = self.scale;
        with_host_f32(q, |qs| {
            with_host_f32(k, |ks| {
                with_host_f32(v, |vs| {
                    kernels::attention::attention(
                        &shape,
                        qs,
                        ks,
                        vs,
                        blocked.as_deref(),
                        scale,
                        &mut out,
                    )
                    .ok()
                })
            })
        })????;
        Some(Tensor::from_data(
            TensorData::new(out, [b, t, h * hd]),
            &device,
        ))
    }

    /// Whether the fused CPU kernels serve this layer on `device`: f32 numerics, a CPU backend,
    /// no soft-capping (the kernel has none).
    fn fuses(&self, device: &burn::tensor::Device) -> bool {
        self.precision == AttentionPrecision::F32
            && self.softcap.is_none()
            && runs_cpu_kernels(device)
    }

    /// Mean entropy (nats) of each query head's attention distribution over the queries of
    /// `x` (`[heads]`): near 0 for a head that looks at one token, `ln(keys)` for one that
    /// averages everything. Pruned positions contribute `0 · ln 0 = 0`.
    pub fn head_entropy(
        &self,
        x: Tensor<3>,
        rope: &Rope,
        positions: Tensor<2, Int>,
        mask: Option<Tensor<4, Bool>>,
    ) -> Tensor<1> {
        let (q, k, v) = self.qkv(x, rope, positions, None);
        let (p, _) = self.probs(q, k, v, mask);
        let [b, h, t, _] = p.dims();
        let ent = (p.clone() * p.clamp_min(1e-30).log()).sum_dim(3).neg();
        ent.swap_dims(0, 1)
            .reshape([h, b * t])
            .mean_dim(1)
            .reshape([h])
    }

    /// Rotated queries `[batch, heads, seq, head_dim]` and the keys and values of every position
    /// (cached ones first) `[batch, kv_heads, keys, head_dim]`, rounded as [`Self::precision`]
    /// says; the new keys and values are appended to `cache`.
    fn qkv(
        &self,
        x: Tensor<3>,
        rope: &Rope,
        positions: Tensor<2, Int>,
        cache: Option<&mut LayerCache>,
    ) -> (Tensor<4>, Tensor<4>, Tensor<4>) {
        let [b, t, _] = x.dims();
        let (h, kvh, hd) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let split = |y: Tensor<3>, heads: usize| y.reshape([b, t, heads, hd]).swap_dims(1, 2);

        let normed = |y: Tensor<4>, norm: &Option<RmsNorm>| match norm {
            Some(n) => n.forward(y),
            None => y,
        };
        let q = split(self.q_proj.forward(x.clone()), h);
        let k = split(self.k_proj.forward(x.clone()), kvh);
        let q = rope.apply(normed(q, &self.q_norm), positions.clone());
        let k = rope.apply(normed(k, &self.k_norm), positions);
        let v = split(self.v_proj.forward(x), kvh);
        let (q, k, v) = match self.precision {
            AttentionPrecision::F32 => (q, k, v),
            AttentionPrecision::F16KvCache => (round_to_f16(q), round_to_f16(k), round_to_f16(v)),
        };
        let (k, v) = match cache {
            Some(cache) => cache.append(k, v),
            None => (k, v),
        };
        (q, k, v)
    }

    /// Attention probabilities `[batch, heads, seq, keys]` and the (repeated) values
    /// `[batch, heads, keys, head_dim]` of [`Self::qkv`]'s output (the unfused form).
    fn probs(
        &self,
        q: Tensor<4>,
        k: Tensor<4>,
        v: Tensor<4>,
        mask: Option<Tensor<4, Bool>>,
    ) -> (Tensor<4>, Tensor<4>) {
        let (h, kvh) = (self.num_heads, self.num_kv_heads);
        let group = h / kvh;
        let k = repeat_kv(k, group);
        let v = repeat_kv(v, group);
        let scores = q.matmul(k.swap_dims(2, 3)) * self.scale as f64;
        let scores = super::soft_cap(scores, self.softcap);
        let scores = match mask {
            Some(mask) => scores.mask_fill(mask, MASKED),
            None => scores,
        };
        let probs = match self.precision {
            AttentionPrecision::F32 => softmax(scores, 3),
            AttentionPrecision::F16KvCache => round_to_f16(softmax(scores, 3)),
        };
        (probs, v)
    }
}

/// `[b, kv_heads, t, d]` → `[b, kv_heads · group, t, d]`, each kv head repeated for its group.
fn repeat_kv(x: Tensor<4>, group: usize) -> Tensor<4> {
    if group == 1 {
        return x;
    }
    let [b, kvh, t, d] = x.dims();
    x.unsqueeze_dim::<5>(2)
        .expand([b, kvh, group, t, d])
        .reshape([b, kvh * group, t, d])
}
