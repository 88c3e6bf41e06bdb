//! The identity rules: an object is a run's only through its UID, a request
//! on any run is never undone, a schedule never stops its own tick's run,
//! and a finished run is cleaned up until nothing of it runs.

use std::time::Duration;

use baton::api::{RunPhase, TaskPhase, Workflow, WorkflowInstance};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams};

use crate::runs::{RUN_TIMEOUT, patch_spec, pods_of, run, task, wait_phase, wait_warning, workflow};
use crate::support::{TestNs, wait_for};

fn task_of(run: &WorkflowInstance, name: &str) -> baton::api::TaskStatus {
    run.status.as_ref().unwrap().tasks.iter().find(|t| t.name == name).cloned().unwrap()
}

async fn get(ns: &TestNs, name: &str) -> WorkflowInstance {
    ns.api::<WorkflowInstance>().get(name).await.unwrap()
}

fn outer_with_child(child_duration: &str) -> [String; 2] {
    let child_task = "    - name: sub\n      workflowRef: {name: inner}\n      retries: {limit: 2}\n";
    [workflow("inner", "", &[task("work", &[], child_duration, 0, "")]), workflow("outer", "", &[child_task.to_string()])]
}

#[tokio::test]
async fn requests_made_on_a_child_run_are_never_undone_by_its_parent() {
    let ns = TestNs::new("child-requests").await;
    let _c = [ns.controller("alpha"), ns.controller("beta")];
    for wf in outer_with_child("30s") {
        ns.apply(&wf);
    }
    ns.apply(&run("o1", "outer", ""));
    wait_phase(&ns, "o1-sub", |p| p == RunPhase::Running).await;

    // Pause the child itself: it stays paused although its parent runs on.
    patch_spec(&ns, "o1-sub", serde_json::json!({"suspend": true})).await;
    wait_phase(&ns, "o1-sub", |p| p == RunPhase::Paused).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let child = get(&ns, "o1-sub").await;
    assert!(child.spec.suspend, "the parent undid spec.suspend on the child");
    assert_eq!(child.status.unwrap().phase, Some(RunPhase::Paused));

    // A pause and resume of the parent hands the child back as it was:
    // still paused, as the user asked.
    patch_spec(&ns, "o1", serde_json::json!({"suspend": true})).await;
    wait_phase(&ns, "o1", |p| p == RunPhase::Paused).await;
    patch_spec(&ns, "o1", serde_json::json!({"suspend": false})).await;
    wait_phase(&ns, "o1", |p| p == RunPhase::Running).await;
    wait_for("the parent's resume to reach the child", Duration::from_secs(20), || async {
        let c = get(&ns, "o1-sub").await;
        let passed = c.annotations().get("baton.dev/parent-suspend").cloned();
        if passed.as_deref() == Some("false") { Ok(()) } else { Err(format!("{passed:?}")) }
    })
    .await;
    let child = get(&ns, "o1-sub").await;
    assert!(child.spec.suspend, "the parent's resume undid the pause made on the child");
    assert_eq!(child.status.unwrap().phase, Some(RunPhase::Paused));

    // Stop the child itself: it ends Stopped, its request stays, and the
    // parent's task ends Stopped without starting another child.
    patch_spec(&ns, "o1-sub", serde_json::json!({"shutdown": "Stop"})).await;
    wait_phase(&ns, "o1-sub", |p| p == RunPhase::Stopped).await;
    let parent = wait_phase(&ns, "o1", |p| p.is_terminal()).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let child = get(&ns, "o1-sub").await;
    assert_eq!(serde_json::to_value(child.spec.shutdown).unwrap(), "Stop", "the parent undid spec.shutdown on the child");
    let sub = task_of(&parent, "sub");
    assert_eq!((sub.phase, sub.attempts), (TaskPhase::Stopped, 1), "{sub:?}");
    let children = ns.api::<WorkflowInstance>().list(&ListParams::default().labels("baton.dev/parent=o1")).await.unwrap();
    assert_eq!(children.items.len(), 1, "no retry child after a stop");
    ns.done().await;
}

