//! baton: a Kubernetes operator that runs DAG workflows with several
//! controllers active at once, each run owned by exactly one of them.

pub mod api;
pub mod backoff;
pub mod cache;
pub mod client;
pub mod conditions;
pub mod controller;
pub mod crds;
pub mod dag;
#[cfg(feature = "failpoints")]
pub mod failpoints;
pub mod fence;
pub mod http;
pub mod lease;
pub mod manifests;
pub mod metrics;
pub mod naming;
pub mod objects;
pub mod ownership;
pub mod planner;
pub mod reaper;
pub mod retention;
pub mod schedule;
pub mod scheduler;
pub mod steer;
pub mod template;
pub mod ui;
pub mod view;
pub mod webhook;
pub mod when;

/// A failpoint named `$name` (the `fail` crate, as TiKV uses it):
/// configured at run time through `PUT /failpoints/<name>` on the metrics
/// server. Compiled in only with the `failpoints` feature; without it the
/// macro expands to nothing.
#[macro_export]
macro_rules! failpoint {
    ($name:literal) => {
        #[cfg(feature = "failpoints")]
        $crate::failpoints::hit($name);
    };
}

/// Whether failpoint `name` is configured (always false without the
/// `failpoints` feature): for a condition held as long as a test wants it.
#[macro_export]
macro_rules! failpoint_on {
    ($name:literal) => {{
        #[cfg(feature = "failpoints")]
        let on = $crate::failpoints::on($name);
        #[cfg(not(feature = "failpoints"))]
        let on = false;
        on
    }};
}

/// Errors of the crate. Variants say whose fault it is, so metrics and
/// events can tell user mistakes from API trouble.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("invalid input: {0}")]
    Invalid(String),
    #[error("serialization: {0}")]
    Serialization(#[from] serde_json::Error),
    #[error("yaml: {0}")]
    Yaml(#[from] serde_yaml::Error),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
