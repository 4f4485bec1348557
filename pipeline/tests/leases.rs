//! The lease table (`pipeline/src/kinesis/lease.rs`) against a real DynamoDB API: moto's server
//! (PyPI `moto[server]`, installed by `deploy/test.sh`), started here. Two workers balance four leases,
//! one stops renewing and the other takes its leases after the timeout, and the first one's checkpoint
//! is then refused (fencing).
#![cfg(feature = "kinesis")]

use std::time::{Duration, Instant};

use aws_sdk_dynamodb::config::{Credentials, Region};
use pipeline::kinesis::lease::{LeaseTable, Observed, plan};

struct Moto(std::process::Child);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_moto() -> (Moto, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = std::process::Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("moto_server (deploy/test.sh installs moto[server] from PyPI)");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "moto_server did not listen on {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
    (Moto(child), format!("http://127.0.0.1:{port}"))
}

fn table(endpoint: &str, owner: &str) -> LeaseTable {
    let config = aws_sdk_dynamodb::Config::builder()
        .behavior_version_latest()
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "test"))
        .endpoint_url(endpoint)
        .build();
    LeaseTable::new(aws_sdk_dynamodb::Client::from_conf(config), "qoeflow-leases", owner)
}

/// One balancing round of `worker`: scan, judge expiry on its own clock, take what the plan says.
async fn round(worker: &LeaseTable, seen: &mut Observed, timeout: Duration) -> usize {
    let leases = worker.scan().await.unwrap();
    let expired = seen.expired(&leases, timeout, Instant::now());
    let mut taken = 0;
    for key in plan(&leases, &expired, worker.owner()) {
        let lease = leases.iter().find(|l| l.key == key).unwrap();
        taken += usize::from(worker.take(lease).await.unwrap().is_some());
    }
    taken
}

fn owned_by(leases: &[pipeline::kinesis::lease::Lease], owner: &str) -> usize {
    leases.iter().filter(|l| l.owner.as_deref() == Some(owner)).count()
}

#[tokio::test]
async fn leases_balance_expire_on_the_takers_clock_and_fence_the_old_owner() {
    let (_moto, endpoint) = start_moto();
    let (a, b) = (table(&endpoint, "worker-a"), table(&endpoint, "worker-b"));
    let timeout = Duration::from_millis(1500);
    a.ensure_table().await.unwrap();
    b.ensure_table().await.unwrap();
    for shard in ["shardId-0", "shardId-1", "shardId-2", "shardId-3"] {
        a.ensure_lease(shard, "lineage-a").await.unwrap();
        b.ensure_lease(shard, "lineage-b").await.unwrap();
    }
    assert_eq!(a.scan().await.unwrap().len(), 4, "one lease per lineage, created once");

    // a is alone: it takes all four (unowned leases are free at once).
    let (mut seen_a, mut seen_b) = (Observed::default(), Observed::default());
    assert_eq!(round(&a, &mut seen_a, timeout).await, 4);
    // b joins: one steal per round until the share is even.
    assert_eq!(round(&b, &mut seen_b, timeout).await, 1);
    assert_eq!(round(&b, &mut seen_b, timeout).await, 1);
    assert_eq!(round(&b, &mut seen_b, timeout).await, 0);
    let leases = b.scan().await.unwrap();
    assert_eq!((owned_by(&leases, "worker-a"), owned_by(&leases, "worker-b")), (2, 2));

    // a keeps renewing what it still holds; a renewal of a lease b took is refused.
    let a_leases: Vec<_> = a.scan().await.unwrap().into_iter().filter(|l| l.owner.as_deref() == Some("worker-a")).collect();
    let stolen = leases.iter().find(|l| l.owner.as_deref() == Some("worker-b")).unwrap();
    let stale = pipeline::kinesis::lease::Lease { owner: Some("worker-a".into()), counter: stolen.counter - 1, ..stolen.clone() };
    assert_eq!(a.renew(&stale).await.unwrap(), None, "a lost this one to b");
    let mut renewed = Vec::new();
    for l in &a_leases {
        renewed.push(a.renew(l).await.unwrap().expect("a still owns it"));
    }
    // a's checkpoint lands while it holds the lease.
    let committed = a.checkpoint(&renewed[0], 7, "{\"epoch\":7}").await.unwrap().expect("a owns the lease");
    assert_eq!(committed.checkpoint, 7);

    // a stops (paused, or dead): b sees its counters stand still for the timeout and takes them.
    round(&b, &mut seen_b, timeout).await;
    let started = Instant::now();
    while owned_by(&b.scan().await.unwrap(), "worker-b") < 4 {
        assert!(started.elapsed() < timeout * 4, "b did not take a's leases within {:?}", timeout * 4);
        round(&b, &mut seen_b, timeout).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(started.elapsed() >= timeout, "not before the timeout on b's clock");
    let leases = b.scan().await.unwrap();
    let taken = leases.iter().find(|l| l.key == committed.key).unwrap();
    assert_eq!(taken.checkpoint, 7, "the lineage's checkpoint moves with its lease");
    assert_eq!(taken.state.as_deref(), Some("{\"epoch\":7}"), "with the runner's checkpoint");
    assert_eq!(taken.lineage.as_deref(), Some("lineage-a"), "the lineage id is the first creator's");

    // a resumes: its next checkpoint (and renewal) is refused.
    assert_eq!(a.checkpoint(&committed, 8, "{\"epoch\":8}").await.unwrap(), None, "fenced: a lost the lease");
    assert_eq!(a.renew(&renewed[1]).await.unwrap(), None);
    let after = b.scan().await.unwrap();
    assert_eq!(after.iter().find(|l| l.key == committed.key).unwrap().checkpoint, 7, "nothing a wrote landed");
    assert!(b.checkpoint(taken, 8, "{\"epoch\":8}").await.unwrap().is_some(), "the new owner commits");
}
