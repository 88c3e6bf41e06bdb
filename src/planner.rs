//! The executor's decisions, as one pure function: from a run's spec,
//! status and the pods and child runs that exist, compute the next status
//! (which records every intent and every decision) and the API calls that
//! carry it out.
//!
//! Actions are derived from the *new status* and what exists, never from
//! memory: a new owner that finds the status and the objects computes the
//! same actions, which is how intents recorded before a crash get completed.
//! Decisions that read data (a `when`, a fan-out's items, a result) are
//! recorded in the same status write as the intents they lead to, so a new
//! owner never decides again, differently.
//!
//! One step is a pipeline of small steps, each in its own file:
//! [`observe`] (pods and children into task outcomes and results),
//! [`requests`] (shutdown, suspend, retryFailed), [`rules`] (deadline,
//! failFast, skipping what cannot run), [`fanout`] (instances of a task),
//! [`ready`] (`when` and starting what may start), [`exit`] (the DAG's
//! outcome, exit tasks, the run's end) and [`actions`] (the API calls).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::api::{
    CONDITION_CLEANED_UP, RunPhase, TaskPhase, TaskSpec, TaskStatus, WorkflowInstanceSpec, WorkflowInstanceStatus, WorkflowSpec,
};
use crate::dag::{Dag, State};
use crate::naming;

mod actions;
mod exit;
mod fanout;
mod observe;
pub mod podgc;
mod ready;
mod requests;
pub mod results;
mod rules;

pub use actions::actions;

/// State of a task pod as the kubelet reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodState {
    Waiting,
    Running,
    Succeeded,
    Failed,
}

/// A task pod that exists.
#[derive(Debug, Clone, PartialEq)]
pub struct ObservedPod {
    pub name: String,
    /// Deletes carry it as a precondition: never delete a namesake.
    pub uid: String,
    pub task: String,
    pub state: PodState,
    pub exit_code: Option<i32>,
    /// Why it failed, when it did.
    pub reason: Option<String>,
    /// Its container's termination message: the result when it succeeded,
    /// the end of its log when it failed.
    pub message: Option<String>,
    pub deleting: bool,
}

/// A child run that exists.
#[derive(Debug, Clone, PartialEq)]
pub struct ObservedChild {
    pub name: String,
    /// Patches carry it as a precondition: never steer a namesake.
    pub uid: String,
    /// Patches carry it too: a child changed since it was observed (its
    /// own pause, say) is looked at again before it is steered.
    pub resource_version: String,
    pub task: String,
    pub phase: Option<RunPhase>,
    /// Its `spec.suspend` (whoever set it).
    pub suspend: bool,
    /// What the parent has passed on to it so far (its annotations).
    pub passed: Passed,
}

/// The requests a parent has passed on to a child run, recorded on the
/// child itself. The parent compares its wishes with this record, never
/// with the child's spec, so a request someone made on the child directly
/// is never undone by the parent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Passed {
    /// The last `suspend` the parent asked for.
    pub suspend: Option<bool>,
    /// The child's own `spec.suspend` just before the parent paused it:
    /// what the parent's resume gives back, so a pause someone made on the
    /// child itself outlives a pause and resume of the parent.
    pub prior: Option<bool>,
    /// The parent asked the child to stop.
    pub stop: bool,
}

/// What exists of a run's pods and children, listed by label.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub pods: Vec<ObservedPod>,
    pub children: Vec<ObservedChild>,
}

/// An API call the owner makes after its status write succeeded.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Create the pod of the task's current attempt (adopt on AlreadyExists).
    CreatePod {
        task: String,
        attempt: i32,
    },
    /// Create the child run of the task's current attempt (adopt on AlreadyExists).
    CreateChild {
        task: String,
        attempt: i32,
    },
    DeletePod {
        name: String,
    },
    /// Pass a request of the parent on to a child run.
    SteerChild {
        name: String,
        request: ChildRequest,
    },
}

/// What a parent passes on to a child run. There is no request that clears
/// a child's `spec.shutdown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildRequest {
    /// The parent paused: set `spec.suspend`, remembering `prior`, the
    /// child's own value before.
    Pause { prior: bool },
    /// The parent resumed: give the child back `to`, its value before the
    /// parent's pause.
    Resume { to: bool },
    /// Set its `spec.shutdown` to Stop (its task or the parent ended).
    Stop,
}

/// An Event to record on the run once the status write succeeded.
#[derive(Debug, Clone, PartialEq)]
pub struct Note {
    pub warning: bool,
    pub reason: String,
    pub message: String,
    /// A task's progress (started, succeeded, stopped): recorded only when
    /// the controller is asked to (`--task-events`), as status says it all
    /// and an Event is one more API write per task.
    pub progress: bool,
}

