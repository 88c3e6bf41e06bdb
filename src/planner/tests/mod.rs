use super::*;
use crate::api::{RetryPolicy, Shutdown, TaskSpec, TaskWorkflowRef};
use k8s_openapi::api::core::v1::Container;

pub(super) fn task(name: &str, deps: &[&str]) -> TaskSpec {
    TaskSpec {
        name: name.into(),
        depends_on: deps.iter().map(|d| d.to_string()).collect(),
        container: Some(Container { name: "main".into(), ..Default::default() }),
        ..Default::default()
    }
}

fn diamond() -> WorkflowSpec {
    WorkflowSpec { tasks: vec![task("a", &[]), task("b", &["a"]), task("c", &["a"]), task("d", &["b", "c"])], ..Default::default() }
}

/// A workflow with these tasks and exit tasks.
pub(super) fn with_exit(tasks: Vec<TaskSpec>, exits: Vec<TaskSpec>) -> WorkflowSpec {
    WorkflowSpec { tasks, on_exit: exits, ..Default::default() }
}

pub(super) fn at(secs: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + secs).unwrap()
}

/// A run being driven through plans, with a fake world of pods.
pub(super) struct Sim {
    pub(super) workflow: WorkflowSpec,
    pub(super) dag: Dag,
    pub(super) spec: WorkflowInstanceSpec,
    pub(super) status: WorkflowInstanceStatus,
    pub(super) observed: Observed,
    pub(super) generation: i64,
    pub(super) params: BTreeMap<String, String>,
}

impl Sim {
    pub(super) fn new(workflow: WorkflowSpec) -> Self {
        let dag = Dag::new(&workflow).unwrap();
        Sim {
            workflow,
            dag,
            spec: Default::default(),
            status: Default::default(),
            observed: Default::default(),
            generation: 1,
            params: BTreeMap::new(),
        }
    }

    pub(super) fn step(&mut self, now: i64) -> Plan {
        let plan = plan(&Input {
            run_name: "r",
            namespace: "ns",
            params: &self.params,
            generation: self.generation,
            spec: &self.spec,
            status: &self.status,
            workflow: &self.workflow,
            dag: &self.dag,
            observed: &self.observed,
            now: at(now),
        });
        self.status = plan.status.clone();
        // Carry out the actions the way the API would.
        for a in &plan.actions {
            match a {
                Action::CreatePod { task, attempt } => self.observed.pods.push(ObservedPod {
                    uid: format!("uid-{task}-{attempt}"),
                    name: naming::pod("r", &naming::object_part(task), *attempt),
                    task: task.clone(),
                    state: PodState::Running,
                    exit_code: None,
                    reason: None,
                    message: None,
                    deleting: false,
                }),
                Action::DeletePod { name } => self.observed.pods.retain(|p| &p.name != name),
                Action::CreateChild { task, attempt } => self.observed.children.push(ObservedChild {
                    uid: format!("uid-{task}-{attempt}"),
                    resource_version: String::new(),
                    name: naming::child("r", &naming::object_part(task), *attempt),
                    task: task.clone(),
                    phase: None,
                    suspend: self.spec.suspend,
                    passed: Passed { suspend: Some(self.spec.suspend), prior: self.spec.suspend.then_some(false), stop: false },
                }),
                Action::SteerChild { name, request } => {
                    let c = self.observed.children.iter_mut().find(|c| &c.name == name).unwrap();
                    match request {
                        ChildRequest::Pause { prior } => {
                            (c.suspend, c.passed.suspend, c.passed.prior) = (true, Some(true), Some(*prior));
                        }
                        ChildRequest::Resume { to } => (c.suspend, c.passed.suspend) = (*to, Some(false)),
                        ChildRequest::Stop => c.passed.stop = true,
                    }
                }
            }
        }
        plan
    }

    pub(super) fn end_pod(&mut self, name: &str, code: i32) {
        self.end_pod_with(name, code, None);
    }

