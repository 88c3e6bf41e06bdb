//! The `baton` command line against the local control plane, as a user
//! types it: list, get, watch, logs, the requests, and every error path.

use std::process::{Command, Output};

use baton::api::{RunPhase, Shutdown, WorkflowInstance};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams};

use crate::runs::{diamond, run, task, wait_phase, workflow};
use crate::support::{TestNs, kubeconfig};

/// `baton ARGS` in the test's namespace, with the cluster's kubeconfig.
pub(crate) fn baton(ns: &TestNs, args: &[&str]) -> Output {
    baton_with(kubeconfig(), ns, args)
}

fn baton_with(kubeconfig: &std::path::Path, ns: &TestNs, args: &[&str]) -> Output {
    command(kubeconfig, ns, args).output().expect("run baton")
}

/// The command `baton ARGS` in the test's namespace with `kubeconfig`,
/// without colour.
fn command(kubeconfig: &std::path::Path, ns: &TestNs, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_baton"));
    command.env("NO_COLOR", "1").args(["--kubeconfig", kubeconfig.to_str().unwrap(), "-n", &ns.name]).args(args);
    command
}

pub(crate) fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Asserts that the command succeeded, and returns its output.
fn ok(o: Output) -> String {
    assert!(o.status.success(), "exit {:?}: {}{}", o.status.code(), stdout(&o), String::from_utf8_lossy(&o.stderr));
    stdout(&o)
}

/// Asserts that the command failed with exit code 1 and one line on stderr
/// that contains every needle; returns that line.
pub(crate) fn refused(o: Output, needles: &[&str]) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "stdout: {} stderr: {err}", stdout(&o));
    assert!(err.starts_with("error: ") && err.trim_end().lines().count() == 1, "one line: {err:?}");
    for n in needles {
        assert!(err.contains(n), "{n:?} not in {err:?}");
    }
    err
}

#[tokio::test]
async fn watch_follows_a_diamond_to_its_end_and_list_and_get_show_it() {
    let ns = TestNs::new("cli-watch").await;
    let _c = ns.controller("alpha");
    ns.apply(&diamond("dia", "1s"));
    ns.apply(&run("dia-1", "dia", ""));
    // Not a terminal: a line per change, ending when the run ends.
    let watched = ok(baton(&ns, &["watch", "dia-1"]));
    let lines: Vec<&str> = watched.lines().map(|l| l.split_once(' ').map_or(l, |(_, rest)| rest)).collect();
    let pos = |needle: &str| lines.iter().position(|l| l.starts_with(needle)).unwrap_or_else(|| panic!("{needle:?} missing:\n{watched}"));
    assert!(pos("task a Running") < pos("task a Succeeded") && pos("task a Succeeded") < pos("task d Running"), "{watched}");
    assert!(pos("task d Succeeded (exit 0)") < pos("run Succeeded"), "{watched}");
    assert!(lines.contains(&"owner alpha (epoch 1, Created)"), "{watched}");
    assert_eq!(*lines.last().unwrap(), "run Succeeded: all 4 tasks succeeded", "{watched}");
    // Watching a run that has ended prints it and returns at once.
    ok(baton(&ns, &["watch", "dia-1"]));

    let listed = ok(baton(&ns, &["list"]));
    let row: Vec<&str> = listed.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(row[..5], ["dia-1", "dia", "Succeeded", "4/4", "alpha"], "{listed}");
    let all = ok(baton(&ns, &["list", "-A", "-o", "wide"]));
    assert!(all.starts_with("NAMESPACE") && all.lines().any(|l| l.starts_with(&ns.name) && l.contains("dia-1")), "{all}");
    let json: serde_json::Value = serde_json::from_str(&ok(baton(&ns, &["list", "-o", "json"]))).unwrap();
    assert_eq!((json["kind"].as_str(), json["items"][0]["metadata"]["name"].as_str()), (Some("List"), Some("dia-1")));
    let yaml: WorkflowInstance = serde_yaml::from_str(&ok(baton(&ns, &["get", "dia-1", "-o", "yaml"]))).unwrap();
    assert_eq!(yaml.status.unwrap().phase, Some(RunPhase::Succeeded));

    let got = ok(baton(&ns, &["get", "dia-1"]));
    let at = |needle: &str| got.find(needle).unwrap_or_else(|| panic!("{needle:?} missing:\n{got}"));
    assert!(at("✔ a ") < at("  ✔ b ") && at("  ✔ c ") < at("    ✔ d "), "tree in topological order:\n{got}");
    assert!(got.contains("dia-1-d-0") && got.contains("Phase:       Succeeded") && got.contains("Progress:    4/4"), "{got}");
    assert!(got.contains("Owner: alpha (lease alpha, epoch 1") && got.contains("1      alpha       Created"), "{got}");
    ns.done().await;
}