#[tokio::test]
async fn a_parent_pause_and_stop_still_reach_its_child() {
    let ns = TestNs::new("parent-requests").await;
    let _c = ns.controller("alpha");
    for wf in outer_with_child("30s") {
        ns.apply(&wf);
    }
    ns.apply(&run("o2", "outer", ""));
    wait_phase(&ns, "o2-sub", |p| p == RunPhase::Running).await;
    patch_spec(&ns, "o2", serde_json::json!({"suspend": true})).await;
    wait_phase(&ns, "o2-sub", |p| p == RunPhase::Paused).await;
    patch_spec(&ns, "o2", serde_json::json!({"suspend": false})).await;
    wait_phase(&ns, "o2-sub", |p| p == RunPhase::Running).await;
    patch_spec(&ns, "o2", serde_json::json!({"shutdown": "Stop"})).await;
    wait_phase(&ns, "o2-sub", |p| p == RunPhase::Stopped).await;
    let parent = wait_phase(&ns, "o2", |p| p.is_terminal()).await;
    assert_eq!(parent.status.unwrap().phase, Some(RunPhase::Stopped));
    ns.done().await;
}

#[tokio::test]
async fn a_replace_schedule_never_stops_the_run_its_own_tick_started() {
    let ns = TestNs::new("replace-own").await;
    let _c = ns.controller("alpha");
    // Several schedules at once: more reconciles, more chances for one to
    // work from a copy that has not seen its own last write.
    // History limits high enough to keep every run: the test counts them.
    let settings = "  schedule: {cron: \"*/6 * * * * *\", concurrencyPolicy: Replace, startingDeadlineSeconds: 60, successfulRunsHistoryLimit: 100, failedRunsHistoryLimit: 100}\n";
    let names = ["fast-a", "fast-b", "fast-c", "fast-d", "fast-e"];
    for name in names {
        ns.apply(&workflow(name, settings, &[task("tick", &[], "2s", 0, "")]));
    }
    let api: Api<WorkflowInstance> = ns.api();
    let runs = wait_for("four finished ticks of each schedule", Duration::from_secs(90), || async {
        let runs = api.list(&ListParams::default().labels("baton.dev/scheduled-by")).await.map_err(|e| e.to_string())?.items;
        let finished = |wf: &str| {
            runs.iter()
                .filter(|r| r.labels()["baton.dev/scheduled-by"] == wf)
                .filter(|r| r.status.as_ref().and_then(|s| s.phase).is_some_and(RunPhase::is_terminal))
                .count()
        };
        if names.iter().all(|n| finished(n) >= 4) { Ok(runs) } else { Err(format!("{:?}", names.map(finished))) }
    })
    .await;
    let stopped: Vec<String> =
        runs.iter().filter(|r| r.status.as_ref().and_then(|s| s.phase) == Some(RunPhase::Stopped)).map(|r| r.name_any()).collect();
    assert!(stopped.is_empty(), "runs of a 2s task on a 6s Replace schedule were stopped: {stopped:?} of {}", runs.len());
    ns.done().await;
}

#[tokio::test]
async fn runs_whose_pod_names_collide_never_adopt_each_other() {
    let ns = TestNs::new("collide").await;
    let _c = ns.controller("alpha");
    ns.apply(&workflow("site", "", &[task("web-test", &[], "5s", 0, "")]));
    ns.apply(&workflow("unit", "", &[task("test", &[], "1s", 0, "")]));
    ns.apply(&run("build", "site", ""));
    wait_for("pod build-web-test-0", RUN_TIMEOUT, || async {
        ns.api::<Pod>().get_opt("build-web-test-0").await.map_err(|e| e.to_string())?.map(|_| ()).ok_or("not yet".to_string())
    })
    .await;
    ns.apply(&run("build-web", "unit", ""));
    let failed = wait_phase(&ns, "build-web", |p| p.is_terminal()).await;
    assert_eq!(failed.status.as_ref().unwrap().phase, Some(RunPhase::Failed));
    let message = task_of(&failed, "test").message.unwrap_or_default();
    assert!(message.contains("Pod build-web-test-0 already exists and is not this run's"), "{message}");
    wait_warning(&ns, "build-web", "NameCollision").await;
    let ok = wait_phase(&ns, "build", |p| p.is_terminal()).await;
    assert_eq!(ok.status.unwrap().phase, Some(RunPhase::Succeeded), "the pod's owner is not disturbed");
    ns.done().await;
}

