//! Each room's open connections to its shard (WebSocket tunnels, requests the shard holds such
//! as BOSH long-polls), and closing the ones on a shard the room left.
//!
//! A room's stick entry stays fresh while it has an open connection. When the room's placement
//! moves to another shard (a concurrent placement lost to another replica's, a move off a
//! shard that died or refused), the connections this replica still holds to the old shard are
//! closed, the way a restart of that shard would close them, so their clients reconnect and
//! join the room where it is now. Bookkeeping only: what closing means is the proxy's
//! [`Closer`]. Split into independently locked parts by room, so requests of different rooms
//! rarely meet on a lock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use xxhash_rust::xxh3::xxh3_64;

/// Ends one open connection (it must not block: it wakes the connection's task or shuts its
/// socket down).
pub trait Closer: Send + Sync {
    fn close(&self);
}

/// Independently locked parts of the registry.
const PARTS: usize = 32;

struct Open {
    id: u64,
    shard: Arc<str>,
    closer: Arc<dyn Closer>,
}

type Part = Mutex<HashMap<Arc<str>, Vec<Open>>>;

pub struct RoomConns {
    parts: [Part; PARTS],
    next_id: AtomicU64,
}

impl Default for RoomConns {
    fn default() -> Self {
        RoomConns {
            parts: std::array::from_fn(|_| Mutex::default()),
            next_id: AtomicU64::new(0),
        }
    }
}

impl RoomConns {
    fn part(&self, room: &str) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Vec<Open>>> {
        let part = &self.parts[(xxh3_64(room.as_bytes()) % PARTS as u64) as usize];
        part.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A connection of `room` to `shard` opened; returns its id for [`RoomConns::closed`].
    pub fn opened(&self, room: &str, shard: Arc<str>, closer: Arc<dyn Closer>) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut rooms = self.part(room);
        rooms
            .entry(Arc::from(room))
            .or_default()
            .push(Open { id, shard, closer });
        id
    }

    /// The connection `id` of `room` ended.
    pub fn closed(&self, room: &str, id: u64) {
        let mut rooms = self.part(room);
        if let Some(open) = rooms.get_mut(room) {
            open.retain(|t| t.id != id);
            if open.is_empty() {
                rooms.remove(room);
            }
        }
    }

    /// Rooms with at least one open connection.
    pub fn rooms(&self) -> Vec<Arc<str>> {
        let mut all = Vec::new();
        for part in &self.parts {
            let rooms = part.lock().unwrap_or_else(|e| e.into_inner());
            all.extend(rooms.keys().cloned());
        }
        all
    }

    /// Closes `room`'s connections to any shard but `shard`; returns how many were closed.
    pub fn close_except(&self, room: &str, shard: &str) -> usize {
        let closers: Vec<Arc<dyn Closer>> = {
            let rooms = self.part(room);
            rooms.get(room).map_or_else(Vec::new, |open| {
                open.iter()
                    .filter(|t| &*t.shard != shard)
                    .map(|t| t.closer.clone())
                    .collect()
            })
        };
        for c in &closers {
            c.close();
        }
        closers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Closer for Count {
        fn close(&self) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn only_tunnels_on_the_shard_the_room_left_are_closed() {
        let t = RoomConns::default();
        let (old, new, other) = (
            Arc::new(Count::default()),
            Arc::new(Count::default()),
            Arc::new(Count::default()),
        );
        let a = t.opened("r", Arc::from("shard-0"), old.clone());
        t.opened("r", Arc::from("shard-0"), old.clone());
        t.opened("r", Arc::from("shard-1"), new.clone());
        t.opened("s", Arc::from("shard-0"), other.clone());
        assert_eq!(t.close_except("r", "shard-1"), 2);
        assert_eq!(old.0.load(Ordering::Relaxed), 2);
        assert_eq!(new.0.load(Ordering::Relaxed), 0);
        assert_eq!(
            other.0.load(Ordering::Relaxed),
            0,
            "another room is left alone"
        );
        t.closed("r", a);
        assert_eq!(
            t.close_except("r", "shard-1"),
            1,
            "a closed tunnel is forgotten"
        );
        assert_eq!(t.close_except("unknown", "shard-1"), 0);
        let mut rooms = t.rooms();
        rooms.sort();
        assert_eq!(rooms, [Arc::<str>::from("r"), Arc::from("s")]);
    }
}
