//! The user's riskier moves, mixed with the faults: requests on child runs,
//! deleting a run and creating it again under the same name while its pods
//! still exist, and pairs of runs whose generated pod names collide. Each
//! kind once first (in a seeded order, so a short run has every one), then
//! a seeded random choice. The schedules (`replace`, `forbid`) tick on their
//! own from the start; [`suspend_schedules`] ends them.

use std::time::{Duration, Instant};

use baton::api::{RunPhase, Workflow, WorkflowInstance, WorkflowInstanceSpec};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions, PropagationPolicy};
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{RngExt, SeedableRng};

use crate::journal::{RequestKind, Shared};
use crate::requests::{create_run, request};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Move {
    ChildRequest,
    Recreate,
    Collide,
}

impl Move {
    pub const ALL: [Move; 3] = [Move::ChildRequest, Move::Recreate, Move::Collide];
    /// How often each is picked after the first round.
    const WEIGHTS: [(Move, u32); 3] = [(Move::ChildRequest, 3), (Move::Recreate, 2), (Move::Collide, 1)];

    pub fn label(self) -> &'static str {
        match self {
            Move::ChildRequest => "request on a child run",
            Move::Recreate => "delete + re-create, pods left",
            Move::Collide => "runs with colliding pod names",
        }
    }
}

/// Workflows whose running runs may be deleted and created again.
const RECREATED: [&str; 3] = ["wide", "chain", "nested"];

/// How long a deleted run may take to go away before its re-create gives up.
const GONE_WITHIN: Duration = Duration::from_secs(60);
/// How long a picked move waits for a run it fits before another is picked
/// (a move of the first round waits until it is made).
const FIT_WITHIN: Duration = Duration::from_secs(15);

fn log(start: Instant, what: String) {
    println!("[chaos {:>6.1}s] {what}", start.elapsed().as_secs_f64());
}

