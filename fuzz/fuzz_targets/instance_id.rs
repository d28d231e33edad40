//! Instance ids from arbitrary request paths: never a panic, and a hit only ever names a member
//! the way its id form says (so no made-up id reaches anything but a member).
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardgate::config::InstanceId;
use shardgate::routing::{find_instance, path_segment, Members, Shard};
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

fn members() -> &'static Members {
    static M: OnceLock<Members> = OnceLock::new();
    M.get_or_init(|| {
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
                vec!["[fd00::7]:9090".parse().unwrap()],
                false,
            )),
            Arc::new(Shard::new(
                "sftd-2",
                1,
                vec!["127.0.0.9:8585".parse().unwrap()],
                false,
            )),
        ])
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let path = String::from_utf8_lossy(rest);
    let Some(id) = path_segment(&path, usize::from(n % 6)) else {
        return;
    };
    assert!(!id.contains('/') && !id.is_empty());
    let m = members();
    for form in [InstanceId::Host, InstanceId::Ip, InstanceId::JitsiOctets] {
        let Some(i) = find_instance(m, id, form) else {
            continue;
        };
        let member = &m.shards[i];
        let ok = match form {
            InstanceId::Host => {
                member.name.eq_ignore_ascii_case(id)
                    || member
                        .name
                        .split('.')
                        .next()
                        .is_some_and(|l| l.eq_ignore_ascii_case(id))
            }
            InstanceId::Ip => id
                .parse::<IpAddr>()
                .is_ok_and(|ip| member.addrs().iter().any(|a| a.ip() == ip)),
            InstanceId::JitsiOctets => {
                id.starts_with("jvb-")
                    && id.bytes().all(|b| {
                        b.is_ascii_digit() || b == b'-' || b == b'j' || b == b'v' || b == b'b'
                    })
            }
        };
        assert!(ok, "{id:?} under {form:?} named {}", member.name);
    }
});
