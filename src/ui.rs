//! `baton ui`: the web UI, served on 127.0.0.1 from files compiled into the
//! binary, talking to the API server through the user's own kubeconfig like
//! `kubectl proxy`, so it can do exactly what the user may do. Unlike
//! `kubectl proxy` it forwards only the reads its pages make (runs,
//! Workflows, Events, pods and pod logs) and makes the requests of its
//! buttons itself with the CLI's code (`/ui/request`, src/steer.rs). Only
//! the browser that opened the printed URL gets in: the URL carries a random
//! token, exchanged for an HttpOnly, SameSite=Strict cookie that every
//! request but the page's static files must bring (other local users, and
//! pages of other sites, have neither). It also refuses other Host headers
//! (DNS rebinding), requires its own header on the buttons' requests, may
//! not be framed (clickjacking), and passes on only the Content-Type of the
//! API server's answers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::api::WorkflowInstance;
use crate::steer::{self, Outcome, send};

/// The header the UI's own requests carry.
pub const WRITE_HEADER: &str = "x-baton-ui";

/// The cookie that carries the token of the printed URL.
const COOKIE: &str = "baton-ui";

const INDEX: &str = include_str!("ui/index.html");
const APP_JS: &str = include_str!("ui/app.js");
const APP_CSS: &str = include_str!("ui/app.css");

/// Whether `baton ui` forwards `method path` to the API server: only what
/// its pages use.
pub fn allowed(method: &Method, path: &str) -> bool {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let read = *method == Method::GET;
    // Names are DNS names: a segment that could walk the path is no name.
    if parts.iter().any(|p| p.is_empty() || p.starts_with('.') || p.contains('%')) {
        return false;
    }
    match parts.as_slice() {
        ["api", "v1", "namespaces"] => read,
        ["api", "v1", "namespaces", _, "events" | "pods"] => read,
        ["api", "v1", "namespaces", _, "pods", _, "log"] => read,
        ["apis", "baton.dev", "v1alpha1", "workflowinstances" | "workflows"] => read,
        ["apis", "baton.dev", "v1alpha1", "namespaces", _, "workflowinstances" | "workflows"] => read,
        ["apis", "baton.dev", "v1alpha1", "namespaces", _, "workflows" | "workflowinstances", _] => read,
        _ => false,
    }
}

/// Whether the request was addressed to this server by a loopback name:
/// a page that rebinds its own DNS name to 127.0.0.1 sends its own name.
pub fn local_host(headers: &HeaderMap, port: u16) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else { return false };
    ["127.0.0.1", "localhost", "[::1]"].iter().any(|name| host == format!("{name}:{port}") || (port == 80 && host == *name))
}

/// The token of the `baton-ui` cookie, if the request brings one.
fn cookie_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))
}

/// Whether a request may use the user's credentials: addressed to this
/// server, from the browser that opened the printed URL.
pub fn authorized(headers: &HeaderMap, port: u16, token: &str) -> Result<(), String> {
    if !local_host(headers, port) {
        return Err("baton ui answers only requests addressed to 127.0.0.1 or localhost".into());
    }
    match cookie_token(headers) {
        Some(t) if t == token => Ok(()),
        _ => Err("open the URL that baton ui printed: it carries the token this browser needs".into()),
    }
}

/// A run's or a namespace's name as the API server allows it (a DNS
/// subdomain): nothing that could reshape the path of a request.
fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !s.starts_with('.')
}

struct Ui {
    client: kube::Client,
    port: u16,
    /// The secret of the printed URL.
    token: String,
    /// The namespace the pages start in (`-n`, else the kubeconfig's).
    namespace: String,
}

