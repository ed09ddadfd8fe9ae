//! Trains the tiny nested model that `matryoshka_slice` ships with, and the separately
//! distilled models of the same sizes it is compared with — all from stories260K, with this
//! project's own code.
//!
//! 1. Sort stories260K's FFN neurons and key/value groups by activation importance (post-hoc
//!    nesting; the function is unchanged).
//! 2. Nested student: the sorted model, trained MatFormer-style — every step distils the full
//!    width from stories260K and the 25/50/75% prefixes from the full student — on the first
//!    half of the TinyStories validation text.
//! 3. Separate students: the 25/50/75% slices of the sorted model, each distilled alone from
//!    stories260K with the same steps, batch and data.
//!
//! ```text
//! cargo run --release --example train_nested                       # writes assets/matryoshka/
//! cargo run --release --example train_nested -- --steps 50 --out /tmp/nested   # a quick run
//! # widths and nested bits at once (quantization-aware), nested student only:
//! cargo run --release --example train_nested -- --out /tmp/nested-bits --only-nested \
//!     --nested-bits 8:1,4:1,2:0.25
//! ```

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

#[path = "common/mod.rs"]
mod common;

use clap::Parser;
use compress::core::calibration::{sample_windows, split_halves};
use compress::distill::loss::DistillLoss;
use compress::distill::matryoshka::{slice, sort_by_activation, NestedBits, SliceSpec, Width};
use compress::distill::train::{distill, StepInfo, TrainConfig, WidthSchedule};
use compress::eval::progress::ProgressLine;
use compress::model::container::{write_container, ContainerOptions, NestingEntry, NestingOrder};
use compress::model::{LlamaModel, LoadedModel};

#[derive(Parser, Debug)]
#[command(
    about = "Train the nested stories260K student and same-size separately distilled students"
)]
struct Args {
    /// Output directory.
    #[arg(long, default_value = "assets/matryoshka")]
    out: PathBuf,
    /// Training text (its first half is used; the second half is left for evaluation).
    #[arg(long, default_value = "../shared/data/tinystories/val.txt")]
    text: PathBuf,
    /// Optimiser steps per student.
    #[arg(long, default_value_t = 600)]
    steps: usize,
    /// Windows per step.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Tokens per window.
    #[arg(long, default_value_t = 128)]
    seq_len: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 2e-3)]
    lr: f64,
    /// Prefix widths trained with the full model (fractions of FFN neurons and KV groups).
    #[arg(long, value_delimiter = ',', default_value = "0.25,0.5,0.75")]
    widths: Vec<f64>,
    /// Prefix widths trained per step (sampled from --widths; MatFormer samples one).
    #[arg(long)]
    per_step: Option<usize>,
    /// Seed of the data order.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Also train nested bit widths of the nested student with fake quantization, as
    /// `bits:weight` pairs (e.g. `8:1,4:1,2:0.25`; docs/matryoshka.md); none by default.
    #[arg(long, value_delimiter = ',', value_parser = parse_bits_weight)]
    nested_bits: Vec<(u8, f64)>,
    /// Group size of the nested 8-bit codes --nested-bits trains for.
    #[arg(long, default_value_t = 32)]
    nested_group: usize,
    /// Train only the nested student (skip the separately distilled ones).
    #[arg(long)]
    only_nested: bool,
}

/// `b:w` → `(b, w)`, e.g. `2:0.25`.
fn parse_bits_weight(s: &str) -> Result<(u8, f64), String> {
    let (b, w) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?}: expected bits:weight, e.g. 2:0.25"))?;
    let b = b
        .trim()
        .parse::<u8>()
        .map_err(|e| format!("{s:?}: bits: {e}"))?;
    let w = w
        .trim()
        .parse::<f64>()
        .map_err(|e| format!("{s:?}: weight: {e}"))?;
    Ok((b, w))
}

