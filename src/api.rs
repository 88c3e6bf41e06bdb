//! The two custom resources, `Workflow` (a definition) and `WorkflowInstance`
//! (one run of it), in group `baton.dev`, version `v1alpha1`.
//!
//! Doc comments on fields become `kubectl explain` text; schema attributes
//! carry the checks the API server can make at apply time (bounds, patterns,
//! list-map uniqueness, CEL rules). Checks that need the whole graph or other
//! objects live in [`crate::dag`].

// kube-derive expands each printcolumn(...) into attributes clippy takes for duplicates.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, Container, PodSecurityContext, Toleration, Volume};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of both kinds.
pub const GROUP: &str = "baton.dev";

/// A workflow definition: a DAG of tasks, each a container or a sub-workflow.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "baton.dev",
    version = "v1alpha1",
    kind = "Workflow",
    namespaced,
    status = "WorkflowStatus",
    shortname = "wf",
    category = "baton",
    derive = "PartialEq",
    derive = "Default",
    doc = "A workflow definition: a DAG of tasks, each a container or a sub-workflow.",
    printcolumn(name = "Schedule", type_ = "string", json_path = ".spec.schedule.cron"),
    printcolumn(name = "Valid", type_ = "string", json_path = ".status.conditions[?(@.type==\"Valid\")].status"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
// The dependsOn rule costs tasks x dependencies at run time; past 100 tasks it
// would exceed the API server's per-call CEL budget, so larger workflows get
// the same check from the controller (condition Valid=False) instead.
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "size(self.tasks) > 100 || sets.contains(self.tasks.map(t, t.name), self.tasks.map(t, has(t.dependsOn) ? t.dependsOn : []).flatten())",
        "message": "every dependsOn entry must name a task of this workflow"
    },
    {
        "rule": "!has(self.onExit) || self.onExit.all(e, !self.tasks.exists(t, t.name == e.name))",
        "message": "an exit task cannot have the name of a task of the DAG"
    }
]))]
pub struct WorkflowSpec {
    /// Declared parameters. Tasks reference them as `{{params.NAME}}`; a run
    /// supplies values in `spec.params`, or the default applies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub params: Vec<ParamSpec>,

    /// Most tasks running at once in one run. Unset means no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub parallelism: Option<i32>,

    /// A run still going this many seconds after it started fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 31_536_000))]
    pub active_deadline_seconds: Option<i64>,

    /// When true (the default), the first task that fails for good stops the
    /// run; when false, independent branches finish and dependants of the
    /// failed task are Skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_fast: Option<bool>,

    /// Start runs on a cron schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Schedule>,

    /// Delete each run this many seconds after it finished (0: as soon as
    /// it finished); its pods and child runs go with it. Unset: runs are
    /// kept. A run's own `spec.ttlSecondsAfterFinished` overrides this. A
    /// run copies the workflow when it starts, so a change here applies to
    /// runs started after it. Child runs (of `workflowRef` tasks) go with
    /// their parent instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub ttl_seconds_after_finished: Option<i32>,

    /// When the pods of a run's tasks are deleted: `Never` (the default),
    /// `OnTaskSuccess` (a task's pod once that task succeeded; pods of
    /// failed attempts stay), `OnRunSuccess` (every pod once the run
    /// succeeded), `OnRunFinished` (every pod once the run ended, whatever
    /// the outcome). The run's status keeps what the pods reported (exit
    /// codes, results, messages). A run may set its own `spec.podGC`.
    #[serde(default, rename = "podGC")]
    pub pod_gc: PodGc,

    /// The tasks of the DAG. Names are unique DNS labels.
    #[schemars(length(min = 1, max = 1000))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub tasks: Vec<TaskSpec>,

