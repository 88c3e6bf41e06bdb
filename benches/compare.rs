//! Side by side on the local control plane: bare pods (the floor), baton and
//! Argo Workflows, one after another, over the same workloads. `make
//! bench-compare`; e2e/README.md describes it. Prints figures; asserts
//! nothing about them.
//!
//! For every (engine, workload) pair: a fresh namespace, the engine's
//! controllers started as local processes (and warmed up), a watch on what
//! marks a run done, a snapshot of the API server's `apiserver_request_total`
//! and of the controllers' CPU, the runs created, the wait until every run has
//! finished, a short settle, the second snapshot; then the controllers are
//! stopped and the namespace is deleted and waited for.
//!
//! Knobs (environment): BENCH_SINGLE (500), BENCH_DIAMONDS (100), BENCH_RATE
//! (20 runs/s) and BENCH_STEADY_SECS (60), BENCH_ENGINES and BENCH_WORKLOADS
//! (comma-separated keys, default all), BENCH_TIMEOUT_SECS (400, per pair),
//! BENCH_SETTLE_SECS (5), BENCH_WARMUP_SECS (3), BENCH_CREATE_CONCURRENCY (32),
//! BENCH_OUT (target/bench-compare.md).

#[path = "../e2e/support.rs"]
#[allow(dead_code)]
mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, PostParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v.trim().parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a valid value")),
        _ => default,
    }
}

/// When the benchmark started: progress lines are stamped with the time since.
static STARTED: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

macro_rules! say {
    ($($arg:tt)*) => {
        eprintln!("[bench {:>5.0}s] {}", STARTED.get_or_init(Instant::now).elapsed().as_secs_f64(), format_args!($($arg)*))
    };
}

// ------------------------------------------------------------------ engines --

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Engine {
    Floor,
    Baton1,
    Baton3,
    /// baton without its admission webhook: what the API-server-side fence
    /// (one webhook call and one read of the run per pod create) costs.
    BatonNoWebhook,
    ArgoDefault,
    ArgoQps,
    ArgoBest,
    BatonQps,
}

const ENGINES: [Engine; 8] = [
    Engine::Floor,
    Engine::Baton1,
    Engine::Baton3,
    Engine::BatonNoWebhook,
    Engine::ArgoDefault,
    Engine::ArgoQps,
    Engine::ArgoBest,
    Engine::BatonQps,
];

/// Label of the benchmark's namespaces; any left by an interrupted run are
/// deleted at start.
const NS_LABEL: &str = "bench.baton.dev/compare";

/// The client-side limits of the "equal API budget" rows.
const EQUAL_QPS: &str = "50";
const EQUAL_BURST: &str = "60";

impl Engine {
    fn key(self) -> &'static str {
        match self {
            Engine::Floor => "floor",
            Engine::Baton1 => "baton",
            Engine::Baton3 => "baton3",
            Engine::BatonNoWebhook => "baton-nowebhook",
            Engine::ArgoDefault => "argo",
            Engine::ArgoQps => "argo-qps",
            Engine::ArgoBest => "argo-best",
            Engine::BatonQps => "baton-qps",
        }
    }

    fn label(self, argo: &str) -> String {
        match self {
            Engine::Floor => "bare pods, no engine (the floor)".into(),
            Engine::Baton1 => "baton, 1 controller".into(),
            Engine::Baton3 => "baton, 3 controllers".into(),
            Engine::BatonNoWebhook => "baton, 1 controller, admission webhook off".into(),
            Engine::ArgoDefault => format!("Argo Workflows {argo}, defaults (QPS 20 / burst 30)"),
            Engine::ArgoQps => format!("Argo Workflows {argo}, QPS {EQUAL_QPS} / burst {EQUAL_BURST}"),
            Engine::ArgoBest => format!("Argo {argo}, QPS {EQUAL_QPS} / burst {EQUAL_BURST}, `DEFAULT_REQUEUE_TIME=1s` (its best tuning)"),
            Engine::BatonQps => format!("baton, 1 controller, QPS {EQUAL_QPS} / burst {EQUAL_BURST}"),
        }
    }

    fn is_argo(self) -> bool {
        matches!(self, Engine::ArgoDefault | Engine::ArgoQps | Engine::ArgoBest)
    }

    fn is_baton(self) -> bool {
        matches!(self, Engine::Baton1 | Engine::Baton3 | Engine::BatonNoWebhook | Engine::BatonQps)
    }
}

/// The labels of an engine's namespace: the e2e cluster's webhook skips
/// namespaces labelled `e2e.baton.dev/webhook` (e2e/cluster, register_webhook).
fn namespace_labels(engine: Engine) -> Value {
    if engine == Engine::BatonNoWebhook { json!({NS_LABEL: "true", "e2e.baton.dev/webhook": "off"}) } else { json!({NS_LABEL: "true"}) }
}

// ---------------------------------------------------------------- workloads --

#[derive(Clone, Copy, Debug)]
enum Workload {
    /// n single-task runs created at once.
    Single(usize),
    /// n four-task diamonds (a -> b, c -> d) created at once.
    Diamonds(usize),
    /// single-task runs created at `rate` per second for `secs` seconds.
    Steady { rate: f64, secs: f64 },
}

impl Workload {
    fn key(self) -> &'static str {
        match self {
            Workload::Single(_) => "single",
            Workload::Diamonds(_) => "diamonds",
            Workload::Steady { .. } => "steady",
        }
    }

    fn title(self) -> String {
        match self {
            Workload::Single(n) => format!("{n} single-task runs created at once"),
            Workload::Diamonds(n) => format!("{n} four-task diamonds (A -> B, C -> D) created at once"),
            Workload::Steady { rate, secs } => {
                format!("steady rate: {rate} single-task runs/s for {secs} s ({} runs)", self.runs())
            }
        }
    }

    fn runs(self) -> usize {
        match self {
            Workload::Single(n) | Workload::Diamonds(n) => n,
            Workload::Steady { rate, secs } => (rate * secs).round() as usize,
        }
    }

    fn tasks_per_run(self) -> usize {
        if matches!(self, Workload::Diamonds(_)) { 4 } else { 1 }
    }
}

