//! The invariants checked at the end, and the summary table.
//!
//! 1. At most once: one pod per (run, task, attempt), one child run per
//!    (parent, task, attempt), no task run more often than its workflow allows.
//! 2. Nothing lost: every run ends (or stays paused because the suite said
//!    so), and a run nobody steered ends as its workflow must.
//! 3. Ownership: an unfinished run has a live owner within [`SETTLE`] of a
//!    fault; status never goes backwards (no stale write accepted); no run
//!    is taken over (Failover) from a controller that renewed its Lease
//!    less than a lease duration before.
//! 4. Every request shows its effect.
//! 5. Intent before side effect: every object made is recorded in its run's
//!    status; no controller panics.
//! 6. A request is never undone (checked while running, in `journal`).
//! 7. Every scheduled tick ends as exactly one run that its own tick did not
//!    stop (checked while running, in `journal`); with Forbid no two runs
//!    overlap; with Replace no tick is lost.
//! 8. Identity: a task is done only by its own run's pod or child run (the
//!    one whose controller ownerReference carries the run's uid), never by
//!    a predecessor's of the same name or a colliding run's.
//!
//! [`SETTLE`]: crate::journal::SETTLE

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound::{Excluded, Included, Unbounded};
use std::time::Duration;

use baton::api::{RunPhase, TaskPhase, Workflow, WorkflowInstance};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;

use crate::faults::Fault;
use crate::journal::{Journal, LeaseLog, Made};
use crate::moves::Move;
use crate::support::{ControllerProc, LEASE_DURATION};
use crate::{COLLIDE_A, COLLIDE_B, Config, FAMILY, SCHEDULED};

/// (run uid, task, attempt): what may be made at most once.
type Key = (String, String, String);

/// What each numbered invariant says, for the table.
const INVARIANTS: [(&str, &str); 8] = [
    ("1", "at most once (pods, children, attempts)"),
    ("2", "nothing lost (every run ends)"),
    ("3", "ownership (takeover, stale write, live judged dead)"),
    ("4", "requests applied"),
    ("5", "intent before side effect, no panic"),
    ("6", "requests never undone"),
    ("7", "one run per tick, not its own tick's stop"),
    ("8", "tasks done only by their run's objects"),
];

/// Objects made more than once for one (run, task, attempt). Objects first
/// seen without a controller ownerReference (orphans) are left out: which
/// run made them is unknown.
fn duplicates(j: &Journal, made: &HashMap<String, Made>, what: &str, breaks: &mut Vec<String>) -> usize {
    let mut by_key: BTreeMap<Key, Vec<(&String, &Made)>> = BTreeMap::new();
    for (uid, m) in made.iter().filter(|(_, m)| !m.owner_uid.is_empty()) {
        by_key.entry(m.key()).or_default().push((uid, m));
    }
    let mut count = 0;
    for ((owner, task, attempt), all) in by_key.iter().filter(|(_, v)| v.len() > 1) {
        count += all.len() - 1;
        let objects: Vec<String> = all.iter().map(|(uid, m)| format!("{} uid {uid} owner-epoch {}", m.name, m.epoch)).collect();
        breaks.push(format!(
            "invariant 1: {} {what}s for {} task {task} attempt {attempt}: {}",
            all.len(),
            j.describe_uid(owner),
            objects.join("; ")
        ));
    }
    count
}

/// Whether the pod ran to its end (Succeeded or Failed).
pub fn pod_finished(pod: &Pod) -> bool {
    matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
}

/// Whether kube-scheduler bound the pod to a node.
pub fn pod_scheduled(pod: &Pod) -> bool {
    pod.spec.as_ref().is_some_and(|s| s.node_name.is_some())
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

fn counts(m: &BTreeMap<String, u32>) -> String {
    m.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", ")
}

