//! What the pipeline needs from a model, as three small traits:
//!
//! - [`BlockWalk`]: walk the blocks in order and forward one block stage by stage;
//! - [`Linears`]: get or replace a linear by its [`LinearId`];
//! - [`ScaleFolds`]: the function-preserving rescalings the family allows (which norm or linear
//!   produces a stage's input), used by AWQ-style stage scales.
//!
//! [`BlockwiseModel`] is all three together (implemented for every type that has them). How a
//! walk stores what it keeps between calls is not model state: the pipeline hands an
//! [`ActivationPolicy`] to [`BlockWalk::begin_block`] and [`BlockWalk::embed_tokens`].

use burn::tensor::{Device, Int, Tensor};
use compress_kernels::dense::DensePrecision;

use crate::layer_id::LinearId;
use crate::linear::CompressedLinear;

/// The linears of one block that read the same input, compressed together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageSpec {
    /// Name of the stage's input, e.g. `attn_in` (used in messages).
    pub name: String,
    /// The linears reading it, e.g. the block's q/k/v projections.
    pub linears: Vec<LinearId>,
    /// The input is only the tokens a router sends to an expert (a mixture-of-experts
    /// block): the pipeline then counts them and, below the rule of
    /// [`Pipeline::min_routed_tokens`](super::Pipeline), calibrates on every token instead
    /// ([`BlockWalk::stage_input_all_tokens`]).
    pub routed: bool,
}

impl StageSpec {
    /// A stage named `name` over `linears` that every token reaches.
    pub fn new(name: impl Into<String>, linears: Vec<LinearId>) -> Self {
        Self {
            name: name.into(),
            linears,
            routed: false,
        }
    }

    /// A stage whose input is the tokens routed to one expert.
    pub fn routed(name: impl Into<String>, linears: Vec<LinearId>) -> Self {
        Self {
            routed: true,
            ..Self::new(name, linears)
        }
    }
}

/// How a calibration walk keeps activations between calls: handed to the model for each block
/// by the pipeline (never stored in the model).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ActivationPolicy {
    /// Storage of the activations a walk keeps — block inputs and outputs, cached
    /// intermediates: [`DensePrecision::Bf16`] halves their memory (values rounded to bf16 when
    /// stored, widened to f32 for every computation), [`DensePrecision::F32`] keeps them exact.
    /// A model may keep f32 where it cannot store bf16 (a backend without the conversion).
    pub storage: DensePrecision,
    /// Keep intermediate results the walk would otherwise compute twice, for every batch until
    /// [`BlockWalk::finish_block`] — for a llama block, `down_proj`'s `[tokens, intermediate]`
    /// input, whose gate/up products `finish_block` would otherwise run again. Results are the
    /// same either way; only time and memory change.
    pub keep_intermediates: bool,
}

