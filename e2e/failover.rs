//! Several controllers: ownership in status, failover, handoff, fencing,
//! and requests that follow the owner.

use std::time::{Duration, Instant};

use baton::api::{OwnerChangeReason, RunPhase, WorkflowInstance};
use k8s_openapi::api::coordination::v1::Lease;
use kube::ResourceExt;
use kube::api::Api;

use crate::runs::{patch_spec, pods_of, run, task, wait_phase, workflow};
use crate::support::{ControllerProc, LEASE_DURATION, TestNs, wait_for};

fn chain(name: &str) -> String {
    workflow(name, "", &[task("one", &[], "3s", 0, ""), task("two", &["one"], "3s", 0, ""), task("three", &["two"], "3s", 0, "")])
}

fn owner(run: &WorkflowInstance) -> Option<(String, i64)> {
    run.status.as_ref()?.owner.as_ref().map(|o| (o.controller.clone(), o.epoch))
}

/// Waits until the run has a live owner among `controllers` and returns its index.
async fn owner_index(ns: &TestNs, name: &str, controllers: &[&ControllerProc]) -> usize {
    let api: Api<WorkflowInstance> = ns.api();
    wait_for(&format!("run {name} to be owned"), Duration::from_secs(30), || async {
        let r = api.get(name).await.map_err(|e| e.to_string())?;
        let (who, _) = owner(&r).ok_or("no owner")?;
        controllers.iter().position(|c| c.identity == who).ok_or(format!("owner {who}"))
    })
    .await
}

/// Waits until `who` owns run `name`; returns the run and its epoch.
async fn wait_owner(ns: &TestNs, name: &str, who: &str, timeout: Duration) -> (WorkflowInstance, i64) {
    let api: Api<WorkflowInstance> = ns.api();
    wait_for(&format!("{who} to own run {name}"), timeout, || async {
        let r = api.get(name).await.map_err(|e| e.to_string())?;
        match owner(&r) {
            Some((w, epoch)) if w == who => Ok((r, epoch)),
            o => Err(format!("{o:?}")),
        }
    })
    .await
}

/// Every pod of the run carries the epoch that created it; checks no
/// (task, attempt) appears twice and returns the epochs seen.
async fn pod_epochs(ns: &TestNs, name: &str) -> Vec<(String, i64)> {
    let pods = pods_of(ns, name).await;
    let mut keys: Vec<String> =
        pods.iter().map(|p| format!("{}/{}", p.labels()["baton.dev/task"], p.labels()["baton.dev/attempt"])).collect();
    keys.sort();
    let before = keys.len();
    keys.dedup();
    assert_eq!(before, keys.len(), "at most one pod per (task, attempt)");
    pods.iter().map(|p| (p.name_any(), p.annotations()["baton.dev/owner-epoch"].parse().unwrap())).collect()
}

#[tokio::test]
async fn killed_owner_fails_over_and_the_run_finishes_without_duplicates() {
    let ns = TestNs::new("failover").await;
    let mut c = [ns.controller("alpha"), ns.controller("beta")];
    ns.apply(&chain("chain"));
    ns.apply(&run("r1", "chain", ""));
    wait_for("first task to run", Duration::from_secs(30), || async {
        let pods = pods_of(&ns, "r1").await;
        if pods.is_empty() { Err("no pod yet".to_string()) } else { Ok(()) }
    })
    .await;
    let i = owner_index(&ns, "r1", &[&c[0], &c[1]]).await;
    let (old, survivor) = (c[i].identity.clone(), c[1 - i].identity.clone());
    c[i].kill();
    let killed_at = Instant::now();
    let moved = wait_owner(&ns, "r1", &survivor, Duration::from_secs(30)).await;
    let takeover = killed_at.elapsed();
    println!("takeover after kill -9: {takeover:?} (lease duration {LEASE_DURATION:?})");
    let (r, epoch) = moved;
    assert_eq!(epoch, 2);
    let history = &r.status.as_ref().unwrap().owner_history;
    let last = history.last().unwrap();
    assert_eq!((last.controller.as_str(), last.reason), (survivor.as_str(), OwnerChangeReason::Failover));
    assert!(history.iter().any(|h| h.controller == old && h.reason == OwnerChangeReason::Created));
    let done = wait_phase(&ns, "r1", |p| p.is_terminal()).await;
    assert_eq!(done.status.as_ref().unwrap().phase, Some(RunPhase::Succeeded));
    let epochs = pod_epochs(&ns, "r1").await;
    assert_eq!(epochs.len(), 3, "{epochs:?}");
    assert!(epochs.iter().any(|(_, e)| *e == 2), "the new owner created the later pods: {epochs:?}");

    // The killed controller comes back under the same identity and works.
    c[i].restart();
    ns.apply(&run("r2", "chain", ""));
    let second = wait_phase(&ns, "r2", |p| p.is_terminal()).await;
    assert_eq!(second.status.as_ref().unwrap().phase, Some(RunPhase::Succeeded));
    c.iter().for_each(ControllerProc::assert_no_panic);
    ns.done().await;
}

