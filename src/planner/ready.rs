//! Starting what may start: tasks whose dependencies are satisfied (exit
//! tasks only once the DAG has ended), fanned out when they have items,
//! decided by their `when`, within the run's parallelism.

use std::collections::BTreeMap;

use super::{Note, REASON_WHEN_FALSE, RunPhase, Step, TaskPhase, Unit, naming, results};
use crate::when;

impl Step<'_> {
    /// The scope of templates and `when` of task `task` (of the instance
    /// with `item`): results are read from the status being built.
    pub(super) fn scope(
        &self,
        task: usize,
        item: Option<serde_json::Value>,
    ) -> results::RunScope<'_, impl Fn(&str) -> Option<String> + '_> {
        results::RunScope {
            run_name: self.input.run_name,
            namespace: self.input.namespace,
            params: self.input.params,
            result: move |name: &str| {
                let node = &self.nodes[self.specs.iter().position(|s| s.name == name)?];
                results::result_of(self.input.workflow, name, std::iter::once(&node.entry).chain(&node.instances))
            },
            item,
            phase: results::run_phase(self.input.dag.is_exit(task), &self.st),
        }
    }

    /// Starts what may start. A task skipped (by its `when`, or for want of
    /// items) satisfies its dependants at once, so passes repeat while they
    /// skip something.
    pub(super) fn start_ready(&mut self) {
        for _ in 0..=self.nodes.len() {
            if !self.start_pass() {
                break;
            }
        }
    }

    /// One pass over the ready tasks; true when a task was skipped. Every
    /// decision of the pass (fan-outs, `when`) is made before anything
    /// starts: with failFast, a task failed by a decision starts nothing.
    fn start_pass(&mut self) -> bool {
        if self.st.phase != Some(RunPhase::Running) {
            return false;
        }
        let dag = self.input.dag;
        let exiting = self.st.dag_phase.is_some();
        if exiting && self.dag_still_running() {
            return false;
        }
        let skipped_before = self.nodes.iter().filter(|n| n.entry.phase == TaskPhase::Skipped).count();
        let failed_before = self.failed_in_dag();
        let may_run = |task: usize| exiting == dag.is_exit(task);
        let states = self.states();
        let ready: Vec<usize> = dag.ready(&states).filter(|&t| may_run(t)).collect();
        for &task in &ready {
            if self.spec(task).fans_out() {
                self.fan_out(task);
            }
        }
        let now = self.input.now;
        let due = |t: &crate::api::TaskStatus| t.phase == TaskPhase::Pending && t.retry_after.as_ref().is_none_or(|r| r.0 <= now);
        let candidates: Vec<Unit> = self
            .units()
            .into_iter()
            .filter(|u| may_run(u.task) && due(self.unit(*u)))
            .filter(|u| u.instance.is_some() || ready.contains(&u.task))
            .filter(|u| u.instance.is_none() || self.nodes[u.task].entry.phase == TaskPhase::Running)
            .collect();
        let running = self.units().into_iter().filter(|u| self.unit(*u).phase == TaskPhase::Running).count();
        let limit = self.input.workflow.parallelism.map_or(usize::MAX, |p| p.max(1) as usize);
        let slots = limit.saturating_sub(running);
        let mut parsed: BTreeMap<usize, Result<when::When, String>> = BTreeMap::new();
        // What a `when` reads of other tasks: they are upstream of it, so
        // nothing this pass decides changes them.
        let names: Vec<String> = self.specs.iter().map(|s| s.name.clone()).collect();
        let phases: BTreeMap<&str, &'static str> =
            self.specs.iter().zip(&self.nodes).map(|(&s, n)| (s.name.as_str(), n.entry.phase.as_str())).collect();
        let mut approved = Vec::new();
        for u in candidates {
            if approved.len() >= slots {
                break;
            }
            // Decided once per round: not again for a retry of a failed
            // attempt, again after retryFailed.
            if self.unit(u).retries_used == 0
                && let Some(source) = &self.spec(u.task).when
            {
                let expr = parsed.entry(u.task).or_insert_with(|| when::parse(source));
                let decision = match expr {
                    Ok(expr) => self.decide(u, expr, &names, &phases),
                    Err(e) => Err(format!("when does not parse: {e}")),
                };
                match decision {
                    Ok(true) => {}
                    Ok(false) => {
                        self.skip(u, source);
                        continue;
                    }
                    Err(e) => {
                        let why = format!("when failed: {e}");
                        self.finish(u, TaskPhase::Failed, Some(why.clone()));
                        self.events.push(Note::warning("TaskFailed", format!("task {}: {why}", self.label(u))));
                        continue;
                    }
                }
            }
            approved.push(u);
        }
        let fail_fast_now = self.input.workflow.fail_fast() && self.failed_in_dag() > failed_before;
        if !fail_fast_now {
            for u in approved {
                self.start(u);
            }
        }
        self.settle_fanouts();
        self.nodes.iter().filter(|n| n.entry.phase == TaskPhase::Skipped).count() > skipped_before
    }

    /// Whether a pod or child run of a DAG task still runs (stopped, being
    /// deleted): exit tasks wait for the DAG's work to be over.
    fn dag_still_running(&self) -> bool {
        let dag = self.input.dag;
        let in_dag = |task: &str| self.specs.iter().position(|s| s.name == task).is_some_and(|t| !dag.is_exit(t));
        let observed = self.input.observed;
        observed.pods.iter().any(|p| matches!(p.state, super::PodState::Waiting | super::PodState::Running) && in_dag(&p.task))
            || observed.children.iter().any(|c| !c.phase.is_some_and(RunPhase::is_terminal) && in_dag(&c.task))
    }

    /// Failed entries of the DAG's tasks and of their instances.
    fn failed_in_dag(&self) -> usize {
        self.input
            .dag
            .dag_tasks()
            .flat_map(|t| std::iter::once(&self.nodes[t].entry).chain(&self.nodes[t].instances))
            .filter(|e| e.phase == TaskPhase::Failed)
            .count()
    }

    /// Evaluates `expr` for unit `u`; `names` and `phases` are the tasks'.
    fn decide(&self, u: Unit, expr: &when::When, names: &[String], phases: &BTreeMap<&str, &'static str>) -> Result<bool, String> {
        let item = results::item_of(self.spec(u.task), self.unit(u))?;
        self.scope(u.task, item).when(expr, names, |n| phases.get(n).copied())
    }

    /// `when` was false: the unit is skipped, and its dependants still run.
    fn skip(&mut self, u: Unit, source: &str) {
        let label = self.label(u);
        self.finish(u, TaskPhase::Skipped, Some(format!("when was false: {source}")));
        self.unit_mut(u).reason = Some(REASON_WHEN_FALSE.into());
        self.events.push(Note::normal("TaskSkipped", format!("task {label} skipped: when {source:?} is false")));
    }

    /// Records the intent to start the next attempt of unit `u`.
    fn start(&mut self, u: Unit) {
        let spec = self.spec(u.task);
        let run = self.input.run_name;
        let now = self.input.now;
        let label = self.label(u);
        let t = self.unit_mut(u);
        let attempt = t.attempts;
        let part = naming::object_part(&t.name);
        t.attempts += 1;
        t.phase = TaskPhase::Running;
        t.started_at = Some(super::time(now));
        t.finished_at = None;
        t.retry_after = None;
        t.exit_code = None;
        if spec.container.is_some() {
            t.pod_name = Some(naming::pod(run, &part, attempt));
        } else {
            t.child_instance = Some(naming::child(run, &part, attempt));
        }
        self.events.push(Note::progress("TaskStarted", format!("task {label} attempt {attempt} started")));
    }
}
