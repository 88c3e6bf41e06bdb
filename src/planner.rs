//! The executor's decisions, as one pure function: from a run's spec,
//! status and the pods and child runs that exist, compute the next status
//! (which records every intent) and the API calls that carry it out.
//!
//! Actions are derived from the *new status* and what exists, never from
//! memory: a new owner that finds the status and the objects computes the
//! same actions, which is how intents recorded before a crash get completed.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::api::{CONDITION_CLEANED_UP, RunPhase, TaskPhase, TaskStatus, WorkflowInstanceSpec, WorkflowInstanceStatus, WorkflowSpec};
use crate::dag::Dag;
use crate::naming;

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
    pub deleting: bool,
}

/// A child run that exists.
#[derive(Debug, Clone, PartialEq)]
pub struct ObservedChild {
    pub name: String,
    /// Patches carry it as a precondition: never steer a namesake.
    pub uid: String,
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
    pub reason: &'static str,
    pub message: String,
}

impl Note {
    fn normal(reason: &'static str, message: String) -> Self {
        Note { warning: false, reason, message }
    }
    fn warning(reason: &'static str, message: String) -> Self {
        Note { warning: true, reason, message }
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

/// How a running task's pod or child run ended.
enum Outcome {
    Succeeded(Option<i32>),
    Failed(String),
    Stopped(String),
}

/// Working state: the status being built and the notes gathered.
struct Step<'a> {
    input: &'a Input<'a>,
    st: WorkflowInstanceStatus,
    events: Vec<Note>,
}

impl Step<'_> {
    fn task(&mut self, i: usize) -> &mut TaskStatus {
        &mut self.st.tasks[i]
    }

    fn phases(&self) -> Vec<TaskPhase> {
        self.st.tasks.iter().map(|t| t.phase).collect()
    }

    fn finish_task(&mut self, i: usize, phase: TaskPhase, message: Option<String>) {
        let now = self.input.now;
        let t = self.task(i);
        t.phase = phase;
        t.finished_at = Some(time(now));
        t.retry_after = None;
        if message.is_some() {
            t.message = message;
        }
    }

    /// The run ends task `i` while its child run may still be going: record
    /// the intent to stop that child.
    fn abandon_child(&mut self, i: usize) {
        let t = self.task(i);
        if let Some(child) = t.child_instance.clone()
            && !t.stop_children.contains(&child)
        {
            t.stop_children.push(child);
        }
    }

    /// An attempt ended without success: retry after the backoff if the
    /// budget allows, else the task fails.
    fn attempt_failed(&mut self, i: usize, why: String) {
        let spec = &self.input.workflow.tasks[i];
        let (limit, backoff) = (spec.retry_limit(), spec.retries.as_ref().map_or(0, |r| r.backoff_seconds));
        let now = self.input.now;
        let name = spec.name.clone();
        let t = self.task(i);
        if t.retries_used < limit {
            t.retries_used += 1;
            t.phase = TaskPhase::Pending;
            t.retry_after = Some(time(after(&time(now), backoff)));
            t.message = Some(why.clone());
            let used = t.retries_used;
            self.events.push(Note::warning("TaskRetry", format!("task {name}: {why}; retry {used} of {limit} in {backoff}s")));
        } else {
            self.finish_task(i, TaskPhase::Failed, Some(why.clone()));
            self.events.push(Note::warning("TaskFailed", format!("task {name}: {why}")));
        }
    }

    /// Ends every unfinished task: running ones get `running`, waiting ones
    /// `pending`. Pods and children of ended tasks are stopped by the actions.
    fn end_unfinished(&mut self, running: TaskPhase, pending: TaskPhase, why: &str) {
        for i in 0..self.st.tasks.len() {
            match self.st.tasks[i].phase {
                TaskPhase::Running => {
                    self.abandon_child(i);
                    self.finish_task(i, running, Some(why.to_string()))
                }
                TaskPhase::Pending => self.finish_task(i, pending, Some(why.to_string())),
                _ => {}
            }
        }
    }

