//! The SFU with real browsers: headless Chromium (fake camera and microphone) opens the meeting
//! page three times, A and B in one room and C alone in another, driven over the DevTools
//! protocol. A and B must decode each other's video and receive audio; C must receive nothing.
//! Needs `/usr/bin/chromium` (CI installs it); `SHARDGATE_SKIP_BROWSER=1` skips the test.

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const CHROMIUM: &str = "/usr/bin/chromium";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_browsers_see_each_other_and_a_third_room_stays_silent() {
    if !Path::new(CHROMIUM).exists() {
        if std::env::var("SHARDGATE_SKIP_BROWSER").as_deref() == Ok("1") {
            eprintln!("skipped: {CHROMIUM} is missing and SHARDGATE_SKIP_BROWSER=1");
            return;
        }
        panic!("{CHROMIUM} is missing: install Debian's chromium (see .ci/run) or set SHARDGATE_SKIP_BROWSER=1");
    }
    let (head, http, admin) = config_head("t");
    let udp = free_port();
    let config = format!(
        "{head}[sfu]\nudp = \"127.0.0.1:{udp}\"\n\n[[route]]\npath_prefix = \"/\"\nsfu = true\n"
    );
    let sg = Shardgate::start(&config, http, admin);
    let browser = Chromium::launch();
    tokio::time::timeout(Duration::from_secs(90), meet(&sg, &browser))
        .await
        .expect("the browser test took more than 90 s");
}

