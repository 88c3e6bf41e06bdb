//! The Workflow reconciler: reports whether a definition is valid
//! (condition `Valid` and a Warning Event), and runs its schedule. Workflows
//! are owned like runs (rendezvous hashing, fenced status writes), so exactly
//! one controller runs each schedule.
//!
//! A tick's run is named after the tick. The intent to start it is written
//! to status (fenced) before anything is created or stopped, and cleared
//! after: a crash in between makes the next owner finish the same tick and
//! land on `AlreadyExists`, so a tick is never lost and never started twice.

use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action as Requeue, Controller};
use kube::runtime::reflector::{ObjectRef, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use tracing::{Instrument, info, info_span};

use crate::api::{StartingTick, Workflow, WorkflowInstance};
use crate::controller::{Context, Error, check_workflow, next_owner, scoped, set_condition};
use crate::fence::{self, Fence};
use crate::objects::{self, Belongs, LABEL_SCHEDULED_BY};
use crate::ownership::Decision;
use crate::{naming, retention, schedule};

/// Longest wait before a workflow is looked at again.
const RESYNC: Duration = Duration::from_secs(300);

pub async fn reconcile(wf: Arc<Workflow>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    let span = info_span!(
        "workflow",
        namespace = wf.namespace().unwrap_or_default(),
        name = wf.name_any(),
        controller = ctx.membership.identity()
    );
    crate::controller::with_timeout(reconcile_workflow(wf, ctx)).instrument(span).await
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

/// An Event to record once the status write that justifies it succeeded.
type Note = (bool, &'static str, String);

/// Validity and schedule of a workflow this controller owns.
///
/// A tick is started in three steps, each side effect after a fenced write
/// made in this reconcile: (1) record the tick as `startingTick` (which
/// runs to stop, which run to create) together with `lastScheduleTime`;
/// (2) stop and create; (3) clear `startingTick`. A reconcile working from
/// a stale copy fails at (1) and does nothing; a new owner that finds a
/// `startingTick` completes it, landing on `AlreadyExists` where the old
/// owner got through.
async fn act(api: &Api<Workflow>, wf: Workflow, ctx: &Context) -> Result<Requeue, Error> {
    let read = wf.status.clone().unwrap_or_default();
    let mut status = read.clone();
    let name = wf.name_any();
    let ns = wf.namespace().unwrap_or_default();
    let referenced = |w: &str| ctx.workflows.get(&ObjectRef::new(w).within(&ns)).map(|wf| crate::dag::referenced_workflows(&wf.spec));
    let problems = check_workflow(referenced, &name, &wf.spec, None);
    let was_valid = read.conditions.iter().find(|c| c.type_ == "Valid").map(|c| (c.status.clone(), c.message.clone()));
    let mut events: Vec<Note> = Vec::new();
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
    let runs: Api<WorkflowInstance> = Api::namespaced(ctx.client.clone(), &wf.namespace().unwrap_or_default());
    let mut requeue = RESYNC;
    // The schedule's runs, for its active runs and its history limits.
    let listed = if wf.spec.schedule.is_some() { scheduled_runs(&runs, &wf).await? } else { Vec::new() };
    let schedule = wf.spec.schedule.as_ref().filter(|s| problems.is_none() && !s.suspend).and_then(|s| Some((s, schedule::parse(s).ok()?)));
    if let Some((sched, parsed)) = schedule {
        let now = Timestamp::now();
        let active = active(&listed);
        status.active_runs = active.clone();
        if status.starting_tick.is_none() {
            let last = read.last_schedule_time.as_ref().or(wf.metadata.creation_timestamp.as_ref()).map_or(now, |t| t.0);
            let due = parsed.due(last, now);
            // The run of the tick being started is never counted as active:
            // it may exist already if an earlier attempt got that far.
            let tick_run = due.latest.map(|t| naming::scheduled(&name, t.as_second()));
            let others: Vec<String> = active.iter().filter(|r| Some(*r) != tick_run.as_ref()).cloned().collect();
            let plan = schedule::plan_tick(due, now, sched, others.len());
            if let (Some(time), Some(run)) = (plan.start, tick_run) {
                let stop = if plan.stop_active { others.clone() } else { Vec::new() };
                status.starting_tick = Some(StartingTick { time: Time(time), run, stop });
            }
            if let Some(tick) = plan.forbidden {
                let message = format!("tick at {tick} skipped: concurrencyPolicy Forbid and {} still active", others.join(", "));
                events.push((false, "TickSkipped", message));
            }
            if plan.missed > 0 {
                status.missed_ticks += plan.missed as i64;
                let message =
                    format!("{} tick(s) not started: missed while no controller ran them, or past startingDeadlineSeconds", plan.missed);
                events.push((true, "MissedSchedule", message));
            }
            if let Some(tick) = plan.handled {
                status.last_schedule_time = Some(Time(tick));
            }
        }
        if let Some(next) = parsed.next_after(now) {
            requeue = Duration::try_from(next.duration_since(Timestamp::now())).unwrap_or_default().min(RESYNC) + Duration::from_millis(20);
        }
    }
    // Finished runs over the history limits (suspended or not, as CronJob),
    // never the run of a tick being started: deleted after the write below.
    let starting: Vec<&str> = [&read.starting_tick, &status.starting_tick].into_iter().flatten().map(|t| t.run.as_str()).collect();
    let excess = wf.spec.schedule.as_ref().map_or_else(Vec::new, |s| {
        retention::over_history(&listed, s.successful_runs_history_limit(), s.failed_runs_history_limit(), &starting)
    });
    // Step (1): a tick to start is always written (a no-op when it was
    // recorded earlier), and so is a schedule whose runs are to be deleted:
    // the write proves this copy is current and ours.
    let written = if status != read || status.starting_tick.is_some() || !excess.is_empty() {
        fence::write_status(api, &wf, status, Fence::Owner, &ctx.membership, &ctx.metrics).await?
    } else {
        wf
    };
    for (warning, reason, message) in events.drain(..) {
        ctx.event(&written, warning, reason, message);
    }
    crate::reaper::trim_history(ctx, &runs, &written, &excess).await;
    let Some(tick) = written.status.as_ref().and_then(|s| s.starting_tick.clone()) else {
        return Ok(Requeue::requeue(requeue));
    };
    // Step (2).
    if !ctx.membership.valid() {
        return Ok(Requeue::requeue(Duration::from_secs(1)));
    }
    // A tick that could not be started in time is given up, as CronJob
    // gives up a tick past startingDeadlineSeconds.
    let deadline = written.spec.schedule.as_ref().and_then(|s| s.starting_deadline_seconds);
    let expired = deadline.is_some_and(|d| Timestamp::now().as_second() - tick.time.0.as_second() > d);
    let started = if expired {
        Started::Expired
    } else {
        let stopped = stop_runs(&runs, &written, &tick.stop).await?;
        if !stopped.is_empty() {
            events.push((false, "Replaced", format!("stopped {} to start the run of the tick at {}", stopped.join(", "), tick.time.0)));
        }
        start_run(ctx, &runs, &written, &tick).await?
    };
    crate::failpoint!("schedule-tick-started");
    // Step (3). Condition `TickStarted` says how the last tick ended, so a
    // tick that could not start is visible in status, not only in an Event.
    let mut done = written.status.clone().unwrap_or_default();
    let generation = written.metadata.generation;
    match started {
        Started::Created => {
            let message = format!("started run {} for the tick at {}", tick.run, tick.time.0);
            events.push((false, "Scheduled", message.clone()));
            set_condition(&mut done.conditions, CONDITION_TICK_STARTED, true, "Started", message, generation);
        }
        Started::Adopted => {
            let message = format!("run {} of the tick at {} exists", tick.run, tick.time.0);
            set_condition(&mut done.conditions, CONDITION_TICK_STARTED, true, "Started", message, generation);
        }
        Started::Collision(whose) => {
            let message = format!(
                "tick at {} not started: WorkflowInstance {} already exists and is not this schedule's: {whose}",
                tick.time.0, tick.run
            );
            events.push((true, "NameCollision", message.clone()));
            set_condition(&mut done.conditions, CONDITION_TICK_STARTED, false, "NameCollision", message, generation);
        }
        Started::Refused { message, retry } => {
            let message = format!("tick at {}: creating run {} was refused: {message}", tick.time.0, tick.run);
            let again = if retry { "; retrying until startingDeadlineSeconds" } else { "" };
            events.push((true, "CreateRefused", format!("{message}{again}")));
            set_condition(&mut done.conditions, CONDITION_TICK_STARTED, false, "CreateRefused", message, generation);
            if retry {
                // Keep the intent; say why it is not done yet.
                let written = fence::write_status(api, &written, done, Fence::Owner, &ctx.membership, &ctx.metrics).await?;
                for (warning, reason, message) in events {
                    ctx.event(&written, warning, reason, message);
                }
                return Ok(Requeue::requeue(Duration::from_secs(5)));
            }
        }
        Started::Expired => {
            let message = format!("tick at {} not started: past startingDeadlineSeconds before its run could be created", tick.time.0);
            done.missed_ticks += 1;
            events.push((true, "MissedSchedule", message.clone()));
            set_condition(&mut done.conditions, CONDITION_TICK_STARTED, false, "DeadlineExceeded", message, generation);
        }
        Started::Wait => return Ok(Requeue::requeue(Duration::from_secs(1))),
    }
    done.starting_tick = None;
    done.active_runs = active_runs(&runs, &written).await?;
    let written = fence::write_status(api, &written, done, Fence::Owner, &ctx.membership, &ctx.metrics).await?;
    for (warning, reason, message) in events {
        ctx.event(&written, warning, reason, message);
    }
    Ok(Requeue::requeue(requeue))
}

/// The runs this workflow's schedule started (by label, and only those
/// whose controller ownerReference is this workflow).
async fn scheduled_runs(runs: &Api<WorkflowInstance>, wf: &Workflow) -> Result<Vec<WorkflowInstance>, Error> {
    let uid = wf.uid().unwrap_or_default();
    let selector = format!("{LABEL_SCHEDULED_BY}={}", naming::label_value(&wf.name_any()));
    let mine = runs.list(&ListParams::default().labels(&selector)).await?;
    Ok(mine.items.into_iter().filter(|r| objects::controlled_by(&r.metadata, &uid)).collect())
}

/// Names of the unfinished runs among `runs`, sorted.
fn active(runs: &[WorkflowInstance]) -> Vec<String> {
    let mut active: Vec<String> =
        runs.iter().filter(|r| !r.status.as_ref().and_then(|s| s.phase).is_some_and(|p| p.is_terminal())).map(|r| r.name_any()).collect();
    active.sort();
    active
}

/// Names of the unfinished runs this workflow's schedule started, sorted.
async fn active_runs(runs: &Api<WorkflowInstance>, wf: &Workflow) -> Result<Vec<String>, Error> {
    Ok(active(&scheduled_runs(runs, wf).await?))
}

/// Asks the runs of earlier ticks to stop (`Replace`), those that are still
/// this workflow's, unfinished and not already asked. Returns the names asked.
async fn stop_runs(runs: &Api<WorkflowInstance>, wf: &Workflow, names: &[String]) -> Result<Vec<String>, Error> {
    let uid = wf.uid().unwrap_or_default();
    let stop = serde_json::json!({"spec": {"shutdown": "Stop"}});
    let mut asked = Vec::new();
    for name in names {
        let Some(run) = runs.get_opt(name).await? else { continue };
        let finished = run.status.as_ref().and_then(|s| s.phase).is_some_and(|p| p.is_terminal());
        if !objects::controlled_by(&run.metadata, &uid) || finished || run.spec.shutdown.requested() {
            continue;
        }
        runs.patch(name, &PatchParams::default(), &Patch::Merge(&stop)).await?;
        asked.push(name.clone());
    }
    Ok(asked)
}

/// Condition of a scheduled Workflow: whether the last tick's run started.
const CONDITION_TICK_STARTED: &str = "TickStarted";

enum Started {
    Created,
    /// Already there, this workflow's (an earlier owner got that far).
    Adopted,
    /// The name belongs to someone else: the tick is given up, visibly.
    Collision(String),
    /// The API server refused the create; `retry` when it may clear up
    /// (quota, policy, throttling), not when the run is invalid.
    Refused {
        message: String,
        retry: bool,
    },
    /// Past its starting deadline before the run could be created.
    Expired,
    /// The name is held by a deleted predecessor's run; try again shortly.
    Wait,
}

/// Creates the run of a tick; `AlreadyExists` is adoption only when the run
/// is this workflow's (by UID).
async fn start_run(ctx: &Context, runs: &Api<WorkflowInstance>, wf: &Workflow, tick: &StartingTick) -> Result<Started, Error> {
    let run = objects::scheduled_run(wf, tick.time.0);
    match runs.create(&PostParams::default(), &run).await {
        Ok(_) => return Ok(Started::Created),
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(kube::Error::Api(s)) if s.code == 400 || s.code == 422 => return Ok(Started::Refused { message: s.message, retry: false }),
        Err(kube::Error::Api(s)) if s.code == 403 || s.code == 429 => return Ok(Started::Refused { message: s.message, retry: true }),
        Err(e) => return Err(e.into()),
    }
    let Some(existing) = runs.get_opt(&tick.run).await? else { return Ok(Started::Wait) };
    Ok(match objects::belongs(&existing.metadata, "Workflow", &wf.name_any(), &wf.uid().unwrap_or_default()) {
        Belongs::Ours => {
            ctx.metrics.adopted.inc();
            Started::Adopted
        }
        Belongs::Leftover(_) | Belongs::Going => Started::Wait,
        Belongs::Foreign(whose) => Started::Collision(whose),
    })
}

fn error_policy(wf: Arc<Workflow>, error: &Error, ctx: Arc<Context>) -> Requeue {
    crate::controller::error_policy_for(&wf.namespace().unwrap_or_default(), &wf.name_any(), error, &ctx)
}

/// Runs the Workflow controller until `shutdown` resolves. A run that ends
/// wakes its scheduling workflow, so `Forbid` and `activeRuns` follow runs.
/// Its watch of Workflows fills `ctx.workflows` through `writer`, the cache
/// runs read their Workflow from.
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<String>,
    writer: Writer<Workflow>,
    recheck: impl futures::Stream<Item = ()> + Send + 'static,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let (workflows, runs) =
        (scoped::<Workflow>(&ctx.client, namespace.as_deref()), scoped::<WorkflowInstance>(&ctx.client, namespace.as_deref()));
    let listed = ctx.clone();
    let all = crate::backoff::watch(workflows, watcher::Config::default().any_semantic())
        .modify(crate::cache::trim)
        .reflect(writer)
        .inspect_ok(move |event| listed.note_listed("workflows", event))
        .applied_objects();
    let scheduled = crate::backoff::watch(runs, watcher::Config::default().labels(LABEL_SCHEDULED_BY).any_semantic()).touched_objects();
    Controller::for_stream(crate::backoff::triggers("workflows", all), ctx.workflows.clone())
        .watches_stream(crate::backoff::triggers("scheduled runs", scheduled), |run: WorkflowInstance| {
            let ns = run.namespace()?;
            // The workflow is the run's controller owner (its label may be a
            // shortened name).
            let owner = run.owner_references().iter().find(|r| r.controller == Some(true) && r.kind == "Workflow")?;
            Some(ObjectRef::new(&owner.name).within(&ns))
        })
        .reconcile_all_on(recheck)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
}
