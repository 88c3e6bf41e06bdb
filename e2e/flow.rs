//! Data and control flow end to end: results passed on, `when`, fan-out
//! over items and over a produced list, exit tasks, bad input, and
//! failover in the middle of a fan-out and of exit tasks.

use std::collections::BTreeMap;
use std::time::Duration;

use baton::api::{RunPhase, TaskPhase, TaskStatus, Workflow, WorkflowInstance};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::Api;

use crate::runs::{events_of, patch_spec, pods_of, run, wait_phase};
use crate::support::{ControllerProc, TestNs, wait_for};

fn entry(run: &WorkflowInstance, name: &str) -> TaskStatus {
    run.status.as_ref().unwrap().tasks.iter().find(|t| t.name == name).cloned().unwrap_or_else(|| panic!("no status entry {name}"))
}

fn finished(run: &WorkflowInstance) -> (String, String) {
    let c = run.status.as_ref().unwrap().conditions.iter().find(|c| c.type_ == "Finished").expect("Finished condition");
    (c.reason.clone(), c.message.clone())
}

/// The command line of each pod of a task, by pod name.
async fn commands(ns: &TestNs, run: &str, task: &str) -> BTreeMap<String, String> {
    pods_of(ns, run)
        .await
        .into_iter()
        .filter(|p| p.labels().get("baton.dev/task").map(String::as_str) == Some(task))
        .map(|p| (p.name_any(), p.spec.unwrap().containers[0].command.clone().unwrap_or_default().join(" ")))
        .collect()
}

/// A container task in YAML: `sh -c <command>` with simulated duration,
/// exit code and termination message, and `extra` lines (indented 6).
fn step(name: &str, deps: &[&str], command: &str, output: &str, exit: i32, extra: &str) -> String {
    format!(
        "    - name: {name}\n      dependsOn: [{}]\n      container: {{name: main, image: busybox, command: [sh, -c, '{command}']}}\n\
         \x20     podTemplate: {{metadata: {{annotations: {{baton.dev/sim-duration: 300ms, baton.dev/sim-exit-code: \"{exit}\", baton.dev/sim-output: '{output}'}}}}}}\n{extra}",
        deps.join(", ")
    )
}

fn flow(name: &str, settings: &str, tasks: &[String], exits: &[String]) -> String {
    let on_exit = if exits.is_empty() { String::new() } else { format!("  onExit:\n{}", exits.concat()) };
    format!(
        "apiVersion: baton.dev/v1alpha1\nkind: Workflow\nmetadata: {{name: {name}}}\nspec:\n{settings}  tasks:\n{}{on_exit}",
        tasks.concat()
    )
}

