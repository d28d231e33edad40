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
        Self::build_from(config, None)
    }

    /// Compiles a validated config for a reload of `previous`: a pool whose definition did not
    /// change is carried over whole (members, health, stick table, open tunnels); a changed
    /// pool starts from the old one's members whose names it still has, and keeps the stick
    /// entries of those shards, so live rooms stay where they are.
    pub fn build_from(config: Config, previous: Option<&Runtime>) -> Self {
        let pools: Vec<Arc<Pool>> = config
            .pool
            .iter()
            .map(|p| {
                let old = previous.and_then(|prev| {
                    let i = prev.pools.iter().position(|o| *o.name == p.name)?;
                    Some((&prev.config.pool[i], &prev.pools[i]))
                });
                match old {
                    Some((old_config, old_pool)) if old_config == p => old_pool.clone(),
                    Some((_, old_pool)) => Arc::new(Pool::from_config(p).carrying_over(old_pool)),
                    None => Arc::new(Pool::from_config(p)),
                }
            })
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
