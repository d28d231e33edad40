//! Applying a fresh DNS answer to a pool's members. Pure but for the shards' own atomics: time
//! is an argument. Shards keep their identity (the same `Arc`, so drain and health state carry
//! over) while their name is answered; a shard no longer answered lingers as draining, serving
//! the rooms stuck to it, until `linger` has passed or it is down; then it is dropped.

use crate::routing::{Members, Shard};
use std::net::SocketAddr;
use std::sync::Arc;

/// A member as discovery found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberSpec {
    pub name: String,
    pub weight: u32,
    pub addrs: Vec<SocketAddr>,
}

/// The members after `fresh` (a new answer; `None` when there is none, which only ages
/// lingering shards). Returns the new members and whether anything changed.
pub fn apply(
    old: &Members,
    fresh: Option<&[MemberSpec]>,
    now_ms: u64,
    linger_ms: u64,
) -> (Members, bool) {
    let mut changed = false;
    let mut shards: Vec<Arc<Shard>> = Vec::new();
    if let Some(fresh) = fresh {
        for spec in fresh {
            match old.get(&spec.name) {
                Some(shard) => {
                    if shard.is_lingering() {
                        shard.set_vanished(None);
                        changed = true;
                    }
                    // Known from another replica until now: found here, and told to others.
                    shard.set_from_peer(false);
                    if shard.base_weight() != spec.weight || **shard.addrs() != spec.addrs {
                        changed = true;
                    }
                    shard.set_weight(spec.weight);
                    shard.set_addrs(spec.addrs.clone());
                    shards.push(shard.clone());
                }
                None => {
                    changed = true;
                    shards.push(Arc::new(Shard::new(
                        &spec.name,
                        spec.weight,
                        spec.addrs.clone(),
                        false,
                    )));
                }
            }
        }
    }
    for shard in &old.shards {
        let answered = fresh.is_none_or(|f| f.iter().any(|s| *s.name == *shard.name));
        if answered {
            if fresh.is_none() {
                shards.push(shard.clone());
            }
            continue;
        }
        changed |= shard.vanished_at().is_none();
        shard.set_vanished(Some(now_ms));
        let since = shard.vanished_at().unwrap_or(now_ms);
        if now_ms.saturating_sub(since) < linger_ms && shard.is_up(now_ms) {
            shards.push(shard.clone());
        } else {
            changed = true;
        }
    }
    if fresh.is_none() {
        // Without an answer, only lingering shards can leave.
        shards.retain(|s| match s.vanished_at() {
            Some(since) => {
                let stay = now_ms.saturating_sub(since) < linger_ms && s.is_up(now_ms);
                changed |= !stay;
                stay
            }
            None => true,
        });
    }
    shards.sort_by(|a, b| a.name.cmp(&b.name));
    shards.dedup_by(|a, b| a.name == b.name);
    (Members::new(shards), changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, ip: &str) -> MemberSpec {
        MemberSpec {
            name: name.into(),
            weight: 1,
            addrs: vec![format!("{ip}:80").parse().unwrap()],
        }
    }

    fn names(m: &Members) -> Vec<String> {
        m.shards.iter().map(|s| s.name.to_string()).collect()
    }

    #[test]
    fn identity_and_state_carry_over() {
        let (m1, changed) = apply(
            &Members::new(vec![]),
            Some(&[spec("a", "10.0.0.1"), spec("b", "10.0.0.2")]),
            0,
            1000,
        );
        assert!(changed);
        m1.get("a")
            .unwrap()
            .set_admin_drain(Some(Arc::from("admin")));
        let (m2, changed) = apply(
            &m1,
            Some(&[spec("b", "10.0.0.2"), spec("a", "10.0.0.9")]),
            10,
            1000,
        );
        assert!(changed, "a's address changed");
        assert!(Arc::ptr_eq(m1.get("a").unwrap(), m2.get("a").unwrap()));
        assert!(
            m2.get("a").unwrap().is_draining(),
            "admin drain survives a new answer"
        );
        assert_eq!(
            m2.get("a").unwrap().addrs()[0],
            "10.0.0.9:80".parse().unwrap()
        );
        let (_, changed) = apply(
            &m2,
            Some(&[spec("a", "10.0.0.9"), spec("b", "10.0.0.2")]),
            20,
            1000,
        );
        assert!(!changed);
    }

    #[test]
    fn vanished_shards_linger_draining_then_leave() {
        let (m1, _) = apply(
            &Members::new(vec![]),
            Some(&[spec("a", "10.0.0.1"), spec("b", "10.0.0.2")]),
            0,
            1000,
        );
        let (m2, changed) = apply(&m1, Some(&[spec("a", "10.0.0.1")]), 100, 1000);
        assert!(changed, "a shard starting to linger is a change (logged)");
        assert_eq!(names(&m2), ["a", "b"]);
        assert!(m2.get("b").unwrap().is_lingering() && m2.get("b").unwrap().is_draining());
        // No answer (DNS failing): lingering still ages.
        let (m3, _) = apply(&m2, None, 900, 1000);
        assert_eq!(names(&m3), ["a", "b"]);
        let (m4, changed) = apply(&m3, None, 1100, 1000);
        assert!(changed);
        assert_eq!(names(&m4), ["a"]);
    }

    #[test]
    fn a_lingering_shard_that_is_down_leaves_at_once_and_a_returning_one_is_listed_again() {
        let (m1, _) = apply(
            &Members::new(vec![]),
            Some(&[spec("a", "10.0.0.1"), spec("b", "10.0.0.2")]),
            0,
            1000,
        );
        let (m2, _) = apply(&m1, Some(&[spec("a", "10.0.0.1")]), 100, 1000);
        let (m3, _) = apply(
            &m2,
            Some(&[spec("a", "10.0.0.1"), spec("b", "10.0.0.2")]),
            200,
            1000,
        );
        assert!(!m3.get("b").unwrap().is_lingering(), "listed again");
        let (m4, _) = apply(&m3, Some(&[spec("a", "10.0.0.1")]), 300, 1000);
        m4.get("b").unwrap().mark_down(10_000);
        let (m5, _) = apply(&m4, None, 400, 1000);
        assert_eq!(names(&m5), ["a"]);
    }
}
