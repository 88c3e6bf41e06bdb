//! The run's requests: shutdown (Stop runs the exit tasks, Terminate does
//! not), suspend/resume, and retryFailed.

use super::{CONDITION_CLEANED_UP, Note, REASON_TERMINATED, RunPhase, Step, TaskPhase, TaskStatus};
use crate::api::Shutdown;
use crate::dag::State;

/// Conditions of a finished run that a retry takes back.
const ENDED: [&str; 3] = ["Finished", CONDITION_CLEANED_UP, super::exit::CONDITION_EXITING];

impl Step<'_> {
    pub(super) fn apply_requests(&mut self) {
        let spec = self.input.spec;
        let phase = self.st.phase.unwrap_or_default();
        let applied = self.st.retry_failed_applied.unwrap_or(0);
        if phase.is_terminal() {
            if spec.retry_failed > applied {
                if spec.shutdown.requested() {
                    self.events.push(Note::warning("RetryDeferred", "retryFailed waits until spec.shutdown is cleared".into()));
                } else {
                    self.retry_failed();
                }
            }
        } else {
            if spec.retry_failed > applied {
                // Recorded as seen, so it does not fire later by surprise
                // when the run ends; the user is told to ask again.
                self.st.retry_failed_applied = Some(spec.retry_failed);
                self.events.push(Note::warning(
                    "RetryIgnored",
                    format!(
                        "retryFailed={} ignored: the run is still {}; retryFailed re-runs tasks of a finished run, increase it again once the run has ended",
                        spec.retry_failed,
                        phase.as_str()
                    ),
                ));
            }
            match spec.shutdown {
                Shutdown::Terminate => {
                    let why = "stopped by spec.shutdown=Terminate";
                    let dag = self.input.dag;
                    self.end_unfinished(|t| !dag.is_exit(t), TaskPhase::Stopped, TaskPhase::Stopped, why);
                    self.end_unfinished(|t| dag.is_exit(t), TaskPhase::Stopped, TaskPhase::Skipped, why);
                    for node in self.nodes.iter_mut().filter(|n| n.entry.phase == TaskPhase::Skipped && n.entry.reason.is_none()) {
                        node.entry.reason = Some(REASON_TERMINATED.into());
                    }
                    self.end_run(RunPhase::Stopped, "Stopped", "run stopped by spec.shutdown=Terminate; exit tasks skipped".into());
                }
                Shutdown::Stop => {
                    if self.st.dag_phase.is_none() {
                        let dag = self.input.dag;
                        self.end_unfinished(|t| !dag.is_exit(t), TaskPhase::Stopped, TaskPhase::Stopped, "stopped by spec.shutdown");
                        self.dag_ended(RunPhase::Stopped, "Stopped", "run stopped by spec.shutdown=Stop".into());
                    }
                    // Stop wins over a pause, and over never having started:
                    // the exit tasks run.
                    if !self.st.phase.unwrap_or_default().is_terminal() {
                        self.st.phase = Some(RunPhase::Running);
                    }
                }
                Shutdown::None => {
                    if spec.suspend && phase != RunPhase::Paused {
                        self.st.phase = Some(RunPhase::Paused);
                        self.events.push(Note::normal("Paused", "run paused by spec.suspend: no new task starts".into()));
                    } else if !spec.suspend && phase == RunPhase::Paused {
                        self.st.phase = Some(RunPhase::Running);
                        self.events.push(Note::normal("Resumed", "run resumed".into()));
                    }
                }
            }
        }
        self.st.observed_generation = Some(self.input.generation);
    }

    /// Re-runs the failed, skipped and stopped units of the DAG, and every
    /// exit task once the DAG has ended again. Units keep their attempt
    /// counts, so their new pods and children get new names.
    fn retry_failed(&mut self) {
        self.st.retry_failed_applied = Some(self.input.spec.retry_failed);
        // Skipped by its own `when` (or for want of items) is an outcome,
        // not a failure: not re-run.
        let again = |t: &TaskStatus| {
            matches!(t.phase, TaskPhase::Failed | TaskPhase::Skipped | TaskPhase::Stopped) && super::state(t) != State::Satisfied
        };
        let mut count = 0;
        for task in self.input.dag.dag_tasks() {
            let fans_out = self.spec(task).fans_out();
            let node = &mut self.nodes[task];
            if fans_out && !node.instances.is_empty() {
                let n = node.instances.iter_mut().filter(|t| again(t)).map(reset).count();
                if n > 0 {
                    count += n;
                    reset(&mut node.entry);
                    node.entry.phase = TaskPhase::Running;
                }
            } else if again(&node.entry) {
                count += 1;
                reset(&mut node.entry);
            }
        }
        let exit_failed = self.input.dag.exit_tasks().any(|t| again(&self.nodes[t].entry));
        if count == 0 && !exit_failed {
            self.events.push(Note::normal("RetryFailed", "nothing to re-run: no task failed, was skipped or stopped".into()));
            return;
        }
        // Exit tasks run again after the DAG ends again, over the same items.
        for task in self.input.dag.exit_tasks() {
            let node = &mut self.nodes[task];
            node.instances.iter_mut().for_each(reset);
            reset(&mut node.entry);
            if !node.instances.is_empty() {
                node.entry.phase = TaskPhase::Running;
            }
        }
        self.st.phase = Some(if self.input.spec.suspend { RunPhase::Paused } else { RunPhase::Running });
        self.st.finished_at = None;
        self.st.dag_phase = None;
        self.st.conditions.retain(|c| !ENDED.contains(&c.type_.as_str()));
        self.events.push(Note::normal("RetryFailed", format!("re-running {count} failed, skipped or stopped tasks, then the exit tasks")));
    }
}

/// Makes an entry wait to run again.
fn reset(t: &mut TaskStatus) {
    t.phase = TaskPhase::Pending;
    t.retries_used = 0;
    t.finished_at = None;
    t.retry_after = None;
    t.message = None;
    t.outputs = None;
    t.reason = None;
}