// ------------------------------------------------------------------ objects --

/// Every task of every engine: a 1 s simulated pod (e2e/kwok/pod.yaml reads
/// the annotation; 1 s is also its default) running an explicit command.
const SIM_DURATION: &str = "1s";
const IMAGE: &str = "busybox:1.36";

fn command() -> Value {
    json!(["sh", "-c", "exit 0"])
}

fn baton_workflow(diamond: bool) -> Value {
    let task = |name: &str, deps: &[&str]| {
        let mut t = json!({
            "name": name,
            "container": {"name": "main", "image": IMAGE, "command": command()},
            "podTemplate": {"metadata": {"annotations": {"baton.dev/sim-duration": SIM_DURATION}}},
        });
        if !deps.is_empty() {
            t["dependsOn"] = json!(deps);
        }
        t
    };
    let tasks =
        if diamond { vec![task("a", &[]), task("b", &["a"]), task("c", &["a"]), task("d", &["b", "c"])] } else { vec![task("main", &[])] };
    json!({
        "apiVersion": "baton.dev/v1alpha1", "kind": "Workflow",
        "metadata": {"name": "bench"},
        "spec": {"tasks": tasks},
    })
}

fn baton_run(name: &str) -> Value {
    json!({
        "apiVersion": "baton.dev/v1alpha1", "kind": "WorkflowInstance",
        "metadata": {"name": name},
        "spec": {"workflowRef": {"name": "bench"}},
    })
}

/// An Argo Workflow that declares no outputs (no executor runs, so outputs
/// would never be reported) and gives the command (the executor could not
/// look the image's entrypoint up without a registry).
fn argo_workflow(name: &str, diamond: bool) -> Value {
    let container = json!({"name": "main", "image": IMAGE, "command": command()});
    let templates = if diamond {
        json!([
            {"name": "diamond", "dag": {"tasks": [
                {"name": "a", "template": "task"},
                {"name": "b", "template": "task", "dependencies": ["a"]},
                {"name": "c", "template": "task", "dependencies": ["a"]},
                {"name": "d", "template": "task", "dependencies": ["b", "c"]},
            ]}},
            {"name": "task", "container": container},
        ])
    } else {
        json!([{"name": "main", "container": container}])
    };
    json!({
        "apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow",
        "metadata": {"name": name},
        "spec": {
            "entrypoint": if diamond { "diamond" } else { "main" },
            "podMetadata": {"annotations": {"baton.dev/sim-duration": SIM_DURATION}},
            "templates": templates,
        },
    })
}

fn bare_pod(name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "annotations": {"baton.dev/sim-duration": SIM_DURATION}},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "main", "image": IMAGE, "command": command()}]},
    })
}

fn ar(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

fn baton_runs() -> ApiResource {
    ar("baton.dev", "v1alpha1", "WorkflowInstance", "workflowinstances")
}

fn argo_workflows() -> ApiResource {
    ar("argoproj.io", "v1alpha1", "Workflow", "workflows")
}

fn pods() -> ApiResource {
    ApiResource::erase::<Pod>(&())
}

// -------------------------------------------------------- processes, /proc --

fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (in parentheses, which may hold spaces):
    // state is field 3, utime 14 and stime 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let (utime, stime): (f64, f64) = (f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?);
    Some((utime + stime) / clock_ticks())
}

/// Peak resident set size (VmHWM), in KiB.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn apiserver_pid() -> Option<u32> {
    std::fs::read_to_string(support::state_dir().join("pids/kube-apiserver.pid")).ok()?.trim().parse().ok()
}

/// A controller process the benchmark started: killed when dropped.
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    /// How long it may take to exit after SIGTERM before it gets SIGKILL.
    grace: Duration,
}

