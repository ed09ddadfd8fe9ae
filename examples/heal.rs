//! Healing after compression: prune with Wanda, then distil the dense model back into the
//! pruned one through LoRA adapters (merged afterwards, sparsity kept), and report perplexity
//! before and after.
//!
//! ```text
//! cargo run --release --example heal                    # embedded stories260K, Wanda 50%
//! cargo run --release --example heal -- --model .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf \
//!     --calib ../shared/data/wikitext-2/wiki.valid.stripped.txt \
//!     --text ../shared/data/wikitext-2/wiki.test.raw --context 512 --limit 8 \
//!     --nsamples 32 --seqlen 256 --steps 30 --batch 4
//! ```

use std::ops::ControlFlow;

#[path = "common/mod.rs"]
mod common;

use clap::Parser;
use compress::core::calibration::sample_windows;
use compress::core::pipeline::{LayerFilter, Pipeline};
use compress::core::sparsity::SparsityPattern;
use compress::distill::loss::DistillLoss;
use compress::distill::train::{distill, LoraConfig, LoraTargets, TrainConfig, WidthSchedule};
use compress::eval::progress::ProgressLine;
use compress::prune::wanda::Wanda;

#[derive(Parser, Debug)]
#[command(about = "Wanda pruning, then a LoRA heal distilled from the dense model")]
struct Args {
    #[command(flatten)]
    run: common::RunArgs,
    /// Fraction of weights pruned.
    #[arg(long, default_value_t = 0.5)]
    sparsity: f64,
    /// Optimiser steps of the heal.
    #[arg(long, default_value_t = 60)]
    steps: usize,
    /// Windows per step (of --seqlen tokens).
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// LoRA rank.
    #[arg(long, default_value_t = 8)]
    rank: usize,
    /// Projections that get adapters, comma-separated (`q_proj,v_proj`); all when absent.
    #[arg(long, value_delimiter = ',')]
    targets: Option<Vec<String>>,
    /// Peak learning rate.
    #[arg(long, default_value_t = 5e-3)]
    lr: f64,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let r = &args.run;
    let device = r.backend.device()?;
    let loaded = common::load_model(r.model.as_deref(), &device)?;
    let (calib_text, eval_text) = common::calibration_and_eval_text(&r.calib, &r.text)?;
    let tokens = loaded.tokenizer.encode(&calib_text, true)?;
    let windows = sample_windows(&tokens, r.nsamples, r.seqlen, r.seed)?;
    let mut pruned = loaded.model.clone();
    let report = Pipeline::new()
        .step(
            LayerFilter::All,
            Wanda::new(SparsityPattern::Unstructured(args.sparsity)),
        )
        .run(&mut pruned, &windows, common::pipeline_progress("Wanda"))?;
    common::print_summary("Wanda", &report, &pruned)?;
    println!("before healing:");
    common::evaluate(
        &loaded.model,
        &pruned,
        &loaded.tokenizer,
        &eval_text,
        r.context,
        r.limit,
    )?;
    let cfg = TrainConfig {
        steps: args.steps,
        batch_size: args.batch,
        seq_len: r.seqlen,
        lr: args.lr,
        warmup_steps: (args.steps / 10).max(1),
        seed: r.seed,
        lora: Some(LoraConfig {
            rank: args.rank,
            alpha: 2.0 * args.rank as f64,
            targets: match &args.targets {
                None => LoraTargets::ALL,
                Some(names) => LoraTargets::from_names(names)?,
            },
        }),
        ..TrainConfig::default()
    };
    let mut line = ProgressLine::new("LoRA heal");
    let clock = std::time::Instant::now();
    let out = distill(
        pruned,
        &loaded.model,
        &tokens,
        &cfg,
        &DistillLoss::default(),
        &WidthSchedule::Full,
        |i| {
            let d = format!(
                "steps, KL {:.4}, {:.0} tok/s,",
                i.loss.total, i.tokens_per_s
            );
            line.update(i.loss.step + 1, i.steps, &d);
            ControlFlow::Continue(())
        },
    )?;
    println!(
        "healed: rank-{} LoRA on every block projection, {} steps × {} × {} tokens in {:.0} s; KL {:.4} → {:.4}",
        args.rank,
        args.steps,
        args.batch,
        r.seqlen,
        clock.elapsed().as_secs_f64(),
        out.history.first().map_or(f64::NAN, |h| h.total),
        out.history.last().map_or(f64::NAN, |h| h.total)
    );
    println!("after healing:");
    common::evaluate(
        &loaded.model,
        &out.student,
        &loaded.tokenizer,
        &eval_text,
        r.context,
        r.limit,
    )?;
    Ok(())
}
