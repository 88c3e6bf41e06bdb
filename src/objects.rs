//! The objects a run creates: task pods and child runs, with the fixed
//! names, labels, annotations and ownerReference. Pure builders.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use kube::api::ObjectMeta;
use kube::{Resource, ResourceExt};

use crate::api::{TaskSpec, WorkflowInstance, WorkflowInstanceSpec, WorkflowRef};
use crate::naming;
use crate::template::{self, Scope};

pub const LABEL_INSTANCE: &str = "baton.dev/instance";
pub const LABEL_TASK: &str = "baton.dev/task";
pub const LABEL_ATTEMPT: &str = "baton.dev/attempt";
/// On the pods and child runs of one instance of a fanned-out task: its index.
pub const LABEL_ITEM: &str = "baton.dev/item";
pub const LABEL_PARENT: &str = "baton.dev/parent";
/// On runs a schedule started: the Workflow whose schedule it was.
pub const LABEL_SCHEDULED_BY: &str = "baton.dev/scheduled-by";
/// On runs a schedule started: the scheduled time (RFC 3339).
pub const ANNOTATION_SCHEDULED_TIME: &str = "baton.dev/scheduled-time";
/// Epoch of the owner that created the object: evidence of who did what.
pub const ANNOTATION_OWNER_EPOCH: &str = "baton.dev/owner-epoch";
/// On a child run: the last `spec.suspend` its parent passed on to it.
pub const ANNOTATION_PARENT_SUSPEND: &str = "baton.dev/parent-suspend";
/// On a child run: its own `spec.suspend` before its parent paused it,
/// given back when the parent resumes.
pub const ANNOTATION_PARENT_SUSPEND_PRIOR: &str = "baton.dev/parent-suspend-prior";
/// On a child run: its parent asked it to stop (its task or the parent ended).
pub const ANNOTATION_PARENT_STOP: &str = "baton.dev/parent-stop";
/// Nesting depth of a child run (a top-level run has none, i.e. 0).
pub const ANNOTATION_DEPTH: &str = "baton.dev/depth";
/// Deepest nesting of child runs.
pub const MAX_DEPTH: u32 = 8;

/// Whose an object found by name or label is. Only the controller
/// ownerReference's UID counts: labels and names can be shared by accident
/// (another run's generated name, a run deleted and created again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Belongs {
    /// Controlled by the owner with this UID.
    Ours,
    /// Left behind by an earlier baton object of the same kind and name,
    /// now deleted (this name has another UID now): garbage the collector
    /// has not removed yet. It belongs to no live object.
    Leftover(String),
    /// Being deleted: wait for it to go.
    Going,
    /// Anyone else's, or nobody's: a name collision, described for people.
    Foreign(String),
}

/// Whose `object` is, seen from the owner `kind`/`name`/`uid`.
pub fn belongs(object: &ObjectMeta, kind: &str, name: &str, uid: &str) -> Belongs {
    let controller = object.owner_references.iter().flatten().find(|r| r.controller == Some(true));
    match controller {
        Some(r) if r.uid == uid => Belongs::Ours,
        _ if object.deletion_timestamp.is_some() => Belongs::Going,
        Some(r) if r.api_version.starts_with("baton.dev/") && r.kind == kind && r.name == name => {
            Belongs::Leftover(format!("it was left by a deleted {kind} {name} (uid {})", r.uid))
        }
        Some(r) => Belongs::Foreign(format!("it belongs to {} {} (uid {})", r.kind, r.name, r.uid)),
        None => Belongs::Foreign("it belongs to no controller".into()),
    }
}

/// Whether `object` is controlled by the owner with `uid`.
pub fn controlled_by(object: &ObjectMeta, uid: &str) -> bool {
    object.owner_references.iter().flatten().any(|r| r.controller == Some(true) && r.uid == uid)
}

fn owner_reference(run: &WorkflowInstance) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
    run.controller_owner_ref(&()).expect("a stored run has a name and uid")
}

/// Nesting depth of `run` (0 for a run nobody's task created).
pub fn depth(run: &WorkflowInstance) -> u32 {
    run.annotations().get(ANNOTATION_DEPTH).and_then(|d| d.parse().ok()).unwrap_or(0)
}