/// Walking a model block by block: the calibration forward pass.
///
/// A block is walked with a per-batch cache of its intermediate results, so each sub-layer runs
/// once per batch however many stages there are: [`begin_block`](Self::begin_block), then
/// [`stage_input`](Self::stage_input) for stages in increasing order (some may be skipped), then
/// [`finish_block`](Self::finish_block). Between two calls the linears of the earlier stages may
/// have been replaced; later results must be computed with the replaced weights, while results
/// that no replaced layer influences may come from the cache.
///
/// The pipeline runs calibration batches two at a time on the CPU backends, so a model is
/// shared between threads (`Sync`) and a batch's cache moves to the thread that runs it
/// (`Send`).
pub trait BlockWalk: Sync {
    /// Intermediate results of one block for one calibration batch.
    type Cache: Send;
    /// Number of blocks.
    fn num_blocks(&self) -> usize;
    /// The stages of block `block`, in true-sequential order.
    fn stages(&self, block: usize) -> Vec<StageSpec>;
    /// The device the weights live on.
    fn device(&self) -> Device;
    /// Block 0's input for token ids `[batch, seq]`: `[batch, seq, hidden]`, stored as `policy`
    /// says.
    fn embed_tokens(&self, tokens: Tensor<2, Int>, policy: &ActivationPolicy) -> Tensor<3>;
    /// Called once the calibration sequences are embedded: drops what only embedding needs,
    /// where the model can read it again on demand (a lazily loaded model's token embedding).
    /// The default keeps everything.
    fn release_embedding(&mut self) {}
    /// Starts block `block` on input `x` (`[batch, seq, hidden]`, f32 or bf16), keeping
    /// activations as `policy` says.
    fn begin_block(&self, block: usize, x: Tensor<3>, policy: &ActivationPolicy) -> Self::Cache;
    /// The input of stage `stage` (`[batch, seq, in]`, f32), computed with the block's current
    /// weights.
    fn stage_input(&self, block: usize, stage: usize, cache: &mut Self::Cache) -> Tensor<3>;
    /// For a [routed](StageSpec::routed) stage, its input as if every token of the batch were
    /// routed to the expert (`[batch, seq, in]`): what the pipeline calibrates an expert on when
    /// it receives too few tokens. `None` (the default) for a stage every token reaches.
    fn stage_input_all_tokens(
        &self,
        _block: usize,
        _stage: usize,
        _cache: &mut Self::Cache,
    ) -> Option<Tensor<3>> {
        None
    }
    /// The block's output (`[batch, seq, hidden]`) with its current weights, stored as the
    /// cache's policy says.
    fn finish_block(&self, block: usize, cache: Self::Cache) -> Tensor<3>;
    /// Logits `[batch, seq, vocab]` from the last block's output (final norm and output head).
    fn head_logits(&self, x: Tensor<3>) -> Tensor<3>;
    /// The head's input for the last block's output `x` (e.g. after the final norm).
    fn head_input(&self, x: Tensor<3>) -> Tensor<3> {
        x
    }
    /// The block's output for input `x` in one go (f32, nothing kept).
    fn block_forward(&self, block: usize, x: Tensor<3>) -> Tensor<3> {
        let cache = self.begin_block(block, x, &ActivationPolicy::default());
        self.finish_block(block, cache)
    }
}

/// Getting and replacing a model's linears by [`LinearId`].
pub trait Linears {
    /// The linear `id`, or `None` if the model has no such layer (or does not let a recipe
    /// compress it: a head tied to the embedding may still be offered, as a copy is stored).
    fn linear(&self, id: LinearId) -> Option<&CompressedLinear>;
    /// The linear `id`, to replace it.
    fn linear_mut(&mut self, id: LinearId) -> Option<&mut CompressedLinear>;
}

/// The function-preserving rescalings a model family allows.
pub trait ScaleFolds {
    /// Divides the input of stage `stage` of block `block` by `scales` (one per input channel)
    /// by rescaling the operation that produces it — a norm's gain, the rows of a previous
    /// projection — so that scaling the stage's weight columns by `scales` keeps the model's
    /// function. Results already cached for later stages must stay valid. Returns false,
    /// changing nothing, where there is no such operation (the default).
    fn fold_input_scales(&mut self, _block: usize, _stage: usize, _scales: &[f32]) -> bool {
        false
    }
}

/// A model the pipeline can compress block by block: [`BlockWalk`] + [`Linears`] +
/// [`ScaleFolds`], implemented for every type that has the three.
pub trait BlockwiseModel: BlockWalk + Linears + ScaleFolds {
    /// Every linear of every block, in walking order (stages of block 0, then block 1, …).
    fn block_linears(&self) -> Vec<LinearId> {
        (0..self.num_blocks())
            .flat_map(|b| self.stages(b).into_iter().flat_map(|s| s.linears))
            .collect()
    }

    /// The linear `id`; a missing layer is a bug of the model's stage list (the pipeline only
    /// asks for ids the model listed), reported with a panic naming it.
    fn expect_linear(&self, id: LinearId) -> &CompressedLinear {
        self.linear(id)
            .unwrap_or_else(|| panic!("the model lists `{id}` but has no such linear"))
    }

    /// [`Self::expect_linear`], to replace it.
    fn expect_linear_mut(&mut self, id: LinearId) -> &mut CompressedLinear {
        self.linear_mut(id)
            .unwrap_or_else(|| panic!("the model lists `{id}` but has no such linear"))
    }
}

impl<T: BlockWalk + Linears + ScaleFolds> BlockwiseModel for T {}

/// The stage storage a run asks for, kept only where the model can store it.
pub(crate) fn storage_for(precision: DensePrecision) -> DensePrecision {
    match compress_kernels::dense::path_for(precision) {
        compress_kernels::dense::DensePath::F32 => DensePrecision::F32,
        _ => precision,
    }
}
