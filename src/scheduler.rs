//! The Workflow reconciler: reports whether a definition is valid
//! (condition `Valid` and a Warning Event), and runs its schedule. Workflows
//! are owned like runs (rendezvous hashing, fenced status writes), so exactly
//! one controller runs each schedule.
//!
//! A tick's run is named after the tick and created *before* the status
//! records the tick: a crash in between makes the next owner compute the
//! same tick and land on `AlreadyExists`, so a tick is never lost and never
//! started twice.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action as Requeue, Controller};
use kube::runtime::watcher;
use kube::{ResourceExt, runtime::reflector::ObjectRef};
use tracing::{Instrument, info, info_span};

use crate::api::{Workflow, WorkflowInstance};
use crate::controller::{Context, Error, check_workflow, next_owner, scoped, set_condition};
use crate::fence::{self, Fence};
use crate::objects::{self, LABEL_SCHEDULED_BY};
use crate::ownership::Decision;
use crate::schedule;

/// Longest wait before a workflow is looked at again.
const RESYNC: Duration = Duration::from_secs(300);

pub async fn reconcile(wf: Arc<Workflow>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    let span = info_span!(
        "workflow",
        namespace = wf.namespace().unwrap_or_default(),
        name = wf.name_any(),
        controller = ctx.membership.identity()
    );
    reconcile_workflow(wf, ctx).instrument(span).await
}

async fn reconcile_workflow(wf: Arc<Workflow>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    if wf.metadata.deletion_timestamp.is_some() {
        return Ok(Requeue::await_change());
    }
    if !ctx.membership.valid() {
        return Ok(Requeue::requeue(Duration::from_secs(1)));
    }
    let api: Api<Workflow> = Api::namespaced(ctx.client.clone(), &wf.namespace().unwrap_or_default());
    let mut status = wf.status.clone().unwrap_or_default();
    // A schedule is never idle: someone must always own it.
    let wf = match ctx.decide(status.owner.as_ref(), &wf.uid().unwrap_or_default(), false) {
        Decision::Leave => return Ok(Requeue::await_change()),
        Decision::Release => {
            if let Some(owner) = status.owner.as_mut() {
                owner.release();
            }
            fence::write_status(&api, &wf, status, Fence::Owner, &ctx.membership, &ctx.metrics).await?;
            info!("released workflow");
            return Ok(Requeue::await_change());
        }
        Decision::Claim(reason) => {
            status.owner = Some(next_owner(status.owner.as_ref(), &ctx.membership));
            let claimed = fence::write_status(&api, &wf, status, Fence::Claim, &ctx.membership, &ctx.metrics).await?;
            info!(?reason, "claimed workflow");
            claimed
        }
        Decision::Act => (*wf).clone(),
    };
    act(&api, wf, &ctx).await
}

