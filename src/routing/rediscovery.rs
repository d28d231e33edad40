//! Asking a pool's discovery for a fresh DNS answer at once, and waiting for it.
//!
//! Replicas look DNS up on their own schedules (each answer's TTL), so right after a shard is
//! added one replica may place a room on it while another has not discovered it yet. That
//! other replica, given the placement (`[peers]`), asks its discovery to look up now and waits
//! (bounded) for the answer, instead of placing the room again on a shard it knows: one room,
//! one shard, on every replica.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// How long a request waits, at most, for the lookup it asked for.
pub const WAIT: Duration = Duration::from_secs(2);

pub struct Rediscovery {
    asked: Notify,
    /// Lookups finished (a counter; its changes wake the requests waiting).
    answered: watch::Sender<u64>,
    /// How far behind another replica's DNS answers this one's can be (its longest wait
    /// between lookups), in ms; 0 while no DNS discovery runs for the pool (its members are
    /// listed: a lookup cannot find a new name).
    lag_ms: AtomicU64,
    /// Shards a fresh lookup did not name (replicas with different DNS or config), with when
    /// (Unix ms) to wait for them again: a room placed there by another replica is placed here
    /// at once meanwhile, not after another wait at each of that replica's refreshes.
    not_found: Mutex<HashMap<Arc<str>, u64>>,
}

/// The most shard names remembered as not found (more are forgotten all at once).
const NOT_FOUND_LIMIT: usize = 1024;

impl Default for Rediscovery {
    fn default() -> Self {
        Rediscovery {
            asked: Notify::new(),
            answered: watch::Sender::new(0),
            lag_ms: AtomicU64::new(0),
            not_found: Mutex::new(HashMap::new()),
        }
    }
}

impl Rediscovery {
    /// Discovery's side: the pool's members are named by DNS, looked up at least every
    /// `max_wait`.
    pub fn discovering(&self, max_wait: Duration) {
        self.lag_ms
            .store(max_wait.as_millis() as u64, Ordering::Relaxed);
    }

    /// Whether placements may name shards this replica has not discovered yet (its members
    /// are named by DNS).
    pub fn applies(&self) -> bool {
        self.lag_ms.load(Ordering::Relaxed) > 0
    }

    /// Whether a placement made at `placed_at_ms` on `shard`, unknown here, may name a shard
    /// this replica has not discovered yet (rather than one long gone, or another config's).
    pub fn may_be_new(&self, shard: &str, placed_at_ms: u64, unix_ms: u64) -> bool {
        let lag = self.lag_ms.load(Ordering::Relaxed);
        if lag == 0 || unix_ms.saturating_sub(placed_at_ms) > lag {
            return false;
        }
        let not_found = self.not_found.lock().unwrap_or_else(|e| e.into_inner());
        not_found.get(shard).is_none_or(|until| unix_ms >= *until)
    }

    /// A wait for `shard` ended without it: placements on it are not waited for again until
    /// the placements of now are too old to be waited for anyway.
    pub fn not_found(&self, shard: Arc<str>, unix_ms: u64) {
        let lag = self.lag_ms.load(Ordering::Relaxed);
        let mut not_found = self.not_found.lock().unwrap_or_else(|e| e.into_inner());
        if not_found.len() >= NOT_FOUND_LIMIT {
            not_found.clear();
        }
        not_found.insert(shard, unix_ms.saturating_add(lag));
    }

    /// Discovery's side: resolves when a request asked for a lookup (at once if one asked
    /// since the last call).
    pub async fn asked(&self) {
        self.asked.notified().await
    }

    /// Discovery's side: a lookup finished (its answer applied).
    pub fn answered(&self) {
        self.answered.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A request's side: asks for a lookup and waits until `found()` holds, two lookups have
    /// finished (each asked for: the second began after the first answered, so after the
    /// asking even when a lookup was under way), or `limit` passed. Returns `found()`.
    pub async fn ask_and_wait(&self, limit: Duration, found: impl Fn() -> bool) -> bool {
        let mut answers = self.answered.subscribe();
        let deadline = tokio::time::Instant::now() + limit;
        for _ in 0..2 {
            if found() {
                return true;
            }
            self.asked.notify_one();
            match tokio::time::timeout_at(deadline, answers.changed()).await {
                Ok(Ok(())) => {}
                _ => break,
            }
        }
        found()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    #[test]
    fn only_recent_placements_of_discovered_pools_are_awaited() {
        let r = Rediscovery::default();
        assert!(
            !r.may_be_new("s", 1_000, 1_000),
            "no discovery: nothing to wait for"
        );
        r.discovering(Duration::from_secs(30));
        assert!(r.applies());
        assert!(r.may_be_new("s", 1_000, 31_000));
        assert!(!r.may_be_new("s", 1_000, 31_001));
        assert!(
            r.may_be_new("s", 5_000, 1_000),
            "a clock behind the placer's"
        );
        // A shard a lookup did not name is not waited for again for as long.
        r.not_found(Arc::from("s"), 10_000);
        assert!(!r.may_be_new("s", 10_000, 10_000) && !r.may_be_new("s", 39_000, 39_999));
        assert!(r.may_be_new("t", 10_000, 10_000));
        assert!(r.may_be_new("s", 40_000, 40_000));
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_waits_for_the_lookup_it_asked_for() {
        let r = Arc::new(Rediscovery::default());
        let known = Arc::new(AtomicBool::new(false));
        let discovery = {
            let (r, known) = (r.clone(), known.clone());
            tokio::spawn(async move {
                r.asked().await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                known.store(true, Ordering::Relaxed);
                r.answered();
            })
        };
        let started = tokio::time::Instant::now();
        assert!(r.ask_and_wait(WAIT, || known.load(Ordering::Relaxed)).await);
        assert_eq!(started.elapsed(), Duration::from_millis(50));
        discovery.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_shard_not_found_costs_two_lookups_not_the_limit() {
        let r = Arc::new(Rediscovery::default());
        let lookups = {
            let r = r.clone();
            tokio::spawn(async move {
                for _ in 0..2 {
                    r.asked().await;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    r.answered();
                }
            })
        };
        let started = tokio::time::Instant::now();
        assert!(!r.ask_and_wait(WAIT, || false).await);
        assert_eq!(started.elapsed(), Duration::from_millis(20));
        lookups.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn the_wait_ends_at_the_limit_when_nobody_answers() {
        let r = Rediscovery::default();
        let started = tokio::time::Instant::now();
        assert!(!r.ask_and_wait(WAIT, || false).await);
        assert_eq!(started.elapsed(), WAIT);
    }
}
