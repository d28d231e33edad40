//! The route table: routes tried in file order, the first whose host and path prefix match
//! takes the request and names its action.

use crate::config::{Cors, Respond, RoomKeySource, Route};
use std::sync::Arc;

/// What a matched route does. Pools are indexes into the runtime's pool list.
#[derive(Debug, Clone)]
pub enum Action {
    Shard {
        pool: usize,
        key: RoomKeySource,
    },
    /// To the member the `segment`th path segment names.
    Instance {
        pool: usize,
        segment: usize,
    },
    Pool(usize),
    Respond(Arc<Respond>),
    /// The in-process SFU's page, signalling and WHIP/WHEP, below the route's prefix.
    Sfu,
}

#[derive(Debug, Clone)]
pub struct CompiledRoute {
    /// Label for metrics and logs.
    pub label: Arc<str>,
    host: Option<String>,
    prefix: String,
    pub action: Action,
    /// Remove the prefix before forwarding.
    pub strip_prefix: bool,
    pub cors: Option<Arc<Cors>>,
}

impl CompiledRoute {
    /// `pool_index` resolves a pool name (validation guarantees it exists).
    pub fn new(r: &Route, pool_index: impl Fn(&str) -> usize) -> Self {
        let action = match (&r.shard, &r.pool, &r.respond, &r.instance) {
            _ if r.sfu => Action::Sfu,
            (Some(s), ..) => Action::Shard {
                pool: pool_index(&s.pool),
                key: s.key,
            },
            (_, Some(p), ..) => Action::Pool(pool_index(p)),
            (_, _, Some(resp), _) => Action::Respond(Arc::new(resp.clone())),
            (.., Some(i)) => Action::Instance {
                pool: pool_index(&i.pool),
                segment: i.segment,
            },
            _ => unreachable!("validation requires one action per route"),
        };
        let label = r.name.clone().unwrap_or_else(|| match &r.host {
            Some(h) => format!("{h}{}", r.path_prefix),
            None => r.path_prefix.clone(),
        });
        CompiledRoute {
            label: Arc::from(label),
            host: r.host.as_ref().map(|h| h.to_ascii_lowercase()),
            prefix: r.path_prefix.clone(),
            action,
            strip_prefix: r.strip_prefix,
            cors: r.cors.clone().map(Arc::new),
        }
    }

    /// The route's path prefix without its trailing `/` (`""` for `/`).
    pub fn base(&self) -> &str {
        self.prefix.trim_end_matches('/')
    }

    /// The path to forward: without the prefix when the route strips it.
    pub fn upstream_path<'a>(&self, path: &'a str) -> Option<&'a str> {
        if !self.strip_prefix {
            return None;
        }
        let rest = path.strip_prefix(self.prefix.trim_end_matches('/'))?;
        Some(if rest.is_empty() { "/" } else { rest })
    }

    /// Whether `origin` may make cross-origin requests to this route.
    pub fn origin_allowed(&self, origin: &str) -> bool {
        self.cors.as_ref().is_some_and(|c| {
            c.allow_origin
                .iter()
                .any(|o| o == "*" || o.eq_ignore_ascii_case(origin))
        })
    }

    fn matches(&self, host: Option<&str>, path: &str) -> bool {
        if !path.starts_with(&self.prefix) {
            return false;
        }
        match (&self.host, host) {
            (None, _) => true,
            (Some(want), Some(got)) => strip_port(got).eq_ignore_ascii_case(want),
            (Some(_), None) => false,
        }
    }
}

/// `host:port` or `[v6]:port` -> host.
fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    host.rsplit_once(':')
        .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
        .map_or(host, |(h, _)| h)
}

#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    pub routes: Vec<CompiledRoute>,
}

impl RouteTable {
    /// The index of the first route matching `host` (the Host header or :authority) and `path`.
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<usize> {
        self.routes.iter().position(|r| r.matches(host, path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ShardAction;

    fn route(prefix: &str, host: Option<&str>, pool: &str) -> Route {
        Route {
            name: None,
            path_prefix: prefix.into(),
            host: host.map(Into::into),
            shard: None,
            pool: Some(pool.into()),
            instance: None,
            respond: None,
            strip_prefix: false,
            cors: None,
            sfu: false,
        }
    }

    #[test]
    fn first_match_in_file_order() {
        let pools = ["a", "b", "c"];
        let idx = |n: &str| pools.iter().position(|p| *p == n).unwrap();
        let table = RouteTable {
            routes: vec![
                CompiledRoute::new(&route("/colibri-ws/", None, "b"), idx),
                CompiledRoute::new(&route("/", Some("Meet.Example.com"), "c"), idx),
                CompiledRoute::new(
                    &Route {
                        shard: Some(ShardAction {
                            pool: "a".into(),
                            key: RoomKeySource::RoomParam,
                        }),
                        pool: None,
                        ..route("/", None, "a")
                    },
                    idx,
                ),
            ],
        };
        assert_eq!(table.find(None, "/colibri-ws/x/y"), Some(0));
        assert_eq!(
            table.find(Some("meet.example.com:443"), "/http-bind"),
            Some(1)
        );
        assert_eq!(table.find(Some("other.example.com"), "/http-bind"), Some(2));
        assert!(matches!(
            table.routes[2].action,
            Action::Shard { pool: 0, .. }
        ));
        assert_eq!(table.routes[1].label.as_ref(), "Meet.Example.com/");
    }

    #[test]
    fn ports_and_v6_hosts() {
        assert_eq!(strip_port("a.example:8080"), "a.example");
        assert_eq!(strip_port("[::1]:8080"), "::1");
        assert_eq!(strip_port("a.example"), "a.example");
    }
}
