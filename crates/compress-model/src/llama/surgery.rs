//! Structural edits of a llama model: removing FFN neurons, attention heads and whole blocks.
//! The matrices shrink (the model gets smaller and faster, it is not masked), and the config
//! follows whenever every block still has the same shape.
//!
//! - **FFN neurons**: neuron `i` of a SwiGLU MLP is row `i` of `gate_proj` and `up_proj` and
//!   column `i` of `down_proj`; removing all three removes its term `down[:, i] · silu(g_i) u_i`
//!   exactly.
//! - **Heads**: query head `i` is rows `i·d..(i+1)·d` of `q_proj` and the same columns of
//!   `o_proj`. With grouped-query attention each key/value head serves a contiguous group of query
//!   heads, and the decoder needs groups of equal size, so every group that keeps heads must keep
//!   the same number; a group that keeps none loses its key/value head too.
//! - **Blocks**: a pre-norm block adds its output to the residual stream, so removing it leaves
//!   a valid model (ShortGPT, Men et al. 2024).

use burn::tensor::Tensor;
use compress_core::linear::CompressedLinear;
use compress_core::structured::{keep_indices, Axis};

use super::LlamaModel;
use crate::error::ModelError;
use compress_core::layer_id::Expert;

pub(super) fn invalid(msg: String) -> ModelError {
    ModelError::InvalidInput(msg)
}

fn cut(
    lin: &mut CompressedLinear,
    axis: Axis,
    keep: &[usize],
    what: &str,
) -> Result<(), ModelError> {
    *lin = keep_indices(lin, axis, keep).map_err(|e| invalid(format!("{what}: {e}")))?;
    Ok(())
}

fn sorted_unique(keep: &[usize], len: usize, what: &str) -> Result<Vec<usize>, ModelError> {
    let mut k = keep.to_vec();
    k.sort_unstable();
    k.dedup();
    if k.len() != keep.len() {
        return Err(invalid(format!("{what}: repeated indices")));
    }
    if k.is_empty() || k.last().is_some_and(|&i| i >= len) {
        return Err(invalid(format!(
            "{what}: keep between 1 and {len} indices below {len}"
        )));
    }
    Ok(k)
}

/// Attention shape of one block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadShape {
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
}

impl LlamaModel {
    /// The attention shape of block `block`.
    ///
    /// # Panics
    /// If `block` is out of range.
    pub fn head_shape(&self, block: usize) -> HeadShape {
        let a = &self.layers[block].attn;
        HeadShape {
            heads: a.num_heads,
            kv_heads: a.num_kv_heads,
            head_dim: a.head_dim,
        }
    }

    /// Mean attention entropy of each query head of block `block` for the block input `x`
    /// (`[batch, seq, hidden]`, unpadded causal sequences), in nats.
    ///
    /// # Panics
    /// If `block` is out of range.
    pub fn head_entropy(&self, block: usize, x: Tensor<3>) -> Vec<f64> {
        let [b, t, _] = x.dims();
        let (positions, mask) = super::full_sequence(b, t, &x.device());
        let layer = &self.layers[block];
        let e = layer.attn.head_entropy(
            layer.attn_norm.forward(x),
            self.rope_of(block),
            positions,
            Some(self.layer_mask(block, mask)),
        );
        e.into_data()
            .try_to_vec::<f32>()
            .unwrap_or_default()
            .into_iter()
            .map(f64::from)
            .collect()
    }

    /// FFN width of block `block`: its MLP's hidden width, or each expert's for a mixture of
    /// experts.
    ///
    /// # Panics
    /// If `block` is out of range.
    pub fn ffn_width(&self, block: usize) -> usize {
        match &self.layers[block].mlp {
            super::FeedForward::Dense(m) => m.gate_proj.out_features(),
            super::FeedForward::Moe(m) => {
                m.experts.first().map_or(0, |e| e.gate_proj.out_features())
            }
        }
    }

    /// The gated MLPs of block `block` ([`super::Block::ffn_units`]); empty for a missing block.
    pub fn ffn_units(&self, block: usize) -> Vec<Option<Expert>> {
        self.layers
            .get(block)
            .map_or_else(Vec::new, |b| b.ffn_units())
    }

    /// FFN width of the gated MLP `unit` of block `block` (`None`: the dense MLP), or an error
    /// naming a missing block or unit.
    pub fn unit_ffn_width(&self, block: usize, unit: Option<Expert>) -> Result<usize, ModelError> {
        let b = self
            .layers
            .get(block)
            .ok_or_else(|| invalid(format!("layers.{block}.mlp: no such block")))?;
        Ok(b.mlp_of(block, unit)?.gate_proj.out_features())
    }

