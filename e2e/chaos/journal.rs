//! What the suite saw: every pod and run the watches delivered (first sight
//! of a uid is its creation), each run's latest spec and status, the
//! controllers that are up, the requests and moves made, and the invariant
//! breaks found while the faults went on.
//!
//! Checks made here look only at what one watch delivered, in its order
//! (resourceVersion order), and compare generations, never arrival order
//! across two watches: a watch that re-lists may miss intermediate states,
//! which can hide a break but never invent one.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baton::api::{OwnerChangeReason, RunPhase, TaskPhase, WorkflowInstance};
use baton::schedule::Parsed;
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::runtime::utils::Backoff;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};

use crate::moves::Move;

/// How long a run may go without a live owner after a fault (or after the
/// API server is back) before that is an invariant break: the Lease
/// duration, plus room for the survivors to notice and re-hash on a busy
/// two-core machine.
pub const SETTLE: Duration = Duration::from_secs(15);

/// An object a run made: a task pod or a child run.
#[derive(Debug, Clone)]
pub struct Made {
    pub name: String,
    /// The name of the run it belongs to (pod) or of the parent run (child
    /// run), from its labels.
    pub run: String,
    /// The uid in its controller ownerReference when first seen: the run
    /// that created it. Empty when it had none (an orphan seen late).
    pub owner_uid: String,
    pub task: String,
    pub attempt: String,
    pub epoch: String,
}

impl Made {
    fn from<K: Resource>(obj: &K, run_label: &str) -> Made {
        let labels = obj.labels();
        let get = |k: &str| labels.get(k).cloned().unwrap_or_default();
        Made {
            name: obj.meta().name.clone().unwrap_or_default(),
            run: get(run_label),
            owner_uid: obj
                .meta()
                .owner_references
                .iter()
                .flatten()
                .find(|o| o.controller == Some(true))
                .map(|o| o.uid.clone())
                .unwrap_or_default(),
            // An instance of a fanned-out task is its own unit, keyed as
            // in the run's status.
            task: match obj.labels().get("baton.dev/item") {
                Some(item) => baton::naming::instance_key(&get("baton.dev/task"), item.parse().unwrap_or(usize::MAX)),
                None => get("baton.dev/task"),
            },
            attempt: get("baton.dev/attempt"),
            epoch: obj.annotations().get("baton.dev/owner-epoch").cloned().unwrap_or_default(),
        }
    }

    /// (creating run's uid, task, attempt): what may be made at most once.
    pub fn key(&self) -> (String, String, String) {
        (self.owner_uid.clone(), self.task.clone(), self.attempt.clone())
    }
}

/// A user request made with `kubectl patch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RequestKind {
    Pause,
    Resume,
    Stop,
    RetryFailed(i64),
}

