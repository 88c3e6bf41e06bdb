//! The API calls that carry out a status: create what a running unit
//! needs, delete pods nothing runs in any more, pass the run's requests on
//! to its child runs.

use super::{Action, ChildRequest, Observed, PodState, RunPhase, TaskPhase, WorkflowInstanceSpec, WorkflowInstanceStatus};

/// The API calls that make the world match `status`. Stops come before
/// starts, so a freed parallelism slot is free before it is reused.
pub fn actions(status: &WorkflowInstanceStatus, spec: &WorkflowInstanceSpec, observed: &Observed) -> Vec<Action> {
    let mut out = Vec::new();
    let run_ended = status.phase.unwrap_or_default().is_terminal();
    for pod in &observed.pods {
        let current = status.tasks.iter().any(|t| t.phase == TaskPhase::Running && t.pod_name.as_ref() == Some(&pod.name));
        if !current && !pod.deleting && matches!(pod.state, PodState::Waiting | PodState::Running) {
            out.push(Action::DeletePod { name: pod.name.clone() });
        }
    }
    for child in &observed.children {
        let current = status.tasks.iter().any(|t| t.phase == TaskPhase::Running && t.child_instance.as_ref() == Some(&child.name));
        let child_ended = child.phase.is_some_and(RunPhase::is_terminal);
        if current && !run_ended {
            // Pass on a pause or resume of the parent, once per change.
            let request = match (spec.suspend, child.passed.suspend) {
                (true, Some(true)) | (false, Some(false) | None) => None,
                (true, _) => Some(ChildRequest::Pause { prior: child.suspend }),
                (false, Some(true)) => Some(ChildRequest::Resume { to: child.passed.prior.unwrap_or(false) }),
            };
            out.extend(request.map(|request| Action::SteerChild { name: child.name.clone(), request }));
        } else if !child_ended && !child.passed.stop && status.tasks.iter().any(|t| t.stop_children.contains(&child.name)) {
            // The run ended its task while it was going: it must end too.
            out.push(Action::SteerChild { name: child.name.clone(), request: ChildRequest::Stop });
        }
    }
    for t in status.tasks.iter().filter(|t| t.phase == TaskPhase::Running) {
        if let Some(pod) = &t.pod_name
            && !observed.pods.iter().any(|p| &p.name == pod)
        {
            out.push(Action::CreatePod { task: t.name.clone(), attempt: t.attempts - 1 });
        }
        if let Some(child) = &t.child_instance
            && !observed.children.iter().any(|c| &c.name == child)
        {
            out.push(Action::CreateChild { task: t.name.clone(), attempt: t.attempts - 1 });
        }
    }
    out
}