#[tokio::test]
async fn request_made_while_the_owner_is_dead_is_applied_by_the_next_owner() {
    let ns = TestNs::new("deadreq").await;
    let mut c = [ns.controller("alpha"), ns.controller("beta")];
    ns.apply(&chain("chain"));
    ns.apply(&run("r1", "chain", ""));
    wait_phase(&ns, "r1", |p| p == RunPhase::Running).await;
    let i = owner_index(&ns, "r1", &[&c[0], &c[1]]).await;
    c[i].kill();
    patch_spec(&ns, "r1", serde_json::json!({"suspend": true})).await;
    let paused = wait_phase(&ns, "r1", |p| p == RunPhase::Paused).await;
    assert_eq!(owner(&paused).unwrap().0, c[1 - i].identity, "applied by the new owner");
    assert_eq!(paused.status.as_ref().unwrap().observed_generation, paused.metadata.generation);
    patch_spec(&ns, "r1", serde_json::json!({"suspend": false})).await;
    let done = wait_phase(&ns, "r1", |p| p.is_terminal()).await;
    assert_eq!(done.status.as_ref().unwrap().phase, Some(RunPhase::Succeeded));
    ns.done().await;
}

#[tokio::test]
async fn sigterm_hands_runs_over_at_once_and_deletes_the_lease() {
    let ns = TestNs::new("handoff").await;
    let mut c = [ns.controller("alpha"), ns.controller("beta")];
    ns.apply(&chain("chain"));
    ns.apply(&run("r1", "chain", ""));
    wait_phase(&ns, "r1", |p| p == RunPhase::Running).await;
    let i = owner_index(&ns, "r1", &[&c[0], &c[1]]).await;
    let survivor = c[1 - i].identity.clone();
    let start = Instant::now();
    c[i].stop();
    let api: Api<WorkflowInstance> = ns.api();
    wait_owner(&ns, "r1", &survivor, Duration::from_secs(30)).await;
    let took = start.elapsed();
    println!("takeover after SIGTERM: {took:?}");
    assert!(took < LEASE_DURATION, "handoff does not wait for the lease to expire ({took:?})");
    let r = api.get("r1").await.unwrap();
    assert_eq!(r.status.as_ref().unwrap().owner_history.last().unwrap().reason, OwnerChangeReason::Handoff);
    let leases: Api<Lease> = ns.api();
    assert!(leases.get_opt(&c[i].identity).await.unwrap().is_none(), "the stopped controller deleted its Lease");
    let done = wait_phase(&ns, "r1", |p| p.is_terminal()).await;
    assert_eq!(done.status.as_ref().unwrap().phase, Some(RunPhase::Succeeded));
    ns.done().await;
}

/// A clean stop hands over every run that still needs an owner, finished
/// ones waiting for their TTL included: none is left to be claimed once
/// the stopped controller's Lease is gone (a Failover).
#[tokio::test]
async fn sigterm_hands_over_finished_runs_that_still_need_an_owner() {
    let ns = TestNs::new("handoff-kept").await;
    let mut c = [ns.controller("alpha"), ns.controller("beta")];
    ns.apply(&workflow("kept", "  ttlSecondsAfterFinished: 3600\n", &[task("a", &[], "300ms", 0, "")]));
    let names: Vec<String> = (0..6).map(|i| format!("k{i}")).collect();
    for n in &names {
        ns.apply(&run(n, "kept", ""));
    }
    for n in &names {
        wait_phase(&ns, n, |p| p == RunPhase::Succeeded).await;
    }
    let i = owner_index(&ns, "k0", &[&c[0], &c[1]]).await;
    let (leaving, survivor) = (c[i].identity.clone(), c[1 - i].identity.clone());
    let api: Api<WorkflowInstance> = ns.api();
    let mut theirs = vec![];
    for n in &names {
        if owner(&api.get(n).await.unwrap()).is_some_and(|(who, _)| who == leaving) {
            theirs.push(n.clone());
        }
    }
    c[i].stop();
    for n in &theirs {
        let (r, _) = wait_owner(&ns, n, &survivor, Duration::from_secs(30)).await;
        let history = &r.status.as_ref().unwrap().owner_history;
        assert_eq!(history.last().unwrap().reason, OwnerChangeReason::Handoff, "{n} was released by {leaving}: {history:?}");
    }
    ns.done().await;
}

