//! Every tier against the reference, on every format, over random shapes (proptest), with
//! tolerances derived from floating-point error bounds rather than picked by hand:
//!
//! - f32 tiers: any order of summing `K` products has error at most `γ_K · Σ|terms|`
//!   (Higham, *Accuracy and Stability of Numerical Algorithms*, §3.1; `γ_n = n·u/(1 − n·u)`,
//!   `u = 2⁻²⁴`). With the zero point taken out of the inner loop the terms are bounded by
//!   `B = Σ_k |s|·(|c_k| + |z|)·|x_k|`, so the tolerance is `γ_{K+8} · B` plus half an ulp of the
//!   result (the reference rounds its f64 sum once).
//! - the int8-activation tier adds the activation rounding, at most `Σ_k |w_k| · d_b / 2` with
//!   `d_b = max|x| / 127` over the block of 32 holding column `k`. That worst case is loose, so
//!   on products with many outputs the root-mean-square error is also held to 1.5× the value
//!   that independent rounding errors, uniform on `±d_b/2` (variance `d_b²/12`), predict.

use compress_kernels::{
    matmul, matmul_with, Activations, KernelError, QuantMatrix, ScaleLayout, Tier,
};
use half::f16;
use proptest::prelude::*;

/// A packed test weight with owned buffers.
struct Packed {
    bits: u8,
    shape: [usize; 2],
    layout: ScaleLayout,
    codes: Vec<u8>,
    scales: Vec<f16>,
    zeros: Option<Vec<f16>>,
}

impl Packed {
    fn view(&self) -> QuantMatrix<'_> {
        QuantMatrix::new(
            self.bits,
            self.shape,
            self.layout,
            &self.codes,
            &self.scales,
            self.zeros.as_deref(),
        )
        .unwrap()
    }
}

/// Small deterministic generator (SplitMix64), so shapes come from proptest and values from a seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
}

fn pack(bits: u8, codes: &[u8], k: usize) -> Vec<u8> {
    let rb = (k * bits as usize).div_ceil(8);
    let mut out = vec![0u8; codes.len() / k.max(1) * rb];
    for (r, row) in codes.chunks(k.max(1)).enumerate() {
        let dst = &mut out[r * rb..(r + 1) * rb];
        for (i, &c) in row.iter().enumerate() {
            let bit = i * bits as usize;
            let v = (c as u16) << (bit % 8);
            dst[bit / 8] |= v as u8;
            if bit % 8 + bits as usize > 8 {
                dst[bit / 8 + 1] |= (v >> 8) as u8;
            }
        }
    }
    out
}

fn make(bits: u8, [n, k]: [usize; 2], layout: ScaleLayout, asym: bool, seed: u64) -> Packed {
    let mut rng = Rng(seed);
    let max = (1u32 << bits) - 1;
    let codes: Vec<u8> = (0..n * k)
        .map(|_| (rng.next() % (max as u64 + 1)) as u8)
        .collect();
    let num_scales = match layout {
        ScaleLayout::PerTensor => 1,
        ScaleLayout::PerGroup { group_len } => n * k.div_ceil(group_len.min(k.max(1))),
    };
    let scales = (0..num_scales)
        .map(|_| f16::from_f32((rng.unit() * 2.0 - 1.0) * 0.05 + 1e-3))
        .collect();
    let zeros = asym.then(|| {
        (0..num_scales)
            .map(|_| f16::from_f32(rng.unit() * max as f32))
            .collect()
    });
    Packed {
        bits,
        shape: [n, k],
        layout,
        codes: pack(bits, &codes, k),
        scales,
        zeros,
    }
}

/// [`make`] with groups of `g` (`usize::MAX`: one per row).
fn grouped(bits: u8, shape: [usize; 2], g: usize, asym: bool, seed: u64) -> Packed {
    make(
        bits,
        shape,
        ScaleLayout::PerGroup { group_len: g },
        asym,
        seed,
    )
}

fn activations(m: usize, k: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng(seed ^ 0xabcdef);
    // Heavy-ish tails like real hidden states: a few large values among small ones.
    (0..m * k)
        .map(|_| {
            let v = rng.unit() * 2.0 - 1.0;
            if rng.next().is_multiple_of(32) {
                v * 20.0
            } else {
                v
            }
        })
        .collect()
}

