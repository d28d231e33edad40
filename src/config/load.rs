//! From text to a validated [`Config`]: TOML syntax (all errors, recovered), `${VAR}`
//! interpolation, serde per section (so one bad pool does not hide a bad route), validation.
//! Every error is located by its key path through an index of spans built from the parse.

use super::error::{ConfigError, ConfigErrors};
use super::interpolate::interpolate;
use super::model::{Config, Listener, Pool, Route};
use super::validate::validate;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;
use toml::de::{DeTable, DeValue};
use toml::{Table, Value};

/// The config `shardgate run` uses when given no file.
pub const DEFAULT_CONFIG: &str = include_str!("../../config/default.toml");

/// Reads, parses and validates a config file, including that TLS files can be read.
pub fn load_file(path: &Path) -> Result<Config, ConfigErrors> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: name.clone(),
            line: 0,
            column: 0,
            path: String::new(),
            message: format!("cannot read the file: {e}"),
        }])
    })?;
    parse(&text, &name)
}

/// Parses config text with the process environment for `${VAR}`.
pub fn parse(text: &str, file: &str) -> Result<Config, ConfigErrors> {
    parse_with_env(text, file, &|name| std::env::var(name).ok())
}

/// Parses config text with `env` for `${VAR}`; pure but for reading the TLS files it names.
pub fn parse_with_env(
    text: &str,
    file: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    let locate = Locator::new(text, file);
    let (doc, syntax) = DeTable::parse_recoverable(text);
    if !syntax.is_empty() {
        let errors = syntax
            .iter()
            .map(|e| {
                let at = e.span().map(|s| s.start).unwrap_or(0);
                locate.error(at, String::new(), e.message().trim().to_owned())
            })
            .collect();
        return Err(ConfigErrors(errors));
    }
    let mut spans = SpanIndex::default();
    spans.walk_table(doc.get_ref(), "");

    let mut table: Table = toml::from_str(text).map_err(|e| {
        let at = e.span().map(|s| s.start).unwrap_or(0);
        ConfigErrors(vec![locate.error(
            at,
            String::new(),
            e.message().to_owned(),
        )])
    })?;

    let mut errors = Vec::new();
    for (key, value) in table.iter_mut() {
        interpolate_value(value, key, env, &mut |path, msg| {
            errors.push(spans.error(&locate, path, msg))
        });
    }
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }

    // Validate even when some sections failed to deserialize (placeholders stand in for
    // them), so one run reports every error; rules about a failed section are left out.
    let (config, failed) = deserialize_sections(table, &spans, &locate, &mut errors);
    let inside_failed = |path: &str| {
        failed.iter().any(|f| {
            path == f
                || path
                    .strip_prefix(f.as_str())
                    .is_some_and(|r| r.starts_with(['.', '[']))
        })
    };
    for (path, message) in validate(&config) {
        if !inside_failed(&path) {
            errors.push(spans.error(&locate, &path, message));
        }
    }
    for (i, l) in config.listener.iter().enumerate() {
        if let (Some(tls), false) = (&l.tls, inside_failed(&format!("listener[{i}]"))) {
            if let Err(message) = crate::tls::load_certified_key(&tls.cert, &tls.key) {
                errors.push(spans.error(&locate, &format!("listener[{i}].tls"), message));
            }
            for (j, pair) in tls.sni.iter().enumerate() {
                let names = crate::tls::load_certified_key(&pair.cert, &pair.key)
                    .and_then(|ck| crate::tls::names_of(&ck.cert[0]));
                let message = match names {
                    Ok(names) if names.is_empty() => format!(
                        "{} names no DNS host, so no client could select it by SNI",
                        pair.cert.display()
                    ),
                    Ok(_) => continue,
                    Err(message) => message,
                };
                errors.push(spans.error(&locate, &format!("listener[{i}].tls.sni[{j}]"), message));
            }
        }
    }
    for (i, p) in config.pool.iter().enumerate() {
        let (Some(tls), false) = (&p.tls, inside_failed(&format!("pool[{i}]"))) else {
            continue;
        };
        if let Some(ca) = &tls.ca {
            if let Err(message) = crate::tls::load_ca_bundle(ca) {
                errors.push(spans.error(&locate, &format!("pool[{i}].tls.ca"), message));
            }
        }
        if let (Some(cert), Some(key)) = (&tls.client_cert, &tls.client_key) {
            if let Err(message) = crate::tls::load_client_identity(cert, key) {
                errors.push(spans.error(&locate, &format!("pool[{i}].tls.client_cert"), message));
            }
        }
    }
    if errors.is_empty() {
        Ok(config)
    } else {
        errors.sort_by_key(|e| (e.line, e.column));
        Err(ConfigErrors(errors))
    }
}
/// Deserializes each top-level section, and each element of `[[array]]` sections, on its own
/// so that every section's error is reported. Returns the config with placeholders where a
/// part failed, and the key paths of the failed parts.
fn deserialize_sections(
    table: Table,
    spans: &SpanIndex,
    locate: &Locator,
    errors: &mut Vec<ConfigError>,
) -> (Config, Vec<String>) {
    let mut config = Config::placeholder();
    let mut failed = Vec::new();
    // `sub` is the error's path inside the part at `path`.
    let mut fail = |path: String, (sub, msg): (String, String), errors: &mut Vec<ConfigError>| {
        let at = if sub.starts_with(&path) {
            sub
        } else {
            join(&path, &sub)
        };
        errors.push(spans.error(locate, &at, msg));
        failed.push(path);
    };
    for (key, value) in table {
        match (key.as_str(), value) {
            ("listener", Value::Array(items)) => {
                for (i, item) in items.into_iter().enumerate() {
                    match check(item) {
                        Ok(l) => config.listener.push(l),
                        Err(e) => {
                            fail(format!("listener[{i}]"), e, errors);
                            config.listener.push(Listener::placeholder());
                        }
                    }
                }
            }
            ("pool", Value::Array(items)) => {
                for (i, item) in items.into_iter().enumerate() {
                    let name = item.get("name").and_then(Value::as_str).map(str::to_owned);
                    match check(item) {
                        Ok(p) => config.pool.push(p),
                        Err(e) => {
                            fail(format!("pool[{i}]"), e, errors);
                            config
                                .pool
                                .push(Pool::placeholder(name.unwrap_or_default()));
                        }
                    }
                }
            }
            ("route", Value::Array(items)) => {
                for (i, item) in items.into_iter().enumerate() {
                    match check(item) {
                        Ok(r) => config.route.push(r),
                        Err(e) => {
                            fail(format!("route[{i}]"), e, errors);
                            config.route.push(Route::placeholder());
                        }
                    }
                }
            }
            (_, value) => {
                let mut one = Table::new();
                one.insert(key.clone(), value);
                match check::<Config>(Value::Table(one)) {
                    Ok(part) => config.take_section(&key, part),
                    Err(e) => fail(key, e, errors),
                }
            }
        }
    }
    (config, failed)
}

