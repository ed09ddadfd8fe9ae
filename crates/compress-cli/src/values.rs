//! Value parsers for numeric flags: every count, fraction, temperature and bit width is checked
//! when the command line is parsed, so `NaN`, infinities, zero, negative or absurdly large values
//! are refused with the accepted range instead of changing the behaviour silently (a `NaN`
//! temperature would otherwise compare false everywhere and decode greedily).

/// The largest count any flag accepts (windows, tokens, group sizes, ranks): 2³².
pub const MAX_COUNT: usize = 1 << 32;

fn number<T: std::str::FromStr>(s: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    s.trim().parse::<T>().map_err(|e| format!("`{s}`: {e}"))
}

/// A count from 1 to [`MAX_COUNT`].
pub fn count(s: &str) -> Result<usize, String> {
    let n: usize = number(s)?;
    if n == 0 || n > MAX_COUNT {
        return Err(format!("{n}: must be from 1 to {MAX_COUNT}"));
    }
    Ok(n)
}

fn finite(s: &str) -> Result<f64, String> {
    let x: f64 = number(s)?;
    if !x.is_finite() {
        return Err(format!("{s}: must be a finite number"));
    }
    Ok(x)
}

/// A fraction in `[0, 1)` (of weights removed).
pub fn fraction_below_one(s: &str) -> Result<f64, String> {
    let x = finite(s)?;
    if !(0.0..1.0).contains(&x) {
        return Err(format!("{x}: must lie in [0, 1)"));
    }
    Ok(x)
}

/// A fraction in `(0, 1]` (of parameters, energy or width kept).
pub fn fraction_kept(s: &str) -> Result<f64, String> {
    let x = finite(s)?;
    if !(x > 0.0 && x <= 1.0) {
        return Err(format!("{x}: must lie in (0, 1]"));
    }
    Ok(x)
}

/// [`fraction_kept`] as `f32` (nucleus `top_p`).
pub fn fraction_kept_f32(s: &str) -> Result<f32, String> {
    fraction_kept(s).map(|x| x as f32)
}

/// A sampling temperature: finite and in `(0, 100]`.
pub fn temperature(s: &str) -> Result<f32, String> {
    let x = finite(s)?;
    if !(x > 0.0 && x <= 100.0) {
        return Err(format!(
            "{x}: must lie in (0, 100] (omit --temperature for greedy decoding)"
        ));
    }
    Ok(x as f32)
}

/// A code width from 2 to 8 bits.
pub fn bits(s: &str) -> Result<u8, String> {
    let b: u8 = number(s)?;
    if !(2..=8).contains(&b) {
        return Err(format!("{b}: bit widths are 2 to 8"));
    }
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_numbers_are_refused_with_the_range() {
        for bad in ["NaN", "inf", "-inf", "-0.5", "0", "1e40"] {
            assert!(temperature(bad).is_err(), "{bad}");
        }
        assert_eq!(temperature("0.7").unwrap(), 0.7);
        assert!(count("0").unwrap_err().contains("from 1"));
        assert!(count("-3").is_err());
        assert!(count("99999999999999").is_err());
        assert_eq!(count("128").unwrap(), 128);
        assert!(fraction_below_one("1").is_err());
        assert!(fraction_below_one("NaN").is_err());
        assert_eq!(fraction_below_one("0").unwrap(), 0.0);
        assert!(fraction_kept("0").is_err());
        assert_eq!(fraction_kept("1").unwrap(), 1.0);
        assert!(bits("9").is_err() && bits("1").is_err());
        assert_eq!(bits("3").unwrap(), 3);
    }
}
