//! Our own Lease and the membership it gives: create it, renew it with
//! resourceVersion-checked replaces, watch the other controllers' Leases,
//! and publish who is live. The timing rules live in [`crate::ownership`];
//! this file only talks to the API server and keeps the clocks fed.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, PostParams, Preconditions};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::ownership::{PeerClock, RenewClock, renew_deadline, watch_stale};

/// Label on every controller Lease; the watch selects on it.
pub const CONTROLLER_LABEL: &str = "baton.dev/controller";

#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub identity: String,
    pub namespace: String,
    pub lease_duration: Duration,
    pub renew_interval: Duration,
}

struct State {
    renew: RenewClock,
    peers: PeerClock,
    stopped: bool,
    /// When the Lease watch last delivered anything, and whether it has
    /// reported an error since: see [`watch_stale`].
    watch_heard: Option<Instant>,
    watch_broken: bool,
    /// What was last published on `changes`: (valid, live members).
    published: (bool, Vec<String>),
}

struct Shared {
    config: LeaseConfig,
    state: Mutex<State>,
    changes: watch::Sender<u64>,
    stop: watch::Sender<bool>,
}

/// Shared view of the membership. Every answer is computed from the clocks
/// at the moment of the call, so it is never staler than the last event seen.
#[derive(Clone)]
pub struct Membership(Arc<Shared>);

impl Membership {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.0.state.lock().expect("lease state poisoned")
    }

    pub fn identity(&self) -> &str {
        &self.0.config.identity
    }

    /// Our Lease is named after our identity.
    pub fn lease_name(&self) -> &str {
        &self.0.config.identity
    }

    /// Whether we renewed within the renew deadline; when false we must not act.
    pub fn valid(&self) -> bool {
        Self::valid_in(&self.lock(), Instant::now())
    }

    fn valid_in(state: &State, now: Instant) -> bool {
        !state.stopped && state.renew.valid(now)
    }

    /// Sorted identities of the live controllers, ourselves included; empty
    /// while our own Lease is not valid, since then we must not act at all.
    pub fn live_members(&self) -> Vec<String> {
        self.snapshot(&self.lock(), Instant::now()).1
    }

    /// Whether `identity` is in [`Membership::live_members`].
    pub fn is_live(&self, identity: &str) -> bool {
        self.live_members().iter().any(|m| m == identity)
    }

    /// A counter bumped whenever our validity or the live set changes.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.0.changes.subscribe()
    }

    /// Stops acting at once: from now on we are not valid and live_members
    /// is empty. The running [`LeaseTask`] then stops and deletes our Lease.
    pub fn shutdown(&self) {
        self.lock().stopped = true;
        self.publish();
        self.0.stop.send_replace(true);
    }

    fn snapshot(&self, state: &State, now: Instant) -> (bool, Vec<String>) {
        let valid = Self::valid_in(state, now);
        if !valid {
            return (false, Vec::new());
        }
        let me = self.identity();
        let mut live: Vec<String> = state.peers.live(now).into_iter().filter(|m| m != me).collect();
        live.push(me.to_string());
        live.sort();
        (true, live)
    }

    /// Bumps `changes` if validity or the live set differs from what was last published.
    fn publish(&self) {
        let (before, after) = {
            let mut state = self.lock();
            let now = self.snapshot(&state, Instant::now());
            if now == state.published {
                return;
            }
            (std::mem::replace(&mut state.published, now.clone()).0, now)
        };
        match (before, after.0) {
            (false, true) => info!(controller = self.identity(), "lease valid: acting on runs"),
            (true, false) => warn!(controller = self.identity(), "lease not valid: stopped acting on runs"),
            _ => {}
        }
        info!(controller = self.identity(), members = ?after.1, "membership changed");
        self.0.changes.send_modify(|n| *n += 1);
    }

    /// When the published view may change next without any event: a peer
    /// expiring or our own validity running out; at least every renew interval.
    fn next_wake(&self, now: Instant) -> Instant {
        let state = self.lock();
        let own = state.renew.valid_until().filter(|&t| t > now);
        [state.peers.next_expiry(now), own].into_iter().flatten().fold(now + self.0.config.renew_interval, Instant::min)
    }
}

