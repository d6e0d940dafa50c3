//! Client authentication: `Authorization: Token <jwt>` (or `Bearer`).
//!
//! Rules follow the PowerSync service: the header `alg` must be one the
//! selected key allows (so `none`, or HS256 against an RSA key, is refused);
//! a token with a `kid` must name a configured key, one without uses the
//! keys that have none (the HS256 secret); `sub`, `iat` and `exp` are
//! required with 60 s of clock leeway (as is `nbf` when present); a
//! lifetime over 24 h is refused;
//! `aud` must match when an audience is configured.

use crate::Error;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Map, Value};
use std::time::{SystemTime, UNIX_EPOCH};

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

struct VerifyKey {
    kid: Option<String>,
    algorithms: Vec<Algorithm>,
    key: DecodingKey,
}

/// The keys and checks that decide whether a token is accepted.
pub struct Verifier {
    keys: Vec<VerifyKey>,
    audience: Vec<String>,
}

impl Verifier {
    pub fn new(
        secret: Option<&str>,
        jwks: Option<&str>,
        audience: Vec<String>,
    ) -> Result<Verifier, Error> {
        let mut keys = Vec::new();
        if let Some(secret) = secret {
            if secret.is_empty() {
                return Err(Error::Config("OUTPOST_JWT_SECRET is empty".into()));
            }
            keys.push(VerifyKey {
                kid: None,
                algorithms: vec![Algorithm::HS256],
                key: DecodingKey::from_secret(secret.as_bytes()),
            });
        }
        if let Some(jwks) = jwks {
            let set: JwkSet = serde_json::from_str(jwks)
                .map_err(|e| Error::Config(format!("JWKS is not valid JSON: {e}")))?;
            for jwk in &set.keys {
                keys.push(jwk_key(jwk)?);
            }
        }
        if keys.is_empty() {
            return Err(Error::Config(
                "no JWT keys: set OUTPOST_JWT_SECRET and/or OUTPOST_JWKS".into(),
            ));
        }
        Ok(Verifier { keys, audience })
    }

    /// Verifies the `Authorization` header value.
    pub fn verify_header(&self, header: Option<&str>) -> Result<Claims, Error> {
        let header = header.ok_or_else(|| unauthorized("missing authorization header"))?;
        let token = header
            .strip_prefix("Token ")
            .or_else(|| header.strip_prefix("Bearer "))
            .ok_or_else(|| unauthorized("authorization must be 'Token <jwt>' or 'Bearer <jwt>'"))?;
        self.verify(token.trim(), now_secs())
    }

