//! [`BlockwiseModel`] for [`LlamaModel`]: what the calibration pipeline needs to compress a
//! llama-family model block by block.
//!
//! A block's linears form four stages, in the order the forward pass reaches them (the
//! "true-sequential" order of the GPTQ reference): `attn_in` (q/k/v, reading the normed block
//! input), `attn_out` (o, reading the attention context), `mlp_in` (gate/up, reading the normed
//! residual after attention) and `mlp_down` (down, reading `silu(gate) ⊙ up`). Calibration
//! sequences are full windows, so inputs use a plain causal mask and positions from 0.
//!
//! The per-batch [`BlockCache`] keeps the block input, the attention context and the residual
//! after attention, each computed once and only after the layers it depends on were replaced.
//! With [`BlockwiseModel::set_keep_intermediates`] it also keeps `down_proj`'s input
//! (`silu(gate) ⊙ up`, `[tokens, intermediate]`) from the `mlp_down` stage for the block's output,
//! so a whole block walk costs one forward pass; without it the gate/up products run a second
//! time in [`BlockwiseModel::finish_block`] and that memory is not held. With bf16 activation
//! storage ([`BlockwiseModel::set_activation_precision`], CPU flex backend only) the cached
//! tensors and the block outputs are kept in bf16 and widened to f32 for each computation.

use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use compress_core::backend::{to_bf16_storage, to_f32};
use compress_core::kernels::dense::DensePrecision;
use compress_core::linear::CompressedLinear;
use compress_core::pipeline::{BlockwiseModel, StageSpec};
use compress_core::scaling::scale_output_rows;

use super::{full_sequence, Block, LlamaModel};

/// Names of a block's linears, as used in layer paths `layers.{i}.{name}`.
pub const LINEAR_NAMES: [&str; 7] = [
    "attn.q_proj",
    "attn.k_proj",
    "attn.v_proj",
    "attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
];

/// Intermediate results of one llama block for one calibration batch (see [`BlockwiseModel`]).
#[derive(Debug)]
pub struct BlockCache {
    x: Option<Tensor<3>>,
    context: Option<Tensor<3>>,
    residual: Option<Tensor<3>>,
    /// `down_proj`'s input with the count of folds into `up_proj` it was computed under
    /// (`LlamaModel::mlp_folds`): a later fold makes it stale.
    gated: Option<(Tensor<3>, usize)>,
}

impl LlamaModel {
    /// `x` as the calibration walk stores it (bf16 or f32, see `activations`).
    fn keep(&self, x: Tensor<3>) -> Tensor<3> {
        match self.activations {
            DensePrecision::Bf16 => to_bf16_storage(x),
            DensePrecision::F32 => x,
        }
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

    fn cached_context(&self, layer: &Block, c: &mut BlockCache) -> Tensor<3> {
        if c.context.is_none() {
            let normed = self.normed(layer, c);
            let (pos, mask) = self.full_sequence(&normed);
            let ctx = layer
                .attn
                .context(normed, &self.rope, pos, Some(mask), None);
            c.context = Some(self.keep(ctx));
        }
        to_f32(c.context.clone().unwrap())
    }

    fn cached_residual(&self, layer: &Block, c: &mut BlockCache) -> Tensor<3> {
        if c.residual.is_none() {
            let context = self.cached_context(layer, c);
            let x =
                c.x.take()
                    .expect("block input is kept until the residual exists");
            c.context = None;
            c.residual = Some(self.keep(to_f32(x) + layer.attn.o_proj.forward(context)));
        }
        to_f32(c.residual.clone().unwrap())
    }
}

impl BlockwiseModel for LlamaModel {
    type Cache = BlockCache;

    fn num_blocks(&self) -> usize {
        self.layers.len()
    }

    fn stages(&self) -> Vec<StageSpec> {
        vec![
            StageSpec {
                name: "attn_in",
                linears: LINEAR_NAMES[..3].to_vec(),
            },
            StageSpec {
                name: "attn_out",
                linears: vec![LINEAR_NAMES[3]],
            },
            StageSpec {
                name: "mlp_in",
                linears: LINEAR_NAMES[4..6].to_vec(),
            },
            StageSpec {
                name: "mlp_down",
                linears: vec![LINEAR_NAMES[6]],
            },
        ]
    }

