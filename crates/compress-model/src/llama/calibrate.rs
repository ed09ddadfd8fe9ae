//! The calibration pipeline's traits ([`BlockWalk`], [`Linears`], [`ScaleFolds`]) for
//! [`LlamaModel`]: what it needs to compress a decoder of any supported family block by block.
//!
//! A block's linears form four stages, in the order the forward pass reaches them (the
//! "true-sequential" order of the GPTQ reference): `attn_in` (q/k/v, reading the normed block
//! input), `attn_out` (o, reading the attention context), `mlp_in` (gate/up, reading the normed
//! residual after attention) and `mlp_down` (down, reading `silu(gate) ⊙ up`). Calibration
//! sequences are full windows, so inputs use a plain causal mask and positions from 0.
//!
//! The per-batch [`BlockCache`] keeps the block input, the attention context and the residual
//! after attention, each computed once and only after the layers it depends on were replaced.
//! With [`ActivationPolicy::keep_intermediates`] it also keeps `down_proj`'s input
//! (`silu(gate) ⊙ up`, `[tokens, intermediate]`) from the `mlp_down` stage for the block's output,
//! so a whole block walk costs one forward pass; without it the gate/up products run a second
//! time in [`BlockWalk::finish_block`] and that memory is not held. With bf16 activation
//! storage ([`ActivationPolicy::storage`], CPU flex backend only) the cached
//! tensors and the block outputs are kept in bf16 and widened to f32 for each computation.
//!
//! A mixture-of-experts block has, after `attn_in` and `attn_out`: `moe_in` (the router, and
//! the shared expert's gate and gate/up projections, reading the normed residual), then per
//! expert `e` the routed stages `expert.e.in` (gate/up, reading the rows the router — already
//! compressed — sends to `e`) and `expert.e.down` (down, reading the expert's gated
//! activations on those rows), then `shared.down`. The routing is decided once per batch.

use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use compress_core::backend::{to_bf16_storage, to_f32};
use compress_core::kernels::dense::DensePrecision;
use compress_core::layer_id::{Expert, LinearId, LinearKind};
use compress_core::linear::CompressedLinear;
use compress_core::pipeline::{ActivationPolicy, BlockWalk, Linears, ScaleFolds, StageSpec};
use compress_core::scaling::scale_output_rows;

use super::{full_sequence, Block, FeedForward, LlamaModel, Moe, Routing};

/// Intermediate results of one block for one calibration batch (see [`BlockWalk`]).
#[derive(Debug)]
pub struct BlockCache {
    policy: ActivationPolicy,
    /// Whether bf16 storage applies (the policy asks for it and the device can convert).
    bf16: bool,
    x: Option<Tensor<3>>,
    context: Option<Tensor<3>>,
    residual: Option<Tensor<3>>,
    /// `down_proj`'s input with the count of folds into `up_proj` it was computed under
    /// (`LlamaModel::mlp_folds`): a later fold makes it stale.
    gated: Option<(Tensor<3>, usize)>,
    /// A mixture-of-experts block's routing of this batch (decided by the router as compressed
    /// at the `moe_in` stage).
    routing: Option<Routing>,
}

impl BlockCache {
    /// `x` as the walk stores it (bf16 or f32, see [`ActivationPolicy::storage`]).
    fn keep(&self, x: Tensor<3>) -> Tensor<3> {
        if self.bf16 {
            to_bf16_storage(x)
        } else {
            x
        }
    }
}

impl LlamaModel {
    /// Whether activations can be stored as `policy` asks: bf16 storage uses the flex backend's
    /// host conversion; other devices keep f32.
    fn stores_bf16(&self, policy: &ActivationPolicy) -> bool {
        policy.storage == DensePrecision::Bf16 && LlamaModel::device(self) == Device::flex()
    }

    fn full_sequence(&self, x: &Tensor<3>) -> (Tensor<2, Int>, Tensor<4, Bool>) {
        let [b, t, _] = x.dims();
        full_sequence(b, t, &x.device())
    }

