//! One evaluation's results in one place: a [`Report`] per model, serialised to JSON, rendered
//! as a Markdown table for a set of models, and drawn as quality against bits per weight with
//! the Pareto frontier.
//!
//! ```
//! use compress_eval::report::{markdown_table, Report};
//! use compress_eval::efficiency::SizeReport;
//!
//! let size = SizeReport {
//!     parameters: 1000, linear_weights: 800, linear_bits: 3600,
//!     linear_bits_per_weight: 4.5, model_bytes: 1250, bits_per_weight: 10.0,
//! };
//! let r = Report::new("tiny", "rtn-w4g32", size);
//! let json = r.to_json();
//! assert_eq!(Report::from_json(&json).unwrap(), r);
//! assert!(markdown_table(&[r]).contains("| tiny | rtn-w4g32 | 4.50 |"));
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::efficiency::{SizeReport, SpeedReport};
use crate::kld::KldReport;
use crate::perplexity::PerplexityReport;
use crate::plot::{pareto_frontier, plot, Chart, PlotError, Series};
use crate::tasks::TaskReport;
use crate::EvalError;

/// Version of the JSON layout, bumped when a field changes meaning.
pub const REPORT_VERSION: u32 = 1;

/// Everything measured about one model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Layout version ([`REPORT_VERSION`]).
    pub version: u32,
    /// Which model (a name or path).
    pub model: String,
    /// How it was compressed (`"dense"`, a method tag, a recipe name).
    pub method: String,
    /// Storage.
    pub size: SizeReport,
    /// Perplexity, when measured.
    pub perplexity: Option<PerplexityReport>,
    /// KL divergence to the base model, when measured.
    pub kld: Option<KldReport>,
    /// Zero-shot tasks by name.
    pub tasks: BTreeMap<String, TaskReport>,
    /// Generation speed, when measured.
    pub speed: Option<SpeedReport>,
}

impl Report {
    /// A report holding only the size; fill in the other fields as they are measured.
    pub fn new(model: impl Into<String>, method: impl Into<String>, size: SizeReport) -> Self {
        Self {
            version: REPORT_VERSION,
            model: model.into(),
            method: method.into(),
            size,
            perplexity: None,
            kld: None,
            tasks: BTreeMap::new(),
            speed: None,
        }
    }

    /// Pretty-printed JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report holds only finite-or-null numbers")
    }

    /// Reads a report written by [`Self::to_json`]; a newer layout version is an error.
    pub fn from_json(json: &str) -> Result<Self, EvalError> {
        let r: Self = serde_json::from_str(json)
            .map_err(|e| EvalError::InvalidInput(format!("report JSON: {e}")))?;
        if r.version > REPORT_VERSION {
            return Err(EvalError::InvalidInput(format!(
                "report version {} is newer than this build reads ({REPORT_VERSION})",
                r.version
            )));
        }
        Ok(r)
    }

    /// The value a quality axis reads, if measured.
    pub fn quality(&self, q: Quality) -> Option<f64> {
        match q {
            Quality::Perplexity => self.perplexity.as_ref().map(|p| p.ppl),
            Quality::Kld => self.kld.as_ref().map(|k| k.kld.mean),
        }
    }
}

/// A quality measure to plot against size (lower is better for both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quality {
    /// Perplexity.
    Perplexity,
    /// Mean KL divergence to the base model (nats per token).
    Kld,
}

/// A Markdown table of `reports`, one row each; columns for perplexity, KLD, each task
/// (acc_norm) and decode speed appear when at least one report has them.
pub fn markdown_table(reports: &[Report]) -> String {
    let has_ppl = reports.iter().any(|r| r.perplexity.is_some());
    let has_kld = reports.iter().any(|r| r.kld.is_some());
    let has_speed = reports.iter().any(|r| r.speed.is_some());
    let tasks: Vec<&String> = {
        let mut t: Vec<&String> = reports.iter().flat_map(|r| r.tasks.keys()).collect();
        t.sort();
        t.dedup();
        t
    };
    let mut head = vec![
        "model".to_string(),
        "method".into(),
        "bits/weight (linears)".into(),
        "size (MB)".into(),
    ];
    if has_ppl {
        head.push("PPL (95% CI)".into());
    }
    if has_kld {
        head.extend(["KLD (95% CI)".into(), "same top".into()]);
    }
    head.extend(tasks.iter().map(|t| format!("{t} acc_norm")));
    if has_speed {
        head.push("decode tokens/s".into());
    }
    let mut out = format!("| {} |\n|{}\n", head.join(" | "), "---|".repeat(head.len()));
    for r in reports {
        let mut row = vec![
            r.model.clone(),
            r.method.clone(),
            format!("{:.2}", r.size.linear_bits_per_weight),
            format!("{:.2}", r.size.model_bytes as f64 / 1e6),
        ];
        if has_ppl {
            row.push(r.perplexity.as_ref().map_or("–".into(), |p| {
                format!("{:.3} ({:.3}–{:.3})", p.ppl, p.ppl_ci95.0, p.ppl_ci95.1)
            }));
        }
        if has_kld {
            match &r.kld {
                Some(k) => row.extend([
                    format!("{:.4} ({:.4}–{:.4})", k.kld.mean, k.kld.lo, k.kld.hi),
                    format!("{:.3}", k.same_top.mean),
                ]),
                None => row.extend(["–".into(), "–".into()]),
            }
        }
        for t in &tasks {
            row.push(r.tasks.get(*t).map_or("–".into(), |t| {
                format!("{:.3} ± {:.3}", t.acc_norm.mean, t.acc_norm.se)
            }));
        }
        if has_speed {
            row.push(r.speed.as_ref().map_or("–".into(), |s| {
                format!("{:.1}", s.decode_tokens_per_second)
            }));
        }
        out.push_str(&format!("| {} |\n", row.join(" | ")));
    }
    out
}

/// Draws `quality` against stored bits per weight (of the linears) for every report that has
/// it, with the Pareto frontier (the reports no other beats on both axes), to `path` (`.svg` or
/// `.png`). Returns the frontier's points, smallest size first.
pub fn pareto_chart(
    reports: &[Report],
    quality: Quality,
    title: &str,
    path: &Path,
) -> Result<Vec<(f64, f64)>, PlotError> {
    let points: Vec<(f64, f64)> = reports
        .iter()
        .filter_map(|r| Some((r.size.linear_bits_per_weight, r.quality(quality)?)))
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect();
    let frontier = pareto_frontier(&points);
    let y_label = match quality {
        Quality::Perplexity => "perplexity",
        Quality::Kld => "KL divergence to the base (nats/token)",
    };
    let chart = Chart {
        title: title.to_string(),
        x_label: "stored bits per weight".into(),
        y_label: y_label.into(),
        log_y: true,
        // Points only: joining every model by size would suggest an ordering that is not there.
        lines: false,
    };
    let series = [
        Series {
            name: "Pareto frontier".into(),
            points: frontier.clone(),
        },
        Series {
            name: "all models".into(),
            points,
        },
    ];
    plot(path, &chart, &series)?;
    Ok(frontier)
}
