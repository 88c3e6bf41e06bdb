//! baton as it runs in production, on the local control plane's real node
//! (`e2e/cluster up --real-node`: a kubelet with containerd and runc; see
//! e2e/README.md, "The real node"): the controller image that `make image`
//! writes, installed by the Helm chart; task pods that run real commands in
//! real containers; failover caused the way a cluster operator causes it.
//!
//! Every test here needs the real node. On a machine that cannot run one,
//! each says so and why (the reason `e2e/cluster up --real-node=auto`
//! recorded) and passes without doing anything; with
//! `BATON_E2E_REAL_NODE=required` (`.ci/run`) it fails instead.
//!
//! Each test installs its own release into its own namespace: the chart's
//! namespaced variant (`controller.watchNamespace`), so the in-cluster
//! controllers never see another test's runs, and its own admission
//! webhook (the namespace is labelled so the e2e webhook leaves it alone).
//! The namespace's annotations (the PodNodeSelector and
//! PodTolerationRestriction admission plugins, on with the real node) put
//! every pod in it on the real node, the controllers' and the tasks' alike,
//! so the samples run unchanged.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};

use baton::api::{OwnerChangeReason, RunPhase, TaskPhase, WorkflowInstance};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff;
use kube::api::{Api, ListParams};
use serde_json::Value;

use crate::cli::{baton, stdout};
use crate::install::{helm, kubectl, run, try_kubectl};
use crate::runs::{wait_phase, wait_phase_within};
use crate::support::{TestNs, root, series_value, state_dir, wait_for};

const NODE: &str = "baton-real-node";
const TAINT: &str = "baton.dev/real-node";
/// Starting pods on the real node takes seconds each; runs wait longer than
/// on the fake nodes.
const REAL_RUN_TIMEOUT: Duration = Duration::from_secs(180);

/// `None` when the real node is Ready; otherwise why the calling test is
/// skipped (printed), or a panic under `BATON_E2E_REAL_NODE=required`.
fn skipped(test: &str) -> Option<String> {
    let ready = try_kubectl(&["get", "node", NODE, "-o", "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}"], None);
    if ready.as_deref() == Ok("True") {
        return None;
    }
    if state_dir().join("real-node/machine.orig").exists() {
        panic!(
            "{test}: the real node was started (target/e2e/real-node) but node {NODE} is not Ready: {ready:?}; see target/e2e/logs/kubelet.log"
        );
    }
    let why =
        std::fs::read_to_string(state_dir().join("real-node.skipped")).map(|s| s.trim().to_string()).unwrap_or_else(|_| match ready {
            Ok(status) => format!("node {NODE} is not Ready (Ready={status:?}); see target/e2e/logs/kubelet.log"),
            Err(_) => "the local control plane runs without the real node (e2e/cluster up --real-node)".to_string(),
        });
    if std::env::var("BATON_E2E_REAL_NODE").as_deref() == Ok("required") {
        panic!("{test}: BATON_E2E_REAL_NODE=required, but {why}");
    }
    eprintln!("SKIPPED {test}: {why}");
    Some(why)
}

/// One `helm install` of `charts/baton` into a namespace of its own, with
/// the image `make image` imported into the real node.
struct Release {
    ns: TestNs,
    name: String,
}

impl Release {
    async fn install(test: &str) -> Release {
        let ns = TestNs::new(test).await;
        let name = format!("baton-{}", ns.name.trim_start_matches("e2e-"));
        let tolerations = format!(r#"[{{"key":"{TAINT}","operator":"Exists","effect":"NoSchedule"}}]"#);
        ns.kubectl(
            &[
                "annotate",
                "namespace",
                &ns.name,
                &format!("scheduler.alpha.kubernetes.io/node-selector={TAINT}=true"),
                &format!("scheduler.alpha.kubernetes.io/defaultTolerations={tolerations}"),
            ],
            None,
        );
        ns.kubectl(&["label", "namespace", &ns.name, "e2e.baton.dev/webhook=chart"], None);
        // The controllers on the real node, running the image `make image`
        // imported there; they watch this namespace only.
        let values = state_dir().join(format!("values-{name}.yaml"));
        std::fs::write(
            &values,
            format!(
                "image: {{pullPolicy: Never}}\ncontroller: {{watchNamespace: {}, logFormat: text}}\n\
                 nodeSelector: {{{TAINT}: \"true\"}}\ntolerations: [{{key: {TAINT}, operator: Exists, effect: NoSchedule}}]\n",
                ns.name
            ),
        )
        .unwrap();
        let t0 = Instant::now();
        helm(&[
            "install",
            &name,
            "charts/baton",
            "--namespace",
            &ns.name,
            "--skip-crds",
            "--values",
            values.to_str().unwrap(),
            "--wait",
            "--timeout",
            "3m",
        ])
        .unwrap_or_else(|e| panic!("{e}\n{}", ns.kubectl(&["describe", "pods"], None)));
        eprintln!("helm install {name}: 3 controller pods Ready in {:.1}s", t0.elapsed().as_secs_f64());
        Release { ns, name }
    }

    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        self.ns.api()
    }

