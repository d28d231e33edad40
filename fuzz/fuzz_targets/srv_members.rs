//! DNS SRV answers to pool members, and members through successive answers.
//!
//! The bytes decode into a few rounds; each is either a DNS failure (no answer) or an answer:
//! SRV records (priority, weight, port, target from a small alphabet with case and trailing-dot
//! variants) and the addresses of target names. Each answer goes through `members_from_srv`,
//! which must name members only from the lowest priority class, never return one without
//! addresses, return them sorted and unique, agree on any order of the records, and match a
//! plain model of its doc (every target of the class with addresses is a member, with every
//! (address, port) pair once and the largest weight, 0 counting as 1). The members then go
//! through `apply`, from no members, with time moving forward and shards sometimes marked down
//! or drained between rounds: it must never panic, and every member that is not lingering must
//! be in the latest answer; also every answered member is listed as answered, lingering ones
//! are within their linger and up, shards keep their identity, and applying the same answer
//! again at the same time changes nothing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardgate::discovery::srv::host_key;
use shardgate::discovery::{apply, members_from_srv, MemberSpec, SrvRecord};
use shardgate::routing::Members;
use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

/// SRV targets: three hosts in several spellings, one without addresses, and the root
/// ("service not offered").
const TARGETS: [&str; 8] = ["a.x.", "A.x.", "a.x", "b.x.", "B.X", "c.x.", "d.x.", "."];
/// Names with addresses, keyed like `lookup_srv` does (`host_key`), plus one spelled otherwise,
/// which must never match.
const HOSTS: [&str; 4] = ["a.x", "b.x", "c.x", "A.x"];
const PRIORITIES: [u16; 8] = [0, 0, 1, 1, 2, 10, 1000, u16::MAX];
const PORTS: [u16; 8] = [80, 80, 443, 0, 65535, 8080, 81, 82];

/// Reads the input a byte at a time; past the end every byte is 0.
struct Bytes<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Bytes<'_> {
    fn byte(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[usize::from(self.byte()) % from.len()]
    }
}

type Addrs = HashMap<String, Vec<IpAddr>>;

fn answer(b: &mut Bytes) -> (Vec<SrvRecord>, Addrs) {
    let n = b.byte() % 13;
    let records = (0..n)
        .map(|_| SrvRecord {
            priority: b.pick(&PRIORITIES),
            weight: b.u16(),
            port: b.pick(&PORTS),
            target: b.pick(&TARGETS).to_owned(),
        })
        .collect();
    let mut addrs = Addrs::new();
    for host in HOSTS {
        let count = b.byte() % 4;
        if count == 0 {
            continue; // absent; 1 is present with no addresses, 2 and 3 one or two
        }
        let ips = (0..count - 1)
            .map(|_| {
                let v = b.byte();
                if v & 0x80 == 0 {
                    IpAddr::V4(Ipv4Addr::new(10, 0, 0, v & 7))
                } else {
                    IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, u16::from(v & 7)))
                }
            })
            .collect();
        addrs.insert(host.to_owned(), ips);
    }
    (records, addrs)
}

fn check_members(records: &[SrvRecord], addrs: &Addrs, members: &[MemberSpec]) {
    let best = records.iter().map(|r| r.priority).min();
    let class: Vec<&SrvRecord> = records
        .iter()
        .filter(|r| Some(r.priority) == best)
        .collect();
    let ips_of = |name: &str| addrs.get(name).filter(|ips| !ips.is_empty());

    for w in members.windows(2) {
        assert!(
            w[0].name < w[1].name,
            "members not sorted and unique: {:?} then {:?}",
            w[0].name,
            w[1].name
        );
    }
    for m in members {
        let own: Vec<&&SrvRecord> = class
            .iter()
            .filter(|r| host_key(&r.target) == m.name)
            .collect();
        assert!(
            !own.is_empty(),
            "member {:?} is no target of the lowest priority class {best:?}",
            m.name
        );
        assert!(!m.addrs.is_empty(), "member {:?} has no addresses", m.name);
        for w in m.addrs.windows(2) {
            assert!(w[0] < w[1], "{:?}: addrs not sorted and unique", m.name);
        }
        let ips = ips_of(&m.name).expect("a member's target has addresses");
        let want: BTreeSet<SocketAddr> = own
            .iter()
            .flat_map(|r| ips.iter().map(|ip| SocketAddr::new(*ip, r.port)))
            .collect();
        let got: BTreeSet<SocketAddr> = m.addrs.iter().copied().collect();
        assert_eq!(got, want, "{:?}: addresses", m.name);
        let weight = own.iter().map(|r| u32::from(r.weight.max(1))).max();
        assert_eq!(Some(m.weight), weight, "{:?}: weight", m.name);
    }
    for r in &class {
        let name = host_key(&r.target);
        if ips_of(&name).is_some() {
            assert!(
                members.iter().any(|m| m.name == name),
                "target {:?} has addresses but is no member",
                r.target
            );
        }
    }
}

