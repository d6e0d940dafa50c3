//! Client authentication: `Authorization: Token <jwt>` (or `Bearer`).
//!
//! Rules follow the PowerSync service: the header `alg` must be one the
//! selected key allows (so `none`, or HS256 against an RSA key, is refused);
//! a token with a `kid` must name a configured key, one without uses the
//! keys that have none (the HS256 secret, at least 32 bytes); `sub`, `iat`
//! and `exp` are required with 60 s of clock leeway (as is `nbf` when
//! present); a lifetime over 24 h is refused; `aud` must match when an
//! audience is configured, `iss` when an issuer is.
//!
//! Keys come from the HS256 secret, a JWKS file, and JWKS URLs:
//! - [`keys`]: one verification key per secret or JWK, strict or lenient parsing.
//! - [`jwks`]: keys fetched from URLs, cached, refreshed, rate-limited refetch.

pub mod jwks;
pub mod keys;
#[cfg(test)]
pub(crate) mod tests;

use crate::config::ServeArgs;
use crate::Error;
use jsonwebtoken::{Algorithm, EncodingKey, Header, Validation};
use jwks::{JwksOptions, RemoteJwks};
use keys::VerifyKey;
use serde_json::{Map, Value};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const LEEWAY_SECS: u64 = 60;
pub const MAX_LIFETIME_SECS: i64 = 86_400;

/// Longest token accepted (bytes). Real tokens are well under 2 KB.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// The verified claims of a client token.
#[derive(Clone, Debug, PartialEq)]
pub struct Claims {
    pub sub: String,
    pub iat: i64,
    pub exp: i64,
    /// All claims, passed to `outpost.sync_checkpoint` for `request.jwt()`.
    pub raw: Value,
}

/// Where keys come from and what tokens must claim.
#[derive(Default)]
pub struct VerifierConfig<'a> {
    /// HS256 secret (raw bytes).
    pub secret: Option<&'a str>,
    /// Contents of a JWKS file.
    pub jwks: Option<&'a str>,
    /// Keys fetched from JWKS URLs.
    pub remote: Option<Arc<RemoteJwks>>,
    /// Accepted `aud` values; empty: not checked.
    pub audience: Vec<String>,
    /// Accepted `iss` values; empty: not checked.
    pub issuer: Vec<String>,
}

/// The keys and checks that decide whether a token is accepted.
pub struct Verifier {
    keys: Vec<VerifyKey>,
    remote: Option<Arc<RemoteJwks>>,
    audience: Vec<String>,
    issuer: Vec<String>,
}

/// Builds the verifier `serve` is configured for. With JWKS URLs it fetches
/// them once before returning (failures are logged; tokens from that URL
/// are refused until a fetch succeeds) and hands back the keys to refresh
/// on schedule ([`RemoteJwks::run`]).
pub async fn from_args(args: &ServeArgs) -> Result<(Verifier, Option<Arc<RemoteJwks>>), Error> {
    let jwks =
        match &args.jwks {
            Some(p) => Some(std::fs::read_to_string(p).map_err(|e| {
                Error::Config(format!("cannot read JWKS file {}: {e}", p.display()))
            })?),
            None => None,
        };
    let idp = &args.idp;
    let remote = if idp.jwks_url.is_empty() {
        None
    } else {
        let remote = Arc::new(RemoteJwks::new(&JwksOptions {
            urls: idp.jwks_url.clone(),
            ca_cert: idp.jwks_ca_cert.clone(),
            refresh: Duration::from_secs(idp.jwks_refresh_secs),
            min_refetch: Duration::from_secs(idp.jwks_min_refetch_secs),
        })?);
        remote.refresh_now().await;
        Some(remote)
    };
    let verifier = Verifier::with(VerifierConfig {
        secret: args.jwt_secret.as_deref(),
        jwks: jwks.as_deref(),
        remote: remote.clone(),
        audience: args.jwt_audience.clone(),
        issuer: idp.jwt_issuer.clone(),
    })?;
    Ok((verifier, remote))
}

