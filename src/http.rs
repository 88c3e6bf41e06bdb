//! `/metrics`, `/healthz` and `/readyz`; with the `failpoints` feature also
//! `PUT /failpoints/<name>`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;

use crate::lease::Membership;
use crate::metrics::Metrics;

/// Binds `addr` (port 0 picks a free port) and returns the bound address
/// and the server future.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    membership: Membership,
) -> std::io::Result<(SocketAddr, impl std::future::Future<Output = std::io::Result<()>>)> {
    let app =
        Router::new().route("/metrics", get(move || async move { metrics.render() })).route("/healthz", get(|| async { "ok" })).route(
            "/readyz",
            get(move || async move {
                if membership.valid() { (StatusCode::OK, "ok") } else { (StatusCode::SERVICE_UNAVAILABLE, "lease not held") }
            }),
        );
    #[cfg(feature = "failpoints")]
    let app = app.route("/failpoints/{name}", axum::routing::put(crate::failpoints::configure));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    Ok((bound, async move { axum::serve(listener, app).await }))
}
