//! Rules serde cannot express: names unique, references resolve, values in range.
//! Returns (key path, message) pairs; the loader turns paths into file positions.

use super::model::{Config, Verify};
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
        if admin.token.as_deref().is_some_and(is_placeholder) {
            err("admin.token".into(), PLACEHOLDER_ERROR.into());
        }
    }

    let t = &c.timeouts;
    for (name, d) in [
        ("connect", t.connect),
        ("idle", t.idle),
        ("tunnel", t.tunnel),
        ("keepalive", t.keepalive),
        ("request_head", t.request_head),
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

    if c.limits.max_connections == 0 {
        err("limits.max_connections".into(), "must be at least 1".into());
    }
    if c.limits.max_room_bytes < 16 {
        err(
            "limits.max_room_bytes".into(),
            format!(
                "{} is too small; expected at least 16",
                c.limits.max_room_bytes
            ),
        );
    }

    let mut pools = HashSet::new();
    let mut instance_pools = HashSet::new();
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
        if let Some(tls) = &p.tls {
            let at = format!("{at}.tls");
            if tls.client_cert.is_some() != tls.client_key.is_some() {
                err(
                    at.clone(),
                    "client_cert and client_key go together; expected both or neither".into(),
                );
            }
            match &tls.server_name {
                None if tls.verify != Verify::None => err(
                    at.clone(),
                    "no server_name; expected the name to send as SNI (and, with verify = \"full\", to find in the members' certificates), or verify = \"none\"".into(),
                ),
                Some(name) if name.is_empty() || name.contains(|c: char| c.is_whitespace() || c == '/') => err(
                    format!("{at}.server_name"),
                    format!("{name:?} is not a host name"),
                ),
                _ => {}
            }
            if p.health.as_ref().is_some_and(|h| h.path.is_some()) {
                err(
                    format!("pool[{i}].health.path"),
                    "HTTP health checks do not speak TLS; with tls, omit path for a TCP check (or use the agent check)".into(),
                );
            }
        }
        if p.sticky.capacity == 0 {
            err(format!("{at}.sticky.capacity"), "must be at least 1".into());
        }
        if p.sticky.ttl.is_zero() {
            err(format!("{at}.sticky.ttl"), "must be more than 0s".into());
        }
        let (srv, dns, list, key) = match (&p.shards, &p.instances) {
            (Some(s), None) => (&s.srv, &s.dns, &s.list, "shards"),
            (None, Some(i)) => (&i.srv, &i.dns, &i.list, "instances"),
            (Some(_), Some(_)) => {
                err(
                    at.clone(),
                    "both shards and instances; a pool has one kind of member".into(),
                );
                continue;
            }
            (None, None) => {
                err(at.clone(), "no members; expected shards.srv = \"_http._tcp.web.example.svc.\" or shards.list = [{ name = \"shard-0\", addrs = [\"10.0.0.5:80\"] }, …] (or instances.…)".into());
                continue;
            }
        };
        if key == "instances" {
            instance_pools.insert(p.name.as_str());
        }
        match [srv.is_some(), dns.is_some(), !list.is_empty()]
            .iter()
            .filter(|x| **x)
            .count()
        {
            1 => {}
            0 => err(
                format!("{at}.{key}"),
                "no members; expected one of srv = \"…\", dns = \"name:port\" or a non-empty list"
                    .into(),
            ),
            _ => err(
                format!("{at}.{key}"),
                "more than one of srv, dns and list; expected one".into(),
            ),
        }
        if let Some(name) = srv {
            if let Err(why) = dns_name(name) {
                err(format!("{at}.{key}.srv"), why);
            }
        }
        if let Some(hp) = dns {
            if let Err(why) = name_and_port(hp) {
                err(format!("{at}.{key}.dns"), why);
            }
        }
        if let Some(h) = &p.health {
            if h.path.as_deref().is_some_and(|path| !path.starts_with('/')) {
                err(
                    format!("{at}.health.path"),
                    "must start with '/'; leave it out for a TCP check".into(),
                );
            }
            if h.interval.is_zero() || h.timeout.is_zero() {
                err(
                    format!("{at}.health"),
                    "interval and timeout must be more than 0s".into(),
                );
            }
            if h.rise == 0 || h.fall == 0 {
                err(
                    format!("{at}.health"),
                    "rise and fall must be at least 1".into(),
                );
            }
            if !(100..=599).contains(&h.expect) {
                err(
                    format!("{at}.health.expect"),
                    format!("{} is not an HTTP status", h.expect),
                );
            }
        }
        if let Some(a) = &p.agent {
            if a.port == 0 || a.interval.is_zero() || a.timeout.is_zero() {
                err(
                    format!("{at}.agent"),
                    "expected a port and intervals above 0s".into(),
                );
            }
        }
        if p.linger.is_zero() {
            err(format!("{at}.linger"), "must be more than 0s".into());
        }
        let mut names = HashSet::new();
        for (j, s) in list.iter().enumerate() {
            let at = format!("{at}.{key}.list[{j}]");
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
            match [!s.addrs.is_empty(), s.srv.is_some(), s.host.is_some()].iter().filter(|x| **x).count() {
                1 => {}
                0 => err(format!("{at}.addrs"), "empty; expected at least one \"ip:port\" (or srv = \"…\", or host = \"name:port\")".into()),
                _ => err(at.clone(), "more than one of addrs, srv and host; expected one".into()),
            }
            if let Some(name) = &s.srv {
                if let Err(why) = dns_name(name) {
                    err(format!("{at}.srv"), why);
                }
            }
            if let Some(hp) = &s.host {
                if let Err(why) = name_and_port(hp) {
                    err(format!("{at}.host"), why);
                }
            }
            if s.weight > 10_000 {
                err(
                    format!("{at}.weight"),
                    format!("{} is out of range; expected 0 to 10000", s.weight),
                );
            }
        }
    }

    let r = &c.resolver;
    if r.min_ttl > r.max_ttl {
        err(
            "resolver.min_ttl".into(),
            format!("{:?} is above max_ttl ({:?})", r.min_ttl, r.max_ttl),
        );
    }
    if r.timeout.is_zero() {
        err("resolver.timeout".into(), "must be more than 0s".into());
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
        let actions = [
            r.shard.is_some(),
            r.instance.is_some(),
            r.pool.is_some(),
            r.respond.is_some(),
            r.sfu,
        ];
        match actions.iter().filter(|a| **a).count() {
            1 => {}
            0 => err(at.clone(), "no action; expected one of shard = { pool = … }, instance = { pool = …, segment = … }, pool = \"…\", respond = { … }, sfu = true".into()),
            _ => err(at.clone(), "more than one action; expected exactly one of shard, instance, pool, respond, sfu".into()),
        }
        if let Some(i) = &r.instance {
            if i.segment == 0 {
                err(
                    format!("{at}.instance.segment"),
                    "segments count from 1 (/colibri-ws/<id>/…: 2)".into(),
                );
            }
            if pools.contains(i.pool.as_str()) && !instance_pools.contains(i.pool.as_str()) {
                err(
                    format!("{at}.instance.pool"),
                    format!("pool {:?} has shards, not instances", i.pool),
                );
            }
        }
        if let Some(sh) = &r.shard {
            if instance_pools.contains(sh.pool.as_str()) {
                err(
                    format!("{at}.shard.pool"),
                    format!("pool {:?} has instances, not shards", sh.pool),
                );
            }
        }
        if let Some(cors) = &r.cors {
            if cors.allow_origin.is_empty() {
                err(
                    format!("{at}.cors.allow_origin"),
                    "empty; expected origins like \"https://meet.example.com\" or \"*\"".into(),
                );
            }
            for (k, o) in cors.allow_origin.iter().enumerate() {
                if o != "*" && !(o.starts_with("https://") || o.starts_with("http://")) {
                    err(
                        format!("{at}.cors.allow_origin[{k}]"),
                        format!("{o:?} is not an origin; expected scheme://host[:port] or \"*\""),
                    );
                }
            }
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
        if let Some(i) = &r.instance {
            pool_ref(format!("{at}.instance.pool"), &i.pool);
        }
        if r.sfu && c.sfu.is_none() {
            err(
                format!("{at}.sfu"),
                "no [sfu] section; expected one with udp = \"host:port\" for the SFU's media"
                    .into(),
            );
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
    errors.extend(validate_media(c));
    if let Some(peers) = &c.peers {
        errors.extend(super::peers::validate(peers));
    }
    if let Some(sfu) = &c.sfu {
        errors.extend(super::sfu::validate(sfu));
        for (i, z) in c.media.zone.iter().enumerate() {
            if z.ports.contains(sfu.udp.port())
                && (z.bind == sfu.udp.ip()
                    || z.bind.is_unspecified()
                    || sfu.udp.ip().is_unspecified())
            {
                err_at(
                    &mut errors,
                    "sfu.udp",
                    format!(
                        "port {} is in media.zone[{i}] ({}, {})",
                        sfu.udp.port(),
                        z.name,
                        z.ports
                    ),
                );
            }
        }
    }
    errors
}

fn err_at(errors: &mut Vec<(String, String)>, path: &str, msg: String) {
    errors.push((path.into(), msg));
}

/// A DNS name as discovery looks it up (`_http._tcp.web.jitsi.svc.cluster.local.`).
fn dns_name(name: &str) -> Result<(), String> {
    let bare = name.strip_suffix('.').unwrap_or(name);
    let ok = !bare.is_empty()
        && bare.len() <= 253
        && bare.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a DNS name; expected e.g. \"_http._tcp.web.jitsi.svc.cluster.local.\""
        ))
    }
}