    fn device(&self) -> Device {
        LlamaModel::device(self)
    }

    /// Stored like the block outputs (bf16 under bf16 activation storage), so the embedded
    /// calibration set is never held in f32.
    fn embed_tokens(&self, tokens: Tensor<2, Int>) -> Tensor<3> {
        self.keep(self.embed(tokens))
    }

    fn begin_block(&self, _block: usize, x: Tensor<3>) -> BlockCache {
        BlockCache {
            x: Some(self.keep(x)),
            context: None,
            residual: None,
            gated: None,
        }
    }

    fn stage_input(&self, block: usize, stage: usize, c: &mut BlockCache) -> Tensor<3> {
        let layer = &self.layers[block];
        match stage {
            0 => self.normed(layer, c),
            1 => self.cached_context(layer, c),
            2 => layer.ffn_norm.forward(self.cached_residual(layer, c)),
            3 => {
                let gated = layer
                    .mlp
                    .gated(layer.ffn_norm.forward(self.cached_residual(layer, c)));
                if self.keep_intermediates {
                    c.gated = Some((self.keep(gated.clone()), self.mlp_folds));
                }
                gated
            }
            _ => panic!("a llama block has 4 stages, asked for stage {stage}"),
        }
    }

    fn finish_block(&self, block: usize, mut c: BlockCache) -> Tensor<3> {
        let layer = &self.layers[block];
        let h = self.cached_residual(layer, &mut c);
        let mlp = match c.gated.take() {
            // Computed with the same gate/up weights (no fold since), so equal to recomputing it.
            Some((gated, folds)) if folds == self.mlp_folds => {
                layer.mlp.down_proj.forward(to_f32(gated))
            }
            _ => layer.mlp.forward(layer.ffn_norm.forward(h.clone())),
        };
        self.keep(h + mlp)
    }

    fn release_embedding(&mut self) {
        LlamaModel::release_embedding(self);
    }

    fn set_keep_intermediates(&mut self, keep: bool) {
        self.keep_intermediates = keep;
    }

    fn set_activation_precision(&mut self, precision: DensePrecision) {
        // bf16 storage uses the flex backend's host conversion; other devices keep f32.
        let flex = LlamaModel::device(self) == Device::flex();
        self.activations = if flex { precision } else { DensePrecision::F32 };
    }

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

    fn head_logits(&self, x: Tensor<3>) -> Tensor<3> {
        self.lm_head.forward(self.norm.forward(to_f32(x)))
    }

    fn head(&self) -> Option<&CompressedLinear> {
        Some(&self.lm_head)
    }

    fn head_mut(&mut self) -> Option<&mut CompressedLinear> {
        Some(&mut self.lm_head)
    }

    fn head_input(&self, x: Tensor<3>) -> Tensor<3> {
        self.norm.forward(to_f32(x))
    }

    fn linear(&self, block: usize, name: &str) -> &CompressedLinear {
        let l = &self.layers[block];
        match name {
            "attn.q_proj" => &l.attn.q_proj,
            "attn.k_proj" => &l.attn.k_proj,
            "attn.v_proj" => &l.attn.v_proj,
            "attn.o_proj" => &l.attn.o_proj,
            "mlp.gate_proj" => &l.mlp.gate_proj,
            "mlp.up_proj" => &l.mlp.up_proj,
            "mlp.down_proj" => &l.mlp.down_proj,
            _ => panic!("no linear `{name}` in a llama block (see LINEAR_NAMES)"),
        }
    }

    fn linear_mut(&mut self, block: usize, name: &str) -> &mut CompressedLinear {
        let l = &mut self.layers[block];
        match name {
            "attn.q_proj" => &mut l.attn.q_proj,
            "attn.k_proj" => &mut l.attn.k_proj,
            "attn.v_proj" => &mut l.attn.v_proj,
            "attn.o_proj" => &mut l.attn.o_proj,
            "mlp.gate_proj" => &mut l.mlp.gate_proj,
            "mlp.up_proj" => &mut l.mlp.up_proj,
            "mlp.down_proj" => &mut l.mlp.down_proj,
            _ => panic!("no linear `{name}` in a llama block (see LINEAR_NAMES)"),
        }
    }
}