/// The most instances of `task` the run's status ever showed Running at
/// once, sampled until the run ends.
async fn most_running(ns: &TestNs, name: &str, task: &str) -> usize {
    let api: Api<WorkflowInstance> = ns.api();
    let prefix = format!("{task}(");
    let mut most = 0;
    loop {
        let r = api.get(name).await.unwrap();
        let status = r.status.clone().unwrap_or_default();
        most = most.max(status.tasks.iter().filter(|t| t.name.starts_with(&prefix) && t.phase == TaskPhase::Running).count());
        if status.phase.is_some_and(RunPhase::is_terminal) {
            return most;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn results_when_and_a_fan_out_over_a_produced_list() {
    let ns = TestNs::new("flow").await;
    let c = ns.controller("c1");
    let list: Vec<String> = (0..50).map(|i| i.to_string()).collect();
    let tasks = [
        step("list", &[], "list-shards", &format!("[{}]", list.join(",")), 0, ""),
        step("process", &["list"], "process {{item}}", "r{{item}}", 0, "      withParam: '{{tasks.list.outputs.result}}'\n"),
        step("check", &[], "check", "not ok", 0, ""),
        step("publish", &["process", "check"], "publish", "", 0, "      when: \"tasks.check.outputs.result == 'ok'\"\n"),
        step("join", &["publish"], "echo {{tasks.process.outputs.results}} {{tasks.check.outputs.result}}", "", 0, ""),
    ];
    ns.apply(&flow("pipeline", "  parallelism: 5\n", &tasks, &[]));
    ns.apply(&run("p1", "pipeline", ""));
    let most = most_running(&ns, "p1", "process").await;
    let done = wait_phase(&ns, "p1", RunPhase::is_terminal).await;
    assert_eq!(done.status.as_ref().unwrap().phase, Some(RunPhase::Succeeded), "{:?}", done.status);
    assert!(most <= 5, "parallelism 5 counts instances; saw {most} running");
    assert!(most >= 2, "instances ran side by side ({most})");

    // Every item ran exactly once, in its own pod, with its item.
    let process = commands(&ns, "p1", "process").await;
    let expected: BTreeMap<String, String> = (0..50).map(|i| (format!("p1-process-{i}-0"), format!("sh -c process {i}"))).collect();
    assert_eq!(process, expected);

    // The branch skipped by its when satisfied the join; results were
    // passed on, gathered in item order.
    assert_eq!((entry(&done, "publish").phase, entry(&done, "publish").reason.as_deref()), (TaskPhase::Skipped, Some("WhenFalse")));
    assert!(commands(&ns, "p1", "publish").await.is_empty());
    let results: Vec<String> = (0..50).map(|i| format!("\"r{i}\"")).collect();
    let join = commands(&ns, "p1", "join").await;
    assert_eq!(join.values().next().unwrap(), &format!("sh -c echo [{}] not ok", results.join(",")));
    assert_eq!(entry(&done, "check").outputs.unwrap().result.as_deref(), Some("not ok"));
    assert!(entry(&done, "join").outputs.is_none(), "a result nothing reads is not kept");
    let events = events_of(&ns, "p1").await;
    assert!(events.iter().any(|e| e.reason.as_deref() == Some("TaskSkipped")
        && e.message.as_deref().unwrap_or_default().contains("tasks.check.outputs.result == 'ok'")));
    c.assert_no_panic();
    ns.done().await;
}

#[tokio::test]
async fn items_of_objects_and_exit_tasks_that_read_a_failure() {
    let ns = TestNs::new("exit").await;
    let c = ns.controller("c1");
    let tasks = [
        step(
            "deploy",
            &[],
            "deploy {{item.region}} {{item.size}}",
            "",
            0,
            "      withItems: [{region: eu, size: 2}, {region: us, size: 3}]\n",
        ),
        step("verify", &["deploy"], "verify", "boom", 1, ""),
    ];
    let exits = [
        step("on-failure", &[], "alert {{run.name}} {{run.phase}}", "", 0, "      when: \"tasks.verify.phase == 'Failed'\"\n"),
        step("on-success", &[], "celebrate", "", 0, "      when: \"run.phase == 'Succeeded'\"\n"),
        step("cleanup", &["on-failure", "on-success"], "cleanup", "", 0, ""),
    ];
    ns.apply(&flow("deploy", "", &tasks, &exits));
    ns.apply(&run("d1", "deploy", ""));
    let done = wait_phase(&ns, "d1", RunPhase::is_terminal).await;
    let status = done.status.clone().unwrap();
    assert_eq!(status.phase, Some(RunPhase::Failed));
    assert_eq!(status.dag_phase, Some(RunPhase::Failed));
    let deploy = commands(&ns, "d1", "deploy").await;
    assert_eq!(deploy.values().cloned().collect::<Vec<_>>(), ["sh -c deploy eu 2", "sh -c deploy us 3"]);
    assert_eq!(commands(&ns, "d1", "on-failure").await.values().next().unwrap(), "sh -c alert d1 Failed");
    assert_eq!(entry(&done, "on-success").phase, TaskPhase::Skipped);
    assert_eq!(entry(&done, "cleanup").phase, TaskPhase::Succeeded, "a task skipped by its when satisfies exit dependants too");
    let verify = entry(&done, "verify");
    assert!(verify.message.unwrap().ends_with(": boom"), "a failed task's message ends with its termination message");
    let (reason, message) = finished(&done);
    assert_eq!(reason, "TaskFailed", "{message}");
    c.assert_no_panic();
    ns.done().await;
}

#[tokio::test]
async fn stop_runs_exit_tasks_and_terminate_does_not() {
    let ns = TestNs::new("exitstop").await;
    let c = ns.controller("c1");
    let long = step("long", &[], "sleep", "", 0, "").replace("sim-duration: 300ms", "sim-duration: 60s");
    let exits = [step("notify", &[], "notify {{run.phase}}", "", 0, "")];
    ns.apply(&flow("stoppable", "", &[long], &exits));
    ns.apply(&run("s1", "stoppable", ""));
    ns.apply(&run("t1", "stoppable", ""));
    for name in ["s1", "t1"] {
        wait_for("the long task to run", Duration::from_secs(30), || async {
            if pods_of(&ns, name).await.is_empty() { Err("no pod".to_string()) } else { Ok(()) }
        })
        .await;
    }
    patch_spec(&ns, "s1", serde_json::json!({"shutdown": "Stop"})).await;
    patch_spec(&ns, "t1", serde_json::json!({"shutdown": "Terminate"})).await;
    let s1 = wait_phase(&ns, "s1", RunPhase::is_terminal).await;
    let t1 = wait_phase(&ns, "t1", RunPhase::is_terminal).await;
    assert_eq!(s1.status.as_ref().unwrap().phase, Some(RunPhase::Stopped));
    assert_eq!(entry(&s1, "notify").phase, TaskPhase::Succeeded);
    assert_eq!(commands(&ns, "s1", "notify").await.values().next().unwrap(), "sh -c notify Stopped");
    assert_eq!(t1.status.as_ref().unwrap().phase, Some(RunPhase::Stopped));
    assert_eq!((entry(&t1, "notify").phase, entry(&t1, "notify").reason.as_deref()), (TaskPhase::Skipped, Some("Terminated")));
    assert!(commands(&ns, "t1", "notify").await.is_empty(), "Terminate skips exit tasks");
    c.assert_no_panic();
    ns.done().await;
}

#[tokio::test]
async fn bad_flow_input_ends_with_a_clear_message_and_loses_nothing_else() {
    let ns = TestNs::new("badflow").await;
    let c = ns.controller("c1");
    // Refused at apply time by the schema: more than 1000 withItems.
    let items: Vec<String> = (0..1001).map(|i| i.to_string()).collect();
    let huge = flow("huge", "", &[step("t", &[], "x", "", 0, &format!("      withItems: [{}]\n", items.join(",")))], &[]);
    let out = std::process::Command::new("kubectl")
        .env("KUBECONFIG", crate::support::kubeconfig())
        .args(["-n", &ns.name, "apply", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(huge.as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("must have at most 1000 items"), "{out:?}");

    // A when that does not parse: the Workflow says so, its runs fail naming it.
    let bad_when = step("gate", &[], "x", "", 0, "      when: \"params.x ==\"\n");
    ns.apply(&flow("bad-when", "", &[bad_when], &[]));
    let wf_api: Api<Workflow> = ns.api();
    let valid = wait_for("Valid=False on bad-when", Duration::from_secs(30), || async {
        let wf = wf_api.get("bad-when").await.map_err(|e| e.to_string())?;
        let c = wf.status.and_then(|s| s.conditions.into_iter().find(|c| c.type_ == "Valid")).ok_or("no Valid condition")?;
        if c.status == "False" { Ok(c.message) } else { Err(c.message) }
    })
    .await;
    assert!(valid.contains("task \"gate\": when does not parse: line 1, column"), "{valid}");

    // A withParam that is not a list, and a produced list of 1001 items.
    let not_list = [
        step("gen", &[], "gen", "eu us", 0, ""),
        step("fan", &["gen"], "x {{item}}", "", 0, "      withParam: '{{tasks.gen.outputs.result}}'\n"),
    ];
    ns.apply(&flow("not-list", "", &not_list, &[]));
    let many: Vec<&str> = vec!["0"; 1001];
    let too_many = [
        step("gen", &[], "gen", &format!("[{}]", many.join(",")), 0, ""),
        step("fan", &["gen"], "x {{item}}", "", 0, "      withParam: '{{tasks.gen.outputs.result}}'\n"),
    ];
    ns.apply(&flow("too-many", "", &too_many, &[]));
    // Results over the cap: 70 results of 4000 bytes each, all read later.
    let big = "x".repeat(4000);
    let over = [
        step("fan", &[], "x", &big, 0, "      withItems: [{}]\n".replace("{}", &vec!["1"; 70].join(",")).as_str()),
        step("after", &["fan"], "echo {{tasks.fan.outputs.results}}", "", 0, ""),
    ];
    ns.apply(&flow("over-cap", "", &over, &[]));
    ns.apply(&flow("fine", "", &[step("ok", &[], "ok", "", 0, "")], &[]));
    for (name, wf) in
        [("r-bad-when", "bad-when"), ("r-not-list", "not-list"), ("r-too-many", "too-many"), ("r-over", "over-cap"), ("r-fine", "fine")]
    {
        ns.apply(&run(name, wf, ""));
    }
    let fine = wait_phase(&ns, "r-fine", RunPhase::is_terminal).await;
    assert_eq!(fine.status.as_ref().unwrap().phase, Some(RunPhase::Succeeded), "a bad run blocks no other");
    let bad_when = wait_phase(&ns, "r-bad-when", RunPhase::is_terminal).await;
    let valid = bad_when.status.as_ref().unwrap().conditions.iter().find(|c| c.type_ == "Valid").unwrap();
    assert!(valid.status == "False" && valid.message.contains("when does not parse"), "{valid:?}");
    let not_list = wait_phase(&ns, "r-not-list", RunPhase::is_terminal).await;
    assert_eq!(entry(&not_list, "fan").message.as_deref(), Some("withParam is not a JSON list (expected value at line 1 column 1): eu us"));
    let too_many = wait_phase(&ns, "r-too-many", RunPhase::is_terminal).await;
    assert_eq!(entry(&too_many, "fan").message.as_deref(), Some("it has 1001 items, more than the 1000 instances a task may have"));
    let over = wait_phase(&ns, "r-over", RunPhase::is_terminal).await;
    let (reason, message) = finished(&over);
    assert_eq!(reason, "ResultsTooLarge", "{message}");
    assert!(message.starts_with("task fan item ") && message.contains("over the limit of 262144 bytes"), "{message}");
    let kept: usize = over.status.as_ref().unwrap().tasks.iter().map(baton::planner::results::kept_size).sum();
    assert!(kept <= baton::planner::results::MAX_KEPT);
    c.assert_no_panic();
    ns.done().await;
}

/// Pods of a run, by (task label, item label, attempt label): each at most once.
async fn pod_keys(ns: &TestNs, run: &str) -> Vec<(String, String, String)> {
    let pods: Vec<Pod> = pods_of(ns, run).await;
    pods.iter()
        .map(|p| {
            let l = p.labels();
            let get = |k: &str| l.get(k).cloned().unwrap_or_default();
            (get("baton.dev/task"), get("baton.dev/item"), get("baton.dev/attempt"))
        })
        .collect()
}

async fn kill_owner(ns: &TestNs, name: &str, controllers: &mut [ControllerProc]) {
    let api: Api<WorkflowInstance> = ns.api();
    let owner = api.get(name).await.unwrap().status.unwrap().owner.unwrap().controller;
    let c = controllers.iter_mut().find(|c| c.identity == owner).expect("owner is one of ours");
    c.kill();
    println!("killed owner {owner} of {name}");
}

#[tokio::test]
async fn killing_the_owner_mid_fan_out_and_mid_exit_tasks_runs_nothing_twice() {
    let ns = TestNs::new("flowfail").await;
    let mut c = vec![ns.controller("f1"), ns.controller("f2"), ns.controller("f3")];
    let items: Vec<String> = (0..50).map(|i| i.to_string()).collect();
    let tasks = [
        step("list", &[], "list", &format!("[{}]", items.join(",")), 0, ""),
        step("process", &["list"], "process {{item}}", "", 0, "      withParam: '{{tasks.list.outputs.result}}'\n")
            .replace("sim-duration: 300ms", "sim-duration: 1s"),
    ];
    let exits = [
        step("report", &[], "report {{run.phase}}", "", 0, "").replace("sim-duration: 300ms", "sim-duration: 8s"),
        step("tidy", &["report"], "tidy", "", 0, ""),
    ];
    ns.apply(&flow("fanfail", "  parallelism: 5\n", &tasks, &exits));
    ns.apply(&run("k1", "fanfail", ""));
    let api: Api<WorkflowInstance> = ns.api();
    wait_for("some instances done", Duration::from_secs(60), || async {
        let r = api.get("k1").await.map_err(|e| e.to_string())?;
        let done =
            r.status.unwrap_or_default().tasks.iter().filter(|t| t.name.starts_with("process(") && t.phase == TaskPhase::Succeeded).count();
        if done >= 10 { Ok(()) } else { Err(format!("{done} done")) }
    })
    .await;
    kill_owner(&ns, "k1", &mut c).await;
    wait_for("the exit task to run", Duration::from_secs(120), || async {
        let r = api.get("k1").await.map_err(|e| e.to_string())?;
        let report = r.status.unwrap_or_default().tasks.into_iter().find(|t| t.name == "report").ok_or("no report entry")?;
        if report.phase == TaskPhase::Running { Ok(()) } else { Err(format!("{:?}", report.phase)) }
    })
    .await;
    kill_owner(&ns, "k1", &mut c).await;
    let done = wait_phase(&ns, "k1", RunPhase::is_terminal).await;
    let status = done.status.clone().unwrap();
    assert_eq!(status.phase, Some(RunPhase::Succeeded), "{:?}", status.conditions);
    assert!(status.owner.unwrap().epoch >= 3, "two failovers");
    let keys = pod_keys(&ns, "k1").await;
    let mut unique = keys.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), keys.len(), "no pod twice: {keys:?}");
    assert_eq!(keys.len(), 1 + 50 + 2, "{keys:?}");
    assert!(keys.iter().all(|(_, _, attempt)| attempt == "0"), "no second attempt of anything: {keys:?}");
    for name in ["report", "tidy"] {
        assert_eq!(entry(&done, name).attempts, 1);
    }
    c.iter().for_each(ControllerProc::assert_no_panic);
    ns.done().await;
}
