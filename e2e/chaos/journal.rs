//! What the suite saw: every pod and run the watches delivered (first sight
//! of a uid is its creation), each run's latest spec and status, the
//! controllers that are up, the requests made, and the invariant breaks
//! found while the faults went on.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baton::api::{RunPhase, WorkflowInstance};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};

/// How long a run may go without a live owner after a fault (or after the
/// API server is back) before that is an invariant break: the Lease
/// duration, plus room for the survivors to notice and re-hash on a busy
/// two-core machine.
pub const SETTLE: Duration = Duration::from_secs(15);

/// An object a run made: a task pod or a child run.
#[derive(Debug, Clone)]
pub struct Made {
    pub name: String,
    /// The run it belongs to (pod) or the parent run (child run).
    pub run: String,
    pub task: String,
    pub attempt: String,
    pub epoch: String,
}

impl Made {
    pub fn key(&self) -> (String, String, String) {
        (self.run.clone(), self.task.clone(), self.attempt.clone())
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
    pub kind: RequestKind,
    pub generation: i64,
    pub made_at: Instant,
    pub applied_after: Option<Duration>,
}

/// The latest state of one run, from the watch.
#[derive(Debug, Clone, Default)]
pub struct RunView {
    pub uid: String,
    pub parent: Option<String>,
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
    /// When the run was last seen without a live owner (and whether a fault
    /// caused it, so the wait counts as a takeover).
    pub ownerless_since: Option<(Instant, bool)>,
    pub deleted: bool,
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

    fn from(run: &WorkflowInstance) -> RunView {
        let status = run.status.clone().unwrap_or_default();
        let owner = status.owner.clone();
        RunView {
            uid: run.uid().unwrap_or_default(),
            parent: run.labels().get("baton.dev/parent").cloned(),
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
            ownerless_since: None,
            deleted: false,
        }
    }
}

#[derive(Default)]
pub struct Journal {
    /// Controllers whose process runs and is not frozen.
    pub up: BTreeSet<String>,
    /// While the API server restarts: None. Else when it was last back.
    pub api_back_at: Option<Instant>,
    pub pods: HashMap<String, Made>,
    pub children: HashMap<String, Made>,
    pub runs: BTreeMap<String, RunView>,
    /// Top-level runs the suite created, in order.
    pub created: Vec<String>,
    pub requests: Vec<Request>,
    pub faults: BTreeMap<&'static str, u32>,
    pub takeovers: Vec<(String, Duration)>,
    pub watch_errors: u32,
    /// Invariant breaks found while running.
    pub breaks: Vec<String>,
}

pub type Shared = Arc<Mutex<Journal>>;

impl Journal {
    pub fn new(controllers: &[String]) -> Shared {
        Arc::new(Mutex::new(Journal { up: controllers.iter().cloned().collect(), api_back_at: Some(Instant::now()), ..Default::default() }))
    }

    fn owner_live(&self, owner: &str) -> bool {
        !owner.is_empty() && self.up.contains(owner)
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
        // span the restart are not takeover times.
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
        if self.pods.contains_key(&uid) {
            return;
        }
        let labels = pod.labels();
        let get = |k: &str| labels.get(k).cloned().unwrap_or_default();
        self.pods.insert(
            uid,
            Made {
                name: pod.name_any(),
                run: get("baton.dev/instance"),
                task: get("baton.dev/task"),
                attempt: get("baton.dev/attempt"),
                epoch: pod.annotations().get("baton.dev/owner-epoch").cloned().unwrap_or_default(),
            },
        );
    }

    fn saw_run(&mut self, run: &WorkflowInstance, now: Instant) {
        let name = run.name_any();
        let uid = run.uid().unwrap_or_default();
        let mut view = RunView::from(run);
        if let Some(parent) = &view.parent
            && !self.children.contains_key(&uid)
        {
            let labels = run.labels();
            self.children.insert(
                uid.clone(),
                Made {
                    name: name.clone(),
                    run: parent.clone(),
                    task: labels.get("baton.dev/task").cloned().unwrap_or_default(),
                    attempt: labels.get("baton.dev/attempt").cloned().unwrap_or_default(),
                    epoch: run.annotations().get("baton.dev/owner-epoch").cloned().unwrap_or_default(),
                },
            );
        }
        // Owner history must be one change per epoch, going up.
        if let Some(status) = &run.status {
            let epochs: Vec<i64> = status.owner_history.iter().map(|h| h.epoch).collect();
            if epochs.windows(2).any(|w| w[1] <= w[0]) {
                self.breaks.push(format!("run {name}: ownerHistory epochs do not go up: {epochs:?}"));
            }
            if let (Some(o), Some(last)) = (&status.owner, status.owner_history.last())
                && o.epoch != last.epoch
            {
                self.breaks.push(format!("run {name}: owner epoch {} but last ownerHistory epoch {}", o.epoch, last.epoch));
            }
        }
        if let Some(old) = self.runs.get(&name).filter(|o| o.uid == uid) {
            // A write by a fenced-out controller would carry an older view:
            // look for anything in status going backwards.
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
                    "run {name}: status went backwards (a stale write was accepted?): {}; owner {} epoch {} -> {} epoch {}",
                    back.join(", "),
                    old.owner,
                    old.epoch,
                    view.owner,
                    view.epoch
                ));
            }
            view.ownerless_since = old.ownerless_since;
        }
        self.settle_owner(&name, &mut view, now);
        for req in self.requests.iter_mut().filter(|r| r.run == name && r.applied_after.is_none()) {
            if req.kind.visible(req.generation, &view) {
                req.applied_after = Some(now.saturating_duration_since(req.made_at));
            }
        }
        self.runs.insert(name, view);
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
                        "run {name}: unfinished (phase {:?}) but owned by {owner} (epoch {}), not a live controller, for more than {SETTLE:?}; live: {:?}",
                        view.phase, view.epoch, self.up
                    ));
                    // Report once per wait.
                    view.ownerless_since = Some((now, false));
                }
            }
            self.runs.insert(name, view);
        }
    }
}

/// Watches pods and runs of the namespace until the process ends, feeding
/// the journal. A watch that breaks (API server restart) re-lists; the
/// re-listed objects are matched by uid, so nothing counts twice.
pub fn spawn_watches(client: kube::Client, namespace: &str, journal: Shared) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let runs: Api<WorkflowInstance> = Api::namespaced(client, namespace);
    let j = journal.clone();
    tokio::spawn(async move {
        let mut stream = watcher(pods, watcher::Config::default().labels("baton.dev/instance")).default_backoff().boxed();
        while let Some(event) = stream.next().await {
            let mut j = j.lock().unwrap();
            match event {
                Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => j.saw_pod(&p),
                Ok(_) => {}
                Err(_) => j.watch_errors += 1,
            }
        }
    });
    tokio::spawn(async move {
        let mut stream = watcher(runs, watcher::Config::default()).default_backoff().boxed();
        while let Some(event) = stream.next().await {
            let mut j = journal.lock().unwrap();
            let now = Instant::now();
            match event {
                Ok(watcher::Event::Apply(r) | watcher::Event::InitApply(r)) => j.saw_run(&r, now),
                Ok(watcher::Event::Delete(r)) => {
                    if let Some(v) = j.runs.get_mut(&r.name_any()) {
                        v.deleted = true;
                    }
                }
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
