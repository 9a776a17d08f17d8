//! Sealing reasoning state for the Responses door: `encrypted_content` of a reasoning item is
//! the provider's state (Anthropic thinking blocks, Gemini signatures) under ChaCha20-Poly1305
//! with the gateway's key, bound to the caller (the principal id is the associated data), so a
//! client can carry it between turns without state on the server (Codex's `store: false`) but
//! can neither forge it nor replay another caller's.
//!
//! Wire form: `igw1:` + base64url(nonce || ciphertext || tag).

use std::sync::Arc;

use base64::Engine;
use filters::doors::responses::{Sealer, SEAL_PREFIX};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

use crate::config::ConfigError;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The gateway's sealing key.
pub struct SealKey {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl SealKey {
    /// From `responses.encryption_key` (64 hex digits or base64 of 32 bytes), else random.
    pub fn from_config(key: Option<&str>) -> Result<SealKey, ConfigError> {
        let rng = SystemRandom::new();
        let bytes = match key.map(str::trim).filter(|k| !k.is_empty()) {
            Some(k) => parse_key(k).ok_or_else(|| {
                ConfigError(
                    "responses.encryption_key (RESPONSES_ENCRYPTION_KEY): expected 32 bytes as 64 hex digits or base64".into(),
                )
            })?,
            None => {
                let mut b = [0u8; 32];
                rng.fill(&mut b)
                    .map_err(|_| ConfigError("no system randomness for the sealing key".into()))?;
                b
            }
        };
        let key =
            LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &bytes).expect("32-byte key"));
        Ok(SealKey { key, rng })
    }

    /// A sealer for one caller (`scope`: the principal id, empty on an open gateway).
    pub fn for_scope(self: &Arc<Self>, scope: &str) -> ScopedSealer {
        ScopedSealer {
            key: self.clone(),
            scope: scope.to_string(),
        }
    }
}

fn parse_key(k: &str) -> Option<[u8; 32]> {
    let v = if k.len() == 64 && k.bytes().all(|b| b.is_ascii_hexdigit()) {
        (0..32)
            .map(|i| u8::from_str_radix(&k[2 * i..2 * i + 2], 16).ok())
            .collect::<Option<Vec<u8>>>()?
    } else {
        base64::engine::general_purpose::STANDARD
            .decode(k)
            .or_else(|_| B64.decode(k.trim_end_matches('=')))
            .ok()?
    };
    v.try_into().ok()
}

pub struct ScopedSealer {
    key: Arc<SealKey>,
    scope: String,
}

impl Sealer for ScopedSealer {
    fn seal(&self, plaintext: &[u8]) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        // The system RNG does not fail once it has worked (the key was made or checked at start).
        let _ = self.key.rng.fill(&mut nonce);
        let mut buf = plaintext.to_vec();
        self.key
            .key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(self.scope.as_bytes()),
                &mut buf,
            )
            .expect("sealing cannot fail for in-range lengths");
        let mut wire = Vec::with_capacity(NONCE_LEN + buf.len());
        wire.extend_from_slice(&nonce);
        wire.extend_from_slice(&buf);
        format!("{SEAL_PREFIX}{}", B64.encode(wire))
    }

    fn open(&self, sealed: &str) -> Option<Vec<u8>> {
        let raw = B64.decode(sealed.strip_prefix(SEAL_PREFIX)?).ok()?;
        if raw.len() < NONCE_LEN {
            return None;
        }
        let (nonce, rest) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buf = rest.to_vec();
        let plain = self
            .key
            .key
            .open_in_place(nonce, Aad::from(self.scope.as_bytes()), &mut buf)
            .ok()?;
        Some(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_tamper_and_scope() {
        let key = Arc::new(SealKey::from_config(None).unwrap());
        let a = key.for_scope("key:a");
        let sealed = a.seal(br#"{"thinking_blocks":[]}"#);
        assert!(sealed.starts_with(SEAL_PREFIX));
        assert_eq!(a.open(&sealed).unwrap(), br#"{"thinking_blocks":[]}"#);
        // Another caller cannot open it.
        assert!(key.for_scope("key:b").open(&sealed).is_none());
        // One flipped character anywhere in the body is refused.
        let body = &sealed[SEAL_PREFIX.len()..];
        for i in [0, body.len() / 2, body.len() - 1] {
            let mut t: Vec<u8> = body.bytes().collect();
            t[i] = if t[i] == b'A' { b'B' } else { b'A' };
            let tampered = format!("{SEAL_PREFIX}{}", String::from_utf8(t).unwrap());
            assert!(a.open(&tampered).is_none(), "tampered at {i}");
        }
        // Another key cannot open it.
        let other = Arc::new(SealKey::from_config(None).unwrap()).for_scope("key:a");
        assert!(other.open(&sealed).is_none());
    }

    #[test]
    fn configured_keys() {
        let hex = "00".repeat(32);
        let k1 = Arc::new(SealKey::from_config(Some(&hex)).unwrap()).for_scope("");
        let b64 = base64::engine::general_purpose::STANDARD.encode([0u8; 32]);
        let k2 = Arc::new(SealKey::from_config(Some(&b64)).unwrap()).for_scope("");
        assert_eq!(k2.open(&k1.seal(b"x")).unwrap(), b"x");
        assert!(SealKey::from_config(Some("short")).is_err());
    }
}
