//! The runtime snapshot: one validated config compiled into routes and pools. A request loads
//! one `Arc<Runtime>` and decides with it; a reload builds a new one and swaps it.

use crate::config::Config;
use crate::routing::{CompiledRoute, Pool, RouteTable};
use std::sync::Arc;

pub struct Runtime {
    pub config: Arc<Config>,
    pub routes: RouteTable,
    pub pools: Vec<Arc<Pool>>,
}

impl Runtime {
    /// Compiles a validated config.
    pub fn build(config: Config) -> Self {
        let pools: Vec<Arc<Pool>> = config
            .pool
            .iter()
            .map(|p| Arc::new(Pool::from_config(p)))
            .collect();
        let index = |name: &str| {
            pools
                .iter()
                .position(|p| &*p.name == name)
                .expect("validated: routes name existing pools")
        };
        let routes = RouteTable {
            routes: config
                .route
                .iter()
                .map(|r| CompiledRoute::new(r, index))
                .collect(),
        };
        Runtime {
            config: Arc::new(config),
            routes,
            pools,
        }
    }

    pub fn pool(&self, name: &str) -> Option<&Arc<Pool>> {
        self.pools.iter().find(|p| &*p.name == name)
    }
}
