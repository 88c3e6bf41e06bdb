use super::*;

fn at(s: &str) -> Timestamp {
    s.parse().unwrap()
}

/// A diamond run (spec order deliberately not topological) with a fan-out
/// task and an exit task, as a controller would have left it mid-way.
fn diamond() -> WorkflowInstance {
    serde_yaml::from_str(
        r#"
apiVersion: baton.dev/v1alpha1
kind: WorkflowInstance
metadata: {name: dia-1, namespace: team, creationTimestamp: "2026-11-22T10:00:00Z"}
spec: {workflowRef: {name: dia}, params: {date: "2026-01-01"}, suspend: true}
status:
  phase: Running
  progress: "2/5"
  startedAt: "2026-11-22T10:00:01Z"
  owner: {controller: c2, lease: c2, epoch: 2, since: "2026-11-22T10:00:30Z"}
  ownerHistory:
    - {controller: c1, epoch: 1, since: "2026-11-22T10:00:01Z", reason: Created}
    - {controller: c2, epoch: 2, since: "2026-11-22T10:00:30Z", reason: Failover}
  tasks:
    - {name: d, phase: Pending}
    - {name: a, phase: Succeeded, attempts: 1, podName: dia-1-a-0, startedAt: "2026-11-22T10:00:01Z", finishedAt: "2026-11-22T10:00:04Z", exitCode: 0, outputs: {result: "[1,2]"}}
    - {name: b, phase: Failed, attempts: 2, podName: dia-1-b-1, startedAt: "2026-11-22T10:00:05Z", finishedAt: "2026-11-22T10:00:07Z", exitCode: 3, message: "boom\nlast line of the log"}
    - {name: fan, phase: Running}
    - {name: "fan(1)", phase: Running, attempts: 1, podName: dia-1-fan-1-0, startedAt: "2026-11-22T10:00:05Z"}
    - {name: "fan(0)", phase: Succeeded, attempts: 1, startedAt: "2026-11-22T10:00:05Z", finishedAt: "2026-11-22T10:00:06Z", exitCode: 0}
  workflowSpec:
    tasks:
      - {name: d, dependsOn: [b, fan], container: {name: main, image: busybox}}
      - {name: b, dependsOn: [a], container: {name: main, image: busybox}}
      - {name: a, container: {name: main, image: busybox}}
      - {name: fan, dependsOn: [a], withItems: [x, y], container: {name: main, image: busybox}}
    onExit:
      - {name: notify, container: {name: main, image: busybox}}
"#,
    )
    .unwrap()
}

#[test]
fn durations_read_like_kubectl() {
    let cases = [
        (0, "0s"),
        (59, "59s"),
        (119, "119s"),
        (190, "3m10s"),
        (3599, "59m"),
        (3 * 3600 + 300, "3h5m"),
        (30 * 3600, "30h"),
        (3 * 86_400 + 7200, "3d2h"),
        (9 * 86_400, "9d"),
        (-5, "0s"),
    ];
    for (secs, want) in cases {
        assert_eq!(human_duration(secs), want, "{secs}");
    }
}

#[test]
fn tasks_come_in_topological_order_with_instances_under_their_task() {
    let run = diamond();
    let got: Vec<(String, usize, bool, bool)> = rows(&run).into_iter().map(|r| (r.key, r.depth, r.instance, r.exit)).collect();
    let want = [
        ("a", 0, false, false),
        ("b", 1, false, false),
        ("fan", 1, false, false),
        ("fan(0)", 1, true, false),
        ("fan(1)", 1, true, false),
        ("d", 2, false, false),
        ("notify", 0, false, true),
    ];
    assert_eq!(got, want.map(|(k, d, i, e)| (k.to_string(), d, i, e)));
}

#[test]
fn entries_the_spec_does_not_name_are_still_shown() {
    let mut run = diamond();
    let status = run.status.as_mut().unwrap();
    status.tasks.push(TaskStatus { name: "ghost".into(), ..Default::default() });
    status.workflow_spec = None;
    let keys: Vec<String> = rows(&run).into_iter().map(|r| r.key).collect();
    assert_eq!(keys.len(), 7);
    assert!(keys.contains(&"ghost".to_string()) && keys.contains(&"fan(1)".to_string()));
}

