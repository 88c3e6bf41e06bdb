//! Running workflows with one controller: DAGs, retries, requests,
//! sub-workflows, bad input, deletion.

use std::time::Duration;

use baton::api::{RunPhase, TaskPhase, WorkflowInstance};
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};

use crate::support::{TestNs, wait_for};

pub const RUN_TIMEOUT: Duration = Duration::from_secs(90);

/// A container task with simulated duration and exit code.
pub fn task(name: &str, deps: &[&str], duration: &str, exit: i32, extra: &str) -> String {
    format!(
        "    - name: {name}\n      dependsOn: [{}]\n      container: {{name: main, image: busybox, command: [sh, -c, \"echo {{{{params.date}}}}\"]}}\n\
         \x20     podTemplate: {{metadata: {{annotations: {{baton.dev/sim-duration: {duration}, baton.dev/sim-exit-code: \"{exit}\"}}}}}}\n{extra}",
        deps.join(", ")
    )
}

pub fn workflow(name: &str, settings: &str, tasks: &[String]) -> String {
    format!(
        "apiVersion: baton.dev/v1alpha1\nkind: Workflow\nmetadata: {{name: {name}}}\nspec:\n  params: [{{name: date, default: \"2026-01-01\"}}]\n{settings}  tasks:\n{}",
        tasks.concat()
    )
}

pub fn run(name: &str, workflow: &str, params: &str) -> String {
    format!(
        "apiVersion: baton.dev/v1alpha1\nkind: WorkflowInstance\nmetadata: {{name: {name}}}\nspec: {{workflowRef: {{name: {workflow}}}, params: {{{params}}}}}\n"
    )
}

pub fn diamond(name: &str, duration: &str) -> String {
    workflow(
        name,
        "",
        &[
            task("a", &[], duration, 0, ""),
            task("b", &["a"], duration, 0, ""),
            task("c", &["a"], duration, 0, ""),
            task("d", &["b", "c"], duration, 0, ""),
        ],
    )
}

/// Waits until the run's phase satisfies `done`, and returns the run.
pub async fn wait_phase(ns: &TestNs, name: &str, done: impl Fn(RunPhase) -> bool) -> WorkflowInstance {
    wait_phase_within(ns, name, RUN_TIMEOUT, done).await
}

/// [`wait_phase`], giving up after `timeout`.
pub async fn wait_phase_within(ns: &TestNs, name: &str, timeout: Duration, done: impl Fn(RunPhase) -> bool) -> WorkflowInstance {
    let api: Api<WorkflowInstance> = ns.api();
    wait_for(&format!("run {name} to reach the expected phase"), timeout, || async {
        let run = api.get(name).await.map_err(|e| e.to_string())?;
        match run.status.as_ref().and_then(|s| s.phase) {
            Some(p) if done(p) => Ok(run),
            p => Err(format!("phase {p:?}, progress {:?}", run.status.as_ref().and_then(|s| s.progress.clone()))),
        }
    })
    .await
}

pub async fn pods_of(ns: &TestNs, run: &str) -> Vec<Pod> {
    let pods: Api<Pod> = ns.api();
    pods.list(&ListParams::default().labels(&format!("baton.dev/instance={run}"))).await.unwrap().items
}

pub async fn patch_spec(ns: &TestNs, name: &str, spec: serde_json::Value) {
    let api: Api<WorkflowInstance> = ns.api();
    api.patch(name, &PatchParams::default(), &Patch::Merge(&serde_json::json!({ "spec": spec }))).await.unwrap();
}

fn task_status(run: &WorkflowInstance, name: &str) -> baton::api::TaskStatus {
    run.status.as_ref().unwrap().tasks.iter().find(|t| t.name == name).cloned().unwrap()
}

pub async fn events_of(ns: &TestNs, run: &str) -> Vec<Event> {
    let events: Api<Event> = ns.api();
    events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.involved_object.name.as_deref() == Some(run))
        .collect()
}

/// Waits for a Warning Event `reason` on `object`. Events are recorded
/// after the status write, in the background, so they may trail it.
pub async fn wait_warning(ns: &TestNs, object: &str, reason: &str) {
    wait_for(&format!("Warning event {reason} on {object}"), Duration::from_secs(20), || async {
        let events = events_of(ns, object).await;
        let found = events.iter().any(|e| e.type_.as_deref() == Some("Warning") && e.reason.as_deref() == Some(reason));
        if found { Ok(()) } else { Err(format!("{} events", events.len())) }
    })
    .await;
}