/// Makes moves until `until`.
pub async fn make(api: Api<WorkflowInstance>, journal: Shared, seed: u64, start: Instant, until: Instant) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x3e7e);
    let mut first: Vec<Move> = Move::ALL.to_vec();
    first.shuffle(&mut rng);
    let mut pairs = 0;
    let mut recreates = 0;
    let mut picked: Option<(Move, Instant)> = None;
    tokio::time::sleep(Duration::from_secs(6)).await;
    while Instant::now() < until {
        let kind = match picked {
            Some((kind, at)) if at.elapsed() < FIT_WITHIN => kind,
            _ => {
                let kind =
                    first.first().copied().unwrap_or_else(|| Move::WEIGHTS.choose_weighted(&mut rng, |(_, w)| *w).expect("weights").0);
                picked = Some((kind, Instant::now()));
                kind
            }
        };
        let done = match kind {
            Move::ChildRequest => child_request(&api, &journal, &mut rng, start).await,
            Move::Recreate => {
                // The first one orphans the pods, so they are certain to be
                // there when the new run looks; later ones also let the
                // garbage collector race the new run.
                let orphan = recreates == 0 || rng.random_bool(0.5);
                let done = recreate(&api, &journal, &mut rng, start, orphan).await;
                recreates += usize::from(done);
                done
            }
            Move::Collide => {
                collide(&api, &journal, &mut rng, start, pairs).await;
                pairs += 1;
                true
            }
        };
        if done {
            picked = None;
            if !first.is_empty() {
                first.remove(0);
            }
            tokio::time::sleep(Duration::from_millis(rng.random_range(2_000..5_000))).await;
        } else {
            // No run fits this move yet: look again soon.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// Pause, resume or stop a child run of a `family` run, directly. The parent
/// gets no request, so it has nothing to pass on to the child.
async fn child_request(api: &Api<WorkflowInstance>, journal: &Shared, rng: &mut StdRng, start: Instant) -> bool {
    let choice = {
        let mut j = journal.lock().unwrap();
        let mut candidates: Vec<(String, RequestKind)> = Vec::new();
        for (name, v) in &j.runs {
            let of_family = v.parent.as_ref().and_then(|p| j.runs.get(p)).is_some_and(|p| p.workflow == crate::FAMILY);
            if !of_family || v.deleted || j.busy.contains(name) || j.pending(name) || v.shutdown || !v.caught_up() {
                continue;
            }
            let kind = match v.phase {
                Some(RunPhase::Running) if !v.suspend => {
                    if rng.random_bool(0.6) {
                        RequestKind::Pause
                    } else {
                        RequestKind::Stop
                    }
                }
                Some(RunPhase::Paused) if v.suspend => {
                    if rng.random_bool(0.85) {
                        RequestKind::Resume
                    } else {
                        RequestKind::Stop
                    }
                }
                _ => continue,
            };
            candidates.push((name.clone(), kind));
        }
        let choice = candidates.choose(rng).cloned();
        if let Some((name, _)) = &choice {
            j.busy.insert(name.clone());
        }
        choice
    };
    let Some((name, kind)) = choice else { return false };
    log(start, format!("{} child run {name}", kind.label()));
    let made = request(api, journal, &name, kind, true).await;
    if made {
        journal.lock().unwrap().moved(Move::ChildRequest, kind.label());
    }
    made
}

/// Resumes every child run of a `family` run that is left paused (only the
/// suite pauses them), so that its parent can finish. Retries while the API
/// server is not answering.
pub async fn resume_children(api: &Api<WorkflowInstance>, journal: &Shared, start: Instant) {
    let paused: Vec<String> = {
        let j = journal.lock().unwrap();
        j.runs
            .iter()
            .filter(|(_, v)| v.suspend && v.parent.as_ref().and_then(|p| j.runs.get(p)).is_some_and(|p| p.workflow == crate::FAMILY))
            .map(|(n, _)| n.clone())
            .collect()
    };
    for name in paused {
        log(start, format!("resume child run {name} (left paused by the suite)"));
        for _ in 0..20 {
            journal.lock().unwrap().busy.insert(name.clone());
            if request(api, journal, &name, RequestKind::Resume, true).await {
                journal.lock().unwrap().moved(Move::ChildRequest, "resume");
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// Deletes a running run (orphaning its pods and children, or leaving them
/// to the garbage collector) and creates it again at once under the same
/// name, with the same spec.
async fn recreate(api: &Api<WorkflowInstance>, journal: &Shared, rng: &mut StdRng, start: Instant, orphan: bool) -> bool {
    let target = {
        let mut j = journal.lock().unwrap();
        let candidates: Vec<String> = j
            .created
            .iter()
            .filter(|name| {
                j.runs.get(*name).is_some_and(|v| {
                    RECREATED.contains(&v.workflow.as_str())
                        && v.phase == Some(RunPhase::Running)
                        && v.tasks_succeeded > 0
                        && !v.suspend
                        && !v.shutdown
                        && !v.deleted
                        && v.caught_up()
                })
            })
            .filter(|name| !j.busy.contains(*name) && !j.pending(name))
            .cloned()
            .collect();
        let target = candidates.choose(rng).cloned();
        if let Some(name) = &target {
            j.busy.insert(name.clone());
        }
        target
    };
    let Some(name) = target else { return false };
    let done = delete_and_create(api, journal, &name, orphan, start).await;
    let mut j = journal.lock().unwrap();
    j.busy.remove(&name);
    if done {
        j.recreated.insert(name);
        j.moved(Move::Recreate, if orphan { "pods orphaned" } else { "pods left to the GC" });
    }
    done
}

async fn delete_and_create(api: &Api<WorkflowInstance>, journal: &Shared, name: &str, orphan: bool, start: Instant) -> bool {
    let Ok(old) = api.get(name).await else { return false };
    let uid = old.uid().unwrap_or_default();
    let delete = DeleteParams {
        propagation_policy: Some(if orphan { PropagationPolicy::Orphan } else { PropagationPolicy::Background }),
        preconditions: Some(Preconditions { uid: Some(uid.clone()), resource_version: None }),
        ..Default::default()
    };
    log(start, format!("delete run {name} ({}) and create it again", if orphan { "orphan its pods" } else { "background" }));
    let deadline = Instant::now() + GONE_WITHIN;
    loop {
        match api.delete(name, &delete).await {
            // 404: gone already (an earlier try went through).
            Ok(_) => break,
            Err(kube::Error::Api(s)) if s.code == 404 => break,
            Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(500)).await,
            Err(e) => {
                println!("[chaos] delete of run {name} not made: {e}");
                return false;
            }
        }
    }
    let fresh = WorkflowInstance::new(
        name,
        WorkflowInstanceSpec { workflow_ref: old.spec.workflow_ref.clone(), params: old.spec.params.clone(), ..Default::default() },
    );
    while Instant::now() < deadline {
        match api.create(&PostParams::default(), &fresh).await {
            Ok(_) => return true,
            // The old run is still there (the garbage collector is
            // orphaning its pods), or an earlier try of ours went through.
            Err(kube::Error::Api(s)) if s.code == 409 => match api.get(name).await {
                Ok(r) if r.uid().as_deref() != Some(uid.as_str()) => return true,
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            },
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
    journal.lock().unwrap().breaks.push(format!(
        "suite: run {name} (uid {uid}) was still there {GONE_WITHIN:?} after its delete; it was not created again (is the garbage collector running?)"
    ));
    true
}

/// Creates `x<n>` (workflow `coll-a`, task `web-test`) and `x<n>-web`
/// (workflow `coll-b`, task `test`), in a random order: both want pod
/// `x<n>-web-test-0`.
async fn collide(api: &Api<WorkflowInstance>, journal: &Shared, rng: &mut StdRng, start: Instant, n: usize) {
    let a = format!("x{n:02}");
    let b = format!("{a}-web");
    let mut pair = [(a.as_str(), crate::COLLIDE_A), (b.as_str(), crate::COLLIDE_B)];
    pair.shuffle(rng);
    log(start, format!("create runs {} and {} (both want pod {a}-web-test-0)", pair[0].0, pair[1].0));
    for (name, workflow) in pair {
        create_run(api, journal, name, workflow, n).await;
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..400))).await;
    }
    journal.lock().unwrap().moved(Move::Collide, "pair");
}

/// Suspends the schedules, so that the drain can end. Retries while the
/// API server is not answering.
pub async fn suspend_schedules(api: &Api<Workflow>, names: &[String]) {
    let patch = serde_json::json!({"spec": {"schedule": {"suspend": true}}});
    for name in names {
        while api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await.is_err() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}
