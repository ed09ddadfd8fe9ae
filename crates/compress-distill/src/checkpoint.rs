//! Training checkpoints that resume exactly.
//!
//! A checkpoint is a directory `step-NNNNNNNN` holding
//! - `params.safetensors`: every float parameter of the student in the model's visiting order
//!   (`param.0`, `param.1`, …; with LoRA, each adapted weight is followed by its adapter's `A`
//!   and `B`), with the burn parameter ids in the metadata so that the restored parameters keep
//!   their ids — the optimizer's state is keyed by them (LoRA factors get fresh random ids when
//!   attached; restoring gives them back the checkpoint's);
//! - `optimizer.bpk`: the AdamW moments (burn-optim's own burnpack record);
//! - `state.json`: the next step and the loss history.
//!
//! Each directory is written to a hidden temporary name and renamed when complete
//! ([`write_atomic_dir`]), so a run killed mid-write leaves the previous checkpoint as the
//! latest. The data order is a function of `(seed, step)` and the learning rate of the step, so
//! parameters + moments + step are the whole training state.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::ModuleOptimizer;
use burn::tensor::{Device, Tensor, TensorData};
use compress_model::save::write_atomic_dir;
use compress_model::LlamaModel;
use safetensors::tensor::{Dtype, TensorView};
use serde::{Deserialize, Serialize};

use crate::error::DistillError;
use crate::train::StepLoss;

/// What `state.json` records.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CheckpointState {
    /// Format version of the checkpoint directory.
    pub version: u32,
    /// The next step to run.
    pub next_step: usize,
    /// Losses of every step run so far.
    pub history: Vec<StepLoss>,
}

const VERSION: u32 = 1;

impl CheckpointState {
    /// The state before `next_step`, after the steps in `history`.
    pub fn new(next_step: usize, history: Vec<StepLoss>) -> Self {
        Self {
            version: VERSION,
            next_step,
            history,
        }
    }
}

/// Float parameters of a module in visiting order: `(id, shape, values)`.
type Snapshot = Vec<(u64, Vec<usize>, Vec<f32>)>;

struct Collect(Snapshot);

impl ModuleVisitor for Collect {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let t = param.val();
        let shape = t.dims().to_vec();
        let values = t
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .unwrap_or_default();
        self.0.push((param.id.val(), shape, values));
    }
}

/// Every float parameter of `module`, in visiting order.
fn snapshot<M: Module>(module: &M) -> Snapshot {
    let mut c = Collect(Vec::new());
    module.visit(&mut c);
    c.0
}

struct Restore<'a> {
    snap: &'a Snapshot,
    next: usize,
    device: Device,
    error: Option<String>,
}

impl ModuleMapper for Restore<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let i = self.next;
        self.next += 1;
        let Some((id, shape, values)) = self.snap.get(i) else {
            self.error.get_or_insert_with(|| {
                format!("the checkpoint has fewer than {} parameters", i + 1)
            });
            return param;
        };
        let dims = param.val().dims().to_vec();
        if *shape != dims {
            self.error.get_or_insert_with(|| {
                format!("parameter {i}: checkpoint shape {shape:?}, model shape {dims:?}")
            });
            return param;
        }
        let t = Tensor::<D>::from_data(TensorData::new(values.clone(), dims), &self.device);
        // Keeps the parameter's device and training setting (a frozen LoRA base stays frozen,
        // its adapter factors trainable), takes the checkpoint's id.
        param.transform_for_load(t, ParamId::from(*id))
    }
}

/// The checkpoint directory for `step` under `dir`.
fn step_dir(dir: &Path, step: usize) -> PathBuf {
    dir.join(format!("step-{step:08}"))
}

/// The most recent complete checkpoint under `dir`, if any.
pub fn latest(dir: &Path) -> Option<PathBuf> {
    let mut best: Option<(usize, PathBuf)> = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(step) = name
            .strip_prefix("step-")
            .and_then(|s| s.parse::<usize>().ok())
        else {
            continue;
        };
        if entry.path().join("state.json").is_file() && best.as_ref().is_none_or(|(b, _)| step > *b)
        {
            best = Some((step, entry.path()));
        }
    }
    best.map(|(_, p)| p)
}

