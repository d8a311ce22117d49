//! [`Metric`]: a measured value that may be NaN or infinite.
//!
//! A diverging loss is exactly what a user must see, so non-finite numbers are data. JSON has
//! no NaN, and serde_json writes one as `null` (and then cannot read it back into an `f64`),
//! so on the wire they travel as the strings `"NaN"`, `"Infinity"` and `"-Infinity"`, both
//! ways. `null` is refused: it would be ambiguous between "missing" and "NaN".

use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An `f64` that serialises NaN and ±Inf as strings. All NaNs are made the one canonical
/// quiet NaN, so stored bytes compare equal and sort above +Inf under `total_cmp`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Metric(pub f64);

impl Metric {
    pub const NAN: Metric = Metric(f64::NAN);

    /// The value, with any NaN made the canonical positive NaN.
    pub fn new(value: f64) -> Self {
        if value.is_nan() {
            Self::NAN
        } else {
            Metric(value)
        }
    }

    pub fn get(self) -> f64 {
        self.0
    }
}

impl PartialEq for Metric {
    /// Bitwise-minded equality: NaN equals NaN, so round-trip tests can compare directly.
    fn eq(&self, other: &Self) -> bool {
        (self.0.is_nan() && other.0.is_nan()) || self.0 == other.0
    }
}

impl From<f64> for Metric {
    fn from(value: f64) -> Self {
        Metric::new(value)
    }
}

impl From<f32> for Metric {
    fn from(value: f32) -> Self {
        Metric::new(f64::from(value))
    }
}

impl Serialize for Metric {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let v = self.0;
        if v.is_nan() {
            s.serialize_str("NaN")
        } else if v == f64::INFINITY {
            s.serialize_str("Infinity")
        } else if v == f64::NEG_INFINITY {
            s.serialize_str("-Infinity")
        } else {
            s.serialize_f64(v)
        }
    }
}

impl<'de> Deserialize<'de> for Metric {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(MetricVisitor)
    }
}

struct MetricVisitor;

impl Visitor<'_> for MetricVisitor {
    type Value = Metric;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(r#"a number or one of "NaN", "Infinity", "-Infinity""#)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Metric, E> {
        Ok(Metric::new(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Metric, E> {
        Ok(Metric(v as f64))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Metric, E> {
        Ok(Metric(v as f64))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Metric, E> {
        match v {
            "NaN" => Ok(Metric::NAN),
            "Infinity" => Ok(Metric(f64::INFINITY)),
            "-Infinity" => Ok(Metric(f64::NEG_INFINITY)),
            other => Err(E::invalid_value(de::Unexpected::Str(other), &self)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_values_travel_as_strings_and_come_back_exactly() {
        let values = [
            Metric(1.5),
            Metric::NAN,
            Metric(f64::INFINITY),
            Metric(f64::NEG_INFINITY),
            Metric(-0.0),
            Metric(f64::MIN_POSITIVE),
            Metric(1e300),
        ];
        let json = serde_json::to_string(&values).unwrap();
        assert_eq!(
            json,
            r#"[1.5,"NaN","Infinity","-Infinity",-0.0,2.2250738585072014e-308,1e+300]"#
        );
        let back: Vec<Metric> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, values);
    }

    #[test]
    fn null_and_other_strings_are_refused() {
        assert!(serde_json::from_str::<Metric>("null").is_err());
        assert!(serde_json::from_str::<Metric>(r#""nan""#).is_err());
        assert!(serde_json::from_str::<Metric>(r#""1.0""#).is_err());
    }

    #[test]
    fn integers_are_accepted_as_numbers() {
        assert_eq!(serde_json::from_str::<Metric>("3").unwrap(), Metric(3.0));
        assert_eq!(serde_json::from_str::<Metric>("-3").unwrap(), Metric(-3.0));
    }
}
