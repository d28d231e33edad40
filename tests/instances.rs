//! Instance-addressed routes: JVB bridge websockets reach the JVB their URL names, in every id
//! form; ids that name no member get 404 and reach nobody (no SSRF); sftd-style routes strip
//! their prefix and answer CORS preflights at the edge.

mod common;

use common::dns::DnsServer;
use common::*;
use futures_util::{SinkExt, StreamExt};
use std::net::IpAddr;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const SRV: &str = "_colibri-ws._tcp.jvb.test.";

struct Setup {
    jvbs: [Backend; 2],
    trap: Backend,
    sg: Shardgate,
    _dns: DnsServer,
}

async fn setup() -> Setup {
    let dns = DnsServer::start().await;
    let jvbs = [
        Backend::start_at("jvb-0", "127.0.0.2", 0).await,
        Backend::start_at("jvb-1", "127.0.0.3", 0).await,
    ];
    // Listens where a naive proxy would connect for the id "127.0.0.1": must never be reached.
    let trap = Backend::start_at("trap", "127.0.0.1", 0).await;
    let records: Vec<(u16, u16, u16, String)> = jvbs
        .iter()
        .map(|j| (0, 1, j.addr.port(), format!("{}.jvb.test.", j.name)))
        .collect();
    let refs: Vec<(u16, u16, u16, &str)> = records
        .iter()
        .map(|(a, b, c, d)| (*a, *b, *c, d.as_str()))
        .collect();
    dns.set_srv(SRV, 30, &refs);
    for j in &jvbs {
        dns.set_a(&format!("{}.jvb.test.", j.name), 30, &[j.addr.ip()]);
    }
    let (head, http, admin) = config_head("t");
    let mut config = format!("{head}[resolver]\nnameservers = [\"{}\"]\n\n", dns.addr);
    for (pool, id) in [
        ("jvb-ip", "ip"),
        ("jvb-host", "host"),
        ("jvb-octets", "jitsi-octets"),
    ] {
        config += &format!(
            "[[pool]]\nname = \"{pool}\"\ninstances.srv = \"{SRV}\"\ninstances.id = \"{id}\"\n\n"
        );
    }
    config += "[[route]]\npath_prefix = \"/colibri-ws/\"\ninstance = { pool = \"jvb-ip\", segment = 2 }\n\n\
               [[route]]\npath_prefix = \"/colibri-relay-ws/\"\ninstance = { pool = \"jvb-octets\", segment = 2 }\n\n\
               [[route]]\npath_prefix = \"/sftd/\"\nstrip_prefix = true\ninstance = { pool = \"jvb-host\", segment = 2 }\n\
               cors = { allow_origin = [\"https://app.example.com\"] }\n";
    let sg = Shardgate::start(&config, http, admin);
    let c = client();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ready = get(&c, &sg.admin_url("/readyz")).await.1;
        if ready.matches("2/2 shards up").count() == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "{ready}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Setup {
        jvbs,
        trap,
        sg,
        _dns: dns,
    }
}

async fn ws_echo(sg: &Shardgate, path: &str, origin: Option<&str>) -> Result<String, String> {
    let mut req = format!("ws://{}{path}", sg.http)
        .into_client_request()
        .unwrap();
    if let Some(o) = origin {
        req.headers_mut().insert("origin", o.parse().unwrap());
    }
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .map_err(|e| e.to_string())?;
    ws.send(Message::text("hello")).await.unwrap();
    match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) => Ok(t.to_string()),
        other => Err(format!("{other:?}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_websockets_reach_the_named_jvb_in_every_id_form() {
    let s = setup().await;
    assert_eq!(
        ws_echo(&s.sg, "/colibri-ws/127.0.0.3/conf/ep?pwd=x", None)
            .await
            .unwrap(),
        "jvb-1:hello"
    );
    assert_eq!(
        ws_echo(&s.sg, "/colibri-ws/127.0.0.2/conf/ep?pwd=x", None)
            .await
            .unwrap(),
        "jvb-0:hello"
    );
    assert_eq!(
        ws_echo(&s.sg, "/colibri-relay-ws/jvb-0-0-3/conf/ep", None)
            .await
            .unwrap(),
        "jvb-1:hello"
    );
    let c = client();
    let (status, body) = get(&c, &s.sg.url("/sftd/jvb-0/calls?x=1")).await;
    assert_eq!((status, body.as_str()), (200, "jvb-0\n"));
    assert_eq!(
        s.jvbs[0].seen.header(":path"),
        vec!["/jvb-0/calls?x=1"],
        "prefix stripped"
    );
    let (status, _) = get(&c, &s.sg.url("/sftd/jvb-1.jvb.test/calls")).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_that_name_no_member_get_404_and_reach_nobody() {
    let s = setup().await;
    let c = client();
    let before: Vec<usize> = s.jvbs.iter().map(|j| j.requests()).collect();
    for id in [
        "127.0.0.1",
        "169.254.169.254",
        "evil.example",
        "..",
        "%2e%2e",
        "127.0.0.2%00",
        "127.0.0.2:80",
        "localhost",
        "jvb-0-0-1",
        "0x7f000002",
        "[::1]",
    ] {
        for prefix in ["/colibri-ws/", "/colibri-relay-ws/", "/sftd/"] {
            let (status, body) = get(&c, &s.sg.url(&format!("{prefix}{id}/conf/ep"))).await;
            assert_eq!(status, 404, "{prefix}{id}: {body}");
        }
        assert!(
            ws_echo(&s.sg, &format!("/colibri-ws/{id}/conf/ep"), None)
                .await
                .is_err(),
            "{id}"
        );
    }
    let (status, _) = get(&c, &s.sg.url("/colibri-ws/")).await;
    assert_eq!(status, 404, "no id at all");
    assert_eq!(s.trap.requests(), 0, "an id reached 127.0.0.1");
    let after: Vec<usize> = s.jvbs.iter().map(|j| j.requests()).collect();
    assert_eq!(before, after, "a refused id reached a JVB");
    let metrics = get(&c, &s.sg.admin_url("/metrics")).await.1;
    assert!(
        metrics.contains("shardgate_rejected_requests_total{reason=\"unknown_instance\"}"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflights_at_the_edge_and_foreign_websockets_refused() {
    let s = setup().await;
    let c = client();
    let pre = c
        .request(reqwest::Method::OPTIONS, s.sg.url("/sftd/jvb-0/calls"))
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .send()
        .await
        .unwrap();
    assert_eq!(pre.status(), 204);
    assert_eq!(
        pre.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert_eq!(
        s.jvbs[0].requests(),
        0,
        "the preflight was answered at the edge"
    );
    let evil = c
        .request(reqwest::Method::OPTIONS, s.sg.url("/sftd/jvb-0/calls"))
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(evil.status(), 403);
    let ok = c
        .post(s.sg.url("/sftd/jvb-0/calls"))
        .header("origin", "https://app.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(
        ok.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert!(
        ws_echo(&s.sg, "/sftd/jvb-0/ws", Some("https://evil.example"))
            .await
            .is_err()
    );
    assert_eq!(
        ws_echo(&s.sg, "/sftd/jvb-0/ws", Some("https://app.example.com"))
            .await
            .unwrap(),
        "jvb-0:hello"
    );
    let _: IpAddr = s.jvbs[0].addr.ip();
}
