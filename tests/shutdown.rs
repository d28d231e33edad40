//! Ending the process: SIGTERM turns `/readyz` 503 at once, keeps accepting for
//! `shutdown_delay`, keeps an open WebSocket for `shutdown_grace` and closes it after; SIGINT
//! exits at once.

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

fn signal(sg: &Shardgate, sig: &str) {
    let pid = sg.child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args([sig, &pid])
        .status()
        .unwrap()
        .success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_then_keeps_tunnels_for_the_grace_period() {
    let backend = Backend::start("shard-0").await;
    let (head, http, admin) = config_head("t");
    let config = format!(
        "{head}[timeouts]\nshutdown_delay = \"1s\"\nshutdown_grace = \"3s\"\n\n{}[[route]]\npath_prefix = \"/\"\nshard = {{ pool = \"p\" }}\n",
        shard_pool("p", &[&backend])
    );
    let mut sg = Shardgate::start(&config, http, admin);
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{http}/xmpp-websocket?room=a"))
            .await
            .unwrap();
    let c = client();

    signal(&sg, "-TERM");
    let termed = Instant::now();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, body) = get(&c, &sg.admin_url("/readyz")).await;
    assert_eq!((status, body.as_str()), (503, "shutting down\n"));
    // Still accepting during the delay.
    let fresh = client();
    assert_eq!(get(&fresh, &sg.url("/http-bind?room=b")).await.0, 200);

    // After the delay: new connections are refused, the open tunnel still works.
    tokio::time::sleep(Duration::from_millis(1500).saturating_sub(termed.elapsed())).await;
    assert!(
        tokio::net::TcpStream::connect(http).await.is_err(),
        "still accepting after shutdown_delay"
    );
    ws.send(Message::text("still here")).await.unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(2), ws.next())
        .await
        .unwrap();
    assert_eq!(reply.unwrap().unwrap(), Message::text("shard-0:still here"));

    // Closed after delay + grace, and the process is gone.
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(Message::Text(_))) = ws.next().await {}
    })
    .await;
    assert!(end.is_ok(), "the tunnel outlived the grace period");
    let closed_after = termed.elapsed();
    assert!(
        closed_after >= Duration::from_millis(3500),
        "closed after {closed_after:?}, before delay + grace"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while sg.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the process did not exit");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("SIGTERM -> tunnel closed after {closed_after:?} (delay 1 s + grace 3 s)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_exits_at_once() {
    let backend = Backend::start("shard-0").await;
    let (head, http, admin) = config_head("t");
    let config = format!(
        "{head}{}[[route]]\npath_prefix = \"/\"\nshard = {{ pool = \"p\" }}\n",
        shard_pool("p", &[&backend])
    );
    let mut sg = Shardgate::start(&config, http, admin);
    let (_ws, _) = tokio_tungstenite::connect_async(format!("ws://{http}/xmpp-websocket?room=a"))
        .await
        .unwrap();
    let started = Instant::now();
    signal(&sg, "-INT");
    while sg.child.try_wait().unwrap().is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "SIGINT did not stop the process at once"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_early_when_nothing_is_open() {
    let backend = Backend::start("shard-0").await;
    let (head, http, admin) = config_head("t");
    let config = format!(
        "{head}[timeouts]\nshutdown_delay = \"500ms\"\nshutdown_grace = \"60s\"\n\n{}[[route]]\npath_prefix = \"/\"\nshard = {{ pool = \"p\" }}\n",
        shard_pool("p", &[&backend])
    );
    let mut sg = Shardgate::start(&config, http, admin);
    assert_eq!(get(&client(), &sg.url("/http-bind?room=a")).await.0, 200);
    let started = Instant::now();
    signal(&sg, "-TERM");
    while sg.child.try_wait().unwrap().is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "idle process sat out the 60 s grace"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "exited before shutdown_delay"
    );
}
