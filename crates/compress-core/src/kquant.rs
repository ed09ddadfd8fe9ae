//! The k-quant super-block formats of llama.cpp (`Q2_K` … `Q6_K`) as a property of a packed
//! weight: which packed schemes they store, how their two-level scales are built, and how to
//! recover those scales from a packed layer's f16 scales.
//!
//! A k-quant stores 256 weights of a row (a *super-block*) as groups of 16 or 32 whose scales are
//! themselves quantized: group `i` has scale `d · k_i` with one f16 `d` per super-block and a
//! small integer `k_i`, and asymmetric formats likewise a minimum `dmin · m_i`. ggml computes
//! `y = (d·k_i)·q` (symmetric, signed codes) or `y = (d·k_i)·q − dmin·m_i` in f32.
//!
//! | format | bits | group | packed scheme              | `k_i`     | `m_i` |
//! |--------|------|-------|----------------------------|-----------|-------|
//! | Q2_K   | 2    | 16    | asymmetric                 | 0..15     | 0..15 |
//! | Q3_K   | 3    | 16    | symmetric (code − 4)       | −32..31   | —     |
//! | Q4_K   | 4    | 32    | asymmetric                 | 0..63     | 0..63 |
//! | Q5_K   | 5    | 32    | asymmetric                 | 0..63     | 0..63 |
//! | Q6_K   | 6    | 16    | symmetric (code − 32)      | −128..127 | —     |
//!
//! compress-quant's quantizers can fit their grids to this form (`k_quant` in a recipe), keeping
//! only [`KQuant::super_scale_bits`] significant bits in `d` so that every `d · k_i` is itself an
//! f16 — the scale the packed layout stores. compress-model's GGUF writer then recovers `d` and
//! `k_i` exactly with [`fit_two_level`].

use serde::{Deserialize, Serialize};

use crate::packed::{QuantScheme, Symmetry};

/// Weights per super-block (`QK_K` in ggml).
pub const SUPER_BLOCK: usize = 256;

/// A k-quant format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KQuant {
    /// 2-bit asymmetric, groups of 16, 4-bit scales and minimums.
    #[serde(rename = "q2_k")]
    Q2K,
    /// 3-bit symmetric, groups of 16, 6-bit signed scales.
    #[serde(rename = "q3_k")]
    Q3K,
    /// 4-bit asymmetric, groups of 32, 6-bit scales and minimums.
    #[serde(rename = "q4_k")]
    Q4K,
    /// 5-bit asymmetric, groups of 32, 6-bit scales and minimums.
    #[serde(rename = "q5_k")]
    Q5K,
    /// 6-bit symmetric, groups of 16, 8-bit signed scales.
    #[serde(rename = "q6_k")]
    Q6K,
}

impl KQuant {
    /// Every format, in order of width.
    pub const ALL: [KQuant; 5] = [Self::Q2K, Self::Q3K, Self::Q4K, Self::Q5K, Self::Q6K];

    /// The name used in recipes and on the command line (`q4_k`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Q2K => "q2_k",
            Self::Q3K => "q3_k",
            Self::Q4K => "q4_k",
            Self::Q5K => "q5_k",
            Self::Q6K => "q6_k",
        }
    }

    /// Parses [`Self::name`] (case-insensitive); the error lists the formats.
    pub fn parse(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|k| k.name()).collect();
                format!("unknown k-quant {s:?} (one of {})", names.join(", "))
            })
    }

    /// Code width.
    pub fn bits(self) -> u8 {
        match self {
            Self::Q2K => 2,
            Self::Q3K => 3,
            Self::Q4K => 4,
            Self::Q5K => 5,
            Self::Q6K => 6,
        }
    }

    /// Weights per group (16 or 32).
    pub fn group(self) -> usize {
        match self {
            Self::Q4K | Self::Q5K => 32,
            _ => 16,
        }
    }

    /// Symmetric (Q3_K, Q6_K) or asymmetric with minimums (Q2_K, Q4_K, Q5_K).
    pub fn symmetry(self) -> Symmetry {
        match self {
            Self::Q3K | Self::Q6K => Symmetry::Symmetric,
            _ => Symmetry::Asymmetric,
        }
    }

    /// The packed scheme the codes use.
    pub fn scheme(self) -> QuantScheme {
        QuantScheme::new(self.bits(), Some(self.group()), self.symmetry())
            .expect("every k-quant is a valid packed scheme")
    }

    /// Range of the scale integers `k_i` (and, for asymmetric formats, of `m_i`, which start at 0).
    pub fn scale_range(self) -> (i32, i32) {
        match self {
            Self::Q2K => (0, 15),
            Self::Q3K => (-32, 31),
            Self::Q4K | Self::Q5K => (0, 63),
            Self::Q6K => (-128, 127),
        }
    }

    /// Significant bits kept in `d` and `dmin` so that `d · k` is exact in f16 for every `k` in
    /// [`Self::scale_range`]: the product of a `p`-bit and a `j`-bit integer has at most `p + j`
    /// bits, f16 keeps 11, and a power-of-two end such as −128 costs no bits.
    pub fn super_scale_bits(self) -> u32 {
        match self {
            Self::Q2K => 7,
            Self::Q3K => 6,
            Self::Q4K | Self::Q5K => 5,
            Self::Q6K => 4,
        }
    }

    /// `Ok` when `scheme` is this format's scheme; otherwise what to change.
    pub fn check_scheme(self, scheme: &QuantScheme) -> Result<(), String> {
        if *scheme == self.scheme() {
            Ok(())
        } else {
            Err(format!(
                "k_quant = {} needs bits = {}, group = {}, symmetric = {}",
                self.name(),
                self.bits(),
                self.group(),
                self.symmetry() == Symmetry::Symmetric
            ))
        }
    }
}