#[tokio::test]
async fn a_run_created_again_under_the_same_name_never_adopts_its_predecessors_pods() {
    let ns = TestNs::new("recreate").await;
    let _c = ns.controller("alpha");
    ns.apply(&workflow("once", "", &[task("t", &[], "1s", 0, "")]));
    ns.apply(&run("r1", "once", ""));
    let first = wait_phase(&ns, "r1", |p| p.is_terminal()).await;
    assert_eq!(first.status.unwrap().phase, Some(RunPhase::Succeeded));

    // Deleted with its pods orphaned: the finished pod r1-t-0 stays, owned
    // by nobody. The new r1 must not count it as its own success.
    ns.kubectl(&["delete", "wfi", "r1", "--cascade=orphan", "--wait=true"], None);
    ns.apply(&run("r1", "once", ""));
    let second = wait_phase(&ns, "r1", |p| p.is_terminal()).await;
    assert_eq!(second.status.as_ref().unwrap().phase, Some(RunPhase::Failed), "a leftover pod is a collision, not a success");
    assert!(task_of(&second, "t").message.unwrap_or_default().contains("belongs to no controller"));
    wait_warning(&ns, "r1", "NameCollision").await;

    // Deleted normally and created again at once: the new run waits for the
    // garbage collector and runs a pod of its own.
    ns.kubectl(&["delete", "wfi", "r1", "--wait=true"], None);
    ns.api::<Pod>().delete("r1-t-0", &DeleteParams::default()).await.ok();
    ns.apply(&run("r2", "once", ""));
    wait_phase(&ns, "r2", |p| p.is_terminal()).await;
    ns.kubectl(&["delete", "wfi", "r2", "--wait=false"], None);
    ns.apply(&run("r2", "once", ""));
    let third = wait_phase(&ns, "r2", |p| p.is_terminal()).await;
    assert_eq!(third.status.as_ref().unwrap().phase, Some(RunPhase::Succeeded));
    let pods = pods_of(&ns, "r2").await;
    assert_eq!(pods.len(), 1);
    assert_eq!(pods[0].owner_references()[0].uid, third.uid().unwrap(), "the pod that counted is the new run's own");
    ns.done().await;
}

#[tokio::test]
async fn child_runs_that_would_share_a_name_are_refused_by_validation() {
    let ns = TestNs::new("child-names").await;
    let _c = ns.controller("alpha");
    let tasks = ["    - name: load\n      workflowRef: {name: x}\n", "    - name: load-1\n      workflowRef: {name: x}\n"];
    ns.apply(&workflow("clash", "", &tasks.map(String::from)));
    let workflows: Api<Workflow> = ns.api();
    let cond = wait_for("the workflow's Valid condition", RUN_TIMEOUT, || async {
        let wf = workflows.get("clash").await.map_err(|e| e.to_string())?;
        wf.status.unwrap_or_default().conditions.into_iter().find(|c| c.type_ == "Valid").ok_or("no condition yet".to_string())
    })
    .await;
    assert_eq!(cond.status, "False");
    assert!(cond.message.contains("task \"load-1\": its child run would have the same name"), "{}", cond.message);
    ns.done().await;
}

