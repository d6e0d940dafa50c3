//! CORS for the endpoints browsers call (PowerSync's web SDK, or any page on
//! another origin): preflights are answered, and responses carry
//! `Access-Control-Allow-Origin`. Tokens travel in the `Authorization`
//! header, never in cookies, so allowing any origin (`*`, the default)
//! exposes nothing a page could not already send; a list restricts it.

use crate::Error;
use http::header::{HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use http::Method;
use std::time::Duration;
use tower_http::cors::{AllowOrigin, CorsLayer};

/// The paths a browser app calls; `/health` and `/metrics` are for operators.
pub const CLIENT_PATHS: [&str; 5] = [
    "/sync/stream",
    "/write-checkpoint2.json",
    "/sync/checkpoint-request",
    "/crud",
    "/schema",
];

/// The layer for `origins`: `["*"]` for any origin, else exact origins such
/// as `https://app.example.com` (scheme, host and port, no path).
pub fn layer(origins: &[String]) -> Result<CorsLayer, Error> {
    let origins: Vec<&str> = origins
        .iter()
        .map(|o| o.trim())
        .filter(|o| !o.is_empty())
        .collect();
    let allow = if origins.is_empty() || origins.contains(&"*") {
        AllowOrigin::any()
    } else {
        let list = origins
            .iter()
            .map(|o| {
                let host = o
                    .strip_prefix("https://")
                    .or_else(|| o.strip_prefix("http://"));
                if host.is_none_or(|h| h.is_empty() || h.contains('/')) {
                    return Err(Error::Config(format!(
                        "CORS origin {o:?} must be like https://app.example.com (scheme and host, no path)"
                    )));
                }
                HeaderValue::from_str(o)
                    .map_err(|_| Error::Config(format!("invalid CORS origin {o:?}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        AllowOrigin::list(list)
    };
    Ok(CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([
            AUTHORIZATION,
            CONTENT_TYPE,
            HeaderName::from_static("x-user-agent"),
        ])
        // Browsers cap it (Chromium at 2 h); it only saves preflights.
        .max_age(Duration::from_secs(7200)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_any_or_exact() {
        assert!(layer(&["*".into()]).is_ok());
        assert!(layer(&[]).is_ok());
        assert!(layer(&["https://a.example".into(), " http://127.0.0.1:3000".into()]).is_ok());
        for bad in ["a.example", "https://a.example/", "https://a.example/app"] {
            assert!(layer(&[bad.into()]).is_err(), "{bad}");
        }
    }
}
