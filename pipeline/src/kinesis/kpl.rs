//! KPL aggregation: Kinesis Producer Library records pack many user records into one Kinesis record:
//!
//! ```text
//! F3 89 9A C2 | protobuf AggregatedRecord | MD5(protobuf), 16 bytes
//! AggregatedRecord { repeated string partition_key_table = 1; repeated string explicit_hash_key_table = 2;
//!                    repeated Record records = 3; }
//! Record { uint64 partition_key_index = 1; uint64 explicit_hash_key_index = 2; bytes data = 3;
//!          repeated Tag tags = 4; }
//! ```
//!
//! [`deaggregate`] returns the user records; anything without the magic, too short, with a bad digest or
//! an unparsable body is a plain record and passes through whole (what the KCL does). The producer side
//! (aggregation) is test support: `pipeline/tests/oracle/kpl.rs`.

use bytes::Bytes;
use md5::{Digest, Md5};

pub const MAGIC: [u8; 4] = [0xF3, 0x89, 0x9A, 0xC2];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub partition_key: Option<String>,
    pub data: Bytes,
    /// Index within the aggregated record (0 for a plain record).
    pub sub_sequence: u64,
}

fn varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos)?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// Iterates (field number, wire type, payload) of a protobuf message; None on malformed input.
fn fields(buf: &[u8]) -> Option<Vec<(u64, u8, &[u8], u64)>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let key = varint(buf, &mut pos)?;
        let (field, wire) = (key >> 3, (key & 7) as u8);
        match wire {
            0 => {
                let v = varint(buf, &mut pos)?;
                out.push((field, wire, &buf[0..0], v));
            }
            1 => {
                pos = pos.checked_add(8).filter(|p| *p <= buf.len())?;
            }
            2 => {
                let len = usize::try_from(varint(buf, &mut pos)?).ok()?;
                let end = pos.checked_add(len).filter(|e| *e <= buf.len())?;
                out.push((field, wire, &buf[pos..end], 0));
                pos = end;
            }
            5 => {
                pos = pos.checked_add(4).filter(|p| *p <= buf.len())?;
            }
            _ => return None,
        }
    }
    Some(out)
}

fn parse_aggregated(body: &[u8]) -> Option<Vec<UserRecord>> {
    let mut keys = Vec::new();
    let mut records = Vec::new();
    for (field, wire, payload, _) in fields(body)? {
        match (field, wire) {
            (1, 2) => keys.push(String::from_utf8(payload.to_vec()).ok()?),
            (3, 2) => records.push(payload),
            _ => {}
        }
    }
    records
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let mut key_index = None;
            let mut data = None;
            for (field, wire, payload, v) in fields(r)? {
                match (field, wire) {
                    (1, 0) => key_index = Some(v),
                    (3, 2) => data = Some(Bytes::copy_from_slice(payload)),
                    _ => {}
                }
            }
            let partition_key = match key_index {
                Some(k) => Some(keys.get(usize::try_from(k).ok()?)?.clone()),
                None => None,
            };
            Some(UserRecord { partition_key, data: data.unwrap_or_default(), sub_sequence: i as u64 })
        })
        .collect()
}

/// The user records in a Kinesis record's data.
pub fn deaggregate(data: &Bytes, partition_key: Option<&str>) -> Vec<UserRecord> {
    let plain = || vec![UserRecord { partition_key: partition_key.map(str::to_owned), data: data.clone(), sub_sequence: 0 }];
    if data.len() < MAGIC.len() + 16 || data[..4] != MAGIC {
        return plain();
    }
    let (body, digest) = data[4..].split_at(data.len() - 4 - 16);
    if Md5::digest(body).as_slice() != digest {
        return plain();
    }
    parse_aggregated(body).unwrap_or_else(plain)
}
