//! The calibration pipeline's traits ([`BlockWalk`], [`Linears`], [`ScaleFolds`]) for
//! [`LlamaModel`]: what it needs to compress a decoder of any supported family block by block.
//!
//! A block's linears form four stages, in the order the forward pass reaches them (the
//! "true-sequential" order of the GPTQ reference): `attn_in` (q/k/v, reading the normed block
//! input), `attn_out` (o, reading the attention context), `mlp_in` (gate/up, reading the normed
//! residual after attention) and `mlp_down` (down, reading `silu(gate) ⊙ up`). Calibration
//! sequences are full windows, so inputs use a plain causal mask and positions from 0.
//!
//! The per-batch [`BlockCache`] keeps the block input, the attention context and the residual
//! after attention, each computed once and only after the layers it depends on were replaced.
//! With [`ActivationPolicy::keep_intermediates`] it also keeps `down_proj`'s input
//! (`silu(gate) ⊙ up`, `[tokens, intermediate]`) from the `mlp_down` stage for the block's output,
//! so a whole block walk costs one forward pass; without it the gate/up products run a second
//! time in [`BlockWalk::finish_block`] and that memory is not held. With bf16 activation
//! storage ([`ActivationPolicy::storage`], CPU flex backend only) the cached
//! tensors and the block outputs are kept in bf16 and widened to f32 for each computation.

use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use compress_core::backend::{to_bf16_storage, to_f32};
use compress_core::kernels::dense::DensePrecision;
use compress_core::layer_id::{LinearId, LinearKind};
use compress_core::linear::CompressedLinear;
use compress_core::pipeline::{ActivationPolicy, BlockWalk, Linears, ScaleFolds, StageSpec};
use compress_core::scaling::scale_output_rows;

use super::{full_sequence, Block, LlamaModel};

/// Intermediate results of one block for one calibration batch (see [`BlockWalk`]).
#[derive(Debug)]
pub struct BlockCache {
    policy: ActivationPolicy,
    /// Whether bf16 storage applies (the policy asks for it and the device can convert).
    bf16: bool,
    x: Option<Tensor<3>>,
    context: Option<Tensor<3>>,
    residual: Option<Tensor<3>>,
    /// `down_proj`'s input with the count of folds into `up_proj` it was computed under
    /// (`LlamaModel::mlp_folds`): a later fold makes it stale.
    gated: Option<(Tensor<3>, usize)>,
}

impl BlockCache {
    /// `x` as the walk stores it (bf16 or f32, see [`ActivationPolicy::storage`]).
    fn keep(&self, x: Tensor<3>) -> Tensor<3> {
        if self.bf16 {
            to_bf16_storage(x)
        } else {
            x
        }
    }
}

impl LlamaModel {
    /// Whether activations can be stored as `policy` asks: bf16 storage uses the flex backend's
    /// host conversion; other devices keep f32.
    fn stores_bf16(&self, policy: &ActivationPolicy) -> bool {
        policy.storage == DensePrecision::Bf16 && LlamaModel::device(self) == Device::flex()
    }

    fn full_sequence(&self, x: &Tensor<3>) -> (Tensor<2, Int>, Tensor<4, Bool>) {
        let [b, t, _] = x.dims();
        full_sequence(b, t, &x.device())
    }

    /// The normed block input; not cached (a norm is cheap), so a gain rescaled by
    /// `fold_input_scales` is always applied.
    fn normed(&self, layer: &Block, c: &BlockCache) -> Tensor<3> {
        let x = c.x.clone();
        layer.attn_norm.forward(to_f32(
            x.expect("block input is kept until the residual exists"),
        ))
    }

    fn cached_context(&self, block: usize, c: &mut BlockCache) -> Tensor<3> {
        let layer = &self.layers[block];
        if c.context.is_none() {
            let normed = self.normed(layer, c);
            let (pos, mask) = self.full_sequence(&normed);
            let mask = self.layer_mask(block, mask);
            let ctx = layer
                .attn
                .context(normed, self.rope_of(block), pos, Some(mask), None);
            c.context = Some(c.keep(ctx));
        }
        to_f32(c.context.clone().unwrap())
    }

    fn cached_residual(&self, block: usize, c: &mut BlockCache) -> Tensor<3> {
        if c.residual.is_none() {
            let context = self.cached_context(block, c);
            let layer = &self.layers[block];
            let x =
                c.x.take()
                    .expect("block input is kept until the residual exists");
            c.context = None;
            let attn = layer.attn.o_proj.forward(context);
            c.residual = Some(c.keep(layer.attn_residual(to_f32(x), attn)));
        }
        to_f32(c.residual.clone().unwrap())
    }
}

