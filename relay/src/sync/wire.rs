//! Data lines written straight into the stream's buffer, byte for byte what
//! `SyncLine::Data(line).to_ndjson()` gives (the tests compare the two),
//! without serde's machinery or a `String` per line in between: a first
//! sync is a million ops, and each op's `data` is JSON inside a JSON string,
//! so escaping it is most of the relay's serializing (CONTRIBUTING.md,
//! "Relay streaming").

use outpost_protocol::{DataLine, OpId, OpType, OplogEntry};

/// Appends `{"data":{…}}\n` for `line` to `out`.
pub fn write_data_line(out: &mut Vec<u8>, line: &DataLine) {
    // Roughly the line's size, so the buffer grows once per line at most.
    let payload: usize = line
        .data
        .iter()
        .map(|o| {
            96 + o.data.as_ref().map_or(0, |d| d.len() + d.len() / 4)
                + o.object_id.as_ref().map_or(0, String::len)
                + o.subkey.as_ref().map_or(0, String::len)
        })
        .sum();
    out.reserve(64 + line.bucket.len() + payload);
    out.extend_from_slice(br#"{"data":{"bucket":"#);
    write_str(out, &line.bucket);
    out.extend_from_slice(if line.has_more {
        br#","has_more":true"#.as_slice()
    } else {
        br#","has_more":false"#.as_slice()
    });
    if let Some(a) = line.after {
        out.extend_from_slice(br#","after":"#);
        write_op_id(out, a);
    }
    if let Some(a) = line.next_after {
        out.extend_from_slice(br#","next_after":"#);
        write_op_id(out, a);
    }
    out.extend_from_slice(br#","data":["#);
    for (i, op) in line.data.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_op(out, op);
    }
    out.extend_from_slice(b"]}}\n");
}

fn write_op(out: &mut Vec<u8>, op: &OplogEntry) {
    out.extend_from_slice(br#"{"op_id":"#);
    write_op_id(out, op.op_id);
    out.extend_from_slice(match op.op {
        OpType::Put => br#","op":"PUT""#.as_slice(),
        OpType::Remove => br#","op":"REMOVE""#.as_slice(),
        OpType::Move => br#","op":"MOVE""#.as_slice(),
        OpType::Clear => br#","op":"CLEAR""#.as_slice(),
    });
    if let Some(t) = &op.object_type {
        out.extend_from_slice(br#","object_type":"#);
        write_str(out, t);
    }
    if let Some(id) = &op.object_id {
        out.extend_from_slice(br#","object_id":"#);
        write_str(out, id);
    }
    if let Some(k) = &op.subkey {
        out.extend_from_slice(br#","subkey":"#);
        write_str(out, k);
    }
    out.extend_from_slice(br#","checksum":"#);
    write_u64(out, u64::from(op.checksum.0));
    if let Some(d) = &op.data {
        out.extend_from_slice(br#","data":"#);
        write_str(out, d);
    }
    out.push(b'}');
}

/// An op id as the protocol sends it: a decimal string.
fn write_op_id(out: &mut Vec<u8>, id: OpId) {
    out.push(b'"');
    write_u64(out, id.0);
    out.push(b'"');
}

fn write_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// What each byte becomes inside a JSON string, as serde_json writes it:
/// 0 = itself, `u` = `\u00XX`, anything else = that letter after a backslash.
const ESCAPE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = b'u';
        i += 1;
    }
    t[0x08] = b'b';
    t[0x09] = b't';
    t[0x0a] = b'n';
    t[0x0c] = b'f';
    t[0x0d] = b'r';
    t[b'"' as usize] = b'"';
    t[b'\\' as usize] = b'\\';
    t
};

/// `s` as a JSON string literal: runs of plain bytes are copied whole.
fn write_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    out.push(b'"');
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let e = ESCAPE[b as usize];
        if e == 0 {
            continue;
        }
        out.extend_from_slice(&bytes[start..i]);
        if e == b'u' {
            out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[(b >> 4) as usize],
                HEX[(b & 0xf) as usize],
            ]);
        } else {
            out.extend_from_slice(&[b'\\', e]);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_protocol::{Checksum, SyncLine};

    fn entry(op: OpType, fields: [Option<&str>; 4], checksum: u32, id: u64) -> OplogEntry {
        let [object_type, object_id, subkey, data] = fields.map(|f| f.map(String::from));
        OplogEntry {
            op_id: OpId(id),
            op,
            object_type,
            object_id,
            subkey,
            checksum: Checksum(checksum),
            data,
        }
    }

    fn same_as_serde(line: DataLine) {
        let mut out = b"prefix\n".to_vec();
        write_data_line(&mut out, &line);
        let expected = format!("prefix\n{}", SyncLine::Data(line).to_ndjson());
        assert_eq!(String::from_utf8(out).unwrap(), expected);
    }

    #[test]
    fn every_byte_escapes_as_serde_json_does() {
        let all: String = (0u32..0x80)
            .filter_map(char::from_u32)
            .chain("é😀\u{2028}\u{7f}".chars())
            .collect();
        same_as_serde(DataLine {
            bucket: format!("b[\"{all}\"]"),
            has_more: true,
            after: Some(OpId(0)),
            next_after: Some(OpId(u64::MAX)),
            data: vec![
                entry(
                    OpType::Put,
                    [Some("todos"), Some(&all), Some(&all), Some(&all)],
                    u32::MAX,
                    7,
                ),
                entry(
                    OpType::Put,
                    [
                        Some("t"),
                        Some("1"),
                        None,
                        Some(r#"{"id" : "t1", "x" : "a\"b\\c"}"#),
                    ],
                    0,
                    8,
                ),
            ],
        });
    }

    #[test]
    fn optional_fields_and_op_types() {
        same_as_serde(DataLine {
            bucket: "b[]".into(),
            has_more: false,
            after: None,
            next_after: None,
            data: vec![
                entry(
                    OpType::Remove,
                    [Some("t"), Some("1"), Some("k"), None],
                    5,
                    1,
                ),
                entry(OpType::Move, [None, None, None, None], 6, 2),
                entry(OpType::Clear, [None, None, None, None], 7, 3),
                entry(OpType::Put, [None, None, None, Some("")], 8, 4),
            ],
        });
        same_as_serde(DataLine {
            bucket: String::new(),
            has_more: false,
            after: Some(OpId(3)),
            next_after: None,
            data: vec![],
        });
    }
}