    /// Ends a pod whose container left `message` as its termination message.
    pub(super) fn end_pod_with(&mut self, name: &str, code: i32, message: Option<&str>) {
        let p = self.observed.pods.iter_mut().find(|p| p.name == name).unwrap_or_else(|| panic!("no pod {name}"));
        p.state = if code == 0 { PodState::Succeeded } else { PodState::Failed };
        p.exit_code = Some(code);
        p.message = message.map(str::to_string);
    }

    /// The status entry `name` (a task, or an instance `TASK(i)`).
    pub(super) fn entry(&self, name: &str) -> &TaskStatus {
        self.status.tasks.iter().find(|t| t.name == name).unwrap_or_else(|| panic!("no entry {name}"))
    }

    pub(super) fn phase(&self, task: &str) -> TaskPhase {
        self.entry(task).phase
    }

    /// Ends every running pod with `code`, leaving `message` as its
    /// termination message.
    pub(super) fn end_running(&mut self, code: i32, message: Option<&str>) {
        let running: Vec<String> = self.running_pods().iter().map(|s| s.to_string()).collect();
        for name in running {
            self.end_pod_with(&name, code, message);
        }
    }

    pub(super) fn running_pods(&self) -> Vec<&str> {
        self.observed.pods.iter().filter(|p| p.state == PodState::Running).map(|p| p.name.as_str()).collect()
    }
}

#[test]
fn diamond_runs_to_success_with_parallelism() {
    let mut wf = diamond();
    wf.parallelism = Some(1);
    let mut sim = Sim::new(wf);
    let plan = sim.step(0);
    assert_eq!(plan.actions, [Action::CreatePod { task: "a".into(), attempt: 0 }]);
    assert_eq!(sim.status.phase, Some(RunPhase::Running));
    sim.end_pod("r-a-0", 0);
    sim.step(1);
    assert_eq!(sim.running_pods(), ["r-b-0"], "parallelism 1 starts one of b, c");
    sim.end_pod("r-b-0", 0);
    sim.step(2);
    sim.end_pod("r-c-0", 0);
    sim.step(3);
    sim.end_pod("r-d-0", 0);
    let plan = sim.step(4);
    assert_eq!(sim.status.phase, Some(RunPhase::Succeeded));
    assert_eq!(sim.status.progress.as_deref(), Some("4/4"));
    assert!(plan.actions.is_empty());
    assert_eq!(sim.step(5).status, sim.status, "a finished run is stable");
}

#[test]
fn a_new_owner_completes_recorded_intents() {
    let mut sim = Sim::new(diamond());
    sim.step(0);
    // The pod was never created (owner died after the status write).
    sim.observed.pods.clear();
    let plan = sim.step(1);
    assert_eq!(plan.actions, [Action::CreatePod { task: "a".into(), attempt: 0 }]);
    assert_eq!(sim.status.tasks[0].attempts, 1, "no second attempt is started");
}

#[test]
fn failed_attempt_is_retried_after_backoff_in_a_new_pod() {
    let mut wf = diamond();
    wf.tasks[0].retries = Some(RetryPolicy { limit: 1, backoff_seconds: 10 });
    let mut sim = Sim::new(wf);
    sim.step(0);
    sim.end_pod("r-a-0", 3);
    let plan = sim.step(1);
    assert_eq!(sim.phase("a"), TaskPhase::Pending);
    assert_eq!(sim.status.tasks[0].exit_code, Some(3));
    assert!(plan.events.iter().any(|e| e.reason == "TaskRetry"));
    assert_eq!(plan.requeue_after, Some(Duration::from_millis(10_050)));
    assert!(sim.step(5).actions.is_empty(), "still backing off");
    assert_eq!(sim.step(11).actions, [Action::CreatePod { task: "a".into(), attempt: 1 }]);
    sim.end_pod("r-a-1", 1);
    sim.step(12);
    assert_eq!(sim.phase("a"), TaskPhase::Failed);
    assert_eq!(sim.status.phase, Some(RunPhase::Failed));
    assert_eq!(sim.phase("d"), TaskPhase::Skipped);
}