    /// Exit tasks: they start once every task of the DAG has ended (or
    /// after `shutdown: Stop`; `Terminate` skips them), whatever the
    /// outcome, and `dependsOn` only each other. In their templates and
    /// `when`, `run.phase` is the DAG's outcome: Succeeded, Failed or
    /// Stopped. The run ends with that outcome, or Failed if an exit task
    /// fails. Names are unique across `tasks` and `onExit`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub on_exit: Vec<TaskSpec>,
}

impl WorkflowSpec {
    /// `failFast` with its default applied.
    pub fn fail_fast(&self) -> bool {
        self.fail_fast.unwrap_or(true)
    }

    /// The DAG's tasks, then the exit tasks: the order of `status.tasks`
    /// and of the planner's task indices.
    pub fn all_tasks(&self) -> impl Iterator<Item = &TaskSpec> {
        self.tasks.iter().chain(&self.on_exit)
    }

    /// The task (of the DAG or an exit task) with this name.
    pub fn task(&self, name: &str) -> Option<&TaskSpec> {
        self.all_tasks().find(|t| t.name == name)
    }
}

/// A declared workflow parameter.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ParamSpec {
    /// Parameter name, referenced as `{{params.NAME}}`.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[A-Za-z_][A-Za-z0-9_-]*$"))]
    pub name: String,
    /// Value used when a run does not supply one. Without a default, every
    /// run must supply the parameter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    /// What the parameter means, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// A cron schedule, with CronJob's semantics.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Schedule {
    /// Cron expression: five fields (minute hour day-of-month month
    /// day-of-week), or a macro such as `@hourly`.
    #[schemars(length(min = 1, max = 128))]
    pub cron: String,
    /// IANA time zone the cron expression is read in. Default `Etc/UTC`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub time_zone: Option<String>,
    /// What to do when a tick comes while a run of this workflow is still
    /// active: `Allow` starts another, `Forbid` skips the tick, `Replace`
    /// stops the active run and starts the new one. Default `Allow`.
    #[serde(default)]
    pub concurrency_policy: ConcurrencyPolicy,
    /// A tick missed (controller down) by more than this many seconds is not
    /// started but reported. Unset means no deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 31_536_000))]
    pub starting_deadline_seconds: Option<i64>,
    /// True stops new ticks; runs already started go on.
    #[serde(default)]
    pub suspend: bool,
    /// Succeeded runs of this schedule to keep: older ones are deleted,
    /// as CronJob deletes its old Jobs. Default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub successful_runs_history_limit: Option<i32>,
    /// Failed or Stopped runs of this schedule to keep: older ones are
    /// deleted. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub failed_runs_history_limit: Option<i32>,
}

impl Schedule {
    /// `successfulRunsHistoryLimit` with its default applied.
    pub fn successful_runs_history_limit(&self) -> usize {
        self.successful_runs_history_limit.map_or(3, |n| n.max(0) as usize)
    }

    /// `failedRunsHistoryLimit` with its default applied.
    pub fn failed_runs_history_limit(&self) -> usize {
        self.failed_runs_history_limit.map_or(1, |n| n.max(0) as usize)
    }
}

/// CronJob's concurrency policies.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ConcurrencyPolicy {
    /// Start a run at every tick.
    #[default]
    Allow,
    /// Skip a tick while a run is active.
    Forbid,
    /// Stop the active run, then start the new one.
    Replace,
}

/// When the pods of a run's tasks are deleted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum PodGc {
    /// Pods are kept (they go when the run is deleted).
    #[default]
    Never,
    /// A task's pod is deleted once the task succeeded; pods of failed
    /// attempts are kept.
    OnTaskSuccess,
    /// Every pod of the run is deleted once the run succeeded.
    OnRunSuccess,
    /// Every pod of the run is deleted once the run ended, whatever the
    /// outcome.
    OnRunFinished,
}

/// One task of a workflow: a container to run, or another workflow to run as
/// a child run.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.container) != has(self.workflowRef)", "message": "a task must have exactly one of container or workflowRef"},
    {"rule": "!has(self.dependsOn) || !(self.name in self.dependsOn)", "message": "a task cannot depend on itself"}
]))]
pub struct TaskSpec {
    /// Task name: a DNS label (lower case letters, digits, '-'), unique in
    /// the workflow.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,

