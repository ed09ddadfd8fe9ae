//! Sparsity masks and patterns shared by the pruners (compress-prune), the quantizers that must
//! respect a mask (GPTQ after pruning) and the packed layout.
//!
//! A [`SparsityMask`] marks which weights of an `[out, in]` matrix are kept (one bit per weight,
//! row-major, 1 = kept). A pruned weight is exactly zero in every storage that carries the mask:
//! a dense layer's values, and a packed layer's dequantized values whatever its code.
//!
//! A [`SparsityPattern`] says what a pruner must produce:
//!
//! - **unstructured** at a fraction `s`: each comparison group the method uses (a row for Wanda,
//!   the whole matrix for magnitude, a block of columns for SparseGPT) prunes its share by
//!   cumulative rounding ([`quota`]: `round(s · end) − round(s · start)` over the groups laid end
//!   to end), so every group is within one weight of `s · count` and the layer total is exactly
//!   `round(s · out · in)` — the requested sparsity to within one weight, whatever the group
//!   sizes;
//! - **N:M** (NVIDIA's convention, as in "2:4"): at most `N` weights kept in every run of `M`
//!   consecutive weights of a row, exactly `M − N` pruned. When `M` does not divide a row, the
//!   row's last, shorter run of `L` weights prunes `round((M − N) · L / M)`.

use std::fmt;

/// One bit per weight of an `[out, in]` matrix, row-major; a set bit means the weight is kept.
#[derive(Clone, PartialEq, Eq)]
pub struct SparsityMask {
    out_features: usize,
    in_features: usize,
    words: Vec<u64>,
}

impl fmt::Debug for SparsityMask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SparsityMask([{}, {}], {:.2}% pruned)",
            self.out_features,
            self.in_features,
            100.0 * self.sparsity()
        )
    }
}

impl SparsityMask {
    /// A mask that keeps every weight.
    pub fn all_kept(out_features: usize, in_features: usize) -> Self {
        let n = out_features * in_features;
        let mut words = vec![u64::MAX; n.div_ceil(64)];
        if !n.is_multiple_of(64) {
            if let Some(last) = words.last_mut() {
                *last = (1u64 << (n % 64)) - 1;
            }
        }
        Self {
            out_features,
            in_features,
            words,
        }
    }

    /// A mask from one flag per weight (row-major, `true` = kept).
    ///
    /// # Panics
    /// If `kept.len() != out · in`.
    pub fn from_kept(out_features: usize, in_features: usize, kept: &[bool]) -> Self {
        assert_eq!(
            kept.len(),
            out_features * in_features,
            "one flag per weight"
        );
        let mut words = vec![0u64; kept.len().div_ceil(64)];
        for (i, _) in kept.iter().enumerate().filter(|(_, &k)| k) {
            words[i / 64] |= 1 << (i % 64);
        }
        Self {
            out_features,
            in_features,
            words,
        }
    }

    /// `[out_features, in_features]`.
    pub fn shape(&self) -> [usize; 2] {
        [self.out_features, self.in_features]
    }

    /// Whether the weight at row-major index `i` is kept.
    #[inline]
    pub fn is_kept_flat(&self, i: usize) -> bool {
        self.words[i / 64] >> (i % 64) & 1 == 1
    }

    /// Whether weight `(row, col)` is kept.
    #[inline]
    pub fn is_kept(&self, row: usize, col: usize) -> bool {
        self.is_kept_flat(row * self.in_features + col)
    }

    /// Marks weight `(row, col)` as pruned.
    #[inline]
    pub fn prune(&mut self, row: usize, col: usize) {
        let i = row * self.in_features + col;
        self.words[i / 64] &= !(1 << (i % 64));
    }

    /// Number of pruned weights.
    pub fn pruned(&self) -> usize {
        let kept: usize = self.words.iter().map(|w| w.count_ones() as usize).sum();
        self.out_features * self.in_features - kept
    }

    /// Pruned weights in row `row`.
    pub fn pruned_in_row(&self, row: usize) -> usize {
        (0..self.in_features)
            .filter(|&c| !self.is_kept(row, c))
            .count()
    }

    /// Fraction of weights pruned (0 for an empty matrix).
    pub fn sparsity(&self) -> f64 {
        let n = self.out_features * self.in_features;
        if n == 0 {
            0.0
        } else {
            self.pruned() as f64 / n as f64
        }
    }