impl Note {
    fn normal(reason: &str, message: String) -> Self {
        Note { warning: false, reason: reason.to_string(), message, progress: false }
    }
    fn warning(reason: &str, message: String) -> Self {
        Note { warning: true, reason: reason.to_string(), message, progress: false }
    }
    fn progress(reason: &str, message: String) -> Self {
        Note { progress: true, ..Note::normal(reason, message) }
    }
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub status: WorkflowInstanceStatus,
    pub actions: Vec<Action>,
    pub events: Vec<Note>,
    /// When the run must be looked at again even if nothing changes
    /// (a retry backoff or a timeout comes due).
    pub requeue_after: Option<Duration>,
}

/// Everything the planner reads.
pub struct Input<'a> {
    pub run_name: &'a str,
    pub namespace: &'a str,
    /// The run's parameter values (declared defaults applied).
    pub params: &'a BTreeMap<String, String>,
    pub generation: i64,
    pub spec: &'a WorkflowInstanceSpec,
    pub status: &'a WorkflowInstanceStatus,
    pub workflow: &'a WorkflowSpec,
    pub dag: &'a Dag,
    pub observed: &'a Observed,
    pub now: Timestamp,
}

fn time(t: Timestamp) -> Time {
    Time(t)
}

fn after(t: &Time, seconds: i64) -> Timestamp {
    t.0.saturating_add(SignedDuration::from_secs(seconds)).unwrap_or(Timestamp::MAX)
}

/// How a running unit's pod or child run ended.
enum Outcome {
    Succeeded(Option<i32>),
    Failed(String),
    Stopped(String),
}

/// Reasons in `status.tasks[].reason`.
pub const REASON_WHEN_FALSE: &str = "WhenFalse";
pub const REASON_NO_ITEMS: &str = "NoItems";
pub const REASON_UPSTREAM_FAILED: &str = "UpstreamFailed";
pub const REASON_TERMINATED: &str = "Terminated";

/// Where an entry of `status.tasks` stands, as dependants see it.
pub fn state(t: &TaskStatus) -> State {
    match t.phase {
        TaskPhase::Pending => State::Pending,
        TaskPhase::Running => State::Running,
        TaskPhase::Succeeded => State::Satisfied,
        TaskPhase::Skipped if matches!(t.reason.as_deref(), Some(REASON_WHEN_FALSE | REASON_NO_ITEMS)) => State::Satisfied,
        _ => State::Unsatisfied,
    }
}

/// One task of the workflow in the status being built: its own entry and,
/// when it fans out, the entries of its instances in index order.
#[derive(Debug, Clone)]
struct Node {
    entry: TaskStatus,
    instances: Vec<TaskStatus>,
}

/// What runs: a task that does not fan out, or one instance of one that
/// does. `task` indexes the workflow's tasks then exit tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Unit {
    task: usize,
    instance: Option<usize>,
}

/// Working state: the status being built and the notes gathered.
struct Step<'a> {
    input: &'a Input<'a>,
    specs: Vec<&'a TaskSpec>,
    nodes: Vec<Node>,
    st: WorkflowInstanceStatus,
    events: Vec<Note>,
    /// Tasks whose results a later template or `when` reads.
    /// Worked out when a task first succeeds: it parses every `when`,
    /// which most steps need not do.
    kept: std::cell::OnceCell<std::collections::BTreeSet<String>>,
    /// Bytes of results kept in status so far.
    kept_bytes: usize,
    /// A result that would have taken the kept results past the limit.
    results_overflow: Option<String>,
}

impl<'a> Step<'a> {
    fn new(input: &'a Input<'a>) -> Self {
        let mut st = input.status.clone();
        let specs: Vec<&TaskSpec> = input.workflow.all_tasks().collect();
        let nodes = nodes(&specs, std::mem::take(&mut st.tasks));
        let kept_bytes = nodes.iter().flat_map(|n| std::iter::once(&n.entry).chain(&n.instances)).map(results::kept_size).sum();
        Step { input, specs, nodes, st, events: Vec::new(), kept: std::cell::OnceCell::new(), kept_bytes, results_overflow: None }
    }

