//! `compress inspect`: what a model is and how each layer is stored.

use std::collections::BTreeMap;

use compress::core::layer_id::{LinearId, LinearKind};
use compress::model::llama::BLOCK_LINEARS;
use compress::model::load::GgufModel;
use compress::model::weights::{Proj, WeightName, WeightSource};
use compress::model::{LlamaConfig, LoadedModel};
use serde::Serialize;

use crate::cli::InspectArgs;
use crate::{load_model, print_json, CliError, CliResult};

/// One linear layer.
#[derive(Debug, Clone, Serialize)]
pub struct LayerInfo {
    /// The layer, serialized as its path (`layers.3.mlp.down_proj`, `lm_head`).
    #[serde(rename = "path")]
    pub id: LinearId,
    /// `[out, in]`.
    pub shape: [usize; 2],
    /// Storage ([`compress::core::linear::CompressedLinear::describe`]).
    pub storage: String,
    /// Stored bits per weight (codes, scales, zeros, masks, factors).
    pub bits_per_weight: f64,
    /// With `--spectrum`: the singular-value analysis of the layer's (dense-equivalent) weight.
    pub spectrum: Option<SpectrumInfo>,
}

/// The spectrum summary of one layer (the full normalised spectrum is in the library's
/// [`compress::lowrank::spectrum::Spectrum`]).
#[derive(Debug, Clone, Serialize)]
pub struct SpectrumInfo {
    /// `exp(entropy)` of the normalised singular values.
    pub effective_rank: f64,
    /// `‖W‖_F² / σ_max²`.
    pub stable_rank: f64,
    /// Energy fraction in the top 10%, 25%, 50% of the directions.
    pub energy_at_10_25_50: [f64; 3],
}

/// What `inspect` reports.
#[derive(Debug, Clone, Serialize)]
pub struct InspectReport {
    /// The file (or `embedded stories260K`).
    pub source: String,
    /// `gguf`, `container`, `huggingface` or `embedded`.
    pub format: String,
    /// Hyper-parameters.
    pub config: LlamaConfig,
    /// Weights in the model (embedding, blocks, norms, head unless tied).
    pub parameters: usize,
    /// Every linear layer of the blocks, and the head.
    pub layers: Vec<LayerInfo>,
    /// Bits per weight over the blocks' linear layers.
    pub linear_bits_per_weight: f64,
    /// Tokenizer vocabulary size.
    pub vocab_size: usize,
    /// GGUF files: number of tensors per ggml type.
    pub gguf_tensor_types: Option<BTreeMap<String, usize>>,
    /// Containers: the provenance notes of the header.
    pub provenance: Option<BTreeMap<String, String>>,
    /// Containers of nested (Matryoshka) models: how their prefixes nest.
    pub nesting: Option<compress::model::container::NestingEntry>,
    /// File size in bytes (directories: not reported).
    pub file_bytes: Option<u64>,
}

/// Builds the report for a loaded model.
pub fn report(m: &LoadedModel, source: String, format: String) -> InspectReport {
    let model = &m.model;
    let mut layers = Vec::new();
    for (l, block) in model.layers.iter().enumerate() {
        for (id, lin) in block.linears(l) {
            layers.push(LayerInfo {
                id,
                shape: [lin.out_features(), lin.in_features()],
                storage: lin.describe(),
                bits_per_weight: lin.bits_per_weight(),
                spectrum: None,
            });
        }
    }
    let (bits, weights) = layers.iter().fold((0.0, 0usize), |(b, n), l| {
        let w = l.shape[0] * l.shape[1];
        (b + l.bits_per_weight * w as f64, n + w)
    });
    let head = &model.lm_head;
    layers.push(LayerInfo {
        id: LinearId::HEAD,
        shape: [head.out_features(), head.in_features()],
        storage: head.describe(),
        bits_per_weight: head.bits_per_weight(),
        spectrum: None,
    });
    InspectReport {
        source,
        format,
        config: model.config().clone(),
        parameters: model.num_parameters(),
        layers,
        linear_bits_per_weight: bits / weights.max(1) as f64,
        vocab_size: m.tokenizer.vocab_size(),
        gguf_tensor_types: None,
        provenance: None,
        nesting: None,
        file_bytes: None,
    }
}

