//! OIDC bearer tokens: JWTs checked against the issuer's discovery document and JWKS.
//!
//! Only asymmetric signatures are accepted (RS256 and ES256): `alg: none` and HS* are refused
//! before any key is looked at, so a public key can never be used as an HMAC secret. `iss`,
//! `aud` (the client id), `exp` and `nbf` are checked with `auth.leeway`. Keys are fetched on
//! first use and again when a token names an unknown `kid` (key rotation), at most once every
//! few seconds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::{unauthorized, Principal};
use crate::config::auth::LimitsSpec;
use crate::config::{Config, ProviderConfig};
use crate::errors::ApiError;
use crate::providers::Provider;
use crate::upstream::{UpstreamClient, UpstreamRequest};

/// Shortest time between two JWKS fetches (unknown `kid`s cannot make the gateway hammer the
/// issuer).
const REFRESH_MIN: Duration = Duration::from_secs(1);
/// Keys older than this are fetched again before use.
const MAX_KEY_AGE: Duration = Duration::from_secs(15 * 60);

pub struct Oidc {
    issuer: String,
    audience: String,
    subject_claim: String,
    tier_claim: Option<String>,
    default_tier: Option<String>,
    tiers: HashMap<String, Arc<LimitsSpec>>,
    unlimited: Arc<LimitsSpec>,
    leeway: u64,
    client: UpstreamClient,
    jwks: RwLock<Option<Arc<JwkSet>>>,
    last_fetch: Mutex<Option<Instant>>,
    fetching: tokio::sync::Mutex<()>,
}

pub fn looks_like_jwt(token: &str) -> bool {
    token.split('.').count() == 3 && token.starts_with("eyJ")
}

impl Oidc {
    pub fn from_config(cfg: &Config) -> Option<Oidc> {
        let a = &cfg.auth;
        let issuer = a.oidc_issuer.clone()?;
        Some(Oidc {
            issuer: issuer.trim_end_matches('/').to_string(),
            audience: a.oidc_client_id.clone().unwrap_or_default(),
            subject_claim: a.subject_claim.clone(),
            tier_claim: a.tier_claim.clone(),
            default_tier: a.default_tier.clone(),
            tiers: a
                .tiers
                .iter()
                .map(|(k, v)| (k.clone(), Arc::new(v.clone())))
                .collect(),
            unlimited: Arc::new(LimitsSpec::default()),
            leeway: a.leeway.get().as_secs(),
            client: UpstreamClient::new(&cfg.client),
            jwks: RwLock::new(None),
            last_fetch: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
        })
    }

    pub async fn validate(&self, token: &str) -> Result<Principal, ApiError> {
        let claims = self.verify(token).await?;
        self.principal(&claims)
    }

