//! The WorkflowInstance reconciler: decides who owns the run, then fetches
//! what the planner needs, records the plan with one fenced status write,
//! and carries out its actions (idempotent creates, deletes, child steering).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::{Action as Requeue, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::api::{
    CONDITION_CLEANED_UP, Owner, OwnerChange, OwnerChangeReason, RunPhase, TaskPhase, Workflow, WorkflowInstance, WorkflowInstanceStatus,
    WorkflowSpec,
};
use crate::dag::{self, Dag};
use crate::fence::{self, Fence, FenceError};
use crate::lease::Membership;
use crate::metrics::{ClaimLabel, ErrorLabel, Metrics, PhaseLabel};
use crate::naming;
use crate::objects::{
    self, ANNOTATION_PARENT_STOP, ANNOTATION_PARENT_SUSPEND, ANNOTATION_PARENT_SUSPEND_PRIOR, Belongs, LABEL_INSTANCE, LABEL_PARENT,
    LABEL_TASK,
};
use crate::ownership::{self, Decision};
use crate::planner::{self, Action, ChildRequest, Observed, ObservedChild, ObservedPod, Passed, PodState, results};
use crate::reaper::Expiry;

/// Owner changes kept in `status.ownerHistory`.
const OWNER_HISTORY: usize = 10;
/// How often a run is looked at when nothing wakes it earlier.
const RESYNC: Duration = Duration::from_secs(300);
/// Longest a reconcile may take. A request sent while the API server shuts
/// down can hang until kube's read timeout (about 5 minutes), and the object
/// with it; past this the reconcile is dropped and retried. Dropping one is
/// safe: its writes are fenced and its creates idempotent.
pub(crate) const RECONCILE_TIMEOUT: Duration = Duration::from_secs(30);

/// State shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub membership: Membership,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    /// Set at shutdown: release runs instead of acting on them.
    pub draining: AtomicBool,
    /// Runs this controller owns (uid -> phase), for the gauges and for the
    /// shutdown that waits until they are released.
    owned: Mutex<HashMap<String, RunPhase>>,
}

impl Context {
    pub fn new(client: Client, membership: Membership, metrics: Arc<Metrics>) -> Self {
        let reporter = Reporter { controller: "baton-controller".into(), instance: Some(membership.identity().to_string()) };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            membership,
            metrics,
            draining: AtomicBool::new(false),
            owned: Mutex::default(),
        }
    }

    /// What to do with an object (run or Workflow) whose status names
    /// `owner`: the facts this controller knows, handed to
    /// [`ownership::decide`].
    pub(crate) fn decide(&self, owner: Option<&Owner>, uid: &str, idle: bool) -> Decision {
        let members = self.membership.live_members();
        ownership::decide(ownership::Facts {
            me: self.membership.identity(),
            owner: owner.map(|o| o.controller.as_str()),
            owner_live: owner.is_some_and(|o| self.membership.is_live(&o.controller)),
            assigned: ownership::rendezvous(uid, &members),
            idle,
            draining: self.draining.load(Ordering::SeqCst),
        })
    }

    /// Unfinished runs this controller still owns.
    pub fn owned_unfinished(&self) -> usize {
        self.owned.lock().expect("poisoned").values().filter(|p| !p.is_terminal()).count()
    }

    fn track(&self, uid: &str, phase: Option<RunPhase>) {
        let mut owned = self.owned.lock().expect("poisoned");
        match phase {
            Some(p) => owned.insert(uid.to_string(), p),
            None => owned.remove(uid),
        };
        let mut counts = HashMap::new();
        for p in owned.values() {
            *counts.entry(*p).or_insert(0) += 1;
        }
        self.metrics.set_runs(&counts);
    }

    /// Records an Event on `object` in the background, so a slow Events API
    /// never holds up a reconcile; failing to record one is logged, not fatal.
    pub(crate) fn event<K: Resource<DynamicType = ()>>(&self, object: &K, warning: bool, reason: &str, message: String) {
        let event = Event {
            type_: if warning { EventType::Warning } else { EventType::Normal },
            reason: reason.to_string(),
            note: Some(event_note(message)),
            action: "Reconcile".into(),
            secondary: None,
        };
        let (recorder, reference) = (self.recorder.clone(), object.object_ref(&()));
        tokio::spawn(async move {
            if let Err(e) = recorder.publish(&event, &reference).await {
                warn!(error = %e, "cannot record event");
            }
        });
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Fence(#[from] FenceError),
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("reconcile took longer than {0:?}; retrying")]
    Timeout(Duration),
}

