//! The controller's API client: kube's, with client-go's client-side rate
//! limit (`--kube-qps`, `--kube-burst`: a token bucket every request waits
//! on, watches included) and a count of every request by verb and resource
//! (`baton_api_requests_total`), which is how the API budget a run costs is
//! measured.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{Method, Request};
use tower::{Layer, Service};

use crate::metrics::{Metrics, RequestLabel};

/// A token bucket: `qps` tokens a second, at most `burst` saved up. A
/// request takes a token, waiting for it when there is none; waiting
/// requests queue in order (a token is reserved by going into debt).
#[derive(Debug)]
pub struct Bucket {
    qps: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    pub fn new(qps: f64, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        Bucket { qps, burst, tokens: burst, last: now }
    }

    /// Takes a token at `now`; how long the caller must wait before using it.
    pub fn take(&mut self, now: Instant) -> Duration {
        let earned = now.saturating_duration_since(self.last).as_secs_f64() * self.qps;
        self.tokens = (self.tokens + earned).min(self.burst) - 1.0;
        self.last = now;
        if self.tokens >= 0.0 { Duration::ZERO } else { Duration::from_secs_f64(-self.tokens / self.qps) }
    }
}

/// The verb (as the API server's audit log and `apiserver_request_total`
/// name it) and resource of a request to the API server.
pub fn classify(method: &Method, path: &str, query: Option<&str>) -> (&'static str, String) {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let rest = match segments.first() {
        Some(&"api") => segments.get(2..),
        Some(&"apis") => segments.get(3..),
        _ => None,
    }
    .unwrap_or_default();
    let rest = match rest {
        ["namespaces", _, resource, more @ ..] => (resource, more),
        [resource, more @ ..] => (resource, more),
        [] => return ("other", path.to_string()),
    };
    let (resource, more) = rest;
    let named = !more.is_empty();
    let resource = match more.get(1) {
        Some(sub) => format!("{resource}/{sub}"),
        None => resource.to_string(),
    };
    let watch = query.is_some_and(|q| q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1"));
    let verb = match *method {
        Method::GET if watch => "watch",
        Method::GET if named => "get",
        Method::GET => "list",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if named => "delete",
        Method::DELETE => "deletecollection",
        _ => "other",
    };
    (verb, resource)
}

/// Adds the rate limit and the request count to kube's HTTP stack.
#[derive(Clone)]
pub struct Budget {
    bucket: Option<Arc<Mutex<Bucket>>>,
    metrics: Arc<Metrics>,
}

impl Budget {
    /// A budget of `qps` requests a second (bursts of `burst`); a `qps` of
    /// 0 or less means no limit.
    pub fn new(qps: f64, burst: u32, metrics: Arc<Metrics>) -> Self {
        let bucket = (qps > 0.0).then(|| Arc::new(Mutex::new(Bucket::new(qps, burst, Instant::now()))));
        Budget { bucket, metrics }
    }
}

impl<S> Layer<S> for Budget {
    type Service = Budgeted<S>;
    fn layer(&self, inner: S) -> Budgeted<S> {
        Budgeted { inner, budget: self.clone(), wait: None, granted: false }
    }
}

/// kube's service behind the budget. kube puts a buffer in front of it, so
/// one request at a time is made ready here: waiting for a token holds the
/// rest back in order, as client-go's limiter does.
pub struct Budgeted<S> {
    inner: S,
    budget: Budget,
    wait: Option<(Pin<Box<tokio::time::Sleep>>, Instant)>,
    granted: bool,
}

impl<S, B> Service<Request<B>> for Budgeted<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        if !self.granted {
            if let Some(bucket) = &self.budget.bucket
                && self.wait.is_none()
            {
                let delay = bucket.lock().unwrap_or_else(|p| p.into_inner()).take(Instant::now());
                if !delay.is_zero() {
                    self.wait = Some((Box::pin(tokio::time::sleep(delay)), Instant::now()));
                }
            }
            if let Some((sleep, since)) = self.wait.as_mut() {
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.budget.metrics.api_throttled_seconds.inc_by(since.elapsed().as_secs_f64());
                self.wait = None;
            }
            self.granted = true;
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> S::Future {
        self.granted = false;
        let (verb, resource) = classify(request.method(), request.uri().path(), request.uri().query());
        self.budget.metrics.api_requests.get_or_create(&RequestLabel { verb, resource }).inc();
        self.inner.call(request)
    }
}

/// The kube client, as kube-rs finds its configuration (`KUBECONFIG`,
/// in-cluster), within `budget`.
pub async fn build(budget: Budget) -> Result<kube::Client, kube::Error> {
    let config = kube::Config::infer().await.map_err(kube::Error::InferConfig)?;
    Ok(kube::client::ClientBuilder::try_from(config)?.with_layer(&budget).build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_gives_a_burst_then_qps() {
        let start = Instant::now();
        let mut b = Bucket::new(10.0, 3, start);
        let waits: Vec<u128> = (0..5).map(|_| b.take(start).as_millis()).collect();
        assert_eq!(waits, [0, 0, 0, 100, 200]);
        // Two seconds later the debt is paid and the bucket is full again.
        let later = start + Duration::from_secs(2);
        let waits: Vec<u128> = (0..4).map(|_| b.take(later).as_millis()).collect();
        assert_eq!(waits, [0, 0, 0, 100]);
    }

    #[test]
    fn requests_are_classified_as_the_api_server_counts_them() {
        let cases = [
            (Method::GET, "/api/v1/namespaces/ns/pods", None, ("list", "pods")),
            (Method::GET, "/api/v1/namespaces/ns/pods", Some("watch=true&labelSelector=x"), ("watch", "pods")),
            (Method::GET, "/api/v1/pods", Some("labelSelector=x"), ("list", "pods")),
            (Method::POST, "/api/v1/namespaces/ns/pods", None, ("create", "pods")),
            (Method::DELETE, "/api/v1/namespaces/ns/pods/p", None, ("delete", "pods")),
            (Method::GET, "/api/v1/namespaces/ns", None, ("get", "namespaces")),
            (
                Method::PUT,
                "/apis/baton.dev/v1alpha1/namespaces/ns/workflowinstances/r/status",
                None,
                ("update", "workflowinstances/status"),
            ),
            (Method::PATCH, "/apis/baton.dev/v1alpha1/namespaces/ns/workflowinstances/r", None, ("patch", "workflowinstances")),
            (Method::POST, "/apis/events.k8s.io/v1/namespaces/ns/events", None, ("create", "events")),
            (Method::PUT, "/apis/coordination.k8s.io/v1/namespaces/n/leases/l", None, ("update", "leases")),
        ];
        for (method, path, query, (verb, resource)) in cases {
            assert_eq!(classify(&method, path, query), (verb, resource.to_string()), "{method} {path}");
        }
    }
}