/// `name:port` for A/AAAA discovery.
fn name_and_port(text: &str) -> Result<(), String> {
    match super::model::host_port(text) {
        Some((name, _)) if dns_name(name).is_ok() => Ok(()),
        _ => Err(format!(
            "{text:?} is not name:port; expected e.g. \"web.jitsi.svc.cluster.local.:80\""
        )),
    }
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

/// `[[media.zone]]`: names, port ranges that overlap nothing, one target per port.
fn validate_media(c: &Config) -> Vec<(String, String)> {
    use super::media::split_target;
    let mut errors = Vec::new();
    let mut err = |path: String, msg: String| errors.push((path, msg));
    let mut names = HashSet::new();
    if c.media.threads == Some(0) {
        err("media.threads".into(), "must be at least 1".into());
    }
    for (i, z) in c.media.zone.iter().enumerate() {
        let at = format!("media.zone[{i}]");
        if !valid_name(&z.name) {
            err(
                format!("{at}.name"),
                format!(
                    "{:?} is not a valid name; expected letters, digits, '-', '_' or '.'",
                    z.name
                ),
            );
        } else if !names.insert(z.name.as_str()) {
            err(
                format!("{at}.name"),
                format!("another zone is already named {:?}", z.name),
            );
        }
        for (k, other) in c.media.zone.iter().enumerate().take(i) {
            if other.ports.overlaps(&z.ports) {
                err(
                    format!("{at}.ports"),
                    format!(
                        "{} overlaps media.zone[{k}] ({}, {})",
                        z.ports, other.name, other.ports
                    ),
                );
            }
        }
        for (k, l) in c.listener.iter().enumerate() {
            if z.ports.contains(l.addr.port()) {
                err(
                    format!("{at}.ports"),
                    format!(
                        "{} includes port {} of listener[{k}]",
                        z.ports,
                        l.addr.port()
                    ),
                );
            }
        }
        if let Some(a) = &c.admin {
            if z.ports.contains(a.addr.port()) {
                err(
                    format!("{at}.ports"),
                    format!(
                        "{} includes the admin listener's port {}",
                        z.ports,
                        a.addr.port()
                    ),
                );
            }
        }
        match (&z.target, z.targets.is_empty()) {
            (Some(_), false) => err(
                at.clone(),
                "both target and targets; expected one".into(),
            ),
            (None, true) => err(
                at.clone(),
                "no target; expected target = \"jvb-{index}.jvb.ns.svc.cluster.local.:{port}\" (or \"10.0.0.7:{port}\", or targets = [\"host:port\", …] with one per port)".into(),
            ),
            (Some(t), true) => {
                let rest = t.replace("{index}", "").replace("{port}", "");
                if rest.contains(['{', '}']) {
                    err(
                        format!("{at}.target"),
                        format!("{t:?}: only {{index}} and {{port}} are substituted"),
                    );
                } else if let Err(e) = split_target(&super::media::expand_target(t, 0, z.ports.first)) {
                    err(format!("{at}.target"), format!("{t:?}: {e}"));
                }
            }
            (None, false) => {
                if z.targets.len() != z.ports.len() {
                    err(
                        format!("{at}.targets"),
                        format!(
                            "{} targets for the {} ports of {}; expected one per port",
                            z.targets.len(),
                            z.ports.len(),
                            z.ports
                        ),
                    );
                }
                for (k, t) in z.targets.iter().enumerate() {
                    if let Err(e) = split_target(t) {
                        err(format!("{at}.targets[{k}]"), e);
                    }
                }
            }
        }
        if z.idle.is_zero() {
            err(format!("{at}.idle"), "must be more than 0s".into());
        }
        if z.max_flows_per_source == 0 {
            err(
                format!("{at}.max_flows_per_source"),
                "must be at least 1".into(),
            );
        }
        if z.max_flows == 0 {
            err(format!("{at}.max_flows"), "must be at least 1".into());
        }
    }
    errors
}

/// The placeholder the example secrets in k8s/ carry (`secrets.env.example`): a deployment
/// still using it would run with a secret everyone knows.
pub(super) fn is_placeholder(secret: &str) -> bool {
    secret.starts_with("replace-with-")
}

pub(super) const PLACEHOLDER_ERROR: &str =
    "the example's placeholder; set a secret of your own (e.g. `openssl rand -hex 32`)";
