//! The in-process SFU for small deployments: WebRTC rooms on str0m, one UDP port for every
//! peer (ICE-lite), signalling over the edge's own routes.
//!
//! - `core`: rooms, peers and forwarding, sans-IO (time passed in), with `demux` (which peer a
//!   datagram is for, in O(1)), `layers` (simulcast layer choice), `forward` (RTP packets,
//!   keyframe requests), `rewrite` (a forwarded stream continuous across layer switches),
//!   `negotiate` (SDP offers and answers with participants) and `sdp_check` (what str0m would
//!   not refuse cleanly).
//! - `signal`: the WebSocket JSON protocol.
//! - `driver`: the SFU's thread and socket; `http` and `ws`: its page, signalling and WHIP/WHEP
//!   behind a route with `sfu = true`.

pub mod core;
pub mod demux;
#[cfg(feature = "server")]
pub mod driver;
mod forward;
#[cfg(feature = "server")]
pub mod http;
pub mod layers;
mod negotiate;
pub mod peer;
mod rewrite;
mod sdp_check;
pub mod signal;
#[cfg(feature = "server")]
mod ws;

pub use self::core::{Core, Counters, JoinError, Output, Settings, SignalError};
pub use demux::PeerId;
pub use peer::Role;
