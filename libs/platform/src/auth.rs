//! Auth and tenancy. A request carries `authorization: Bearer <token>`, an EdDSA (Ed25519)
//! JWT naming the tenant, the scopes and the expiry, verified with a configured public key.
//! A service token (scope `service`) acts for the tenant named in `x-winback-tenant`.
//!
//! Tokens use the wall clock, never the service [`Clock`](crate::clock::Clock): a manual
//! clock in a demo must not make real credentials expire or revive.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use tonic::Request;

use crate::api_keys::Revocations;
use crate::error::ServiceError;

/// Metadata key a service token uses to say which tenant it acts for.
pub const TENANT_HEADER: &str = "x-winback-tenant";

/// Scope that grants every other scope.
pub const SCOPE_ALL: &str = "*";
/// Scope of service-to-service credentials: may act for any tenant.
pub const SCOPE_SERVICE: &str = "service";

/// The claims of a Winback token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// Issuer.
    pub iss: String,
    /// Subject: the tenant id for tenant tokens, the service name for service tokens.
    pub sub: String,
    /// Tenant the token is for; absent on service tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Granted scopes, e.g. `profiles:read`, `offers:write`, `events:read`, `*`.
    pub scopes: Vec<String>,
    /// Issued at, seconds since the epoch.
    pub iat: i64,
    /// Expiry, seconds since the epoch.
    pub exp: i64,
    /// Id of the API key this token is (`k_…`), which can be revoked; absent on service
    /// credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No `authorization` metadata.
    #[error("missing bearer token")]
    Missing,
    /// Not a `Bearer` value.
    #[error("authorization must be `Bearer <token>`")]
    Malformed,
    /// The token does not verify (signature, expiry, issuer, shape).
    #[error("invalid token: {0}")]
    Invalid(String),
    /// A key could not be read or made.
    #[error("token key: {0}")]
    Key(String),
    /// The token's API key was revoked.
    #[error("this API key was revoked")]
    Revoked,
}

impl From<AuthError> for ServiceError {
    fn from(err: AuthError) -> Self {
        ServiceError::Unauthenticated(err.to_string())
    }
}

/// Who is calling, as established by a verified token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthContext {
    /// The verified claims.
    pub claims: Claims,
    /// Tenant the call acts for: the token's tenant, or for a service token the
    /// `x-winback-tenant` metadata (absent for cross-tenant calls such as the event feed).
    pub tenant: Option<String>,
}

impl AuthContext {
    /// True when the token carries `scope` (or `*`).
    pub fn has_scope(&self, scope: &str) -> bool {
        self.claims
            .scopes
            .iter()
            .any(|s| s == scope || s == SCOPE_ALL)
    }

    /// True for a service credential.
    pub fn is_service(&self) -> bool {
        self.claims.tenant.is_none() && self.has_scope(SCOPE_SERVICE)
    }

    /// `PERMISSION_DENIED` unless the token carries `scope`.
    pub fn require(&self, scope: &str) -> Result<(), ServiceError> {
        if self.has_scope(scope) || self.is_service() {
            Ok(())
        } else {
            Err(ServiceError::PermissionDenied(format!(
                "token lacks scope {scope}"
            )))
        }
    }

    /// The tenant of the call; `UNAUTHENTICATED` for a service token that names none.
    pub fn tenant(&self) -> Result<&str, ServiceError> {
        self.tenant.as_deref().ok_or_else(|| {
            ServiceError::Unauthenticated(format!(
                "service token must name the tenant in {TENANT_HEADER}"
            ))
        })
    }
}

/// The auth context of a request, put there by the auth layer.
pub fn auth_context<T>(request: &Request<T>) -> Result<&AuthContext, ServiceError> {
    request
        .extensions()
        .get::<AuthContext>()
        .ok_or_else(|| ServiceError::Unauthenticated("no verified token".into()))
}

/// The tenant a request acts for, after checking the caller holds `scope`. The one call
/// every tenant-scoped handler starts with.
pub fn tenant_for<T>(request: &Request<T>, scope: &str) -> Result<String, ServiceError> {
    let ctx = auth_context(request)?;
    ctx.require(scope)?;
    ctx.tenant().map(str::to_owned)
}

