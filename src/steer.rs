//! The requests of `baton pause|resume|stop|terminate|retry` (and the UI's
//! buttons): whether a request can apply to a run as read, and the merge
//! patch that asks for it. Pure, so every refusal is unit-tested.

use serde_json::{Value, json};

use crate::api::{RunPhase, Shutdown, WorkflowInstance};
use crate::objects::{ANNOTATION_PARENT_STOP, ANNOTATION_PARENT_SUSPEND, ANNOTATION_PARENT_SUSPEND_PRIOR, LABEL_PARENT};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    Pause,
    Resume,
    Stop,
    Terminate,
    Retry,
}

impl Request {
    pub const ALL: [Request; 5] = [Request::Pause, Request::Resume, Request::Stop, Request::Terminate, Request::Retry];

    /// The request a verb names (`pause`, ...), as the CLI spells it.
    pub fn from_verb(verb: &str) -> Option<Request> {
        Request::ALL.into_iter().find(|r| r.verb() == verb)
    }

    pub fn verb(self) -> &'static str {
        match self {
            Request::Pause => "pause",
            Request::Resume => "resume",
            Request::Stop => "stop",
            Request::Terminate => "terminate",
            Request::Retry => "retry",
        }
    }
}

/// What to do about a request.
#[derive(Debug, PartialEq)]
pub enum Plan {
    /// Send this merge patch (it carries the run's resourceVersion, so it
    /// lands only on the run as read); `asked` says what it asks for.
    Patch { patch: Value, asked: String },
    /// Already in place: nothing to send.
    Nothing(String),
    /// Cannot apply: why, and what to do instead.
    Refuse(String),
}

/// What `request` on `run` (as read) should do.
pub fn plan(run: &WorkflowInstance, request: Request) -> Plan {
    let name = run.metadata.name.as_deref().unwrap_or_default();
    let status = run.status.as_ref();
    let phase = status.and_then(|s| s.phase).unwrap_or_default();
    let spec = &run.spec;
    let annotations = run.metadata.annotations.clone().unwrap_or_default();
    let parent = run.metadata.labels.as_ref().and_then(|l| l.get(LABEL_PARENT)).cloned().unwrap_or_default();
    let rv = run.metadata.resource_version.clone();
    let verb = request.verb();
    if request != Request::Retry && phase.is_terminal() {
        return Plan::Refuse(format!(
            "run {name} already ended {}; nothing to {verb} (baton retry re-runs its failed tasks)",
            phase.as_str()
        ));
    }
    match request {
        Request::Pause | Request::Resume => {
            let suspend = request == Request::Pause;
            if spec.shutdown.requested() {
                return Plan::Refuse(format!("run {name} is being stopped (spec.shutdown={:?}); a {verb} would not apply", spec.shutdown));
            }
            // A parent's pause remembers the child's own suspend to give it
            // back on resume: the user's wish goes there too, or the
            // parent's resume would undo it.
            let parent_paused = annotations.get(ANNOTATION_PARENT_SUSPEND).is_some_and(|v| v == "true");
            let prior = annotations.get(ANNOTATION_PARENT_SUSPEND_PRIOR).and_then(|v| v.parse::<bool>().ok());
            let record = parent_paused && prior != Some(suspend);
            if spec.suspend == suspend && !record {
                return Plan::Nothing(format!("run {name} already has spec.suspend={suspend}; nothing to change"));
            }
            let mut patch = json!({"metadata": {"resourceVersion": rv}, "spec": {"suspend": suspend}});
            let mut asked = format!("spec.suspend={suspend}");
            if record {
                patch["metadata"]["annotations"] = json!({ANNOTATION_PARENT_SUSPEND_PRIOR: suspend.to_string()});
                asked.push_str(&format!(
                    " (its parent {parent} has paused it too; resuming {parent} leaves it {})",
                    if suspend { "paused" } else { "running" }
                ));
            }
            Plan::Patch { patch, asked }
        }
        Request::Stop | Request::Terminate => {
            let value = if request == Request::Stop { Shutdown::Stop } else { Shutdown::Terminate };
            if spec.shutdown == value || spec.shutdown == Shutdown::Terminate {
                return Plan::Nothing(format!(
                    "run {name} already has spec.shutdown={:?}, which ends it{}; nothing to change",
                    spec.shutdown,
                    if spec.shutdown == Shutdown::Terminate { " without its exit tasks" } else { "" }
                ));
            }
            Plan::Patch {
                patch: json!({"metadata": {"resourceVersion": rv}, "spec": {"shutdown": value}}),
                asked: format!("spec.shutdown={value:?}"),
            }
        }
        Request::Retry => {
            if !phase.is_terminal() {
                return Plan::Refuse(format!(
                    "run {name} is still {}; retry re-runs the failed tasks of a finished run, wait for it to end",
                    phase.as_str()
                ));
            }
            if phase == RunPhase::Succeeded {
                return Plan::Refuse(format!("run {name} Succeeded; it has no failed or stopped task to retry"));
            }
            if annotations.contains_key(ANNOTATION_PARENT_STOP) {
                return Plan::Refuse(format!(
                    "run {name} was stopped by its parent {parent}, whose task it ran; baton retry {parent} re-runs that task once {parent} has ended"
                ));
            }
            let next = spec.retry_failed + 1;
            let mut patch = json!({"metadata": {"resourceVersion": rv}, "spec": {"retryFailed": next}});
            let mut asked = format!("spec.retryFailed={next}");
            if spec.shutdown.requested() {
                patch["spec"]["shutdown"] = json!("");
                asked.push_str(", spec.shutdown cleared");
            }
            if spec.suspend {
                asked.push_str("; spec.suspend is true, so it restarts paused (baton resume)");
            }
            Plan::Patch { patch, asked }
        }
    }
}

