//! Fused grouped-query attention on the CPU: `softmax(Q Kᵀ · scale + mask) V` without the
//! `[heads, queries, keys]` score tensor.
//!
//! The unfused form allocates every head's full score matrix (at 2048 tokens, 16 MiB per head
//! and layer), writes a large negative value into the blocked half, exponentiates it and
//! multiplies zeros. Here threads take `(batch row, head, block of 64 queries)` tasks; a task
//! multiplies its queries with only the keys some of them may see (for a causal mask, the keys
//! up to the block's last query), with faer's GEMM, into a cache-resident score block; takes
//! each row's softmax over its visible keys ([`crate::vexp`]'s vectorized `exp`, sums in f32);
//! and multiplies the probabilities with the same keys' values (GEMM again). The result equals
//! the unfused computation up to f32 rounding (tested against a scalar f64 reference).
//!
//! Grouped-query attention (Ainslie et al. 2023): query head `h` reads key/value head
//! `h / (heads / kv_heads)`.
//!
//! ```
//! use compress_kernels::attention::{attention, AttentionShape};
//!
//! // One sequence, 2 query heads sharing 1 key/value head, 3 tokens, head width 2, causal.
//! let s = AttentionShape { batch: 1, heads: 2, kv_heads: 1, queries: 3, keys: 3, head_dim: 2 };
//! let q = vec![1.0f32; 2 * 3 * 2]; // [batch, heads, queries, head_dim]
//! let k = vec![0.0f32; 3 * 2]; // [batch, kv_heads, keys, head_dim]
//! let v: Vec<f32> = vec![1.0, 0.0, 0.0, 1.0, 1.0, 1.0];
//! let blocked: Vec<bool> = (0..3).flat_map(|i| (0..3).map(move |j| j > i)).collect();
//! let mut out = vec![0.0f32; 3 * 2 * 2]; // [batch, queries, heads, head_dim]
//! attention(&s, &q, &k, &v, Some(&blocked), 1.0, &mut out)?;
//! // Equal scores: query 1 averages values 0 and 1, query 2 all three.
//! assert_eq!(&out[4..6], &[0.5, 0.5]);
//! assert!((out[8] - 2.0 / 3.0).abs() < 1e-6 && (out[9] - 2.0 / 3.0).abs() < 1e-6);
//! # Ok::<(), compress_kernels::KernelError>(())
//! ```

use faer::linalg::matmul::matmul as faer_matmul;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

use crate::matrix::KernelError;
use crate::vexp::exp_in_place;

/// Queries per task: a `64 × keys` score block is 512 KiB at 2048 keys (fits L2).
const QUERY_BLOCK: usize = 64;

/// Sizes of one attention call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionShape {
    /// Sequences in the batch.
    pub batch: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (divides `heads`).
    pub kv_heads: usize,
    /// Query positions per sequence.
    pub queries: usize,
    /// Key positions per sequence (cached keys included).
    pub keys: usize,
    /// Width of one head.
    pub head_dim: usize,
}

impl AttentionShape {
    fn check(
        &self,
        q: usize,
        k: usize,
        v: usize,
        mask: Option<usize>,
        out: usize,
    ) -> Result<(), KernelError> {
        let s = self;
        if s.kv_heads == 0 || !s.heads.is_multiple_of(s.kv_heads) || s.keys == 0 || s.head_dim == 0
        {
            return Err(KernelError::Shape(format!(
                "attention with {} query heads over {} key/value heads, {} keys and heads of {}",
                s.heads, s.kv_heads, s.keys, s.head_dim
            )));
        }
        let want = [
            (
                "attention queries",
                q,
                s.batch * s.heads * s.queries * s.head_dim,
            ),
            (
                "attention keys",
                k,
                s.batch * s.kv_heads * s.keys * s.head_dim,
            ),
            (
                "attention values",
                v,
                s.batch * s.kv_heads * s.keys * s.head_dim,
            ),
            (
                "attention output",
                out,
                s.batch * s.queries * s.heads * s.head_dim,
            ),
        ];
        let mask_want = mask.map(|m| ("attention mask", m, s.batch * s.queries * s.keys));
        for (what, got, expected) in want.into_iter().chain(mask_want) {
            if got != expected {
                return Err(KernelError::Length {
                    what,
                    expected,
                    found: got,
                });
            }
        }
        Ok(())
    }
}

