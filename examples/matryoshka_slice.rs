//! One model file, sliced to any size at load time: the elasticity curve of nested models.
//!
//! With no arguments it uses the tiny nested model that ships in `assets/matryoshka/` (trained
//! from stories260K by `examples/train_nested.rs`) and prints, for widths 25/50/75/100%, the
//! perplexity of
//!
//! - **nested-trained**: slices of the MatFormer-trained student;
//! - **post-hoc sorted**: slices of stories260K after sorting neurons and key/value groups by
//!   activation importance (no training);
//! - **naive**: the first neurons and groups of stories260K as stored;
//! - **separate**: students of each size distilled alone with the same budget;
//!
//! and, at full width, nested bits (the 4- and 2-bit models read from the top bits of one 8-bit
//! code) next to round-to-nearest models quantized separately at each width, and after a short
//! quantization-aware fine-tune of the nested bits (`--qat-steps`, 0 to skip). It writes both
//! charts as SVG and PNG.
//!
//! ```text
//! cargo run --release --example matryoshka_slice
//! # post-hoc path on any supported model (FFN-only widths keep every head):
//! cargo run --release --example matryoshka_slice -- --model .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf \
//!     --text ../shared/data/wikitext-2/wiki.test.raw --calib ../shared/data/wikitext-2/wiki.valid.stripped.txt \
//!     --context 512 --limit 8 --ffn-only --qat-steps 0
//! ```

use std::path::{Path, PathBuf};
use std::time::Instant;

#[path = "common/mod.rs"]
mod common;

use clap::Parser;
use compress::core::calibration::sample_windows;
use compress::distill::loss::DistillLoss;
use compress::distill::matryoshka::{
    quantize_nested, quantize_projections, slice, sort_by_activation, NestedBits, SliceSpec, Width,
};
use compress::distill::train::{distill, TrainConfig, WidthSchedule};
use compress::eval::perplexity::{perplexity, PerplexityConfig, Scoring};
use compress::eval::plot::{plot, Chart, Series};
use compress::model::LlamaModel;

#[derive(Parser, Debug)]
#[command(about = "Elasticity of nested models: perplexity at every width and bit width")]
struct Args {
    /// Any supported model for the post-hoc path [default: the shipped nested stories260K].
    #[arg(long)]
    model: Option<PathBuf>,
    /// Directory of the shipped nested and separately distilled models.
    #[arg(long, default_value = "assets/matryoshka")]
    nested_dir: PathBuf,
    /// Evaluation text (with `--calib` unset, its first half calibrates and the second half is
    /// scored).
    #[arg(long, default_value = "../shared/data/tinystories/val.txt")]
    text: PathBuf,
    /// Calibration text for the importance sorting [default: the first half of --text].
    #[arg(long)]
    calib: Option<PathBuf>,
    /// Evaluation window length.
    #[arg(long, default_value_t = 256)]
    context: usize,
    /// Evaluate at most this many windows.
    #[arg(long, default_value_t = 32)]
    limit: usize,
    /// Widths to slice.
    #[arg(long, value_delimiter = ',', default_value = "0.25,0.5,0.75,1.0")]
    widths: Vec<f64>,
    /// Slice FFN neurons only (keep every head).
    #[arg(long)]
    ffn_only: bool,
    /// Group size of the nested 8-bit codes.
    #[arg(long, default_value_t = 32)]
    group: usize,
    /// Steps of the quantization-aware fine-tune of the nested bits (8/4/3/2 bits, from the
    /// full-width model itself, on the calibration half); 0 skips it.
    #[arg(long, default_value_t = 40)]
    qat_steps: usize,
    /// Where the charts go (`<dir>/matryoshka_width.{svg,png}`, `<dir>/matryoshka_bits.{svg,png}`).
    #[arg(long, default_value = "target/matryoshka")]
    plot_dir: PathBuf,
}

struct Eval<'a> {
    tokens: &'a [u32],
    bytes: usize,
    cfg: PerplexityConfig,
}

impl Eval<'_> {
    fn ppl(&self, m: &LlamaModel) -> Result<f64, Box<dyn std::error::Error>> {
        Ok(perplexity(m, self.tokens, self.bytes, &self.cfg, |_, _| {})?.ppl)
    }
}