    /// The controller pods, by name.
    async fn controllers(&self) -> BTreeMap<String, Pod> {
        let selector = format!("app.kubernetes.io/instance={}", self.name);
        let pods = self.api::<Pod>().list(&ListParams::default().labels(&selector)).await.unwrap();
        pods.items.into_iter().map(|p| (p.metadata.name.clone().unwrap(), p)).collect()
    }

    /// Waits until exactly `n` controller pods run, all Ready, none going.
    async fn wait_ready(&self, n: usize) -> BTreeSet<String> {
        wait_for(&format!("{n} Ready controller pods"), Duration::from_secs(120), || async {
            let pods = self.controllers().await;
            let ready: BTreeSet<String> =
                pods.iter().filter(|(_, p)| p.metadata.deletion_timestamp.is_none() && is_ready(p)).map(|(n, _)| n.clone()).collect();
            if ready.len() == n && pods.len() == n { Ok(ready) } else { Err(format!("{} pods, Ready: {ready:?}", pods.len())) }
        })
        .await
    }

    async fn uninstall(self) {
        helm(&["uninstall", &self.name, "--namespace", &self.ns.name, "--wait", "--timeout", "2m"]).unwrap();
        self.ns.done().await;
    }
}

fn is_ready(p: &Pod) -> bool {
    p.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn task<'a>(run: &'a WorkflowInstance, name: &str) -> &'a baton::api::TaskStatus {
    let status = run.status.as_ref().expect("status");
    status.tasks.iter().find(|t| t.name == name).unwrap_or_else(|| panic!("no task {name} in {:?}", status.tasks))
}

async fn wait_ended(ns: &TestNs, name: &str) -> WorkflowInstance {
    wait_phase_within(ns, name, REAL_RUN_TIMEOUT, RunPhase::is_terminal).await
}

/// Seconds from a pod's create to its container's start, as the kubelet
/// reported them.
fn start_latency(p: &Pod) -> Option<f64> {
    let created = p.metadata.creation_timestamp.as_ref()?.0;
    let state = p.status.as_ref()?.container_statuses.as_ref()?.first()?.state.as_ref()?;
    let started =
        state.terminated.as_ref().and_then(|t| t.started_at.as_ref()).or(state.running.as_ref().and_then(|r| r.started_at.as_ref()))?.0;
    Some(started.duration_since(created).as_secs_f64())
}

