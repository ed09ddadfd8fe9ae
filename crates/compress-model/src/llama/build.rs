//! Building a [`LlamaModel`] from a [`WeightSource`], validating every tensor on the way.

use std::sync::Arc;

use burn::module::{Param, ParamId};
use burn::tensor::{Device, Shape, Tensor, TensorData};
use compress_core::linear::{CompressedLinear, DenseLinear};

use super::{
    Attention, AttentionPrecision, Block, FeedForward, LlamaModel, Mlp, Moe, RmsNorm, Rope,
};
use crate::config::{LayerAttention, LlamaConfig};
use crate::error::ModelError;
use crate::weights::{HostTensor, Proj, WeightName, WeightSource};

impl LlamaModel {
    /// Builds the model from `source` on `device`.
    ///
    /// Every tensor's shape is checked against the config and every value for NaN/Inf; errors name
    /// the tensor. Only one tensor is held in host memory at a time besides the device copies.
    pub fn from_source(source: &dyn WeightSource, device: &Device) -> Result<Self, ModelError> {
        Self::build(source, None, device)
    }

    /// Builds the model from a shared `source`, leaving the blocks' projection weights in it
    /// until a product first reads them ([`Param::uninitialized`]).
    ///
    /// Every tensor is read and validated here as in [`LlamaModel::from_source`] (shape, NaN/Inf),
    /// then dropped; the embedding, the head and the norms are kept. A block's weights are read
    /// again — the same bytes, so the same values — the first time the block runs, which lets the
    /// calibration pipeline hold only the blocks it has reached: the ones behind it are replaced by
    /// their compressed forms and the ones ahead are still in the file (for a GGUF, its memory
    /// map).
    pub fn from_shared_source(
        source: Arc<dyn WeightSource + Send + Sync>,
        device: &Device,
    ) -> Result<Self, ModelError> {
        Self::build(source.as_ref(), Some(&source), device)
    }