    /// Tasks that must succeed (or be skipped by their `when`) before this
    /// one starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub depends_on: Vec<String>,

    /// A CEL expression over `params`, `tasks` (name -> {phase, outputs:
    /// {result, json}}), `item` and `run` ({name, namespace, phase}),
    /// evaluated once the dependencies are satisfied. False skips the task
    /// (reason WhenFalse), which still satisfies its dependants. For
    /// example `tasks.check.outputs.result == 'ok'`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub when: Option<String>,

    /// Run the task once per item of this list (strings, numbers or
    /// objects), at most 1000. Templates read the item as `{{item}}` or
    /// `{{item.FIELD}}`, `when` as `item`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "items_schema")]
    pub with_items: Option<Vec<serde_json::Value>>,

    /// Run the task once per item of the JSON list this template yields,
    /// for example `{{tasks.list.outputs.result}}`; at most 1000 items.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub with_param: Option<String>,

    /// The container the task's pod runs. Templates (`{{params.NAME}}`,
    /// `{{tasks.T.outputs.result}}`, `{{item}}`, `{{run.name}}`, ...) are
    /// substituted in its command, args and env values. Its termination
    /// message (the file at `terminationMessagePath`) is the task's result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<Container>,

    /// Run another Workflow as a child run of this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_ref: Option<TaskWorkflowRef>,

    /// How often a failed attempt is retried, and how long to wait between.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<RetryPolicy>,

    /// An attempt still running after this many seconds fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 604_800))]
    pub timeout_seconds: Option<i64>,

    /// Pod-level settings for the task's pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_template: Option<PodTemplate>,
}

impl TaskSpec {
    /// Retry limit, 0 when no retries are configured.
    pub fn retry_limit(&self) -> i32 {
        self.retries.as_ref().map_or(0, |r| r.limit)
    }

    /// Whether the task runs once per item.
    pub fn fans_out(&self) -> bool {
        self.with_items.is_some() || self.with_param.is_some()
    }
}

/// Most instances of one fanned-out task.
pub const MAX_ITEMS: usize = 1000;

/// Schema of `withItems`: a list of any JSON values (strings, numbers,
/// objects), kept as given.
fn items_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "description": "Run the task once per item of this list (strings, numbers or objects), at most 1000. Templates read the item as {{item}} or {{item.FIELD}}, when as item.",
        "type": "array",
        "maxItems": MAX_ITEMS,
        "items": {"x-kubernetes-preserve-unknown-fields": true}
    })
}

/// A reference from a task to the Workflow it runs as a child.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskWorkflowRef {
    /// Name of a Workflow in the same namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Parameters of the child run; values may use templates of the parent
    /// (`{{params.NAME}}`, `{{tasks.T.outputs.result}}`, `{{item}}`, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, String>,
}

/// Retries of a failed task.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicy {
    /// How many times a failed attempt is retried (0 to 100).
    #[schemars(range(min = 0, max = 100))]
    pub limit: i32,
    /// Seconds to wait before each retry.
    #[serde(default)]
    #[schemars(range(min = 0, max = 86_400))]
    pub backoff_seconds: i64,
}

/// Pod-level settings applied to a task's pods.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodTemplate {
    /// Labels and annotations added to the pod. Templates are substituted
    /// in annotation values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<PodTemplateMetadata>,
    /// Service account the pod runs as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// Node labels the pod must be scheduled on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Taints the pod tolerates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
    /// Scheduling constraints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Volumes the container may mount.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<Vec<Volume>>,
    /// Pod-level security settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<PodSecurityContext>,
}