#[tokio::test]
async fn frozen_owner_is_fenced_out_after_it_thaws() {
    let ns = TestNs::new("freeze").await;
    let c = [ns.controller("alpha"), ns.controller("beta")];
    ns.apply(&chain("chain"));
    ns.apply(&run("r1", "chain", ""));
    wait_phase(&ns, "r1", |p| p == RunPhase::Running).await;
    let i = owner_index(&ns, "r1", &[&c[0], &c[1]]).await;
    c[i].freeze();
    let (_, epoch) = wait_owner(&ns, "r1", &c[1 - i].identity, Duration::from_secs(30)).await;
    assert_eq!(epoch, 2);
    c[i].thaw();
    let done = wait_phase(&ns, "r1", |p| p.is_terminal()).await;
    assert_eq!(done.status.as_ref().unwrap().phase, Some(RunPhase::Succeeded));
    // The thawed controller may get the run back, but only by handoff from
    // the live owner, with a new epoch; never by a stale write of epoch 1.
    let history = &done.status.as_ref().unwrap().owner_history;
    let epochs: Vec<i64> = history.iter().map(|h| h.epoch).collect();
    assert!(epochs.windows(2).all(|w| w[1] == w[0] + 1), "one owner per epoch, never going down: {history:?}");
    assert_eq!((history[1].controller.as_str(), history[1].reason), (c[1 - i].identity.as_str(), OwnerChangeReason::Failover));
    assert!(history[2..].iter().all(|h| h.reason == OwnerChangeReason::Handoff), "{history:?}");
    for (pod, epoch) in pod_epochs(&ns, "r1").await {
        assert!(epoch >= 1 && epoch <= *epochs.last().unwrap(), "{pod} created at epoch {epoch}");
    }
    ns.done().await;
}

#[tokio::test]
async fn a_joining_controller_receives_runs_by_handoff() {
    let ns = TestNs::new("join").await;
    let first = ns.controller("alpha");
    ns.apply(&workflow("slow", "", &[task("one", &[], "20s", 0, "")]));
    let names: Vec<String> = (0..6).map(|i| format!("r{i}")).collect();
    for n in &names {
        ns.apply(&run(n, "slow", ""));
    }
    for n in &names {
        wait_phase(&ns, n, |p| p == RunPhase::Running).await;
    }
    let second = ns.controller("beta");
    let api: Api<WorkflowInstance> = ns.api();
    let moved = wait_for("some runs to move to the new controller", Duration::from_secs(30), || async {
        let runs = api.list(&Default::default()).await.map_err(|e| e.to_string())?;
        let on_beta: Vec<_> = runs.items.iter().filter(|r| owner(r).is_some_and(|(w, _)| w == second.identity)).collect();
        if on_beta.is_empty() { Err("none yet".into()) } else { Ok(on_beta.iter().map(|r| (*r).clone()).collect::<Vec<_>>()) }
    })
    .await;
    for r in &moved {
        let last = r.status.as_ref().unwrap().owner_history.last().unwrap();
        assert_eq!(last.reason, OwnerChangeReason::Handoff, "{}", r.name_any());
    }
    for n in &names {
        let done = wait_phase(&ns, n, |p| p.is_terminal()).await;
        assert_eq!(done.status.as_ref().unwrap().phase, Some(RunPhase::Succeeded));
        pod_epochs(&ns, n).await;
    }
    drop(first);
    ns.done().await;
}