    fn build(
        source: &dyn WeightSource,
        lazy: Option<&Arc<dyn WeightSource + Send + Sync>>,
        device: &Device,
    ) -> Result<Self, ModelError> {
        let config = source.config().clone();
        config.validate().map_err(ModelError::InvalidConfig)?;
        let c = &config;
        let d = c.hidden_size;

        let loader = Loader { source, device };
        let emb_shape = [c.vocab_size, d];
        // Lazily loaded, the embedding (and a tied head, sharing its parameter) is read from the
        // file on first use, and can be dropped again (`LlamaModel::release_embedding`).
        let (embedding, embedding_source) = match lazy {
            Some(shared) => {
                drop(loader.host(WeightName::TokenEmbedding, &emb_shape)?);
                let source = EmbeddingSource::new(shared.clone(), emb_shape, device);
                (source.param_with_id(ParamId::new()), Some(source))
            }
            None => (
                Param::from_tensor(loader.required(WeightName::TokenEmbedding, &emb_shape)?),
                None,
            ),
        };
        let mut layers = Vec::with_capacity(c.num_layers);
        for l in 0..c.num_layers {
            // A projection's weight (read on first use when loading lazily), with its bias.
            let matrix = |name: WeightName| -> Result<CompressedLinear, ModelError> {
                let [out, inp] = matrix_shape(c, name);
                let weight = match lazy {
                    Some(shared) => {
                        drop(loader.host(name, &[out, inp])?);
                        lazy_weight(shared.clone(), name, [out, inp], device)
                    }
                    None => Param::from_tensor(loader.required(name, &[out, inp])?),
                };
                let bias = match name {
                    WeightName::Weight(_, p @ (Proj::Q | Proj::K | Proj::V))
                        if c.attention_bias =>
                    {
                        Some(loader.required(WeightName::Bias(l, p), &[out])?)
                    }
                    _ => None,
                };
                Ok(CompressedLinear::Dense(DenseLinear::from_param(
                    weight, bias,
                )))
            };
            let linear = |p: Proj| matrix(WeightName::Weight(l, p));
            let mlp_of = |name: &dyn Fn(Proj) -> WeightName| -> Result<Mlp, ModelError> {
                Ok(Mlp {
                    gate_proj: matrix(name(Proj::Gate))?,
                    up_proj: matrix(name(Proj::Up))?,
                    down_proj: matrix(name(Proj::Down))?,
                    activation: c.variant.activation,
                })
            };
            let mlp = match &c.variant.moe {
                Some(m) if m.is_moe_layer(l) => FeedForward::Moe(Moe {
                    router: matrix(WeightName::Router(l))?,
                    experts: (0..m.num_experts as u32)
                        .map(|e| mlp_of(&|p| WeightName::Expert(l, e, p)))
                        .collect::<Result<_, _>>()?,
                    shared: m
                        .shared_expert_intermediate_size
                        .map(|_| mlp_of(&|p| WeightName::SharedExpert(l, p)))
                        .transpose()?,
                    shared_gate: m
                        .shared_expert_intermediate_size
                        .map(|_| matrix(WeightName::SharedGate(l)))
                        .transpose()?,
                    top_k: m.experts_per_token,
                    normalize: m.normalize_weights,
                }),
                _ => FeedForward::Dense(mlp_of(&|p| WeightName::Weight(l, p))?),
            };
            let norm = |name: WeightName, width: usize| -> Result<RmsNorm, ModelError> {
                Ok(RmsNorm::new(
                    loader.required(name, &[width])?,
                    c.rms_norm_eps,
                ))
            };
            let v = &c.variant;
            let optional_norm = |on: bool, name: WeightName, width: usize| {
                on.then(|| norm(name, width)).transpose()
            };
            layers.push(Block {
                attn_norm: norm(WeightName::AttnNorm(l), d)?,
                attn: Attention {
                    q_proj: linear(Proj::Q)?,
                    k_proj: linear(Proj::K)?,
                    v_proj: linear(Proj::V)?,
                    o_proj: linear(Proj::O)?,
                    q_norm: optional_norm(v.qk_norm, WeightName::QNorm(l), c.head_dim)?,
                    k_norm: optional_norm(v.qk_norm, WeightName::KNorm(l), c.head_dim)?,
                    scale: attention_scale(c),
                    softcap: v.attn_softcap,
                    num_heads: c.num_heads,
                    num_kv_heads: c.num_kv_heads,
                    head_dim: c.head_dim,
                    precision: AttentionPrecision::default(),
                },
                post_attn_norm: optional_norm(v.sandwich_norms, WeightName::PostAttnNorm(l), d)?,
                ffn_norm: norm(WeightName::FfnNorm(l), d)?,
                mlp,
                post_ffn_norm: optional_norm(v.sandwich_norms, WeightName::PostFfnNorm(l), d)?,
                sliding: v.attention_of(l) == LayerAttention::Sliding,
            });
        }
        let norm = RmsNorm::new(
            loader.required(WeightName::OutputNorm, &[d])?,
            c.rms_norm_eps,
        );
        let head = if c.tie_word_embeddings {
            embedding.clone()
        } else {
            match lazy {
                Some(shared) => {
                    drop(loader.host(WeightName::Output, &emb_shape)?);
                    lazy_weight(shared.clone(), WeightName::Output, emb_shape, device)
                }
                None => Param::from_tensor(loader.required(WeightName::Output, &emb_shape)?),
            }
        };
        let (rope, rope_local) = ropes(c, device);
        Ok(LlamaModel {
            embedding,
            layers,
            norm,
            lm_head: CompressedLinear::Dense(DenseLinear::from_param(head, None)),
            rope,
            rope_local,
            config,
            mlp_folds: 0,
            embedding_source,
        })
    }
}