/// Signs tokens with the private key.
#[derive(Clone)]
pub struct TokenSigner {
    key: EncodingKey,
    issuer: String,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSigner")
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

impl TokenSigner {
    /// A signer from a PKCS#8 PEM private key.
    pub fn from_pem(pem: &[u8], issuer: impl Into<String>) -> Result<Self, AuthError> {
        let key = EncodingKey::from_ed_pem(pem).map_err(|e| AuthError::Key(e.to_string()))?;
        Ok(Self {
            key,
            issuer: issuer.into(),
        })
    }

    /// A token for `tenant` with `scopes`, valid for `ttl_secs`, that no key record names
    /// (the CLI's short-lived tokens; operators hand out [API keys](crate::api_keys)).
    pub fn tenant_token(
        &self,
        tenant: &str,
        scopes: &[&str],
        ttl_secs: i64,
    ) -> Result<String, AuthError> {
        let claims = self.claims(tenant, Some(tenant), scopes, ttl_secs, None);
        self.sign_claims(&claims)
    }

    /// The token of API key `key_id` and its claims.
    pub fn tenant_key(
        &self,
        tenant: &str,
        key_id: &str,
        scopes: &[&str],
        ttl_secs: i64,
    ) -> Result<(String, Claims), AuthError> {
        let claims = self.claims(tenant, Some(tenant), scopes, ttl_secs, Some(key_id));
        Ok((self.sign_claims(&claims)?, claims))
    }

    /// A service credential (acts for any tenant) for `service`.
    pub fn service_token(&self, service: &str, ttl_secs: i64) -> Result<String, AuthError> {
        let claims = self.claims(service, None, &[SCOPE_SERVICE], ttl_secs, None);
        self.sign_claims(&claims)
    }

    fn claims(
        &self,
        sub: &str,
        tenant: Option<&str>,
        scopes: &[&str],
        ttl_secs: i64,
        key_id: Option<&str>,
    ) -> Claims {
        let now = unix_now();
        Claims {
            iss: self.issuer.clone(),
            sub: sub.to_owned(),
            tenant: tenant.map(str::to_owned),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            iat: now,
            exp: now + ttl_secs,
            jti: key_id.map(str::to_owned),
        }
    }

    /// Signs arbitrary claims (tests use it for expired or foreign tokens).
    pub fn sign_claims(&self, claims: &Claims) -> Result<String, AuthError> {
        jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), claims, &self.key)
            .map_err(|e| AuthError::Key(e.to_string()))
    }
}

/// Verifies tokens with the public key.
#[derive(Clone)]
pub struct TokenVerifier {
    key: DecodingKey,
    validation: Validation,
    revocations: Revocations,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenVerifier").finish_non_exhaustive()
    }
}

impl TokenVerifier {
    /// A verifier from an SPKI PEM public key, accepting tokens of `issuer`.
    pub fn from_pem(pem: &[u8], issuer: &str) -> Result<Self, AuthError> {
        let key = DecodingKey::from_ed_pem(pem).map_err(|e| AuthError::Key(e.to_string()))?;
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[issuer]);
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        validation.leeway = 30;
        Ok(Self {
            key,
            validation,
            revocations: Revocations::default(),
        })
    }

    /// The revoked key ids this verifier (and every clone of it) refuses.
    pub fn revocations(&self) -> &Revocations {
        &self.revocations
    }

    /// The claims of a valid token whose key is not revoked.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let claims = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        if let Some(key_id) = &claims.jti
            && self.revocations.is_revoked(key_id)
        {
            return Err(AuthError::Revoked);
        }
        Ok(claims)
    }

    /// Verifies the `authorization` value of a request and works out the tenant.
    pub fn authenticate(
        &self,
        authorization: Option<&str>,
        tenant_header: Option<&str>,
    ) -> Result<AuthContext, AuthError> {
        let value = authorization.ok_or(AuthError::Missing)?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or(AuthError::Malformed)?
            .trim();
        let claims = self.verify(token)?;
        let tenant = match &claims.tenant {
            Some(tenant) => Some(tenant.clone()),
            None if claims.scopes.iter().any(|s| s == SCOPE_SERVICE) => {
                tenant_header.filter(|t| !t.is_empty()).map(str::to_owned)
            }
            None => return Err(AuthError::Invalid("token names no tenant".into())),
        };
        Ok(AuthContext { claims, tenant })
    }
}

