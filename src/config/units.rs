//! Durations and sizes as humans write them: `"10s"`, `"5m"`, `"1MiB"`.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserialize, Deserializer, Visitor};

/// A duration written as text: `"250ms"`, `"10s"`, `"5m"`, `"1h 30m"`.
///
/// A bare number is refused: `timeout = 30` could mean seconds or
/// milliseconds, and guessing wrong fails in production.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = duration_text(deserializer)?;
        parse_duration(&text).map(HumanDuration).map_err(de::Error::custom)
    }
}

/// What every duration error ends with.
const DURATION_HINT: &str = "write a number and a unit, such as \"500ms\", \"10s\" or \"5m\"";

/// The text of a duration as written. A bare number (`timeout = 10`) gets
/// the hint a unitless string (`"10"`) gets, not serde's "expected a string".
pub(crate) fn duration_text<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    struct Text;
    impl Visitor<'_> for Text {
        type Value = String;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            write!(f, "a duration: {DURATION_HINT}")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
            Ok(v.to_owned())
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
            Err(bare_number(v))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
            Err(bare_number(v))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<String, E> {
            Err(bare_number(v))
        }
    }
    deserializer.deserialize_any(Text)
}

fn bare_number<E: de::Error>(number: impl fmt::Display) -> E {
    E::custom(format!(
        "invalid duration {number} (a number without a unit: seconds or milliseconds?); {DURATION_HINT}"
    ))
}

/// The longest duration a setting may have: 100 years, far beyond any
/// timeout or interval, and short enough that the runtime's sums
/// (`ping_interval + pong_timeout`, `now + interval`) cannot overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// Parses a duration such as `"10s"`; the error says what was expected.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text.trim())
        .map_err(|e| format!("invalid duration {text:?} ({e}); {DURATION_HINT}"))?;
    if duration > MAX_DURATION {
        return Err(format!(
            "duration {text:?} is longer than 100 years, the longest a setting may have"
        ));
    }
    Ok(duration)
}

/// A size in bytes: an integer, or text such as `"64KiB"`, `"1MiB"`, `"1MB"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;
        impl Visitor<'_> for SizeVisitor {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size such as \"64KiB\" or \"1MiB\", or a number of bytes")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                parse_size(v).map(ByteSize).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(SizeVisitor)
    }
}

/// Parses a size such as `"64KiB"`; the error says what was expected.
pub fn parse_size(text: &str) -> Result<u64, String> {
    text.trim()
        .parse::<bytesize::ByteSize>()
        .map(|size| size.as_u64())
        .map_err(|e| format!("invalid size {text:?} ({e}); write a number and a unit, such as \"64KiB\" or \"1MiB\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_as_humans_write_them() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        // Long unit names, as the configuration reference promises.
        assert_eq!(parse_duration("10 seconds"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2 minutes 30 seconds"), Ok(Duration::from_secs(150)));
        assert_eq!(parse_duration("1 hour"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("ten seconds").is_err());
    }

    #[test]
    fn sizes_as_humans_write_them() {
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("64KiB"), Ok(64 << 10));
        assert_eq!(parse_size("1MB"), Ok(1_000_000));
        assert_eq!(parse_size("512"), Ok(512));
        assert!(parse_size("lots").is_err());
    }
}
