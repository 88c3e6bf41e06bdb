//! The one place that writes the status of a run (or of a Workflow, whose
//! schedule one controller runs). Every write is fenced: made
//! only while this controller's Lease is valid and the object, as read, is ours
//! (or claimable), and sent with the resourceVersion that was read, so the
//! API server refuses it if anyone wrote in between. The CRD's CEL rule on
//! `status.owner.epoch` is the last line of defence.

use kube::api::{Api, PostParams};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::debug;

use crate::api::{Owner, Workflow, WorkflowInstance, WorkflowInstanceStatus, WorkflowStatus};
use crate::lease::Membership;
use crate::metrics::Metrics;

/// What entitles this write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fence {
    /// `status.owner` as read names this controller.
    Owner,
    /// The run as read has no live owner, or was released; the write makes
    /// this controller the owner.
    Claim,
}

#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    #[error("not written: {0}")]
    Refused(&'static str),
    #[error("conflict: the run changed since it was read")]
    Conflict,
    #[error(transparent)]
    Kube(#[from] kube::Error),
}

/// An object whose status names an owner.
pub trait Owned: kube::Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + std::fmt::Debug {
    type Status;
    fn owner(&self) -> Option<&Owner>;
    fn set_status(&mut self, status: Self::Status);
}

impl Owned for WorkflowInstance {
    type Status = WorkflowInstanceStatus;
    fn owner(&self) -> Option<&Owner> {
        self.status.as_ref().and_then(|s| s.owner.as_ref())
    }
    fn set_status(&mut self, status: WorkflowInstanceStatus) {
        self.status = Some(status);
    }
}

impl Owned for Workflow {
    type Status = WorkflowStatus;
    fn owner(&self) -> Option<&Owner> {
        self.status.as_ref().and_then(|s| s.owner.as_ref())
    }
    fn set_status(&mut self, status: WorkflowStatus) {
        self.status = Some(status);
    }
}

/// Checks that this controller may write the object as read. Pure.
pub fn check<K: Owned>(read: &K, fence: Fence, membership: &Membership) -> Result<(), &'static str> {
    if !membership.valid() {
        return Err("this controller's Lease is not valid");
    }
    if read.meta().annotations.as_ref().is_some_and(|a| a.contains_key(crate::cache::WITHOUT_SPEC)) {
        // Its status lacks the run's copy of the workflow: writing it back
        // would erase that copy.
        return Err("the run as read is a cached copy without its workflow spec");
    }
    let owner = read.owner();
    match fence {
        Fence::Owner if owner.is_some_and(|o| o.controller == membership.identity()) => Ok(()),
        Fence::Owner => Err("owned by another controller"),
        Fence::Claim => match owner {
            None => Ok(()),
            Some(o) if o.controller.is_empty() || !membership.is_live(&o.controller) => Ok(()),
            Some(_) => Err("it has a live owner"),
        },
    }
}

/// Replaces the status of the object as read with `status`, fenced.
pub async fn write_status<K: Owned>(
    api: &Api<K>,
    read: &K,
    status: K::Status,
    fence: Fence,
    membership: &Membership,
    metrics: &Metrics,
) -> Result<K, FenceError> {
    if let Err(why) = check(read, fence, membership) {
        metrics.fenced_writes_refused.inc();
        return Err(FenceError::Refused(why));
    }
    let mut next = read.clone();
    next.set_status(status);
    let name = read.meta().name.as_deref().unwrap_or_default();
    match api.replace_status(name, &PostParams::default(), &next).await {
        Ok(written) => Ok(written),
        Err(kube::Error::Api(s)) if s.code == 409 => {
            debug!("status write lost a race; will re-read");
            Err(FenceError::Conflict)
        }
        Err(kube::Error::Api(s)) if s.code == 422 && s.message.contains("epoch") => {
            metrics.fenced_writes_refused.inc();
            Err(FenceError::Refused("the API server refused an older epoch"))
        }
        Err(e) => Err(e.into()),
    }
}
