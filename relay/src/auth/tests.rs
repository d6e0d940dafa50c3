use super::*;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use serde_json::json;

pub const SECRET: &str = "test-secret-0123456789-0123456789";

pub fn hs256(secret: &str, claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// Unpadded base64url, to hand-craft headers jsonwebtoken refuses to sign.
fn b64(s: &str) -> String {
    URL_SAFE_NO_PAD.encode(s.as_bytes())
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

#[tokio::test]
async fn header_schemes() {
    let v = verifier();
    let t = dev_token(SECRET, "u9", 60, None).unwrap();
    let sub = |h: String| {
        let v = &v;
        async move { v.verify_header(Some(&h)).await.map(|c| c.sub) }
    };
    assert_eq!(sub(format!("Token {t}")).await.unwrap(), "u9");
    assert_eq!(sub(format!("Bearer {t}")).await.unwrap(), "u9");
    assert!(sub(format!("Basic {t}")).await.is_err());
    assert!(v.verify_header(None).await.is_err());
}

#[test]
fn issuer_is_checked_when_configured() {
    let v = Verifier::with(VerifierConfig {
        secret: Some(SECRET),
        issuer: vec!["https://idp.example/auth/v1".into()],
        ..VerifierConfig::default()
    })
    .unwrap();
    let mut c = claims(NOW, NOW + 60);
    assert_eq!(
        reason(v.verify(&hs256(SECRET, &c), NOW)),
        "missing iss claim"
    );
    c["iss"] = json!("https://evil.example");
    assert_eq!(reason(v.verify(&hs256(SECRET, &c), NOW)), "wrong issuer");
    c["iss"] = json!("https://idp.example/auth/v1");
    assert!(v.verify(&hs256(SECRET, &c), NOW).is_ok());
}

#[test]
fn short_secrets_are_a_startup_error() {
    let e = Verifier::new(Some("0123456789"), None, vec![])
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("OUTPOST_JWT_SECRET") && e.contains("at least 32"),
        "{e}"
    );
}

// An Ed25519 key pair (RFC 8037 appendix A.1).
const ED_D: &str = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A";
const ED_X: &str = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";

fn ed_private_pem() -> String {
    // PKCS#8 wrapping of a raw Ed25519 seed: fixed 16-byte prefix + 32-byte seed.
    let seed = URL_SAFE_NO_PAD.decode(ED_D).unwrap();
    let mut der = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    der.extend_from_slice(&seed);
    format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        STANDARD.encode(&der)
    )
}

fn ed_token(kid: &str, claims: &Value) -> String {
    let mut h = Header::new(Algorithm::EdDSA);
    h.kid = Some(kid.into());
    let key = EncodingKey::from_ed_pem(ed_private_pem().as_bytes()).unwrap();
    jsonwebtoken::encode(&h, claims, &key).unwrap()
}

#[test]
fn jwks_selects_key_by_kid_and_alg() {
    let jwks =
        json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": ED_X, "kid": "k1", "use": "sig"}]});
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
    let enc =
        json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": ED_X, "kid": "e", "use": "enc"}]});
    assert!(Verifier::new(None, Some(&enc.to_string()), vec![]).is_err());
    assert!(Verifier::new(None, None, vec![]).is_err());
}
