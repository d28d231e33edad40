//! The per-pod UDP NodePort Services of a JVB StatefulSet: pod `<name>-<i>` gets a Service of
//! the same name whose `port = targetPort = nodePort = base + i`, selecting that one pod, with
//! `externalTrafficPolicy: Local` (the node that runs the pod answers, and the JVB sees the
//! client's address). One function serves `shardgate nodeports` and the metacontroller
//! DecoratorController hook on the admin listener, which replaces the jsonnet service-per-pod
//! hook with one fix: a Service stays while its pod still exists, so scaling down does not cut
//! the media of a pod still draining its conferences; it goes once the pod is gone.

use serde_json::{json, Value};

/// The StatefulSet annotation that holds the first pod's port.
pub const BASE_ANNOTATION: &str = "shardgate.io/media-base-port";
/// The label StatefulSets put on each pod with its name.
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
/// Kubernetes' default NodePort range.
const NODE_PORTS: std::ops::RangeInclusive<u32> = 30000..=32767;

/// What the Services are made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JvbSet {
    pub name: String,
    pub namespace: String,
    pub replicas: u32,
    pub base: u16,
}

impl JvbSet {
    /// From a StatefulSet object; `base` overrides its [`BASE_ANNOTATION`].
    pub fn from_statefulset(sts: &Value, base: Option<u16>) -> Result<JvbSet, String> {
        let meta = &sts["metadata"];
        let name = meta["name"]
            .as_str()
            .ok_or("the StatefulSet has no metadata.name")?
            .to_owned();
        let namespace = meta["namespace"].as_str().unwrap_or("default").to_owned();
        // Kubernetes defaults an absent spec.replicas to 1.
        let replicas = match &sts["spec"]["replicas"] {
            Value::Null => 1,
            v => v
                .as_u64()
                .and_then(|r| u32::try_from(r).ok())
                .ok_or_else(|| format!("{name}: spec.replicas is not a count"))?,
        };
        let base = match base {
            Some(b) => b,
            None => meta["annotations"][BASE_ANNOTATION]
                .as_str()
                .ok_or_else(|| {
                    format!("{name}: no {BASE_ANNOTATION} annotation (the first pod's UDP port)")
                })?
                .parse()
                .map_err(|_| format!("{name}: {BASE_ANNOTATION} is not a port"))?,
        };
        let set = JvbSet {
            name,
            namespace,
            replicas,
            base,
        };
        set.port(replicas.saturating_sub(1))?;
        Ok(set)
    }

    /// The port of pod `ordinal`, which must be a NodePort.
    pub fn port(&self, ordinal: u32) -> Result<u16, String> {
        let port = u32::from(self.base) + ordinal;
        if !NODE_PORTS.contains(&port) {
            return Err(format!(
                "{}: pod {ordinal}'s port {port} is outside the NodePort range 30000-32767",
                self.name
            ));
        }
        Ok(port as u16)
    }

    /// The ordinal of pod `pod_name` of this set, if it is one of its pods.
    pub fn ordinal_of(&self, pod_name: &str) -> Option<u32> {
        let n = pod_name.strip_prefix(&self.name)?.strip_prefix('-')?;
        (!n.starts_with('+')).then(|| n.parse().ok()).flatten()
    }

    /// The Services for pods `0..replicas` and for every pod in `existing` beyond (pods being
    /// scaled away that still drain their calls), in ordinal order.
    pub fn services(&self, existing: &[u32]) -> Result<Vec<Value>, String> {
        let mut ordinals: Vec<u32> = (0..self.replicas).chain(existing.iter().copied()).collect();
        ordinals.sort_unstable();
        ordinals.dedup();
        ordinals.into_iter().map(|i| self.service(i)).collect()
    }

    fn service(&self, ordinal: u32) -> Result<Value, String> {
        let port = self.port(ordinal)?;
        let pod = format!("{}-{ordinal}", self.name);
        Ok(json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": pod,
                "namespace": self.namespace,
                "labels": {
                    "app.kubernetes.io/managed-by": "shardgate",
                    "shardgate.io/statefulset": self.name,
                },
            },
            "spec": {
                "type": "NodePort",
                "externalTrafficPolicy": "Local",
                "selector": { POD_NAME_LABEL: pod },
                "ports": [{
                    "name": "media",
                    "protocol": "UDP",
                    "port": port,
                    "targetPort": port,
                    "nodePort": port,
                }],
            },
        }))
    }
}

/// metacontroller's sync hook: `{"object": <StatefulSet>, "related": {"Pod.v1": {...}}, …}` in,
/// `{"attachments": [<Service>, …]}` out. The pods come from [`customize`]'s related rule;
/// when the StatefulSet is being deleted (`finalizing`), no Service is kept.
pub fn sync(request: &Value) -> Result<Value, String> {
    let set = JvbSet::from_statefulset(&request["object"], None)?;
    if request["finalizing"].as_bool() == Some(true) {
        return Ok(json!({ "attachments": [], "finalized": true }));
    }
    let existing: Vec<u32> = request["related"]["Pod.v1"]
        .as_object()
        .map(|pods| {
            pods.values()
                .filter_map(|p| set.ordinal_of(p["metadata"]["name"].as_str()?))
                .collect()
        })
        .unwrap_or_default();
    Ok(json!({ "attachments": set.services(&existing)? }))
}

