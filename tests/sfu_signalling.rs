//! The SFU through shardgate's own listener: WebSocket signalling and WHIP/WHEP, with str0m
//! clients on real UDP sockets on loopback.

mod common;

use common::webrtc::Client;
use common::*;
use serde_json::json;
use std::time::Duration;
use str0m::media::{Direction, MediaKind};

/// shardgate with the SFU on a fresh UDP port and its route at `/`.
fn start_sfu(extra: &str) -> Shardgate {
    let (head, http, admin) = config_head("t");
    let udp = free_port();
    let config = format!(
        "{head}[sfu]\nudp = \"127.0.0.1:{udp}\"\nmax_peers_per_room = 3\n{extra}\n[[route]]\npath_prefix = \"/\"\nsfu = true\n"
    );
    Shardgate::start(&config, http, admin)
}

fn ws_url(sg: &Shardgate, room: &str) -> String {
    format!("ws://{}/ws?room={room}", sg.http)
}

/// POSTs `body` to `path` as `content_type` (WHIP/WHEP).
async fn post(sg: &Shardgate, path: &str, content_type: &str, body: String) -> reqwest::Response {
    client()
        .post(sg.url(path))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap()
}

async fn metrics(sg: &Shardgate) -> String {
    reqwest::get(sg.admin_url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn types(c: &Client) -> Vec<String> {
    c.messages
        .iter()
        .map(|m| m["type"].as_str().unwrap_or("").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participants_meet_over_websocket_signalling() {
    let sg = start_sfu("");
    let (mut a, offer_a) = Client::new("ada", true, true, Direction::SendOnly).await;
    let (mut b, offer_b) = Client::new("bob", true, true, Direction::SendOnly).await;
    a.join_ws(&ws_url(&sg, "standup"), offer_a).await;
    b.join_ws(&ws_url(&sg, "standup"), offer_b).await;
    tokio::join!(a.run(Duration::from_secs(4)), b.run(Duration::from_secs(4)));
    for (rx, from) in [(&a, "bob"), (&b, "ada")] {
        assert!(
            rx.got(from, MediaKind::Audio) > 50,
            "{} heard {from}: {:?}",
            rx.name,
            rx.received
        );
        assert!(
            rx.got(from, MediaKind::Video) > 20,
            "{} saw {from}: {:?}",
            rx.name,
            rx.received
        );
        let t = types(rx);
        assert_eq!(&t[..2], ["joined", "answer"], "{t:?}");
        assert!(t.contains(&"offer".to_owned()), "renegotiated: {t:?}");
        assert!(t.contains(&"peer".to_owned()), "{t:?}");
    }

    let metrics = metrics(&sg).await;
    assert!(metrics.contains("shardgate_sfu_rooms 1"), "{metrics}");
    assert!(
        metrics.contains("shardgate_sfu_peers{role=\"participant\"} 2"),
        "{metrics}"
    );
    let out_line = metrics
        .lines()
        .find(|l| l.starts_with("shardgate_sfu_rtp_packets_total{direction=\"out\"}"))
        .expect("packets out");
    let out: u64 = out_line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(out > 100, "{out_line}");

    // Bob leaves: Ada is told, and offered the removal of his tracks.
    b.send(json!({"type": "leave"})).await;
    let offers_before = types(&a).iter().filter(|t| *t == "offer").count();
    tokio::join!(a.run(Duration::from_secs(1)), b.run(Duration::from_secs(1)));
    assert!(b.closed, "the server closes after a leave");
    let last_peer = a
        .messages
        .iter()
        .rev()
        .find(|m| m["type"] == "peer")
        .unwrap();
    assert_eq!(last_peer["event"], "left", "{last_peer}");
    assert_eq!(last_peer["name"], "bob");
    assert!(types(&a).iter().filter(|t| *t == "offer").count() > offers_before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_signalling_is_refused_and_others_go_on() {
    let sg = start_sfu("");
    let c = client();
    // No room, a bad room, no upgrade.
    assert_eq!(get(&c, &sg.url("/ws")).await.0, 400);
    assert_eq!(get(&c, &sg.url("/ws?room=a%20b")).await.0, 400);
    assert_eq!(get(&c, &sg.url("/ws?room=ok")).await.0, 426);

    let (mut a, offer_a) = Client::new("ada", true, false, Direction::SendOnly).await;
    a.join_ws(&ws_url(&sg, "r"), offer_a).await;

    // Garbage, then something that is not a join, each from its own connection.
    for bad in [
        "{not json",
        r#"{"type":"answer","sdp":"v=0"}"#,
        r#"{"type":"join","sdp":"garbage"}"#,
    ] {
        let (mut x, _) = Client::new("x", true, false, Direction::SendOnly).await;
        let (ws, _) = tokio_tungstenite::connect_async(ws_url(&sg, "r"))
            .await
            .unwrap();
        x.ws = Some(ws);
        use futures_util::SinkExt;
        x.ws.as_mut()
            .unwrap()
            .send(tokio_tungstenite::tungstenite::Message::text(bad))
            .await
            .unwrap();
        x.run(Duration::from_millis(500)).await;
        assert!(x.closed, "closed after {bad}");
        let err = x
            .messages
            .iter()
            .find(|m| m["type"] == "error")
            .unwrap_or_else(|| panic!("an error for {bad}"));
        assert!(!err["message"].as_str().unwrap().is_empty());
    }

    // The room holds 3: two more fit, the fourth is refused with a reason.
    let (mut b, ob) = Client::new("bob", true, false, Direction::SendOnly).await;
    let (mut d, od) = Client::new("dee", true, false, Direction::SendOnly).await;
    let (mut e, oe) = Client::new("eve", true, false, Direction::SendOnly).await;
    b.join_ws(&ws_url(&sg, "r"), ob).await;
    d.join_ws(&ws_url(&sg, "r"), od).await;
    tokio::join!(
        a.run(Duration::from_secs(2)),
        b.run(Duration::from_secs(2)),
        d.run(Duration::from_secs(2))
    );
    e.join_ws(&ws_url(&sg, "r"), oe).await;
    e.run(Duration::from_millis(500)).await;
    let err = e
        .messages
        .iter()
        .find(|m| m["type"] == "error")
        .expect("refused");
    assert!(err["message"].as_str().unwrap().contains("full"), "{err}");
    assert!(e.closed);

    let heard = a.got("bob", MediaKind::Audio);
    tokio::join!(a.run(Duration::from_secs(1)), b.run(Duration::from_secs(1)));
    assert!(
        heard > 0 && a.got("bob", MediaKind::Audio) > heard,
        "ada still hears bob"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whip_publishes_and_whep_watches() {
    let sg = start_sfu("");
    let c = client();
    let (mut publisher, offer) = Client::new("obs", true, true, Direction::SendOnly).await;

    let wrong = post(&sg, "/whip/show", "text/plain", offer.clone()).await;
    assert_eq!(wrong.status(), 415);
    let bad = post(&sg, "/whip/show", "application/sdp", "garbage".into()).await;
    assert_eq!(bad.status(), 400);

    let resp = post(&sg, "/whip/show", "application/sdp", offer).await;
    assert_eq!(resp.status(), 201);
    assert_eq!(resp.headers()["content-type"], "application/sdp");
    let whip_session = resp.headers()["location"].to_str().unwrap().to_owned();
    assert!(whip_session.starts_with("/whip/show/"), "{whip_session}");
    publisher.accept_answer(&resp.text().await.unwrap());

    let (mut viewer, offer) = Client::new("viewer", true, true, Direction::RecvOnly).await;
    let resp = post(&sg, "/whep/show", "application/sdp", offer).await;
    assert_eq!(resp.status(), 201);
    let whep_session = resp.headers()["location"].to_str().unwrap().to_owned();
    viewer.accept_answer(&resp.text().await.unwrap());

    tokio::join!(
        publisher.run(Duration::from_secs(3)),
        viewer.run(Duration::from_secs(3))
    );
    assert!(
        viewer.got("obs", MediaKind::Audio) > 30,
        "{:?}",
        viewer.received
    );
    assert!(
        viewer.got("obs", MediaKind::Video) > 15,
        "{:?}",
        viewer.received
    );
    assert!(
        publisher.received.is_empty(),
        "a WHIP publisher receives nothing"
    );

    let patch = c.patch(sg.url(&whip_session)).send().await.unwrap();
    assert_eq!(patch.status(), 405);
    for session in [&whep_session, &whip_session] {
        assert_eq!(
            c.delete(sg.url(session)).send().await.unwrap().status(),
            200
        );
        assert_eq!(
            c.delete(sg.url(session)).send().await.unwrap().status(),
            404
        );
    }
    let seen = viewer.got("obs", MediaKind::Video);
    viewer.run(Duration::from_millis(500)).await;
    assert!(
        viewer.got("obs", MediaKind::Video) - seen < 5,
        "nothing after DELETE"
    );
    // The gauges follow within a second or two.
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        let metrics = metrics(&sg).await;
        if metrics.contains("shardgate_sfu_rooms 0") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the room stays open: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_meeting_page_is_served_below_the_prefix() {
    let sg = start_sfu("");
    let c = client();
    for path in ["/", "/standup"] {
        let (status, body) = get(&c, &sg.url(path)).await;
        assert_eq!(status, 200, "{path}");
        assert!(
            body.contains("<!doctype html") || body.contains("<!DOCTYPE html"),
            "{path}"
        );
        assert!(!body.contains("__SG_PREFIX__"), "the prefix is filled in");
    }
    assert_eq!(get(&c, &sg.url("/a/b/c/d")).await.0, 404);
}