/// Invariant 7 on what the schedules left: one run per tick, Forbid runs
/// that never overlap, Replace ticks that are each a run or counted missed.
/// Returns per schedule: runs, runs stopped, missed ticks.
fn ticks(j: &Journal, final_runs: &[WorkflowInstance], workflows: &[Workflow], breaks: &mut Vec<String>) -> Vec<String> {
    let mut per_tick: BTreeMap<(&str, i64), Vec<&str>> = BTreeMap::new();
    for s in j.scheduled.values() {
        per_tick.entry((s.workflow.as_str(), s.tick.as_second())).or_default().push(s.uid.as_str());
    }
    for ((wf, tick), uids) in per_tick.iter().filter(|(_, u)| u.len() > 1) {
        breaks.push(format!("invariant 7: schedule {wf}: tick {tick} has {} runs: {}", uids.len(), uids.join(", ")));
    }
    let mut summary = Vec::new();
    for (name, policy) in SCHEDULED {
        let Some(wf) = workflows.iter().find(|w| w.name_any() == name) else { continue };
        let status = wf.status.clone().unwrap_or_default();
        let mut runs: Vec<(&WorkflowInstance, i64)> = final_runs
            .iter()
            .filter_map(|r| j.scheduled.get(&r.uid().unwrap_or_default()).filter(|s| s.workflow == name).map(|s| (r, s.tick.as_second())))
            .collect();
        runs.sort_by_key(|(_, t)| *t);
        let stopped = runs.iter().filter(|(r, _)| r.status.as_ref().and_then(|s| s.phase) == Some(RunPhase::Stopped)).count();
        summary.push(format!("{name} ({policy}) {} runs, {stopped} stopped, {} ticks missed", runs.len(), status.missed_ticks));
        if policy == "Forbid" {
            for (i, (earlier, tick)) in runs.iter().enumerate() {
                let Some(finished) = earlier.status.as_ref().and_then(|s| s.finished_at.as_ref()) else { continue };
                for (later, later_tick) in &runs[i + 1..] {
                    // Whole seconds on both sides: created in an earlier
                    // second than the finish was written is surely before.
                    let created = later.metadata.creation_timestamp.as_ref().map_or(i64::MAX, |t| t.0.as_second());
                    if created < finished.0.as_second() {
                        breaks.push(format!(
                            "invariant 7: schedule {name} (Forbid): run {} (tick {later_tick}) was created at {} while run {} (tick {tick}) still ran (finished {})",
                            later.name_any(),
                            later.metadata.creation_timestamp.as_ref().map(|t| t.0.to_string()).unwrap_or_default(),
                            earlier.name_any(),
                            finished.0
                        ));
                    }
                }
            }
        }
        if policy == "Replace"
            && let (Some(schedule), Some(created), Some(last)) =
                (j.schedules.get(name), wf.metadata.creation_timestamp.as_ref(), status.last_schedule_time.as_ref())
        {
            let have: BTreeSet<i64> = j.scheduled.values().filter(|s| s.workflow == name).map(|s| s.tick.as_second()).collect();
            let mut without = Vec::new();
            let mut t = created.0;
            while let Some(next) = schedule.next_after(t).filter(|n| *n <= last.0) {
                if !have.contains(&next.as_second()) {
                    without.push(next.as_second());
                }
                t = next;
            }
            if without.len() as i64 > status.missed_ticks {
                breaks.push(format!(
                    "invariant 7: schedule {name} (Replace): {} ticks up to lastScheduleTime {} have no run, but only {} were counted missed; ticks without a run: {:?}",
                    without.len(),
                    last.0,
                    status.missed_ticks,
                    &without[..without.len().min(10)]
                ));
            }
        }
    }
    summary
}

/// A Failover made although the old owner's Lease had been renewed.
struct Missed<'a> {
    at: Timestamp,
    run: &'a str,
    renewed: Timestamp,
    written: Timestamp,
}