impl std::fmt::Display for KQuant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// `x > 0` rounded up to `bits` significant bits and to a multiple of f16's smallest subnormal
/// `2⁻²⁴`: an f16 whose products with integers below `2^(11 − bits)` are f16 too.
pub fn round_up_significant(x: f32, bits: u32) -> f32 {
    debug_assert!(x > 0.0 && x.is_finite() && x >= f32::MIN_POSITIVE);
    let quantum = significant_quantum(x, bits);
    (x / quantum).ceil() * quantum
}

/// The spacing of `bits`-significant-bit values around a normal `x > 0`, at least `2⁻²⁴`.
fn significant_quantum(x: f32, bits: u32) -> f32 {
    // The binary exponent of a normal f32, read from its bits (no `log2` rounding).
    let e = ((x.to_bits() >> 23) & 0xff) as i32 - 127;
    2f32.powi((e - bits as i32 + 1).max(-24))
}

/// The largest `|t|` of the `targets` whose sign `range` can express, and the largest `|k|`
/// that reaches it on every side those targets use. Targets of a sign the range lacks (a
/// negative one for a range of `0..`) are left out: they can only be clipped to `k = 0`.
fn amax_reach(targets: &[f32], range: (i32, i32)) -> (f32, i32) {
    let (mut amax, mut pos, mut neg) = (0f32, false, false);
    for &t in targets {
        if (t > 0.0 && range.1 > 0) || (t < 0.0 && range.0 < 0) {
            amax = amax.max(t.abs());
            pos |= t > 0.0;
            neg |= t < 0.0;
        }
    }
    let reach = match (pos, neg) {
        (true, true) => range.1.min(-range.0),
        (false, true) => -range.0,
        _ => range.1,
    };
    (amax, reach)
}

/// Quantizes `targets` as `d · k_i` with integers `k_i` in `range`, `d` rounded *up* by
/// [`round_up_significant`] from the largest magnitude over the reachable range (so no target is
/// clipped); a non-zero target never gets `k_i = 0` (it becomes `±1`), except one of a sign
/// `range` cannot express, which is clipped to 0. All-zero targets give `d = 0`. Used to snap
/// scales onto a k-quant's form.
pub fn snap_two_level(targets: &[f32], range: (i32, i32), bits: u32) -> (f32, Vec<i32>) {
    let (amax, reach) = amax_reach(targets, range);
    if amax == 0.0 {
        return (0.0, vec![0; targets.len()]);
    }
    let d = round_up_significant((amax / reach as f32).max(f32::MIN_POSITIVE), bits);
    let ks = targets
        .iter()
        .map(|&t| {
            let k = ((t / d).round() as i32).clamp(range.0, range.1);
            if k == 0 && t != 0.0 {
                if t > 0.0 {
                    1.min(range.1)
                } else {
                    (-1).max(range.0)
                }
            } else {
                k
            }
        })
        .collect();
    (d, ks)
}

/// `x > 0` rounded to nearest at `bits` significant bits (and a multiple of `2⁻²⁴`).
fn round_significant(x: f32, bits: u32) -> f32 {
    let quantum = significant_quantum(x, bits);
    (x / quantum).round() * quantum
}

