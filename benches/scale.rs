//! Memory and start-up at scale: fills a namespace with BENCH_FINISHED
//! (default 10,000) finished runs, each with its Succeeded task pod (made
//! directly, as a finished run leaves them, without running them), then
//! starts one controller and prints how long it took to become ready (its
//! Lease held and every cache listed) and its memory once it has looked at
//! every run. `make bench-scale`. Prints figures; asserts nothing about them.

#[path = "../e2e/support.rs"]
#[allow(dead_code)]
mod support;

use std::time::{Duration, Instant};

use baton::api::{RunPhase, TaskPhase, TaskStatus, Workflow, WorkflowInstance, WorkflowInstanceSpec, WorkflowInstanceStatus, WorkflowRef};
use baton::objects::{LABEL_ATTEMPT, LABEL_INSTANCE, LABEL_TASK};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use kube::{Resource, ResourceExt};

const WORKFLOW: &str = "apiVersion: baton.dev/v1alpha1\nkind: Workflow\nmetadata: {name: scale}\nspec:\n  tasks:\n  - name: only\n    container: {name: main, image: busybox, command: [sh, -c, 'echo done > /dev/termination-log']}\n";

/// A finished run as its owner leaves it: Succeeded, cleaned up, owned by a
/// controller that is gone.
fn finished(run: &WorkflowInstance, wf: &Workflow) -> WorkflowInstanceStatus {
    let name = run.name_any();
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now());
    let mut status = WorkflowInstanceStatus {
        phase: Some(RunPhase::Succeeded),
        dag_phase: Some(RunPhase::Succeeded),
        observed_generation: run.metadata.generation,
        owner: Some(baton::api::Owner { controller: "gone".into(), lease: "gone".into(), epoch: 1, since: now.clone() }),
        started_at: Some(now.clone()),
        finished_at: Some(now.clone()),
        progress: Some("1/1".into()),
        tasks: vec![TaskStatus {
            name: "only".into(),
            phase: TaskPhase::Succeeded,
            attempts: 1,
            pod_name: Some(format!("{name}-only-0")),
            started_at: Some(now.clone()),
            finished_at: Some(now.clone()),
            exit_code: Some(0),
            ..Default::default()
        }],
        workflow_spec: Some(wf.spec.clone()),
        ..Default::default()
    };
    for (type_, reason) in [("Valid", "WorkflowValid"), (baton::api::CONDITION_CLEANED_UP, "NothingRunning")] {
        baton::conditions::set(
            &mut status.conditions,
            type_,
            true,
            reason,
            "made by the scale bench".into(),
            run.metadata.generation,
            now.clone(),
        );
    }
    status
}

/// The run's Succeeded task pod, never scheduled (no scheduler answers to
/// its schedulerName) so nothing else touches it.
fn pod(run: &WorkflowInstance) -> Pod {
    let name = run.name_any();
    let mut pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {
            "name": format!("{name}-only-0"),
            "labels": {LABEL_INSTANCE: name, LABEL_TASK: "only", LABEL_ATTEMPT: "0"},
        },
        "spec": {
            "schedulerName": "baton-scale-bench-none",
            "restartPolicy": "Never",
            "containers": [{"name": "main", "image": "busybox", "command": ["sh", "-c", "echo done > /dev/termination-log"]}],
        },
    }))
    .expect("pod");
    pod.metadata.owner_references = Some(vec![run.controller_owner_ref(&()).expect("run has a uid")]);
    pod
}

fn succeeded(mut pod: Pod) -> Pod {
    pod.status = Some(
        serde_json::from_value(serde_json::json!({
            "phase": "Succeeded",
            "containerStatuses": [{
                "name": "main", "image": "busybox", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 0, "reason": "Completed", "message": "done"}},
            }],
        }))
        .expect("pod status"),
    );
    pod
}

/// `VmRSS` and `VmHWM` of a process, in MiB.
fn memory(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status.lines().find_map(|l| l.strip_prefix(name)?.trim().strip_suffix("kB")?.trim().parse::<f64>().ok()).unwrap_or(0.0) / 1024.0
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[tokio::main]
async fn main() {
    if !support::run_as_bench("scale", "bench-scale") {
        return;
    }
    let n: usize = std::env::var("BENCH_FINISHED").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let ns = support::TestNs::new("scale").await;
    // The pods are made here, not by a controller: the local control
    // plane's admission webhook (served by controllers) leaves them be.
    ns.kubectl(&["label", "namespace", &ns.name, "e2e.baton.dev/webhook=chart"], None);
    ns.apply(WORKFLOW);
    let wf: Workflow = ns.api::<Workflow>().get("scale").await.expect("workflow");
    let (runs, pods): (Api<WorkflowInstance>, Api<Pod>) = (ns.api(), ns.api());
    let start = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let (runs, pods, wf) = (runs.clone(), pods.clone(), wf.clone());
            async move {
                let run = WorkflowInstance::new(
                    &format!("done-{i}"),
                    WorkflowInstanceSpec { workflow_ref: WorkflowRef { name: "scale".into() }, ..Default::default() },
                );
                let mut run = runs.create(&PostParams::default(), &run).await?;
                run.status = Some(finished(&run, &wf));
                runs.replace_status(&run.name_any(), &PostParams::default(), &run).await?;
                let created = pods.create(&PostParams::default(), &pod(&run)).await?;
                pods.replace_status(&created.name_any(), &PostParams::default(), &succeeded(created)).await.map(|_| ())
            }
        })
        .buffer_unordered(48)
        .try_collect::<Vec<_>>()
        .await
        .expect("every create accepted");
    println!("made {n} finished runs and their pods in {:.1} s", start.elapsed().as_secs_f64());

    let started = Instant::now();
    let controller = ns.controller("c0");
    let addr = controller.metrics_addr().await;
    let ready = support::wait_for("the controller to be ready", Duration::from_secs(120), || async {
        let (code, body) = support::http(addr, "GET", "/readyz", "");
        if code == 200 { Ok(started.elapsed()) } else { Err(body) }
    })
    .await;
    // Every run is reconciled once after the listing; let that finish.
    support::wait_for("every run looked at", Duration::from_secs(120), || async {
        let done = support::metric(addr, "baton_reconciles_total");
        if done >= n as f64 { Ok(()) } else { Err(format!("{done} reconciles")) }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss, peak) = memory(controller.pid_number());
    let requests = support::requests(addr);
    println!("controller start to ready:   {:.2} s", ready.as_secs_f64());
    println!("resident memory:             {rss:.1} MiB (peak {peak:.1} MiB) with {n} finished runs and {n} pods cached");
    println!("API requests since start:    {}", requests.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", "));
    ns.done().await;
}
