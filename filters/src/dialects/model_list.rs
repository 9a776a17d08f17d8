//! Model lists: OpenAI's `{"data":[{"id"}]}` and the native shapes of the providers that list
//! models their own way, as OpenAI `Model`s named `provider/model`.

use serde::Deserialize;

use crate::openai::Model;

#[derive(Deserialize)]
struct AnyList {
    #[serde(default)]
    data: Option<Vec<Entry>>,
    #[serde(default)]
    models: Option<Vec<Entry>>,
    #[serde(default)]
    result: Option<Vec<Entry>>,
}

#[derive(Deserialize)]
struct Entry {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    created: Option<u64>,
    /// Anthropic: RFC 3339 creation time.
    #[serde(default)]
    created_at: Option<String>,
    #[serde(default)]
    owned_by: Option<String>,
}

/// `2025-02-19T00:00:00Z` -> Unix seconds (UTC; offsets and fractions are ignored: a model
/// list only needs the day right).
fn rfc3339_seconds(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + hh * 3600 + mm * 60 + ss).ok()
}

/// Reads OpenAI's `{"data":[{"id"}]}` and the native shapes some providers use for their list
/// (`{"models":[{"name"}]}` for Cohere and Gemini, `{"result":[{"name"}]}` for Cloudflare).
/// `now` dates entries that carry no creation time.
pub fn parse_models(provider: &str, body: &[u8], now: u64) -> Result<Vec<Model>, String> {
    let list: AnyList =
        serde_json::from_slice(body).map_err(|e| format!("invalid model list: {e}"))?;
    let entries = list
        .data
        .or(list.models)
        .or(list.result)
        .unwrap_or_default();
    Ok(entries
        .into_iter()
        .filter_map(|e| {
            let id = e.id.or(e.name)?;
            let id = id.strip_prefix("models/").unwrap_or(&id).to_string();
            Some(Model {
                id: format!("{provider}/{id}"),
                object: "model".into(),
                created: e
                    .created
                    .or_else(|| e.created_at.as_deref().and_then(rfc3339_seconds))
                    .unwrap_or(now),
                owned_by: e.owned_by.unwrap_or_else(|| provider.to_string()),
                served_by: provider.to_string(),
                ..Default::default()
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_provider_shapes() {
        let m = parse_models(
            "openai",
            br#"{"object":"list","data":[{"id":"gpt-4o","created":1,"owned_by":"system"}]}"#,
            0,
        )
        .unwrap();
        assert_eq!(
            (
                m[0].id.as_str(),
                m[0].created,
                m[0].owned_by.as_str(),
                m[0].served_by.as_str()
            ),
            ("openai/gpt-4o", 1, "system", "openai")
        );
        let m = parse_models(
            "google",
            br#"{"models":[{"name":"models/gemini-2.0-flash"}]}"#,
            0,
        )
        .unwrap();
        assert_eq!(m[0].id, "google/gemini-2.0-flash");
        let m = parse_models(
            "cloudflare",
            br#"{"result":[{"name":"@cf/meta/llama"}]}"#,
            0,
        )
        .unwrap();
        assert_eq!(m[0].id, "cloudflare/@cf/meta/llama");
        let m = parse_models("anthropic", br#"{"data":[{"type":"model","id":"claude-sonnet-4-20250514","display_name":"Claude Sonnet 4","created_at":"2025-05-22T00:00:00Z"}],"has_more":false}"#, 0).unwrap();
        assert_eq!(
            (m[0].id.as_str(), m[0].created),
            ("anthropic/claude-sonnet-4-20250514", 1_747_872_000)
        );
        let m = parse_models(
            "cohere",
            br#"{"models":[{"name":"command-a-03-2025","endpoints":["chat"]}]}"#,
            0,
        )
        .unwrap();
        assert_eq!(m[0].id, "cohere/command-a-03-2025");
        assert_eq!(rfc3339_seconds("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            rfc3339_seconds("2000-03-01T12:30:15.5+00:00"),
            Some(951_913_815)
        );
        assert_eq!(rfc3339_seconds("yesterday"), None);
        assert!(parse_models("x", b"<html>", 0).is_err());
        assert!(parse_models("x", b"{}", 0).unwrap().is_empty());
    }
}
