//! The API side of retention (the decisions are in [`crate::retention`]):
//! deleting a run whose `ttlSecondsAfterFinished` passed, and the runs of a
//! schedule over its history limits.
//!
//! Each delete follows a fenced status write made in the same reconcile
//! (of the run for its TTL, of the Workflow for its history) and carries
//! the run's UID and the resourceVersion that was proved current: a run
//! changed since (a request made on it, a new owner's claim) is not
//! deleted but looked at again, and of two deletes of one run (a stale
//! owner's and the current one's, or a TTL and a history limit) at most
//! one succeeds. Only that one records an Event.

use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Preconditions};
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use tracing::{debug, info, warn};

use crate::api::{RunPhase, Workflow, WorkflowInstance};
use crate::controller::{Context, Error};
use crate::fence::{self, Fence, FenceError};
use crate::metrics::DeletedLabel;
use crate::retention::{self, Ttl};

/// How often a run whose TTL passed looks again while its schedule is
/// still starting its tick (a second or so, unless that schedule's owner
/// died and must be replaced first).
const TICK_WAIT: Duration = Duration::from_secs(1);

/// What became of a settled run's TTL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// No TTL applies: the run stays.
    Kept,
    /// Not yet: look again after this long.
    Wait(Duration),
    /// Deleted now, or gone already.
    Deleted,
}

/// How one delete of a run went.
enum Outcome {
    Deleted,
    /// 404: someone deleted it already.
    Gone,
    /// 409: not the run as read any more (changed, or replaced by a namesake).
    Changed,
}

/// Deletes `run` exactly as it was read: its UID and resourceVersion as
/// preconditions, the garbage collector taking its pods and child runs
/// (background propagation).
async fn delete_run(api: &Api<WorkflowInstance>, run: &WorkflowInstance) -> Result<Outcome, kube::Error> {
    let preconditions = Preconditions { uid: run.uid(), resource_version: run.resource_version() };
    let params = DeleteParams { preconditions: Some(preconditions), ..DeleteParams::background() };
    match api.delete(&run.name_any(), &params).await {
        Ok(_) => Ok(Outcome::Deleted),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(Outcome::Gone),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(Outcome::Changed),
        Err(e) => Err(e),
    }
}

/// For a settled run this controller owns: deletes it once its TTL has
/// passed, else says when to look again.
pub async fn expire(ctx: &Context, api: &Api<WorkflowInstance>, run: &WorkflowInstance) -> Result<Expiry, Error> {
    match retention::ttl_due(run, Timestamp::now()) {
        Ttl::Keep => return Ok(Expiry::Kept),
        Ttl::Wait(after) => return Ok(Expiry::Wait(after)),
        Ttl::Due => {}
    }
    let workflows: Api<Workflow> = Api::namespaced(ctx.client.clone(), &run.namespace().unwrap_or_default());
    let workflow = workflows.get_opt(&run.spec.workflow_ref.name).await?;
    if retention::held_by_tick(run, workflow.as_ref()) {
        debug!("TTL passed, but the schedule is still starting this run's tick; waiting until it is done");
        return Ok(Expiry::Wait(TICK_WAIT));
    }
    // The fenced write the delete follows. There is nothing to record (a new
    // owner reads the same TTL and finishedAt and decides the same): the
    // unchanged status is a no-op for the API server that proves the run as
    // read is current and ours, at the resourceVersion the delete carries.
    let status = run.status.clone().unwrap_or_default();
    let written = match fence::write_status(api, run, status, Fence::Owner, &ctx.membership, &ctx.metrics).await {
        Ok(written) => written,
        // Deleted since it was read (a history limit, a user): nothing left to do.
        Err(FenceError::Kube(kube::Error::Api(s))) if s.code == 404 => return Ok(Expiry::Deleted),
        Err(e) => return Err(e.into()),
    };
    if !ctx.membership.valid() {
        ctx.metrics.fenced_writes_refused.inc();
        return Ok(Expiry::Wait(Duration::from_secs(1)));
    }
    crate::failpoint!("run-ttl-delete");
    match delete_run(api, &written).await? {
        Outcome::Deleted => {}
        Outcome::Gone => return Ok(Expiry::Deleted),
        // A request or a new owner got in after the write: look again.
        Outcome::Changed => return Err(FenceError::Conflict.into()),
    }
    ctx.metrics.runs_deleted.get_or_create(&DeletedLabel { reason: "ttl" }).inc();
    let (name, status) = (written.name_any(), written.status.clone().unwrap_or_default());
    let ttl = retention::ttl(&written).unwrap_or_default();
    let phase = status.phase.map_or("", |p| p.as_str());
    let finished = status.finished_at.map(|t| t.0.to_string()).unwrap_or_default();
    info!(ttl, "deleted the run: its ttlSecondsAfterFinished passed");
    let message = format!("deleted run {name}: it ended {phase} at {finished} and its ttlSecondsAfterFinished ({ttl}s) passed");
    // On the Workflow, which stays; a run whose Workflow is gone keeps it.
    let regarding = workflow.as_ref().map_or_else(|| written.object_ref(&()), |wf| wf.object_ref(&()));
    deleted_event(ctx, regarding, &written, message);
    Ok(Expiry::Deleted)
}

