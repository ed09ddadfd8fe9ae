//! # compress-eval
//!
//! Evaluation of compressed models (planned): perplexity (full-window and llama.cpp protocols),
//! KL divergence to the base model, zero-shot multiple-choice tasks, speed and memory, with
//! confidence intervals, JSON/Markdown reports and plots.
//!
//! This crate holds no API yet. See `docs/STATUS.md`.
