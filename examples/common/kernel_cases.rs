//! Shapes and formats the kernel benchmarks share (`benches/kernels.rs` and the
//! `kernel_speed` example): the shapes, seeded weights quantized with RTN.
//!
//! Speed does not depend on the weights' values, so a seeded Gaussian-like matrix stands in for
//! a real layer (SmolLM2's own 576×1536 and 1536×576, and the 4096-wide llama-7B shapes).
#![allow(dead_code)] // each user takes a subset

use compress::core::packed::{PackedWeight, QuantScheme, Symmetry};
use compress::kernels::{Activations, QuantMatrix, Tier};
use compress::quant::grid::GridConfig;
use compress::quant::rtn::quantize_rtn;

/// `(K, N)`: in_features × out_features.
pub const SHAPES: [(usize, usize); 4] = [(576, 1536), (1536, 576), (4096, 4096), (4096, 11008)];
/// Activation rows: decode, a small batch, a prefill.
pub const ROWS: [usize; 3] = [1, 16, 512];

/// A packed format the kernels run.
#[derive(Clone, Copy, Debug)]
pub struct Format {
    /// Short name for tables.
    pub name: &'static str,
    /// Code width.
    pub bits: u8,
    /// Group size (`None` = per channel).
    pub group: Option<usize>,
    /// Zero points stored.
    pub symmetry: Symmetry,
}

/// int8 per channel, int4 groups of 32 symmetric (= Q4_0), int4 groups of 128 asymmetric (GPTQ's
/// usual layout), int2 groups of 64 asymmetric.
pub const FORMATS: [Format; 4] = [
    Format {
        name: "int8",
        bits: 8,
        group: None,
        symmetry: Symmetry::Symmetric,
    },
    Format {
        name: "int4-g32",
        bits: 4,
        group: Some(32),
        symmetry: Symmetry::Symmetric,
    },
    Format {
        name: "int4-g128a",
        bits: 4,
        group: Some(128),
        symmetry: Symmetry::Asymmetric,
    },
    Format {
        name: "int2-g64a",
        bits: 2,
        group: Some(64),
        symmetry: Symmetry::Asymmetric,
    },
];

/// Seeded values in about `[-1, 1]` (SplitMix64; the sum of two uniforms, so bell-shaped).
pub fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    let mut next = move || {
        s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32
    };
    (0..len).map(|_| next() + next() - 1.0).collect()
}

/// An `[n, k]` weight quantized with RTN in `format`.
pub fn packed(format: Format, n: usize, k: usize, seed: u64) -> PackedWeight {
    let w = values(n * k, seed);
    let scheme = QuantScheme::new(format.bits, format.group, format.symmetry).unwrap();
    quantize_rtn("bench", &w, n, k, &scheme, &GridConfig::default(), None).unwrap()
}

/// `packed`'s codes of an int4 g32 weight in the 2:4-sparse layout, keeping the two
/// largest-magnitude of every 4 seeded values (ties broken by position); any 2:4 pattern times
/// the same.
pub fn sparse24(p: &PackedWeight, seed: u64) -> compress::kernels::sparse24::Sparse24 {
    let [n, k] = p.shape();
    let vals = values(n * k, seed);
    let w = p.kernel_matrix().expect("an unpruned packed weight");
    compress::kernels::sparse24::Sparse24::from_quant(&w, |r, c| {
        let b = r * k + c / 4 * 4;
        let mine = (vals[r * k + c].abs(), r * k + c);
        (b..b + 4).filter(|&j| (vals[j].abs(), j) > mine).count() < 2
    })
    .expect("a 2:4 pattern of a 4-bit weight with rows and groups of multiples of 8")
}

/// The tiers worth timing for `w` on this CPU: the one f32 activations select and, on VNNI
/// CPUs, the one int8 activations select — once, when both are the same (2-bit codes, which
/// the VNNI tier does not run).
pub fn tiers_to_time(w: &QuantMatrix<'_>) -> Vec<Tier> {
    let mut tiers = vec![Tier::select(w, Activations::F32)];
    if Tier::Avx512Vnni.is_available() {
        tiers.push(Tier::select(w, Activations::Int8));
    }
    tiers.dedup();
    tiers
}
