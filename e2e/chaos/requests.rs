//! The user: starts runs of the workflows over the first part of the run,
//! and patches random runs with pause, resume, stop and retryFailed.

use std::time::{Duration, Instant};

use baton::api::{RunPhase, WorkflowInstance};
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{RngExt, SeedableRng};

use crate::journal::{Request, RequestKind, Shared};

/// The workflows runs are started from, with how often each is picked.
pub const MIX: [(&str, u32); 6] = [("wide", 3), ("chain", 3), ("nested", 2), ("flaky", 2), ("fanout", 3), (crate::FAMILY, 3)];

/// The workflows whose top-level runs get requests. A `family` run gets
/// none: requests go to its child (see `moves`), so that whatever changes
/// the child's spec besides the suite is a break.
const REQUESTED: [&str; 5] = ["wide", "chain", "nested", "flaky", "fanout"];

/// Creates run `name` of `workflow`. A create that fails (the API server
/// restarting) is retried until it is accepted; an `AlreadyExists` then
/// means an earlier try went through.
pub async fn create_run(api: &Api<WorkflowInstance>, journal: &Shared, name: &str, workflow: &str, date: usize) {
    let run: WorkflowInstance =
        serde_yaml::from_str(&crate::runs::run(name, workflow, &format!("date: \"2026-01-{:02}\"", date % 28 + 1))).unwrap();
    loop {
        match api.create(&PostParams::default(), &run).await {
            Ok(_) => break,
            Err(kube::Error::Api(s)) if s.code == 409 => break,
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
    journal.lock().unwrap().created.push(name.to_string());
}

/// Creates `count` runs spread over `[now, until)`: each workflow of the mix
/// once first (in a seeded order), then a weighted random choice.
pub async fn start_runs(api: Api<WorkflowInstance>, journal: Shared, seed: u64, count: usize, until: Instant) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5747);
    let total: u32 = MIX.iter().map(|(_, w)| w).sum();
    let mut first: Vec<&str> = MIX.iter().map(|(n, _)| *n).collect();
    first.shuffle(&mut rng);
    for i in 0..count {
        let workflow = first.get(i).copied().unwrap_or_else(|| {
            let mut pick = rng.random_range(0..total);
            MIX.iter()
                .find(|(_, w)| {
                    pick < *w || {
                        pick -= w;
                        false
                    }
                })
                .map_or("chain", |(n, _)| n)
        });
        create_run(&api, &journal, &format!("r{i:03}-{workflow}"), workflow, i).await;
        let left = until.saturating_duration_since(Instant::now());
        let gap = left / (count - i) as u32;
        tokio::time::sleep(gap.mul_f64(rng.random_range(0.5..1.5))).await;
    }
}

/// Makes request `kind` on run `name`, which the caller marked busy, then
/// records it (with the generation it produced) and frees the run. Says
/// whether the patch was accepted.
pub async fn request(api: &Api<WorkflowInstance>, journal: &Shared, name: &str, kind: RequestKind, child: bool) -> bool {
    journal.lock().unwrap().requesting(name, kind);
    let made_at = Instant::now();
    let answer = api.patch(name, &PatchParams::default(), &Patch::Merge(&kind.patch())).await;
    let mut j = journal.lock().unwrap();
    j.busy.remove(name);
    match answer {
        Ok(patched) => {
            j.requested(name, kind, Some(&patched));
            let generation = patched.metadata.generation.unwrap_or_default();
            // The watch may have shown the effect before we got here.
            let applied_after = j
                .runs
                .get(name)
                .filter(|v| Some(&v.uid) == patched.uid().as_ref() && kind.visible(generation, v))
                .map(|_| made_at.elapsed());
            j.requests.push(Request { run: name.to_string(), child, kind, generation, made_at, applied_after });
            true
        }
        Err(e) => {
            j.requested(name, kind, None);
            println!("[chaos] request {} on {name} not made: {e}", kind.label());
            false
        }
    }
}

/// Patches random top-level runs until `until`. Only runs whose previous
/// request is applied get a new one, so every request has a visible effect
/// of its own to wait for.
pub async fn make_requests(api: Api<WorkflowInstance>, journal: Shared, seed: u64, until: Instant) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x2e9);
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(rng.random_range(700..2_500))).await;
        let choice = {
            let mut j = journal.lock().unwrap();
            if j.api_back_at.is_none() {
                continue;
            }
            let mut candidates: Vec<(String, RequestKind)> = Vec::new();
            for name in &j.created {
                let Some(v) = j.runs.get(name) else { continue };
                if !REQUESTED.contains(&v.workflow.as_str()) || j.busy.contains(name) || j.pending(name) || v.shutdown || !v.caught_up() {
                    continue;
                }
                let kind = match v.phase {
                    Some(RunPhase::Paused) if v.suspend => {
                        if rng.random_bool(0.85) {
                            RequestKind::Resume
                        } else {
                            RequestKind::Stop
                        }
                    }
                    Some(RunPhase::Running) if !v.suspend => {
                        if rng.random_bool(0.75) {
                            RequestKind::Pause
                        } else {
                            RequestKind::Stop
                        }
                    }
                    Some(RunPhase::Failed) if v.retry_failed < 2 && !v.suspend => RequestKind::RetryFailed(v.retry_failed + 1),
                    _ => continue,
                };
                candidates.push((name.clone(), kind));
            }
            let choice = candidates.choose(&mut rng).cloned();
            if let Some((name, _)) = &choice {
                j.busy.insert(name.clone());
            }
            choice
        };
        let Some((name, kind)) = choice else { continue };
        request(&api, &journal, &name, kind, false).await;
    }
}
