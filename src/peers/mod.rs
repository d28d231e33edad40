//! Stick-table replication between edge replicas (`[peers]`): every new or refreshed stick
//! entry goes to every other replica, so a room stays on one shard whichever replica its
//! participants arrive through.
//!
//! - `wire`: the frames replicas exchange, encoded and decoded (pure).
//! - `session`: a connection's handshake: versions, replica ids, proof of the shared secret.
//! - `replicator`: one replica's connections and shared tables: full sync, batched updates,
//!   merges, one connection per pair (pure).

#[cfg(feature = "server")]
pub mod driver;
pub mod replicator;
pub mod session;
pub mod wire;