    /// Sets every pruned weight of `w` (row-major `[out, in]`) to zero.
    ///
    /// # Panics
    /// If `w` has the wrong length.
    pub fn apply(&self, w: &mut [f32]) {
        assert_eq!(w.len(), self.out_features * self.in_features);
        for (i, v) in w.iter_mut().enumerate() {
            if !self.is_kept_flat(i) {
                *v = 0.0;
            }
        }
    }

    /// The weights kept by both masks (a weight pruned once stays pruned).
    ///
    /// # Panics
    /// If the shapes differ.
    pub fn intersect(&self, other: &Self) -> Self {
        assert_eq!(self.shape(), other.shape(), "mask shapes differ");
        Self {
            words: self
                .words
                .iter()
                .zip(&other.words)
                .map(|(a, b)| a & b)
                .collect(),
            ..self.clone()
        }
    }

    /// Whether every full run of `m` consecutive weights of every row keeps at most `n`.
    pub fn satisfies_n_m(&self, n: usize, m: usize) -> bool {
        if m == 0 {
            return false;
        }
        (0..self.out_features).all(|r| {
            (0..self.in_features / m)
                .all(|g| (g * m..(g + 1) * m).filter(|&c| self.is_kept(r, c)).count() <= n)
        })
    }

    /// Bytes of the bitmap when stored: `ceil(out · in / 8)`.
    pub fn storage_bytes(&self) -> usize {
        (self.out_features * self.in_features).div_ceil(8)
    }

    /// The bitmap, 64 weights per word, weight `i` at bit `i % 64` of word `i / 64`.
    pub fn words(&self) -> &[u64] {
        &self.words
    }

    /// A mask from its bitmap words (as [`Self::words`] gives them, e.g. read back from a file).
    /// Fails, saying why, when the word count does not match the shape or bits past the last
    /// weight are set.
    pub fn from_words(
        out_features: usize,
        in_features: usize,
        words: Vec<u64>,
    ) -> Result<Self, String> {
        let n = out_features * in_features;
        if words.len() != n.div_ceil(64) {
            return Err(format!(
                "{} bitmap words for a [{out_features}, {in_features}] mask (expected {})",
                words.len(),
                n.div_ceil(64)
            ));
        }
        if !n.is_multiple_of(64) && words.last().is_some_and(|&w| w >> (n % 64) != 0) {
            return Err("bits set past the last weight of the mask".into());
        }
        Ok(Self {
            out_features,
            in_features,
            words,
        })
    }
}

/// What a pruner must produce.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SparsityPattern {
    /// A fraction of the weights in `[0, 1)`, anywhere.
    Unstructured(f64),
    /// At most `n` kept in every `m` consecutive weights of a row.
    NM {
        /// Weights kept per run.
        n: usize,
        /// Run length.
        m: usize,
    },
}

impl SparsityPattern {
    /// Checks the parameters, naming the bad one.
    pub fn validate(&self) -> Result<(), String> {
        match *self {
            SparsityPattern::Unstructured(s) => {
                if !(0.0..1.0).contains(&s) {
                    return Err(format!("sparsity = {s}: must lie in [0, 1)"));
                }
            }
            SparsityPattern::NM { n, m } => {
                if m == 0 || n == 0 || n >= m || m > 64 {
                    return Err(format!(
                        "{n}:{m}: N:M needs 1 ≤ N < M ≤ 64 (N kept in every M weights)"
                    ));
                }
            }
        }
        Ok(())
    }

    /// The fraction of weights this pattern prunes.
    pub fn target_sparsity(&self) -> f64 {
        match *self {
            SparsityPattern::Unstructured(s) => s,
            SparsityPattern::NM { n, m } => (m - n) as f64 / m as f64,
        }
    }

    /// A short tag for method names: `50` for 50%, `2of4` for 2:4.
    pub fn tag(&self) -> String {
        match *self {
            SparsityPattern::Unstructured(s) => format!("{}", (s * 1000.0).round() / 10.0),
            SparsityPattern::NM { n, m } => format!("{n}of{m}"),
        }
    }
}

/// Weights to prune among positions `start..end` of a sequence of comparison groups laid end to
/// end, at sparsity `s`: `round(s · end) − round(s · start)`, so the counts of consecutive groups
/// add up to `round(s · total)` exactly.
pub fn quota(s: f64, start: usize, end: usize) -> usize {
    let r = |x: usize| (s * x as f64).round() as usize;
    r(end) - r(start)
}

/// Weights pruned in a run of `len` weights under N:M (`m − n` for a full run).
pub fn n_m_quota(n: usize, m: usize, len: usize) -> usize {
    if len >= m {
        m - n
    } else {
        (((m - n) * len) as f64 / m as f64).round() as usize
    }
}

