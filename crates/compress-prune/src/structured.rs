//! Structured pruning with real size reduction: FFN neurons, attention heads (respecting
//! grouped-query attention) and whole blocks are *removed* from the model's matrices and config,
//! so the pruned model is smaller and faster, not masked.
//!
//! Importance scores, each computed block by block on the activations the already-pruned earlier
//! blocks produce (the same true-sequential order as the calibration pipeline):
//!
//! - [`Importance::Magnitude`]: the squared Frobenius norm of the structure's own weights (an FFN
//!   neuron's `gate`/`up` rows and `down` column; a head's `q` rows and `o` columns).
//! - [`Importance::Taylor`]: `|Σ_t ∂L/∂m|` for a gate `m` on the structure's output, with `L`
//!   the calibration language-modelling loss — the first-order change of the loss when the
//!   structure is removed (Molchanov et al. 2019; LLM-Pruner), from one backward pass per
//!   window on the unpruned model.
//! - [`Importance::Entropy`] (heads): the mean entropy of the head's attention distribution;
//!   a head whose attention is spread evenly (high entropy) carries an average of the context, a
//!   sharp head carries a specific token — the diffuse heads go first (Michel et al. 2019, "Are
//!   Sixteen Heads Really Better than One?", use the same statistic to analyse heads).
//! - [`Importance::Activation`]: the exact energy of the structure's contribution to the block's
//!   output over the calibration tokens. For FFN neuron `i` with activation `h_i(t)` that is
//!   `‖W_down[:, i]‖² · Σ_t h_i(t)²`; for head `j` with context `c_j(t)` (its slice of `o_proj`'s
//!   input) it is `tr(W_o,j G_jj W_o,jᵀ)` with `G_jj` the head's block of `o_proj`'s input Gram
//!   matrix — the structured analogue of Wanda's `|W|·‖X‖` (and of FLAP's fluctuation metric
//!   without its bias compensation).
//!
//! Mixtures of experts: every routed expert (and the shared expert) is an ordinary gated MLP,
//! so it loses the same fraction of its own neurons, ranked within the expert — by activation
//! energy over the tokens the router sends it (an expert sent no calibration token falls back
//! to its weight norms), or by magnitude. The router is unchanged; Taylor scores gate dense
//! MLPs only and are refused for experts.
//!
//! Every block loses the same number of structures, so the config stays uniform (what GGUF and
//! other runtimes expect). Heads: when a block has `h` query heads in `kv` groups of `g`, the
//! pruner removes either whole groups (with their key/value head) or the same number of heads
//! from every group, whichever comes closer to the requested fraction (ties: within groups).
//!
//! Blocks are ranked by ShortGPT's block influence (Men et al. 2024, "ShortGPT: Layers in Large
//! Language Models are More Redundant Than You Expect", arXiv:2403.03853):
//! `BI = 1 − mean_t cos(x_in(t), x_out(t))` over calibration tokens; the least influential go.

use burn::tensor::Tensor;
use compress_core::compressor::StatsRequest;
use compress_core::layer_id::{Expert, LinearId, LinearKind};
use compress_core::pipeline::{collect_stats, BlockWalk, BlockwiseModel, Pipeline, PipelineError};
use compress_model::llama::TaylorScores;
use compress_model::LlamaModel;

/// How structures are ranked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Importance {
    /// Weight norms only (no calibration).
    Magnitude,
    /// Energy of the structure's output contribution on calibration data.
    Activation,
    /// Heads only: mean attention entropy on calibration data; the most diffuse heads (highest
    /// entropy, closest to a plain average of the context) go first.
    Entropy,
    /// First-order Taylor estimate of the calibration loss change when the structure is removed
    /// (gradient × weight through burn autodiff; [`LlamaModel::taylor_scores`]), computed once on
    /// the unpruned model.
    Taylor,
}