#[tokio::test]
async fn diamond_succeeds_with_fixed_pod_names_labels_and_params() {
    let ns = TestNs::new("diamond").await;
    let _c = ns.controller("c1");
    ns.apply(&diamond("diamond", "1s"));
    ns.apply(&run("d1", "diamond", "date: \"2026-11-21\""));
    let done = wait_phase(&ns, "d1", |p| p.is_terminal()).await;
    let status = done.status.clone().unwrap();
    assert_eq!(status.phase, Some(RunPhase::Succeeded), "{status:?}");
    assert_eq!(status.progress.as_deref(), Some("4/4"));
    assert_eq!(status.observed_generation, Some(1));
    let mut pods = pods_of(&ns, "d1").await;
    pods.sort_by_key(|p| p.name_any());
    let names: Vec<String> = pods.iter().map(|p| p.name_any()).collect();
    assert_eq!(names, ["d1-a-0", "d1-b-0", "d1-c-0", "d1-d-0"]);
    for (pod, task) in pods.iter().zip(["a", "b", "c", "d"]) {
        let labels = pod.labels();
        assert_eq!(labels["baton.dev/instance"], "d1");
        assert_eq!(labels["baton.dev/task"], task);
        assert_eq!(labels["baton.dev/attempt"], "0");
        let owner = &pod.owner_references()[0];
        assert_eq!((owner.kind.as_str(), owner.name.as_str(), owner.controller), ("WorkflowInstance", "d1", Some(true)));
        assert_eq!(owner.uid, done.uid().unwrap());
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        assert_eq!(spec.containers[0].command.as_ref().unwrap()[2], "echo 2026-11-21", "parameter reached the pod");
    }
    // d started only after b and c finished.
    let (b, c, d) = (task_status(&done, "b"), task_status(&done, "c"), task_status(&done, "d"));
    assert!(d.started_at.unwrap().0 >= b.finished_at.unwrap().0.max(c.finished_at.unwrap().0));
    ns.done().await;
}

#[tokio::test]
async fn failing_task_is_retried_then_fails_the_run() {
    let ns = TestNs::new("retry").await;
    let _c = ns.controller("c1");
    let retries = "      retries: {limit: 1, backoffSeconds: 1}\n";
    ns.apply(&workflow("flaky", "", &[task("x", &[], "500ms", 4, retries), task("after", &["x"], "500ms", 0, "")]));
    ns.apply(&run("f1", "flaky", ""));
    let done = wait_phase(&ns, "f1", |p| p.is_terminal()).await;
    assert_eq!(done.status.as_ref().unwrap().phase, Some(RunPhase::Failed));
    let x = task_status(&done, "x");
    assert_eq!((x.phase, x.attempts, x.exit_code), (TaskPhase::Failed, 2, Some(4)));
    assert_eq!(task_status(&done, "after").phase, TaskPhase::Skipped);
    let mut names: Vec<String> = pods_of(&ns, "f1").await.iter().map(|p| p.name_any()).collect();
    names.sort();
    assert_eq!(names, ["f1-x-0", "f1-x-1"], "one pod per attempt");
    wait_warning(&ns, "f1", "TaskRetry").await;

    // retryFailed re-runs the failed and skipped tasks, in new pods.
    patch_spec(&ns, "f1", serde_json::json!({"retryFailed": 1})).await;
    wait_phase(&ns, "f1", |p| p == RunPhase::Running).await;
    let again = wait_phase(&ns, "f1", |p| p.is_terminal()).await;
    assert_eq!(task_status(&again, "x").attempts, 4);
    assert_eq!(again.status.as_ref().unwrap().observed_generation, again.metadata.generation);
    ns.done().await;
}