/// How `q`, `k` and `v` are laid out (row-major).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QkvLayout {
    /// `q` `[batch, heads, queries, head_dim]`, `k` and `v` `[batch, kv_heads, keys,
    /// head_dim]`: each head's rows contiguous.
    #[default]
    HeadMajor,
    /// `q` `[batch, queries, heads, head_dim]`, `k` and `v` `[batch, keys, kv_heads,
    /// head_dim]`: what the projections produce, read in place with a row stride.
    TokenMajor,
}

/// `out = softmax(Q Kᵀ · scale, blocked keys excluded) · V` per head.
///
/// Layouts (row-major): `q` `[batch, heads, queries, head_dim]`; `k` and `v` `[batch, kv_heads,
/// keys, head_dim]`; `blocked` `[batch, queries, keys]`, true where a query must not see a key
/// (shared by every head; `None`: every query sees every key); `out` `[batch, queries, heads,
/// head_dim]` — the heads side by side, the input of the output projection. A query that may
/// see no key at all (padding) gets the uniform average of every value, as a softmax over equal
/// blocked scores would give.
pub fn attention(
    shape: &AttentionShape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    blocked: Option<&[bool]>,
    scale: f32,
    out: &mut [f32],
) -> Result<(), KernelError> {
    attention_in(shape, QkvLayout::HeadMajor, q, k, v, blocked, scale, out)
}

/// [`attention`] with `q`, `k` and `v` in `layout` (the output is always `[batch, queries,
/// heads, head_dim]`).
#[allow(clippy::too_many_arguments)]
pub fn attention_in(
    shape: &AttentionShape,
    layout: QkvLayout,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    blocked: Option<&[bool]>,
    scale: f32,
    out: &mut [f32],
) -> Result<(), KernelError> {
    shape.check(
        q.len(),
        k.len(),
        v.len(),
        blocked.map(<[bool]>::len),
        out.len(),
    )?;
    let AttentionShape {
        batch,
        heads,
        kv_heads,
        queries,
        keys,
        head_dim: d,
    } = *shape;
    let group = heads / kv_heads;
    let blocks = queries.div_ceil(QUERY_BLOCK);
    let tasks = batch * heads * blocks;
    let (qr, kr) = (
        Strides::new(layout, heads, queries, d),
        Strides::new(layout, kv_heads, keys, d),
    );
    // Each task returns its `rows × head_dim` output block; they are scattered afterwards.
    let run = |task: usize| -> (usize, Vec<f32>) {
        let (bh, blk) = (task / blocks, task % blocks);
        let (b, h) = (bh / heads, bh % heads);
        let g = h / group;
        let q0 = blk * QUERY_BLOCK;
        let rows = QUERY_BLOCK.min(queries - q0);
        let qs = qr.rows(q, b, h, q0, rows);
        let mask_rows = blocked.map(|m| &m[(b * queries + q0) * keys..][..rows * keys]);
        // The keys any query of the block sees: [lo, hi).
        let (lo, hi) = match mask_rows {
            None => (0, keys),
            Some(m) => visible_span(m, keys),
        };
        let span = hi - lo;
        let mut scores = vec![0f32; rows * span];
        faer_matmul(
            MatMut::from_row_major_slice_mut(&mut scores, rows, span),
            Accum::Replace,
            qs,
            kr.rows(k, b, g, lo, span).transpose(),
            scale,
            Par::Seq,
        );
        let mut unseeing = Vec::new();
        for (i, row) in scores.chunks_exact_mut(span).enumerate() {
            let seen = mask_rows.map(|m| &m[i * keys + lo..][..span]);
            if !softmax_row(row, seen) {
                unseeing.push(i);
            }
        }
        let mut o = vec![0f32; rows * d];
        faer_matmul(
            MatMut::from_row_major_slice_mut(&mut o, rows, d),
            Accum::Replace,
            MatRef::from_row_major_slice(&scores, rows, span),
            kr.rows(v, b, g, lo, span),
            1.0f32,
            Par::Seq,
        );
        // Rows that see no key (their visible keys cannot lie outside the span): the uniform
        // average over all keys.
        for i in unseeing {
            mean_rows(kr.rows(v, b, g, 0, keys), &mut o[i * d..][..d]);
        }
        (task, o)
    };
    let results: Vec<(usize, Vec<f32>)> = if tasks == 1 {
        vec![run(0)]
    } else {
        (0..tasks).into_par_iter().map(run).collect()
    };
    for (task, o) in results {
        let (bh, blk) = (task / blocks, task % blocks);
        let (b, h) = (bh / heads, bh % heads);
        let q0 = blk * QUERY_BLOCK;
        for (i, orow) in o.chunks_exact(d).enumerate() {
            let dst = ((b * queries + q0 + i) * heads + h) * d;
            out[dst..dst + d].copy_from_slice(orow);
        }
    }
    Ok(())
}