impl BlockWalk for LlamaModel {
    type Cache = BlockCache;

    fn num_blocks(&self) -> usize {
        LlamaModel::num_blocks(self)
    }

    fn stages(&self, block: usize) -> Vec<StageSpec> {
        let id = |k| LinearId::block(block, k);
        vec![
            StageSpec::new(
                "attn_in",
                vec![id(LinearKind::Q), id(LinearKind::K), id(LinearKind::V)],
            ),
            StageSpec::new("attn_out", vec![id(LinearKind::O)]),
            StageSpec::new("mlp_in", vec![id(LinearKind::Gate), id(LinearKind::Up)]),
            StageSpec::new("mlp_down", vec![id(LinearKind::Down)]),
        ]
    }

    fn device(&self) -> Device {
        LlamaModel::device(self)
    }

    /// Stored like the block outputs (bf16 under bf16 activation storage), so the embedded
    /// calibration set is never held in f32.
    fn embed_tokens(&self, tokens: Tensor<2, Int>, policy: &ActivationPolicy) -> Tensor<3> {
        let x = self.embed(tokens);
        if self.stores_bf16(policy) {
            to_bf16_storage(x)
        } else {
            x
        }
    }

    fn begin_block(&self, _block: usize, x: Tensor<3>, policy: &ActivationPolicy) -> BlockCache {
        let mut c = BlockCache {
            policy: *policy,
            bf16: self.stores_bf16(policy),
            x: None,
            context: None,
            residual: None,
            gated: None,
        };
        c.x = Some(c.keep(x));
        c
    }

    fn stage_input(&self, block: usize, stage: usize, c: &mut BlockCache) -> Tensor<3> {
        let layer = &self.layers[block];
        match stage {
            0 => self.normed(layer, c),
            1 => self.cached_context(block, c),
            2 => layer.ffn_norm.forward(self.cached_residual(block, c)),
            3 => {
                let h = self.cached_residual(block, c);
                let gated = layer.mlp.gated(layer.ffn_norm.forward(h));
                if c.policy.keep_intermediates {
                    c.gated = Some((c.keep(gated.clone()), self.mlp_folds));
                }
                gated
            }
            _ => panic!("a decoder block has 4 stages, asked for stage {stage}"),
        }
    }

    fn finish_block(&self, block: usize, mut c: BlockCache) -> Tensor<3> {
        let h = self.cached_residual(block, &mut c);
        let layer = &self.layers[block];
        let mlp = match c.gated.take() {
            // Computed with the same gate/up weights (no fold since), so equal to recomputing it.
            Some((gated, folds)) if folds == self.mlp_folds => {
                layer.mlp.down_proj.forward(to_f32(gated))
            }
            _ => layer.mlp.forward(layer.ffn_norm.forward(h.clone())),
        };
        c.keep(layer.mlp_residual(h, mlp))
    }

    fn release_embedding(&mut self) {
        LlamaModel::release_embedding(self);
    }

    fn head_logits(&self, x: Tensor<3>) -> Tensor<3> {
        self.logits_of(to_f32(x))
    }

    fn head_input(&self, x: Tensor<3>) -> Tensor<3> {
        self.norm.forward(to_f32(x))
    }
}

impl Linears for LlamaModel {
    fn linear(&self, id: LinearId) -> Option<&CompressedLinear> {
        LlamaModel::linear(self, id)
    }

    fn linear_mut(&mut self, id: LinearId) -> Option<&mut CompressedLinear> {
        LlamaModel::linear_mut(self, id)
    }
}

impl ScaleFolds for LlamaModel {
    /// Folds into the norm gains (stages 0 and 2) and the rows of `up_proj` (stage 3). Stage 1
    /// (`o_proj`, fed by the attention context) is not folded: with grouped-query attention a
    /// value head serves several query heads, so its rows cannot carry per-context-channel
    /// scales.
    fn fold_input_scales(&mut self, block: usize, stage: usize, scales: &[f32]) -> bool {
        let device = LlamaModel::device(self);
        let inv = Tensor::<1>::from_data(
            TensorData::new(
                scales.iter().map(|v| 1.0 / v).collect::<Vec<f32>>(),
                [scales.len()],
            ),
            &device,
        );
        let layer = &mut self.layers[block];
        let norm = match stage {
            0 => &mut layer.attn_norm,
            2 => &mut layer.ffn_norm,
            3 => {
                self.mlp_folds += 1;
                return scale_output_rows(&mut layer.mlp.up_proj, scales);
            }
            _ => return false,
        };
        norm.weight = norm.weight.clone().map(|g| g * inv);
        true
    }
}