#[test]
fn timeout_fails_the_attempt_and_deletes_its_pod() {
    let mut wf = diamond();
    wf.tasks[0].timeout_seconds = Some(30);
    let mut sim = Sim::new(wf);
    sim.step(0);
    assert_eq!(sim.step(29).actions, []);
    let plan = sim.step(30);
    assert_eq!(plan.actions, [Action::DeletePod { name: "r-a-0".into() }]);
    assert_eq!(sim.phase("a"), TaskPhase::Failed);
    assert!(sim.status.tasks[0].message.as_deref().unwrap().contains("timed out after 30s"));
    let finished = sim.status.conditions.iter().find(|c| c.type_ == "Finished").unwrap();
    assert_eq!(finished.message, "task a ended Failed: timed out after 30s", "the run says which timeout fired");
}

#[test]
fn fail_fast_false_lets_independent_branches_finish() {
    let mut wf = diamond();
    wf.fail_fast = Some(false);
    let mut sim = Sim::new(wf);
    sim.step(0);
    sim.end_pod("r-a-0", 0);
    sim.step(1);
    sim.end_pod("r-b-0", 2);
    sim.step(2);
    assert_eq!(sim.phase("b"), TaskPhase::Failed);
    assert_eq!(sim.phase("c"), TaskPhase::Running, "c goes on");
    assert_eq!(sim.phase("d"), TaskPhase::Skipped);
    sim.end_pod("r-c-0", 0);
    sim.step(3);
    assert_eq!(sim.phase("c"), TaskPhase::Succeeded);
    assert_eq!(sim.status.phase, Some(RunPhase::Failed));
}

#[test]
fn fail_fast_stops_running_tasks() {
    let mut sim = Sim::new(diamond());
    sim.step(0);
    sim.end_pod("r-a-0", 0);
    sim.step(1);
    sim.end_pod("r-b-0", 2);
    let plan = sim.step(2);
    assert_eq!(plan.actions, [Action::DeletePod { name: "r-c-0".into() }]);
    assert_eq!(sim.phase("c"), TaskPhase::Stopped);
    assert_eq!(sim.status.phase, Some(RunPhase::Failed));
}

#[test]
fn suspend_pauses_and_resume_continues() {
    let mut sim = Sim::new(diamond());
    sim.step(0);
    sim.spec.suspend = true;
    sim.generation = 2;
    let plan = sim.step(1);
    assert_eq!(sim.status.phase, Some(RunPhase::Paused));
    assert_eq!(sim.status.observed_generation, Some(2));
    assert!(plan.events.iter().any(|e| e.reason == "Paused"));
    sim.end_pod("r-a-0", 0);
    sim.step(2);
    assert_eq!(sim.phase("a"), TaskPhase::Succeeded, "running tasks finish");
    assert_eq!(sim.phase("b"), TaskPhase::Pending, "no new task starts");
    sim.spec.suspend = false;
    sim.step(3);
    assert_eq!(sim.status.phase, Some(RunPhase::Running));
    assert_eq!(sim.phase("b"), TaskPhase::Running);
}

#[test]
fn shutdown_stops_everything_even_before_start() {
    let mut sim = Sim::new(diamond());
    sim.step(0);
    sim.spec.shutdown = Shutdown::Stop;
    let plan = sim.step(1);
    assert_eq!(plan.actions, [Action::DeletePod { name: "r-a-0".into() }]);
    assert_eq!(sim.status.phase, Some(RunPhase::Stopped));
    assert!(sim.status.tasks.iter().all(|t| t.phase == TaskPhase::Stopped));

    let mut early = Sim::new(diamond());
    early.spec.shutdown = Shutdown::Terminate;
    let plan = early.step(0);
    assert!(plan.actions.is_empty(), "nothing starts");
    assert_eq!(early.status.phase, Some(RunPhase::Stopped));
}

