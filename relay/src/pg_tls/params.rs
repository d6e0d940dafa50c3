//! `sslmode` and `sslrootcert` taken out of a database URL, in both of
//! libpq's forms, leaving the rest exactly as written for tokio-postgres.

use crate::Error;

/// The TLS parameters taken out of a database URL.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SslParams {
    pub sslmode: Option<String>,
    pub sslrootcert: Option<String>,
}

const TAKEN: [&str; 2] = ["sslmode", "sslrootcert"];

/// Splits `sslmode` and `sslrootcert` off `url`, leaving the rest as written.
pub fn take_ssl_params(url: &str) -> Result<(String, SslParams), Error> {
    let mut params = SslParams::default();
    let mut keep = |key: &str, value: String| match key {
        "sslmode" => params.sslmode = Some(value),
        "sslrootcert" => params.sslrootcert = Some(value),
        _ => {}
    };
    let rest = if let Some(prefix) = ["postgres://", "postgresql://"]
        .into_iter()
        .find(|p| url.starts_with(p))
    {
        take_from_uri(url, prefix.len(), &mut keep)?
    } else {
        take_from_key_values(url, &mut keep)?
    };
    Ok((rest, params))
}

/// `postgres://user:pw@host/db?k=v&…`: parameters follow the first `?` after
/// the credentials (the same split tokio-postgres makes).
fn take_from_uri(
    url: &str,
    prefix: usize,
    keep: &mut impl FnMut(&str, String),
) -> Result<String, Error> {
    let after_creds = url[prefix..].find('@').map_or(prefix, |i| prefix + i + 1);
    let Some(q) = url[after_creds..].find('?').map(|i| after_creds + i) else {
        return Ok(url.to_string());
    };
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8()
            .map(|c| c.into_owned())
            .map_err(|_| Error::Config("invalid database URL: parameter is not UTF-8".into()))
    };
    let mut rest = Vec::new();
    for pair in url[q + 1..].split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let key = decode(k)?;
        if TAKEN.contains(&key.as_str()) {
            keep(&key, decode(v)?);
        } else {
            rest.push(pair);
        }
    }
    let mut out = url[..q].to_string();
    if !rest.is_empty() {
        out.push('?');
        out.push_str(&rest.join("&"));
    }
    Ok(out)
}

/// `host=… sslmode='verify-full'`: libpq's key/value syntax, values bare or
/// single-quoted, with backslash escapes.
fn take_from_key_values(s: &str, keep: &mut impl FnMut(&str, String)) -> Result<String, Error> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut out = String::new();
    let bad = |m: &str| Error::Config(format!("invalid database URL: {m}"));
    loop {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if i == b.len() {
            return Ok(out);
        }
        let start = i;
        while i < b.len() && !b[i].is_ascii_whitespace() && b[i] != b'=' {
            i += 1;
        }
        let key = &s[start..i];
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if b.get(i) != Some(&b'=') {
            return Err(bad(&format!("expected `=` after {key:?}")));
        }
        i += 1;
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        let quoted = b.get(i) == Some(&b'\'');
        if quoted {
            i += 1;
        }
        let mut value = String::new();
        let mut closed = !quoted;
        while i < b.len() {
            let c = b[i];
            if quoted && c == b'\'' {
                i += 1;
                closed = true;
                break;
            }
            if !quoted && c.is_ascii_whitespace() {
                break;
            }
            // Byte-wise is safe: the delimiters are ASCII and never occur
            // inside a multi-byte UTF-8 sequence.
            let from = if c == b'\\' && i + 1 < b.len() {
                i + 1
            } else {
                i
            };
            let len = utf8_len(b[from]);
            value.push_str(&s[from..from + len]);
            i = from + len;
        }
        if !closed {
            return Err(bad("unterminated quoted value"));
        }
        if TAKEN.contains(&key) {
            keep(key, value);
        } else {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(&s[start..i]);
        }
    }
}

fn utf8_len(first: u8) -> usize {
    match first {
        0xF0.. => 4,
        0xE0.. => 3,
        0xC0.. => 2,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(url: &str) -> (String, Option<String>, Option<String>) {
        let (rest, p) = take_ssl_params(url).unwrap();
        (rest, p.sslmode, p.sslrootcert)
    }

    #[test]
    fn key_value_urls_lose_only_the_tls_parameters() {
        let (rest, mode, root) = split(
            "host=db.example.com  sslmode = verify-full port=5432 \
             sslrootcert='/etc/ca dir/ca.pem' password='a b\\' c' dbname=app",
        );
        assert_eq!(mode.as_deref(), Some("verify-full"));
        assert_eq!(root.as_deref(), Some("/etc/ca dir/ca.pem"));
        assert_eq!(
            rest,
            "host=db.example.com port=5432 password='a b\\' c' dbname=app"
        );
        // What is left parses as before.
        <tokio_postgres::Config as std::str::FromStr>::from_str(
            "host=h password='a\\' b' dbname=x",
        )
        .unwrap();
        let (rest, mode, _) = split(r"host=h sslmode=re\quire");
        assert_eq!(
            (rest.as_str(), mode.as_deref()),
            ("host=h", Some("require"))
        );
        assert!(take_ssl_params("host=h sslrootcert='open").is_err());
        assert!(take_ssl_params("host=h sslmode").is_err());
    }

    #[test]
    fn uri_urls_lose_only_the_tls_parameters() {
        let (rest, mode, root) = split(
            "postgres://u:p%3Fw@db.example.com:5432/app?application_name=relay&sslmode=verify-ca&sslrootcert=%2Fca%20x.pem",
        );
        assert_eq!(mode.as_deref(), Some("verify-ca"));
        assert_eq!(root.as_deref(), Some("/ca x.pem"));
        assert_eq!(
            rest,
            "postgres://u:p%3Fw@db.example.com:5432/app?application_name=relay"
        );
        let (rest, mode, _) = split("postgresql://h/db?sslmode=require");
        assert_eq!(
            (rest.as_str(), mode.as_deref()),
            ("postgresql://h/db", Some("require"))
        );
        let (rest, mode, _) = split("postgres://h/db");
        assert_eq!((rest.as_str(), mode), ("postgres://h/db", None));
        // A `?` in the password is not where the parameters start.
        let (rest, mode, _) = split("postgres://u:a?b@h/db?sslmode=disable");
        assert_eq!(
            (rest.as_str(), mode.as_deref()),
            ("postgres://u:a?b@h/db", Some("disable"))
        );
    }
}
