//! How soon a broken watch is tried again. kube's default (client-go's
//! reflector: 0.8 s doubling to 30 s, with jitter, reset after 2 quiet
//! minutes) keeps every watch of every controller away for up to a minute
//! after a couple of API server restarts, and a run then waits that long
//! for its next step (the chaos suite saw runs stall past its 45 s drain).
//! baton's watches are few (runs, pods, child runs, Workflows, Leases per
//! controller), so they come back sooner: 250 ms doubling to 5 s, reset
//! after 30 s without errors.
//!
//! A watch can also stay open and deliver nothing: after API server
//! restarts the chaos suite saw one controller's run watch go silent for a
//! minute (runs created meanwhile unclaimed) while its Lease and webhook
//! worked, as Kubernetes does when a custom resource's storage is replaced
//! under an open watch (kubernetes/kubernetes#71138). Every watch therefore
//! asks the API server to end it after [`WATCH_TIMEOUT`]; the watcher then
//! watches again from the last resourceVersion (no list), so a silent watch
//! costs seconds, not minutes.
//!
//! A watch's errors stop at the watch ([`triggers`]): kube's Controller
//! backs off its whole trigger stream, every watch of the controller and
//! its recheck together, on any error that reaches it (0.8 s doubling to
//! 30 s, with jitter). After a few API server restarts one controller then
//! heard nothing for half a minute, and runs created meanwhile waited that
//! long for an owner (the chaos suite's 15 s bound broke in CI).

use std::time::Duration;

use futures::{Stream, StreamExt};
use kube::runtime::utils::{Backoff, ResetTimerBackoff};
use kube::runtime::watcher;
use tracing::warn;

const FIRST: Duration = Duration::from_millis(250);
const MAX: Duration = Duration::from_secs(5);
const RESET_AFTER: Duration = Duration::from_secs(30);

/// Doubling delays from [`FIRST`] up to [`MAX`], never ending.
#[derive(Debug, Clone)]
pub struct Doubling {
    next: Duration,
}

impl Default for Doubling {
    fn default() -> Self {
        Doubling { next: FIRST }
    }
}

impl Iterator for Doubling {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let now = self.next;
        self.next = (now * 2).min(MAX);
        Some(now)
    }
}

impl Backoff for Doubling {
    fn reset(&mut self) {
        self.next = FIRST;
    }
}

/// The backoff of every watch baton runs.
pub fn watch() -> ResetTimerBackoff<Doubling> {
    ResetTimerBackoff::new(Doubling::default(), RESET_AFTER)
}

/// How long the API server keeps one watch request open (`timeoutSeconds`).
const WATCH_TIMEOUT: u32 = 10;

/// The watcher configuration of every watch baton runs.
pub fn watch_config() -> watcher::Config {
    watcher::Config::default().timeout(WATCH_TIMEOUT)
}

/// The objects a watch (already backing off with [`watch`]) delivers,
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
        let mut b = Doubling::default();
        let first: Vec<u128> = b.by_ref().take(7).map(|d| d.as_millis()).collect();
        assert_eq!(first, [250, 500, 1000, 2000, 4000, 5000, 5000]);
        b.reset();
        assert_eq!(b.next(), Some(FIRST));
    }

    #[tokio::test]
    async fn triggers_keep_the_objects_and_drop_the_errors() {
        let events = futures::stream::iter([Ok(1), Err(watcher::Error::NoResourceVersion), Ok(2), Err(watcher::Error::NoResourceVersion)]);
        let kept: Vec<i32> = triggers("numbers", events).map(|o| o.unwrap()).collect().await;
        assert_eq!(kept, [1, 2]);
    }

    #[test]
    fn every_watch_is_ended_by_the_api_server_within_seconds() {
        assert_eq!(watch_config().timeout, Some(WATCH_TIMEOUT));
    }
}
