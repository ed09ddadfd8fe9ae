//! Rotary position embedding (RoFormer, Su et al. 2021, arXiv:2104.09864).
//!
//! Pair `i` of a head's dimensions is rotated by the angle `θ_i(p) = p · base^(-2i/d)` at position
//! `p`: `(a, b) ↦ (a cos θ − b sin θ, a sin θ + b cos θ)`. Which dimensions form a pair is the
//! [`RopeLayout`]. With partial rotary embeddings (Phi-4-mini) only the first `rotary_dims`
//! dimensions of a head are rotated (paired within them) and the rest pass through. Frequency
//! scaling ([`RopeScaling`]) rewrites the inverse frequencies and may scale cos/sin. The tables
//! are computed in f64 and stored as f32, for the positions actually used: they start empty and
//! grow (at least doubling, never past the model's context) when a longer sequence arrives
//! ([`Rope::ensure`]), so a file declaring a context of 10⁸ positions costs nothing until such
//! positions are run.

use std::f64::consts::PI;

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::config::{RopeLayout, RopeScaling};

/// RoPE tables for one head width, grown on demand up to the model's context.
#[derive(Module, Debug)]
pub struct Rope {
    #[module(skip)]
    layout: RopeLayout,
    /// Width of a head (`rotary_dims` of them rotated).
    #[module(skip)]
    head_dim: usize,
    /// Rotated dimensions of a head.
    #[module(skip)]
    rotary_dims: usize,
    /// The model's context: positions must stay below it.
    #[module(skip)]
    max_positions: usize,
    /// `ω_i` of the pairs and the cos/sin scale.
    #[module(skip)]
    frequencies: std::sync::Arc<(Vec<f64>, f64)>,
    #[module(skip)]
    device: Device,
    /// The tables built so far, shared by clones of the model.
    #[module(skip)]
    tables: std::sync::Arc<std::sync::RwLock<std::sync::Arc<Tables>>>,
}

/// `cos θ_i(p)` and `sin θ_i(p)` for positions `0..len`, `[len, rotary_dims / 2]`, on the host
/// (for compress-kernels' fused CPU rotation) and on the device.
#[derive(Debug)]
struct Tables {
    len: usize,
    cos_host: Vec<f32>,
    sin_host: Vec<f32>,
    cos: Option<Tensor<2>>,
    sin: Option<Tensor<2>>,
}

/// The inverse frequencies `ω_i` of pairs `0..rotary_dims/2` and the cos/sin scale, for `base`
/// and an optional scaling rule (formulas of transformers' `modeling_rope_utils`).
pub(crate) fn inverse_frequencies(
    rotary_dims: usize,
    base: f32,
    scaling: Option<&RopeScaling>,
) -> (Vec<f64>, f64) {
    let d = rotary_dims as f64;
    let base = base as f64;
    let plain: Vec<f64> = (0..rotary_dims / 2)
        .map(|i| base.powf(-2.0 * i as f64 / d))
        .collect();
    match scaling {
        None => (plain, 1.0),
        Some(RopeScaling::Linear { factor }) => {
            (plain.iter().map(|w| w / *factor as f64).collect(), 1.0)
        }
        Some(RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        }) => {
            let (factor, low, high) = (
                *factor as f64,
                *low_freq_factor as f64,
                *high_freq_factor as f64,
            );
            let original = *original_max_position_embeddings as f64;
            let (low_wavelen, high_wavelen) = (original / low, original / high);
            let w = plain
                .iter()
                .map(|&w| {
                    let wavelen = 2.0 * PI / w;
                    if wavelen > low_wavelen {
                        w / factor
                    } else if wavelen < high_wavelen {
                        w
                    } else {
                        let smooth = (original / wavelen - low) / (high - low);
                        (1.0 - smooth) * w / factor + smooth * w
                    }
                })
                .collect();
            (w, 1.0)
        }
        Some(RopeScaling::Yarn {
            factor,
            original_max_position_embeddings,
            beta_fast,
            beta_slow,
            attention_factor,
        }) => {
            let factor = *factor as f64;
            let original = *original_max_position_embeddings as f64;
            // The dimension index at which a frequency completes `rotations` turns over the
            // original context.
            let dim_of =
                |rotations: f64| (d * (original / (rotations * 2.0 * PI)).ln()) / (2.0 * base.ln());
            let low = dim_of(*beta_fast as f64).floor().max(0.0);
            let high = dim_of(*beta_slow as f64).ceil().min(d - 1.0);
            let high = if low == high { high + 0.001 } else { high };
            let w = plain
                .iter()
                .enumerate()
                .map(|(i, &w)| {
                    let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
                    let extrapolation = 1.0 - ramp;
                    (w / factor) * (1.0 - extrapolation) + w * extrapolation
                })
                .collect();
            let scale = attention_factor.map_or_else(
                || {
                    if factor <= 1.0 {
                        1.0
                    } else {
                        0.1 * factor.ln() + 1.0
                    }
                },
                |a| a as f64,
            );
            (w, scale)
        }
        Some(RopeScaling::Divisors { factors }) => (
            plain
                .iter()
                .zip(factors)
                .map(|(&w, &f)| w / f as f64)
                .collect(),
            1.0,
        ),
        Some(RopeScaling::LongRope {
            short_factor,
            original_max_position_embeddings,
            max_position_embeddings,
            ..
        }) => {
            let w = plain
                .iter()
                .zip(short_factor)
                .map(|(&w, &f)| w / f as f64)
                .collect();
            let original = *original_max_position_embeddings as f64;
            let factor = *max_position_embeddings as f64 / original;
            let scale = if factor <= 1.0 {
                1.0
            } else {
                (1.0 + factor.ln() / original.ln()).sqrt()
            };
            (w, scale)
        }
    }
}

