//! The optimal-brain-surgeon column sweep shared by GPTQ (quantize), SparseGPT (prune) and their
//! joint mode (prune and quantize in one pass).
//!
//! The sweep visits the input columns of a layer in order. At each column `k` every output row
//! fixes its weight to a target `q` — the weight rounded onto its grid (GPTQ), 0 if the weight is
//! pruned (SparseGPT), or the weight itself when it is neither — and the error `(w_k − q) / U_kk`
//! is spread over the columns not yet visited through the inverse-Hessian factor `U`
//! ([`crate::hessian`]). The layer's own mask (`LayerView::mask`, from an earlier pruning step) is
//! always respected: those weights stay 0 while the others absorb their error. More weights can
//! be pruned during the sweep to meet a [`SparsityPattern`], chosen by SparseGPT's saliency
//! `w² / U_kk²` — the OBS loss of removing that weight
//! (Frantar & Alistarh 2023, "SparseGPT: Massive Language Models Can Be Accurately Pruned in One
//! Shot", arXiv:2301.00774):
//!
//! - **unstructured**: at the start of each block of columns, the block's lowest-saliency weights
//!   over all rows are pruned, [`quota`] of them so that the layer's total is exactly
//!   `round(s · out · in)` (the paper's adaptive mask selection, with exact counts; weights the
//!   layer's mask already prunes count first);
//! - **N:M**: at the start of every run of `M` columns, each row prunes its `M − N`
//!   lowest-saliency weights of the run, using the weights as updated so far.
//!
//! In joint mode with per-group grids (and no activation order), a group's grid is fitted when the
//! sweep reaches the group's first column, to the group's weights as updated so far *excluding
//! those already known to be pruned* (they are stored as a mask and dequantize to 0, so the grid
//! need not cover them). Per-channel, per-tensor and static-group grids are fitted up front from
//! the original weights, including those that will be pruned.

use compress_core::compressor::{ensure_finite, CompressError, LayerView, LayerWeights};
use compress_core::packed::{Granularity, PackedWeight, QuantScheme};
use compress_core::sparsity::{lowest_k, n_m_quota, quota, SparsityMask, SparsityPattern};
use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};

use crate::grid::{fit_grid, Grid, GridConfig};
use crate::hessian::HessianInverse;
use crate::kquant::snap_row;
use crate::rtn::{check_layer, pack};
use compress_core::kquant::SUPER_BLOCK;

/// How the sweep rounds the weights it visits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SweepQuant {
    /// Bits, granularity and symmetry of the codes.
    pub scheme: QuantScheme,
    /// Clipping and scale search when fitting each grid.
    pub grid: GridConfig,
    /// Fit every group's grid up front from the original weights ("static groups", needed with
    /// activation order so a group stays a run of original columns) instead of when the sweep
    /// reaches it.
    pub static_groups: bool,
}

/// Quantizes `layer` with the sweep (GPTQ; with a mask, pruned weights stay or become 0 and the
/// packed result carries the mask), using the prepared inverse-Hessian factor `hi` in lazy
/// batches of `block_size` columns (rounded up to a multiple of `M` for N:M selection).
pub fn obs_quantize(
    layer: LayerView<'_>,
    hi: &HessianInverse,
    block_size: usize,
    quant: &SweepQuant,
    select: Option<SparsityPattern>,
) -> Result<PackedWeight, CompressError> {
    let (path, out, n) = (layer.path, layer.out_features, layer.in_features);
    let done = sweep(layer, hi, block_size, Some(quant), select)?;
    let packed = pack(path, &quant.scheme, out, n, &done.codes, &done.grids)?;
    match done.mask {
        Some(m) => packed.with_mask(m).map_err(|e| CompressError::Shape {
            layer: path.into(),
            message: e.to_string(),
        }),
        None => Ok(packed),
    }
}

/// Prunes `layer` with the sweep (SparseGPT without quantization): the kept weights absorb the
/// pruned ones' error; returns the sparse weight (dense if nothing was pruned).
pub fn obs_prune(
    layer: LayerView<'_>,
    hi: &HessianInverse,
    block_size: usize,
    select: Option<SparsityPattern>,
) -> Result<LayerWeights, CompressError> {
    let (out, n) = (layer.out_features, layer.in_features);
    let done = sweep(layer, hi, block_size, None, select)?;
    let mut dense = vec![0f32; out * n];
    for (k, &c) in hi.perm.iter().enumerate() {
        for r in 0..out {
            dense[r * n + c] = done.wt[k * out + r];
        }
    }
    Ok(match done.mask {
        Some(mask) => LayerWeights::Sparse {
            weight: dense,
            mask,
        },
        None => LayerWeights::Dense(dense),
    })
}

/// What a sweep leaves: the final `Wᵀ` in sweep order, codes and grids (when quantizing), and the
/// mask (when anything is pruned).
struct Swept {
    wt: Vec<f32>,
    codes: Vec<u8>,
    grids: Vec<Grid>,
    mask: Option<SparsityMask>,
}

