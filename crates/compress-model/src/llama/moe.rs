//! Mixture-of-experts MLPs (Shazeer et al. 2017, arXiv:1701.06538; Mixtral, Jiang et al. 2024,
//! arXiv:2401.04088; Qwen-MoE).
//!
//! For a token `x`, the router gives logits `r = R x` over the experts; `p = softmax(r)` in f32;
//! the token runs through the `k` experts of largest `p` (ties to the lower index), weighted by
//! their `p` — renormalized to sum to 1 when the family says so — and the weighted outputs are
//! summed. A shared expert (Qwen2-MoE) runs on every token and adds `σ(g · x) · shared(x)`.
//!
//! Routing is decided on the host (the router's logits are read back), then each expert runs on
//! the rows routed to it (`select`, the expert's gated MLP, `select_assign` with addition): the
//! work is that of `k` dense MLPs per token, not of all experts.

use burn::module::Module;
use burn::tensor::activation::sigmoid;
use burn::tensor::{IndexingUpdateOp, Int, Tensor, TensorData};
use compress_core::linear::CompressedLinear;

use super::mlp::Mlp;

/// The feed-forward sub-layer of a block: a dense gated MLP or a mixture of experts.
// A dense MLP is held inline (one per block, in the model's `Vec` of blocks): boxing it would
// only add an indirection to every forward pass.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum FeedForward {
    /// One gated MLP.
    Dense(Mlp),
    /// Routed experts (and a shared one).
    Moe(Moe),
}

impl FeedForward {
    /// Applies the sub-layer to `x: [..., hidden]`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        match self {
            FeedForward::Dense(m) => m.forward(x),
            FeedForward::Moe(m) => m.forward(x),
        }
    }

    /// The dense MLP, `None` for a mixture of experts.
    pub fn dense(&self) -> Option<&Mlp> {
        match self {
            FeedForward::Dense(m) => Some(m),
            FeedForward::Moe(_) => None,
        }
    }

    /// The dense MLP, to change it; `None` for a mixture of experts.
    pub fn dense_mut(&mut self) -> Option<&mut Mlp> {
        match self {
            FeedForward::Dense(m) => Some(m),
            FeedForward::Moe(_) => None,
        }
    }

    /// The mixture of experts, `None` for a dense MLP.
    pub fn moe(&self) -> Option<&Moe> {
        match self {
            FeedForward::Dense(_) => None,
            FeedForward::Moe(m) => Some(m),
        }
    }
}

/// A mixture-of-experts MLP; see the [module docs](self).
#[derive(Module, Debug)]
pub struct Moe {
    /// Router, `[experts, hidden]`.
    pub router: CompressedLinear,
    /// The routed experts.
    pub experts: Vec<Mlp>,
    /// The shared expert, if any.
    pub shared: Option<Mlp>,
    /// The shared expert's output gate, `[1, hidden]` (`σ(g · x)` scales its output).
    pub shared_gate: Option<CompressedLinear>,
    /// Experts per token.
    #[module(skip)]
    pub top_k: usize,
    /// Renormalize the chosen experts' weights to sum to 1.
    #[module(skip)]
    pub normalize: bool,
}

/// Where each token of a batch goes.
#[derive(Debug, Clone, PartialEq)]
pub struct Routing {
    /// Per token, the chosen experts with their weights, largest weight first.
    pub tokens: Vec<Vec<(usize, f32)>>,
}

impl Routing {
    /// The rows routed to expert `e` and their weights.
    pub fn rows_of(&self, e: usize) -> (Vec<i64>, Vec<f32>) {
        let mut rows = Vec::new();
        let mut weights = Vec::new();
        for (t, chosen) in self.tokens.iter().enumerate() {
            if let Some(&(_, w)) = chosen.iter().find(|(x, _)| *x == e) {
                rows.push(t as i64);
                weights.push(w);
            }
        }
        (rows, weights)
    }
}

impl Moe {
    /// Number of routed experts.
    pub fn num_experts(&self) -> usize {
        self.experts.len()
    }

    /// The routing of the rows of `x: [tokens, hidden]`.
    pub fn route(&self, x: &Tensor<2>) -> Routing {
        let logits = self.router.forward(x.clone());
        let [n, e] = logits.dims();
        let host: Vec<f32> = logits
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .expect("router logits convert to f32");
        let tokens = (0..n)
            .map(|t| top_k(&host[t * e..(t + 1) * e], self.top_k, self.normalize))
            .collect();
        Routing { tokens }
    }

    /// Applies the mixture to `x: [..., hidden]`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let dims = x.dims();
        let d = dims[D - 1];
        let n = dims.iter().product::<usize>() / d.max(1);
        let flat: Tensor<2> = x.reshape([n, d]);
        let routing = self.route(&flat);
        self.forward_routed(flat, &routing).reshape(dims)
    }

    /// The mixture's output `[tokens, hidden]` for `x` routed by `routing`.
    pub fn forward_routed(&self, x: Tensor<2>, routing: &Routing) -> Tensor<2> {
        let device = x.device();
        let mut y = x.zeros_like();
        for (e, expert) in self.experts.iter().enumerate() {
            let (rows, weights) = routing.rows_of(e);
            if rows.is_empty() {
                continue;
            }
            let m = rows.len();
            let idx = Tensor::<1, Int>::from_data(TensorData::new(rows, [m]), &device);
            let w = Tensor::<2>::from_data(TensorData::new(weights, [m, 1]), &device);
            let out = expert.forward(x.clone().select(0, idx.clone())) * w;
            y = y.select_assign(0, idx, out, IndexingUpdateOp::Add);
        }
        if let (Some(shared), Some(gate)) = (&self.shared, &self.shared_gate) {
            y = y + sigmoid(gate.forward(x.clone())) * shared.forward(x);
        } else if let Some(shared) = &self.shared {
            y = y + shared.forward(x);
        }
        y
    }
}

/// The `k` largest softmax probabilities of `logits` (f32, in f64 sums) with their indices,
/// largest first, ties to the lower index; renormalized to sum to 1 when `normalize`.
pub(crate) fn top_k(logits: &[f32], k: usize, normalize: bool) -> Vec<(usize, f32)> {
    let max = logits.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
    let exp: Vec<f32> = logits.iter().map(|&v| (v - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| exp[b].total_cmp(&exp[a]).then(a.cmp(&b)));
    let chosen: Vec<(usize, f32)> = order[..k.min(order.len())]
        .iter()
        .map(|&i| (i, exp[i] / sum))
        .collect();
    if !normalize {
        return chosen;
    }
    let total: f32 = chosen.iter().map(|(_, p)| p).sum();
    chosen.into_iter().map(|(i, p)| (i, p / total)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_follows_the_softmax_and_renormalizes() {
        let logits = [0.0f32, 2.0, 1.0, 2.0];
        // Softmax ∝ [1, e², e, e²]; the two e² tie and go lower index first.
        let e = std::f32::consts::E;
        let z = 1.0 + 2.0 * e * e + e;
        let raw = top_k(&logits, 2, false);
        assert_eq!(raw.iter().map(|(i, _)| *i).collect::<Vec<_>>(), vec![1, 3]);
        assert!((raw[0].1 - e * e / z).abs() < 1e-6, "{raw:?} {z}");
        let norm = top_k(&logits, 2, true);
        assert!((norm[0].1 - 0.5).abs() < 1e-6 && (norm[1].1 - 0.5).abs() < 1e-6);
        let three = top_k(&logits, 3, true);
        assert_eq!(three[2].0, 2);
        assert!((three.iter().map(|x| x.1).sum::<f32>() - 1.0).abs() < 1e-6);
    }
}