    /// The normed block input; not cached (a norm is cheap), so a gain rescaled by
    /// `fold_input_scales` is always applied.
    fn normed(&self, layer: &Block, c: &BlockCache) -> Tensor<3> {
        let x = c.x.clone();
        layer.attn_norm.forward(to_f32(
            x.expect("block input is kept until the residual exists"),
        ))
    }

    fn cached_context(&self, block: usize, c: &mut BlockCache) -> Tensor<3> {
        let layer = &self.layers[block];
        if c.context.is_none() {
            let normed = self.normed(layer, c);
            let (pos, mask) = self.full_sequence(&normed);
            let mask = self.layer_mask(block, mask);
            let ctx = layer
                .attn
                .context(normed, self.rope_of(block), pos, Some(mask), None);
            c.context = Some(c.keep(ctx));
        }
        to_f32(c.context.clone().unwrap())
    }

    fn cached_residual(&self, block: usize, c: &mut BlockCache) -> Tensor<3> {
        if c.residual.is_none() {
            let context = self.cached_context(block, c);
            let layer = &self.layers[block];
            let x =
                c.x.take()
                    .expect("block input is kept until the residual exists");
            c.context = None;
            let attn = layer.attn.o_proj.forward(context);
            c.residual = Some(c.keep(layer.attn_residual(to_f32(x), attn)));
        }
        to_f32(c.residual.clone().unwrap())
    }
}

impl LlamaModel {
    /// The input of stage `stage` (≥ 3) of a mixture-of-experts block: an expert's gate/up
    /// input (the normed residual's rows routed to it, as `[1, rows, hidden]`) or down input
    /// (its gated activations on them), the shared expert's down input; with `all_tokens`,
    /// an expert's inputs over every token instead.
    fn moe_stage_input(
        &self,
        block: usize,
        m: &Moe,
        stage: usize,
        c: &mut BlockCache,
        all_tokens: bool,
    ) -> Tensor<3> {
        let layer = &self.layers[block];
        let normed = layer.ffn_norm.forward(self.cached_residual(block, c));
        let [b, t, d] = normed.dims();
        let flat: Tensor<2> = normed.reshape([b * t, d]);
        let as_batch = |x: Tensor<2>| {
            let [n, w] = x.dims();
            x.reshape([1, n, w])
        };
        let k = stage - 3;
        if k >= 2 * m.experts.len() {
            let shared = m
                .shared
                .as_ref()
                .expect("the shared.down stage has a shared expert");
            return as_batch(shared.gated(flat));
        }
        let expert = &m.experts[k / 2];
        let rows = if all_tokens {
            flat
        } else {
            if c.routing.is_none() {
                c.routing = Some(m.route(&flat));
            }
            let (rows, _) = c.routing.as_ref().expect("set above").rows_of(k / 2);
            let n = rows.len();
            let idx = Tensor::<1, Int>::from_data(TensorData::new(rows, [n]), &flat.device());
            flat.select(0, idx)
        };
        if k.is_multiple_of(2) {
            as_batch(rows)
        } else {
            as_batch(expert.gated(rows))
        }
    }
}

impl LlamaModel {
    /// Where the router of every mixture-of-experts block sends each token of `tokens`
    /// (one sequence): per block, `None` for a dense MLP, else the chosen experts with their
    /// weights per token, largest first.
    pub fn expert_routing(
        &self,
        tokens: &[u32],
    ) -> Result<Vec<Option<Routing>>, crate::error::ModelError> {
        self.check_len(tokens.len())?;
        let device = LlamaModel::device(self);
        let ids: Vec<i64> = tokens.iter().map(|&t| t as i64).collect();
        let t = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, tokens.len()]), &device);
        let policy = ActivationPolicy::default();
        let mut x = self.embed_tokens(t, &policy);
        let mut out = Vec::with_capacity(self.layers.len());
        for (block, layer) in self.layers.iter().enumerate() {
            let mut cache = self.begin_block(block, x, &policy);
            out.push(match &layer.mlp {
                FeedForward::Moe(m) => {
                    let normed = self.stage_input(block, 2, &mut cache);
                    let [b, n, d] = normed.dims();
                    Some(m.route(&normed.reshape([b * n, d])))
                }
                FeedForward::Dense(_) => None,
            });
            x = self.finish_block(block, cache);
        }
        Ok(out)
    }
}