impl Verifier {
    /// A verifier with a secret and/or a JWKS file (no URLs, no issuer).
    pub fn new(
        secret: Option<&str>,
        jwks: Option<&str>,
        audience: Vec<String>,
    ) -> Result<Verifier, Error> {
        Verifier::with(VerifierConfig {
            secret,
            jwks,
            audience,
            ..VerifierConfig::default()
        })
    }

    pub fn with(config: VerifierConfig<'_>) -> Result<Verifier, Error> {
        let mut keys = Vec::new();
        if let Some(secret) = config.secret {
            keys.push(keys::secret_key(secret)?);
        }
        if let Some(jwks) = config.jwks {
            keys.extend(keys::parse_file_set(jwks)?);
        }
        if keys.is_empty() && config.remote.is_none() {
            return Err(Error::Config(
                "no JWT keys: set OUTPOST_JWT_SECRET, OUTPOST_JWKS and/or OUTPOST_JWKS_URL".into(),
            ));
        }
        Ok(Verifier {
            keys,
            remote: config.remote,
            audience: config.audience,
            issuer: config.issuer,
        })
    }

    /// Verifies the `Authorization` header value.
    pub async fn verify_header(&self, header: Option<&str>) -> Result<Claims, Error> {
        let header = header.ok_or_else(|| unauthorized("missing authorization header"))?;
        let token = header
            .strip_prefix("Token ")
            .or_else(|| header.strip_prefix("Bearer "))
            .ok_or_else(|| unauthorized("authorization must be 'Token <jwt>' or 'Bearer <jwt>'"))?;
        self.verify_fetching(token.trim(), now_secs()).await
    }

    /// [`Verifier::verify`], after refreshing the JWKS URLs (rate-limited)
    /// when the token names a kid no key has.
    pub async fn verify_fetching(&self, token: &str, now: u64) -> Result<Claims, Error> {
        if let Some(remote) = &self.remote {
            if token.len() <= MAX_TOKEN_BYTES {
                if let Ok(Some(kid)) = jsonwebtoken::decode_header(token).map(|h| h.kid) {
                    if !self.knows_kid(&kid) {
                        remote.refresh_for_unknown_kid().await;
                        if !self.knows_kid(&kid) && !remote.snapshot().complete() {
                            return Err(Error::Unavailable(
                                "signing keys are not available yet".into(),
                            ));
                        }
                    }
                }
            }
        }
        self.verify(token, now)
    }

    fn knows_kid(&self, kid: &str) -> bool {
        let remote = self.remote.as_ref().map(|r| r.snapshot());
        let known = self
            .keys
            .iter()
            .chain(remote.iter().flat_map(|s| s.keys()))
            .any(|k| k.kid.as_deref() == Some(kid));
        known
    }

    /// Verifies a token at time `now` (unix seconds) with the keys held now.
    pub fn verify(&self, token: &str, now: u64) -> Result<Claims, Error> {
        // The claims go to Postgres with every checkpoint query of the stream:
        // a (validly signed) token of 100 KB would cost that on every query.
        if token.len() > MAX_TOKEN_BYTES {
            return Err(unauthorized("token too large"));
        }
        // Fails for `alg: none` and unknown algorithms: jsonwebtoken has no such variant.
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| unauthorized("malformed token or unsupported algorithm"))?;
        let remote = self.remote.as_ref().map(|r| r.snapshot());
        let candidates: Vec<&VerifyKey> = self
            .keys
            .iter()
            .chain(remote.iter().flat_map(|s| s.keys()))
            .filter(|k| k.kid.as_deref() == header.kid.as_deref())
            .collect();
        if candidates.is_empty() {
            return Err(unauthorized(match header.kid {
                Some(_) => "unknown key id",
                None => "token has no kid and no key without kid is configured",
            }));
        }
        let candidates: Vec<&VerifyKey> = candidates
            .into_iter()
            .filter(|k| k.algorithms.contains(&header.alg))
            .collect();
        if candidates.is_empty() {
            return Err(unauthorized("algorithm not allowed for this key"));
        }

