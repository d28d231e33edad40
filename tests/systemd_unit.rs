//! config/shardgate.service: systemd accepts it (`systemd-analyze verify`, installed by
//! .ci/run), its ExecStart uses only flags `shardgate run` has, and reload is SIGHUP.

use std::path::Path;
use std::process::Command;

fn unit() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/shardgate.service"))
        .unwrap()
}

fn value<'a>(unit: &'a str, key: &str) -> &'a str {
    unit.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in the unit"))
}

#[test]
fn systemd_accepts_the_unit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shardgate.service");
    // The unit names the installed binary; verify checks that ExecStart is executable.
    let text = unit().replace("/usr/local/bin/shardgate", env!("CARGO_BIN_EXE_shardgate"));
    std::fs::write(&path, text).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (Debian package systemd) is needed: .ci/run installs it");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let about_unit: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("shardgate.service"))
        .collect();
    assert!(
        out.status.success() && about_unit.is_empty(),
        "{}{stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn exec_start_uses_flags_shardgate_run_has_and_reload_is_sighup() {
    let text = unit();
    let start = value(&text, "ExecStart");
    let args: Vec<&str> = start.split_whitespace().collect();
    assert_eq!(args[..2], ["/usr/local/bin/shardgate", "run"], "{start}");
    let help = Command::new(env!("CARGO_BIN_EXE_shardgate"))
        .args(["run", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in args.iter().filter(|a| a.starts_with("--")) {
        assert!(
            help.contains(flag),
            "{flag} is not a flag of `shardgate run`:\n{help}"
        );
    }
    assert_eq!(value(&text, "ExecReload"), "/bin/kill -HUP $MAINPID");
    assert_eq!(value(&text, "Type"), "notify");
    assert_eq!(
        value(&text, "NotifyAccess"),
        "all",
        "the successor announces MAINPID"
    );
}
