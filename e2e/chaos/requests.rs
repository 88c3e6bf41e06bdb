//! The user: starts runs of the workflows over the first part of the run,
//! and patches random runs with pause, resume, stop and retryFailed.

use std::time::{Duration, Instant};

use baton::api::{RunPhase, WorkflowInstance};
use kube::api::{Api, Patch, PatchParams, PostParams};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{RngExt, SeedableRng};

use crate::journal::{Request, RequestKind, Shared};

/// The workflows runs are started from, with how often each is picked.
pub const MIX: [(&str, u32); 4] = [("wide", 3), ("chain", 3), ("nested", 2), ("flaky", 2)];

/// Creates `count` runs spread over `[now, until)`. A create that fails
/// (the API server restarting) is retried until it is accepted; an
/// `AlreadyExists` then means an earlier try went through.
pub async fn start_runs(api: Api<WorkflowInstance>, journal: Shared, seed: u64, count: usize, until: Instant) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5747);
    let total: u32 = MIX.iter().map(|(_, w)| w).sum();
    for i in 0..count {
        let mut pick = rng.random_range(0..total);
        let workflow = MIX
            .iter()
            .find(|(_, w)| {
                pick < *w || {
                    pick -= w;
                    false
                }
            })
            .map_or("chain", |(n, _)| n);
        let name = format!("r{i:03}-{workflow}");
        let run: WorkflowInstance =
            serde_yaml::from_str(&crate::runs::run(&name, workflow, &format!("date: \"2026-01-{:02}\"", i % 28 + 1))).unwrap();
        loop {
            match api.create(&PostParams::default(), &run).await {
                Ok(_) => break,
                Err(kube::Error::Api(s)) if s.code == 409 => break,
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
        journal.lock().unwrap().created.push(name);
        let left = until.saturating_duration_since(Instant::now());
        let gap = left / (count - i) as u32;
        tokio::time::sleep(gap.mul_f64(rng.random_range(0.5..1.5))).await;
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
            let j = journal.lock().unwrap();
            if j.api_back_at.is_none() {
                continue;
            }
            let waiting: Vec<&str> = j.requests.iter().filter(|r| r.applied_after.is_none()).map(|r| r.run.as_str()).collect();
            let mut candidates: Vec<(String, RequestKind)> = Vec::new();
            for name in &j.created {
                let Some(v) = j.runs.get(name) else { continue };
                if waiting.contains(&name.as_str()) || v.shutdown || v.observed_generation < v.generation {
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
            candidates.choose(&mut rng).cloned()
        };
        let Some((name, kind)) = choice else { continue };
        let spec = match kind {
            RequestKind::Pause => serde_json::json!({"suspend": true}),
            RequestKind::Resume => serde_json::json!({"suspend": false}),
            RequestKind::Stop => serde_json::json!({"shutdown": "Stop"}),
            RequestKind::RetryFailed(n) => serde_json::json!({"retryFailed": n}),
        };
        let made_at = Instant::now();
        match api.patch(&name, &PatchParams::default(), &Patch::Merge(&serde_json::json!({ "spec": spec }))).await {
            Ok(patched) => {
                let generation = patched.metadata.generation.unwrap_or_default();
                let mut j = journal.lock().unwrap();
                // The watch may have shown the effect before we got here.
                let applied_after = j.runs.get(&name).filter(|v| kind.visible(generation, v)).map(|_| made_at.elapsed());
                j.requests.push(Request { run: name, kind, generation, made_at, applied_after });
            }
            Err(e) => println!("[chaos] request {} on {name} not made: {e}", kind.label()),
        }
    }
}
