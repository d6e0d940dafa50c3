//! Response body decoding (sans-IO): `Content-Encoding: gzip` or `zstd` streams
//! are inflated chunk by chunk as they arrive, so lines are handed on as soon as
//! their compressed bytes are in (the relay flushes per checkpoint).

use crate::error::{Error, Result};
use std::borrow::Cow;
use std::io::Write;

/// What the client asks for on `/sync/stream`.
pub const ACCEPT_ENCODING: &str = "zstd, gzip";

/// An incremental decoder for one response body.
pub enum BodyDecoder {
    Identity,
    Gzip(Box<flate2::write::GzDecoder<Vec<u8>>>),
    Zstd(Box<zstd::stream::write::Decoder<'static, Vec<u8>>>),
}

impl BodyDecoder {
    /// The decoder for a `Content-Encoding` header value (`None`: absent).
    pub fn for_encoding(encoding: Option<&str>) -> Result<BodyDecoder> {
        match encoding.map(|e| e.trim().to_ascii_lowercase()).as_deref() {
            None | Some("") | Some("identity") => Ok(BodyDecoder::Identity),
            Some("gzip") | Some("x-gzip") => Ok(BodyDecoder::Gzip(Box::new(
                flate2::write::GzDecoder::new(Vec::new()),
            ))),
            Some("zstd") => Ok(BodyDecoder::Zstd(Box::new(
                zstd::stream::write::Decoder::new(Vec::new())
                    .map_err(|e| Error::Transport(format!("zstd: {e}")))?,
            ))),
            Some(other) => Err(Error::Transport(format!(
                "unsupported Content-Encoding {other:?}"
            ))),
        }
    }

    /// Feeds compressed bytes; returns the decoded bytes available so far.
    pub fn push<'a>(&mut self, chunk: &'a [u8]) -> Result<Cow<'a, [u8]>> {
        let bad = |what: &str, e: std::io::Error| Error::Transport(format!("{what} stream: {e}"));
        match self {
            BodyDecoder::Identity => Ok(Cow::Borrowed(chunk)),
            BodyDecoder::Gzip(d) => {
                d.write_all(chunk).map_err(|e| bad("gzip", e))?;
                d.flush().map_err(|e| bad("gzip", e))?;
                Ok(Cow::Owned(std::mem::take(d.get_mut())))
            }
            BodyDecoder::Zstd(d) => {
                d.write_all(chunk).map_err(|e| bad("zstd", e))?;
                d.flush().map_err(|e| bad("zstd", e))?;
                Ok(Cow::Owned(std::mem::take(d.get_mut())))
            }
        }
    }

    /// At the end of the body: a compressed stream cut short is an error.
    pub fn finish(&mut self) -> Result<Vec<u8>> {
        match self {
            BodyDecoder::Identity => Ok(vec![]),
            BodyDecoder::Gzip(d) => {
                d.try_finish()
                    .map_err(|e| Error::Transport(format!("gzip stream: {e}")))?;
                Ok(std::mem::take(d.get_mut()))
            }
            // A zstd frame that ended early leaves the decoder mid-frame; the
            // line splitter then reports the truncated line.
            BodyDecoder::Zstd(d) => {
                d.flush()
                    .map_err(|e| Error::Transport(format!("zstd stream: {e}")))?;
                Ok(std::mem::take(d.get_mut()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn decodes_gzip_and_zstd_split_anywhere() {
        let text: Vec<u8> = (0..2000)
            .flat_map(|i| format!("{{\"line\":{i}}}\n").into_bytes())
            .collect();
        for (enc, packed) in [
            ("gzip", gzip(&text)),
            ("zstd", zstd::encode_all(&text[..], 3).unwrap()),
            ("identity", text.clone()),
        ] {
            for step in [1, 7, 4096] {
                let mut d = BodyDecoder::for_encoding(Some(enc)).unwrap();
                let mut out = vec![];
                for c in packed.chunks(step) {
                    out.extend_from_slice(&d.push(c).unwrap());
                }
                out.extend(d.finish().unwrap());
                assert_eq!(out, text, "{enc} in chunks of {step}");
            }
        }
    }

    #[test]
    fn decoded_bytes_arrive_before_the_stream_ends() {
        // A flushed first part decodes without the rest (latency stays per line).
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(b"first\n").unwrap();
        e.flush().unwrap();
        let head = e.get_ref().clone();
        let mut d = BodyDecoder::for_encoding(Some("gzip")).unwrap();
        assert_eq!(&*d.push(&head).unwrap(), b"first\n");
    }

    #[test]
    fn corrupt_or_unknown_is_an_error() {
        assert!(BodyDecoder::for_encoding(Some("br")).is_err());
        let mut d = BodyDecoder::for_encoding(Some("gzip")).unwrap();
        assert!(d.push(b"this is not gzip at all").is_err());
        let mut d = BodyDecoder::for_encoding(Some("gzip")).unwrap();
        let packed = gzip(b"abc\n");
        d.push(&packed[..packed.len() - 4]).unwrap();
        assert!(d.finish().is_err(), "a truncated gzip stream");
    }
}
