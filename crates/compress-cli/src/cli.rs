//! The command line: subcommands and their flags (clap).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use compress::core::backend::BackendKind;

const EXAMPLES: &str = "\
Examples (from the repository root; without --model the embedded stories260K is used):
  compress inspect --model .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf
  compress quantize --method gptq --bits 4 --group 32 --output stories-w4.safetensors
  compress quantize --model .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf --method gptq --k-quant q4_k --output smollm2-q4k.gguf
  compress prune --method sparsegpt --nm 2:4 --quantize-bits 4 --output stories-24-w4.gguf
  compress lowrank --method svd-llm --ratio 0.8 --output stories-svdllm.safetensors
  compress run examples/recipes/gptq-w4g128.toml --nsamples 32 --seqlen 128 --output out.safetensors --eval ../shared/data/tinystories/val.txt
  compress eval --model out.safetensors --base-model .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf --text ../shared/data/wikitext-2/wiki.test.raw
  compress slice --sort --width 0.5 --output stories-half.safetensors --eval ../shared/data/tinystories/val.txt
  compress slice --model assets/matryoshka/nested.compress --width 0.75 --nest-bits --bits 4 --output nested-75-w4.safetensors
  compress generate --model out.safetensors --prompt \"Once upon a time\"

Output formats (--output): `.gguf` → GGUF for llama.cpp (block formats and k-quants where the
scheme maps exactly, see docs/formats.md); anything else → the lossless compress container (safetensors);
`--format compressed-tensors` → a Hugging Face directory vLLM loads.

Exit codes: 0 success; 1 the work failed; 2 bad arguments or recipe; 3 unreadable or invalid
input file.";

/// Compress llama-family language models (quantize, prune, compose recipes), evaluate what it
/// costs, and write formats other runtimes load.
#[derive(Parser, Debug)]
#[command(name = "compress", version, after_help = EXAMPLES)]
pub struct Cli {
    /// The command.
    #[command(subcommand)]
    pub command: Command,
    /// Print one JSON object on stdout instead of text (progress bars are hidden).
    #[arg(long, global = true)]
    pub json: bool,
    /// Backend: flex, ndarray, wgpu, cuda, tch.
    #[arg(long, global = true, default_value_t = BackendKind::default())]
    pub backend: BackendKind,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Architecture, every layer's storage and bits/weight, tensor types of a GGUF file.
    Inspect(InspectArgs),
    /// Run a recipe file (any composition of quantizers and pruners) and save the result.
    Run(RunArgs),
    /// Quantize every linear layer with one method (a one-step recipe) and save the result.
    Quantize(QuantizeArgs),
    /// Prune every linear layer with one method (optionally quantizing jointly) and save it.
    Prune(PruneArgs),
    /// Factorize every linear layer into U·V (plain SVD, ASVD, SVD-LLM) and save the result.
    Lowrank(LowrankArgs),
    /// Perplexity, KL divergence to a base model, zero-shot tasks.
    Eval(EvalArgs),
    /// Cut a smaller model out of a nested (Matryoshka) one: a prefix of every block's FFN
    /// neurons and key/value groups, and/or the top bits of 8-bit codes.
    Slice(SliceArgs),
    /// Generate text from a prompt.
    Generate(GenerateArgs),
}

/// Which model to load.
#[derive(Args, Debug, Clone)]
pub struct ModelArg {
    /// GGUF file, compress container or Hugging Face checkpoint directory [default: the
    /// embedded stories260K].
    #[arg(long)]
    pub model: Option<PathBuf>,
}

/// `inspect` flags.
#[derive(Args, Debug)]
pub struct InspectArgs {
    /// The model.
    #[command(flatten)]
    pub model: ModelArg,
    /// List every layer (the default prints one line per kind of storage).
    #[arg(long)]
    pub layers: bool,
    /// Singular-value analysis of every linear: effective rank, stable rank, energy in the
    /// top 10/25/50% of the directions (which layers are inherently low-rank).
    #[arg(long)]
    pub spectrum: bool,
    /// With --spectrum: draw each layer kind's normalised singular values (σ_i/σ_0 against
    /// i / min(out, in), geometric mean over the blocks) into this .svg or .png.
    #[arg(long, requires = "spectrum")]
    pub plot: Option<PathBuf>,
}

/// Output format of a compression run.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// The lossless compress container (safetensors + JSON header).
    Container,
    /// GGUF v3 for llama.cpp.
    Gguf,
    /// A Hugging Face checkpoint directory in compressed-tensors `pack-quantized` form (vLLM).
    CompressedTensors,
}

/// Type of dense tensors in a GGUF file.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum DenseType {
    /// 32-bit float.
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    Bf16,
}

