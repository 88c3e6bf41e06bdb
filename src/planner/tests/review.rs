//! Adversarial review of cb285bb: each test states what DESIGN.md / issue 12
//! promise and fails where the planner breaks it.

use super::{Sim, task, with_exit};
use crate::api::{RunPhase, Shutdown, TaskPhase, TaskWorkflowRef, WorkflowSpec};
use crate::planner::{Action, PodState};

/// R1. A run that is stopped before any controller first planned it (created
/// with shutdown: Stop, or stopped while no one owned it) and that has exit
/// tasks never ends: phase stays Pending, the exit tasks never start.
#[test]
fn review_stop_before_first_step_with_exit_tasks_ends_the_run() {
    let mut sim = Sim::new(with_exit(vec![task("a", &[])], vec![task("notify", &[])]));
    sim.spec.shutdown = Shutdown::Stop;
    for now in 0..5 {
        sim.step(now);
        sim.end_running(0, None);
    }
    assert_eq!(sim.status.dag_phase, Some(RunPhase::Stopped));
    assert_eq!(
        sim.status.phase,
        Some(RunPhase::Stopped),
        "Stop runs the exit tasks and ends the run; got phase {:?}, notify {:?}",
        sim.status.phase,
        sim.entry("notify").phase
    );
}

/// R2. Pause, then Stop: with exit tasks the run stays Paused for ever (the
/// exit tasks only start in phase Running); without them it ends Stopped.
#[test]
fn review_stop_of_a_paused_run_with_exit_tasks_ends_the_run() {
    let mut sim = Sim::new(with_exit(vec![task("a", &[]), task("b", &["a"])], vec![task("notify", &[])]));
    sim.step(0);
    sim.spec.suspend = true;
    sim.step(1);
    assert_eq!(sim.status.phase, Some(RunPhase::Paused));
    sim.spec.shutdown = Shutdown::Stop;
    for now in 2..8 {
        sim.step(now);
        sim.end_running(0, None);
    }
    assert_eq!(sim.status.phase, Some(RunPhase::Stopped), "notify is {:?}", sim.entry("notify").phase);
}

/// R3. An exit task's `when` is not evaluated again after retryFailed (it is
/// only evaluated while attempts == 0), so an on-failure notifier that ran
/// in the first round also runs after the retried DAG succeeded, with
/// run.phase = Succeeded.
#[test]
fn review_exit_task_when_is_decided_again_after_retry_failed() {
    let mut notify = task("notify", &[]);
    notify.when = Some("run.phase != 'Succeeded'".into());
    let mut sim = Sim::new(with_exit(vec![task("a", &[])], vec![notify]));
    sim.step(0);
    sim.end_pod("r-a-0", 1);
    sim.step(1);
    assert_eq!(sim.running_pods(), ["r-notify-0"], "DAG failed: the notifier runs");
    sim.end_pod("r-notify-0", 0);
    sim.step(2);
    assert_eq!(sim.status.phase, Some(RunPhase::Failed));
    sim.spec.retry_failed = 1;
    sim.step(3);
    sim.end_pod("r-a-1", 0);
    sim.step(4);
    assert_eq!(sim.status.dag_phase, Some(RunPhase::Succeeded), "the retried DAG succeeded");
    assert_eq!(
        sim.entry("notify").phase,
        TaskPhase::Skipped,
        "when 'run.phase != Succeeded' is false now; running pods: {:?}",
        sim.running_pods()
    );
}

/// R4. A run that failed only because an exit task failed cannot be retried:
/// retryFailed looks at DAG tasks only and says "nothing to re-run".
#[test]
fn review_retry_failed_reruns_a_failed_exit_task() {
    let mut sim = Sim::new(with_exit(vec![task("a", &[])], vec![task("notify", &[])]));
    sim.step(0);
    sim.end_pod("r-a-0", 0);
    sim.step(1);
    sim.end_pod("r-notify-0", 1);
    sim.step(2);
    assert_eq!(sim.status.phase, Some(RunPhase::Failed));
    sim.spec.retry_failed = 1;
    let plan = sim.step(3);
    assert!(
        plan.actions.contains(&Action::CreatePod { task: "notify".into(), attempt: 1 }),
        "the failed exit task is re-run; got actions {:?}, events {:?}",
        plan.actions,
        plan.events.iter().map(|e| &e.message).collect::<Vec<_>>()
    );
}