impl Proc {
    fn spawn(name: &str, mut cmd: Command) -> Proc {
        let log = support::state_dir().join(format!("logs/{name}.log"));
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&log).expect("open log");
        let child =
            cmd.stdin(Stdio::null()).stdout(file.try_clone().unwrap()).stderr(file).spawn().unwrap_or_else(|e| panic!("start {name}: {e}"));
        Proc { name: name.into(), child, log, grace: Duration::from_secs(20) }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log_text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    /// Waits until the log has a line containing `needle`; returns that line.
    async fn wait_log(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.log_text().lines().find(|l| l.contains(needle)) {
                return line.to_string();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{} exited ({status}) before logging {needle:?}; see {}", self.name, self.log.display());
            }
            assert!(Instant::now() < deadline, "{} did not log {needle:?} within {timeout:?}; see {}", self.name, self.log.display());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// SIGTERM to each, then SIGKILL to those still running after their grace.
fn stop_all(procs: &mut [Proc]) {
    use nix::sys::signal::{Signal, kill};
    for p in procs.iter() {
        let _ = kill(nix::unistd::Pid::from_raw(p.pid() as i32), Signal::SIGTERM);
    }
    let start = Instant::now();
    for p in procs.iter_mut() {
        while p.child.try_wait().ok().flatten().is_none() {
            if start.elapsed() > p.grace {
                say!("{} did not exit within {:?} of SIGTERM; killing it", p.name, p.grace);
                let _ = p.child.kill();
                let _ = p.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------- API server's counters --

const WRITE_VERBS: [&str; 6] = ["POST", "PUT", "PATCH", "DELETE", "DELETECOLLECTION", "APPLY"];
const READ_VERBS: [&str; 2] = ["GET", "LIST"];

/// `apiserver_request_total` summed by (verb, resource[/subresource][.group],
/// response code); requests on no resource (/metrics, /healthz, discovery)
/// are left out.
type Requests = BTreeMap<(String, String, String), f64>;

fn parse_labels(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut rest = s;
    while let Some(eq) = rest.find("=\"") {
        let key = rest[..eq].trim_start_matches(',').trim().to_string();
        let mut value = String::new();
        let mut chars = rest[eq + 2..].char_indices();
        let mut end = rest.len() - eq - 2;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        value.push(if n == 'n' { '\n' } else { n });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.insert(key, value);
        rest = &rest[eq + 2 + end..];
    }
    out
}

async fn scrape(client: &Client) -> Requests {
    let req = http::Request::get("/metrics").body(Vec::new()).unwrap();
    let text = client.request_text(req).await.expect("GET /metrics from the API server");
    let mut out = Requests::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else { continue };
        let Some((labels, value)) = rest.rsplit_once("} ") else { continue };
        let l = parse_labels(labels);
        let resource = l.get("resource").cloned().unwrap_or_default();
        if resource.is_empty() {
            continue;
        }
        let mut key = resource;
        if let Some(sub) = l.get("subresource").filter(|s| !s.is_empty()) {
            key = format!("{key}/{sub}");
        }
        if let Some(group) = l.get("group").filter(|g| !g.is_empty()) {
            key = format!("{key}.{group}");
        }
        let verb = l.get("verb").cloned().unwrap_or_default();
        let code = l.get("code").cloned().unwrap_or_default();
        *out.entry((verb, key, code)).or_default() += value.trim().parse::<f64>().unwrap_or(0.0);
    }
    out
}

fn delta(before: &Requests, after: &Requests) -> Requests {
    after.iter().map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0))).filter(|(_, v)| *v > 0.0).collect()
}

fn sum_verbs(d: &Requests, verbs: &[&str]) -> f64 {
    d.iter().filter(|((verb, _, _), _)| verbs.contains(&verb.as_str())).map(|(_, v)| v).sum()
}

// ----------------------------------------------------------------- tracking --

#[derive(Default)]
struct Tracker {
    /// Run name -> when its create was sent (floor diamonds: the pod `a`'s).
    created: HashMap<String, Instant>,
    /// Run name -> when the watch first saw it finished, and whether it succeeded.
    finished: HashMap<String, (Instant, bool)>,
    create_errors: usize,
    /// Floor diamonds: the tasks of each run seen succeeded, and those created.
    done_tasks: HashMap<String, HashSet<String>>,
    started_tasks: HashSet<String>,
}

type Shared = Arc<Mutex<Tracker>>;

/// Creates `obj` (a run or, for the floor, a pod), retrying a refused create
/// a few times; records when it was first sent under `run`, unless `record`
/// is false (later pods of a floor diamond).
async fn create(api: Api<DynamicObject>, obj: Value, run: String, record: bool, shared: Shared) {
    let obj: DynamicObject = serde_json::from_value(obj).expect("object");
    if record {
        shared.lock().unwrap().created.insert(run.clone(), Instant::now());
    }
    for attempt in 0..5 {
        match api.create(&PostParams::default(), &obj).await {
            Ok(_) => return,
            Err(kube::Error::Api(e)) if e.code == 409 => return,
            Err(e) => {
                if attempt == 4 {
                    say!("create {} failed: {e}", obj.name_any());
                    let mut t = shared.lock().unwrap();
                    t.create_errors += 1;
                    t.finished.entry(run).or_insert((Instant::now(), false));
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// `Some(succeeded)` when the watched object is finished.
fn terminal(engine: Engine, obj: &DynamicObject) -> Option<bool> {
    let phase = obj.data.pointer("/status/phase").and_then(Value::as_str).unwrap_or("");
    match engine {
        Engine::Floor => match phase {
            "Succeeded" => Some(true),
            "Failed" => Some(false),
            _ => None,
        },
        e if e.is_baton() => match phase {
            "Succeeded" => Some(true),
            "Failed" | "Stopped" => Some(false),
            _ => None,
        },
        _ => match phase {
            "Succeeded" => Some(true),
            "Failed" | "Error" => Some(false),
            _ => None,
        },
    }
}

/// Handles one watched object: records finished runs; for floor diamonds,
/// creates the next pods of the diamond as their dependencies succeed (the
/// floor is an ideal engine that reacts at once, with no state of its own in
/// the API server).
fn observe(engine: Engine, workload: Workload, obj: &DynamicObject, api: &Api<DynamicObject>, shared: &Shared) {
    let Some(ok) = terminal(engine, obj) else { return };
    let name = obj.name_any();
    let now = Instant::now();
    let mut t = shared.lock().unwrap();
    if !(engine == Engine::Floor && matches!(workload, Workload::Diamonds(_))) {
        t.finished.entry(name).or_insert((now, ok));
        return;
    }
    let Some((run, task)) = name.rsplit_once('-') else { return };
    let run = run.to_string();
    if !ok || task == "d" {
        t.finished.entry(run).or_insert((now, ok));
        return;
    }
    let done = t.done_tasks.entry(run.clone()).or_default();
    if !done.insert(task.to_string()) {
        return;
    }
    let next: Vec<&str> = match task {
        "a" => vec!["b", "c"],
        "b" | "c" if done.contains("b") && done.contains("c") => vec!["d"],
        _ => vec![],
    };
    for n in next {
        let pod = format!("{run}-{n}");
        if t.started_tasks.insert(pod.clone()) {
            tokio::spawn(create(api.clone(), bare_pod(&pod), run.clone(), false, shared.clone()));
        }
    }
}

// ---------------------------------------------------------------- measuring --

struct Outcome {
    engine: Engine,
    /// Why the row has no figures ("n/a (flag missing)").
    skipped: Option<String>,
    runs: usize,
    tasks: usize,
    finished: usize,
    failed: usize,
    create_errors: usize,
    timed_out: bool,
    wall: Duration,
    latencies: Vec<Duration>,
    requests: Requests,
    controller_cpu: Option<f64>,
    peak_rss_kib: Vec<u64>,
    apiserver_cpu: Option<f64>,
}

impl Outcome {
    fn skipped(engine: Engine, why: &str) -> Outcome {
        Outcome {
            engine,
            skipped: Some(why.into()),
            runs: 0,
            tasks: 0,
            finished: 0,
            failed: 0,
            create_errors: 0,
            timed_out: false,
            wall: Duration::ZERO,
            latencies: vec![],
            requests: Requests::new(),
            controller_cpu: None,
            peak_rss_kib: vec![],
            apiserver_cpu: None,
        }
    }

    fn writes(&self) -> f64 {
        sum_verbs(&self.requests, &WRITE_VERBS)
    }

    fn reads(&self) -> f64 {
        sum_verbs(&self.requests, &READ_VERBS)
    }

    fn runs_per_min(&self) -> f64 {
        if self.wall.is_zero() { 0.0 } else { self.finished as f64 * 60.0 / self.wall.as_secs_f64() }
    }
}

struct Bench {
    client: Client,
    kubeconfig: PathBuf,
    argo_bin: Option<PathBuf>,
    argo_version: String,
    baton_has_qps: bool,
    timeout: Duration,
    settle: Duration,
    warmup: Duration,
    concurrency: usize,
}

impl Bench {
    async fn start_engine(&self, engine: Engine, ns: &str) -> Vec<Proc> {
        let mut procs = vec![];
        if engine.is_baton() {
            let n = if engine == Engine::Baton3 { 3 } else { 1 };
            for i in 0..n {
                let mut cmd = Command::new(env!("CARGO_BIN_EXE_baton-controller"));
                cmd.env("KUBECONFIG", &self.kubeconfig)
                    .env("NO_COLOR", "1")
                    .env_remove("RUST_LOG")
                    .args(["--identity", &format!("bench-c{i}")])
                    .args(["--namespace", ns, "--lease-namespace", ns, "--metrics-addr", "127.0.0.1:0"])
                    .args(support::webhook_flags());
                if engine == Engine::BatonQps {
                    cmd.args(["--kube-qps", EQUAL_QPS, "--kube-burst", EQUAL_BURST]);
                }
                procs.push(Proc::spawn(&format!("{ns}-c{i}"), cmd));
            }
            for p in &mut procs {
                let line = p.wait_log("serving /metrics", Duration::from_secs(60)).await;
                let addr: std::net::SocketAddr = line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("addr="))
                    .and_then(|a| a.parse().ok())
                    .expect("addr= in the controller's log line");
                let deadline = Instant::now() + Duration::from_secs(60);
                while support::http(addr, "GET", "/readyz", "").0 != 200 {
                    assert!(Instant::now() < deadline, "{} not ready after 60 s; see {}", p.name, p.log.display());
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        } else if engine.is_argo() {
            let port = free_port();
            let cm: DynamicObject = serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "workflow-controller-configmap"},
                // Nothing but a free port for its metrics server (default
                // 9090, which it panics on when taken).
                "data": {"metricsConfig": format!("port: {port}\n")},
            }))
            .unwrap();
            let cms: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), ns, &ar("", "v1", "ConfigMap", "configmaps"));
            cms.create(&PostParams::default(), &cm).await.expect("create workflow-controller-configmap");
            let mut cmd = Command::new(self.argo_bin.as_ref().expect("argo built"));
            cmd.arg("--kubeconfig")
                .arg(&self.kubeconfig)
                .args(["--namespace", ns, "--namespaced", "--managed-namespace", ns])
                .args(["--configmap", "workflow-controller-configmap"])
                .args(["--executor-image", &format!("quay.io/argoproj/argoexec:{}", self.argo_version)])
                // As its Deployment runs: with leader election (a Lease).
                .env("LEADER_ELECTION_IDENTITY", "bench-argo")
                // v4.0 sleeps 1 s after every workflow update unless it
                // writes the update back to its informer.
                .env("INFORMER_WRITE_BACK", "true");
            if matches!(engine, Engine::ArgoQps | Engine::ArgoBest) {
                cmd.args(["--qps", EQUAL_QPS, "--burst", EQUAL_BURST]);
            }
            if engine == Engine::ArgoBest {
                cmd.env("DEFAULT_REQUEUE_TIME", "1s");
            }
            let mut p = Proc::spawn(&format!("{ns}-argo"), cmd);
            // It does not exit on SIGTERM (a kubelet kills it after the
            // grace period); its runs are done by then, so no need to wait.
            p.grace = Duration::from_secs(2);
            // Logged once its informers have synced and it leads.
            p.wait_log("Starting workflow garbage collector controller", Duration::from_secs(120)).await;
            procs.push(p);
        }
        if !procs.is_empty() {
            // Let the controllers see each other's Leases and settle.
            tokio::time::sleep(self.warmup).await;
        }
        procs
    }

    async fn measure(&self, engine: Engine, workload: Workload) -> Outcome {
        if engine == Engine::BatonQps && !self.baton_has_qps {
            return Outcome::skipped(engine, "n/a (flag missing)");
        }
        quiesce().await;
        let suffix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos() % 100_000;
        let ns = format!("bench-{}-{}-{suffix}", engine.key(), workload.key());
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        namespaces
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": ns, "labels": namespace_labels(engine)}})).unwrap(),
            )
            .await
            .expect("create namespace");
        // The namespace's default ServiceAccount, which kube-controller-manager
        // creates, should not fall in the measured window.
        let sas: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), &ns, &ar("", "v1", "ServiceAccount", "serviceaccounts"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !matches!(sas.get_opt("default").await, Ok(Some(_))) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let diamond = matches!(workload, Workload::Diamonds(_));
        if engine.is_baton() {
            let wf: DynamicObject = serde_json::from_value(baton_workflow(diamond)).unwrap();
            let wfs: Api<DynamicObject> =
                Api::namespaced_with(self.client.clone(), &ns, &ar("baton.dev", "v1alpha1", "Workflow", "workflows"));
            wfs.create(&PostParams::default(), &wf).await.expect("create the baton Workflow");
        }
        let starting = Instant::now();
        let mut procs = self.start_engine(engine, &ns).await;
        if !procs.is_empty() {
            say!("{} ready in {:.1} s (warm-up included)", engine.key(), starting.elapsed().as_secs_f64());
        }

        let kind = match engine {
            Engine::Floor => pods(),
            e if e.is_baton() => baton_runs(),
            _ => argo_workflows(),
        };
        let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), &ns, &kind);
        let shared: Shared = Arc::default();
        let (synced_tx, synced_rx) = tokio::sync::oneshot::channel();
        let watch = {
            let (api, shared) = (api.clone(), shared.clone());
            tokio::spawn(async move {
                let mut synced = Some(synced_tx);
                let mut stream = std::pin::pin!(watcher(api.clone(), watcher::Config::default()));
                while let Some(ev) = stream.next().await {
                    match ev {
                        Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => observe(engine, workload, &o, &api, &shared),
                        Ok(watcher::Event::InitDone) => {
                            if let Some(tx) = synced.take() {
                                let _ = tx.send(());
                            }
                        }
                        Ok(_) => {}
                        Err(e) => say!("watch: {e}"),
                    }
                }
            })
        };
        synced_rx.await.expect("watch synced");