impl Error {
    fn kind(&self) -> &'static str {
        match self {
            Error::Fence(FenceError::Conflict) => "conflict",
            Error::Fence(FenceError::Refused(_)) => "fenced",
            Error::Fence(FenceError::Kube(_)) | Error::Kube(_) => "api",
            Error::Timeout(_) => "timeout",
        }
    }
}

pub(crate) fn now() -> Time {
    Time(Timestamp::now())
}

/// Longest Event note the API server accepts (events.k8s.io/v1).
const MAX_NOTE: usize = 1024;

/// An Event note cut to what the API server accepts (on a character
/// boundary), so a long message is shortened rather than the Event lost.
fn event_note(mut message: String) -> String {
    if message.len() > MAX_NOTE {
        let mut end = MAX_NOTE - 3;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push_str("...");
    }
    message
}

/// The owner this controller becomes when it claims: the next epoch.
pub(crate) fn next_owner(previous: Option<&Owner>, membership: &Membership) -> Owner {
    Owner {
        controller: membership.identity().to_string(),
        lease: membership.lease_name().to_string(),
        epoch: previous.map_or(0, |o| o.epoch) + 1,
        since: now(),
    }
}

/// Sets a condition on an object's status, now.
pub(crate) fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
) {
    crate::conditions::set(conditions, type_, ok, reason, message, generation, now());
}

/// Reconciles one run.
pub async fn reconcile(run: Arc<WorkflowInstance>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    let span = info_span!(
        "reconcile",
        namespace = run.namespace().unwrap_or_default(),
        name = run.name_any(),
        controller = ctx.membership.identity()
    );
    with_timeout(reconcile_run(run, ctx)).instrument(span).await
}

/// Runs a reconcile for at most [`RECONCILE_TIMEOUT`].
pub(crate) async fn with_timeout(reconcile: impl std::future::Future<Output = Result<Requeue, Error>>) -> Result<Requeue, Error> {
    tokio::time::timeout(RECONCILE_TIMEOUT, reconcile).await.unwrap_or(Err(Error::Timeout(RECONCILE_TIMEOUT)))
}

async fn reconcile_run(run: Arc<WorkflowInstance>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    let _timer = ctx.metrics.reconcile_timer();
    if run.metadata.deletion_timestamp.is_some() {
        ctx.track(&run.uid().unwrap_or_default(), None);
        return Ok(Requeue::await_change());
    }
    if !ctx.membership.valid() {
        // Cut off: act on nothing until our Lease is renewed.
        return Ok(Requeue::requeue(Duration::from_secs(1)));
    }
    let api: Api<WorkflowInstance> = Api::namespaced(ctx.client.clone(), &run.namespace().unwrap_or_default());
    let status = run.status.clone().unwrap_or_default();
    let uid = run.uid().unwrap_or_default();
    let idle = crate::retention::idle(&run);
    match ctx.decide(status.owner.as_ref(), &uid, idle) {
        Decision::Leave => {
            ctx.track(&uid, None);
            Ok(Requeue::await_change())
        }
        Decision::Release => release(&api, &run, status, &ctx).await,
        Decision::Claim(reason) => {
            let claimed = claim(&api, &run, status, reason, &ctx).await?;
            execute(&api, claimed, &ctx).await
        }
        Decision::Act => execute(&api, (*run).clone(), &ctx).await,
    }
}

async fn claim(
    api: &Api<WorkflowInstance>,
    run: &WorkflowInstance,
    mut status: WorkflowInstanceStatus,
    reason: OwnerChangeReason,
    ctx: &Context,
) -> Result<WorkflowInstance, Error> {
    let me = ctx.membership.identity().to_string();
    let previous = status.owner.clone();
    let owner = next_owner(previous.as_ref(), &ctx.membership);
    let (epoch, since) = (owner.epoch, owner.since.clone());
    status.owner = Some(owner);
    status.owner_history.push(OwnerChange { controller: me.clone(), epoch, since, reason });
    let excess = status.owner_history.len().saturating_sub(OWNER_HISTORY);
    status.owner_history.drain(..excess);
    let written = fence::write_status(api, run, status, Fence::Claim, &ctx.membership, &ctx.metrics).await?;
    ctx.metrics.claims.get_or_create(&ClaimLabel { reason: reason.into() }).inc();
    let old = previous.map(|o| o.controller).filter(|c| !c.is_empty()).unwrap_or_else(|| "nobody".into());
    info!(epoch, ?reason, from = %old, "claimed run");
    let message = format!("owner changed from {old} to {me} (epoch {epoch}, {reason:?})");
    ctx.event(&written, reason == OwnerChangeReason::Failover, "OwnerChanged", message);
    Ok(written)
}