/// The smallest key range `[lo, hi)` holding every visible key of the rows of `m` (`rows ×
/// keys`); empty (`lo = hi`) when none is visible, widened to all keys then (the uniform case).
fn visible_span(m: &[bool], keys: usize) -> (usize, usize) {
    let (mut lo, mut hi) = (keys, 0);
    for row in m.chunks_exact(keys) {
        if let (Some(first), Some(last)) =
            (row.iter().position(|&b| !b), row.iter().rposition(|&b| !b))
        {
            lo = lo.min(first);
            hi = hi.max(last + 1);
        }
    }
    if lo >= hi {
        (0, keys)
    } else {
        (lo, hi)
    }
}

/// Softmax of one score row in place; `blocked[j]` true excludes key `j` (probability 0).
/// Returns false, with the row zeroed, when every key is blocked.
fn softmax_row(row: &mut [f32], blocked: Option<&[bool]>) -> bool {
    if let Some(m) = blocked {
        for (x, &b) in row.iter_mut().zip(m) {
            if b {
                *x = f32::NEG_INFINITY;
            }
        }
    }
    let max = lanes_max(row);
    if max == f32::NEG_INFINITY {
        // No visible key in this row (a padding query): its output is replaced afterwards.
        row.fill(0.0);
        return false;
    }
    for x in row.iter_mut() {
        *x -= max; // −∞ stays −∞, clamps to exp(−87) below, and is zeroed
    }
    exp_in_place(row);
    if let Some(m) = blocked {
        for (x, &b) in row.iter_mut().zip(m) {
            if b {
                *x = 0.0;
            }
        }
    }
    let inv = 1.0 / lanes_sum(row);
    for x in row.iter_mut() {
        *x *= inv;
    }
    true
}

/// Lanes of the reductions below: independent accumulators let the compiler vectorize them
/// (a single running f32 sum or max is a serial dependency chain).
const LANES: usize = 16;

/// Largest value of `xs` (−∞ when empty).
fn lanes_max(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a = if x > *a { x } else { *a };
        }
    }
    acc.iter()
        .chain(tail)
        .copied()
        .fold(f32::NEG_INFINITY, f32::max)
}

/// Sum of `xs`, accumulated in f32 over [`LANES`] partial sums.
fn lanes_sum(xs: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += x;
        }
    }
    acc.iter().sum::<f32>() + tail.iter().sum::<f32>()
}

/// `out = mean over rows of x` (`x` is `rows × d`).
fn mean_rows(x: MatRef<'_, f32>, out: &mut [f32]) {
    out.fill(0.0);
    for r in 0..x.nrows() {
        for (c, o) in out.iter_mut().enumerate() {
            *o += x[(r, c)];
        }
    }
    for o in out.iter_mut() {
        *o /= x.nrows() as f32;
    }
}