/// The README's Argo CD health check for runs, as Argo CD runs it: the
/// snippet under `resource.customizations.health.baton.dev_WorkflowInstance`,
/// in Lua 5.1, with `obj` the run. Returns (status, message).
fn argocd_health(run: &Value) -> (String, String) {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let key = "resource.customizations.health.baton.dev_WorkflowInstance: |";
    let start = readme.find(key).expect("the Argo CD health check in README.md") + key.len();
    let body: Vec<&str> = readme[start..].lines().skip(1).take_while(|l| l.starts_with("    ") || l.trim().is_empty()).collect();
    let snippet = body.iter().map(|l| l.strip_prefix("    ").unwrap_or("")).collect::<Vec<_>>().join("\n");
    let script = format!(
        "local obj = {}\nlocal function check(obj)\n{snippet}\nend\nlocal hs = check(obj)\nio.write(hs.status, \"\\n\", hs.message or \"\")\n",
        lua_value(run)
    );
    let out = Command::new("lua5.1").args(["-e", &script]).output().expect("lua5.1 (Debian's lua5.1; make test installs it)");
    assert!(out.status.success(), "the health check failed in Lua 5.1: {}\n{script}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let (status, message) = text.split_once('\n').unwrap_or((&text, ""));
    (status.to_string(), message.to_string())
}

/// A JSON value as a Lua table constructor, as Argo CD hands objects to
/// health checks (JSON null is Lua nil).
fn lua_value(v: &Value) -> String {
    match v {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => lua_string(s),
        Value::Array(items) => format!("{{{}}}", items.iter().map(lua_value).collect::<Vec<_>>().join(", ")),
        Value::Object(fields) => {
            format!("{{{}}}", fields.iter().map(|(k, v)| format!("[{}] = {}", lua_string(k), lua_value(v))).collect::<Vec<_>>().join(", "))
        }
    }
}

fn lua_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 => out.push_str(&format!("\\{:03}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn run_json(ns: &TestNs, name: &str) -> Value {
    serde_json::from_str(&ns.kubectl(&["get", "wfi", name, "-o", "json"], None)).unwrap()
}

/// Task commands that show parameters going in and results coming out of
/// real containers, and a command that fails.
const REAL_IO: &str = r#"
apiVersion: baton.dev/v1alpha1
kind: Workflow
metadata: {name: real-io}
spec:
  params:
    - {name: who, default: nobody}
  tasks:
    - name: greet
      container:
        name: main
        image: busybox:1.36
        command: [sh, -c, 'echo "hello {{params.who}} from $(hostname)"; printf "%s-{{params.who}}" "$(uname -s)" > /dev/termination-log']
    - name: use
      dependsOn: [greet]
      container:
        name: main
        image: busybox:1.36
        command: [sh, -c, 'echo "got {{tasks.greet.outputs.result}}"']
---
apiVersion: baton.dev/v1alpha1
kind: Workflow
metadata: {name: real-fail}
spec:
  tasks:
    - name: crash
      container:
        name: main
        image: busybox:1.36
        command: [sh, -c, 'echo starting; echo "disk full on /data" >&2; exit 3']
---
apiVersion: baton.dev/v1alpha1
kind: WorkflowInstance
metadata: {name: real-io-1}
spec:
  workflowRef: {name: real-io}
  params: {who: world}
---
apiVersion: baton.dev/v1alpha1
kind: WorkflowInstance
metadata: {name: real-fail-1}
spec:
  workflowRef: {name: real-fail}
"#;

/// What an image runs as, from the Dockerfile's last stage or an image
/// config: (entrypoint, user, exposed ports).
type Runtime = (Vec<String>, String, BTreeSet<String>);

fn dockerfile_runtime() -> Runtime {
    let text = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let last = text.rsplit("\nFROM ").next().unwrap();
    let value = |directive: &str| {
        last.lines()
            .rev()
            .find_map(|l| l.strip_prefix(directive))
            .unwrap_or_else(|| panic!("{directive} in the Dockerfile"))
            .trim()
            .to_string()
    };
    let entrypoint: Vec<String> = serde_json::from_str(&value("ENTRYPOINT ")).expect("ENTRYPOINT in exec form");
    let ports = value("EXPOSE ").split_whitespace().map(|p| if p.contains('/') { p.to_string() } else { format!("{p}/tcp") }).collect();
    (entrypoint, value("USER "), ports)
}

/// The config of the image `make image` wrote (a docker-archive).
fn image_runtime(tarball: &std::path::Path) -> Runtime {
    let config = run(Command::new("tar").arg("-xOf").arg(tarball).arg("config.json"), None).unwrap();
    let config: Value = serde_json::from_str(&config).unwrap();
    let c = &config["config"];
    let entrypoint = c["Entrypoint"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    let ports = c["ExposedPorts"].as_object().map(|p| p.keys().cloned().collect()).unwrap_or_default();
    (entrypoint, c["User"].as_str().unwrap_or_default().to_string(), ports)
}

/// The first word `bash -c "<script> | sha256sum"` prints.
fn sha256_of(script: &str) -> String {
    let out = run(Command::new("bash").args(["-c", &format!("set -o pipefail; {script} | sha256sum")]), None).unwrap();
    out.split_whitespace().next().unwrap().to_string()
}

/// A series of every controller pod's /metrics (through the API server's
/// pod proxy), summed.
fn metric_sum(ns: &str, pods: &BTreeSet<String>, series: &str) -> f64 {
    pods.iter()
        .map(|pod| {
            series_value(&kubectl(&["get", "--raw", &format!("/api/v1/namespaces/{ns}/pods/{pod}:8080/proxy/metrics")], None), series)
        })
        .sum()
}

#[tokio::test]
async fn the_chart_runs_on_the_real_node_and_the_samples_run_real_commands() {
    if skipped("the_chart_runs_on_the_real_node_and_the_samples_run_real_commands").is_some() {
        return;
    }
    // The image `make image` built (what the chart installs here) runs
    // what the Dockerfile's image runs, as the same user, on the same port.
    let tarball = root().join("target/image/baton-controller.tar");
    assert_eq!(image_runtime(&tarball), dockerfile_runtime(), "make image and the Dockerfile agree");
    eprintln!("controller image {}: {:.1} MB", tarball.display(), std::fs::metadata(&tarball).unwrap().len() as f64 / 1e6);
    let rel = Release::install("real-chart").await;
    let ns = &rel.ns;
    let pods = rel.wait_ready(3).await;
    // Each pod runs, as user 65532, the very binary in that image.
    let image_binary = sha256_of(&format!("tar -xOf {} layer.tar | tar -xO ./baton-controller", tarball.display()));
    for (name, pod) in rel.controllers().await {
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.node_name.as_deref(), Some(NODE), "controller {name} runs on the real node");
        let pid = controller_pid(&name).unwrap_or_else(|| panic!("no process of {name} on this machine"));
        assert_eq!(sha256_of(&format!("cat /proc/{pid}/exe")), image_binary, "{name} runs the image's binary");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let uid = status.lines().find_map(|l| l.strip_prefix("Uid:")).unwrap();
        assert_eq!(uid.split_whitespace().collect::<Vec<_>>(), ["65532"; 4], "{name} runs as the image's user");
    }

    // Each pod holds its own Lease, named after it (POD_NAME from the
    // downward API is the identity).
    let leases: Value =
        serde_json::from_str(&ns.kubectl(&["get", "leases", "-l", "baton.dev/controller=true", "-o", "json"], None)).unwrap();
    let holders: BTreeMap<String, String> = leases["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["metadata"]["name"].as_str().unwrap().to_string(), l["spec"]["holderIdentity"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(holders.keys().cloned().collect::<BTreeSet<_>>(), pods, "one Lease per controller pod");
    assert!(holders.iter().all(|(lease, holder)| lease == holder), "{holders:?}");

    // /metrics through the chart's Service (the API server's service proxy
    // goes through the Service's endpoints to a pod on the real node).
    let metrics =
        kubectl(&["get", "--raw", &format!("/api/v1/namespaces/{}/services/{}-metrics:metrics/proxy/metrics", ns.name, rel.name)], None);
    assert!(metrics.contains("baton_reconciles_total") || metrics.contains("baton_claims_total"), "{metrics}");

    ns.kubectl(&["apply", "-k", root().join("config/samples").to_str().unwrap()], None);
    ns.apply(REAL_IO);
    for run in ["diamond-2026-11-21", "etl-2026-11-21", "shards-2026-11-22", "real-io-1"] {
        let r = wait_ended(ns, run).await;
        assert_eq!(r.status.as_ref().unwrap().phase, Some(RunPhase::Succeeded), "{run}: {:?}", r.status);
    }

    // The admission webhook is served in-cluster, with the chart's
    // certificate: a pod for a run at an older owner epoch is refused.
    let diamond: WorkflowInstance = rel.api().get("diamond-2026-11-21").await.unwrap();
    let uid = diamond.metadata.uid.clone().unwrap();
    let stale = format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"stale-owner","labels":{{"baton.dev/instance":"diamond-2026-11-21"}},
        "annotations":{{"baton.dev/owner-epoch":"0"}},"ownerReferences":[{{"apiVersion":"baton.dev/v1alpha1","kind":"WorkflowInstance",
        "name":"diamond-2026-11-21","uid":"{uid}","controller":true}}]}},"spec":{{"containers":[{{"name":"main","image":"busybox:1.36"}}]}}}}"#
    );
    let refused = try_kubectl(&["-n", &ns.name, "create", "-f", "-"], Some(&stale))
        .expect_err("the chart's webhook refuses a pod from an older owner epoch");
    assert!(refused.contains("pods.baton.dev") && refused.contains("is at epoch"), "{refused}");
    assert!(metric_sum(&ns.name, &pods, "baton_admission_reviews_total{verdict=\"denied\"}") >= 1.0, "the chart's controllers refused it");

    // Real commands ran, with their parameters; results came back through
    // the termination message; kubectl logs and baton logs show the output.
    let io: WorkflowInstance = rel.api().get("real-io-1").await.unwrap();
    let greet = task(&io, "greet");
    assert_eq!(greet.outputs.as_ref().and_then(|o| o.result.as_deref()), Some("Linux-world"), "{greet:?}");
    let greet_pod = greet.pod_name.clone().unwrap();
    let log = ns.kubectl(&["logs", &greet_pod], None);
    assert_eq!(log.trim(), format!("hello world from {greet_pod}"), "the container's hostname is its pod's name");
    let use_log = ns.kubectl(&["logs", task(&io, "use").pod_name.as_deref().unwrap()], None);
    assert_eq!(use_log.trim(), "got Linux-world");
    let baton_logs = stdout(&baton(ns, &["logs", "real-io-1"]));
    assert!(baton_logs.contains(&format!("hello world from {greet_pod}")) && baton_logs.contains("got Linux-world"), "{baton_logs}");
    let extract_log = ns.kubectl(&["logs", task(&diamond, "extract").pod_name.as_deref().unwrap()], None);
    assert_eq!(extract_log.trim(), "extracting 2026-11-21");
    let shards: WorkflowInstance = rel.api().get("shards-2026-11-22").await.unwrap();
    let publish_log = ns.kubectl(&["logs", task(&shards, "publish").pod_name.as_deref().unwrap()], None);
    // (The results are a JSON list, put into a double-quoted shell word:
    // the shell takes the quotes off.)
    assert_eq!(publish_log.trim(), "publishing [rows-eu,rows-us,rows-ap,rows-sa,rows-af]");

    // A failing command: its exit code and the tail of its log reach the
    // task's status.
    let failed = wait_ended(ns, "real-fail-1").await;
    assert_eq!(failed.status.as_ref().unwrap().phase, Some(RunPhase::Failed));
    let crash = task(&failed, "crash");
    assert_eq!((crash.phase, crash.exit_code), (TaskPhase::Failed, Some(3)), "{crash:?}");
    let message = crash.message.as_deref().unwrap_or_default();
    assert!(message.contains("disk full on /data") && message.contains('3'), "{message}");

    let mut latencies = Vec::new();
    for p in rel.api::<Pod>().list(&ListParams::default().labels("baton.dev/instance")).await.unwrap() {
        assert_eq!(p.spec.as_ref().unwrap().node_name.as_deref(), Some(NODE), "task pods run on the real node");
        latencies.extend(start_latency(&p));
    }
    latencies.sort_by(f64::total_cmp);
    eprintln!(
        "task pod start on the real node (create to container start): {} pods, median {:.2}s, max {:.2}s",
        latencies.len(),
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1]
    );

    // The README's Argo CD health check, in Lua 5.1, on these runs: as
    // created (no status yet), succeeded, failed, paused.
    let created: Value = serde_json::from_str(&ns.kubectl(
        &["create", "-o", "json", "-f", "-"],
        Some("apiVersion: baton.dev/v1alpha1\nkind: WorkflowInstance\nmetadata: {name: real-io-2}\nspec:\n  workflowRef: {name: real-io}\n  suspend: true\n"),
    ))
    .unwrap();
    assert_eq!(argocd_health(&created), ("Progressing".into(), "waiting for a controller to claim the run".into()));
    let (status, message) = argocd_health(&run_json(ns, "diamond-2026-11-21"));
    assert_eq!(status, "Healthy");
    assert!(message.starts_with("Succeeded ") && pods.iter().any(|p| message.ends_with(&format!(" on {p}"))), "{message}");
    let (status, message) = argocd_health(&run_json(ns, "real-fail-1"));
    assert_eq!(status, "Degraded", "{message}");
    wait_phase(ns, "real-io-2", |p| p == RunPhase::Paused).await;
    let (status, message) = argocd_health(&run_json(ns, "real-io-2"));
    assert_eq!(status, "Suspended", "{message}");

    rel.uninstall().await;
}