/// The renewal and watch loop. Run it with [`LeaseTask::run`] (stopped by
/// [`Membership::shutdown`]) or [`LeaseTask::spawn`].
pub struct LeaseTask {
    membership: Membership,
    api: Api<Lease>,
    lease: Lease,
    /// Start of the write that created or took over the Lease: the first
    /// renewal is due one interval after it, however late the task starts.
    written_at: tokio::time::Instant,
}

/// A spawned [`LeaseTask`].
pub struct LeaseHandle {
    membership: Membership,
    task: tokio::task::JoinHandle<()>,
}

impl LeaseHandle {
    /// Marks us not valid at once, stops renewing and deletes our Lease, so
    /// peers take over our runs without waiting for it to expire.
    pub async fn release(self) {
        self.membership.shutdown();
        if let Err(e) = self.task.await {
            warn!(controller = self.membership.identity(), error = %e, "lease task failed");
        }
    }
}

/// Creates or takes over our Lease once, so we are valid when this returns,
/// and lists the peers' Leases, so the first live set already has them (an
/// empty one would hash every run to us and make us claim live peers' runs).
pub async fn start(client: Client, config: LeaseConfig) -> Result<(Membership, LeaseTask), kube::Error> {
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    let (changes, _) = watch::channel(0);
    let (stop, _) = watch::channel(false);
    let state = State {
        renew: RenewClock::new(renew_deadline(config.lease_duration)),
        peers: PeerClock::new(),
        stopped: false,
        watch_heard: None,
        watch_broken: false,
        published: (false, Vec::new()),
    };
    let membership = Membership(Arc::new(Shared { config, state: Mutex::new(state), changes, stop }));
    let written_at = tokio::time::Instant::now();
    let lease = write(&api, &membership, None).await?;
    relist(&api, &membership).await?;
    membership.publish();
    Ok((membership.clone(), LeaseTask { membership, api, lease, written_at }))
}

