//! What the admission webhook adds to a pod create, against the local
//! control plane: BENCH_PODS (default 300) creates of each kind, one at a
//! time and alternating, so both see the same load:
//! - a pod the webhook judges: baton's label and a controller
//!   ownerReference to a run, so the API server calls the webhook (a new
//!   TLS connection) and the webhook GETs the run;
//! - the same pod without baton's label: the objectSelector skips it.
//!
//! Prints p50, p99 and max of each. `make bench-webhook`. Prints figures;
//! asserts only that the labelled pods really go through the webhook (one
//! with an unreadable epoch is refused).

#[path = "../e2e/support.rs"]
#[allow(dead_code)]
mod support;

use std::time::{Duration, Instant};

use baton::api::WorkflowInstance;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use kube::{Resource, ResourceExt};

const RUN: &str = "apiVersion: baton.dev/v1alpha1\nkind: Workflow\nmetadata: {name: bench}\nspec:\n  tasks:\n  - name: only\n    container: {name: main, image: busybox}\n---\napiVersion: baton.dev/v1alpha1\nkind: WorkflowInstance\nmetadata: {name: bench-1}\nspec: {workflowRef: {name: bench}}\n";

/// A pod that stays unscheduled (a scheduling gate), so that neither the
/// scheduler nor kwok adds work; judged by the webhook when `run` is given.
fn pod(name: &str, run: Option<&WorkflowInstance>) -> Pod {
    let mut pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {"bench": "webhook"}},
        "spec": {"schedulingGates": [{"name": "bench"}], "containers": [{"name": "main", "image": "busybox"}]},
    }))
    .unwrap();
    if let Some(run) = run {
        pod.labels_mut().insert("baton.dev/instance".into(), run.name_any());
        pod.annotations_mut().insert("baton.dev/owner-epoch".into(), "0".into());
        pod.metadata.owner_references = Some(vec![run.controller_owner_ref(&()).unwrap()]);
    }
    pod
}

async fn timed_create(api: &Api<Pod>, pod: &Pod) -> Duration {
    let start = Instant::now();
    api.create(&PostParams::default(), pod).await.unwrap_or_else(|e| panic!("create {}: {e}", pod.name_any()));
    start.elapsed()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

#[tokio::main]
async fn main() {
    if !support::run_as_bench("webhook", "bench-webhook") {
        return;
    }
    let n: usize = std::env::var("BENCH_PODS").ok().and_then(|v| v.parse().ok()).unwrap_or(300);
    let ns = support::TestNs::new("bench-webhook").await;
    // One controller serves the webhook. It watches another namespace, so
    // it does nothing with the run below but read it when judging.
    let elsewhere = support::TestNs::new("bench-idle").await;
    let controller = elsewhere.controller("webhook");
    controller.wait_log(&["serving the admission webhook"], Duration::from_secs(30)).await;
    ns.apply(RUN);
    let run = ns.api::<WorkflowInstance>().get("bench-1").await.unwrap();
    let pods: Api<Pod> = ns.api();

    // Warm up both paths (connections, caches), then measure.
    for i in 0..10 {
        timed_create(&pods, &pod(&format!("warm-judged-{i}"), Some(&run))).await;
        timed_create(&pods, &pod(&format!("warm-plain-{i}"), None)).await;
    }
    let mut bad = pod("unreadable-epoch", Some(&run));
    bad.annotations_mut().insert("baton.dev/owner-epoch".into(), "none".into());
    match pods.create(&PostParams::default(), &bad).await {
        Err(kube::Error::Api(s)) if s.code == 403 => {}
        other => panic!("the webhook should refuse a pod with an unreadable epoch: {other:?}"),
    }
    let metrics = controller.metrics_addr().await;
    let before = support::metric(metrics, "baton_admission_reviews_total{verdict=\"allowed\"}");
    let (mut judged, mut plain) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n {
        judged.push(timed_create(&pods, &pod(&format!("judged-{i}"), Some(&run))).await);
        plain.push(timed_create(&pods, &pod(&format!("plain-{i}"), None)).await);
    }
    // Reviews this controller made (others on this host share the port).
    let judged_here = support::metric(metrics, "baton_admission_reviews_total{verdict=\"allowed\"}") - before;

    judged.sort();
    plain.sort();
    let ms = |d: Duration| format!("{:>7.2} ms", d.as_secs_f64() * 1000.0);
    println!("pod create latency, {n} creates each, one at a time");
    println!("{:<28}{:>10}{:>10}{:>10}", "", "p50", "p99", "max");
    for (label, d) in [("without the webhook", &plain), ("with the webhook", &judged)] {
        println!("{label:<28}{}{}{}", ms(percentile(d, 0.50)), ms(percentile(d, 0.99)), ms(d[d.len() - 1]));
    }
    let added = |p| percentile(&judged, p).saturating_sub(percentile(&plain, p));
    println!("{:<28}{}{}", "added by the webhook", ms(added(0.50)), ms(added(0.99)));
    println!("reviews made by the benchmark's controller: {judged_here} of {n}");
    drop(controller);
    elsewhere.done().await;
    ns.done().await;
}
