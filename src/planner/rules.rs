//! The run's rules: its deadline, failFast, and skipping what can no longer
//! run because a dependency did not succeed.

use super::{REASON_UPSTREAM_FAILED, RunPhase, Step, TaskPhase};

impl Step<'_> {
    pub(super) fn enforce_rules(&mut self) {
        let phase = self.st.phase.unwrap_or_default();
        if phase.is_terminal() {
            return;
        }
        let dag = self.input.dag;
        let in_dag = |t: usize| !dag.is_exit(t);
        if self.st.dag_phase.is_none() {
            if let Some(why) = self.results_overflow.take() {
                self.end_unfinished(in_dag, TaskPhase::Stopped, TaskPhase::Skipped, "stopped: the run's kept results are over the limit");
                self.dag_ended(RunPhase::Failed, "ResultsTooLarge", why);
                return;
            }
            if let (Some(limit), Some(start)) = (self.input.workflow.active_deadline_seconds, &self.st.started_at)
                && self.input.now >= super::after(start, limit)
            {
                self.end_unfinished(in_dag, TaskPhase::Failed, TaskPhase::Skipped, "run deadline exceeded");
                self.dag_ended(RunPhase::Failed, "DeadlineExceeded", format!("run still going after activeDeadlineSeconds={limit}"));
                return;
            }
            let failed = self.units().into_iter().any(|u| in_dag(u.task) && self.unit(u).phase == TaskPhase::Failed);
            if self.input.workflow.fail_fast() && failed {
                self.end_unfinished(in_dag, TaskPhase::Stopped, TaskPhase::Skipped, "stopped by failFast after a task failed");
            }
        }
        loop {
            let states = self.states();
            let blocked: Vec<usize> = dag.blocked(&states).collect();
            if blocked.is_empty() {
                break;
            }
            for task in blocked {
                let node = &mut self.nodes[task];
                node.entry.phase = TaskPhase::Skipped;
                node.entry.reason = Some(REASON_UPSTREAM_FAILED.into());
                node.entry.message = Some("a dependency did not succeed".into());
                node.entry.finished_at = Some(super::time(self.input.now));
            }
        }
    }
}