impl BlockWalk for LlamaModel {
    type Cache = BlockCache;

    fn num_blocks(&self) -> usize {
        LlamaModel::num_blocks(self)
    }

    fn stages(&self, block: usize) -> Vec<StageSpec> {
        let id = |k| LinearId::block(block, k);
        let mut stages = vec![
            StageSpec::new(
                "attn_in",
                vec![id(LinearKind::Q), id(LinearKind::K), id(LinearKind::V)],
            ),
            StageSpec::new("attn_out", vec![id(LinearKind::O)]),
        ];
        match &self.layers[block].mlp {
            FeedForward::Dense(_) => {
                stages.push(StageSpec::new(
                    "mlp_in",
                    vec![id(LinearKind::Gate), id(LinearKind::Up)],
                ));
                stages.push(StageSpec::new("mlp_down", vec![id(LinearKind::Down)]));
            }
            FeedForward::Moe(m) => {
                let expert = |e, k| LinearId::expert(block, e, k);
                let mut first = vec![id(LinearKind::Router)];
                if m.shared_gate.is_some() {
                    first.push(expert(Expert::Shared, LinearKind::Router));
                }
                if m.shared.is_some() {
                    first.push(expert(Expert::Shared, LinearKind::Gate));
                    first.push(expert(Expert::Shared, LinearKind::Up));
                }
                stages.push(StageSpec::new("moe_in", first));
                for e in 0..m.experts.len() as u32 {
                    let r = Expert::Routed(e);
                    stages.push(StageSpec::routed(
                        format!("expert.{e}.in"),
                        vec![expert(r, LinearKind::Gate), expert(r, LinearKind::Up)],
                    ));
                    stages.push(StageSpec::routed(
                        format!("expert.{e}.down"),
                        vec![expert(r, LinearKind::Down)],
                    ));
                }
                if m.shared.is_some() {
                    stages.push(StageSpec::new(
                        "shared.down",
                        vec![expert(Expert::Shared, LinearKind::Down)],
                    ));
                }
            }
        }
        stages
    }

    fn device(&self) -> Device {
        LlamaModel::device(self)
    }

    /// Stored like the block outputs (bf16 under bf16 activation storage), so the embedded
    /// calibration set is never held in f32.
    fn embed_tokens(&self, tokens: Tensor<2, Int>, policy: &ActivationPolicy) -> Tensor<3> {
        let x = self.embed(tokens);
        if self.stores_bf16(policy) {
            to_bf16_storage(x)
        } else {
            x
        }
    }

    fn begin_block(&self, _block: usize, x: Tensor<3>, policy: &ActivationPolicy) -> BlockCache {
        let mut c = BlockCache {
            policy: *policy,
            bf16: self.stores_bf16(policy),
            x: None,
            context: None,
            residual: None,
            gated: None,
            routing: None,
        };
        c.x = Some(c.keep(x));
        c
    }

    fn stage_input(&self, block: usize, stage: usize, c: &mut BlockCache) -> Tensor<3> {
        let layer = &self.layers[block];
        match (stage, &layer.mlp) {
            (0, _) => self.normed(layer, c),
            (1, _) => self.cached_context(block, c),
            (2, _) => layer.ffn_norm.forward(self.cached_residual(block, c)),
            (3, FeedForward::Dense(mlp)) => {
                let h = self.cached_residual(block, c);
                let gated = mlp.gated(layer.ffn_norm.forward(h));
                if c.policy.keep_intermediates {
                    c.gated = Some((c.keep(gated.clone()), self.mlp_folds));
                }
                gated
            }
            (s, FeedForward::Moe(m)) => self.moe_stage_input(block, m, s, c, false),
            (s, _) => panic!("a dense block has 4 stages, asked for stage {s}"),
        }
    }