async fn release(
    api: &Api<WorkflowInstance>,
    run: &WorkflowInstance,
    mut status: WorkflowInstanceStatus,
    ctx: &Context,
) -> Result<Requeue, Error> {
    if let Some(owner) = status.owner.as_mut() {
        owner.release();
    }
    let written = fence::write_status(api, run, status, Fence::Owner, &ctx.membership, &ctx.metrics).await?;
    ctx.metrics.releases.inc();
    ctx.track(&run.uid().unwrap_or_default(), None);
    info!("released run to its assigned controller");
    ctx.event(&written, false, "Released", format!("{} released the run", ctx.membership.identity()));
    Ok(Requeue::await_change())
}

/// Fails a run that cannot start, with a condition and a Warning Event.
async fn reject(
    api: &Api<WorkflowInstance>,
    run: &WorkflowInstance,
    mut status: WorkflowInstanceStatus,
    reason: &str,
    message: String,
    ctx: &Context,
) -> Result<Requeue, Error> {
    set_condition(&mut status.conditions, "Valid", false, reason, message.clone(), run.metadata.generation);
    // A run that could not start has nothing to clean up.
    set_condition(
        &mut status.conditions,
        CONDITION_CLEANED_UP,
        true,
        "NeverStarted",
        "the run started nothing".into(),
        run.metadata.generation,
    );
    status.phase = Some(RunPhase::Failed);
    status.finished_at = Some(now());
    status.observed_generation = run.metadata.generation;
    let written = fence::write_status(api, run, status, Fence::Owner, &ctx.membership, &ctx.metrics).await?;
    warn!(%message, "run cannot start");
    ctx.event(&written, true, reason, message);
    ctx.track(&run.uid().unwrap_or_default(), Some(RunPhase::Failed));
    Ok(Requeue::await_change())
}

/// Checks a workflow (for a run that names it, when `run` is given); the
/// problems, if any, as one line.
pub(crate) async fn check_workflow(
    wf_api: &Api<Workflow>,
    name: &str,
    spec: &WorkflowSpec,
    run: Option<&WorkflowInstance>,
) -> Result<Option<String>, Error> {
    let mut problems: Vec<String> = dag::validate(spec).iter().map(ToString::to_string).collect();
    if let Some(Err(p)) = run.map(|r| dag::resolve_params(spec, &r.spec.params)) {
        problems.extend(p.iter().map(ToString::to_string));
    }
    if !dag::referenced_workflows(spec).is_empty() {
        let all: BTreeMap<String, WorkflowSpec> =
            wf_api.list(&ListParams::default()).await?.into_iter().map(|w| (w.name_any(), w.spec)).collect();
        if let Some(chain) = dag::workflow_cycle(name, |w| all.get(w).map(dag::referenced_workflows)) {
            problems.push(format!("workflowRef chain leads back to itself: {}", chain.join(" -> ")));
        }
    }
    Ok((!problems.is_empty()).then(|| problems.join("; ")))
}

/// Lists the run's pods and child runs, by label, from the API server. Only
/// those whose controller ownerReference carries the run's UID count.
async fn observe(ctx: &Context, run: &WorkflowInstance) -> Result<Observed, Error> {
    let (ns, name, uid) = (run.namespace().unwrap_or_default(), run.name_any(), run.uid().unwrap_or_default());
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let runs: Api<WorkflowInstance> = Api::namespaced(ctx.client.clone(), &ns);
    let label = naming::label_value(&name);
    let (pod_selector, child_selector) = (format!("{LABEL_INSTANCE}={label}"), format!("{LABEL_PARENT}={label}"));
    let (pod_params, child_params) = (ListParams::default().labels(&pod_selector), ListParams::default().labels(&child_selector));
    let (pods, children) = futures::try_join!(pods.list(&pod_params), runs.list(&child_params))?;
    Ok(Observed {
        pods: pods.into_iter().filter(|p| objects::controlled_by(&p.metadata, &uid)).map(observed_pod).collect(),
        children: children
            .into_iter()
            .filter(|c| objects::controlled_by(&c.metadata, &uid))
            .map(|c| ObservedChild {
                uid: c.uid().unwrap_or_default(),
                task: c.labels().get(LABEL_TASK).cloned().unwrap_or_default(),
                name: c.name_any(),
                phase: c.status.as_ref().and_then(|s| s.phase),
                suspend: c.spec.suspend,
                passed: Passed {
                    suspend: c.annotations().get(ANNOTATION_PARENT_SUSPEND).and_then(|v| v.parse().ok()),
                    prior: c.annotations().get(ANNOTATION_PARENT_SUSPEND_PRIOR).and_then(|v| v.parse().ok()),
                    stop: c.annotations().contains_key(ANNOTATION_PARENT_STOP),
                },
            })
            .collect(),
    })
}