fn names(m: &Members) -> Vec<String> {
    m.shards.iter().map(|s| s.name.to_string()).collect()
}

fn check_apply(
    old: &Members,
    next: &Members,
    changed: bool,
    fresh: Option<&[MemberSpec]>,
    latest: &[MemberSpec],
    now_ms: u64,
    linger_ms: u64,
) {
    for w in next.shards.windows(2) {
        assert!(w[0].name < w[1].name, "members not sorted and unique");
    }
    for (i, s) in next.shards.iter().enumerate() {
        assert_eq!(next.index_of(&s.name), Some(i), "{}: index", s.name);
        if let Some(before) = old.get(&s.name) {
            assert!(Arc::ptr_eq(before, s), "{}: identity lost", s.name);
        }
        match s.vanished_at() {
            None => assert!(
                latest.iter().any(|m| *m.name == *s.name),
                "{} is not lingering but not in the latest answer {:?}",
                s.name,
                latest.iter().map(|m| &m.name).collect::<Vec<_>>()
            ),
            Some(since) => {
                assert!(
                    !latest.iter().any(|m| *m.name == *s.name),
                    "{} lingers but is answered",
                    s.name
                );
                assert!(s.is_draining(), "{} lingers but is not draining", s.name);
                assert!(
                    now_ms.saturating_sub(since) < linger_ms && s.is_up(now_ms),
                    "{} lingers past its linger ({since} + {linger_ms} at {now_ms}) or while down",
                    s.name
                );
            }
        }
    }
    if let Some(fresh) = fresh {
        for m in fresh {
            let s = next
                .get(&m.name)
                .unwrap_or_else(|| panic!("answered {} is no member", m.name));
            assert!(!s.is_lingering(), "answered {} lingers", m.name);
            assert_eq!(s.weight(), m.weight, "{}: weight", m.name);
            assert_eq!(**s.addrs(), m.addrs, "{}: addrs", m.name);
        }
    }
    if names(old) != names(next) {
        assert!(
            changed,
            "members went from {:?} to {:?} unchanged",
            names(old),
            names(next)
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes { data, pos: 0 };
    let linger_ms = (u64::from(b.byte()) + 1) * 64;
    let rounds = 1 + b.byte() % 6;
    let mut now_ms = u64::from(b.u16());
    let mut members = Members::new(vec![]);
    let mut latest: Vec<MemberSpec> = Vec::new();

    for _ in 0..rounds {
        let fresh = if b.byte() % 8 == 7 {
            None // the lookup failed: no answer
        } else {
            let (records, addrs) = answer(&mut b);
            let out = members_from_srv(&records, &addrs);
            check_members(&records, &addrs, &out);
            let reversed: Vec<SrvRecord> = records.iter().rev().cloned().collect();
            assert_eq!(members_from_srv(&reversed, &addrs), out, "reversed records");
            if !records.is_empty() {
                let mut rotated = records.clone();
                rotated.rotate_left(usize::from(b.byte()) % records.len());
                assert_eq!(members_from_srv(&rotated, &addrs), out, "rotated records");
            }
            Some(out)
        };

        // Between answers: a shard refuses connections for a while, or an admin drains one.
        let event = b.byte();
        if !members.shards.is_empty() && event & 0b11 != 0 {
            let s = &members.shards[usize::from(b.byte()) % members.shards.len()];
            match event & 0b11 {
                1 => s.mark_down(now_ms + u64::from(b.byte()) * 32),
                2 => s.set_admin_drain(Some(Arc::from("fuzz"))),
                _ => s.set_admin_drain(None),
            }
        }
        now_ms += u64::from(b.byte()) * 16;

        if let Some(fresh) = &fresh {
            latest = fresh.clone();
        }
        let (next, changed) = apply(&members, fresh.as_deref(), now_ms, linger_ms);
        check_apply(
            &members,
            &next,
            changed,
            fresh.as_deref(),
            &latest,
            now_ms,
            linger_ms,
        );
        let (again, changed_again) = apply(&next, fresh.as_deref(), now_ms, linger_ms);
        assert!(
            !changed_again && names(&again) == names(&next),
            "the same answer again at the same time changed {:?} to {:?}",
            names(&next),
            names(&again)
        );
        members = next;
    }
});
