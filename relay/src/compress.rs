//! Content encodings of `/sync/stream`: which one a request accepts
//! ([`Encoding::negotiate`]) and a streaming [`Encoder`] that can be flushed
//! at any line boundary, so that a client decodes everything sent so far
//! without waiting for more. The compression itself is flate2's (gzip) and
//! zstd's; this module only decides when to flush.

use bytes::Bytes;
use flate2::write::GzEncoder;
use std::io::Write;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Gzip,
    Zstd,
}

impl Encoding {
    /// The `Content-Encoding` value, `None` for identity.
    pub fn header(self) -> Option<&'static str> {
        match self {
            Encoding::Identity => None,
            Encoding::Gzip => Some("gzip"),
            Encoding::Zstd => Some("zstd"),
        }
    }

    /// The best encoding an `Accept-Encoding` value allows (RFC 9110 §12.5.3:
    /// `q` weights, `*` for codings not named, `q=0` refuses): the highest
    /// weight, zstd before gzip on a tie (it compresses better and faster).
    /// Identity when neither is acceptable or the header is absent.
    pub fn negotiate(accept: Option<&str>) -> Encoding {
        let Some(accept) = accept else {
            return Encoding::Identity;
        };
        let (mut gzip, mut zstd, mut any) = (None, None, None);
        for item in accept.split(',') {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q=").or(p.trim().strip_prefix("Q=")))
                .find_map(|v| v.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            match coding.as_str() {
                "gzip" | "x-gzip" => gzip = Some(q),
                "zstd" => zstd = Some(q),
                "*" => any = Some(q),
                _ => {}
            }
        }
        let gzip = gzip.or(any).unwrap_or(0.0);
        let zstd = zstd.or(any).unwrap_or(0.0);
        if zstd > 0.0 && zstd >= gzip {
            Encoding::Zstd
        } else if gzip > 0.0 {
            Encoding::Gzip
        } else {
            Encoding::Identity
        }
    }
}

/// zstd's level 1: on a first sync's NDJSON (1000-op data lines of row
/// JSON) it took 0.16 s of CPU for 53 MB against 0.31-0.38 s at level 3 (the
/// library's default) and compressed slightly better (16.7x vs 15.9x); the
/// negative levels cost as much CPU here and halve the ratio (8-10x). Its
/// window (at most 512 KiB) is smaller than level 3's, so any decoder
/// accepts it.
const ZSTD_LEVEL: i32 = 1;

pub enum Encoder {
    Identity,
    Gzip(GzEncoder<Vec<u8>>),
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
}

impl Encoder {
    pub fn new(encoding: Encoding) -> Encoder {
        match encoding {
            Encoding::Identity => Encoder::Identity,
            Encoding::Gzip => {
                Encoder::Gzip(GzEncoder::new(Vec::new(), flate2::Compression::fast()))
            }
            Encoding::Zstd => Encoder::Zstd(
                zstd::stream::write::Encoder::new(Vec::new(), ZSTD_LEVEL)
                    .expect("zstd accepts its default level"),
            ),
        }
    }

    /// Encodes `chunks` and flushes: the returned bytes let a decoder
    /// output every byte of `chunks`.
    pub fn encode(&mut self, chunks: &[Bytes]) -> Bytes {
        // Writing to a Vec cannot fail, and neither can the codecs on it.
        let out = match self {
            Encoder::Identity => return chunks.concat().into(),
            Encoder::Gzip(e) => {
                for c in chunks {
                    e.write_all(c).expect("in-memory write");
                }
                e.flush().expect("in-memory flush");
                e.get_mut()
            }
            Encoder::Zstd(e) => {
                for c in chunks {
                    e.write_all(c).expect("in-memory write");
                }
                e.flush().expect("in-memory flush");
                e.get_mut()
            }
        };
        Bytes::from(std::mem::take(out))
    }

    /// The end of the encoded stream (gzip's trailer, zstd's last block).
    pub fn finish(self) -> Bytes {
        match self {
            Encoder::Identity => Bytes::new(),
            Encoder::Gzip(e) => e.finish().expect("in-memory finish").into(),
            Encoder::Zstd(e) => e.finish().expect("in-memory finish").into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn negotiation_follows_weights() {
        use Encoding::*;
        let n = |s| Encoding::negotiate(Some(s));
        assert_eq!(Encoding::negotiate(None), Identity);
        // What PowerSync's node client sends, and what browsers send.
        assert_eq!(n("gzip, deflate"), Gzip);
        assert_eq!(n("gzip, deflate, br, zstd"), Zstd);
        assert_eq!(n("zstd;q=0.5, gzip"), Gzip);
        assert_eq!(n("gzip;q=0, zstd;q=0"), Identity);
        assert_eq!(n("*"), Zstd);
        assert_eq!(n("*;q=0.1, zstd;q=0"), Gzip);
        assert_eq!(n("identity"), Identity);
        assert_eq!(n("br"), Identity);
        assert_eq!(n("GZIP ; Q=0.8"), Gzip);
        assert_eq!(n(""), Identity);
    }

    /// What a decoder outputs from the bytes it has so far (ignoring that
    /// the stream has not ended).
    fn decode_so_far(encoding: Encoding, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        match encoding {
            Encoding::Gzip => {
                let mut d = flate2::read::GzDecoder::new(bytes);
                while let Ok(n) = d.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    out.extend_from_slice(&buf[..n]);
                }
            }
            Encoding::Zstd => {
                let mut d = zstd::stream::read::Decoder::new(bytes).unwrap();
                while let Ok(n) = d.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    out.extend_from_slice(&buf[..n]);
                }
            }
            Encoding::Identity => out.extend_from_slice(bytes),
        }
        out
    }

    #[test]
    fn each_flush_makes_everything_sent_so_far_decodable() {
        for encoding in [Encoding::Gzip, Encoding::Zstd, Encoding::Identity] {
            let mut e = Encoder::new(encoding);
            let mut wire = Vec::new();
            let mut plain = Vec::new();
            for i in 0..50 {
                let line = Bytes::from(format!(
                    "{{\"data\":{{\"op_id\":\"{i}\",\"v\":\"{}\"}}}}\n",
                    "x".repeat(i)
                ));
                plain.extend_from_slice(&line);
                wire.extend_from_slice(&e.encode(&[line]));
                assert_eq!(
                    decode_so_far(encoding, &wire),
                    plain,
                    "{encoding:?} after line {i}"
                );
            }
            wire.extend_from_slice(&e.finish());
            assert_eq!(decode_so_far(encoding, &wire), plain);
            if encoding != Encoding::Identity {
                assert!(
                    wire.len() < plain.len() / 2,
                    "{encoding:?}: {} of {}",
                    wire.len(),
                    plain.len()
                );
            }
        }
    }
}
