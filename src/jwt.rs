//! Token verification for `auth.mode = "jwt"`.
//!
//! HS256 uses `auth.jwt.secret`; RS256 and ES256 use `auth.jwt.public_key_file`
//! (a PEM key, or a JWKS document with key ids for rotation). A token's `alg`
//! must belong to a configured key: `none`, and HS256 signed with a public
//! key, are refused. Reasons go to the log only; clients learn nothing.

use std::sync::Arc;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::auth::Identity;
use crate::config::{AuthMode, ConfigError, JwtConfig};
use crate::protocol::{self, User};

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
const LEEWAY_SECS: u64 = 30;

/// Checks tokens against the configured keys and claims.
pub struct Verifier {
    keys: Vec<VerifyingKey>,
    issuer: Option<String>,
    audience: Option<String>,
}

/// One key and the algorithm it verifies.
struct VerifyingKey {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

/// The claims Ward reads.
#[derive(Deserialize)]
struct Claims {
    sub: String,
    name: Option<String>,
    #[serde(default)]
    roles: Vec<String>,
    rooms: Option<Vec<String>>,
    exp: i64,
}

impl Verifier {
    /// Builds the verifier of jwt mode; `None` in open mode.
    pub fn from_config(
        mode: AuthMode,
        jwt: &JwtConfig,
    ) -> Result<Option<Arc<Verifier>>, ConfigError> {
        if mode == AuthMode::Open {
            return Ok(None);
        }
        let mut keys = Vec::new();
        if let Some(secret) = &jwt.secret {
            keys.push(hmac_key(secret)?);
        }
        if let Some(path) = &jwt.public_key_file {
            keys.extend(public_keys(path)?);
        }
        let verifier =
            Verifier { keys, issuer: jwt.issuer.clone(), audience: jwt.audience.clone() };
        Ok(Some(Arc::new(verifier)))
    }

    /// Verifies a token; the error is a reason for the log, not the client.
    pub fn verify(&self, token: &str) -> Result<Identity, String> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| format!("malformed token: {e}"))?;
        let key = self
            .keys
            .iter()
            .filter(|k| k.algorithm == header.alg)
            .find(|k| header.kid.is_none() || k.kid.is_none() || k.kid == header.kid)
            .ok_or_else(|| {
                format!("no configured key for alg {:?} kid {:?}", header.alg, header.kid)
            })?;

        let claims =
            jsonwebtoken::decode::<Claims>(token, &key.key, &self.validation(key.algorithm))
                .map_err(|e| format!("token refused: {e}"))?
                .claims;
        identity_from(claims)
    }

    /// The checks for one algorithm: signature, `exp`, `nbf`, `iss`, `aud`.
    fn validation(&self, algorithm: Algorithm) -> Validation {
        let mut validation = Validation::new(algorithm);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
            validation.required_spec_claims.insert("iss".into());
        }
        match &self.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                validation.required_spec_claims.insert("aud".into());
            }
            None => validation.validate_aud = false,
        }
        validation
    }
}

/// Turns verified claims into an identity, checking the names in them.
fn identity_from(claims: Claims) -> Result<Identity, String> {
    if !protocol::is_valid_name(&claims.sub) {
        return Err("`sub` is not a valid user id".into());
    }
    // The leeway forgives clock skew in checks, but a connection is never
    // opened for a token that has already run out.
    if claims.exp <= crate::broker::now_ms() / 1000 {
        return Err("token expired".into());
    }
    // A long name is shortened rather than refused: it is only shown.
    let name: String = match claims.name {
        Some(name) => name.chars().filter(|c| !c.is_control()).take(100).collect(),
        None => claims.sub.clone(),
    };
    let name = if name.is_empty() { claims.sub.clone() } else { name };
    Ok(Identity {
        user: User { id: claims.sub.into(), name: name.into() },
        rooms: claims.rooms,
        roles: claims.roles,
        expires_at: Some(claims.exp),
    })
}

fn hmac_key(secret: &str) -> Result<VerifyingKey, ConfigError> {
    if secret.len() < 32 {
        tracing::warn!("auth.jwt.secret is shorter than 32 bytes; use a long random secret");
    }
    let key = DecodingKey::from_secret(secret.as_bytes())
        .map_err(|e| ConfigError { key: "auth.jwt.secret".into(), problem: e.to_string() })?;
    Ok(VerifyingKey { kid: None, algorithm: Algorithm::HS256, key })
}

/// Reads a PEM public key (RSA or EC P-256) or a JWKS document.
fn public_keys(path: &std::path::Path) -> Result<Vec<VerifyingKey>, ConfigError> {
    let problem =
        |text: String| ConfigError { key: "auth.jwt.public_key_file".into(), problem: text };
    let bytes =
        std::fs::read(path).map_err(|e| problem(format!("cannot read {}: {e}", path.display())))?;

    if bytes.trim_ascii_start().starts_with(b"{") {
        let set: JwkSet = serde_json::from_slice(&bytes)
            .map_err(|e| problem(format!("not a JWKS document: {e}")))?;
        return set.keys.iter().map(|jwk| jwks_key(jwk).map_err(&problem)).collect();
    }
    if let Ok(key) = DecodingKey::from_rsa_pem(&bytes) {
        return Ok(vec![VerifyingKey { kid: None, algorithm: Algorithm::RS256, key }]);
    }
    if let Ok(key) = DecodingKey::from_ec_pem(&bytes) {
        return Ok(vec![VerifyingKey { kid: None, algorithm: Algorithm::ES256, key }]);
    }
    Err(problem("not an RSA or EC public key in PEM form, nor a JWKS document".into()))
}

/// One JWKS entry: RS256 or ES256 only.
fn jwks_key(jwk: &jsonwebtoken::jwk::Jwk) -> Result<VerifyingKey, String> {
    use jsonwebtoken::jwk::AlgorithmParameters;

    let algorithm = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
        _ => return Err("JWKS keys must be RSA (RS256) or EC P-256 (ES256)".into()),
    };
    let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("unusable JWKS key: {e}"))?;
    Ok(VerifyingKey { kid: jwk.common.key_id.clone(), algorithm, key })
}
