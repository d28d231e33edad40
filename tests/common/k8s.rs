//! Kubernetes objects in tests: schema validation with kubernetes-validate (which .ci/run
//! installs and names in KUBERNETES_VALIDATE).

use serde_json::Value;
use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};

/// The Kubernetes version objects are validated against.
pub const KUBERNETES_VERSION: &str = "1.30.0";

/// Validates every object against the Kubernetes schema, strictly (unknown fields are errors).
/// Returns the kinds it has no schema for (custom resources), for the caller to check itself.
pub fn validate(objects: &[Value]) -> BTreeSet<String> {
    let tool =
        std::env::var("KUBERNETES_VALIDATE").unwrap_or_else(|_| "kubernetes-validate".into());
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<_> = objects
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let p = dir.path().join(format!("{i}.json"));
            std::fs::write(&p, serde_json::to_vec(o).unwrap()).unwrap();
            p
        })
        .collect();
    assert!(!files.is_empty());
    let out = Command::new(&tool)
        .args(["-k", KUBERNETES_VERSION, "--strict", "--quiet"])
        .args(&files)
        .output()
        .unwrap_or_else(|e| panic!("{tool}: {e} (pip install kubernetes-validate; .ci/run does)"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // "WARN <file> Couldn't find schema for kind PodMonitor with api version …"
    stdout
        .lines()
        .filter_map(|l| l.split("Couldn't find schema for kind ").nth(1))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// `shardgate nodeports -` with `statefulset` (JSON) on stdin: the List it prints.
pub fn nodeports_of(statefulset: &Value) -> Value {
    let mut child = Command::new(env!("CARGO_BIN_EXE_shardgate"))
        .args(["nodeports", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&serde_json::to_vec(statefulset).unwrap())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "shardgate nodeports: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}