#[test]
fn retry_failed_reruns_failed_skipped_and_stopped_tasks() {
    let mut sim = Sim::new(diamond());
    sim.step(0);
    sim.end_pod("r-a-0", 1);
    sim.step(1);
    assert_eq!(sim.status.phase, Some(RunPhase::Failed));
    sim.spec.retry_failed = 1;
    let plan = sim.step(2);
    assert_eq!(sim.status.phase, Some(RunPhase::Running));
    assert_eq!(plan.actions, [Action::CreatePod { task: "a".into(), attempt: 1 }]);
    assert_eq!(sim.status.retry_failed_applied, Some(1));
    assert!(sim.status.conditions.iter().all(|c| c.type_ != "Finished"), "running again");
    assert!(sim.status.finished_at.is_none());
    sim.end_pod("r-a-1", 0);
    for t in 3..6 {
        sim.step(t);
        sim.end_running(0, None);
    }
    sim.step(7);
    assert_eq!(sim.status.phase, Some(RunPhase::Succeeded));
    assert_eq!(sim.step(8).events, [], "the same retryFailed is applied once");
}

#[test]
fn run_deadline_fails_the_run() {
    let mut wf = diamond();
    wf.active_deadline_seconds = Some(60);
    let mut sim = Sim::new(wf);
    sim.step(0);
    let plan = sim.step(60);
    assert_eq!(sim.status.phase, Some(RunPhase::Failed));
    assert_eq!(plan.actions, [Action::DeletePod { name: "r-a-0".into() }]);
    assert!(plan.events.iter().any(|e| e.reason == "DeadlineExceeded" && e.warning));
    let finished = sim.status.conditions.iter().find(|c| c.type_ == "Finished").unwrap();
    assert_eq!(
        (finished.reason.as_str(), finished.message.as_str()),
        ("DeadlineExceeded", "run still going after activeDeadlineSeconds=60")
    );
}

fn with_child_task() -> WorkflowSpec {
    let mut wf = diamond();
    wf.tasks[0].container = None;
    wf.tasks[0].workflow_ref = Some(TaskWorkflowRef { name: "sub".into(), ..Default::default() });
    wf
}

#[test]
fn child_run_follows_and_is_steered() {
    let mut sim = Sim::new(with_child_task());
    let plan = sim.step(0);
    assert_eq!(plan.actions, [Action::CreateChild { task: "a".into(), attempt: 0 }]);
    assert_eq!(sim.status.tasks[0].child_instance.as_deref(), Some("r-a"));
    sim.spec.suspend = true;
    assert_eq!(sim.step(1).actions, [Action::SteerChild { name: "r-a".into(), request: ChildRequest::Pause { prior: false } }]);
    assert_eq!(sim.step(2).actions, [], "passed on once");
    sim.spec.suspend = false;
    assert_eq!(sim.step(3).actions, [Action::SteerChild { name: "r-a".into(), request: ChildRequest::Resume { to: false } }]);
    sim.observed.children[0].phase = Some(RunPhase::Succeeded);
    sim.step(4);
    assert_eq!(sim.phase("a"), TaskPhase::Succeeded);
    sim.spec.shutdown = Shutdown::Stop;
    sim.step(5);
    assert_eq!(sim.status.phase, Some(RunPhase::Stopped));
}

#[test]
fn parent_shutdown_reaches_running_child() {
    let mut sim = Sim::new(with_child_task());
    sim.step(0);
    sim.spec.shutdown = Shutdown::Stop;
    let plan = sim.step(1);
    assert_eq!(plan.actions, [Action::SteerChild { name: "r-a".into(), request: ChildRequest::Stop }]);
    assert_eq!(sim.step(2).actions, [], "asked once; the child's own owner does the rest");
    assert!(!sim.status.cleaned_up(), "the child is still running");
    sim.observed.children[0].phase = Some(RunPhase::Stopped);
    sim.step(3);
    assert!(sim.status.cleaned_up());
}

