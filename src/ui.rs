//! The web UI (`/ui/`): plain HTML, CSS and JavaScript modules embedded in the binary (no
//! build step, no CDN), served only when the admin API exists (an admin credential is
//! configured). The pages call `/admin/v1` with the admin key the person signs in with (kept in
//! the tab's session storage) and the playground calls the API with a short-lived key it mints.
//!
//! Every answer under `/ui` carries a strict Content-Security-Policy (nothing inline, nothing
//! from elsewhere) and `nosniff`, errors included. Assets are revalidated on every load
//! (`no-cache` with an ETag of their content), so an upgraded binary is seen at once.

use bytes::Bytes;
use http::Method;
use once_cell::sync::Lazy;
use pingora::proxy::Session;

use crate::errors::{ApiError, Code};
use crate::proxy::{respond, Gateway, RequestCtx};

pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'";

struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $type:expr) => {
        Asset {
            name: $name,
            content_type: $type,
            body: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/ui/", $name)),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

static ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("favicon.svg", "image/svg+xml"),
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("dom.js", JS),
    asset!("chart.js", JS),
    asset!("pages/overview.js", JS),
    asset!("pages/providers.js", JS),
    asset!("pages/models.js", JS),
    asset!("pages/keys.js", JS),
    asset!("pages/usage.js", JS),
    asset!("pages/requests.js", JS),
    asset!("pages/mcp.js", JS),
    asset!("pages/playground.js", JS),
];

/// Each asset's ETag: FNV-1a of its bytes (computed once).
static ETAGS: Lazy<Vec<String>> = Lazy::new(|| {
    ASSETS
        .iter()
        .map(|a| {
            let h = a.body.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
            });
            format!("\"{h:016x}\"")
        })
        .collect()
});

/// The headers every answer under `/ui` carries (added by `respond::header`).
pub(crate) fn guard(h: &mut pingora::http::ResponseHeader) {
    let _ = h.insert_header("content-security-policy", CSP);
    let _ = h.insert_header("x-content-type-options", "nosniff");
    let _ = h.insert_header("referrer-policy", "no-referrer");
    let _ = h.insert_header("x-frame-options", "DENY");
}

/// Serves a request for `/ui` or `/ui/...`; every answer is written here.
pub async fn serve(gw: &Gateway, session: &mut Session, ctx: &mut RequestCtx) {
    let path = session.req_header().uri.path().to_string();
    let method = session.req_header().method.clone();
    let err = if !gw.cfg.admin_api() {
        // Without an admin credential there is nothing the UI could show.
        Some(ApiError::of(
            Code::NotFound,
            format!("Invalid URL ({method} {path}): the web UI needs ADMIN_API_KEY"),
        ))
    } else if method != Method::GET && method != Method::HEAD {
        Some(ApiError::of(
            Code::MethodNotAllowed,
            format!("Method {method} is not allowed on {path}"),
        ))
    } else {
        None
    };
    if let Some(err) = err {
        ctx.answer.error = err.code;
        let h = respond::header(err.status, "application/json", ctx);
        let _ = respond::full(session, ctx, h, err.body()).await;
        return;
    }
    if path == "/ui" {
        let mut h = respond::header(308, "text/plain; charset=utf-8", ctx);
        let _ = h.insert_header(http::header::LOCATION, "/ui/");
        let _ = respond::full(session, ctx, h, Bytes::from_static(b"/ui/\n")).await;
        return;
    }
    let name = match path.strip_prefix("/ui/").unwrap_or("") {
        "" => "index.html",
        n => n,
    };
    let Some(i) = ASSETS.iter().position(|a| a.name == name) else {
        let h = respond::header(404, "text/plain; charset=utf-8", ctx);
        ctx.answer.error = Some("not_found");
        let _ = respond::full(session, ctx, h, Bytes::from_static(b"Not found\n")).await;
        return;
    };
    let asset = &ASSETS[i];
    let etag = ETAGS[i].as_str();
    let fresh = session
        .req_header()
        .headers
        .get(http::header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let mut h = respond::header(if fresh { 304 } else { 200 }, asset.content_type, ctx);
    let _ = h.insert_header(http::header::ETAG, etag);
    let _ = h.insert_header(http::header::CACHE_CONTROL, "no-cache");
    let body = if fresh || method == Method::HEAD {
        Bytes::new()
    } else {
        Bytes::from_static(asset.body)
    };
    if fresh {
        ctx.answer.status = 304;
        let _ = session.write_response_header(Box::new(h), false).await;
        let _ = session.write_response_body(None, true).await;
        return;
    }
    let _ = respond::full(session, ctx, h, body).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assets_are_present_and_reference_only_themselves() {
        for a in ASSETS {
            assert!(!a.body.is_empty(), "{} is empty", a.name);
            let text = std::str::from_utf8(a.body).expect("text");
            // Nothing from elsewhere (the CSP would refuse it anyway) and nothing inline.
            let text = text.replace("http://www.w3.org/2000/svg", "");
            assert!(
                !text.contains("http://") && !text.contains("https://"),
                "{} loads from elsewhere",
                a.name
            );
            if a.name.ends_with(".html") {
                assert!(
                    !text.contains("<script>") && !text.contains(" style="),
                    "{} has inline script or style",
                    a.name
                );
                let handler = text.match_indices(" on").any(|(i, _)| {
                    let rest = &text[i + 3..];
                    let word = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
                    word > 0 && rest.as_bytes().get(word) == Some(&b'=')
                });
                assert!(!handler, "{}: an inline event handler", a.name);
            }
        }
        // Every module an asset imports is served.
        for a in ASSETS.iter().filter(|a| a.name.ends_with(".js")) {
            let text = std::str::from_utf8(a.body).unwrap();
            for line in text.lines().filter(|l| l.starts_with("import ")) {
                let spec = line.split(['"', '\'']).nth(1).expect("a module specifier");
                let dir = a.name.rsplit_once('/').map_or("", |(d, _)| d);
                let mut parts: Vec<&str> = dir.split('/').filter(|p| !p.is_empty()).collect();
                for seg in spec.split('/') {
                    match seg {
                        "." => {}
                        ".." => {
                            parts.pop();
                        }
                        s => parts.push(s),
                    }
                }
                let target = parts.join("/");
                assert!(
                    ASSETS.iter().any(|x| x.name == target),
                    "{} imports {spec}, which is not served",
                    a.name
                );
            }
        }
        assert_eq!(ETAGS.len(), ASSETS.len());
    }
}
