//! The UDP media relay with real sockets on loopback: fake JVBs echo with their own name;
//! clients on many public ports reach the right JVB and get the replies from the public port
//! they sent to; flows expire; a target's new IP (a DNS update) gets new flows; datagrams to a
//! port without a target are dropped and counted; a source flooding new flows stops at its
//! limit while other clients go on.

mod common;

use common::dns::DnsServer;
use common::*;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;

/// A fake JVB: answers every datagram with `<name>:<payload>` to its sender.
struct Jvb {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Jvb {
    async fn start(name: &str, addr: &str) -> Jvb {
        let socket = UdpSocket::bind(addr).await.unwrap();
        let addr = socket.local_addr().unwrap();
        let name = name.to_owned();
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                let mut reply = format!("{name}:").into_bytes();
                reply.extend_from_slice(&buf[..n]);
                let _ = socket.send_to(&reply, from).await;
            }
        });
        Jvb { addr, task }
    }
}

impl Drop for Jvb {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `n` consecutive UDP ports free on 127.0.0.1 (checked by binding them all).
fn free_udp_range(n: u16) -> u16 {
    for _ in 0..200 {
        let first = 20000 + (rand_u16() % 9000);
        let taken: Result<Vec<_>, _> = (first..first + n)
            .map(|p| std::net::UdpSocket::bind(("127.0.0.1", p)))
            .collect();
        if taken.is_ok() {
            return first;
        }
    }
    panic!("no free UDP port range");
}

fn rand_u16() -> u16 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    (nanos ^ (std::process::id() << 7)) as u16
}

/// Sends `payload` from `client` to `to` and waits for one reply: (text, where it came from).
async fn ask(client: &UdpSocket, to: SocketAddr, payload: &str) -> Option<(String, SocketAddr)> {
    client.send_to(payload.as_bytes(), to).await.unwrap();
    let mut buf = [0u8; 2048];
    let (n, from) = tokio::time::timeout(Duration::from_millis(500), client.recv_from(&mut buf))
        .await
        .ok()?
        .ok()?;
    Some((String::from_utf8_lossy(&buf[..n]).into_owned(), from))
}

/// Like [`ask`], retried while the relay may not have the target yet.
async fn ask_until(client: &UdpSocket, to: SocketAddr, payload: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some((text, from)) = ask(client, to, payload).await {
            if text == want {
                assert_eq!(from, to, "the reply comes from the public port");
                return;
            }
        }
        assert!(Instant::now() < deadline, "never got {want:?} from {to}");
    }
}

