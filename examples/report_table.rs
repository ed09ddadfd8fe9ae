//! A set of evaluation reports (JSON files written by `evaluate --report`, or by any code through
//! `compress::eval::report::Report::to_json`) as one Markdown table and, optionally, a chart of
//! quality against bits per weight with the Pareto frontier.
//!
//! ```text
//! cargo run --release --example evaluate -- --report dense.json
//! cargo run --release --example report_table -- dense.json gptq.json --plot pareto.svg
//! ```

use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use compress::eval::report::{markdown_table, pareto_chart, Quality, Report};

#[derive(Copy, Clone, Debug, ValueEnum)]
enum Axis {
    /// Perplexity.
    Ppl,
    /// KL divergence to the base model.
    Kld,
}

#[derive(Parser, Debug)]
#[command(about = "Evaluation reports as a Markdown table and a Pareto chart")]
struct Args {
    /// Report files (JSON).
    #[arg(required = true)]
    reports: Vec<PathBuf>,
    /// Write a quality-vs-bits chart here (.svg or .png).
    #[arg(long)]
    plot: Option<PathBuf>,
    /// The chart's quality axis.
    #[arg(long, value_enum, default_value_t = Axis::Ppl)]
    quality: Axis,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let mut reports = Vec::new();
    for p in &args.reports {
        let json =
            std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
        reports.push(Report::from_json(&json).map_err(|e| format!("{}: {e}", p.display()))?);
    }
    print!("{}", markdown_table(&reports));
    if let Some(path) = &args.plot {
        let q = match args.quality {
            Axis::Ppl => Quality::Perplexity,
            Axis::Kld => Quality::Kld,
        };
        let frontier = pareto_chart(&reports, q, "quality against size", path)?;
        eprintln!(
            "chart written to {}; Pareto frontier (bits/weight, quality): {frontier:?}",
            path.display()
        );
    }
    Ok(())
}
