//! podGC: which ended task pods are deleted when, that the status keeps
//! what they reported, and that the run is cleaned up only once they are
//! gone.

use super::{Sim, task};
use crate::api::{PodGc, RetryPolicy, RunPhase, TaskPhase, WorkflowSpec};
use crate::planner::Action;

/// `a`, then `b` (reading a's result), with this policy.
fn chain(policy: PodGc) -> WorkflowSpec {
    let mut b = task("b", &["a"]);
    b.when = Some("tasks.a.outputs.result == 'ok'".into());
    WorkflowSpec { tasks: vec![task("a", &[]), b], pod_gc: policy, ..Default::default() }
}

fn deletes(actions: &[Action]) -> Vec<&str> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::DeletePod { name } => Some(name.as_str()),
            _ => None,
        })
        .collect()
}

fn pods(sim: &Sim) -> Vec<&str> {
    sim.observed.pods.iter().map(|p| p.name.as_str()).collect()
}

#[test]
fn never_keeps_every_pod() {
    let mut sim = Sim::new(chain(PodGc::Never));
    sim.step(0);
    sim.end_pod_with("r-a-0", 0, Some("ok"));
    assert!(deletes(&sim.step(1).actions).is_empty());
    sim.end_pod("r-b-0", 0);
    let plan = sim.step(2);
    assert_eq!(sim.status.phase, Some(RunPhase::Succeeded));
    assert!(deletes(&plan.actions).is_empty());
    assert!(sim.status.cleaned_up(), "nothing runs: cleaned up with its pods kept");
    assert_eq!(pods(&sim), ["r-a-0", "r-b-0"]);
}

#[test]
fn on_task_success_deletes_a_succeeded_pod_in_the_write_that_records_it() {
    let mut wf = chain(PodGc::OnTaskSuccess);
    wf.tasks[1].retries = Some(RetryPolicy { limit: 1, backoff_seconds: 0 });
    let mut sim = Sim::new(wf);
    sim.step(0);
    sim.end_pod_with("r-a-0", 0, Some("ok\n"));
    let plan = sim.step(1);
    // The status this plan writes records what the pod reported; the
    // delete follows that write.
    let a = plan.status.tasks.iter().find(|t| t.name == "a").unwrap();
    assert_eq!((a.phase, a.exit_code), (TaskPhase::Succeeded, Some(0)));
    assert_eq!(a.outputs.as_ref().and_then(|o| o.result.as_deref()), Some("ok"));
    assert_eq!(deletes(&plan.actions), ["r-a-0"], "while the run goes on");
    assert_eq!(sim.phase("b"), TaskPhase::Running);
    // b fails, is retried, fails again: its failed pods stay.
    sim.end_pod_with("r-b-0", 3, Some("boom"));
    assert!(deletes(&sim.step(2).actions).is_empty());
    sim.step(3);
    sim.end_pod_with("r-b-1", 4, Some("boom again"));
    let plan = sim.step(4);
    assert_eq!(sim.status.phase, Some(RunPhase::Failed));
    assert!(deletes(&plan.actions).is_empty());
    assert_eq!(pods(&sim), ["r-b-0", "r-b-1"]);
    assert_eq!(sim.entry("b").exit_code, Some(4));
    assert!(sim.status.cleaned_up());
}

#[test]
fn on_task_success_deletes_the_pods_of_succeeded_fan_out_instances() {
    let mut fan = task("each", &[]);
    fan.with_items = Some(vec![serde_json::json!(1), serde_json::json!(2)]);
    let mut sim = Sim::new(WorkflowSpec { tasks: vec![fan], pod_gc: PodGc::OnTaskSuccess, ..Default::default() });
    sim.step(0);
    assert_eq!(pods(&sim), ["r-each-0-0", "r-each-1-0"]);
    sim.end_pod("r-each-0-0", 0);
    sim.end_pod("r-each-1-0", 1);
    let plan = sim.step(1);
    assert_eq!(sim.entry("each(0)").pod_name, None, "a finished instance leaves its pod name out");
    assert_eq!(deletes(&plan.actions), ["r-each-0-0"]);
    assert_eq!(pods(&sim), ["r-each-1-0"], "the failed instance's pod stays");
}

