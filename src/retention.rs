//! Retention, decided without a client or a clock: when a finished run is
//! deleted (`ttlSecondsAfterFinished`), which finished runs of a schedule
//! are deleted (`successfulRunsHistoryLimit`, `failedRunsHistoryLimit`),
//! and which `podGC` policy a run follows. The planner picks the pods
//! `podGC` deletes ([`crate::planner::podgc`]); [`crate::reaper`] makes
//! the deletes, each after a fenced status write.
//!
//! Rules that keep deletes safe:
//! - A run waits for its TTL only once it is *settled*: finished, nothing
//!   of it still running, its podGC done and every request on it applied.
//!   Until then its owner keeps acting on it; a settled run with a TTL is
//!   not idle, so whoever owns it after a failover deletes it on time.
//! - A child run (of a `workflowRef` task) has no TTL of its own: its
//!   parent would create it again if it vanished while the parent's task
//!   still waited for it. It goes with its parent.
//! - A scheduled run is not deleted while its Workflow's `startingTick`
//!   names it: a new owner of the schedule completes that tick by creating
//!   the run, and would create it again.
//! - History limits count only settled runs, and never the run of a tick
//!   being started.

use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::api::{PodGc, RunPhase, Workflow, WorkflowInstance, WorkflowInstanceSpec, WorkflowSpec};
use crate::objects::ANNOTATION_SCHEDULED_TIME;

/// The podGC policy of a run: its own, else its workflow's.
pub fn pod_gc(run: &WorkflowInstanceSpec, workflow: &WorkflowSpec) -> PodGc {
    run.pod_gc.unwrap_or(workflow.pod_gc)
}

/// Whether `run` was created by a parent run's task (its controller
/// ownerReference is a WorkflowInstance).
pub fn is_child(run: &WorkflowInstance) -> bool {
    run.metadata
        .owner_references
        .iter()
        .flatten()
        .any(|r| r.controller == Some(true) && r.kind == "WorkflowInstance" && r.api_version.starts_with("baton.dev/"))
}

/// The run's `ttlSecondsAfterFinished`: its own, else its workflow's as
/// the run copied it when it started. None for a child run.
pub fn ttl(run: &WorkflowInstance) -> Option<i64> {
    if is_child(run) {
        return None;
    }
    let copied = run.status.as_ref().and_then(|s| s.workflow_spec.as_ref()).and_then(|w| w.ttl_seconds_after_finished);
    run.spec.ttl_seconds_after_finished.or(copied).map(|s| i64::from(s.max(0)))
}

/// Finished, nothing of it still running, podGC done, and every request
/// on it applied: its owner has nothing left to do but, maybe, delete it.
pub fn settled(run: &WorkflowInstance) -> bool {
    run.status.as_ref().is_some_and(|s| s.cleaned_up() && s.observed_generation == run.metadata.generation)
}

/// When a finished run is due for deletion: its `finishedAt` (else its
/// creation) plus its TTL. None while it runs, or when no TTL applies.
pub fn expires_at(run: &WorkflowInstance) -> Option<Timestamp> {
    let ttl = ttl(run)?;
    let status = run.status.as_ref()?;
    if !status.phase.is_some_and(RunPhase::is_terminal) {
        return None;
    }
    let finished = status.finished_at.as_ref().or(run.metadata.creation_timestamp.as_ref())?.0;
    Some(finished.saturating_add(SignedDuration::from_secs(ttl)).unwrap_or(Timestamp::MAX))
}

/// Settled and nothing will ever be done with it: no TTL applies. Nobody
/// needs to own it.
pub fn idle(run: &WorkflowInstance) -> bool {
    settled(run) && expires_at(run).is_none()
}

/// What the owner of a settled run does about its TTL at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ttl {
    /// No TTL applies: the run stays.
    Keep,
    /// Look again after this long.
    Wait(Duration),
    /// Delete it now.
    Due,
}

/// Whether `run`'s TTL has passed at `now`.
pub fn ttl_due(run: &WorkflowInstance, now: Timestamp) -> Ttl {
    match expires_at(run) {
        None => Ttl::Keep,
        Some(at) if at <= now => Ttl::Due,
        // A little late rather than early: a wake-up a hair before the
        // deadline would find it not yet due and wait once more.
        Some(at) => Ttl::Wait(Duration::try_from(at.duration_since(now)).unwrap_or_default() + Duration::from_millis(50)),
    }
}

