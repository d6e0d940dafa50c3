//! Checksums: each op carries a u32; a bucket's checksum is the wrapping sum of its ops.
//!
//! Clients never recompute op checksums (they only add them up), so the per-op
//! function is ours to choose: the first 4 bytes (little-endian) of a blake3 digest
//! over the op's identity and data, fields separated by NUL so that no two
//! different ops can produce the same hashed byte string.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::num::Wrapping;
use std::ops::{Add, AddAssign};

/// A 32-bit checksum that adds with wraparound.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Checksum(pub u32);

impl Checksum {
    pub const ZERO: Checksum = Checksum(0);

    /// The value as the reference service prints bucket totals: a signed i32.
    pub fn as_i32(self) -> i32 {
        self.0 as i32
    }

    /// Accepts what clients accept: unsigned, signed i32, or a whole float.
    pub fn from_json(v: &serde_json::Value) -> Option<Checksum> {
        if let Some(u) = v.as_u64() {
            return u32::try_from(u).ok().map(Checksum);
        }
        if let Some(i) = v.as_i64() {
            return i32::try_from(i).ok().map(|i| Checksum(i as u32));
        }
        let f = v.as_f64()?;
        if f.fract() != 0.0 || !(i32::MIN as f64..=u32::MAX as f64).contains(&f) {
            return None;
        }
        Some(Checksum((f as i64) as u32))
    }
}

impl Add for Checksum {
    type Output = Checksum;
    fn add(self, rhs: Checksum) -> Checksum {
        Checksum((Wrapping(self.0) + Wrapping(rhs.0)).0)
    }
}

impl AddAssign for Checksum {
    fn add_assign(&mut self, rhs: Checksum) {
        *self = *self + rhs;
    }
}

impl std::iter::Sum for Checksum {
    fn sum<I: Iterator<Item = Checksum>>(iter: I) -> Checksum {
        iter.fold(Checksum::ZERO, |a, b| a + b)
    }
}

impl fmt::Display for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Serialized unsigned (as op checksums are sent).
impl Serialize for Checksum {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(self.0)
    }
}

/// Accepts what [`Checksum::from_json`] accepts, read without a
/// `serde_json::Value` in between (one per op of a large sync).
impl<'de> Deserialize<'de> for Checksum {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Checksum, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Checksum;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a 32-bit checksum")
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Checksum, E> {
                Checksum::from_json(&n.into())
                    .ok_or_else(|| E::custom(format!("invalid checksum {n}")))
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Checksum, E> {
                Checksum::from_json(&n.into())
                    .ok_or_else(|| E::custom(format!("invalid checksum {n}")))
            }
            fn visit_f64<E: serde::de::Error>(self, n: f64) -> Result<Checksum, E> {
                Checksum::from_json(&n.into())
                    .ok_or_else(|| E::custom(format!("invalid checksum {n}")))
            }
        }
        d.deserialize_any(V)
    }
}

/// Serde helper for fields sent as signed i32 (bucket totals).
pub mod signed {
    use super::Checksum;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(c: &Checksum, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i32(c.as_i32())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Checksum, D::Error> {
        Checksum::deserialize(d)
    }
}

/// The checksum of one op. `op` is `PUT` or `REMOVE`; `data` is the exact JSON text
/// sent to clients (None for REMOVE).
pub fn op_checksum(
    op: &str,
    object_type: &str,
    object_id: &str,
    subkey: &str,
    data: Option<&str>,
) -> Checksum {
    let mut h = blake3::Hasher::new();
    for part in [op, object_type, object_id, subkey] {
        h.update(part.as_bytes());
        h.update(&[0]);
    }
    if let Some(d) = data {
        h.update(d.as_bytes());
    }
    let bytes = h.finalize();
    let b = bytes.as_bytes();
    Checksum(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn wrapping_sum() {
        assert_eq!(Checksum(u32::MAX) + Checksum(2), Checksum(1));
        let total: Checksum = [Checksum(10), Checksum(u32::MAX)].into_iter().sum();
        assert_eq!(total, Checksum(9));
    }

    #[test]
    fn accepts_signed_unsigned_and_whole_floats() {
        assert_eq!(Checksum::from_json(&json!(-1)), Some(Checksum(u32::MAX)));
        assert_eq!(
            Checksum::from_json(&json!(4294967295u64)),
            Some(Checksum(u32::MAX))
        );
        assert_eq!(Checksum::from_json(&json!(12.0)), Some(Checksum(12)));
        assert_eq!(Checksum::from_json(&json!(12.5)), None);
        assert_eq!(Checksum::from_json(&json!(4294967296u64)), None);
        assert_eq!(Checksum::from_json(&json!("1")), None);
    }

    #[test]
    fn op_checksum_depends_on_every_field() {
        let base = op_checksum("PUT", "todos", "1", "s", Some("{}"));
        assert_eq!(base, op_checksum("PUT", "todos", "1", "s", Some("{}")));
        assert_ne!(base, op_checksum("REMOVE", "todos", "1", "s", None));
        assert_ne!(base, op_checksum("PUT", "todo", "s1", "s", Some("{}")));
        assert_ne!(base, op_checksum("PUT", "todos", "1", "s", Some("{ }")));
    }

    #[test]
    fn signed_serialization_of_totals() {
        #[derive(serde::Serialize)]
        struct T {
            #[serde(with = "signed")]
            c: Checksum,
        }
        assert_eq!(
            serde_json::to_string(&T {
                c: Checksum(u32::MAX)
            })
            .unwrap(),
            r#"{"c":-1}"#
        );
    }
}