/// Runs `inspect`.
pub fn inspect(args: &InspectArgs, device: &burn::tensor::Device, json: bool) -> CliResult<()> {
    let path = args.model.model.as_deref();
    let m = load_model(path, device)?;
    let (source, format) = match path {
        None => ("embedded stories260K".to_string(), "embedded".to_string()),
        Some(p) if p.is_dir() => (p.display().to_string(), "huggingface".into()),
        Some(p) if compress::model::container::is_container(p) => {
            (p.display().to_string(), "container".into())
        }
        Some(p) => (p.display().to_string(), "gguf".into()),
    };
    let mut r = report(&m, source, format);
    if args.spectrum {
        let curves = add_spectra(&mut r, &m)?;
        if let Some(plot) = &args.plot {
            plot_spectra(plot, &r.source, &curves)?;
        }
    }
    if let Some(p) = path.filter(|p| p.is_file()) {
        r.file_bytes = std::fs::metadata(p).ok().map(|m| m.len());
        if r.format == "gguf" {
            gguf_storage(&mut r, p)?;
        } else if r.format == "container" {
            let header = compress::model::container::read_header(p).map_err(CliError::input)?;
            r.provenance = Some(header.provenance);
            r.nesting = header.nesting;
        }
    }
    if json {
        return print_json(&r);
    }
    print_text(&r, args.layers);
    Ok(())
}

/// Points of each spectrum curve: σ at fractions `(k + ½) / SPECTRUM_POINTS` of the directions.
const SPECTRUM_POINTS: usize = 100;

/// Per layer kind (`attn.q_proj`, …), the sum over blocks of `ln(σ_i / σ_0)` at each of
/// [`SPECTRUM_POINTS`] fractions of the directions, and the number of blocks summed.
type SpectrumCurves = Vec<(String, Vec<f64>, usize)>;

/// Fills every block linear's spectrum (an SVD per layer, in f64: seconds for SmolLM2) and
/// returns the curves for [`plot_spectra`].
fn add_spectra(r: &mut InspectReport, m: &LoadedModel) -> CliResult<SpectrumCurves> {
    let mut curves: SpectrumCurves = BLOCK_LINEARS
        .iter()
        .map(|&k| {
            (
                LinearId::block(0, k).name_in_block(),
                vec![0.0; SPECTRUM_POINTS],
                0,
            )
        })
        .collect();
    for layer in r.layers.iter_mut() {
        // Per kind of projection; experts count as their kind, routers and the head not at all.
        let Some(curve) = BLOCK_LINEARS.iter().position(|&k| k == layer.id.kind()) else {
            continue;
        };
        if layer.id.is_head() {
            continue;
        }
        let lin = m
            .model
            .linear(layer.id)
            .ok_or_else(|| CliError::failed(format!("{}: not in the model", layer.id)))?;
        let w: Vec<f32> = lin
            .dense_weight()
            .into_data()
            .try_to_vec::<f32>()
            .map_err(|e| CliError::failed(format!("{}: {e:?}", layer.id)))?;
        let s = compress::lowrank::spectrum::spectrum(&w, layer.shape[0], layer.shape[1])
            .map_err(|e| CliError::failed(format!("{}: {e}", layer.id)))?;
        layer.spectrum = Some(SpectrumInfo {
            effective_rank: s.effective_rank,
            stable_rank: s.stable_rank,
            energy_at_10_25_50: [s.energy_at[0].1, s.energy_at[1].1, s.energy_at[2].1],
        });
        let curve = &mut curves[curve];
        let n = s.normalized.len();
        for (k, acc) in curve.1.iter_mut().enumerate() {
            let idx = (((k as f64 + 0.5) / SPECTRUM_POINTS as f64) * n as f64) as usize;
            // A zero singular value (rank-deficient weight) is clamped to 1e-12 for the log.
            *acc += s.normalized[idx.min(n - 1)].max(1e-12).ln();
        }
        curve.2 += 1;
    }
    Ok(curves)
}