/// Labels and annotations for a task's pods.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodTemplateMetadata {
    /// Labels added to the pod (baton's own labels win on conflict).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations added to the pod.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// Observed state of a Workflow, written by the controller that owns it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(oldSelf.owner) || (has(self.owner) && self.owner.epoch >= oldSelf.owner.epoch)",
        "message": "status.owner.epoch cannot go down: a newer owner holds this workflow"
    }
]))]
pub struct WorkflowStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Standard conditions; `Valid` says whether the definition can run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Controller that runs this workflow's schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Owner>,
    /// Scheduled time of the last tick that started a run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<Time>,
    /// Names of runs started by the schedule that have not finished.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub active_runs: Vec<String>,
    /// Ticks that were not started because they were found after their
    /// starting deadline.
    #[serde(default)]
    pub missed_ticks: i64,
    /// A tick being started: recorded before its run is created (and before
    /// `Replace` stops earlier runs), cleared once that is done, so a new
    /// owner finishes it instead of losing or repeating it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starting_tick: Option<StartingTick>,
}

/// The intent to start the run of one tick.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StartingTick {
    /// The scheduled time of the tick.
    pub time: Time,
    /// The run to create for it.
    pub run: String,
    /// Runs of earlier ticks to stop first (`concurrencyPolicy: Replace`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
}

/// One run of a workflow.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "baton.dev",
    version = "v1alpha1",
    kind = "WorkflowInstance",
    namespaced,
    status = "WorkflowInstanceStatus",
    shortname = "wfi",
    category = "baton",
    derive = "PartialEq",
    derive = "Default",
    doc = "One run of a Workflow. Steer it with kubectl patch: spec.suspend, spec.shutdown, spec.retryFailed.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Owner", type_ = "string", json_path = ".status.owner.controller"),
    printcolumn(name = "Progress", type_ = "string", json_path = ".status.progress"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.workflowRef == oldSelf.workflowRef", "message": "workflowRef cannot change: create a new run"},
    {
        "rule": "(has(self.params) ? self.params : {}) == (has(oldSelf.params) ? oldSelf.params : {})",
        "message": "params cannot change once the run exists (tasks started later would see other values): create a new run"
    },
    {
        "rule": "has(self.podGC) == has(oldSelf.podGC) && (!has(self.podGC) || self.podGC == oldSelf.podGC)",
        "message": "podGC cannot change once the run exists: set it when creating the run"
    }
]))]
pub struct WorkflowInstanceSpec {
    /// The Workflow to run.
    pub workflow_ref: WorkflowRef,
    /// Values for the workflow's declared parameters.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, String>,
    /// True pauses the run: no new task starts, running ones finish. False
    /// resumes it.
    #[serde(default)]
    pub suspend: bool,
    /// `Stop` or `Terminate` ends the run: running task pods are deleted and
    /// the run ends Stopped. Empty means run normally.
    #[serde(default)]
    pub shutdown: Shutdown,
    /// Increase by one to re-run the failed, skipped and stopped tasks of a
    /// finished run.
    #[serde(default)]
    #[schemars(range(min = 0))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self >= oldSelf", "message": "retryFailed can only be increased"}
    ]))]
    pub retry_failed: i64,
    /// Delete this run this many seconds after it finished (0: as soon as
    /// it finished); its pods and child runs go with it. Overrides the
    /// workflow's `ttlSecondsAfterFinished`; may be changed until the run
    /// is deleted (to keep a finished run longer, for example). Ignored on
    /// a child run (of a `workflowRef` task): it goes with its parent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub ttl_seconds_after_finished: Option<i32>,
    /// When this run's task pods are deleted, instead of the workflow's
    /// `podGC`: `Never`, `OnTaskSuccess`, `OnRunSuccess` or
    /// `OnRunFinished`. Set when the run is created; it cannot change.
    #[serde(default, rename = "podGC", skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "run_pod_gc_schema")]
    pub pod_gc: Option<PodGc>,
}

