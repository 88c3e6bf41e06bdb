//! The WorkflowInstance reconciler: decides who owns the run, then takes
//! what the planner needs from this controller's caches (no reads of the
//! API server per reconcile), records the plan (and a claim, if it claims)
//! with one fenced status write, and carries out its actions (idempotent
//! creates, deletes, child steering).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::{Action as Requeue, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::api::{
    CONDITION_CLEANED_UP, Owner, OwnerChange, OwnerChangeReason, RunPhase, TaskPhase, Workflow, WorkflowInstance, WorkflowInstanceStatus,
    WorkflowSpec,
};
use crate::cache::{Cache, Observe};
use crate::dag::{self, Dag};
use crate::fence::{self, Fence, FenceError};
use crate::lease::Membership;
use crate::metrics::{ClaimLabel, ErrorLabel, Metrics, PhaseLabel};
use crate::naming;
use crate::objects::{
    self, ANNOTATION_PARENT_STOP, ANNOTATION_PARENT_SUSPEND, ANNOTATION_PARENT_SUSPEND_PRIOR, Belongs, LABEL_INSTANCE, LABEL_PARENT,
};
use crate::ownership::{self, Decision};
use crate::planner::{self, Action, ChildRequest, Observed, results};
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
    /// Runs this controller owns (uid -> phase), for the gauges.
    owned: Mutex<HashMap<String, RunPhase>>,
    /// The runs as the run watch has them, once it started: what a clean
    /// stop waits on.
    runs: std::sync::OnceLock<Store<WorkflowInstance>>,
    /// Every run's pods and child runs, from the watches.
    pub cache: Cache,
    /// The Workflows, from the Workflow controller's watch.
    pub workflows: Store<Workflow>,
    /// Watches of whole objects whose first listing is complete (runs,
    /// Workflows); with the cache's own, readiness.
    synced: Mutex<Vec<&'static str>>,
    /// Record an Event for every task start and end (`--task-events`), not
    /// only for warnings, owner changes and the run's end.
    pub task_events: bool,
    /// Runs whose status this controller wrote, and the resourceVersion
    /// the write replaced, until the watch delivers the write.
    replaced: Mutex<HashMap<String, String>>,
}

