//! Calibration data: seeded sampling of `N` token sequences of length `L` from a token stream.
//!
//! GPTQ, AWQ and SparseGPT all calibrate on a few hundred random windows of generic text (the
//! papers use 128 windows of 2048 tokens from C4; 128 × 512 is the common small setting). The
//! same seed always gives the same windows, so a compression run is reproducible, and different
//! seeds give the independent calibration sets that seed-to-seed variance is measured over.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Errors from sampling calibration windows.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CalibrationError {
    /// The token stream is shorter than one window.
    #[error("calibration text has {tokens} tokens, fewer than one window of {window}")]
    TooShort {
        /// Tokens available.
        tokens: usize,
        /// Window length asked for.
        window: usize,
    },
    /// Zero windows or a zero window length was asked for.
    #[error("calibration needs at least one window of at least one token (asked {n} × {len})")]
    Empty {
        /// Number of windows asked for.
        n: usize,
        /// Window length asked for.
        len: usize,
    },
}

/// Splits a text at a line break near its middle: the first half for calibration, the second for
/// evaluation, so one file can serve both without scoring the text the model was calibrated on.
/// Without a line break in the first half, it splits at the middle byte boundary.
pub fn split_halves(text: &str) -> (&str, &str) {
    let mut mid = text.len() / 2;
    while !text.is_char_boundary(mid) {
        mid -= 1;
    }
    let split = text[..mid].rfind('\n').unwrap_or(mid);
    text.split_at(split)
}

/// `n` windows of `len` consecutive tokens, starting at positions drawn uniformly (with
/// replacement, as in the GPTQ reference) from a generator seeded with `seed`.
pub fn sample_windows(
    tokens: &[u32],
    n: usize,
    len: usize,
    seed: u64,
) -> Result<Vec<Vec<u32>>, CalibrationError> {
    if n == 0 || len == 0 {
        return Err(CalibrationError::Empty { n, len });
    }
    if tokens.len() < len {
        return Err(CalibrationError::TooShort {
            tokens: tokens.len(),
            window: len,
        });
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let last_start = tokens.len() - len;
    Ok((0..n)
        .map(|_| {
            let s = rng.random_range(0..=last_start);
            tokens[s..s + len].to_vec()
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_seeded_slices_of_the_stream() {
        let tokens: Vec<u32> = (0..1000).collect();
        let a = sample_windows(&tokens, 8, 16, 42).unwrap();
        let b = sample_windows(&tokens, 8, 16, 42).unwrap();
        let c = sample_windows(&tokens, 8, 16, 43).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        for w in &a {
            assert_eq!(w.len(), 16);
            // Consecutive tokens of the stream.
            assert!(w.windows(2).all(|p| p[1] == p[0] + 1));
        }
        // A stream exactly one window long has one possible window.
        let one = sample_windows(&tokens[..16], 3, 16, 1).unwrap();
        assert!(one.iter().all(|w| w[..] == tokens[..16]));
    }

    #[test]
    fn bad_requests_are_errors() {
        let tokens = [1u32, 2, 3];
        assert_eq!(
            sample_windows(&tokens, 1, 4, 0),
            Err(CalibrationError::TooShort {
                tokens: 3,
                window: 4
            })
        );
        assert!(matches!(
            sample_windows(&tokens, 0, 2, 0),
            Err(CalibrationError::Empty { .. })
        ));
    }
}