/// The runs of `runs` that `owner` holds now.
async fn owned_by(api: &Api<WorkflowInstance>, owner: &str) -> BTreeSet<String> {
    let list = api.list(&ListParams::default()).await.unwrap();
    list.items
        .into_iter()
        .filter(|r| r.status.as_ref().and_then(|s| s.owner.as_ref()).is_some_and(|o| o.controller == owner))
        .map(|r| r.metadata.name.unwrap())
        .collect()
}

/// Waits until none of `runs` is owned by `gone` (nor released): returns
/// the seconds it took and why each run that is still going changed owner.
async fn wait_moved(api: &Api<WorkflowInstance>, runs: &BTreeSet<String>, gone: &str, since: Instant) -> (f64, Vec<OwnerChangeReason>) {
    let reasons = wait_for(&format!("the runs of {gone} to move"), Duration::from_secs(60), || async {
        let mut reasons = Vec::new();
        for name in runs {
            let r = api.get(name).await.map_err(|e| e.to_string())?;
            let s = r.status.as_ref().unwrap();
            if s.phase.is_some_and(|p| p.is_terminal()) {
                continue;
            }
            match &s.owner {
                Some(o) if o.controller != gone && !o.controller.is_empty() => reasons.push(s.owner_history.last().unwrap().reason),
                o => return Err(format!("{name} owned by {o:?}")),
            }
        }
        Ok(reasons)
    })
    .await;
    (since.elapsed().as_secs_f64(), reasons)
}

