//! Display formatting of metrics, counts, token totals and ages. NaN and infinities are
//! written out, never blanked: a diverged loss must read as one.

/// A metric to four significant digits: `3.412`, `0.01234`, `1.25e-5`; `NaN`, `∞`, `-∞`;
/// `—` when there is none.
pub fn metric(v: Option<f64>) -> String {
    let Some(v) = v else {
        return "—".into();
    };
    if let Some(word) = special(v) {
        return word.into();
    }
    let a = v.abs();
    if !(1e-3..1e5).contains(&a) {
        return format!("{v:.2e}");
    }
    let decimals = (3 - a.log10().floor() as i32).clamp(0, 6) as usize;
    format!("{v:.decimals$}")
}

/// How NaN, the infinities and zero are written wherever a number is shown.
pub fn special(v: f64) -> Option<&'static str> {
    if v.is_nan() {
        Some("NaN")
    } else if v == f64::INFINITY {
        Some("∞")
    } else if v == f64::NEG_INFINITY {
        Some("-∞")
    } else if v == 0.0 {
        Some("0")
    } else {
        None
    }
}

/// Whether a metric should be flagged (NaN or infinite).
pub fn non_finite(v: Option<f64>) -> bool {
    v.is_some_and(|v| !v.is_finite())
}

/// `1,234,567`; `—` for none.
pub fn count(v: Option<u64>) -> String {
    let Some(v) = v else {
        return "—".into();
    };
    let digits = v.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Token totals the way people say them: `980`, `12.3k`, `2.46M`, `1.20B`, `3.1T`.
pub fn tokens(v: Option<u64>) -> String {
    let Some(v) = v else {
        return "—".into();
    };
    let f = v as f64;
    match v {
        0..1_000 => v.to_string(),
        1_000..1_000_000 => format!("{:.1}k", f / 1e3),
        1_000_000..1_000_000_000 => format!("{:.2}M", f / 1e6),
        1_000_000_000..1_000_000_000_000 => format!("{:.2}B", f / 1e9),
        _ => format!("{:.1}T", f / 1e12),
    }
}

/// How long ago `then` was, seen at `now` (seconds since the epoch): `4 s`, `12 min`, `3 h`,
/// `2 d`.
pub fn age(now: f64, then: f64) -> String {
    let s = (now - then).max(0.0);
    if s < 60.0 {
        format!("{} s", s as u64)
    } else if s < 3600.0 {
        format!("{} min", (s / 60.0) as u64)
    } else if s < 86400.0 {
        format!("{} h", (s / 3600.0) as u64)
    } else {
        format!("{} d", (s / 86400.0) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_keep_four_significant_digits_and_show_non_finite_values() {
        assert_eq!(metric(Some(3.41234)), "3.412");
        assert_eq!(metric(Some(12.345)), "12.35");
        assert_eq!(metric(Some(0.012344)), "0.01234");
        assert_eq!(metric(Some(0.0000125)), "1.25e-5");
        assert_eq!(metric(Some(f64::NAN)), "NaN");
        assert_eq!(metric(Some(f64::INFINITY)), "∞");
        assert_eq!(metric(None), "—");
        assert!(non_finite(Some(f64::NAN)));
        assert!(!non_finite(Some(1.0)));
    }

    #[test]
    fn counts_tokens_and_ages_read_at_a_glance() {
        assert_eq!(count(Some(1234567)), "1,234,567");
        assert_eq!(count(Some(12)), "12");
        assert_eq!(tokens(Some(2_457_600)), "2.46M");
        assert_eq!(tokens(Some(12_300)), "12.3k");
        assert_eq!(tokens(Some(512)), "512");
        assert_eq!(age(100.0, 96.0), "4 s");
        assert_eq!(age(10_000.0, 0.0), "2 h");
    }
}