#[test]
fn get_shows_the_tree_results_messages_requests_and_owner_history() {
    let text = run(&diamond(), at("2026-11-22T10:01:00Z"), Style { color: false });
    assert!(!text.contains('\x1b'), "no colour when asked for none:\n{text}");
    let lines: Vec<&str> = text.lines().collect();
    let pos = |needle: &str| lines.iter().position(|l| l.contains(needle)).unwrap_or_else(|| panic!("{needle:?} missing:\n{text}"));
    assert!(pos("✔ a ") < pos("✖ b ") && pos("✖ b ") < pos("● fan ") && pos("● fan ") < pos("  ╰ ● fan(1)"), "{text}");
    assert!(pos("fan(1)") < pos("◷ d") && pos("◷ d") < pos("onExit:") && pos("onExit:") < pos("notify"), "{text}");
    assert!(lines[pos("✔ a ")].contains("result: [1,2]") && lines[pos("✔ a ")].contains("3s"), "{text}");
    let b = lines[pos("✖ b ")];
    assert!(b.contains("Failed") && b.contains(" 2 ") && b.contains("dia-1-b-1") && b.contains(" 3 ") && b.contains("boom …"), "{b}");
    assert!(lines[pos("✔ fan(0)")].contains("dia-1-fan-0-0"), "a finished instance shows its pod: {text}");
    assert!(text.contains("Requests:    suspend=true") && text.contains("Parameters:  date=2026-01-01"), "{text}");
    assert!(text.contains("Duration:    59s"), "{text}");
    assert!(text.contains("Owner: c2 (lease c2, epoch 2, since 2026-11-22T10:00:30Z)"), "{text}");
    assert!(text.contains("2      c2          Failover  2026-11-22T10:00:30Z"), "{text}");
}

#[test]
fn colour_marks_phases_only_when_asked() {
    let text = run(&diamond(), at("2026-11-22T10:01:00Z"), Style { color: true });
    assert!(text.contains("\x1b[31mFailed\x1b[0m") && text.contains("\x1b[32m✔\x1b[0m"), "{text}");
    // Columns stay aligned: colour codes do not count as width.
    let plain = run(&diamond(), at("2026-11-22T10:01:00Z"), Style { color: false });
    let strip =
        |s: &str| s.replace("\x1b[0m", "").replace("\x1b[31m", "").replace("\x1b[32m", "").replace("\x1b[36m", "").replace("\x1b[33m", "");
    assert_eq!(strip(&text), plain);
}

#[test]
fn list_puts_newest_first_and_widens_on_request() {
    let older = diamond();
    let mut newer = diamond();
    newer.metadata.name = Some("dia-2".into());
    newer.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(at("2026-11-22T10:00:50Z")));
    newer.status = None;
    let now = at("2026-11-22T10:01:00Z");
    let text = list(&[older.clone(), newer.clone()], false, false, now, Style { color: false });
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0].split_whitespace().collect::<Vec<_>>(), ["NAME", "WORKFLOW", "PHASE", "PROGRESS", "OWNER", "AGE", "DURATION"]);
    assert_eq!(lines[1].split_whitespace().collect::<Vec<_>>(), ["dia-2", "dia", "Pending", "-", "-", "10s", "-"]);
    assert_eq!(lines[2].split_whitespace().collect::<Vec<_>>(), ["dia-1", "dia", "Running", "2/5", "c2", "60s", "59s"]);
    let wide = list(&[older], true, true, now, Style { color: false });
    let row: Vec<&str> = wide.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(row[..3], ["team", "dia-1", "dia"]);
    assert_eq!(row[8..], ["2", "2026-11-22T10:00:01Z"]);
}