/// What to remove from every block.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StructuredConfig {
    /// Fraction of each block's FFN neurons to remove, in `[0, 1)`.
    pub ffn_fraction: f64,
    /// Fraction of each block's query heads to remove, in `[0, 1)` (rounded to what grouped-query
    /// attention allows; see the module docs).
    pub head_fraction: f64,
    /// Ranking of FFN neurons (magnitude or activation).
    pub ffn_importance: Importance,
    /// Ranking of heads.
    pub head_importance: Importance,
}

/// What structured pruning did.
#[derive(Debug, Clone, PartialEq)]
pub struct StructuredReport {
    /// Parameters before and after ([`LlamaModel::num_parameters`]).
    pub parameters: (usize, usize),
    /// FFN neurons removed per block's dense MLP, or per routed expert of a mixture.
    pub ffn_removed: usize,
    /// Query heads removed per block (and key/value heads, when whole groups went).
    pub heads_removed: (usize, usize),
    /// Per block, the original indices of the dense MLP's neurons kept (empty for a mixture of
    /// experts).
    pub kept_ffn: Vec<Vec<usize>>,
    /// Per block, each expert's kept neurons (original indices; empty for a dense block).
    pub kept_experts: Vec<Vec<(Expert, Vec<usize>)>>,
    /// Per block, the original indices of the query heads kept.
    pub kept_heads: Vec<Vec<usize>>,
}

/// The index of the calibration stage whose input the linear `id` reads.
fn stage(model: &LlamaModel, id: LinearId) -> Result<usize, PipelineError> {
    let block = id.block_index().unwrap_or(0);
    model
        .stages(block)
        .iter()
        .position(|s| s.linears.contains(&id))
        .ok_or_else(|| PipelineError::Config(format!("no calibration stage reads {id}")))
}

/// Which query heads to keep for a block of `heads` in `kv` groups, removing about `fraction`
/// of them, given one score per head.
pub fn select_heads(scores: &[f64], kv: usize, fraction: f64) -> Vec<usize> {
    let heads = scores.len();
    let g = heads / kv.max(1);
    let target = (fraction * heads as f64).round() as usize;
    // Candidates: k whole groups (k·g heads) or j heads from every group (j·kv heads).
    let groups = (0..kv)
        .min_by_key(|&k| (k * g).abs_diff(target))
        .unwrap_or(0);
    let within = (0..g)
        .min_by_key(|&j| (j * kv).abs_diff(target))
        .unwrap_or(0);
    let by_group = (groups * g).abs_diff(target) < (within * kv).abs_diff(target);
    let order = |idx: &mut Vec<usize>, score: &dyn Fn(usize) -> f64| {
        idx.sort_by(|&a, &b| score(a).total_cmp(&score(b)).then(a.cmp(&b)));
    };
    let mut keep = Vec::with_capacity(heads);
    if by_group {
        let mut gs: Vec<usize> = (0..kv).collect();
        order(&mut gs, &|k| scores[k * g..(k + 1) * g].iter().sum());
        for &k in &gs[groups..] {
            keep.extend(k * g..(k + 1) * g);
        }
    } else {
        for k in 0..kv {
            let mut hs: Vec<usize> = (k * g..(k + 1) * g).collect();
            order(&mut hs, &|h| scores[h]);
            keep.extend_from_slice(&hs[within..]);
        }
    }
    keep.sort_unstable();
    keep
}

/// The indices of the `len − remove` highest scores, in increasing index order.
fn keep_top(scores: &[f64], remove: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(a.cmp(&b)));
    let mut keep = idx[remove.min(idx.len())..].to_vec();
    keep.sort_unstable();
    keep
}

fn host(t: Tensor<2>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap_or_default()
}

fn sq_rows(w: &[f32], cols: usize) -> Vec<f64> {
    w.chunks_exact(cols)
        .map(|r| r.iter().map(|&v| (v as f64).powi(2)).sum())
        .collect()
}