fn substitute_all(texts: &mut Option<Vec<String>>, scope: &dyn Scope) -> Result<(), String> {
    for text in texts.iter_mut().flatten() {
        *text = template::substitute(text, scope)?;
    }
    Ok(())
}

/// The container with templates substituted in command, args and env, and
/// a failed container's log as its termination message unless the task
/// chose a policy.
fn container(spec: &Container, scope: &dyn Scope) -> Result<Container, String> {
    let mut c = spec.clone();
    substitute_all(&mut c.command, scope)?;
    substitute_all(&mut c.args, scope)?;
    for env in c.env.iter_mut().flatten() {
        if let Some(v) = &env.value {
            env.value = Some(template::substitute(v, scope)?);
        }
    }
    c.termination_message_policy.get_or_insert_with(|| "FallbackToLogsOnError".into());
    Ok(c)
}

/// Labels that say which task (and which instance of it) an object is for.
fn task_labels(key: &str, task: &TaskSpec, attempt: i32) -> BTreeMap<String, String> {
    let mut labels: BTreeMap<String, String> =
        [(LABEL_TASK.to_string(), task.name.clone()), (LABEL_ATTEMPT.to_string(), attempt.to_string())].into();
    if let Some((_, index)) = naming::parse_instance_key(key) {
        labels.insert(LABEL_ITEM.into(), index.to_string());
    }
    labels
}

/// The pod of `attempt` of the entry `key` of `status.tasks` (container
/// task `task`, or one instance of it).
pub fn pod(run: &WorkflowInstance, task: &TaskSpec, key: &str, attempt: i32, scope: &dyn Scope, epoch: i64) -> Result<Pod, String> {
    let run_name = run.metadata.name.as_deref().unwrap_or_default();
    let template = task.pod_template.clone().unwrap_or_default();
    let meta = template.metadata.unwrap_or_default();
    let mut labels = meta.labels;
    labels.insert(LABEL_INSTANCE.into(), naming::label_value(run_name));
    labels.extend(task_labels(key, task, attempt));
    let mut annotations = meta.annotations;
    for value in annotations.values_mut() {
        *value = template::substitute(value, scope)?;
    }
    annotations.insert(ANNOTATION_OWNER_EPOCH.into(), epoch.to_string());
    let main = container(task.container.as_ref().ok_or("task has no container")?, scope)?;
    Ok(Pod {
        metadata: ObjectMeta {
            name: Some(naming::pod(run_name, &naming::object_part(key), attempt)),
            namespace: run.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: Some(vec![owner_reference(run)]),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![main],
            restart_policy: Some("Never".into()),
            service_account_name: template.service_account_name,
            node_selector: template.node_selector,
            tolerations: template.tolerations,
            affinity: template.affinity,
            volumes: template.volumes,
            security_context: template.security_context,
            ..Default::default()
        }),
        status: None,
    })
}

/// The child run of `attempt` of the entry `key` of `status.tasks`
/// (workflowRef task `task`, or one instance of it).
pub fn child(
    run: &WorkflowInstance,
    task: &TaskSpec,
    key: &str,
    attempt: i32,
    scope: &dyn Scope,
    epoch: i64,
) -> Result<WorkflowInstance, String> {
    let run_name = run.metadata.name.as_deref().unwrap_or_default();
    let target = task.workflow_ref.as_ref().ok_or("task has no workflowRef")?;
    let depth = depth(run) + 1;
    if depth > MAX_DEPTH {
        return Err(format!("sub-workflows nest deeper than {MAX_DEPTH} levels"));
    }
    let child_params =
        target.params.iter().map(|(k, v)| Ok((k.clone(), template::substitute(v, scope)?))).collect::<Result<_, String>>()?;
    let mut child = WorkflowInstance::new(
        &naming::child(run_name, &naming::object_part(key), attempt),
        WorkflowInstanceSpec {
            workflow_ref: WorkflowRef { name: target.name.clone() },
            params: child_params,
            suspend: run.spec.suspend,
            ..Default::default()
        },
    );
    child.metadata.namespace = run.metadata.namespace.clone();
    let mut labels = task_labels(key, task, attempt);
    labels.insert(LABEL_PARENT.to_string(), naming::label_value(run_name));
    child.metadata.labels = Some(labels);
    let mut annotations: BTreeMap<String, String> = [
        (ANNOTATION_OWNER_EPOCH.to_string(), epoch.to_string()),
        (ANNOTATION_DEPTH.to_string(), depth.to_string()),
        (ANNOTATION_PARENT_SUSPEND.to_string(), run.spec.suspend.to_string()),
    ]
    .into();
    if run.spec.suspend {
        // Created paused by a paused parent: running is its own value.
        annotations.insert(ANNOTATION_PARENT_SUSPEND_PRIOR.to_string(), "false".to_string());
    }
    child.metadata.annotations = Some(annotations);
    child.metadata.owner_references = Some(vec![owner_reference(run)]);
    Ok(child)
}