/// How a request sent with [`send`] ended.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// The patch was made; what it asked for.
    Requested(String),
    /// Already in place.
    Nothing(String),
    /// It cannot apply: why, and what to do.
    Refused(String),
}

/// Makes `request` on run `name`: reads it, decides, patches it as read; a
/// conflict (the run changed meanwhile) reads and decides again.
pub async fn send(api: &kube::Api<WorkflowInstance>, name: &str, request: Request) -> Result<Outcome, kube::Error> {
    use kube::api::{Patch, PatchParams};
    for _ in 0..10 {
        let run = api.get(name).await?;
        let namespace = run.metadata.namespace.clone().unwrap_or_default();
        match plan(&run, request) {
            Plan::Patch { patch, asked } => match api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                Ok(_) => return Ok(Outcome::Requested(format!("requested {} of run {namespace}/{name}: {asked}", request.verb()))),
                Err(kube::Error::Api(s)) if s.code == 409 => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
                Err(e) => return Err(e),
            },
            Plan::Nothing(message) => return Ok(Outcome::Nothing(message)),
            Plan::Refuse(message) => return Ok(Outcome::Refused(message)),
        }
    }
    Ok(Outcome::Refused(format!("run {name} kept changing while the request was made; try again")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(phase: RunPhase, spec: Value, annotations: Value) -> WorkflowInstance {
        serde_json::from_value(json!({
            "apiVersion": "baton.dev/v1alpha1", "kind": "WorkflowInstance",
            "metadata": {"name": "c", "resourceVersion": "7", "labels": {"baton.dev/parent": "p"}, "annotations": annotations},
            "spec": spec,
            "status": {"phase": phase},
        }))
        .unwrap()
    }

    fn spec(extra: Value) -> Value {
        let mut s = json!({"workflowRef": {"name": "wf"}});
        s.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        s
    }

    #[test]
    fn verbs_name_their_requests() {
        for r in Request::ALL {
            assert_eq!(Request::from_verb(r.verb()), Some(r));
        }
        assert_eq!(Request::from_verb("delete"), None);
    }

    #[test]
    fn every_patch_carries_the_resource_version_read() {
        for (phase, request) in
            [(RunPhase::Running, Request::Pause), (RunPhase::Running, Request::Stop), (RunPhase::Failed, Request::Retry)]
        {
            match plan(&run(phase, spec(json!({})), json!({})), request) {
                Plan::Patch { patch, .. } => assert_eq!(patch["metadata"]["resourceVersion"], "7", "{request:?}"),
                other => panic!("{request:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn requests_on_an_ended_run_are_refused_but_retry() {
        for request in [Request::Pause, Request::Resume, Request::Stop, Request::Terminate] {
            assert!(
                matches!(plan(&run(RunPhase::Stopped, spec(json!({})), json!({})), request), Plan::Refuse(m) if m.contains("already ended Stopped"))
            );
        }
        assert!(
            matches!(plan(&run(RunPhase::Running, spec(json!({})), json!({})), Request::Retry), Plan::Refuse(m) if m.contains("still Running"))
        );
        assert!(
            matches!(plan(&run(RunPhase::Succeeded, spec(json!({})), json!({})), Request::Retry), Plan::Refuse(m) if m.contains("no failed"))
        );
    }

    #[test]
    fn retry_clears_a_shutdown_and_says_a_pause_stays() {
        let Plan::Patch { patch, asked } =
            plan(&run(RunPhase::Stopped, spec(json!({"shutdown": "Stop", "suspend": true, "retryFailed": 2})), json!({})), Request::Retry)
        else {
            panic!()
        };
        assert_eq!(patch["spec"], json!({"retryFailed": 3, "shutdown": ""}));
        assert!(asked.contains("spec.shutdown cleared") && asked.contains("restarts paused"), "{asked}");
    }

    #[test]
    fn review_pausing_a_child_its_parent_paused_survives_the_parents_resume() {
        let child = run(
            RunPhase::Paused,
            spec(json!({"suspend": true})),
            json!({"baton.dev/parent-suspend": "true", "baton.dev/parent-suspend-prior": "false"}),
        );
        let Plan::Patch { patch, asked } = plan(&child, Request::Pause) else { panic!("{:?}", plan(&child, Request::Pause)) };
        assert_eq!(patch["metadata"]["annotations"]["baton.dev/parent-suspend-prior"], "true");
        assert!(asked.contains("resuming p leaves it paused"), "{asked}");
        // And resuming it by hand is not undone when the parent resumes.
        let paused_by_hand = run(
            RunPhase::Paused,
            spec(json!({"suspend": true})),
            json!({"baton.dev/parent-suspend": "true", "baton.dev/parent-suspend-prior": "true"}),
        );
        let Plan::Patch { patch, .. } = plan(&paused_by_hand, Request::Resume) else { panic!() };
        assert_eq!(patch["metadata"]["annotations"]["baton.dev/parent-suspend-prior"], "false");
        assert_eq!(patch["spec"]["suspend"], false);
        // Once recorded, asking again changes nothing.
        assert!(matches!(plan(&paused_by_hand, Request::Pause), Plan::Nothing(_)));
        // Without a parent's pause there is nothing to record.
        let Plan::Patch { patch, .. } =
            plan(&run(RunPhase::Running, spec(json!({})), json!({"baton.dev/parent-suspend": "false"})), Request::Pause)
        else {
            panic!()
        };
        assert!(patch["metadata"].get("annotations").is_none());
    }

    #[test]
    fn review_a_child_stopped_by_its_parent_is_retried_through_the_parent() {
        let child = run(RunPhase::Stopped, spec(json!({"shutdown": "Stop"})), json!({"baton.dev/parent-stop": "true"}));
        assert!(
            matches!(plan(&child, Request::Retry), Plan::Refuse(m) if m.contains("stopped by its parent p") && m.contains("baton retry p"))
        );
    }

    #[test]
    fn review_stop_does_not_replace_a_terminate() {
        let r = run(RunPhase::Running, spec(json!({"shutdown": "Terminate"})), json!({}));
        assert!(matches!(plan(&r, Request::Stop), Plan::Nothing(m) if m.contains("without its exit tasks")));
        let r = run(RunPhase::Running, spec(json!({"shutdown": "Stop"})), json!({}));
        assert!(matches!(plan(&r, Request::Terminate), Plan::Patch { .. }), "Terminate may tighten a Stop");
    }

    #[test]
    fn review_a_pause_while_stopping_is_refused() {
        let r = run(RunPhase::Running, spec(json!({"shutdown": "Stop"})), json!({}));
        assert!(matches!(plan(&r, Request::Pause), Plan::Refuse(m) if m.contains("being stopped")));
    }
}