fn sq_cols(w: &[f32], cols: usize) -> Vec<f64> {
    let mut s = vec![0f64; cols];
    for r in w.chunks_exact(cols) {
        for (a, &v) in s.iter_mut().zip(r) {
            *a += (v as f64).powi(2);
        }
    }
    s
}

/// Removes `cfg`'s share of FFN neurons and heads from every block of `model`, ranked on
/// `calibration` windows (unused for [`Importance::Magnitude`]).
pub fn prune_structured(
    model: &mut LlamaModel,
    calibration: &[Vec<u32>],
    cfg: &StructuredConfig,
    mut progress: impl FnMut(usize, usize),
) -> Result<StructuredReport, PipelineError> {
    for (name, f) in [
        ("ffn_fraction", cfg.ffn_fraction),
        ("head_fraction", cfg.head_fraction),
    ] {
        if !(0.0..1.0).contains(&f) {
            return Err(PipelineError::Config(format!(
                "{name} = {f}: must lie in [0, 1)"
            )));
        }
    }
    if cfg.ffn_importance == Importance::Entropy {
        return Err(PipelineError::Config(
            "ffn_importance = Entropy: attention entropy ranks heads only".into(),
        ));
    }
    let before = model.num_parameters();
    let uses = |i: Importance| {
        (cfg.ffn_fraction > 0.0 && cfg.ffn_importance == i)
            || (cfg.head_fraction > 0.0 && cfg.head_importance == i)
    };
    let mut scorer = Scorer::new(
        model,
        calibration,
        uses(Importance::Taylor),
        uses(Importance::Activation) || uses(Importance::Entropy),
    )?;
    let (mut ffn_removed, mut heads_removed) = (0, (0, 0));
    let (mut kept_ffn, mut kept_heads, mut kept_experts) = (Vec::new(), Vec::new(), Vec::new());
    let blocks = model.layers.len();
    for block in 0..blocks {
        // Heads first; the FFN is then ranked on the MLP input the pruned attention produces.
        let shape = model.head_shape(block);
        let keep = if cfg.head_fraction > 0.0 {
            let scores = scorer.heads(model, block, cfg.head_importance)?;
            select_heads(&scores, shape.kv_heads, cfg.head_fraction)
        } else {
            (0..shape.heads).collect()
        };
        if keep.len() < shape.heads {
            model
                .keep_heads(block, &keep)
                .map_err(|e| PipelineError::Config(e.to_string()))?;
        }
        kept_heads.push(keep);
        let after = model.head_shape(block);
        heads_removed = (shape.heads - after.heads, shape.kv_heads - after.kv_heads);

        let (mut dense, mut experts) = (Vec::new(), Vec::new());
        let scores = if cfg.ffn_fraction > 0.0 {
            scorer.ffn(model, block, cfg.ffn_importance)?
        } else {
            Vec::new()
        };
        for unit in model.ffn_units(block) {
            let width = model.unit_ffn_width(block, unit).map_err(config)?;
            // At least one neuron stays (a fraction just below 1 can round to the whole width).
            let remove = ((cfg.ffn_fraction * width as f64).round() as usize).min(width - 1);
            let keep = match scores.iter().find(|(u, _)| *u == unit) {
                Some((_, sc)) if remove > 0 => keep_top(sc, remove),
                _ => (0..width).collect(),
            };
            if keep.len() < width {
                model
                    .keep_unit_neurons(block, unit, &keep)
                    .map_err(config)?;
            }
            match unit {
                None => dense = keep,
                Some(e) => experts.push((e, keep)),
            }
            if !matches!(unit, Some(Expert::Shared)) {
                ffn_removed = remove;
            }
        }
        kept_ffn.push(dense);
        kept_experts.push(experts);
        scorer.advance(model, block);
        progress(block + 1, blocks);
    }
    Ok(StructuredReport {
        parameters: (before, model.num_parameters()),
        ffn_removed,
        heads_removed,
        kept_ffn,
        kept_heads,
        kept_experts,
    })
}