        let pids: Vec<u32> = procs.iter().map(Proc::pid).collect();
        let cpu_before: f64 = pids.iter().filter_map(|p| cpu_seconds(*p)).sum();
        let api_cpu_before = apiserver_pid().and_then(cpu_seconds);
        let before = scrape(&self.client).await;

        let n = workload.runs();
        let object = move |i: usize| -> (String, Value) {
            let name = format!("r{i}");
            let obj = match engine {
                Engine::Floor if diamond => bare_pod(&format!("{name}-a")),
                Engine::Floor => bare_pod(&name),
                e if e.is_baton() => baton_run(&name),
                _ => argo_workflow(&name, diamond),
            };
            (name, obj)
        };
        if engine == Engine::Floor && diamond {
            let mut t = shared.lock().unwrap();
            t.started_tasks.extend((0..n).map(|i| format!("r{i}-a")));
        }
        let start = Instant::now();
        say!("{} / {}: creating {n} runs in {ns}", engine.key(), workload.key());
        let creator = {
            let (api, shared, concurrency) = (api.clone(), shared.clone(), self.concurrency);
            tokio::spawn(async move {
                match workload {
                    Workload::Single(_) | Workload::Diamonds(_) => {
                        futures::stream::iter(0..n)
                            .map(|i| {
                                let (name, obj) = object(i);
                                create(api.clone(), obj, name, true, shared.clone())
                            })
                            .buffer_unordered(concurrency)
                            .collect::<Vec<()>>()
                            .await;
                    }
                    Workload::Steady { rate, .. } => {
                        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
                        let mut creates = vec![];
                        for i in 0..n {
                            tick.tick().await;
                            let (name, obj) = object(i);
                            creates.push(tokio::spawn(create(api.clone(), obj, name, true, shared.clone())));
                        }
                        for c in creates {
                            let _ = c.await;
                        }
                    }
                }
            })
        };