fn check<T: DeserializeOwned>(value: Value) -> Result<T, (String, String)> {
    serde_path_to_error::deserialize(value).map_err(split_error)
}

fn split_error(e: serde_path_to_error::Error<toml::de::Error>) -> (String, String) {
    let mut path = e.path().to_string();
    if path == "." {
        path.clear();
    }
    let message = e.inner().message().trim().to_owned();
    // serde reports an unknown key at its table; point at the key itself.
    if let Some(name) = message
        .strip_prefix("unknown field `")
        .and_then(|r| r.split('`').next())
    {
        if !path.ends_with(name) {
            path = join(&path, name);
        }
    }
    (path, message)
}

fn join(parent: &str, child: &str) -> String {
    match (parent.is_empty(), child.is_empty() || child == ".") {
        (true, _) => child.to_owned(),
        (_, true) => parent.to_owned(),
        _ if child.starts_with('[') => format!("{parent}{child}"),
        _ => format!("{parent}.{child}"),
    }
}

fn interpolate_value(
    value: &mut Value,
    path: &str,
    env: &dyn Fn(&str) -> Option<String>,
    report: &mut dyn FnMut(&str, String),
) {
    match value {
        Value::String(s) => match interpolate(s, env) {
            Ok(new) => *s = new,
            Err(msg) => report(path, msg),
        },
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                interpolate_value(item, &format!("{path}[{i}]"), env, report);
            }
        }
        Value::Table(t) => {
            for (k, v) in t.iter_mut() {
                interpolate_value(v, &join(path, k), env, report);
            }
        }
        _ => {}
    }
}