/// metacontroller's customize hook: asks for the StatefulSet's pods as related objects, so
/// that [`sync`] sees which pods still exist.
pub fn customize(request: &Value) -> Result<Value, String> {
    let parent = &request["parent"];
    let namespace = parent["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default");
    let selector = parent["spec"]["selector"].clone();
    if selector.is_null() {
        return Err("the StatefulSet has no spec.selector".into());
    }
    Ok(json!({
        "relatedResources": [{
            "apiVersion": "v1",
            "resource": "pods",
            "namespace": namespace,
            "labelSelector": selector,
        }]
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sts(replicas: u32) -> Value {
        json!({
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": {
                "name": "shard-0-jvb",
                "namespace": "jitsi",
                "annotations": { BASE_ANNOTATION: "30300" },
            },
            "spec": {
                "replicas": replicas,
                "selector": { "matchLabels": { "app": "jvb", "shard": "0" } },
            },
        })
    }

    fn pods(names: &[&str]) -> Value {
        let mut map = serde_json::Map::new();
        for n in names {
            map.insert(
                format!("jitsi/{n}"),
                json!({ "apiVersion": "v1", "kind": "Pod", "metadata": { "name": n, "namespace": "jitsi" } }),
            );
        }
        Value::Object(map)
    }

    fn names_and_ports(response: &Value) -> Vec<(String, u64)> {
        response["attachments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["metadata"]["name"].as_str().unwrap().to_owned(),
                    s["spec"]["ports"][0]["nodePort"].as_u64().unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn one_service_per_pod_on_base_plus_ordinal() {
        let out =
            sync(&json!({ "object": sts(3), "related": { "Pod.v1": pods(&["shard-0-jvb-0"]) } }))
                .unwrap();
        assert_eq!(
            names_and_ports(&out),
            [
                ("shard-0-jvb-0".to_owned(), 30300),
                ("shard-0-jvb-1".to_owned(), 30301),
                ("shard-0-jvb-2".to_owned(), 30302)
            ]
        );
        let svc = &out["attachments"][1];
        assert_eq!(svc["spec"]["selector"][POD_NAME_LABEL], "shard-0-jvb-1");
        assert_eq!(svc["spec"]["externalTrafficPolicy"], "Local");
        assert_eq!(svc["spec"]["ports"][0]["protocol"], "UDP");
        assert_eq!(svc["spec"]["ports"][0]["port"], 30301);
        assert_eq!(svc["spec"]["ports"][0]["targetPort"], 30301);
        assert_eq!(svc["metadata"]["namespace"], "jitsi");
    }

    #[test]
    fn scaling_down_keeps_the_service_of_a_pod_still_draining_until_it_is_gone() {
        // replicas 3 -> 1 while pods 1 and 2 terminate: their Services stay.
        let draining = pods(&["shard-0-jvb-0", "shard-0-jvb-1", "shard-0-jvb-2"]);
        let out = sync(&json!({ "object": sts(1), "related": { "Pod.v1": draining } })).unwrap();
        assert_eq!(names_and_ports(&out).len(), 3);
        // Pod 2 is gone, pod 1 still drains.
        let out = sync(&json!({ "object": sts(1), "related": { "Pod.v1": pods(&["shard-0-jvb-0", "shard-0-jvb-1"]) } })).unwrap();
        assert_eq!(
            names_and_ports(&out),
            [
                ("shard-0-jvb-0".to_owned(), 30300),
                ("shard-0-jvb-1".to_owned(), 30301)
            ]
        );
        // All gone but the one the StatefulSet wants.
        let out =
            sync(&json!({ "object": sts(1), "related": { "Pod.v1": pods(&["shard-0-jvb-0"]) } }))
                .unwrap();
        assert_eq!(names_and_ports(&out), [("shard-0-jvb-0".to_owned(), 30300)]);
        // Pods of other sets and odd names are not ours.
        let out = sync(&json!({ "object": sts(1), "related": { "Pod.v1": pods(&["shard-0-jvb-x", "shard-0-jvb2-5", "other-3"]) } })).unwrap();
        assert_eq!(names_and_ports(&out).len(), 1);
    }

    #[test]
    fn scaling_up_adds_services_and_finalizing_removes_them() {
        let out = sync(&json!({ "object": sts(5), "related": {} })).unwrap();
        assert_eq!(names_and_ports(&out).len(), 5);
        let out = sync(&json!({ "object": sts(5), "finalizing": true })).unwrap();
        assert_eq!(out["attachments"], json!([]));
    }

    #[test]
    fn bad_input_is_explained() {
        let mut no_base = sts(2);
        no_base["metadata"]["annotations"] = json!({});
        assert!(sync(&json!({ "object": no_base }))
            .unwrap_err()
            .contains(BASE_ANNOTATION));
        let mut too_high = sts(2);
        too_high["metadata"]["annotations"][BASE_ANNOTATION] = json!("32767");
        assert!(sync(&json!({ "object": too_high }))
            .unwrap_err()
            .contains("outside the NodePort range"));
        assert!(sync(&json!({})).unwrap_err().contains("metadata.name"));
    }

    #[test]
    fn customize_asks_for_the_sets_pods() {
        let out = customize(&json!({ "parent": sts(2) })).unwrap();
        let rule = &out["relatedResources"][0];
        assert_eq!(rule["resource"], "pods");
        assert_eq!(rule["namespace"], "jitsi");
        assert_eq!(rule["labelSelector"]["matchLabels"]["app"], "jvb");
    }
}