fn observed_pod(pod: Pod) -> ObservedPod {
    let status = pod.status.clone().unwrap_or_default();
    let terminated = status.container_statuses.iter().flatten().find_map(|c| c.state.as_ref().and_then(|s| s.terminated.clone()));
    let state = match status.phase.as_deref() {
        Some("Succeeded") => PodState::Succeeded,
        Some("Failed") => PodState::Failed,
        Some("Running") => PodState::Running,
        _ => PodState::Waiting,
    };
    ObservedPod {
        uid: pod.uid().unwrap_or_default(),
        task: pod.labels().get(LABEL_TASK).cloned().unwrap_or_default(),
        name: pod.name_any(),
        state,
        exit_code: terminated.as_ref().map(|t| t.exit_code),
        message: terminated.as_ref().and_then(|t| t.message.clone()),
        reason: terminated.and_then(|t| t.reason).or(status.reason),
        deleting: pod.metadata.deletion_timestamp.is_some(),
    }
}

/// Runs one planner step for a run this controller owns.
async fn execute(api: &Api<WorkflowInstance>, run: WorkflowInstance, ctx: &Context) -> Result<Requeue, Error> {
    let ns = run.namespace().unwrap_or_default();
    let name = run.name_any();
    let uid = run.uid().unwrap_or_default();
    let mut status = run.status.clone().unwrap_or_default();
    if crate::retention::settled(&run) {
        // Finished and cleaned up: only its TTL is left (without one it is idle).
        let (phase, requeue) = match crate::reaper::expire(ctx, api, &run).await? {
            Expiry::Kept => (status.phase, Requeue::await_change()),
            Expiry::Wait(after) => (status.phase, Requeue::requeue(after.min(RESYNC))),
            Expiry::Deleted => (None, Requeue::await_change()),
        };
        ctx.track(&uid, phase);
        return Ok(requeue);
    }
    if status.workflow_spec.is_none() && !status.phase.unwrap_or_default().is_terminal() {
        let wf_api: Api<Workflow> = Api::namespaced(ctx.client.clone(), &ns);
        let wf_name = &run.spec.workflow_ref.name;
        let Some(wf) = wf_api.get_opt(wf_name).await? else {
            return reject(api, &run, status, "WorkflowNotFound", format!("workflow {wf_name:?} does not exist in namespace {ns}"), ctx)
                .await;
        };
        if let Some(problems) = check_workflow(&wf_api, wf_name, &wf.spec, Some(&run)).await? {
            return reject(api, &run, status, "InvalidWorkflow", format!("workflow {wf_name}: {problems}"), ctx).await;
        }
        set_condition(
            &mut status.conditions,
            "Valid",
            true,
            "WorkflowValid",
            format!("running workflow {wf_name}"),
            run.metadata.generation,
        );
        status.workflow_spec = Some(wf.spec);
    }
    let Some(workflow) = status.workflow_spec.clone() else {
        ctx.track(&uid, status.phase);
        return Ok(Requeue::await_change());
    };
    let (dag, values) = match (Dag::new(&workflow), dag::resolve_params(&workflow, &run.spec.params)) {
        (Ok(d), Ok(v)) => (d, v),
        (Err(p), _) | (_, Err(p)) => return reject(api, &run, status, "InvalidWorkflow", dag::summarize(&p), ctx).await,
    };
    let observed = observe(ctx, &run).await?;
    let plan = planner::plan(&planner::Input {
        run_name: &name,
        namespace: &ns,
        params: &values,
        generation: run.metadata.generation.unwrap_or_default(),
        spec: &run.spec,
        status: &status,
        workflow: &workflow,
        dag: &dag,
        observed: &observed,
        now: Timestamp::now(),
    });
    // Actions follow a successful fenced write, even when the status did not
    // change: the write (a no-op for the API server) proves the run as read
    // is current and ours, so a stale cached copy can never drive a create
    // or delete.
    let written = if Some(&plan.status) != run.status.as_ref() || !plan.actions.is_empty() {
        fence::write_status(api, &run, plan.status.clone(), Fence::Owner, &ctx.membership, &ctx.metrics).await?
    } else {
        run.clone()
    };
    record_progress(&status, &plan.status, &ctx.metrics);
    ctx.track(&uid, plan.status.phase);
    for note in &plan.events {
        ctx.event(&written, note.warning, &note.reason, note.message.clone());
    }
    let epoch = plan.status.owner.as_ref().map_or(0, |o| o.epoch);
    let (mut failures, mut waiting) = (Vec::new(), false);
    for action in &plan.actions {
        if !ctx.membership.valid() {
            ctx.metrics.fenced_writes_refused.inc();
            return Ok(Requeue::requeue(Duration::from_secs(1)));
        }
        match carry_out(ctx, &written, &workflow, &values, epoch, &observed, action).await? {
            Done::Yes => {}
            Done::Wait => waiting = true,
            Done::TaskFails(failure) => failures.push(failure),
        }
    }
    if !failures.is_empty() {
        return fail_tasks(api, written, failures, ctx).await;
    }
    if waiting {
        return Ok(Requeue::requeue(Duration::from_secs(3)));
    }
    let requeue = if plan.status.phase.unwrap_or_default().is_terminal() { None } else { plan.requeue_after };
    Ok(Requeue::requeue(requeue.unwrap_or(RESYNC).min(RESYNC)))
}