/// Invariant 3's "a live controller is never judged dead": a peer may take
/// a run over (Failover) only when it has seen no change of the owner's
/// Lease for a lease duration, or saw the Lease deleted (a clean shutdown).
/// `since` is stamped at the decision, in whole seconds: the decision was
/// made in [at, at + 1 s), so the peer's clock ran from a change it saw
/// before `at + 1 s - lease`. A renewal stamped after that and written (seen
/// by the suite's watch) two seconds before `at` is one the peer failed to
/// see for two seconds or more: not a lagging watch but a blind one. Unless
/// the Lease was seen deleted (or re-created) after that renewal and up to
/// five seconds after the claim, in case the suite's watch saw it late.
/// One break per (new owner, old owner), naming the runs. Returns how many
/// failovers there were.
fn failovers(j: &Journal, breaks: &mut Vec<String>) -> usize {
    let none = LeaseLog::default();
    // (new owner, old owner) -> the claims and the renewal each missed.
    let mut judged: BTreeMap<(&str, &str), Vec<Missed>> = BTreeMap::new();
    let blind = SignedDuration::from_secs(2);
    let lease = SignedDuration::try_from(LEASE_DURATION).expect("a short lease");
    for f in j.failovers.values() {
        let (Ok(after), Ok(seen_by), Ok(ended_by)) = (
            f.at.checked_add(SignedDuration::from_secs(1) - lease),
            f.at.checked_sub(blind),
            f.at.checked_add(SignedDuration::from_secs(5)),
        ) else {
            continue;
        };
        let log = j.leases.get(&f.from).unwrap_or(&none);
        let renewed = log
            .renewals
            .range((Excluded(after), Unbounded))
            .find(|(r, seen)| **seen <= seen_by && log.ended.range((Excluded(**r), Included(ended_by))).next().is_none());
        if let Some((r, seen)) = renewed {
            judged.entry((&f.to, &f.from)).or_default().push(Missed { at: f.at, run: &f.run, renewed: *r, written: *seen });
        }
    }
    for ((to, from), mut claims) in judged {
        claims.sort_by_key(|c| (c.at, c.run));
        let first = &claims[0];
        breaks.push(format!(
            "invariant 3: {to} took {} runs over from {from} (Failover) while {from} was renewing its Lease and had not deleted it: a live controller was judged dead. First: {} at {}, although {from} renewed at {} (written by {}), less than the lease duration ({LEASE_DURATION:?}) before; all: {}",
            claims.len(),
            first.run,
            first.at,
            first.renewed,
            first.written,
            claims.iter().map(|c| format!("{} at {}", c.run, c.at)).collect::<Vec<_>>().join(", ")
        ));
    }
    j.failovers.len()
}

/// Invariant 8: every task that a pod or child run finished was finished by
/// one its own run created. The run exists at the end, so its own objects
/// still exist and the final list has them even when a watch missed them.
/// One break per run and kind of object, naming the tasks.
fn identity(j: &Journal, final_runs: &[WorkflowInstance], breaks: &mut Vec<String>) -> usize {
    let mut count = 0;
    for run in final_runs {
        let uid = run.uid().unwrap_or_default();
        let mut foreign: BTreeMap<(&str, String), Vec<String>> = BTreeMap::new();
        for t in run.status.iter().flat_map(|s| &s.tasks) {
            let (what, name, made) = match (&t.pod_name, &t.child_instance) {
                // A pod's result: Succeeded, or Failed with its exit code.
                (Some(pod), _) if t.phase == TaskPhase::Succeeded || (t.phase == TaskPhase::Failed && t.exit_code.is_some()) => {
                    ("pod", pod, &j.pods)
                }
                (_, Some(child)) if t.phase == TaskPhase::Succeeded => ("child run", child, &j.children),
                _ => continue,
            };
            let named: Vec<&Made> = made.values().filter(|m| &m.name == name).collect();
            if named.iter().any(|m| m.owner_uid == uid) {
                continue;
            }
            count += 1;
            let seen: Vec<String> =
                named.iter().map(|m| format!("labelled for run {}, created by {}", m.run, j.describe_uid(&m.owner_uid))).collect();
            let seen = if seen.is_empty() { "none seen".to_string() } else { seen.join("; ") };
            foreign.entry((what, seen)).or_default().push(format!("{} {:?} by {name}", t.name, t.phase));
        }
        for ((what, seen), tasks) in foreign {
            breaks.push(format!(
                "invariant 8: run {} (uid {uid}) has tasks done by a {what} it never created: {}; the {what}s of those names: {seen}",
                run.name_any(),
                tasks.join(", ")
            ));
        }
    }
    count
}

