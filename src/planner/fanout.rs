//! Fan-out: a task with `withItems` or `withParam` runs once per item. Its
//! item list is worked out once, when its dependencies are satisfied, and
//! recorded as one status entry per instance (`TASK(INDEX)`, with its
//! item) in the same write that starts the first of them; its own entry
//! then follows its instances.

use super::results::{self, MAX_KEPT};
use super::{Note, REASON_NO_ITEMS, REASON_WHEN_FALSE, Step, TaskPhase, TaskStatus};
use crate::api::{MAX_ITEMS, TaskSpec};
use crate::{naming, template};

/// The items of a fanned-out task: `withItems` as given, or the JSON list
/// that its `withParam` template yields in `scope`.
pub fn items(spec: &TaskSpec, scope: &dyn template::Scope) -> Result<Vec<serde_json::Value>, String> {
    let items = match (&spec.with_items, &spec.with_param) {
        (Some(items), _) => items.clone(),
        (None, Some(param)) => {
            let text = template::substitute(param, scope).map_err(|e| format!("withParam: {e}"))?;
            match serde_json::from_str::<serde_json::Value>(&text) {
                Ok(serde_json::Value::Array(items)) => items,
                Ok(_) => return Err(format!("withParam is not a JSON list: {}", template::excerpt(&text))),
                Err(e) => return Err(format!("withParam is not a JSON list ({e}): {}", template::excerpt(&text))),
            }
        }
        (None, None) => return Err("the task has no withItems or withParam".into()),
    };
    if items.len() > MAX_ITEMS {
        return Err(format!("it has {} items, more than the {MAX_ITEMS} instances a task may have", items.len()));
    }
    Ok(items)
}

/// Bytes the items take when recorded in status.
fn recorded_size(items: &[serde_json::Value]) -> usize {
    items.iter().map(|i| i.to_string().len()).sum()
}

impl Step<'_> {
    /// Fans out task `task`, whose dependencies are satisfied: one Pending
    /// instance per item, the task itself Running; no items skips it
    /// (its dependants still run); a bad list fails it.
    pub(super) fn fan_out(&mut self, task: usize) {
        let spec = self.spec(task);
        let outcome = items(spec, &self.scope(task, None));
        let now = super::time(self.input.now);
        let node = &mut self.nodes[task];
        match outcome {
            Ok(items) if items.is_empty() => {
                node.entry.phase = TaskPhase::Skipped;
                node.entry.reason = Some(REASON_NO_ITEMS.into());
                node.entry.message = Some("no items to run".into());
                node.entry.finished_at = Some(now);
                self.events.push(Note::normal("TaskSkipped", format!("task {}: no items to run", spec.name)));
            }
            Ok(items) if spec.with_param.is_some() && self.kept_bytes + recorded_size(&items) > MAX_KEPT => {
                let why = format!(
                    "its {} items take {} bytes, which would bring the data kept in status to {} bytes, over the limit of {MAX_KEPT} bytes",
                    items.len(),
                    recorded_size(&items),
                    self.kept_bytes + recorded_size(&items)
                );
                node.entry.phase = TaskPhase::Failed;
                node.entry.finished_at = Some(now);
                node.entry.message = Some(why.clone());
                self.events.push(Note::warning("TaskFailed", format!("task {}: {why}", spec.name)));
            }
            Ok(items) => {
                // Items of withItems are in the run's copy of the spec; those
                // withParam yields are recorded, as results are.
                let record = spec.with_param.is_some();
                node.instances = items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| TaskStatus {
                        name: naming::instance_key(&spec.name, i),
                        item: record.then(|| item.to_string()),
                        ..Default::default()
                    })
                    .collect();
                self.kept_bytes += node.instances.iter().map(results::kept_size).sum::<usize>();
                node.entry.phase = TaskPhase::Running;
                node.entry.started_at = Some(now);
                node.entry.message = Some(format!("{} instances", items.len()));
            }
            Err(why) => {
                node.entry.phase = TaskPhase::Failed;
                node.entry.finished_at = Some(now);
                node.entry.message = Some(why.clone());
                self.events.push(Note::warning("TaskFailed", format!("task {}: {why}", spec.name)));
            }
        }
    }

    /// A fanned-out task whose instances have all finished takes their
    /// outcome: Failed if one failed, Stopped if one was stopped, Skipped
    /// (WhenFalse) if every one was skipped, else Succeeded.
    pub(super) fn settle_fanouts(&mut self) {
        let now = super::time(self.input.now);
        for task in 0..self.nodes.len() {
            let spec = self.spec(task);
            let node = &mut self.nodes[task];
            if !spec.fans_out() || node.entry.phase != TaskPhase::Running || !node.instances.iter().all(|t| t.phase.is_finished()) {
                continue;
            }
            let failed = node.instances.iter().position(|t| t.phase == TaskPhase::Failed);
            let stopped = node.instances.iter().position(|t| t.phase == TaskPhase::Stopped);
            let (phase, reason, message) = if let Some(i) = failed {
                let why = node.instances[i].message.clone().unwrap_or_default();
                (TaskPhase::Failed, None, format!("item {i} failed: {why}"))
            } else if let Some(i) = stopped {
                (TaskPhase::Stopped, None, format!("item {i} was stopped"))
            } else if let Some(i) = node.instances.iter().position(|t| super::state(t) == crate::dag::State::Unsatisfied) {
                let why = node.instances[i].message.clone().unwrap_or_default();
                (TaskPhase::Skipped, None, format!("item {i} was skipped: {why}"))
            } else if node.instances.iter().all(|t| t.phase == TaskPhase::Skipped) {
                (TaskPhase::Skipped, Some(REASON_WHEN_FALSE.to_string()), "every item was skipped by when".to_string())
            } else {
                (TaskPhase::Succeeded, None, format!("{} items done", node.instances.len()))
            };
            node.entry.phase = phase;
            node.entry.reason = reason;
            node.entry.message = Some(message.clone());
            node.entry.finished_at = Some(now.clone());
            if phase == TaskPhase::Failed {
                self.events.push(Note::warning("TaskFailed", format!("task {}: {message}", spec.name)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Gen(&'static str);

    impl template::Scope for Gen {
        fn param(&self, _: &str) -> Option<&str> {
            None
        }
        fn result(&self, _: &str) -> Option<String> {
            Some(self.0.to_string())
        }
        fn item(&self) -> Option<&serde_json::Value> {
            None
        }
        fn run(&self, _: &str) -> Option<&str> {
            None
        }
    }

    fn param_task() -> TaskSpec {
        TaskSpec { name: "p".into(), with_param: Some("{{tasks.gen.outputs.result}}".into()), ..Default::default() }
    }

    #[test]
    fn with_param_yields_the_list_or_says_why_not() {
        assert_eq!(items(&param_task(), &Gen(r#"["a", 1, {"k": "v"}]"#)).unwrap().len(), 3);
        let not_list = items(&param_task(), &Gen(r#"{"a": 1}"#)).unwrap_err();
        assert_eq!(not_list, r#"withParam is not a JSON list: {"a": 1}"#);
        let not_json = items(&param_task(), &Gen("eu us")).unwrap_err();
        assert!(not_json.starts_with("withParam is not a JSON list (") && not_json.ends_with(": eu us"), "{not_json}");
        let big = format!("[{}]", vec!["1"; MAX_ITEMS + 1].join(","));
        let too_many = items(&param_task(), &Gen(Box::leak(big.into_boxed_str()))).unwrap_err();
        assert_eq!(too_many, "it has 1001 items, more than the 1000 instances a task may have");
    }
}