/// Our Lease as it should be after this write: `current` is the one last
/// read (None: create it).
fn desired(config: &LeaseConfig, current: Option<&Lease>) -> Lease {
    let now = MicroTime(Timestamp::now());
    let mut lease = current.cloned().unwrap_or_default();
    lease.metadata.name = Some(config.identity.clone());
    lease.labels_mut().insert(CONTROLLER_LABEL.into(), "true".into());
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    if spec.holder_identity.as_deref() != Some(config.identity.as_str()) {
        if current.is_some() {
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.holder_identity = Some(config.identity.clone());
        spec.acquire_time = Some(now.clone());
    }
    spec.acquire_time.get_or_insert_with(|| now.clone());
    spec.lease_duration_seconds = Some(config.lease_duration.as_secs_f64().ceil().max(1.0) as i32);
    spec.renew_time = Some(now);
    lease
}

/// One renewal: replace the Lease read last (create it when there is none),
/// re-reading on 409 (Conflict, AlreadyExists) and creating on 404.
/// Validity counts from the start of the request that succeeded.
async fn write(api: &Api<Lease>, membership: &Membership, mut current: Option<Lease>) -> Result<Lease, kube::Error> {
    let config = &membership.0.config;
    let pp = PostParams::default();
    let mut tries = 0;
    loop {
        let attempt = membership.lock().renew.attempt_started(Instant::now());
        let body = desired(config, current.as_ref());
        let result = match &current {
            Some(_) => api.replace(&config.identity, &pp, &body).await,
            None => api.create(&pp, &body).await,
        };
        let err = match result {
            Ok(lease) => {
                let mut state = membership.lock();
                let now = Instant::now();
                if !state.renew.valid(now) {
                    // We were cut off (frozen, partitioned) and saw no Lease
                    // change meanwhile: judged on our clock, every peer would
                    // look expired. Start their clocks afresh instead of
                    // taking live peers' runs.
                    state.peers.restart_all(now);
                }
                state.renew.succeeded(attempt);
                return Ok(lease);
            }
            Err(e) => e,
        };
        tries += 1;
        match &err {
            kube::Error::Api(s) if tries < 4 && s.code == 409 => current = api.get_opt(&config.identity).await?,
            kube::Error::Api(s) if tries < 4 && s.code == 404 => current = None,
            _ => return Err(err),
        }
        debug!(controller = config.identity, error = %err, "lease write refused; retrying at once");
    }
}

impl LeaseTask {
    pub fn spawn(self) -> LeaseHandle {
        let membership = self.membership.clone();
        LeaseHandle { membership, task: tokio::spawn(self.run()) }
    }

    /// Renews and watches until [`Membership::shutdown`], then deletes our Lease.
    /// The watch runs as a task of its own, so a stalled watch never holds
    /// up a renewal.
    pub async fn run(self) {
        let LeaseTask { membership, api, lease, written_at } = self;
        let watch = tokio::spawn({
            let (api, membership) = (api.clone(), membership.clone());
            async move { watch_loop(&api, &membership).await }
        });
        let lease = renew_loop(&api, &membership, lease, written_at).await;
        if let Err(e) = watch.await {
            warn!(controller = membership.identity(), error = %e, "lease watch task failed");
        }
        release(&api, &membership, &lease).await;
    }
}

/// Renews every renew interval, timed from the start of the previous try,
/// until shutdown; returns the Lease as last written, for the delete.
async fn renew_loop(api: &Api<Lease>, membership: &Membership, mut lease: Lease, mut last: tokio::time::Instant) -> Lease {
    let config = &membership.0.config;
    let mut stop = membership.0.stop.subscribe();
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return lease,
            _ = tokio::time::sleep_until(last + config.renew_interval) => {}
        }
        last = tokio::time::Instant::now();
        // A hung request must not hold up the next one past our deadline.
        match tokio::time::timeout(renew_deadline(config.lease_duration), write(api, membership, Some(lease.clone()))).await {
            Ok(Ok(renewed)) => {
                lease = renewed;
                let stale = {
                    let state = membership.lock();
                    watch_stale(state.watch_heard, state.watch_broken, config.renew_interval, Instant::now())
                };
                if stale {
                    // The API server answers but the watch does not tell us
                    // about peers (a watch backing off after an outage):
                    // read their Leases, so silence is not taken for death.
                    match relist(api, membership).await {
                        Ok(()) => debug!(controller = config.identity, "lease watch quiet: listed peer leases"),
                        Err(e) => warn!(controller = config.identity, error = %e, "listing peer leases"),
                    }
                }
            }
            Ok(Err(e)) => warn!(controller = config.identity, error = %e, "lease renewal failed"),
            Err(_) => warn!(controller = config.identity, "lease renewal timed out"),
        }
        membership.publish();
    }
}

/// Feeds the PeerClock from a watch on all controller Leases and publishes
/// the membership on every event and whenever a Lease may have expired.
async fn watch_loop(api: &Api<Lease>, membership: &Membership) {
    let config = &membership.0.config;
    let mut stop = membership.0.stop.subscribe();
    let mut events = crate::backoff::watch(api.clone(), watcher::Config::default().labels(&selector())).boxed();
    let mut relisted = HashSet::new();
    loop {
        // Tests hold the watch here to make it go quiet.
        crate::failpoint!("lease-watch");
        let wake = tokio::time::Instant::from_std(membership.next_wake(Instant::now()));
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep_until(wake) => {}
            event = events.next() => {
                {
                    let mut state = membership.lock();
                    state.watch_heard = Some(Instant::now());
                    state.watch_broken = matches!(event, Some(Err(_)));
                }
                match event {
                Some(Ok(watcher::Event::Init)) => relisted.clear(),
                Some(Ok(watcher::Event::InitApply(lease))) => {
                    relisted.insert(lease.name_any());
                    observe(membership, &lease);
                }
                Some(Ok(watcher::Event::InitDone)) => membership.lock().peers.retain(|n| relisted.contains(n)),
                Some(Ok(watcher::Event::Apply(lease))) => observe(membership, &lease),
                Some(Ok(watcher::Event::Delete(lease))) => membership.lock().peers.remove(&lease.name_any()),
                Some(Err(e)) => warn!(controller = config.identity, error = %e, "watching controller leases"),
                None => return,
                }
            }
        }
        membership.publish();
    }
}