    fn spec(&self, task: usize) -> &'a TaskSpec {
        self.specs[task]
    }

    fn unit(&self, u: Unit) -> &TaskStatus {
        let node = &self.nodes[u.task];
        u.instance.map_or(&node.entry, |i| &node.instances[i])
    }

    fn unit_mut(&mut self, u: Unit) -> &mut TaskStatus {
        let node = &mut self.nodes[u.task];
        match u.instance {
            Some(i) => &mut node.instances[i],
            None => &mut node.entry,
        }
    }

    /// Every unit that runs: tasks that do not fan out, and the instances
    /// of those that do.
    fn units(&self) -> Vec<Unit> {
        let mut out = Vec::new();
        for (task, node) in self.nodes.iter().enumerate() {
            if self.spec(task).fans_out() {
                out.extend((0..node.instances.len()).map(|i| Unit { task, instance: Some(i) }));
            } else {
                out.push(Unit { task, instance: None });
            }
        }
        out
    }

    /// How a unit is named in events: the task, or the task and its item.
    fn label(&self, u: Unit) -> String {
        let name = &self.spec(u.task).name;
        match u.instance {
            Some(i) => format!("{name} item {i}"),
            None => name.clone(),
        }
    }

    fn states(&self) -> Vec<State> {
        self.nodes.iter().map(|n| state(&n.entry)).collect()
    }

    fn finish(&mut self, u: Unit, phase: TaskPhase, message: Option<String>) {
        let now = self.input.now;
        let t = self.unit_mut(u);
        t.phase = phase;
        t.finished_at = Some(time(now));
        t.retry_after = None;
        if message.is_some() {
            t.message = message;
        }
        if u.instance.is_some() {
            // A fan-out has up to 1,000 instances: a finished one leaves out
            // what its name and attempts already say (its pod is
            // `<run>-<task>-<index>-<attempt>`), and exit code 0.
            t.pod_name = None;
            if phase == TaskPhase::Succeeded && t.exit_code == Some(0) {
                t.exit_code = None;
            }
        }
    }

    /// The run ends unit `u` while its child run may still be going: record
    /// the intent to stop that child.
    fn abandon_child(&mut self, u: Unit) {
        let t = self.unit_mut(u);
        if let Some(child) = t.child_instance.clone()
            && !t.stop_children.contains(&child)
        {
            t.stop_children.push(child);
        }
    }

    /// An attempt ended without success: retry after the backoff if the
    /// budget allows, else the unit fails.
    fn attempt_failed(&mut self, u: Unit, why: String) {
        let spec = self.spec(u.task);
        let (limit, backoff) = (spec.retry_limit(), spec.retries.as_ref().map_or(0, |r| r.backoff_seconds));
        let now = self.input.now;
        let label = self.label(u);
        let t = self.unit_mut(u);
        if t.retries_used < limit {
            t.retries_used += 1;
            t.phase = TaskPhase::Pending;
            t.retry_after = Some(time(after(&time(now), backoff)));
            t.message = Some(why.clone());
            let used = t.retries_used;
            self.events.push(Note::warning("TaskRetry", format!("task {label}: {why}; retry {used} of {limit} in {backoff}s")));
        } else {
            self.finish(u, TaskPhase::Failed, Some(why.clone()));
            self.events.push(Note::warning("TaskFailed", format!("task {label}: {why}")));
        }
    }

    /// Ends every unfinished unit of the tasks `which` selects: running ones
    /// get `running`, waiting ones `pending`. A fanned-out task's own entry
    /// follows its instances (see [`fanout`]); one not yet fanned out ends
    /// like a waiting unit. Pods and children of ended units are stopped by
    /// the actions.
    fn end_unfinished(&mut self, which: impl Fn(usize) -> bool, running: TaskPhase, pending: TaskPhase, why: &str) {
        for task in (0..self.nodes.len()).filter(|&t| which(t)) {
            let fans_out = self.spec(task).fans_out();
            let units: Vec<Unit> = if fans_out {
                (0..self.nodes[task].instances.len()).map(|i| Unit { task, instance: Some(i) }).collect()
            } else {
                vec![Unit { task, instance: None }]
            };
            for u in units {
                match self.unit(u).phase {
                    TaskPhase::Running => {
                        self.abandon_child(u);
                        self.finish(u, running, Some(why.to_string()))
                    }
                    TaskPhase::Pending => self.finish(u, pending, Some(why.to_string())),
                    _ => {}
                }
            }
            let own = Unit { task, instance: None };
            if fans_out && self.unit(own).phase == TaskPhase::Pending {
                self.finish(own, pending, Some(why.to_string()));
            }
        }
        self.settle_fanouts();
    }

    /// Ends the run; condition `Finished` says how and why.
    fn end_run(&mut self, phase: RunPhase, reason: &str, message: String) {
        self.st.phase = Some(phase);
        self.st.finished_at = Some(time(self.input.now));
        crate::conditions::set(
            &mut self.st.conditions,
            "Finished",
            true,
            reason,
            message.clone(),
            Some(self.input.generation),
            time(self.input.now),
        );
        let note = if phase == RunPhase::Failed { Note::warning(reason, message) } else { Note::normal(reason, message) };
        self.events.push(note);
    }

    fn requeue_after(&self) -> Option<Duration> {
        let now = self.input.now;
        let mut due: Vec<Timestamp> = Vec::new();
        if !self.st.phase.unwrap_or_default().is_terminal() {
            for u in self.units() {
                let t = self.unit(u);
                match t.phase {
                    TaskPhase::Pending => due.extend(t.retry_after.as_ref().map(|r| r.0)),
                    TaskPhase::Running => {
                        if let (Some(s), Some(start)) = (self.spec(u.task).timeout_seconds, &t.started_at) {
                            due.push(after(start, s));
                        }
                    }
                    _ => {}
                }
            }
            if let (Some(limit), Some(start), None) = (self.input.workflow.active_deadline_seconds, &self.st.started_at, self.st.dag_phase)
            {
                due.push(after(start, limit));
            }
        }
        due.into_iter().min().map(|t| Duration::try_from(t.duration_since(now)).unwrap_or(Duration::ZERO) + Duration::from_millis(50))
    }

    /// Finished units / all units (a task not fanned out yet counts once).
    fn progress(&self) -> String {
        let mut finished = 0;
        let mut total = 0;
        for (task, node) in self.nodes.iter().enumerate() {
            let counted: Vec<&TaskStatus> =
                if self.spec(task).fans_out() && !node.instances.is_empty() { node.instances.iter().collect() } else { vec![&node.entry] };
            total += counted.len();
            finished += counted.iter().filter(|t| t.phase.is_finished()).count();
        }
        format!("{finished}/{total}")
    }

    /// The status with the nodes laid out flat again: each task's entry,
    /// then its instances.
    fn into_status(self) -> (WorkflowInstanceStatus, Vec<Note>) {
        let mut st = self.st;
        st.tasks = self.nodes.into_iter().flat_map(|n| std::iter::once(n.entry).chain(n.instances)).collect();
        (st, self.events)
    }
}

