//! podGC: which of a run's ended task pods are deleted now. Decided on the
//! status being written, which has already recorded what those pods
//! reported (exit code, result, message): the deletes follow that write,
//! so nothing a pod reported is lost with it.

use std::collections::BTreeSet;

use super::{Observed, PodState, RunPhase, TaskPhase, WorkflowInstanceStatus};
use crate::api::PodGc;
use crate::naming;

/// Names of the pods `policy` deletes now, given the status about to be
/// written: pods that have ended (a running one is the run's cleanup's to
/// stop) and are not being deleted already.
///
/// - `OnTaskSuccess`: the pod of each entry's current attempt once that
///   entry Succeeded; pods of failed attempts stay.
/// - `OnRunSuccess`: every ended pod once the run Succeeded.
/// - `OnRunFinished`: every ended pod once the run ended.
pub fn deletes(policy: PodGc, run_name: &str, status: &WorkflowInstanceStatus, observed: &Observed) -> Vec<String> {
    let phase = status.phase.unwrap_or_default();
    let ended = observed.pods.iter().filter(|p| !p.deleting && matches!(p.state, PodState::Succeeded | PodState::Failed));
    match policy {
        PodGc::Never => Vec::new(),
        PodGc::OnRunSuccess if phase != RunPhase::Succeeded => Vec::new(),
        PodGc::OnRunFinished if !phase.is_terminal() => Vec::new(),
        PodGc::OnRunSuccess | PodGc::OnRunFinished => ended.map(|p| p.name.clone()).collect(),
        PodGc::OnTaskSuccess => {
            let succeeded = succeeded_pods(run_name, status);
            ended.filter(|p| p.state == PodState::Succeeded && succeeded.contains(&p.name)).map(|p| p.name.clone()).collect()
        }
    }
}

/// The pods of the succeeded attempts the status records: each Succeeded
/// entry's `podName`, or for a finished instance of a fan-out (which
/// leaves it out) the name its key and attempts give.
fn succeeded_pods(run_name: &str, status: &WorkflowInstanceStatus) -> BTreeSet<String> {
    status
        .tasks
        .iter()
        .filter(|t| t.phase == TaskPhase::Succeeded && t.attempts > 0)
        .map(|t| t.pod_name.clone().unwrap_or_else(|| naming::pod(run_name, &naming::object_part(&t.name), t.attempts - 1)))
        .collect()
}