        let deadline = start + self.timeout;
        let mut last_report = Instant::now();
        let timed_out = loop {
            let (done, created) = {
                let t = shared.lock().unwrap();
                (t.finished.len(), t.created.len())
            };
            if done >= n {
                break false;
            }
            if Instant::now() >= deadline {
                say!("{} / {}: timed out after {:?} with {done}/{n} runs finished", engine.key(), workload.key(), self.timeout);
                break true;
            }
            if last_report.elapsed() >= Duration::from_secs(10) {
                say!(
                    "{} / {}: {:.0} s, {created}/{n} created, {done}/{n} finished",
                    engine.key(),
                    workload.key(),
                    start.elapsed().as_secs_f64()
                );
                last_report = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let _ = creator.await;
        tokio::time::sleep(self.settle).await;
        let after = scrape(&self.client).await;
        let cpu_after: f64 = pids.iter().filter_map(|p| cpu_seconds(*p)).sum();
        let api_cpu_after = apiserver_pid().and_then(cpu_seconds);
        let peak_rss_kib: Vec<u64> = pids.iter().filter_map(|p| peak_rss_kib(*p)).collect();
        watch.abort();

        let t = std::mem::take(&mut *shared.lock().unwrap());
        let first = t.created.values().min().copied().unwrap_or(start);
        let last = t.finished.values().map(|(at, _)| *at).max().unwrap_or(first);
        let mut latencies: Vec<Duration> =
            t.finished.iter().filter_map(|(run, (at, _))| t.created.get(run).map(|c| at.saturating_duration_since(*c))).collect();
        latencies.sort();
        let outcome = Outcome {
            engine,
            skipped: None,
            runs: n,
            tasks: n * workload.tasks_per_run(),
            finished: t.finished.len(),
            failed: t.finished.values().filter(|(_, ok)| !ok).count(),
            create_errors: t.create_errors,
            timed_out,
            wall: last.saturating_duration_since(first),
            latencies,
            requests: delta(&before, &after),
            controller_cpu: (!pids.is_empty()).then_some(cpu_after - cpu_before),
            peak_rss_kib,
            apiserver_cpu: api_cpu_before.zip(api_cpu_after).map(|(b, a)| a - b),
        };
        say!(
            "{} / {}: {}/{n} finished in {:.1} s ({:.0} runs/min), {:.1} writes and {:.1} reads per task",
            engine.key(),
            workload.key(),
            outcome.finished,
            outcome.wall.as_secs_f64(),
            outcome.runs_per_min(),
            outcome.writes() / outcome.tasks as f64,
            outcome.reads() / outcome.tasks as f64
        );
        let stopping = Instant::now();
        stop_all(&mut procs);
        drop(procs);
        if !pids.is_empty() {
            say!("stopped the controllers in {:.1} s", stopping.elapsed().as_secs_f64());
        }
        self.delete_namespace(&ns).await;
        outcome
    }

    /// Deletes the namespace and waits until it is gone, so that what is
    /// left of one pair does not load the next.
    async fn delete_namespace(&self, ns: &str) {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let start = Instant::now();
        let _ = namespaces.delete(ns, &DeleteParams::default()).await;
        let mut unstuck = false;
        loop {
            if let Ok(None) = namespaces.get_opt(ns).await {
                break;
            }
            // Argo may leave finalizers on its Workflows that no one removes
            // once its controller has stopped.
            if !unstuck && start.elapsed() > Duration::from_secs(60) {
                unstuck = true;
                let wfs: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), ns, &argo_workflows());
                if let Ok(list) = wfs.list(&Default::default()).await {
                    for wf in list.items.iter().filter(|w| !w.finalizers().is_empty()) {
                        let patch = json!({"metadata": {"finalizers": null}});
                        let _ = wfs.patch(&wf.name_any(), &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch)).await;
                    }
                }
            }
            assert!(start.elapsed() < Duration::from_secs(600), "namespace {ns} still there 10 minutes after its deletion");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        say!("deleted namespace {ns} in {:.0} s", start.elapsed().as_secs_f64());
    }
}