/// Schema of a run's `spec.podGC`: the policies, and the field's own
/// description (an optional enum would otherwise show the enum's).
fn run_pod_gc_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "description": "When this run's task pods are deleted, instead of the workflow's podGC: Never, OnTaskSuccess, OnRunSuccess or OnRunFinished. Set when the run is created; it cannot change.",
        "type": "string",
        "enum": ["Never", "OnTaskSuccess", "OnRunSuccess", "OnRunFinished"],
        "nullable": true
    })
}

/// Reference from a run to its Workflow.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowRef {
    /// Name of a Workflow in the run's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// A request to end a run.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Shutdown {
    /// No request: the run goes on.
    #[default]
    #[serde(rename = "")]
    None,
    /// End the run: delete running task pods, phase Stopped.
    Stop,
    /// Same as Stop (kept for users of other schedulers).
    Terminate,
}

impl Shutdown {
    pub fn requested(self) -> bool {
        self != Shutdown::None
    }
}

/// Phase of a run.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum RunPhase {
    /// Accepted, not yet started.
    #[default]
    Pending,
    /// Tasks are running or about to.
    Running,
    /// Paused by `spec.suspend`: no new task starts.
    Paused,
    /// Every task succeeded.
    Succeeded,
    /// A task failed, the workflow was invalid, or the deadline passed.
    Failed,
    /// Ended by `spec.shutdown`.
    Stopped,
}

impl RunPhase {
    pub fn is_terminal(self) -> bool {
        matches!(self, RunPhase::Succeeded | RunPhase::Failed | RunPhase::Stopped)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            RunPhase::Pending => "Pending",
            RunPhase::Running => "Running",
            RunPhase::Paused => "Paused",
            RunPhase::Succeeded => "Succeeded",
            RunPhase::Failed => "Failed",
            RunPhase::Stopped => "Stopped",
        }
    }
    pub const ALL: [RunPhase; 6] =
        [RunPhase::Pending, RunPhase::Running, RunPhase::Paused, RunPhase::Succeeded, RunPhase::Failed, RunPhase::Stopped];
}

/// Phase of one task in a run.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum TaskPhase {
    /// Waiting for its dependencies, a free slot, or a retry backoff.
    #[default]
    Pending,
    /// Its pod or child run is running (or about to be created).
    Running,
    /// Finished with success.
    Succeeded,
    /// Failed for good (retries used up, timeout, or error).
    Failed,
    /// Not run: its `when` was false or it had no items (reason `WhenFalse`
    /// or `NoItems`; dependants run), or a dependency failed or was stopped
    /// (reason `UpstreamFailed`; dependants are skipped too).
    Skipped,
    /// Ended by a shutdown request or by failFast.
    Stopped,
}

impl TaskPhase {
    pub fn is_finished(self) -> bool {
        !matches!(self, TaskPhase::Pending | TaskPhase::Running)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            TaskPhase::Pending => "Pending",
            TaskPhase::Running => "Running",
            TaskPhase::Succeeded => "Succeeded",
            TaskPhase::Failed => "Failed",
            TaskPhase::Skipped => "Skipped",
            TaskPhase::Stopped => "Stopped",
        }
    }
}

/// Observed state of a run. Every field is written only by the controller
/// named in `owner`, with a fenced write.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(oldSelf.owner) || (has(self.owner) && self.owner.epoch >= oldSelf.owner.epoch)",
        "message": "status.owner.epoch cannot go down: a newer owner holds this run"
    }
]))]
pub struct WorkflowInstanceStatus {
    /// Phase of the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<RunPhase>,
    /// The generation of the spec whose requests have been applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The controller that owns the run now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Owner>,
    /// The last 10 changes of owner, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    pub owner_history: Vec<OwnerChange>,
    /// When the first task started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// When the run reached a terminal phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
    /// Finished tasks / all tasks, for example `3/5`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    /// The `spec.retryFailed` value last applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_failed_applied: Option<i64>,
    /// State of each task, keyed by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub tasks: Vec<TaskStatus>,
    /// Standard conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The DAG's outcome (Succeeded, Failed or Stopped), recorded once
    /// every task of the DAG has ended, while exit tasks run: what they see
    /// as `run.phase`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dag_phase: Option<RunPhase>,
    /// The workflow's spec as it was when the run started; later edits of
    /// the Workflow do not change this run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "snapshot_schema")]
    pub workflow_spec: Option<WorkflowSpec>,
}