/// Key path -> (span of the key, span of the value), from the spanned parse.
#[derive(Default)]
struct SpanIndex {
    spans: HashMap<String, (usize, Range<usize>)>,
}

impl SpanIndex {
    fn walk_table(&mut self, table: &DeTable<'_>, prefix: &str) {
        for (key, value) in table.iter() {
            let path = join(prefix, key.get_ref());
            self.spans
                .insert(path.clone(), (key.span().start, value.span()));
            self.walk_value(value.get_ref(), &path);
        }
    }

    fn walk_value(&mut self, value: &DeValue<'_>, path: &str) {
        match value {
            DeValue::Table(t) => self.walk_table(t, path),
            DeValue::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let p = format!("{path}[{i}]");
                    self.spans
                        .insert(p.clone(), (item.span().start, item.span()));
                    self.walk_value(item.get_ref(), &p);
                }
            }
            _ => {}
        }
    }

    /// The offset of `path`, or of its nearest located ancestor. Unknown keys point at the key,
    /// everything else at the value.
    fn offset(&self, path: &str, at_key: bool) -> usize {
        let mut p = path;
        loop {
            if let Some((key, value)) = self.spans.get(p) {
                return if at_key { *key } else { value.start };
            }
            match p.rfind(['.', '[']) {
                Some(cut) => p = &p[..cut],
                None => return 0,
            }
        }
    }

    fn error(&self, locate: &Locator, path: &str, message: String) -> ConfigError {
        let at_key = message.starts_with("unknown field");
        locate.error(self.offset(path, at_key), path.to_owned(), message)
    }
}

/// Turns byte offsets into 1-based line:column.
struct Locator<'a> {
    text: &'a str,
    file: &'a str,
}

impl<'a> Locator<'a> {
    fn new(text: &'a str, file: &'a str) -> Self {
        Locator { text, file }
    }

    fn error(&self, offset: usize, path: String, message: String) -> ConfigError {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        ConfigError {
            file: self.file.to_owned(),
            line,
            column,
            path,
            message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_env(text: &str) -> Result<Config, ConfigErrors> {
        parse_with_env(text, "t.toml", &|n| {
            (n == "TOKEN").then(|| "tok".to_owned())
        })
    }

    const GOOD: &str = r#"
[[listener]]
addr = "127.0.0.1:8080"

[admin]
addr = "127.0.0.1:9090"
token = "${TOKEN}"

[[pool]]
name = "shards"
shards.list = [
  { name = "shard-0", addrs = ["127.0.0.1:8001"] },
  { name = "shard-1", addrs = ["127.0.0.1:8002"], weight = 2 },
]

[[route]]
path_prefix = "/"
shard = { pool = "shards" }
"#;

    #[test]
    fn loads_a_good_file() {
        let c = parse_env(GOOD).unwrap();
        assert_eq!(c.admin.unwrap().token.as_deref(), Some("tok"));
        assert_eq!(c.pool[0].shards.as_ref().unwrap().list[1].weight, 2);
        assert_eq!(c.timeouts.tunnel.as_secs(), 3600);
    }

    #[test]
    fn embedded_default_is_valid() {
        parse_with_env(DEFAULT_CONFIG, "<embedded>", &|_| None).unwrap();
    }

    #[test]
    fn reports_every_error_with_position_and_path() {
        let text = GOOD
            .replace(
                "addr = \"127.0.0.1:8080\"",
                "addr = \"127.0.0.1:8080\"\nbogus = 1",
            )
            .replace("weight = 2", "weight = \"heavy\"")
            .replace(
                "path_prefix = \"/\"",
                "path_prefix = \"/\"\npool = \"nope\"",
            );
        let errs = parse_env(&text).unwrap_err().0;
        let shown: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert_eq!(errs.len(), 4, "{shown:#?}");
        assert!(
            shown[0].starts_with("t.toml:4:1: listener[0].bogus: unknown field `bogus`"),
            "{}",
            shown[0]
        );
        assert!(
            shown[1].contains("pool[0].shards.list[1].weight"),
            "{}",
            shown[1]
        );
        assert!(shown[1].starts_with("t.toml:14:"), "{}", shown[1]);
        // Validation runs beside serde errors: the route's two actions and its missing pool.
        assert!(
            shown[2].starts_with("t.toml:17:1: route[0]: more than one action"),
            "{}",
            shown[2]
        );
        assert!(
            shown[3].starts_with("t.toml:19:8: route[0].pool: no pool named \"nope\""),
            "{}",
            shown[3]
        );
    }

    #[test]
    fn validation_errors_are_located() {
        let text = GOOD.replace(
            "shard = { pool = \"shards\" }",
            "shard = { pool = \"nope\" }",
        );
        let errs = parse_env(&text).unwrap_err().0;
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].path, "route[0].shard.pool");
        assert_eq!((errs[0].line, errs[0].column), (18, 18), "{}", errs[0]);
        assert!(
            errs[0].message.contains("no pool named \"nope\""),
            "{}",
            errs[0]
        );
    }

