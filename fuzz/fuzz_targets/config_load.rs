//! Arbitrary text through the whole config pipeline (TOML, `${VAR}`, serde, validation):
//! it must never panic, and every error must render.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::fmt::Write;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Err(errors) = shardgate::config::parse_with_env(&text, "fuzz.toml", &|_| None) {
        let mut out = String::new();
        for e in &errors.0 {
            out.clear();
            write!(out, "{e}").expect("ConfigError Display failed");
            assert!(
                out.starts_with("fuzz.toml:"),
                "error not located in the file: {out:?}"
            );
            // `line` is a usize (so >= 0 by type); 0 means "unknown", otherwise it is in the text.
            assert!(
                e.line <= text.matches('\n').count() + 1,
                "line {} past the end: {out:?}",
                e.line
            );
        }
        write!(out, "{errors}").expect("ConfigErrors Display failed");
    }
});