    /// Keeps only the FFN neurons `keep` of block `block`'s dense MLP (any order; kept in
    /// increasing order). For the experts of a mixture, see [`Self::keep_unit_neurons`].
    pub fn keep_ffn_neurons(&mut self, block: usize, keep: &[usize]) -> Result<(), ModelError> {
        self.keep_unit_neurons(block, None, keep)
    }

    /// Keeps only the neurons `keep` of the gated MLP `unit` of block `block` (`None`: the dense
    /// MLP; `Some(expert)`: one expert of a mixture). An expert is an ordinary gated MLP, so
    /// cutting its neurons removes their terms exactly, as for a dense one; the router is
    /// unchanged. GGUF and Hugging Face layouts need every expert of the model to keep the
    /// same width (the config follows when they do).
    pub fn keep_unit_neurons(
        &mut self,
        block: usize,
        unit: Option<Expert>,
        keep: &[usize],
    ) -> Result<(), ModelError> {
        let what = unit_path(block, unit);
        let width = self.unit_ffn_width(block, unit)?;
        let keep = sorted_unique(keep, width, &what)?;
        self.cut_ffn(block, unit, &keep)?;
        self.refresh_config();
        Ok(())
    }

    /// Keeps only the query heads `keep` of block `block`. Every key/value group that keeps any
    /// head must keep the same number of them; groups that keep none are removed with their
    /// key/value head.
    pub fn keep_heads(&mut self, block: usize, keep: &[usize]) -> Result<(), ModelError> {
        let what = format!("layers.{block}.attn");
        let shape = self
            .layers
            .get(block)
            .map(|_| self.head_shape(block))
            .ok_or_else(|| invalid(format!("{what}: no such block")))?;
        let keep = sorted_unique(keep, shape.heads, &what)?;
        let group = shape.heads / shape.kv_heads;
        let mut per_group = vec![0usize; shape.kv_heads];
        for &h in &keep {
            per_group[h / group] += 1;
        }
        let kept_groups: Vec<usize> = (0..shape.kv_heads).filter(|&g| per_group[g] > 0).collect();
        let new_group = per_group[kept_groups[0]];
        if kept_groups.iter().any(|&g| per_group[g] != new_group) {
            return Err(invalid(format!(
                "{what}: grouped-query attention needs the same number of query heads in every kept group (kept per group: {per_group:?})"
            )));
        }
        self.cut_heads(block, &keep, &kept_groups)?;
        let attn = &mut self.layers[block].attn;
        attn.num_heads = keep.len();
        attn.num_kv_heads = kept_groups.len();
        self.refresh_config();
        Ok(())
    }

    /// Keeps (in this order) the FFN neurons `neurons` of the gated MLP `unit` of block
    /// `block`: their rows of `gate_proj` and `up_proj` and columns of `down_proj`.
    pub(super) fn cut_ffn(
        &mut self,
        block: usize,
        unit: Option<Expert>,
        neurons: &[usize],
    ) -> Result<(), ModelError> {
        let what = unit_path(block, unit);
        let mlp = self.layers[block].mlp_of_mut(block, unit)?;
        for (lin, axis, name) in [
            (&mut mlp.gate_proj, Axis::Rows, "gate_proj"),
            (&mut mlp.up_proj, Axis::Rows, "up_proj"),
            (&mut mlp.down_proj, Axis::Cols, "down_proj"),
        ] {
            cut(lin, axis, neurons, &format!("{what}.{name}"))?;
        }
        Ok(())
    }

    /// Keeps (in this order) the query heads `heads` and key/value heads `groups` of block
    /// `block`: their rows of `q_proj` / `k_proj` / `v_proj` and columns of `o_proj`. Head counts
    /// are left to the caller.
    pub(super) fn cut_heads(
        &mut self,
        block: usize,
        heads: &[usize],
        groups: &[usize],
    ) -> Result<(), ModelError> {
        let what = format!("layers.{block}.attn");
        let hd = self.head_shape(block).head_dim;
        let rows = |units: &[usize]| -> Vec<usize> {
            units.iter().flat_map(|&h| h * hd..(h + 1) * hd).collect()
        };
        let (q_rows, kv_rows) = (rows(heads), rows(groups));
        let attn = &mut self.layers[block].attn;
        cut(
            &mut attn.q_proj,
            Axis::Rows,
            &q_rows,
            &format!("{what}.q_proj"),
        )?;
        cut(
            &mut attn.k_proj,
            Axis::Rows,
            &kv_rows,
            &format!("{what}.k_proj"),
        )?;
        cut(
            &mut attn.v_proj,
            Axis::Rows,
            &kv_rows,
            &format!("{what}.v_proj"),
        )?;
        cut(
            &mut attn.o_proj,
            Axis::Cols,
            &q_rows,
            &format!("{what}.o_proj"),
        )
    }

