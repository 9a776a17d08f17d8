//! An order-preserving JSON object whose values stay raw.
//!
//! The gateway rewrites a handful of top-level fields of a chat request (`model`,
//! `stream_options`, alias defaults) but must pass everything else through unchanged, and requests
//! can be megabytes of conversation and base64 images. Parsing into `serde_json::Value` would
//! allocate a node per JSON value; [`RawObject`] keeps each top-level value as a borrowed slice of
//! the input, so a rewrite costs one validating scan plus one copy.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

/// A JSON object as an ordered list of `(key, raw value)` pairs.
#[derive(Debug, Clone, Default)]
pub struct RawObject<'a> {
    fields: Vec<(Cow<'a, str>, Cow<'a, RawValue>)>,
}

/// Why a body could not be read as a JSON object.
#[derive(Debug)]
pub enum ParseError {
    /// Not valid JSON; carries serde_json's message (line/column).
    Syntax(String),
    /// Valid JSON but not an object.
    NotAnObject,
    /// More top-level fields than the limit given to [`RawObject::parse_limited`].
    TooManyFields(usize),
    /// The same top-level key twice.
    DuplicateKey(String),
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::Syntax(m) => write!(f, "{m}"),
            ParseError::NotAnObject => write!(f, "the request body must be a JSON object"),
            ParseError::TooManyFields(n) => {
                write!(f, "the request body has more than {n} top-level fields")
            }
            ParseError::DuplicateKey(k) => write!(f, "duplicate key {k:?}"),
        }
    }
}

impl<'a> RawObject<'a> {
    /// Parses and validates `input`; values borrow from it.
    pub fn parse(input: &'a [u8]) -> Result<Self, ParseError> {
        Self::parse_limited(input, usize::MAX)
    }

    /// As [`parse`](Self::parse), refusing objects with more than `max_fields` top-level fields
    /// (checked while parsing, so a huge object costs no more than `max_fields` entries).
    pub fn parse_limited(input: &'a [u8], max_fields: usize) -> Result<Self, ParseError> {
        let mut de = serde_json::Deserializer::from_slice(input);
        let obj = match (Limited(max_fields)).deserialize(&mut de) {
            Ok(o) => o,
            Err(e) if e.is_data() => {
                let m = e.to_string();
                return Err(if m.starts_with(TOO_MANY) {
                    ParseError::TooManyFields(max_fields)
                } else {
                    ParseError::NotAnObject
                });
            }
            Err(e) => return Err(ParseError::Syntax(e.to_string())),
        };
        de.end().map_err(|e| ParseError::Syntax(e.to_string()))?;
        // Parsers disagree on duplicate keys (first wins here, last wins in Python, Go and most
        // upstreams): refuse them, so what the gateway checks is what the provider runs.
        // Linear: a scan for the usual handful of fields, a hash set beyond (a quadratic check
        // let one wide body hold a worker thread for seconds).
        if obj.fields.len() <= 16 {
            for (i, (k, _)) in obj.fields.iter().enumerate() {
                if obj.fields[..i].iter().any(|(prev, _)| prev == k) {
                    return Err(ParseError::DuplicateKey(k.to_string()));
                }
            }
        } else {
            let mut seen = std::collections::HashSet::with_capacity(obj.fields.len());
            for (k, _) in &obj.fields {
                if !seen.insert(k.as_ref()) {
                    return Err(ParseError::DuplicateKey(k.to_string()));
                }
            }
        }
        Ok(obj)
    }

    pub fn get(&self, key: &str) -> Option<&RawValue> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_ref())
    }

    /// Deserializes one field; `Ok(None)` when it is absent or `null`.
    pub fn get_as<T: Deserialize<'a>>(&'a self, key: &str) -> Result<Option<T>, serde_json::Error> {
        match self.get(key) {
            None => Ok(None),
            Some(v) if v.get() == "null" => Ok(None),
            Some(v) => serde_json::from_str(v.get()).map(Some),
        }
    }

    pub fn contains(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Sets `key` to a raw JSON value, replacing it in place or appending it.
    pub fn set_raw(&mut self, key: &str, value: Box<RawValue>) {
        match self.fields.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = Cow::Owned(value),
            None => self
                .fields
                .push((Cow::Owned(key.to_string()), Cow::Owned(value))),
        }
    }

    /// Sets `key` to any serializable value.
    pub fn set<T: serde::Serialize + ?Sized>(&mut self, key: &str, value: &T) {
        let raw = serde_json::value::to_raw_value(value).expect("value serializes");
        self.set_raw(key, raw);
    }

    pub fn remove(&mut self, key: &str) -> bool {
        let before = self.fields.len();
        self.fields.retain(|(k, _)| k != key);
        before != self.fields.len()
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.fields.iter().map(|(k, _)| k.as_ref())
    }

    /// Length of [`to_vec`](Self::to_vec)'s output, keys' escapes aside (cheap: no copy).
    pub fn byte_len(&self) -> usize {
        2 + self
            .fields
            .iter()
            .map(|(k, v)| k.len() + v.get().len() + 4)
            .sum::<usize>()
    }

    /// Serializes the object, values byte-for-byte as they were parsed or set.
    pub fn to_vec(&self) -> Vec<u8> {
        let size: usize = self
            .fields
            .iter()
            .map(|(k, v)| k.len() + v.get().len() + 4)
            .sum();
        let mut out = Vec::with_capacity(size + 2);
        out.push(b'{');
        for (i, (k, v)) in self.fields.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            serde_json::to_writer(&mut out, k.as_ref()).expect("string serializes");
            out.push(b':');
            out.extend_from_slice(v.get().as_bytes());
        }
        out.push(b'}');
        out
    }
}