async fn meet(sg: &Shardgate, browser: &Chromium) {
    let mut control = Cdp::connect(&browser.ws_url().await).await;
    let mut a = browser.open(&mut control, &sg.url("/roomone")).await;
    let mut b = browser.open(&mut control, &sg.url("/roomone")).await;
    let mut c = browser.open(&mut control, &sg.url("/roomtwo")).await;

    // Until A and B both decode video and receive audio; C, alone, receives nothing meanwhile.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (first_a, first_b) = loop {
        let (sa, sb, sc) = (a.stats().await, b.stats().await, c.stats().await);
        println!("waiting: A {sa}\n         B {sb}\n         C {sc}");
        assert_silent(&sc);
        if flowing(&sa) && flowing(&sb) {
            break (sa, sb);
        }
        for s in [&sa, &sb, &sc] {
            assert!(s["error"].is_null(), "a page reported an error: {s}");
        }
        assert!(
            Instant::now() < deadline,
            "no media between A and B within 30 s: A {sa}, B {sb}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    tokio::time::sleep(Duration::from_secs(3)).await;
    let (second_a, second_b, last_c) = (a.stats().await, b.stats().await, c.stats().await);
    println!("first:  A {first_a}\n        B {first_b}");
    println!("second: A {second_a}\n        B {second_b}\n        C {last_c}");
    for (who, first, second) in [("A", &first_a, &second_a), ("B", &first_b, &second_b)] {
        for key in ["videoFramesDecoded", "audioBytesReceived"] {
            let (x, y) = (num(first, key), num(second, key));
            assert!(y > x && x > 0.0, "{who}: {key} did not grow: {x} then {y}");
        }
        assert_eq!(second["connectionState"], "connected", "{who}: {second}");
        assert_eq!(
            second["inboundVideo"], 1,
            "{who} receives one video: {second}"
        );
        assert_eq!(
            second["inboundAudio"], 1,
            "{who} receives one audio: {second}"
        );
    }
    assert_silent(&last_c);
    // C's silence means something only if C got as far as A and B did.
    assert_eq!(last_c["joined"], true, "C joined its room: {last_c}");
    assert_eq!(last_c["connectionState"], "connected", "C: {last_c}");
}

fn flowing(s: &Value) -> bool {
    num(s, "videoFramesDecoded") > 0.0 && num(s, "audioBytesReceived") > 0.0
}

fn assert_silent(c: &Value) {
    assert!(
        num(c, "videoBytesReceived") == 0.0 && num(c, "audioBytesReceived") == 0.0,
        "C is alone in roomtwo yet received media: {c}"
    );
}

fn num(s: &Value, key: &str) -> f64 {
    s[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} missing: {s}"))
}

/// Headless Chromium on a scratch profile, killed (with its whole process group) on drop.
struct Chromium {
    child: Child,
    profile: tempfile::TempDir,
}

impl Chromium {
    fn launch() -> Chromium {
        use std::os::unix::process::CommandExt;
        let profile = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(profile.path().join("chromium.log")).unwrap();
        let child = Command::new(CHROMIUM)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-background-timer-throttling",
                "--disable-backgrounding-occluded-windows",
                "--disable-renderer-backgrounding",
                "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream",
                "--autoplay-policy=no-user-gesture-required",
                "--allow-loopback-in-peer-connection",
                "--disable-features=WebRtcHideLocalIpsWithMdns",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "about:blank",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("start chromium");
        Chromium { child, profile }
    }

    /// The browser's DevTools endpoint, from `DevToolsActivePort` (port, then path).
    async fn ws_url(&self) -> String {
        let file = self.profile.path().join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(text) = std::fs::read_to_string(&file) {
                if let [port, path] = text.lines().collect::<Vec<_>>()[..] {
                    return format!("ws://127.0.0.1:{port}{path}");
                }
            }
            assert!(
                Instant::now() < deadline,
                "chromium wrote no DevToolsActivePort: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A new window on `url`, and a session on its page.
    async fn open(&self, control: &mut Cdp, url: &str) -> Page {
        let target = control
            .call(
                "Target.createTarget",
                json!({ "url": url, "newWindow": true }),
            )
            .await
            .unwrap_or_else(|e| panic!("open {url}: {e}"));
        let id = target["targetId"].as_str().expect("targetId");
        let browser = self.ws_url().await;
        let (base, _) = browser.split_once("/devtools/").unwrap();
        Page(Cdp::connect(&format!("{base}/devtools/page/{id}")).await)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.profile.path().join("chromium.log")).unwrap_or_default()
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- chromium log ---\n{}", self.log());
        }
        // The browser and its renderers share the group it leads.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One DevTools protocol session: commands with ids; events are skipped.
struct Cdp {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next: u64,
}

impl Cdp {
    async fn connect(url: &str) -> Cdp {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .unwrap_or_else(|e| panic!("DevTools at {url}: {e}"));
        Cdp { ws, next: 0 }
    }

    /// Sends a command and returns its result, or the protocol's error.
    async fn call(&mut self, method: &str, params: Value) -> Result<Value, Value> {
        self.next += 1;
        let id = self.next;
        let msg = json!({ "id": id, "method": method, "params": params });
        self.ws.send(Message::text(msg.to_string())).await.unwrap();
        while let Some(frame) = self.ws.next().await {
            let Message::Text(text) = frame.unwrap() else {
                continue;
            };
            let reply: Value = serde_json::from_str(&text).unwrap();
            if reply["id"] == id {
                if reply["error"].is_null() {
                    return Ok(reply["result"].clone());
                }
                return Err(reply["error"].clone());
            }
        }
        panic!("DevTools closed during {method}");
    }

    /// Evaluates `js` in the page (awaiting a promise) and returns its value, or what went
    /// wrong (a page still loading has no context to evaluate in).
    async fn evaluate(&mut self, js: &str) -> Result<Value, Value> {
        let params = json!({ "expression": js, "awaitPromise": true, "returnByValue": true });
        let result = self.call("Runtime.evaluate", params).await?;
        if result["exceptionDetails"].is_null() {
            Ok(result["result"]["value"].clone())
        } else {
            Err(result["exceptionDetails"].clone())
        }
    }
}

/// A meeting page.
struct Page(Cdp);

impl Page {
    /// `sgStats()`, waiting for the page to define it.
    async fn stats(&mut self) -> Value {
        let deadline = Instant::now() + Duration::from_secs(15);
        let js = "typeof sgStats === 'function' ? sgStats() \
                  : Promise.reject(location.href + ': ' + document.title)";
        loop {
            match self.0.evaluate(js).await {
                Ok(v) => return v,
                Err(e) if Instant::now() > deadline => panic!("no sgStats(): {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
}