/// Writes a checkpoint of `model` and `optim` before `state.next_step` into `dir`, then removes
/// older checkpoints there.
pub fn save(
    dir: &Path,
    model: &LlamaModel,
    optim: &ModuleOptimizer,
    state: &CheckpointState,
) -> Result<PathBuf, DistillError> {
    std::fs::create_dir_all(dir).map_err(|e| DistillError::io(dir, e))?;
    let target = step_dir(dir, state.next_step);
    if target.exists() {
        std::fs::remove_dir_all(&target).map_err(|e| DistillError::io(&target, e))?;
    }
    let snap = snapshot(model);
    write_atomic_dir(&target, |tmp| {
        let bytes: Vec<Vec<u8>> = snap
            .iter()
            .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
            .collect();
        let mut views = Vec::with_capacity(snap.len());
        for (i, ((_, shape, _), b)) in snap.iter().zip(&bytes).enumerate() {
            let view = TensorView::new(Dtype::F32, shape.clone(), b)
                .map_err(|e| compress_model::ModelError::InvalidInput(e.to_string()))?;
            views.push((format!("param.{i}"), view));
        }
        let ids: Vec<String> = snap.iter().map(|(id, _, _)| id.to_string()).collect();
        let meta = HashMap::from([
            (
                "format".to_string(),
                "compress-distill checkpoint".to_string(),
            ),
            ("ids".to_string(), ids.join(",")),
        ]);
        let path = tmp.join("params.safetensors");
        safetensors::serialize_to_file(views, Some(meta), &path)
            .map_err(|e| compress_model::ModelError::InvalidInput(e.to_string()))?;
        optim.save(tmp.join("optimizer.bpk")).map_err(|e| {
            compress_model::ModelError::InvalidInput(format!("optimizer state: {e:?}"))
        })?;
        let json = serde_json::to_vec_pretty(state)
            .map_err(|e| compress_model::ModelError::InvalidInput(e.to_string()))?;
        let p = tmp.join("state.json");
        std::fs::write(&p, json)
            .map_err(|source| compress_model::ModelError::Io { path: p, source })
    })?;
    // Older checkpoints are superseded.
    for entry in std::fs::read_dir(dir)
        .map_err(|e| DistillError::io(dir, e))?
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("step-") && entry.path() != target {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    Ok(target)
}

/// Restores a checkpoint written by [`save`] into `model` (the same architecture, with the same
/// LoRA adapters attached if it had them) and `optim`, returning the state. Each restored
/// tensor is built on `device` and then placed where the parameter it replaces lives, with that
/// parameter's training setting.
pub fn load(
    path: &Path,
    model: LlamaModel,
    optim: ModuleOptimizer,
    device: &Device,
) -> Result<(LlamaModel, ModuleOptimizer, CheckpointState), DistillError> {
    let bad = |what: String| DistillError::Checkpoint {
        path: path.to_path_buf(),
        message: what,
    };
    let p = path.join("state.json");
    let state: CheckpointState =
        serde_json::from_slice(&std::fs::read(&p).map_err(|e| DistillError::io(&p, e))?)
            .map_err(|e| bad(format!("state.json: {e}")))?;
    if state.version != VERSION {
        return Err(bad(format!(
            "version {} (this build reads {VERSION})",
            state.version
        )));
    }
    let p = path.join("params.safetensors");
    let bytes = std::fs::read(&p).map_err(|e| DistillError::io(&p, e))?;
    let (_, meta) =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
    let ids: Vec<u64> = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get("ids"))
        .ok_or_else(|| bad("no parameter ids in params.safetensors".into()))?
        .split(',')
        .map(|s| {
            s.parse::<u64>()
                .map_err(|e| bad(format!("parameter id {s:?}: {e}")))
        })
        .collect::<Result<_, _>>()?;
    let mut snap = Snapshot::with_capacity(ids.len());
    for (i, id) in ids.into_iter().enumerate() {
        let t = st
            .tensor(&format!("param.{i}"))
            .map_err(|e| bad(e.to_string()))?;
        if t.dtype() != Dtype::F32 {
            return Err(bad(format!("param.{i} is {:?}, expected F32", t.dtype())));
        }
        let values = t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        snap.push((id, t.shape().to_vec(), values));
    }
    let mut mapper = Restore {
        snap: &snap,
        next: 0,
        device: device.clone(),
        error: None,
    };
    let model = model.map(&mut mapper);
    if let Some(e) = mapper.error {
        return Err(bad(e));
    }
    if mapper.next != snap.len() {
        return Err(bad(format!(
            "the checkpoint has {} parameters, the model {}",
            snap.len(),
            mapper.next
        )));
    }
    let optim = optim
        .load(path.join("optimizer.bpk"))
        .map_err(|e| bad(format!("optimizer state: {e:?}")))?;
    Ok((model, optim, state))
}