#[tokio::test]
async fn pause_resume_and_stop() {
    let ns = TestNs::new("requests").await;
    let _c = ns.controller("c1");
    ns.apply(&workflow(
        "chain",
        "",
        &[task("one", &[], "3s", 0, ""), task("two", &["one"], "3s", 0, ""), task("three", &["two"], "30s", 0, "")],
    ));
    ns.apply(&run("p1", "chain", ""));
    wait_phase(&ns, "p1", |p| p == RunPhase::Running).await;
    patch_spec(&ns, "p1", serde_json::json!({"suspend": true})).await;
    let paused = wait_phase(&ns, "p1", |p| p == RunPhase::Paused).await;
    assert_eq!(paused.status.as_ref().unwrap().observed_generation, paused.metadata.generation);
    // The running task finishes; the next does not start while paused.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let api: Api<WorkflowInstance> = ns.api();
    let still = api.get("p1").await.unwrap();
    assert_eq!(task_status(&still, "one").phase, TaskPhase::Succeeded);
    assert_eq!(task_status(&still, "two").phase, TaskPhase::Pending);
    patch_spec(&ns, "p1", serde_json::json!({"suspend": false})).await;
    wait_for("task two to start after resume", RUN_TIMEOUT, || async {
        let r = api.get("p1").await.map_err(|e| e.to_string())?;
        if task_status(&r, "three").phase == TaskPhase::Running { Ok(()) } else { Err(format!("{:?}", r.status.unwrap().progress)) }
    })
    .await;
    patch_spec(&ns, "p1", serde_json::json!({"shutdown": "Stop"})).await;
    let stopped = wait_phase(&ns, "p1", |p| p == RunPhase::Stopped).await;
    assert_eq!(task_status(&stopped, "three").phase, TaskPhase::Stopped);
    wait_for("the running pod to be deleted", RUN_TIMEOUT, || async {
        let pods: Api<Pod> = ns.api();
        match pods.get_opt("p1-three-0").await.map_err(|e| e.to_string())? {
            None => Ok(()),
            Some(p) => Err(format!("still there: {:?}", p.status.and_then(|s| s.phase))),
        }
    })
    .await;
    let reasons: Vec<String> = events_of(&ns, "p1").await.into_iter().filter_map(|e| e.reason).collect();
    for r in ["Paused", "Resumed", "Stopped"] {
        assert!(reasons.iter().any(|x| x == r), "event {r} in {reasons:?}");
    }
    ns.done().await;
}

#[tokio::test]
async fn sub_workflow_runs_once_as_a_child_run() {
    let ns = TestNs::new("child").await;
    let _c = ns.controller("c1");
    ns.apply(&workflow("inner", "", &[task("work", &[], "1s", 0, "")]));
    let child_task = "    - name: sub\n      dependsOn: [first]\n      workflowRef: {name: inner, params: {date: \"{{params.date}}\"}}\n";
    ns.apply(&workflow("outer", "", &[task("first", &[], "500ms", 0, ""), child_task.to_string()]));
    ns.apply(&run("o1", "outer", "date: \"2030-01-01\""));
    let done = wait_phase(&ns, "o1", |p| p.is_terminal()).await;
    assert_eq!(done.status.as_ref().unwrap().phase, Some(RunPhase::Succeeded));
    assert_eq!(task_status(&done, "sub").child_instance.as_deref(), Some("o1-sub"));
    let api: Api<WorkflowInstance> = ns.api();
    let children = api.list(&ListParams::default().labels("baton.dev/parent=o1")).await.unwrap().items;
    assert_eq!(children.len(), 1);
    let child = &children[0];
    assert_eq!(child.name_any(), "o1-sub");
    assert_eq!(child.labels()["baton.dev/task"], "sub");
    assert_eq!(child.spec.params["date"], "2030-01-01");
    assert_eq!(child.owner_references()[0].uid, done.uid().unwrap());
    assert_eq!(child.status.as_ref().unwrap().phase, Some(RunPhase::Succeeded));

    // Deleting the run removes its pods and child runs (garbage collector).
    api.delete("o1", &DeleteParams::foreground()).await.unwrap();
    wait_for("pods and child runs to be collected", RUN_TIMEOUT, || async {
        let left = api.list(&ListParams::default()).await.map_err(|e| e.to_string())?.items.len();
        let pods: Api<Pod> = ns.api();
        let pods_left = pods.list(&ListParams::default()).await.map_err(|e| e.to_string())?.items.len();
        if left == 0 && pods_left == 0 { Ok(()) } else { Err(format!("{left} runs, {pods_left} pods")) }
    })
    .await;
    ns.done().await;
}

