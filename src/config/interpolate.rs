//! `${VAR}` and `${VAR:-default}` in string values, taken from the environment.
//! `$$` stands for a literal `$`. A variable that is unset and has no default is an error.

/// Replaces every `${NAME}` / `${NAME:-default}` in `text` using `lookup`.
pub fn interpolate(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    if !text.contains('$') {
        return Ok(text.to_owned());
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or_else(|| format!("unclosed \"${{\" in {text:?}; expected ${{NAME}}"))?;
            let expr = &body[..end];
            let (name, default) = match expr.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (expr, None),
            };
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(format!(
                    "\"${{{expr}}}\" is not a variable reference; expected ${{NAME}} or ${{NAME:-default}}"
                ));
            }
            match (lookup(name), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {
                    return Err(format!(
                        "environment variable {name} is not set (write ${{{name}:-default}} to give a default)"
                    ))
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "TOKEN").then(|| "s3cret".to_owned())
    }

    #[test]
    fn substitutes_and_defaults() {
        assert_eq!(
            interpolate("Bearer ${TOKEN}", &env).unwrap(),
            "Bearer s3cret"
        );
        assert_eq!(interpolate("${PORT:-8080}", &env).unwrap(), "8080");
        assert_eq!(interpolate("${TOKEN:-x}", &env).unwrap(), "s3cret");
        assert_eq!(
            interpolate("cost $$5 and $x", &env).unwrap(),
            "cost $5 and $x"
        );
    }

    #[test]
    fn reports_missing_and_malformed() {
        assert!(interpolate("${NOPE}", &env)
            .unwrap_err()
            .contains("NOPE is not set"));
        assert!(interpolate("${TOKEN", &env)
            .unwrap_err()
            .contains("unclosed"));
        assert!(interpolate("${a b}", &env).is_err());
    }
}
