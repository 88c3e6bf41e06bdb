//! The failover chaos suite (issues 7 and 11): three real controllers run a
//! mix of workflows while a seeded random generator kills, freezes and
//! stops them, restarts the API server or keeps it down past the lease, and
//! plays the user: patches runs and child runs, deletes runs and creates
//! them again under the same name, starts runs whose pod names collide,
//! while two fast schedules (Replace, Forbid) tick. A watch records every
//! pod and run, and at the end the invariants are checked and a summary
//! table printed. Exits non-zero, naming the runs and objects, when an
//! invariant breaks.
//!
//!   CHAOS_DURATION  how long faults, requests and moves go on (default 90s; `make chaos`: 10m)
//!   CHAOS_SEED      replay a run: the seed it printed
//!   CHAOS_RUNS      top-level runs to start (default: one per 3s of duration, at least 20)
//!
//! A plain `main` (harness = false): `cargo test -- <filter>` runs it only
//! when the filter matches "chaos".

#[allow(dead_code)]
#[path = "../support.rs"]
mod support;

#[allow(unused)]
#[path = "../runs.rs"]
mod runs;

mod faults;
mod journal;
mod moves;
mod report;
mod requests;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use baton::api::{Workflow, WorkflowInstance};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, ListParams};

use crate::journal::Journal;
use crate::runs::{task, workflow};
use crate::support::{ControllerProc, TestNs};

pub struct Config {
    pub seed: u64,
    pub duration: Duration,
    pub runs: usize,
}

impl Config {
    fn from_env() -> Config {
        let seed = std::env::var("CHAOS_SEED").ok().map(|s| s.parse().expect("CHAOS_SEED is a number")).unwrap_or_else(|| {
            let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
            (t.as_secs() * 1_000_003) ^ u64::from(t.subsec_nanos())
        });
        let duration = std::env::var("CHAOS_DURATION")
            .ok()
            .map(|d| humantime::parse_duration(&d).expect("CHAOS_DURATION like 90s or 5m"))
            .unwrap_or(Duration::from_secs(90));
        let runs = std::env::var("CHAOS_RUNS")
            .ok()
            .map(|n| n.parse().expect("CHAOS_RUNS is a number"))
            .unwrap_or((duration.as_secs() / 3).max(20) as usize);
        Config { seed, duration, runs }
    }
}

/// How long the runs get, after the faults stop, to finish.
const DRAIN: Duration = Duration::from_secs(180);
/// The drain ends early when no unfinished run nor any of its pods changed
/// for this long and none of those pods is left for the cluster to
/// schedule, start or finish: a run that hangs is reported without waiting
/// out [`DRAIN`]. A run whose pod has not finished waits on the cluster, not
/// on baton: after an API server restart kube-scheduler's pod informer can
/// be away for a minute and more (client-go retries the watch, gets 410
/// Gone, then re-lists, each after a backoff of up to 30 s that jitter can
/// double), and the pods made meanwhile stay Pending (a replay of seed
/// 1795336493478530: 76 s from create to bind, the drain gave up after 45).
const QUIET: Duration = Duration::from_secs(45);

/// A run with one sub-workflow task whose child gets the suite's requests.
pub const FAMILY: &str = "family";
/// Run `x<n>` of `coll-a` (task `web-test`) and run `x<n>-web` of `coll-b`
/// (task `test`) both want pod `x<n>-web-test-0`.
pub const COLLIDE_A: &str = "coll-a";
pub const COLLIDE_B: &str = "coll-b";
/// The scheduled workflows: every 5 s, two 2 s tasks in a row, so a tick
/// often comes while the previous run still goes.
pub const SCHEDULED: [(&str, &str); 2] = [("replace", "Replace"), ("forbid", "Forbid")];
const CRON: &str = "*/5 * * * * *";