#[test]
fn watch_lines_tell_what_changed() {
    let before = diamond();
    let mut after = diamond();
    let status = after.status.as_mut().unwrap();
    status.tasks[0].phase = TaskPhase::Running;
    status.tasks[0].attempts = 1;
    status.tasks[0].pod_name = Some("dia-1-d-0".into());
    status.owner.as_mut().unwrap().epoch = 3;
    status.owner.as_mut().unwrap().controller = "c3".into();
    status.owner_history.push(crate::api::OwnerChange {
        controller: "c3".into(),
        epoch: 3,
        since: status.owner.as_ref().unwrap().since.clone(),
        reason: crate::api::OwnerChangeReason::Handoff,
    });
    assert_eq!(changes(Some(&before), &after), ["owner c3 (epoch 3, Handoff)", "task d Running (dia-1-d-0, attempt 1)"]);
    let mut ended = after.clone();
    let status = ended.status.as_mut().unwrap();
    status.phase = Some(RunPhase::Failed);
    status.tasks[0].phase = TaskPhase::Failed;
    status.tasks[0].exit_code = Some(1);
    status.conditions.push(k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
        type_: "Finished".into(),
        status: "True".into(),
        reason: "Failed".into(),
        message: "task b failed".into(),
        last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(at("2026-11-22T10:01:00Z")),
        observed_generation: None,
    });
    assert_eq!(
        changes(Some(&after), &ended),
        ["task d Failed (exit 1)", "run Failed: task b failed"],
        "the run ends after the task that ended it"
    );
    let first = changes(None, &before);
    assert_eq!(first[0], "run Running");
    assert!(first.contains(&"task b Failed (exit 3): boom …".to_string()), "{first:?}");
    assert!(!first.iter().any(|l| l.starts_with("task d")), "a Pending task seen first says nothing: {first:?}");
}

#[test]
fn the_pod_of_an_attempt_is_the_recorded_one_or_the_deterministic_one() {
    let run = diamond();
    let tasks = &run.status.as_ref().unwrap().tasks;
    let b = tasks.iter().find(|t| t.name == "b").unwrap();
    assert_eq!(pod_of("dia-1", b, None), "dia-1-b-1");
    assert_eq!(pod_of("dia-1", b, Some(0)), "dia-1-b-0");
    let fan0 = tasks.iter().find(|t| t.name == "fan(0)").unwrap();
    assert_eq!(pod_of("dia-1", fan0, None), "dia-1-fan-0-0");
}

#[test]
fn one_line_cuts_long_and_multi_line_text() {
    assert_eq!(one_line("short", 10), "short");
    assert_eq!(one_line("abcdefghijkl", 5), "abcde…");
    assert_eq!(one_line("first\nsecond\n", 80), "first …");
    assert_eq!(one_line("only\n", 80), "only");
}

// Found by the adversarial review of the command line (helper 11).

#[test]
fn review_a_run_not_yet_caught_up_with_a_request_has_not_ended() {
    let mut run = diamond();
    let status = run.status.as_mut().unwrap();
    status.phase = Some(RunPhase::Failed);
    status.observed_generation = Some(1);
    run.metadata.generation = Some(2);
    assert_eq!(ended(&run), None, "a retry the owner has not seen yet: the run is about to go on");
    run.status.as_mut().unwrap().observed_generation = Some(2);
    assert_eq!(ended(&run), Some(RunPhase::Failed));
    run.status.as_mut().unwrap().phase = Some(RunPhase::Running);
    assert_eq!(ended(&run), None);
}

#[test]
fn review_text_from_pods_cannot_drive_the_terminal() {
    let mut run = diamond();
    let b = &mut run.status.as_mut().unwrap().tasks[2];
    b.message = Some("evil\x1b]0;owned\x07\rline".into());
    run.spec.params.insert("multi".into(), "one\ntwo".into());
    let text = super::run(&run, at("2026-11-22T10:01:00Z"), Style { color: false });
    assert!(!text.contains('\x1b') && !text.contains('\r') && !text.contains('\x07'), "{text:?}");
    assert!(text.contains("multi=one\\ntwo"), "{text}");
    let lines = changes(None, &run);
    assert!(lines.iter().all(|l| !l.chars().any(char::is_control)), "{lines:?}");
}

#[test]
fn review_a_message_that_starts_with_a_newline_shows_its_text() {
    assert_eq!(one_line("\nError: disk full\n", 80), "Error: disk full");
    assert_eq!(one_line("\n\nfirst\nsecond", 80), "first …");
}

#[test]
fn review_a_run_that_ended_before_any_task_says_so() {
    let mut run = diamond();
    let status = run.status.as_mut().unwrap();
    status.tasks.clear();
    status.workflow_spec = None;
    status.phase = Some(RunPhase::Failed);
    let text = super::run(&run, at("2026-11-22T10:01:00Z"), Style { color: false });
    assert!(text.contains("No tasks: the run ended before any task started"), "{text}");
}

