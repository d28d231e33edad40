//! Rules serde cannot express: names unique, references resolve, values in range.
//! Returns (key path, message) pairs; the loader turns paths into file positions.

use super::model::Config;
use std::collections::HashSet;

pub(crate) fn validate(c: &Config) -> Vec<(String, String)> {
    let mut errors = Vec::new();
    let mut err = |path: String, msg: String| errors.push((path, msg));

    if c.listener.is_empty() {
        err(
            "listener".into(),
            "no [[listener]]; expected at least one, e.g. addr = \"0.0.0.0:443\"".into(),
        );
    }
    let mut addrs = HashSet::new();
    for (i, l) in c.listener.iter().enumerate() {
        if !addrs.insert(l.addr) {
            err(
                format!("listener[{i}].addr"),
                format!("{} is already used by another listener", l.addr),
            );
        }
    }
    if let Some(admin) = &c.admin {
        if addrs.contains(&admin.addr) {
            err(
                "admin.addr".into(),
                format!(
                    "{} is also a [[listener]]; expected its own address",
                    admin.addr
                ),
            );
        }
        if admin.token.as_deref() == Some("") {
            err(
                "admin.token".into(),
                "empty token; remove the key to disable /admin/* or set a secret".into(),
            );
        }
    }

    let t = &c.timeouts;
    for (name, d) in [
        ("connect", t.connect),
        ("idle", t.idle),
        ("tunnel", t.tunnel),
        ("keepalive", t.keepalive),
    ] {
        if d.is_zero() {
            err(format!("timeouts.{name}"), "must be more than 0s".into());
        }
    }
    if c.limits.max_header_bytes < 1024 {
        err(
            "limits.max_header_bytes".into(),
            format!(
                "{} is too small; expected at least 1024",
                c.limits.max_header_bytes
            ),
        );
    }

    let mut pools = HashSet::new();
    for (i, p) in c.pool.iter().enumerate() {
        let at = format!("pool[{i}]");
        if !valid_name(&p.name) {
            err(
                format!("{at}.name"),
                format!(
                    "{:?} is not a valid name; expected letters, digits, '-', '_' or '.'",
                    p.name
                ),
            );
        } else if !pools.insert(p.name.as_str()) {
            err(
                format!("{at}.name"),
                format!("another pool is already named {:?}", p.name),
            );
        }
        if p.sticky.capacity == 0 {
            err(format!("{at}.sticky.capacity"), "must be at least 1".into());
        }
        if p.sticky.ttl.is_zero() {
            err(format!("{at}.sticky.ttl"), "must be more than 0s".into());
        }
        let Some(shards) = &p.shards else {
            err(at.clone(), "no members; expected shards.list = [{ name = \"shard-0\", addrs = [\"10.0.0.5:80\"] }, …]".into());
            continue;
        };
        if shards.list.is_empty() {
            err(
                format!("{at}.shards.list"),
                "empty; expected at least one shard".into(),
            );
        }
        let mut names = HashSet::new();
        for (j, s) in shards.list.iter().enumerate() {
            let at = format!("{at}.shards.list[{j}]");
            if !valid_name(&s.name) {
                err(
                    format!("{at}.name"),
                    format!(
                        "{:?} is not a valid shard name; expected letters, digits, '-', '_' or '.'",
                        s.name
                    ),
                );
            } else if !names.insert(s.name.as_str()) {
                err(
                    format!("{at}.name"),
                    format!("another shard of this pool is already named {:?}", s.name),
                );
            }
            if s.addrs.is_empty() {
                err(
                    format!("{at}.addrs"),
                    "empty; expected at least one \"ip:port\"".into(),
                );
            }
            if s.weight > 10_000 {
                err(
                    format!("{at}.weight"),
                    format!("{} is out of range; expected 0 to 10000", s.weight),
                );
            }
        }
    }

    for (i, r) in c.route.iter().enumerate() {
        let at = format!("route[{i}]");
        if !r.path_prefix.starts_with('/') {
            err(
                format!("{at}.path_prefix"),
                format!("{:?} must start with '/'", r.path_prefix),
            );
        }
        if r.host
            .as_deref()
            .is_some_and(|h| h.is_empty() || h.contains(['/', ' ', ':']))
        {
            err(
                format!("{at}.host"),
                "expected a host name without port, e.g. \"meet.example.com\"".into(),
            );
        }
        let actions = [r.shard.is_some(), r.pool.is_some(), r.respond.is_some()];
        match actions.iter().filter(|a| **a).count() {
            1 => {}
            0 => err(
                at.clone(),
                "no action; expected one of shard = { pool = … }, pool = \"…\", respond = { … }"
                    .into(),
            ),
            _ => err(
                at.clone(),
                "more than one action; expected exactly one of shard, pool, respond".into(),
            ),
        }
        let mut pool_ref = |path: String, name: &str| {
            if !pools.contains(name) {
                err(
                    path,
                    format!("no pool named {name:?}; defined pools: {}", list(&pools)),
                );
            }
        };
        if let Some(s) = &r.shard {
            pool_ref(format!("{at}.shard.pool"), &s.pool);
        }
        if let Some(p) = &r.pool {
            pool_ref(format!("{at}.pool"), p);
        }
        if let Some(resp) = &r.respond {
            if !(200..=599).contains(&resp.status) {
                err(
                    format!("{at}.respond.status"),
                    format!(
                        "{} is not a final HTTP status; expected 200 to 599",
                        resp.status
                    ),
                );
            }
        }
    }
    errors
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn list(names: &HashSet<&str>) -> String {
    if names.is_empty() {
        return "none".into();
    }
    let mut v: Vec<_> = names.iter().copied().collect();
    v.sort_unstable();
    v.join(", ")
}