/// Flags shared by `run`, `quantize` and `prune`: calibration, output, evaluation.
#[derive(Args, Debug, Clone)]
pub struct CompressArgs {
    /// The model.
    #[command(flatten)]
    pub model: ModelArg,
    /// Calibration text.
    #[arg(long, default_value = "../shared/data/tinystories/val.txt")]
    pub calib: PathBuf,
    /// Calibration windows [default: the recipe's; 128 for quantize/prune].
    #[arg(long, value_parser = crate::values::count)]
    pub nsamples: Option<usize>,
    /// Tokens per calibration window [default: the recipe's; 128 for quantize/prune].
    #[arg(long, value_parser = crate::values::count)]
    pub seqlen: Option<usize>,
    /// Calibration sampling seed [default: the recipe's; 0].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Arithmetic of the calibration forward passes and `XᵀX`: f32, or bf16 (operands rounded
    /// to bf16, f32 sums; on AMX or AVX-512 BF16 where the CPU has them, 2–4.5× faster products)
    /// [default: the recipe's; f32].
    #[arg(long)]
    pub calib_precision: Option<compress::core::recipe::CalibrationPrecision>,
    /// Keep each block's MLP activations between calibration stages instead of recomputing
    /// them: about a quarter fewer calibration FLOPs, `tokens × intermediate` more activation
    /// memory [default: the recipe's; off].
    #[arg(long)]
    pub keep_intermediates: bool,
    /// Where to write the compressed model (`.gguf` → GGUF, otherwise the container; a
    /// directory for `--format compressed-tensors`).
    #[arg(long, short)]
    pub output: PathBuf,
    /// Output format, overriding the file extension.
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// GGUF and compressed-tensors: type of dense tensors (compressed-tensors: f16 or bf16,
    /// default f16).
    #[arg(long, value_enum)]
    pub dense_type: Option<DenseType>,
    /// GGUF: store the token embedding (and a tied output head) as Q8_0, quantized at export
    /// (llama.cpp's own files do; default: the --dense-type).
    #[arg(long)]
    pub embedding_q8: bool,
    /// GGUF and compressed-tensors: write layers the format cannot express (low-rank; for GGUF
    /// 3-bit or groups ≠ 32; for compressed-tensors ragged groups or fractional zero points)
    /// as dense tensors instead of failing.
    #[arg(long)]
    pub dense_fallback: bool,
    /// Evaluate perplexity and KL divergence to the input model on this text after compressing
    /// (when it is the calibration file, calibration uses its first half and evaluation the
    /// second).
    #[arg(long)]
    pub eval: Option<PathBuf>,
    /// Evaluation window length.
    #[arg(long, default_value_t = 256, value_parser = crate::values::count)]
    pub context: usize,
    /// Evaluate at most this many windows.
    #[arg(long, value_parser = crate::values::count)]
    pub limit: Option<usize>,
    /// With --eval: compress N times with calibration seeds seed, seed + 1, …, and report the
    /// mean ± std of perplexity and KL divergence over the runs (the first run's model is the
    /// one written).
    #[arg(long, requires = "eval", default_value_t = 1, value_parser = crate::values::count)]
    pub repeat_seeds: usize,
}

/// `run` flags.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// Recipe file (TOML, see docs/recipes.md and examples/recipes/).
    pub recipe: PathBuf,
    /// Calibration, output and evaluation.
    #[command(flatten)]
    pub common: CompressArgs,
}

/// Quantizers.
#[derive(Copy, Clone, Debug, ValueEnum)]
pub enum QuantMethodName {
    /// Round to nearest.
    Rtn,
    /// GPTQ (Frantar et al. 2022).
    Gptq,
    /// Half-quadratic quantization (asymmetric).
    Hqq,
    /// Activation-aware weight quantization (Lin et al. 2023).
    Awq,
}

/// `quantize` flags.
#[derive(Args, Debug)]
pub struct QuantizeArgs {
    /// Method.
    #[arg(long, value_enum, default_value_t = QuantMethodName::Gptq)]
    pub method: QuantMethodName,
    /// Code width, 2–8.
    #[arg(long, default_value_t = 4, value_parser = crate::values::bits)]
    pub bits: u8,
    /// Weights per scale (omit with --per-channel).
    #[arg(long, default_value_t = 128, conflicts_with = "per_channel", value_parser = crate::values::count)]
    pub group: usize,
    /// One scale per output row instead of groups.
    #[arg(long)]
    pub per_channel: bool,
    /// Asymmetric grids (a zero point per group).
    #[arg(long)]
    pub asym: bool,
    /// Fit scales to this llama.cpp k-quant (q2_k, q3_k, q4_k, q5_k, q6_k; RTN and GPTQ) so a
    /// GGUF output stores it exactly; sets bits, group and symmetry to the format's. Layers whose
    /// rows are not whole 256-weight super-blocks keep plain groups (Q4_1/Q5_1 in GGUF).
    #[arg(long, value_name = "FORMAT", conflicts_with_all = ["bits", "group", "per_channel", "asym"])]
    pub k_quant: Option<String>,
    /// Only layers whose path matches this regex (e.g. `mlp\.`); default all.
    #[arg(long)]
    pub layers: Option<String>,
    /// Calibration, output and evaluation.
    #[command(flatten)]
    pub common: CompressArgs,
}