/// Importance of every query head and FFN neuron of one block (higher = more important).
#[derive(Debug, Clone, PartialEq)]
pub struct BlockScores {
    /// One score per query head.
    pub heads: Vec<f64>,
    /// One score per neuron of the dense MLP (empty for a mixture of experts).
    pub ffn: Vec<f64>,
    /// One score per neuron of each expert (empty for a dense block).
    pub experts: Vec<(Expert, Vec<f64>)>,
}

/// Scores every block's heads and FFN neurons without removing anything — the ranking behind
/// Matryoshka reordering. Activation-based scores use each block's inputs from the unchanged
/// model on `calibration` windows (unused for [`Importance::Magnitude`]); FFN neurons accept
/// magnitude, activation or Taylor importance.
pub fn structure_scores(
    model: &LlamaModel,
    calibration: &[Vec<u32>],
    ffn_importance: Importance,
    head_importance: Importance,
    mut progress: impl FnMut(usize, usize),
) -> Result<Vec<BlockScores>, PipelineError> {
    if ffn_importance == Importance::Entropy {
        return Err(PipelineError::Config(
            "ffn_importance = Entropy: attention entropy ranks heads only".into(),
        ));
    }
    let needs = |i: Importance| ffn_importance == i || head_importance == i;
    let mut scorer = Scorer::new(
        model,
        calibration,
        needs(Importance::Taylor),
        needs(Importance::Activation) || needs(Importance::Entropy),
    )?;
    let blocks = model.layers.len();
    let mut out = Vec::with_capacity(blocks);
    for block in 0..blocks {
        let mut scores = BlockScores {
            heads: scorer.heads(model, block, head_importance)?,
            ffn: Vec::new(),
            experts: Vec::new(),
        };
        for (unit, sc) in scorer.ffn(model, block, ffn_importance)? {
            match unit {
                None => scores.ffn = sc,
                Some(e) => scores.experts.push((e, sc)),
            }
        }
        out.push(scores);
        scorer.advance(model, block);
        progress(block + 1, blocks);
    }
    Ok(out)
}

/// What block-by-block scoring carries: Taylor scores of the unpruned model (when asked) and
/// the current block's inputs on the calibration windows (when an activation-based score is
/// asked; empty otherwise).
struct Scorer {
    taylor: Option<TaylorScores>,
    xs: Vec<Tensor<3>>,
    attn_out: usize,
}

impl Scorer {
    fn new(
        model: &LlamaModel,
        calibration: &[Vec<u32>],
        taylor: bool,
        activation: bool,
    ) -> Result<Self, PipelineError> {
        let taylor = if taylor {
            Some(
                model
                    .taylor_scores(calibration)
                    .map_err(|e| PipelineError::Config(e.to_string()))?,
            )
        } else {
            None
        };
        let xs = if activation {
            let device = BlockWalk::device(model);
            Pipeline::new().embed_calibration(model, calibration, &device)?
        } else {
            Vec::new()
        };
        Ok(Self {
            taylor,
            xs,
            attn_out: stage(model, LinearId::block(0, LinearKind::O))?,
        })
    }

    /// Head scores of `block` by `importance`.
    fn heads(
        &self,
        model: &LlamaModel,
        block: usize,
        importance: Importance,
    ) -> Result<Vec<f64>, PipelineError> {
        match (&self.taylor, importance) {
            (Some(t), Importance::Taylor) => Ok(t.heads[block].clone()),
            (_, Importance::Magnitude) => head_scores(model, block, &[], importance, self.attn_out),
            _ => head_scores(model, block, &self.xs, importance, self.attn_out),
        }
    }

    /// Neuron scores of every gated MLP of `block` ([`LlamaModel::ffn_units`]) by `importance`
    /// (activation energy, Taylor, else magnitude).
    fn ffn(
        &self,
        model: &LlamaModel,
        block: usize,
        importance: Importance,
    ) -> Result<UnitScores, PipelineError> {
        match (&self.taylor, importance) {
            (Some(t), Importance::Taylor) => Ok(vec![(None, t.ffn[block].clone())]),
            (_, Importance::Activation) => ffn_scores(model, block, &self.xs),
            _ => ffn_scores(model, block, &[]),
        }
    }

