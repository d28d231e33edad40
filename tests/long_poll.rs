//! BOSH long-polls and quiet tunnels under the default timeouts, which must exceed pingora's
//! 60 s read timeout; and a shortened `idle` timeout that is enforced, so the long test proves
//! something.

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

fn sticky(head: &str, extra: &str, backend: &Backend) -> String {
    format!(
        "{head}{extra}{}[[route]]\npath_prefix = \"/\"\nshard = {{ pool = \"shards\" }}\n",
        shard_pool("shards", &[backend])
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defaults_hold_a_70s_long_poll_and_a_70s_quiet_tunnel() {
    let backend = Backend::start("shard-0").await;
    let (head, http, admin) = config_head("t");
    let sg = Shardgate::start(&sticky(&head, "", &backend), http, admin);

    let url = format!("ws://{}/xmpp-websocket?room=quiet", sg.http);
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();

    let started = Instant::now();
    let (status, body) = get(&client(), &sg.url("/hold?ms=70000&room=bosh")).await;
    assert_eq!((status, body.as_str()), (200, "shard-0\n"));
    assert!(started.elapsed() >= Duration::from_secs(70));

    // The tunnel sat silent for over 70 s and still works.
    ws.send(Message::text("still here")).await.unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap();
    assert_eq!(reply.unwrap().unwrap(), Message::text("shard-0:still here"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shortened_idle_timeout_is_enforced() {
    let backend = Backend::start("shard-0").await;
    let (head, http, admin) = config_head("t");
    let sg = Shardgate::start(
        &sticky(&head, "[timeouts]\nidle = \"1s\"\n\n", &backend),
        http,
        admin,
    );
    let c = client();
    let (status, _) = get(&c, &sg.url("/hold?ms=200")).await;
    assert_eq!(status, 200);
    let started = Instant::now();
    let (status, body) = get(&c, &sg.url("/hold?ms=4000")).await;
    assert!(status == 504 || status == 502, "{status} {body}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}
