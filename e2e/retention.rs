//! Retention: a finished run goes (with its pods and child runs) once its
//! `ttlSecondsAfterFinished` has passed, a schedule keeps only its newest
//! finished runs, and `podGC` deletes task pods while status keeps what
//! they reported. Also the interleavings that must not break: the owner
//! dies during the TTL wait (a survivor deletes on time, once), or with
//! podGC unfinished (a survivor finishes it); an owner frozen between its
//! fenced write and its delete wakes up after the user asked to keep the
//! run (its delete is refused); a schedule's owner held between its write
//! and a history delete while the user retries that run (refused too); a
//! TTL and a history limit race for the same runs (each deleted once); a
//! run deleted by its TTL while its schedule's owner died in the middle of
//! starting its tick is never started again by the tick.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton::api::{RunPhase, TaskStatus, Workflow, WorkflowInstance};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Event, Pod};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;

use crate::identity::{deny_policy, remove_policy};
use crate::runs::{RUN_TIMEOUT, events_of, patch_spec, pods_of, run, task, wait_phase, workflow};
use crate::support::{ControllerProc, LEASE_DURATION, TestNs, wait_for};

/// A container task with a simulated duration, exit code and result
/// (termination message), and `extra` lines (indented 6).
fn step(name: &str, deps: &[&str], duration: &str, exit: i32, output: &str, extra: &str) -> String {
    format!(
        "    - name: {name}\n      dependsOn: [{}]\n      container: {{name: main, image: busybox, command: [sh, -c, 'true']}}\n\
         \x20     podTemplate: {{metadata: {{annotations: {{baton.dev/sim-duration: {duration}, baton.dev/sim-exit-code: \"{exit}\", baton.dev/sim-output: '{output}'}}}}}}\n{extra}",
        deps.join(", ")
    )
}

/// A run of `workflow` with `spec` fields of its own (`, key: value, ...`).
fn run_with(name: &str, workflow: &str, spec: &str) -> String {
    format!(
        "apiVersion: baton.dev/v1alpha1\nkind: WorkflowInstance\nmetadata: {{name: {name}}}\nspec: {{workflowRef: {{name: {workflow}}}{spec}}}\n"
    )
}

fn entry(run: &WorkflowInstance, name: &str) -> TaskStatus {
    run.status.as_ref().unwrap().tasks.iter().find(|t| t.name == name).cloned().unwrap_or_else(|| panic!("no status entry {name}"))
}

fn finished_at(run: &WorkflowInstance) -> Timestamp {
    run.status.as_ref().and_then(|s| s.finished_at.as_ref()).expect("finishedAt").0
}

fn plus(t: Timestamp, secs: i64) -> Timestamp {
    t + SignedDuration::from_secs(secs)
}

/// Seconds from `from` to `to`, to one decimal, for messages.
fn secs(from: Timestamp, to: Timestamp) -> f64 {
    (to.duration_since(from).as_millis() as f64 / 100.0).round() / 10.0
}

/// Waits until the run is settled (finished, and nothing of it running).
async fn wait_settled(ns: &TestNs, name: &str) -> WorkflowInstance {
    let api: Api<WorkflowInstance> = ns.api();
    wait_for(&format!("run {name} to finish and be cleaned up"), RUN_TIMEOUT, || async {
        let r = api.get(name).await.map_err(|e| e.to_string())?;
        if r.status.as_ref().is_some_and(|s| s.cleaned_up()) { Ok(r) } else { Err(format!("{:?}", r.status.and_then(|s| s.phase))) }
    })
    .await
}

/// Waits until the run is gone; returns when that was seen.
async fn wait_gone(ns: &TestNs, name: &str, timeout: Duration) -> Timestamp {
    let api: Api<WorkflowInstance> = ns.api();
    wait_for(&format!("run {name} to be deleted"), timeout, || async {
        match api.get_opt(name).await.map_err(|e| e.to_string())? {
            None => Ok(Timestamp::now()),
            Some(r) => Err(format!("still there, {:?}", r.status.and_then(|s| s.phase))),
        }
    })
    .await
}

async fn exists(ns: &TestNs, name: &str) -> bool {
    ns.api::<WorkflowInstance>().get_opt(name).await.unwrap().is_some()
}

async fn pod_names(ns: &TestNs, run: &str) -> BTreeSet<String> {
    pods_of(ns, run).await.iter().map(|p| p.name_any()).collect()
}

/// Waits until the run's pods are exactly `expected`.
async fn wait_pods(ns: &TestNs, run: &str, expected: &[&str]) {
    let expected: BTreeSet<String> = expected.iter().map(|s| s.to_string()).collect();
    wait_for(&format!("the pods of {run} to be {expected:?}"), RUN_TIMEOUT, || async {
        let now = pod_names(ns, run).await;
        if now == expected { Ok(()) } else { Err(format!("{now:?}")) }
    })
    .await;
}

