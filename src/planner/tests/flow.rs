//! Data and control flow: results, `when`, fan-out, exit tasks.

use super::{Sim, at, task, with_exit};
use crate::api::{RunPhase, Shutdown, TaskPhase, TaskSpec, WorkflowSpec};
use crate::planner::{Action, PodState, REASON_UPSTREAM_FAILED, REASON_WHEN_FALSE};
use proptest::prelude::*;

fn with_command(mut t: TaskSpec, command: &str) -> TaskSpec {
    t.container.as_mut().unwrap().command = Some(vec![command.into()]);
    t
}

#[test]
fn a_result_is_kept_only_when_read_and_trimmed_of_one_newline() {
    let wf = WorkflowSpec {
        tasks: vec![task("gen", &[]), task("other", &[]), with_command(task("use", &["gen"]), "echo {{tasks.gen.outputs.result}}")],
        ..Default::default()
    };
    let mut sim = Sim::new(wf);
    sim.step(0);
    sim.end_pod_with("r-gen-0", 0, Some("hello\n"));
    sim.end_pod_with("r-other-0", 0, Some("ignored"));
    sim.step(1);
    assert_eq!(sim.entry("gen").outputs.as_ref().unwrap().result.as_deref(), Some("hello"));
    assert_eq!(sim.entry("other").outputs, None, "nothing reads it");
    assert_eq!(sim.running_pods(), ["r-use-0"]);
}

#[test]
fn a_failed_tasks_message_ends_with_its_log() {
    let mut sim = Sim::new(WorkflowSpec { tasks: vec![task("a", &[])], ..Default::default() });
    sim.step(0);
    sim.end_pod_with("r-a-0", 2, Some("line 1\nfatal: disk full\n"));
    sim.step(1);
    let message = sim.entry("a").message.clone().unwrap();
    assert!(message.starts_with("pod r-a-0 failed: exit code 2") && message.ends_with("fatal: disk full"), "{message}");
}

#[test]
fn when_false_skips_and_the_join_still_runs() {
    let mut branch = task("publish", &["check"]);
    branch.when = Some("tasks.check.outputs.result == 'ok'".into());
    let wf = WorkflowSpec { tasks: vec![task("check", &[]), branch, task("join", &["publish"])], ..Default::default() };
    let mut sim = Sim::new(wf);
    sim.step(0);
    sim.end_pod_with("r-check-0", 0, Some("not ok"));
    let plan = sim.step(1);
    assert_eq!(sim.phase("publish"), TaskPhase::Skipped);
    assert_eq!(sim.entry("publish").reason.as_deref(), Some(REASON_WHEN_FALSE));
    assert!(plan.events.iter().any(|e| e.reason == "TaskSkipped" && e.message.contains("tasks.check.outputs.result == 'ok'")));
    assert_eq!(sim.running_pods(), ["r-join-0"], "a task skipped by its when satisfies its dependants");
    sim.end_pod("r-join-0", 0);
    sim.step(2);
    assert_eq!(sim.status.phase, Some(RunPhase::Succeeded));
}

