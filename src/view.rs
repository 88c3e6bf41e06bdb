//! What the `baton` command line shows of runs: the list, one run's DAG as a
//! tree with its owners, and the lines `baton watch` prints when its output
//! is not a terminal. Pure functions of the runs and the time, so every
//! layout is unit-tested without a cluster.

use std::fmt::Write as _;

use k8s_openapi::jiff::Timestamp;

use crate::api::{RunPhase, TaskPhase, TaskStatus, WorkflowInstance, WorkflowSpec};
use crate::dag::Dag;
use crate::naming;

/// Whether to colour phases (a terminal, and `NO_COLOR` unset).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Style {
    pub color: bool,
}

impl Style {
    /// `text` in the colour of a phase, or as it is without colour.
    fn paint(self, phase: &str, text: &str) -> String {
        let code = match phase {
            "Succeeded" => "32",
            "Failed" => "31",
            "Running" => "36",
            "Pending" | "Paused" => "33",
            "Stopped" => "35",
            "Skipped" => "2",
            _ => return text.to_string(),
        };
        if self.color { format!("\x1b[{code}m{text}\x1b[0m") } else { text.to_string() }
    }
}

/// kubectl's short human durations: `45s`, `3m10s`, `2h5m`, `4d`.
pub fn human_duration(seconds: i64) -> String {
    let s = seconds.max(0);
    match s {
        0..120 => format!("{s}s"),
        120..600 => format!("{}m{}s", s / 60, s % 60),
        600..10_800 => format!("{}m", s / 60),
        10_800..28_800 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        28_800..172_800 => format!("{}h", s / 3600),
        172_800..691_200 => format!("{}d{}h", s / 86_400, s % 86_400 / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

fn since(t: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>, now: Timestamp) -> Option<i64> {
    t.map(|t| now.as_second() - t.0.as_second())
}

/// From `start` to `end` (or to now while it goes on).
fn span(
    start: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    end: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    now: Timestamp,
) -> Option<String> {
    let start = start?.0.as_second();
    let end = end.map_or(now.as_second(), |t| t.0.as_second());
    Some(human_duration(end - start))
}

/// Lays `rows` out in columns two spaces apart; `painted` cells may carry
/// colour codes, so widths are taken from the plain text.
fn table(header: &[&str], rows: &[Vec<(String, String)>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, (plain, _)) in row.iter().enumerate() {
            widths[i] = widths[i].max(plain.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<(String, String)>, out: &mut String| {
        let last = cells.len() - 1;
        let mut text = String::new();
        for (i, (plain, shown)) in cells.into_iter().enumerate() {
            text.push_str(&shown);
            if i < last {
                text.push_str(&" ".repeat(widths[i] - plain.chars().count() + 2));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(header.iter().map(|h| (h.to_string(), h.to_string())).collect(), &mut out);
    for row in rows {
        line(row.clone(), &mut out);
    }
    out
}

fn cell(text: impl Into<String>) -> (String, String) {
    let text = text.into();
    (text.clone(), text)
}

fn painted(style: Style, phase: &str) -> (String, String) {
    (phase.to_string(), style.paint(phase, phase))
}

fn phase_of(run: &WorkflowInstance) -> RunPhase {
    run.status.as_ref().and_then(|s| s.phase).unwrap_or_default()
}

/// The message of a run's `Finished` condition, else of a failed one
/// (`Valid=False`), on one line.
fn run_message(run: &WorkflowInstance) -> String {
    let conditions = run.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
    let pick = conditions.iter().find(|c| c.type_ == "Finished").or_else(|| conditions.iter().find(|c| c.status == "False"));
    pick.map(|c| one_line(&c.message, 100)).unwrap_or_default()
}

/// The first line of `text` that has any, cut at `max` characters, with
/// control characters shown escaped.
pub fn one_line(text: &str, max: usize) -> String {
    let text = text.trim_start_matches(['\n', '\r']).trim_end();
    let first = text.lines().next().unwrap_or("").trim_end();
    let more = text.contains('\n');
    let cut = if first.chars().count() > max { format!("{}…", first.chars().take(max).collect::<String>()) } else { first.to_string() };
    let cut = escape(&cut);
    if more { format!("{cut} …") } else { cut }
}

/// `text` with control characters (escape sequences, carriage returns,
/// newlines) written as Rust escapes: text from pods and users never drives
/// the terminal.
pub fn escape(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_string();
    }
    text.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() }).collect()
}

/// `baton list`: one line per run, newest first (by namespace with `-A`).
pub fn list(runs: &[WorkflowInstance], all_namespaces: bool, wide: bool, now: Timestamp, style: Style) -> String {
    let mut runs: Vec<&WorkflowInstance> = runs.iter().collect();
    runs.sort_by(|a, b| {
        let created = |r: &WorkflowInstance| r.metadata.creation_timestamp.as_ref().map(|t| t.0);
        a.metadata.namespace.cmp(&b.metadata.namespace).then(created(b).cmp(&created(a))).then(a.metadata.name.cmp(&b.metadata.name))
    });
    let mut header = vec![];
    if all_namespaces {
        header.push("NAMESPACE");
    }
    header.extend(["NAME", "WORKFLOW", "PHASE", "PROGRESS", "OWNER", "AGE", "DURATION"]);
    if wide {
        header.extend(["EPOCH", "STARTED", "MESSAGE"]);
    }
    let rows: Vec<Vec<(String, String)>> = runs
        .iter()
        .map(|run| {
            let status = run.status.clone().unwrap_or_default();
            let mut row = vec![];
            if all_namespaces {
                row.push(cell(run.metadata.namespace.clone().unwrap_or_default()));
            }
            row.push(cell(run.metadata.name.clone().unwrap_or_default()));
            row.push(cell(run.spec.workflow_ref.name.clone()));
            row.push(painted(style, phase_of(run).as_str()));
            row.push(cell(status.progress.clone().unwrap_or_else(|| "-".into())));
            row.push(cell(status.owner.as_ref().map_or("-".into(), |o| o.controller.clone())));
            row.push(cell(since(run.metadata.creation_timestamp.as_ref(), now).map_or("-".into(), human_duration)));
            row.push(cell(span(status.started_at.as_ref(), status.finished_at.as_ref(), now).unwrap_or_else(|| "-".into())));
            if wide {
                row.push(cell(status.owner.as_ref().map_or("-".into(), |o| o.epoch.to_string())));
                row.push(cell(status.started_at.as_ref().map_or("-".into(), |t| t.0.to_string())));
                row.push(cell(run_message(run)));
            }
            row
        })
        .collect();
    table(&header, &rows)
}

/// One line of the tree: a task, or one instance of a fanned-out task.
#[derive(Clone, Debug, PartialEq)]
pub struct Row<'a> {
    /// The entry's key in `status.tasks` (`task` or `task(index)`).
    pub key: String,
    /// Longest chain of dependencies above the task (an instance: its task's).
    pub depth: usize,
    /// One instance of a fanned-out task, shown under the task.
    pub instance: bool,
    pub exit: bool,
    /// Its entry in status, if the run has one yet.
    pub entry: Option<&'a TaskStatus>,
}

/// The run's tasks in topological order (each after everything it depends
/// on; exit tasks last), each followed by its instances in item order.
/// Entries of status that the workflow does not name come at the end, so
/// nothing the controller recorded is hidden.
pub fn rows(run: &WorkflowInstance) -> Vec<Row<'_>> {
    let Some(status) = run.status.as_ref() else { return vec![] };
    let spec: Option<&WorkflowSpec> = status.workflow_spec.as_ref();
    let dag = spec.and_then(|s| Dag::new(s).ok());
    let mut out = Vec::with_capacity(status.tasks.len());
    if let Some(dag) = &dag {
        let mut depth = vec![0usize; dag.len()];
        let mut order: Vec<usize> = (0..dag.len()).collect();
        // Dependencies first: repeat until depths settle (the graph is
        // acyclic, so this ends within len rounds).
        for _ in 0..dag.len() {
            let mut changed = false;
            for t in 0..dag.len() {
                let d = dag.deps(t).iter().map(|&p| depth[p] + 1).max().unwrap_or(0);
                if d != depth[t] {
                    depth[t] = d;
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        order.sort_by_key(|&t| (dag.is_exit(t), depth[t], t));
        for t in order {
            let name = dag.name(t);
            let exit = dag.is_exit(t);
            out.push(Row {
                key: name.to_string(),
                depth: depth[t],
                instance: false,
                exit,
                entry: status.tasks.iter().find(|e| e.name == name),
            });
            let mut instances: Vec<(usize, &TaskStatus)> = status
                .tasks
                .iter()
                .filter_map(|e| naming::parse_instance_key(&e.name).filter(|(task, _)| *task == name).map(|(_, i)| (i, e)))
                .collect();
            instances.sort_by_key(|(i, _)| *i);
            out.extend(instances.into_iter().map(|(_, e)| Row {
                key: e.name.clone(),
                depth: depth[t],
                instance: true,
                exit,
                entry: Some(e),
            }));
        }
    }
    for e in &status.tasks {
        if !out.iter().any(|r| r.key == e.name) {
            let instance = naming::parse_instance_key(&e.name).is_some();
            out.push(Row { key: e.name.clone(), depth: 0, instance, exit: false, entry: Some(e) });
        }
    }
    out
}

/// The rows `baton logs RUN [TASK]` reads: all, or one task's (its
/// instances included), or one instance's.
pub fn picked<'r, 'a>(rows: &'r [Row<'a>], task: Option<&str>) -> Vec<&'r Row<'a>> {
    rows.iter().filter(|r| task.is_none_or(|t| r.key == t || naming::task_of(&r.key) == t)).collect()
}

/// Whether attempt `n` of every picked task is over: a later attempt has
/// begun, or the task has finished. `baton logs -f --attempt N` ends then.
pub fn attempt_over(run: &WorkflowInstance, task: Option<&str>, n: i32) -> bool {
    let rows = rows(run);
    let picked = picked(&rows, task);
    !picked.is_empty() && picked.iter().all(|r| r.entry.is_some_and(|e| e.attempts > n + 1 || e.phase.is_finished()))
}

/// The pod of attempt `attempt` of an entry (container tasks): the name in
/// status for the current attempt, else the deterministic one.
pub fn pod_of(run: &str, entry: &TaskStatus, attempt: Option<i32>) -> String {
    let current = entry.attempts - 1;
    match (attempt, &entry.pod_name) {
        (None, Some(pod)) => pod.clone(),
        (Some(a), Some(pod)) if a == current => pod.clone(),
        (a, _) => naming::pod(run, &naming::object_part(&entry.name), a.unwrap_or(current.max(0))),
    }
}

/// What the log of a task pod holds, for `baton logs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodLog {
    /// Nothing yet: the pod waits for a node or its container to start.
    /// (An unscheduled pod's log reads as empty, a waiting container's is
    /// refused: neither is the end of the log.)
    NotYet,
    /// Its container runs: the log grows until it ends.
    Live,
    /// Its container ran and ended: the log is whole.
    Ended,
    /// There never will be one, and why.
    Never(String),
}

/// What the log of `pod`'s task container (its first) holds now.
pub fn pod_log(pod: &k8s_openapi::api::core::v1::Pod) -> PodLog {
    let status = pod.status.as_ref();
    let ended = matches!(status.and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"));
    let container = pod.spec.as_ref().and_then(|s| s.containers.first()).map(|c| c.name.as_str());
    let state = status
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.iter().find(|c| Some(c.name.as_str()) == container))
        .and_then(|c| c.state.as_ref().map(|state| (c, state)));
    let deleted = pod.metadata.deletion_timestamp.is_some();
    match state {
        Some((_, s)) if s.running.is_some() => PodLog::Live,
        // A container that was never created is reported terminated with
        // no start and no ID (ContainerStatusUnknown): it wrote nothing.
        Some((c, s))
            if s.terminated.as_ref().is_some_and(|t| t.started_at.is_some() || t.container_id.is_some() || c.container_id.is_some()) =>
        {
            PodLog::Ended
        }
        Some((_, s)) if let Some(t) = &s.terminated => PodLog::Never(format!(
            "its container never started ({})",
            t.reason.as_deref().or(t.message.as_deref()).unwrap_or("terminated before it ran")
        )),
        Some((_, s))
            if (ended || deleted)
                && let Some(w) = &s.waiting =>
        {
            PodLog::Never(format!("its container never started ({})", w.reason.as_deref().unwrap_or("waiting")))
        }
        _ if ended => PodLog::Never(format!(
            "it ended before its container started ({})",
            status.and_then(|s| s.reason.as_deref().or(s.message.as_deref())).unwrap_or("no reason given")
        )),
        _ if deleted => PodLog::Never("it was deleted before its container started".into()),
        _ => PodLog::NotYet,
    }
}

fn marker(phase: TaskPhase) -> &'static str {
    match phase {
        TaskPhase::Pending => "◷",
        TaskPhase::Running => "●",
        TaskPhase::Succeeded => "✔",
        TaskPhase::Failed => "✖",
        TaskPhase::Skipped => "○",
        TaskPhase::Stopped => "■",
    }
}

/// `baton get`: the run, its tasks as a tree in topological order, and its
/// owner with the owner history.
pub fn run(run: &WorkflowInstance, now: Timestamp, style: Style) -> String {
    let status = run.status.clone().unwrap_or_default();
    let mut out = String::new();
    let name = run.metadata.name.clone().unwrap_or_default();
    let phase = phase_of(run);
    let field = |out: &mut String, k: &str, v: &str| {
        let _ = writeln!(out, "{:<13}{v}", format!("{k}:"));
    };
    field(&mut out, "Name", &name);
    field(&mut out, "Namespace", run.metadata.namespace.as_deref().unwrap_or(""));
    field(&mut out, "Workflow", &run.spec.workflow_ref.name);
    field(&mut out, "Phase", &style.paint(phase.as_str(), phase.as_str()));
    if let Some(p) = &status.progress {
        field(&mut out, "Progress", p);
    }
    let msg = run_message(run);
    if !msg.is_empty() {
        field(&mut out, "Message", &msg);
    }
    if !run.spec.params.is_empty() {
        let params: Vec<String> = run.spec.params.iter().map(|(k, v)| escape(&format!("{k}={v}"))).collect();
        field(&mut out, "Parameters", &params.join(" "));
    }
    let mut requests = vec![];
    if run.spec.suspend {
        requests.push("suspend=true".to_string());
    }
    if run.spec.shutdown.requested() {
        requests.push(format!("shutdown={:?}", run.spec.shutdown));
    }
    if run.spec.retry_failed > 0 {
        requests.push(format!("retryFailed={}", run.spec.retry_failed));
    }
    if !requests.is_empty() {
        field(&mut out, "Requests", &requests.join(" "));
    }
    if let Some(t) = &status.started_at {
        field(&mut out, "Started", &format!("{} ({} ago)", t.0, human_duration(now.as_second() - t.0.as_second())));
    }
    if let Some(t) = &status.finished_at {
        field(&mut out, "Finished", &t.0.to_string());
    }
    if let Some(d) = span(status.started_at.as_ref(), status.finished_at.as_ref(), now) {
        field(&mut out, "Duration", &d);
    }
    out.push('\n');
    let rows = rows(run);
    if rows.is_empty() && phase.is_terminal() {
        out.push_str("No tasks: the run ended before any task started (see Message).\n");
    } else if rows.is_empty() {
        out.push_str("No tasks yet: the run has not been started by a controller.\n");
    } else {
        let mut cells = vec![];
        let mut exits = false;
        for row in &rows {
            if row.exit && !exits {
                exits = true;
                cells.push(vec![cell("onExit:"), cell(""), cell(""), cell(""), cell(""), cell(""), cell("")]);
            }
            let phase = row.entry.map(|e| e.phase).unwrap_or_default();
            let indent = format!("{}{}", "  ".repeat(row.depth), if row.instance { "╰ " } else { "" });
            let label = format!("{indent}{} {}", marker(phase), row.key);
            let shown = format!("{indent}{} {}", style.paint(phase.as_str(), marker(phase)), row.key);
            let (attempts, duration, object, exit, message) = match row.entry {
                None => (String::new(), String::new(), String::new(), String::new(), String::new()),
                Some(e) => (
                    if e.attempts > 0 { e.attempts.to_string() } else { String::new() },
                    span(e.started_at.as_ref(), e.finished_at.as_ref(), now).unwrap_or_default(),
                    object_of(run, e),
                    e.exit_code.map(|c| c.to_string()).unwrap_or_default(),
                    task_message(e),
                ),
            };
            cells.push(vec![
                (label, shown),
                painted(style, phase.as_str()),
                cell(attempts),
                cell(duration),
                cell(object),
                cell(exit),
                cell(message),
            ]);
        }
        out.push_str(&table(&["TASK", "PHASE", "ATTEMPTS", "DURATION", "POD / CHILD RUN", "EXIT", "MESSAGE / RESULT"], &cells));
    }
    out.push('\n');
    match &status.owner {
        Some(o) => {
            let _ = writeln!(out, "Owner: {} (lease {}, epoch {}, since {})", o.controller, o.lease, o.epoch, o.since.0);
        }
        None => out.push_str("Owner: none yet\n"),
    }
    if !status.owner_history.is_empty() {
        let history: Vec<Vec<(String, String)>> = status
            .owner_history
            .iter()
            .map(|h| {
                vec![cell(h.epoch.to_string()), cell(h.controller.clone()), cell(format!("{:?}", h.reason)), cell(h.since.0.to_string())]
            })
            .collect();
        out.push_str("Owner history:\n");
        for line in table(&["EPOCH", "CONTROLLER", "REASON", "SINCE"], &history).lines() {
            let _ = writeln!(out, "  {line}");
        }
    }
    out
}

/// The pod or child run of an entry's current attempt. A finished instance
/// of a fanned-out container task keeps no pod name in status; its pod has
/// the deterministic one.
fn object_of(run: &WorkflowInstance, e: &TaskStatus) -> String {
    if let Some(name) = e.pod_name.clone().or_else(|| e.child_instance.clone()) {
        return name;
    }
    let spec = run.status.as_ref().and_then(|s| s.workflow_spec.as_ref());
    let container = spec.and_then(|s| s.task(naming::task_of(&e.name))).is_some_and(|t| t.container.is_some());
    if container && e.attempts > 0 && naming::parse_instance_key(&e.name).is_some() {
        pod_of(run.metadata.name.as_deref().unwrap_or_default(), e, None)
    } else {
        String::new()
    }
}

/// What a task's row says: its result once it succeeded, else its message
/// (with the reason of a skip).
fn task_message(e: &TaskStatus) -> String {
    if let Some(result) = e.outputs.as_ref().and_then(|o| o.result.as_deref()) {
        return format!("result: {}", one_line(result, 80));
    }
    let message = e.message.as_deref().map(|m| one_line(m, 80)).unwrap_or_default();
    match (&e.reason, message.is_empty()) {
        (Some(r), true) => r.clone(),
        (Some(r), false) if e.phase == TaskPhase::Skipped => format!("{r}: {message}"),
        _ => message,
    }
}

/// `baton watch` without a terminal: one line per change from `before` to
/// `after` (the run's phase and owner, each task's phase), so a log shows
/// the run's story.
pub fn changes(before: Option<&WorkflowInstance>, after: &WorkflowInstance) -> Vec<String> {
    let mut lines = vec![];
    let old = before.and_then(|r| r.status.as_ref());
    let new = after.status.clone().unwrap_or_default();
    let old_phase = before.map(phase_of);
    let new_phase = phase_of(after);
    // The run's end comes after the tasks that ended it.
    let mut ended = None;
    if old_phase != Some(new_phase) {
        let msg = if new_phase.is_terminal() { run_message(after) } else { String::new() };
        let line = if msg.is_empty() { format!("run {}", new_phase.as_str()) } else { format!("run {}: {msg}", new_phase.as_str()) };
        if new_phase.is_terminal() { ended = Some(line) } else { lines.push(line) }
    }
    let old_owner = old.and_then(|s| s.owner.as_ref()).map(|o| o.epoch);
    if let Some(o) = &new.owner
        && old_owner != Some(o.epoch)
    {
        let reason = new.owner_history.iter().find(|h| h.epoch == o.epoch).map(|h| format!(", {:?}", h.reason)).unwrap_or_default();
        lines.push(format!("owner {} (epoch {}{reason})", o.controller, o.epoch));
    }
    for row in rows(after) {
        let Some(e) = row.entry else { continue };
        let prev = old.and_then(|s| s.tasks.iter().find(|t| t.name == e.name));
        if prev.is_some_and(|p| p.phase == e.phase && p.attempts == e.attempts) {
            continue;
        }
        if prev.is_none() && e.phase == TaskPhase::Pending {
            continue;
        }
        let mut line = format!("task {} {}", e.name, e.phase.as_str());
        match e.phase {
            TaskPhase::Running => {
                if let Some(obj) = e.pod_name.as_ref().or(e.child_instance.as_ref()) {
                    let _ = write!(line, " ({obj}, attempt {})", e.attempts);
                }
            }
            TaskPhase::Pending => {}
            _ => {
                let msg = task_message(e);
                if let Some(code) = e.exit_code {
                    let _ = write!(line, " (exit {code})");
                }
                if !msg.is_empty() {
                    let _ = write!(line, ": {msg}");
                }
            }
        }
        lines.push(line);
    }
    lines.extend(ended);
    lines
}

#[cfg(test)]
mod tests;

/// The phase a run ended in, once its owner has seen its latest spec: a
/// finished run whose `retryFailed` was just raised is about to go on.
pub fn ended(run: &WorkflowInstance) -> Option<RunPhase> {
    let status = run.status.as_ref()?;
    let seen = status.observed_generation.unwrap_or(0) >= run.metadata.generation.unwrap_or(0);
    status.phase.filter(|p| p.is_terminal() && seen)
}