/// Deletes the runs of `workflow`'s schedule that are over its history
/// limits (`excess`, as listed), after the fenced write of the Workflow
/// this reconcile made. A delete that fails is left for the next
/// reconcile: it must not hold up the schedule's ticks.
pub async fn trim_history(ctx: &Context, runs: &Api<WorkflowInstance>, workflow: &Workflow, excess: &[&WorkflowInstance]) {
    let schedule = workflow.spec.schedule.clone().unwrap_or_default();
    let limits = |run: &WorkflowInstance| match run.status.as_ref().and_then(|s| s.phase) {
        Some(RunPhase::Succeeded) => format!("successfulRunsHistoryLimit {}", schedule.successful_runs_history_limit()),
        _ => format!("failedRunsHistoryLimit {}", schedule.failed_runs_history_limit()),
    };
    let mut deleted = Vec::new();
    for run in excess {
        if !ctx.membership.valid() {
            ctx.metrics.fenced_writes_refused.inc();
            break;
        }
        crate::failpoint!("schedule-history-delete");
        match delete_run(runs, run).await {
            Ok(Outcome::Deleted) => {
                let phase = run.status.as_ref().and_then(|s| s.phase).map_or("", |p| p.as_str());
                let message = format!("deleted run {}: it ended {phase}, and is over the {}", run.name_any(), limits(run));
                deleted_event(ctx, workflow.object_ref(&()), run, message);
                deleted.push(run.name_any());
            }
            // Gone already, or changed since it was listed: the next
            // reconcile decides again.
            Ok(Outcome::Gone | Outcome::Changed) => {}
            Err(e) => warn!(run = run.name_any(), error = %e, "cannot delete a run over the history limits; will retry"),
        }
    }
    if !deleted.is_empty() {
        ctx.metrics.runs_deleted.get_or_create(&DeletedLabel { reason: "history" }).inc_by(deleted.len() as u64);
        info!(runs = deleted.join(", "), "deleted finished runs over the history limits");
    }
}

/// Records a Normal `RunDeleted` Event on `regarding` (the Workflow, which
/// stays) about the deleted `run`, in the background. The run is the
/// Event's related object: the recorder folds Events with the same
/// regarding and related objects into one series (keeping the first
/// note), so each deleted run keeps an Event of its own.
fn deleted_event(ctx: &Context, regarding: ObjectReference, run: &WorkflowInstance, message: String) {
    let related = run.object_ref(&());
    let event = Event {
        type_: EventType::Normal,
        reason: "RunDeleted".into(),
        note: Some(message),
        action: "Delete".into(),
        secondary: (related != regarding).then_some(related),
    };
    let recorder = ctx.recorder.clone();
    tokio::spawn(async move {
        if let Err(e) = recorder.publish(&event, &regarding).await {
            warn!(error = %e, "cannot record event");
        }
    });
}
