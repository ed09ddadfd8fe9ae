//! Evaluate a model: perplexity on a text file with either or both protocols, and zero-shot
//! tasks from `../shared/data/tasks`.
//!
//! ```text
//! cargo run --release --example evaluate                                  # embedded stories260K on ../shared TinyStories
//! cargo run --release --example evaluate -- --model .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf \
//!     --text ../shared/data/wikitext-2/wiki.test.raw --context 2048 --scoring both --limit 8
//! cargo run --release --example evaluate -- --model .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf \
//!     --scoring none --tasks arc_easy,piqa --task-limit 200
//! cargo run --release --example evaluate -- --scoring all --speed 32 --report dense.json
//! ```
//!
//! `--report` writes a [`compress::eval::report::Report`] (size, the first protocol's
//! perplexity, tasks, speed) as JSON and prints it as a Markdown row; `report_table` turns a
//! set of them into one table and a Pareto chart.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use compress::core::backend::BackendKind;
use compress::eval::efficiency::{measure_speed, SizeReport};
use compress::eval::perplexity::{perplexity, PerplexityConfig, Scoring};
use compress::eval::progress::ProgressLine;
use compress::eval::report::{markdown_table, Report};
use compress::eval::tasks::{evaluate, load_jsonl};

static EMBEDDED: &[u8] = include_bytes!("../assets/stories260K.gguf");

#[derive(Copy, Clone, Debug, ValueEnum)]
enum Protocol {
    /// Every prediction of every window (GPTQ/SparseGPT/Wanda).
    All,
    /// llama.cpp's `perplexity`: BOS first, second half of each window.
    Half,
    /// Both, one after the other.
    Both,
    /// No perplexity (tasks only).
    None,
}

#[derive(Parser, Debug)]
#[command(about = "Perplexity of a llama-family model on a text file.")]
struct Args {
    /// GGUF file or Hugging Face checkpoint directory [default: embedded stories260K].
    #[arg(long)]
    model: Option<PathBuf>,
    /// Text file to score.
    #[arg(long, default_value = "../shared/data/tinystories/val.txt")]
    text: PathBuf,
    /// Window length in tokens.
    #[arg(long, default_value_t = 256)]
    context: usize,
    /// Scoring protocol.
    #[arg(long, value_enum, default_value_t = Protocol::Both)]
    scoring: Protocol,
    /// Evaluate at most this many windows.
    #[arg(long)]
    limit: Option<usize>,
    /// Backend: flex, ndarray, wgpu, cuda, tch.
    #[arg(long, default_value_t = BackendKind::default())]
    backend: BackendKind,
    /// Comma-separated task names from ../shared/data/tasks (hellaswag, arc_easy, arc_challenge,
    /// piqa, sciq, lambada).
    #[arg(long, value_delimiter = ',')]
    tasks: Vec<String>,
    /// Directory of the task files.
    #[arg(long, default_value = "../shared/data/tasks")]
    task_dir: PathBuf,
    /// Score at most this many questions per task.
    #[arg(long)]
    task_limit: Option<usize>,
    /// Print the reports as JSON lines instead of text.
    #[arg(long)]
    json: bool,
    /// Also time greedy generation of this many tokens after a 64-token prompt of the text.
    #[arg(long)]
    speed: Option<usize>,
    /// Write everything measured as one report (JSON) to this file.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Method name recorded in the report.
    #[arg(long, default_value = "as loaded")]
    method: String,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let device = args.backend.device()?;
    let m = match &args.model {
        Some(path) => compress::model::load(path, &device)?,
        None => compress::model::load::load_gguf_bytes(EMBEDDED.to_vec(), &device)?,
    };
    let text = std::fs::read_to_string(&args.text)
        .map_err(|e| format!("cannot read {}: {e}", args.text.display()))?;
    let tokens = m.tokenizer.encode(&text, true)?;
    eprintln!(
        "{}: {} bytes, {} tokens",
        args.text.display(),
        text.len(),
        tokens.len()
    );
    let protocols = match args.scoring {
        Protocol::All => vec![Scoring::AllTokens],
        Protocol::Half => vec![Scoring::SecondHalf],
        Protocol::Both => vec![Scoring::AllTokens, Scoring::SecondHalf],
        Protocol::None => vec![],
    };
    let name = args
        .model
        .as_ref()
        .map_or("stories260K (embedded)".to_string(), |p| {
            p.display().to_string()
        });
    let mut report = Report::new(name, args.method.clone(), SizeReport::of(&m.model));
    for scoring in protocols {
        let config = PerplexityConfig {
            context: args.context,
            scoring,
            max_windows: args.limit,
            bos: m.tokenizer.bos_id(),
        };
        let mut line = ProgressLine::new(format!("{scoring:?}"));
        let r = perplexity(&m.model, &tokens, text.len(), &config, |done, total| {
            line.update(done, total, "windows,")
        })?;
        let secs = line.elapsed();
        if report.perplexity.is_none() {
            report.perplexity = Some(r.clone());
        }
        if args.json {
            println!("{}", serde_json::to_string(&r)?);
        } else {
            println!(
                "{scoring:?}, context {}: PPL {:.4} (95% {:.4}–{:.4}), mean NLL {:.5}, {:.4} bits/byte, {} tokens scored in {} windows; {:.0} tokens/s",
                r.context,
                r.ppl,
                r.ppl_ci95.0,
                r.ppl_ci95.1,
                r.mean_nll,
                r.bits_per_byte.unwrap_or(f64::NAN),
                r.tokens_scored,
                r.windows,
                (r.windows * r.context) as f64 / secs
            );
        }
    }
    for task in &args.tasks {
        let items = load_jsonl(args.task_dir.join(format!("{task}.jsonl")), args.task_limit)?;
        let mut line = ProgressLine::new(task.as_str());
        let r = evaluate(&m.model, &m.tokenizer, &items, |done, total| {
            line.update(done, total, "questions,")
        })?;
        if args.json {
            println!(
                "{}",
                serde_json::to_string(&serde_json::json!({ "task": task, "report": r }))?
            );
        } else {
            println!(
                "{task}: n {}, acc {:.4} ± {:.4}, acc_norm {:.4} ± {:.4}, gold-continuation PPL {:.3}; {:.1} s",
                r.n,
                r.acc.mean,
                r.acc.se,
                r.acc_norm.mean,
                r.acc_norm.se,
                r.gold_ppl,
                line.elapsed()
            );
        }
        report.tasks.insert(task.clone(), r);
    }
    if let Some(n) = args.speed {
        let prompt = &tokens[..tokens.len().min(64)];
        let s = measure_speed(&m.model, prompt, n)?;
        println!(
            "speed: prefill {:.1} tokens/s ({} tokens), decode {:.1} tokens/s ({} tokens), peak RSS {}",
            s.prefill_tokens_per_second,
            s.prompt_tokens,
            s.decode_tokens_per_second,
            s.new_tokens,
            s.peak_rss_bytes.map_or("unknown".into(), |b| format!("{:.0} MiB", b as f64 / (1 << 20) as f64))
        );
        report.speed = Some(s);
    }
    if let Some(path) = &args.report {
        std::fs::write(path, report.to_json())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        eprintln!("report written to {}", path.display());
        print!("{}", markdown_table(std::slice::from_ref(&report)));
    }
    Ok(())
}
