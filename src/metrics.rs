//! Prometheus metrics served on `/metrics`.

use std::sync::atomic::AtomicU64;
use std::time::Instant;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::api::OwnerChangeReason;
use crate::api::RunPhase;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabel {
    pub phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabel {
    pub kind: &'static str,
}

/// Verdict of an admission review: `allowed`, `denied`, or `error` (the run
/// could not be read, so the create was refused for now).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabel {
    pub verdict: &'static str,
}

/// One kind of request to the API server: its verb (`get`, `list`,
/// `watch`, `create`, `update`, `patch`, `delete`) and resource (with its
/// subresource, as `workflowinstances/status`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabel {
    pub verb: &'static str,
    pub resource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum Reason {
    Created,
    Failover,
    Handoff,
}

impl From<OwnerChangeReason> for Reason {
    fn from(r: OwnerChangeReason) -> Self {
        match r {
            OwnerChangeReason::Created => Reason::Created,
            OwnerChangeReason::Failover => Reason::Failover,
            OwnerChangeReason::Handoff => Reason::Handoff,
        }
    }
}

/// Why a run was deleted: `ttl` (ttlSecondsAfterFinished) or `history`
/// (a schedule's history limits).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeletedLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClaimLabel {
    pub reason: Reason,
}

/// Every metric baton exports.
pub struct Metrics {
    pub registry: Registry,
    pub reconciles: Counter,
    pub reconcile_errors: Family<ErrorLabel, Counter>,
    pub reconcile_duration: Histogram,
    /// Runs this controller owns, by phase.
    pub runs: Family<PhaseLabel, Gauge>,
    pub task_starts: Counter,
    pub task_completions: Family<PhaseLabel, Counter>,
    pub task_retries: Counter,
    pub claims: Family<ClaimLabel, Counter>,
    pub releases: Counter,
    /// Writes this controller did not make, or the API server refused,
    /// because it no longer held the run (or its own Lease).
    pub fenced_writes_refused: Counter,
    pub adopted: Counter,
    /// Creates of pods and child runs judged by the admission webhook.
    pub admission_reviews: Family<VerdictLabel, Counter>,
    /// Requests this controller made to the API server.
    pub api_requests: Family<RequestLabel, Counter>,
    /// Time requests waited for the client-side rate limit.
    pub api_throttled_seconds: Counter<f64, AtomicU64>,
    /// Finished runs this controller deleted, by reason.
    pub runs_deleted: Family<DeletedLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("baton");
        let m = Metrics {
            reconciles: Counter::default(),
            reconcile_errors: Family::default(),
            reconcile_duration: Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
            runs: Family::default(),
            task_starts: Counter::default(),
            task_completions: Family::default(),
            task_retries: Counter::default(),
            claims: Family::default(),
            releases: Counter::default(),
            fenced_writes_refused: Counter::default(),
            adopted: Counter::default(),
            admission_reviews: Family::default(),
            api_requests: Family::default(),
            api_throttled_seconds: Counter::default(),
            runs_deleted: Family::default(),
            registry: Registry::default(),
        };
        registry.register("reconciles", "Reconciles of runs", m.reconciles.clone());
        registry.register("reconcile_errors", "Failed reconciles by kind of error", m.reconcile_errors.clone());
        registry.register("reconcile_duration_seconds", "Duration of one reconcile", m.reconcile_duration.clone());
        registry.register("runs", "Runs owned by this controller, by phase", m.runs.clone());
        registry.register("task_starts", "Task attempts started", m.task_starts.clone());
        registry.register("task_completions", "Tasks finished, by phase", m.task_completions.clone());
        registry.register("task_retries", "Task attempts retried", m.task_retries.clone());
        registry.register("claims", "Runs claimed, by reason", m.claims.clone());
        registry.register("releases", "Runs released to another controller", m.releases.clone());
        registry.register(
            "fenced_writes_refused",
            "Writes not made because this controller was no longer the owner",
            m.fenced_writes_refused.clone(),
        );
        registry.register("adopted", "Pods and child runs found existing at create (AlreadyExists) and adopted", m.adopted.clone());
        registry.register(
            "admission_reviews",
            "Creates of pods and child runs judged by the admission webhook: allowed, denied (stale owner epoch, run gone or replaced), error (run not readable)",
            m.admission_reviews.clone(),
        );
        registry.register("api_requests", "Requests this controller made to the API server, by verb and resource", m.api_requests.clone());
        registry.register(
            "api_throttled_seconds",
            "Time requests waited for the client-side rate limit (--kube-qps, --kube-burst)",
            m.api_throttled_seconds.clone(),
        );
        registry.register(
            "runs_deleted",
            "Finished runs deleted: ttl (ttlSecondsAfterFinished passed) or history (over a schedule's history limits)",
            m.runs_deleted.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// Sets the owned-runs gauges from a count per phase.
    pub fn set_runs(&self, counts: &std::collections::HashMap<RunPhase, i64>) {
        for phase in RunPhase::ALL {
            self.runs.get_or_create(&PhaseLabel { phase: phase.as_str() }).set(counts.get(&phase).copied().unwrap_or(0));
        }
    }

    /// Starts timing a reconcile; the time is recorded when the guard drops.
    pub fn reconcile_timer(&self) -> ReconcileTimer<'_> {
        self.reconciles.inc();
        ReconcileTimer { metrics: self, start: Instant::now() }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    start: Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.metrics.reconcile_duration.observe(self.start.elapsed().as_secs_f64());
    }
}