#[test]
fn requests_made_on_the_child_itself_are_never_undone() {
    let mut wf = with_child_task();
    wf.tasks[0].retries = Some(RetryPolicy { limit: 3, backoff_seconds: 0 });
    let mut sim = Sim::new(wf);
    sim.step(0);
    // The user pauses the child directly: the parent has nothing to pass on.
    assert_eq!(sim.step(1).actions, []);
    // The user stops the child directly; its owner ends it Stopped.
    sim.observed.children[0].phase = Some(RunPhase::Stopped);
    let plan = sim.step(2);
    assert!(plan.actions.iter().all(|a| !matches!(a, Action::SteerChild { .. } | Action::CreateChild { .. })), "{:?}", plan.actions);
    assert_eq!(sim.phase("a"), TaskPhase::Stopped, "the task ends as asked, not retried");
    assert_eq!(sim.status.tasks[0].attempts, 1);
    assert!(plan.events.iter().any(|e| e.reason == "TaskStopped"));
}

#[test]
fn a_pause_made_on_the_child_outlives_a_pause_and_resume_of_its_parent() {
    let mut sim = Sim::new(with_child_task());
    sim.step(0);
    sim.observed.children[0].suspend = true; // the user pauses the child itself
    assert_eq!(sim.step(1).actions, []);
    sim.spec.suspend = true;
    assert_eq!(sim.step(2).actions, [Action::SteerChild { name: "r-a".into(), request: ChildRequest::Pause { prior: true } }]);
    sim.spec.suspend = false;
    assert_eq!(sim.step(3).actions, [Action::SteerChild { name: "r-a".into(), request: ChildRequest::Resume { to: true } }]);
    assert!(sim.observed.children[0].suspend, "still paused, as the user asked");
    assert_eq!(sim.step(4).actions, []);
}

#[test]
fn a_retry_made_on_a_finished_child_is_not_undone_by_its_parent() {
    let mut wf = with_child_task();
    wf.fail_fast = Some(false);
    wf.tasks.push(task("e", &[]));
    let mut sim = Sim::new(wf);
    sim.step(0);
    sim.observed.children[0].phase = Some(RunPhase::Failed);
    sim.step(1);
    assert_eq!((sim.phase("a"), sim.status.phase), (TaskPhase::Failed, Some(RunPhase::Running)));
    // The user re-runs the failed child itself (retryFailed on the child).
    sim.observed.children[0].phase = Some(RunPhase::Running);
    let plan = sim.step(2);
    assert!(!plan.actions.iter().any(|a| matches!(a, Action::SteerChild { .. })), "{:?}", plan.actions);
}

#[test]
fn a_timed_out_child_is_stopped_and_its_retry_runs_in_a_new_child() {
    let mut wf = with_child_task();
    wf.tasks[0].timeout_seconds = Some(10);
    wf.tasks[0].retries = Some(RetryPolicy { limit: 1, backoff_seconds: 0 });
    let mut sim = Sim::new(wf);
    sim.step(0);
    let plan = sim.step(10);
    assert_eq!(
        plan.actions,
        [Action::SteerChild { name: "r-a".into(), request: ChildRequest::Stop }, Action::CreateChild { task: "a".into(), attempt: 1 }]
    );
    assert_eq!(sim.status.tasks[0].stop_children, ["r-a"]);
    assert!(sim.step(11).actions.is_empty(), "asked once");
}