/// Waits (up to 5 s: relay threads flush their counters every second) until the metric
/// starting `line_start` satisfies `ok`; returns the scrape.
async fn wait_metric(sg: &Shardgate, line_start: &str, ok: impl Fn(u64) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let metrics = get(&client(), &sg.admin_url("/metrics")).await.1;
        if metric(&metrics, line_start).is_some_and(&ok) {
            return metrics;
        }
        assert!(
            Instant::now() < deadline,
            "{line_start} never as expected:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_reach_their_ports_jvb_flows_expire_and_floods_stop_at_the_limit() {
    let jvbs = [
        Jvb::start("jvb-0", "127.0.0.10:0").await,
        Jvb::start("jvb-1", "127.0.0.11:0").await,
        Jvb::start("jvb-2", "127.0.0.12:0").await,
        Jvb::start("jvb-3", "127.0.0.13:0").await,
    ];
    let first = free_udp_range(4);
    let targets: Vec<String> = jvbs.iter().map(|j| format!("\"{}\"", j.addr)).collect();
    let (head, http, admin) = config_head("t");
    let config = format!(
        "{head}[media]\nthreads = 2\n\n[[media.zone]]\nname = \"z0\"\nbind = \"127.0.0.1\"\n\
         ports = \"{first}-{}\"\ntargets = [{}]\nidle = \"2s\"\nmax_flows_per_source = 4\n\n\
         [[route]]\npath_prefix = \"/\"\nrespond = {{ status = 200, body = \"ok\" }}\n",
        first + 3,
        targets.join(", ")
    );
    let sg = Shardgate::start(&config, http, admin);
    let public = |k: u16| SocketAddr::from(([127, 0, 0, 1], first + k));

    // 20 clients, each on every port: each port's JVB answers, from that public port.
    let mut clients = Vec::new();
    for c in 0..20u8 {
        clients.push(
            UdpSocket::bind((format!("127.0.0.{}", 100 + c), 0))
                .await
                .unwrap(),
        );
        let client = clients.last().unwrap();
        for k in 0..4u16 {
            let payload = format!("c{c}-p{k}");
            ask_until(client, public(k), &payload, &format!("jvb-{k}:{payload}")).await;
        }
    }
    let metrics = wait_metric(
        &sg,
        "shardgate_media_datagrams_total{direction=\"out\",zone=\"z0\"}",
        |n| n >= 80,
    )
    .await;
    assert_eq!(
        metric(&metrics, "shardgate_media_flows{zone=\"z0\"}"),
        Some(80),
        "{metrics}"
    );

    // Idle flows expire (idle = 2s).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = get(&client(), &sg.admin_url("/metrics")).await.1;
        if metric(&metrics, "shardgate_media_flows{zone=\"z0\"}") == Some(0) {
            break;
        }
        assert!(Instant::now() < deadline, "flows never expired: {metrics}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // One source IP opening flows from many ports stops at 4; another source keeps working.
    let mut flood = Vec::new();
    for _ in 0..12 {
        let s = UdpSocket::bind(("127.0.0.40", 0)).await.unwrap();
        s.send_to(b"flood", public(0)).await.unwrap();
        flood.push(s);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut buf = [0u8; 64];
    let answered = flood
        .iter()
        .filter(|s| s.try_recv(&mut buf).is_ok())
        .count();
    assert_eq!(answered, 4, "a source gets max_flows_per_source flows");
    let other = UdpSocket::bind(("127.0.0.41", 0)).await.unwrap();
    ask_until(&other, public(0), "still", "jvb-0:still").await;
    let metrics = wait_metric(
        &sg,
        "shardgate_media_drops_total{reason=\"flow_limit\",zone=\"z0\"}",
        |n| n >= 8,
    )
    .await;
    assert_eq!(
        metric(
            &metrics,
            "shardgate_media_drops_total{reason=\"flow_limit\",zone=\"z0\"}"
        ),
        Some(8),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_by_name_follow_dns_and_unresolved_ports_drop() {
    let dns = DnsServer::start().await;
    let jvb0 = Jvb::start("jvb-0", "127.0.0.10:0").await;
    let port = jvb0.addr.port();
    // The restarted pod: same name, same port, a new address.
    let jvb0_new = Jvb::start("jvb-0-restarted", &format!("127.0.0.20:{port}")).await;
    let jvb1 = Jvb::start("jvb-1", &format!("127.0.0.11:{port}")).await;
    dns.set_a(
        "jvb-0.jvb.test",
        1,
        &["127.0.0.10".parse::<IpAddr>().unwrap()],
    );
    dns.set_a(
        "jvb-1.jvb.test",
        1,
        &["127.0.0.11".parse::<IpAddr>().unwrap()],
    );
    // jvb-2 does not exist.
    let first = free_udp_range(3);
    let (head, http, admin) = config_head("t");
    let config = format!(
        "{head}[resolver]\nnameservers = [\"{}\"]\nmin_ttl = \"1s\"\n\n\
         [[media.zone]]\nname = \"z1\"\nbind = \"127.0.0.1\"\nports = \"{first}-{}\"\n\
         target = \"jvb-{{index}}.jvb.test.:{port}\"\n\n\
         [[route]]\npath_prefix = \"/\"\nrespond = {{ status = 200, body = \"ok\" }}\n",
        dns.nameserver(),
        first + 2,
    );
    let sg = Shardgate::start(&config, http, admin);
    let public = |k: u16| SocketAddr::from(([127, 0, 0, 1], first + k));
    let client = UdpSocket::bind(("127.0.0.30", 0)).await.unwrap();
    ask_until(&client, public(0), "a", "jvb-0:a").await;
    ask_until(&client, public(1), "b", "jvb-1:b").await;

    // No target for port 2: nothing comes back, and the drop is counted.
    assert!(ask(&client, public(2), "c").await.is_none());
    wait_metric(
        &sg,
        "shardgate_media_drops_total{reason=\"no_target\",zone=\"z1\"}",
        |n| n >= 1,
    )
    .await;

    // jvb-0 restarts with a new IP: the flow moves to the new address.
    dns.set_a(
        "jvb-0.jvb.test",
        1,
        &["127.0.0.20".parse::<IpAddr>().unwrap()],
    );
    ask_until(&client, public(0), "d", "jvb-0-restarted:d").await;
    drop((jvb0, jvb0_new, jvb1));
}

/// Bursts like a video frame's (equal datagrams, a shorter last one), empty datagrams among
/// them, sent back to back so that the relay gathers them into single sends (GSO) both ways:
/// every datagram arrives whole, once and in order, and its reply likewise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_arrive_whole_once_and_in_order() {
    let jvb = Jvb::start("j", "127.0.0.10:0").await;
    let port = free_udp_range(1);
    let (head, http, admin) = config_head("t");
    let config = format!(
        "{head}[media]\nthreads = 1\n\n[[media.zone]]\nname = \"z2\"\nbind = \"127.0.0.1\"\n\
         ports = \"{port}-{port}\"\ntargets = [\"{}\"]\n\n\
         [[route]]\npath_prefix = \"/\"\nrespond = {{ status = 200, body = \"ok\" }}\n",
        jvb.addr
    );
    let sg = Shardgate::start(&config, http, admin);
    let public = SocketAddr::from(([127, 0, 0, 1], port));
    let client = std::sync::Arc::new(UdpSocket::bind("127.0.0.100:0").await.unwrap());
    ask_until(&client, public, "hello", "j:hello").await;

    const N: usize = 400;
    let sent: Vec<Vec<u8>> = (0..N)
        .map(|i| {
            let len = match i {
                _ if i % 97 == 0 => 0,
                _ if i % 10 == 9 => 300,
                _ => 1200,
            };
            (0..len).map(|k| (i * 31 + k) as u8).collect()
        })
        .collect();
    let receiver = {
        let client = client.clone();
        tokio::spawn(async move {
            let mut got = Vec::new();
            let mut buf = vec![0u8; 2048];
            while got.len() < N {
                let wait = client.recv_from(&mut buf);
                match tokio::time::timeout(Duration::from_secs(5), wait).await {
                    Ok(Ok((n, from))) => {
                        assert_eq!(from, public);
                        got.push(buf[..n].to_vec());
                    }
                    _ => break,
                }
            }
            got
        })
    };
    for burst in sent.chunks(10) {
        for d in burst {
            client.send_to(d, public).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let got = receiver.await.unwrap();
    let expected: Vec<Vec<u8>> = sent
        .iter()
        .map(|d| [b"j:".as_slice(), d].concat())
        .collect();
    assert_eq!(got.len(), N, "replies received");
    for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
        assert!(g == e, "reply {i}: {} bytes, expected {}", g.len(), e.len());
    }
    let metrics = wait_metric(
        &sg,
        "shardgate_media_datagrams_total{direction=\"out\",zone=\"z2\"}",
        |n| n > N as u64,
    )
    .await;
    assert_eq!(
        metric(
            &metrics,
            "shardgate_media_datagrams_total{direction=\"in\",zone=\"z2\"}"
        ),
        Some(N as u64 + 1),
        "{metrics}"
    );
}
