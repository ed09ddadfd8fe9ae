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

    /// FFN width of block `block`'s dense MLP, or an error naming a missing block or a mixture
    /// of experts (whose neurons these edits do not cut).
    pub(super) fn checked_ffn_width(&self, block: usize) -> Result<usize, ModelError> {
        let b = self
            .layers
            .get(block)
            .ok_or_else(|| invalid(format!("layers.{block}.mlp: no such block")))?;
        Ok(b.dense_mlp(block)?.gate_proj.out_features())
    }

    /// Keeps only the FFN neurons `keep` of block `block` (any order; kept in increasing order).
    pub fn keep_ffn_neurons(&mut self, block: usize, keep: &[usize]) -> Result<(), ModelError> {
        let what = format!("layers.{block}.mlp");
        let width = self.checked_ffn_width(block)?;
        let keep = sorted_unique(keep, width, &what)?;
        self.cut_ffn(block, &keep)?;
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

    /// Keeps (in this order) the FFN neurons `neurons` of block `block`: their rows of
    /// `gate_proj` and `up_proj` and columns of `down_proj`.
    pub(super) fn cut_ffn(&mut self, block: usize, neurons: &[usize]) -> Result<(), ModelError> {
        let what = format!("layers.{block}.mlp");
        let mlp = self.layers[block].dense_mlp_mut(block)?;
        cut(
            &mut mlp.gate_proj,
            Axis::Rows,
            neurons,
            &format!("{what}.gate_proj"),
        )?;
        cut(
            &mut mlp.up_proj,
            Axis::Rows,
            neurons,
            &format!("{what}.up_proj"),
        )?;
        cut(
            &mut mlp.down_proj,
            Axis::Cols,
            neurons,
            &format!("{what}.down_proj"),
        )
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

    /// Sets the config's block count and, when every block agrees, its FFN width and head
    /// counts (with differing blocks the config keeps the largest, and
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
