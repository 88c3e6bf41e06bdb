//! Task results: which are kept in status, how a termination message
//! becomes a result, the cap on what status holds, and the scope templates
//! and `when` expressions read them from.

use std::collections::{BTreeMap, BTreeSet};

use crate::api::{RunPhase, TaskSpec, TaskStatus, WorkflowSpec};
use crate::template::{self, Ref};
use crate::{dag, naming, when};

/// Most bytes of results (and of items that withParam yielded) a run keeps
/// in status: with the spec snapshot it stays well below the API server's
/// object size limit.
pub const MAX_KEPT: usize = 256 * 1024;

/// A termination message as a result: one trailing newline trimmed.
pub fn read(message: Option<&str>) -> String {
    let m = message.unwrap_or_default();
    m.strip_suffix("\r\n").or_else(|| m.strip_suffix('\n')).unwrap_or(m).to_string()
}

/// Bytes of data an entry keeps in status: its result and its recorded item.
pub fn kept_size(t: &TaskStatus) -> usize {
    t.outputs.as_ref().and_then(|o| o.result.as_ref()).map_or(0, String::len) + t.item.as_ref().map_or(0, String::len)
}

/// The item of an entry of `status.tasks`: recorded with it (withParam), or
/// taken from the spec by its index (withItems); None for a task's own entry.
pub fn item_of(spec: &TaskSpec, entry: &TaskStatus) -> Result<Option<serde_json::Value>, String> {
    if let Some(json) = &entry.item {
        return serde_json::from_str(json).map(Some).map_err(|e| format!("its recorded item is not JSON: {e}"));
    }
    match (naming::parse_instance_key(&entry.name), &spec.with_items) {
        (Some((_, i)), Some(items)) => items.get(i).cloned().map(Some).ok_or_else(|| format!("withItems has no item {i}")),
        _ => Ok(None),
    }
}

/// Tasks whose results some template or `when` of the workflow reads. A
/// `when` that reads `tasks` in a way that names no task keeps them all.
pub fn kept(workflow: &WorkflowSpec) -> BTreeSet<String> {
    let mut kept = BTreeSet::new();
    for task in workflow.all_tasks() {
        for text in dag::templated_texts(task) {
            for r in template::references(text) {
                if let Ref::Result(t) | Ref::Results(t) = r {
                    kept.insert(t.to_string());
                }
            }
        }
        if let Some(Ok(w)) = task.when.as_deref().map(when::parse) {
            match w.refs().tasks {
                when::TaskRefs::Names(names) => kept.extend(names),
                when::TaskRefs::Any => return workflow.all_tasks().map(|t| t.name.clone()).collect(),
            }
        }
    }
    kept
}

/// A task's result as templates and `when` read it, from the entries of
/// `status.tasks` (its own and its instances'): the result, or "" when it
/// kept none; for a fanned-out task, the JSON list of its instances'
/// results in item order (null for an instance that has none). None for a
/// name that is not a task.
pub fn result_of<'a>(workflow: &WorkflowSpec, task: &str, entries: impl IntoIterator<Item = &'a TaskStatus>) -> Option<String> {
    let spec = workflow.task(task)?;
    let result = |t: &TaskStatus| t.outputs.as_ref().and_then(|o| o.result.clone());
    if spec.fans_out() {
        let mut list: Vec<(usize, Option<String>)> = entries
            .into_iter()
            .filter_map(|t| naming::parse_instance_key(&t.name).filter(|(n, _)| *n == task).map(|(_, i)| (i, result(t))))
            .collect();
        list.sort_by_key(|(i, _)| *i);
        let values: Vec<serde_json::Value> =
            list.into_iter().map(|(_, r)| r.map_or(serde_json::Value::Null, serde_json::Value::String)).collect();
        Some(serde_json::Value::Array(values).to_string())
    } else {
        Some(entries.into_iter().find(|t| t.name == task).and_then(result).unwrap_or_default())
    }
}

/// Everything a template or `when` of one unit can read.
pub struct RunScope<'a, R: Fn(&str) -> Option<String>> {
    pub run_name: &'a str,
    pub namespace: &'a str,
    pub params: &'a BTreeMap<String, String>,
    /// A task's result (see [`result_of`]).
    pub result: R,
    /// The unit's item, when it is an instance.
    pub item: Option<serde_json::Value>,
    /// `run.phase`: the DAG's outcome for exit tasks, the run's phase else.
    pub phase: RunPhase,
}

