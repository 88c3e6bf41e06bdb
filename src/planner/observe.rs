//! Reads what the pods and child runs say about running units: success
//! (with the result, when it is kept), failure (retried or for good), a
//! child stopped by its own request, or a timeout.

use super::{Note, Outcome, PodState, RunPhase, Step, TaskPhase, Unit, after, results};

/// Longest end of a failed container's termination message (the end of its
/// log) quoted in the task's message.
const LOG_TAIL: usize = 512;

impl Step<'_> {
    pub(super) fn observe(&mut self) {
        let observed = self.input.observed;
        for u in self.units() {
            let t = self.unit(u).clone();
            if t.phase != TaskPhase::Running {
                continue;
            }
            let timeout = self.spec(u.task).timeout_seconds;
            let timed_out = match (timeout, &t.started_at) {
                (Some(s), Some(start)) => self.input.now >= after(start, s),
                _ => false,
            };
            let pod = t.pod_name.as_ref().and_then(|n| observed.pods.iter().find(|p| &p.name == n));
            let outcome = if let Some(pod) = pod {
                match pod.state {
                    PodState::Succeeded => Some(Outcome::Succeeded(pod.exit_code)),
                    PodState::Failed => {
                        let how = match (&pod.exit_code, &pod.reason) {
                            (Some(code), Some(r)) => format!("pod {} failed: exit code {code} ({r})", pod.name),
                            (Some(code), None) => format!("pod {} failed: exit code {code}", pod.name),
                            (None, r) => format!("pod {} failed: {}", pod.name, r.as_deref().unwrap_or("no reason given")),
                        };
                        Some(Outcome::Failed(match pod.message.as_deref().map(str::trim).filter(|m| !m.is_empty()) {
                            Some(log) => format!("{how}: {}", tail(log, LOG_TAIL)),
                            None => how,
                        }))
                    }
                    _ => None,
                }
            } else if let Some(child) = t.child_instance.as_ref().and_then(|n| observed.children.iter().find(|c| &c.name == n)) {
                match child.phase {
                    Some(RunPhase::Succeeded) => Some(Outcome::Succeeded(None)),
                    Some(RunPhase::Failed) => Some(Outcome::Failed(format!("child run {} ended Failed", child.name))),
                    // The parent never stops a current child: someone asked
                    // the child itself to stop. The task ends as asked, and
                    // is not retried.
                    Some(RunPhase::Stopped) => Some(Outcome::Stopped(format!("child run {} was stopped by its spec.shutdown", child.name))),
                    _ => None,
                }
            } else {
                None
            };
            let label = self.label(u);
            match outcome {
                Some(Outcome::Succeeded(exit_code)) => {
                    self.unit_mut(u).exit_code = exit_code;
                    self.finish(u, TaskPhase::Succeeded, None);
                    self.unit_mut(u).message = None;
                    self.events.push(Note::progress("TaskSucceeded", format!("task {label} succeeded")));
                    self.keep_result(u, pod.and_then(|p| p.message.as_deref()));
                }
                Some(Outcome::Failed(why)) => {
                    if let Some(pod) = pod {
                        self.unit_mut(u).exit_code = pod.exit_code;
                    }
                    self.attempt_failed(u, why);
                }
                Some(Outcome::Stopped(why)) => {
                    self.events.push(Note::progress("TaskStopped", format!("task {label}: {why}")));
                    self.finish(u, TaskPhase::Stopped, Some(why));
                }
                None if timed_out => {
                    self.abandon_child(u);
                    self.attempt_failed(u, format!("timed out after {}s", timeout.unwrap_or_default()))
                }
                None => {}
            }
        }
        self.settle_fanouts();
    }

    /// Records a succeeded unit's result when a later template or `when`
    /// reads it, unless it would take the run's kept results past
    /// [`results::MAX_KEPT`]: then the unit fails, and so does the run.
    fn keep_result(&mut self, u: Unit, message: Option<&str>) {
        let name = &self.spec(u.task).name;
        if !self.kept.get_or_init(|| results::kept(self.input.workflow)).contains(name.as_str()) {
            return;
        }
        let result = results::read(message);
        let total = self.kept_bytes + result.len();
        if total > results::MAX_KEPT {
            let why = format!(
                "its result ({} bytes) would bring the results kept in status to {total} bytes, over the limit of {} bytes",
                result.len(),
                results::MAX_KEPT
            );
            self.finish(u, TaskPhase::Failed, Some(why.clone()));
            self.events.push(Note::warning("TaskFailed", format!("task {}: {why}", self.label(u))));
            let first = format!("task {}: {why}", self.label(u));
            self.results_overflow.get_or_insert(first);
            return;
        }
        self.kept_bytes = total;
        self.unit_mut(u).outputs = Some(crate::api::TaskOutputs { result: Some(result) });
    }
}

/// The last `max` bytes of `text` (on a character boundary), marked as cut.
fn tail(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let start = (text.len() - max..text.len()).find(|&i| text.is_char_boundary(i)).unwrap_or(text.len());
    format!("...{}", &text[start..])
}

#[cfg(test)]
mod tests {
    #[test]
    fn tail_keeps_the_end_on_a_char_boundary() {
        assert_eq!(super::tail("short", 10), "short");
        let t = super::tail(&format!("{}end", "é".repeat(10)), 6);
        assert!(t.starts_with("...") && t.ends_with("end") && t.len() <= 9, "{t}");
    }
}