    /// Verifies a token at time `now` (unix seconds).
    pub fn verify(&self, token: &str, now: u64) -> Result<Claims, Error> {
        // The claims go to Postgres with every checkpoint query of the stream:
        // a (validly signed) token of 100 KB would cost that on every query.
        if token.len() > MAX_TOKEN_BYTES {
            return Err(unauthorized("token too large"));
        }
        // Fails for `alg: none` and unknown algorithms: jsonwebtoken has no such variant.
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| unauthorized("malformed token or unsupported algorithm"))?;
        let candidates: Vec<&VerifyKey> = self
            .keys
            .iter()
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
            K::MissingRequiredClaim(c) if c == "aud" => "missing aud claim",
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

fn jwk_key(jwk: &jsonwebtoken::jwk::Jwk) -> Result<VerifyKey, Error> {
    let kid = jwk.common.key_id.clone();
    let name = kid.clone().unwrap_or_else(|| "<no kid>".into());
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    pub const SECRET: &str = "test-secret-0123456789";

    pub fn hs256(secret: &str, claims: &Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn b64(s: &str) -> String {
        base64_url_encode(s.as_bytes())
    }

    /// Unpadded base64url, enough to hand-craft headers jsonwebtoken refuses to sign.
    pub fn base64_url_encode(bytes: &[u8]) -> String {
        const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |acc, (i, b)| acc | (*b as u32) << (16 - 8 * i));
            for i in 0..=chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }

    pub fn alg_none_token(claims: &Value) -> String {
        format!(
            "{}.{}.",
            b64(r#"{"alg":"none","typ":"JWT"}"#),
            b64(&claims.to_string())
        )
    }

    fn verifier() -> Verifier {
        Verifier::new(Some(SECRET), None, vec![]).unwrap()
    }

    const NOW: u64 = 1_700_000_000;

    fn claims(iat: u64, exp: u64) -> Value {
        json!({"sub": "u1", "iat": iat, "exp": exp})
    }

    fn reason(r: Result<Claims, Error>) -> String {
        match r {
            Err(Error::Unauthorized(m)) => m,
            other => panic!("expected 401, got {other:?}"),
        }
    }

    #[test]
    fn accepts_valid_token_and_keeps_raw_claims() {
        let t = hs256(
            SECRET,
            &json!({"sub": "u1", "iat": NOW, "exp": NOW + 600, "org": "o1"}),
        );
        let c = verifier().verify(&t, NOW).unwrap();
        assert_eq!(c.sub, "u1");
        assert_eq!(c.exp, (NOW + 600) as i64);
        assert_eq!(c.raw["org"], "o1");
    }

    #[test]
    fn expiry_honours_leeway() {
        let v = verifier();
        let t = hs256(SECRET, &claims(NOW - 1000, NOW - 30));
        assert!(v.verify(&t, NOW).is_ok(), "30 s past exp is within leeway");
        let t = hs256(SECRET, &claims(NOW - 1000, NOW - 61));
        assert_eq!(reason(v.verify(&t, NOW)), "token expired");
    }

    #[test]
    fn refuses_oversized_tokens() {
        let mut c = claims(NOW, NOW + 600);
        c["pad"] = json!("x".repeat(MAX_TOKEN_BYTES));
        assert_eq!(
            reason(verifier().verify(&hs256(SECRET, &c), NOW)),
            "token too large"
        );
    }

    #[test]
    fn not_before_honours_leeway() {
        let v = verifier();
        let mut c = claims(NOW, NOW + 600);
        c["nbf"] = json!(NOW + 30);
        assert!(
            v.verify(&hs256(SECRET, &c), NOW).is_ok(),
            "nbf 30 s ahead is within leeway"
        );
        c["nbf"] = json!(NOW + 3600);
        assert_eq!(
            reason(v.verify(&hs256(SECRET, &c), NOW)),
            "token not yet valid (nbf)"
        );
        c["nbf"] = json!("soon");
        assert_eq!(
            reason(v.verify(&hs256(SECRET, &c), NOW)),
            "nbf must be an integer"
        );
    }

    #[test]
    fn rejects_long_lifetime_and_missing_claims() {
        let v = verifier();
        let t = hs256(SECRET, &claims(NOW, NOW + 86_401));
        assert!(reason(v.verify(&t, NOW)).contains("lifetime"));
        let t = hs256(SECRET, &json!({"sub": "u1", "exp": NOW + 10}));
        assert_eq!(reason(v.verify(&t, NOW)), "iat is required");
        let t = hs256(SECRET, &json!({"iat": NOW, "exp": NOW + 10}));
        assert!(reason(v.verify(&t, NOW)).contains("sub"));
        let t = hs256(
            SECRET,
            &json!({"sub": "u1", "iat": NOW, "exp": NOW + 10, "parameters": 3}),
        );
        assert!(reason(v.verify(&t, NOW)).contains("parameters"));
    }

    #[test]
    fn rejects_wrong_signature_alg_none_and_garbage() {
        let v = verifier();
        let t = hs256("another-secret", &claims(NOW, NOW + 60));
        assert_eq!(reason(v.verify(&t, NOW)), "invalid signature");
        let t = alg_none_token(&claims(NOW, NOW + 60));
        assert!(reason(v.verify(&t, NOW)).contains("unsupported algorithm"));
        assert!(v.verify("not-a-jwt", NOW).is_err());
    }

    #[test]
    fn audience_is_checked_when_configured() {
        let v = Verifier::new(Some(SECRET), None, vec!["outpost".into()]).unwrap();
        let mut c = claims(NOW, NOW + 60);
        assert_eq!(
            reason(v.verify(&hs256(SECRET, &c), NOW)),
            "missing aud claim"
        );
        c["aud"] = json!("other");
        assert_eq!(reason(v.verify(&hs256(SECRET, &c), NOW)), "wrong audience");
        c["aud"] = json!(["other", "outpost"]);
        assert!(v.verify(&hs256(SECRET, &c), NOW).is_ok());
    }

    #[test]
    fn header_schemes() {
        let v = verifier();
        let t = dev_token(SECRET, "u9", 60, None).unwrap();
        assert_eq!(
            v.verify_header(Some(&format!("Token {t}"))).unwrap().sub,
            "u9"
        );
        assert_eq!(
            v.verify_header(Some(&format!("Bearer {t}"))).unwrap().sub,
            "u9"
        );
        assert!(v.verify_header(Some(&format!("Basic {t}"))).is_err());
        assert!(v.verify_header(None).is_err());
    }

    // An Ed25519 key pair (RFC 8037 appendix A.1).
    const ED_D: &str = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A";
    const ED_X: &str = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";

    fn ed_private_pem() -> String {
        // PKCS#8 wrapping of a raw Ed25519 seed: fixed 16-byte prefix + 32-byte seed.
        let seed = base64_url_decode(ED_D);
        let mut der = vec![
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        der.extend_from_slice(&seed);
        format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            std_b64(&der)
        )
    }

    fn base64_url_decode(s: &str) -> Vec<u8> {
        const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut bits = 0u32;
        let mut n = 0;
        let mut out = Vec::new();
        for c in s.bytes() {
            let v = T.iter().position(|&t| t == c).unwrap() as u32;
            bits = (bits << 6) | v;
            n += 6;
            if n >= 8 {
                n -= 8;
                out.push((bits >> n) as u8);
                bits &= (1 << n) - 1;
            }
        }
        out
    }

    fn std_b64(bytes: &[u8]) -> String {
        let mut s = base64_url_encode(bytes).replace('-', "+").replace('_', "/");
        while !s.len().is_multiple_of(4) {
            s.push('=');
        }
        s
    }

    fn ed_token(kid: &str, claims: &Value) -> String {
        let mut h = Header::new(Algorithm::EdDSA);
        h.kid = Some(kid.into());
        let key = EncodingKey::from_ed_pem(ed_private_pem().as_bytes()).unwrap();
        jsonwebtoken::encode(&h, claims, &key).unwrap()
    }

    #[test]
    fn jwks_selects_key_by_kid_and_alg() {
        let jwks = json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": ED_X, "kid": "k1", "use": "sig"}]});
        let v = Verifier::new(Some(SECRET), Some(&jwks.to_string()), vec![]).unwrap();
        let c = claims(NOW, NOW + 60);
        assert_eq!(v.verify(&ed_token("k1", &c), NOW).unwrap().sub, "u1");
        assert_eq!(reason(v.verify(&ed_token("k2", &c), NOW)), "unknown key id");
        // HS256 signed with the public key bytes, naming the EdDSA kid: a classic confusion attack.
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("k1".into());
        let t = jsonwebtoken::encode(&h, &c, &EncodingKey::from_secret(ED_X.as_bytes())).unwrap();
        assert_eq!(
            reason(v.verify(&t, NOW)),
            "algorithm not allowed for this key"
        );
        // The HS256 secret still works for tokens without a kid.
        assert!(v.verify(&hs256(SECRET, &c), NOW).is_ok());
    }

    #[test]
    fn jwks_rejects_oct_and_encryption_keys() {
        let oct = json!({"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "s"}]});
        assert!(Verifier::new(None, Some(&oct.to_string()), vec![]).is_err());
        let enc = json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": ED_X, "kid": "e", "use": "enc"}]});
        assert!(Verifier::new(None, Some(&enc.to_string()), vec![]).is_err());
        assert!(Verifier::new(None, None, vec![]).is_err());
    }
}