/// Pruners.
#[derive(Copy, Clone, Debug, ValueEnum)]
pub enum PruneMethodName {
    /// Smallest |w| per layer.
    Magnitude,
    /// |w|·‖x‖ per row (Sun et al. 2023).
    Wanda,
    /// OBS mask selection with weight reconstruction (Frantar & Alistarh 2023).
    Sparsegpt,
}

/// `prune` flags.
#[derive(Args, Debug)]
pub struct PruneArgs {
    /// Method.
    #[arg(long, value_enum, default_value_t = PruneMethodName::Sparsegpt)]
    pub method: PruneMethodName,
    /// Fraction of weights removed, in [0, 1).
    #[arg(long, conflicts_with = "nm", required_unless_present = "nm", value_parser = crate::values::fraction_below_one)]
    pub sparsity: Option<f64>,
    /// N:M pattern, N kept of every M (e.g. 2:4).
    #[arg(long)]
    pub nm: Option<String>,
    /// SparseGPT only: quantize the kept weights to this many bits in the same sweep.
    #[arg(long, value_parser = crate::values::bits)]
    pub quantize_bits: Option<u8>,
    /// Group size of the joint quantization.
    #[arg(long, default_value_t = 128, value_parser = crate::values::count)]
    pub quantize_group: usize,
    /// Only layers whose path matches this regex; default all.
    #[arg(long)]
    pub layers: Option<String>,
    /// Calibration, output and evaluation.
    #[command(flatten)]
    pub common: CompressArgs,
}

/// Low-rank methods.
#[derive(Copy, Clone, Debug, ValueEnum)]
pub enum LowRankMethodName {
    /// Truncated SVD of the weight.
    Svd,
    /// SVD with input channels scaled by activation magnitude (Yuan et al. 2023).
    Asvd,
    /// SVD whitened by the Cholesky factor of XᵀX (Wang et al. 2024).
    SvdLlm,
}

/// `lowrank` flags.
#[derive(Args, Debug)]
pub struct LowrankArgs {
    /// Method.
    #[arg(long, value_enum, default_value_t = LowRankMethodName::SvdLlm)]
    pub method: LowRankMethodName,
    /// Fraction of each layer's parameters kept, in (0, 1] (0.8 = a 20% reduction).
    #[arg(long, conflicts_with_all = ["energy", "rank"], required_unless_present_any = ["energy", "rank"], value_parser = crate::values::fraction_kept)]
    pub ratio: Option<f64>,
    /// Fraction of spectral energy kept, in (0, 1].
    #[arg(long, conflicts_with = "rank", value_parser = crate::values::fraction_kept)]
    pub energy: Option<f64>,
    /// A fixed rank for every layer.
    #[arg(long, value_parser = crate::values::count)]
    pub rank: Option<usize>,
    /// Only layers whose path matches this regex; default all.
    #[arg(long)]
    pub layers: Option<String>,
    /// Treat --ratio as one budget over all matched layers and choose each layer's ratio from
    /// its measured sensitivity (KL divergence with that layer alone factorized).
    #[arg(long, requires = "ratio")]
    pub allocate: bool,
    /// Candidate kept-parameter ratios per layer for --allocate (below 1; dense is always one).
    #[arg(long, value_delimiter = ',', default_value = "0.25,0.5,0.75,0.9", value_parser = crate::values::fraction_kept)]
    pub candidates: Vec<f64>,
    /// Calibration windows the sensitivity is measured on (the first N).
    #[arg(long, default_value_t = 4, value_parser = crate::values::count)]
    pub probe_samples: usize,
    /// Reuse a sensitivity measurement saved by --save-sensitivity (same method and candidates).
    #[arg(long, requires = "allocate")]
    pub sensitivity: Option<PathBuf>,
    /// Save the sensitivity measurement (JSON) for other budgets.
    #[arg(long, requires = "allocate")]
    pub save_sensitivity: Option<PathBuf>,
    /// Save the allocated per-layer recipe (TOML).
    #[arg(long, requires = "allocate")]
    pub save_recipe: Option<PathBuf>,
    /// Calibration, output and evaluation.
    #[command(flatten)]
    pub common: CompressArgs,
}