    /// Ends the run; condition `Finished` says how and why.
    fn end_run(&mut self, phase: RunPhase, reason: &'static str, message: String) {
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

    /// Reads what the pods and children say about running tasks.
    fn observe(&mut self) {
        let observed = self.input.observed;
        for i in 0..self.st.tasks.len() {
            let t = self.st.tasks[i].clone();
            if t.phase != TaskPhase::Running {
                continue;
            }
            let timeout = self.input.workflow.tasks[i].timeout_seconds;
            let timed_out = match (timeout, &t.started_at) {
                (Some(s), Some(start)) => self.input.now >= after(start, s),
                _ => false,
            };
            let outcome = if let Some(pod) = t.pod_name.as_ref().and_then(|n| observed.pods.iter().find(|p| &p.name == n)) {
                match pod.state {
                    PodState::Succeeded => Some(Outcome::Succeeded(pod.exit_code)),
                    PodState::Failed => Some(Outcome::Failed(match (&pod.exit_code, &pod.reason) {
                        (Some(code), Some(r)) => format!("pod {} failed: exit code {code} ({r})", pod.name),
                        (Some(code), None) => format!("pod {} failed: exit code {code}", pod.name),
                        (None, r) => format!("pod {} failed: {}", pod.name, r.as_deref().unwrap_or("no reason given")),
                    })),
                    _ => None,
                }
            } else if let Some(child) = t.child_instance.as_ref().and_then(|n| observed.children.iter().find(|c| &c.name == n)) {
                match child.phase {
                    Some(RunPhase::Succeeded) => Some(Outcome::Succeeded(None)),
                    Some(RunPhase::Failed) => Some(Outcome::Failed(format!("child run {} ended Failed", child.name))),
                    // The parent never stops a current child: someone asked
                    // the child itself to stop. The task ends as asked, and
                    // is not retried.
                    Some(RunPhase::Stopped) => Some(Outcome::Stopped(format!("child run {} was stopped by its spec.shutdown", child.name))),
                    _ => None,
                }
            } else {
                None
            };
            let name = self.input.workflow.tasks[i].name.clone();
            match outcome {
                Some(Outcome::Succeeded(exit_code)) => {
                    self.task(i).exit_code = exit_code;
                    self.finish_task(i, TaskPhase::Succeeded, None);
                    self.task(i).message = None;
                    self.events.push(Note::normal("TaskSucceeded", format!("task {name} succeeded")));
                }
                Some(Outcome::Failed(why)) => {
                    if let Some(pod) = t.pod_name.as_ref().and_then(|n| observed.pods.iter().find(|p| &p.name == n)) {
                        self.task(i).exit_code = pod.exit_code;
                    }
                    self.attempt_failed(i, why);
                }
                Some(Outcome::Stopped(why)) => {
                    self.events.push(Note::normal("TaskStopped", format!("task {name}: {why}")));
                    self.finish_task(i, TaskPhase::Stopped, Some(why));
                }
                None if timed_out => {
                    self.abandon_child(i);
                    self.attempt_failed(i, format!("timed out after {}s", timeout.unwrap_or_default()))
                }
                None => {}
            }
        }
    }

    /// Applies the run's requests: shutdown, suspend/resume, retryFailed.
    fn apply_requests(&mut self) {
        let spec = self.input.spec;
        let phase = self.st.phase.unwrap_or_default();
        let applied = self.st.retry_failed_applied.unwrap_or(0);
        if phase.is_terminal() {
            if spec.retry_failed > applied {
                if spec.shutdown.requested() {
                    self.events.push(Note::warning("RetryDeferred", "retryFailed waits until spec.shutdown is cleared".into()));
                } else {
                    self.retry_failed();
                }
            }
        } else {
            if spec.retry_failed > applied {
                // Recorded as seen, so it does not fire later by surprise
                // when the run ends; the user is told to ask again.
                self.st.retry_failed_applied = Some(spec.retry_failed);
                self.events.push(Note::warning(
                    "RetryIgnored",
                    format!(
                        "retryFailed={} ignored: the run is still {}; retryFailed re-runs tasks of a finished run, increase it again once the run has ended",
                        spec.retry_failed,
                        phase.as_str()
                    ),
                ));
            }
            if spec.shutdown.requested() {
                self.end_unfinished(TaskPhase::Stopped, TaskPhase::Stopped, "stopped by spec.shutdown");
                self.end_run(RunPhase::Stopped, "Stopped", format!("run stopped by spec.shutdown={:?}", spec.shutdown));
            } else if spec.suspend && phase != RunPhase::Paused {
                self.st.phase = Some(RunPhase::Paused);
                self.events.push(Note::normal("Paused", "run paused by spec.suspend: no new task starts".into()));
            } else if !spec.suspend && phase == RunPhase::Paused {
                self.st.phase = Some(RunPhase::Running);
                self.events.push(Note::normal("Resumed", "run resumed".into()));
            }
        }
        self.st.observed_generation = Some(self.input.generation);
    }

    fn retry_failed(&mut self) {
        self.st.retry_failed_applied = Some(self.input.spec.retry_failed);
        let again = |t: &TaskStatus| matches!(t.phase, TaskPhase::Failed | TaskPhase::Skipped | TaskPhase::Stopped);
        let count = self.st.tasks.iter().filter(|t| again(t)).count();
        if count == 0 {
            self.events.push(Note::normal("RetryFailed", "nothing to re-run: no task failed, was skipped or stopped".into()));
            return;
        }
        for t in self.st.tasks.iter_mut().filter(|t| again(t)) {
            t.phase = TaskPhase::Pending;
            t.retries_used = 0;
            t.finished_at = None;
            t.retry_after = None;
            t.message = None;
        }
        self.st.phase = Some(if self.input.spec.suspend { RunPhase::Paused } else { RunPhase::Running });
        self.st.finished_at = None;
        self.st.conditions.retain(|c| c.type_ != "Finished" && c.type_ != CONDITION_CLEANED_UP);
        self.events.push(Note::normal("RetryFailed", format!("re-running {count} failed, skipped or stopped tasks")));
    }

    /// Run deadline, failFast, and skipping what can no longer run.
    fn enforce_rules(&mut self) {
        let phase = self.st.phase.unwrap_or_default();
        if phase.is_terminal() {
            return;
        }
        if let (Some(limit), Some(start)) = (self.input.workflow.active_deadline_seconds, &self.st.started_at)
            && self.input.now >= after(start, limit)
        {
            self.end_unfinished(TaskPhase::Failed, TaskPhase::Skipped, "run deadline exceeded");
            self.end_run(RunPhase::Failed, "DeadlineExceeded", format!("run still going after activeDeadlineSeconds={limit}"));
            return;
        }
        if self.input.workflow.fail_fast() && self.st.tasks.iter().any(|t| t.phase == TaskPhase::Failed) {
            self.end_unfinished(TaskPhase::Stopped, TaskPhase::Skipped, "stopped by failFast after a task failed");
        }
        loop {
            let blocked: Vec<usize> = self.input.dag.blocked(&self.phases()).collect();
            if blocked.is_empty() {
                break;
            }
            for i in blocked {
                self.finish_task(i, TaskPhase::Skipped, Some("a dependency did not succeed".into()));
            }
        }
    }

    /// Records the intent to start every ready task that fits in the
    /// parallelism limit.
    fn start_ready(&mut self) {
        if self.st.phase != Some(RunPhase::Running) {
            return;
        }
        let running = self.st.tasks.iter().filter(|t| t.phase == TaskPhase::Running).count();
        let limit = self.input.workflow.parallelism.map_or(usize::MAX, |p| p.max(1) as usize);
        let now = self.input.now;
        let phases = self.phases();
        let ready: Vec<usize> = self
            .input
            .dag
            .ready(&phases)
            .filter(|&i| self.st.tasks[i].retry_after.as_ref().is_none_or(|t| t.0 <= now))
            .take(limit.saturating_sub(running))
            .collect();
        for i in ready {
            let spec = &self.input.workflow.tasks[i];
            let run = self.input.run_name;
            let t = &mut self.st.tasks[i];
            let attempt = t.attempts;
            t.attempts += 1;
            t.phase = TaskPhase::Running;
            t.started_at = Some(time(now));
            t.finished_at = None;
            t.retry_after = None;
            t.exit_code = None;
            if spec.container.is_some() {
                t.pod_name = Some(naming::pod(run, &spec.name, attempt));
            } else {
                t.child_instance = Some(naming::child(run, &spec.name, attempt));
            }
            self.events.push(Note::normal("TaskStarted", format!("task {} attempt {attempt} started", spec.name)));
        }
    }

    fn conclude(&mut self) {
        let total = self.st.tasks.len();
        let finished = self.st.tasks.iter().filter(|t| t.phase.is_finished()).count();
        self.st.progress = Some(format!("{finished}/{total}"));
        let phase = self.st.phase.unwrap_or_default();
        if finished == total && !phase.is_terminal() {
            let failed = self.st.tasks.iter().find(|t| t.phase == TaskPhase::Failed);
            match failed.or_else(|| self.st.tasks.iter().find(|t| t.phase != TaskPhase::Succeeded)) {
                None => self.end_run(RunPhase::Succeeded, "Succeeded", format!("all {total} tasks succeeded")),
                Some(t) => {
                    let why = t.message.as_deref().map(|m| format!(": {m}")).unwrap_or_default();
                    let message = format!("task {} ended {:?}{why}", t.name, t.phase);
                    self.end_run(RunPhase::Failed, "TaskFailed", message)
                }
            }
        }
    }

    fn requeue_after(&self) -> Option<Duration> {
        let now = self.input.now;
        let mut due: Vec<Timestamp> = Vec::new();
        if !self.st.phase.unwrap_or_default().is_terminal() {
            for (t, spec) in self.st.tasks.iter().zip(&self.input.workflow.tasks) {
                match t.phase {
                    TaskPhase::Pending => due.extend(t.retry_after.as_ref().map(|r| r.0)),
                    TaskPhase::Running => {
                        if let (Some(s), Some(start)) = (spec.timeout_seconds, &t.started_at) {
                            due.push(after(start, s));
                        }
                    }
                    _ => {}
                }
            }
            if let (Some(limit), Some(start)) = (self.input.workflow.active_deadline_seconds, &self.st.started_at) {
                due.push(after(start, limit));
            }
        }
        due.into_iter().min().map(|t| Duration::try_from(t.duration_since(now)).unwrap_or(Duration::ZERO) + Duration::from_millis(50))
    }
}

/// Lines up `status.tasks` with the workflow's tasks, in workflow order.
fn aligned_tasks(workflow: &WorkflowSpec, tasks: &[TaskStatus]) -> Vec<TaskStatus> {
    let by_name: BTreeMap<&str, &TaskStatus> = tasks.iter().map(|t| (t.name.as_str(), t)).collect();
    workflow
        .tasks
        .iter()
        .map(|spec| {
            by_name
                .get(spec.name.as_str())
                .map(|t| (*t).clone())
                .unwrap_or_else(|| TaskStatus { name: spec.name.clone(), ..Default::default() })
        })
        .collect()
}

/// The API calls that make the world match `status`. Stops come before
/// starts, so a freed parallelism slot is free before it is reused.
pub fn actions(status: &WorkflowInstanceStatus, spec: &WorkflowInstanceSpec, observed: &Observed) -> Vec<Action> {
    let mut out = Vec::new();
    let run_ended = status.phase.unwrap_or_default().is_terminal();
    for pod in &observed.pods {
        let current = status.tasks.iter().any(|t| t.phase == TaskPhase::Running && t.pod_name.as_ref() == Some(&pod.name));
        if !current && !pod.deleting && matches!(pod.state, PodState::Waiting | PodState::Running) {
            out.push(Action::DeletePod { name: pod.name.clone() });
        }
    }
    for child in &observed.children {
        let current = status.tasks.iter().any(|t| t.phase == TaskPhase::Running && t.child_instance.as_ref() == Some(&child.name));
        let child_ended = child.phase.is_some_and(RunPhase::is_terminal);
        if current && !run_ended {
            // Pass on a pause or resume of the parent, once per change.
            let request = match (spec.suspend, child.passed.suspend) {
                (true, Some(true)) | (false, Some(false) | None) => None,
                (true, _) => Some(ChildRequest::Pause { prior: child.suspend }),
                (false, Some(true)) => Some(ChildRequest::Resume { to: child.passed.prior.unwrap_or(false) }),
            };
            out.extend(request.map(|request| Action::SteerChild { name: child.name.clone(), request }));
        } else if !child_ended && !child.passed.stop && status.tasks.iter().any(|t| t.stop_children.contains(&child.name)) {
            // The run ended its task while it was going: it must end too.
            out.push(Action::SteerChild { name: child.name.clone(), request: ChildRequest::Stop });
        }
    }
    for t in status.tasks.iter().filter(|t| t.phase == TaskPhase::Running) {
        if let Some(pod) = &t.pod_name
            && !observed.pods.iter().any(|p| &p.name == pod)
        {
            out.push(Action::CreatePod { task: t.name.clone(), attempt: t.attempts - 1 });
        }
        if let Some(child) = &t.child_instance
            && !observed.children.iter().any(|c| &c.name == child)
        {
            out.push(Action::CreateChild { task: t.name.clone(), attempt: t.attempts - 1 });
        }
    }
    out
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
    let mut st = input.status.clone();
    st.tasks = aligned_tasks(input.workflow, &st.tasks);
    if st.phase.is_none() {
        st.phase = Some(RunPhase::Pending);
    }
    let mut step = Step { input, st, events: Vec::new() };
    if step.st.started_at.is_none() && !input.spec.shutdown.requested() {
        step.st.started_at = Some(time(input.now));
        step.st.phase = Some(RunPhase::Running);
    }
    step.observe();
    step.apply_requests();
    step.enforce_rules();
    step.start_ready();
    step.conclude();
    let requeue_after = step.requeue_after();
    let actions = actions(&step.st, input.spec, input.observed);
    if step.st.phase.unwrap_or_default().is_terminal() && !still_running(input.observed) {
        crate::conditions::set(
            &mut step.st.conditions,
            CONDITION_CLEANED_UP,
            true,
            "NothingRunning",
            "no pod or child run of this run is still running".into(),
            Some(input.generation),
            time(input.now),
        );
    }
    Plan { status: step.st, actions, events: step.events, requeue_after }
}

#[cfg(test)]
mod tests;
