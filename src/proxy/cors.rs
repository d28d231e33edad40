//! Cross-origin requests on routes with `cors`: preflights are answered at the edge, allowed
//! origins get `Access-Control-Allow-Origin` on the response, and WebSocket upgrades from
//! other origins are refused (browsers do not apply CORS to WebSockets). Pure.

use crate::routing::CompiledRoute;
use http::header::{HeaderName, ORIGIN};
use http::Method;
use pingora::http::{RequestHeader, ResponseHeader};

/// What the edge does about a request's origin.
#[derive(Debug)]
pub enum CorsDecision {
    /// Not a cross-origin matter (no `cors` on the route, or no Origin).
    Pass,
    /// An allowed origin: echo it on the response.
    Allow(String),
    /// A preflight from an allowed origin: answered here with 204 and these headers.
    Preflight(Vec<(&'static str, String)>),
    /// A preflight or WebSocket upgrade from an origin not allowed: 403.
    Refuse,
}

/// What a request says that CORS looks at.
pub struct CorsRequest<'a> {
    pub options: bool,
    pub origin: Option<&'a str>,
    pub request_method: bool,
    pub request_headers: Option<&'a str>,
}

impl<'a> CorsRequest<'a> {
    pub fn of(req: &'a RequestHeader) -> Self {
        let text = |name: &str| req.headers.get(name).and_then(|v| v.to_str().ok());
        CorsRequest {
            options: req.method == Method::OPTIONS,
            origin: req.headers.get(ORIGIN).and_then(|o| o.to_str().ok()),
            request_method: req.headers.contains_key("access-control-request-method"),
            request_headers: text("access-control-request-headers"),
        }
    }
}

pub fn decide(route: &CompiledRoute, req: &CorsRequest, upgrade: bool) -> CorsDecision {
    if route.cors.is_none() {
        return CorsDecision::Pass;
    }
    let Some(origin) = req.origin else {
        return CorsDecision::Pass;
    };
    let allowed = route.origin_allowed(origin);
    if req.options && req.request_method {
        if !allowed {
            return CorsDecision::Refuse;
        }
        let mut headers = vec![
            ("access-control-allow-origin", origin.to_owned()),
            ("vary", "Origin".to_owned()),
            (
                "access-control-allow-methods",
                "GET, POST, PUT, DELETE, OPTIONS".to_owned(),
            ),
        ];
        if let Some(h) = req.request_headers {
            headers.push(("access-control-allow-headers", h.to_owned()));
        }
        headers.push(("access-control-max-age", "600".to_owned()));
        return CorsDecision::Preflight(headers);
    }
    match (allowed, upgrade) {
        (true, _) => CorsDecision::Allow(origin.to_owned()),
        (false, true) => CorsDecision::Refuse,
        (false, false) => CorsDecision::Pass,
    }
}

/// The 204 answering an allowed preflight.
pub fn preflight_response(headers: &[(&'static str, String)]) -> Box<ResponseHeader> {
    let mut resp = ResponseHeader::build(204, Some(headers.len() + 1)).expect("204 is valid");
    for (k, v) in headers {
        let _ = resp.insert_header(*k, v.as_str());
    }
    let _ = resp.insert_header("content-length", "0");
    Box::new(resp)
}

/// Adds the allow headers for an allowed origin to a response.
pub fn add_allow(resp: &mut ResponseHeader, origin: &str) {
    let _ = resp.insert_header("access-control-allow-origin", origin);
    let vary = HeaderName::from_static("vary");
    let _ = resp.append_header(vary, "Origin");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Cors, Route};

    fn route(origins: &[&str]) -> CompiledRoute {
        let r = Route {
            name: None,
            path_prefix: "/".into(),
            host: None,
            shard: None,
            pool: Some("p".into()),
            instance: None,
            respond: None,
            strip_prefix: false,
            sfu: false,
            cors: Some(Cors {
                allow_origin: origins.iter().map(|o| o.to_string()).collect(),
            }),
        };
        CompiledRoute::new(&r, |_| 0)
    }

    fn req(method: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build(method, b"/sftd/x", None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn preflights_and_upgrades() {
        let r = route(&["https://app.example.com"]);
        let pre = req(
            "OPTIONS",
            &[
                ("origin", "https://app.example.com"),
                ("access-control-request-method", "POST"),
                ("access-control-request-headers", "content-type"),
            ],
        );
        match decide(&r, &CorsRequest::of(&pre), false) {
            CorsDecision::Preflight(headers) => {
                let resp = preflight_response(&headers);
                assert_eq!(resp.status, 204);
                assert_eq!(
                    resp.headers["access-control-allow-origin"],
                    "https://app.example.com"
                );
                assert_eq!(resp.headers["access-control-allow-headers"], "content-type");
            }
            other => panic!("{other:?}"),
        }
        let evil = req(
            "OPTIONS",
            &[
                ("origin", "https://evil.example"),
                ("access-control-request-method", "POST"),
            ],
        );
        assert!(matches!(
            decide(&r, &CorsRequest::of(&evil), false),
            CorsDecision::Refuse
        ));
        let ws_evil = req("GET", &[("origin", "https://evil.example")]);
        assert!(matches!(
            decide(&r, &CorsRequest::of(&ws_evil), true),
            CorsDecision::Refuse
        ));
        // Simple requests from other origins pass without allow headers: the browser enforces.
        assert!(matches!(
            decide(&r, &CorsRequest::of(&ws_evil), false),
            CorsDecision::Pass
        ));
        let ok = req("POST", &[("origin", "https://app.example.com")]);
        assert!(
            matches!(decide(&r, &CorsRequest::of(&ok), true), CorsDecision::Allow(o) if o == "https://app.example.com")
        );
        assert!(
            matches!(
                decide(&r, &CorsRequest::of(&req("GET", &[])), true),
                CorsDecision::Pass
            ),
            "no Origin: not a browser"
        );
        assert!(
            matches!(decide(&route(&["*"]), &CorsRequest::of(&ws_evil), true), CorsDecision::Allow(o) if o == "https://evil.example")
        );
    }
}
