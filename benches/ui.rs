//! How fast `baton ui` paints, on the local control plane, in headless
//! chromium: the runs page, and the page of a run of 1,000 tasks (its
//! layered graph). `make bench-ui`. Prints figures; asserts nothing about
//! them.
//!
//! For each page, BENCH_UI_LOADS (default 5) fresh loads: first contentful
//! paint (the browser's `paint` entry) and the moment the page drew its
//! content (`baton:runs` / `baton:graph` marks set by app.js), both from
//! navigation start, so they include the list through the proxy.

#[path = "../e2e/support.rs"]
#[allow(dead_code)]
mod support;

#[path = "../e2e/browser.rs"]
mod browser;

use std::time::{Duration, Instant};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Loads `url` `loads` times and returns the medians of (first contentful
/// paint, `mark`) in milliseconds from navigation start.
async fn measure(c: &fantoccini::Client, url: &str, mark: &str, loads: usize) -> (f64, f64) {
    let (mut fcp, mut drawn) = (vec![], vec![]);
    for _ in 0..loads {
        c.goto("about:blank").await.unwrap();
        c.goto(url).await.unwrap();
        let script = format!(
            "const p = performance.getEntriesByName('first-contentful-paint')[0]; const m = performance.getEntriesByName('{mark}')[0];\
             return (p && m) ? [p.startTime, m.startTime] : null;"
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(serde_json::Value::Array(v)) = c.execute(&script, vec![]).await {
                fcp.push(v[0].as_f64().unwrap());
                drawn.push(v[1].as_f64().unwrap());
                break;
            }
            assert!(Instant::now() < deadline, "{url} drew nothing in 60 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    (median(fcp), median(drawn))
}

#[tokio::main]
async fn main() {
    if !support::run_as_bench("ui", "bench-ui") {
        return;
    }
    let loads: usize = std::env::var("BENCH_UI_LOADS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let ns = support::TestNs::new("bench-ui").await;
    let _controller = ns.controller("bench");
    browser::start_big_run(&ns).await;
    let (_ui, url) = browser::start_ui(support::kubeconfig(), &ns.name);
    let (_driver, c) = browser::browser().await;
    let (runs_fcp, runs_drawn) = measure(&c, &format!("{url}#/runs"), "baton:runs", loads).await;
    let run_url = format!("{url}#/run/{}/big-1", ns.name);
    let (run_fcp, run_drawn) = measure(&c, &run_url, "baton:graph", loads).await;
    let nodes = c.execute("return document.querySelectorAll('svg g.node').length", vec![]).await.unwrap();
    let size = c
        .execute("const s = document.querySelector('.graph svg'); return [s.width.baseVal.value, s.height.baseVal.value]", vec![])
        .await
        .unwrap();
    println!("baton ui, headless chromium, local control plane, median of {loads} fresh loads (ms from navigation start):");
    println!("| page | first contentful paint | content drawn |");
    println!("|---|---|---|");
    println!("| runs | {runs_fcp:.0} ms | {runs_drawn:.0} ms |");
    println!(
        "| a run of {} tasks ({nodes} graph nodes, {size} px) | {run_fcp:.0} ms | {run_drawn:.0} ms |",
        browser::BIG_LAYERS * browser::BIG_WIDTH
    );
    c.close().await.unwrap();
    ns.done().await;
}