/// Two-level scales recovered from arbitrary `targets`: the f16 `d` and integers `k_i` in `range`
/// that minimise `max_i w_i·|d·k_i − t_i|` (`w_i = 1` without `weights`; computed in f32, as ggml
/// does). Candidates are, for every reachable `k`, `f16(max |t| / k)` and that value at
/// `precision` significant bits, so targets produced by [`snap_two_level`] with that precision
/// are recovered exactly (error 0), and targets within f16 rounding of such products recover
/// the `d` they came from. Returns `(d, k, weighted max error)`.
pub fn fit_two_level(
    targets: &[f32],
    weights: Option<&[f32]>,
    range: (i32, i32),
    precision: u32,
) -> (half::f16, Vec<i32>, f32) {
    let (amax, reach) = amax_reach(targets, range);
    if amax == 0.0 {
        return (half::f16::ZERO, vec![0; targets.len()], 0.0);
    }
    let mut best = (half::f16::ZERO, vec![0; targets.len()], f32::INFINITY);
    let mut ks = vec![0i32; targets.len()];
    for k in (1..=reach).rev() {
        let x = amax / k as f32;
        let rounded = if x >= f32::MIN_POSITIVE {
            round_significant(x, precision)
        } else {
            x
        };
        for d in [half::f16::from_f32(x), half::f16::from_f32(rounded)] {
            let df = d.to_f32();
            if df == 0.0 || !df.is_finite() {
                continue;
            }
            let mut err = 0f32;
            for (i, (ki, &t)) in ks.iter_mut().zip(targets).enumerate() {
                *ki = ((t / df).round() as i32).clamp(range.0, range.1);
                let w = weights.map_or(1.0, |w| w[i]);
                err = err.max(w * (df * *ki as f32 - t).abs());
            }
            if err < best.2 {
                best = (d, ks.clone(), err);
                if err == 0.0 {
                    return best;
                }
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A sign the range cannot express is clipped to 0 and does not set the step (a negative
    /// target used to make the step infinite for a range of `0..`).
    #[test]
    fn unreachable_signs_are_clipped() {
        let (d, k) = snap_two_level(&[-1.0, 2.0, 0.5], (0, 63), 6);
        assert!(d.is_finite() && d > 0.0 && d * 63.0 >= 2.0, "{d}");
        assert_eq!(k[0], 0);
        assert!(k[1] > 0 && k[2] > 0);
        assert_eq!(snap_two_level(&[-1.0, -2.0], (0, 63), 6), (0.0, vec![0, 0]));
        let (d, k, err) = fit_two_level(&[-1.0, 2.0], None, (0, 63), 6);
        assert!(
            d.to_f32() > 0.0 && k[0] == 0 && (err - 1.0).abs() < 1e-6,
            "{d} {k:?} {err}"
        );
    }

    proptest! {
        #[test]
        fn rounded_up_values_keep_their_bits(x in 1e-9f32..6e4, bits in 4u32..8) {
            let d = round_up_significant(x, bits);
            prop_assert!(d >= x);
            prop_assert!(d <= x * (1.0 + 2f32.powi(1 - bits as i32)) + 2f32.powi(-24));
            prop_assert_eq!(half::f16::from_f32(d).to_f32(), d);
            let max_k = (1i32 << (11 - bits)) - 1;
            for k in [1, 3, max_k] {
                let p = d * k as f32;
                if p <= 65504.0 {
                    prop_assert_eq!(half::f16::from_f32(p).to_f32(), p);
                }
            }
        }

        /// Snapped scales are f16 products `d · k_i`, and the writer's search finds an exact
        /// `d` for them, for every format's range and precision.
        #[test]
        fn snapped_targets_are_recovered_exactly(
            targets in proptest::collection::vec(-3.0f32..3.0, 8..17),
            fi in 0usize..5,
            scale_exp in -20i32..4,
        ) {
            let format = KQuant::ALL[fi];
            let (lo, hi) = format.scale_range();
            let targets: Vec<f32> = targets
                .iter()
                .map(|t| if lo == 0 { t.abs() } else { *t } * 2f32.powi(scale_exp))
                .collect();
            let (d, ks) = snap_two_level(&targets, (lo, hi), format.super_scale_bits());
            let snapped: Vec<f32> = ks.iter().map(|&k| d * k as f32).collect();
            for (&s, &k) in snapped.iter().zip(&ks) {
                prop_assert!(k >= lo && k <= hi);
                prop_assert_eq!(half::f16::from_f32(s).to_f32(), s);
            }
            // Each snapped value is within half a step of d of its target (no clipping).
            for (&s, &t) in snapped.iter().zip(&targets) {
                prop_assert!((s - t).abs() <= d * 0.5 * (1.0 + 1e-6) || (s.abs() == d && t.abs() < d));
            }
            let (d2, k2, err) = fit_two_level(&snapped, None, (lo, hi), format.super_scale_bits());
            prop_assert_eq!(err, 0.0);
            for (&k, &s) in k2.iter().zip(&snapped) {
                prop_assert_eq!(d2.to_f32() * k as f32, s);
            }
        }
    }

    #[test]
    fn unsnapped_targets_are_approximated_and_names_parse() {
        let t = [0.011f32, 0.013, 0.017, 0.0231, 0.0052, 0.0099, 0.03, 0.0007];
        let (d, k, err) = fit_two_level(&t, None, (0, 63), 5);
        assert!(err > 0.0 && err <= d.to_f32() * 0.5 + 1e-9, "{err}");
        assert_eq!(k.len(), 8);
        assert_eq!(KQuant::parse("Q4_K").unwrap(), KQuant::Q4K);
        assert!(KQuant::parse("q4_0").unwrap_err().contains("q2_k, q3_k"));
        let s = KQuant::Q4K.scheme();
        assert!(KQuant::Q4K.check_scheme(&s).is_ok());
        assert!(KQuant::Q6K
            .check_scheme(&s)
            .unwrap_err()
            .contains("bits = 6, group = 16"));
        assert_eq!(KQuant::Q5K.to_string(), "q5_k");
    }
}