/// The `[out, in]` shape `c` implies for the matrix `name`.
///
/// # Panics
/// For a name that is not a matrix (norms, biases, the embedding): a bug of the caller.
pub(crate) fn matrix_shape(c: &LlamaConfig, name: WeightName) -> [usize; 2] {
    let d = c.hidden_size;
    let (q, kv) = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
    let moe = c.variant.moe.as_ref();
    let mlp = |p: Proj, f: usize| match p {
        Proj::Down => [d, f],
        _ => [f, d],
    };
    match name {
        WeightName::Weight(_, Proj::Q) => [q, d],
        WeightName::Weight(_, Proj::K | Proj::V) => [kv, d],
        WeightName::Weight(_, Proj::O) => [d, q],
        WeightName::Weight(_, p) => mlp(p, c.intermediate_size),
        WeightName::Router(_) => [moe.map_or(0, |m| m.num_experts), d],
        WeightName::Expert(_, _, p) => mlp(p, moe.map_or(0, |m| m.expert_intermediate_size)),
        WeightName::SharedExpert(_, p) => mlp(
            p,
            moe.and_then(|m| m.shared_expert_intermediate_size)
                .unwrap_or(0),
        ),
        WeightName::SharedGate(_) => [1, d],
        WeightName::TokenEmbedding | WeightName::Output => [c.vocab_size, d],
        other => panic!("{other} is not a matrix"),
    }
}

/// The score scale of `c`'s attention: the family's, or `1/√head_dim`.
pub(crate) fn attention_scale(c: &LlamaConfig) -> f32 {
    c.variant
        .attention_scale
        .unwrap_or_else(|| (1.0 / (c.head_dim as f64).sqrt()) as f32)
}

/// The global RoPE tables of `c` and, where sliding layers have a base of their own, theirs.
pub(crate) fn ropes(c: &LlamaConfig, device: &Device) -> (Rope, Option<Rope>) {
    let rotary = c.rotary_dims();
    let global = Rope::with_scaling(
        c.head_dim,
        rotary,
        c.max_seq_len,
        c.rope_theta,
        c.variant.rope_scaling.as_ref(),
        c.rope_layout,
        device,
    );
    let local = c.variant.local_rope_theta.map(|theta| {
        Rope::with_scaling(
            c.head_dim,
            rotary,
            c.max_seq_len,
            theta,
            None,
            c.rope_layout,
            device,
        )
    });
    (global, local)
}

struct Loader<'a> {
    source: &'a dyn WeightSource,
    device: &'a Device,
}

impl Loader<'_> {
    /// Reads `name`, checks its shape and values, and moves it to the device.
    fn required<const D: usize>(
        &self,
        name: WeightName,
        shape: &[usize; D],
    ) -> Result<Tensor<D>, ModelError> {
        let t = self.host(name, shape)?;
        Ok(Tensor::from_data(
            TensorData::new(t.data, *shape),
            self.device,
        ))
    }

    /// Reads `name` into host memory and checks its shape and values.
    fn host<const D: usize>(
        &self,
        name: WeightName,
        shape: &[usize; D],
    ) -> Result<HostTensor, ModelError> {
        let t: HostTensor = self
            .source
            .tensor(name)?
            .ok_or_else(|| ModelError::MissingTensor(self.source.file_name(name)))?;
        if t.shape != shape.as_slice() {
            return Err(ModelError::ShapeMismatch {
                tensor: self.source.file_name(name),
                expected: shape.to_vec(),
                found: t.shape,
            });
        }
        t.check_finite(&self.source.file_name(name))?;
        Ok(t)
    }
}

/// A weight parameter that reads `name` from `source` on first use.
///
/// The tensor was read and validated when the model was built; reading it again can only fail if
/// the file changed underneath the model (a memory-mapped GGUF rewritten in place), which the
/// initializer reports with a panic naming the tensor — a parameter's initializer cannot return
/// an error.
fn lazy_weight(
    source: Arc<dyn WeightSource + Send + Sync>,
    name: WeightName,
    shape: [usize; 2],
    device: &Device,
) -> Param<Tensor<2>> {
    lazy_param(ParamId::new(), source, name, shape, device)
}

/// [`lazy_weight`] with a given parameter id.
fn lazy_param(
    id: ParamId,
    source: Arc<dyn WeightSource + Send + Sync>,
    name: WeightName,
    shape: [usize; 2],
    device: &Device,
) -> Param<Tensor<2>> {
    Param::uninitialized(
        id,
        move |device, _require_grad| {
            let file_name = source.file_name(name);
            let t = match source.tensor(name) {
                Ok(Some(t)) if t.shape == shape && t.check_finite(&file_name).is_ok() => t,
                Ok(Some(_)) | Ok(None) => panic!(
                    "`{file_name}` changed in its file after the model was loaded (it was a \
                     finite {shape:?} tensor then)"
                ),
                Err(e) => panic!("could not read `{file_name}` again from its file: {e}"),
            };
            Tensor::from_data(TensorData::new(t.data, shape), device)
        },
        device.clone(),
        false,
        Shape::new(shape),
    )
}