/// The indices of the `k` smallest `scores` (ties go to the lower index; NaN counts as largest),
/// appended to `out` in no particular order. Deterministic.
pub fn lowest_k(scores: &[f32], k: usize, out: &mut Vec<usize>) {
    let k = k.min(scores.len());
    if k == 0 {
        return;
    }
    let key = |i: usize| {
        let s = scores[i];
        (if s.is_nan() { f32::INFINITY } else { s }, i)
    };
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    if k < idx.len() {
        idx.select_nth_unstable_by(k - 1, |&a, &b| {
            let (sa, ia) = key(a);
            let (sb, ib) = key(b);
            sa.total_cmp(&sb).then(ia.cmp(&ib))
        });
    }
    out.extend_from_slice(&idx[..k]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn mask_bits_counts_and_apply() {
        let mut m = SparsityMask::all_kept(3, 5);
        assert_eq!(m.pruned(), 0);
        m.prune(0, 1);
        m.prune(2, 4);
        assert_eq!(m.pruned(), 2);
        assert!(!m.is_kept(0, 1) && m.is_kept(0, 0) && !m.is_kept(2, 4));
        assert_eq!(m.pruned_in_row(2), 1);
        let mut w = vec![1f32; 15];
        m.apply(&mut w);
        assert_eq!(w.iter().filter(|&&v| v == 0.0).count(), 2);
        assert_eq!(w[1], 0.0);
        let flags: Vec<bool> = (0..15).map(|i| m.is_kept_flat(i)).collect();
        assert_eq!(SparsityMask::from_kept(3, 5, &flags), m);
        let mut other = SparsityMask::all_kept(3, 5);
        other.prune(1, 1);
        assert_eq!(m.intersect(&other).pruned(), 3);
        assert_eq!(m.storage_bytes(), 2);
        assert_eq!(SparsityMask::from_words(3, 5, m.words().to_vec()), Ok(m));
        assert!(SparsityMask::from_words(3, 5, vec![]).is_err());
        assert!(SparsityMask::from_words(3, 5, vec![1 << 15]).is_err());
    }

    #[test]
    fn n_m_check_and_quotas() {
        // Row of 8: prune columns 0,1 and 5,6 → 2:4 holds; prune only column 0 → it does not.
        let mut m = SparsityMask::all_kept(1, 8);
        for c in [0, 1, 5, 6] {
            m.prune(0, c);
        }
        assert!(m.satisfies_n_m(2, 4));
        let mut half = SparsityMask::all_kept(1, 8);
        half.prune(0, 0);
        assert!(!half.satisfies_n_m(2, 4));
        assert_eq!(n_m_quota(2, 4, 4), 2);
        assert_eq!(n_m_quota(4, 8, 4), 2);
        assert_eq!(n_m_quota(2, 4, 1), 1); // round(0.5) = 1 (away from zero)
        assert!(SparsityPattern::NM { n: 4, m: 4 }.validate().is_err());
        assert!(SparsityPattern::Unstructured(1.0).validate().is_err());
        assert_eq!(SparsityPattern::NM { n: 2, m: 4 }.target_sparsity(), 0.5);
        assert_eq!(SparsityPattern::Unstructured(0.5).tag(), "50");
    }

    #[test]
    fn lowest_k_breaks_ties_by_index() {
        let s = [3.0f32, 1.0, 1.0, f32::NAN, 0.5, 1.0];
        let mut out = Vec::new();
        lowest_k(&s, 3, &mut out);
        out.sort();
        assert_eq!(out, vec![1, 2, 4]);
        out.clear();
        lowest_k(&s, 10, &mut out);
        assert_eq!(out.len(), 6);
    }

    proptest! {
        #[test]
        fn quotas_add_up_exactly(s in 0.0f64..0.99, sizes in proptest::collection::vec(1usize..300, 1..20)) {
            let mut start = 0;
            let mut total = 0;
            for len in &sizes {
                total += quota(s, start, start + len);
                start += len;
            }
            prop_assert_eq!(total, (s * start as f64).round() as usize);
        }

        #[test]
        fn from_kept_round_trips(flags in proptest::collection::vec(any::<bool>(), 0..200)) {
            let n = flags.len();
            let m = SparsityMask::from_kept(1, n, &flags);
            prop_assert_eq!(m.pruned(), flags.iter().filter(|&&k| !k).count());
            for (i, &k) in flags.iter().enumerate() {
                prop_assert_eq!(m.is_kept_flat(i), k);
            }
            let full = SparsityMask::all_kept(1, n);
            prop_assert_eq!(full.pruned(), 0);
        }
    }
}