fn charts(
    dir: &Path,
    name: &str,
    chart: &Chart,
    series: &[Series],
) -> Result<(), Box<dyn std::error::Error>> {
    std::fs::create_dir_all(dir)?;
    for ext in ["svg", "png"] {
        let p = dir.join(format!("{name}.{ext}"));
        plot(&p, chart, series)?;
        println!("wrote {}", p.display());
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let clock = Instant::now();
    let device = compress::core::backend::BackendKind::default().device()?;
    let loaded = common::load_model(args.model.as_deref(), &device)?;
    let base = &loaded.model;
    let calib_path = args.calib.clone().unwrap_or_else(|| args.text.clone());
    let (calib_text, eval_text) = common::calibration_and_eval_text(&calib_path, &args.text)?;
    let eval_tokens = loaded.tokenizer.encode(&eval_text, true)?;
    let eval = Eval {
        tokens: &eval_tokens,
        bytes: eval_text.len(),
        cfg: PerplexityConfig {
            context: args.context,
            scoring: Scoring::AllTokens,
            max_windows: Some(args.limit),
            bos: loaded.tokenizer.bos_id(),
        },
    };
    let calib_tokens = loaded.tokenizer.encode(&calib_text, true)?;
    let calib = sample_windows(&calib_tokens, 32, args.context.min(256), 0)?;
    let mut sorted = base.clone();
    sort_by_activation(&mut sorted, &calib)?;
    let width = |f: f64| {
        if args.ffn_only {
            Width::ffn_only(f)
        } else {
            Width::uniform(f)
        }
    };
    // The shipped nested model and the separately distilled ones (default model only).
    let shipped = args.model.is_none();
    let load = |name: &str| -> Result<Option<LlamaModel>, Box<dyn std::error::Error>> {
        let p = args.nested_dir.join(name);
        if !shipped {
            return Ok(None);
        }
        if !p.is_file() {
            return Err(format!(
                "{} is missing; run `cargo run --release --example train_nested`",
                p.display()
            )
            .into());
        }
        Ok(Some(compress::model::load(&p, &device)?.model))
    };
    let nested = load("nested.compress")?;

    let mut names = vec!["post-hoc sorted", "naive"];
    if shipped {
        names.insert(0, "nested-trained");
        names.push("separate");
    }
    let mut series: Vec<Series> = names
        .iter()
        .map(|n| Series {
            name: n.to_string(),
            points: Vec::new(),
        })
        .collect();
    println!(
        "\nperplexity on {} windows of {} tokens of {}{}, by width",
        args.limit,
        args.context,
        args.text.display(),
        if args.calib.is_none() {
            " (second half)"
        } else {
            ""
        }
    );
    println!("| width | parameters | {} |", names.join(" | "));
    println!("|---|---|{}", "---|".repeat(names.len()));
    for &f in &args.widths {
        let spec = SliceSpec {
            width: width(f),
            bits: None,
        };
        let (naive, report) = slice(base, &spec)?;
        let mut row = Vec::new();
        if let Some(n) = &nested {
            row.push(eval.ppl(&slice(n, &spec)?.0)?);
        }
        row.push(eval.ppl(&slice(&sorted, &spec)?.0)?);
        row.push(eval.ppl(&naive)?);
        if shipped {
            let sep = if f >= 1.0 {
                Some(base.clone())
            } else {
                load(&format!(
                    "separate-{:02}.compress",
                    (f * 100.0).round() as usize
                ))?
            };
            row.push(match sep {
                Some(m) => eval.ppl(&m)?,
                None => f64::NAN,
            });
        }
        let frac = report.parameters.1 as f64 / report.parameters.0 as f64;
        for (s, &p) in series.iter_mut().zip(&row) {
            s.points.push((frac, p));
        }
        let cells: Vec<String> = row.iter().map(|p| format!("{p:.3}")).collect();
        println!(
            "| {:.0}% (FFN {}, KV groups {}) | {} ({:.0}%) | {} |",
            f * 100.0,
            report.prefix.ffn,
            report.prefix.kv_groups,
            report.parameters.1,
            frac * 100.0,
            cells.join(" | ")
        );
    }
    charts(
        &args.plot_dir,
        "matryoshka_width",
        &Chart {
            title: "Perplexity of width slices".into(),
            x_label: "parameters kept (fraction)".into(),
            y_label: "perplexity".into(),
            log_y: true,
            lines: true,
        },
        &series,
    )?;

    // Nested bits at full width: one 8-bit store, sliced; against RTN at each width alone.
    let full = nested.as_ref().unwrap_or(&sorted);
    let mut q8 = full.clone();
    quantize_nested(&mut q8, args.group)?;
    // The nested bits trained for: a short quantization-aware fine-tune of the full-width model,
    // distilled from itself, with every nested width's fake-quantized loss (docs/matryoshka.md).
    let qat = if args.qat_steps > 0 {
        let t = Instant::now();
        let cfg = TrainConfig {
            steps: args.qat_steps,
            batch_size: 8,
            seq_len: args.context.min(64),
            lr: 5e-4,
            warmup_steps: (args.qat_steps / 10).max(1),
            nested_bits: Some(NestedBits {
                bits: vec![(8, 1.0), (4, 1.0), (3, 0.5), (2, 0.25)],
                group: args.group,
            }),
            ..TrainConfig::default()
        };
        let out = distill(
            full.clone(),
            full,
            &calib_tokens,
            &cfg,
            &DistillLoss::default(),
            &WidthSchedule::Full,
            |_| std::ops::ControlFlow::Continue(()),
        )?;
        let mut q = out.student;
        quantize_nested(&mut q, args.group)?;
        println!(
            "\nnested-bit fine-tune: {} steps in {:.1} s",
            args.qat_steps,
            t.elapsed().as_secs_f64()
        );
        Some(q)
    } else {
        None
    };
    let mut bit_series = vec![
        Series {
            name: "nested bits (one int8 store)".into(),
            points: Vec::new(),
        },
        Series {
            name: "RTN at each width".into(),
            points: Vec::new(),
        },
    ];
    if qat.is_some() {
        bit_series.push(Series {
            name: "nested bits after the nested-bit fine-tune".into(),
            points: Vec::new(),
        });
    }
    println!(
        "\nfull width, projections quantized (asymmetric, groups of {}; embedding and head f32); f32 perplexity {:.3}",
        args.group,
        eval.ppl(full)?
    );
    if qat.is_some() {
        println!("| bits | nested slice of int8 | RTN at this width | nested slice after the fine-tune |");
        println!("|---|---|---|---|");
    } else {
        println!("| bits | nested slice of int8 | RTN at this width |");
        println!("|---|---|---|");
    }
    for bits in [8u8, 4, 3, 2] {
        let spec = SliceSpec {
            width: Width::uniform(1.0),
            bits: Some(bits),
        };
        let (m, _) = slice(&q8, &spec)?;
        let nested_ppl = eval.ppl(&m)?;
        let mut rtn = full.clone();
        quantize_projections(&mut rtn, bits, args.group)?;
        let rtn_ppl = eval.ppl(&rtn)?;
        // Stored bits per projection weight: the code plus an f16 scale and zero per group.
        let bpw = bits as f64 + 32.0 / args.group as f64;
        bit_series[0].points.push((bpw, nested_ppl));
        bit_series[1].points.push((bpw, rtn_ppl));
        match &qat {
            Some(q) => {
                let (m, _) = slice(q, &spec)?;
                let qat_ppl = eval.ppl(&m)?;
                bit_series[2].points.push((bpw, qat_ppl));
                println!(
                    "| {bits} ({bpw:.2} bits/weight) | {nested_ppl:.3} | {rtn_ppl:.3} | {qat_ppl:.3} |"
                );
            }
            None => println!("| {bits} ({bpw:.2} bits/weight) | {nested_ppl:.3} | {rtn_ppl:.3} |"),
        }
    }
    charts(
        &args.plot_dir,
        "matryoshka_bits",
        &Chart {
            title: "Perplexity of bit slices (full width)".into(),
            x_label: "bits per projection weight".into(),
            y_label: "perplexity".into(),
            log_y: true,
            lines: true,
        },
        &bit_series,
    )?;
    println!("done in {:.1} s", clock.elapsed().as_secs_f64());
    Ok(())
}
