//! The UDP media relay: public port ranges ("zones") whose every port hands datagrams on to
//! one target (a JVB pod, a node's NodePort), like a NAT. `core` is the pure flow table; the
//! driver (sockets, threads, target resolution) lives beside it behind the `server` feature.

pub mod burst;
pub mod core;
#[cfg(feature = "server")]
pub mod driver;
#[cfg(feature = "server")]
pub mod nodeports;
#[cfg(feature = "server")]
pub mod targets;