    /// The claims of a token this issuer signed for this audience (signature, expiry, issuer
    /// and audience checked).
    pub async fn verify(&self, token: &str) -> Result<Map<String, Value>, ApiError> {
        let invalid = |why: &str| {
            unauthorized(
                &format!("Invalid bearer token: {why}."),
                crate::errors::Code::InvalidToken,
            )
        };
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid("malformed"))?;
        if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
            return Err(invalid("only RS256 and ES256 signatures are accepted"));
        }
        let key = match self.find_key(header.kid.as_deref()) {
            Some(k) => k,
            None => {
                // Unknown key id: the issuer may have rotated its keys.
                self.refresh().await;
                self.find_key(header.kid.as_deref())
                    .ok_or_else(|| invalid("signed with an unknown key"))?
            }
        };
        if self
            .last_fetch
            .lock()
            .expect("fetch lock")
            .is_some_and(|t| t.elapsed() > MAX_KEY_AGE)
        {
            // Keys removed at the issuer (e.g. compromised) stop being trusted.
            self.refresh().await;
        }
        let mut v = Validation::new(header.alg);
        // Issuers are written with and without a trailing slash (Auth0 uses one).
        let with_slash = format!("{}/", self.issuer);
        v.set_issuer(&[self.issuer.as_str(), with_slash.as_str()]);
        v.set_audience(&[&self.audience]);
        v.leeway = self.leeway;
        v.validate_nbf = true;
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &v).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            invalid(match e.kind() {
                K::ExpiredSignature => "expired",
                K::ImmatureSignature => "not valid yet",
                K::InvalidIssuer => "wrong issuer",
                K::InvalidAudience => "wrong audience",
                K::InvalidSignature => "bad signature",
                K::InvalidAlgorithm => "algorithm does not match the key",
                K::MissingRequiredClaim(_) => "a required claim is missing",
                _ => "cannot be verified",
            })
        })?;
        Ok(data.claims)
    }

    /// The caller a token's claims name, with the limits of its tier.
    fn principal(&self, claims: &Map<String, Value>) -> Result<Principal, ApiError> {
        let subject = claims
            .get(&self.subject_claim)
            .and_then(Value::as_str)
            .ok_or_else(|| {
                unauthorized(
                    "Invalid bearer token: no subject.",
                    crate::errors::Code::InvalidToken,
                )
            })?
            .to_string();
        // A missing or unknown tier gets the default tier (required with tiers, see
        // `AuthConfig::validate`). Without any tiers every token is unlimited by configuration,
        // but never allowed raw `/proxy`.
        let may_proxy = !self.tiers.is_empty();
        let limits = self
            .tier_claim
            .as_ref()
            .and_then(|c| claims.get(c))
            .and_then(Value::as_str)
            .and_then(|t| self.tiers.get(t))
            .or_else(|| self.default_tier.as_ref().and_then(|t| self.tiers.get(t)))
            .cloned()
            .unwrap_or_else(|| self.unlimited.clone());
        Ok(Principal {
            id: format!("oidc:{subject}"),
            name: subject,
            limits,
            may_proxy,
            team: None,
            team_limits: None,
            owner: None,
            metadata: Default::default(),
        })
    }

    fn find_key(&self, kid: Option<&str>) -> Option<DecodingKey> {
        let set = self.jwks.read().expect("jwks lock").clone()?;
        let jwk = match kid {
            Some(k) => set.find(k)?,
            // No kid: only unambiguous with a single key.
            None if set.keys.len() == 1 => &set.keys[0],
            None => return None,
        };
        DecodingKey::from_jwk(jwk).ok()
    }

    /// Fetches discovery and JWKS again (one fetch at a time, at most every few seconds).
    async fn refresh(&self) {
        // Requests do not queue behind a slow issuer: one fetches, the others go on with the
        // keys they have.
        let Ok(_one) = self.fetching.try_lock() else {
            return;
        };
        {
            let mut last = self.last_fetch.lock().expect("fetch lock");
            if last.is_some_and(|t| t.elapsed() < REFRESH_MIN) {
                return;
            }
            *last = Some(Instant::now());
        }
        match self.fetch().await {
            Ok(set) => *self.jwks.write().expect("jwks lock") = Some(Arc::new(set)),
            Err(e) => log::warn!("OIDC: cannot load the issuer's keys: {e}"),
        }
    }

    async fn fetch(&self) -> Result<JwkSet, String> {
        let discovery = format!("{}/.well-known/openid-configuration", self.issuer);
        let doc = get_json(&self.client, &discovery).await?;
        let named = doc.get("issuer").and_then(Value::as_str).unwrap_or("");
        if named.trim_end_matches('/') != self.issuer {
            return Err("the discovery document names another issuer".into());
        }
        let jwks_uri = doc
            .get("jwks_uri")
            .and_then(Value::as_str)
            .ok_or("the discovery document has no jwks_uri")?;
        let jwks = get_json(&self.client, jwks_uri).await?;
        serde_json::from_value(jwks).map_err(|e| format!("invalid JWKS: {e}"))
    }
}

/// GET a JSON document with the gateway's own client (TLS verified, 5 s).
async fn get_json(client: &UpstreamClient, url: &str) -> Result<Value, String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| format!("{url:?} is not an http(s) URL"))?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let base = &url[..url.len() - rest.len() + authority.len()];
    let provider = Provider::from_config(
        "oidc",
        &ProviderConfig {
            url: Some(base.to_string()),
            auth: Some("none".into()),
            ..Default::default()
        },
    )
    .map_err(|e| e.to_string())?;
    let path = if path.is_empty() { "/" } else { path };
    let headers = [(
        http::header::ACCEPT,
        http::HeaderValue::from_static("application/json"),
    )];
    let req = UpstreamRequest {
        method: http::Method::GET,
        path,
        headers: &headers,
        body: Bytes::new(),
        request_id: "oidc",
        timeouts: None,
    };
    let work = async {
        let mut resp = client
            .send(&provider, &req)
            .await
            .map_err(|e| e.message("oidc"))?;
        let status = resp.status();
        let body = resp
            .read_all(1 << 20)
            .await
            .map_err(|e| e.message("oidc"))?;
        client.release(resp).await;
        if status != 200 {
            return Err(format!("{url} answered {status}"));
        }
        serde_json::from_slice(&body).map_err(|e| format!("{url}: {e}"))
    };
    tokio::time::timeout(Duration::from_secs(5), work)
        .await
        .map_err(|_| format!("{url} timed out"))?
}
