//! Verification keys: one per HS256 secret or JWK, with the algorithms it
//! allows. A JWKS file is read strictly (a key the relay cannot use is a
//! startup error); a set fetched from a provider is read leniently (such a
//! key is skipped and logged), since providers publish encryption keys and
//! new key types next to the signing keys the relay needs.

use crate::Error;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use serde_json::Value;

/// Shortest HS256 secret accepted: 256 bits, the hash's own size (RFC 7518
/// section 3.2 requires at least that).
pub const MIN_SECRET_BYTES: usize = 32;

pub struct VerifyKey {
    pub kid: Option<String>,
    pub algorithms: Vec<Algorithm>,
    pub key: DecodingKey,
}

/// The key of `OUTPOST_JWT_SECRET`.
pub fn secret_key(secret: &str) -> Result<VerifyKey, Error> {
    if secret.len() < MIN_SECRET_BYTES {
        return Err(Error::Config(format!(
            "OUTPOST_JWT_SECRET is {} bytes; HS256 needs at least {MIN_SECRET_BYTES} \
             (generate one with `openssl rand -hex 32`)",
            secret.len()
        )));
    }
    Ok(VerifyKey {
        kid: None,
        algorithms: vec![Algorithm::HS256],
        key: DecodingKey::from_secret(secret.as_bytes()),
    })
}

/// Every key of a JWKS file; any unusable key is an error.
pub fn parse_file_set(jwks: &str) -> Result<Vec<VerifyKey>, Error> {
    let set: JwkSet = serde_json::from_str(jwks)
        .map_err(|e| Error::Config(format!("JWKS is not valid JSON: {e}")))?;
    set.keys.iter().map(jwk_key).collect()
}

/// The usable keys of a fetched JWKS document, and why each other key was
/// skipped. Fails only when the document is not a JWKS at all.
pub fn parse_fetched_set(body: &[u8]) -> Result<(Vec<VerifyKey>, Vec<String>), String> {
    #[derive(Deserialize)]
    struct RawSet {
        keys: Vec<Value>,
    }
    let raw: RawSet =
        serde_json::from_slice(body).map_err(|e| format!("not a JWKS document: {e}"))?;
    let mut keys = Vec::new();
    let mut skipped = Vec::new();
    for value in raw.keys {
        let kid = value.get("kid").and_then(Value::as_str).map(str::to_string);
        let parsed = serde_json::from_value::<Jwk>(value)
            .map_err(|e| Error::Config(format!("JWKS key {}: {e}", name(&kid))))
            .and_then(|jwk| jwk_key(&jwk));
        match parsed {
            Ok(k) => keys.push(k),
            Err(Error::Config(m)) => skipped.push(m),
            Err(e) => skipped.push(e.to_string()),
        }
    }
    Ok((keys, skipped))
}

fn name(kid: &Option<String>) -> String {
    kid.clone().unwrap_or_else(|| "<no kid>".into())
}

pub fn jwk_key(jwk: &Jwk) -> Result<VerifyKey, Error> {
    let kid = jwk.common.key_id.clone();
    let name = name(&kid);
    if let Some(u) = &jwk.common.public_key_use {
        if *u != PublicKeyUse::Signature {
            return Err(Error::Config(format!("JWKS key {name}: use must be sig")));
        }
    }
    let family: Vec<Algorithm> = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => vec![Algorithm::RS256, Algorithm::RS384, Algorithm::RS512],
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => vec![Algorithm::ES256],
            EllipticCurve::P384 => vec![Algorithm::ES384],
            _ => return Err(Error::Config(format!("JWKS key {name}: unsupported curve"))),
        },
        AlgorithmParameters::OctetKeyPair(_) => vec![Algorithm::EdDSA],
        AlgorithmParameters::OctetKey(_) => {
            return Err(Error::Config(format!(
                "JWKS key {name}: symmetric (oct) keys belong in OUTPOST_JWT_SECRET"
            )))
        }
        _ => {
            return Err(Error::Config(format!(
                "JWKS key {name}: unsupported key type"
            )))
        }
    };
    // A key that names its alg allows only that one, as the spec asks.
    let algorithms = match jwk.common.key_algorithm {
        Some(ka) => {
            let alg = Algorithm::try_from(ka)
                .map_err(|_| Error::Config(format!("JWKS key {name}: unsupported alg")))?;
            if !family.contains(&alg) {
                return Err(Error::Config(format!(
                    "JWKS key {name}: alg does not match key type"
                )));
            }
            vec![alg]
        }
        None => family,
    };
    let key =
        DecodingKey::from_jwk(jwk).map_err(|e| Error::Config(format!("JWKS key {name}: {e}")))?;
    Ok(VerifyKey {
        kid,
        algorithms,
        key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED_X: &str = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";

    #[test]
    fn fetched_sets_skip_keys_the_relay_cannot_use() {
        let body = serde_json::json!({"keys": [
            {"kty": "OKP", "crv": "Ed25519", "x": ED_X, "kid": "good", "use": "sig"},
            {"kty": "OKP", "crv": "Ed25519", "x": ED_X, "kid": "enc", "use": "enc"},
            {"kty": "EC", "crv": "secp256k1", "x": "AA", "y": "AA", "kid": "k1"},
            {"kty": "oct", "k": "c2VjcmV0", "kid": "sym"},
        ]});
        let (keys, skipped) = parse_fetched_set(body.to_string().as_bytes()).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid.as_deref(), Some("good"));
        assert_eq!(skipped.len(), 3, "{skipped:?}");
        assert!(skipped.iter().any(|s| s.contains("k1")), "{skipped:?}");
        assert!(parse_fetched_set(b"<html>").is_err());
        assert!(parse_fetched_set(br#"{"keys": []}"#).unwrap().0.is_empty());
        // The same set as a file is refused whole.
        assert!(parse_file_set(&body.to_string()).is_err());
    }

    #[test]
    fn short_secrets_are_refused_with_the_minimum() {
        let e = secret_key("short").err().unwrap().to_string();
        assert!(e.contains("5 bytes") && e.contains("at least 32"), "{e}");
        assert!(secret_key(&"x".repeat(32)).is_ok());
    }
}
