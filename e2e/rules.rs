//! Execution rules end to end: parallelism, timeouts, failFast: false,
//! requests made before a run starts, the run's own copy of its workflow,
//! sub-workflow failure and stop, and bad input that leaves others alone.

use std::time::Duration;

use baton::api::{RunPhase, TaskPhase, WorkflowInstance};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams};

use crate::runs::{pods_of, run, task, wait_phase, workflow};
use crate::support::{TestNs, wait_for};

fn task_of(run: &WorkflowInstance, name: &str) -> baton::api::TaskStatus {
    run.status.as_ref().unwrap().tasks.iter().find(|t| t.name == name).cloned().unwrap()
}

fn finished_message(run: &WorkflowInstance) -> String {
    let c = run.status.as_ref().unwrap().conditions.iter().find(|c| c.type_ == "Finished").cloned().expect("Finished condition");
    format!("{}: {}", c.reason, c.message)
}

#[tokio::test]
async fn parallelism_timeouts_and_fail_fast_false() {
    let ns = TestNs::new("rules").await;
    let _c = ns.controller("c1");
    let mut tasks: Vec<String> = (0..5).map(|i| task(&format!("w{i}"), &[], "1s", 0, "")).collect();
    tasks.push(task("bad", &[], "500ms", 2, ""));
    tasks.push(task("after-bad", &["bad"], "500ms", 0, ""));
    tasks.push(task("slow", &[], "20s", 0, "      timeoutSeconds: 2\n"));
    ns.apply(&workflow("rules", "  parallelism: 2\n  failFast: false\n", &tasks));
    ns.apply(&workflow("deadline", "  activeDeadlineSeconds: 3\n", &[task("long", &[], "30s", 0, "")]));
    ns.apply(&run("p1", "rules", ""));
    ns.apply(&run("d1", "deadline", ""));
    // Parallelism is checked all along, not only at the end.
    let pods: Api<Pod> = ns.api();
    let mut most = 0;
    let api: Api<WorkflowInstance> = ns.api();
    loop {
        let running = pods_of(&ns, "p1")
            .await
            .iter()
            .filter(|p| {
                matches!(p.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Pending" | "Running"))
                    && p.metadata.deletion_timestamp.is_none()
            })
            .count();
        most = most.max(running);
        let r = api.get("p1").await.unwrap();
        if r.status.as_ref().and_then(|s| s.phase).is_some_and(RunPhase::is_terminal) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(most <= 2, "at most 2 task pods at once, saw {most}");
    drop(pods);
    let p1 = api.get("p1").await.unwrap();
    assert_eq!(p1.status.as_ref().unwrap().phase, Some(RunPhase::Failed));
    assert_eq!(task_of(&p1, "after-bad").phase, TaskPhase::Skipped, "dependants of a failed task are skipped");
    for i in 0..5 {
        assert_eq!(task_of(&p1, &format!("w{i}")).phase, TaskPhase::Succeeded, "independent branches finish");
    }
    let slow = task_of(&p1, "slow");
    assert_eq!(slow.phase, TaskPhase::Failed);
    assert!(slow.message.unwrap().contains("timed out after 2s"));
    let d1 = wait_phase(&ns, "d1", |p| p.is_terminal()).await;
    assert_eq!(d1.status.as_ref().unwrap().phase, Some(RunPhase::Failed));
    assert_eq!(finished_message(&d1), "DeadlineExceeded: run still going after activeDeadlineSeconds=3");
    ns.done().await;
}

#[tokio::test]
async fn requests_made_before_start_and_the_runs_own_copy_of_its_workflow() {
    let ns = TestNs::new("pending").await;
    ns.apply(&workflow("two", "", &[task("one", &[], "2s", 0, ""), task("two", &["one"], "1s", 0, "")]));
    // Requests made while nobody runs the runs yet (no controller).
    ns.apply(&run("paused", "two", "").replace("spec: {", "spec: {suspend: true, "));
    ns.apply(&run("stopped", "two", "").replace("spec: {", "spec: {shutdown: Stop, "));
    ns.apply(&run("edited", "two", ""));
    let _c = ns.controller("c1");
    let paused = wait_phase(&ns, "paused", |p| p == RunPhase::Paused).await;
    assert!(pods_of(&ns, "paused").await.is_empty(), "a run paused before it started starts nothing");
    assert_eq!(paused.status.as_ref().unwrap().observed_generation, paused.metadata.generation);
    let stopped = wait_phase(&ns, "stopped", |p| p.is_terminal()).await;
    assert_eq!(stopped.status.as_ref().unwrap().phase, Some(RunPhase::Stopped));
    assert!(pods_of(&ns, "stopped").await.is_empty());
    // Edit, then delete, the Workflow while "edited" runs: it keeps its copy.
    wait_phase(&ns, "edited", |p| p == RunPhase::Running).await;
    ns.apply(&workflow("two", "", &[task("other", &[], "1s", 0, "")]));
    let workflows: Api<baton::api::Workflow> = ns.api();
    workflows.delete("two", &DeleteParams::default()).await.unwrap();
    let edited = wait_phase(&ns, "edited", |p| p.is_terminal()).await;
    assert_eq!(edited.status.as_ref().unwrap().phase, Some(RunPhase::Succeeded));
    let names: Vec<&str> = edited.status.as_ref().unwrap().tasks.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["one", "two"]);
    crate::runs::patch_spec(&ns, "paused", serde_json::json!({"suspend": false})).await;
    // Its Workflow is gone, but the run has its copy and finishes.
    let resumed = wait_phase(&ns, "paused", |p| p.is_terminal()).await;
    assert_eq!(resumed.status.as_ref().unwrap().phase, Some(RunPhase::Succeeded));
    ns.done().await;
}

#[tokio::test]
async fn failing_child_fails_its_task_and_stopping_the_parent_stops_the_child() {
    let ns = TestNs::new("children").await;
    let _c = ns.controller("c1");
    ns.apply(&workflow("failing", "", &[task("boom", &[], "500ms", 1, "")]));
    ns.apply(&workflow("sleepy", "", &[task("nap", &[], "60s", 0, "")]));
    let sub = |name: &str| format!("    - name: sub\n      workflowRef: {{name: {name}}}\n");
    ns.apply(&workflow("calls-failing", "", &[sub("failing")]));
    ns.apply(&workflow("calls-sleepy", "", &[sub("sleepy")]));
    // A workflow that reaches itself is refused; the other runs go on.
    ns.apply(&workflow("loop", "", &[sub("loop")]));
    ns.apply(&run("f", "calls-failing", ""));
    ns.apply(&run("s", "calls-sleepy", ""));
    ns.apply(&run("l", "loop", ""));
    let f = wait_phase(&ns, "f", |p| p.is_terminal()).await;
    assert_eq!(f.status.as_ref().unwrap().phase, Some(RunPhase::Failed));
    assert!(task_of(&f, "sub").message.unwrap().contains("child run f-sub ended Failed"));
    let l = wait_phase(&ns, "l", |p| p.is_terminal()).await;
    let valid = l.status.as_ref().unwrap().conditions.iter().find(|c| c.type_ == "Valid").unwrap().clone();
    assert!(valid.message.contains("workflowRef chain leads back to itself: loop -> loop"), "{}", valid.message);
    let api: Api<WorkflowInstance> = ns.api();
    wait_for("the child of s to run", Duration::from_secs(60), || async {
        let pods = pods_of(&ns, "s-sub").await;
        if pods.is_empty() { Err("no pod".to_string()) } else { Ok(()) }
    })
    .await;
    crate::runs::patch_spec(&ns, "s", serde_json::json!({"shutdown": "Stop"})).await;
    wait_phase(&ns, "s", |p| p == RunPhase::Stopped).await;
    let child = wait_phase(&ns, "s-sub", |p| p == RunPhase::Stopped).await;
    assert_eq!(child.spec.shutdown, baton::api::Shutdown::Stop, "the parent's stop reached the child");
    assert!(api.list(&ListParams::default().labels("baton.dev/parent=s")).await.unwrap().items.len() == 1);
    ns.done().await;
}