        let mut validation = Validation::new(header.alg);
        validation.leeway = LEEWAY_SECS;
        validation.validate_exp = false; // checked below against `now`, which tests control
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.validate_aud = !self.audience.is_empty();
        if !self.audience.is_empty() {
            validation.set_audience(&self.audience);
            validation.required_spec_claims.insert("aud".into());
        }
        if !self.issuer.is_empty() {
            validation.set_issuer(&self.issuer);
            validation.required_spec_claims.insert("iss".into());
        }

        let mut last_err = None;
        for key in candidates {
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation) {
                Ok(data) => return check_claims(data.claims, now),
                Err(e) => last_err = Some(e),
            }
        }
        let e = last_err.expect("at least one candidate was tried");
        use jsonwebtoken::errors::ErrorKind as K;
        Err(unauthorized(match e.kind() {
            K::InvalidSignature => "invalid signature",
            K::InvalidAudience => "wrong audience",
            K::InvalidIssuer => "wrong issuer",
            K::MissingRequiredClaim(c) if c == "aud" => "missing aud claim",
            K::MissingRequiredClaim(c) if c == "iss" => "missing iss claim",
            K::MissingRequiredClaim(_) => "missing sub or exp claim",
            K::InvalidAlgorithm => "algorithm not allowed for this key",
            _ => "invalid token",
        }))
    }
}

fn check_claims(claims: Map<String, Value>, now: u64) -> Result<Claims, Error> {
    let sub = match claims.get("sub") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => return Err(unauthorized("sub must be a non-empty string")),
    };
    let exp = claims
        .get("exp")
        .and_then(Value::as_i64)
        .ok_or_else(|| unauthorized("exp must be an integer"))?;
    let iat = claims
        .get("iat")
        .and_then(Value::as_i64)
        .ok_or_else(|| unauthorized("iat is required"))?;
    if exp + (LEEWAY_SECS as i64) < now as i64 {
        return Err(unauthorized("token expired"));
    }
    if iat > now as i64 + LEEWAY_SECS as i64 {
        return Err(unauthorized("token issued in the future"));
    }
    // jsonwebtoken checks `nbf` only when asked, and against the system clock:
    // check it here, against `now`, like `exp`.
    if let Some(nbf) = claims.get("nbf") {
        let nbf = nbf
            .as_i64()
            .ok_or_else(|| unauthorized("nbf must be an integer"))?;
        if nbf > now as i64 + LEEWAY_SECS as i64 {
            return Err(unauthorized("token not yet valid (nbf)"));
        }
    }
    if exp - iat > MAX_LIFETIME_SECS {
        return Err(unauthorized("token lifetime exceeds 86400 seconds"));
    }
    if let Some(p) = claims.get("parameters") {
        if !p.is_object() {
            return Err(unauthorized("parameters claim must be an object"));
        }
    }
    Ok(Claims {
        sub,
        iat,
        exp,
        raw: Value::Object(claims),
    })
}

fn unauthorized(reason: &str) -> Error {
    Error::Unauthorized(reason.to_string())
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A development HS256 token with `sub`, `iat`, `exp` (and `aud` if given).
pub fn dev_token(
    secret: &str,
    sub: &str,
    ttl_secs: u64,
    aud: Option<&str>,
) -> Result<String, Error> {
    let iat = now_secs();
    let mut claims = serde_json::json!({ "sub": sub, "iat": iat, "exp": iat + ttl_secs });
    if let Some(aud) = aud {
        claims["aud"] = Value::String(aud.into());
    }
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| Error::Config(format!("cannot sign token: {e}")))
}