fn refuse(code: StatusCode, message: String) -> Response {
    let body = serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "code": code.as_u16()});
    (code, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// Forwards an allowed request to the API server as the user, streaming
/// the answer back (watches included).
async fn proxy(State(ui): State<Arc<Ui>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let Some(path) = parts.uri.path().strip_prefix("/k8s") else {
        return refuse(StatusCode::NOT_FOUND, "not found".into());
    };
    if !allowed(&parts.method, path) {
        return refuse(StatusCode::FORBIDDEN, format!("baton ui does not forward {} {path}: its pages do not use it", parts.method));
    }
    let Ok(bytes) = axum::body::to_bytes(body, 1 << 20).await else {
        return refuse(StatusCode::PAYLOAD_TOO_LARGE, "request body over 1 MiB".into());
    };
    let target = parts.uri.path_and_query().map_or(path.to_string(), |pq| pq.as_str().trim_start_matches("/k8s").to_string());
    let mut forward = http::Request::builder().method(parts.method.clone()).uri(target);
    for name in [header::CONTENT_TYPE, header::ACCEPT] {
        if let Some(v) = parts.headers.get(&name) {
            forward = forward.header(name, v);
        }
    }
    let Ok(forward) = forward.body(kube::client::Body::from(bytes.to_vec())) else {
        return refuse(StatusCode::BAD_REQUEST, "malformed request".into());
    };
    match ui.client.send(forward).await {
        Ok(answer) => {
            // Only the status and the type: no CORS, cookie or
            // authentication header of the API server's reaches the browser.
            let (parts, body) = answer.into_parts();
            let mut response = Response::new(axum::body::Body::new(body));
            *response.status_mut() = parts.status;
            if let Some(kind) = parts.headers.get(header::CONTENT_TYPE) {
                response.headers_mut().insert(header::CONTENT_TYPE, kind.clone());
            }
            response
        }
        Err(e) => refuse(StatusCode::BAD_GATEWAY, format!("cannot reach the API server: {e}")),
    }
}

/// `POST /ui/request?namespace=N&name=R&what=pause|resume|stop|retry`:
/// exactly what `baton pause|resume|stop|retry` does (src/steer.rs), as the
/// user. Answers `{"message"}`: 200 when made or already in place, 409 when
/// it cannot apply, the API server's Status when it refused.
async fn request(State(ui): State<Arc<Ui>>, headers: HeaderMap, Query(query): Query<HashMap<String, String>>) -> Response {
    if !headers.contains_key(WRITE_HEADER) {
        return refuse(StatusCode::FORBIDDEN, format!("a request through baton ui needs the {WRITE_HEADER} header its pages send"));
    }
    let get = |k: &str| query.get(k).cloned().unwrap_or_default();
    let Some(what) = steer::Request::from_verb(&get("what")) else {
        return refuse(StatusCode::BAD_REQUEST, format!("unknown request {:?}", get("what")));
    };
    let (namespace, name) = (get("namespace"), get("name"));
    if !is_name(&namespace) || !is_name(&name) {
        return refuse(StatusCode::BAD_REQUEST, format!("{namespace:?}/{name:?} is not the name of a run"));
    }
    let api: kube::Api<WorkflowInstance> = kube::Api::namespaced(ui.client.clone(), &namespace);
    let (code, message) = match send(&api, &name, what).await {
        Ok(Outcome::Requested(m) | Outcome::Nothing(m)) => (StatusCode::OK, m),
        Ok(Outcome::Refused(m)) => (StatusCode::CONFLICT, m),
        Err(kube::Error::Api(s)) => return refuse(StatusCode::from_u16(s.code).unwrap_or(StatusCode::BAD_GATEWAY), s.message),
        Err(e) => (StatusCode::BAD_GATEWAY, format!("cannot reach the API server: {e}")),
    };
    (code, axum::Json(serde_json::json!({"message": message}))).into_response()
}

/// The next tick of a schedule, computed as the controller computes it
/// (`GET /ui/next-tick?cron=...&timeZone=...`).
async fn next_tick(Query(query): Query<HashMap<String, String>>) -> Response {
    let schedule = crate::api::Schedule {
        cron: query.get("cron").cloned().unwrap_or_default(),
        time_zone: query.get("timeZone").cloned(),
        ..Default::default()
    };
    let answer = match crate::schedule::parse(&schedule) {
        Ok(parsed) => serde_json::json!({"next": parsed.next_after(k8s_openapi::jiff::Timestamp::now()).map(|t| t.to_string())}),
        Err(e) => serde_json::json!({"error": e}),
    };
    ([(header::CONTENT_TYPE, "application/json")], answer.to_string()).into_response()
}

fn asset(kind: &'static str, text: &'static str) -> Response {
    ([(header::CONTENT_TYPE, kind), (header::CACHE_CONTROL, "no-cache")], text).into_response()
}

/// `/`: the page, for a browser with the cookie; the printed URL's
/// `?token=` is exchanged for it (and dropped from the address bar).
async fn index(State(ui): State<Arc<Ui>>, headers: HeaderMap, Query(query): Query<HashMap<String, String>>) -> Response {
    if !local_host(&headers, ui.port) {
        return refuse(StatusCode::FORBIDDEN, "baton ui answers only requests addressed to 127.0.0.1 or localhost".into());
    }
    let offered = query.get("token").cloned();
    match offered {
        Some(t) if t == ui.token => (
            StatusCode::SEE_OTHER,
            [(header::SET_COOKIE, format!("{COOKIE}={t}; Path=/; HttpOnly; SameSite=Strict")), (header::LOCATION, "/".to_string())],
        )
            .into_response(),
        Some(_) => refuse(StatusCode::FORBIDDEN, "this token is not the one baton ui printed".into()),
        None if cookie_token(&headers) == Some(ui.token.as_str()) => asset("text/html; charset=utf-8", INDEX),
        None => refuse(StatusCode::FORBIDDEN, "open the URL that baton ui printed: it carries the token this browser needs".into()),
    }
}

/// Every request but the page's static files: from the browser that opened
/// the printed URL.
async fn gate(State(ui): State<Arc<Ui>>, request: Request, next: axum::middleware::Next) -> Response {
    match authorized(request.headers(), ui.port, &ui.token) {
        Ok(()) => next.run(request).await,
        Err(message) => refuse(StatusCode::FORBIDDEN, message),
    }
}

/// On every answer: never framed by another page, types not guessed.
async fn harden(request: Request, next: axum::middleware::Next) -> Response {
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.insert(header::X_FRAME_OPTIONS, header::HeaderValue::from_static("DENY"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, header::HeaderValue::from_static("nosniff"));
    h.insert(header::CONTENT_SECURITY_POLICY, header::HeaderValue::from_static("default-src 'self'; frame-ancestors 'none'"));
    response
}

/// 16 random bytes from the kernel, in hex.
fn new_token() -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Binds `addr` (port 0 picks a free one) and returns the URL to open (with
/// its token) and the server future.
pub async fn serve(
    addr: SocketAddr,
    client: kube::Client,
    namespace: String,
) -> std::io::Result<(String, impl std::future::Future<Output = std::io::Result<()>>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let token = new_token()?;
    let url = format!("http://{bound}/?token={token}");
    let ui = Arc::new(Ui { client, port: bound.port(), token, namespace });
    let gated = Router::new()
        .route("/ui/next-tick", get(next_tick))
        .route("/ui/request", axum::routing::post(request))
        .route("/ui/config", get(|State(ui): State<Arc<Ui>>| async move { axum::Json(serde_json::json!({"namespace": ui.namespace})) }))
        .fallback(proxy)
        .layer(axum::middleware::from_fn_with_state(ui.clone(), gate));
    let app = Router::new()
        .route("/", get(index))
        .route("/app.js", get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }))
        .route("/app.css", get(|| async { asset("text/css; charset=utf-8", APP_CSS) }))
        .merge(gated)
        .layer(axum::middleware::from_fn(harden))
        .with_state(ui);
    Ok((url, async move { axum::serve(listener, app).await }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_the_pages_use_is_forwarded() {
        let ok = [
            (Method::GET, "/api/v1/namespaces"),
            (Method::GET, "/api/v1/namespaces/data/events"),
            (Method::GET, "/api/v1/namespaces/data/pods"),
            (Method::GET, "/api/v1/namespaces/data/pods/etl-a-0/log"),
            (Method::GET, "/apis/baton.dev/v1alpha1/workflowinstances"),
            (Method::GET, "/apis/baton.dev/v1alpha1/namespaces/data/workflows/etl"),
            (Method::GET, "/apis/baton.dev/v1alpha1/namespaces/data/workflowinstances/etl-1"),
        ];
        for (m, p) in ok {
            assert!(allowed(&m, p), "{m} {p}");
        }
        let refused = [
            (Method::GET, "/api/v1/namespaces/data/secrets"),
            (Method::GET, "/api/v1/namespaces/data/pods/p/exec"),
            (Method::POST, "/api/v1/namespaces/data/pods"),
            (Method::DELETE, "/apis/baton.dev/v1alpha1/namespaces/data/workflowinstances/etl-1"),
            (Method::PATCH, "/apis/baton.dev/v1alpha1/namespaces/data/workflowinstances/etl-1"),
            (Method::PATCH, "/apis/baton.dev/v1alpha1/namespaces/data/workflowinstances/etl-1/status"),
            (Method::PATCH, "/apis/baton.dev/v1alpha1/namespaces/data/workflows/etl"),
            (Method::GET, "/apis/coordination.k8s.io/v1/namespaces/baton-system/leases"),
            (Method::GET, "/api/v1/namespaces/data/pods/../secrets"),
            (Method::GET, "/api/v1/namespaces/data/pods/../log"),
            (Method::GET, "/api/v1/namespaces/data/pods/%2e%2e/log"),
            (Method::GET, "/api/v1/namespaces//pods"),
        ];
        for (m, p) in refused {
            assert!(!allowed(&m, p), "{m} {p}");
        }
    }

    #[test]
    fn only_loopback_names_of_this_port_are_answered() {
        let with = |host: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::HOST, host.parse().unwrap());
            h
        };
        assert!(local_host(&with("127.0.0.1:8001"), 8001));
        assert!(local_host(&with("localhost:8001"), 8001));
        assert!(!local_host(&with("evil.example:8001"), 8001));
        assert!(!local_host(&with("127.0.0.1:8002"), 8001));
        assert!(!local_host(&HeaderMap::new(), 8001));
    }

    #[test]
    fn only_the_browser_with_the_printed_token_gets_in() {
        let with = |pairs: &[(header::HeaderName, &str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.append(k.clone(), v.parse().unwrap());
            }
            h
        };
        let host = (header::HOST, "127.0.0.1:8001");
        assert!(authorized(&with(&[host.clone(), (header::COOKIE, "a=b; baton-ui=s3cret")]), 8001, "s3cret").is_ok());
        assert!(authorized(&with(&[host.clone(), (header::COOKIE, "baton-ui=wrong")]), 8001, "s3cret").is_err());
        assert!(authorized(&with(std::slice::from_ref(&host)), 8001, "s3cret").unwrap_err().contains("open the URL"));
        assert!(authorized(&with(&[(header::HOST, "evil.example:8001"), (header::COOKIE, "baton-ui=s3cret")]), 8001, "s3cret").is_err());
        assert!(authorized(&with(&[host, (header::COOKIE, "baton-ui-x=s3cret")]), 8001, "s3cret").is_err());
        assert!(local_host(&with(&[(header::HOST, "localhost")]), 80));
    }

    #[test]
    fn names_cannot_reshape_a_path() {
        assert!(is_name("etl-2026.11.21") && is_name("a"));
        for bad in ["", "x/../../secrets", "X", "a b", ".hidden", "a?watch=1", &"a".repeat(254)] {
            assert!(!is_name(bad), "{bad:?}");
        }
    }
}
