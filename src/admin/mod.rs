//! The admin listener: `/healthz`, `/readyz`, `/metrics` for everyone who can reach it, and
//! `/admin/*` behind the bearer token: shards with their state and room counts, drain and
//! undrain, and which shard a room is on. Does I/O only through pingora's session.

use crate::routing::room::normalise;
use crate::routing::AdminDrain;
use crate::state::Shared;
use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::{json, Value};
use std::sync::Arc;
use tracing::info;

pub struct Admin {
    shared: Arc<Shared>,
}

impl Admin {
    pub fn new(shared: Arc<Shared>) -> Self {
        Admin { shared }
    }

    fn handle(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
        auth: Option<&str>,
    ) -> (StatusCode, &'static str, Vec<u8>) {
        let text = |code, body: &str| (code, "text/plain; charset=utf-8", body.as_bytes().to_vec());
        match (method, path) {
            (&Method::GET, "/healthz") => return text(StatusCode::OK, "ok\n"),
            (&Method::GET, "/readyz") => return self.ready(),
            (&Method::GET, "/metrics") => {
                self.refresh_gauges();
                return (
                    StatusCode::OK,
                    "text/plain; version=0.0.4",
                    self.shared.metrics.render(),
                );
            }
            _ => {}
        }
        let Some(rest) = path.strip_prefix("/admin/") else {
            return text(
                StatusCode::NOT_FOUND,
                "not found; try /healthz /readyz /metrics /admin/shards\n",
            );
        };
        let runtime = self.shared.runtime.load();
        let Some(token) = runtime
            .config
            .admin
            .as_ref()
            .and_then(|a| a.token.as_deref())
        else {
            return text(
                StatusCode::FORBIDDEN,
                "the admin API is disabled: set admin.token in the config\n",
            );
        };
        let presented = auth.and_then(|a| a.strip_prefix("Bearer ")).unwrap_or("");
        if !constant_time_eq(presented.as_bytes(), token.as_bytes()) {
            return text(StatusCode::UNAUTHORIZED, "missing or wrong bearer token\n");
        }
        let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
        let json_reply = |code, v: Value| {
            (
                code,
                "application/json",
                serde_json::to_vec_pretty(&v).expect("json"),
            )
        };
        match (method, segments.as_slice()) {
            (&Method::GET, ["shards"]) => json_reply(StatusCode::OK, self.shards_json()),
            (&Method::GET, ["peers"]) => {
                let status = self
                    .shared
                    .peers_status
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                match status {
                    Some(v) => json_reply(StatusCode::OK, v),
                    None => json_reply(
                        StatusCode::NOT_FOUND,
                        json!({"error": "no [peers] in the config this process started with"}),
                    ),
                }
            }
            (&Method::GET, ["config"]) => json_reply(StatusCode::OK, self.config_json()),
            (&Method::POST, ["reload"]) => match crate::reload::reload(&self.shared) {
                Ok(outcome) => json_reply(
                    StatusCode::OK,
                    json!({ "result": format!("{outcome:?}"), "config": self.config_json() }),
                ),
                Err(why) => json_reply(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    json!({ "result": "rejected", "error": why }),
                ),
            },
            (&Method::POST, ["shards", pool, shard, verb @ ("drain" | "undrain")]) => {
                let Some(p) = runtime.pool(pool) else {
                    return text(StatusCode::NOT_FOUND, "no such pool\n");
                };
                let members = p.members.load();
                let Some(s) = members.get(shard) else {
                    return text(StatusCode::NOT_FOUND, "no such shard in this pool\n");
                };
                let drain = AdminDrain {
                    drained: *verb == "drain",
                    at_ms: crate::routing::unix_ms(),
                    by: self.shared.replica_name.clone(),
                };
                info!(pool = %p.name, shard = %s.name, drain = drain.drained, "admin changed drain state");
                p.admin_drain(&s.name, drain.clone());
                if let Some(peers) = self.shared.peers.get() {
                    let _ = peers.send(crate::peers::driver::Update::Drained {
                        pool: p.name.clone(),
                        shard: s.name.clone(),
                        drain,
                    });
                }
                json_reply(
                    StatusCode::OK,
                    json!({ "pool": &*p.name, "shard": &*s.name, "state": s.state_name(self.shared.now_ms()) }),
                )
            }
            (&Method::GET, ["rooms", raw]) => {
                let Some(key) = normalise(raw) else {
                    return text(StatusCode::BAD_REQUEST, "empty room\n");
                };
                let pool_filter =
                    query.and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("pool=")));
                let places: Vec<Value> = runtime
                    .pools
                    .iter()
                    .filter(|p| pool_filter.is_none_or(|f| f == &*p.name))
                    .filter_map(|p| {
                        p.stick
                            .get(&key)
                            .map(|s| json!({ "pool": &*p.name, "shard": &*s }))
                    })
                    .collect();
                let code = if places.is_empty() {
                    StatusCode::NOT_FOUND
                } else {
                    StatusCode::OK
                };
                json_reply(code, json!({ "room": key, "stuck": places }))
            }
            _ => text(
                StatusCode::NOT_FOUND,
                "unknown admin call; see the README's admin API section\n",
            ),
        }
    }

    fn ready(&self) -> (StatusCode, &'static str, Vec<u8>) {
        if self
            .shared
            .shutting_down
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain; charset=utf-8",
                b"shutting down\n".to_vec(),
            );
        }
        if !self
            .shared
            .peers_synced
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain; charset=utf-8",
                b"waiting for the first full sync of the stick tables from the other replicas\n"
                    .to_vec(),
            );
        }
        let runtime = self.shared.runtime.load();
        let now = self.shared.now_ms();
        let mut body = String::from("ready\n");
        for p in &runtime.pools {
            let members = p.members.load();
            let up = members.shards.iter().filter(|s| s.is_up(now)).count();
            let note = if up == 0 {
                " (empty: its requests get 503)"
            } else {
                ""
            };
            body.push_str(&format!(
                "pool {}: {up}/{} shards up{note}\n",
                p.name,
                members.shards.len()
            ));
        }
        (
            StatusCode::OK,
            "text/plain; charset=utf-8",
            body.into_bytes(),
        )
    }

    fn shards_json(&self) -> Value {
        let runtime = self.shared.runtime.load();
        let now = self.shared.now_ms();
        let pools: Vec<Value> = runtime
            .pools
            .iter()
            .map(|p| {
                let rooms = p.stick.rooms_per_shard();
                let shards: Vec<Value> = p
                    .members
                    .load()
                    .shards
                    .iter()
                    .map(|s| {
                        json!({
                            "name": &*s.name,
                            "state": s.state_name(now),
                            "addrs": s.addrs().iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                            "weight": s.weight(),
                            "rooms": rooms.get(&s.name).copied().unwrap_or(0),
                        })
                    })
                    .collect();
                json!({ "pool": &*p.name, "rooms": p.stick.len(), "shards": shards })
            })
            .collect();
        json!({ "pools": pools })
    }

    fn config_json(&self) -> Value {
        let status = self
            .shared
            .reload
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let secs = |t: std::time::SystemTime| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        };
        json!({
            "file": status.path.map(|p| p.display().to_string()),
            "hash": status.active_hash,
            "loaded_at_unix": secs(status.loaded_at),
            "loaded_at_unix_ms": status.loaded_at.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
            "needs_restart": status.needs_restart,
            "last_error": status.last_error.map(|(t, e)| json!({ "at_unix": secs(t), "error": e })),
        })
    }

    fn refresh_gauges(&self) {
        let runtime = self.shared.runtime.load();
        let now = self.shared.now_ms();
        let m = &self.shared.metrics;
        m.shard_state.reset();
        for p in &runtime.pools {
            m.stick_entries
                .with_label_values(&[&p.name])
                .set(p.stick.len() as i64);
            for s in &p.members.load().shards {
                let state = if !s.is_up(now) {
                    "down"
                } else if s.is_lingering() {
                    "lingering"
                } else if s.is_draining() {
                    "draining"
                } else {
                    "up"
                };
                m.shard_state
                    .with_label_values(&[&p.name, &s.name, state])
                    .set(1);
            }
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Largest hook request accepted (a StatefulSet and its pods' metadata).
const MAX_HOOK_BODY: usize = 8 << 20;

/// metacontroller's hooks (`POST /hooks/nodeports`, `POST /hooks/nodeports/customize`): JSON in,
/// JSON out; 422 with the reason when the input cannot be used. Not behind the token:
/// metacontroller does not send one; keep the admin port inside the cluster (NetworkPolicy).
async fn hook(session: &mut ServerSession, path: &str) -> (StatusCode, &'static str, Vec<u8>) {
    let text = |code, body: String| (code, "text/plain; charset=utf-8", body.into_bytes());
    if session.req_header().method != Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, "hooks take POST\n".into());
    }
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                body.extend_from_slice(&chunk);
                if body.len() > MAX_HOOK_BODY {
                    return text(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "hook request too large\n".into(),
                    );
                }
            }
            Ok(None) => break,
            Err(e) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("cannot read the request: {e}\n"),
                )
            }
        }
    }
    let request: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("not JSON: {e}\n")),
    };
    let answer = match path {
        "/hooks/nodeports" => crate::relay::nodeports::sync(&request),
        "/hooks/nodeports/customize" => crate::relay::nodeports::customize(&request),
        _ => {
            return text(
                StatusCode::NOT_FOUND,
                "no such hook; try /hooks/nodeports\n".into(),
            )
        }
    };
    match answer {
        Ok(v) => (
            StatusCode::OK,
            "application/json",
            serde_json::to_vec(&v).expect("json"),
        ),
        Err(why) => {
            tracing::warn!(%path, error = %why, "hook request refused");
            text(StatusCode::UNPROCESSABLE_ENTITY, format!("{why}\n"))
        }
    }
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_owned();
        let (code, content_type, body) = if path.starts_with("/hooks/") {
            hook(session, &path).await
        } else {
            let req = session.req_header();
            let auth = req
                .headers
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            self.handle(&req.method, req.uri.path(), req.uri.query(), auth)
        };
        Response::builder()
            .status(code)
            .header("content-type", content_type)
            .header("content-length", body.len())
            .header("cache-control", "no-store")
            .body(body)
            .expect("valid response")
    }
}
