//! Scheduled runs and run creation that never silently drops a request.

use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use baton::api::{RunPhase, Workflow, WorkflowInstance};
use kube::ResourceExt;
use kube::api::{Api, ListParams};

use crate::runs::{RUN_TIMEOUT, task, wait_phase, workflow};
use crate::support::{TestNs, kubeconfig, wait_for};

/// A scheduled workflow that keeps every run (the tests count them).
fn scheduled(name: &str, cron: &str, policy: &str, deadline: i64, duration: &str) -> String {
    let settings = format!(
        "  schedule: {{cron: \"{cron}\", concurrencyPolicy: {policy}, startingDeadlineSeconds: {deadline}, successfulRunsHistoryLimit: 100, failedRunsHistoryLimit: 100}}\n"
    );
    workflow(name, &settings, &[task("tick", &[], duration, 0, "")])
}

/// Unix seconds of the ticks whose runs exist, from the run names.
async fn ticks(ns: &TestNs, wf: &str) -> Vec<i64> {
    let api: Api<WorkflowInstance> = ns.api();
    let runs = api.list(&ListParams::default().labels(&format!("baton.dev/scheduled-by={wf}"))).await.unwrap();
    let mut ticks: Vec<i64> =
        runs.items.iter().map(|r| r.name_any().rsplit_once('-').unwrap().1.parse().expect("name ends in the tick")).collect();
    ticks.sort();
    ticks
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

async fn event_reasons(ns: &TestNs, object: &str) -> Vec<String> {
    crate::runs::events_of(ns, object).await.into_iter().filter_map(|e| e.reason).collect()
}

async fn workflow_owner(ns: &TestNs, name: &str) -> String {
    let api: Api<Workflow> = ns.api();
    wait_for("the workflow to have an owner", Duration::from_secs(30), || async {
        let wf = api.get(name).await.map_err(|e| e.to_string())?;
        wf.status.and_then(|s| s.owner).map(|o| o.controller).filter(|c| !c.is_empty()).ok_or("no owner".to_string())
    })
    .await
}

#[tokio::test]
async fn every_tick_runs_once_while_the_schedule_owner_is_killed_and_restarted() {
    let ns = TestNs::new("ticks").await;
    let mut c = [ns.controller("alpha"), ns.controller("beta")];
    ns.apply(&scheduled("every10", "*/10 * * * * *", "Allow", 60, "1s"));
    wait_for("the first tick", Duration::from_secs(30), || async {
        if ticks(&ns, "every10").await.is_empty() { Err("no run yet".to_string()) } else { Ok(()) }
    })
    .await;
    let owner = workflow_owner(&ns, "every10").await;
    let i = c.iter().position(|p| p.identity == owner).unwrap();
    // Kill the schedule's owner between ticks, restart it later.
    let first = ticks(&ns, "every10").await[0];
    while unix_now() < first + 3 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    c[i].kill();
    tokio::time::sleep(Duration::from_secs(12)).await;
    c[i].restart();
    let seen = wait_for("five ticks", Duration::from_secs(80), || async {
        let t = ticks(&ns, "every10").await;
        if t.len() >= 5 { Ok(t) } else { Err(format!("{t:?}")) }
    })
    .await;
    assert!(seen.iter().all(|t| t % 10 == 0), "{seen:?}");
    assert!(seen.windows(2).all(|w| w[1] - w[0] == 10), "one run per tick, no tick lost: {seen:?}");
    let api: Api<Workflow> = ns.api();
    let wf = api.get("every10").await.unwrap();
    assert!(wf.status.unwrap().owner.unwrap().epoch >= 2, "the schedule moved when its owner died");
    c.iter().for_each(|p| p.assert_no_panic());
    ns.done().await;
}

#[tokio::test]
async fn missed_ticks_within_the_deadline_run_once_and_beyond_it_are_reported() {
    let ns = TestNs::new("missed").await;
    let mut c = ns.controller("alpha");
    ns.apply(&scheduled("lenient", "*/20 * * * * *", "Allow", 60, "500ms"));
    ns.apply(&scheduled("strict", "*/20 * * * * *", "Allow", 2, "500ms"));
    // The two may be created on either side of a tick: wait for a tick both ran.
    let first = wait_for("a tick run by both", Duration::from_secs(60), || async {
        let (a, b) = (ticks(&ns, "lenient").await, ticks(&ns, "strict").await);
        a.iter().find(|t| b.contains(t)).copied().ok_or(format!("{a:?} {b:?}"))
    })
    .await;
    c.stop();
    // Down over the next tick, and back 5 s after it.
    while unix_now() < first + 25 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    c.restart();
    let lenient = wait_for("the missed tick within the deadline to run", Duration::from_secs(30), || async {
        let t = ticks(&ns, "lenient").await;
        if t.contains(&(first + 20)) { Ok(t) } else { Err(format!("{t:?}")) }
    })
    .await;
    assert_eq!(lenient.iter().filter(|t| **t == first + 20).count(), 1);
    let api: Api<Workflow> = ns.api();
    let strict = wait_for("the tick past the deadline to be reported", Duration::from_secs(30), || async {
        let wf = api.get("strict").await.map_err(|e| e.to_string())?;
        let status = wf.status.unwrap_or_default();
        if status.missed_ticks >= 1 { Ok(status) } else { Err(format!("{status:?}")) }
    })
    .await;
    assert!(!ticks(&ns, "strict").await.contains(&(first + 20)), "not started past its deadline");
    assert_eq!(strict.last_schedule_time.unwrap().0.as_second(), first + 20);
    crate::runs::wait_warning(&ns, "strict", "MissedSchedule").await;
    ns.done().await;
}

#[tokio::test]
async fn forbid_skips_a_tick_and_replace_stops_the_active_run() {
    let ns = TestNs::new("policy").await;
    let _c = ns.controller("alpha");
    ns.apply(&scheduled("forbid", "*/4 * * * * *", "Forbid", 60, "10s"));
    ns.apply(&scheduled("replace", "*/4 * * * * *", "Replace", 60, "10s"));
    wait_for("a skipped tick", Duration::from_secs(30), || async {
        let r = event_reasons(&ns, "forbid").await;
        if r.contains(&"TickSkipped".to_string()) { Ok(()) } else { Err(format!("{r:?}")) }
    })
    .await;
    let api: Api<WorkflowInstance> = ns.api();
    let replaced = wait_for("a replaced run", Duration::from_secs(30), || async {
        let t = ticks(&ns, "replace").await;
        let first = format!("replace-{}", t.first().ok_or("no run")?);
        let run = api.get(&first).await.map_err(|e| e.to_string())?;
        match run.status.and_then(|s| s.phase) {
            Some(RunPhase::Stopped) if t.len() >= 2 => Ok(t),
            p => Err(format!("{p:?} {t:?}")),
        }
    })
    .await;
    assert!(replaced.len() >= 2);
    let forbid_runs = ticks(&ns, "forbid").await;
    let active: Vec<String> = api
        .list(&ListParams::default().labels("baton.dev/scheduled-by=forbid"))
        .await
        .unwrap()
        .items
        .iter()
        .filter(|r| !r.status.as_ref().and_then(|s| s.phase).is_some_and(|p| p.is_terminal()))
        .map(|r| r.name_any())
        .collect();
    assert!(active.len() <= 1, "Forbid never has two active runs: {active:?} of {forbid_runs:?}");
    ns.done().await;
}

#[tokio::test]
async fn two_hundred_runs_created_concurrently_all_finish() {
    let ns = TestNs::new("burst").await;
    let _c = [ns.controller("alpha"), ns.controller("beta")];
    ns.apply(&workflow("quick", "", &[task("only", &[], "500ms", 0, "")]));
    let streams: Vec<_> = (0..4)
        .map(|s| {
            let docs: String = (0..50).map(|i| format!("---\n{}", crate::runs::run(&format!("b{s}-{i}"), "quick", ""))).collect();
            let ns_name = ns.name.clone();
            std::thread::spawn(move || {
                use std::io::Write;
                let mut child = Command::new("kubectl")
                    .env("KUBECONFIG", kubeconfig())
                    .args(["-n", &ns_name, "create", "-f", "-"])
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::null())
                    .spawn()
                    .unwrap();
                child.stdin.take().unwrap().write_all(docs.as_bytes()).unwrap();
                assert!(child.wait().unwrap().success());
            })
        })
        .collect();
    streams.into_iter().for_each(|t| t.join().unwrap());
    let api: Api<WorkflowInstance> = ns.api();
    let runs = wait_for("all 200 runs to finish", RUN_TIMEOUT * 2, || async {
        let runs = api.list(&ListParams::default()).await.map_err(|e| e.to_string())?.items;
        let unfinished = runs.iter().filter(|r| !r.status.as_ref().and_then(|s| s.phase).is_some_and(|p| p.is_terminal())).count();
        if runs.len() == 200 && unfinished == 0 { Ok(runs) } else { Err(format!("{} runs, {unfinished} unfinished", runs.len())) }
    })
    .await;
    for r in &runs {
        let status = r.status.as_ref().unwrap();
        assert_eq!(status.phase, Some(RunPhase::Succeeded), "{}", r.name_any());
        assert!(status.owner.as_ref().is_some_and(|o| o.epoch >= 1), "{} has an owner", r.name_any());
    }
    ns.done().await;
}

