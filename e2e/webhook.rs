//! API-server-enforced fencing. An owner frozen between its fenced status
//! write and its create call (a failpoint holds it exactly there) loses the
//! run while it sleeps: its Lease expires, the other controller claims the
//! run (epoch + 1) and stops it as the user asked. When the frozen owner
//! wakes up, its create still goes out, carrying the old epoch; the
//! admission webhook refuses it, and no object of the stale epoch ever
//! exists. Once for a task pod, once for a child run.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton::api::{RunPhase, WorkflowInstance};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};

use crate::runs::{patch_spec, run, task, workflow};
use crate::support::{ControllerProc, LEASE_DURATION, TestNs, any_controller_log, wait_for};

/// Every object matching `selector` that ever appears in the namespace,
/// by name, with its `baton.dev/owner-epoch`.
type Seen = Arc<Mutex<BTreeMap<String, String>>>;

fn watch<K>(api: Api<K>, selector: &str) -> (Seen, tokio::task::JoinHandle<()>)
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    let seen: Seen = Arc::default();
    let into = seen.clone();
    let stream = watcher(api, watcher::Config::default().labels(selector)).applied_objects();
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(object) = stream.next().await {
            if let Ok(o) = object {
                let epoch = o.annotations().get("baton.dev/owner-epoch").cloned().unwrap_or_default();
                into.lock().unwrap().insert(o.name_any(), epoch);
            }
        }
    });
    (seen, task)
}

/// What differs between the two stories.
struct Story {
    test: &'static str,
    /// The workflow of the run; its one task makes what `failpoint` guards.
    workflow: &'static str,
    failpoint: &'static str,
    /// Whether it makes a pod (else a child run).
    watch_pods: bool,
}

async fn frozen_owner_cannot_create_after_losing_its_run(story: Story) {
    let ns = TestNs::new(story.test).await;
    ns.apply(&workflow("slow", "", &[task("only", &[], "30s", 0, "")]));
    ns.apply("apiVersion: baton.dev/v1alpha1\nkind: Workflow\nmetadata: {name: nested}\nspec:\n  tasks:\n    - {name: sub, workflowRef: {name: slow}}\n");
    let controllers = [ns.controller("alpha"), ns.controller("beta")];
    // Both pause at the create: whichever becomes the owner stops there,
    // right after the fenced write that recorded its intent.
    for c in &controllers {
        c.failpoint(story.failpoint, "pause").await;
    }
    let selector = if story.watch_pods { "baton.dev/instance=r1" } else { "baton.dev/parent=r1" };
    let (seen, watcher) = if story.watch_pods { watch(ns.api::<Pod>(), selector) } else { watch(ns.api::<WorkflowInstance>(), selector) };

    ns.apply(&run("r1", story.workflow, ""));
    let hit = wait_for("the owner to reach the failpoint", Duration::from_secs(60), || async {
        controllers
            .iter()
            .position(|c| c.log_since_start().lines().any(|l| l.contains("failpoint hit") && l.contains(story.failpoint)))
            .ok_or_else(|| "no failpoint hit yet".to_string())
    })
    .await;
    let (owner, other): (&ControllerProc, &ControllerProc) = (&controllers[hit], &controllers[1 - hit]);
    other.failpoint(story.failpoint, "off").await;
    let runs: Api<WorkflowInstance> = ns.api();
    let before = runs.get("r1").await.unwrap();
    let status = before.status.clone().unwrap();
    let held = status.owner.clone().expect("an owner");
    assert_eq!(held.controller, owner.identity, "the controller paused at the create owns the run");
    let intent = status.tasks.iter().find(|t| t.name == "only" || t.name == "sub").expect("the task's status");
    assert_eq!(intent.attempts, 1, "the intent to start attempt 0 was written before the create: {intent:?}");

    // The owner freezes (SIGSTOP) with its create in hand; the user stops
    // the run; the other controller takes over once the Lease expires.
    owner.freeze();
    patch_spec(&ns, "r1", serde_json::json!({"shutdown": "Stop"})).await;
    let stopped = wait_for("the other controller to claim and stop the run", LEASE_DURATION * 6, || async {
        let r = runs.get("r1").await.map_err(|e| e.to_string())?;
        let s = r.status.clone().unwrap_or_default();
        let now = s.owner.as_ref().map(|o| (o.controller.clone(), o.epoch));
        if now == Some((other.identity.clone(), held.epoch + 1)) && s.phase == Some(RunPhase::Stopped) {
            Ok(r)
        } else {
            Err(format!("owner {now:?}, phase {:?}", s.phase))
        }
    })
    .await;

    // The owner wakes up and its paused create goes to the API server.
    owner.thaw();
    owner.failpoint(story.failpoint, "off").await;
    owner.wait_log(&["failpoint passed", story.failpoint], Duration::from_secs(30)).await;
    let stale = format!("created at owner epoch {}, but run r1 is at epoch {}", held.epoch, held.epoch + 1);
    let denial = wait_for("the webhook's verdict on the stale create", Duration::from_secs(30), || async {
        if let Some((name, epoch)) = seen.lock().unwrap().iter().next() {
            return Ok(Err(format!("{name} (owner epoch {epoch})")));
        }
        // The stale owner was told why, and the webhook logged the denial.
        let told = owner.log_since_start().lines().any(|l| l.contains("denied the request") && l.contains(&stale));
        let logged = any_controller_log(&["admission denied", &ns.name, "run=r1", &stale]);
        match (told, logged) {
            (true, Some(line)) => Ok(Ok(line)),
            (told, logged) => Err(format!("owner told: {told}, webhook log: {logged:?}")),
        }
    })
    .await;
    denial.unwrap_or_else(|object| panic!("a create of the stale owner got through: {object} exists"));

    // Nothing of the stale epoch, nor anything else, was ever created, and
    // the run stays stopped with its new owner.
    tokio::time::sleep(Duration::from_secs(3)).await;
    watcher.abort();
    let seen = seen.lock().unwrap().clone();
    assert!(seen.is_empty(), "no {selector} object should exist after the stop: {seen:?}");
    let after = runs.get("r1").await.unwrap().status.unwrap();
    assert_eq!(after.phase, Some(RunPhase::Stopped));
    assert_eq!(after.owner.map(|o| (o.controller, o.epoch)), Some((other.identity.clone(), held.epoch + 1)));
    assert_eq!(stopped.status.unwrap().owner_history.last().map(|h| h.epoch), Some(held.epoch + 1));
    for c in &controllers {
        c.assert_no_panic();
    }
    ns.done().await;
}

#[tokio::test]
async fn frozen_owner_cannot_create_a_pod_after_losing_its_run() {
    frozen_owner_cannot_create_after_losing_its_run(Story {
        test: "fence-pod",
        workflow: "slow",
        failpoint: "run-create-pod",
        watch_pods: true,
    })
    .await;
}

#[tokio::test]
async fn frozen_owner_cannot_create_a_child_run_after_losing_its_run() {
    frozen_owner_cannot_create_after_losing_its_run(Story {
        test: "fence-child",
        workflow: "nested",
        failpoint: "run-create-child",
        watch_pods: false,
    })
    .await;
}
