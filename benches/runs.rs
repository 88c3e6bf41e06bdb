//! Run throughput against the local control plane: creates BENCH_RUNS runs
//! (default 1000) as fast as the API server accepts them, with three
//! controllers, and prints how long until every run had an owner and had
//! finished, the rate, and how many runs were lost (must be 0).
//! `make bench-runs`. Prints figures; asserts nothing about time.

#[path = "../e2e/support.rs"]
#[allow(dead_code)]
mod support;

use std::time::{Duration, Instant};

use baton::api::{WorkflowInstance, WorkflowInstanceSpec, WorkflowRef};
use futures::{StreamExt, TryStreamExt};
use kube::api::{Api, ListParams, PostParams};

const WORKFLOW: &str = "apiVersion: baton.dev/v1alpha1\nkind: Workflow\nmetadata: {name: bench}\nspec:\n  tasks:\n  - name: only\n    container: {name: main, image: busybox}\n    podTemplate: {metadata: {annotations: {baton.dev/sim-duration: 200ms}}}\n";

#[tokio::main]
async fn main() {
    if !support::run_as_bench("runs", "bench-runs") {
        return;
    }
    let n: usize = std::env::var("BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let ns = support::TestNs::new("bench").await;
    let controllers: Vec<_> = ["c0", "c1", "c2"].iter().map(|id| ns.controller(id)).collect();
    ns.apply(WORKFLOW);
    let api: Api<WorkflowInstance> = ns.api();
    let start = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let api = api.clone();
            async move {
                let run = WorkflowInstance::new(
                    &format!("run-{i}"),
                    WorkflowInstanceSpec { workflow_ref: WorkflowRef { name: "bench".into() }, ..Default::default() },
                );
                api.create(&PostParams::default(), &run).await.map(|_| ())
            }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<_>>()
        .await
        .expect("every create accepted");
    let created = start.elapsed();
    let (mut owned, mut finished) = (None, None);
    let deadline = start + Duration::from_secs(900);
    let (mut with_owner, mut done) = (0, 0);
    while finished.is_none() && Instant::now() < deadline {
        let runs = api.list(&ListParams::default()).await.expect("list runs").items;
        with_owner = runs.iter().filter(|r| r.status.as_ref().and_then(|s| s.owner.as_ref()).is_some()).count();
        done = runs.iter().filter(|r| r.status.as_ref().and_then(|s| s.phase).is_some_and(|p| p.is_terminal())).count();
        if owned.is_none() && with_owner == n {
            owned = Some(start.elapsed());
        }
        if done == n {
            finished = Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let secs = |d: Option<Duration>| d.map_or("not reached".into(), |d| format!("{:.1} s", d.as_secs_f64()));
    println!("runs created:                 {n} in {:.1} s ({:.0} creates/s)", created.as_secs_f64(), n as f64 / created.as_secs_f64());
    println!("time until every run owned:   {}", secs(owned));
    println!("time until every run finished: {}", secs(finished));
    if let Some(f) = finished {
        println!("throughput:                   {:.1} runs/s", n as f64 / f.as_secs_f64());
    }
    println!("runs lost:                    {} (owned {with_owner}/{n}, finished {done}/{n})", n - done);
    // What the controllers asked of the API server, per run (Leases aside).
    let mut requests = std::collections::BTreeMap::<String, f64>::new();
    for c in &controllers {
        for (kind, count) in support::requests(c.metrics_addr().await) {
            *requests.entry(kind).or_default() += count;
        }
    }
    requests.retain(|kind, _| !kind.ends_with(" leases"));
    let per_run = |verbs: &[&str]| {
        requests.iter().filter(|(k, _)| verbs.iter().any(|v| k.starts_with(&format!("{v} ")))).map(|(_, c)| c).sum::<f64>() / n as f64
    };
    println!(
        "API requests per run:         {:.2} writes, {:.2} reads (get, list)",
        per_run(&["create", "update", "patch", "delete"]),
        per_run(&["get", "list"])
    );
    for (kind, count) in &requests {
        println!("  {kind:<40} {:.2}", count / n as f64);
    }
    ns.done().await;
}
