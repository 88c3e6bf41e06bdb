//! The invariants checked at the end, and the summary table.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use baton::api::{RunPhase, WorkflowInstance};
use kube::ResourceExt;

use crate::Config;
use crate::journal::{Journal, Made};
use crate::support::ControllerProc;

/// (run, task, attempt): what may be made at most once.
type Key = (String, String, String);

/// Objects made more than once for one (run, task, attempt).
fn duplicates(made: &std::collections::HashMap<String, Made>, what: &str, breaks: &mut Vec<String>) -> usize {
    let mut by_key: BTreeMap<Key, Vec<(&String, &Made)>> = BTreeMap::new();
    for (uid, m) in made {
        by_key.entry(m.key()).or_default().push((uid, m));
    }
    let mut count = 0;
    for ((run, task, attempt), all) in by_key.iter().filter(|(_, v)| v.len() > 1) {
        count += all.len() - 1;
        let objects: Vec<String> = all.iter().map(|(uid, m)| format!("{} uid {uid} owner-epoch {}", m.name, m.epoch)).collect();
        breaks.push(format!("invariant 1: {} {what}s for run {run} task {task} attempt {attempt}: {}", all.len(), objects.join("; ")));
    }
    count
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// Checks every invariant, prints the table, and says whether all held.
pub fn check(
    j: &Journal,
    config: &Config,
    controllers: &[ControllerProc],
    final_runs: &[WorkflowInstance],
    faults_done: Duration,
    settled_after: Duration,
) -> bool {
    let mut breaks: Vec<String> = j.breaks.clone();

    // 1. At most one pod per (run, task, attempt), one child per (parent, task, attempt).
    let dup_pods = duplicates(&j.pods, "pod", &mut breaks);
    let dup_children = duplicates(&j.children, "child run", &mut breaks);
    // Intent before side effect: every object made is recorded in its run's status.
    for m in j.pods.values().chain(j.children.values()) {
        let recorded = j.runs.get(&m.run).and_then(|r| r.attempts.get(&m.task)).copied().unwrap_or(0);
        if m.attempt.parse::<i32>().map_or(true, |a| a >= recorded) {
            breaks.push(format!(
                "invariant 5: {} (run {} task {} attempt {}) exists but the run's status records only {recorded} attempts",
                m.name, m.run, m.task, m.attempt
            ));
        }
    }

    // 2. Every run ends, or is paused because its last request said so.
    let listed: BTreeMap<String, &WorkflowInstance> = final_runs.iter().map(|r| (r.name_any(), r)).collect();
    let mut lost = 0;
    let mut phases: BTreeMap<&'static str, usize> = BTreeMap::new();
    let expected: BTreeSet<&String> = j.created.iter().chain(j.children.values().map(|m| &m.name)).collect();
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
            breaks.push(format!(
                "invariant 2: run {name} did not finish: phase {phase:?}, progress {:?}, generation {:?} observed {:?}, suspend {}, owner {:?}",
                status.progress,
                run.metadata.generation,
                status.observed_generation,
                run.spec.suspend,
                status.owner.as_ref().map(|o| (&o.controller, o.epoch))
            ));
        }
    }

    // Exactly once: no task ran more often than its workflow allows, and a
    // run nobody stopped or left paused ends as its workflow must.
    let mut extra_attempts = 0;
    for run in final_runs {
        let status = run.status.clone().unwrap_or_default();
        let retries = status.retry_failed_applied.unwrap_or_default() as i32;
        let flaky = run.spec.workflow_ref.name == "flaky";
        let allowed = |task: &str| match (flaky, task) {
            (true, "bad") => 2 * (retries + 1),
            (true, "after") => 0,
            _ => 1,
        };
        let free = !run.spec.shutdown.requested() && !run.spec.suspend;
        for t in &status.tasks {
            let max = allowed(&t.name);
            if t.attempts > max || (free && t.attempts != max) {
                extra_attempts += (t.attempts - max).max(0) as usize;
                breaks.push(format!(
                    "invariant 1: run {} task {} ran {} attempts, its workflow allows {max}{}",
                    run.name_any(),
                    t.name,
                    t.attempts,
                    if free { " (and the run was neither stopped nor paused)" } else { "" }
                ));
            }
        }
        let want = if flaky { RunPhase::Failed } else { RunPhase::Succeeded };
        if free && status.phase != Some(want) {
            breaks.push(format!(
                "invariant 2: run {} of workflow {} ended {:?}, expected {want:?} (nobody stopped it); tasks: {:?}",
                run.name_any(),
                run.spec.workflow_ref.name,
                status.phase,
                status.tasks.iter().map(|t| (&t.name, t.phase, t.attempts, &t.message)).collect::<Vec<_>>()
            ));
        }
    }

    // 4. Every request applied, its effect visible.
    let mut applied = 0;
    let mut longest_request: Option<(Duration, String)> = None;
    let mut kinds: BTreeMap<&'static str, usize> = BTreeMap::new();
    for r in &j.requests {
        *kinds.entry(r.kind.label()).or_default() += 1;
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
                    "invariant 4: request {} on run {} (generation {}) never showed its effect; last seen: phase {:?}, observedGeneration {:?}, retryFailedApplied {:?}",
                    r.kind.label(),
                    r.run,
                    r.generation,
                    now.and_then(|v| v.phase),
                    now.map(|v| v.observed_generation),
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

    let longest_takeover = j.takeovers.iter().max_by_key(|(_, d)| *d);
    let children = j.children.len();
    let top = j.created.len();
    let fault_total: u32 = j.faults.values().sum();
    let ok = breaks.is_empty();

    println!();
    println!("chaos summary");
    println!("  {:<34} {}", "seed", config.seed);
    println!("  {:<34} {} of faults and requests, then {} to settle", "duration", secs(faults_done), secs(settled_after));
    println!("  {:<34} {fault_total}", "faults injected");
    for (kind, n) in &j.faults {
        println!("    {kind:<32} {n}");
    }
    println!("  {:<34} {} ({top} started + {children} child runs)", "runs", top + children);
    println!("  {:<34} {}", "final phases", phases.iter().map(|(p, n)| format!("{p} {n}")).collect::<Vec<_>>().join(", "));
    println!("  {:<34} {}", "pods", j.pods.len());
    println!("  {:<34} {dup_pods} pods, {dup_children} child runs, {extra_attempts} extra task attempts", "duplicates");
    println!("  {:<34} {lost}", "lost (unfinished) runs");
    println!(
        "  {:<34} {} / {applied} ({})",
        "requests made / applied",
        j.requests.len(),
        kinds.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", ")
    );
    println!(
        "  {:<34} {}",
        "longest takeover",
        longest_takeover.map_or("-".into(), |(run, d)| format!("{} ({run}; {} takeovers timed)", secs(*d), j.takeovers.len()))
    );
    println!("  {:<34} {}", "longest request -> effect", longest_request.map_or("-".into(), |(d, what)| format!("{} ({what})", secs(d))));
    println!("  {:<34} {fenced} (controller logs)", "fenced-off writes refused");
    println!("  {:<34} {panics}", "controller panics");
    println!("  {:<34} {}", "watch re-connects", j.watch_errors);
    println!("  {:<34} {}", "invariant breaks", breaks.len());
    println!("  {:<34} {}", "result", if ok { "PASS" } else { "FAIL" });
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
