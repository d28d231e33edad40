//! Discovery: which shards a pool has, from DNS.
//!
//! `srv` (pure) turns SRV answers into members; `membership` (pure, time passed in) applies a
//! fresh answer to a pool's members, keeping shards that vanished from DNS as draining until
//! their `linger` has passed; `resolver` (I/O, hickory-resolver on tokio) looks names up again
//! after their TTL and keeps the last good answer for `hold_valid` while lookups fail.

pub mod membership;
pub mod srv;

#[cfg(feature = "server")]
pub mod resolver;

pub use membership::{apply, MemberSpec};
pub use srv::{members_from_srv, SrvRecord};