/// A ValidatingAdmissionPolicy (and its binding), both named
/// `<prefix>-<namespace>`, that refuses every request matching `rule` in
/// the test's namespace with `message`: a stand-in for an API server that
/// refuses one kind of call.
pub(crate) fn deny_policy(ns: &TestNs, prefix: &str, rule: &str, message: &str) -> (String, String) {
    let name = format!("{prefix}-{}", ns.name);
    let yaml = format!(
        "apiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingAdmissionPolicy\nmetadata: {{name: {name}}}\nspec:\n\
         \x20 failurePolicy: Fail\n  matchConstraints:\n    resourceRules:\n    - {rule}\n\
         \x20 validations:\n  - {{expression: \"false\", message: \"{message}\", reason: Forbidden}}\n---\n\
         apiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingAdmissionPolicyBinding\nmetadata: {{name: {name}}}\nspec:\n\
         \x20 policyName: {name}\n  validationActions: [Deny]\n  matchResources:\n    namespaceSelector: {{matchLabels: {{kubernetes.io/metadata.name: {}}}}}\n",
        ns.name
    );
    (name, yaml)
}

pub(crate) fn remove_policy(ns: &TestNs, name: &str) {
    ns.kubectl(&["delete", "validatingadmissionpolicybinding", name], None);
    ns.kubectl(&["delete", "validatingadmissionpolicy", name], None);
}

