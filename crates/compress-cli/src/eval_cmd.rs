//! `compress eval`: perplexity (either protocol), KL divergence to a base model, zero-shot tasks.

use compress::eval::efficiency::{measure_speed, SizeReport};
use compress::eval::kld::{kl_divergence, KldReport};
use compress::eval::perplexity::{perplexity, PerplexityConfig, PerplexityReport, Scoring};
use compress::eval::report::{markdown_table, Report};
use compress::eval::tasks::{evaluate, load_jsonl, TaskReport};
use serde::Serialize;

use crate::cli::{EvalArgs, Protocol};
use crate::progress::{bar, counter};
use crate::{load_model, print_json, read_text, CliError, CliResult};

/// One task's result.
#[derive(Debug, Clone, Serialize)]
pub struct TaskResult {
    /// Task name.
    pub task: String,
    /// Its report.
    pub report: TaskReport,
}

/// What `eval` reports.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    /// Text file scored.
    pub text: String,
    /// Tokens in the text.
    pub text_tokens: usize,
    /// One report per protocol asked for.
    pub perplexity: Vec<PerplexityReport>,
    /// With `--base-model`: KL divergence of the model to it (all-token windows).
    pub kld: Option<KldReport>,
    /// Zero-shot tasks.
    pub tasks: Vec<TaskResult>,
}

/// Runs `eval`.
pub fn eval(args: &EvalArgs, device: &burn::tensor::Device, json: bool) -> CliResult<()> {
    let m = load_model(args.model.model.as_deref(), device)?;
    let protocols = match args.scoring {
        Protocol::All => vec![Scoring::AllTokens],
        Protocol::Half => vec![Scoring::SecondHalf],
        Protocol::Both => vec![Scoring::AllTokens, Scoring::SecondHalf],
        Protocol::None => vec![],
    };
    let needs_text = !protocols.is_empty() || args.base_model.is_some();
    let (text, tokens) = if needs_text {
        let text = read_text(&args.text)?;
        let tokens = m.tokenizer.encode(&text, true).map_err(CliError::failed)?;
        (text, tokens)
    } else {
        (String::new(), Vec::new())
    };
    let config = |scoring| PerplexityConfig {
        context: args.context,
        scoring,
        max_windows: args.limit,
        bos: m.tokenizer.bos_id(),
    };
    let mut report = EvalReport {
        text: args.text.display().to_string(),
        text_tokens: tokens.len(),
        perplexity: Vec::new(),
        kld: None,
        tasks: Vec::new(),
    };
    for scoring in protocols {
        let pb = bar(&format!("{scoring:?}"), "windows", 0, json);
        let r = perplexity(
            &m.model,
            &tokens,
            text.len(),
            &config(scoring),
            counter(&pb),
        )
        .map_err(CliError::failed)?;
        pb.finish_and_clear();
        if !json {
            println!(
                "{scoring:?}, context {}: PPL {:.4} (95% {:.4}–{:.4}), mean NLL {:.5}, {:.4} bits/byte, {} tokens in {} windows",
                r.context,
                r.ppl,
                r.ppl_ci95.0,
                r.ppl_ci95.1,
                r.mean_nll,
                r.bits_per_byte.unwrap_or(f64::NAN),
                r.tokens_scored,
                r.windows
            );
        }
        report.perplexity.push(r);
    }
    if let Some(base_path) = &args.base_model {
        let base = load_model(Some(base_path), device)?;
        let pb = bar("KL divergence", "windows", 0, json);
        let k = kl_divergence(
            &base.model,
            &m.model,
            &tokens,
            &config(Scoring::AllTokens),
            counter(&pb),
        )
        .map_err(CliError::failed)?;
        pb.finish_and_clear();
        if !json {
            println!(
                "KLD to {}: mean {:.5} (95% {:.5}–{:.5}), median {:.5}, p99 {:.5}; same top token {:.4}; PPL {:.4} (base) vs {:.4}",
                base_path.display(),
                k.kld.mean,
                k.kld.lo,
                k.kld.hi,
                k.kld_percentiles.p50,
                k.kld_percentiles.p99,
                k.same_top.mean,
                k.mean_nll.0.exp(),
                k.mean_nll.1.exp()
            );
        }
        report.kld = Some(k);
    }
    for task in &args.tasks {
        let path = args.task_dir.join(format!("{task}.jsonl"));
        let items = load_jsonl(&path, args.task_limit)
            .map_err(|e| CliError::input(format!("{}: {e}", path.display())))?;
        let pb = bar(task, "questions", items.len(), json);
        let r = evaluate(&m.model, &m.tokenizer, &items, counter(&pb)).map_err(CliError::failed)?;
        pb.finish_and_clear();
        if !json {
            println!(
                "{task}: n {}, acc {:.4} ± {:.4}, acc_norm {:.4} ± {:.4}",
                r.n, r.acc.mean, r.acc.se, r.acc_norm.mean, r.acc_norm.se
            );
        }
        report.tasks.push(TaskResult {
            task: task.clone(),
            report: r,
        });
    }
    if let Some(path) = &args.report {
        let name = args
            .model
            .model
            .as_ref()
            .map_or("stories260K (embedded)".to_string(), |p| {
                p.display().to_string()
            });
        let mut r = Report::new(name, args.method.clone(), SizeReport::of(&m.model));
        r.perplexity = report.perplexity.first().cloned();
        r.kld = report.kld.clone();
        r.tasks = report
            .tasks
            .iter()
            .map(|t| (t.task.clone(), t.report.clone()))
            .collect();
        if let Some(n) = args.speed {
            let text = if tokens.is_empty() {
                read_text(&args.text)?
            } else {
                text.clone()
            };
            let ids = m.tokenizer.encode(&text, true).map_err(CliError::failed)?;
            let prompt = &ids[..ids.len().min(64)];
            r.speed = Some(measure_speed(&m.model, prompt, n).map_err(CliError::failed)?);
        }
        let json_text = r.to_json();
        compress::model::save::write_atomic(path, |tmp| {
            std::fs::write(tmp, json_text.as_bytes()).map_err(|source| {
                compress::model::ModelError::Io {
                    path: tmp.to_path_buf(),
                    source,
                }
            })
        })
        .map_err(CliError::input)?;
        if !json {
            print!("{}", markdown_table(std::slice::from_ref(&r)));
        }
    }
    if json {
        print_json(&report)?;
    }
    Ok(())
}
