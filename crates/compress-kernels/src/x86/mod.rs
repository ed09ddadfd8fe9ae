//! x86-64 SIMD tiers, each compiled with `#[target_feature]` and only called after run-time CPU
//! feature detection ([`crate::Tier::is_available`]).

pub mod avx2;
pub mod avx512;
pub mod vnni;
