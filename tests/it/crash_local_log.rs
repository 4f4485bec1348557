//! kill -9 `qoeflow serve` under load, restart it: every event that got a 2xx is in the local log,
//! every record decodes (none torn or corrupt), and the restarted server keeps appending after them.


use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_under_load_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut q = Qoeflow::serve(dir.path(), &[], &[]);
    let url = q.beacon_url();
    let acked: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().expect("client");
    let mut tasks = Vec::new();
    for worker in 0..16 {
        let (url, acked, client) = (url.clone(), acked.clone(), client.clone());
        tasks.push(tokio::spawn(async move {
            let mut seq = 0u64;
            // Each worker posts 20-event beacons for its own views until the server dies.
            for round in 0.. {
                let view = format!("w{worker}-r{}", round / 5);
                let body = beacon(&view, seq % 100, 20);
                match client.post(&url).json(&body).send().await {
                    Ok(r) if r.status().as_u16() == 204 => {
                        let mut a = acked.lock().expect("lock");
                        a.extend((seq % 100..seq % 100 + 20).map(|s| (view.clone(), s)));
                    }
                    Ok(r) => panic!("unexpected status {}", r.status()),
                    Err(_) => return round,
                }
                seq += 20;
            }
            unreachable!()
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    q.kill9();
    let mut rounds = 0;
    for t in tasks {
        rounds += t.await.expect("worker");
    }
    let acked = acked.lock().expect("lock").clone();
    assert!(rounds > 50 && acked.len() > 1000, "load was too light to mean anything ({rounds} requests)");

    // Restart: recovery truncates any torn tail; the server serves again and numbering continues.
    let mut q = Qoeflow::serve(dir.path(), &[], &[]);
    let resp = reqwest::Client::new().post(q.beacon_url()).json(&beacon("after-restart", 0, 3)).send().await.expect("post");
    assert_eq!(resp.status().as_u16(), 204);
    q.stop();

    let records = read_local_log(dir.path());
    let stored: HashSet<(String, u64)> = event_ids(&records).into_iter().collect();
    let lost: Vec<_> = acked.iter().filter(|id| !stored.contains(*id)).take(5).collect();
    assert!(lost.is_empty(), "acknowledged events lost after kill -9: {lost:?} (of {})", acked.len());
    assert!(stored.contains(&("after-restart".to_string(), 2)));
    eprintln!("{} acknowledged events from {rounds} requests all present after kill -9", acked.len());
}
