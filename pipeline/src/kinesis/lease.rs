//! Shard-lineage leases in a DynamoDB table, the Kinesis Client Library's way: what the elastic
//! pipeline workers ([`super::elastic`]) coordinate through.
//!
//! - **One item per lease** (a shard lineage, keyed by its root shard id): `leaseKey`, `leaseOwner`,
//!   `leaseCounter`, `lineage` (a random id given at creation: the lineage's row identity, so a lease
//!   table created anew never reuses an old one's file names), `checkpoint` (the last committed epoch)
//!   and `checkpointState` (the runner's checkpoint of that epoch: positions and staged files, JSON).
//! - **Renewing** a lease is a conditional update `leaseOwner = me AND leaseCounter = c` that sets the
//!   counter to `c + 1`; the owner renews every third of the lease timeout.
//! - **Expiry** is judged on the observer's own clock, with no trust in other machines' clocks: a lease
//!   whose counter has not changed for the lease timeout since this worker first saw that counter is
//!   expired ([`Observed`]).
//! - **Taking** a lease is a conditional update on the counter seen, so of two workers taking it at once
//!   one wins. [`plan`] takes expired leases first, then, if this worker holds fewer than
//!   ⌈leases / workers⌉, steals one from the most loaded worker per round (KCL's balancing).
//! - **Fencing**: a checkpoint is a conditional update on (owner, counter) too. A worker that lost its
//!   lease (paused past the timeout, then resumed) has its checkpoint refused: [`LeaseTable::checkpoint`]
//!   returns `None`, and the caller must not publish the epoch.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
};

/// One lease as the table holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub key: String,
    pub owner: Option<String>,
    pub counter: u64,
    pub checkpoint: u64,
    /// The lineage's id, given when the lease was created.
    pub lineage: Option<String>,
    /// The runner's checkpoint of epoch `checkpoint` (JSON), absent before the first commit.
    pub state: Option<String>,
}

/// The lease table, as seen by one worker (`owner`).
#[derive(Clone)]
pub struct LeaseTable {
    client: Client,
    table: String,
    owner: String,
}

fn sdk_error<E: std::fmt::Display>(op: &str, table: &str, e: E) -> crate::Error {
    crate::Error::msg(format!("DynamoDB {op} on {table}: {e}"))
}