/// Start of the error message that stops a parse at the field limit.
const TOO_MANY: &str = "igw: too many fields";

/// Deserializes a [`RawObject`] of at most `.0` fields.
struct Limited(usize);

impl<'de> DeserializeSeed<'de> for Limited {
    type Value = RawObject<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        struct V(usize);
        impl<'de> Visitor<'de> for V {
            type Value = RawObject<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(8).min(self.0));
                while let Some(key) = map.next_key::<Key<'de>>()? {
                    if fields.len() == self.0 {
                        return Err(de::Error::custom(TOO_MANY));
                    }
                    let value: &'de RawValue = map.next_value()?;
                    fields.push((key.0, Cow::Borrowed(value)));
                }
                Ok(RawObject { fields })
            }
        }
        d.deserialize_map(V(self.0))
    }
}

impl<'de> Deserialize<'de> for RawObject<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Limited(usize::MAX).deserialize(d)
    }
}

/// A key that borrows from the input unless it contains escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_string())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_is_byte_exact_for_untouched_values() {
        let src = br#"{"model":"openai/gpt-4o","messages":[{"role":"user","content":"h\u00e9 \"x\""}],"n":1,"we\"ird":{"a":[1,2.50]}}"#;
        let obj = RawObject::parse(src).unwrap();
        assert_eq!(obj.to_vec(), src.to_vec());
    }

    #[test]
    fn set_replaces_in_place_and_appends() {
        let mut obj = RawObject::parse(br#"{"model":"a/b","stream":true}"#).unwrap();
        obj.set("model", "b");
        obj.set(
            "stream_options",
            &serde_json::json!({"include_usage": true}),
        );
        assert_eq!(
            String::from_utf8(obj.to_vec()).unwrap(),
            r#"{"model":"b","stream":true,"stream_options":{"include_usage":true}}"#
        );
        assert_eq!(obj.get_as::<String>("model").unwrap().as_deref(), Some("b"));
        assert_eq!(obj.get_as::<bool>("stream").unwrap(), Some(true));
        assert!(obj.remove("stream"));
        assert!(!obj.contains("stream"));
    }

    #[test]
    fn errors() {
        assert!(matches!(
            RawObject::parse(b"[1]"),
            Err(ParseError::NotAnObject)
        ));
        assert!(matches!(
            RawObject::parse(b"{\"a\":"),
            Err(ParseError::Syntax(_))
        ));
        assert!(matches!(
            RawObject::parse(b"{} x"),
            Err(ParseError::Syntax(_))
        ));
        assert!(matches!(RawObject::parse(b""), Err(ParseError::Syntax(_))));
        match RawObject::parse(br#"{"model":"a","stream":false,"model":"b"}"#) {
            Err(e @ ParseError::DuplicateKey(_)) => {
                assert_eq!(e.to_string(), "duplicate key \"model\"")
            }
            other => panic!("{other:?}"),
        }
    }

    fn wide(n: usize, dup: bool) -> Vec<u8> {
        let mut s = String::from("{");
        for i in 0..n {
            s.push_str(&format!("\"k{i:07}\":0,"));
        }
        s.push_str(if dup {
            "\"k0000000\":1}"
        } else {
            "\"model\":\"m\"}"
        });
        s.into_bytes()
    }

    #[test]
    fn wide_objects_are_linear_and_capped() {
        // 100k keys: the quadratic check took minutes; a hash set takes milliseconds.
        let body = wide(100_000, true);
        let t = std::time::Instant::now();
        assert!(matches!(
            RawObject::parse(&body),
            Err(ParseError::DuplicateKey(k)) if k == "k0000000"
        ));
        let body = wide(100_000, false);
        assert_eq!(RawObject::parse(&body).unwrap().keys().count(), 100_001);
        assert!(
            t.elapsed() < std::time::Duration::from_secs(5),
            "{:?}",
            t.elapsed()
        );
        // The cap stops the parse at the limit.
        assert!(matches!(
            RawObject::parse_limited(&body, 1024),
            Err(ParseError::TooManyFields(1024))
        ));
        let small = wide(1023, false);
        assert_eq!(
            RawObject::parse_limited(&small, 1024)
                .unwrap()
                .keys()
                .count(),
            1024
        );
        assert!(matches!(
            RawObject::parse_limited(b"[1]", 4),
            Err(ParseError::NotAnObject)
        ));
    }
}
