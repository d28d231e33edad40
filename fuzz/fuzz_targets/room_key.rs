//! Room keys from arbitrary paths and queries: never a panic, never an empty key, and a key
//! percent-encoded into `?room=` on `/http-bind` (no tenant) comes back unchanged, because
//! normalisation (decode once, lower-case) is idempotent on its own output.
#![no_main]

use libfuzzer_sys::fuzz_target;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use shardgate::config::RoomKeySource;
use shardgate::routing::room_key;

fuzz_target!(|data: &[u8]| {
    let input = String::from_utf8_lossy(data);
    let (path, query) = match input.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (&*input, None),
    };
    for source in [RoomKeySource::RoomParam, RoomKeySource::LastSegment] {
        let Some(key) = room_key(path, query, source) else {
            continue;
        };
        assert!(
            !key.is_empty(),
            "empty key from {path:?} {query:?} ({source:?})"
        );
        let query = format!("room={}", utf8_percent_encode(&key, NON_ALPHANUMERIC));
        let again = room_key("/http-bind", Some(&query), RoomKeySource::RoomParam);
        assert_eq!(
            again.as_deref(),
            Some(&*key),
            "not idempotent via {query:?} ({source:?})"
        );
    }
});