/// Waits until the API server is nearly idle (under 0.2 CPU-seconds in a
/// second; about 0.03 when nothing happens), for at most 60 s: what the
/// garbage collector still does after a namespace is gone, or the OpenAPI
/// rebuild after CRDs are installed, should not load the next pair.
async fn quiesce() {
    let Some(pid) = apiserver_pid() else { return };
    let start = Instant::now();
    loop {
        let Some(before) = cpu_seconds(pid) else { return };
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Some(after) = cpu_seconds(pid) else { return };
        if after - before < 0.2 {
            break;
        }
        if start.elapsed() > Duration::from_secs(60) {
            say!("the API server is still busy ({:.1} CPU-s/s) after 60 s; going on", after - before);
            break;
        }
    }
    if start.elapsed() > Duration::from_secs(2) {
        say!("waited {:.0} s for the API server to go quiet", start.elapsed().as_secs_f64());
    }
}

/// A free TCP port on 127.0.0.1 (bound, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port()
}

// ------------------------------------------------------------------- report --

fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    (!sorted.is_empty()).then(|| sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1])
}

fn secs(d: Option<Duration>) -> String {
    d.map_or("–".into(), |d| format!("{:.1} s", d.as_secs_f64()))
}

fn thousands(v: f64) -> String {
    let n = v.round() as i64;
    let s = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo.lines().find_map(|l| l.strip_prefix("model name")).map(|m| m.trim_start_matches([' ', '\t', ':']).to_string());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_kib: f64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    format!(
        "{cpus} CPUs ({}), {:.1} GiB memory; load average at start {}",
        model.unwrap_or_else(|| "unknown model".into()),
        mem_kib / 1024.0 / 1024.0,
        load.join(" ")
    )
}

fn git_commit() -> String {
    Command::new("git")
        .current_dir(root())
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map_or_else(|| "unknown".into(), |s| s.trim().to_string())
}

