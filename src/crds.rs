//! The CRD YAML checked in under `crds/`, generated from the Rust types.

use kube::CustomResourceExt;
use serde_json::Value;

use crate::api::{Workflow, WorkflowInstance};

/// Fields whose type is a core/v1 type. Their own description stays; the
/// descriptions inside them are upstream's (see `kubectl explain pod.spec`)
/// and would make the Workflow CRD too large for client-side
/// `kubectl apply` (its last-applied annotation is capped at 256 KiB).
const CORE_TYPED_FIELDS: [&str; 5] = ["container", "tolerations", "affinity", "volumes", "securityContext"];

/// The CRDs as (file name, YAML), one file per kind, in a stable order.
pub fn render() -> Vec<(&'static str, String)> {
    let to_yaml = |crd| {
        let mut value = serde_json::to_value(crd).expect("a CRD always serializes");
        trim_core_descriptions(&mut value);
        serde_yaml::to_string(&value).expect("a CRD always serializes")
    };
    vec![("workflow.yaml", to_yaml(Workflow::crd())), ("workflowinstance.yaml", to_yaml(WorkflowInstance::crd()))]
}

fn trim_core_descriptions(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if let Some(Value::Object(props)) = map.get_mut("properties") {
                for (name, prop) in props.iter_mut() {
                    if CORE_TYPED_FIELDS.contains(&name.as_str()) {
                        for child in prop.as_object_mut().into_iter().flat_map(|m| m.values_mut()) {
                            drop_descriptions(child);
                        }
                    }
                }
            }
            map.values_mut().for_each(trim_core_descriptions);
        }
        Value::Array(items) => items.iter_mut().for_each(trim_core_descriptions),
        _ => {}
    }
}

fn drop_descriptions(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if map.get("description").is_some_and(Value::is_string) {
                map.remove("description");
            }
            map.values_mut().for_each(drop_descriptions);
        }
        Value::Array(items) => items.iter_mut().for_each(drop_descriptions),
        _ => {}
    }
}
