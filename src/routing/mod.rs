//! Routing decisions: which route a request matches, its room key, and which shard takes it.
//!
//! Pure functions and shared state (atomics, the stick table's locked parts); no sockets. The proxy
//! loads one [`crate::runtime::Runtime`] snapshot per request and asks these functions.

pub mod conns;
pub mod drains;
pub mod instance;
pub mod pool;
pub mod room;
pub mod route;
pub mod stick_table;
pub mod sticky;

pub use conns::Closer;
pub use drains::AdminDrain;
pub use instance::{find_instance, path_segment};
pub use pool::{AgentState, Choice, Members, Pool, Shard, ShardState};
pub use room::room_key;
pub use route::{Action, CompiledRoute, RouteTable};
pub use stick_table::{Merged, Placement, StickTable};
pub use sticky::{hrw_pick, name_seed, unix_ms};
