#![cfg(feature = "kinesis")]
//! KPL deaggregation against the producer side in `oracle/kpl.rs`.

#[path = "oracle/kpl.rs"]
mod producer;

use bytes::Bytes;
use md5::{Digest, Md5};
use pipeline::kinesis::kpl::{MAGIC, UserRecord, deaggregate};
use producer::aggregate;

#[test]
fn roundtrip_and_passthrough() {
    let recs: Vec<(String, Bytes)> =
        (0..5).map(|i| (format!("view-{}", i % 2), Bytes::from(format!("payload {i}")))).collect();
    let agg = Bytes::from(aggregate(&recs));
    let out = deaggregate(&agg, Some("ignored"));
    assert_eq!(out.len(), 5);
    for (i, (u, (k, d))) in out.iter().zip(&recs).enumerate() {
        assert_eq!((u.partition_key.as_deref(), &u.data, u.sub_sequence), (Some(k.as_str()), d, i as u64));
    }
    // Plain records, a bad digest and garbage after the magic all pass through whole.
    let plain = Bytes::from_static(b"QF\x01\x00{}");
    assert_eq!(deaggregate(&plain, Some("k")), vec![UserRecord { partition_key: Some("k".into()), data: plain.clone(), sub_sequence: 0 }]);
    let mut bad = agg.to_vec();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    let bad = Bytes::from(bad);
    assert_eq!(deaggregate(&bad, None)[0].data, bad);
    let mut junk = MAGIC.to_vec();
    junk.extend_from_slice(&[0xff; 3]);
    junk.extend_from_slice(&Md5::digest([0xff; 3]));
    let junk = Bytes::from(junk);
    assert_eq!(deaggregate(&junk, None)[0].data, junk);
}