#[tokio::test]
async fn cleanup_of_a_stopped_run_is_retried_until_its_pods_are_gone_even_by_a_new_owner() {
    let ns = TestNs::new("cleanup").await;
    let mut c = [ns.controller("alpha"), ns.controller("beta")];
    ns.apply(&workflow("long", "", &[task("t", &[], "90s", 0, "")]));
    ns.apply(&run("c1", "long", ""));
    let pods: Api<Pod> = ns.api();
    wait_for("pod c1-t-0", RUN_TIMEOUT, || async {
        pods.get_opt("c1-t-0").await.map_err(|e| e.to_string())?.map(|_| ()).ok_or("not yet".to_string())
    })
    .await;
    let rule = "{apiGroups: [\"\"], apiVersions: [v1], operations: [DELETE], resources: [pods]}";
    let (policy, yaml) = deny_policy(&ns, "block-deletes", rule, "pod deletes are blocked by the test");
    ns.apply(&yaml);
    wait_for("the policy to refuse pod deletes", Duration::from_secs(30), || async {
        match pods.delete("c1-t-0", &DeleteParams { dry_run: true, ..Default::default() }).await {
            Err(kube::Error::Api(s)) if s.message.contains("blocked by the test") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    patch_spec(&ns, "c1", serde_json::json!({"shutdown": "Stop"})).await;
    let stopped = wait_phase(&ns, "c1", |p| p == RunPhase::Stopped).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pod = pods.get("c1-t-0").await.unwrap();
    assert!(pod.metadata.deletion_timestamp.is_none(), "the delete was refused, so the pod runs on");
    assert!(!stopped.status.as_ref().unwrap().cleaned_up());

    // The owner dies with its cleanup unfinished; the survivor takes the
    // (finished, not yet idle) run over and finishes the cleanup.
    let owner = stopped.status.unwrap().owner.unwrap().controller;
    c.iter_mut().find(|p| p.identity == owner).unwrap().kill();
    ns.kubectl(&["delete", "validatingadmissionpolicybinding", &policy], None);
    wait_for("the pod of the stopped run to be deleted", Duration::from_secs(40), || async {
        match pods.get_opt("c1-t-0").await.map_err(|e| e.to_string())? {
            Some(p) if p.metadata.deletion_timestamp.is_none() => Err(format!("still running: {:?}", p.status.and_then(|s| s.phase))),
            _ => Ok(()),
        }
    })
    .await;
    let done = wait_for("the run to be cleaned up", Duration::from_secs(30), || async {
        let r = ns.api::<WorkflowInstance>().get("c1").await.map_err(|e| e.to_string())?;
        if r.status.as_ref().is_some_and(|s| s.cleaned_up()) { Ok(r) } else { Err("not yet".into()) }
    })
    .await;
    assert_ne!(done.status.unwrap().owner.unwrap().controller, owner);
    ns.kubectl(&["delete", "validatingadmissionpolicy", &policy], None);
    ns.done().await;
}

#[tokio::test]
async fn retry_failed_while_a_run_is_going_is_refused_with_an_event() {
    let ns = TestNs::new("retry-early").await;
    let _c = ns.controller("alpha");
    ns.apply(&workflow("flaky", "", &[task("t", &[], "3s", 1, "")]));
    ns.apply(&run("f1", "flaky", ""));
    wait_phase(&ns, "f1", |p| p == RunPhase::Running).await;
    patch_spec(&ns, "f1", serde_json::json!({"retryFailed": 1})).await;
    wait_warning(&ns, "f1", "RetryIgnored").await;
    let failed = wait_phase(&ns, "f1", |p| p.is_terminal()).await;
    assert_eq!(failed.status.as_ref().unwrap().phase, Some(RunPhase::Failed));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = get(&ns, "f1").await;
    assert_eq!(after.status.as_ref().unwrap().phase, Some(RunPhase::Failed), "no surprise retry once it ended");
    assert_eq!(task_of(&after, "t").attempts, 1);
    // Asked again once it ended, it re-runs.
    patch_spec(&ns, "f1", serde_json::json!({"retryFailed": 2})).await;
    wait_for("a second attempt", RUN_TIMEOUT, || async {
        let r = ns.api::<WorkflowInstance>().get("f1").await.map_err(|e| e.to_string())?;
        let attempts = task_of(&r, "t").attempts;
        if attempts == 2 { Ok(()) } else { Err(format!("{attempts} attempts")) }
    })
    .await;
    ns.done().await;
}

#[tokio::test]
async fn a_tick_whose_run_name_is_taken_by_another_run_is_a_visible_error() {
    let ns = TestNs::new("tick-collide").await;
    let _c = ns.controller("alpha");
    // Runs made by hand under the names the next ticks will want.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let first = (now / 5 + 2) * 5;
    ns.apply(&workflow("other", "", &[task("t", &[], "1s", 0, "")]));
    for tick in (first..first + 30).step_by(5) {
        ns.apply(&run(&format!("nightly-{tick}"), "other", ""));
    }
    let settings = "  schedule: {cron: \"*/5 * * * * *\", startingDeadlineSeconds: 60}\n";
    ns.apply(&workflow("nightly", settings, &[task("t", &[], "1s", 0, "")]));
    wait_warning(&ns, "nightly", "NameCollision").await;
    let workflows: Api<Workflow> = ns.api();
    let cond = wait_for("condition TickStarted=False", Duration::from_secs(30), || async {
        let wf = workflows.get("nightly").await.map_err(|e| e.to_string())?;
        let c = wf.status.unwrap_or_default().conditions.into_iter().find(|c| c.type_ == "TickStarted");
        c.filter(|c| c.status == "False").ok_or("not yet".to_string())
    })
    .await;
    assert_eq!(cond.reason, "NameCollision");
    assert!(cond.message.contains("already exists and is not this schedule's"), "{}", cond.message);
    let taken = get(&ns, &format!("nightly-{first}")).await;
    assert!(taken.labels().get("baton.dev/scheduled-by").is_none(), "the hand-made run is left alone");
    ns.done().await;
}

#[tokio::test]
async fn a_runs_params_and_workflow_cannot_change_once_it_exists() {
    let ns = TestNs::new("immutable").await;
    let _c = ns.controller("alpha");
    ns.apply(&workflow("slow", "", &[task("t", &[], "20s", 0, "")]));
    ns.apply(&run("p1", "slow", "date: \"2026-01-01\""));
    wait_phase(&ns, "p1", |p| p == RunPhase::Running).await;
    let api: Api<WorkflowInstance> = ns.api();
    for (patch, text) in [
        (serde_json::json!({"spec": {"params": {"date": "2030-01-01"}}}), "params cannot change"),
        (serde_json::json!({"spec": {"workflowRef": {"name": "other"}}}), "workflowRef cannot change"),
    ] {
        let err = api.patch("p1", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch)).await.unwrap_err();
        assert!(err.to_string().contains(text), "{err}");
    }
    patch_spec(&ns, "p1", serde_json::json!({"shutdown": "Stop"})).await;
    let stopped = wait_phase(&ns, "p1", |p| p.is_terminal()).await;
    assert_eq!(stopped.status.unwrap().phase, Some(RunPhase::Stopped));
    ns.done().await;
}

#[tokio::test]
async fn runs_and_schedules_with_names_longer_than_a_label_value_work() {
    let ns = TestNs::new("long-names").await;
    let _c = ns.controller("alpha");
    let wf = format!("nightly-{}", "w".repeat(60));
    let settings = "  schedule: {cron: \"*/3 * * * * *\", startingDeadlineSeconds: 60}\n";
    ns.apply(&workflow(&wf, settings, &[task("t", &[], "1s", 0, "")]));
    let name = format!("run-{}", "r".repeat(70));
    ns.apply(&workflow("short", "", &[task("t", &[], "1s", 0, "")]));
    ns.apply(&run(&name, "short", ""));
    let done = wait_phase(&ns, &name, |p| p.is_terminal()).await;
    assert_eq!(done.status.unwrap().phase, Some(RunPhase::Succeeded));
    let api: Api<WorkflowInstance> = ns.api();
    wait_for("a finished tick of the long-named schedule", RUN_TIMEOUT, || async {
        let runs = api.list(&ListParams::default()).await.map_err(|e| e.to_string())?.items;
        let ticked = runs.iter().any(|r| {
            r.owner_references().iter().any(|o| o.name == wf) && r.status.as_ref().and_then(|s| s.phase) == Some(RunPhase::Succeeded)
        });
        if ticked { Ok(()) } else { Err(format!("{} runs", runs.len())) }
    })
    .await;
    ns.done().await;
}

#[tokio::test]
async fn a_tick_whose_run_the_api_server_refuses_is_visible_and_the_schedule_goes_on() {
    let ns = TestNs::new("tick-refused").await;
    let _c = ns.controller("alpha");
    let rule = "{apiGroups: [baton.dev], apiVersions: [\"*\"], operations: [CREATE], resources: [workflowinstances]}";
    let (policy, yaml) = deny_policy(&ns, "refuse-runs", rule, "runs are refused by the test");
    ns.apply(&yaml);
    let settings = "  schedule: {cron: \"*/4 * * * * *\", startingDeadlineSeconds: 6}\n";
    ns.apply(&workflow("ticker", settings, &[task("t", &[], "1s", 0, "")]));
    wait_warning(&ns, "ticker", "CreateRefused").await;
    let workflows: Api<Workflow> = ns.api();
    let cond = wait_for("condition TickStarted=False", Duration::from_secs(30), || async {
        let wf = workflows.get("ticker").await.map_err(|e| e.to_string())?;
        let c = wf.status.unwrap_or_default().conditions.into_iter().find(|c| c.type_ == "TickStarted");
        c.filter(|c| c.status == "False").ok_or("not yet".to_string())
    })
    .await;
    assert!(cond.message.contains("runs are refused by the test"), "{}", cond.message);
    remove_policy(&ns, &policy);
    // Once the API server accepts runs again, the ticks go on: none of them
    // later than its starting deadline.
    let api: Api<WorkflowInstance> = ns.api();
    let started = wait_for("a tick's run", Duration::from_secs(40), || async {
        let runs = api.list(&ListParams::default().labels("baton.dev/scheduled-by=ticker")).await.map_err(|e| e.to_string())?.items;
        runs.into_iter().next().ok_or("none yet".to_string())
    })
    .await;
    let tick: i64 = started.name_any().rsplit_once('-').unwrap().1.parse().unwrap();
    let created = started.metadata.creation_timestamp.as_ref().unwrap().0.as_second();
    assert!(created - tick <= 6, "run {} created {}s after its tick", started.name_any(), created - tick);
    ns.done().await;
}
