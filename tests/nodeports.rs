//! `shardgate nodeports` and the metacontroller hook on the admin listener: per-pod UDP
//! NodePort Services for a JVB StatefulSet, kept while a scaled-away pod still drains, gone when
//! it is; every Service produced passes the Kubernetes 1.30 schema (kubernetes-validate, which
//! .ci/run installs and names in KUBERNETES_VALIDATE).

mod common;

use common::k8s::{nodeports_of, validate};
use common::*;
use serde_json::{json, Value};
use std::process::Command;

fn statefulset(replicas: u32) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {
            "name": "shard-1-jvb",
            "namespace": "jitsi",
            "annotations": { "shardgate.io/media-base-port": "30400" },
        },
        "spec": {
            "replicas": replicas,
            "serviceName": "shard-1-jvb",
            "selector": { "matchLabels": { "app": "jvb", "shard": "1" } },
        },
    })
}

fn pods(names: &[&str]) -> Value {
    let map: serde_json::Map<String, Value> = names
        .iter()
        .map(|n| {
            (
                format!("jitsi/{n}"),
                json!({ "apiVersion": "v1", "kind": "Pod", "metadata": { "name": n, "namespace": "jitsi" } }),
            )
        })
        .collect();
    Value::Object(map)
}

#[test]
fn the_command_prints_valid_services_from_flags_and_from_stdin() {
    let out = Command::new(env!("CARGO_BIN_EXE_shardgate"))
        .args([
            "nodeports",
            "--name",
            "shard-0-jvb",
            "--namespace",
            "jitsi",
            "--replicas",
            "3",
            "--base",
            "30300",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    let items = list["items"].as_array().unwrap();
    let ports: Vec<u64> = items
        .iter()
        .map(|s| s["spec"]["ports"][0]["nodePort"].as_u64().unwrap())
        .collect();
    assert_eq!(ports, [30300, 30301, 30302]);
    validate(items);

    let list = nodeports_of(&statefulset(2));
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["shard-1-jvb-0", "shard-1-jvb-1"]);

    let out = Command::new(env!("CARGO_BIN_EXE_shardgate"))
        .args([
            "nodeports",
            "--name",
            "x",
            "--replicas",
            "3",
            "--base",
            "32766",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("outside the NodePort range"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hook_keeps_a_draining_pods_service_until_the_pod_is_gone() {
    let (head, http, admin) = config_head("t");
    let sg = Shardgate::start(
        &format!(
            "{head}[[route]]\npath_prefix = \"/\"\nrespond = {{ status = 200, body = \"ok\" }}\n"
        ),
        http,
        admin,
    );
    let c = client();
    let post = |path: &str, body: Value| {
        let c = c.clone();
        let url = sg.admin_url(path);
        async move {
            let r = c.post(url).json(&body).send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.text().await.unwrap())
        }
    };
    let attachments = |text: &str| -> Vec<Value> {
        serde_json::from_str::<Value>(text).unwrap()["attachments"]
            .as_array()
            .unwrap()
            .clone()
    };
    let names = |atts: &[Value]| -> Vec<String> {
        atts.iter()
            .map(|s| s["metadata"]["name"].as_str().unwrap().to_owned())
            .collect()
    };

    // customize asks for the set's pods.
    let (status, text) = post(
        "/hooks/nodeports/customize",
        json!({ "parent": statefulset(3) }),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let related: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        related["relatedResources"][0]["labelSelector"]["matchLabels"]["shard"],
        "1"
    );

    // Scale up to 3.
    let all = pods(&["shard-1-jvb-0", "shard-1-jvb-1", "shard-1-jvb-2"]);
    let (status, text) = post(
        "/hooks/nodeports",
        json!({ "object": statefulset(3), "related": { "Pod.v1": all.clone() } }),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let atts = attachments(&text);
    assert_eq!(
        names(&atts),
        ["shard-1-jvb-0", "shard-1-jvb-1", "shard-1-jvb-2"]
    );
    validate(&atts);

    // Scale down to 1 while pods 1 and 2 still drain their calls: their Services stay.
    let (_, text) = post(
        "/hooks/nodeports",
        json!({ "object": statefulset(1), "related": { "Pod.v1": all } }),
    )
    .await;
    assert_eq!(names(&attachments(&text)).len(), 3);

    // Pod 2 is gone: its Service goes; pod 1 still drains.
    let (_, text) = post(
        "/hooks/nodeports",
        json!({ "object": statefulset(1), "related": { "Pod.v1": pods(&["shard-1-jvb-0", "shard-1-jvb-1"]) } }),
    )
    .await;
    assert_eq!(
        names(&attachments(&text)),
        ["shard-1-jvb-0", "shard-1-jvb-1"]
    );

    // Bad input: 422 or 400 with the reason, and the listener keeps serving.
    let mut no_base = statefulset(1);
    no_base["metadata"]["annotations"] = json!({});
    let (status, text) = post("/hooks/nodeports", json!({ "object": no_base })).await;
    assert_eq!(status, 422, "{text}");
    assert!(text.contains("shardgate.io/media-base-port"), "{text}");
    let r = c
        .post(sg.admin_url("/hooks/nodeports"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert_eq!(get(&c, &sg.admin_url("/healthz")).await.0, 200);
}