/// Counts task starts, completions and retries between two statuses.
fn record_progress(before: &WorkflowInstanceStatus, after: &WorkflowInstanceStatus, metrics: &Metrics) {
    for t in &after.tasks {
        let old = before.tasks.iter().find(|o| o.name == t.name);
        let (old_phase, old_attempts, old_retries) = old.map_or((TaskPhase::Pending, 0, 0), |o| (o.phase, o.attempts, o.retries_used));
        if t.attempts > old_attempts {
            metrics.task_starts.inc();
        }
        if t.retries_used > old_retries {
            metrics.task_retries.inc();
        }
        if t.phase.is_finished() && t.phase != old_phase {
            metrics.task_completions.get_or_create(&PhaseLabel { phase: t.phase.as_str() }).inc();
        }
    }
}

/// How one API call of a plan went, when it did not fail outright.
enum Done {
    Yes,
    /// The name is taken by an object that is going away (left by a deleted
    /// predecessor, or being deleted); the call is made again after it.
    Wait,
    /// The task cannot go on: its object could not be built, was refused as
    /// invalid, or its name belongs to someone else.
    TaskFails(Failure),
}

/// A task that fails because its pod or child could not be created.
struct Failure {
    task: String,
    reason: &'static str,
    message: String,
}

/// Makes one API call of a plan.
async fn carry_out(
    ctx: &Context,
    run: &WorkflowInstance,
    workflow: &WorkflowSpec,
    values: &BTreeMap<String, String>,
    epoch: i64,
    observed: &Observed,
    action: &Action,
) -> Result<Done, Error> {
    let ns = run.namespace().unwrap_or_default();
    let task_spec = |key: &str| workflow.task(naming::task_of(key)).expect("planned tasks exist");
    let invalid = |task: &str, message: String| Done::TaskFails(Failure { task: task.to_string(), reason: "TaskFailed", message });
    let status = run.status.clone().unwrap_or_default();
    let scope = |key: &str| results::RunScope::of_entry(run, workflow, &status, values, key);
    match action {
        Action::CreatePod { task, attempt } => {
            match scope(task).and_then(|s| objects::pod(run, task_spec(task), task, *attempt, &s, epoch)) {
                Ok(pod) => {
                    crate::failpoint!("run-create-pod");
                    create(ctx, run, task, &Api::<Pod>::namespaced(ctx.client.clone(), &ns), &pod).await
                }
                Err(message) => Ok(invalid(task, message)),
            }
        }
        Action::CreateChild { task, attempt } => {
            match scope(task).and_then(|s| objects::child(run, task_spec(task), task, *attempt, &s, epoch)) {
                Ok(child) => {
                    crate::failpoint!("run-create-child");
                    create(ctx, run, task, &Api::<WorkflowInstance>::namespaced(ctx.client.clone(), &ns), &child).await
                }
                Err(message) => Ok(invalid(task, message)),
            }
        }
        Action::DeletePod { name } => {
            // Only the pod that was observed as the run's: a namesake made
            // since is refused by the precondition (409) and left alone.
            let uid = observed.pods.iter().find(|p| &p.name == name).map(|p| p.uid.clone());
            delete_exactly(&Api::<Pod>::namespaced(ctx.client.clone(), &ns), name, uid).await?;
            Ok(Done::Yes)
        }
        Action::SteerChild { name, request } => {
            // The annotation records what was passed on, in the same patch;
            // the UID makes it apply only to the child that was observed.
            let uid = observed.children.iter().find(|c| &c.name == name).map(|c| c.uid.clone());
            let mut patch = match request {
                ChildRequest::Pause { prior } => serde_json::json!({
                    "metadata": {"annotations": {ANNOTATION_PARENT_SUSPEND: "true", ANNOTATION_PARENT_SUSPEND_PRIOR: prior.to_string()}},
                    "spec": {"suspend": true},
                }),
                ChildRequest::Resume { to } => serde_json::json!({
                    "metadata": {"annotations": {ANNOTATION_PARENT_SUSPEND: "false"}},
                    "spec": {"suspend": to},
                }),
                ChildRequest::Stop => serde_json::json!({
                    "metadata": {"annotations": {ANNOTATION_PARENT_STOP: "true"}},
                    "spec": {"shutdown": "Stop"},
                }),
            };
            patch["metadata"]["uid"] = serde_json::json!(uid);
            let api = Api::<WorkflowInstance>::namespaced(ctx.client.clone(), &ns);
            match api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                Ok(_) => Ok(Done::Yes),
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(Done::Yes),
                Err(e) => Err(e.into()),
            }
        }
    }
}