#[tokio::test]
async fn runs_spread_over_three_and_rebalance_when_scaling_to_four_and_back() {
    let ns = TestNs::new("scale").await;
    let three = [ns.controller("c0"), ns.controller("c1"), ns.controller("c2")];
    ns.apply(&workflow("slow", "", &[task("one", &[], "15s", 0, ""), task("two", &["one"], "1s", 0, "")]));
    let names: Vec<String> = (0..24).map(|i| format!("r{i}")).collect();
    for n in &names {
        ns.apply(&run(n, "slow", ""));
    }
    let api: Api<WorkflowInstance> = ns.api();
    let owners = |runs: &[WorkflowInstance]| runs.iter().filter_map(owner).map(|(w, _)| w).collect::<Vec<_>>();
    let spread = wait_for("every run to be owned and running", Duration::from_secs(60), || async {
        let runs = api.list(&Default::default()).await.map_err(|e| e.to_string())?.items;
        let running = runs.iter().filter(|r| r.status.as_ref().and_then(|s| s.phase) == Some(RunPhase::Running)).count();
        if running == names.len() { Ok(owners(&runs)) } else { Err(format!("{running} running")) }
    })
    .await;
    assert!(spread.iter().all(|o| three.iter().any(|c| &c.identity == o)), "owners are live members: {spread:?}");
    let distinct: std::collections::BTreeSet<&String> = spread.iter().collect();
    assert!(distinct.len() >= 2, "runs spread over the controllers: {spread:?}");

    let mut fourth = ns.controller("c3");
    wait_for("runs to move to the fourth controller", Duration::from_secs(30), || async {
        let runs = api.list(&Default::default()).await.map_err(|e| e.to_string())?.items;
        let moved = runs.iter().filter(|r| owner(r).is_some_and(|(w, _)| w == "c3")).count();
        if moved > 0 { Ok(()) } else { Err("none yet".to_string()) }
    })
    .await;
    let start = Instant::now();
    fourth.stop();
    wait_for("the fourth controller's runs to be taken back", Duration::from_secs(30), || async {
        let runs = api.list(&Default::default()).await.map_err(|e| e.to_string())?.items;
        let left = runs
            .iter()
            .filter(|r| !r.status.as_ref().and_then(|s| s.phase).is_some_and(RunPhase::is_terminal))
            .filter(|r| owner(r).is_none_or(|(w, _)| !three.iter().any(|c| c.identity == w)))
            .count();
        if left == 0 { Ok(()) } else { Err(format!("{left} runs not on c0..c2")) }
    })
    .await;
    println!(
        "scale 4 -> 3 with SIGTERM: every run back on a live controller {:?} after SIGTERM (includes the process exit)",
        start.elapsed()
    );
    for n in &names {
        let done = wait_phase(&ns, n, |p| p.is_terminal()).await;
        assert_eq!(done.status.as_ref().unwrap().phase, Some(RunPhase::Succeeded), "{n}");
        pod_epochs(&ns, n).await;
    }
    three.iter().for_each(ControllerProc::assert_no_panic);
    ns.done().await;
}

/// Takeover time after kill -9, for the lease duration in
/// `BATON_TAKEOVER_LEASE` (default 5s); prints the figure.
#[tokio::test]
async fn takeover_after_kill_is_bounded_by_the_lease() {
    let lease = std::env::var("BATON_TAKEOVER_LEASE").unwrap_or_else(|_| "5s".into());
    let ns = TestNs::new("takeover").await;
    let flags = ["--lease-duration", lease.as_str(), "--renew-interval", "500ms"];
    let mut c = [ControllerProc::start("alpha", &ns.name, &flags), ControllerProc::start("beta", &ns.name, &flags)];
    ns.apply(&workflow("long", "", &[task("one", &[], "60s", 0, "")]));
    ns.apply(&run("r1", "long", ""));
    wait_phase(&ns, "r1", |p| p == RunPhase::Running).await;
    let i = owner_index(&ns, "r1", &[&c[0], &c[1]]).await;
    let survivor = c[1 - i].identity.clone();
    c[i].kill();
    let start = Instant::now();
    wait_owner(&ns, "r1", &survivor, Duration::from_secs(60)).await;
    let took = start.elapsed();
    let limit = humantime::parse_duration(&lease).unwrap();
    println!(
        "takeover after kill -9 with lease {lease}, renew 500ms: {took:?} (bound: lease + 2 x renew = {:?})",
        limit + Duration::from_secs(1)
    );
    assert!(took < limit * 2, "takeover took {took:?}");
    ns.done().await;
}