/// The `RunDeleted` Events on Workflow `wf` that name run `run`.
async fn deletions(ns: &TestNs, wf: &str, run: &str) -> Vec<Event> {
    let named = |e: &Event| e.message.as_deref().unwrap_or_default().split([' ', ',', ':']).any(|w| w == run);
    events_of(ns, wf).await.into_iter().filter(|e| e.reason.as_deref() == Some("RunDeleted") && named(e)).collect()
}

/// Waits for the `RunDeleted` Event of `run` on `wf`; after a moment for
/// stragglers, checks there is exactly one and returns it.
async fn the_deletion(ns: &TestNs, wf: &str, run: &str) -> Event {
    deleted_once(ns, wf, &[run.to_string()]).await.remove(0)
}

/// [`the_deletion`] of each of `runs`.
async fn deleted_once(ns: &TestNs, wf: &str, runs: &[String]) -> Vec<Event> {
    wait_for(&format!("Event RunDeleted of each of {runs:?} on {wf}"), Duration::from_secs(20), || async {
        for run in runs {
            if deletions(ns, wf, run).await.is_empty() {
                return Err(format!("none yet for {run}"));
            }
        }
        Ok(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut events = Vec::new();
    for run in runs {
        let found = deletions(ns, wf, run).await;
        assert_eq!(found.len(), 1, "run {run} was deleted once: {:?}", found.iter().map(|e| &e.message).collect::<Vec<_>>());
        let event = found.into_iter().next().unwrap();
        assert!(event.count.unwrap_or(1) <= 1 && event.series.is_none(), "recorded once: {event:?}");
        events.push(event);
    }
    events
}

/// What a watch saw of one run name.
#[derive(Default, Clone)]
struct Seen {
    /// Every UID the name had: two mean it was created again after it was deleted.
    uids: BTreeSet<String>,
    /// The last state seen (for a deleted run, the state it was deleted in).
    last: Option<WorkflowInstance>,
    /// When its deletion was seen.
    deleted: Option<Timestamp>,
}

type Log = Arc<Mutex<BTreeMap<String, Seen>>>;

/// Watches every run of the namespace, from now on (once it returns).
/// Tests that use it run on a multi-threaded runtime, so the watch goes
/// on while the test waits for kubectl.
async fn record(ns: &TestNs) -> (Log, tokio::task::JoinHandle<()>) {
    let log: Log = Arc::default();
    let into = log.clone();
    let ready = Arc::new(AtomicBool::new(false));
    let listed = ready.clone();
    let stream = watcher(ns.api::<WorkflowInstance>(), watcher::Config::default());
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            let (run, deleted) = match event {
                Ok(watcher::Event::Apply(r) | watcher::Event::InitApply(r)) => (r, false),
                Ok(watcher::Event::Delete(r)) => (r, true),
                Ok(watcher::Event::InitDone) => {
                    listed.store(true, Ordering::SeqCst);
                    continue;
                }
                _ => continue,
            };
            let mut log = into.lock().unwrap();
            let seen = log.entry(run.name_any()).or_default();
            seen.uids.insert(run.uid().unwrap_or_default());
            seen.deleted = deleted.then(Timestamp::now);
            seen.last = Some(run);
        }
    });
    wait_for("the watch on runs to start", Duration::from_secs(30), || async {
        if ready.load(Ordering::SeqCst) { Ok(()) } else { Err("not listed yet".to_string()) }
    })
    .await;
    (log, task)
}

fn recreated(log: &Log) -> Vec<String> {
    log.lock().unwrap().iter().filter(|(_, s)| s.uids.len() > 1).map(|(n, _)| n.clone()).collect()
}

/// Names of the runs seen whose name starts with `prefix`, by tick.
fn seen_named(log: &Log, prefix: &str) -> Vec<String> {
    log.lock().unwrap().keys().filter(|n| n.starts_with(prefix)).cloned().collect()
}

/// Waits until the watch saw the run deleted; returns the state it was
/// deleted in and when the deletion was seen.
async fn wait_deleted(log: &Log, name: &str, timeout: Duration) -> (WorkflowInstance, Timestamp) {
    wait_for(&format!("run {name} to be deleted"), timeout, || async {
        let seen = log.lock().unwrap().get(name).cloned().unwrap_or_default();
        match (seen.deleted, seen.last) {
            (Some(gone), Some(last)) => Ok((last, gone)),
            (_, last) => Err(format!("not yet, phase {:?}", last.and_then(|r| r.status?.phase))),
        }
    })
    .await
}