    fn stage_input_all_tokens(
        &self,
        block: usize,
        stage: usize,
        c: &mut BlockCache,
    ) -> Option<Tensor<3>> {
        match &self.layers[block].mlp {
            FeedForward::Moe(m) if stage >= 3 && stage < 3 + 2 * m.experts.len() => {
                Some(self.moe_stage_input(block, m, stage, c, true))
            }
            _ => None,
        }
    }

    fn finish_block(&self, block: usize, mut c: BlockCache) -> Tensor<3> {
        let h = self.cached_residual(block, &mut c);
        let layer = &self.layers[block];
        let mlp = match (c.gated.take(), &layer.mlp) {
            // Computed with the same gate/up weights (no fold since), so equal to recomputing it.
            (Some((gated, folds)), FeedForward::Dense(m)) if folds == self.mlp_folds => {
                m.down_proj.forward(to_f32(gated))
            }
            (_, ffn) => ffn.forward(layer.ffn_norm.forward(h.clone())),
        };
        c.keep(layer.mlp_residual(h, mlp))
    }

    fn release_embedding(&mut self) {
        LlamaModel::release_embedding(self);
    }

    fn head_logits(&self, x: Tensor<3>) -> Tensor<3> {
        self.logits_of(to_f32(x))
    }

    fn head_input(&self, x: Tensor<3>) -> Tensor<3> {
        self.norm.forward(to_f32(x))
    }
}

impl Linears for LlamaModel {
    fn linear(&self, id: LinearId) -> Option<&CompressedLinear> {
        LlamaModel::linear(self, id)
    }

    fn linear_mut(&mut self, id: LinearId) -> Option<&mut CompressedLinear> {
        LlamaModel::linear_mut(self, id)
    }
}

impl ScaleFolds for LlamaModel {
    /// Folds into the norm gains (stages 0 and 2) and the rows of `up_proj` (stage 3). Stage 1
    /// (`o_proj`, fed by the attention context) is not folded: with grouped-query attention a
    /// value head serves several query heads, so its rows cannot carry per-context-channel
    /// scales.
    fn fold_input_scales(&mut self, block: usize, stage: usize, scales: &[f32]) -> bool {
        let device = LlamaModel::device(self);
        let inv = Tensor::<1>::from_data(
            TensorData::new(
                scales.iter().map(|v| 1.0 / v).collect::<Vec<f32>>(),
                [scales.len()],
            ),
            &device,
        );
        let layer = &mut self.layers[block];
        let norm = match (stage, &mut layer.mlp) {
            (0, _) => &mut layer.attn_norm,
            (2, FeedForward::Dense(_)) => &mut layer.ffn_norm,
            (3, FeedForward::Dense(m)) => {
                self.mlp_folds += 1;
                return scale_output_rows(&mut m.up_proj, scales);
            }
            // In a mixture of experts the normed residual feeds the router and every expert,
            // so no single stage can take a fold into the norm; an expert's (or the shared
            // expert's) down projection reads its own gated activations: fold into its up rows.
            (s, FeedForward::Moe(m)) if s >= 3 => {
                let e = s - 3;
                let up = if e < 2 * m.experts.len() {
                    if e % 2 == 0 {
                        return false;
                    }
                    &mut m.experts[e / 2].up_proj
                } else {
                    match &mut m.shared {
                        Some(shared) => &mut shared.up_proj,
                        None => return false,
                    }
                };
                return scale_output_rows(up, scales);
            }
            _ => return false,
        };
        norm.weight = norm.weight.clone().map(|g| g * inv);
        true
    }
}
