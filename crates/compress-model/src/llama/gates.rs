//! First-order Taylor importance of FFN neurons and attention heads (Molchanov et al. 2019,
//! "Importance Estimation for Neural Network Pruning", arXiv:1906.10771; used for LLMs by
//! LLM-Pruner, Ma et al. 2023, arXiv:2305.11627).
//!
//! Every FFN neuron's activation and every head's context is multiplied by a gate `m = 1` that
//! requires a gradient (burn autodiff; the model's own weights stay as they are). For the
//! calibration loss `L` (mean next-token negative log-likelihood), `∂L/∂m_i = Σ_t (∂L/∂h_i) h_i`
//! is the first-order change of `L` when the structure is removed (`m_i: 1 → 0` changes `L` by
//! about `−∂L/∂m_i`), and `|∂L/∂m_i|` — the gradient × weight of the structure — is its Taylor
//! importance. Gradients are summed over windows, one backward pass per window.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor, TensorData};

use super::{full_sequence, LlamaModel};
use crate::error::ModelError;

/// Taylor importance of every FFN neuron and every query head, per block.
#[derive(Debug, Clone, PartialEq)]
pub struct TaylorScores {
    /// `|Σ ∂L/∂m|` per FFN neuron, one vector per block.
    pub ffn: Vec<Vec<f64>>,
    /// `|Σ ∂L/∂m|` per query head, one vector per block.
    pub heads: Vec<Vec<f64>>,
}

impl LlamaModel {
    /// Taylor importance over `windows` (token ids, each at least 2 long), one forward and
    /// backward pass per window.
    pub fn taylor_scores(&self, windows: &[Vec<u32>]) -> Result<TaylorScores, ModelError> {
        if let Some(l) = self.layers.iter().position(|b| b.mlp.dense().is_none()) {
            return Err(ModelError::InvalidInput(format!(
                "layers.{l}.mlp is a mixture of experts: Taylor scores gate dense FFN neurons"
            )));
        }
        let device = self.device().autodiff();
        let gate = |n: usize| {
            Tensor::<1>::from_data(TensorData::new(vec![1f32; n], [n]), &device).require_grad()
        };
        let ffn_gates: Vec<Tensor<1>> = self
            .layers
            .iter()
            .enumerate()
            .map(|(i, _)| gate(self.ffn_width(i)))
            .collect();
        let head_gates: Vec<Tensor<1>> =
            self.layers.iter().map(|l| gate(l.attn.num_heads)).collect();
        let mut ffn: Vec<Vec<f64>> = ffn_gates.iter().map(|g| vec![0.0; g.dims()[0]]).collect();
        let mut heads: Vec<Vec<f64>> = head_gates.iter().map(|g| vec![0.0; g.dims()[0]]).collect();
        for w in windows {
            let t = w.len();
            if t < 2 {
                return Err(ModelError::InvalidInput(
                    "a Taylor window needs at least 2 tokens".into(),
                ));
            }
            self.check_len(t)?;
            let ids: Vec<i64> = w.iter().map(|&v| v as i64).collect();
            let tokens =
                Tensor::<2, Int>::from_data(TensorData::new(ids.clone(), [1, t]), &self.device());
            let (positions, mask) = full_sequence(1, t, &self.device());
            let mut x = self.embed(tokens);
            for (i, (l, (fg, hg))) in self
                .layers
                .iter()
                .zip(ffn_gates.iter().zip(&head_gates))
                .enumerate()
            {
                x = l.forward_gated(
                    x,
                    self.rope_of(i),
                    positions.clone(),
                    Some(self.layer_mask(i, mask.clone())),
                    None,
                    Some((hg, fg)),
                );
            }
            let logits = self.logits_of(x);
            let vocab = logits.dims()[2];
            let lp = log_softmax(logits.narrow(1, 0, t - 1).reshape([t - 1, vocab]), 1);
            let targets = Tensor::<2, Int>::from_data(
                TensorData::new(ids[1..].to_vec(), [t - 1, 1]),
                &self.device(),
            );
            let loss = lp.gather(1, targets).mean().neg();
            let grads = loss.backward();
            for (g, acc) in ffn_gates
                .iter()
                .chain(&head_gates)
                .zip(ffn.iter_mut().chain(heads.iter_mut()))
            {
                let v: Vec<f32> = g
                    .grad(&grads)
                    .map(|d| d.into_data().try_to_vec::<f32>().unwrap_or_default())
                    .unwrap_or_default();
                for (a, d) in acc.iter_mut().zip(v) {
                    *a += d as f64;
                }
            }
        }
        let abs = |v: Vec<Vec<f64>>| {
            v.into_iter()
                .map(|b| b.into_iter().map(f64::abs).collect())
                .collect()
        };
        Ok(TaylorScores {
            ffn: abs(ffn),
            heads: abs(heads),
        })
    }
}
