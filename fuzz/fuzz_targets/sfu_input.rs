//! What clients can send the SFU: SDP offers, signalling messages and datagrams on its port.
//! Never a panic out of the core (a peer's own fault ends that peer only), and a datagram no
//! peer claims is dropped and counted.
//!
//! The core contains a panic in one peer's WebRTC stack (catch_unwind: that peer ends, or its
//! offer is refused). libfuzzer-sys's panic hook would abort on those too, so this target keeps
//! the message but not the abort; a panic that escapes the core still aborts (libfuzzer-sys
//! catches it around every input).
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardgate::sfu::demux::stun_local_ufrag;
use shardgate::sfu::signal::ClientMessage;
use shardgate::sfu::{Core, Role, Settings};
use std::cell::RefCell;
use std::sync::Once;
use std::time::{Duration, Instant};

thread_local! {
    static SFU: RefCell<(Core, Instant)> = RefCell::new((
        Core::new(Settings {
            advertised: "127.0.0.1:10000".parse().unwrap(),
            max_rooms: 4,
            max_peers_per_room: 4,
        }),
        Instant::now(),
    ));
}

static CONTAINED_PANICS: Once = Once::new();

fuzz_target!(|data: &[u8]| {
    CONTAINED_PANICS.call_once(|| std::panic::set_hook(Box::new(|info| eprintln!("{info}"))));
    let Some((&op, rest)) = data.split_first() else {
        return;
    };
    SFU.with(|sfu| {
        let (core, now) = &mut *sfu.borrow_mut();
        *now += Duration::from_millis(u64::from(op));
        match op % 3 {
            0 => {
                let sdp = String::from_utf8_lossy(rest);
                if let Ok((peer, answer)) = core.join("fuzz", Role::Participant, None, &sdp, *now) {
                    assert!(answer.starts_with("v=0"));
                    core.leave(peer, *now);
                }
            }
            1 => {
                let _ = serde_json::from_slice::<ClientMessage>(rest);
                let _ = stun_local_ufrag(rest);
            }
            _ => {
                let before = core.counters().dropped_unknown;
                let source = "127.0.0.2:5000".parse().unwrap();
                if !core.handle_datagram(source, rest, *now) {
                    let after = core.counters();
                    assert!(after.dropped_unknown > before || after.dropped_malformed > 0);
                }
                core.handle_timeout(*now);
            }
        }
        while core.poll_output().is_some() {}
        assert_eq!(core.rooms(), 0, "every peer left");
    });
});