impl Context {
    pub fn new(client: Client, membership: Membership, metrics: Arc<Metrics>, workflows: Store<Workflow>, task_events: bool) -> Self {
        let reporter = Reporter { controller: "baton-controller".into(), instance: Some(membership.identity().to_string()) };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            membership,
            metrics,
            draining: AtomicBool::new(false),
            owned: Mutex::default(),
            runs: std::sync::OnceLock::new(),
            cache: Cache::default(),
            workflows,
            synced: Mutex::default(),
            task_events,
            replaced: Mutex::default(),
        }
    }

    /// The watches that have not listed everything once yet. Until every
    /// one has, an absent pod or Workflow means nothing, so no run is acted on.
    pub fn listing(&self) -> Vec<&'static str> {
        let synced = self.synced.lock().expect("poisoned");
        let mut listing: Vec<&'static str> = ["runs", "workflows"].into_iter().filter(|w| !synced.contains(w)).collect();
        listing.extend(self.cache.listing());
        listing
    }

    pub fn synced(&self) -> bool {
        self.listing().is_empty()
    }

    /// Notes, from an event of the watch `what`, when it has listed
    /// everything once. (Not `Store::wait_until_ready`: of several waiters
    /// on one store, kube wakes only one.)
    pub(crate) fn note_listed<K>(&self, what: &'static str, event: &watcher::Event<K>) {
        if matches!(event, watcher::Event::InitDone) {
            let mut synced = self.synced.lock().expect("poisoned");
            if !synced.contains(&what) {
                synced.push(what);
            }
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

    /// Whether `run`, as the cache has it, is a version this controller has
    /// since replaced with a status write that the watch has not delivered
    /// yet. Acting on it would only lose a race (409) and cost a write; the
    /// write's own event brings the run back.
    fn behind(&self, run: &WorkflowInstance) -> bool {
        let mut replaced = self.replaced.lock().expect("poisoned");
        let uid = run.uid().unwrap_or_default();
        match replaced.get(&uid) {
            Some(old) if run.metadata.resource_version.as_ref() == Some(old) => true,
            Some(_) => {
                replaced.remove(&uid);
                false
            }
            None => false,
        }
    }

    /// Drops what this controller remembers of a run that is gone.
    fn forget(&self, uid: &str) {
        self.replaced.lock().expect("poisoned").remove(uid);
        self.track(uid, None);
    }

    /// Runs the run watch shows this controller owning that need an owner
    /// (not idle): running ones, and finished ones still being cleaned up
    /// or waiting for their TTL. A clean stop hands them all over. Read
    /// from the watch, not from what reconciles recorded: a run claimed by
    /// a reconcile that failed afterwards counts, a run deleted while the
    /// watch was away does not.
    pub fn runs_to_hand_over(&self) -> usize {
        let me = self.membership.identity();
        let owned = |r: &WorkflowInstance| r.status.as_ref().and_then(|s| s.owner.as_ref()).is_some_and(|o| o.controller == me);
        self.runs.get().map_or(0, |store| {
            store.state().iter().filter(|r| r.metadata.deletion_timestamp.is_none() && owned(r) && !crate::retention::idle(r)).count()
        })
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
        ctx.replaced.lock().expect("poisoned").remove(&run.uid().unwrap_or_default());
        return Ok(Requeue::await_change());
    }
    if ctx.behind(&run) {
        return Ok(Requeue::requeue(Duration::from_secs(1)));
    }
    if !ctx.membership.valid() || !ctx.synced() {
        // Cut off (act on nothing until our Lease is renewed), or still
        // listing what exists.
        return Ok(Requeue::requeue(Duration::from_secs(1)));
    }
    let api: Api<WorkflowInstance> = Api::namespaced(ctx.client.clone(), &run.namespace().unwrap_or_default());
    let status = run.status.clone().unwrap_or_default();
    let uid = run.uid().unwrap_or_default();
    let decision = ctx.decide(status.owner.as_ref(), &uid, crate::retention::idle(&run));
    if decision != Decision::Leave && crate::cache::without_spec(&run) {
        // A finished run cached without its workflow copy, that someone
        // changed: act on the whole run.
        let Some(whole) = api.get_opt(&run.name_any()).await? else { return Ok(Requeue::await_change()) };
        return Box::pin(reconcile_run(Arc::new(whole), ctx.clone())).await;
    }
    match decision {
        Decision::Leave => {
            ctx.track(&uid, None);
            Ok(Requeue::await_change())
        }
        Decision::Release => release(&api, &run, status, &ctx).await,
        Decision::Claim(reason) => execute(&api, (*run).clone(), Some(reason), &ctx).await,
        Decision::Act => execute(&api, (*run).clone(), None, &ctx).await,
    }
}

/// A claim of a run, made in the same status write as the first step of
/// its new owner (one write, not two).
struct Claim {
    reason: OwnerChangeReason,
    previous: Option<String>,
}

impl Claim {
    /// Makes this controller the owner in `status`, one epoch up.
    fn take(status: &mut WorkflowInstanceStatus, reason: OwnerChangeReason, membership: &Membership) -> Claim {
        let previous = status.owner.as_ref().map(|o| o.controller.clone()).filter(|c| !c.is_empty());
        let owner = next_owner(status.owner.as_ref(), membership);
        let change = OwnerChange { controller: owner.controller.clone(), epoch: owner.epoch, since: owner.since.clone(), reason };
        status.owner = Some(owner);
        status.owner_history.push(change);
        let excess = status.owner_history.len().saturating_sub(OWNER_HISTORY);
        status.owner_history.drain(..excess);
        Claim { reason, previous }
    }

    /// Reports the claim once its write succeeded. The first owner of a
    /// run gets no Event (the run is new); a change of owner does.
    fn report(&self, written: &WorkflowInstance, ctx: &Context) {
        let epoch = written.status.as_ref().and_then(|s| s.owner.as_ref()).map_or(0, |o| o.epoch);
        let reason = self.reason;
        ctx.metrics.claims.get_or_create(&ClaimLabel { reason: reason.into() }).inc();
        let old = self.previous.as_deref().unwrap_or("nobody");
        info!(epoch, ?reason, from = %old, "claimed run");
        if reason != OwnerChangeReason::Created {
            let message = format!("owner changed from {old} to {} (epoch {epoch}, {reason:?})", ctx.membership.identity());
            ctx.event(written, reason == OwnerChangeReason::Failover, "OwnerChanged", message);
        }
    }
}

/// Writes a run's status (fenced), reporting a claim made in it.
async fn write(
    api: &Api<WorkflowInstance>,
    run: &WorkflowInstance,
    status: WorkflowInstanceStatus,
    claim: Option<&Claim>,
    ctx: &Context,
) -> Result<WorkflowInstance, Error> {
    let fence = if claim.is_some() { Fence::Claim } else { Fence::Owner };
    let written = fence::write_status(api, run, status, fence, &ctx.membership, &ctx.metrics).await?;
    // (A write that changed nothing keeps the resourceVersion: nothing to wait for.)
    if let (Some(uid), Some(replaced)) = (run.uid(), run.resource_version())
        && written.resource_version() != Some(replaced.clone())
    {
        ctx.replaced.lock().expect("poisoned").insert(uid, replaced);
    }
    if let Some(claim) = claim {
        claim.report(&written, ctx);
    }
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
    let written = write(api, run, status, None, ctx).await?;
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
    (mut status, claim): (WorkflowInstanceStatus, Option<&Claim>),
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
    let written = write(api, run, status, claim, ctx).await?;
    warn!(%message, "run cannot start");
    ctx.event(&written, true, reason, message);
    ctx.track(&run.uid().unwrap_or_default(), Some(RunPhase::Failed));
    Ok(Requeue::await_change())
}

/// Checks a workflow (for a run that names it, when `run` is given); the
/// problems, if any, as one line. `referenced(w)` gives the workflows that
/// the workflow `w` of the same namespace refers to, if `w` exists.
pub(crate) fn check_workflow(
    referenced: impl Fn(&str) -> Option<Vec<String>>,
    name: &str,
    spec: &WorkflowSpec,
    run: Option<&WorkflowInstance>,
) -> Option<String> {
    let mut problems: Vec<String> = dag::validate(spec).iter().map(ToString::to_string).collect();
    if let Some(Err(p)) = run.map(|r| dag::resolve_params(spec, &r.spec.params)) {
        problems.extend(p.iter().map(ToString::to_string));
    }
    if !dag::referenced_workflows(spec).is_empty()
        && let Some(chain) = dag::workflow_cycle(name, referenced)
    {
        problems.push(format!("workflowRef chain leads back to itself: {}", chain.join(" -> ")));
    }
    (!problems.is_empty()).then(|| problems.join("; "))
}

/// Lists the run's pods and child runs by label from the API server into
/// the cache. A controller taking a run over from another does this once:
/// its pod and child watches can be behind its run watch (they are other
/// streams), and the run may be ending in this very step, where a pod it
/// cannot see would be neither deleted nor waited for. (A run's first owner
/// has nothing to list: only an owner creates a run's pods.)
async fn list_into_cache(ctx: &Context, run: &WorkflowInstance) -> Result<(), Error> {
    let (ns, name, uid) = (run.namespace().unwrap_or_default(), run.name_any(), run.uid().unwrap_or_default());
    let label = naming::label_value(&name);
    let (pod_api, child_api) =
        (Api::<Pod>::namespaced(ctx.client.clone(), &ns), Api::<WorkflowInstance>::namespaced(ctx.client.clone(), &ns));
    let (pod_params, child_params) = (
        ListParams::default().labels(&format!("{LABEL_INSTANCE}={label}")),
        ListParams::default().labels(&format!("{LABEL_PARENT}={label}")),
    );
    let (pods, children) = futures::try_join!(pod_api.list(&pod_params), child_api.list(&child_params))?;
    pods.items.iter().filter(|p| objects::controlled_by(&p.metadata, &uid)).for_each(|p| ctx.cache.pods.expect(p));
    children.items.iter().filter(|c| objects::controlled_by(&c.metadata, &uid)).for_each(|c| ctx.cache.children.expect(c));
    Ok(())
}

/// Runs one planner step for a run this controller owns, or claims (then
/// the claim goes in the step's status write).
async fn execute(
    api: &Api<WorkflowInstance>,
    run: WorkflowInstance,
    claim: Option<OwnerChangeReason>,
    ctx: &Context,
) -> Result<Requeue, Error> {
    let ns = run.namespace().unwrap_or_default();
    let name = run.name_any();
    let uid = run.uid().unwrap_or_default();
    let mut status = run.status.clone().unwrap_or_default();
    if crate::retention::settled(&run) {
        // Finished and cleaned up: only its TTL is left (without one it is
        // idle). A new owner's claim is written first.
        let run = match claim {
            Some(reason) => {
                let claim = Claim::take(&mut status, reason, &ctx.membership);
                write(api, &run, status.clone(), Some(&claim), ctx).await?
            }
            None => run,
        };
        let (phase, requeue) = match crate::reaper::expire(ctx, api, &run).await? {
            Expiry::Kept => (status.phase, Requeue::await_change()),
            Expiry::Wait(after) => (status.phase, Requeue::requeue(after.min(RESYNC))),
            Expiry::Deleted => (None, Requeue::await_change()),
        };
        ctx.track(&uid, phase);
        return Ok(requeue);
    }
    let claim = claim.map(|reason| Claim::take(&mut status, reason, &ctx.membership));
    let claim = claim.as_ref();
    if status.workflow_spec.is_none() && !status.phase.unwrap_or_default().is_terminal() {
        // The Workflow as it is now, from the API server (one read per run):
        // a copy from the cache could predate an edit the user made just
        // before creating the run, and the run would keep it for good.
        let wf_api: Api<Workflow> = Api::namespaced(ctx.client.clone(), &ns);
        let wf_name = &run.spec.workflow_ref.name;
        let Some(wf) = wf_api.get_opt(wf_name).await? else {
            let message = format!("workflow {wf_name:?} does not exist in namespace {ns}");
            return reject(api, &run, (status, claim), "WorkflowNotFound", message, ctx).await;
        };
        let all: BTreeMap<String, Vec<String>> = if dag::referenced_workflows(&wf.spec).is_empty() {
            BTreeMap::new()
        } else {
            wf_api.list(&ListParams::default()).await?.into_iter().map(|w| (w.name_any(), dag::referenced_workflows(&w.spec))).collect()
        };
        if let Some(problems) = check_workflow(|w| all.get(w).cloned(), wf_name, &wf.spec, Some(&run)) {
            return reject(api, &run, (status, claim), "InvalidWorkflow", format!("workflow {wf_name}: {problems}"), ctx).await;
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
        // A run that never started (rejected): nothing to do but own it.
        if claim.is_some() {
            write(api, &run, status.clone(), claim, ctx).await?;
        }
        ctx.track(&uid, status.phase);
        return Ok(Requeue::await_change());
    };
    let (dag, values) = match (Dag::new(&workflow), dag::resolve_params(&workflow, &run.spec.params)) {
        (Ok(d), Ok(v)) => (d, v),
        (Err(p), _) | (_, Err(p)) => return reject(api, &run, (status, claim), "InvalidWorkflow", dag::summarize(&p), ctx).await,
    };
    if claim.is_some_and(|c| c.reason != OwnerChangeReason::Created) {
        list_into_cache(ctx, &run).await?;
    }
    let observed = ctx.cache.observed(&uid);
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
        write(api, &run, plan.status.clone(), claim, ctx).await?
    } else {
        run.clone()
    };
    record_progress(&status, &plan.status, &ctx.metrics);
    ctx.track(&uid, plan.status.phase);
    for note in plan.events.iter().filter(|n| ctx.task_events || !n.progress) {
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
                    create(ctx, run, task, &Api::<Pod>::namespaced(ctx.client.clone(), &ns), &pod, |p| ctx.cache.pods.expect(p)).await
                }
                Err(message) => Ok(invalid(task, message)),
            }
        }
        Action::CreateChild { task, attempt } => {
            match scope(task).and_then(|s| objects::child(run, task_spec(task), task, *attempt, &s, epoch)) {
                Ok(child) => {
                    crate::failpoint!("run-create-child");
                    let api = Api::<WorkflowInstance>::namespaced(ctx.client.clone(), &ns);
                    create(ctx, run, task, &api, &child, |c| ctx.cache.children.expect(c)).await
                }
                Err(message) => Ok(invalid(task, message)),
            }
        }
        Action::DeletePod { name } => {
            // Only the pod that was observed as the run's: a namesake made
            // since is refused by the precondition (409) and left alone.
            let uid = observed.pods.iter().find(|p| &p.name == name).map(|p| p.uid.clone());
            delete_exactly(&Api::<Pod>::namespaced(ctx.client.clone(), &ns), name, uid.clone()).await?;
            // Until the watch reports the deletion, the pod counts as going.
            ctx.cache.pods.amend(&uid.unwrap_or_default(), |p| p.deleting = true);
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
            let version = observed.children.iter().find(|c| &c.name == name).map(|c| c.resource_version.clone());
            patch["metadata"]["resourceVersion"] = serde_json::json!(version.filter(|v| !v.is_empty()));
            let api = Api::<WorkflowInstance>::namespaced(ctx.client.clone(), &ns);
            match api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                Ok(child) => {
                    // Until the watch reports it, the cache shows the change.
                    ctx.cache.children.amend(&uid.unwrap_or_default(), |c| *c = child.view());
                    Ok(Done::Yes)
                }
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(Done::Yes),
                Err(e) => Err(e.into()),
            }
        }
    }
}