/// Checks a scaling rule against the rotated width; the message names the field at fault.
pub(crate) fn check_scaling(scaling: &RopeScaling, rotary_dims: usize) -> Result<(), String> {
    let factor_ok = |f: f32| f.is_finite() && f > 0.0;
    match scaling {
        RopeScaling::Linear { factor } if !factor_ok(*factor) => {
            Err(format!("rope_scaling factor ({factor}) must be positive"))
        }
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => {
            if !factor_ok(*factor) || !factor_ok(*low_freq_factor) || !factor_ok(*high_freq_factor)
            {
                return Err("llama3 rope_scaling factors must be positive".into());
            }
            if high_freq_factor <= low_freq_factor {
                return Err(format!(
                    "llama3 rope_scaling needs high_freq_factor ({high_freq_factor}) > low_freq_factor ({low_freq_factor})"
                ));
            }
            if *original_max_position_embeddings == 0 {
                return Err(
                    "rope_scaling original_max_position_embeddings must be positive".into(),
                );
            }
            Ok(())
        }
        RopeScaling::Yarn {
            factor,
            original_max_position_embeddings,
            beta_fast,
            beta_slow,
            attention_factor,
        } => {
            if !factor_ok(*factor) || !factor_ok(*beta_fast) || !factor_ok(*beta_slow) {
                return Err("yarn rope_scaling factor and betas must be positive".into());
            }
            if attention_factor.is_some_and(|a| !factor_ok(a)) {
                return Err("yarn attention_factor must be positive".into());
            }
            if *original_max_position_embeddings == 0 {
                return Err(
                    "rope_scaling original_max_position_embeddings must be positive".into(),
                );
            }
            Ok(())
        }
        RopeScaling::Divisors { factors } => {
            if factors.len() != rotary_dims / 2 || factors.iter().any(|&f| !factor_ok(f)) {
                return Err(format!(
                    "rope frequency divisors: {} values for {} rotated pairs, all must be positive",
                    factors.len(),
                    rotary_dims / 2
                ));
            }
            Ok(())
        }
        RopeScaling::LongRope {
            short_factor,
            long_factor,
            original_max_position_embeddings,
            ..
        } => {
            for (name, f) in [("short_factor", short_factor), ("long_factor", long_factor)] {
                if f.len() != rotary_dims / 2 {
                    return Err(format!(
                        "longrope {name} has {} values, the rotated width {rotary_dims} needs {}",
                        f.len(),
                        rotary_dims / 2
                    ));
                }
                if f.iter().any(|&v| !factor_ok(v)) {
                    return Err(format!("longrope {name} values must be positive"));
                }
            }
            if *original_max_position_embeddings == 0 {
                return Err(
                    "rope_scaling original_max_position_embeddings must be positive".into(),
                );
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

impl Rope {
    /// Tables for `max_positions` positions of heads of width `head_dim`, all of it rotated.
    pub fn new(
        head_dim: usize,
        max_positions: usize,
        base: f32,
        layout: RopeLayout,
        device: &Device,
    ) -> Self {
        Self::with_scaling(
            head_dim,
            head_dim,
            max_positions,
            base,
            None,
            layout,
            device,
        )
    }

    /// Tables for up to `max_positions` positions of heads of width `head_dim` whose first
    /// `rotary_dims` dimensions are rotated, with frequencies scaled by `scaling`; nothing is
    /// computed until positions are used ([`Self::ensure`]).
    pub fn with_scaling(
        head_dim: usize,
        rotary_dims: usize,
        max_positions: usize,
        base: f32,
        scaling: Option<&RopeScaling>,
        layout: RopeLayout,
        device: &Device,
    ) -> Self {
        let tables = Tables {
            len: 0,
            cos_host: Vec::new(),
            sin_host: Vec::new(),
            cos: None,
            sin: None,
        };
        Self {
            layout,
            head_dim,
            rotary_dims,
            max_positions,
            frequencies: std::sync::Arc::new(inverse_frequencies(rotary_dims, base, scaling)),
            device: device.clone(),
            tables: std::sync::Arc::new(std::sync::RwLock::new(std::sync::Arc::new(tables))),
        }
    }

    /// Makes the tables cover positions `0..len` (at most [`Self::max_positions`]): grown to at
    /// least twice their size, and at least 256 positions, so a generation loop grows them
    /// O(log n) times.
    pub fn ensure(&self, len: usize) {
        self.covering(len);
    }

    /// The tables, grown to cover positions below `end` ([`Self::ensure`]).
    fn covering(&self, end: usize) -> std::sync::Arc<Tables> {
        let len = end.min(self.max_positions);
        let current = self
            .tables
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if current.len >= len {
            return current;
        }
        let mut guard = self.tables.write().unwrap_or_else(|e| e.into_inner());
        let old = guard.clone();
        if old.len >= len {
            return old;
        }
        let new_len = len.max(2 * old.len).max(256).min(self.max_positions);
        let (inv_freq, scale) = &*self.frequencies;
        let half = self.rotary_dims / 2;
        let mut cos_host = Vec::with_capacity(new_len * half);
        let mut sin_host = Vec::with_capacity(new_len * half);
        cos_host.extend_from_slice(&old.cos_host);
        sin_host.extend_from_slice(&old.sin_host);
        for p in old.len..new_len {
            for &w in inv_freq {
                let angle = p as f64 * w;
                cos_host.push((angle.cos() * scale) as f32);
                sin_host.push((angle.sin() * scale) as f32);
            }
        }
        let tensor = |v: &[f32]| {
            Tensor::<2>::from_data(TensorData::new(v.to_vec(), [new_len, half]), &self.device)
        };
        let grown = std::sync::Arc::new(Tables {
            len: new_len,
            cos: Some(tensor(&cos_host)),
            sin: Some(tensor(&sin_host)),
            cos_host,
            sin_host,
        });
        *guard = grown.clone();
        grown
    }

    /// Rotates host `x` of `[tokens, heads, head_dim]` into `out` (same shape), token `t` at
    /// `positions[t]`, with compress-kernels' fused loop: the same values as [`Self::apply`].
    pub fn apply_host(
        &self,
        x: &[f32],
        out: &mut [f32],
        heads: usize,
        positions: &[usize],
    ) -> Result<(), compress_core::kernels::KernelError> {
        let rotary = self.rotary_dims;
        let pairs = match self.layout {
            RopeLayout::NeoX => compress_core::kernels::rope::RopePairs::Halves,
            RopeLayout::Interleaved => compress_core::kernels::rope::RopePairs::Adjacent,
        };
        let tables = self.covering(positions.iter().max().map_or(0, |&p| p + 1));
        let (cos, sin) = (&tables.cos_host, &tables.sin_host);
        if rotary == self.head_dim {
            return compress_core::kernels::rope::rope(
                x, out, heads, rotary, positions, cos, sin, pairs,
            );
        }
        // Partial rotation: each head's first `rotary` values as their own "heads" of that
        // width through the kernel, the rest copied.
        let hd = self.head_dim;
        let rows = positions.len() * heads;
        if x.len() != rows * hd || out.len() != x.len() {
            return Err(compress_core::kernels::KernelError::Shape(format!(
                "partial rope over {} values for {} tokens of {heads} heads of {hd}",
                x.len(),
                positions.len()
            )));
        }
        let mut rot_in = vec![0f32; rows * rotary];
        for (r, chunk) in x.chunks_exact(hd).enumerate() {
            rot_in[r * rotary..(r + 1) * rotary].copy_from_slice(&chunk[..rotary]);
        }
        let mut rot_out = vec![0f32; rot_in.len()];
        compress_core::kernels::rope::rope(
            &rot_in,
            &mut rot_out,
            heads,
            rotary,
            positions,
            cos,
            sin,
            pairs,
        )?;
        for (r, (o, xi)) in out.chunks_exact_mut(hd).zip(x.chunks_exact(hd)).enumerate() {
            o[..rotary].copy_from_slice(&rot_out[r * rotary..(r + 1) * rotary]);
            o[rotary..].copy_from_slice(&xi[rotary..]);
        }
        Ok(())
    }

    /// The model's context: the number of positions the tables may cover.
    pub fn max_positions(&self) -> usize {
        self.max_positions
    }

    /// Rotates `x: [batch, heads, seq, head_dim]` whose token `t` of batch row `b` sits at position
    /// `positions[b, t]` (`positions: [batch, seq]`, each below [`Self::max_positions`]).
    /// Positions `0..seq` are covered here; later ones (a KV-cached continuation) must have been
    /// covered with [`Self::ensure`], which the model's entry points do.
    pub fn apply(&self, x: Tensor<4>, positions: Tensor<2, Int>) -> Tensor<4> {
        let [b, h, t, d] = x.dims();
        let rotary = self.rotary_dims;
        if rotary < d {
            let kept = x.clone().narrow(3, rotary, d - rotary);
            let rotated = self.apply(x.narrow(3, 0, rotary), positions);
            return Tensor::cat(vec![rotated, kept], 3);
        }
        let half = d / 2;
        let flat = positions.reshape([b * t]);
        // Full sequences sit at positions `0..t`; a cached continuation's positions were
        // covered by the model's entry point.
        let tables = self.covering(t.max(1));
        let (Some(cos), Some(sin)) = (&tables.cos, &tables.sin) else {
            unreachable!("tables covering at least one position are built");
        };
        let cos = cos.clone().select(0, flat.clone()).reshape([b, 1, t, half]);
        let sin = sin.clone().select(0, flat).reshape([b, 1, t, half]);
        match self.layout {
            RopeLayout::NeoX => {
                let x0 = x.clone().narrow(3, 0, half);
                let x1 = x.narrow(3, half, half);
                let r0 = x0.clone() * cos.clone() - x1.clone() * sin.clone();
                let r1 = x0 * sin + x1 * cos;
                Tensor::cat(vec![r0, r1], 3)
            }
            RopeLayout::Interleaved => {
                let pairs = x.reshape([b, h, t, half, 2]);
                let x0 = pairs.clone().narrow(4, 0, 1).reshape([b, h, t, half]);
                let x1 = pairs.narrow(4, 1, 1).reshape([b, h, t, half]);
                let r0 = x0.clone() * cos.clone() - x1.clone() * sin.clone();
                let r1 = x0 * sin + x1 * cos;
                Tensor::stack::<5>(vec![r0, r1], 4).reshape([b, h, t, d])
            }
        }
    }
}