/// R5. retryFailed on a Succeeded run re-runs its exit tasks (a second
/// notification) as soon as some branch was skipped by its `when`: the
/// WhenFalse task counts as "to re-run". Compare
/// retry_failed_on_a_succeeded_run_changes_nothing_but_says_so.
#[test]
fn review_retry_failed_on_a_succeeded_run_with_a_when_skip_changes_nothing() {
    let mut b = task("b", &["a"]);
    b.when = Some("false".into());
    let mut sim = Sim::new(with_exit(vec![task("a", &[]), b], vec![task("notify", &[])]));
    sim.step(0);
    sim.end_pod("r-a-0", 0);
    sim.step(1);
    sim.end_pod("r-notify-0", 0);
    sim.step(2);
    assert_eq!(sim.status.phase, Some(RunPhase::Succeeded));
    sim.spec.retry_failed = 1;
    let plan = sim.step(3);
    assert_eq!(sim.status.phase, Some(RunPhase::Succeeded), "nothing failed; events {:?}", plan.events);
    assert!(plan.actions.is_empty(), "the exit task runs a second time: {:?}", plan.actions);
}

/// R6. failFast: a task whose `when` fails at run time (or whose withParam is
/// not a list) fails inside start_ready, after failFast was enforced; its
/// ready siblings are started in the same status write and stopped in the
/// next. With failFast no task may start after one failed.
#[test]
fn review_fail_fast_no_sibling_starts_in_the_write_that_fails_a_when() {
    let mut broken = task("broken", &["gen"]);
    broken.when = Some("tasks.gen.outputs.json.missing > 1".into());
    let mut badparam = task("badparam", &["gen"]);
    badparam.with_param = Some("{{tasks.gen.outputs.result}}".into());
    let mut wrong = Vec::new();
    for failing in [broken, badparam] {
        let name = failing.name.clone();
        let wf = WorkflowSpec { tasks: vec![task("gen", &[]), failing, task("deploy", &["gen"])], ..Default::default() };
        let mut sim = Sim::new(wf);
        sim.step(0);
        sim.end_pod_with("r-gen-0", 0, Some(r#"{"n": 2}"#));
        let plan = sim.step(1);
        assert_eq!(sim.entry(&name).phase, TaskPhase::Failed);
        if plan.actions.contains(&Action::CreatePod { task: "deploy".into(), attempt: 0 }) {
            wrong.push(format!("{name} failed in this write, yet deploy is started with failFast: {:?}", plan.actions));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// R7. A `when` is evaluated synchronously on the reconcile's thread with no
/// cost limit: a 300-byte expression (nested comprehensions) runs for
/// hours, blocking a tokio worker (the reconcile timeout cannot fire: the
/// future is never polled) and, with two such runs on a 2-core pod, lease
/// renewal; the run is then failed over and hangs the next controller.
#[test]
fn review_a_when_cannot_burn_cpu_for_ever() {
    let list = "[0,1,2,3,4,5,6,7,8,9]";
    let mut expr = "true".to_string();
    for v in ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"] {
        expr = format!("{list}.all({v}, {expr})");
    }
    assert!(expr.len() < 400, "{}", expr.len());
    let mut t = task("t", &[]);
    t.when = Some(expr.clone());
    let wf = WorkflowSpec { tasks: vec![t], ..Default::default() };
    // Refused by validation; a run that has it anyway (its Workflow's copy)
    // fails the task at once instead of evaluating it.
    let problems = crate::dag::validate(&wf);
    assert!(problems.iter().any(|p| p.message.contains("nest 10 deep, at most 1")), "{problems:?}");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sim = Sim::new(wf);
        let started = std::time::Instant::now();
        sim.step(0);
        assert_eq!(sim.phase("t"), TaskPhase::Failed);
        let _ = tx.send(started.elapsed());
    });
    match rx.recv_timeout(std::time::Duration::from_secs(20)) {
        Ok(took) => assert!(took < std::time::Duration::from_secs(1), "one planner step took {took:?}"),
        Err(_) => panic!("one planner step evaluating a {}-byte when is still running after 20 s", expr.len()),
    }
}

/// R8. Status size: withItems is copied into every instance entry on top
/// of the spec snapshot, and nothing but results is capped. A Workflow of
/// about 1 MB (1,000 items of 1 KB, accepted by the API server) gives a run
/// whose status passes etcd's 1.5 MiB request limit at the fan-out: the
/// status write is refused on every reconcile and the run hangs.
#[test]
fn review_status_of_a_with_items_fan_out_stays_under_the_object_limit() {
    let mut p = task("p", &[]);
    p.with_items = Some((0..1000).map(|i| serde_json::json!({ "id": i, "blob": "x".repeat(1000) })).collect());
    let wf = WorkflowSpec { tasks: vec![p], ..Default::default() };
    let spec_bytes = serde_json::to_vec(&wf).unwrap().len();
    assert!(spec_bytes < 1_100_000, "the Workflow fits the API server: {spec_bytes}");
    let mut sim = Sim::new(wf);
    sim.status.workflow_spec = Some(sim.workflow.clone());
    sim.step(0);
    let bytes = serde_json::to_vec(&sim.status).unwrap().len();
    assert!(bytes < 1_572_864, "status after the fan-out: {bytes} bytes (workflow {spec_bytes})");
}

/// R9. Exit tasks start in the same write in which the DAG's last running
/// task is stopped (failFast / Stop): a child run (sub-workflow) that was
/// only asked to stop is still running, with its own pods and its own exit
/// tasks, while the parent's cleanup exit task already runs.
#[test]
fn review_exit_tasks_wait_until_nothing_of_the_dag_runs() {
    let mut sub = task("sub", &[]);
    sub.container = None;
    sub.workflow_ref = Some(TaskWorkflowRef { name: "child".into(), ..Default::default() });
    let mut sim = Sim::new(with_exit(vec![task("a", &[]), sub], vec![task("cleanup", &[])]));
    sim.step(0);
    sim.end_pod("r-a-0", 1); // failFast stops `sub`
    let plan = sim.step(1);
    let child_running = sim.observed.children.iter().any(|c| c.phase.is_none());
    assert!(child_running);
    assert!(
        !plan.actions.contains(&Action::CreatePod { task: "cleanup".into(), attempt: 0 }),
        "cleanup starts while child run r-sub is still running: {:?}",
        plan.actions
    );
}

/// R10. A fan-out whose instances were all still Pending when failFast (or
/// the deadline, or the results cap) ended the DAG is reported as
/// `Skipped`/`WhenFalse` "every item was skipped by when" — the reason that
/// *satisfies* dependants.
#[test]
fn review_a_fan_out_ended_by_fail_fast_is_not_when_false() {
    let mut p = task("p", &[]);
    p.with_items = Some((0..3).map(|i| serde_json::json!(i)).collect());
    let mut wf = WorkflowSpec { tasks: vec![task("slow", &[]), task("bad", &[]), p], ..Default::default() };
    wf.parallelism = Some(2);
    let mut sim = Sim::new(wf);
    sim.step(0);
    assert_eq!(sim.running_pods(), ["r-slow-0", "r-bad-0"]);
    sim.end_pod("r-bad-0", 1);
    sim.step(1);
    let p = sim.entry("p");
    assert_ne!(p.reason.as_deref(), Some(crate::planner::REASON_WHEN_FALSE), "p: {:?} {:?} {:?}", p.phase, p.reason, p.message);
    let _ = PodState::Running;
}

/// R11. A `when` that reads `tasks` generically (`tasks.exists(...)`, a
/// natural "did anything fail?" gate in an exit task) keeps the result of
/// every task and instance, so results nobody reads count against the
/// 256 KiB cap: a run whose tasks all succeed ends Failed (ResultsTooLarge).
#[test]
fn review_a_generic_tasks_when_does_not_fail_a_good_run_on_the_results_cap() {
    // A when that reads tasks without naming them would keep every result
    // (and could read tasks that are not upstream): refused by validation.
    let mut p = task("p", &[]);
    p.with_items = Some((0..100).map(|i| serde_json::json!(i)).collect());
    let mut notify = task("notify", &[]);
    notify.when = Some("tasks.exists(t, tasks[t].phase == 'Failed')".into());
    let wf = with_exit(vec![p], vec![notify]);
    let problems = crate::dag::validate(&wf);
    assert!(problems.iter().any(|p| p.message.starts_with("when reads tasks without naming each task")), "{problems:?}");
}
