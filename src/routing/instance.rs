//! Instance-addressed routing: the member a URL segment names (`/colibri-ws/<id>/…` names a
//! JVB). An id is only ever compared with the current members of a discovered pool: it is
//! never resolved or connected to, so `127.0.0.1`, `169.254.169.254`, `evil.example` or `..`
//! name nothing unless such a member exists. Pure and allocation-free.

use super::pool::Members;
use crate::config::InstanceId;
use std::net::IpAddr;

/// The `n`th path segment (from 1), raw (not percent-decoded: an encoded id names nothing).
pub fn path_segment(path: &str, n: usize) -> Option<&str> {
    path.split('/')
        .filter(|s| !s.is_empty())
        .nth(n.checked_sub(1)?)
}

/// The index of the member `id` names under `form`.
pub fn find_instance(members: &Members, id: &str, form: InstanceId) -> Option<usize> {
    if id.is_empty() || id.len() > 253 {
        return None;
    }
    match form {
        InstanceId::Host => members.shards.iter().position(|m| {
            m.name.eq_ignore_ascii_case(id)
                || m.name
                    .split('.')
                    .next()
                    .is_some_and(|label| label.eq_ignore_ascii_case(id))
        }),
        InstanceId::Ip => {
            let ip: IpAddr = id.parse().ok()?;
            members
                .shards
                .iter()
                .position(|m| m.addrs().iter().any(|a| a.ip() == ip))
        }
        InstanceId::JitsiOctets => {
            let rest = id.strip_prefix("jvb-")?;
            let mut octets = [0u8; 3];
            let mut parts = rest.split('-');
            for o in &mut octets {
                let p = parts.next()?;
                if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                *o = p.parse().ok()?;
            }
            if parts.next().is_some() {
                return None;
            }
            members.shards.iter().position(|m| {
                m.addrs().iter().any(|a| match a.ip() {
                    IpAddr::V4(v4) => v4.octets()[1..] == octets,
                    IpAddr::V6(_) => false,
                })
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::Shard;
    use std::sync::Arc;

    fn members() -> Members {
        Members::new(vec![
            Arc::new(Shard::new(
                "jvb-0.jvb.jitsi.svc.cluster.local",
                1,
                vec!["10.1.2.3:9090".parse().unwrap()],
                false,
            )),
            Arc::new(Shard::new(
                "jvb-1.jvb.jitsi.svc.cluster.local",
                1,
                vec!["10.1.2.4:9090".parse().unwrap()],
                false,
            )),
        ])
    }

    #[test]
    fn segments_count_from_one() {
        assert_eq!(path_segment("/colibri-ws/jvb-0/conf/ep", 2), Some("jvb-0"));
        assert_eq!(path_segment("/colibri-ws//jvb-0", 2), Some("jvb-0"));
        assert_eq!(path_segment("/colibri-ws/", 2), None);
        assert_eq!(path_segment("/a", 0), None);
    }

    #[test]
    fn every_id_form() {
        let m = members();
        assert_eq!(find_instance(&m, "jvb-1", InstanceId::Host), Some(1));
        assert_eq!(
            find_instance(&m, "JVB-0.jvb.jitsi.svc.cluster.local", InstanceId::Host),
            Some(0)
        );
        assert_eq!(find_instance(&m, "10.1.2.4", InstanceId::Ip), Some(1));
        assert_eq!(
            find_instance(&m, "jvb-1-2-3", InstanceId::JitsiOctets),
            Some(0)
        );
    }

    #[test]
    fn nothing_outside_the_pool_is_named() {
        let m = members();
        for id in [
            "127.0.0.1",
            "169.254.169.254",
            "evil.example",
            "..",
            "%2e%2e",
            "jvb-0%00",
            "",
            "jvb",
            "jvb-1-2-3-4",
            "jvb-1-2-3000",
            "10.1.2.3:80",
            "jvb-0.evil.example",
        ] {
            for form in [InstanceId::Host, InstanceId::Ip, InstanceId::JitsiOctets] {
                let hit = find_instance(&m, id, form);
                assert_eq!(hit, None, "{id:?} under {form:?} named a member");
            }
        }
    }
}