/// How a lazily loaded model reads its token embedding again: a fresh lazy parameter over the
/// same file, so a resident copy can be dropped (`LlamaModel::release_embedding`).
#[derive(Clone)]
pub(crate) struct EmbeddingSource {
    source: Arc<dyn WeightSource + Send + Sync>,
    shape: [usize; 2],
    device: Device,
}

impl EmbeddingSource {
    fn new(
        source: Arc<dyn WeightSource + Send + Sync>,
        shape: [usize; 2],
        device: &Device,
    ) -> Self {
        Self {
            source,
            shape,
            device: device.clone(),
        }
    }

    /// A new parameter with id `id` that reads the embedding from the file on first use.
    pub(crate) fn param_with_id(&self, id: ParamId) -> Param<Tensor<2>> {
        lazy_param(
            id,
            self.source.clone(),
            WeightName::TokenEmbedding,
            self.shape,
            &self.device,
        )
    }
}

impl std::fmt::Debug for EmbeddingSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddingSource")
            .field("tensor", &self.source.file_name(WeightName::TokenEmbedding))
            .field("shape", &self.shape)
            .finish()
    }
}

/// Builds a model from a config with every weight drawn from `N(0, 0.02²)` and norms set to 1.
///
/// For unit tests of pure maths only (invariances, cache consistency): every quality or parity
/// test in this project runs on real weights.
pub fn random_model(
    config: &LlamaConfig,
    seed: u64,
    device: &Device,
) -> Result<LlamaModel, ModelError> {
    struct Random<'a> {
        config: &'a LlamaConfig,
        seed: u64,
    }
    impl WeightSource for Random<'_> {
        fn config(&self) -> &LlamaConfig {
            self.config
        }
        fn tensor(&self, name: WeightName) -> Result<Option<HostTensor>, ModelError> {
            let c = self.config;
            let (d, q, kv) = (
                c.hidden_size,
                c.num_heads * c.head_dim,
                c.num_kv_heads * c.head_dim,
            );
            let shape = match name {
                WeightName::TokenEmbedding | WeightName::Output => vec![c.vocab_size, d],
                WeightName::QNorm(_) | WeightName::KNorm(_) => {
                    return Ok(Some(HostTensor {
                        shape: vec![c.head_dim],
                        data: vec![1.0; c.head_dim],
                    }))
                }
                WeightName::OutputNorm
                | WeightName::AttnNorm(_)
                | WeightName::FfnNorm(_)
                | WeightName::PostAttnNorm(_)
                | WeightName::PostFfnNorm(_) => {
                    return Ok(Some(HostTensor {
                        shape: vec![d],
                        data: vec![1.0; d],
                    }))
                }
                WeightName::Bias(_, p) => vec![if p == Proj::Q { q } else { kv }],
                matrix => matrix_shape(c, matrix).to_vec(),
            };
            let n: usize = shape.iter().product();
            // A per-tensor stream from a splitmix64 hash of (seed, name): deterministic and
            // independent of the order tensors are read in.
            let mut state = self.seed ^ hash_name(&name.to_string());
            let data = (0..n).map(|_| 0.02 * approx_normal(&mut state)).collect();
            Ok(Some(HostTensor { shape, data }))
        }
    }
    LlamaModel::from_source(&Random { config, seed }, device)
}

fn hash_name(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Sum of 12 uniforms minus 6: mean 0, variance 1 (Irwin–Hall), good enough for test weights.
fn approx_normal(state: &mut u64) -> f32 {
    let s: f64 = (0..12)
        .map(|_| (splitmix(state) >> 11) as f64 / (1u64 << 53) as f64)
        .sum();
    (s - 6.0) as f32
}