/// The error bound of a tier's output `(i, n)` and, for int8 activations, the variance that
/// uniform activation rounding predicts (see the file docs).
fn tolerance(
    w: &QuantMatrix<'_>,
    x: &[f32],
    i: usize,
    n: usize,
    int8: bool,
    reference: f32,
) -> (f32, f64) {
    let k = w.in_features();
    let xr = &x[i * k..(i + 1) * k];
    let g = w.group_len();
    let u = f64::from(2f32.powi(-24));
    let gamma = (k + 8) as f64 * u / (1.0 - (k + 8) as f64 * u);
    let mut b = 0f64;
    let mut act = 0f64;
    let mut var = 0f64;
    for (col, &xv) in xr.iter().enumerate() {
        let (s, z) = w.scale_zero(n, col / g);
        let c = w.code(n, col) as f64;
        // Columns of full blocks of 32 inside a group are int8-quantized, one scale per block;
        // the tail is f32.
        let gs = col / g * g;
        let ge = (gs + g).min(k);
        let full_end = gs + (ge - gs) / 32 * 32;
        let d = if int8 && col < full_end {
            let bs = gs + (col - gs) / 32 * 32;
            xr[bs..bs + 32].iter().fold(0f32, |m, v| m.max(v.abs())) as f64 / 127.0
        } else {
            0.0
        };
        b += (s as f64).abs() * (c + (z as f64).abs()) * ((xv as f64).abs() + d);
        let wv = s as f64 * (c - z as f64);
        act += wv.abs() * d / 2.0;
        var += wv * wv * d * d / 12.0;
    }
    let tol =
        (gamma * b + act * 1.001 + reference.abs() as f64 * 2.0 * u) as f32 + f32::MIN_POSITIVE;
    (tol, var)
}

fn check_all_tiers(p: &Packed, m: usize, seed: u64) -> Result<(), TestCaseError> {
    let w = p.view();
    let [n, k] = w.shape();
    let x = activations(m, k, seed);
    let mut want = vec![0f32; m * n];
    matmul_with(Tier::Reference, &x, m, &w, &mut want).unwrap();
    for tier in Tier::ALL {
        if !tier.is_available() || tier.format_limit(&w).is_some() || tier == Tier::Reference {
            continue;
        }
        let mut got = vec![f32::NAN; m * n];
        matmul_with(tier, &x, m, &w, &mut got).unwrap();
        // The VNNI tier's GEMM path is int8 for groups of whole blocks, else the exact one.
        let int8 = compress_kernels::matmul::quantizes_activations(tier, &w, m);
        let (mut err2, mut var) = (0f64, 0f64);
        for i in 0..m {
            for j in 0..n {
                let (a, r) = (got[i * n + j], want[i * n + j]);
                let (tol, v) = tolerance(&w, &x, i, j, int8, r);
                err2 += ((a - r) as f64).powi(2);
                var += v;
                prop_assert!(
                    (a - r).abs() <= tol,
                    "{tier}, {}-bit, {:?}, asym {}, m {m} n {n} k {k}: y[{i},{j}] = {a}, reference {r}, tolerance {tol}",
                    p.bits, p.layout, p.zeros.is_some()
                );
            }
        }
        if int8 && m * n >= 256 {
            let (rms, predicted) = (
                (err2 / (m * n) as f64).sqrt(),
                (var / (m * n) as f64).sqrt(),
            );
            prop_assert!(
                rms <= 1.5 * predicted + 1e-6,
                "{tier}: RMS error {rms:e} vs {predicted:e} predicted by activation rounding"
            );
        }
    }
    Ok(())
}

