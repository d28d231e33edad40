//! `shardgate check`: the shipped configs pass, bad files fail with every error located as
//! `file:line:column: key.path: message`, missing files and unset `${VAR}`s are explained.

use std::path::{Path, PathBuf};
use std::process::Command;

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn check(files: &[&Path], env: &[(&str, &str)], unset: &[&str]) -> Out {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_shardgate"));
    cmd.arg("check").args(files);
    for (k, v) in env {
        cmd.env(k, v);
    }
    for k in unset {
        cmd.env_remove(k);
    }
    let out = cmd.output().expect("run shardgate check");
    Out {
        code: out.status.code().expect("exited, not killed"),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// The stderr lines that are errors in `file`, in order.
fn errors_in(stderr: &str, file: &Path) -> Vec<String> {
    let prefix = format!("{}:", file.display());
    stderr
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .map(|l| l[prefix.len()..].to_owned())
        .collect()
}

#[test]
fn every_shipped_config_is_ok() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no config/*.toml");
    for file in &files {
        let out = check(&[file], &[], &[]);
        assert_eq!(out.code, 0, "{}: {}", file.display(), out.stderr);
        assert_eq!(out.stdout, format!("{}: ok\n", file.display()));
        assert_eq!(out.stderr, "");
    }
    // All at once: one `ok` line per file, in argument order.
    let refs: Vec<&Path> = files.iter().map(|f| f.as_path()).collect();
    let out = check(&refs, &[], &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let want: String = files
        .iter()
        .map(|f| format!("{}: ok\n", f.display()))
        .collect();
    assert_eq!(out.stdout, want);
}

/// Line numbers are 1-based; the comments in the text name them.
const SEVERAL_ERRORS: &str = r#"[[listener]]
addr = "127.0.0.1:18080"

[timeouts]
idle = "ninety"

[[pool]]
name = "shards"
colour = "blue"
shards.list = [{ name = "s0", addrs = ["127.0.0.1:18001"] }]

[[pool]]
name = "shards"
shards.list = [{ name = "s1", addrs = ["127.0.0.1:18002"] }]

[[route]]
path_prefix = "/"
shard = { pool = "missing" }
"#;
// line 5  col 8:  timeouts.idle (bad duration, at the value)
// line 9  col 1:  pool[0].colour (unknown key, at the key)
// line 13 col 8:  pool[1].name (duplicate pool name, at the value)
// line 18 col 18: route[0].shard.pool (no such pool, at the value)

#[test]
fn several_errors_in_one_file_are_all_reported_with_positions() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "several.toml", SEVERAL_ERRORS);
    let out = check(&[&file], &[], &[]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert_eq!(out.stdout, "");
    let errors = errors_in(&out.stderr, &file);
    let want_prefixes = [
        "5:8: timeouts.idle: ",
        "9:1: pool[0].colour: unknown field `colour`",
        "13:8: pool[1].name: another pool is already named \"shards\"",
        "18:18: route[0].shard.pool: no pool named \"missing\"",
    ];
    for want in want_prefixes {
        assert!(
            errors.iter().any(|e| e.starts_with(want)),
            "missing `{want}` in:\n{}",
            out.stderr
        );
    }
    assert_eq!(errors.len(), 4, "{}", out.stderr);
    assert!(errors[0].contains("not a duration"), "{}", errors[0]);
}

#[test]
fn shape_errors_are_located_exactly() {
    // Only errors serde finds: an unknown key and a bad duration, in two sections.
    let dir = tempfile::tempdir().unwrap();
    let text = SEVERAL_ERRORS
        .replace(
            "name = \"shards\"\nshards.list = [{ name = \"s1\"",
            "name = \"other\"\nshards.list = [{ name = \"s1\"",
        )
        .replace("pool = \"missing\"", "pool = \"shards\"");
    let file = write(dir.path(), "shape.toml", &text);
    let out = check(&[&file], &[], &[]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert_eq!(out.stdout, "");
    let errors = errors_in(&out.stderr, &file);
    assert_eq!(errors.len(), 2, "{}", out.stderr);
    assert!(
        errors[0].starts_with("5:8: timeouts.idle: ") && errors[0].contains("not a duration"),
        "{}",
        out.stderr
    );
    assert!(
        errors[1].starts_with(
            "9:1: pool[0].colour: unknown field `colour`, expected one of `name`, `shards`"
        ),
        "{}",
        out.stderr
    );
}

#[test]
fn reference_errors_are_located_exactly() {
    // Only errors validation finds: a duplicate pool name and a route to a missing pool.
    let dir = tempfile::tempdir().unwrap();
    let text = SEVERAL_ERRORS
        .replace("idle = \"ninety\"", "idle = \"90s\"")
        .replace("colour = \"blue\"\n", "\n");
    let file = write(dir.path(), "refs.toml", &text);
    let out = check(&[&file], &[], &[]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    let errors = errors_in(&out.stderr, &file);
    assert_eq!(
        errors,
        vec![
            "13:8: pool[1].name: another pool is already named \"shards\"".to_owned(),
            "18:18: route[0].shard.pool: no pool named \"missing\"; defined pools: shards"
                .to_owned(),
        ],
        "{}",
        out.stderr
    );
}

#[test]
fn syntax_errors_are_located() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "syntax.toml",
        "[[listener]]\naddr = \"127.0.0.1:18080\"\n\n[admin\naddr = \"127.0.0.1:18081\"\n",
    );
    let out = check(&[&file], &[], &[]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    let errors = errors_in(&out.stderr, &file);
    assert!(!errors.is_empty(), "{}", out.stderr);
    assert!(
        errors.iter().all(|e| e.starts_with("4:")),
        "the unclosed table header is on line 4: {}",
        out.stderr
    );
}

#[test]
fn a_missing_file_fails_clearly_and_does_not_hide_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    let out = check(&[&missing], &[], &[]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert_eq!(out.stdout, "");
    let line = out.stderr.lines().next().unwrap_or_default();
    assert!(
        line.starts_with(&missing.display().to_string()),
        "the message names the file: {}",
        out.stderr
    );
    assert!(
        line.contains("cannot read the file") && line.contains("No such file or directory"),
        "{}",
        out.stderr
    );

    // A good file next to it is still checked and reported ok; the exit code is still 1.
    let good = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/default.toml");
    let out = check(&[&missing, &good], &[], &[]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert_eq!(out.stdout, format!("{}: ok\n", good.display()));
    assert!(out.stderr.contains("nope.toml"), "{}", out.stderr);

    // No file at all is a usage error.
    let out = check(&[], &[], &[]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("Usage"), "{}", out.stderr);
}

const WITH_VAR: &str = r#"[[listener]]
addr = "127.0.0.1:18080"

[admin]
addr = "127.0.0.1:18081"
token = "${SHARDGATE_CLI_CHECK_TOKEN}"
"#;

#[test]
fn unset_variable_is_named_and_set_variable_is_ok() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "var.toml", WITH_VAR);

    let out = check(&[&file], &[], &["SHARDGATE_CLI_CHECK_TOKEN"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert_eq!(out.stdout, "");
    let errors = errors_in(&out.stderr, &file);
    assert_eq!(errors.len(), 1, "{}", out.stderr);
    assert!(
        errors[0].starts_with("6:9: admin.token: "),
        "{}",
        out.stderr
    );
    assert!(
        errors[0].contains("environment variable SHARDGATE_CLI_CHECK_TOKEN is not set"),
        "{}",
        out.stderr
    );

    let out = check(&[&file], &[("SHARDGATE_CLI_CHECK_TOKEN", "s3cret")], &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, format!("{}: ok\n", file.display()));

    // Set but empty: the variable resolves, and the empty token is its own error.
    let out = check(&[&file], &[("SHARDGATE_CLI_CHECK_TOKEN", "")], &[]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    let errors = errors_in(&out.stderr, &file);
    assert_eq!(errors.len(), 1, "{}", out.stderr);
    assert!(
        errors[0].starts_with("6:9: admin.token: empty token"),
        "{}",
        out.stderr
    );

    // The placeholder of k8s/'s secrets.env.example, left in place, is refused.
    let out = check(
        &[&file],
        &[(
            "SHARDGATE_CLI_CHECK_TOKEN",
            "replace-with-openssl-rand-hex-32",
        )],
        &[],
    );
    assert_eq!(out.code, 1, "{}", out.stderr);
    let errors = errors_in(&out.stderr, &file);
    assert!(
        errors[0].starts_with("6:9: admin.token: the example's placeholder"),
        "{}",
        out.stderr
    );

    // With a default, unset is fine.
    let file = write(
        dir.path(),
        "default.toml",
        &WITH_VAR.replace("}\"", ":-fallback}\""),
    );
    let out = check(&[&file], &[], &["SHARDGATE_CLI_CHECK_TOKEN"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
}

#[test]
fn tls_files_are_checked_including_each_sni_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let testdata = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/testdata");
    let (crt, key) = (testdata.join("tls.crt"), testdata.join("tls.key"));
    let text = format!(
        "[[listener]]\naddr = \"127.0.0.1:18443\"\n[listener.tls]\ncert = \"{crt}\"\nkey = \"{key}\"\n\
         sni = [\n  {{ cert = \"{crt}\", key = \"{key}\" }},\n  {{ cert = \"{missing}\", key = \"{key}\" }},\n]\n",
        crt = crt.display(),
        key = key.display(),
        missing = dir.path().join("missing.crt").display(),
    );
    let file = write(dir.path(), "sni.toml", &text);
    let out = check(&[&file], &[], &[]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    let errors = errors_in(&out.stderr, &file);
    assert_eq!(errors.len(), 1, "{}", out.stderr);
    assert!(
        errors[0].contains("listener[0].tls.sni[1]: cannot read certificate")
            && errors[0].contains("missing.crt"),
        "{}",
        out.stderr
    );
}

#[test]
fn peers_addresses_are_checked_like_every_other_section() {
    // `run` refuses these at start; `check` must say so first, each located.
    let dir = tempfile::tempdir().unwrap();
    let head = "[[listener]]\naddr = \"127.0.0.1:18080\"\n\n";
    let list = write(
        dir.path(),
        "list.toml",
        &format!(
            "{head}[peers]\nlisten = \"127.0.0.1:7946\"\n\
             list = [\"127.0.0.1:7946\", \"not an address\"]\nsecret = \"0123456789abcdef-x\"\n"
        ),
    );
    let out = check(&[&list], &[], &[]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    let errors = errors_in(&out.stderr, &list);
    assert_eq!(errors.len(), 1, "{}", out.stderr);
    assert!(
        errors[0].contains("peers.list[1]: \"not an address\""),
        "{}",
        out.stderr
    );
    let dns = write(
        dir.path(),
        "dns.toml",
        &format!(
            "{head}[peers]\nlisten = \"127.0.0.1:7946\"\ndns = \"edge.svc\"\n\
             secret = \"0123456789abcdef-x\"\nname = \"\"\n"
        ),
    );
    let out = check(&[&dns], &[], &[]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    let errors = errors_in(&out.stderr, &dns);
    assert!(
        errors
            .iter()
            .any(|e| e.contains("peers.dns: \"edge.svc\": expected <name>:<port>")),
        "{}",
        out.stderr
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("peers.name: expected 1 to 255 bytes")),
        "{}",
        out.stderr
    );
}