/// A freshly generated Ed25519 key pair, PEM encoded.
#[derive(Debug, Clone)]
pub struct KeyPairPem {
    /// PKCS#8 private key (`-----BEGIN PRIVATE KEY-----`).
    pub private_pem: String,
    /// SPKI public key (`-----BEGIN PUBLIC KEY-----`).
    pub public_pem: String,
}

/// DER prefix of an Ed25519 SubjectPublicKeyInfo; the 32 key bytes follow.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// DER prefix of an Ed25519 PKCS#8 v1 (RFC 8410) private key; the 32-byte seed follows.
const ED25519_PKCS8_V1_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// DER prefix of the PKCS#8 v2 (RFC 5958, with the public key) document aws-lc-rs
/// generates; the 32-byte seed follows, then the public key.
const ED25519_PKCS8_V2_PREFIX: [u8; 16] = [
    0x30, 0x51, 0x02, 0x01, 0x01, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// The same key as PKCS#8 v1 when `der` is aws-lc-rs's v2 document. OpenSSL 3 and
/// Python's `cryptography` refuse the v2 form aws-lc-rs writes; every reader takes v1.
fn pkcs8_v1(der: &[u8]) -> Option<Vec<u8>> {
    let seed = der.strip_prefix(&ED25519_PKCS8_V2_PREFIX)?.get(..32)?;
    let mut v1 = ED25519_PKCS8_V1_PREFIX.to_vec();
    v1.extend_from_slice(seed);
    Some(v1)
}

/// Generates an Ed25519 key pair from the operating system's RNG; the private key is
/// written as PKCS#8 v1, which OpenSSL 3 and Python's `cryptography` read.
pub fn generate_key_pair() -> Result<KeyPairPem, AuthError> {
    use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|e| AuthError::Key(e.to_string()))?;
    let pair =
        Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|e| AuthError::Key(e.to_string()))?;
    let mut spki = ED25519_SPKI_PREFIX.to_vec();
    spki.extend_from_slice(pair.public_key().as_ref());
    let private = pkcs8_v1(pkcs8.as_ref())
        .ok_or_else(|| AuthError::Key("unexpected PKCS#8 layout from aws-lc-rs".into()))?;
    Ok(KeyPairPem {
        private_pem: pem("PRIVATE KEY", &private),
        public_pem: pem("PUBLIC KEY", &spki),
    })
}

/// Rewrites a private key file written in the v2 form as v1 (the same key: tokens it
/// signed stay valid). Returns true when rewritten.
fn upgrade_private_key(path: &Path) -> Result<bool, AuthError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| AuthError::Key(format!("{}: {e}", path.display())))?;
    let body: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
    let Ok(der) = base64::engine::general_purpose::STANDARD.decode(body.trim()) else {
        return Ok(false);
    };
    match pkcs8_v1(&der) {
        Some(v1) => {
            write_private(path, pem("PRIVATE KEY", &v1).as_bytes())?;
            Ok(true)
        }
        None => Ok(false),
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Makes sure a key pair exists at the given paths, generating one on first start.
/// Returns true when it was generated now.
pub fn ensure_key_pair(private_path: &Path, public_path: &Path) -> Result<bool, AuthError> {
    if private_path.exists() && public_path.exists() {
        if upgrade_private_key(private_path)? {
            tracing::info!(path = %private_path.display(), "token key rewritten as PKCS#8 v1");
        }
        return Ok(false);
    }
    let pair = generate_key_pair()?;
    for path in [private_path, public_path] {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| AuthError::Key(format!("{}: {e}", dir.display())))?;
        }
    }
    write_private(private_path, pair.private_pem.as_bytes())?;
    std::fs::write(public_path, pair.public_pem.as_bytes())
        .map_err(|e| AuthError::Key(format!("{}: {e}", public_path.display())))?;
    Ok(true)
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), AuthError> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .map_err(|e| AuthError::Key(format!("{}: {e}", path.display())))?;
    file.write_all(bytes)
        .map_err(|e| AuthError::Key(format!("{}: {e}", path.display())))
}

/// Lifetime of the service credential written by [`ensure_service_token`]: it is replaced
/// when it no longer verifies (expired, or signed by a rotated key).
pub const SERVICE_TOKEN_TTL_SECS: i64 = 365 * 86_400;