fn num(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn lease_of(item: &HashMap<String, AttributeValue>) -> Option<Lease> {
    let n = |k: &str| item.get(k).and_then(|v| v.as_n().ok()).and_then(|n| n.parse().ok());
    Some(Lease {
        key: item.get("leaseKey")?.as_s().ok()?.clone(),
        owner: item.get("leaseOwner").and_then(|v| v.as_s().ok()).cloned(),
        counter: n("leaseCounter")?,
        checkpoint: n("checkpoint").unwrap_or(0),
        lineage: item.get("lineage").and_then(|v| v.as_s().ok()).cloned(),
        state: item.get("checkpointState").and_then(|v| v.as_s().ok()).cloned(),
    })
}

impl LeaseTable {
    pub fn new(client: Client, table: impl Into<String>, owner: impl Into<String>) -> LeaseTable {
        LeaseTable { client, table: table.into(), owner: owner.into() }
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Creates the table (on-demand capacity) unless it exists, and waits until it is active.
    pub async fn ensure_table(&self) -> crate::Result<()> {
        let created = self
            .client
            .create_table()
            .table_name(&self.table)
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name("leaseKey")
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .map_err(|e| sdk_error("CreateTable", &self.table, e))?,
            )
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name("leaseKey")
                    .key_type(KeyType::Hash)
                    .build()
                    .map_err(|e| sdk_error("CreateTable", &self.table, e))?,
            )
            .billing_mode(BillingMode::PayPerRequest)
            .send()
            .await;
        match created {
            Ok(_) => {}
            Err(e) if e.as_service_error().is_some_and(|s| s.is_resource_in_use_exception()) => {}
            Err(e) => return Err(sdk_error("CreateTable", &self.table, aws_sdk_dynamodb::error::DisplayErrorContext(e))),
        }
        for _ in 0..100 {
            let out = self.client.describe_table().table_name(&self.table).send().await;
            let status = out.ok().and_then(|o| o.table().and_then(|t| t.table_status().cloned()));
            if status == Some(aws_sdk_dynamodb::types::TableStatus::Active) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(crate::Error::msg(format!("DynamoDB table {} did not become active", self.table)))
    }

    /// Adds a lease for `key` unless it exists (every worker may call it for every lineage it lists),
    /// with `lineage` as its id if it is created now.
    pub async fn ensure_lease(&self, key: &str, lineage: &str) -> crate::Result<()> {
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("leaseKey", AttributeValue::S(key.to_owned()))
            .item("leaseCounter", num(0))
            .item("checkpoint", num(0))
            .item("lineage", AttributeValue::S(lineage.to_owned()))
            .condition_expression("attribute_not_exists(leaseKey)")
            .send()
            .await;
        match put {
            Ok(_) => Ok(()),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_conditional_check_failed_exception()) => Ok(()),
            Err(e) => Err(sdk_error("PutItem", &self.table, aws_sdk_dynamodb::error::DisplayErrorContext(e))),
        }
    }

    /// Every lease, read consistently, sorted by key.
    pub async fn scan(&self) -> crate::Result<Vec<Lease>> {
        let mut leases = Vec::new();
        let mut start: Option<HashMap<String, AttributeValue>> = None;
        // Bounded: a lease table holds one item per shard lineage; 10,000 pages is far past any stream.
        for _ in 0..10_000 {
            let out = self
                .client
                .scan()
                .table_name(&self.table)
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| sdk_error("Scan", &self.table, aws_sdk_dynamodb::error::DisplayErrorContext(e)))?;
            leases.extend(out.items().iter().filter_map(lease_of));
            match out.last_evaluated_key() {
                Some(k) if !k.is_empty() => start = Some(k.clone()),
                _ => break,
            }
        }
        leases.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(leases)
    }

    /// One conditional update of `lease` from the state seen: this worker as owner (or none, with
    /// `release`), counter + 1, and with `commit` the new checkpoint; conditional on the counter seen
    /// and, with `must_own`, on this worker owning it. None: the condition failed.
    async fn update(&self, lease: &Lease, must_own: bool, release: bool, commit: Option<(u64, &str)>) -> crate::Result<Option<Lease>> {
        let mut set = vec!["leaseCounter = :next"];
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("leaseKey", AttributeValue::S(lease.key.clone()))
            .expression_attribute_values(":me", AttributeValue::S(self.owner.clone()))
            .expression_attribute_values(":seen", num(lease.counter))
            .expression_attribute_values(":next", num(lease.counter + 1));
        if !release {
            set.push("leaseOwner = :me");
        }
        if let Some((epoch, state)) = commit {
            set.extend(["checkpoint = :ckpt", "checkpointState = :state"]);
            req = req
                .expression_attribute_values(":ckpt", num(epoch))
                .expression_attribute_values(":state", AttributeValue::S(state.to_owned()));
        }
        let mut expression = format!("SET {}", set.join(", "));
        if release {
            expression.push_str(" REMOVE leaseOwner");
        }
        req = req.update_expression(expression);
        req = if must_own {
            req.condition_expression("leaseOwner = :me AND leaseCounter = :seen")
        } else {
            req.condition_expression("leaseCounter = :seen")
        };
        match req.send().await {
            Ok(_) => {
                let mut next = Lease { owner: (!release).then(|| self.owner.clone()), counter: lease.counter + 1, ..lease.clone() };
                if let Some((epoch, state)) = commit {
                    (next.checkpoint, next.state) = (epoch, Some(state.to_owned()));
                }
                Ok(Some(next))
            }
            Err(e) if e.as_service_error().is_some_and(|s| s.is_conditional_check_failed_exception()) => Ok(None),
            Err(e) => Err(sdk_error("UpdateItem", &self.table, aws_sdk_dynamodb::error::DisplayErrorContext(e))),
        }
    }

    /// Renews a lease this worker holds. None: it was lost.
    pub async fn renew(&self, lease: &Lease) -> crate::Result<Option<Lease>> {
        self.update(lease, true, false, None).await
    }

    /// Takes a lease from the state seen (expired, unowned, or stolen). None: someone else moved first.
    pub async fn take(&self, lease: &Lease) -> crate::Result<Option<Lease>> {
        self.update(lease, false, false, None).await
    }

    /// Records `epoch` (with the runner's checkpoint `state`) as the lineage's committed epoch, fenced:
    /// None if this worker no longer holds the lease as seen (its epoch must then not be published).
    pub async fn checkpoint(&self, lease: &Lease, epoch: u64, state: &str) -> crate::Result<Option<Lease>> {
        self.update(lease, true, false, Some((epoch, state))).await
    }

    /// Gives a held lease up (a clean shutdown): unowned, any worker takes it at once.
    pub async fn release(&self, lease: &Lease) -> crate::Result<Option<Lease>> {
        self.update(lease, true, true, None).await
    }
}

