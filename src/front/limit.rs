//! `limits.max_connections`: past it, the listeners stop accepting (new connections wait in
//! the kernel's backlog) until a connection closes. A connection counts from the moment it is
//! accepted, its TLS handshake included.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

#[derive(Debug, Default)]
pub struct Limit {
    open: AtomicUsize,
    freed: Notify,
}

impl Limit {
    pub fn new() -> Arc<Limit> {
        Arc::default()
    }

    /// Connections counted now.
    pub fn count(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Waits until a connection may be accepted (`max` is read again each time: a reload may
    /// change it) and counts it until the slot drops. Also says whether it had to wait.
    pub async fn admit(self: &Arc<Self>, max: impl Fn() -> usize) -> (Slot, bool) {
        let mut waited = false;
        loop {
            let freed = self.freed.notified();
            let open = self.open.load(Ordering::Relaxed);
            if open < max()
                && self
                    .open
                    .compare_exchange(open, open + 1, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                return (Slot(self.clone()), waited);
            }
            if open < max() {
                continue;
            }
            waited = true;
            // Woken by a closing connection; the timeout reads a raised limit again.
            let _ = tokio::time::timeout(Duration::from_secs(1), freed).await;
        }
    }
}

/// One counted connection.
#[derive(Debug)]
pub struct Slot(Arc<Limit>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
        self.0.freed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn admits_up_to_the_limit_and_again_when_one_closes() {
        let limit = Limit::new();
        let (a, waited) = limit.admit(|| 2).await;
        assert!(!waited);
        let (_b, _) = limit.admit(|| 2).await;
        assert_eq!(limit.count(), 2);
        let third = tokio::spawn({
            let limit = limit.clone();
            async move { limit.admit(|| 2).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!third.is_finished(), "a third connection waits");
        drop(a);
        let (_c, waited) = third.await.unwrap();
        assert!(waited, "admitted after waiting");
        assert_eq!(limit.count(), 2);
    }
}