#[tokio::test]
async fn a_finished_run_goes_with_its_pods_and_child_runs_once_its_ttl_has_passed() {
    let ns = TestNs::new("ttl").await;
    let c = ns.controller("alpha");
    // The child's workflow has a shorter TTL: a child run goes with its
    // parent, never on its own (its parent would start it again).
    ns.apply(&workflow("inner", "  ttlSecondsAfterFinished: 1\n", &[task("work", &[], "500ms", 0, "")]));
    let sub = "    - name: sub\n      dependsOn: [first]\n      workflowRef: {name: inner}\n";
    ns.apply(&workflow("outer", "  ttlSecondsAfterFinished: 5\n", &[task("first", &[], "500ms", 0, ""), sub.to_string()]));
    ns.apply(&run("r1", "outer", ""));
    let done = wait_settled(&ns, "r1").await;
    assert_eq!(done.status.as_ref().unwrap().phase, Some(RunPhase::Succeeded));
    let finished = finished_at(&done);
    let child_finished = finished_at(&ns.api::<WorkflowInstance>().get("r1-sub").await.unwrap());

    // Until the TTL has passed, the run, its pod, its child and the
    // child's pod all stay (the child's own TTL passed long ago).
    while Timestamp::now() < plus(finished, 4) {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(Timestamp::now() > plus(child_finished, 2), "the child's own TTL of 1s has passed");
    assert!(exists(&ns, "r1").await && exists(&ns, "r1-sub").await, "deleted before the TTL passed");
    assert_eq!(pod_names(&ns, "r1").await, BTreeSet::from(["r1-first-0".to_string()]));
    assert_eq!(pod_names(&ns, "r1-sub").await, BTreeSet::from(["r1-sub-work-0".to_string()]));

    let gone = wait_gone(&ns, "r1", Duration::from_secs(10)).await;
    println!("run deleted {}s after it finished (TTL 5s)", secs(finished, gone));
    assert!(gone >= plus(finished, 5), "deleted {}s after it finished, before its TTL of 5s", secs(finished, gone));
    assert!(gone <= plus(finished, 8), "deleted {}s after it finished: late for a TTL of 5s", secs(finished, gone));
    // The garbage collector takes its pods and child run (and the child's pods).
    wait_gone(&ns, "r1-sub", RUN_TIMEOUT).await;
    wait_pods(&ns, "r1", &[]).await;
    wait_pods(&ns, "r1-sub", &[]).await;

    // One Normal Event on the Workflow says so; the child's workflow has none.
    let event = the_deletion(&ns, "outer", "r1").await;
    assert_eq!(event.type_.as_deref(), Some("Normal"));
    let message = event.message.unwrap_or_default();
    assert!(message.contains("ttlSecondsAfterFinished (5s)") && message.contains("Succeeded"), "{message}");
    assert!(deletions(&ns, "inner", "r1-sub").await.is_empty());
    c.assert_no_panic();
    ns.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runs_own_ttl_overrides_its_workflows_and_bad_values_are_refused() {
    let ns = TestNs::new("ttl-own").await;
    let _c = ns.controller("alpha");
    ns.apply(&workflow("wf", "  ttlSecondsAfterFinished: 4\n", &[task("only", &[], "500ms", 0, "")]));
    let (log, watch) = record(&ns).await;
    ns.apply(&run("inherits", "wf", ""));
    ns.apply(&run_with("zero", "wf", ", ttlSecondsAfterFinished: 0"));
    ns.apply(&run_with("short", "wf", ", ttlSecondsAfterFinished: 1"));
    ns.apply(&run_with("extended", "wf", ", ttlSecondsAfterFinished: 6"));
    let extended = finished_at(&wait_phase(&ns, "extended", |p| p.is_terminal()).await);
    // The user keeps a finished run longer by raising its TTL.
    patch_spec(&ns, "extended", serde_json::json!({"ttlSecondsAfterFinished": 3600})).await;

    for (name, ttl) in [("zero", 0), ("short", 1), ("inherits", 4)] {
        let (last, gone) = wait_deleted(&log, name, RUN_TIMEOUT).await;
        let finished = finished_at(&last);
        let after = secs(finished, gone);
        println!("{name}: deleted {after}s after it finished (TTL {ttl}s)");
        assert!(gone >= plus(finished, ttl) && gone <= plus(finished, ttl + 3), "{name}: {after}s for a TTL of {ttl}s");
    }
    watch.abort();
    let finished = BTreeMap::from([("extended", extended)]);
    while Timestamp::now() < plus(finished["extended"], 8) {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(exists(&ns, "extended").await, "the raised TTL was undone");

    // What the API server can refuse, it refuses.
    let workflows: Api<Workflow> = ns.api();
    let runs: Api<WorkflowInstance> = ns.api();
    let refused = |e: kube::Error| match e {
        kube::Error::Api(s) => (s.code, s.message),
        e => panic!("{e}"),
    };
    let mut bad_wf: Workflow =
        serde_yaml::from_str(&workflow("bad", "  ttlSecondsAfterFinished: -1\n", &[task("x", &[], "1s", 0, "")])).unwrap();
    let (code, message) = refused(workflows.create(&PostParams::default(), &bad_wf).await.unwrap_err());
    assert!(code == 422 && message.contains("ttlSecondsAfterFinished"), "{code} {message}");
    bad_wf.spec.ttl_seconds_after_finished = None;
    bad_wf.spec.schedule = Some(serde_json::from_value(serde_json::json!({"cron": "@daily", "failedRunsHistoryLimit": -1})).unwrap());
    let (code, message) = refused(workflows.create(&PostParams::default(), &bad_wf).await.unwrap_err());
    assert!(code == 422 && message.contains("failedRunsHistoryLimit"), "{code} {message}");
    let negative = serde_json::json!({"spec": {"ttlSecondsAfterFinished": -5}});
    let (code, message) = refused(runs.patch("extended", &PatchParams::default(), &Patch::Merge(&negative)).await.unwrap_err());
    assert!(code == 422 && message.contains("ttlSecondsAfterFinished"), "{code} {message}");
    let gc = serde_json::json!({"spec": {"podGC": "OnRunFinished"}});
    let (code, message) = refused(runs.patch("extended", &PatchParams::default(), &Patch::Merge(&gc)).await.unwrap_err());
    assert!(code == 422 && message.contains("podGC cannot change"), "{code} {message}");
    ns.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_keeps_only_its_newest_finished_runs() {
    let ns = TestNs::new("history").await;
    let c = ns.controller("alpha");
    let (log, watch) = record(&ns).await;
    let every2 = |limits: &str| format!("  schedule: {{cron: \"*/2 * * * * *\", startingDeadlineSeconds: 60{limits}}}\n");
    ns.apply(&workflow("good", &every2(", successfulRunsHistoryLimit: 2"), &[task("tick", &[], "300ms", 0, "")]));
    ns.apply(&workflow("bad", &every2(", failedRunsHistoryLimit: 1"), &[task("tick", &[], "300ms", 1, "")]));
    // A TTL of 0 and a history limit of 0 race for every run: each is
    // deleted once all the same.
    let race = format!("  ttlSecondsAfterFinished: 0\n{}", every2(", successfulRunsHistoryLimit: 0"));
    ns.apply(&workflow("both", &race, &[task("tick", &[], "300ms", 0, "")]));
    let api: Api<WorkflowInstance> = ns.api();
    for (wf, keep) in [("good", 2), ("bad", 1)] {
        wait_for(&format!("{wf} to keep its newest {keep} finished runs of 5 or more"), Duration::from_secs(60), || async {
            // Names end in the tick (all of one length), so they sort by tick.
            let seen = seen_named(&log, &format!("{wf}-"));
            let all = api.list(&Default::default()).await.map_err(|e| e.to_string())?.items;
            let mine: Vec<&WorkflowInstance> = all.iter().filter(|r| r.name_any().starts_with(&format!("{wf}-"))).collect();
            let existing: Vec<String> = seen.iter().filter(|n| mine.iter().any(|r| &r.name_any() == *n)).cloned().collect();
            let finished = mine.iter().filter(|r| r.status.as_ref().is_some_and(|s| s.cleaned_up())).count();
            // The runs left are the newest ones: `keep` finished, and the
            // tick running now, if any.
            let newest = seen[seen.len().saturating_sub(existing.len())..].to_vec();
            if seen.len() >= 5 && finished == keep && existing.len() <= keep + 1 && existing == newest {
                Ok(())
            } else {
                Err(format!("seen {seen:?}, left {existing:?}, {finished} finished"))
            }
        })
        .await;
    }
    let gone = |prefix: &str| -> Vec<String> {
        let log = log.lock().unwrap();
        log.iter().filter(|(n, s)| n.starts_with(prefix) && s.deleted.is_some()).map(|(n, _)| n.clone()).collect()
    };
    wait_for("four runs of both to go", Duration::from_secs(30), || async {
        let g = gone("both-");
        if g.len() >= 4 { Ok(()) } else { Err(format!("{g:?}")) }
    })
    .await;
    let wfs: Api<Workflow> = ns.api();
    for wf in ["good", "bad", "both"] {
        wfs.patch(wf, &PatchParams::default(), &Patch::Merge(&serde_json::json!({"spec": {"schedule": {"suspend": true}}}))).await.unwrap();
    }
    // One Event per deleted run, on its Workflow, saying why.
    for (wf, why) in [("good", "successfulRunsHistoryLimit 2"), ("bad", "failedRunsHistoryLimit 1"), ("both", "")] {
        for event in deleted_once(&ns, wf, &gone(&format!("{wf}-"))).await {
            let message = event.message.unwrap_or_default();
            assert!(message.contains(why), "{message}");
        }
    }
    watch.abort();
    assert!(recreated(&log).is_empty(), "a deleted run was created again: {:?}", recreated(&log));
    c.assert_no_panic();
    ns.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_delete_never_undoes_a_retry_made_meanwhile() {
    let ns = TestNs::new("history-retry").await;
    let c = ns.controller("alpha");
    let (log, watch) = record(&ns).await;
    // Every failed run is over the limit once settled; the schedule's owner
    // stops right before deleting one, after the Workflow's fenced write.
    c.failpoint("schedule-history-delete", "pause").await;
    let settings = "  schedule: {cron: \"*/5 * * * * *\", startingDeadlineSeconds: 60, failedRunsHistoryLimit: 0}\n";
    ns.apply(&workflow("flaky", settings, &[task("x", &[], "300ms", 1, "")]));
    c.wait_log(&["failpoint hit", "schedule-history-delete"], Duration::from_secs(30)).await;
    let first = seen_named(&log, "flaky-").remove(0);
    // The user retries that run meanwhile: its owner re-runs the task.
    patch_spec(&ns, &first, serde_json::json!({"retryFailed": 1})).await;
    let api: Api<WorkflowInstance> = ns.api();
    wait_for("the retry to be applied", RUN_TIMEOUT, || async {
        let r = api.get(&first).await.map_err(|e| e.to_string())?;
        let s = r.status.unwrap_or_default();
        if s.retry_failed_applied == Some(1) { Ok(()) } else { Err(format!("{:?}", s.phase)) }
    })
    .await;
    // The delete goes out with the run as listed: refused. The run is
    // deleted later, once it is settled again, its retry carried out.
    c.failpoint("schedule-history-delete", "off").await;
    let (last, _) = wait_deleted(&log, &first, RUN_TIMEOUT).await;
    let status = last.status.unwrap();
    assert_eq!(status.retry_failed_applied, Some(1), "deleted before the retry was carried out");
    assert_eq!((status.phase, entry_attempts(&status, "x")), (Some(RunPhase::Failed), 2), "the retry ran");
    deleted_once(&ns, "flaky", &[first]).await;
    ns.api::<Workflow>()
        .patch("flaky", &PatchParams::default(), &Patch::Merge(&serde_json::json!({"spec": {"schedule": {"suspend": true}}})))
        .await
        .unwrap();
    watch.abort();
    assert!(recreated(&log).is_empty(), "{:?}", recreated(&log));
    c.assert_no_panic();
    ns.done().await;
}

fn entry_attempts(status: &baton::api::WorkflowInstanceStatus, task: &str) -> i32 {
    status.tasks.iter().find(|t| t.name == task).map_or(0, |t| t.attempts)
}

#[tokio::test]
async fn each_pod_gc_policy_deletes_the_pods_it_names_and_status_keeps_what_they_reported() {
    let ns = TestNs::new("podgc").await;
    let _c = ns.controller("alpha");
    let reader = |name: &str, deps: &str, duration: &str, exit: i32| {
        step(name, &[deps], duration, exit, "", &format!("      when: \"tasks.{deps}.outputs.result == 'ok'\"\n"))
    };
    ns.apply(&workflow("never", "", &[step("a", &[], "500ms", 0, "ok", ""), reader("b", "a", "300ms", 0)]));
    ns.apply(&workflow(
        "on-task",
        "  podGC: OnTaskSuccess\n  failFast: false\n",
        &[
            step("quick", &[], "500ms", 0, "ok", ""),
            step("slow", &[], "6s", 0, "", ""),
            step("bad", &[], "500ms", 3, "", ""),
            reader("reader", "quick", "300ms", 0),
        ],
    ));
    // b outlives task-1's slow task by 6 s: it must still run when the
    // wait for task-1 below is over, however long that wait took.
    ns.apply(&workflow("on-success", "  podGC: OnRunSuccess\n", &[step("a", &[], "500ms", 0, "ok", ""), reader("b", "a", "12s", 0)]));
    ns.apply(&workflow("on-finished", "  podGC: OnRunFinished\n", &[step("a", &[], "500ms", 0, "ok", ""), reader("b", "a", "300ms", 5)]));
    ns.apply(&run("never-1", "never", ""));
    ns.apply(&run("task-1", "on-task", ""));
    ns.apply(&run("success-1", "on-success", ""));
    ns.apply(&run("finished-1", "on-finished", ""));
    // A run may choose its own policy when it is created.
    ns.apply(&run_with("kept-1", "on-finished", ", podGC: Never"));

    // OnTaskSuccess: a succeeded task's pod goes while the run goes on; the
    // failed task's pod stays.
    let api: Api<WorkflowInstance> = ns.api();
    wait_for("task-1's succeeded pods to go while slow still runs", RUN_TIMEOUT, || async {
        let r = api.get("task-1").await.map_err(|e| e.to_string())?;
        let pods = pod_names(&ns, "task-1").await;
        let running = r.status.as_ref().and_then(|s| s.phase) == Some(RunPhase::Running);
        if running && pods == BTreeSet::from(["task-1-slow-0".to_string(), "task-1-bad-0".to_string()]) {
            Ok(())
        } else {
            Err(format!("{:?} {pods:?}", r.status.and_then(|s| s.phase)))
        }
    })
    .await;
    // OnRunSuccess: kept while the run goes on.
    wait_for("success-1 to run b with a's pod still there", RUN_TIMEOUT, || async {
        let r = api.get("success-1").await.map_err(|e| e.to_string())?;
        let pods = pod_names(&ns, "success-1").await;
        if entry(&r, "b").phase == baton::api::TaskPhase::Running && pods.contains("success-1-a-0") {
            Ok(())
        } else {
            Err(format!("{pods:?}"))
        }
    })
    .await;

    let runs = ["never-1", "task-1", "success-1", "finished-1", "kept-1"];
    let settled: BTreeMap<&str, WorkflowInstance> = futures::future::join_all(runs.map(|name| {
        let ns = &ns;
        async move { (name, wait_settled(ns, name).await) }
    }))
    .await
    .into_iter()
    .collect();
    let phase = |name: &str| settled[name].status.as_ref().unwrap().phase.unwrap();
    assert_eq!(
        runs.map(phase),
        [RunPhase::Succeeded, RunPhase::Failed, RunPhase::Succeeded, RunPhase::Failed, RunPhase::Failed],
        "phases of {runs:?}"
    );
    // Settled means podGC is done: what is left now stays.
    assert_eq!(pod_names(&ns, "never-1").await, BTreeSet::from(["never-1-a-0".into(), "never-1-b-0".into()]));
    assert_eq!(pod_names(&ns, "task-1").await, BTreeSet::from(["task-1-bad-0".to_string()]));
    assert!(pod_names(&ns, "success-1").await.is_empty());
    assert!(pod_names(&ns, "finished-1").await.is_empty());
    assert_eq!(pod_names(&ns, "kept-1").await, BTreeSet::from(["kept-1-a-0".into(), "kept-1-b-0".into()]));

    // Status keeps what the deleted pods reported.
    for (run, task, code) in
        [("task-1", "quick", 0), ("task-1", "slow", 0), ("task-1", "bad", 3), ("success-1", "b", 0), ("finished-1", "b", 5)]
    {
        assert_eq!(entry(&settled[run], task).exit_code, Some(code), "{run} {task}");
    }
    for run in ["task-1", "success-1", "finished-1"] {
        let first = if run == "task-1" { "quick" } else { "a" };
        let result = entry(&settled[run], first).outputs.and_then(|o| o.result);
        assert_eq!(result.as_deref(), Some("ok"), "{run}: the result of {first}");
    }
    assert!(entry(&settled["finished-1"], "b").message.unwrap_or_default().contains("exit code 5"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(pod_names(&ns, "never-1").await.len(), 2, "Never keeps every pod");
    ns.done().await;
}

#[tokio::test]
async fn pod_gc_left_undone_by_a_dead_owner_is_finished_by_a_survivor() {
    let ns = TestNs::new("podgc-failover").await;
    let mut c = [ns.controller("alpha"), ns.controller("beta")];
    ns.apply(&workflow("wf", "  podGC: OnRunFinished\n", &[task("t", &[], "3s", 0, "")]));
    ns.apply(&run("g1", "wf", ""));
    let pods: Api<Pod> = ns.api();
    wait_pods(&ns, "g1", &["g1-t-0"]).await;
    // Pod deletes are refused for a while: the owner cannot finish podGC.
    let rule = "{apiGroups: [\"\"], apiVersions: [v1], operations: [DELETE], resources: [pods]}";
    let (policy, yaml) = deny_policy(&ns, "block-podgc", rule, "pod deletes are blocked by the test");
    ns.apply(&yaml);
    wait_for("the policy to refuse pod deletes", Duration::from_secs(30), || async {
        match pods.delete("g1-t-0", &DeleteParams { dry_run: true, ..Default::default() }).await {
            Err(kube::Error::Api(s)) if s.message.contains("blocked by the test") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let done = wait_phase(&ns, "g1", |p| p.is_terminal()).await;
    assert_eq!(done.status.as_ref().unwrap().phase, Some(RunPhase::Succeeded));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let run = ns.api::<WorkflowInstance>().get("g1").await.unwrap();
    assert!(!run.status.as_ref().unwrap().cleaned_up(), "not cleaned up (so not idle) while podGC is not done");
    assert_eq!(pod_names(&ns, "g1").await.len(), 1);
    // Its owner dies; a survivor claims the finished run and finishes podGC.
    let owner = owner_of(&ns, "g1", &[&c[0], &c[1]]).await;
    c[owner].kill();
    remove_policy(&ns, &policy);
    wait_pods(&ns, "g1", &[]).await;
    let cleaned = wait_settled(&ns, "g1").await;
    let status = cleaned.status.unwrap();
    assert_eq!(status.owner.unwrap().controller, c[1 - owner].identity);
    assert_eq!(status.tasks[0].exit_code, Some(0), "status keeps what the pod reported");
    c[1 - owner].assert_no_panic();
    ns.done().await;
}

/// The owner of a run, among `controllers`.
async fn owner_of(ns: &TestNs, name: &str, controllers: &[&ControllerProc]) -> usize {
    let api: Api<WorkflowInstance> = ns.api();
    wait_for(&format!("run {name} to be owned"), Duration::from_secs(30), || async {
        let r = api.get(name).await.map_err(|e| e.to_string())?;
        let who = r.status.and_then(|s| s.owner).map(|o| o.controller).unwrap_or_default();
        controllers.iter().position(|c| c.identity == who).ok_or(format!("owner {who:?}"))
    })
    .await
}

#[tokio::test]
async fn a_survivor_deletes_the_run_on_time_when_its_owner_dies_during_the_ttl_wait() {
    let ns = TestNs::new("ttl-failover").await;
    let mut c = [ns.controller("alpha"), ns.controller("beta")];
    ns.apply(&workflow("wf", "  ttlSecondsAfterFinished: 9\n", &[task("only", &[], "500ms", 0, "")]));
    ns.apply(&run("r1", "wf", ""));
    let done = wait_settled(&ns, "r1").await;
    let finished = finished_at(&done);
    let i = owner_of(&ns, "r1", &[&c[0], &c[1]]).await;
    let survivor = c[1 - i].identity.clone();
    c[i].kill();
    // The survivor takes the finished run over (it is not idle: its TTL
    // is pending) well before the TTL passes...
    let api: Api<WorkflowInstance> = ns.api();
    let claimed = wait_for("the survivor to claim the finished run", LEASE_DURATION * 3, || async {
        let r = api.get("r1").await.map_err(|e| e.to_string())?;
        let s = r.status.clone().unwrap_or_default();
        match s.owner_history.last() {
            Some(h) if h.controller == survivor && h.reason == baton::api::OwnerChangeReason::Failover => Ok(Timestamp::now()),
            h => Err(format!("{h:?}")),
        }
    })
    .await;
    println!("survivor claimed {}s after the run finished", secs(finished, claimed));
    assert!(claimed < plus(finished, 9), "claimed after the TTL passed: this test needs a longer TTL");
    // ...and deletes it on time, by itself (no event wakes it: it asked to be woken).
    let gone = wait_gone(&ns, "r1", Duration::from_secs(20)).await;
    println!("deleted {}s after it finished (TTL 9s)", secs(finished, gone));
    assert!(gone >= plus(finished, 9) && gone <= plus(finished, 12), "deleted {}s after it finished, TTL 9s", secs(finished, gone));
    let event = the_deletion(&ns, "wf", "r1").await;
    assert_eq!(event.reporting_instance.as_deref(), Some(survivor.as_str()), "deleted by the survivor");
    c[1 - i].assert_no_panic();
    ns.done().await;
}

#[tokio::test]
async fn an_owner_frozen_before_its_ttl_delete_never_undoes_a_request_made_meanwhile() {
    let ns = TestNs::new("ttl-stale").await;
    ns.apply(&workflow("wf", "  ttlSecondsAfterFinished: 1\n", &[task("only", &[], "300ms", 0, "")]));
    // alpha alone owns the run, and stops right before its delete, after
    // the fenced write that the delete follows.
    let alpha = ns.controller("alpha");
    alpha.failpoint("run-ttl-delete", "pause").await;
    ns.apply(&run("r1", "wf", ""));
    alpha.wait_log(&["failpoint hit", "run-ttl-delete"], RUN_TIMEOUT).await;
    alpha.freeze();
    // While alpha sleeps, the user asks to keep the run, and beta takes it over.
    patch_spec(&ns, "r1", serde_json::json!({"ttlSecondsAfterFinished": 3600})).await;
    let beta = ns.controller("beta");
    let api: Api<WorkflowInstance> = ns.api();
    wait_for("beta to claim the run", LEASE_DURATION * 4, || async {
        let r = api.get("r1").await.map_err(|e| e.to_string())?;
        let s = r.status.unwrap_or_default();
        let owner = s.owner.map(|o| (o.controller, o.epoch));
        if owner == Some(("beta".into(), 2)) && s.observed_generation == r.metadata.generation { Ok(()) } else { Err(format!("{owner:?}")) }
    })
    .await;
    // alpha wakes up and its delete goes out, with the run as alpha proved
    // it current: the API server refuses it.
    alpha.thaw();
    alpha.failpoint("run-ttl-delete", "off").await;
    alpha.wait_log(&["failpoint passed", "run-ttl-delete"], Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let kept = api.get_opt("r1").await.unwrap().expect("the stale owner deleted a run the user asked to keep");
    assert_eq!(kept.spec.ttl_seconds_after_finished, Some(3600));
    assert!(deletions(&ns, "wf", "r1").await.is_empty());
    assert!(!alpha.log_since_start().contains("deleted the run"), "alpha logged a delete");
    for c in [&alpha, &beta] {
        c.assert_no_panic();
    }
    ns.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_deleted_by_its_ttl_is_never_started_again_by_its_tick() {
    let ns = TestNs::new("ttl-tick").await;
    let mut c = [ns.controller("alpha"), ns.controller("beta")];
    let (log, watch) = record(&ns).await;
    // Whichever controller owns the schedule stops between creating a
    // tick's run and clearing the tick from the Workflow's status.
    for p in &c {
        p.failpoint("schedule-tick-started", "pause").await;
    }
    let settings = "  ttlSecondsAfterFinished: 0\n  schedule: {cron: \"*/5 * * * * *\", startingDeadlineSeconds: 120}\n";
    ns.apply(&workflow("every5", settings, &[task("tick", &[], "300ms", 0, "")]));
    let hit = wait_for("the schedule's owner to stop in the middle of a tick", Duration::from_secs(30), || async {
        c.iter()
            .position(|p| p.log_since_start().lines().any(|l| l.contains("failpoint hit") && l.contains("schedule-tick-started")))
            .ok_or_else(|| "no failpoint hit yet".to_string())
    })
    .await;
    c[1 - hit].failpoint("schedule-tick-started", "off").await;
    let wfs: Api<Workflow> = ns.api();
    let tick_run = wfs.get("every5").await.unwrap().status.unwrap().starting_tick.expect("a tick being started").run;
    // The tick's run was created; it runs and finishes, and its TTL of 0
    // passes at once; yet it stays while its tick is being started.
    wait_for(&format!("{tick_run} to finish and be cleaned up"), RUN_TIMEOUT, || async {
        let last = log.lock().unwrap().get(&tick_run).and_then(|s| s.last.clone());
        let phase = last.as_ref().and_then(|r| r.status.as_ref()?.phase);
        if last.is_some_and(|r| r.status.is_some_and(|s| s.cleaned_up())) { Ok(()) } else { Err(format!("{phase:?}")) }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(exists(&ns, &tick_run).await, "deleted while its schedule's owner could still create it again");
    // The schedule's owner dies; the other controller completes the tick
    // (the run exists: adopted), and only then is the run deleted.
    c[hit].kill();
    wait_for("the tick to be completed", LEASE_DURATION * 4, || async {
        let wf = wfs.get("every5").await.map_err(|e| e.to_string())?;
        let status = wf.status.unwrap_or_default();
        let owner = status.owner.map(|o| o.controller).unwrap_or_default();
        if owner == c[1 - hit].identity && status.starting_tick.as_ref().is_none_or(|t| t.run != tick_run) {
            Ok(())
        } else {
            Err(format!("owner {owner}, tick {:?}", status.starting_tick))
        }
    })
    .await;
    wait_gone(&ns, &tick_run, Duration::from_secs(20)).await;
    the_deletion(&ns, "every5", &tick_run).await;
    // Later ticks run and go too; none comes back.
    let later = wait_for("two later ticks", Duration::from_secs(30), || async {
        let names: Vec<String> = seen_named(&log, "every5-").into_iter().filter(|n| *n > tick_run).collect();
        if names.len() >= 2 { Ok(names) } else { Err(format!("{names:?}")) }
    })
    .await;
    for name in &later {
        wait_gone(&ns, name, Duration::from_secs(20)).await;
    }
    wfs.patch("every5", &PatchParams::default(), &Patch::Merge(&serde_json::json!({"spec": {"schedule": {"suspend": true}}})))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    watch.abort();
    assert!(!exists(&ns, &tick_run).await, "{tick_run} was started again");
    assert!(recreated(&log).is_empty(), "deleted runs were created again: {:?}", recreated(&log));
    c[1 - hit].assert_no_panic();
    ns.done().await;
}