/// Condition of a finished run that nothing of it is still running and the
/// pods its `podGC` deletes are gone: until it is True, the run's owner
/// keeps cleaning up (deleting pods, stopping children), retrying after
/// errors.
pub const CONDITION_CLEANED_UP: &str = "CleanedUp";

impl WorkflowInstanceStatus {
    /// Finished, no pod or child of the run is still running, and podGC is done.
    pub fn cleaned_up(&self) -> bool {
        self.phase.is_some_and(RunPhase::is_terminal)
            && self.conditions.iter().any(|c| c.type_ == CONDITION_CLEANED_UP && c.status == "True")
    }
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

/// Schema of `status.workflowSpec`: an opaque object. The spec was validated
/// when the Workflow was applied; checking the copy again on every status
/// write would spend the CEL budget for nothing.
fn snapshot_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "description": "The workflow's spec as it was when the run started; later edits of the Workflow do not change this run.",
        "type": "object",
        "nullable": true,
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// The controller that owns a run or a schedule.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Owner {
    /// Identity of the controller pod. Empty when the run was released.
    pub controller: String,
    /// Name of that controller's Lease.
    pub lease: String,
    /// Increases by one at every change of owner: a fencing token.
    pub epoch: i64,
    /// When this owner claimed the run.
    pub since: Time,
}

impl Owner {
    /// Gives the object up: no controller, same epoch, so the next claim
    /// (epoch + 1) records a Handoff.
    pub fn release(&mut self) {
        self.controller.clear();
        self.lease.clear();
    }
}

/// One change of owner.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OwnerChange {
    /// Identity of the new owner.
    pub controller: String,
    /// Epoch the new owner took.
    pub epoch: i64,
    /// When it took the run.
    pub since: Time,
    /// Why the owner changed.
    pub reason: OwnerChangeReason,
}

/// Why a run changed owner.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum OwnerChangeReason {
    /// First claim of a new run.
    Created,
    /// The previous owner's Lease expired.
    Failover,
    /// The previous owner released the run (rebalancing or shutdown).
    Handoff,
}

/// State of one task in a run.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskStatus {
    /// Task name.
    pub name: String,
    /// Task phase.
    pub phase: TaskPhase,
    /// Attempts started so far (the current attempt is `attempts - 1`).
    #[serde(default)]
    pub attempts: i32,
    /// Retries used since the run started or since the last `retryFailed`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub retries_used: i32,
    /// Pod of the current attempt (container tasks). Left out on a finished
    /// instance of a fan-out, whose pod is `<run>-<task>-<index>-<attempt>`
    /// (shortened like every generated name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    /// Child run of the current attempt (workflowRef tasks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub child_instance: Option<String>,
    /// Child runs this run ended while they were still going (timeout,
    /// failFast, shutdown, deadline): each is asked once to stop. A child
    /// that ended by itself is never stopped by its parent, so a request
    /// made on it later (a retryFailed) stands.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop_children: Vec<String>,
    /// When the current attempt started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// When the task finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
    /// Earliest time the next attempt may start (retry backoff).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<Time>,
    /// Exit code of the last attempt's container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Why the task is in this phase, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Why the task is in this phase, as one word: `WhenFalse` and
    /// `NoItems` (skipped, dependants run), `UpstreamFailed` (skipped,
    /// dependants skipped too), `Terminated`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// On one instance of a fanned-out task (named `TASK(INDEX)`): its
    /// item, as JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item: Option<String>,
    /// What the task produced, kept when a later template or `when`
    /// reads it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<TaskOutputs>,
}

/// What a task produced.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskOutputs {
    /// The termination message of the succeeded attempt's container, one
    /// trailing newline trimmed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
}
