//! How soon a broken watch is tried again. kube's default (client-go's
//! reflector: 0.8 s doubling to 30 s, with jitter, reset after 2 quiet
//! minutes) keeps every watch of every controller away for up to a minute
//! after a couple of API server restarts, and a run then waits that long
//! for its next step (the chaos suite saw runs stall past its 45 s drain).
//! baton's watches are few (runs, pods, child runs, Workflows, Leases per
//! controller), so they come back sooner: 250 ms doubling to 5 s, starting
//! over once the watch works again ([`watch`]).
//!
//! A watch can also stay open and deliver nothing, on a connection whose
//! other end is gone without a word (a partition, a load balancer dropping
//! it). Every watch therefore asks the API server to end it after
//! [`WATCH_TIMEOUT`], and kube gives up on one silent for that long plus a
//! margin; the watcher then watches again from the last resourceVersion
//! (no list), so a dead watch costs seconds, not kube's default five
//! minutes.
//!
//! A watch's errors stop at the watch ([`triggers`]): kube's Controller
//! backs off its whole trigger stream, every watch of the controller and
//! its recheck together, on any error that reaches it (0.8 s doubling to
//! 30 s, with jitter). After a few API server restarts one controller then
//! heard nothing for half a minute, and runs created meanwhile waited that
//! long for an owner (the chaos suite's 15 s bound broke in CI).

use std::time::Duration;

use std::fmt::Debug;

use futures::{Stream, StreamExt};
use kube::runtime::watcher;
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use tracing::warn;

const FIRST: Duration = Duration::from_millis(250);
const MAX: Duration = Duration::from_secs(5);

/// Doubling delays from [`FIRST`] up to [`MAX`], never ending.
#[derive(Debug, Clone)]
struct Doubling {
    next: Duration,
}

impl Default for Doubling {
    fn default() -> Self {
        Doubling { next: FIRST }
    }
}

impl Doubling {
    fn next(&mut self) -> Duration {
        let now = self.next;
        self.next = (now * 2).min(MAX);
        now
    }

    fn reset(&mut self) {
        self.next = FIRST;
    }
}

/// How long to wait after `event` before asking the watch for more: a
/// doubling delay after each error, starting over once the watch has shown
/// that it works (a listing completed, a change delivered). Not on `Init`:
/// the watcher yields one before every attempt to list, however often the
/// listing fails (kube's own `backoff` starts over on it, and a list the
/// API server refuses was then asked again every 250 ms).
fn pause_after<K>(event: &Result<watcher::Event<K>, watcher::Error>, delays: &mut Doubling) -> Option<Duration> {
    match event {
        Err(_) => Some(delays.next()),
        Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => None,
        Ok(_) => {
            delays.reset();
            None
        }
    }
}

/// A watch's events, asked for again after an error only once
/// [`pause_after`] has passed.
fn paced<K: Send + 'static>(
    events: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static {
    futures::stream::unfold((events.boxed(), Doubling::default()), |(mut events, mut delays)| async move {
        let event = events.next().await?;
        if let Some(pause) = pause_after(&event, &mut delays) {
            tokio::time::sleep(pause).await;
        }
        Some((event, (events, delays)))
    })
}

/// How long the API server keeps one watch request open (`timeoutSeconds`).
const WATCH_TIMEOUT: u32 = 10;

/// `config`, with every watch request ended by the API server after [`WATCH_TIMEOUT`].
fn bounded(config: watcher::Config) -> watcher::Config {
    config.timeout(WATCH_TIMEOUT)
}

/// Every watch baton runs: kube's watcher, [`bounded`] and [`paced`].
pub fn watch<K: Resource + Clone + DeserializeOwned + Debug + Send + 'static>(
    api: Api<K>,
    config: watcher::Config,
) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static {
    paced(watcher::watcher(api, bounded(config)))
}

/// The objects a [`watch`] delivers,
/// for a controller's triggers: its errors are logged with `what` and go
/// no further, so they never hold up the controller's other triggers.
pub fn triggers<K>(
    what: &'static str,
    objects: impl Stream<Item = Result<K, watcher::Error>>,
) -> impl Stream<Item = Result<K, watcher::Error>> {
    objects.filter(move |object| {
        if let Err(e) = object {
            warn!(watch = what, error = %e, "watch failed; it resumes after its backoff");
        }
        std::future::ready(object.is_ok())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_five_seconds_and_starts_over_on_reset() {
        let mut d = Doubling::default();
        let first: Vec<u128> = (0..7).map(|_| d.next().as_millis()).collect();
        assert_eq!(first, [250, 500, 1000, 2000, 4000, 5000, 5000]);
        d.reset();
        assert_eq!(d.next(), FIRST);
    }

    /// A listing the API server keeps refusing (a missing permission, a
    /// missing CRD) is asked again ever later, although the watcher says
    /// Init before each attempt; a completed listing or a change starts the
    /// delays over.
    #[test]
    fn a_list_that_keeps_failing_is_asked_again_ever_later() {
        use watcher::Event::{Apply, Init, InitApply, InitDone};
        let mut d = Doubling::default();
        let events: Vec<Result<watcher::Event<i32>, watcher::Error>> = vec![
            Ok(Init),
            Err(watcher::Error::NoResourceVersion),
            Ok(Init),
            Err(watcher::Error::NoResourceVersion),
            Ok(Init),
            Ok(InitApply(1)),
            Err(watcher::Error::NoResourceVersion),
            Ok(Init),
            Ok(InitDone),
            Err(watcher::Error::NoResourceVersion),
            Ok(Apply(2)),
            Err(watcher::Error::NoResourceVersion),
        ];
        let pauses: Vec<u128> = events.iter().filter_map(|e| pause_after(e, &mut d)).map(|p| p.as_millis()).collect();
        assert_eq!(pauses, [250, 500, 1000, 250, 250]);
    }

    #[tokio::test]
    async fn triggers_keep_the_objects_and_drop_the_errors() {
        let events = futures::stream::iter([Ok(1), Err(watcher::Error::NoResourceVersion), Ok(2), Err(watcher::Error::NoResourceVersion)]);
        let kept: Vec<i32> = triggers("numbers", events).map(|o| o.unwrap()).collect().await;
        assert_eq!(kept, [1, 2]);
    }

    #[test]
    fn every_watch_is_ended_by_the_api_server_within_seconds() {
        let config = bounded(watcher::Config::default().labels("a=b"));
        assert_eq!((config.timeout, config.label_selector.as_deref()), (Some(WATCH_TIMEOUT), Some("a=b")));
    }
}
