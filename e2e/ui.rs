//! `baton ui` in a real headless browser (Debian's chromium, driven through
//! chromedriver by WebDriver): the runs page, a diamond's graph whose
//! colours follow its tasks, the Stop button, and a user whom RBAC refuses.

use std::time::Duration;

use baton::api::{RunPhase, Shutdown, WorkflowInstance};
use fantoccini::{Client, Locator};
use kube::api::Api;

use crate::browser::{browser, start_ui};
use crate::runs::{run, task, wait_phase, workflow};
use crate::support::{TestNs, kubeconfig, state_dir, wait_for};

/// Waits until `script` (a JavaScript expression) is true in the page.
async fn until(c: &Client, what: &str, script: &str) {
    let script = format!("return !!({script});");
    wait_for(what, Duration::from_secs(60), || async {
        match c.execute(&script, vec![]).await {
            Ok(serde_json::Value::Bool(true)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await
}

/// The phase each task node of the graph shows.
async fn node_phases(c: &Client) -> Vec<(String, String)> {
    let mut out = vec![];
    for node in c.find_all(Locator::Css("svg g.node")).await.unwrap() {
        out.push((node.attr("data-task").await.unwrap().unwrap_or_default(), node.attr("data-phase").await.unwrap().unwrap_or_default()));
    }
    out
}

#[tokio::test]
async fn the_ui_shows_a_live_diamond_and_stops_it() {
    let ns = TestNs::new("ui").await;
    let _c = ns.controller("alpha");
    let slow = |name: &str, deps: &[&str]| task(name, deps, "3s", 0, "");
    ns.apply(&workflow("dia", "", &[slow("a", &[]), slow("b", &["a"]), slow("c", &["a"]), task("d", &["b", "c"], "60s", 0, "")]));
    ns.apply(&run("dia-1", "dia", ""));
    let (_ui, url) = start_ui(kubeconfig(), &ns.name);
    let (_driver, c) = browser().await;

    c.goto(&format!("{url}#/runs")).await.unwrap();
    until(&c, "the runs page to list dia-1", "document.querySelector('tr[data-run=\"dia-1\"] a')").await;
    c.find(Locator::Css("tr[data-run=\"dia-1\"] a")).await.unwrap().click().await.unwrap();
    until(&c, "the graph's four task nodes", "document.querySelectorAll('svg g.node').length === 4").await;

    // The colours follow the phases as they change, without a reload.
    until(&c, "task a to be shown Running", "document.querySelector('g.node[data-task=\"a\"]').dataset.phase === 'Running'").await;
    let first = node_phases(&c).await;
    assert_eq!(first.iter().filter(|(_, p)| p == "Pending").count(), 3, "{first:?}");
    until(
        &c,
        "a Succeeded and b, c Running",
        "['a','b','c'].map(t => document.querySelector(`g.node[data-task=\"${t}\"]`).dataset.phase).join() === 'Succeeded,Running,Running'",
    )
    .await;
    let fill = c.execute("return getComputedStyle(document.querySelector('g.node[data-task=\"a\"] rect')).fill", vec![]).await.unwrap();
    assert_eq!(fill, serde_json::json!("rgb(26, 127, 55)"), "a Succeeded node is green");
    until(&c, "d to be shown Running", "document.querySelector('g.node[data-task=\"d\"]').dataset.phase === 'Running'").await;
    let shot = c.screenshot().await.unwrap();
    let dir = std::env::var_os("UI_SCREENSHOT_DIR").map_or_else(|| state_dir().join("screenshots"), std::path::PathBuf::from);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("ui-run.png"), shot).unwrap();

    c.find(Locator::Id("stop")).await.unwrap().click().await.unwrap();
    until(&c, "the page to show the run Stopped", "document.querySelector('#run-phase').dataset.phase === 'Stopped'").await;
    let api: Api<WorkflowInstance> = ns.api();
    let stopped = api.get("dia-1").await.unwrap();
    assert_eq!(stopped.spec.shutdown, Shutdown::Stop);
    assert_eq!(stopped.status.unwrap().phase, Some(RunPhase::Stopped));
    assert!(c.find(Locator::Id("said")).await.unwrap().text().await.unwrap().contains("spec.shutdown=Stop"), "the page says what it asked");

    // A task's page: its attempts and the log of its pod.
    c.find(Locator::Css("g.node[data-task=\"a\"]")).await.unwrap().click().await.unwrap();
    until(&c, "task a's log", "(document.querySelector('#log') || {}).textContent?.includes('simulated by kwok')").await;
    let attempts = c.find(Locator::Css("#attempts")).await.unwrap().text().await.unwrap();
    assert!(attempts.contains("attempt 0") && attempts.contains("dia-1-a-0") && attempts.contains("exit 0"), "{attempts}");
    c.close().await.unwrap();
    ns.done().await;
}

#[tokio::test]
async fn a_user_without_patch_rights_sees_the_refusal_in_the_page() {
    let ns = TestNs::new("ui-rbac").await;
    let _c = ns.controller("alpha");
    ns.apply(&workflow("slow", "", &[task("a", &[], "60s", 0, "")]));
    ns.apply(&run("s-1", "slow", ""));
    wait_phase(&ns, "s-1", |p| p == RunPhase::Running).await;
    let viewer = crate::cli::viewer_kubeconfig(&ns);
    let (_ui, url) = start_ui(&viewer, &ns.name);
    let (_driver, c) = browser().await;
    c.goto(&format!("{url}#/run/{}/s-1", ns.name)).await.unwrap();
    until(&c, "the run page", "document.querySelector('#pause') && !document.querySelector('#pause').disabled").await;
    c.find(Locator::Id("pause")).await.unwrap().click().await.unwrap();
    until(&c, "the refusal to be shown", "!document.querySelector('#error').hidden").await;
    let message = c.find(Locator::Id("error")).await.unwrap().text().await.unwrap();
    assert!(message.contains("e2e-viewer") && message.contains("cannot patch"), "{message}");
    let api: Api<WorkflowInstance> = ns.api();
    assert!(!api.get("s-1").await.unwrap().spec.suspend, "nothing was changed");
    c.close().await.unwrap();
    ns.done().await;
}