    #[test]
    fn missing_env_and_bad_durations_are_reported() {
        let text = GOOD.replace("${TOKEN}", "${MISSING}") + "\n[timeouts]\nidle = \"ninety\"\n";
        let errs = parse_env(&text).unwrap_err().0;
        assert_eq!(errs.len(), 1, "interpolation errors stop before serde");
        assert!(errs[0].message.contains("MISSING is not set"));
        let text = GOOD.to_owned() + "\n[timeouts]\nidle = \"ninety\"\n";
        let errs = parse_env(&text).unwrap_err().0;
        assert_eq!(errs[0].path, "timeouts.idle", "{}", errs[0]);
        assert!(errs[0].message.contains("not a duration"));
    }

    #[test]
    fn upstream_tls_settings_are_checked() {
        let with = |tls: &str| {
            let text = GOOD.replace(
                "shards.list = [",
                &format!("tls = {{ {tls} }}\nshards.list = ["),
            );
            messages(&text)
        };
        assert_eq!(with("server_name = \"shard.test\""), Ok(()));
        assert_eq!(with("verify = \"none\""), Ok(()));
        let errs = with("verify = \"chain\"").unwrap_err();
        assert!(
            errs[0].starts_with("pool[0].tls: no server_name"),
            "{errs:?}"
        );
        let errs = with("server_name = \"a\", client_cert = \"/c.pem\"").unwrap_err();
        assert!(
            errs[0].contains("client_cert and client_key go together"),
            "{errs:?}"
        );
        let errs = with("server_name = \"a\", verify = \"maybe\"").unwrap_err();
        assert!(
            errs[0].starts_with("pool[0].tls.verify: unknown variant"),
            "{errs:?}"
        );
        let errs = with("server_name = \"a\", ca = \"/nonexistent/ca.pem\"").unwrap_err();
        assert!(
            errs[0].starts_with("pool[0].tls.ca: cannot read CA bundle"),
            "{errs:?}"
        );
        let text = GOOD.replace(
            "shards.list = [",
            "tls = { server_name = \"a\" }\nhealth = { path = \"/about/health\" }\nshards.list = [",
        );
        let errs = parse_env(&text).unwrap_err().0;
        assert_eq!(errs[0].path, "pool[0].health.path", "{errs:?}");
    }

    /// `Ok` for a valid config, else each error as `path: message`.
    fn messages(text: &str) -> Result<(), Vec<String>> {
        parse_env(text).map(|_| ()).map_err(|e| {
            e.0.iter()
                .map(|e| format!("{}: {}", e.path, e.message))
                .collect()
        })
    }

