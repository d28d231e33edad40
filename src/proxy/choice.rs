//! The shard a request goes to, shared by both HTTP paths (`crate::front` for HTTP/1.1,
//! [`super::Edge`] for HTTP/2): the instance a URL named, its room's shard, or any shard,
//! avoiding one that already refused the request; and what a refusal does (passive health).

use crate::routing::{Choice, Pool, Shard};
use crate::state::Shared;
use std::sync::Arc;
use tracing::warn;

/// What a request asks of a pool.
pub struct Wanted<'a> {
    pub room: Option<&'a str>,
    /// The member an instance route named.
    pub instance: Option<&'a Arc<Shard>>,
    /// Index of a shard that refused this request's connection.
    pub failed: Option<usize>,
}

/// The shard for a request; `Err` says why none can take it.
pub fn choose(shared: &Shared, pool: &Pool, want: &Wanted) -> Result<Arc<Shard>, String> {
    let now = shared.now_ms();
    if let Some(instance) = want.instance {
        // The named instance, draining or not (it owns its conferences), if it is up.
        return match instance.is_up(now) && want.failed.is_none() {
            true => Ok(instance.clone()),
            false => Err(format!(
                "instance {} of pool {} is down",
                instance.name, pool.name
            )),
        };
    }
    let members = pool.members.load();
    let exclude: &[usize] = want.failed.as_slice();
    let index = match want.room {
        Some(room) => pool
            .choose_for_room(&members, room, (now, crate::routing::unix_ms()), exclude)
            .map(|choice| {
                replicate(shared, pool, room, matches!(choice, Choice::Stuck(_)));
                if let Choice::Moved(_) = choice {
                    shared
                        .metrics
                        .room_moves
                        .with_label_values(&[&pool.name])
                        .inc();
                }
                choice.index()
            }),
        None => pool.choose_any(&members, now, exclude),
    };
    match index {
        Some(i) => Ok(members.shards[i].clone()),
        None if members.shards.is_empty() => Err(format!("pool {} has no shards", pool.name)),
        None if want.room.is_some() => Err(format!(
            "no shard of pool {} is up and accepting new rooms",
            pool.name
        )),
        None => Err(format!("no shard of pool {} is up", pool.name)),
    }
}

/// Hands a placement this replica just made to replication (`[peers]`), and, for a room
/// already stuck, a refresh at most once per quarter of the table's idle time (so the other
/// replicas keep rooms alive that only this one sees traffic for).
fn replicate(shared: &Shared, pool: &Pool, room: &str, stuck: bool) {
    let Some(peers) = shared.peers.get() else {
        return;
    };
    let placement = if stuck {
        let every = pool.stick_ttl().as_millis() as u64 / 4;
        pool.stick
            .refresh_due(room, crate::routing::unix_ms(), every)
    } else {
        pool.stick.placement(room)
    };
    if let Some(placement) = placement {
        let _ = peers.send(crate::peers::driver::Update::Placed {
            pool: pool.name.clone(),
            room: Arc::from(room),
            placement,
        });
    }
}

/// A shard refused a request's connection: marks it down (passive health), counts it, and
/// returns its index, for the retry to avoid.
pub fn refused(
    shared: &Shared,
    pool: &Pool,
    shard: &Shard,
    error: &dyn std::fmt::Display,
) -> Option<usize> {
    let now = shared.now_ms();
    shard.mark_down(now + pool.passive_down.as_millis() as u64);
    if let Some(h) = &pool.health {
        crate::discovery::health::report(pool, shard, shard.record_health(false, h.rise, h.fall));
    }
    shared
        .metrics
        .connect_failures
        .with_label_values(&[&pool.name, &shard.name])
        .inc();
    warn!(pool = %pool.name, shard = %shard.name, %error, "shard refused the connection; marked down");
    pool.members.load().index_of(&shard.name)
}