#[test]
fn when_true_runs_and_a_runtime_error_fails_the_task_with_the_cel_message() {
    let mut yes = task("yes", &["gen"]);
    yes.when = Some("tasks.gen.outputs.json.n > 1".into());
    let mut broken = task("broken", &["gen"]);
    broken.when = Some("tasks.gen.outputs.json.missing > 1".into());
    let wf = WorkflowSpec { tasks: vec![task("gen", &[]), yes, broken], fail_fast: Some(false), ..Default::default() };
    let mut sim = Sim::new(wf);
    sim.step(0);
    sim.end_pod_with("r-gen-0", 0, Some(r#"{"n": 2}"#));
    sim.step(1);
    assert_eq!(sim.running_pods(), ["r-yes-0"]);
    assert_eq!(sim.phase("broken"), TaskPhase::Failed);
    let message = sim.entry("broken").message.clone().unwrap();
    assert!(message.starts_with("when failed: "), "{message}");
}

#[test]
fn a_failed_dependency_skips_dependants_as_upstream_failed() {
    let wf = WorkflowSpec {
        tasks: vec![task("a", &[]), task("b", &["a"]), task("c", &["b"]), task("x", &[])],
        fail_fast: Some(false),
        ..Default::default()
    };
    let mut sim = Sim::new(wf);
    sim.step(0);
    sim.end_pod("r-a-0", 1);
    sim.step(1);
    for t in ["b", "c"] {
        assert_eq!((sim.phase(t), sim.entry(t).reason.as_deref()), (TaskPhase::Skipped, Some(REASON_UPSTREAM_FAILED)));
    }
    assert_eq!(sim.running_pods(), ["r-x-0"], "an independent branch goes on");
}

fn fan(name: &str, deps: &[&str], items: usize) -> TaskSpec {
    let mut t = task(name, deps);
    t.with_items = Some((0..items).map(|i| serde_json::json!({ "id": i })).collect());
    t
}

#[test]
fn fan_out_counts_instances_against_parallelism_and_gathers_results_in_order() {
    let mut wf = WorkflowSpec {
        tasks: vec![fan("p", &[], 5), with_command(task("after", &["p"]), "echo {{tasks.p.outputs.results}}")],
        ..Default::default()
    };
    wf.parallelism = Some(2);
    let mut sim = Sim::new(wf);
    sim.step(0);
    assert_eq!(sim.running_pods(), ["r-p-0-0", "r-p-1-0"]);
    assert_eq!(sim.entry("p(3)").item, None, "withItems are read from the spec, not copied");
    let item = crate::planner::results::item_of(&sim.workflow.tasks[0], sim.entry("p(3)")).unwrap();
    assert_eq!(item, Some(serde_json::json!({"id": 3})));
    let mut now = 1;
    while sim.phase("p") == TaskPhase::Running {
        let running: Vec<String> = sim.running_pods().iter().map(|s| s.to_string()).collect();
        assert!(running.len() <= 2, "{running:?}");
        // Finish the newest first, so results arrive out of item order.
        for name in running.iter().rev() {
            let index = name.split('-').nth(2).unwrap().to_string();
            sim.end_pod_with(name, 0, Some(&format!("r{index}")));
        }
        sim.step(now);
        now += 1;
    }
    assert_eq!(sim.phase("p"), TaskPhase::Succeeded);
    let results = crate::planner::results::result_of(&sim.workflow, "p", &sim.status.tasks).unwrap();
    assert_eq!(results, r#"["r0","r1","r2","r3","r4"]"#);
    assert_eq!(sim.status.progress.as_deref(), Some("5/6"));
}

#[test]
fn a_with_param_that_is_not_a_list_fails_the_task_quoting_it() {
    let mut p = task("p", &["gen"]);
    p.with_param = Some("{{tasks.gen.outputs.result}}".into());
    let mut sim = Sim::new(WorkflowSpec { tasks: vec![task("gen", &[]), p], ..Default::default() });
    sim.step(0);
    sim.end_pod_with("r-gen-0", 0, Some("eu us"));
    sim.step(1);
    assert_eq!(sim.phase("p"), TaskPhase::Failed);
    assert!(sim.entry("p").message.as_ref().unwrap().ends_with(": eu us"));
    assert_eq!(sim.status.phase, Some(RunPhase::Failed));
}

#[test]
fn an_empty_list_skips_the_task_and_dependants_run() {
    let mut sim = Sim::new(WorkflowSpec { tasks: vec![fan("p", &[], 0), task("after", &["p"])], ..Default::default() });
    sim.step(0);
    assert_eq!(sim.phase("p"), TaskPhase::Skipped);
    assert_eq!(sim.running_pods(), ["r-after-0"]);
}

#[test]
fn exit_tasks_start_after_the_dag_and_see_its_outcome() {
    let mut notify = with_command(task("notify", &[]), "notify {{run.phase}}");
    notify.when = Some("run.phase != 'Succeeded'".into());
    let mut sim = Sim::new(with_exit(vec![task("a", &[]), task("b", &["a"])], vec![notify, task("cleanup", &["notify"])]));
    sim.step(0);
    assert_eq!(sim.running_pods(), ["r-a-0"], "exit tasks wait for the DAG");
    sim.end_pod("r-a-0", 1);
    sim.step(1);
    assert_eq!(sim.status.dag_phase, Some(RunPhase::Failed));
    assert_eq!(sim.status.phase, Some(RunPhase::Running), "still running while exit tasks run");
    assert_eq!(sim.running_pods(), ["r-notify-0"]);
    assert!(sim.status.conditions.iter().any(|c| c.type_ == "Exiting" && c.status == "True"));
    sim.end_pod("r-notify-0", 0);
    sim.step(2);
    sim.end_pod("r-cleanup-0", 0);
    sim.step(3);
    assert_eq!(sim.status.phase, Some(RunPhase::Failed), "the DAG's outcome");
    let finished = sim.status.conditions.iter().find(|c| c.type_ == "Finished").unwrap();
    assert_eq!(finished.reason, "TaskFailed");
}

#[test]
fn a_failed_exit_task_fails_a_succeeded_run_naming_it() {
    let mut sim = Sim::new(with_exit(vec![task("a", &[])], vec![task("notify", &[])]));
    sim.step(0);
    sim.end_pod("r-a-0", 0);
    sim.step(1);
    sim.end_pod("r-notify-0", 3);
    sim.step(2);
    assert_eq!(sim.status.phase, Some(RunPhase::Failed));
    let finished = sim.status.conditions.iter().find(|c| c.type_ == "Finished").unwrap();
    assert_eq!(finished.reason, "ExitTaskFailed");
    assert!(finished.message.starts_with("exit task notify ended Failed"), "{}", finished.message);
}

#[test]
fn stop_runs_exit_tasks_and_terminate_does_not() {
    for (shutdown, exit_runs) in [(Shutdown::Stop, true), (Shutdown::Terminate, false)] {
        let mut notify = task("notify", &[]);
        notify.when = Some("run.phase == 'Stopped'".into());
        let mut sim = Sim::new(with_exit(vec![task("a", &[])], vec![notify]));
        sim.step(0);
        sim.spec.shutdown = shutdown;
        sim.generation = 2;
        let plan = sim.step(1);
        assert!(plan.actions.contains(&Action::DeletePod { name: "r-a-0".into() }));
        if exit_runs {
            assert_eq!(sim.status.phase, Some(RunPhase::Running));
            assert!(!plan.actions.iter().any(|a| matches!(a, Action::CreatePod { .. })), "exit tasks wait for the stopped pod to go");
            let plan = sim.step(2);
            assert!(plan.actions.contains(&Action::CreatePod { task: "notify".into(), attempt: 0 }), "{:?}", plan.actions);
            sim.end_pod("r-notify-0", 0);
            sim.step(3);
        } else {
            assert_eq!(sim.entry("notify").phase, TaskPhase::Skipped);
        }
        assert_eq!(sim.status.phase, Some(RunPhase::Stopped), "{shutdown:?}");
        assert_eq!(sim.observed.pods.iter().filter(|p| p.name.starts_with("r-notify")).count(), usize::from(exit_runs));
    }
}

#[test]
fn results_past_the_cap_fail_the_run_naming_the_task() {
    let big = "x".repeat(3000);
    let wf = WorkflowSpec {
        tasks: vec![fan("p", &[], 100), with_command(task("after", &["p"]), "echo {{tasks.p.outputs.results}}")],
        ..Default::default()
    };
    let mut sim = Sim::new(wf);
    sim.step(0);
    let mut now = 1;
    while !sim.status.phase.unwrap().is_terminal() && now < 50 {
        sim.end_running(0, Some(&big));
        sim.step(now);
        now += 1;
    }
    assert_eq!(sim.status.phase, Some(RunPhase::Failed));
    let finished = sim.status.conditions.iter().find(|c| c.type_ == "Finished").unwrap();
    assert_eq!(finished.reason, "ResultsTooLarge");
    assert!(finished.message.starts_with("task p item 87: its result (3000 bytes)"), "{}", finished.message);
    let kept: usize = sim.status.tasks.iter().map(crate::planner::results::kept_size).sum();
    assert!(kept <= crate::planner::results::MAX_KEPT, "{kept}");
}

/// A random workflow: DAG tasks (some fanned out, some with a literal
/// `when`) and exit tasks.
fn random_workflow() -> impl Strategy<Value = WorkflowSpec> {
    (2usize..12, 0usize..4, proptest::collection::vec((any::<prop::sample::Index>(), 0u8..6), 16)).prop_map(|(n, exits, picks)| {
        let tasks = (0..n)
            .map(|i| {
                let (dep, kind) = picks[i];
                let deps: Vec<String> = if i == 0 { vec![] } else { vec![format!("t{}", dep.index(i))] };
                let refs: Vec<&str> = deps.iter().map(String::as_str).collect();
                let mut t = if kind == 0 { fan(&format!("t{i}"), &refs, 3) } else { task(&format!("t{i}"), &refs) };
                if kind == 1 {
                    t.when = Some("false".into());
                }
                if kind == 2 {
                    t.when = Some("true".into());
                }
                t
            })
            .collect();
        let on_exit = (0..exits).map(|i| task(&format!("e{i}"), &[])).collect();
        WorkflowSpec { tasks, on_exit, fail_fast: Some(false), ..Default::default() }
    })
}

proptest! {
    /// Driven to its end with random pod outcomes: no unit starts before
    /// its task's dependencies are satisfied, every instance runs exactly
    /// once, and exit tasks start only after every DAG task has ended.
    #[test]
    fn flows_run_every_unit_once_and_in_order(wf in random_workflow(), outcomes in proptest::collection::vec(0u8..4, 64)) {
        let mut sim = Sim::new(wf);
        let mut started = std::collections::BTreeMap::new();
        for now in 0..60 {
            let plan = sim.step(now);
            for a in &plan.actions {
                if let Action::CreatePod { task, .. } = a {
                    let base = crate::naming::task_of(task);
                    let index = sim.workflow.all_tasks().position(|t| t.name == base).unwrap();
                    for &d in sim.dag.deps(index) {
                        let dep = &sim.status.tasks.iter().find(|t| t.name == sim.dag.name(d)).unwrap();
                        prop_assert_eq!(crate::planner::state(dep), crate::dag::State::Satisfied, "{} started before {}", task, dep.name);
                    }
                    if sim.dag.is_exit(index) {
                        for t in sim.dag.dag_tasks() {
                            let e = sim.status.tasks.iter().find(|e| e.name == sim.dag.name(t)).unwrap();
                            prop_assert!(e.phase.is_finished(), "exit task {} started while {} is {:?}", task, e.name, e.phase);
                        }
                    }
                    *started.entry(task.clone()).or_insert(0) += 1;
                }
            }
            let running: Vec<String> = sim.running_pods().iter().map(|s| s.to_string()).collect();
            for (i, name) in running.iter().enumerate() {
                let code = i32::from(outcomes[(now as usize + i) % outcomes.len()] == 0);
                sim.end_pod(name, code);
            }
            if sim.status.phase.is_some_and(RunPhase::is_terminal) { break; }
        }
        prop_assert!(sim.status.phase.is_some_and(RunPhase::is_terminal), "the run ends: {:?}", sim.status.tasks);
        prop_assert!(started.values().all(|&n| n == 1), "each unit started once: {:?}", started);
        prop_assert!(sim.observed.pods.iter().all(|p| p.state != PodState::Running));
        let _ = at(0);
    }
}
