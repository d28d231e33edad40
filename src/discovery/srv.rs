//! SRV answers to pool members. Only the lowest priority class is used; each distinct target
//! host is one member, named by the host (lower case, without the trailing dot), so two
//! replicas that see the same answer in another order agree on every member and every room.

use super::membership::MemberSpec;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};

/// One SRV record as answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvRecord {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    pub target: String,
}

/// The canonical member name of an SRV target or host name.
pub fn host_key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// Members from SRV `records` and the addresses of their targets (keyed by [`host_key`]).
/// A target without addresses is left out. SRV weight becomes rendezvous weight (0 counts
/// as 1: SRV's weight 0 means "rarely", never "not at all").
pub fn members_from_srv(
    records: &[SrvRecord],
    addrs: &HashMap<String, Vec<IpAddr>>,
) -> Vec<MemberSpec> {
    let Some(best) = records.iter().map(|r| r.priority).min() else {
        return Vec::new();
    };
    let mut members: BTreeMap<String, MemberSpec> = BTreeMap::new();
    for r in records.iter().filter(|r| r.priority == best) {
        let name = host_key(&r.target);
        // RFC 2782: the target "." means the service is decidedly not offered.
        if name.is_empty() {
            continue;
        }
        let Some(ips) = addrs.get(&name).filter(|ips| !ips.is_empty()) else {
            continue;
        };
        let m = members.entry(name.clone()).or_insert_with(|| MemberSpec {
            name,
            weight: 0,
            addrs: Vec::new(),
        });
        m.weight = m.weight.max(u32::from(r.weight.max(1)));
        for ip in ips {
            let a = SocketAddr::new(*ip, r.port);
            if !m.addrs.contains(&a) {
                m.addrs.push(a);
            }
        }
    }
    members
        .into_values()
        .map(|mut m| {
            m.addrs.sort();
            m
        })
        .collect()
}

/// Members from plain A/AAAA answers: every address is one member, named by the address.
pub fn members_from_addrs(addrs: &[SocketAddr]) -> Vec<MemberSpec> {
    let mut members: Vec<MemberSpec> = addrs
        .iter()
        .map(|a| MemberSpec {
            name: a.ip().to_string(),
            weight: 1,
            addrs: vec![*a],
        })
        .collect();
    members.sort_by(|a, b| a.name.cmp(&b.name));
    members.dedup_by(|a, b| {
        let same = a.name == b.name;
        if same {
            b.addrs.append(&mut a.addrs);
        }
        same
    });
    members
}

/// Every address of every target in the lowest priority class: the web servers of one shard
/// that has an SRV name of its own.
pub fn addrs_from_srv(
    records: &[SrvRecord],
    addrs: &HashMap<String, Vec<IpAddr>>,
) -> Vec<SocketAddr> {
    let mut all: Vec<SocketAddr> = members_from_srv(records, addrs)
        .into_iter()
        .flat_map(|m| m.addrs)
        .collect();
    all.sort();
    all.dedup();
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rec(priority: u16, weight: u16, port: u16, target: &str) -> SrvRecord {
        SrvRecord {
            priority,
            weight,
            port,
            target: target.into(),
        }
    }

    fn ips(pairs: &[(&str, &str)]) -> HashMap<String, Vec<IpAddr>> {
        let mut m: HashMap<String, Vec<IpAddr>> = HashMap::new();
        for (host, ip) in pairs {
            m.entry(host_key(host))
                .or_default()
                .push(ip.parse().unwrap());
        }
        m
    }

    #[test]
    fn lowest_priority_class_named_by_target() {
        let records = [
            rec(10, 50, 80, "Shard-0.web.jitsi.svc."),
            rec(10, 0, 80, "shard-1.web.jitsi.svc."),
            rec(20, 50, 80, "backup.web.jitsi.svc."),
        ];
        let a = ips(&[
            ("shard-0.web.jitsi.svc", "10.0.0.1"),
            ("shard-1.web.jitsi.svc.", "10.0.0.2"),
            ("backup.web.jitsi.svc", "10.0.0.3"),
        ]);
        let m = members_from_srv(&records, &a);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].name, "shard-0.web.jitsi.svc");
        assert_eq!(m[0].weight, 50);
        assert_eq!(m[1].weight, 1, "weight 0 counts as 1");
        assert_eq!(m[1].addrs, vec!["10.0.0.2:80".parse().unwrap()]);
    }

    #[test]
    fn targets_without_addresses_are_left_out_and_ports_merge() {
        let records = [
            rec(0, 1, 80, "a."),
            rec(0, 1, 81, "a."),
            rec(0, 1, 80, "b."),
        ];
        let m = members_from_srv(&records, &ips(&[("a", "10.0.0.1")]));
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].addrs.len(), 2);
        assert!(members_from_srv(&[], &HashMap::new()).is_empty());
        let nothing = [rec(0, 1, 80, ".")];
        assert!(members_from_srv(&nothing, &ips(&[(".", "10.0.0.1")])).is_empty());
        assert_eq!(
            addrs_from_srv(&records, &ips(&[("a", "10.0.0.1"), ("b", "10.0.0.1")])).len(),
            2
        );
    }

    #[test]
    fn plain_addresses_are_members_named_by_address() {
        let a: Vec<SocketAddr> = ["10.0.0.2:9090", "10.0.0.1:9090", "10.0.0.1:9091"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let m = members_from_addrs(&a);
        assert_eq!(
            m.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(),
            ["10.0.0.1", "10.0.0.2"]
        );
        assert_eq!(m[0].addrs.len(), 2);
    }

    proptest! {
        #[test]
        fn answer_order_does_not_matter(mut order in proptest::collection::vec(0usize..6, 6)) {
            let records: Vec<SrvRecord> = (0..6).map(|i| rec(0, (i % 3) as u16, 80, &format!("s{i}.x."))).collect();
            let a: HashMap<String, Vec<IpAddr>> = (0..6).map(|i| (format!("s{i}.x"), vec![format!("10.0.0.{i}").parse().unwrap()])).collect();
            order.dedup();
            let shuffled: Vec<SrvRecord> = order.iter().copied().chain(0..6usize).map(|i| records[i].clone()).collect();
            prop_assert_eq!(members_from_srv(&records, &a), members_from_srv(&shuffled, &a));
        }
    }
}