/// Validity and schedule of a workflow this controller owns.
async fn act(api: &Api<Workflow>, wf: Workflow, ctx: &Context) -> Result<Requeue, Error> {
    let read = wf.status.clone().unwrap_or_default();
    let mut status = read.clone();
    let name = wf.name_any();
    let problems = check_workflow(api, &name, &wf.spec, None).await?;
    let was_valid = read.conditions.iter().find(|c| c.type_ == "Valid").map(|c| (c.status.clone(), c.message.clone()));
    let mut events: Vec<(bool, &str, String)> = Vec::new();
    match &problems {
        Some(p) => {
            set_condition(&mut status.conditions, "Valid", false, "InvalidWorkflow", p.clone(), wf.metadata.generation);
            if was_valid != Some(("False".into(), p.clone())) {
                events.push((true, "InvalidWorkflow", p.clone()));
            }
        }
        None => set_condition(&mut status.conditions, "Valid", true, "Valid", "the workflow can run".into(), wf.metadata.generation),
    }
    status.observed_generation = wf.metadata.generation;
    let mut requeue = RESYNC;
    if let (None, Some(sched)) = (&problems, &wf.spec.schedule)
        && !sched.suspend
        && let Ok(parsed) = schedule::parse(sched)
    {
        let now = Timestamp::now();
        let runs: Api<WorkflowInstance> = Api::namespaced(ctx.client.clone(), &wf.namespace().unwrap_or_default());
        let mine = runs.list(&ListParams::default().labels(&format!("{LABEL_SCHEDULED_BY}={name}"))).await?;
        let mut active: Vec<String> = mine
            .iter()
            .filter(|r| !r.status.as_ref().and_then(|s| s.phase).is_some_and(|p| p.is_terminal()))
            .map(|r| r.name_any())
            .collect();
        let last = read.last_schedule_time.as_ref().or(wf.metadata.creation_timestamp.as_ref()).map_or(now, |t| t.0);
        let plan = schedule::plan_tick(parsed.due(last, now), now, sched, active.len());
        if plan.stop_active {
            let stop = serde_json::json!({"spec": {"shutdown": "Stop"}});
            for run in &active {
                runs.patch(run, &PatchParams::default(), &Patch::Merge(&stop)).await?;
            }
            events.push((false, "Replaced", format!("stopped {} to start the next tick", active.join(", "))));
            active.clear();
        }
        if let Some(tick) = plan.start {
            let run = objects::scheduled_run(&wf, tick);
            let run_name = run.name_any();
            match runs.create(&PostParams::default(), &run).await {
                Ok(_) => events.push((false, "Scheduled", format!("started run {run_name} for the tick at {tick}"))),
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    ctx.metrics.adopted.inc();
                }
                Err(e) => return Err(e.into()),
            }
            if !active.contains(&run_name) {
                active.push(run_name);
            }
        }
        if let Some(tick) = plan.forbidden {
            events.push((
                false,
                "TickSkipped",
                format!("tick at {tick} skipped: concurrencyPolicy Forbid and {} still active", active.join(", ")),
            ));
        }
        if plan.missed > 0 {
            status.missed_ticks += plan.missed as i64;
            events.push((
                true,
                "MissedSchedule",
                format!("{} tick(s) not started: missed while no controller ran them, or past startingDeadlineSeconds", plan.missed),
            ));
        }
        if let Some(tick) = plan.handled {
            status.last_schedule_time = Some(Time(tick));
        }
        active.sort();
        status.active_runs = active;
        if let Some(next) = parsed.next_after(now) {
            requeue = Duration::try_from(next.duration_since(Timestamp::now())).unwrap_or_default().min(RESYNC) + Duration::from_millis(20);
        }
    }
    let written =
        if status != read { fence::write_status(api, &wf, status, Fence::Owner, &ctx.membership, &ctx.metrics).await? } else { wf };
    for (warning, reason, message) in events {
        ctx.event(&written, warning, reason, message);
    }
    Ok(Requeue::requeue(requeue))
}

fn error_policy(wf: Arc<Workflow>, error: &Error, ctx: Arc<Context>) -> Requeue {
    crate::controller::error_policy_for(&wf.namespace().unwrap_or_default(), &wf.name_any(), error, &ctx)
}

/// Runs the Workflow controller until `shutdown` resolves. A run that ends
/// wakes its scheduling workflow, so `Forbid` and `activeRuns` follow runs.
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<String>,
    recheck: impl futures::Stream<Item = ()> + Send + 'static,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let (workflows, runs) =
        (scoped::<Workflow>(&ctx.client, namespace.as_deref()), scoped::<WorkflowInstance>(&ctx.client, namespace.as_deref()));
    Controller::new(workflows, watcher::Config::default().any_semantic())
        .watches(runs, watcher::Config::default().labels(LABEL_SCHEDULED_BY).any_semantic(), |run: WorkflowInstance| {
            let ns = run.namespace()?;
            run.labels().get(LABEL_SCHEDULED_BY).map(|wf| ObjectRef::new(wf).within(&ns))
        })
        .reconcile_all_on(recheck)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
}