    /// Moves the inputs past `block` (as it is now, e.g. after pruning it).
    fn advance(&mut self, model: &LlamaModel, block: usize) {
        self.xs = std::mem::take(&mut self.xs)
            .into_iter()
            .map(|x| model.block_forward(block, x))
            .collect();
    }
}

/// One score per query head of `block` (higher = more important), by `importance`; `xs` are the
/// block's inputs (empty for magnitude).
fn head_scores(
    model: &LlamaModel,
    block: usize,
    xs: &[Tensor<3>],
    importance: Importance,
    attn_out: usize,
) -> Result<Vec<f64>, PipelineError> {
    let shape = model.head_shape(block);
    let (hd, heads) = (shape.head_dim, shape.heads);
    let attn = &model.layers[block].attn;
    let o = host(attn.o_proj.dense_weight());
    let qd = heads * hd;
    Ok(match importance {
        Importance::Magnitude => {
            let q = host(attn.q_proj.dense_weight());
            let (qr, oc) = (sq_rows(&q, attn.q_proj.in_features()), sq_cols(&o, qd));
            (0..heads)
                .map(|j| (j * hd..(j + 1) * hd).map(|c| qr[c] + oc[c]).sum())
                .collect()
        }
        Importance::Entropy => {
            // Negated mean entropy: the most diffuse heads score lowest and go first.
            let mut e = vec![0f64; heads];
            for x in xs {
                for (a, v) in e.iter_mut().zip(model.head_entropy(block, x.clone())) {
                    *a -= v / xs.len() as f64;
                }
            }
            e
        }
        Importance::Activation | Importance::Taylor => {
            let mut caches: Vec<_> = xs
                .iter()
                .map(|x| model.begin_block(block, x.clone(), &Default::default()))
                .collect();
            let req = StatsRequest {
                gram: true,
                ..StatsRequest::NONE
            };
            let g = collect_stats(model, block, attn_out, &mut caches, req)?
                .gram
                .unwrap_or_default();
            let hidden = attn.o_proj.out_features();
            // tr(W_j G_jj W_jᵀ) = Σ_r Σ_{a,b ∈ head j} W[r,a] G[a,b] W[r,b].
            (0..heads)
                .map(|j| {
                    let cols = j * hd..(j + 1) * hd;
                    let mut e = 0f64;
                    for r in 0..hidden {
                        let w = &o[r * qd..(r + 1) * qd];
                        for a in cols.clone() {
                            let ga = &g[a * qd..(a + 1) * qd];
                            let inner: f64 = cols.clone().map(|b| (ga[b] * w[b]) as f64).sum();
                            e += w[a] as f64 * inner;
                        }
                    }
                    e
                })
                .collect()
        }
    })
}

/// One score per neuron of every gated MLP of `block` (the dense MLP, or each expert): the
/// activation energy `‖W_down[:, i]‖² · Σ_t h_i²` when `xs` (the block's inputs) are given —
/// over the tokens routed to an expert —, else the neuron's squared weight norm. An expert
/// that no calibration token reached (all `h_i = 0`) is scored by its weight norms.
fn ffn_scores(
    model: &LlamaModel,
    block: usize,
    xs: &[Tensor<3>],
) -> Result<UnitScores, PipelineError> {
    let mut caches: Vec<_> = xs
        .iter()
        .map(|x| model.begin_block(block, x.clone(), &Default::default()))
        .collect();
    let mut out = Vec::new();
    for unit in model.ffn_units(block) {
        let mlp = model.layers[block].mlp_of(block, unit).map_err(config)?;
        let width = mlp.gate_proj.out_features();
        let down = sq_cols(&host(mlp.down_proj.dense_weight()), width);
        let energy = if caches.is_empty() {
            None
        } else {
            let down_id = match unit {
                None => LinearId::block(block, LinearKind::Down),
                Some(e) => LinearId::expert(block, e, LinearKind::Down),
            };
            let req = StatsRequest {
                col_sq_norms: true,
                ..StatsRequest::NONE
            };
            let stage = stage(model, down_id)?;
            let h2 = collect_stats(model, block, stage, &mut caches, req)?
                .col_sq_norms
                .unwrap_or_default();
            h2.iter().any(|&h| h > 0.0).then_some(h2)
        };
        let scores = match energy {
            Some(h2) => down.iter().zip(&h2).map(|(w, h)| w * *h as f64).collect(),
            None => {
                let d = mlp.gate_proj.in_features();
                let gate = sq_rows(&host(mlp.gate_proj.dense_weight()), d);
                let up = sq_rows(&host(mlp.up_proj.dense_weight()), d);
                (0..width).map(|i| gate[i] + up[i] + down[i]).collect()
            }
        };
        out.push((unit, scores));
    }
    Ok(out)
}