    /// Removes the blocks `remove` (any order); at least one block must stay.
    pub fn remove_blocks(&mut self, remove: &[usize]) -> Result<(), ModelError> {
        let n = self.layers.len();
        let mut r = remove.to_vec();
        r.sort_unstable();
        r.dedup();
        if r.last().is_some_and(|&b| b >= n) || r.len() >= n {
            return Err(invalid(format!(
                "remove_blocks {remove:?}: the model has {n} blocks and must keep at least one"
            )));
        }
        let old = std::mem::take(&mut self.layers);
        self.layers = old
            .into_iter()
            .enumerate()
            .filter(|(i, _)| r.binary_search(i).is_err())
            .map(|(_, b)| b)
            .collect();
        self.refresh_config();
        Ok(())
    }

    /// Weights the model holds: embedding, every projection (as its dense-equivalent count for
    /// compressed layers: `out · in`, biases included), norms, and the head unless tied.
    pub fn num_parameters(&self) -> usize {
        let lin = |l: &CompressedLinear| {
            l.out_features() * l.in_features() + l.bias().map_or(0, |b| b.dims()[0])
        };
        let d = self.config.hidden_size;
        let blocks: usize = self
            .layers
            .iter()
            .map(|b| {
                b.linears(0).into_iter().map(|(_, l)| lin(l)).sum::<usize>()
                    + 2 * d
                    + b.variant_norms()
                        .iter()
                        .map(|(_, n)| n.weight.val().dims()[0])
                        .sum::<usize>()
            })
            .sum();
        let head = if self.config.tie_word_embeddings {
            0
        } else {
            lin(&self.lm_head)
        };
        self.config.vocab_size * d + blocks + d + head
    }

    /// Sets the config's block count and, when every block agrees, its FFN widths (dense,
    /// expert and shared expert) and head counts (with differing blocks the config keeps the largest, and
    /// [`Self::num_parameters`] counts the real tensors).
    fn refresh_config(&mut self) {
        self.config.num_layers = self.layers.len();
        if !self.config.variant.layer_attention.is_empty() {
            self.config.variant.layer_attention = self
                .layers
                .iter()
                .map(|b| {
                    if b.sliding {
                        crate::config::LayerAttention::Sliding
                    } else {
                        crate::config::LayerAttention::Global
                    }
                })
                .collect();
        }
        if let Some(moe) = &mut self.config.variant.moe {
            moe.dense_layers = (0..self.layers.len())
                .filter(|&l| self.layers[l].mlp.dense().is_some())
                .collect();
            let widest = |f: &dyn Fn(&super::Moe) -> Option<usize>| {
                self.layers
                    .iter()
                    .filter_map(|b| b.mlp.moe().and_then(f))
                    .max()
            };
            if let Some(w) = widest(&|m| m.experts.iter().map(|e| e.gate_proj.out_features()).max())
            {
                moe.expert_intermediate_size = w;
            }
            if let Some(w) = widest(&|m| m.shared.as_ref().map(|e| e.gate_proj.out_features())) {
                moe.shared_expert_intermediate_size = Some(w);
            }
        }
        let max = |f: &dyn Fn(&super::Block) -> usize| self.layers.iter().map(f).max().unwrap_or(0);
        let dense_width = max(&|b| b.mlp.dense().map_or(0, |m| m.gate_proj.out_features()));
        if dense_width > 0 {
            self.config.intermediate_size = dense_width;
        }
        self.config.num_heads = max(&|b| b.attn.num_heads);
        self.config.num_kv_heads = max(&|b| b.attn.num_kv_heads);
    }
}

/// The printed path of a gated MLP: `layers.{block}.mlp`, `….mlp.experts.{e}`, `….mlp.shared_expert`.
fn unit_path(block: usize, unit: Option<Expert>) -> String {
    match unit {
        None => format!("layers.{block}.mlp"),
        Some(Expert::Routed(e)) => format!("layers.{block}.mlp.experts.{e}"),
        Some(Expert::Shared) => format!("layers.{block}.mlp.shared_expert"),
    }
}