/// Lists every controller Lease and feeds the clocks, forgetting Leases
/// that are gone. A version seen before does not restart a clock, so a dead
/// peer stays dead however often we list.
async fn relist(api: &Api<Lease>, membership: &Membership) -> Result<(), kube::Error> {
    let leases = api.list(&ListParams::default().labels(&selector())).await?;
    let names: HashSet<String> = leases.iter().map(|l| l.name_any()).collect();
    for lease in &leases {
        observe(membership, lease);
    }
    membership.lock().peers.retain(|n| names.contains(n));
    Ok(())
}

fn selector() -> String {
    format!("{CONTROLLER_LABEL}=true")
}

fn observe(membership: &Membership, lease: &Lease) {
    let name = lease.name_any();
    if name == membership.identity() {
        return; // our own validity is RenewClock's business
    }
    let seconds = lease.spec.as_ref().and_then(|s| s.lease_duration_seconds).filter(|&s| s > 0);
    let duration = seconds.map_or(membership.0.config.lease_duration, |s| Duration::from_secs(s as u64));
    let version = lease.resource_version().unwrap_or_default();
    membership.lock().peers.observe(&name, &version, duration, Instant::now());
}

/// Deletes our Lease only if it is still the one we last wrote: a successor
/// with our identity may already have taken it over.
async fn release(api: &Api<Lease>, membership: &Membership, lease: &Lease) {
    let config = &membership.0.config;
    let dp = DeleteParams {
        preconditions: Some(Preconditions { uid: lease.uid(), resource_version: lease.resource_version() }),
        ..DeleteParams::default()
    };
    match api.delete(&config.identity, &dp).await {
        Ok(_) => info!(controller = config.identity, "lease deleted"),
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => warn!(controller = config.identity, error = %e, "lease not deleted; it will expire"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> LeaseConfig {
        LeaseConfig {
            identity: "c-0".into(),
            namespace: "ns".into(),
            lease_duration: Duration::from_millis(1500),
            renew_interval: Duration::from_secs(1),
        }
    }

    #[test]
    fn desired_new_lease() {
        let l = desired(&config(), None);
        assert_eq!(l.metadata.name.as_deref(), Some("c-0"));
        assert_eq!(l.labels().get(CONTROLLER_LABEL).map(String::as_str), Some("true"));
        let spec = l.spec.unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("c-0"));
        assert_eq!(spec.lease_duration_seconds, Some(2), "rounded up");
        assert!(spec.acquire_time.is_some() && spec.renew_time.is_some());
        assert_eq!(spec.lease_transitions, None);
    }

    #[test]
    fn desired_keeps_version_and_takes_over() {
        let mut old = desired(&config(), None);
        old.metadata.resource_version = Some("42".into());
        let acquired = old.spec.as_ref().unwrap().acquire_time.clone();
        let renewed = desired(&config(), Some(&old));
        assert_eq!(renewed.metadata.resource_version.as_deref(), Some("42"));
        assert_eq!(renewed.spec.as_ref().unwrap().acquire_time, acquired, "renewal keeps acquireTime");
        old.spec.as_mut().unwrap().holder_identity = Some("someone".into());
        let taken = desired(&config(), Some(&old)).spec.unwrap();
        assert_eq!(taken.holder_identity.as_deref(), Some("c-0"));
        assert_eq!(taken.lease_transitions, Some(1));
    }

    #[test]
    fn duration_is_at_least_one_second() {
        let c = LeaseConfig { lease_duration: Duration::from_millis(10), ..config() };
        assert_eq!(desired(&c, None).spec.unwrap().lease_duration_seconds, Some(1));
    }
}
