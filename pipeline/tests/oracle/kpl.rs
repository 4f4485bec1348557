//! Test support: the KPL producer side, packing user records into one aggregated Kinesis record (the
//! format `pipeline::kinesis::kpl` reads).

use bytes::Bytes;
use md5::{Digest, Md5};
use pipeline::kinesis::kpl::MAGIC;

fn put_varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_bytes(field: u64, bytes: &[u8], out: &mut Vec<u8>) {
    put_varint(field << 3 | 2, out);
    put_varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

/// Packs user records (partition key, data) into one KPL aggregated record.
pub fn aggregate(records: &[(String, Bytes)]) -> Vec<u8> {
    let mut keys: Vec<&str> = Vec::new();
    let mut body = Vec::new();
    let mut entries = Vec::new();
    for (key, data) in records {
        let index = keys.iter().position(|k| k == key).unwrap_or_else(|| {
            keys.push(key);
            keys.len() - 1
        });
        let mut r = Vec::new();
        put_varint(1 << 3, &mut r);
        put_varint(index as u64, &mut r);
        put_bytes(3, data, &mut r);
        entries.push(r);
    }
    for k in &keys {
        put_bytes(1, k.as_bytes(), &mut body);
    }
    for r in &entries {
        put_bytes(3, r, &mut body);
    }
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&body);
    out.extend_from_slice(&Md5::digest(&body));
    out
}