/// The run a schedule starts for `tick`, named after the tick so a second
/// attempt (or a second controller) gets `AlreadyExists`.
pub fn scheduled_run(workflow: &crate::api::Workflow, tick: k8s_openapi::jiff::Timestamp) -> WorkflowInstance {
    let wf_name = workflow.metadata.name.as_deref().unwrap_or_default();
    let mut run = WorkflowInstance::new(
        &naming::scheduled(wf_name, tick.as_second()),
        WorkflowInstanceSpec { workflow_ref: WorkflowRef { name: wf_name.into() }, ..Default::default() },
    );
    run.metadata.namespace = workflow.metadata.namespace.clone();
    run.metadata.labels = Some([(LABEL_SCHEDULED_BY.to_string(), naming::label_value(wf_name))].into());
    run.metadata.annotations = Some([(ANNOTATION_SCHEDULED_TIME.to_string(), tick.to_string())].into());
    run.metadata.owner_references = Some(vec![workflow.controller_owner_ref(&()).expect("a stored workflow has a name and uid")]);
    run
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{PodTemplate, PodTemplateMetadata, TaskWorkflowRef};
    use k8s_openapi::api::core::v1::EnvVar;

    fn run(depth: Option<&str>) -> WorkflowInstance {
        let mut r = WorkflowInstance::new("etl-1", WorkflowInstanceSpec::default());
        r.metadata.namespace = Some("data".into());
        r.metadata.uid = Some("uid-1".into());
        if let Some(d) = depth {
            r.metadata.annotations = Some([(ANNOTATION_DEPTH.to_string(), d.to_string())].into());
        }
        r
    }

    fn values() -> BTreeMap<String, String> {
        [("date".to_string(), "2026-01-01".to_string())].into()
    }

    fn scope(params: &BTreeMap<String, String>) -> crate::planner::results::RunScope<'_, impl Fn(&str) -> Option<String>> {
        crate::planner::results::RunScope {
            run_name: "etl-1",
            namespace: "data",
            params,
            result: |_: &str| None,
            item: None,
            phase: crate::api::RunPhase::Running,
        }
    }

    #[test]
    fn instance_objects_carry_the_index_and_the_item() {
        let task = TaskSpec {
            name: "process".into(),
            with_items: Some(vec![serde_json::json!({"region": "eu"})]),
            container: Some(Container { name: "main".into(), args: Some(vec!["{{item.region}}".into()]), ..Default::default() }),
            ..Default::default()
        };
        let params = values();
        let mut s = scope(&params);
        s.item = Some(serde_json::json!({"region": "eu"}));
        let p = pod(&run(None), &task, "process(12)", 0, &s, 1).unwrap();
        assert_eq!(p.metadata.name.as_deref(), Some("etl-1-process-12-0"));
        assert_eq!(p.metadata.labels.as_ref().unwrap()[LABEL_ITEM], "12");
        let c = &p.spec.unwrap().containers[0];
        assert_eq!(c.args.as_ref().unwrap()[0], "eu");
        assert_eq!(c.termination_message_policy.as_deref(), Some("FallbackToLogsOnError"), "set unless the task sets one");
    }

    #[test]
    fn pod_has_fixed_name_labels_owner_and_params() {
        let task = TaskSpec {
            name: "extract".into(),
            container: Some(Container {
                name: "main".into(),
                command: Some(vec!["echo {{params.date}}".into()]),
                env: Some(vec![EnvVar { name: "D".into(), value: Some("{{params.date}}".into()), ..Default::default() }]),
                ..Default::default()
            }),
            pod_template: Some(PodTemplate {
                metadata: Some(PodTemplateMetadata {
                    labels: [(LABEL_TASK.to_string(), "spoofed".to_string())].into(),
                    annotations: [("baton.dev/sim-duration".to_string(), "2s".to_string())].into(),
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let p = pod(&run(None), &task, &task.name, 1, &scope(&values()), 7).unwrap();
        assert_eq!(p.metadata.name.as_deref(), Some("etl-1-extract-1"));
        let labels = p.metadata.labels.unwrap();
        assert_eq!(labels[LABEL_INSTANCE], "etl-1");
        assert_eq!(labels[LABEL_TASK], "extract", "baton's labels win");
        assert_eq!(labels[LABEL_ATTEMPT], "1");
        let ann = p.metadata.annotations.unwrap();
        assert_eq!(ann[ANNOTATION_OWNER_EPOCH], "7");
        assert_eq!(ann["baton.dev/sim-duration"], "2s");
        let owner = &p.metadata.owner_references.unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.uid.as_str(), owner.controller), ("WorkflowInstance", "uid-1", Some(true)));
        let spec = p.spec.unwrap();
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        assert_eq!(spec.containers[0].command.as_ref().unwrap()[0], "echo 2026-01-01");
        assert_eq!(spec.containers[0].env.as_ref().unwrap()[0].value.as_deref(), Some("2026-01-01"));
    }

    #[test]
    fn child_run_is_named_labelled_and_depth_bounded() {
        let task = TaskSpec {
            name: "load".into(),
            workflow_ref: Some(TaskWorkflowRef { name: "wh".into(), params: [("day".to_string(), "{{params.date}}".to_string())].into() }),
            ..Default::default()
        };
        let c = child(&run(Some("3")), &task, &task.name, 0, &scope(&values()), 2).unwrap();
        assert_eq!(c.metadata.name.as_deref(), Some("etl-1-load"));
        assert_eq!(c.spec.params["day"], "2026-01-01");
        assert_eq!(c.metadata.labels.as_ref().unwrap()[LABEL_PARENT], "etl-1");
        assert_eq!(depth(&c), 4);
        assert_eq!(child(&run(None), &task, &task.name, 2, &scope(&values()), 2).unwrap().metadata.name.as_deref(), Some("etl-1-load-2"));
        let err = child(&run(Some("8")), &task, &task.name, 0, &scope(&values()), 2).unwrap_err();
        assert!(err.contains("deeper than 8"), "{err}");
        assert_eq!(c.metadata.annotations.as_ref().unwrap()[ANNOTATION_PARENT_SUSPEND], "false", "records what it passed on");
    }

    #[test]
    fn only_the_controller_uid_makes_an_object_ours() {
        let parent = run(None);
        let task = TaskSpec { name: "t".into(), container: Some(Container::default()), ..Default::default() };
        let p = pod(&parent, &task, &task.name, 0, &scope(&values()), 1).unwrap();
        assert_eq!(belongs(&p.metadata, "WorkflowInstance", "etl-1", "uid-1"), Belongs::Ours);
        assert!(controlled_by(&p.metadata, "uid-1"));
        assert!(!controlled_by(&p.metadata, "uid-2"));
        // The same name, created again: the old run's pod waits for the GC.
        assert!(matches!(belongs(&p.metadata, "WorkflowInstance", "etl-1", "uid-2"), Belongs::Leftover(_)));
        let mut other_group = p.metadata.clone();
        other_group.owner_references.as_mut().unwrap()[0].api_version = "example.com/v1".into();
        assert!(matches!(belongs(&other_group, "WorkflowInstance", "etl-1", "uid-2"), Belongs::Foreign(_)), "same kind, other group");
        // Another run whose generated name happens to be the same.
        match belongs(&p.metadata, "WorkflowInstance", "etl", "uid-3") {
            Belongs::Foreign(why) => assert_eq!(why, "it belongs to WorkflowInstance etl-1 (uid uid-1)"),
            other => panic!("{other:?}"),
        }
        let mut orphan = p.metadata.clone();
        orphan.owner_references = None;
        assert_eq!(belongs(&orphan, "WorkflowInstance", "etl-1", "uid-1"), Belongs::Foreign("it belongs to no controller".into()));
        orphan.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        assert_eq!(belongs(&orphan, "WorkflowInstance", "etl-1", "uid-1"), Belongs::Going, "going away: wait");
    }
}