/// Lines up `status.tasks` with the workflow's tasks (then exit tasks), each
/// with its instances, in index order. Entries of tasks no longer in the
/// spec are dropped (the spec is a snapshot, so there are none).
fn nodes(specs: &[&TaskSpec], tasks: Vec<TaskStatus>) -> Vec<Node> {
    let mut own: BTreeMap<String, TaskStatus> = BTreeMap::new();
    let mut instances: BTreeMap<String, Vec<(usize, TaskStatus)>> = BTreeMap::new();
    for t in tasks {
        match naming::parse_instance_key(&t.name) {
            Some((task, index)) => instances.entry(task.to_string()).or_default().push((index, t)),
            None => {
                own.insert(t.name.clone(), t);
            }
        }
    }
    specs
        .iter()
        .map(|spec| {
            let entry = own.remove(&spec.name).unwrap_or_else(|| TaskStatus { name: spec.name.clone(), ..Default::default() });
            let mut list = instances.remove(&spec.name).unwrap_or_default();
            list.sort_by_key(|(i, _)| *i);
            Node { entry, instances: list.into_iter().map(|(_, t)| t).collect() }
        })
        .collect()
}

/// Whether a pod or child run of the run is still going. A finished run
/// stays in its owner's hands until nothing is: cleanup that failed (API
/// error, owner killed) is retried, by whoever owns the run then.
fn still_running(observed: &Observed) -> bool {
    observed.pods.iter().any(|p| matches!(p.state, PodState::Waiting | PodState::Running))
        || observed.children.iter().any(|c| !c.phase.is_some_and(RunPhase::is_terminal))
}

/// One step of the executor: the next status, the calls to make once it is
/// written, and the events to record.
pub fn plan(input: &Input<'_>) -> Plan {
    let mut step = Step::new(input);
    if step.st.phase.is_none() {
        step.st.phase = Some(RunPhase::Pending);
    }
    if step.st.started_at.is_none() && !input.spec.shutdown.requested() {
        step.st.started_at = Some(time(input.now));
        step.st.phase = Some(RunPhase::Running);
    }
    step.observe();
    step.apply_requests();
    step.enforce_rules();
    step.start_ready();
    // A decision of this step may have failed a task: failFast applies now.
    step.enforce_rules();
    if step.conclude() {
        // The DAG ended: its exit tasks may start in the same write.
        step.start_ready();
        step.conclude();
    }
    let requeue_after = step.requeue_after();
    step.st.progress = Some(step.progress());
    let (mut st, events) = step.into_status();
    let mut actions = actions(&st, input.spec, input.observed);
    // Ended pods that podGC deletes: the run is not cleaned up until they are gone.
    let collect = podgc::deletes(crate::retention::pod_gc(input.spec, input.workflow), input.run_name, &st, input.observed);
    if st.phase.unwrap_or_default().is_terminal() && !still_running(input.observed) && collect.is_empty() {
        crate::conditions::set(
            &mut st.conditions,
            CONDITION_CLEANED_UP,
            true,
            "NothingRunning",
            "no pod or child run of this run is still running".into(),
            Some(input.generation),
            time(input.now),
        );
    }
    actions.extend(collect.into_iter().map(|name| Action::DeletePod { name }));
    Plan { status: st, actions, events, requeue_after }
}

#[cfg(test)]
mod tests;
