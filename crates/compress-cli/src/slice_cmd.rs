//! `compress slice`: a real smaller model cut out of a nested one (see
//! `compress_distill::matryoshka`), optionally after post-hoc sorting and nested 8-bit codes.

use compress::core::calibration::sample_windows;
use compress::distill::matryoshka::{quantize_nested, slice, sort_by_activation, SliceSpec, Width};
use compress::eval::kld::KldReport;
use compress::model::container::{NestingEntry, NestingOrder};
use serde::Serialize;

use crate::cli::{Format, SliceArgs};
use crate::compress_cmd::{evaluate, print_kld, save, texts, OutputReport};
use crate::{load_model, print_json, CliError, CliResult};

/// What `slice` reports.
#[derive(Debug, Clone, Serialize)]
pub struct SliceOutput {
    /// FFN neurons kept per block.
    pub ffn: usize,
    /// Key/value groups kept per block.
    pub kv_groups: usize,
    /// Bits of the sliced projections (none: as stored).
    pub bits: Option<u8>,
    /// Parameters before and after.
    pub parameters: (usize, usize),
    /// The output file.
    pub output: OutputReport,
    /// With `--eval`: perplexities and KL divergence to the input model.
    pub eval: Option<KldReport>,
}

/// Runs `compress slice`.
pub fn slice_cmd(args: &SliceArgs, device: &burn::tensor::Device, json: bool) -> CliResult<()> {
    let c = &args.common;
    let width = Width {
        ffn: args.ffn_width.unwrap_or(args.width),
        heads: args.head_width.unwrap_or(args.width),
    };
    let format = match c.format {
        Some(f) => f,
        None if c.output.extension().is_some_and(|e| e == "gguf") => Format::Gguf,
        None => Format::Container,
    };
    let mut m = load_model(c.model.model.as_deref(), device)?;
    let needs_text = args.sort || c.eval.is_some();
    let (calib_text, eval_text) = if needs_text {
        let (a, b) = texts(&c.calib, c.eval.as_deref())?;
        (Some(a), b)
    } else {
        (None, None)
    };
    let base = c.eval.as_ref().map(|_| m.model.clone());
    let mut steps = Vec::new();
    if args.sort {
        let tokens = m
            .tokenizer
            .encode(calib_text.as_deref().unwrap_or_default(), true)
            .map_err(CliError::failed)?;
        let windows = sample_windows(
            &tokens,
            args.sort_samples,
            c.seqlen.unwrap_or(128),
            c.seed.unwrap_or(0),
        )
        .map_err(|e| CliError::input(format!("{}: {e}", c.calib.display())))?;
        sort_by_activation(&mut m.model, &windows).map_err(CliError::failed)?;
        steps.push(format!(
            "sort by activation importance on {} × {} tokens of {}",
            windows.len(),
            windows[0].len(),
            c.calib.display()
        ));
    }
    let recorded = crate::input_nesting(c.model.model.as_deref())?;
    let uniform = (width.ffn - width.heads).abs() < 1e-12;
    match &recorded {
        Some(n) if !(uniform && n.covers(width.ffn)) => eprintln!(
            "note: the model was trained nested at widths {:?}; this slice (FFN {}, heads {}) \
             is not one of them",
            n.widths, width.ffn, width.heads
        ),
        None if !args.sort => eprintln!(
            "note: the model records no nesting; its prefixes are a naive slice unless it was \
             trained or sorted (--sort)"
        ),
        _ => {}
    }
    let nesting = recorded
        .or_else(|| {
            args.sort.then_some(NestingEntry {
                order: NestingOrder::Sorted,
                widths: Vec::new(),
                nested_bits: None,
            })
        })
        .map(|n| {
            let mut n = if uniform {
                n.after_slice(width.ffn)
            } else {
                NestingEntry {
                    widths: Vec::new(),
                    ..n
                }
            };
            if args.nest_bits {
                n.nested_bits = Some(8);
            }
            if args.bits.is_some() {
                n.nested_bits = None;
            }
            n
        });
    let cut = SliceSpec { width, bits: None };
    let (mut sliced, report) = slice(&m.model, &cut).map_err(CliError::usage)?;
    steps.push(format!(
        "slice to {} FFN neurons and {} key/value groups per block",
        report.prefix.ffn, report.prefix.kv_groups
    ));
    if args.nest_bits {
        quantize_nested(&mut sliced, args.nest_group).map_err(CliError::usage)?;
        steps.push(format!("nested 8-bit codes, groups of {}", args.nest_group));
    }
    if let Some(bits) = args.bits {
        let spec = SliceSpec {
            width: Width::uniform(1.0),
            bits: Some(bits),
        };
        sliced = slice(&sliced, &spec).map_err(CliError::usage)?.0;
        steps.push(format!("top {bits} bits of the 8-bit codes"));
    }
    let report = compress::distill::matryoshka::SliceReport {
        parameters: (m.model.num_parameters(), sliced.num_parameters()),
        ..report
    };
    m.model = sliced;
    let description = steps.join("; ");
    let output = save(&m, c, format, &description, nesting)?;
    let eval = match (&base, &eval_text) {
        (Some(base), Some(text)) => {
            let mut b = load_model(c.model.model.as_deref(), device)?;
            b.model = base.clone();
            Some(evaluate(&b, &m, text, c, json)?)
        }
        _ => None,
    };
    let r = SliceOutput {
        ffn: report.prefix.ffn,
        kv_groups: report.prefix.kv_groups,
        bits: args.bits,
        parameters: report.parameters,
        output,
        eval,
    };
    if json {
        return print_json(&r);
    }
    println!("{description}");
    println!(
        "parameters {} → {} ({:.1}%); wrote {} ({}, {:.2} MB)",
        r.parameters.0,
        r.parameters.1,
        100.0 * r.parameters.1 as f64 / r.parameters.0 as f64,
        r.output.path,
        r.output.format,
        r.output.bytes as f64 / 1e6
    );
    if let Some(k) = &r.eval {
        print_kld(c.context, k);
    }
    Ok(())
}