fn sweep(
    layer: LayerView<'_>,
    hi: &HessianInverse,
    block_size: usize,
    quant: Option<&SweepQuant>,
    select: Option<SparsityPattern>,
) -> Result<Swept, CompressError> {
    let (path, out, n) = (layer.path, layer.out_features, layer.in_features);
    ensure_finite(path, "weight", layer.weight)?;
    let shape_err = |message: String| CompressError::Shape {
        layer: path.into(),
        message,
    };
    if block_size == 0 {
        return Err(shape_err("block_size must be at least 1".into()));
    }
    if hi.n != n || layer.weight.len() != out * n {
        return Err(shape_err(format!(
            "weight is {} values for [{out}, {n}], Hessian is {}×{}",
            layer.weight.len(),
            hi.n,
            hi.n
        )));
    }
    let mut bs = block_size.min(n.max(1));
    if let Some(p) = select {
        p.validate().map_err(shape_err)?;
        if hi.perm.iter().enumerate().any(|(k, &c)| k != c) {
            return Err(shape_err(
                "mask selection needs the natural column order (no activation order)".into(),
            ));
        }
        if let SparsityPattern::NM { m, .. } = p {
            bs = bs.div_ceil(m) * m;
        }
    }
    if let Some(m) = layer.mask {
        if m.shape() != [out, n] {
            return Err(shape_err(format!(
                "mask is {:?}, weight [{out}, {n}]",
                m.shape()
            )));
        }
    }
    let group = match quant {
        Some(q) => check_layer(path, &q.scheme, &q.grid, n)?.max(1),
        None => n.max(1),
    };

    // pruned[r * n + col], in original column order.
    let mut pruned = vec![false; out * n];
    if let Some(m) = layer.mask {
        for (i, p) in pruned.iter_mut().enumerate() {
            *p = !m.is_kept_flat(i);
        }
    }
    let mut w = layer.weight.to_vec();
    for &d in &hi.dead {
        for r in 0..out {
            w[r * n + d] = 0.0;
        }
    }
    for (v, &p) in w.iter_mut().zip(&pruned) {
        if p {
            *v = 0.0;
        }
    }
    let permuted = hi.perm.iter().enumerate().any(|(k, &c)| k != c);
    let mut grids = quant.map(|q| Grids::new(q, &w, out, n, group, q.static_groups || permuted));

    // Wᵀ in sweep order: row k holds original column perm[k].
    let mut wt = vec![0f32; n * out];
    for (k, &c) in hi.perm.iter().enumerate() {
        for r in 0..out {
            wt[k * out + r] = w[r * n + c];
        }
    }
    drop(w);

    let u = &hi.upper;
    let mut codes = quant.map(|_| vec![0u8; out * n]);
    let mut err = vec![0f32; bs * out];
    let mut buf = Vec::with_capacity(group);
    let mut scores = Vec::new();
    let mut picked = Vec::new();
    for i1 in (0..n).step_by(bs) {
        let i2 = (i1 + bs).min(n);
        if let Some(SparsityPattern::Unstructured(s)) = select {
            // Saliency of every weight of the block (−1 for those already pruned, so they count
            // first); prune the block's share of the total.
            scores.clear();
            for k in i1..i2 {
                let d2 = u[k * n + k] * u[k * n + k];
                let row = &wt[k * out..(k + 1) * out];
                scores.extend(row.iter().enumerate().map(|(r, &v)| {
                    if pruned[r * n + k] {
                        -1.0
                    } else {
                        v * v / d2
                    }
                }));
            }
            picked.clear();
            lowest_k(&scores, quota(s, i1 * out, i2 * out), &mut picked);
            for &i in &picked {
                let (k, r) = (i1 + i / out, i % out);
                pruned[r * n + k] = true;
            }
        }
        for k in i1..i2 {
            let col = hi.perm[k];
            if let Some(SparsityPattern::NM { n: keep, m }) = select {
                if k.is_multiple_of(m) {
                    let end = (k + m).min(n);
                    let prune = n_m_quota(keep, m, end - k);
                    for r in 0..out {
                        scores.clear();
                        scores.extend((k..end).map(|c| {
                            let v = wt[c * out + r];
                            if pruned[r * n + c] {
                                -1.0
                            } else {
                                v * v / (u[c * n + c] * u[c * n + c])
                            }
                        }));
                        picked.clear();
                        lowest_k(&scores, prune, &mut picked);
                        for &j in &picked {
                            pruned[r * n + k + j] = true;
                        }
                    }
                }
            }
            if let Some(g) = grids.as_mut() {
                if g.dynamic && col.is_multiple_of(group) {
                    // Without act-order k == col: the group is rows k..k+len of Wᵀ as updated.
                    let len = group.min(n - k);
                    for r in 0..out {
                        buf.clear();
                        buf.extend(
                            (0..len)
                                .filter(|&j| !pruned[r * n + k + j])
                                .map(|j| wt[(k + j) * out + r]),
                        );
                        g.grids[r * g.per_row + col / group] = fit_grid(
                            &buf,
                            None,
                            g.quant.scheme.bits,
                            g.quant.scheme.symmetry,
                            &g.quant.grid,
                        );
                    }
                }
            }
            let d = u[k * n + k];
            let (head, tail) = wt.split_at_mut((k + 1) * out);
            let wk = &mut head[k * out..];
            let ek = &mut err[(k - i1) * out..(k - i1 + 1) * out];
            let mut any = false;
            for r in 0..out {
                let q = if pruned[r * n + col] {
                    if let (Some(c), Some(g)) = (codes.as_mut(), grids.as_ref()) {
                        c[r * n + col] = g.get(r, col).code(0.0);
                    }
                    0.0
                } else if let (Some(c), Some(g)) = (codes.as_mut(), grids.as_ref()) {
                    let grid = g.get(r, col);
                    let code = grid.code(wk[r]);
                    c[r * n + col] = code;
                    grid.value(code)
                } else {
                    wk[r]
                };
                ek[r] = (wk[r] - q) / d;
                any |= ek[r] != 0.0;
                wk[r] = q;
            }
            // Error feedback inside the block.
            if any {
                for j in k + 1..i2 {
                    let ukj = u[k * n + j];
                    if ukj != 0.0 {
                        let row = &mut tail[(j - k - 1) * out..(j - k) * out];
                        for (x, &e) in row.iter_mut().zip(ek.iter()) {
                            *x -= ukj * e;
                        }
                    }
                }
            }
        }
        if i2 < n {
            // Lazy batch: Wᵀ[i2.., :] −= U[i1..i2, i2..]ᵀ · E.
            let rest = n - i2;
            let dst = MatMut::from_row_major_slice_mut(&mut wt[i2 * out..], rest, out);
            let lhs = MatRef::from_row_major_slice_with_stride(&u[i1 * n + i2..], i2 - i1, rest, n)
                .transpose();
            let rhs = MatRef::from_row_major_slice(&err[..(i2 - i1) * out], i2 - i1, out);
            matmul(dst, Accum::Add, lhs, rhs, -1.0f32, Par::rayon(0));
        }
    }
    let mask = pruned.iter().any(|&p| p).then(|| {
        let kept: Vec<bool> = pruned.iter().map(|&p| !p).collect();
        SparsityMask::from_kept(out, n, &kept)
    });
    Ok(Swept {
        wt,
        codes: codes.unwrap_or_default(),
        grids: grids.map(|g| g.grids).unwrap_or_default(),
        mask,
    })
}

