//! What clients can send the SFU: SDP offers, signalling messages and datagrams on its port.
//! Never a panic out of the core (a peer's own fault ends that peer only), and a datagram no
//! peer claims is dropped and counted.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardgate::sfu::demux::stun_local_ufrag;
use shardgate::sfu::signal::ClientMessage;
use shardgate::sfu::{Core, Role, Settings};
use std::cell::RefCell;
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

fuzz_target!(|data: &[u8]| {
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