impl<R: Fn(&str) -> Option<String>> template::Scope for RunScope<'_, R> {
    fn param(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }
    fn result(&self, task: &str) -> Option<String> {
        (self.result)(task)
    }
    fn item(&self) -> Option<&serde_json::Value> {
        self.item.as_ref()
    }
    fn run(&self, field: &str) -> Option<&str> {
        match field {
            "name" => Some(self.run_name),
            "namespace" => Some(self.namespace),
            "phase" => Some(self.phase.as_str()),
            _ => None,
        }
    }
}

impl<'a> RunScope<'a, Box<dyn Fn(&str) -> Option<String> + 'a>> {
    /// The scope of the entry `key` of a written status, as the pod or
    /// child run of that entry is built: results and the item come from the
    /// status, never from what is observed now.
    pub fn of_entry(
        run: &'a crate::api::WorkflowInstance,
        workflow: &'a WorkflowSpec,
        status: &'a crate::api::WorkflowInstanceStatus,
        params: &'a BTreeMap<String, String>,
        key: &str,
    ) -> Result<Self, String> {
        let task = naming::task_of(key);
        let item = match (workflow.task(task), status.tasks.iter().find(|t| t.name == key)) {
            (Some(spec), Some(entry)) => item_of(spec, entry)?,
            _ => None,
        };
        let phase = run_phase(workflow.on_exit.iter().any(|t| t.name == task), status);
        Ok(RunScope {
            run_name: run.metadata.name.as_deref().unwrap_or_default(),
            namespace: run.metadata.namespace.as_deref().unwrap_or_default(),
            params,
            result: Box::new(move |t: &str| result_of(workflow, t, &status.tasks)),
            item,
            phase,
        })
    }
}

/// `run.phase` as a task reads it: the DAG's outcome in an exit task, the
/// run's phase in a task of the DAG.
pub fn run_phase(exit_task: bool, status: &crate::api::WorkflowInstanceStatus) -> RunPhase {
    if exit_task { status.dag_phase } else { status.phase }.unwrap_or(RunPhase::Running)
}

impl<R: Fn(&str) -> Option<String>> RunScope<'_, R> {
    /// Evaluates a `when` over this scope; `phase_of` gives the phase of a
    /// task it reads.
    pub fn when(&self, expr: &when::When, names: &[String], phase_of: impl Fn(&str) -> Option<&'static str>) -> Result<bool, String> {
        let wanted: Vec<&String> = match expr.refs().tasks {
            when::TaskRefs::Any => names.iter().collect(),
            when::TaskRefs::Names(refs) => names.iter().filter(|n| refs.contains(n.as_str())).collect(),
        };
        let owned: Vec<(&str, &'static str, Option<String>)> =
            wanted.iter().filter_map(|n| Some((n.as_str(), phase_of(n)?, (self.result)(n)))).collect();
        let vars = when::Vars {
            params: self.params,
            tasks: owned.iter().map(|(n, phase, result)| (n.to_string(), when::TaskVars { phase, result: result.as_deref() })).collect(),
            item: self.item.as_ref(),
            run: when::RunVars { name: self.run_name, namespace: self.namespace, phase: self.phase.as_str() },
        };
        expr.eval(&vars)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{TaskOutputs, TaskSpec};

    fn entry(name: &str, result: Option<&str>) -> TaskStatus {
        TaskStatus { name: name.into(), outputs: result.map(|r| TaskOutputs { result: Some(r.into()) }), ..Default::default() }
    }

    #[test]
    fn one_trailing_newline_is_trimmed() {
        assert_eq!(read(Some("ok\n")), "ok");
        assert_eq!(read(Some("ok\n\n")), "ok\n");
        assert_eq!(read(Some("ok\r\n")), "ok");
        assert_eq!(read(None), "");
    }

    #[test]
    fn fanned_out_results_are_a_list_in_item_order() {
        let workflow = WorkflowSpec {
            tasks: vec![
                TaskSpec { name: "p".into(), with_items: Some(vec![1.into(), 2.into(), 3.into()]), ..Default::default() },
                TaskSpec { name: "one".into(), ..Default::default() },
            ],
            ..Default::default()
        };
        let entries = [entry("p", None), entry("p(10)", Some("c")), entry("p(2)", None), entry("p(0)", Some("a")), entry("one", Some("x"))];
        assert_eq!(result_of(&workflow, "p", &entries).unwrap(), r#"["a",null,"c"]"#);
        assert_eq!(result_of(&workflow, "one", &entries).unwrap(), "x");
        assert_eq!(result_of(&workflow, "nope", &entries), None);
    }
}
