//! The end of a run: once every task of the DAG has ended, its outcome is
//! recorded (`status.dagPhase`, condition Exiting) and the exit tasks run;
//! once they have ended too, the run takes the DAG's outcome, or Failed if
//! an exit task failed. Without exit tasks the run ends with the DAG.

use super::{Note, RunPhase, Step, TaskPhase, TaskStatus};
use crate::dag::State;

/// Condition of a run whose DAG has ended while its exit tasks run.
pub const CONDITION_EXITING: &str = "Exiting";

impl Step<'_> {
    /// The DAG has ended with `phase`: run the exit tasks, or end the run
    /// when there are none.
    pub(super) fn dag_ended(&mut self, phase: RunPhase, reason: &str, message: String) {
        if self.input.workflow.on_exit.is_empty() {
            return self.end_run(phase, reason, message);
        }
        self.st.dag_phase = Some(phase);
        self.set_exiting(true, reason, message.clone());
        self.events.push(Note::normal(
            "Exiting",
            format!("the DAG ended {}: {message}; running {} exit tasks", phase.as_str(), self.input.workflow.on_exit.len()),
        ));
    }

    fn set_exiting(&mut self, on: bool, reason: &str, message: String) {
        let (generation, now) = (self.input.generation, super::time(self.input.now));
        crate::conditions::set(&mut self.st.conditions, CONDITION_EXITING, on, reason, message, Some(generation), now);
    }

    /// Ends the DAG when all its tasks have, and the run when the exit
    /// tasks have too. Returns whether the DAG ended in this call.
    pub(super) fn conclude(&mut self) -> bool {
        if self.st.phase.unwrap_or_default().is_terminal() {
            return false;
        }
        let dag = self.input.dag;
        let mut ended_now = false;
        if self.st.dag_phase.is_none() {
            let tasks: Vec<usize> = dag.dag_tasks().collect();
            if tasks.iter().all(|&t| self.nodes[t].entry.phase.is_finished()) {
                let failed = tasks.iter().find(|&&t| self.nodes[t].entry.phase == TaskPhase::Failed);
                let unsatisfied = failed.or_else(|| tasks.iter().find(|&&t| super::state(&self.nodes[t].entry) == State::Unsatisfied));
                match unsatisfied {
                    None => self.dag_ended(RunPhase::Succeeded, "Succeeded", format!("all {} tasks succeeded", tasks.len())),
                    Some(&t) => {
                        let message = format!("task {}", ended(&self.nodes[t].entry));
                        self.dag_ended(RunPhase::Failed, "TaskFailed", message)
                    }
                }
                ended_now = true;
            }
        }
        let Some(outcome) = self.st.dag_phase else { return ended_now };
        if self.st.phase.unwrap_or_default().is_terminal() {
            return ended_now;
        }
        if !dag.exit_tasks().all(|t| self.nodes[t].entry.phase.is_finished()) {
            return ended_now;
        }
        let exiting = self.st.conditions.iter().find(|c| c.type_ == CONDITION_EXITING).cloned();
        match dag.exit_tasks().find(|&t| super::state(&self.nodes[t].entry) == State::Unsatisfied) {
            Some(t) => {
                let message = format!("exit task {} (the DAG ended {})", ended(&self.nodes[t].entry), outcome.as_str());
                self.end_run(RunPhase::Failed, "ExitTaskFailed", message);
            }
            // The run's end repeats why the DAG ended.
            None => {
                let (reason, message) = exiting.map_or(("Finished".to_string(), String::new()), |c| (c.reason, c.message));
                self.end_run(outcome, &reason, message);
            }
        }
        self.set_exiting(false, "ExitTasksDone", format!("{} exit tasks ended", dag.exit_tasks().len()));
        ended_now
    }
}

/// How a task that did not succeed ended, for a condition message:
/// `NAME ended PHASE: MESSAGE`.
fn ended(e: &TaskStatus) -> String {
    let why = e.message.as_deref().map(|m| format!(": {m}")).unwrap_or_default();
    format!("{} ended {:?}{why}", e.name, e.phase)
}