#[tokio::test]
async fn a_quiet_lease_watch_never_makes_a_controller_take_its_live_peers_runs() {
    let ns = TestNs::new("quiet-watch").await;
    let c = [ns.controller("alpha"), ns.controller("beta")];
    ns.apply(&workflow("slow", "", &[task("t", &[], "40s", 0, "")]));
    let names: Vec<String> = (0..8).map(|i| format!("q{i}")).collect();
    for name in &names {
        ns.apply(&run(name, "slow", ""));
    }
    let api: Api<WorkflowInstance> = ns.api();
    let owners = || async {
        let mut owners = Vec::new();
        for name in &names {
            let r = api.get(name).await.unwrap();
            owners.push((name.clone(), owner(&r)));
        }
        owners
    };
    let before = wait_for("every run to be owned", Duration::from_secs(30), || async {
        let o = owners().await;
        if o.iter().all(|(_, w)| w.is_some()) { Ok(o) } else { Err(format!("{o:?}")) }
    })
    .await;
    assert!(before.iter().any(|(_, w)| w.as_ref().unwrap().0 == "beta"), "beta owns some runs: {before:?}");
    // alpha's watch on the controller Leases goes quiet (as after an API
    // server restart, while the watch backs off); its renewals go on.
    c[0].failpoint("lease-watch", "pause").await;
    c[0].wait_log(&["failpoint hit", "lease-watch"], Duration::from_secs(10)).await;
    tokio::time::sleep(LEASE_DURATION * 3).await;
    let during = owners().await;
    c[0].failpoint("lease-watch", "off").await;
    assert_eq!(before, during, "a controller whose watch went quiet took runs from a live peer");
    for name in &names {
        let history = api.get(name).await.unwrap().status.unwrap().owner_history;
        assert!(history.iter().all(|h| h.reason != OwnerChangeReason::Failover), "{name}: {history:?}");
    }
    ns.done().await;
}

/// Watch errors (every watch gets them while the API server restarts) never
/// hold up the controller's work. kube's Controller backs off all its
/// triggers when errors reach them back to back, 0.8 s doubling to 30 s,
/// and in CI's chaos runs new runs waited up to a minute for an owner. Here
/// five errors in a row follow each change of a run (failpoint
/// `run-watch-error`, past the watch's own pacing, as when every watch
/// fails at once); each new run is still claimed within seconds.
#[tokio::test]
async fn watch_errors_never_hold_up_new_runs() {
    let ns = TestNs::new("watcherr").await;
    let c = ControllerProc::start_with_failpoints("c0", &ns.name, &[], "run-watch-error=return");
    ns.apply(&workflow("one", "", &[task("only", &[], "1h", 0, "")]));
    for i in 0..8 {
        let name = format!("one-{i}");
        ns.apply(&run(&name, "one", ""));
        wait_owner(&ns, &name, "c0", Duration::from_secs(8)).await;
    }
    let failed = c.log_since_start().matches("watch failed; it resumes").count();
    assert!(failed >= 8 * 5, "the failpoint failed the run watch {failed} times");
    c.assert_no_panic();
    ns.done().await;
}

/// A controller that takes a run over must not trust watches that are
/// behind: here the new owner's pod watch shows nothing (failpoint
/// `pod-watch-lag`) while the run it claims is being terminated. It lists
/// the run's pods when it claims, so the running pod is deleted, not left
/// running under a run that says it is cleaned up (review of the cache).
#[tokio::test]
async fn a_new_owner_whose_pod_watch_is_behind_still_deletes_the_pods_of_a_run_it_terminates() {
    let ns = TestNs::new("lagging").await;
    let mut alpha = ns.controller("alpha");
    let beta = ControllerProc::start_with_failpoints("beta", &ns.name, &[], "pod-watch-lag=return");
    ns.apply(&workflow("long", "", &[task("sleep", &[], "1h", 0, "")]));
    // A run alpha owns, whose pod beta has never seen.
    let mut mine = None;
    for i in 0..12 {
        let name = format!("long-{i}");
        ns.apply(&run(&name, "long", ""));
        if owner_index(&ns, &name, &[&alpha, &beta]).await == 0 {
            mine = Some(name);
            break;
        }
    }
    let name = mine.expect("one of 12 runs hashed to alpha");
    let pod = wait_for("alpha's run to have its pod running", Duration::from_secs(30), || async {
        let pods = pods_of(&ns, &name).await;
        let running = pods.iter().find(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"));
        running.map(|p| p.name_any()).ok_or(format!("{} pods", pods.len()))
    })
    .await;
    alpha.freeze();
    patch_spec(&ns, &name, serde_json::json!({"shutdown": "Terminate"})).await;
    wait_owner(&ns, &name, "beta", LEASE_DURATION * 4).await;
    wait_phase(&ns, &name, |p| p == RunPhase::Stopped).await;
    let pods: Api<k8s_openapi::api::core::v1::Pod> = ns.api();
    wait_for(&format!("pod {pod} to be deleted"), Duration::from_secs(20), || async {
        match pods.get_opt(&pod).await.map_err(|e| e.to_string())? {
            Some(p) if p.metadata.deletion_timestamp.is_none() => Err(format!("still {:?}", p.status.and_then(|s| s.phase))),
            _ => Ok(()),
        }
    })
    .await;
    alpha.thaw();
    alpha.kill();
    beta.assert_no_panic();
    ns.done().await;
}
