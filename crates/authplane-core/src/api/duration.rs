//! Durations written as Kubernetes writes them (Go's `time.ParseDuration`: `720h`,
//! `1h30m`, `1.5s`), parsed with checked arithmetic so hostile input is an error, never
//! an overflow. The original text is kept, so a manifest reads back as it was written.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use jiff::SignedDuration;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Duration {
    text: String,
    value: SignedDuration,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "invalid duration {text:?}: {reason} (expected a number with a unit such as 30s, 15m, 1h30m, 720h)"
)]
pub struct DurationError {
    text: String,
    reason: &'static str,
}

impl Duration {
    pub fn value(&self) -> SignedDuration {
        self.value
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for Duration {
    type Err = DurationError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let fail = |reason| DurationError {
            text: text.to_owned(),
            reason,
        };
        let (negative, mut rest) = match text.as_bytes().first() {
            Some(b'-') => (true, &text[1..]),
            Some(b'+') => (false, &text[1..]),
            _ => (false, text),
        };
        if rest == "0" {
            return Ok(Self {
                text: text.to_owned(),
                value: SignedDuration::ZERO,
            });
        }
        if rest.is_empty() {
            return Err(fail("empty"));
        }
        let mut nanos: i128 = 0;
        while !rest.is_empty() {
            let digits_end = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or(fail("missing unit"))?;
            let (number, tail) = rest.split_at(digits_end);
            let unit_end = tail
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(tail.len());
            let (unit, tail) = tail.split_at(unit_end);
            let unit_nanos: i128 = match unit {
                "ns" => 1,
                "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
                "ms" => 1_000_000,
                "s" => 1_000_000_000,
                "m" => 60_000_000_000,
                "h" => 3_600_000_000_000,
                "" => return Err(fail("missing unit")),
                _ => return Err(fail("unknown unit")),
            };
            let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
            if whole.is_empty() && fraction.is_empty() {
                return Err(fail("missing number"));
            }
            // 19 digits keep every intermediate value far inside i128.
            if whole.len() > 19 || fraction.contains('.') {
                return Err(fail("number out of range"));
            }
            let whole: i128 = if whole.is_empty() {
                0
            } else {
                whole.parse().map_err(|_| fail("bad number"))?
            };
            let mut part = whole * unit_nanos;
            let mut scale = unit_nanos;
            for digit in fraction.bytes().take(18) {
                scale /= 10;
                part += i128::from(digit - b'0') * scale;
            }
            nanos += part;
            if nanos > i128::from(i64::MAX) {
                return Err(fail("out of range"));
            }
            rest = tail;
        }
        let nanos = if negative { -nanos } else { nanos };
        let value =
            SignedDuration::from_nanos(i64::try_from(nanos).map_err(|_| fail("out of range"))?);
        Ok(Self {
            text: text.to_owned(),
            value,
        })
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl schemars::JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        // Not `format: duration`: that means ISO 8601 in JSON Schema. Bounded, because
        // the apiserver estimates the cost of every CEL rule that reads a duration from
        // the longest string the schema allows, and refuses CRDs whose rules could be
        // too costly.
        schemars::json_schema!({
            "type": "string",
            "maxLength": 32,
            "x-kubernetes-validations": [{
                "rule": is_duration!("self"),
                "message": "must be a duration in Go syntax: numbers of at most 5 digits, each with a unit (ns, us, ms, s, m, h), such as 30s, 15m, 1h30m or 720h",
            }],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(text: &str) -> f64 {
        text.parse::<Duration>().unwrap().value().as_secs_f64()
    }

    #[test]
    fn parses_go_syntax() {
        assert_eq!(secs("720h"), 2_592_000.0);
        assert_eq!(secs("1h30m"), 5_400.0);
        assert_eq!(secs("1.5s"), 1.5);
        assert_eq!(secs("250ms"), 0.25);
        assert_eq!(secs(".5m"), 30.0);
        assert_eq!(secs("-2s"), -2.0);
        assert_eq!(secs("0"), 0.0);
        assert_eq!("720h".parse::<Duration>().unwrap().to_string(), "720h");
    }

    #[test]
    fn refuses_malformed_and_hostile_input() {
        for bad in [
            "",
            "h",
            "10",
            "10x",
            "1e30h",
            "99999999999999999999h",
            "3000000h",
            ".h",
            "1..5s",
            "--1s",
            "1h 30m",
            "NaNs",
            "infh",
        ] {
            assert!(bad.parse::<Duration>().is_err(), "{bad:?} was accepted");
        }
    }
}
