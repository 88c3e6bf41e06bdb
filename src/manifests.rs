//! Offline validation of manifest files (`baton validate`): the same checks
//! the controller makes, over the Workflows and runs found in the files.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::api::{Workflow, WorkflowInstance};
use crate::dag;

/// A problem found in a file, printed as one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub source: String,
    /// `Workflow name`, `WorkflowInstance name`, or `document N`.
    pub object: String,
    pub message: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}: {}", self.source, self.object, self.message)
    }
}

enum Object {
    Workflow(Box<Workflow>),
    Instance(Box<WorkflowInstance>),
}

/// Parses and validates the given (source name, YAML text) pairs. Documents
/// of other kinds are skipped; their (source, document number, kind) is
/// returned so the caller can mention them.
pub fn validate(files: &[(String, String)]) -> (Vec<Finding>, Vec<String>) {
    let mut findings = Vec::new();
    let mut skipped = Vec::new();
    let mut objects = Vec::new();
    for (source, text) in files {
        for (n, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let at = |message: String| Finding { source: source.clone(), object: format!("document {}", n + 1), message };
            let value = match serde_yaml::Value::deserialize(doc) {
                Ok(serde_yaml::Value::Null) => continue,
                Ok(v) => v,
                Err(e) => {
                    findings.push(at(format!("not YAML: {e}")));
                    break;
                }
            };
            let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or_default().to_string();
            let api_version = value.get("apiVersion").and_then(|k| k.as_str()).unwrap_or_default();
            if !api_version.starts_with(&format!("{}/", crate::api::GROUP)) {
                skipped.push(format!("{source}: document {}: kind {kind:?} is not a baton.dev object", n + 1));
                continue;
            }
            let parsed = match kind.as_str() {
                "Workflow" => serde_yaml::from_value(value).map(|w| Object::Workflow(Box::new(w))),
                "WorkflowInstance" => serde_yaml::from_value(value).map(|w| Object::Instance(Box::new(w))),
                other => {
                    findings.push(at(format!("unknown baton.dev kind {other:?}")));
                    continue;
                }
            };
            match parsed {
                Ok(obj) => objects.push((source.clone(), obj)),
                Err(e) => findings.push(at(format!("does not match the {kind} schema: {e}"))),
            }
        }
    }

    let workflows: BTreeMap<String, &Workflow> = objects
        .iter()
        .filter_map(|(_, o)| match o {
            Object::Workflow(w) => Some((w.metadata.name.clone().unwrap_or_default(), w.as_ref())),
            Object::Instance(_) => None,
        })
        .collect();
    for (source, obj) in &objects {
        match obj {
            Object::Workflow(w) => {
                let name = w.metadata.name.clone().unwrap_or_default();
                let at = |message: String| Finding { source: source.clone(), object: format!("Workflow {name}"), message };
                findings.extend(dag::validate(&w.spec).iter().map(|p| at(p.to_string())));
                let refs = |n: &str| workflows.get(n).map(|w| dag::referenced_workflows(&w.spec));
                if let Some(chain) = dag::workflow_cycle(&name, refs) {
                    findings.push(at(format!("workflowRef chain leads back to itself: {}", chain.join(" -> "))));
                }
            }
            Object::Instance(run) => {
                let name = run.metadata.name.clone().unwrap_or_default();
                if let Some(w) = workflows.get(&run.spec.workflow_ref.name)
                    && let Err(problems) = dag::resolve_params(&w.spec, &run.spec.params)
                {
                    findings.extend(problems.iter().map(|p| Finding {
                        source: source.clone(),
                        object: format!("WorkflowInstance {name}"),
                        message: p.to_string(),
                    }));
                }
            }
        }
    }
    (findings, skipped)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(text: &str) -> Vec<String> {
        validate(&[("f.yaml".into(), text.into())]).0.iter().map(ToString::to_string).collect()
    }

    const HEADER: &str = "apiVersion: baton.dev/v1alpha1\nkind: Workflow\nmetadata: {name: w}\n";

    #[test]
    fn valid_workflow_and_run() {
        let text = format!(
            "{HEADER}spec:\n  params: [{{name: d}}]\n  tasks:\n  - {{name: a, container: {{name: m, image: x}}}}\n---\n\
             apiVersion: baton.dev/v1alpha1\nkind: WorkflowInstance\nmetadata: {{name: r}}\nspec: {{workflowRef: {{name: w}}, params: {{d: x}}}}\n"
        );
        assert!(run(&text).is_empty(), "{:?}", run(&text));
    }

    #[test]
    fn schema_mismatch_is_one_line() {
        let m = run(&format!("{HEADER}spec: {{tasks: 3}}\n"));
        assert_eq!(m.len(), 1);
        assert!(m[0].starts_with("f.yaml: document 1: does not match the Workflow schema"), "{m:?}");
    }

    #[test]
    fn run_missing_param_and_self_reference() {
        let text = format!(
            "{HEADER}spec:\n  params: [{{name: d}}]\n  tasks:\n  - {{name: a, workflowRef: {{name: w}}}}\n---\n\
             apiVersion: baton.dev/v1alpha1\nkind: WorkflowInstance\nmetadata: {{name: r}}\nspec: {{workflowRef: {{name: w}}}}\n"
        );
        assert_eq!(
            run(&text),
            [
                "f.yaml: Workflow w: workflowRef chain leads back to itself: w -> w",
                "f.yaml: WorkflowInstance r: parameter \"d\" has no default and the run does not supply it"
            ]
        );
    }

    #[test]
    fn other_kinds_are_skipped() {
        let (findings, skipped) = validate(&[("k.yaml".into(), "apiVersion: v1\nkind: ConfigMap\n".into())]);
        assert!(findings.is_empty());
        assert_eq!(skipped.len(), 1);
    }
}