fn table(workload: Workload, outcomes: &[Outcome], argo: &str) -> String {
    let floor = outcomes.iter().find(|o| o.engine == Engine::Floor && o.skipped.is_none() && o.finished > 0);
    // What the floor needs per pod (API server writes and reads: the create,
    // the scheduler's binding and Event, kwok's status updates).
    let floor_per_pod = floor.map(|f| (f.writes() / f.tasks as f64, f.reads() / f.tasks as f64));
    let mut s = String::new();
    let _ = writeln!(s, "### {}\n", workload.title());
    s.push_str(
        "| engine | wall time | runs/min | × floor | p50 | p95 | p99 | writes/task | reads/task | own writes/task | own reads/task | controller CPU | peak RSS | API server CPU |\n",
    );
    s.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    let mut notes = vec![];
    for o in outcomes {
        let label = o.engine.label(argo);
        if let Some(why) = &o.skipped {
            let _ = writeln!(s, "| {label} | {why} | | | | | | | | | | | | |");
            continue;
        }
        let wall = if o.timed_out {
            format!("> {:.0} s ({}/{} done)", o.wall.as_secs_f64(), o.finished, o.runs)
        } else {
            format!("{:.1} s", o.wall.as_secs_f64())
        };
        let ratio = match floor {
            Some(f) if o.engine != Engine::Floor && f.runs_per_min() > 0.0 => format!("{:.2}", o.runs_per_min() / f.runs_per_min()),
            Some(_) if o.engine == Engine::Floor => "1.00".into(),
            _ => "–".into(),
        };
        let tasks = o.tasks as f64;
        let (own_w, own_r) = match floor_per_pod {
            _ if o.engine == Engine::Floor => ("–".into(), "–".into()),
            Some((fw, fr)) => {
                let w = (o.writes() - fw * tasks - o.runs as f64) / tasks;
                let r = (o.reads() - fr * tasks) / tasks;
                (format!("{w:.1}"), format!("{r:.1}"))
            }
            None => ("n/a (no floor)".into(), "n/a (no floor)".into()),
        };
        let cpu = o.controller_cpu.map_or("–".into(), |c| format!("{c:.1} s"));
        let rss = match o.peak_rss_kib.as_slice() {
            [] => "–".into(),
            [one] => format!("{:.0} MiB", *one as f64 / 1024.0),
            many => format!("{:.0} MiB each (max of {})", *many.iter().max().unwrap() as f64 / 1024.0, many.len()),
        };
        let _ = writeln!(
            s,
            "| {label} | {wall} | {} | {ratio} | {} | {} | {} | {:.1} | {:.1} | {own_w} | {own_r} | {cpu} | {rss} | {} |",
            thousands(o.runs_per_min()),
            secs(percentile(&o.latencies, 0.50)),
            secs(percentile(&o.latencies, 0.95)),
            secs(percentile(&o.latencies, 0.99)),
            o.writes() / tasks,
            o.reads() / tasks,
            o.apiserver_cpu.map_or("–".into(), |c| format!("{c:.1} s")),
        );
        if o.failed > 0 || o.create_errors > 0 {
            notes.push(format!("{label}: {} runs failed, {} creates refused", o.failed, o.create_errors));
        }
    }
    for n in notes {
        let _ = writeln!(s, "\n- {n}");
    }
    s.push('\n');
    s
}

/// Per pair, the API server requests by verb and resource, per task.
fn breakdown(workload: Workload, outcomes: &[Outcome], argo: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "<details><summary>{}: API requests per task by verb and resource (all response codes; the errors among them last)</summary>\n",
        workload.title()
    );
    for o in outcomes.iter().filter(|o| o.skipped.is_none() && o.tasks > 0) {
        let counted = |verb: &str| WRITE_VERBS.contains(&verb) || READ_VERBS.contains(&verb);
        let mut by_resource: BTreeMap<(&str, &str), f64> = BTreeMap::new();
        let mut refused: BTreeMap<(&str, &str, &str), f64> = BTreeMap::new();
        for ((verb, res, code), v) in o.requests.iter().filter(|((verb, _, _), _)| counted(verb)) {
            *by_resource.entry((verb, res)).or_default() += v;
            if !code.starts_with('2') {
                *refused.entry((verb, res, code)).or_default() += v;
            }
        }
        let per_task = |v: f64| v / o.tasks as f64;
        let mut rows: Vec<_> = by_resource.into_iter().collect();
        rows.sort_by(|a, b| b.1.total_cmp(&a.1));
        let parts: Vec<String> = rows.iter().map(|((verb, res), v)| format!("{verb} {res} {:.2}", per_task(*v))).collect();
        let _ = write!(s, "- {}: {}", o.engine.label(argo), parts.join(", "));
        if !refused.is_empty() {
            let parts: Vec<String> =
                refused.iter().map(|((verb, res, code), v)| format!("{verb} {res} {code}: {:.2}", per_task(*v))).collect();
            let _ = write!(s, "; of these answered with an error: {}", parts.join(", "));
        }
        s.push('\n');
    }
    s.push_str("\n</details>\n\n");
    s
}

// --------------------------------------------------------------------- main --

fn parse_list<T: Copy>(var: &str, all: &[T], key: impl Fn(T) -> &'static str) -> Vec<T> {
    let Ok(v) = std::env::var(var) else { return all.to_vec() };
    if v.trim().is_empty() || v.trim() == "all" {
        return all.to_vec();
    }
    v.split(',')
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(|k| {
            all.iter().copied().find(|x| key(*x) == k).unwrap_or_else(|| {
                let keys: Vec<&str> = all.iter().map(|x| key(*x)).collect();
                panic!("{var}: unknown {k:?}; known: {}", keys.join(","))
            })
        })
        .collect()
}