    #[test]
    fn media_zones_are_checked() {
        let with = |zones: &str| messages(&format!("{GOOD}\n{zones}"));
        let zone = |name: &str, ports: &str, target: &str| {
            format!("[[media.zone]]\nname = \"{name}\"\nports = \"{ports}\"\n{target}\n")
        };
        let pod = "target = \"shard-0-jvb-{index}.shard-0-jvb.jitsi.svc.cluster.local.:{port}\"";
        assert_eq!(with(&zone("ZONE_0", "30300-30399", pod)), Ok(()));
        assert_eq!(
            with(&zone(
                "z",
                "30300-30301",
                "targets = [\"10.0.0.1:10000\", \"10.0.0.2:10000\"]"
            )),
            Ok(())
        );
        let errs =
            with(&(zone("a", "30300-30399", pod) + &zone("b", "30350-30449", pod))).unwrap_err();
        assert!(
            errs[0].starts_with("media.zone[1].ports: 30350-30449 overlaps media.zone[0]"),
            "{errs:?}"
        );
        let errs = with(&zone("a", "8000-8100", pod)).unwrap_err();
        assert!(
            errs[0].contains("includes port 8080 of listener[0]"),
            "{errs:?}"
        );
        let errs = with(&zone("a", "30300-30302", "targets = [\"10.0.0.1:10000\"]")).unwrap_err();
        assert!(errs[0].contains("1 targets for the 3 ports"), "{errs:?}");
        let errs = with(&zone(
            "a",
            "30300-30302",
            "target = \"jvb-{ordinal}:{port}\"",
        ))
        .unwrap_err();
        assert!(
            errs[0].contains("only {index} and {port} are substituted"),
            "{errs:?}"
        );
        let errs = with(&zone("a", "30300-30302", "")).unwrap_err();
        assert!(errs[0].starts_with("media.zone[0]: no target"), "{errs:?}");
        let errs = with(&zone("a", "30399-30300", pod)).unwrap_err();
        assert!(errs[0].starts_with("media.zone[0].ports"), "{errs:?}");
    }

    #[test]
    fn the_sfu_section_is_checked() {
        let with = |extra: &str| messages(&format!("{GOOD}\n{extra}"));
        let route = "[[route]]\npath_prefix = \"/meet\"\nsfu = true\n";
        assert_eq!(
            with(&format!("[sfu]\nudp = \"127.0.0.1:10000\"\n{route}")),
            Ok(())
        );
        assert_eq!(
            with(&format!(
                "[sfu]\nudp = \"0.0.0.0:10000\"\npublic_ip = \"203.0.113.7\"\n{route}"
            )),
            Ok(())
        );
        let errs = with(route).unwrap_err();
        assert!(errs[0].contains(".sfu: no [sfu] section"), "{errs:?}");
        let errs = with("[sfu]\nudp = \"0.0.0.0:10000\"\n").unwrap_err();
        assert!(
            errs[0].starts_with("sfu.public_ip: udp = \"0.0.0.0:10000\" binds every address"),
            "{errs:?}"
        );
        let errs = with("[sfu]\nudp = \"127.0.0.1:0\"\nmax_rooms = 0\nmax_peers_per_room = 1\n")
            .unwrap_err();
        assert_eq!(errs.len(), 3, "{errs:?}");
        let errs = with(
            "[sfu]\nudp = \"127.0.0.1:10000\"\n[[route]]\nsfu = true\nrespond = { body = \"x\" }\n",
        )
        .unwrap_err();
        assert!(errs[0].contains("more than one action"), "{errs:?}");
        let errs = with(
            "[sfu]\nudp = \"127.0.0.1:30310\"\n[[media.zone]]\nname = \"z\"\nports = \"30300-30399\"\ntarget = \"10.0.0.1:{port}\"\n",
        )
        .unwrap_err();
        assert!(
            errs[0].starts_with("sfu.udp: port 30310 is in media.zone[0]"),
            "{errs:?}"
        );
    }

    #[test]
    fn syntax_errors_all_reported() {
        let errs = parse_env("a = 1\nb = \n[x\nc = 2\n").unwrap_err().0;
        assert!(errs.len() >= 2, "{errs:?}");
        assert!(errs.iter().all(|e| (2..=4).contains(&e.line)), "{errs:?}");
    }
}
