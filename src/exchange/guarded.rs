//! Guardrails in the exchange: input checks after permissions and before the cache (deny
//! patterns, PII redaction, the webhook's input phase), and the output check of whole answers
//! (patterns and the webhook's output phase) before anything is kept or sent. Streams are
//! checked by `filters::guard::StreamGuard` in `relay`. A request whose text was changed, or
//! whose answer is checked, is never relayed in the door's own API (the checks work on the
//! canonical exchange).

use bytes::Bytes;
use filters::json_object::RawObject;
use serde_json::{Map, Value};

use super::Exchange;
use crate::errors::{ApiError, Code};
use crate::guardrails::{Guardrails, Profile, Verdict};
use crate::proxy::{Gateway, RequestCtx};

fn count(gw: &Gateway, guardrail: &str, action: &str) {
    if let Some(m) = &gw.metrics {
        m.guardrail_actions
            .with_label_values(&[guardrail, action])
            .inc();
    }
}

fn blocked(reason: &str) -> ApiError {
    ApiError::of(
        Code::ContentBlocked,
        format!("The request was blocked by a guardrail: {reason}"),
    )
}

/// The webhook failed: refused (503) or let through, as its failure mode says.
fn webhook_failed(
    gw: &Gateway,
    hook: &crate::guardrails::Webhook,
    why: &str,
) -> Result<(), ApiError> {
    log::warn!("guardrail webhook: {why}");
    count(gw, "webhook", "error");
    if hook.fail_open {
        Ok(())
    } else {
        Err(ApiError::of(
            Code::GuardrailUnavailable,
            format!("The guardrail webhook could not check the request ({why})"),
        ))
    }
}

impl<'g> Exchange<'g, '_> {
    /// Runs the caller's input guardrails on the canonical request; remembers its profile for
    /// the answer's check.
    pub(super) async fn input_guardrails(
        &mut self,
        obj: &mut RawObject<'_>,
        model: &str,
    ) -> Result<(), ApiError> {
        let Some(g) = self.gw.guardrails.clone() else {
            return Ok(());
        };
        let Some(profile) = g.profile_for(self.ctx.caller.principal.as_ref()) else {
            return Ok(());
        };
        if profile.checks_output() {
            self.ctx.output_guard = Some(profile.clone());
            self.canonical_only();
        }
        if !profile.checks_input() {
            return Ok(());
        }
        // The texts a model reads: messages, prompt, input.
        let mut body = Map::new();
        for k in ["messages", "prompt", "input"] {
            if let Some(raw) = obj.get(k) {
                if let Ok(v) = serde_json::from_str::<Value>(raw.get()) {
                    body.insert(k.to_string(), v);
                }
            }
        }
        if let Some(deny) = &profile.deny {
            let mut hit = false;
            filters::guard::for_each_text(&mut body, |t| hit |= deny.is_match(t));
            if hit {
                count(self.gw, "deny_patterns", "block");
                return Err(blocked("it matches a denied pattern"));
            }
        }
        let mut changed = false;
        if profile.redact_pii {
            let r = &g.redactor;
            filters::guard::for_each_text(&mut body, |t| {
                if let Some(new) = r.redact(t) {
                    *t = new;
                    changed = true;
                }
            });
            if changed {
                count(self.gw, "pii", "redact");
            }
        }
        if let Some(hook) = &profile.webhook {
            let principal = self.ctx.caller.principal.as_ref().map(|p| p.name.as_str());
            let (field, what) = match body.get("messages") {
                Some(m) => ("messages", m.clone()),
                None => (
                    "messages",
                    body.get("input")
                        .or(body.get("prompt"))
                        .cloned()
                        .unwrap_or(Value::Null),
                ),
            };
            let payload = Guardrails::payload("input", model, principal, (field, what));
            match g.ask(hook, payload).await {
                Ok(Verdict::Allow) => count(self.gw, "webhook", "allow"),
                Ok(Verdict::Deny(reason)) => {
                    count(self.gw, "webhook", "block");
                    return Err(blocked(&reason));
                }
                Ok(Verdict::Rewrite(Value::Array(messages))) if body.contains_key("messages") => {
                    count(self.gw, "webhook", "rewrite");
                    body.insert("messages".into(), Value::Array(messages));
                    changed = true;
                }
                Ok(Verdict::Rewrite(_)) => {
                    webhook_failed(self.gw, hook, "a rewrite without a messages array")?
                }
                Err(why) => webhook_failed(self.gw, hook, &why)?,
            }
        }
        if changed {
            for (k, v) in &body {
                obj.set(k, v);
            }
            self.canonical_only();
        }
        Ok(())
    }

    /// The request goes out (and its answer comes back) in canonical form: no relay in the
    /// door's own API.
    fn canonical_only(&mut self) {
        if let Some(o) = &mut self.ctx.original {
            o.relay = false;
        }
    }
}

/// Checks a whole canonical answer (a `chat.completion`) against the profile: a match (or the
/// webhook's deny) removes the content and sets `finish_reason: "content_filter"`; the
/// webhook may rewrite the text. Answers the body to send; `true` when it was blocked.
pub(super) async fn check_whole(
    gw: &Gateway,
    ctx: &mut RequestCtx,
    profile: &Profile,
    body: Bytes,
) -> (Bytes, bool) {
    let Ok(mut v) = serde_json::from_slice::<Map<String, Value>>(&body) else {
        return (body, false);
    };
    let Some(Value::Array(choices)) = v.get_mut("choices") else {
        return (body, false);
    };
    let mut block = false;
    let mut rewrites: Vec<(usize, String)> = Vec::new();
    for (i, c) in choices.iter().enumerate() {
        let text = c
            .pointer("/message/content")
            .and_then(Value::as_str)
            .unwrap_or("");
        if text.is_empty() {
            continue;
        }
        if profile.output.as_ref().is_some_and(|s| s.is_match(text)) {
            count(gw, "output_patterns", "block");
            block = true;
            continue;
        }
        if let (Some(hook), Some(g)) = (&profile.webhook, &gw.guardrails) {
            let principal = ctx.caller.principal.as_ref().map(|p| p.name.as_str());
            let model = ctx.upstream.model.clone().unwrap_or_default();
            let payload = Guardrails::payload(
                "output",
                &model,
                principal,
                ("output", Value::String(text.to_string())),
            );
            match g.ask(hook, payload).await {
                Ok(Verdict::Allow) => count(gw, "webhook", "allow"),
                Ok(Verdict::Deny(_)) => {
                    count(gw, "webhook", "block");
                    block = true;
                }
                Ok(Verdict::Rewrite(Value::String(s))) => {
                    count(gw, "webhook", "rewrite");
                    rewrites.push((i, s));
                }
                Ok(Verdict::Rewrite(_)) | Err(_) => {
                    count(gw, "webhook", "error");
                    if !hook.fail_open {
                        block = true;
                    }
                }
            }
        }
    }
    if !block && rewrites.is_empty() {
        return (body, false);
    }
    for (i, c) in choices.iter_mut().enumerate() {
        if let Some((_, s)) = rewrites.iter().find(|(j, _)| *j == i) {
            c["message"]["content"] = Value::String(s.clone());
        } else if block {
            c["message"]["content"] = Value::String(String::new());
            c["finish_reason"] = Value::String("content_filter".into());
        }
    }
    if block {
        ctx.cache_key = None;
    }
    let out = serde_json::to_vec(&v).map(Bytes::from).unwrap_or(body);
    (out, block)
}