/// Builds Argo's workflow-controller (if not cached) and installs its
/// minimal CRDs; returns the binary.
fn argo_setup(kubeconfig: &Path) -> PathBuf {
    let out = Command::new(root().join("e2e/argo")).arg("build").stderr(Stdio::inherit()).output().expect("run e2e/argo build");
    assert!(out.status.success(), "e2e/argo build failed");
    let bin = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    let crds = Command::new(root().join("e2e/argo")).arg("crds").output().expect("run e2e/argo crds");
    assert!(crds.status.success(), "e2e/argo crds failed");
    let dir = String::from_utf8(crds.stdout).unwrap().trim().to_string();
    let kubectl = |args: &[&str]| {
        let out = Command::new("kubectl").env("KUBECONFIG", kubeconfig).args(args).output().expect("run kubectl");
        assert!(out.status.success(), "kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    kubectl(&["apply", "--server-side", "--force-conflicts", "-f", &dir]);
    kubectl(&["wait", "--for=condition=Established", "--timeout=60s", "-f", &dir]);
    bin
}

#[tokio::main]
async fn main() {
    if !support::run_as_bench("compare", "bench-compare") {
        return;
    }
    // On SIGINT or SIGTERM the benchmark is dropped, and with it the
    // controllers it started (Proc kills them), so none is left running.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    let interrupted = tokio::select! {
        () = run() => false,
        _ = term.recv() => true,
        _ = tokio::signal::ctrl_c() => true,
    };
    if interrupted {
        say!("interrupted: stopped the controllers; its namespace is deleted at the next start");
        std::process::exit(130);
    }
}

async fn run() {
    let total = *STARTED.get_or_init(Instant::now);
    let engines = parse_list("BENCH_ENGINES", &ENGINES, Engine::key);
    let all_workloads = [
        Workload::Single(env_or("BENCH_SINGLE", 500)),
        Workload::Diamonds(env_or("BENCH_DIAMONDS", 100)),
        Workload::Steady { rate: env_or("BENCH_RATE", 20.0), secs: env_or("BENCH_STEADY_SECS", 60.0) },
    ];
    let workloads = parse_list("BENCH_WORKLOADS", &all_workloads, Workload::key);

    let kubeconfig = support::kubeconfig().to_path_buf();
    let client = support::client().await;
    let argo_version = Command::new(root().join("e2e/argo"))
        .arg("version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let argo_bin = engines.iter().any(|e| e.is_argo()).then(|| argo_setup(&kubeconfig));
    let help = Command::new(env!("CARGO_BIN_EXE_baton-controller")).arg("--help").output().expect("baton-controller --help");
    let help = String::from_utf8_lossy(&help.stdout);
    let baton_has_qps = help.contains("--kube-qps") && help.contains("--kube-burst");
    let bench = Bench {
        client,
        kubeconfig,
        argo_bin,
        argo_version: argo_version.clone(),
        baton_has_qps,
        timeout: Duration::from_secs(env_or("BENCH_TIMEOUT_SECS", 400)),
        settle: Duration::from_secs_f64(env_or("BENCH_SETTLE_SECS", 5.0)),
        warmup: Duration::from_secs_f64(env_or("BENCH_WARMUP_SECS", 3.0)),
        concurrency: env_or("BENCH_CREATE_CONCURRENCY", 32),
    };
    let machine = machine();
    let namespaces: Api<Namespace> = Api::all(bench.client.clone());
    for ns in namespaces.list(&kube::api::ListParams::default().labels(NS_LABEL)).await.expect("list namespaces").items {
        say!("deleting namespace {} left by an earlier run", ns.name_any());
        bench.delete_namespace(&ns.name_any()).await;
    }

    // A round of bare pods that is not reported: the scheduler's, kwok's and
    // the API server's first pods should not count against the floor.
    say!("warm-up: 20 bare pods (not reported)");
    bench.measure(Engine::Floor, Workload::Single(20)).await;

    let mut results: Vec<(Workload, Vec<Outcome>)> = vec![];
    for &w in &workloads {
        let mut outcomes = vec![];
        for &e in &engines {
            outcomes.push(bench.measure(e, w).await);
        }
        results.push((w, outcomes));
    }

    let mut md = String::new();
    let _ = writeln!(md, "## baton vs Argo Workflows vs bare pods (`make bench-compare`)\n");
    let _ = writeln!(md, "- machine: {machine}");
    let _ = writeln!(
        md,
        "- one local control plane (e2e/cluster: Kubernetes {}, kwok, 2 fake nodes); baton {}, Argo Workflows {argo_version} (workflow-controller only, `INFORMER_WRITE_BACK=true`, leader election on)",
        kube_version(),
        git_commit()
    );
    let _ = writeln!(
        md,
        "- every task is a kwok pod that runs for 1 s (`baton.dev/sim-duration: 1s`) with command `sh -c 'exit 0'`; engines run one after another (after a warm-up round of 20 bare pods), each in a fresh namespace that is deleted (and waited for) before the next, once the API server is nearly idle"
    );
    let _ = writeln!(
        md,
        "- wall time: from the first create sent to the last run seen finished; p50/p95/p99: per run, from its create sent to the benchmark's watch seeing it finished (baton: WorkflowInstance phase, Argo: Workflow phase, bare pods: pod phase; the floor's diamonds are driven by the benchmark, which creates B and C when it sees A succeed and D when it sees B and C succeed)"
    );
    let _ = writeln!(
        md,
        "- requests: deltas of the API server's `apiserver_request_total` from after the engine is ready and the benchmark's watch has synced to {} s after the last run finished; writes = POST, PUT, PATCH, DELETE, DELETECOLLECTION, APPLY; reads = GET, LIST (WATCH not counted); all clients together (engine, scheduler, kwok, garbage collector, the benchmark's own creates)",
        bench.settle.as_secs_f64()
    );
    let _ = writeln!(
        md,
        "- own writes/task = (writes − the floor's writes per pod × pods − the runs the benchmark created) / tasks; own reads/task = (reads − the floor's reads per pod × pods) / tasks: what the engine adds beyond what the same pods cost without it (pod create, binding, kwok's status updates, the scheduler's Event), taken from the floor row of the same workload"
    );
    let _ = writeln!(
        md,
        "- controller CPU: utime + stime of the controller processes (summed) over the same window; peak RSS: VmHWM; API server CPU: the kube-apiserver process over the same window"
    );
    md.push('\n');
    for (w, outcomes) in &results {
        md.push_str(&table(*w, outcomes, &argo_version));
    }
    for (w, outcomes) in &results {
        md.push_str(&breakdown(*w, outcomes, &argo_version));
    }
    let _ = writeln!(md, "Total benchmark time: {:.0} s.", total.elapsed().as_secs_f64());
    println!("\n{md}");
    let out = std::env::var_os("BENCH_OUT").map_or_else(|| root().join("target/bench-compare.md"), PathBuf::from);
    if let Some(dir) = out.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    std::fs::write(&out, &md).unwrap_or_else(|e| panic!("write {}: {e}", out.display()));
    say!("wrote {}", out.display());
}

fn kube_version() -> String {
    Command::new(root().join("e2e/cluster"))
        .arg("versions")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("kubernetes ")).map(str::to_string))
        .unwrap_or_else(|| "?".into())
}