/// One score per neuron of each gated MLP of a block, by unit (`None`: the dense MLP).
type UnitScores = Vec<(Option<Expert>, Vec<f64>)>;

fn config(e: impl std::fmt::Display) -> PipelineError {
    PipelineError::Config(e.to_string())
}

/// ShortGPT's block influence `1 − mean_t cos(x_in, x_out)` of every block of `model` on
/// `calibration` windows (f64 means of f32 cosines).
pub fn block_influence<M: BlockwiseModel>(
    model: &M,
    calibration: &[Vec<u32>],
) -> Result<Vec<f64>, PipelineError> {
    let device = model.device();
    let mut xs = Pipeline::new().embed_calibration(model, calibration, &device)?;
    let mut bi = Vec::with_capacity(model.num_blocks());
    for block in 0..model.num_blocks() {
        let (mut sum, mut count) = (0f64, 0usize);
        for x in xs.iter_mut() {
            let y = model.block_forward(block, x.clone());
            let dot = (x.clone() * y.clone()).sum_dim(2);
            let nx = x.clone().square().sum_dim(2).sqrt();
            let ny = y.clone().square().sum_dim(2).sqrt();
            let cos: Vec<f32> = (dot / (nx * ny).clamp_min(1e-12))
                .into_data()
                .try_to_vec::<f32>()
                .unwrap_or_default();
            count += cos.len();
            sum += cos.iter().map(|&c| c as f64).sum::<f64>();
            *x = y;
        }
        bi.push(1.0 - sum / count.max(1) as f64);
    }
    Ok(bi)
}

/// The `count` blocks of lowest influence, in increasing order.
pub fn least_influential(bi: &[f64], count: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..bi.len()).collect();
    idx.sort_by(|&a, &b| bi[a].total_cmp(&bi[b]).then(a.cmp(&b)));
    let mut out = idx[..count.min(idx.len())].to_vec();
    out.sort_unstable();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_selection_respects_groups() {
        // 8 heads in 4 groups of 2, remove 25% (2 heads): one whole group, the weakest.
        let s = [5.0, 5.0, 1.0, 0.5, 9.0, 0.1, 7.0, 7.0];
        assert_eq!(select_heads(&s, 4, 0.25), vec![0, 1, 4, 5, 6, 7]);
        // 9 heads in 3 groups of 3, remove 25% (2.25 → 2): 3 either way; tie → one per group.
        let s = [3.0, 1.0, 2.0, 0.5, 0.7, 0.6, 9.0, 8.0, 0.1];
        assert_eq!(select_heads(&s, 3, 0.25), vec![0, 2, 4, 5, 6, 7]);
        assert_eq!(select_heads(&s, 3, 0.0).len(), 9);
        assert_eq!(keep_top(&[0.3, 0.1, 0.2], 1), vec![0, 2]);
        assert_eq!(least_influential(&[0.3, 0.1, 0.2, 0.05], 2), vec![1, 3]);
    }
}