fn layouts() -> impl Strategy<Value = ScaleLayout> {
    prop_oneof![
        Just(ScaleLayout::PerTensor),
        prop::sample::select(vec![32usize, 64, 128])
            .prop_map(|g| ScaleLayout::PerGroup { group_len: g }),
        (1usize..80).prop_map(|g| ScaleLayout::PerGroup { group_len: g }),
        Just(ScaleLayout::PerGroup {
            group_len: usize::MAX
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 160, ..ProptestConfig::default() })]

    /// Shapes include K and N that are not multiples of the block (32) or vector width (16).
    #[test]
    fn every_tier_matches_the_reference(
        bits in prop::sample::select(vec![2u8, 3, 4, 4, 5, 8, 8]),
        n in 1usize..40,
        k in 1usize..300,
        m in prop::sample::select(vec![1usize, 3, 8, 17]),
        layout in layouts(),
        asym in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let p = make(bits, [n, k], layout, asym, seed);
        check_all_tiers(&p, m, seed)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Shapes the VNNI tier's int8 GEMM runs (rows of whole blocks, groups of whole blocks or one
    /// per row), with every tile width it picks (1–4 vectors of 16 activation rows, a partial
    /// last one) and weight rows that are not a multiple of its chunk (48).
    #[test]
    fn int8_gemm_shapes_match_the_reference(
        bits in prop::sample::select(vec![4u8, 8]),
        n in prop::sample::select(vec![1usize, 5, 47, 48, 49, 100]),
        blocks in 1usize..12,
        m in prop::sample::select(vec![8usize, 16, 17, 33, 50, 64, 65, 130]),
        layout in prop_oneof![
            Just(ScaleLayout::PerTensor),
            prop::sample::select(vec![32usize, 64, 96, 128, usize::MAX])
                .prop_map(|g| ScaleLayout::PerGroup { group_len: g }),
        ],
        asym in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let p = make(bits, [n, 32 * blocks], layout, asym, seed);
        check_all_tiers(&p, m, seed)?;
    }
}

/// The int8 GEMM quantizes activations exactly as the GEMV does, so row by row the two differ
/// only in the order of their f32 sums: within twice the f32 summation bound of the file docs.
#[test]
fn int8_gemm_rows_match_the_int8_gemv() {
    if !Tier::Avx512Vnni.is_available() {
        eprintln!("skipped: this CPU has no AVX-512 VNNI");
        return;
    }
    for (bits, n, k, g, asym, m) in [
        (4, 100, 576, 128, false, 70),
        (4, 64, 1536, 32, true, 33),
        (8, 49, 256, usize::MAX, false, 17),
        (8, 30, 320, 64, true, 8),
    ] {
        let p = grouped(bits, [n, k], g, asym, 3 + k as u64);
        let w = p.view();
        assert!(compress_kernels::matmul::quantizes_activations(
            Tier::Avx512Vnni,
            &w,
            m
        ));
        let x = activations(m, k, 5);
        let mut gemm = vec![f32::NAN; m * n];
        matmul_with(Tier::Avx512Vnni, &x, m, &w, &mut gemm).unwrap();
        let mut want = vec![0f32; m * n];
        matmul_with(Tier::Reference, &x, m, &w, &mut want).unwrap();
        for i in 0..m {
            let mut gemv = vec![f32::NAN; n];
            matmul_with(Tier::Avx512Vnni, &x[i * k..(i + 1) * k], 1, &w, &mut gemv).unwrap();
            for j in 0..n {
                let (tol, _) = tolerance(&w, &x, i, j, false, want[i * n + j]);
                let (a, b) = (gemm[i * n + j], gemv[j]);
                assert!(
                    (a - b).abs() <= 2.0 * tol,
                    "{bits}-bit g{g} asym {asym}: y[{i},{j}] GEMM {a} vs GEMV {b} (tolerance {})",
                    2.0 * tol
                );
            }
        }
    }
}

/// Products large enough to be split across threads, at SmolLM2's row lengths (576 with groups
/// of 128 leaves a short last group of 64), at a 4096-wide row, and at rows of more than 128
/// blocks with a tail (the VNNI four-block loop computes its factors 128 blocks at a time; 5,000
/// columns are 156 blocks and 8 more, 4,170 are 130 blocks and 10 more).
#[test]
fn threaded_products_match_the_reference() {
    for (bits, n, k, g, asym, m) in [
        (4, 1536, 576, 128, false, 1),
        (4, 576, 1536, 32, true, 9),
        (8, 256, 4096, 4096, false, 1),
        (4, 64, 4096, 64, true, 16),
        (3, 300, 576, 128, true, 1),
        (2, 1536, 576, 64, true, 1),
        (2, 576, 1536, 32, false, 20),
        (4, 1536, 576, 128, false, 300),
        (8, 576, 1536, 1536, true, 64),
        (4, 40, 5000, 32, false, 1),
        (4, 40, 5000, 32, true, 1),
        (4, 40, 5000, 96, false, 1),
        (4, 40, 4170, 128, true, 1),
        (4, 40, 4170, usize::MAX, false, 1),
    ] {
        let p = grouped(bits, [n, k], g, asym, 7 + n as u64);
        check_all_tiers(&p, m, 11).unwrap();
    }
}

/// The dispatch picks a SIMD tier on CPUs that have one, and says which.
#[test]
fn dispatch_picks_the_simd_tier_this_cpu_has() {
    let p = make(
        4,
        [64, 256],
        ScaleLayout::PerGroup { group_len: 32 },
        false,
        1,
    );
    let w = p.view();
    let x = activations(1, 256, 2);
    let mut y = vec![0f32; 64];
    let ran = matmul(&x, 1, &w, &mut y).unwrap();
    assert_eq!(ran, Tier::select(&w, Activations::F32));
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            assert_eq!(ran, Tier::Avx512);
        } else if std::arch::is_x86_feature_detected!("avx2") {
            assert_eq!(ran, Tier::Avx2);
        }
        if Tier::Avx512Vnni.is_available() {
            assert_eq!(Tier::select(&w, Activations::Int8), Tier::Avx512Vnni);
        }
    }
    eprintln!("this CPU runs 4-bit products on the {ran} tier");
    // Formats the SIMD tiers do not cover go to the portable tier, visibly.
    let p3 = make(
        3,
        [8, 64],
        ScaleLayout::PerGroup { group_len: 32 },
        false,
        1,
    );
    assert_eq!(Tier::select(&p3.view(), Activations::F32), Tier::Portable);
    // 2-bit codes run the f32 SIMD tiers (AVX2 loops on AVX-512 CPUs), not the VNNI one.
    let p2 = make(2, [8, 64], ScaleLayout::PerGroup { group_len: 32 }, true, 1);
    #[cfg(target_arch = "x86_64")]
    if Tier::Avx512.is_available() {
        assert_eq!(Tier::select(&p2.view(), Activations::F32), Tier::Avx512);
        assert_eq!(Tier::select(&p2.view(), Activations::Int8), Tier::Avx512);
    }
    assert!(Tier::Avx512Vnni.format_limit(&p2.view()).is_some());
    let p2_odd = make(2, [8, 64], ScaleLayout::PerGroup { group_len: 6 }, true, 1);
    assert!(Tier::Avx2.format_limit(&p2_odd.view()).is_some());
    let odd = make(
        4,
        [8, 64],
        ScaleLayout::PerGroup { group_len: 33 },
        false,
        1,
    );
    assert!(Tier::Avx2.format_limit(&odd.view()).is_some());
}

#[test]
fn bad_calls_are_errors() {
    let p = make(
        4,
        [8, 64],
        ScaleLayout::PerGroup { group_len: 32 },
        false,
        1,
    );
    let w = p.view();
    let mut y = vec![0f32; 8];
    assert!(matches!(
        matmul(&[0.0; 63], 1, &w, &mut y),
        Err(KernelError::Length {
            expected: 64,
            found: 63,
            ..
        })
    ));
    assert!(matches!(
        matmul(&[0.0; 64], 1, &w, &mut y[..7]),
        Err(KernelError::Length { .. })
    ));
    let p3 = make(
        3,
        [8, 64],
        ScaleLayout::PerGroup { group_len: 32 },
        false,
        1,
    );
    assert!(matches!(
        matmul_with(Tier::Avx512, &[0.0; 64], 1, &p3.view(), &mut y),
        Err(KernelError::Unsupported { .. })
    ));
    for tier in Tier::ALL.into_iter().filter(|t| !t.is_available()) {
        assert!(matches!(
            matmul_with(tier, &[0.0; 64], 1, &w, &mut y),
            Err(KernelError::Unsupported { .. })
        ));
    }
}