/// A lease this worker holds, shared by the coordinator (which renews it) and the lineage's runner
/// (which commits through it): one update at a time, so each sees the counter the other left.
pub struct Held {
    table: LeaseTable,
    lease: tokio::sync::Mutex<Lease>,
    /// When the last successful update was sent: no other worker can judge the lease expired before
    /// `timeout` after it, on any clock that runs at about the rate of this one.
    since: std::sync::Mutex<Instant>,
    timeout: Duration,
    lost: AtomicBool,
    /// When the update that took the lease was sent.
    taken: Instant,
}

impl Held {
    /// A lease just taken (or renewed) by an update sent at `sent`.
    pub fn new(table: LeaseTable, lease: Lease, sent: Instant, timeout: Duration) -> Held {
        Held { table, lease: tokio::sync::Mutex::new(lease), since: std::sync::Mutex::new(sent), timeout, lost: AtomicBool::new(false), taken: sent }
    }

    pub async fn lease(&self) -> Lease {
        self.lease.lock().await.clone()
    }

    /// Lost: an update was refused (another worker took the lease).
    pub fn lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    /// Whether this worker may still write for the lineage: not lost, and renewed recently enough that
    /// no other worker can have taken it (a quarter of the timeout is kept as a margin for the write
    /// itself). A worker paused past its timeout finds this false when it resumes.
    pub fn valid(&self) -> bool {
        let since = *self.since.lock().unwrap_or_else(|p| p.into_inner());
        !self.lost() && since.elapsed() < self.timeout - self.timeout / 4
    }

    /// Whether whoever held the lease before can no longer be writing for the lineage: a lease timeout
    /// has passed since it was taken. The previous holder's last update came before the take, and its
    /// [`Held::valid`] turns false within three quarters of a timeout after its last update; a lease
    /// stolen for balance was still fresh on its holder, which learns of the loss only at its next update.
    pub fn settled(&self) -> bool {
        self.taken.elapsed() >= self.timeout
    }

    async fn update(&self, op: Op<'_>) -> crate::Result<bool> {
        let mut lease = self.lease.lock().await;
        if self.lost() {
            return Ok(false);
        }
        let sent = Instant::now();
        let next = match op {
            Op::Renew => self.table.renew(&lease).await?,
            Op::Checkpoint(epoch, state) => self.table.checkpoint(&lease, epoch, state).await?,
            Op::Release => self.table.release(&lease).await?,
        };
        match next {
            Some(next) => {
                *lease = next;
                *self.since.lock().unwrap_or_else(|p| p.into_inner()) = sent;
                Ok(true)
            }
            None => {
                self.lost.store(true, Ordering::SeqCst);
                Ok(false)
            }
        }
    }

    /// Renews the lease; false: it was lost.
    pub async fn renew(&self) -> crate::Result<bool> {
        self.update(Op::Renew).await
    }

    /// Commits `epoch` with the runner's checkpoint; false: fenced (the lease was lost).
    pub async fn checkpoint(&self, epoch: u64, state: &str) -> crate::Result<bool> {
        self.update(Op::Checkpoint(epoch, state)).await
    }

    /// Gives the lease up (after its runner stopped).
    pub async fn release(&self) -> crate::Result<bool> {
        let released = self.update(Op::Release).await?;
        self.lost.store(true, Ordering::SeqCst);
        Ok(released)
    }
}

enum Op<'a> {
    Renew,
    Checkpoint(u64, &'a str),
    Release,
}

impl crate::runner::Fence for std::sync::Arc<Held> {
    async fn committed(&self) -> Option<String> {
        self.lease().await.state
    }

    async fn commit(&self, epoch: u64, checkpoint: &str) -> crate::Result<bool> {
        self.checkpoint(epoch, checkpoint).await
    }

    fn valid(&self) -> bool {
        Held::valid(self)
    }

    async fn confirm(&self) -> crate::Result<bool> {
        self.renew().await
    }

    fn settled(&self) -> bool {
        Held::settled(self)
    }
}

/// What one worker has seen of the leases' counters, and since when (its own clock).
#[derive(Debug, Default)]
pub struct Observed {
    seen: HashMap<String, (u64, Instant)>,
}