/// The workflows: a wide DAG, a deep chain, one with two sub-workflows, one
/// whose middle task fails and is retried, a fan-out with exit tasks, a
/// family whose child is slow enough to take requests, two whose pod names
/// collide, and the two scheduled ones.
fn workflows() -> Vec<String> {
    let wide: Vec<String> = std::iter::once(task("root", &[], "1s", 0, ""))
        .chain((1..=6).map(|i| task(&format!("w{i}"), &["root"], if i % 2 == 0 { "2s" } else { "1s" }, 0, "")))
        .chain(std::iter::once(task("join", &["w1", "w2", "w3", "w4", "w5", "w6"], "1s", 0, "")))
        .collect();
    let chain: Vec<String> = (1..=6)
        .map(|i| {
            let dep = format!("c{}", i - 1);
            let deps: Vec<&str> = if i == 1 { vec![] } else { vec![dep.as_str()] };
            task(&format!("c{i}"), &deps, "1s", 0, "")
        })
        .collect();
    let sub = |name: &str, target: &str| {
        format!(
            "    - name: {name}\n      dependsOn: [prep]\n      workflowRef: {{name: {target}, params: {{date: \"{{{{params.date}}}}\"}}}}\n"
        )
    };
    let nested = vec![
        task("prep", &[], "1s", 0, ""),
        sub("sub-a", "inner"),
        sub("sub-b", "inner"),
        task("finish", &["sub-a", "sub-b"], "1s", 0, ""),
    ];
    let inner = vec![task("a", &[], "1s", 0, ""), task("b", &["a"], "2s", 0, "")];
    let retries = "      retries: {limit: 1, backoffSeconds: 1}\n";
    let flaky = vec![task("step", &[], "1s", 0, ""), task("bad", &["step"], "1s", 3, retries), task("after", &["bad"], "1s", 0, "")];
    let family = vec![task("prep", &[], "1s", 0, ""), sub("sub", "slow-inner"), task("finish", &["sub"], "1s", 0, "")];
    let slow_inner = vec![task("s1", &[], "3s", 0, ""), task("s2", &["s1"], "3s", 0, "")];
    // Eight instances, three at a time, then exit tasks: one that runs only
    // after a success, one that always runs.
    let items = "      withItems: [a, b, c, d, e, f, g, h]\n";
    let fanout = vec![task("list", &[], "1s", 0, ""), task("each", &["list"], "1s", 0, items), task("gather", &["each"], "1s", 0, "")];
    let exits = "  onExit:\n".to_string()
        + &task("report", &[], "1s", 0, "      when: \"run.phase == 'Succeeded'\"\n")
        + &task("tidy", &["report"], "2s", 0, "");
    let mut all = vec![
        workflow("wide", "  parallelism: 4\n", &wide),
        workflow("chain", "", &chain),
        workflow("inner", "", &inner),
        workflow("nested", "", &nested),
        workflow("flaky", "", &flaky),
        workflow(FAMILY, "", &family),
        workflow("slow-inner", "", &slow_inner),
        workflow("fanout", "  parallelism: 3\n", &fanout) + &exits,
        workflow(COLLIDE_A, "", &[task("web-test", &[], "3s", 0, "")]),
        workflow(COLLIDE_B, "", &[task("test", &[], "3s", 0, "")]),
    ];
    for (name, policy) in SCHEDULED {
        // Every run is kept: the invariants account for each run a tick started.
        let settings = format!(
            "  schedule: {{cron: \"{CRON}\", concurrencyPolicy: {policy}, successfulRunsHistoryLimit: 10000, failedRunsHistoryLimit: 10000}}\n"
        );
        all.push(workflow(name, &settings, &[task("a", &[], "2s", 0, ""), task("b", &["a"], "2s", 0, "")]));
    }
    all
}

/// The schedules of the workflows that have one, parsed as the controller
/// parses them.
fn schedules(workflows: &[String]) -> BTreeMap<String, baton::schedule::Parsed> {
    workflows
        .iter()
        .map(|y| serde_yaml::from_str::<Workflow>(y).expect("workflow YAML"))
        .filter_map(|wf| {
            let schedule = wf.spec.schedule.as_ref()?;
            Some((wf.name_any(), baton::schedule::parse(schedule).expect("the suite's cron parses")))
        })
        .collect()
}

