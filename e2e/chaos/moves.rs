//! The user's riskier moves, mixed with the faults: requests on child runs,
//! deleting a run and creating it again under the same name while its pods
//! still exist, and pairs of runs whose generated pod names collide. Each
//! kind once first (in a seeded order, so a short run has every one), then
//! a seeded random choice. The schedules (`replace`, `forbid`) tick on their
//! own from the start; [`suspend_schedules`] ends them.

use std::time::{Duration, Instant};

use baton::api::{RunPhase, Workflow, WorkflowInstance, WorkflowInstanceSpec};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions, PropagationPolicy};
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

/// How long a move retries while the API server is not answering.
const GIVE_UP: Duration = Duration::from_secs(60);
/// How long a picked move waits for a run it fits before another is picked
/// (a move of the first round waits until it is made).
const FIT_WITHIN: Duration = Duration::from_secs(15);

fn log(start: Instant, what: String) {
    println!("[chaos {:>6.1}s] {what}", start.elapsed().as_secs_f64());
}

/// Makes moves until `until`.
pub async fn make(api: Api<WorkflowInstance>, pods: Api<Pod>, journal: Shared, seed: u64, start: Instant, until: Instant) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x3e7e);
    let mut first: Vec<Move> = Move::ALL.to_vec();
    first.shuffle(&mut rng);
    let mut pairs = 0;
    let mut recreates = 0;
    let mut picked: Option<(Move, Instant)> = None;
    tokio::time::sleep(Duration::from_secs(6)).await;
    while Instant::now() < until {
        if journal.lock().unwrap().api_back_at.is_none() {
            // The API server is down: a move now would only be refused.
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
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
                let done = recreate(&api, &pods, &journal, &mut rng, start, orphan).await;
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
async fn recreate(api: &Api<WorkflowInstance>, pods: &Api<Pod>, journal: &Shared, rng: &mut StdRng, start: Instant, orphan: bool) -> bool {
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
    // Marked before the first call: a move cut short may already have
    // orphaned the run's pods, and the run is judged as steered.
    journal.lock().unwrap().recreated.insert(name.clone());
    let done = delete_and_create(api, pods, journal, &name, orphan, start).await;
    let mut j = journal.lock().unwrap();
    j.busy.remove(&name);
    if done {
        j.moved(Move::Recreate, if orphan { "pods orphaned" } else { "pods left to the GC" });
    }
    done
}

/// Retries `call` while the API server is not answering (or answers 429 or
/// 5xx), until `deadline`.
async fn retried<T, F, Fut>(deadline: Instant, mut call: F) -> Result<T, kube::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, kube::Error>>,
{
    let transient = |e: &kube::Error| match e {
        kube::Error::Api(s) => s.code == 429 || s.code >= 500,
        _ => true,
    };
    loop {
        match call().await {
            Err(e) if transient(&e) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            other => return other,
        }
    }
}

/// What `kubectl delete --cascade=orphan` leaves once the garbage collector
/// has done its part: the objects labelled `selector` that `uid` controls,
/// without their ownerReferences. Done here rather than by the garbage
/// collector, which after an API server outage can take minutes to act.
async fn disown<K>(api: &Api<K>, selector: &str, uid: &str, deadline: Instant) -> Result<(), kube::Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let labelled = ListParams::default().labels(selector);
    let listed = retried(deadline, || api.list(&labelled)).await?;
    let unowned = Patch::Merge(serde_json::json!({"metadata": {"ownerReferences": null}}));
    let params = PatchParams::default();
    for obj in listed.items.iter().filter(|o| o.owner_references().iter().any(|r| r.uid == uid)) {
        let name = obj.meta().name.clone().unwrap_or_default();
        retried(deadline, || api.patch(&name, &params, &unowned)).await?;
    }
    Ok(())
}

async fn delete_and_create(
    api: &Api<WorkflowInstance>,
    pods: &Api<Pod>,
    journal: &Shared,
    name: &str,
    orphan: bool,
    start: Instant,
) -> bool {
    let Ok(old) = api.get(name).await else { return false };
    let uid = old.uid().unwrap_or_default();
    log(start, format!("delete run {name} ({}) and create it again", if orphan { "orphan its pods and children" } else { "background" }));
    let deadline = Instant::now() + GIVE_UP;
    if orphan {
        let (own_pods, own_children) = (format!("baton.dev/instance={name}"), format!("baton.dev/parent={name}"));
        let disowned = futures::try_join!(disown(pods, &own_pods, &uid, deadline), disown(api, &own_children, &uid, deadline));
        if let Err(e) = disowned {
            println!("[chaos] orphaning the pods and children of run {name} failed: {e}");
            return false;
        }
    }
    let delete = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        preconditions: Some(Preconditions { uid: Some(uid.clone()), resource_version: None }),
        ..Default::default()
    };
    match retried(deadline, || api.delete(name, &delete)).await {
        // 404: gone already (an earlier try went through).
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => {
            println!("[chaos] delete of run {name} not made: {e}");
            return false;
        }
        Ok(_) => {}
    }
    let fresh = WorkflowInstance::new(
        name,
        WorkflowInstanceSpec { workflow_ref: old.spec.workflow_ref.clone(), params: old.spec.params.clone(), ..Default::default() },
    );
    // A 409 means an earlier try of ours went through: the run has no
    // finalizer, so the deleted one is gone when the delete returns.
    let post = PostParams::default();
    match retried(deadline, || api.create(&post, &fresh)).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => journal.lock().unwrap().breaks.push(format!("suite: run {name} was deleted but not created again: {e}")),
    }
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
pub async fn suspend_schedules(api: &Api<Workflow>, journal: &Shared, names: &[String]) {
    let patch = Patch::Merge(serde_json::json!({"spec": {"schedule": {"suspend": true}}}));
    let params = PatchParams::default();
    let deadline = Instant::now() + GIVE_UP;
    for name in names {
        if let Err(e) = retried(deadline, || api.patch(name, &params, &patch)).await {
            journal.lock().unwrap().breaks.push(format!("suite: schedule {name} could not be suspended: {e}"));
        }
    }
}
