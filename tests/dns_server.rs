//! The test DNS server (`common::dns::DnsServer`) checked with the resolver shardgate uses
//! (hickory-resolver), pointed at it alone: no system config, no hosts file.

mod common;

use common::dns::DnsServer;
use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::NetError;
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::{Resolver, TokioResolver};
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// A resolver that asks only `dns`, over UDP (and TCP after a truncated answer), with a
/// 500 ms timeout, a single try (`attempts` counts retries after the first try), and the given
/// cache size.
fn resolver(dns: &DnsServer, cache_size: u64) -> TokioResolver {
    let mut udp = ConnectionConfig::udp();
    udp.port = dns.addr.port();
    let mut tcp = ConnectionConfig::tcp();
    tcp.port = dns.addr.port();
    let server = NameServerConfig::new(dns.addr.ip(), true, vec![udp, tcp]);
    let config = ResolverConfig::from_name_servers(vec![server]);
    let mut opts = ResolverOpts::default();
    opts.timeout = Duration::from_millis(500);
    opts.attempts = 0;
    opts.cache_size = cache_size;
    opts.use_hosts_file = ResolveHosts::Never;
    Resolver::builder_with_config(config, TokioRuntimeProvider::default())
        .with_options(opts)
        .build()
        .expect("build resolver")
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// (priority, weight, port, target without the final dot, ttl) of each SRV answer, sorted.
async fn srv(r: &TokioResolver, name: &str) -> Result<Vec<(u16, u16, u16, String, u32)>, NetError> {
    let lookup = r.srv_lookup(name).await?;
    let mut out: Vec<_> = lookup
        .answers()
        .iter()
        .filter_map(|rec| match &rec.data {
            RData::SRV(s) => Some((
                s.priority,
                s.weight,
                s.port,
                s.target.to_ascii().trim_end_matches('.').to_string(),
                rec.ttl,
            )),
            _ => None,
        })
        .collect();
    out.sort();
    Ok(out)
}

#[tokio::test]
async fn srv_answers_carry_target_addresses() {
    let dns = DnsServer::start().await;
    let name = "_sip._tcp.shards.ns.svc.cluster.local";
    dns.set_a(
        "shard-0.shards.ns.svc.cluster.local.",
        7,
        &[ip("127.0.0.10")],
    );
    dns.set_a(
        "Shard-1.Shards.ns.svc.cluster.local",
        8,
        &[ip("127.0.0.11"), ip("::1")],
    );
    dns.set_srv(
        name,
        30,
        &[
            (10, 50, 8443, "shard-0.shards.ns.svc.cluster.local"),
            (10, 50, 8444, "shard-1.shards.ns.svc.cluster.local."),
            (20, 0, 8445, "elsewhere.example"),
        ],
    );
    let r = resolver(&dns, 0);

    let before = Instant::now();
    let lookup = r
        .srv_lookup("_SIP._tcp.Shards.ns.svc.cluster.local.")
        .await
        .unwrap();
    assert!(lookup.valid_until() > before + Duration::from_secs(25));
    assert!(lookup.valid_until() <= Instant::now() + Duration::from_secs(30));
    let got = srv(&r, name).await.unwrap();
    assert_eq!(
        got,
        vec![
            (
                10,
                50,
                8443,
                "shard-0.shards.ns.svc.cluster.local".to_string(),
                30
            ),
            (
                10,
                50,
                8444,
                "shard-1.shards.ns.svc.cluster.local".to_string(),
                30
            ),
            (20, 0, 8445, "elsewhere.example".to_string(), 30),
        ]
    );

    // The additional section holds the known targets' addresses, with their own TTLs.
    let mut extra = BTreeSet::new();
    for rec in lookup.additionals() {
        let addr = match &rec.data {
            RData::A(a) => IpAddr::V4(a.0),
            RData::AAAA(a) => IpAddr::V6(a.0),
            _ => continue,
        };
        extra.insert((rec.name.to_ascii(), addr, rec.ttl));
    }
    let want: BTreeSet<_> = [
        ("shard-0.shards.ns.svc.cluster.local.", "127.0.0.10", 7),
        ("shard-1.shards.ns.svc.cluster.local.", "127.0.0.11", 8),
        ("shard-1.shards.ns.svc.cluster.local.", "::1", 8),
    ]
    .into_iter()
    .map(|(n, a, t)| (n.to_string(), ip(a), t))
    .collect();
    assert_eq!(extra, want);

    // The targets also resolve directly, by family.
    let v4 = r
        .ipv4_lookup("shard-1.shards.ns.svc.cluster.local.")
        .await
        .unwrap();
    assert_eq!(v4.answers().len(), 1);
    assert!(matches!(&v4.answers()[0].data, RData::A(a) if a.0.octets() == [127, 0, 0, 11]));
    let all: Vec<IpAddr> = r
        .lookup_ip("shard-1.shards.ns.svc.cluster.local.")
        .await
        .unwrap()
        .iter()
        .collect();
    assert_eq!(
        all.iter().collect::<BTreeSet<_>>(),
        [ip("127.0.0.11"), ip("::1")].iter().collect()
    );
}

#[tokio::test]
async fn changes_are_seen_on_the_next_lookup() {
    let dns = DnsServer::start().await;
    let name = "_sip._tcp.pool.test";
    dns.set_srv(name, 60, &[(1, 1, 1000, "a.pool.test")]);
    let uncached = resolver(&dns, 0);
    assert_eq!(srv(&uncached, name).await.unwrap()[0].2, 1000);

    dns.set_srv(
        name,
        60,
        &[(1, 1, 2000, "b.pool.test"), (1, 1, 3000, "c.pool.test")],
    );
    let ports: Vec<u16> = srv(&uncached, name)
        .await
        .unwrap()
        .iter()
        .map(|s| s.2)
        .collect();
    assert_eq!(ports, vec![2000, 3000]);

    // A caching resolver keeps the answer for its TTL; clearing its cache asks again.
    let cached = resolver(&dns, 1024);
    assert_eq!(srv(&cached, name).await.unwrap().len(), 2);
    dns.set_srv(name, 60, &[(1, 1, 4000, "d.pool.test")]);
    assert_eq!(srv(&cached, name).await.unwrap().len(), 2);
    cached.clear_cache();
    assert_eq!(srv(&cached, name).await.unwrap()[0].2, 4000);

    // Removed: NXDOMAIN.
    dns.remove(name);
    assert!(srv(&uncached, name).await.unwrap_err().is_nx_domain());
}

#[tokio::test]
async fn nxdomain_and_no_data_are_told_apart() {
    let dns = DnsServer::start().await;
    dns.set_a("host.zone.test", 5, &[ip("127.0.0.1")]);
    let r = resolver(&dns, 0);

    let err = r.srv_lookup("nothing.zone.test.").await.unwrap_err();
    assert!(err.is_nx_domain(), "{err:?}");
    assert!(err.is_no_records_found());

    // The name exists, but has no SRV records: NOERROR, no data.
    let err = r.srv_lookup("host.zone.test.").await.unwrap_err();
    assert!(!err.is_nx_domain(), "{err:?}");
    match err {
        NetError::Dns(hickory_resolver::net::DnsError::NoRecordsFound(no)) => {
            assert_eq!(no.response_code, ResponseCode::NoError)
        }
        other => panic!("expected no records, got {other:?}"),
    }
    // Only IPv4 known: AAAA is no data, not NXDOMAIN.
    let err = r.ipv6_lookup("host.zone.test.").await.unwrap_err();
    assert!(err.is_no_records_found() && !err.is_nx_domain(), "{err:?}");
    // A name with names below it exists too.
    let err = r.lookup("zone.test.", RecordType::A).await.unwrap_err();
    assert!(err.is_no_records_found() && !err.is_nx_domain(), "{err:?}");
}

#[tokio::test]
async fn paused_server_times_out_then_recovers() {
    let dns = DnsServer::start().await;
    dns.set_srv("_s._tcp.p.test", 5, &[(1, 1, 80, "x.p.test")]);
    let r = resolver(&dns, 0);
    assert_eq!(srv(&r, "_s._tcp.p.test.").await.unwrap().len(), 1);

    dns.pause();
    let before = dns.queries("_s._tcp.p.test");
    let start = Instant::now();
    let err = srv(&r, "_s._tcp.p.test.").await.unwrap_err();
    let took = start.elapsed();
    assert!(matches!(err, NetError::Timeout), "{err:?}");
    assert!(!err.is_no_records_found());
    assert!(took >= Duration::from_millis(400), "{took:?}");
    assert!(
        took < Duration::from_millis(900),
        "one try of 500 ms: {took:?}"
    );
    // Dropped queries are counted, UDP retransmissions within the try included.
    assert!(dns.queries("_s._tcp.p.test") > before);

    dns.resume();
    assert_eq!(srv(&r, "_s._tcp.p.test.").await.unwrap().len(), 1);
}

#[tokio::test]
async fn queries_are_counted_per_name() {
    let dns = DnsServer::start().await;
    dns.set_a("counted.test", 5, &[ip("127.0.0.2")]);
    let r = resolver(&dns, 0);
    assert_eq!(dns.queries("counted.test"), 0);
    r.ipv4_lookup("counted.test.").await.unwrap();
    r.ipv4_lookup("COUNTED.test.").await.unwrap();
    let _ = r.srv_lookup("counted.test.").await;
    let _ = r.ipv4_lookup("other.test.").await;
    assert_eq!(dns.queries("counted.test."), 3);
    assert_eq!(dns.queries("Other.Test"), 1);
    assert_eq!(dns.queries("never.test"), 0);
}

#[tokio::test]
async fn reversed_order_and_large_answers_over_tcp() {
    let dns = DnsServer::start().await;
    let targets: Vec<String> = (0..60).map(|i| format!("t{i}.big.test")).collect();
    let records: Vec<(u16, u16, u16, &str)> = targets
        .iter()
        .enumerate()
        .map(|(i, t)| (1, 1, 9000 + i as u16, t.as_str()))
        .collect();
    dns.set_srv("_big._tcp.big.test", 5, &records[..3]);
    let r = resolver(&dns, 0);

    let order = |l: &hickory_resolver::lookup::Lookup| -> Vec<u16> {
        l.answers()
            .iter()
            .filter_map(|rec| match &rec.data {
                RData::SRV(s) => Some(s.port),
                _ => None,
            })
            .collect()
    };
    let l = r.srv_lookup("_big._tcp.big.test.").await.unwrap();
    assert_eq!(order(&l), vec![9000, 9001, 9002]);
    dns.set_answer_order_reversed(true);
    let l = r.srv_lookup("_big._tcp.big.test.").await.unwrap();
    assert_eq!(order(&l), vec![9002, 9001, 9000]);
    dns.set_answer_order_reversed(false);

    // 60 SRV records do not fit a UDP answer: truncated, then retried over TCP.
    dns.set_srv("_big._tcp.big.test", 5, &records);
    for t in &targets {
        dns.set_a(t, 5, &[ip("127.0.0.3")]);
    }
    let before = dns.queries("_big._tcp.big.test");
    let got = srv(&r, "_big._tcp.big.test.").await.unwrap();
    assert_eq!(got.len(), 60);
    assert_eq!(
        dns.queries("_big._tcp.big.test") - before,
        2,
        "UDP, then TCP"
    );
}