/// `cargo test` passes its filter and flags to every test binary: run only
/// when there is no filter or it matches.
fn selected() -> bool {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        println!("chaos: test");
        return false;
    }
    let mut filters = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--test-threads" || a == "--skip" || a == "--format" || a == "--color" {
            it.next();
        } else if !a.starts_with('-') {
            filters.push(a);
        }
    }
    filters.is_empty() || filters.iter().any(|f| "chaos".contains(f.as_str()))
}

#[tokio::main]
async fn main() {
    if !selected() {
        return;
    }
    let config = Config::from_env();
    println!("chaos: seed {} (replay with CHAOS_SEED={}), duration {:?}, {} runs", config.seed, config.seed, config.duration, config.runs);
    let ns = TestNs::new("chaos").await;
    println!("chaos: namespace {}, controller logs in {}/logs/", ns.name, support::state_dir().display());
    let workflows = workflows();
    ns.apply(&workflows.join("---\n"));
    let identities = ["ctl-a", "ctl-b", "ctl-c"];
    let controllers: Vec<ControllerProc> = identities.iter().map(|id| ns.controller(id)).collect();
    let journal = Journal::new(&identities.map(String::from), schedules(&workflows));
    journal::spawn_watches(ns.client.clone(), &ns.name, journal.clone());

    let start = Instant::now();
    let end = start + config.duration;
    let checker = {
        let j = journal.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                j.lock().unwrap().check_owners(Instant::now());
            }
        })
    };
    let progress = {
        let j = journal.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(15)).await;
                let j = j.lock().unwrap();
                let finished = j.runs.values().filter(|r| r.idle() || r.paused_on_request()).count();
                println!(
                    "[chaos {:>6.1}s] runs {} ({} finished or paused), pods {}, faults {}, requests {}, moves {}, breaks {}",
                    start.elapsed().as_secs_f64(),
                    j.runs.len(),
                    finished,
                    j.pods.len(),
                    j.faults.values().sum::<u32>(),
                    j.requests.len(),
                    j.moves.values().flat_map(|m| m.values()).sum::<u32>(),
                    j.breaks.len()
                );
            }
        })
    };
    let runs_api: Api<WorkflowInstance> = ns.api();
    let creating = tokio::spawn(requests::start_runs(
        runs_api.clone(),
        journal.clone(),
        config.seed,
        config.runs,
        start + config.duration.mul_f64(0.6),
    ));
    let requesting = tokio::spawn(requests::make_requests(runs_api.clone(), journal.clone(), config.seed, end));
    let moving = tokio::spawn(moves::make(runs_api.clone(), ns.api(), journal.clone(), config.seed, start, end));
    let controllers = faults::inject(controllers, journal.clone(), config.seed, start, end).await;
    creating.await.unwrap();
    requesting.await.unwrap();
    moving.await.unwrap();
    let workflows_api: Api<Workflow> = ns.api();
    let scheduled: Vec<String> = SCHEDULED.iter().map(|(n, _)| n.to_string()).collect();
    moves::suspend_schedules(&workflows_api, &journal, &scheduled).await;
    moves::resume_children(&runs_api, &journal, start).await;
    // A control-plane component the faults left dead (kube-scheduler has
    // exited on a corrupted cache after API server restarts) is started
    // again, as a real cluster restarts its static pods; baton is judged,
    // not the harness.
    let restarted = faults::cluster(&["up"]);
    println!(
        "[chaos {:>6.1}s] e2e/cluster up before the drain: {}",
        start.elapsed().as_secs_f64(),
        if restarted { "ok" } else { "failed" }
    );
    let faults_done = start.elapsed();
    println!(
        "[chaos {:>6.1}s] faults, requests and moves stopped, schedules suspended; waiting up to {DRAIN:?} for every run to finish",
        faults_done.as_secs_f64()
    );

    // Drain: every run finished, or paused because its last request said so.
    let drain_start = Instant::now();
    let pods_api: Api<Pod> = ns.api();
    let all = ListParams::default();
    let mut last_move = (Vec::new(), Instant::now());
    let mut told_cluster = false;
    let (pods, runs, workflows) = loop {
        // kube-scheduler may also exit on a corrupted cache during the
        // drain (a late effect of the API server restarts): started again,
        // as the kubelet restarts a static pod.
        let dead = faults::dead_components();
        if !dead.is_empty() {
            let restarted = faults::cluster(&["up"]);
            println!("[chaos {:>6.1}s] drain: {dead:?} exited; e2e/cluster up: {restarted}", start.elapsed().as_secs_f64());
        }
        let listed = futures::try_join!(pods_api.list(&all), runs_api.list(&all), workflows_api.list(&all));
        if let Ok((pods, runs, workflows)) = listed {
            let settled = |r: &WorkflowInstance| {
                let s = r.status.clone().unwrap_or_default();
                let caught_up = s.observed_generation >= r.metadata.generation;
                let phase = s.phase.unwrap_or_default();
                caught_up && (phase.is_terminal() || (phase == baton::api::RunPhase::Paused && r.spec.suspend))
            };
            let unsettled: Vec<&WorkflowInstance> = runs.items.iter().filter(|r| !settled(r)).collect();
            let waited: Vec<&Pod> = pods
                .items
                .iter()
                .filter(|p| unsettled.iter().any(|r| baton::objects::controlled_by(&p.metadata, &r.uid().unwrap_or_default())))
                .collect();
            let moving: Vec<(String, String)> = unsettled
                .iter()
                .map(|r| (r.name_any(), r.resource_version().unwrap_or_default()))
                .chain(waited.iter().map(|p| (p.name_any(), p.resource_version().unwrap_or_default())))
                .collect();
            if moving != last_move.0 {
                last_move = (moving, Instant::now());
            }
            let unfinished: Vec<&&Pod> = waited.iter().filter(|p| !report::pod_finished(p)).collect();
            let still = last_move.1.elapsed() > QUIET;
            if still && !unfinished.is_empty() && !told_cluster {
                told_cluster = true;
                let unscheduled = unfinished.iter().filter(|p| !report::pod_scheduled(p)).count();
                println!(
                    "[chaos {:>6.1}s] drain: {} pods of unfinished runs not finished yet ({unscheduled} not scheduled); waiting for the cluster",
                    start.elapsed().as_secs_f64(),
                    unfinished.len()
                );
            }
            let quiet = still && unfinished.is_empty();
            if unsettled.is_empty() || quiet || drain_start.elapsed() > DRAIN {
                if quiet {
                    println!("[chaos] drain: {} unfinished runs did not change for {QUIET:?}; checking now", unsettled.len());
                }
                break (pods.items, runs.items, workflows.items);
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    // Let the watches deliver the last events, then stop the checks.
    tokio::time::sleep(Duration::from_secs(2)).await;
    checker.abort();
    progress.abort();
    let settled_after = drain_start.elapsed();

    let outcome = {
        let mut j = journal.lock().unwrap();
        journal::merge_listed(&mut j, &pods, &runs);
        report::check(&j, &config, &controllers, &runs, &pods, &workflows, faults_done, settled_after)
    };
    drop(controllers);
    // The control plane's own clients (controller manager, scheduler, kwok)
    // back off after the API server restarts as client-go's reflectors do,
    // up to a minute (a namespace then got its default ServiceAccount 37 s
    // late): restarted, so the suites that follow find them fresh.
    let refreshed = faults::cluster(&["restart", "kube-controller-manager", "kube-scheduler", "kwok"]);
    println!("[chaos] the API server's clients restarted: {}", if refreshed { "ok" } else { "FAILED (e2e/cluster restart)" });
    if outcome && refreshed {
        ns.done().await;
    } else {
        println!("chaos: FAILED; namespace {} kept to look at", ns.name);
        std::process::exit(1);
    }
}
