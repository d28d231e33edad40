//! shardgate: an edge proxy and load balancer for real-time conferencing.
//!
//! Pure cores (`config`, `routing`, `runtime`) build without the `server` feature, which is how
//! `fuzz/` uses them; `proxy`, `admin`, `metrics` and `server` do the I/O on pingora.

#![forbid(unsafe_code)]

pub mod config;
pub mod discovery;
pub mod http1;
pub mod peers;
pub mod relay;
pub mod routing;
pub mod runtime;
pub mod sfu;
pub mod tls;

#[cfg(feature = "server")]
pub mod admin;
#[cfg(feature = "server")]
pub mod front;
#[cfg(feature = "server")]
pub mod metrics;
#[cfg(feature = "server")]
pub mod proxy;
#[cfg(feature = "server")]
pub mod reload;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub mod state;
#[cfg(feature = "server")]
pub mod upgrade;