/// The process of a controller pod's container, as seen from the machine
/// (the test runs as root beside the kubelet).
fn controller_pid(pod: &str) -> Option<i32> {
    let needle = format!("POD_NAME={pod}\0");
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
        let environ = std::fs::read(e.path().join("environ")).ok()?;
        (comm.trim() == "baton-controlle" && String::from_utf8_lossy(&environ).contains(&needle)).then_some(pid)
    })
}

fn steps_run(name: &str) -> String {
    format!("apiVersion: baton.dev/v1alpha1\nkind: WorkflowInstance\nmetadata: {{name: {name}}}\nspec:\n  workflowRef: {{name: steps}}\n")
}

/// Two steps; each container appends its pod's name to a ledger on the
/// node's disk before it works, so a task that ran twice (a second attempt,
/// or the same pod name created again) shows as a second line.
fn steps(ledger: &std::path::Path) -> String {
    let task = |name: &str, after: &str| {
        format!(
            "    - name: {name}\n{after}      container:\n        name: main\n        image: busybox:1.36\n        \
             command: [sh, -c, 'echo $HOSTNAME >> /ledger/log; sleep 5; echo {name}']\n        \
             volumeMounts: [{{name: ledger, mountPath: /ledger}}]\n      \
             podTemplate:\n        volumes: [{{name: ledger, hostPath: {{path: {}, type: DirectoryOrCreate}}}}]\n",
            ledger.display()
        )
    };
    format!(
        "apiVersion: baton.dev/v1alpha1\nkind: Workflow\nmetadata: {{name: steps}}\nspec:\n  tasks:\n{}{}",
        task("first", ""),
        task("second", "      dependsOn: [first]\n")
    )
}