fn pod(status: &str) -> k8s_openapi::api::core::v1::Pod {
    serde_yaml::from_str(&format!(
        "metadata: {{name: r-a-0}}\nspec: {{containers: [{{name: main, image: busybox}}, {{name: sidecar, image: proxy}}]}}\n{status}"
    ))
    .unwrap()
}

#[test]
fn a_pods_log_is_read_once_its_container_started_and_only_then() {
    let cases = [
        ("unscheduled", "status: {phase: Pending}", PodLog::NotYet),
        ("no status yet", "", PodLog::NotYet),
        (
            "creating",
            "status: {phase: Pending, containerStatuses: [{name: main, image: busybox, imageID: '', ready: false, restartCount: 0, state: {waiting: {reason: ContainerCreating}}}]}",
            PodLog::NotYet,
        ),
        (
            "the sidecar runs, the task's container waits",
            "status: {phase: Pending, containerStatuses: [\
             {name: sidecar, image: proxy, imageID: '', ready: true, restartCount: 0, state: {running: {startedAt: '2026-11-22T10:00:00Z'}}},\
             {name: main, image: busybox, imageID: '', ready: false, restartCount: 0, state: {waiting: {reason: PodInitializing}}}]}",
            PodLog::NotYet,
        ),
        (
            "running",
            "status: {phase: Running, containerStatuses: [{name: main, image: busybox, imageID: '', ready: true, restartCount: 0, state: {running: {startedAt: '2026-11-22T10:00:00Z'}}}]}",
            PodLog::Live,
        ),
        (
            "ran and ended, even if it went from Pending to Succeeded between two looks",
            "status: {phase: Succeeded, containerStatuses: [{name: main, image: busybox, imageID: '', ready: false, restartCount: 0, containerID: 'containerd://1', state: {terminated: {exitCode: 0, startedAt: '2026-11-22T10:00:00Z', finishedAt: '2026-11-22T10:00:01Z'}}}]}",
            PodLog::Ended,
        ),
        (
            "deleted while being created: terminated with no start and no ID",
            "status: {phase: Failed, containerStatuses: [{name: main, image: busybox, imageID: '', ready: false, restartCount: 0, state: {terminated: {exitCode: 137, reason: ContainerStatusUnknown}}}]}",
            PodLog::Never("its container never started (ContainerStatusUnknown)".into()),
        ),
        (
            "its image never came and the pod was stopped",
            "status: {phase: Failed, containerStatuses: [{name: main, image: busybox, imageID: '', ready: false, restartCount: 0, state: {waiting: {reason: ImagePullBackOff}}}]}",
            PodLog::Never("its container never started (ImagePullBackOff)".into()),
        ),
        (
            "refused by the node",
            "status: {phase: Failed, reason: OutOfcpu, message: 'Pod was rejected'}",
            PodLog::Never("it ended before its container started (OutOfcpu)".into()),
        ),
    ];
    for (what, status, expected) in cases {
        assert_eq!(pod_log(&pod(status)), expected, "{what}");
    }
    let mut going = pod("status: {phase: Pending}");
    going.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(at("2026-11-22T10:00:00Z")));
    assert_eq!(pod_log(&going), PodLog::Never("it was deleted before its container started".into()), "deleted unscheduled");
}

#[test]
fn an_attempt_is_over_once_a_later_one_began_or_the_task_finished() {
    let run = diamond();
    assert!(attempt_over(&run, Some("a"), 0), "a succeeded");
    assert!(attempt_over(&run, Some("b"), 0), "b's attempt 1 began");
    assert!(attempt_over(&run, Some("b"), 1), "b failed for good");
    assert!(!attempt_over(&run, Some("fan(1)"), 0), "fan(1) runs its attempt 0");
    assert!(!attempt_over(&run, Some("fan"), 0), "fan's instances go on");
    assert!(!attempt_over(&run, Some("d"), 0), "d has not started");
    assert!(!attempt_over(&run, None, 0), "not every task is past it");
    assert!(!attempt_over(&run, Some("nope"), 0), "nothing picked: nothing is over");
}
