//! The planner's time for one step of a run with a 1,000-item fan-out, and
//! the size of that run's status: `cargo bench --bench planner`. Prints
//! figures; asserts nothing about time.

use std::collections::BTreeMap;
use std::time::Instant;

use baton::api::{TaskSpec, WorkflowInstanceSpec, WorkflowInstanceStatus, WorkflowSpec};
use baton::dag::Dag;
use baton::planner::{self, Action, Input, Observed, ObservedPod, PodState};
use k8s_openapi::api::core::v1::Container;
use k8s_openapi::jiff::Timestamp;

const ITEMS: usize = 1000;

fn workflow() -> WorkflowSpec {
    let container = |command: &str| Some(Container { name: "main".into(), command: Some(vec![command.into()]), ..Default::default() });
    WorkflowSpec {
        parallelism: Some(50),
        tasks: vec![
            TaskSpec { name: "list".into(), container: container("list"), ..Default::default() },
            TaskSpec {
                name: "process".into(),
                depends_on: vec!["list".into()],
                with_param: Some("{{tasks.list.outputs.result}}".into()),
                when: Some("item.size > 0".into()),
                container: container("process {{item.region}}"),
                ..Default::default()
            },
            TaskSpec {
                name: "gather".into(),
                depends_on: vec!["process".into()],
                container: container("echo {{tasks.process.outputs.results}}"),
                ..Default::default()
            },
        ],
        ..Default::default()
    }
}

fn main() {
    let workflow = workflow();
    let dag = Dag::new(&workflow).unwrap();
    let spec = WorkflowInstanceSpec::default();
    let params = BTreeMap::new();
    let mut status = WorkflowInstanceStatus::default();
    let mut observed = Observed::default();
    let list: Vec<serde_json::Value> = (0..ITEMS).map(|i| serde_json::json!({"region": format!("region-{i}"), "size": i + 1})).collect();
    let list = serde_json::Value::Array(list).to_string();
    let mut steps = Vec::new();
    let start = Timestamp::from_second(1_800_000_000).unwrap();
    for n in 0..200 {
        let now = start.checked_add(k8s_openapi::jiff::SignedDuration::from_secs(n)).unwrap();
        let input = Input {
            run_name: "bench",
            namespace: "ns",
            params: &params,
            generation: 1,
            spec: &spec,
            status: &status,
            workflow: &workflow,
            dag: &dag,
            observed: &observed,
            now,
        };
        let t = Instant::now();
        let plan = planner::plan(&input);
        steps.push(t.elapsed());
        status = plan.status;
        // The API: create what was asked; every running pod ends now with
        // a small result.
        for pod in observed.pods.iter_mut().filter(|p| p.state == PodState::Running) {
            pod.state = PodState::Succeeded;
            pod.exit_code = Some(0);
            pod.message = Some(if pod.task == "list" { list.clone() } else { format!("rows={}", pod.name.len()) });
        }
        for a in plan.actions {
            if let Action::CreatePod { task, attempt } = a {
                let base = baton::naming::task_of(&task).to_string();
                observed.pods.push(ObservedPod {
                    name: baton::naming::pod("bench", &baton::naming::object_part(&task), attempt),
                    uid: String::new(),
                    task: base,
                    state: PodState::Running,
                    exit_code: None,
                    reason: None,
                    message: None,
                    deleting: false,
                });
            }
        }
        if status.phase.is_some_and(|p| p.is_terminal()) {
            break;
        }
    }
    assert_eq!(status.phase, Some(baton::api::RunPhase::Succeeded), "{:?}", status.conditions);
    let mut sorted = steps.clone();
    sorted.sort();
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    println!(
        "planner, {ITEMS}-item fan-out (parallelism 50, a when per item, results kept): {} steps; per step p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        steps.len(),
        ms(sorted[sorted.len() / 2]),
        ms(sorted[sorted.len() * 99 / 100]),
        ms(*sorted.last().unwrap())
    );
    let mut without_snapshot = status.clone();
    let snapshot = serde_json::to_vec(&workflow).unwrap().len();
    without_snapshot.workflow_spec = None;
    let size = serde_json::to_vec(&without_snapshot).unwrap().len();
    let kept: usize = status.tasks.iter().map(planner::results::kept_size).sum();
    println!(
        "status of the finished run: {size} bytes without the spec snapshot ({snapshot} bytes); {} entries; results kept {kept} bytes (cap {})",
        status.tasks.len(),
        planner::results::MAX_KEPT
    );
}