/// Draws the geometric mean over blocks of each layer kind's normalised spectrum.
fn plot_spectra(path: &std::path::Path, source: &str, curves: &SpectrumCurves) -> CliResult<()> {
    use compress::eval::plot::{plot, Chart, Series};
    let series: Vec<Series> = curves
        .iter()
        .filter(|(_, _, blocks)| *blocks > 0)
        .map(|(name, sums, blocks)| Series {
            name: name.clone(),
            points: sums
                .iter()
                .enumerate()
                .map(|(k, s)| {
                    let x = (k as f64 + 0.5) / SPECTRUM_POINTS as f64;
                    (x, (s / *blocks as f64).exp())
                })
                .collect(),
        })
        .collect();
    let chart = Chart {
        title: format!(
            "Singular-value decay: {}",
            std::path::Path::new(source)
                .file_name()
                .map_or(source.into(), |f| f.to_string_lossy())
        ),
        x_label: "fraction of directions i / min(out, in)".into(),
        y_label: "σ_i / σ_0 (geometric mean over blocks)".into(),
        log_y: true,
        lines: true,
    };
    plot(path, &chart, &series).map_err(CliError::failed)?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

/// A GGUF model is dequantized on load, so its layers' storage comes from the file's tensor
/// types: `ggml Q4_0` at that type's bits per weight (scales included).
fn gguf_storage(r: &mut InspectReport, p: &std::path::Path) -> CliResult<()> {
    let source = GgufModel::open(p).map_err(CliError::input)?;
    let file = source.file();
    let mut types = BTreeMap::new();
    for t in file.tensors() {
        *types.entry(t.ggml_type().name().to_string()).or_insert(0) += 1;
    }
    r.gguf_tensor_types = Some(types);
    let (mut bits, mut weights) = (0.0, 0usize);
    for layer in r.layers.iter_mut() {
        let id = layer.id;
        let proj = match id.kind() {
            LinearKind::Q => Some(Proj::Q),
            LinearKind::K => Some(Proj::K),
            LinearKind::V => Some(Proj::V),
            LinearKind::O => Some(Proj::O),
            LinearKind::Gate => Some(Proj::Gate),
            LinearKind::Up => Some(Proj::Up),
            LinearKind::Down => Some(Proj::Down),
            _ => None,
        };
        let name = match (id.block_index(), proj) {
            (None, _) => "output.weight".to_string(),
            (Some(l), Some(p)) => source.file_name(WeightName::Weight(l, p)),
            (Some(_), None) => continue,
        };
        // A tied head has no tensor of its own: it is the embedding.
        let name = if file.tensor(&name).is_none() && name == "output.weight" {
            "token_embd.weight".to_string()
        } else {
            name
        };
        let Some(info) = file.tensor(&name) else {
            continue;
        };
        let ty = info.ggml_type();
        layer.storage = format!("ggml {ty} (dequantized on load)");
        layer.bits_per_weight = 8.0 * ty.type_size() as f64 / ty.block_size() as f64;
        if !layer.id.is_head() {
            let n = layer.shape[0] * layer.shape[1];
            bits += layer.bits_per_weight * n as f64;
            weights += n;
        }
    }
    r.linear_bits_per_weight = bits / weights.max(1) as f64;
    Ok(())
}

fn print_text(r: &InspectReport, all_layers: bool) {
    let c = &r.config;
    println!("{} ({})", r.source, r.format);
    println!(
        "  {:?}: {} blocks, hidden {}, FFN {}, {} heads / {} KV heads of {}, vocab {}, context {}, RoPE θ {} ({:?}){}",
        c.architecture,
        c.num_layers,
        c.hidden_size,
        c.intermediate_size,
        c.num_heads,
        c.num_kv_heads,
        c.head_dim,
        c.vocab_size,
        c.max_seq_len,
        c.rope_theta,
        c.rope_layout,
        if c.tie_word_embeddings { ", tied head" } else { "" }
    );
    println!(
        "  {:.2} M parameters; block linears at {:.3} bits/weight{}",
        r.parameters as f64 / 1e6,
        r.linear_bits_per_weight,
        r.file_bytes.map_or(String::new(), |b| format!(
            "; file {:.2} MB",
            b as f64 / 1e6
        ))
    );
    if all_layers || r.layers.iter().any(|l| l.spectrum.is_some()) {
        for l in &r.layers {
            let spectrum = l.spectrum.as_ref().map_or(String::new(), |s| {
                format!(
                    "; effective rank {:.0} of {}, stable rank {:.1}, energy at 10/25/50% {:.2}/{:.2}/{:.2}",
                    s.effective_rank,
                    l.shape[0].min(l.shape[1]),
                    s.stable_rank,
                    s.energy_at_10_25_50[0],
                    s.energy_at_10_25_50[1],
                    s.energy_at_10_25_50[2]
                )
            });
            println!(
                "  {:<24} {:>5}×{:<5} {:<32} {:.3} bits/weight{spectrum}",
                l.id.to_string(),
                l.shape[0],
                l.shape[1],
                l.storage,
                l.bits_per_weight
            );
        }
    } else {
        // Per kind of storage: layer count and the weight-averaged bits/weight.
        let mut kinds: BTreeMap<&str, (usize, f64, usize)> = BTreeMap::new();
        for l in &r.layers {
            let e = kinds.entry(l.storage.as_str()).or_default();
            let n = l.shape[0] * l.shape[1];
            e.0 += 1;
            e.1 += l.bits_per_weight * n as f64;
            e.2 += n;
        }
        for (kind, (layers, bits, n)) in kinds {
            let bits = bits / n.max(1) as f64;
            println!("  {layers:>4} layers {kind:<32} ({bits:.3} bits/weight)");
        }
    }
    if let Some(t) = &r.gguf_tensor_types {
        let list: Vec<String> = t.iter().map(|(k, n)| format!("{n} {k}")).collect();
        println!("  GGUF tensors: {}", list.join(", "));
    }
    if let Some(n) = &r.nesting {
        println!(
            "  nesting: {:?} order, trained widths {:?}{}",
            n.order,
            n.widths,
            n.nested_bits
                .map_or(String::new(), |b| format!(", nested {b}-bit codes"))
        );
    }
    if let Some(p) = &r.provenance {
        for (k, v) in p {
            println!("  {k}: {}", v.lines().next().unwrap_or(""));
        }
    }
}
