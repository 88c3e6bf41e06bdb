//! The baton controller: holds its own Lease, claims the runs that hash to
//! it, runs them, and hands them over on shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::Parser;
use futures::StreamExt;
use kube::runtime::reflector;
use tracing::{error, info};

use baton::client::Budget;
use baton::controller::{self, Context};
use baton::lease::{self, LeaseConfig};
use baton::metrics::Metrics;
use baton::scheduler;
use baton::webhook::Webhook;

#[derive(Parser, Debug)]
#[command(name = "baton-controller", version, about = "Runs baton workflows; several controllers share the runs through Leases")]
struct Flags {
    /// Identity of this controller, used as its Lease name and in
    /// status.owner. Default: $POD_NAME, else the hostname.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Namespace of the controllers' Leases. Default: $POD_NAMESPACE, else baton-system.
    #[arg(long, env = "POD_NAMESPACE", default_value = "baton-system")]
    lease_namespace: String,
    /// How long a Lease stays valid without renewal; a dead controller's runs
    /// move after about this long.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    lease_duration: Duration,
    /// How often this controller renews its Lease; at most a third of
    /// --lease-duration.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    renew_interval: Duration,
    /// Address of /metrics, /healthz and /readyz; port 0 picks a free port.
    #[arg(long, default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Address of the validating admission webhook (HTTPS, path /validate)
    /// that refuses pods and child runs created by a controller that lost
    /// the run. Several controllers on one host may share the port. Default:
    /// no webhook.
    #[arg(long, requires = "webhook_cert_dir")]
    webhook_addr: Option<SocketAddr>,
    /// Directory holding the webhook's tls.crt and tls.key (a kubernetes.io/tls
    /// Secret mounted as a volume); read again when the files change.
    #[arg(long)]
    webhook_cert_dir: Option<PathBuf>,
    /// Watch only this namespace. Default: all namespaces.
    #[arg(long)]
    namespace: Option<String>,
    /// Most requests a second this controller makes to the API server for
    /// its runs and Workflows, on average (client-go's QPS); 0 means no
    /// limit. Every such request counts, watches included; its Lease and
    /// the admission webhook have their own, unlimited client.
    #[arg(long, default_value_t = 500.0)]
    kube_qps: f64,
    /// Most requests this controller makes at once before --kube-qps
    /// applies (client-go's burst).
    #[arg(long, default_value_t = 1000)]
    kube_burst: u32,
    /// Record a Normal Event for every task started, succeeded or stopped.
    /// Off by default: status records all of it, and an Event is one more
    /// API write per task. Warnings, owner changes, requests applied and
    /// the run's end are always recorded.
    #[arg(long)]
    task_events: bool,
    /// Log format: text or json.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

fn identity(flag: Option<String>) -> String {
    flag.filter(|s| !s.is_empty())
        .or_else(|| hostname::get().ok().and_then(|h| h.into_string().ok()))
        .unwrap_or_else(|| "baton-controller".into())
}

async fn signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let flags = Flags::parse();
    // Failpoints configured by $FAILPOINTS (test builds only).
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    if let Err(message) = baton::ownership::check_timing(flags.lease_duration, flags.renew_interval) {
        eprintln!("error: {message}");
        std::process::exit(2);
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,kube=warn".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if flags.log_format == "json" {
        builder.json().init()
    } else {
        builder.init()
    }

    let identity = identity(flags.identity);
    let metrics = Arc::new(Metrics::default());
    let client = baton::client::build(Budget::new(flags.kube_qps, flags.kube_burst, metrics.clone())).await?;
    // The Lease and the admission webhook never wait behind the runs' work
    // for the rate limit (a renewal stuck in that queue would cost this
    // controller its runs), as leader election has its own client in
    // kube-controller-manager. Their requests are few and still counted.
    let own_client = baton::client::build(Budget::new(0.0, 1, metrics.clone())).await?;
    let config = LeaseConfig {
        identity: identity.clone(),
        namespace: flags.lease_namespace,
        lease_duration: flags.lease_duration,
        renew_interval: flags.renew_interval,
    };
    let (membership, lease_task) = lease::start(own_client.clone(), config).await?;
    let (workflows, workflows_writer) = reflector::store();
    let ctx = Arc::new(Context::new(client.clone(), membership.clone(), metrics.clone(), workflows, flags.task_events));
    let (addr, server) = baton::http::serve(flags.metrics_addr, ctx.clone()).await?;
    info!(controller = %identity, %addr, "serving /metrics, /healthz, /readyz");
    tokio::spawn(async move {
        if let Err(e) = server.await {
            error!(error = %e, "http server stopped");
        }
    });
    if let (Some(addr), Some(dir)) = (flags.webhook_addr, flags.webhook_cert_dir.as_deref()) {
        let webhook = Webhook { client: own_client.clone(), metrics: metrics.clone(), identity: identity.clone() };
        let (addr, server) = baton::webhook::serve(addr, dir, webhook)?;
        info!(controller = %identity, %addr, "serving the admission webhook on https://{addr}{}", baton::webhook::PATH);
        tokio::spawn(server);
    }
    let lease_handle = lease_task.spawn();

    let (drain_tx, drain_rx) = tokio::sync::watch::channel(false);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let recheck = || futures::stream::select(changes(membership.changes()), changes(drain_rx.clone()));
    let stopped = || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    let namespace = flags.namespace.clone();
    let runs = tokio::spawn(controller::run(ctx.clone(), namespace.clone(), recheck(), stopped()));
    let workflows = tokio::spawn(scheduler::run(ctx.clone(), namespace, workflows_writer, recheck(), stopped()));

    signal().await;
    info!(controller = %identity, "shutting down: releasing runs");
    ctx.draining.store(true, Ordering::SeqCst);
    let _ = drain_tx.send(true);
    let deadline = tokio::time::Instant::now() + flags.lease_duration;
    // Until the watches have listed everything (a restart that is stopped
    // at once), what this controller owns is not known yet.
    while (!ctx.synced() || ctx.runs_to_hand_over() > 0) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop_tx.send(true);
    let _ = tokio::join!(runs, workflows);
    lease_handle.release().await;
    info!(controller = %identity, left = ctx.runs_to_hand_over(), "stopped");
    Ok(())
}

/// A stream that yields whenever a watch channel changes.
fn changes<T: Send + Sync + 'static>(rx: tokio::sync::watch::Receiver<T>) -> impl futures::Stream<Item = ()> + Send {
    futures::stream::unfold(rx, |mut rx| async move { rx.changed().await.ok().map(|_| ((), rx)) }).boxed()
}