/// Where the rows of one head of one sequence lie in a `q`, `k` or `v` buffer of a layout:
/// row `i` of head `h` of sequence `b` starts at `b·seq + h·head + i·row`.
#[derive(Clone, Copy)]
struct Strides {
    seq: usize,
    head: usize,
    row: usize,
    d: usize,
}

impl Strides {
    fn new(layout: QkvLayout, heads: usize, rows: usize, d: usize) -> Self {
        match layout {
            QkvLayout::HeadMajor => Self {
                seq: heads * rows * d,
                head: rows * d,
                row: d,
                d,
            },
            QkvLayout::TokenMajor => Self {
                seq: rows * heads * d,
                head: d,
                row: heads * d,
                d,
            },
        }
    }

    /// Rows `i0..i0 + n` of head `h` of sequence `b` as an `n × d` matrix.
    fn rows<'a>(&self, x: &'a [f32], b: usize, h: usize, i0: usize, n: usize) -> MatRef<'a, f32> {
        let at = b * self.seq + h * self.head + i0 * self.row;
        let len = if n == 0 {
            0
        } else {
            (n - 1) * self.row + self.d
        };
        MatRef::from_row_major_slice_with_stride(&x[at..at + len], n, self.d, self.row)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Scalar f64 attention with the module's layouts (the yardstick).
    fn reference(
        s: &AttentionShape,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        blocked: Option<&[bool]>,
        scale: f32,
    ) -> Vec<f32> {
        let d = s.head_dim;
        let group = s.heads / s.kv_heads;
        let mut out = vec![0f32; s.batch * s.queries * s.heads * d];
        for b in 0..s.batch {
            for h in 0..s.heads {
                let kv = (b * s.kv_heads + h / group) * s.keys * d;
                for i in 0..s.queries {
                    let qi = &q[((b * s.heads + h) * s.queries + i) * d..][..d];
                    let seen: Vec<bool> = (0..s.keys)
                        .map(|j| blocked.is_none_or(|m| !m[(b * s.queries + i) * s.keys + j]))
                        .collect();
                    let any = seen.iter().any(|&x| x);
                    let scores: Vec<f64> = (0..s.keys)
                        .map(|j| {
                            let kj = &k[kv + j * d..][..d];
                            let dot: f64 = qi
                                .iter()
                                .zip(kj)
                                .map(|(a, b)| f64::from(*a) * f64::from(*b))
                                .sum();
                            if seen[j] || !any {
                                dot * f64::from(scale)
                            } else {
                                f64::NEG_INFINITY
                            }
                        })
                        .map(|x| if any { x } else { 0.0 })
                        .collect();
                    let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = scores.iter().map(|x| (x - max).exp()).collect();
                    let z: f64 = e.iter().sum();
                    let dst = ((b * s.queries + i) * s.heads + h) * d;
                    for c in 0..d {
                        let acc: f64 = (0..s.keys)
                            .map(|j| e[j] / z * f64::from(v[kv + j * d + c]))
                            .sum();
                        out[dst + c] = acc as f32;
                    }
                }
            }
        }
        out
    }

    fn seeded(n: usize, seed: u64) -> Vec<f32> {
        let mut st = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        (0..n)
            .map(|_| {
                st = st
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                ((st >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Causal with a cache offset and left padding, over ragged shapes (queries not a
        /// multiple of the block), grouped heads: equal to the reference within 1e-5 (f32
        /// rounding of sums of ≤ 200 terms of magnitude ≤ 1).
        #[test]
        fn matches_reference(batch in 1usize..3, kv_heads in 1usize..3, group in 1usize..4,
                             queries in 1usize..150, cached in 0usize..40, d in prop::sample::select(vec![4usize, 8, 16, 64]),
                             pad in 0usize..5, seed in 0u64..1000, masked in any::<bool>()) {
            let keys = cached + queries;
            let s = AttentionShape { batch, heads: kv_heads * group, kv_heads, queries, keys, head_dim: d };
            let q = seeded(batch * s.heads * queries * d, seed);
            let k = seeded(batch * kv_heads * keys * d, seed + 1);
            let v = seeded(batch * kv_heads * keys * d, seed + 2);
            // Query i sits at key position cached + i; row 0 of the batch has `pad` padding
            // keys at the front (so its first queries see nothing: the uniform case).
            let blocked: Vec<bool> = (0..batch).flat_map(|b| (0..queries).flat_map(move |i| (0..keys).map(move |j| {
                j > cached + i || (b == 0 && j < pad)
            }))).collect();
            let mask = masked.then_some(blocked.as_slice());
            let scale = 1.0 / (d as f32).sqrt();
            let mut out = vec![0f32; batch * queries * s.heads * d];
            attention(&s, &q, &k, &v, mask, scale, &mut out).unwrap();
            let want = reference(&s, &q, &k, &v, mask, scale);
            for (i, (a, b)) in out.iter().zip(&want).enumerate() {
                prop_assert!((a - b).abs() < 1e-5, "element {}: {} vs {}", i, a, b);
            }
        }
    }

    /// `[batch, heads, rows, d]` → `[batch, rows, heads, d]`.
    fn token_major(x: &[f32], batch: usize, heads: usize, rows: usize, d: usize) -> Vec<f32> {
        let mut out = vec![0f32; x.len()];
        for b in 0..batch {
            for h in 0..heads {
                for i in 0..rows {
                    let src = ((b * heads + h) * rows + i) * d;
                    let dst = ((b * rows + i) * heads + h) * d;
                    out[dst..dst + d].copy_from_slice(&x[src..src + d]);
                }
            }
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        /// The token-major layout (the projections' own) gives the same output as the
        /// head-major one on the same values, bit for bit: only where rows are read changes.
        #[test]
        fn token_major_equals_head_major(batch in 1usize..3, kv_heads in 1usize..3, group in 1usize..4,
                                         queries in 1usize..100, cached in 0usize..20,
                                         d in prop::sample::select(vec![4usize, 8, 64]), seed in 0u64..1000) {
            let keys = cached + queries;
            let s = AttentionShape { batch, heads: kv_heads * group, kv_heads, queries, keys, head_dim: d };
            let q = seeded(batch * s.heads * queries * d, seed);
            let k = seeded(batch * kv_heads * keys * d, seed + 1);
            let v = seeded(batch * kv_heads * keys * d, seed + 2);
            let blocked: Vec<bool> = (0..batch).flat_map(|_| (0..queries).flat_map(move |i| (0..keys).map(move |j| j > cached + i))).collect();
            let mut a = vec![0f32; batch * queries * s.heads * d];
            let mut b = a.clone();
            attention(&s, &q, &k, &v, Some(&blocked), 0.3, &mut a).unwrap();
            attention_in(&s, QkvLayout::TokenMajor, &token_major(&q, batch, s.heads, queries, d),
                &token_major(&k, batch, kv_heads, keys, d), &token_major(&v, batch, kv_heads, keys, d),
                Some(&blocked), 0.3, &mut b).unwrap();
            prop_assert_eq!(a, b);
        }
    }

    #[test]
    fn wrong_lengths_are_refused() {
        let s = AttentionShape {
            batch: 1,
            heads: 2,
            kv_heads: 1,
            queries: 2,
            keys: 2,
            head_dim: 4,
        };
        let mut out = vec![0f32; 16];
        let e = attention(&s, &[0.0; 15], &[0.0; 8], &[0.0; 8], None, 1.0, &mut out).unwrap_err();
        assert!(e.to_string().contains("queries"), "{e}");
        let s3 = AttentionShape {
            heads: 3,
            kv_heads: 2,
            ..s
        };
        assert!(attention(&s3, &[], &[], &[], None, 1.0, &mut []).is_err());
    }
}