#[test]
fn on_run_success_deletes_every_pod_once_the_run_succeeded() {
    let mut sim = Sim::new(chain(PodGc::OnRunSuccess));
    sim.step(0);
    sim.end_pod_with("r-a-0", 0, Some("ok"));
    assert!(deletes(&sim.step(1).actions).is_empty(), "kept while the run goes on");
    sim.end_pod("r-b-0", 0);
    let plan = sim.step(2);
    assert_eq!(plan.status.phase, Some(RunPhase::Succeeded));
    assert_eq!(deletes(&plan.actions), ["r-a-0", "r-b-0"]);
    assert!(!plan.status.cleaned_up(), "not cleaned up (so not idle) until the pods are gone");
    let plan = sim.step(3);
    assert!(plan.actions.is_empty() && sim.status.cleaned_up());
    assert_eq!(sim.entry("a").outputs.as_ref().and_then(|o| o.result.as_deref()), Some("ok"), "status keeps the result");
    assert_eq!(sim.entry("b").exit_code, Some(0));
}

#[test]
fn on_run_success_keeps_the_pods_of_a_failed_run() {
    let mut sim = Sim::new(chain(PodGc::OnRunSuccess));
    sim.step(0);
    sim.end_pod("r-a-0", 2);
    let plan = sim.step(1);
    assert_eq!(sim.status.phase, Some(RunPhase::Failed));
    assert!(deletes(&plan.actions).is_empty());
    assert!(sim.status.cleaned_up());
}

#[test]
fn on_run_finished_deletes_every_pod_whatever_the_outcome_and_status_keeps_the_rest() {
    let mut sim = Sim::new(chain(PodGc::OnRunFinished));
    sim.step(0);
    sim.end_pod_with("r-a-0", 7, Some("disk full"));
    let plan = sim.step(1);
    assert_eq!(plan.status.phase, Some(RunPhase::Failed));
    assert_eq!(deletes(&plan.actions), ["r-a-0"]);
    // A delete that did not happen (API error, owner killed) is asked again.
    sim.observed.pods.push(crate::planner::ObservedPod {
        name: "r-a-0".into(),
        uid: "uid-a-0".into(),
        task: "a".into(),
        state: crate::planner::PodState::Failed,
        exit_code: Some(7),
        reason: None,
        message: Some("disk full".into()),
        deleting: false,
    });
    assert_eq!(deletes(&sim.step(2).actions), ["r-a-0"]);
    assert!(!sim.status.cleaned_up());
    sim.step(3);
    assert!(sim.status.cleaned_up());
    let a = sim.entry("a");
    assert_eq!(a.exit_code, Some(7));
    assert!(a.message.as_deref().unwrap().contains("disk full"), "{:?}", a.message);
}

#[test]
fn a_pod_being_deleted_is_not_deleted_again_and_a_running_one_is_the_cleanups() {
    let mut sim =
        Sim::new(WorkflowSpec { tasks: vec![task("a", &[]), task("b", &[])], pod_gc: PodGc::OnRunFinished, ..Default::default() });
    sim.step(0);
    sim.end_pod("r-a-0", 1);
    sim.observed.pods.iter_mut().find(|p| p.name == "r-a-0").unwrap().deleting = true;
    let plan = sim.step(1);
    assert_eq!(plan.status.phase, Some(RunPhase::Failed), "failFast");
    assert_eq!(deletes(&plan.actions), ["r-b-0"], "b's running pod is stopped once, by the run's cleanup");
}

#[test]
fn the_runs_own_pod_gc_wins() {
    let mut sim = Sim::new(chain(PodGc::OnRunFinished));
    sim.spec.pod_gc = Some(PodGc::Never);
    sim.step(0);
    sim.end_pod("r-a-0", 1);
    assert!(deletes(&sim.step(1).actions).is_empty());
    assert!(sim.status.cleaned_up());
}