/// Creates a pod or child run of `task`. `AlreadyExists` is adoption only
/// when the object's controller ownerReference carries the run's UID.
async fn create<K>(ctx: &Context, run: &WorkflowInstance, task: &str, api: &Api<K>, object: &K) -> Result<Done, Error>
where
    K: Resource<DynamicType = ()> + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let kind = K::kind(&());
    let name = object.meta().name.clone().unwrap_or_default();
    let refused = |reason, message| Ok(Done::TaskFails(Failure { task: task.to_string(), reason, message }));
    match api.create(&PostParams::default(), object).await {
        Ok(_) => {
            debug!(%kind, %name, "created");
            Ok(Done::Yes)
        }
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let Some(existing) = api.get_opt(&name).await? else {
                return Ok(Done::Wait); // gone meanwhile: create it next time
            };
            match objects::belongs(existing.meta(), "WorkflowInstance", &run.name_any(), &run.uid().unwrap_or_default()) {
                Belongs::Ours => {
                    // Created by an earlier owner, or an earlier call of ours.
                    ctx.metrics.adopted.inc();
                    debug!(%kind, %name, "adopted existing object");
                    Ok(Done::Yes)
                }
                Belongs::Leftover(why) => {
                    // What the garbage collector would delete, and may be
                    // slow to (after an API server outage it can take
                    // minutes): this exact object (UID precondition) is
                    // deleted; the next reconcile creates the run's own.
                    info!(%kind, %name, %why, "deleting a deleted predecessor's leftover to take its name");
                    delete_exactly(api, &name, existing.uid()).await?;
                    ctx.event(
                        run,
                        false,
                        "LeftoverDeleted",
                        format!("task {task}: {kind} {name} {why}; deleted it to create this run's own"),
                    );
                    Ok(Done::Wait)
                }
                Belongs::Going => {
                    info!(%kind, %name, "name still taken by an object being deleted; waiting for it to go");
                    ctx.event(run, true, "NameTaken", format!("task {task}: {kind} {name} is being deleted; waiting for it to go"));
                    Ok(Done::Wait)
                }
                Belongs::Foreign(whose) => {
                    warn!(%kind, %name, %whose, "name collision");
                    refused("NameCollision", format!("{kind} {name} already exists and is not this run's: {whose}; it is left alone"))
                }
            }
        }
        Err(kube::Error::Api(s)) if s.code == 422 || s.code == 400 => {
            refused("TaskFailed", format!("rejected by the API server: {}", s.message))
        }
        Err(kube::Error::Api(s)) if s.code == 403 && s.message.contains(crate::webhook::STALE_OWNER) => {
            // Our own admission webhook: a newer owner holds the run. Not a
            // problem of the run's, so no Event; this controller is fenced.
            ctx.metrics.fenced_writes_refused.inc();
            warn!(%kind, %name, message = %s.message, "create refused: no longer the owner");
            Err(FenceError::Refused("the admission webhook refused a create of an older epoch").into())
        }
        Err(kube::Error::Api(s)) if s.code == 403 => {
            // Quota or policy: may clear up, so the task waits and is retried,
            // but never silently.
            ctx.event(run, true, "CreateRefused", format!("task {task}: {}; will retry", s.message));
            Err(kube::Error::Api(s).into())
        }
        Err(e) => Err(e.into()),
    }
}