/// Creates a pod or child run of `task`, and has the cache `remember` it.
/// `AlreadyExists` is adoption only when the object's controller
/// ownerReference carries the run's UID.
async fn create<K>(
    ctx: &Context,
    run: &WorkflowInstance,
    task: &str,
    api: &Api<K>,
    object: &K,
    remember: impl FnOnce(&K),
) -> Result<Done, Error>
where
    K: Resource<DynamicType = ()> + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let kind = K::kind(&());
    let name = object.meta().name.clone().unwrap_or_default();
    let refused = |reason, message| Ok(Done::TaskFails(Failure { task: task.to_string(), reason, message }));
    match api.create(&PostParams::default(), object).await {
        Ok(created) => {
            debug!(%kind, %name, "created");
            remember(&created);
            Ok(Done::Yes)
        }
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let Some(existing) = api.get_opt(&name).await? else {
                return Ok(Done::Wait); // gone meanwhile: create it next time
            };
            match objects::belongs(existing.meta(), "WorkflowInstance", &run.name_any(), &run.uid().unwrap_or_default()) {
                Belongs::Ours => {
                    // Created by an earlier owner, or an earlier call of ours.
                    remember(&existing);
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
    let written = write(api, &run, status, None, ctx).await?;
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
/// changed, or draining started). Three watches: runs (kept whole, less
/// their managedFields), and the runs' pods and child runs, which feed the
/// cache before they wake the run that controls them.
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<String>,
    recheck: impl futures::Stream<Item = ()> + Send + 'static,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let (runs, pods) = (scoped::<WorkflowInstance>(&ctx.client, namespace.as_deref()), scoped::<Pod>(&ctx.client, namespace.as_deref()));
    let (store, writer) = reflector::store();
    let _ = ctx.runs.set(store.clone());
    let (run_ctx, pod_ctx, child_ctx) = (ctx.clone(), ctx.clone(), ctx.clone());
    let all_runs = crate::backoff::watch(runs.clone(), watcher::Config::default().any_semantic())
        .modify(crate::cache::trim_run)
        .reflect(writer)
        .inspect_ok(move |event| {
            run_ctx.note_listed("runs", event);
            if let watcher::Event::Delete(run) = event {
                run_ctx.forget(&run.uid().unwrap_or_default());
            }
        })
        .flat_map(|event| {
            // Failpoint: after each change, errors reach the triggers five
            // times in a row, as when every watch fails at once while the
            // API server restarts.
            let fails = if crate::failpoint_on!("run-watch-error") && matches!(event, Ok(watcher::Event::Apply(_))) { 5 } else { 0 };
            futures::stream::iter(std::iter::once(event).chain((0..fails).map(|_| Err(watcher::Error::NoResourceVersion))))
        })
        .applied_objects();
    let all_runs = crate::backoff::triggers("runs", all_runs);
    let run_pods = crate::backoff::watch(pods, watcher::Config::default().labels(LABEL_INSTANCE).any_semantic())
        .inspect_ok(move |event| {
            // Failpoint: this controller's pod watch is behind (its pod
            // events do not reach the cache; its listings come up empty).
            if crate::failpoint_on!("pod-watch-lag") && !matches!(event, watcher::Event::Init | watcher::Event::InitDone) {
                return;
            }
            pod_ctx.cache.pods.apply(event)
        })
        .touched_objects();
    let run_pods = crate::backoff::triggers("pods", run_pods);
    let children = crate::backoff::watch(runs, watcher::Config::default().labels(LABEL_PARENT).any_semantic())
        .inspect_ok(move |event| child_ctx.cache.children.apply(event))
        .touched_objects();
    let children = crate::backoff::triggers("child runs", children);
    Controller::for_stream(all_runs, store)
        .owns_stream(run_pods)
        .owns_stream(children)
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