/// Checks every invariant, prints the table, and says whether all held.
#[allow(clippy::too_many_arguments)]
pub fn check(
    j: &Journal,
    config: &Config,
    controllers: &[ControllerProc],
    final_runs: &[WorkflowInstance],
    final_pods: &[Pod],
    workflows: &[Workflow],
    faults_done: Duration,
    settled_after: Duration,
) -> bool {
    let mut breaks: Vec<String> = j.breaks.clone();

    // 1. At most one pod per (run, task, attempt), one child per (parent, task, attempt).
    let dup_pods = duplicates(j, &j.pods, "pod", &mut breaks);
    let dup_children = duplicates(j, &j.children, "child run", &mut breaks);
    // 5. Intent before side effect: every object made is recorded in the
    // status of the run that made it (when its last state is known).
    for m in j.pods.values().chain(j.children.values()) {
        let Some((run, view)) = j.run_by_uid(&m.owner_uid) else { continue };
        let recorded = view.attempts.get(&m.task).copied().unwrap_or(0);
        if m.attempt.parse::<i32>().map_or(true, |a| a >= recorded) {
            breaks.push(format!(
                "invariant 5: {} (run {run} uid {} task {} attempt {}) exists but the run's status records only {recorded} attempts",
                m.name, m.owner_uid, m.task, m.attempt
            ));
        }
    }

    // 2. Every run ends, or is paused because its last request said so: the
    // runs the suite created, the children of runs still there, every run a
    // schedule started, and whatever else is left (orphaned children).
    let listed: BTreeMap<String, &WorkflowInstance> = final_runs.iter().map(|r| (r.name_any(), r)).collect();
    let listed_uids: BTreeSet<String> = final_runs.iter().filter_map(|r| r.uid()).collect();
    let mut lost = 0;
    let mut phases: BTreeMap<&'static str, usize> = BTreeMap::new();
    let expected: BTreeSet<&String> = j
        .created
        .iter()
        .chain(j.children.values().filter(|m| listed_uids.contains(&m.owner_uid)).map(|m| &m.name))
        .chain(j.scheduled.values().map(|s| &s.name))
        .chain(listed.keys())
        .collect();
    for name in &expected {
        let Some(run) = listed.get(*name) else {
            lost += 1;
            breaks.push(format!("invariant 2: run {name} was created but no longer exists"));
            continue;
        };
        let status = run.status.clone().unwrap_or_default();
        let phase = status.phase.unwrap_or_default();
        let caught_up = status.observed_generation >= run.metadata.generation;
        let ok = caught_up && (phase.is_terminal() || (phase == RunPhase::Paused && run.spec.suspend));
        *phases.entry(phase.as_str()).or_default() += 1;
        if !ok {
            lost += 1;
            // Whether the run waits on the cluster (a pod not scheduled or
            // not finished) or on baton (its pods are done).
            let uid = run.uid().unwrap_or_default();
            let pods: Vec<(String, &str, &str)> = final_pods
                .iter()
                .filter(|p| baton::objects::controlled_by(&p.metadata, &uid))
                .map(|p| {
                    let phase = p.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("-");
                    (p.name_any(), phase, if pod_scheduled(p) { "scheduled" } else { "not scheduled" })
                })
                .collect();
            breaks.push(format!(
                "invariant 2: run {name} did not finish: phase {phase:?}, progress {:?}, generation {:?} observed {:?}, suspend {}, owner {:?}, tasks {:?}, pods {pods:?}",
                status.progress,
                run.metadata.generation,
                status.observed_generation,
                run.spec.suspend,
                status.owner.as_ref().map(|o| (&o.controller, o.epoch)),
                status.tasks.iter().filter(|t| !t.phase.is_finished()).map(|t| (&t.name, t.phase, &t.pod_name)).collect::<Vec<_>>()
            ));
        }
    }

    // Exactly once: no task ran more often than its workflow allows, and a
    // run nobody steered ends as its workflow must. Not steered: no stop
    // ever asked (even one undone: invariant 6 reports that), no pause left
    // on it, no child the suite stopped, not created again, not one of a
    // colliding pair (one of those fails by design).
    let suite_stopped: BTreeSet<&str> =
        j.requests.iter().filter(|r| r.kind == crate::journal::RequestKind::Stop).map(|r| r.run.as_str()).collect();
    let mut extra_attempts = 0;
    for run in final_runs {
        let name = run.name_any();
        let uid = run.uid().unwrap_or_default();
        let status = run.status.clone().unwrap_or_default();
        let retries = status.retry_failed_applied.unwrap_or_default() as i32;
        let workflow = run.spec.workflow_ref.name.as_str();
        let flaky = workflow == "flaky";
        // (most attempts, attempts when nobody steered the run). Each
        // retryFailed applied may run a task once more.
        let allowed = |task: &str| match (flaky, task) {
            (true, "bad") => (2 * (retries + 1), 2 * (retries + 1)),
            (true, "after") => (0, 0),
            _ => (1 + retries, 1),
        };
        let child_stopped = j.children.values().any(|m| m.owner_uid == uid && suite_stopped.contains(m.name.as_str()));
        let free = !run.spec.shutdown.requested()
            && !suite_stopped.contains(name.as_str())
            && !run.spec.suspend
            && !child_stopped
            && !j.recreated.contains(&name)
            && workflow != COLLIDE_A
            && workflow != COLLIDE_B;
        for t in &status.tasks {
            // Entries that never run by themselves: a fanned-out task (its
            // instances run) and tasks skipped by their `when`.
            let fanned_out = status.tasks.iter().any(|i| baton::naming::parse_instance_key(&i.name).is_some_and(|(n, _)| n == t.name));
            let by_choice = matches!(t.reason.as_deref(), Some("WhenFalse" | "NoItems"));
            let (max, exact) = if fanned_out || by_choice { (0, 0) } else { allowed(&t.name) };
            if t.attempts > max {
                extra_attempts += (t.attempts - max) as usize;
                breaks.push(format!(
                    "invariant 1: run {name} task {} ran {} attempts, its workflow allows {max} ({retries} retryFailed applied)",
                    t.name, t.attempts
                ));
            } else if free && t.attempts != exact {
                breaks.push(format!(
                    "invariant 1: run {name} task {} ran {} attempts, expected {exact}: the suite did not stop, pause or re-create the run and its spec asks for nothing",
                    t.name, t.attempts
                ));
            }
        }
        let want = if flaky { RunPhase::Failed } else { RunPhase::Succeeded };
        if free && status.phase != Some(want) {
            breaks.push(format!(
                "invariant 2: run {name} of workflow {workflow} ended {:?}, expected {want:?}: the suite did not stop it and its spec asks for no stop; tasks: {:?}",
                status.phase,
                status.tasks.iter().map(|t| (&t.name, t.phase, t.attempts, &t.message)).collect::<Vec<_>>()
            ));
        }
    }

    // 4. Every request applied, its effect visible.
    let mut applied = 0;
    let mut longest_request: Option<(Duration, String)> = None;
    let mut kinds: BTreeMap<String, u32> = BTreeMap::new();
    for r in &j.requests {
        *kinds.entry(format!("{}{}", if r.child { "child " } else { "" }, r.kind.label())).or_default() += 1;
        match r.applied_after {
            Some(d) => {
                applied += 1;
                if longest_request.as_ref().is_none_or(|(m, _)| d > *m) {
                    longest_request = Some((d, format!("{} on {}", r.kind.label(), r.run)));
                }
            }
            None => {
                let now = j.runs.get(&r.run);
                breaks.push(format!(
                    "invariant 4: request {} on run {} (generation {}) never showed its effect; last seen: phase {:?}, observedGeneration {:?}, suspend {:?}, retryFailedApplied {:?}",
                    r.kind.label(),
                    r.run,
                    r.generation,
                    now.and_then(|v| v.phase),
                    now.map(|v| v.observed_generation),
                    now.map(|v| v.suspend),
                    now.map(|v| v.retry_applied),
                ));
            }
        }
    }

    // 5. No panic; fenced-off writes counted from the logs.
    let mut panics = 0;
    let mut fenced = 0;
    for c in controllers {
        let log = std::fs::read_to_string(&c.log).unwrap_or_default();
        if log.contains("panicked") {
            panics += 1;
            breaks.push(format!("invariant 5: controller {} panicked; see {}", c.identity, c.log.display()));
        }
        fenced += log.lines().filter(|l| l.contains("write fenced off")).count();
    }

    // 3, 7 and 8.
    let failovers = failovers(j, &mut breaks);
    let schedules = ticks(j, final_runs, workflows, &mut breaks);
    let foreign = identity(j, final_runs, &mut breaks);

    // The suite itself: a short run must still make every fault and move.
    for f in Fault::ALL {
        if !j.faults.contains_key(f.label()) {
            breaks.push(format!("suite: fault \"{}\" never happened (CHAOS_DURATION too short?)", f.label()));
        }
    }
    for m in Move::ALL {
        if !j.moves.contains_key(&m) {
            breaks.push(format!("suite: move \"{}\" never happened (CHAOS_DURATION too short?)", m.label()));
        }
    }
    for (name, _) in SCHEDULED {
        if !j.scheduled.values().any(|s| s.workflow == name) {
            breaks.push(format!("suite: schedule {name} started no run"));
        }
    }
    if !j.runs.values().any(|v| v.workflow == FAMILY) {
        breaks.push(format!("suite: no {FAMILY} run was started"));
    }

    let longest_takeover = j.takeovers.iter().max_by_key(|(_, d)| *d);
    let children = j.children.len();
    let top = j.created.len();
    let fault_total: u32 = j.faults.values().sum();
    let ok = breaks.is_empty();
    let row = |label: &str, value: String| println!("  {label:<40} {value}");

    println!();
    println!("chaos summary");
    row("seed", config.seed.to_string());
    row("duration", format!("{} of faults, requests and moves, then {} to settle", secs(faults_done), secs(settled_after)));
    row("faults injected", fault_total.to_string());
    for (kind, n) in &j.faults {
        row(&format!("  {kind}"), n.to_string());
    }
    row("moves", j.moves.values().flat_map(|m| m.values()).sum::<u32>().to_string());
    for m in Move::ALL {
        row(&format!("  {}", m.label()), j.moves.get(&m).map_or("0".into(), counts));
    }
    row("schedules (every 5 s)", schedules.join("; "));
    row(
        "runs",
        format!(
            "{} ({top} started by the suite + {children} child runs + {} scheduled)",
            top + children + j.scheduled.len(),
            j.scheduled.len()
        ),
    );
    row("final phases", phases.iter().map(|(p, n)| format!("{p} {n}")).collect::<Vec<_>>().join(", "));
    row("pods", j.pods.len().to_string());
    row("duplicates", format!("{dup_pods} pods, {dup_children} child runs, {extra_attempts} extra task attempts"));
    row("lost (unfinished) runs", lost.to_string());
    row("tasks done by another run's object", foreign.to_string());
    row("requests made / applied", format!("{} / {applied} ({})", j.requests.len(), counts(&kinds)));
    row(
        "longest takeover",
        longest_takeover.map_or("-".into(), |(run, d)| format!("{} ({run}; {} takeovers timed)", secs(*d), j.takeovers.len())),
    );
    row("longest request -> effect", longest_request.map_or("-".into(), |(d, what)| format!("{} ({what})", secs(d))));
    row("failovers (ownerHistory)", failovers.to_string());
    row("fenced-off writes refused", format!("{fenced} (controller logs)"));
    row("controller panics", panics.to_string());
    row("watch re-connects", j.watch_errors.to_string());
    row("invariant breaks", breaks.len().to_string());
    for (n, what) in INVARIANTS {
        let prefix = format!("invariant {n}:");
        row(&format!("  {n} {what}"), breaks.iter().filter(|b| b.starts_with(&prefix)).count().to_string());
    }
    row("  suite (coverage, harness)", breaks.iter().filter(|b| b.starts_with("suite:")).count().to_string());
    row("result", if ok { "PASS" } else { "FAIL" }.to_string());
    if !ok {
        println!();
        println!("invariant breaks (replay with CHAOS_SEED={}):", config.seed);
        for b in breaks.iter().take(50) {
            println!("  - {b}");
        }
        if breaks.len() > 50 {
            println!("  ... and {} more", breaks.len() - 50);
        }
    }
    ok
}