impl Observed {
    /// Notes the leases of a scan; returns those expired: unowned, or whose counter has not moved for
    /// `timeout` since this worker first saw it.
    pub fn expired(&mut self, leases: &[Lease], timeout: Duration, now: Instant) -> Vec<String> {
        self.seen.retain(|k, _| leases.iter().any(|l| &l.key == k));
        let mut out = Vec::new();
        for l in leases {
            let entry = self.seen.entry(l.key.clone()).or_insert((l.counter, now));
            if entry.0 != l.counter {
                *entry = (l.counter, now);
            }
            if l.owner.is_none() || now.duration_since(entry.1) >= timeout {
                out.push(l.key.clone());
            }
        }
        out
    }
}

/// The leases `me` should take now: expired ones up to its fair share ⌈leases / live workers⌉; failing
/// that, one from the most loaded live worker (see the rule below).
pub fn plan(leases: &[Lease], expired: &[String], me: &str) -> Vec<String> {
    let mut load: BTreeMap<&str, usize> = BTreeMap::new();
    load.insert(me, 0);
    for l in leases.iter().filter(|l| !expired.contains(&l.key)) {
        if let Some(owner) = &l.owner {
            *load.entry(owner).or_default() += 1;
        }
    }
    let target = leases.len().div_ceil(load.len().max(1));
    let mine = load[me];
    if mine >= target {
        return Vec::new();
    }
    let take: Vec<String> = expired.iter().take(target - mine).cloned().collect();
    if !take.is_empty() {
        return take;
    }
    let Some((busiest, &most)) = load.iter().filter(|(o, _)| **o != me).max_by_key(|(o, n)| (**n, std::cmp::Reverse(**o))) else {
        return Vec::new();
    };
    // The KCL's rule: steal when the busiest holds more than the share, or the share itself while this
    // worker is more than one lease short (so 4 leases over 3 workers settle at 2/1/1, not 2/2/0).
    let need = target - mine;
    if most >= target + usize::from(need <= 1) {
        if let Some(l) = leases.iter().find(|l| l.owner.as_deref() == Some(busiest)) {
            return vec![l.key.clone()];
        }
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(key: &str, owner: Option<&str>, counter: u64) -> Lease {
        Lease { key: key.into(), owner: owner.map(str::to_owned), counter, checkpoint: 0, lineage: None, state: None }
    }

    #[test]
    fn expiry_is_judged_on_the_observers_clock_and_plans_balance_to_the_fair_share() {
        let t0 = Instant::now();
        let timeout = Duration::from_secs(10);
        let mut seen = Observed::default();
        let leases = vec![lease("s0", Some("a"), 5), lease("s1", Some("a"), 7), lease("s2", None, 0), lease("s3", Some("a"), 1)];
        assert_eq!(seen.expired(&leases, timeout, t0), vec!["s2".to_string()], "an unowned lease is free at once");
        // s1 keeps being renewed; the others stand still past the timeout.
        let later = vec![lease("s0", Some("a"), 5), lease("s1", Some("a"), 9), lease("s2", None, 0), lease("s3", Some("a"), 1)];
        assert_eq!(seen.expired(&later, timeout, t0 + Duration::from_secs(5)), vec!["s2".to_string()]);
        let expired = seen.expired(&later, timeout, t0 + Duration::from_secs(11));
        assert_eq!(expired, vec!["s0".to_string(), "s2".into(), "s3".into()], "s1 moved at 5 s: not expired yet");
        // b is alone besides a's one live lease: its share is ⌈4 / 2⌉ = 2, taken from the expired ones.
        assert_eq!(plan(&later, &expired, "b"), vec!["s0".to_string(), "s2".into()]);
        // Nothing expired: b steals one from a, which holds more than its share.
        let held = vec![lease("s0", Some("a"), 1), lease("s1", Some("a"), 1), lease("s2", Some("a"), 1), lease("s3", Some("b"), 1)];
        assert_eq!(plan(&held, &[], "b"), vec!["s0".to_string()]);
        let balanced = vec![lease("s0", Some("b"), 2), lease("s1", Some("a"), 1), lease("s2", Some("a"), 1), lease("s3", Some("b"), 1)];
        assert!(plan(&balanced, &[], "b").is_empty() && plan(&balanced, &[], "a").is_empty());
        // A third worker joining takes ⌈4 / 3⌉ = 2 over time, one steal per round.
        assert_eq!(plan(&balanced, &[], "c").len(), 1);
    }
}
