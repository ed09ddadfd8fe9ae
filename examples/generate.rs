//! Generate text with a llama-family model and report its speed.
//!
//! ```text
//! cargo run --release --example generate                       # embedded stories260K
//! cargo run --release --example generate -- --model .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf \
//!     --prompt "The capital of France is" --max-tokens 32
//! cargo run --release --example generate -- --temperature 0.8 --top-p 0.95 --seed 42
//! ```

use std::io::Write;
use std::path::PathBuf;

use clap::Parser;
use compress::core::backend::BackendKind;
use compress::model::generate::{generate, GenerateOptions, Sampling};

/// The model used when `--model` is not given: stories260K (MIT, karpathy/tinyllamas), 1.2 MB.
static EMBEDDED: &[u8] = include_bytes!("../assets/stories260K.gguf");

#[derive(Parser, Debug)]
#[command(about = "Generate text with a llama-family model (GGUF file or Hugging Face directory).")]
struct Args {
    /// GGUF file or Hugging Face checkpoint directory [default: embedded stories260K].
    #[arg(long)]
    model: Option<PathBuf>,
    /// Text to continue.
    #[arg(long, default_value = "Once upon a time")]
    prompt: String,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    /// Sampling temperature; 0 means greedy decoding.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Nucleus sampling mass (with --temperature > 0).
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Backend: flex, ndarray, wgpu, cuda, tch.
    #[arg(long, default_value_t = BackendKind::default())]
    backend: BackendKind,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let device = args.backend.device()?;
    let t0 = std::time::Instant::now();
    let loaded = match &args.model {
        Some(path) => compress::model::load(path, &device)?,
        None => compress::model::load::load_gguf_bytes(EMBEDDED.to_vec(), &device)?,
    };
    let (model, tokenizer) = (&loaded.model, &loaded.tokenizer);
    let name = args
        .model
        .as_ref()
        .map_or("embedded stories260K".into(), |p| p.display().to_string());
    eprintln!(
        "loaded {name} ({:?}, {} layers, {:.1} M parameters) on {} in {:.2} s",
        model.config().architecture,
        model.config().num_layers,
        model.config().num_parameters() as f64 / 1e6,
        args.backend,
        t0.elapsed().as_secs_f64()
    );

    let prompt = tokenizer.encode(&args.prompt, true)?;
    let sampling = if args.temperature > 0.0 {
        Sampling::TopP {
            temperature: args.temperature,
            top_p: args.top_p,
            seed: args.seed,
        }
    } else {
        Sampling::Greedy
    };
    let options = GenerateOptions {
        max_new_tokens: args.max_tokens,
        sampling,
        stop_token: tokenizer.eos_id(),
    };

    print!("{}", args.prompt);
    // Decode prompt + output so far and print the new suffix: multi-token characters come out
    // whole, and a SentencePiece word's leading space is kept (it is only dropped at the start).
    let mut all = prompt.clone();
    let mut printed = tokenizer.decode(&prompt)?.len();
    let out = generate(model, &prompt, &options, |token| {
        all.push(token);
        if let Ok(text) = tokenizer.decode(&all) {
            if text.len() > printed && text.is_char_boundary(printed) {
                print!("{}", &text[printed..]);
                printed = text.len();
                let _ = std::io::stdout().flush();
            }
        }
    })?;
    println!();
    eprintln!(
        "prompt {} tokens, prefill {:.1} ms ({:.1} tokens/s); generated {} tokens, decode {:.1} tokens/s",
        prompt.len(),
        out.prefill.as_secs_f64() * 1e3,
        prompt.len() as f64 / out.prefill.as_secs_f64(),
        out.tokens.len(),
        out.decode_tokens_per_second()
    );
    Ok(())
}
