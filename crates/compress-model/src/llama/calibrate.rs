//! [`BlockwiseModel`] for [`LlamaModel`]: what the calibration pipeline needs to compress a
//! llama-family model block by block.
//!
//! A block's linears form four stages, in the order the forward pass reaches them (the
//! "true-sequential" order of the GPTQ reference): `attn_in` (q/k/v, reading the normed block
//! input), `attn_out` (o, reading the attention context), `mlp_in` (gate/up, reading the normed
//! residual after attention) and `mlp_down` (down, reading `silu(gate) ⊙ up`). Calibration
//! sequences are full windows, so inputs use a plain causal mask and positions from 0.

use burn::tensor::{Bool, Device, Int, Tensor};
use compress_core::linear::CompressedLinear;
use compress_core::pipeline::{BlockwiseModel, StageSpec};

use super::{causal_mask, positions_from, Block, LlamaModel};

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

impl LlamaModel {
    fn full_sequence(&self, x: &Tensor<3>) -> (Tensor<2, Int>, Tensor<4, Bool>) {
        let [b, t, _] = x.dims();
        let device = x.device();
        let mask = causal_mask(t, 0, &device)
            .unsqueeze_dims::<4>(&[0, 1])
            .expand([b, 1, t, t]);
        (positions_from(0, b, t, &device), mask)
    }

    fn attn_residual(&self, layer: &Block, x: Tensor<3>) -> Tensor<3> {
        let (pos, mask) = self.full_sequence(&x);
        x.clone()
            + layer.attn.forward(
                layer.attn_norm.forward(x),
                &self.rope,
                pos,
                Some(mask),
                None,
            )
    }
}

impl BlockwiseModel for LlamaModel {
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

    fn embed_tokens(&self, tokens: Tensor<2, Int>) -> Tensor<3> {
        self.embed(tokens)
    }

    fn stage_input(&self, block: usize, stage: usize, x: Tensor<3>) -> Tensor<3> {
        let layer = &self.layers[block];
        match stage {
            0 => layer.attn_norm.forward(x),
            1 => {
                let (pos, mask) = self.full_sequence(&x);
                layer.attn.context(
                    layer.attn_norm.forward(x),
                    &self.rope,
                    pos,
                    Some(mask),
                    None,
                )
            }
            2 => layer.ffn_norm.forward(self.attn_residual(layer, x)),
            3 => layer
                .mlp
                .gated(layer.ffn_norm.forward(self.attn_residual(layer, x))),
            _ => panic!("a llama block has 4 stages, asked for stage {stage}"),
        }
    }

    fn block_forward(&self, block: usize, x: Tensor<3>) -> Tensor<3> {
        let (pos, mask) = self.full_sequence(&x);
        self.layers[block].forward(x, &self.rope, pos, Some(mask), None)
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