#[tokio::test]
async fn baton_submit_with_a_name_is_idempotent_and_waits() {
    let ns = TestNs::new("submit").await;
    let _c = ns.controller("alpha");
    ns.apply(&workflow("quick", "", &[task("only", &[], "500ms", 0, "")]));
    let submit = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_baton"))
            .args(["--kubeconfig", kubeconfig().to_str().unwrap(), "-n", &ns.name, "submit", "quick", "-p", "date=2026-02-02"])
            .args(extra)
            .output()
            .unwrap()
    };
    let first = submit(&["--name", "x", "--wait"]);
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    assert_eq!(String::from_utf8_lossy(&first.stdout).trim(), "x");
    let second = submit(&["--name", "x"]);
    assert!(second.status.success());
    let api: Api<WorkflowInstance> = ns.api();
    assert_eq!(api.list(&ListParams::default()).await.unwrap().items.len(), 1, "submitting twice yields one run");
    let generated = submit(&[]);
    assert!(String::from_utf8_lossy(&generated.stdout).starts_with("quick-"));
    let bad = submit(&["-p", "nope=1"]);
    assert_eq!(bad.status.code(), Some(1));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.starts_with("error: ") && err.contains("\"nope\"") && err.lines().count() == 1, "{err}");
    wait_phase(&ns, "x", |p| p == RunPhase::Succeeded).await;
    ns.done().await;
}