impl RequestKind {
    pub fn label(self) -> &'static str {
        match self {
            RequestKind::Pause => "pause",
            RequestKind::Resume => "resume",
            RequestKind::Stop => "stop",
            RequestKind::RetryFailed(_) => "retryFailed",
        }
    }

    /// The `spec` merge patch that makes this request.
    pub fn patch(self) -> serde_json::Value {
        let spec = match self {
            RequestKind::Pause => serde_json::json!({"suspend": true}),
            RequestKind::Resume => serde_json::json!({"suspend": false}),
            RequestKind::Stop => serde_json::json!({"shutdown": "Stop"}),
            RequestKind::RetryFailed(n) => serde_json::json!({"retryFailed": n}),
        };
        serde_json::json!({ "spec": spec })
    }

    /// The `spec.suspend` this request asks for, if it is about suspend.
    fn suspend(self) -> Option<bool> {
        match self {
            RequestKind::Pause => Some(true),
            RequestKind::Resume => Some(false),
            _ => None,
        }
    }

    /// Whether `run`, as the owner wrote it, shows this request's effect.
    pub fn visible(self, generation: i64, run: &RunView) -> bool {
        if run.observed_generation < generation {
            return false;
        }
        match self {
            RequestKind::Pause => run.phase == Some(RunPhase::Paused) || run.terminal(),
            RequestKind::Resume => run.phase != Some(RunPhase::Paused),
            RequestKind::Stop => run.terminal(),
            RequestKind::RetryFailed(n) => run.retry_applied >= n,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Request {
    pub run: String,
    /// Made on a child run.
    pub child: bool,
    pub kind: RequestKind,
    pub generation: i64,
    pub made_at: Instant,
    pub applied_after: Option<Duration>,
}

/// The latest state of one run (one uid), from the watch.
#[derive(Debug, Clone, Default)]
pub struct RunView {
    pub uid: String,
    pub workflow: String,
    pub parent: Option<String>,
    /// The tick of a run a schedule started.
    pub tick: Option<Timestamp>,
    pub generation: i64,
    pub suspend: bool,
    pub shutdown: bool,
    pub retry_failed: i64,
    pub phase: Option<RunPhase>,
    pub observed_generation: i64,
    pub owner: String,
    pub epoch: i64,
    pub retry_applied: i64,
    pub attempts: BTreeMap<String, i32>,
    pub tasks_succeeded: usize,
    /// When the run was last seen without a live owner (and whether a fault
    /// caused it, so the wait counts as a takeover).
    pub ownerless_since: Option<(Instant, bool)>,
    /// Being deleted, or deleted.
    pub deleted: bool,
    /// The watch delivered its deletion, so this view is its final state.
    pub gone: bool,
    /// The generation at which `spec.shutdown` was first seen set (by the
    /// watch, or in the answer to the suite's patch).
    pub shutdown_at: Option<i64>,
    /// The `spec.suspend` the suite last asked for, and the generation its
    /// patch produced once the answer is in.
    pub suite_suspend: Option<(bool, Option<i64>)>,
}

impl RunView {
    pub fn terminal(&self) -> bool {
        self.phase.is_some_and(RunPhase::is_terminal)
    }

    /// Terminal and every request seen: nobody needs to own it any more.
    pub fn idle(&self) -> bool {
        self.terminal() && self.observed_generation >= self.generation
    }

    /// Paused because the last request said so, and that request is seen.
    pub fn paused_on_request(&self) -> bool {
        self.phase == Some(RunPhase::Paused) && self.suspend && self.observed_generation >= self.generation
    }

    /// Every request made on it seen by its owner, no other pending.
    pub fn caught_up(&self) -> bool {
        self.observed_generation >= self.generation
    }

    fn from(run: &WorkflowInstance) -> RunView {
        let status = run.status.clone().unwrap_or_default();
        let owner = status.owner.clone();
        RunView {
            uid: run.uid().unwrap_or_default(),
            workflow: run.spec.workflow_ref.name.clone(),
            parent: run.labels().get("baton.dev/parent").cloned(),
            tick: run.annotations().get("baton.dev/scheduled-time").and_then(|t| t.parse().ok()),
            generation: run.metadata.generation.unwrap_or_default(),
            suspend: run.spec.suspend,
            shutdown: run.spec.shutdown.requested(),
            retry_failed: run.spec.retry_failed,
            phase: status.phase,
            observed_generation: status.observed_generation.unwrap_or_default(),
            owner: owner.as_ref().map(|o| o.controller.clone()).unwrap_or_default(),
            epoch: owner.as_ref().map_or(0, |o| o.epoch),
            retry_applied: status.retry_failed_applied.unwrap_or_default(),
            attempts: status.tasks.iter().map(|t| (t.name.clone(), t.attempts)).collect(),
            tasks_succeeded: status.tasks.iter().filter(|t| t.phase == TaskPhase::Succeeded).count(),
            deleted: run.metadata.deletion_timestamp.is_some(),
            ..Default::default()
        }
    }
}

/// A run taken over from an owner whose Lease was judged expired.
#[derive(Debug, Clone)]
pub struct Failover {
    pub run: String,
    pub from: String,
    pub to: String,
    /// `since` of the new owner: when it decided (whole seconds).
    pub at: Timestamp,
}

/// One controller's Lease as the watch showed it, with the wall time of
/// each first sight (so what was seen was written by then).
#[derive(Debug, Clone, Default)]
pub struct LeaseLog {
    /// renewTime -> when first seen.
    pub renewals: BTreeMap<Timestamp, Timestamp>,
    /// When the Lease was seen deleted, or seen again with a new uid (the
    /// controller shut down cleanly, deleting it, and started again).
    pub ended: BTreeSet<Timestamp>,
    uid: String,
}

impl LeaseLog {
    fn saw(&mut self, lease: &Lease, deleted: bool) {
        let now = Timestamp::now();
        let uid = lease.uid().unwrap_or_default();
        if deleted || (!self.uid.is_empty() && self.uid != uid) {
            self.ended.insert(now);
        }
        self.uid = uid;
        if let Some(renewed) = lease.spec.as_ref().and_then(|s| s.renew_time.as_ref()) {
            self.renewals.entry(renewed.0).or_insert(now);
        }
    }
}

/// A run a schedule started, at first sight.
#[derive(Debug, Clone)]
pub struct Scheduled {
    pub workflow: String,
    pub name: String,
    pub uid: String,
    pub tick: Timestamp,
}

#[derive(Default)]
pub struct Journal {
    /// Controllers whose process runs and is not frozen.
    pub up: BTreeSet<String>,
    /// While the API server is down: None. Else when it was last back.
    pub api_back_at: Option<Instant>,
    pub pods: HashMap<String, Made>,
    pub children: HashMap<String, Made>,
    /// The current incarnation of each run name.
    pub runs: BTreeMap<String, RunView>,
    /// Earlier incarnations of names that were deleted and created again.
    pub retired: Vec<(String, RunView)>,
    /// Every run a schedule started, by uid.
    pub scheduled: BTreeMap<String, Scheduled>,
    /// The schedules of the workflows that have one.
    pub schedules: BTreeMap<String, Parsed>,
    /// Top-level runs the suite created, in order.
    pub created: Vec<String>,
    /// Runs the suite deleted and created again under the same name (or
    /// began to: their pods may be orphaned).
    pub recreated: BTreeSet<String>,
    /// Runs a move or a request is working on: no other one picks them.
    pub busy: BTreeSet<String>,
    pub requests: Vec<Request>,
    pub faults: BTreeMap<&'static str, u32>,
    pub moves: BTreeMap<Move, BTreeMap<String, u32>>,
    pub takeovers: Vec<(String, Duration)>,
    /// Failovers seen in runs' ownerHistory, by (run uid, epoch).
    pub failovers: BTreeMap<(String, i64), Failover>,
    /// What the watch showed of each controller's Lease, by name (the
    /// controller's identity).
    pub leases: BTreeMap<String, LeaseLog>,
    pub watch_errors: u32,
    /// Invariant breaks found while running.
    pub breaks: Vec<String>,
}

pub type Shared = Arc<Mutex<Journal>>;

impl Journal {
    pub fn new(controllers: &[String], schedules: BTreeMap<String, Parsed>) -> Shared {
        Arc::new(Mutex::new(Journal {
            up: controllers.iter().cloned().collect(),
            api_back_at: Some(Instant::now()),
            schedules,
            ..Default::default()
        }))
    }

    fn owner_live(&self, owner: &str) -> bool {
        !owner.is_empty() && self.up.contains(owner)
    }

    /// Counts one move of a kind, in a variant (e.g. the request made).
    pub fn moved(&mut self, kind: Move, variant: &str) {
        *self.moves.entry(kind).or_default().entry(variant.to_string()).or_default() += 1;
    }

    /// A request not yet applied on `name`.
    pub fn pending(&self, name: &str) -> bool {
        self.requests.iter().any(|r| r.run == name && r.applied_after.is_none())
    }

    /// A controller stops being live (killed, frozen, stopped): every
    /// unfinished run it owns starts waiting for a takeover.
    pub fn controller_down(&mut self, identity: &str, now: Instant) {
        self.up.remove(identity);
        for run in self.runs.values_mut() {
            if run.owner == identity && !run.idle() && !run.deleted {
                run.ownerless_since = Some((now, true));
            }
        }
    }

    pub fn controller_up(&mut self, identity: &str) {
        self.up.insert(identity.to_string());
    }

    pub fn api_down(&mut self) {
        self.api_back_at = None;
        // A takeover cannot happen without the API server: waits that
        // span the outage are not takeover times.
        for run in self.runs.values_mut() {
            if let Some((since, true)) = run.ownerless_since {
                run.ownerless_since = Some((since, false));
            }
        }
    }

    pub fn api_up(&mut self, now: Instant) {
        self.api_back_at = Some(now);
    }

    fn saw_pod(&mut self, pod: &Pod) {
        let Some(uid) = pod.uid() else { return };
        self.pods.entry(uid).or_insert_with(|| Made::from(pod, "baton.dev/instance"));
    }

    /// The suite is about to ask `name` for `kind`: a suspend request is
    /// expected to stay once its patch's generation is known.
    pub fn requesting(&mut self, name: &str, kind: RequestKind) {
        if let (Some(v), Some(want)) = (self.runs.get_mut(name), kind.suspend()) {
            v.suite_suspend = Some((want, None));
        }
    }

    /// The answer to the suite's patch of `kind` (None: the patch failed,
    /// so what the run holds now is unknown).
    pub fn requested(&mut self, name: &str, kind: RequestKind, answer: Option<&WorkflowInstance>) {
        let Some(v) = self.runs.get_mut(name) else { return };
        let Some(run) = answer.filter(|r| r.uid().as_deref() == Some(v.uid.as_str())) else {
            if kind.suspend().is_some() {
                v.suite_suspend = None;
            }
            return;
        };
        let generation = run.metadata.generation.unwrap_or_default();
        if let Some(want) = kind.suspend() {
            v.suite_suspend = Some((want, Some(generation)));
        }
        if run.spec.shutdown.requested() && v.shutdown_at.is_none_or(|g| g > generation) {
            v.shutdown_at = Some(generation);
        }
    }

    fn saw_run(&mut self, run: &WorkflowInstance, now: Instant) {
        let name = run.name_any();
        let uid = run.uid().unwrap_or_default();
        let mut view = RunView::from(run);
        if view.parent.is_some() && !self.children.contains_key(&uid) {
            self.children.insert(uid.clone(), Made::from(run, "baton.dev/parent"));
        }
        if let Some(tick) = view.tick
            && !self.scheduled.contains_key(&uid)
        {
            self.scheduled.insert(uid.clone(), Scheduled { workflow: view.workflow.clone(), name: name.clone(), uid: uid.clone(), tick });
        }
        // Owner history must be one change per epoch, going up. Failovers
        // are kept to compare with the Leases at the end.
        if let Some(status) = &run.status {
            for pair in status.owner_history.windows(2).filter(|w| w[1].epoch == w[0].epoch + 1) {
                let (from, to) = (&pair[0], &pair[1]);
                if to.reason == OwnerChangeReason::Failover && from.controller != to.controller {
                    self.failovers.entry((uid.clone(), to.epoch)).or_insert_with(|| Failover {
                        run: name.clone(),
                        from: from.controller.clone(),
                        to: to.controller.clone(),
                        at: to.since.0,
                    });
                }
            }
            let epochs: Vec<i64> = status.owner_history.iter().map(|h| h.epoch).collect();
            if epochs.windows(2).any(|w| w[1] <= w[0]) {
                self.breaks.push(format!("invariant 3: run {name}: ownerHistory epochs do not go up: {epochs:?}"));
            }
            if let (Some(o), Some(last)) = (&status.owner, status.owner_history.last())
                && o.epoch != last.epoch
            {
                self.breaks.push(format!("invariant 3: run {name}: owner epoch {} but last ownerHistory epoch {}", o.epoch, last.epoch));
            }
        }
        if let Some(old) = self.runs.remove(&name) {
            if old.uid == uid {
                self.went_backwards(&name, &old, &view);
                view.ownerless_since = old.ownerless_since;
                view.deleted |= old.deleted;
                view.shutdown_at = old.shutdown_at;
                view.suite_suspend = old.suite_suspend;
            } else {
                // A new incarnation of the name: keep the old one's last view.
                self.retired.push((name.clone(), old));
            }
        }
        self.undone(&name, &mut view);
        self.settle_owner(&name, &mut view, now);
        for req in self.requests.iter_mut().filter(|r| r.run == name && r.applied_after.is_none()) {
            if req.kind.visible(req.generation, &view) {
                req.applied_after = Some(now.saturating_duration_since(req.made_at));
            }
        }
        self.runs.insert(name, view);
    }

    /// The run's deletion, with its final state.
    fn gone_run(&mut self, run: &WorkflowInstance, now: Instant) {
        self.saw_run(run, now);
        if let Some(v) = self.runs.get_mut(&run.name_any()).filter(|v| Some(&v.uid) == run.uid().as_ref()) {
            v.deleted = true;
            v.gone = true;
            v.ownerless_since = None;
        }
    }

    /// A write by a fenced-out controller would carry an older view: looks
    /// for anything in status going backwards.
    fn went_backwards(&mut self, name: &str, old: &RunView, view: &RunView) {
        let mut back = Vec::new();
        if view.epoch < old.epoch {
            back.push(format!("owner epoch {} -> {}", old.epoch, view.epoch));
        }
        if view.observed_generation < old.observed_generation {
            back.push(format!("observedGeneration {} -> {}", old.observed_generation, view.observed_generation));
        }
        if view.retry_applied < old.retry_applied {
            back.push(format!("retryFailedApplied {} -> {}", old.retry_applied, view.retry_applied));
        }
        for (task, &n) in &old.attempts {
            if view.attempts.get(task).is_some_and(|&m| m < n) {
                back.push(format!("task {task} attempts {n} -> {}", view.attempts[task]));
            }
        }
        if old.terminal() && !view.terminal() && view.retry_applied == old.retry_applied {
            back.push(format!("phase {:?} -> {:?} without a retryFailed", old.phase, view.phase));
        }
        if !back.is_empty() {
            self.breaks.push(format!(
                "invariant 3: run {name}: status went backwards (a stale write was accepted?): {}; owner {} epoch {} -> {} epoch {}",
                back.join(", "),
                old.owner,
                old.epoch,
                view.owner,
                view.epoch
            ));
        }
    }

    /// Invariant 6: a request is never undone. `spec.shutdown`, once seen
    /// set, is never seen cleared at a later generation (nobody clears it:
    /// not the suite, not a parent, not a schedule); a `spec.suspend` the
    /// suite set keeps its value at every later generation until the suite
    /// asks again. Also invariant 7's "a Replace stops only runs of earlier
    /// ticks": a scheduled run is not seen stopped before the next tick of
    /// its schedule was due (the watch sees a stop after it was made, so
    /// seeing it early cannot be a watch delay).
    fn undone(&mut self, name: &str, view: &mut RunView) {
        let who = match &view.parent {
            Some(p) => format!("child run {name} (of {p})"),
            None => format!("run {name}"),
        };
        if let Some(set_at) = view.shutdown_at
            && !view.shutdown
            && view.generation > set_at
        {
            self.breaks.push(format!(
                "invariant 6: {who} (uid {}): spec.shutdown was set at generation {set_at} and is cleared at generation {}: a stop request was undone (phase now {:?})",
                view.uid, view.generation, view.phase
            ));
            view.shutdown_at = None;
        }
        if view.shutdown && view.shutdown_at.is_none() {
            view.shutdown_at = Some(view.generation);
            if let Some(tick) = view.tick
                && let Some(schedule) = self.schedules.get(&view.workflow)
            {
                let seen = Timestamp::now();
                let next = schedule.next_after(tick);
                if next.is_none_or(|n| seen < n) {
                    self.breaks.push(format!(
                        "invariant 7: scheduled run {name} (tick {tick}) was stopped before the next tick ({}) was due (stop seen at {seen}): a Replace stopped the run of its own tick",
                        next.map_or("none".into(), |n| n.to_string())
                    ));
                }
            }
        }
        if let Some((want, Some(at))) = view.suite_suspend
            && view.generation >= at
            && view.suspend != want
        {
            self.breaks.push(format!(
                "invariant 6: {who} (uid {}): the suite set spec.suspend={want} (generation {at}) and someone else made it {} at generation {}: a request was undone (phase now {:?})",
                view.uid, view.suspend, view.generation, view.phase
            ));
            view.suite_suspend = None;
        }
    }

    /// Starts or ends the run's wait for a live owner.
    fn settle_owner(&mut self, name: &str, view: &mut RunView, now: Instant) {
        let needs_owner = !view.idle() && !view.deleted;
        if !needs_owner || self.owner_live(&view.owner) {
            if let Some((since, true)) = view.ownerless_since.take()
                && needs_owner
            {
                self.takeovers.push((name.to_string(), now.saturating_duration_since(since)));
            }
            view.ownerless_since = None;
        } else if view.ownerless_since.is_none() {
            view.ownerless_since = Some((now, false));
        }
    }

    /// Called every half second: ends waits that a controller coming back
    /// ended, and reports runs ownerless for longer than [`SETTLE`].
    pub fn check_owners(&mut self, now: Instant) {
        let Some(api_back) = self.api_back_at else { return };
        let names: Vec<String> = self.runs.keys().cloned().collect();
        for name in names {
            let mut view = self.runs.remove(&name).expect("listed");
            self.settle_owner(&name, &mut view, now);
            if let Some((since, _)) = view.ownerless_since {
                let from = since.max(api_back);
                if now.saturating_duration_since(from) > SETTLE {
                    let owner = if view.owner.is_empty() { "nobody".to_string() } else { view.owner.clone() };
                    self.breaks.push(format!(
                        "invariant 3: run {name}: unfinished (phase {:?}) but owned by {owner} (epoch {}), not a live controller, for more than {SETTLE:?}; live: {:?}",
                        view.phase, view.epoch, self.up
                    ));
                    // Report once per wait.
                    view.ownerless_since = Some((now, false));
                }
            }
            self.runs.insert(name, view);
        }
    }

    /// The view of the run with `uid` whose last state the journal knows:
    /// the current incarnation of its name, or an earlier one whose
    /// deletion the watch delivered.
    pub fn run_by_uid(&self, uid: &str) -> Option<(&str, &RunView)> {
        let current = self.runs.iter().find(|(_, v)| v.uid == uid);
        let retired = self.retired.iter().find(|(_, v)| v.uid == uid && v.gone);
        current.or(retired.map(|(n, v)| (n, v))).map(|(n, v)| (n.as_str(), v))
    }

    /// A readable name for the run with `uid`, for messages.
    pub fn describe_uid(&self, uid: &str) -> String {
        if uid.is_empty() {
            return "no run (no controller ownerReference)".into();
        }
        let current = self.runs.iter().find(|(_, v)| v.uid == uid).map(|(n, _)| format!("run {n} uid {uid}"));
        let retired = self.retired.iter().find(|(_, v)| v.uid == uid).map(|(n, _)| format!("deleted run {n} uid {uid}"));
        current.or(retired).unwrap_or_else(|| format!("unknown run uid {uid}"))
    }
}

/// How the suite's watches retry: every half second, so that they see the
/// cluster again as soon as the API server is back (kube's default backoff
/// grows to 30 s and is reset only after two quiet minutes, which left a
/// watch blind for a minute after two API server restarts).
struct EveryHalfSecond;

impl Iterator for EveryHalfSecond {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        Some(Duration::from_millis(500))
    }
}

impl Backoff for EveryHalfSecond {
    fn reset(&mut self) {}
}

/// Watches pods, runs and controller Leases of the namespace until the
/// process ends, feeding the journal. A watch that breaks (API server
/// restart) re-lists; the re-listed objects are matched by uid, so nothing
/// counts twice.
pub fn spawn_watches(client: kube::Client, namespace: &str, journal: Shared) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), namespace);
    let j = journal.clone();
    tokio::spawn(async move {
        let mut stream = watcher(leases, watcher::Config::default().labels("baton.dev/controller=true")).backoff(EveryHalfSecond).boxed();
        while let Some(event) = stream.next().await {
            let mut j = j.lock().unwrap();
            // A controller's Lease is named after its identity.
            match event {
                Ok(watcher::Event::Apply(l) | watcher::Event::InitApply(l)) => j.leases.entry(l.name_any()).or_default().saw(&l, false),
                Ok(watcher::Event::Delete(l)) => j.leases.entry(l.name_any()).or_default().saw(&l, true),
                Ok(_) => {}
                Err(_) => j.watch_errors += 1,
            }
        }
    });
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let runs: Api<WorkflowInstance> = Api::namespaced(client, namespace);
    let j = journal.clone();
    tokio::spawn(async move {
        let mut stream = watcher(pods, watcher::Config::default().labels("baton.dev/instance")).backoff(EveryHalfSecond).boxed();
        while let Some(event) = stream.next().await {
            let mut j = j.lock().unwrap();
            match event {
                Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p) | watcher::Event::Delete(p)) => j.saw_pod(&p),
                Ok(_) => {}
                Err(_) => j.watch_errors += 1,
            }
        }
    });
    tokio::spawn(async move {
        let mut stream = watcher(runs, watcher::Config::default()).backoff(EveryHalfSecond).boxed();
        while let Some(event) = stream.next().await {
            let mut j = journal.lock().unwrap();
            let now = Instant::now();
            match event {
                Ok(watcher::Event::Apply(r) | watcher::Event::InitApply(r)) => j.saw_run(&r, now),
                Ok(watcher::Event::Delete(r)) => j.gone_run(&r, now),
                Ok(_) => {}
                Err(_) => j.watch_errors += 1,
            }
        }
    });
}

/// Records a pod or run found by a final list that the watches missed
/// (created and changed only while a watch was re-connecting).
pub fn merge_listed(journal: &mut Journal, pods: &[Pod], runs: &[WorkflowInstance]) {
    for p in pods {
        journal.saw_pod(p);
    }
    let now = Instant::now();
    for r in runs {
        journal.saw_run(r, now);
    }
}
