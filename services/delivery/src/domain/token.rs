//! Signed tracking tokens: what a link in a message stands for (open, click to a URL,
//! unsubscribe), with an HMAC-SHA256 so nobody can make one up — a click link can only
//! redirect where the message said, never anywhere a forger likes.

use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// What a token stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Tracked {
    /// "o" open, "c" click, "u" unsubscribe.
    pub(crate) kind: String,
    pub(crate) tenant_id: String,
    pub(crate) message_id: String,
    /// The click's destination; empty for the others.
    pub(crate) url: String,
}

/// Signs and reads tokens with one secret.
#[derive(Debug, Clone)]
pub(crate) struct Signer {
    key: hmac::Key,
}

impl Signer {
    pub(crate) fn new(secret: &[u8]) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    /// `payload.signature`, both base64url.
    pub(crate) fn sign(&self, t: &Tracked) -> String {
        let payload = serde_json::json!([t.kind, t.tenant_id, t.message_id, t.url]).to_string();
        let tag = hmac::sign(&self.key, payload.as_bytes());
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(payload),
            URL_SAFE_NO_PAD.encode(tag.as_ref())
        )
    }

    /// The token's meaning, or None when it is malformed or the signature does not match.
    pub(crate) fn verify(&self, token: &str) -> Option<Tracked> {
        let (payload, tag) = token.split_once('.')?;
        let payload = URL_SAFE_NO_PAD.decode(payload).ok()?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        hmac::verify(&self.key, &payload, &tag).ok()?;
        let parts: [String; 4] = serde_json::from_slice(&payload).ok()?;
        let [kind, tenant_id, message_id, url] = parts;
        Some(Tracked {
            kind,
            tenant_id,
            message_id,
            url,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_reads_back_and_a_forged_one_does_not() {
        let signer = Signer::new(b"secret");
        let t = Tracked {
            kind: "c".into(),
            tenant_id: "t-a".into(),
            message_id: "m1".into(),
            url: "https://shop.example/sale".into(),
        };
        let token = signer.sign(&t);
        assert_eq!(signer.verify(&token), Some(t.clone()));
        // Another destination with the old signature.
        let (_, tag) = token.split_once('.').unwrap();
        let forged = Tracked {
            url: "https://evil.example".into(),
            ..t
        };
        let forged_payload = signer.sign(&forged);
        let (payload, _) = forged_payload.split_once('.').unwrap();
        assert_eq!(signer.verify(&format!("{payload}.{tag}")), None);
        assert_eq!(Signer::new(b"other").verify(&token), None);
        assert_eq!(signer.verify("garbage"), None);
    }
}