#[test]
fn cleanup_is_retried_until_nothing_runs() {
    let mut sim = Sim::new(diamond());
    sim.step(0);
    sim.spec.shutdown = Shutdown::Stop;
    let plan = plan(&Input {
        run_name: "r",
        namespace: "ns",
        params: &sim.params,
        generation: 2,
        spec: &sim.spec,
        status: &sim.status,
        workflow: &sim.workflow,
        dag: &sim.dag,
        observed: &sim.observed,
        now: at(1),
    });
    // The status write succeeded, the delete did not (the pod runs on).
    sim.status = plan.status;
    assert_eq!(sim.status.phase, Some(RunPhase::Stopped));
    assert!(!sim.status.cleaned_up(), "not idle: the pod is still running");
    assert_eq!(sim.step(2).actions, [Action::DeletePod { name: "r-a-0".into() }], "asked again");
    assert!(!sim.status.cleaned_up(), "until the pod is seen gone");
    assert!(sim.step(3).actions.is_empty());
    assert!(sim.status.cleaned_up());
    let before = sim.status.clone();
    let plan = sim.step(4);
    assert!(plan.actions.is_empty() && plan.events.is_empty() && plan.status == before, "idle now");
}

#[test]
fn retry_failed_while_running_is_refused_visibly_and_does_not_fire_later() {
    let mut sim = Sim::new(diamond());
    sim.step(0);
    sim.spec.retry_failed = 1;
    sim.generation = 2;
    let plan = sim.step(1);
    assert!(
        plan.events.iter().any(|e| e.reason == "RetryIgnored" && e.warning && e.message.contains("still Running")),
        "{:?}",
        plan.events
    );
    assert_eq!(sim.status.retry_failed_applied, Some(1));
    sim.end_pod("r-a-0", 1);
    sim.step(2);
    assert_eq!(sim.status.phase, Some(RunPhase::Failed));
    let plan = sim.step(3);
    assert_eq!(sim.status.phase, Some(RunPhase::Failed), "no surprise retry");
    assert!(plan.events.is_empty());
}

#[test]
fn retry_failed_on_a_succeeded_run_changes_nothing_but_says_so() {
    let mut sim = Sim::new(WorkflowSpec { tasks: vec![task("a", &[])], ..Default::default() });
    sim.step(0);
    sim.end_pod("r-a-0", 0);
    sim.step(1);
    let finished = sim.status.finished_at.clone();
    sim.spec.retry_failed = 1;
    let plan = sim.step(2);
    assert_eq!((sim.status.phase, sim.status.finished_at.clone()), (Some(RunPhase::Succeeded), finished));
    assert!(plan.events.iter().any(|e| e.message.starts_with("nothing to re-run")));
}

#[test]
fn status_of_a_thousand_task_run_stays_well_under_a_mebibyte() {
    let tasks: Vec<TaskSpec> = (0..1000).map(|i| task(&format!("extract-partition-{i:04}"), &[])).collect();
    let mut sim = Sim::new(WorkflowSpec { tasks, ..Default::default() });
    sim.status.workflow_spec = Some(sim.workflow.clone());
    sim.step(0);
    for i in 0..1000 {
        sim.end_pod(&naming::pod("r", &format!("extract-partition-{i:04}"), 0), 0);
    }
    sim.step(1);
    assert_eq!(sim.status.phase, Some(RunPhase::Succeeded));
    let bytes = serde_json::to_vec(&sim.status).unwrap().len();
    println!("status of a finished 1,000-task run: {bytes} bytes");
    assert!(bytes < 512 * 1024, "{bytes} bytes");
}

#[test]
fn a_timed_out_pod_is_deleted_before_its_slot_is_reused() {
    let mut wf = WorkflowSpec { tasks: vec![task("slow", &[]), task("next", &[])], parallelism: Some(1), ..Default::default() };
    wf.tasks[0].timeout_seconds = Some(5);
    wf.fail_fast = Some(false);
    let mut sim = Sim::new(wf);
    sim.step(0);
    let plan = sim.step(5);
    assert_eq!(plan.actions, [Action::DeletePod { name: "r-slow-0".into() }, Action::CreatePod { task: "next".into(), attempt: 0 }]);
}

mod flow;
mod podgc;
mod review;