/// Perplexity protocol.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Protocol {
    /// Every prediction of every window (GPTQ/SparseGPT/Wanda papers).
    All,
    /// llama.cpp's `perplexity`: BOS first, second half of each window.
    Half,
    /// Both.
    Both,
    /// No perplexity (tasks only).
    None,
}

/// `eval` flags.
#[derive(Args, Debug)]
pub struct EvalArgs {
    /// The model.
    #[command(flatten)]
    pub model: ModelArg,
    /// Also report the KL divergence of --model to this base model on the same windows.
    #[arg(long)]
    pub base_model: Option<PathBuf>,
    /// Text file to score.
    #[arg(long, default_value = "../shared/data/tinystories/val.txt")]
    pub text: PathBuf,
    /// Window length in tokens.
    #[arg(long, default_value_t = 256, value_parser = crate::values::count)]
    pub context: usize,
    /// Perplexity protocol.
    #[arg(long, value_enum, default_value_t = Protocol::All)]
    pub scoring: Protocol,
    /// Evaluate at most this many windows.
    #[arg(long, value_parser = crate::values::count)]
    pub limit: Option<usize>,
    /// Comma-separated zero-shot tasks (hellaswag, arc_easy, arc_challenge, piqa, sciq, lambada).
    #[arg(long, value_delimiter = ',')]
    pub tasks: Vec<String>,
    /// Directory of the task files.
    #[arg(long, default_value = "../shared/data/tasks")]
    pub task_dir: PathBuf,
    /// Score at most this many questions per task.
    #[arg(long, value_parser = crate::values::count)]
    pub task_limit: Option<usize>,
    /// Also time greedy generation of this many tokens after the text's first 64 tokens.
    #[arg(long, value_parser = crate::values::count)]
    pub speed: Option<usize>,
    /// Write everything measured, with the model's size, as one report (JSON; see
    /// `compress_eval::report`, tabulated by `cargo run --example report_table`).
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Method name recorded in the report.
    #[arg(long, default_value = "as loaded")]
    pub method: String,
}

/// How quantized layers multiply on the CPU backends.
#[derive(Copy, Clone, Debug, ValueEnum)]
pub enum KernelMode {
    /// Fused kernels, f32 activations (exact up to f32 rounding).
    F32,
    /// Fused kernels, int8 activations on CPUs with AVX-512 VNNI (faster, slightly less exact).
    Int8,
    /// The dequantized weight (no fused kernels).
    Off,
}

/// `generate` flags.
#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// The model.
    #[command(flatten)]
    pub model: ModelArg,
    /// Prompt text.
    #[arg(long, default_value = "Once upon a time")]
    pub prompt: String,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 64, value_parser = crate::values::count)]
    pub max_tokens: usize,
    /// Sampling temperature; greedy decoding when absent.
    #[arg(long, value_parser = crate::values::temperature)]
    pub temperature: Option<f32>,
    /// Nucleus mass kept when sampling.
    #[arg(long, default_value_t = 0.95, value_parser = crate::values::fraction_kept_f32)]
    pub top_p: f32,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// How quantized layers multiply on the CPU backends.
    #[arg(long, value_enum, default_value_t = KernelMode::F32)]
    pub kernels: KernelMode,
}

/// `slice` flags.
#[derive(Args, Debug)]
pub struct SliceArgs {
    /// Fraction of every block's FFN neurons and key/value groups kept, in (0, 1].
    #[arg(long, default_value_t = 1.0, value_parser = crate::values::fraction_kept)]
    pub width: f64,
    /// Fraction of FFN neurons kept, overriding --width for the FFN.
    #[arg(long, value_parser = crate::values::fraction_kept)]
    pub ffn_width: Option<f64>,
    /// Fraction of key/value groups (with their query heads) kept, overriding --width.
    #[arg(long, value_parser = crate::values::fraction_kept)]
    pub head_width: Option<f64>,
    /// Re-express every 8-bit projection by its top this-many bits (2–8).
    #[arg(long, value_parser = crate::values::bits)]
    pub bits: Option<u8>,
    /// Store every projection of the width slice as 8-bit codes (round to nearest, asymmetric)
    /// so that --bits can slice them (a model already holding 8-bit codes needs no flag).
    #[arg(long)]
    pub nest_bits: bool,
    /// Group size of --nest-bits.
    #[arg(long, default_value_t = 32, value_parser = crate::values::count)]
    pub nest_group: usize,
    /// First sort neurons and key/value groups by activation importance on --calib (post-hoc
    /// nesting of a model that was not trained nested).
    #[arg(long)]
    pub sort: bool,
    /// Calibration windows for --sort.
    #[arg(long, default_value_t = 32, value_parser = crate::values::count)]
    pub sort_samples: usize,
    /// Calibration, output and evaluation (--eval compares the slice with the input model).
    #[command(flatten)]
    pub common: CompressArgs,
}