/// Runs `steps` as `<prefix>-0` .. `<prefix>-5`.
fn start_batch(ns: &TestNs, prefix: &str) -> Vec<String> {
    let batch: Vec<String> = (0..6).map(|i| format!("{prefix}-{i}")).collect();
    ns.apply(&batch.iter().map(|r| steps_run(r)).collect::<Vec<_>>().join("---\n"));
    batch
}

/// A controller pod that owns some of `batch` now, and those runs.
async fn an_owner_of(rel: &Release, batch: &[String]) -> (String, BTreeSet<String>) {
    let api: Api<WorkflowInstance> = rel.api();
    let batch: BTreeSet<String> = batch.iter().cloned().collect();
    wait_for("a run of the batch owned", Duration::from_secs(60), || async {
        for pod in rel.controllers().await.keys() {
            let mine: BTreeSet<String> = owned_by(&api, pod).await.intersection(&batch).cloned().collect();
            if !mine.is_empty() {
                return Ok((pod.clone(), mine));
            }
        }
        Err("no run of the batch owned yet".to_string())
    })
    .await
}

#[tokio::test]
async fn operator_moves_hand_runs_over_on_the_real_node_and_no_task_runs_twice() {
    if skipped("operator_moves_hand_runs_over_on_the_real_node_and_no_task_runs_twice").is_some() {
        return;
    }
    let rel = Release::install("real-failover").await;
    let ns = &rel.ns;
    let api: Api<WorkflowInstance> = rel.api();
    rel.wait_ready(3).await;
    let ledger = state_dir().join("real-node/ledgers").join(&ns.name);
    ns.apply(&steps(&ledger));
    let mut handoffs_only = Vec::new();
    let _ = std::fs::remove_dir_all(&ledger);

    // 1. `kubectl delete pod` of an owner: it hands its runs over as it
    //    stops (Handoff), nobody waits for its Lease to expire.
    let batch = start_batch(ns, "delete");
    handoffs_only.extend(batch.clone());
    let (victim, runs) = an_owner_of(&rel, &batch).await;
    let t0 = Instant::now();
    ns.kubectl(&["delete", "pod", &victim, "--wait=false"], None);
    let (moved, reasons) = wait_moved(&api, &runs, &victim, t0).await;
    eprintln!("kubectl delete pod {victim}: its {} runs moved in {moved:.2}s ({reasons:?})", runs.len());
    assert!(!reasons.is_empty(), "the deleted pod's runs had ended before it stopped: {runs:?}");
    assert!(reasons.iter().all(|r| *r == OwnerChangeReason::Handoff), "a deleted pod hands its runs over: {reasons:?}");
    rel.wait_ready(3).await;

    // 2. The controller's process killed in its container: the kubelet
    //    restarts it under the same identity, within its Lease.
    let kill_batch = start_batch(ns, "kill");
    let (victim, runs) = an_owner_of(&rel, &kill_batch).await;
    let pid = controller_pid(&victim).unwrap_or_else(|| panic!("no process of {victim} on this machine"));
    let t0 = Instant::now();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    let restarted = wait_for(&format!("{victim} restarted and Ready"), Duration::from_secs(90), || async {
        let pods = rel.controllers().await;
        let p = pods.get(&victim).ok_or("gone")?;
        let restarts = p.status.as_ref().and_then(|s| s.container_statuses.as_ref()).map_or(0, |c| c[0].restart_count);
        if restarts > 0 && is_ready(p) { Ok(t0.elapsed().as_secs_f64()) } else { Err(format!("restarts {restarts}")) }
    })
    .await;
    let progressed = wait_for("the killed controller's runs to go on", Duration::from_secs(90), || async {
        for name in &runs {
            let s = api.get(name).await.map_err(|e| e.to_string())?.status.unwrap();
            let second_started = s.tasks.iter().any(|t| t.name == "second" && t.phase != TaskPhase::Pending);
            if !second_started && !s.phase.is_some_and(|p| p.is_terminal()) {
                return Err(format!("{name}: {:?}", s.progress));
            }
        }
        Ok(t0.elapsed().as_secs_f64())
    })
    .await;
    eprintln!(
        "kill -9 of {victim}'s process: container restarted and Ready after {restarted:.2}s; its {} runs went on by {progressed:.2}s",
        runs.len()
    );

    // 3. `helm upgrade` rolls the Deployment while runs are in flight: every
    //    old pod hands its runs over as it stops. Runs of a pod being
    //    replaced are stopped and paused meanwhile: the requests are data in
    //    spec, and whoever owns each run next applies them.
    let batch = start_batch(ns, "upgrade");
    let before = rel.wait_ready(3).await;
    let secret = |ns: &TestNs| ns.kubectl(&["get", "secret", &format!("{}-webhook-tls", rel.name), "-o", "jsonpath={.data}"], None);
    let tls = secret(ns);
    let t0 = Instant::now();
    // (Owner changes are recorded to the second.)
    let rollout_start = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(1);
    let upgrade = {
        let (name, namespace) = (rel.name.clone(), ns.name.clone());
        tokio::task::spawn_blocking(move || {
            helm(&[
                "upgrade",
                &name,
                "charts/baton",
                "--namespace",
                &namespace,
                "--skip-crds",
                "--reuse-values",
                "--set-string",
                "podAnnotations.e2e-rollout=2",
                "--wait",
                "--timeout",
                "3m",
            ])
        })
    };
    // As soon as the first old pod is on its way out: the runs of the batch
    // that an old pod holds, or nobody (released, not yet claimed).
    let (leaving, requested) = wait_for("an old pod leaving", Duration::from_secs(60), || async {
        let pods = rel.controllers().await;
        let Some(leaving) = pods.iter().find(|(_, p)| p.metadata.deletion_timestamp.is_some()).map(|(n, _)| n.clone()) else {
            return Err("no controller pod is terminating yet".to_string());
        };
        let mut going = Vec::new();
        for name in &batch {
            let r = api.get(name).await.map_err(|e| e.to_string())?;
            let s = r.status.unwrap_or_default();
            let owner = s.owner.map(|o| o.controller).unwrap_or_default();
            if !s.phase.is_some_and(|p| p.is_terminal()) && (owner.is_empty() || before.contains(&owner)) {
                going.push(name.clone());
            }
        }
        Ok((leaving, going))
    })
    .await;
    assert!(requested.len() >= 2, "runs of the batch were still with the old pods: {requested:?}");
    let (stop, pause) = (requested.first().cloned(), requested.get(1).cloned());
    if let Some(r) = &stop {
        ns.kubectl(&["patch", "wfi", r, "--type=merge", "-p", r#"{"spec":{"shutdown":"Stop"}}"#], None);
    }
    if let Some(r) = &pause {
        ns.kubectl(&["patch", "wfi", r, "--type=merge", "-p", r#"{"spec":{"suspend":true}}"#], None);
    }
    let paused_at = jiff::Timestamp::now();
    // Runs created in the middle of the rollout are all taken and run.
    let during = start_batch(ns, "during");
    upgrade.await.unwrap().unwrap();
    let after = rel.wait_ready(3).await;
    eprintln!(
        "helm upgrade: the Deployment rolled in {:.1}s; stop {stop:?} and pause {pause:?} asked while {leaving} was leaving",
        t0.elapsed().as_secs_f64()
    );
    assert!(before.is_disjoint(&after), "every pod was replaced: {before:?} -> {after:?}");
    assert_eq!(secret(ns), tls, "the upgrade kept the webhook's certificate");
    let mut handed_over = 0;
    for name in &batch {
        let r = api.get(name).await.unwrap();
        let history = &r.status.unwrap().owner_history;
        handed_over += history.iter().filter(|c| c.reason == OwnerChangeReason::Handoff && c.since.0 >= rollout_start).count();
    }
    assert!(handed_over > 0, "runs were in flight during the upgrade and handed over");
    if let Some(r) = &pause {
        let paused = wait_phase(ns, r, |p| p == RunPhase::Paused || p.is_terminal()).await;
        let s = paused.status.as_ref().unwrap();
        match s.phase {
            Some(RunPhase::Paused) => {
                ns.kubectl(&["patch", "wfi", r, "--type=merge", "-p", r#"{"spec":{"suspend":false}}"#], None);
            }
            // The pause came while the last task ran: nothing was left to
            // hold back. It stood if no task started after it was stored
            // (a status write planned on the spec before it conflicts).
            Some(RunPhase::Succeeded) => {
                for t in &s.tasks {
                    let started = t.started_at.as_ref().map(|at| at.0);
                    assert!(started.is_some_and(|at| at <= paused_at), "{r}/{}: started after the pause of {paused_at}: {t:?}", t.name);
                }
            }
            other => panic!("{r}: the pause asked during the rollout stands, but the run ended {other:?}: {s:?}"),
        }
    }
    handoffs_only.extend(batch.clone());
    handoffs_only.extend(during);

    // Every run finished once: each task's container ran once (the
    // ledger), in one attempt, in one pod; the runs moved by a clean stop
    // never waited for a Lease to expire.
    let mut expected = BTreeSet::new();
    for name in handoffs_only.iter().chain(&kill_batch) {
        let r = wait_ended(ns, name).await;
        let s = r.status.as_ref().unwrap();
        let want = if stop.as_ref() == Some(name) { RunPhase::Stopped } else { RunPhase::Succeeded };
        assert_eq!(s.phase, Some(want), "{name}: {s:?}");
        for t in &s.tasks {
            assert!(t.attempts <= 1, "{name}/{}: one attempt at most: {t:?}", t.name);
        }
        if handoffs_only.contains(name) {
            let failovers: Vec<_> = s.owner_history.iter().filter(|c| c.reason == OwnerChangeReason::Failover).collect();
            assert!(failovers.is_empty(), "{name}: an owner change waited for a Lease: {:?}", s.owner_history);
        }
        let pods = rel.api::<Pod>().list(&ListParams::default().labels(&format!("baton.dev/instance={name}"))).await.unwrap();
        for p in &pods.items {
            assert_eq!(p.spec.as_ref().unwrap().node_name.as_deref(), Some(NODE), "task pods run on the real node");
        }
        if want == RunPhase::Succeeded {
            let names: BTreeSet<String> = pods.items.iter().map(|p| p.metadata.name.clone().unwrap()).collect();
            assert_eq!(names, [format!("{name}-first-0"), format!("{name}-second-0")].into(), "{name}: one pod per task");
            expected.extend(names);
        }
    }
    // The stopped run's containers may or may not have started.
    let stopped_prefix = stop.as_ref().map(|r| format!("{r}-"));
    let mut ran = BTreeMap::<String, usize>::new();
    for line in std::fs::read_to_string(ledger.join("log")).unwrap().lines() {
        if !stopped_prefix.as_ref().is_some_and(|p| line.starts_with(p.as_str())) {
            *ran.entry(line.to_string()).or_default() += 1;
        }
    }
    let once: BTreeMap<String, usize> = expected.into_iter().map(|p| (p, 1)).collect();
    assert_eq!(ran, once, "each task's container ran exactly once (ledger {})", ledger.display());
    rel.uninstall().await;
    let _ = std::fs::remove_dir_all(&ledger);
}