#[tokio::test]
async fn missing_or_invalid_workflow_fails_the_run_visibly() {
    let ns = TestNs::new("invalid").await;
    let _c = ns.controller("c1");
    ns.apply(&run("nowf", "does-not-exist", ""));
    ns.apply(&workflow("cyclic", "", &[task("a", &["b"], "1s", 0, ""), task("b", &["a"], "1s", 0, "")]));
    ns.apply(&run("cyc", "cyclic", ""));
    for (name, reason, text) in
        [("nowf", "WorkflowNotFound", "does not exist"), ("cyc", "InvalidWorkflow", "dependency cycle: a -> b -> a")]
    {
        let failed = wait_phase(&ns, name, |p| p.is_terminal()).await;
        let status = failed.status.unwrap();
        assert_eq!(status.phase, Some(RunPhase::Failed));
        let cond = status.conditions.iter().find(|c| c.type_ == "Valid").expect("Valid condition");
        assert_eq!((cond.status.as_str(), cond.reason.as_str()), ("False", reason));
        assert!(cond.message.contains(text), "{}", cond.message);
        wait_warning(&ns, name, reason).await;
    }
    // The Workflow itself says why it cannot run.
    let workflows: Api<baton::api::Workflow> = ns.api();
    let cond = wait_for("the workflow's Valid condition", RUN_TIMEOUT, || async {
        let wf = workflows.get("cyclic").await.map_err(|e| e.to_string())?;
        let status = wf.status.unwrap_or_default();
        status.conditions.into_iter().find(|c| c.type_ == "Valid").ok_or("no condition yet".to_string())
    })
    .await;
    assert_eq!((cond.status.as_str(), cond.reason.as_str()), ("False", "InvalidWorkflow"));
    assert!(cond.message.contains("dependency cycle: a -> b -> a"), "{}", cond.message);
    ns.done().await;
}

/// The API budget of a run: a single-task run costs its pod's create, at
/// most three writes of the controller's own (one status write that claims
/// and starts it, one that ends it, the run's end Event), and one read: its
/// Workflow as it is when the run starts. Pods and child runs come from the
/// controller's watches. (The admission webhook's read of the run, one per
/// create it judges, is its fence and counted apart.)
#[tokio::test]
async fn a_single_task_run_costs_three_writes_besides_its_pod_and_one_read() {
    let ns = TestNs::new("budget").await;
    let controller = ns.controller("c0");
    let addr = controller.metrics_addr().await;
    ns.apply(&workflow("one", "", &[task("only", &[], "200ms", 0, "")]));
    let workflows: Api<baton::api::Workflow> = ns.api();
    wait_for("the workflow to be owned and checked", RUN_TIMEOUT, || async {
        let wf = workflows.get("one").await.map_err(|e| e.to_string())?;
        let checked = wf.status.as_ref().is_some_and(|s| s.owner.is_some() && s.conditions.iter().any(|c| c.type_ == "Valid"));
        if checked { Ok(()) } else { Err(format!("{:?}", wf.status)) }
    })
    .await;
    let reviews = || crate::support::metric(addr, "baton_admission_reviews_total{verdict=\"allowed\"}");
    let (before, reviews_before) = (crate::support::requests(addr), reviews());

    ns.apply(&run("one-1", "one", ""));
    let done = wait_phase(&ns, "one-1", |p| p.is_terminal()).await;
    assert_eq!(done.status.as_ref().and_then(|s| s.phase), Some(RunPhase::Succeeded));
    assert!(done.status.unwrap().cleaned_up(), "cleaned up in the run's last write");
    // Anything the run still wakes up (its pod's last events) has happened.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let after = crate::support::requests(addr);
    let used: Vec<(String, f64)> = after
        .iter()
        .map(|(kind, n)| (kind.clone(), n - before.get(kind).copied().unwrap_or(0.0)))
        .filter(|(kind, n)| *n > 0.0 && !kind.ends_with(" leases") && !kind.starts_with("watch "))
        .collect();
    let count = |verbs: &[&str], except: &str| {
        used.iter().filter(|(k, _)| k != except && verbs.iter().any(|v| k.starts_with(&format!("{v} ")))).map(|(_, n)| n).sum::<f64>()
    };
    let webhook_reads = reviews() - reviews_before;
    assert_eq!(count(&["create"], ""), count(&["create"], "create pods") + 1.0, "one pod created: {used:?}");
    let own_writes = count(&["create", "update", "patch", "delete"], "create pods");
    assert!(own_writes <= 3.0, "{own_writes} writes of the controller's own: {used:?}");
    assert_eq!(count(&["get", "list"], "get workflows"), webhook_reads, "reads besides the Workflow's and the webhook's: {used:?}");
    assert_eq!(count(&["get"], "get workflowinstances"), 1.0, "the Workflow read once: {used:?}");
    controller.assert_no_panic();
    ns.done().await;
}
