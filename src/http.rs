//! `/metrics`, `/healthz` and `/readyz`; with the `failpoints` feature also
//! `PUT /failpoints/<name>`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;

use crate::controller::Context;

/// Binds `addr` (port 0 picks a free port) and returns the bound address
/// and the server future. Ready means: this controller holds its Lease and
/// its caches have listed everything once.
pub async fn serve(
    addr: SocketAddr,
    ctx: Arc<Context>,
) -> std::io::Result<(SocketAddr, impl std::future::Future<Output = std::io::Result<()>>)> {
    let metrics = ctx.metrics.clone();
    let ready = move || async move {
        let listing = ctx.listing();
        match (ctx.membership.valid(), listing.is_empty()) {
            (true, true) => (StatusCode::OK, "ok".to_string()),
            (false, _) => (StatusCode::SERVICE_UNAVAILABLE, "lease not held".into()),
            (true, false) => (StatusCode::SERVICE_UNAVAILABLE, format!("still listing {}", listing.join(", "))),
        }
    };
    let app = Router::new()
        .route("/metrics", get(move || async move { metrics.render() }))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready));
    #[cfg(feature = "failpoints")]
    let app = app.route("/failpoints/{name}", axum::routing::put(crate::failpoints::configure));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    Ok((bound, async move { axum::serve(listener, app).await }))
}
