//! Distillation losses (Hinton et al. 2015, "Distilling the Knowledge in a Neural Network",
//! arXiv:1503.02531; hidden-state matching as in TinyBERT, Jiao et al. 2020, arXiv:1909.10351).
//!
//! - **Logit KL** at temperature `T`: `T² · mean_t Σ_v p_T(v) (log p_T(v) − log q_T(v))` with
//!   `p_T = softmax(z_teacher / T)` and `q_T = softmax(z_student / T)`. The `T²` keeps the
//!   gradient scale independent of `T` (Hinton et al.). Reductions run in f32.
//! - **Next-token cross-entropy** on the data (`−mean_t log q(x_{t+1})`), optional.
//! - **Hidden-state MSE** between the student's and the teacher's residual stream after chosen
//!   blocks, `mean (h_s − h_t)²`.
//!
//! [`DistillLoss`] weights and sums them.

use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::{Int, Tensor};

/// Weights of the terms of the distillation objective.
#[derive(Debug, Clone, PartialEq)]
pub struct DistillLoss {
    /// Weight of the logit KL to the teacher.
    pub kl: f32,
    /// Softmax temperature of the KL term (> 0).
    pub temperature: f32,
    /// Weight of the next-token cross-entropy on the data.
    pub ce: f32,
    /// `(block, weight)`: MSE between the hidden states after `block`.
    pub hidden: Vec<(usize, f32)>,
}

impl Default for DistillLoss {
    /// Pure logit distillation at `T = 1` (the KL to the teacher's next-token distribution).
    fn default() -> Self {
        Self {
            kl: 1.0,
            temperature: 1.0,
            ce: 0.0,
            hidden: Vec::new(),
        }
    }
}

/// `T² · KL(softmax(teacher/T) ‖ softmax(student/T))` averaged over every position of
/// `[batch, seq, vocab]` logits; a 1-element tensor.
pub fn kl_loss(student: Tensor<3>, teacher: Tensor<3>, temperature: f32) -> Tensor<1> {
    let t = temperature as f64;
    let [b, s, v] = student.dims();
    let log_q = log_softmax(student.reshape([b * s, v]) / t, 1);
    let teacher = teacher.reshape([b * s, v]) / t;
    let p = softmax(teacher.clone(), 1);
    let log_p = log_softmax(teacher, 1);
    ((p * (log_p - log_q)).sum_dim(1).mean() * (t * t)).reshape([1])
}

/// Mean next-token negative log-likelihood of `logits: [batch, seq, vocab]` for `tokens:
/// [batch, seq]` (position `t` predicts token `t + 1`); a 1-element tensor.
pub fn ce_loss(logits: Tensor<3>, tokens: Tensor<2, Int>) -> Tensor<1> {
    let [b, s, v] = logits.dims();
    let lp = log_softmax(logits.narrow(1, 0, s - 1).reshape([b * (s - 1), v]), 1);
    let targets = tokens.narrow(1, 1, s - 1).reshape([b * (s - 1), 1]);
    lp.gather(1, targets).mean().neg().reshape([1])
}

/// Mean squared difference of two hidden-state tensors; a 1-element tensor.
pub fn hidden_mse(student: Tensor<3>, teacher: Tensor<3>) -> Tensor<1> {
    (student - teacher).square().mean().reshape([1])
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;
    use compress_core::backend::BackendKind;

    fn t3(v: Vec<f32>, shape: [usize; 3]) -> Tensor<3> {
        let device = BackendKind::Flex.device().unwrap();
        Tensor::from_data(TensorData::new(v, shape), &device)
    }

    fn scalar(x: Tensor<1>) -> f64 {
        x.into_data().try_to_vec::<f32>().unwrap()[0] as f64
    }

    #[test]
    fn kl_matches_a_hand_computation_and_vanishes_on_equal_logits() {
        // One position, two classes: p = softmax([0, ln 3]) = [1/4, 3/4], q = [1/2, 1/2].
        let teacher = t3(vec![0.0, 3f32.ln()], [1, 1, 2]);
        let student = t3(vec![0.0, 0.0], [1, 1, 2]);
        let expected = 0.25 * (0.25f64 / 0.5).ln() + 0.75 * (0.75f64 / 0.5).ln();
        let got = scalar(kl_loss(student.clone(), teacher.clone(), 1.0));
        assert!((got - expected).abs() < 1e-6, "{got} vs {expected}");
        // T = 2: p = softmax([0, ln 3 / 2]) = [1/(1+√3), √3/(1+√3)], scaled by T² = 4.
        let s3 = 3f64.sqrt();
        let (p0, p1) = (1.0 / (1.0 + s3), s3 / (1.0 + s3));
        let expected = 4.0 * (p0 * (p0 / 0.5).ln() + p1 * (p1 / 0.5).ln());
        let got = scalar(kl_loss(student, teacher.clone(), 2.0));
        assert!((got - expected).abs() < 1e-5, "{got} vs {expected}");
        assert!(scalar(kl_loss(teacher.clone(), teacher, 1.0)).abs() < 1e-7);
    }

    #[test]
    fn cross_entropy_and_mse_match_hand_computations() {
        let device = BackendKind::Flex.device().unwrap();
        // Position 0 predicts token 1 from logits [0, ln 3]: −log(3/4).
        let logits = t3(vec![0.0, 3f32.ln(), 5.0, 5.0], [1, 2, 2]);
        let tokens = Tensor::<2, Int>::from_data(TensorData::new(vec![0i64, 1], [1, 2]), &device);
        let got = scalar(ce_loss(logits, tokens));
        assert!((got + 0.75f64.ln()).abs() < 1e-6);
        let a = t3(vec![1.0, 2.0], [1, 1, 2]);
        let b = t3(vec![0.0, 4.0], [1, 1, 2]);
        assert!((scalar(hidden_mse(a, b)) - 2.5).abs() < 1e-6);
    }
}
