//! Configuration: the TOML file's shape, `${VAR}` interpolation, validation, and errors that
//! point at file:line:column and a key path.
//!
//! Pure: no sockets, no clocks. `load::parse` takes text and an environment lookup and returns
//! a validated [`Config`] or every error it found at once.

mod duration;
mod error;
mod interpolate;
mod load;
mod model;
mod validate;

pub use duration::parse_duration;
pub use error::{ConfigError, ConfigErrors};
pub use interpolate::interpolate;
pub use load::{load_file, parse, parse_with_env, DEFAULT_CONFIG};
pub use model::*;
pub mod media;
pub use media::{Media, PortRange, Zone};
pub mod sfu;
pub use sfu::Sfu;
pub mod peers;
pub use peers::Peers;
