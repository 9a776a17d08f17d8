//! Durations written the way Go and humans write them: "30s", "5m", "1h30m", "250ms".

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

#[derive(Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    pub const fn secs(s: u64) -> Self {
        HumanDuration(Duration::from_secs(s))
    }

    /// Parses "30s", "1h30m", "250ms"; a bare number is rejected so "30" cannot silently mean
    /// 30 nanoseconds or 30 minutes.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s == "0" {
            return Ok(HumanDuration(Duration::ZERO));
        }
        humantime::parse_duration(s)
            .map(HumanDuration)
            .map_err(|e| {
                format!("{s:?} is not a duration ({e}); write e.g. \"30s\", \"5m\", \"250ms\"")
            })
    }
}

impl fmt::Debug for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration string such as \"30s\" or \"5m\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<HumanDuration, E> {
                HumanDuration::parse(v).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<HumanDuration, E> {
                Err(E::custom(format!(
                    "{v} has no unit; write a string such as \"{v}s\""
                )))
            }
        }
        d.deserialize_any(V)
    }
}