/// Makes sure a valid service credential exists at `path`, signing a new one with `signer`
/// when it is missing or no longer verifies. Returns true when written now.
pub fn ensure_service_token(
    path: &Path,
    signer: &TokenSigner,
    verifier: &TokenVerifier,
) -> Result<bool, AuthError> {
    if let Ok(existing) = std::fs::read_to_string(path)
        && verifier.verify(existing.trim()).is_ok()
    {
        return Ok(false);
    }
    let token = signer.service_token("winback", SERVICE_TOKEN_TTL_SECS)?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| AuthError::Key(format!("{}: {e}", dir.display())))?;
    }
    write_private(path, token.as_bytes())?;
    Ok(true)
}

/// Reads a key file.
pub fn read_key(path: &Path) -> Result<Vec<u8>, AuthError> {
    std::fs::read(path).map_err(|e| AuthError::Key(format!("{}: {e}", path.display())))
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// The scope an RPC needs: `<service>:read` for methods that only read (Get, List, Stream,
/// Subscribe, Validate, Render, Next), `<service>:write` for everything else. The service
/// part is the proto package's service name (`winback.offers.v1.OffersService` → `offers`).
pub fn required_scope(path: &str) -> Option<String> {
    let mut parts = path.trim_start_matches('/').split('/');
    let service = parts.next()?;
    let method = parts.next()?;
    let short = service.strip_prefix("winback.")?.split('.').next()?;
    const READ_PREFIXES: &[&str] = &[
        "Get",
        "List",
        "Stream",
        "Subscribe",
        "Validate",
        "Render",
        "Next",
    ];
    let action = if READ_PREFIXES.iter().any(|p| method.starts_with(p)) {
        "read"
    } else {
        "write"
    };
    Some(format!("{short}:{action}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (TokenSigner, TokenVerifier) {
        let keys = generate_key_pair().unwrap();
        (
            TokenSigner::from_pem(keys.private_pem.as_bytes(), "winback").unwrap(),
            TokenVerifier::from_pem(keys.public_pem.as_bytes(), "winback").unwrap(),
        )
    }

    #[test]
    fn a_tenant_token_verifies_and_names_its_tenant() {
        let (signer, verifier) = pair();
        let token = signer.tenant_token("t-1", &["*"], 60).unwrap();
        let ctx = verifier
            .authenticate(Some(&format!("Bearer {token}")), Some("t-2"))
            .unwrap();
        // A tenant token cannot be pointed at another tenant through the header.
        assert_eq!(ctx.tenant.as_deref(), Some("t-1"));
        assert!(ctx.require("profiles:write").is_ok());
    }

    #[test]
    fn missing_malformed_expired_and_foreign_tokens_are_refused() {
        let (signer, verifier) = pair();
        let (foreign, _) = pair();
        assert!(matches!(
            verifier.authenticate(None, None),
            Err(AuthError::Missing)
        ));
        assert!(matches!(
            verifier.authenticate(Some("Basic abc"), None),
            Err(AuthError::Malformed)
        ));
        let mut claims = Claims {
            iss: "winback".into(),
            sub: "t".into(),
            tenant: Some("t".into()),
            scopes: vec!["*".into()],
            iat: unix_now() - 7200,
            exp: unix_now() - 3600,
            jti: None,
        };
        let expired = signer.sign_claims(&claims).unwrap();
        assert!(matches!(
            verifier.authenticate(Some(&format!("Bearer {expired}")), None),
            Err(AuthError::Invalid(_))
        ));
        claims.exp = unix_now() + 3600;
        let other_key = foreign.sign_claims(&claims).unwrap();
        assert!(matches!(
            verifier.authenticate(Some(&format!("Bearer {other_key}")), None),
            Err(AuthError::Invalid(_))
        ));
        claims.iss = "someone-else".into();
        let other_issuer = signer.sign_claims(&claims).unwrap();
        assert!(matches!(
            verifier.authenticate(Some(&format!("Bearer {other_issuer}")), None),
            Err(AuthError::Invalid(_))
        ));
    }

    #[test]
    fn a_missing_scope_is_permission_denied() {
        let (signer, verifier) = pair();
        let token = signer.tenant_token("t-1", &["profiles:read"], 60).unwrap();
        let ctx = verifier
            .authenticate(Some(&format!("Bearer {token}")), None)
            .unwrap();
        assert!(ctx.require("profiles:read").is_ok());
        assert!(matches!(
            ctx.require("profiles:write"),
            Err(ServiceError::PermissionDenied(_))
        ));
    }

    #[test]
    fn a_service_token_acts_for_the_tenant_in_the_header() {
        let (signer, verifier) = pair();
        let token = signer.service_token("campaigns", 60).unwrap();
        let ctx = verifier
            .authenticate(Some(&format!("Bearer {token}")), Some("t-9"))
            .unwrap();
        assert!(ctx.is_service());
        assert_eq!(ctx.tenant().unwrap(), "t-9");
        let ctx = verifier
            .authenticate(Some(&format!("Bearer {token}")), None)
            .unwrap();
        assert!(matches!(
            ctx.tenant(),
            Err(ServiceError::Unauthenticated(_))
        ));
    }

    #[test]
    fn scopes_follow_the_method_name() {
        assert_eq!(
            required_scope("/winback.offers.v1.OffersService/RedeemCoupon").as_deref(),
            Some("offers:write")
        );
        assert_eq!(
            required_scope("/winback.offers.v1.OffersService/ValidateCoupon").as_deref(),
            Some("offers:read")
        );
        assert_eq!(
            required_scope("/winback.events.v1.EventsService/Subscribe").as_deref(),
            Some("events:read")
        );
        assert_eq!(required_scope("/grpc.health.v1.Health/Check"), None);
    }

    #[test]
    fn the_service_token_is_written_once_and_renewed_when_it_stops_verifying() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/service.jwt");
        let (signer, verifier) = pair();
        assert!(ensure_service_token(&path, &signer, &verifier).unwrap());
        assert!(!ensure_service_token(&path, &signer, &verifier).unwrap());
        let token = std::fs::read_to_string(&path).unwrap();
        assert!(
            verifier
                .authenticate(Some(&format!("Bearer {token}")), None)
                .unwrap()
                .is_service()
        );
        // After a key rotation the old credential no longer verifies and is replaced.
        let (new_signer, new_verifier) = pair();
        assert!(ensure_service_token(&path, &new_signer, &new_verifier).unwrap());
    }

    #[test]
    fn key_pair_is_generated_once() {
        let dir = tempfile::tempdir().unwrap();
        let private = dir.path().join("keys/token.key.pem");
        let public = dir.path().join("keys/token.pub.pem");
        assert!(ensure_key_pair(&private, &public).unwrap());
        let first = std::fs::read(&public).unwrap();
        assert!(!ensure_key_pair(&private, &public).unwrap());
        assert_eq!(std::fs::read(&public).unwrap(), first);
    }

    #[test]
    fn the_private_key_is_pkcs8_v1_that_openssl_reads_and_old_keys_are_rewritten() {
        let pair = generate_key_pair().unwrap();
        let body: String = pair
            .private_pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap();
        assert_eq!(der.len(), 48);
        assert!(der.starts_with(&ED25519_PKCS8_V1_PREFIX));
        // It still signs, and the public key verifies what it signs.
        let signer = TokenSigner::from_pem(pair.private_pem.as_bytes(), "winback").unwrap();
        let verifier = TokenVerifier::from_pem(pair.public_pem.as_bytes(), "winback").unwrap();
        let token = signer.tenant_token("t", &["*"], 60).unwrap();
        assert!(verifier.verify(&token).is_ok());

        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("token.key.pem");
        std::fs::write(&key, &pair.private_pem).unwrap();
        match std::process::Command::new("openssl")
            .args(["pkey", "-noout", "-in"])
            .arg(&key)
            .status()
        {
            Ok(status) => assert!(status.success(), "openssl reads the key"),
            Err(_) => eprintln!("*** SKIPPED: the openssl check (no openssl on PATH) ***"),
        }

        // A key written in aws-lc-rs's v2 form before is rewritten as the same key in v1.
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let v2 = aws_lc_rs::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        std::fs::write(&key, pem("PRIVATE KEY", v2.as_ref())).unwrap();
        let public = dir.path().join("token.pub.pem");
        std::fs::write(&public, "unused").unwrap();
        assert!(!ensure_key_pair(&key, &public).unwrap());
        let rewritten = std::fs::read_to_string(&key).unwrap();
        assert_eq!(
            rewritten,
            pem("PRIVATE KEY", &pkcs8_v1(v2.as_ref()).unwrap())
        );
        assert!(!upgrade_private_key(&key).unwrap(), "v1 stays as it is");
    }
}