#[tokio::test]
async fn requests_patch_the_spec_and_say_what_they_asked_for() {
    let ns = TestNs::new("cli-requests").await;
    let _c = ns.controller("alpha");
    ns.apply(&workflow("slow", "", &[task("a", &[], "1s", 0, ""), task("b", &["a"], "60s", 0, "")]));
    ns.apply(&run("s-1", "slow", ""));
    wait_phase(&ns, "s-1", |p| p == RunPhase::Running).await;
    let api: Api<WorkflowInstance> = ns.api();

    let said = ok(baton(&ns, &["pause", "s-1"]));
    assert_eq!(said.trim(), format!("requested pause of run {}/s-1: spec.suspend=true", ns.name));
    assert!(api.get("s-1").await.unwrap().spec.suspend);
    wait_phase(&ns, "s-1", |p| p == RunPhase::Paused).await;
    assert!(ok(baton(&ns, &["pause", "s-1"])).contains("already has spec.suspend=true"));
    ok(baton(&ns, &["resume", "s-1"]));
    assert!(!api.get("s-1").await.unwrap().spec.suspend);
    refused(baton(&ns, &["retry", "s-1"]), &["s-1 is still", "wait for it to end"]);

    let said = ok(baton(&ns, &["stop", "s-1"]));
    assert!(said.contains("requested stop of run") && said.contains("spec.shutdown=Stop"), "{said}");
    wait_phase(&ns, "s-1", |p| p == RunPhase::Stopped).await;
    refused(baton(&ns, &["pause", "s-1"]), &["already ended Stopped", "nothing to pause"]);

    // retry clears the Stop with the increment, so the controller does not
    // defer it.
    let said = ok(baton(&ns, &["retry", "s-1"]));
    assert!(said.contains("spec.retryFailed=1, spec.shutdown cleared"), "{said}");
    // Watched right after the retry, the run has not ended: it goes on.
    let watch = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(["--kubeconfig", kubeconfig().to_str().unwrap(), "-n", &ns.name, "watch", "s-1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let spec = api.get("s-1").await.unwrap().spec;
    assert_eq!((spec.retry_failed, spec.shutdown), (1, Shutdown::None));
    wait_phase(&ns, "s-1", |p| p == RunPhase::Running).await;

    let said = ok(baton(&ns, &["terminate", "s-1"]));
    assert!(said.contains("spec.shutdown=Terminate"), "{said}");
    wait_phase(&ns, "s-1", |p| p == RunPhase::Stopped).await;
    assert_eq!(api.get("s-1").await.unwrap().spec.shutdown, Shutdown::Terminate);
    let watched = watch.wait_with_output().unwrap();
    let text = stdout(&watched);
    assert_eq!(watched.status.code(), Some(1), "{text}");
    assert!(text.contains("run Running") && text.trim_end().ends_with("spec.shutdown=Terminate; exit tasks skipped"), "{text}");
    refused(baton(&ns, &["stop", "s-1"]), &["already ended Stopped"]);

    ns.apply(&workflow("quick", "", &[task("a", &[], "500ms", 0, "")]));
    ns.apply(&run("q-1", "quick", ""));
    wait_phase(&ns, "q-1", |p| p == RunPhase::Succeeded).await;
    refused(baton(&ns, &["retry", "q-1"]), &["q-1 Succeeded", "no failed or stopped task"]);
    ns.done().await;
}

#[tokio::test]
async fn logs_read_the_task_pods_of_the_run() {
    let ns = TestNs::new("cli-logs").await;
    let _c = ns.controller("alpha");
    ns.apply(&workflow("two", "", &[task("a", &[], "500ms", 0, ""), task("b", &["a"], "500ms", 3, "")]));
    ns.apply(&run("t-1", "two", ""));
    wait_phase(&ns, "t-1", |p| p == RunPhase::Failed).await;

    let a = ok(baton(&ns, &["logs", "t-1", "a"]));
    let kubectl_a = ns.kubectl(&["logs", "t-1-a-0"], None);
    assert!(!a.is_empty(), "a simulated pod has a log (e2e/README.md)");
    assert_eq!(a, kubectl_a, "baton logs shows what kubectl logs shows");
    let all = ok(baton(&ns, &["logs", "t-1"]));
    for line in kubectl_a.lines() {
        assert!(all.contains(&format!("a: {line}")), "{all}");
    }
    assert!(all.lines().any(|l| l.starts_with("b: ")), "{all}");
    assert_eq!(ok(baton(&ns, &["logs", "t-1", "b", "--attempt", "0", "-f"])), ns.kubectl(&["logs", "t-1-b-0"], None));

    // Followed while it runs, the log ends when the pod does.
    ns.apply(&workflow("follow", "", &[task("a", &[], "3s", 0, "")]));
    ns.apply(&run("f-1", "follow", ""));
    let api: Api<WorkflowInstance> = ns.api();
    crate::support::wait_for("f-1's pod to run", std::time::Duration::from_secs(60), || async {
        let run = api.get("f-1").await.map_err(|e| e.to_string())?;
        let a = run.status.and_then(|s| s.tasks.into_iter().find(|t| t.name == "a"));
        a.filter(|t| t.phase == baton::api::TaskPhase::Running).map(|_| ()).ok_or_else(|| "not running yet".to_string())
    })
    .await;
    let followed = ok(baton(&ns, &["logs", "f-1", "a", "-f"]));
    let pod: Pod = ns.api().get("f-1-a-0").await.unwrap();
    assert_eq!(pod.status.and_then(|s| s.phase).as_deref(), Some("Succeeded"), "-f returned once the pod had ended");
    assert_eq!(followed, ns.kubectl(&["logs", "f-1-a-0"], None));

    // Following the whole run: tasks that start later are followed too, and
    // the command ends with the run.
    ns.apply(&workflow("chain", "", &[task("a", &[], "2s", 0, ""), task("b", &["a"], "2s", 0, "")]));
    ns.apply(&run("c-1", "chain", ""));
    let whole = ok(baton(&ns, &["logs", "c-1", "-f"]));
    assert!(whole.lines().any(|l| l.starts_with("a: ")) && whole.lines().any(|l| l.starts_with("b: ")), "{whole}");
    assert_eq!(api.get("c-1").await.unwrap().status.and_then(|s| s.phase), Some(RunPhase::Succeeded), "-f ended with the run");

    // One attempt followed: done when that attempt is, not with the run.
    ns.apply(&workflow("long", "", &[task("a", &[], "1s", 0, ""), task("b", &["a"], "120s", 0, "")]));
    ns.apply(&run("l-1", "long", ""));
    let one = ok(baton(&ns, &["logs", "l-1", "a", "--attempt", "0", "-f"]));
    assert_eq!(api.get("l-1").await.unwrap().status.and_then(|s| s.phase), Some(RunPhase::Running), "ended before the run");
    assert_eq!(one, ns.kubectl(&["logs", "l-1-a-0"], None));

    refused(baton(&ns, &["logs", "t-1", "nope"]), &["run t-1 has no task \"nope\"", "a, b"]);
    refused(baton(&ns, &["logs", "t-1", "a", "--attempt", "3"]), &["task a has attempts 0 to 0"]);
    let pods: Api<Pod> = ns.api();
    pods.delete("t-1-a-0", &DeleteParams::default().grace_period(0)).await.unwrap();
    crate::support::wait_for("pod t-1-a-0 to be gone", std::time::Duration::from_secs(30), || async {
        match pods.get_opt("t-1-a-0").await {
            Ok(None) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    refused(baton(&ns, &["logs", "t-1", "a"]), &["pod t-1-a-0 of task a does not exist", "baton get t-1"]);
    let rest = baton(&ns, &["logs", "t-1"]);
    assert!(rest.status.success() && stdout(&rest).lines().all(|l| l.starts_with("b: ")), "{}", stdout(&rest));
    assert!(String::from_utf8_lossy(&rest.stderr).contains("a: pod t-1-a-0 does not exist"));
    ns.done().await;
}

/// `logs -f` that finds a task's pod before the pod is scheduled: the API
/// server answers an unscheduled pod's log with an empty stream, which is
/// not the end of that pod's log; and a pod made again under the same name
/// is another pod, with a log of its own.
#[tokio::test]
async fn logs_follow_a_pod_that_is_scheduled_after_the_command_found_it() {
    let ns = TestNs::new("cli-logs-held").await;
    let _c = ns.controller("alpha");
    // Scheduled only once a fake node carries this label with this value.
    let (key, node) = ("e2e.baton.dev/logs-held", "kwok-node-0");
    ns.apply(&workflow(
        "held",
        "",
        &[format!(
            "    - name: a\n      container: {{name: main, image: busybox, command: [sh, -c, echo]}}\n\
             \x20     podTemplate: {{nodeSelector: {{{key}: {}}}, metadata: {{annotations: {{baton.dev/sim-duration: 1s}}}}}}\n",
            ns.name
        )],
    ));
    ns.apply(&run("h-1", "held", ""));
    let follow = command(kubeconfig(), &ns, &["logs", "h-1", "-f"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run baton");
    let pods: Api<Pod> = ns.api();
    crate::support::wait_for("pod h-1-a-0 to wait for a node", std::time::Duration::from_secs(60), || async {
        match pods.get_opt("h-1-a-0").await {
            Ok(Some(p)) if p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_none() => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    // The command has found the pod. Deleted while it waits, the pod is
    // made again under its name by the run's owner: that one is followed.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let first = pods.get("h-1-a-0").await.unwrap().metadata.uid;
    pods.delete("h-1-a-0", &DeleteParams::default().grace_period(0)).await.unwrap();
    crate::support::wait_for("pod h-1-a-0 made again", std::time::Duration::from_secs(30), || async {
        match pods.get_opt("h-1-a-0").await {
            Ok(Some(p)) if p.metadata.uid != first => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    ns.kubectl(&["label", "node", node, &format!("{key}={}", ns.name), "--overwrite"], None);
    let pid = follow.id().to_string();
    let out =
        tokio::time::timeout(std::time::Duration::from_secs(60), tokio::task::spawn_blocking(move || follow.wait_with_output().unwrap()))
            .await;
    ns.kubectl(&["label", "node", node, &format!("{key}-")], None);
    let Ok(out) = out else {
        let _ = Command::new("kill").arg(&pid).status();
        panic!("baton logs h-1 -f still going 60 s after the pod could be scheduled");
    };
    let out = out.unwrap();
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(said.contains("a: pod h-1-a-0") && said.contains("no log"), "the deleted pod is a note: {said}");
    let logged = ok(out);
    let expected: String = ns.kubectl(&["logs", "h-1-a-0"], None).lines().map(|l| format!("a: {l}\n")).collect();
    assert!(!expected.is_empty(), "a simulated pod has a log (e2e/README.md)");
    assert_eq!(logged, expected, "baton logs -f printed the log of a pod scheduled after it looked");
    ns.done().await;
}

/// `baton ARGS` in the test's namespace with stdout on a pseudo-terminal
/// (util-linux `script`), as a user types it; `NO_COLOR` only if `env` sets it.
fn on_a_terminal(ns: &TestNs, env: &[(&str, &str)], args: &[&str]) -> Output {
    let kubeconfig = kubeconfig().to_str().unwrap().to_string();
    let words = [env!("CARGO_BIN_EXE_baton"), "--kubeconfig", &kubeconfig, "-n", &ns.name].into_iter().chain(args.iter().copied());
    let line = words.map(|w| format!("'{w}'")).collect::<Vec<_>>().join(" ");
    Command::new("script")
        .args(["--quiet", "--return", "--command", &line, "/dev/null"])
        .env_remove("NO_COLOR")
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("script (util-linux)")
}

#[tokio::test]
async fn colour_and_redraws_only_on_a_terminal_and_never_with_no_color() {
    let ns = TestNs::new("cli-tty").await;
    let _c = ns.controller("alpha");
    ns.apply(&workflow("two", "", &[task("a", &[], "1s", 0, ""), task("b", &["a"], "1s", 0, "")]));
    ns.apply(&run("t-1", "two", ""));

    // Watched on a terminal: the screen is cleared and drawn again, in
    // colour, until the run ends.
    let watched = on_a_terminal(&ns, &[], &["watch", "t-1"]);
    let screen = stdout(&watched);
    assert!(watched.status.success(), "exit {:?}: {screen:?}", watched.status.code());
    const REDRAW: &str = "\x1b[H\x1b[2J";
    assert!(screen.matches(REDRAW).count() >= 2, "redrawn in place: {screen:?}");
    let last = screen.rsplit(REDRAW).next().unwrap();
    assert!(last.contains("\x1b[32mSucceeded\x1b[0m"), "the last screen shows the run Succeeded, in green: {last:?}");
    assert!(last.contains("run t-1 ended Succeeded"), "{last:?}");

    // get: colour on a terminal, none with NO_COLOR, none into a pipe.
    let coloured = ok(on_a_terminal(&ns, &[], &["get", "t-1"]));
    assert!(coloured.contains("\x1b[32m"), "{coloured:?}");
    for (how, out) in [
        ("NO_COLOR on a terminal", ok(on_a_terminal(&ns, &[("NO_COLOR", "1")], &["get", "t-1"]))),
        ("into a pipe", ok(command(kubeconfig(), &ns, &["get", "t-1"]).env_remove("NO_COLOR").output().unwrap())),
    ] {
        assert!(!out.contains('\x1b') && out.contains("Succeeded"), "{how}: {out:?}");
    }
    // A watch into a pipe prints a line per change and no screen control.
    let lines = ok(baton(&ns, &["watch", "t-1"]));
    assert!(!lines.contains('\x1b'), "{lines:?}");
    ns.done().await;
}

/// `--context` picks a context of the kubeconfig, with its namespace, over
/// the current one.
#[tokio::test]
async fn context_picks_the_cluster_and_its_namespace() {
    let ns = TestNs::new("cli-context").await;
    ns.apply(&workflow("quick", "", &[task("a", &[], "500ms", 0, "")]));
    ns.apply(&run("x-1", "quick", ""));
    let mut config = kube::config::Kubeconfig::read_from(kubeconfig()).unwrap();
    let good = config.current_context.clone().expect("the cluster's kubeconfig has a current context");
    let mut dead_cluster = config.clusters[0].clone();
    dead_cluster.name = "dead".into();
    dead_cluster.cluster.as_mut().unwrap().server = Some("https://127.0.0.1:9".into());
    config.clusters.push(dead_cluster);
    let mut dead = config.contexts.iter().find(|c| c.name == good).unwrap().clone();
    for c in config.contexts.iter_mut().filter(|c| c.name == good) {
        c.context.as_mut().unwrap().namespace = Some(ns.name.clone());
    }
    dead.name = "dead".into();
    dead.context.as_mut().unwrap().cluster = "dead".into();
    config.contexts.push(dead);
    config.current_context = Some("dead".into());
    let path = write_kubeconfig(&format!("contexts-{}", ns.name), &config);
    // No -n: the namespace is the context's.
    let with = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_baton"))
            .env("NO_COLOR", "1")
            .args(["--kubeconfig", path.to_str().unwrap()])
            .args(args)
            .output()
            .unwrap()
    };
    refused(with(&["list"]), &["cannot reach the API server at https://127.0.0.1:9/"]);
    let listed = ok(with(&["--context", &good, "list"]));
    assert!(listed.lines().any(|l| l.starts_with("x-1 ")), "the context's namespace {}: {listed}", ns.name);
    assert!(ok(with(&["--context", &good, "get", "x-1"])).contains("quick"));
    refused(with(&["--context", "nope", "list"]), &["the kubeconfig has no context \"nope\"", "kubectl config get-contexts"]);
    ns.done().await;
}

#[tokio::test]
async fn every_error_is_one_line_that_says_what_to_do() {
    let ns = TestNs::new("cli-errors").await;
    const RUN_COMMANDS: [&str; 8] = ["get", "watch", "logs", "pause", "resume", "stop", "terminate", "retry"];
    for cmd in RUN_COMMANDS {
        refused(baton(&ns, &[cmd, "ghost"]), &["run \"ghost\" not found in namespace", "baton list -A"]);
    }
    // No cluster: a kubeconfig whose server nobody listens on.
    let dir = crate::support::state_dir().join("cli");
    std::fs::create_dir_all(&dir).unwrap();
    let text = std::fs::read_to_string(kubeconfig()).unwrap();
    let server = text.lines().find_map(|l| l.trim().strip_prefix("server: ")).expect("server: in the kubeconfig");
    let dead = dir.join("dead.kubeconfig");
    std::fs::write(&dead, text.replace(server, "https://127.0.0.1:9")).unwrap();
    let unreachable = ["cannot reach the API server at https://127.0.0.1:9/", "check that the cluster is up"];
    refused(baton_with(&dead, &ns, &["list"]), &unreachable);
    for cmd in RUN_COMMANDS {
        refused(baton_with(&dead, &ns, &[cmd, "ghost"]), &unreachable);
    }
    refused(baton_with(&dir.join("missing"), &ns, &["list"]), &["cannot read kubeconfig"]);

    // Forbidden: a user who may read runs but not patch them.
    let viewer = viewer_kubeconfig(&ns);
    ns.apply(&workflow("quick", "", &[task("a", &[], "500ms", 0, "")]));
    ns.apply(&run("q-1", "quick", ""));
    ok(baton_with(&viewer, &ns, &["get", "q-1"]));
    let cannot_patch = ["e2e-viewer", "cannot patch", "ask a cluster administrator"];
    for cmd in ["pause", "stop", "terminate"] {
        refused(baton_with(&viewer, &ns, &[cmd, "q-1"]), &cannot_patch);
    }
    ok(baton(&ns, &["pause", "q-1"]));
    refused(baton_with(&viewer, &ns, &["resume", "q-1"]), &cannot_patch);
    // Runs but not their pods' logs.
    let _c = ns.controller("c0");
    ns.apply(&workflow("slow", "", &[task("a", &[], "1h", 0, "")]));
    ns.apply(&run("s-1", "slow", ""));
    wait_phase(&ns, "s-1", |p| p == RunPhase::Running).await;
    refused(baton_with(&viewer, &ns, &["logs", "s-1"]), &["e2e-viewer", "cannot", "ask a cluster administrator"]);
    refused(baton_with(&viewer, &ns, &["list", "-A"]), &["cannot list", "ask a cluster administrator"]);
    // A user who may read runs but not watch them: watch says so, once.
    let lister = user_kubeconfig(&ns, "e2e-lister", "[get, list]");
    let started = std::time::Instant::now();
    refused(baton_with(&lister, &ns, &["watch", "q-1"]), &["e2e-lister", "cannot watch", "ask a cluster administrator"]);
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    ns.done().await;
}

/// A kubeconfig for user `e2e-viewer` (the cluster's admin impersonating
/// it), who may get, list and watch runs in `ns` and nothing else.
pub fn viewer_kubeconfig(ns: &TestNs) -> std::path::PathBuf {
    user_kubeconfig(ns, "e2e-viewer", "[get, list, watch]")
}

/// A kubeconfig for `user` (the cluster's admin impersonating it), who may
/// do `verbs` on runs in `ns` and nothing else.
fn user_kubeconfig(ns: &TestNs, user: &str, verbs: &str) -> std::path::PathBuf {
    ns.apply(&format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: {user}}}\nrules:\n\
         - {{apiGroups: [baton.dev], resources: [workflowinstances], verbs: {verbs}}}\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: {user}}}\n\
         roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: {user}}}\n\
         subjects: [{{apiGroup: rbac.authorization.k8s.io, kind: User, name: {user}}}]\n"
    ));
    let mut config = kube::config::Kubeconfig::read_from(kubeconfig()).unwrap();
    for info in config.auth_infos.iter_mut().filter_map(|u| u.auth_info.as_mut()) {
        info.impersonate = Some(user.into());
    }
    write_kubeconfig(&format!("{user}-{}", ns.name), &config)
}

/// Writes `config` as `<name>.kubeconfig` in the CLI tests' directory.
fn write_kubeconfig(name: &str, config: &kube::config::Kubeconfig) -> std::path::PathBuf {
    let dir = crate::support::state_dir().join("cli");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.kubeconfig"));
    std::fs::write(&path, serde_yaml::to_string(config).unwrap()).unwrap();
    path
}
