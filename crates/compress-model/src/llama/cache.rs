//! Key/value cache for incremental decoding.

use burn::tensor::Tensor;

use crate::error::ModelError;

/// Keys and values of one layer for every position seen so far, `[batch, kv_heads, len, head_dim]`.
#[derive(Debug, Default, Clone)]
pub struct LayerCache {
    kv: Option<(Tensor<4>, Tensor<4>)>,
}

impl LayerCache {
    /// Appends this step's keys and values; returns the keys and values of every position.
    pub fn append(&mut self, k: Tensor<4>, v: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
        let (k, v) = match self.kv.take() {
            Some((pk, pv)) => (Tensor::cat(vec![pk, k], 2), Tensor::cat(vec![pv, v], 2)),
            None => (k, v),
        };
        self.kv = Some((k.clone(), v.clone()));
        (k, v)
    }

    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.kv.as_ref().map_or(0, |(k, _)| k.dims()[2])
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sequences in the cached batch (0 when empty).
    fn batch(&self) -> usize {
        self.kv.as_ref().map_or(0, |(k, _)| k.dims()[0])
    }
}

/// The cache of a whole model: one [`LayerCache`] per decoder block.
#[derive(Debug, Clone)]
pub struct KvCache {
    pub(crate) layers: Vec<LayerCache>,
}

impl KvCache {
    /// An empty cache for a model with `num_layers` blocks.
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: vec![LayerCache::default(); num_layers],
        }
    }

    /// Number of positions already processed (the position of the next token).
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, LayerCache::len)
    }

    /// Whether no position has been processed yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The cache of one sequence repeated for a batch of `n`: `n` continuations of the same
    /// prefix (e.g. the choices of a multiple-choice question after its shared context) run as
    /// one batch without recomputing the prefix. Errors unless the cache holds exactly one
    /// sequence.
    pub fn repeat_batch(&self, n: usize) -> Result<KvCache, ModelError> {
        let batch = self.layers.first().map_or(0, LayerCache::batch);
        if batch != 1 || n == 0 {
            return Err(ModelError::InvalidInput(format!(
                "repeat_batch needs a cache of one sequence and n ≥ 1 (cache batch {batch}, n = {n})"
            )));
        }
        let layers = self
            .layers
            .iter()
            .map(|l| LayerCache {
                kv: l
                    .kv
                    .as_ref()
                    .map(|(k, v)| (k.clone().repeat_dim(0, n), v.clone().repeat_dim(0, n))),
            })
            .collect();
        Ok(KvCache { layers })
    }
}