/// Whether `workflow`'s schedule is starting the tick whose run is `run`
/// (`status.startingTick` names it): a new owner of the schedule would
/// complete that tick by creating the run, so it must not be deleted yet.
/// Once the tick is cleared it never names the run again
/// (`lastScheduleTime` has passed it).
pub fn held_by_tick(run: &WorkflowInstance, workflow: Option<&Workflow>) -> bool {
    let Some(wf) = workflow else { return false };
    let scheduled_by_it = run
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|r| r.controller == Some(true) && r.kind == "Workflow" && Some(&r.uid) == wf.metadata.uid.as_ref());
    let name = run.metadata.name.as_deref().unwrap_or_default();
    scheduled_by_it && wf.status.as_ref().and_then(|s| s.starting_tick.as_ref()).is_some_and(|t| t.run == name)
}

/// When the run's tick was: its `baton.dev/scheduled-time`, else its
/// creation.
fn tick_of(run: &WorkflowInstance) -> Option<Timestamp> {
    let annotated = run.metadata.annotations.as_ref().and_then(|a| a.get(ANNOTATION_SCHEDULED_TIME)).and_then(|t| t.parse().ok());
    annotated.or(run.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

/// The runs of a schedule (`runs`: those its Workflow controls) to delete
/// for its history limits: of the settled runs, the Succeeded ones beyond
/// the newest `successfulRunsHistoryLimit`, and the Failed or Stopped ones
/// beyond the newest `failedRunsHistoryLimit`, newest by tick. Runs still
/// going, being deleted, with a request not yet applied (a `retryFailed`
/// on its way), or named in `keep` (the tick being started) are neither
/// counted nor deleted.
pub fn over_history<'a>(runs: &'a [WorkflowInstance], successful: usize, failed: usize, keep: &[&str]) -> Vec<&'a WorkflowInstance> {
    let mut done: Vec<&WorkflowInstance> = runs
        .iter()
        .filter(|r| r.metadata.deletion_timestamp.is_none())
        .filter(|r| !keep.contains(&r.metadata.name.as_deref().unwrap_or_default()))
        .filter(|r| settled(r))
        .collect();
    // Newest first; the name breaks ties so the choice never depends on
    // the order the runs were listed in.
    done.sort_by(|a, b| tick_of(b).cmp(&tick_of(a)).then_with(|| b.metadata.name.cmp(&a.metadata.name)));
    let succeeded = |r: &&WorkflowInstance| r.status.as_ref().and_then(|s| s.phase) == Some(RunPhase::Succeeded);
    let (ok, not_ok): (Vec<&WorkflowInstance>, Vec<&WorkflowInstance>) = done.into_iter().partition(succeeded);
    ok.into_iter().skip(successful).chain(not_ok.into_iter().skip(failed)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{CONDITION_CLEANED_UP, StartingTick, WorkflowInstanceStatus, WorkflowStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, OwnerReference, Time};

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn owner_ref(kind: &str, uid: &str) -> OwnerReference {
        OwnerReference {
            api_version: "baton.dev/v1alpha1".into(),
            kind: kind.into(),
            name: "owner".into(),
            uid: uid.into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }
    }

    /// A run that ended `phase` at `finished` and is cleaned up.
    fn finished(name: &str, phase: RunPhase, finished: i64) -> WorkflowInstance {
        let mut r = WorkflowInstance::new(name, WorkflowInstanceSpec::default());
        r.metadata.generation = Some(1);
        r.metadata.creation_timestamp = Some(Time(at(finished - 10)));
        r.status = Some(WorkflowInstanceStatus {
            phase: Some(phase),
            observed_generation: Some(1),
            finished_at: Some(Time(at(finished))),
            conditions: vec![Condition {
                type_: CONDITION_CLEANED_UP.into(),
                status: "True".into(),
                reason: "NothingRunning".into(),
                message: String::new(),
                observed_generation: Some(1),
                last_transition_time: Time(at(finished)),
            }],
            workflow_spec: Some(WorkflowSpec::default()),
            ..Default::default()
        });
        r
    }

    fn with_ttls(mut r: WorkflowInstance, own: Option<i32>, workflow: Option<i32>) -> WorkflowInstance {
        r.spec.ttl_seconds_after_finished = own;
        r.status.as_mut().unwrap().workflow_spec.as_mut().unwrap().ttl_seconds_after_finished = workflow;
        r
    }

    #[test]
    fn the_runs_own_ttl_wins_over_the_workflows() {
        let r = finished("r", RunPhase::Succeeded, 0);
        assert_eq!(ttl(&r), None);
        assert_eq!(ttl(&with_ttls(r.clone(), None, Some(60))), Some(60));
        assert_eq!(ttl(&with_ttls(r.clone(), Some(5), Some(60))), Some(5));
        assert_eq!(ttl(&with_ttls(r.clone(), Some(0), None)), Some(0), "0 is a TTL: delete at once");
        // A run rejected before it copied its workflow has only its own.
        let mut rejected = with_ttls(r, Some(7), None);
        rejected.status.as_mut().unwrap().workflow_spec = None;
        assert_eq!(ttl(&rejected), Some(7));
    }

    #[test]
    fn a_child_run_has_no_ttl_of_its_own() {
        let mut child = with_ttls(finished("p-sub", RunPhase::Succeeded, 0), Some(1), Some(1));
        child.metadata.owner_references = Some(vec![owner_ref("WorkflowInstance", "parent-uid")]);
        assert_eq!(ttl(&child), None);
        assert_eq!(expires_at(&child), None);
        // A scheduled run is no child: its Workflow owns it.
        let mut scheduled = with_ttls(finished("wf-1", RunPhase::Succeeded, 0), None, Some(1));
        scheduled.metadata.owner_references = Some(vec![owner_ref("Workflow", "wf-uid")]);
        assert_eq!(ttl(&scheduled), Some(1));
    }

    #[test]
    fn the_ttl_counts_from_the_finish_and_fires_on_time() {
        let r = with_ttls(finished("r", RunPhase::Failed, 100), None, Some(30));
        assert_eq!(expires_at(&r), Some(at(130)));
        assert_eq!(ttl_due(&r, at(100)), Ttl::Wait(Duration::from_millis(30_050)));
        assert_eq!(ttl_due(&r, at(129)), Ttl::Wait(Duration::from_millis(1_050)));
        assert_eq!(ttl_due(&r, at(130)), Ttl::Due);
        assert_eq!(ttl_due(&r, at(1000)), Ttl::Due);
        assert_eq!(ttl_due(&finished("r", RunPhase::Failed, 100), at(1000)), Ttl::Keep, "no TTL: kept");
        let huge = with_ttls(finished("r", RunPhase::Failed, 100), Some(i32::MAX), None);
        assert!(matches!(ttl_due(&huge, at(1000)), Ttl::Wait(_)));
    }

    #[test]
    fn a_running_run_never_expires() {
        let mut r = with_ttls(finished("r", RunPhase::Succeeded, 0), Some(0), None);
        for phase in [RunPhase::Pending, RunPhase::Running, RunPhase::Paused] {
            r.status.as_mut().unwrap().phase = Some(phase);
            assert_eq!(expires_at(&r), None, "{phase:?}");
            assert_eq!(ttl_due(&r, at(1000)), Ttl::Keep);
        }
    }

    #[test]
    fn a_finished_run_with_a_ttl_is_never_idle() {
        let plain = finished("r", RunPhase::Succeeded, 0);
        assert!(settled(&plain) && idle(&plain), "no TTL: nobody needs to own it");
        let expiring = with_ttls(plain.clone(), None, Some(3600));
        assert!(settled(&expiring) && !idle(&expiring), "its owner (or a survivor) must delete it");
        // Not cleaned up (pods still running, or podGC not done): not settled.
        let mut busy = plain.clone();
        busy.status.as_mut().unwrap().conditions.clear();
        assert!(!settled(&busy) && !idle(&busy));
        // A request not yet applied (a retryFailed): not settled.
        let mut asked = plain;
        asked.metadata.generation = Some(2);
        assert!(!settled(&asked) && !idle(&asked));
    }

    #[test]
    fn a_run_is_held_while_its_tick_is_being_started() {
        let mut run = finished("wf-100", RunPhase::Succeeded, 0);
        run.metadata.owner_references = Some(vec![owner_ref("Workflow", "wf-uid")]);
        let mut wf = Workflow::new("wf", WorkflowSpec::default());
        wf.metadata.uid = Some("wf-uid".into());
        let tick = |name: &str| StartingTick { time: Time(at(0)), run: name.into(), stop: vec![] };
        wf.status = Some(WorkflowStatus { starting_tick: Some(tick("wf-100")), ..Default::default() });
        assert!(held_by_tick(&run, Some(&wf)));
        assert!(!held_by_tick(&run, None), "no workflow: no tick can create it");
        let mut other_tick = wf.clone();
        other_tick.status.as_mut().unwrap().starting_tick = Some(tick("wf-200"));
        assert!(!held_by_tick(&run, Some(&other_tick)));
        let mut cleared = wf.clone();
        cleared.status.as_mut().unwrap().starting_tick = None;
        assert!(!held_by_tick(&run, Some(&cleared)));
        // A namesake workflow (deleted and made again) does not hold it.
        let mut namesake = wf.clone();
        namesake.metadata.uid = Some("other-uid".into());
        assert!(!held_by_tick(&run, Some(&namesake)));
        // A run made by hand is not the schedule's.
        let mut by_hand = run.clone();
        by_hand.metadata.owner_references = None;
        assert!(!held_by_tick(&by_hand, Some(&wf)));
    }

    fn tick_run(tick: i64, phase: RunPhase) -> WorkflowInstance {
        let mut r = finished(&format!("wf-{tick}"), phase, tick + 5);
        r.metadata.annotations = Some([(ANNOTATION_SCHEDULED_TIME.to_string(), at(tick).to_string())].into());
        r
    }

    fn names(runs: Vec<&WorkflowInstance>) -> Vec<String> {
        let mut n: Vec<String> = runs.iter().map(|r| r.metadata.name.clone().unwrap()).collect();
        n.sort();
        n
    }

    #[test]
    fn history_keeps_the_newest_succeeded_and_failed_runs() {
        use RunPhase::*;
        let runs: Vec<WorkflowInstance> =
            [(10, Succeeded), (20, Failed), (30, Succeeded), (40, Stopped), (50, Succeeded), (60, Succeeded), (70, Failed)]
                .into_iter()
                .map(|(t, p)| tick_run(t, p))
                .collect();
        assert_eq!(names(over_history(&runs, 3, 1, &[])), ["wf-10", "wf-20", "wf-40"]);
        assert_eq!(names(over_history(&runs, 0, 0, &[])).len(), 7, "limits of 0 keep nothing");
        assert!(over_history(&runs, 10, 10, &[]).is_empty());
        // The listing order does not matter.
        let mut reversed = runs.clone();
        reversed.reverse();
        assert_eq!(names(over_history(&reversed, 3, 1, &[])), ["wf-10", "wf-20", "wf-40"]);
    }

    #[test]
    fn history_leaves_unsettled_going_and_starting_runs_alone() {
        use RunPhase::*;
        let mut runs: Vec<WorkflowInstance> =
            [(10, Failed), (20, Failed), (30, Failed), (40, Failed)].into_iter().map(|(t, p)| tick_run(t, p)).collect();
        // A retryFailed on its way: the user's request stands.
        runs[0].metadata.generation = Some(2);
        // Being deleted already.
        runs[1].metadata.deletion_timestamp = Some(Time(at(100)));
        // Still running.
        runs.push(tick_run(50, Running));
        assert_eq!(names(over_history(&runs, 0, 1, &[])), ["wf-30"], "wf-40 is the newest failed one; wf-50 runs");
        // The run of the tick being started is never deleted, nor counted.
        assert_eq!(names(over_history(&runs, 0, 0, &["wf-40"])), ["wf-30"]);
        assert_eq!(names(over_history(&runs, 0, 1, &["wf-40"])), Vec::<String>::new());
    }

    #[test]
    fn pod_gc_of_the_run_wins_over_the_workflows() {
        let mut wf = WorkflowSpec::default();
        let mut run = WorkflowInstanceSpec::default();
        assert_eq!(pod_gc(&run, &wf), PodGc::Never);
        wf.pod_gc = PodGc::OnRunFinished;
        assert_eq!(pod_gc(&run, &wf), PodGc::OnRunFinished);
        run.pod_gc = Some(PodGc::Never);
        assert_eq!(pod_gc(&run, &wf), PodGc::Never);
    }
}