fn train(
    name: &str,
    student: LlamaModel,
    teacher: &LlamaModel,
    tokens: &[u32],
    cfg: &TrainConfig,
    schedule: &WidthSchedule,
) -> Result<LlamaModel, Box<dyn std::error::Error>> {
    let mut line = ProgressLine::new(name);
    let out = distill(
        student,
        teacher,
        tokens,
        cfg,
        &DistillLoss::default(),
        schedule,
        |i: &StepInfo| {
            let bits: String = i
                .loss
                .bits
                .iter()
                .map(|(b, l)| format!(", {b}-bit {l:.4}"))
                .collect();
            let detail = format!(
                "steps, loss {:.4} (full {:.4}{bits}), {:.0} tok/s,",
                i.loss.total, i.loss.full, i.tokens_per_s
            );
            line.update(i.loss.step + 1, i.steps, &detail);
            ControlFlow::Continue(())
        },
    )?;
    let first = out.history.first().map_or(f64::NAN, |h| h.total);
    let last = out.history.last().map_or(f64::NAN, |h| h.total);
    println!(
        "{name}: loss {first:.4} → {last:.4} over {} steps",
        out.history.len()
    );
    Ok(out.student)
}

fn save(
    model: &LlamaModel,
    loaded: &LoadedModel,
    path: &Path,
    note: &str,
    nesting: Option<NestingEntry>,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut options = ContainerOptions {
        nesting,
        ..ContainerOptions::default()
    };
    options
        .provenance
        .insert("source".into(), "stories260K".into());
    options.provenance.insert("trained_by".into(), note.into());
    options.provenance.insert(
        "command".into(),
        std::env::args().collect::<Vec<_>>().join(" "),
    );
    write_container(model, &loaded.tokenizer, path, &options)?;
    println!(
        "wrote {} ({} parameters, {} bytes)",
        path.display(),
        model.num_parameters(),
        std::fs::metadata(path)?.len()
    );
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let device = compress::core::backend::BackendKind::Flex.device()?;
    let loaded = common::load_model(None, &device)?;
    let teacher = &loaded.model;
    let text = std::fs::read_to_string(&args.text)
        .map_err(|e| format!("cannot read {}: {e}", args.text.display()))?;
    let (train_text, _) = split_halves(&text);
    let tokens = loaded.tokenizer.encode(train_text, true)?;
    println!(
        "training on {} tokens (first half of {})",
        tokens.len(),
        args.text.display()
    );
    std::fs::create_dir_all(&args.out)?;

    let calib = sample_windows(&tokens, 32, args.seq_len, args.seed)?;
    let mut sorted = teacher.clone();
    sort_by_activation(&mut sorted, &calib)?;
    let cfg = TrainConfig {
        steps: args.steps,
        batch_size: args.batch,
        seq_len: args.seq_len,
        lr: args.lr,
        warmup_steps: (args.steps / 20).max(1),
        seed: args.seed,
        ..TrainConfig::default()
    };
    let prefixes = args
        .widths
        .iter()
        .map(|&f| Width::uniform(f).prefix(&sorted))
        .collect::<Result<Vec<_>, _>>()?;
    let nested = WidthSchedule::Nested {
        per_step: args.per_step.unwrap_or(prefixes.len()),
        widths: prefixes,
    };
    let nested_cfg = TrainConfig {
        nested_bits: (!args.nested_bits.is_empty()).then(|| NestedBits {
            bits: args.nested_bits.clone(),
            group: args.nested_group,
        }),
        ..cfg.clone()
    };
    let model = train(
        "nested",
        sorted.clone(),
        teacher,
        &tokens,
        &nested_cfg,
        &nested,
    )?;
    let bits_note = if args.nested_bits.is_empty() {
        String::new()
    } else {
        format!(
            ", nested bits {:?} (groups of {})",
            args.nested_bits, args.nested_group
        )
    };
    save(
        &model,
        &loaded,
        &args.out.join("nested.compress"),
        &format!(
            "train_nested: MatFormer widths {:?}{bits_note}",
            args.widths
        ),
        Some(NestingEntry {
            order: NestingOrder::Trained,
            widths: args.widths.clone(),
            nested_bits: None,
        }),
    )?;
    if args.only_nested {
        return Ok(());
    }
    for &f in &args.widths {
        let spec = SliceSpec {
            width: Width::uniform(f),
            bits: None,
        };
        let (student, _) = slice(&sorted, &spec)?;
        let name = format!("separate-{:02}", (f * 100.0).round() as usize);
        let model = train(&name, student, teacher, &tokens, &cfg, &WidthSchedule::Full)?;
        save(
            &model,
            &loaded,
            &args.out.join(format!("{name}.compress")),
            &format!("train_nested: width {f} distilled alone"),
            None,
        )?;
    }
    Ok(())
}
