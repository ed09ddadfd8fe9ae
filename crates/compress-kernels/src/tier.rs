//! Kernel tiers and their run-time selection (CPU feature detection, never `target-cpu=native`).

use std::fmt;

use crate::matrix::QuantMatrix;

/// One implementation of the packed matmul.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tier {
    /// Scalar, bit-by-bit, f64 accumulation: the yardstick.
    Reference,
    /// Plain Rust, any bit width and group size.
    Portable,
    /// AVX2 + FMA + F16C, f32 activations; 2-, 4- and 8-bit codes.
    Avx2,
    /// AVX-512F (and the AVX2 tier's features), f32 activations; 4- and 8-bit codes (2-bit
    /// codes run the AVX2 loops).
    Avx512,
    /// AVX-512 VNNI with activations quantized to int8 per block of 32 (llama.cpp's CPU
    /// precision); 4- and 8-bit codes. Only chosen when [`Activations::Int8`] is asked for.
    Avx512Vnni,
}

/// The precision the activations are multiplied at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Activations {
    /// f32: the result equals the dequantized product up to f32 rounding.
    #[default]
    F32,
    /// int8 per block of 32 on CPUs with VNNI (faster; adds the activation rounding error).
    Int8,
}

impl Tier {
    /// Every tier, slowest first.
    pub const ALL: [Tier; 5] = [
        Tier::Reference,
        Tier::Portable,
        Tier::Avx2,
        Tier::Avx512,
        Tier::Avx512Vnni,
    ];

    /// A short name (`reference`, `portable`, `avx2`, `avx512`, `avx512-vnni`).
    pub fn name(self) -> &'static str {
        match self {
            Tier::Reference => "reference",
            Tier::Portable => "portable",
            Tier::Avx2 => "avx2",
            Tier::Avx512 => "avx512",
            Tier::Avx512Vnni => "avx512-vnni",
        }
    }

    /// Whether this CPU can run the tier (detected at run time).
    pub fn is_available(self) -> bool {
        match self {
            Tier::Reference | Tier::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Tier::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                    && std::arch::is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Tier::Avx512 => {
                std::arch::is_x86_feature_detected!("avx512f") && Tier::Avx2.is_available()
            }
            #[cfg(target_arch = "x86_64")]
            Tier::Avx512Vnni => {
                std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                    && std::arch::is_x86_feature_detected!("avx512vnni")
                    && Tier::Avx2.is_available()
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// Why this tier cannot run `w`, if it cannot (format limits, not CPU features).
    pub fn format_limit(self, w: &QuantMatrix<'_>) -> Option<String> {
        match self {
            Tier::Reference | Tier::Portable => None,
            Tier::Avx512Vnni if w.bits() == 2 => {
                Some("2-bit codes (the VNNI tier takes 4 and 8)".to_string())
            }
            _ if !matches!(w.bits(), 2 | 4 | 8) => {
                Some(format!("{}-bit codes (2, 4 and 8 only)", w.bits()))
            }
            _ if w.bits() < 8
                && w.groups_per_row() > 1
                && !w.group_len().is_multiple_of(8 / w.bits() as usize) =>
            {
                Some(format!(
                    "{}-bit codes in groups of {} (groups must start on a byte)",
                    w.bits(),
                    w.group_len()
                ))
            }
            _ => None,
        }
    }

    /// Whether the tier reads activations block-permuted ([`crate::prepare`]): 4-bit codes on
    /// every SIMD tier, 2-bit codes on the f32 SIMD tiers.
    pub(crate) fn permutes(self, bits: u8) -> bool {
        match bits {
            4 => matches!(self, Tier::Avx2 | Tier::Avx512 | Tier::Avx512Vnni),
            2 => matches!(self, Tier::Avx2 | Tier::Avx512),
            _ => false,
        }
    }

    /// The fastest tier that runs `w` on this CPU at the asked activation precision. With
    /// [`Activations::Int8`] on a CPU without VNNI the f32 tiers are used (more precise).
    pub fn select(w: &QuantMatrix<'_>, activations: Activations) -> Tier {
        let order: &[Tier] = match activations {
            Activations::Int8 => &[Tier::Avx512Vnni, Tier::Avx512, Tier::Avx2],
            Activations::F32 => &[Tier::Avx512, Tier::Avx2],
        };
        order
            .iter()
            .copied()
            .find(|t| t.is_available() && t.format_limit(w).is_none())
            .unwrap_or(Tier::Portable)
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
