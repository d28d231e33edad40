//! Discovery: which shards a pool has, from DNS.
//!
//! `srv` (pure) turns SRV answers into members; `membership` (pure, time passed in) applies a
//! fresh answer to a pool's members, keeping shards that vanished from DNS as draining until
//! their `linger` has passed; `resolver` (I/O, hickory-resolver on tokio) looks names up again
//! after their TTL and keeps the last good answer for `hold_valid` while lookups fail; `health`
//! (I/O) runs the active HTTP/TCP checks and the agent checks (`agent`, pure, parses replies).

pub mod agent;
pub mod membership;
pub mod srv;

#[cfg(feature = "server")]
pub mod health;
#[cfg(feature = "server")]
pub mod resolver;

pub use agent::{parse_agent, AgentReply};
pub use membership::{apply, MemberSpec};
pub use srv::{members_from_addrs, members_from_srv, SrvRecord};
