//! Failpoints for the end-to-end tests (compiled only with the
//! `failpoints` feature): [`crate::failpoint!`] marks a point in the code,
//! `PUT /failpoints/<name>` on the metrics server configures it with a
//! `fail` action (`pause`, `off`, `sleep(1000)`, `panic`, ...), and so
//! does the environment variable `FAILPOINTS` at start
//! (`name=action;name=action`), for a failpoint that must hold from the
//! first moment.

use axum::extract::Path;
use axum::http::StatusCode;
use tracing::info;

/// Evaluates failpoint `name`. A configured one logs "failpoint hit" first,
/// so that a test can wait for it, and runs its action with the runtime
/// told that this thread blocks (a `pause` holds the thread until the
/// failpoint is configured again, and the other tasks move elsewhere).
/// Needs the multi-threaded runtime, which the controller runs on.
pub fn hit(name: &str) {
    let Some((_, actions)) = fail::list().into_iter().find(|(n, a)| n == name && !a.is_empty() && a != "off") else {
        return;
    };
    info!(failpoint = name, %actions, "failpoint hit");
    tokio::task::block_in_place(|| fail::fail_point!(name));
    info!(failpoint = name, "failpoint passed");
}

/// Whether failpoint `name` is configured with any action but `off`.
pub fn on(name: &str) -> bool {
    fail::list().into_iter().any(|(n, a)| n == name && !a.is_empty() && a != "off")
}

/// `PUT /failpoints/<name>` with the actions as the body.
pub async fn configure(Path(name): Path<String>, actions: String) -> (StatusCode, String) {
    let actions = actions.trim();
    match fail::cfg(name.clone(), actions) {
        Ok(()) => {
            info!(failpoint = %name, %actions, "failpoint configured");
            (StatusCode::OK, format!("{name}: {actions}\n"))
        }
        Err(e) => (StatusCode::BAD_REQUEST, format!("{name}: {e}\n")),
    }
}