/// Deletes the object `name` only if it is still the one with `uid`: gone
/// already (404) or replaced by a namesake (409) both count as done.
async fn delete_exactly<K>(api: &Api<K>, name: &str, uid: Option<String>) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let dp = DeleteParams { preconditions: Some(Preconditions { uid, resource_version: None }), ..DeleteParams::default() };
    match api.delete(name, &dp).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Marks tasks whose pod or child could not be created as Failed.
async fn fail_tasks(api: &Api<WorkflowInstance>, run: WorkflowInstance, failures: Vec<Failure>, ctx: &Context) -> Result<Requeue, Error> {
    let mut status = run.status.clone().unwrap_or_default();
    for f in &failures {
        if let Some(t) = status.tasks.iter_mut().find(|t| t.name == f.task) {
            t.phase = TaskPhase::Failed;
            t.finished_at = Some(now());
            t.message = Some(f.message.clone());
        }
    }
    let written = fence::write_status(api, &run, status, Fence::Owner, &ctx.membership, &ctx.metrics).await?;
    for f in failures {
        ctx.event(&written, true, f.reason, format!("task {}: {}", f.task, f.message));
    }
    Ok(Requeue::requeue(Duration::ZERO))
}

/// Decides the requeue after a failed reconcile.
pub fn error_policy(run: Arc<WorkflowInstance>, error: &Error, ctx: Arc<Context>) -> Requeue {
    error_policy_for(&run.namespace().unwrap_or_default(), &run.name_any(), error, &ctx)
}

/// The requeue after a failed reconcile of any kind of object: a lost race
/// is retried at once, a fenced write after the lease settles, API trouble
/// with a backoff.
pub(crate) fn error_policy_for(namespace: &str, name: &str, error: &Error, ctx: &Context) -> Requeue {
    ctx.metrics.reconcile_errors.get_or_create(&ErrorLabel { kind: error.kind() }).inc();
    match error {
        Error::Fence(FenceError::Conflict) => Requeue::requeue(Duration::from_millis(100)),
        Error::Fence(FenceError::Refused(why)) => {
            debug!(namespace, name, why, "write fenced off");
            Requeue::requeue(Duration::from_secs(1))
        }
        e => {
            warn!(namespace, name, controller = ctx.membership.identity(), error = %e, "reconcile failed");
            Requeue::requeue(Duration::from_secs(5))
        }
    }
}

/// An Api over one namespace (`--namespace`) or all of them.
pub(crate) fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Runs the WorkflowInstance controller until `shutdown` resolves.
/// `recheck` fires whenever every run must be looked at again (membership
/// changed, or draining started).
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<String>,
    recheck: impl futures::Stream<Item = ()> + Send + 'static,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let (runs, pods) = (scoped::<WorkflowInstance>(&ctx.client, namespace.as_deref()), scoped::<Pod>(&ctx.client, namespace.as_deref()));
    Controller::new(runs.clone(), watcher::Config::default().any_semantic())
        .owns(pods, watcher::Config::default().labels(LABEL_INSTANCE).any_semantic())
        .owns(runs, watcher::Config::default().labels(LABEL_PARENT).any_semantic())
        .trigger_backoff(crate::backoff::watch())
        .reconcile_all_on(recheck)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_event_notes_are_cut_to_what_the_api_server_accepts() {
        assert_eq!(event_note("short".into()), "short");
        let cut = event_note("é".repeat(1000));
        assert!(cut.len() <= MAX_NOTE && cut.ends_with("..."), "{}", cut.len());
    }
}