/// The grids of a layer: `[out, groups_per_row]` row-major, or one for per-tensor schemes.
struct Grids<'a> {
    quant: &'a SweepQuant,
    grids: Vec<Grid>,
    per_row: usize,
    group: usize,
    per_tensor: bool,
    /// Fitted as the sweep reaches each group (per-group without activation order).
    dynamic: bool,
}

impl<'a> Grids<'a> {
    /// Static grids (per-tensor, per-channel, or "static groups" with activation order) are
    /// fitted up front from the original weights; dynamic ones get placeholders.
    fn new(
        quant: &'a SweepQuant,
        w: &[f32],
        out: usize,
        n: usize,
        group: usize,
        fixed: bool,
    ) -> Self {
        let (bits, sym) = (quant.scheme.bits, quant.scheme.symmetry);
        let per_tensor = quant.scheme.granularity == Granularity::PerTensor;
        // A k-quant's scales are fitted per super-block, so every group of it up front.
        let k_quant = quant
            .grid
            .k_quant
            .filter(|_| n > 0 && n.is_multiple_of(SUPER_BLOCK));
        let dynamic = matches!(quant.scheme.granularity, Granularity::PerGroup(_))
            && !fixed
            && k_quant.is_none();
        let per_row = quant.scheme.groups_per_row(n);
        let grids = if per_tensor {
            vec![fit_grid(w, None, bits, sym, &quant.grid)]
        } else if !dynamic {
            let mut grids: Vec<Grid> = w
                .chunks_exact(n.max(1))
                .flat_map(|row| row.chunks(group))
                .map(|chunk| fit_grid(chunk, None, bits, sym, &quant.grid))
                .collect();
            if let Some(k) = k_quant {
                for (row, gs) in w.chunks_exact(n).zip(grids.chunks_exact_mut(per_row)) {
                    snap_row(row, None, gs, k, &quant.grid);
                }
            }
            grids
        } else {
            vec![
                Grid {
                    scale: half::f16::ZERO,
                    zero: half::f16::ZERO,
                    max_code: bits.max_code(),
                };
                out * per_row
            ]
        };
        Self {
            quant,
            grids,
            per_row,
            group,
            per_tensor,
            dynamic,
        }
    }

    #[inline]
    fn get(&self, row: usize, col: usize) -> &Grid {
        if self.per_tensor {
            &self.grids[0]
        } else {
            &self.grids[row * self.per_row + col / self.group]
        }
    }
}
