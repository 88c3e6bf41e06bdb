//! Who owns a run, decided without a client or a clock: rendezvous hashing
//! over the live controllers, the timing rules that say which controllers
//! are live, and the decision a controller takes on one run.
//!
//! Time is always passed in as a monotonic [`Instant`], so the rules can be
//! tested step by step and never compare wall clocks across machines.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::api::OwnerChangeReason;

/// FNV-1a 64 over `member`, a 0 byte, `key`, then a splitmix64 finalizer.
/// Written out by hand because the weight must be the same in every process,
/// on every machine and with every Rust version (std's hashers promise none
/// of that), and FNV alone mixes the last bytes poorly.
fn weight(member: &str, key: &str) -> u64 {
    splitmix64(fnv1a(member.as_bytes().iter().chain(&[0u8]).chain(key.as_bytes())))
}

fn fnv1a<'a>(bytes: impl Iterator<Item = &'a u8>) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.fold(OFFSET, |h, &b| (h ^ u64::from(b)).wrapping_mul(PRIME))
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The member a key belongs to: the one with the highest weight for it.
/// Unlike `hash % n`, a membership change only moves the keys of the member
/// that left, or the keys the new member wins. Ties go to the smaller name,
/// so the answer never depends on the order of `members`.
pub fn rendezvous<'a>(key: &str, members: &'a [String]) -> Option<&'a str> {
    members.iter().max_by(|a, b| weight(a, key).cmp(&weight(b, key)).then_with(|| b.cmp(a))).map(String::as_str)
}

#[derive(Debug, Clone)]
struct Peer {
    version: String,
    duration: Duration,
    changed_at: Instant,
}

/// Judges other controllers' Leases as client-go judges leader leases: a
/// Lease is live while it has changed within its duration, timed on our own
/// monotonic clock from when we saw it change. Its renewTime is never
/// compared with our wall clock, so clock skew between machines is harmless.
#[derive(Debug, Default, Clone)]
pub struct PeerClock {
    peers: HashMap<String, Peer>,
}

impl PeerClock {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that the Lease `name` was seen at `version`. Only a new
    /// version (or the first sight) restarts its clock: a re-list showing the
    /// same version must not keep a dead controller alive.
    pub fn observe(&mut self, name: &str, version: &str, duration: Duration, now: Instant) {
        match self.peers.get_mut(name) {
            Some(p) if p.version == version => p.duration = duration,
            Some(p) => {
                p.version = version.to_string();
                p.duration = duration;
                p.changed_at = now;
            }
            None => {
                self.peers.insert(name.to_string(), Peer { version: version.to_string(), duration, changed_at: now });
            }
        }
    }

    /// Restarts every peer's clock at `now`. For a controller that could not
    /// watch for a while: silence it did not hear is no evidence of death.
    pub fn restart_all(&mut self, now: Instant) {
        self.peers.values_mut().for_each(|p| p.changed_at = now);
    }

    /// The Lease was deleted: its controller shut down cleanly and is gone now.
    pub fn remove(&mut self, name: &str) {
        self.peers.remove(name);
    }

    /// Forgets every Lease for which `keep` is false (after a re-list, the
    /// Leases that were not listed again).
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.peers.retain(|name, _| keep(name));
    }

    fn expiry(p: &Peer) -> Instant {
        p.changed_at + p.duration
    }

    pub fn is_live(&self, name: &str, now: Instant) -> bool {
        self.peers.get(name).is_some_and(|p| now < Self::expiry(p))
    }

    /// Names of the live peers, sorted.
    pub fn live(&self, now: Instant) -> Vec<String> {
        let mut live: Vec<String> = self.peers.iter().filter(|(_, p)| now < Self::expiry(p)).map(|(n, _)| n.clone()).collect();
        live.sort();
        live
    }

    /// When the next currently-live peer expires, so the caller can wake up
    /// then and re-hash without polling.
    pub fn next_expiry(&self, now: Instant) -> Option<Instant> {
        self.peers.values().map(Self::expiry).filter(|&e| now < e).min()
    }
}

/// How long after the start of its last successful renewal a controller may
/// keep acting: two thirds of the lease duration (client-go: 10s of 15s),
/// so it stops well before peers can see its Lease expire.
pub fn renew_deadline(lease_duration: Duration) -> Duration {
    lease_duration * 2 / 3
}

/// Checks the lease timing flags: a renewal is due every `renew_interval`
/// and must succeed within the renew deadline (two thirds of the lease), so
/// the interval may be at most a third of the lease, leaving room for one
/// failed try. Otherwise every renewal is late, the controller keeps losing
/// its validity, and its peers never see it steady.
pub fn check_timing(lease_duration: Duration, renew_interval: Duration) -> Result<(), String> {
    if renew_interval.is_zero() || renew_interval * 3 > lease_duration {
        let max = humantime::format_duration(Duration::from_millis((lease_duration.as_millis() / 3) as u64));
        return Err(format!(
            "--renew-interval {} must be more than 0 and at most a third of --lease-duration {} (here at most {max}): renewals must land within two thirds of the lease with room for one retry",
            humantime::format_duration(renew_interval),
            humantime::format_duration(lease_duration),
        ));
    }
    Ok(())
}

/// Whether the watch on the controllers' Leases can no longer be trusted to
/// show peers' renewals: it reported an error, or it has been silent for
/// two renew intervals although our own renewals alone change a Lease it
/// sees every interval. Then silence is no evidence that peers died, and
/// their Leases must be listed instead.
pub fn watch_stale(last_heard: Option<Instant>, broken: bool, renew_interval: Duration, now: Instant) -> bool {
    broken || last_heard.is_none_or(|t| now.saturating_duration_since(t) > renew_interval * 2)
}

/// One renewal request, stamped with the instant it was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "pass the attempt to RenewClock::succeeded when the request succeeds"]
pub struct Attempt {
    started: Instant,
}

/// Our own Lease's validity. Timed from the start of the request, not its
/// answer: the API server may have stamped the Lease early in a slow request,
/// and peers time our Lease from when they saw that change.
#[derive(Debug, Clone)]
pub struct RenewClock {
    deadline: Duration,
    last_success: Option<Instant>,
}

impl RenewClock {
    pub fn new(renew_deadline: Duration) -> Self {
        RenewClock { deadline: renew_deadline, last_success: None }
    }

    pub fn attempt_started(&self, at: Instant) -> Attempt {
        Attempt { started: at }
    }

    /// Records a successful request. A late answer to an older attempt
    /// never moves validity backwards.
    pub fn succeeded(&mut self, attempt: Attempt) {
        self.last_success = Some(self.last_success.map_or(attempt.started, |t| t.max(attempt.started)));
    }

    /// Forgets every success: we stopped (shutdown) and must not act again.
    pub fn invalidate(&mut self) {
        self.last_success = None;
    }

    /// The first instant at which we are no longer valid, if we ever were.
    pub fn valid_until(&self) -> Option<Instant> {
        self.last_success.map(|t| t + self.deadline)
    }

    pub fn valid(&self, now: Instant) -> bool {
        self.valid_until().is_some_and(|until| now < until)
    }
}

/// What a controller knows about one run when it decides what to do with it.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// Our identity.
    pub me: &'a str,
    /// `status.owner.controller`: None when never claimed, `Some("")` when released.
    pub owner: Option<&'a str>,
    /// Whether the owner's Lease is live.
    pub owner_live: bool,
    /// The live member the run hashes to.
    pub assigned: Option<&'a str>,
    /// Finished and nothing changed since: needs no owner to act.
    pub idle: bool,
    /// We are shutting down: hand runs over, take none.
    pub draining: bool,
}

/// What to do with one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Not ours (or nothing to do): do nothing.
    Leave,
    /// Ours, but it should move: clear the owner so the assigned member claims it.
    Release,
    /// Not owned by anyone live and assigned to us: claim it.
    Claim(OwnerChangeReason),
    /// Ours and staying ours: run it.
    Act,
}

/// Decides what to do with one run. Runs never move by two controllers
/// acting at once: a live owner keeps its run until it releases it, and only
/// the assigned member claims a run whose owner is gone or released it.
pub fn decide(f: Facts<'_>) -> Decision {
    let mine = |who: Option<&str>| who == Some(f.me);
    match f.owner {
        _ if f.idle => Decision::Leave,
        Some(owner) if owner == f.me => match f.assigned {
            _ if f.draining => Decision::Release,
            Some(a) if a == f.me => Decision::Act,
            Some(_) => Decision::Release,
            // We are not a member ourselves: stand still.
            None => Decision::Leave,
        },
        _ if f.draining || !mine(f.assigned) => Decision::Leave,
        None => Decision::Claim(OwnerChangeReason::Created),
        Some("") => Decision::Claim(OwnerChangeReason::Handoff),
        Some(_) if f.owner_live => Decision::Leave,
        Some(_) => Decision::Claim(OwnerChangeReason::Failover),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    fn keys(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("0b7c{i:04}-uid-{}", i * 7919)).collect()
    }

    #[test]
    fn weight_is_pinned() {
        // Pinned values: a change here reshuffles every run in a mixed-version cluster.
        assert_eq!(fnv1a(b"".iter()), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a".iter()), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(splitmix64(0), 0xe220_a839_7b1d_cdaf);
        assert_eq!(weight("c-0", "uid"), 0xa938_e37f_56b5_0c45);
        assert_eq!(weight("a", "b"), weight("a", "b"));
        assert_ne!(weight("a", "b"), weight("b", "a"));
        assert_ne!(weight("ab", "c"), weight("a", "bc"), "the separator keeps boundaries apart");
    }

    #[test]
    fn rendezvous_is_deterministic_and_order_free() {
        let m = names(&["c-0", "c-1", "c-2"]);
        let mut rev = m.clone();
        rev.reverse();
        for k in keys(200) {
            let a = rendezvous(&k, &m);
            assert_eq!(a, rendezvous(&k, &m));
            assert_eq!(a, rendezvous(&k, &rev));
            assert!(a.is_some());
        }
        assert_eq!(rendezvous("k", &[]), None);
        assert_eq!(rendezvous("k", &names(&["only"])), Some("only"));
    }

    #[test]
    fn ties_go_to_the_smaller_name() {
        let m = names(&["b", "a", "b", "a"]);
        // Equal names have equal weights; whichever wins, it is stable.
        for k in keys(50) {
            assert_eq!(rendezvous(&k, &m), rendezvous(&k, &names(&["a", "b"])));
        }
        let dup = names(&["x", "x"]);
        assert_eq!(rendezvous("k", &dup), Some("x"));
    }

    #[test]
    fn removing_a_member_moves_only_its_keys() {
        let all = names(&["c-0", "c-1", "c-2", "c-3"]);
        let without = names(&["c-0", "c-2", "c-3"]);
        for k in keys(1000) {
            let before = rendezvous(&k, &all).unwrap();
            let after = rendezvous(&k, &without).unwrap();
            if before != "c-1" {
                assert_eq!(before, after, "key {k} moved although its member stayed");
            }
        }
    }

    #[test]
    fn adding_a_member_moves_keys_only_to_it() {
        let old = names(&["c-0", "c-1", "c-2"]);
        let new = names(&["c-0", "c-1", "c-2", "c-3"]);
        let mut moved = 0;
        for k in keys(1000) {
            let before = rendezvous(&k, &old).unwrap();
            let after = rendezvous(&k, &new).unwrap();
            if before != after {
                assert_eq!(after, "c-3");
                moved += 1;
            }
        }
        assert!((150..350).contains(&moved), "about a quarter should move, moved {moved}");
    }

    #[test]
    fn distribution_is_roughly_even() {
        let m = names(&["baton-controller-0", "baton-controller-1", "baton-controller-2"]);
        let mut counts = HashMap::new();
        for k in keys(3000) {
            *counts.entry(rendezvous(&k, &m).unwrap()).or_insert(0) += 1;
        }
        for member in &m {
            let c = counts.get(member.as_str()).copied().unwrap_or(0);
            assert!((750..=1260).contains(&c), "{member} got {c} of 3000");
        }
    }

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn first_sight_counts_as_a_change() {
        let t0 = Instant::now();
        let mut c = PeerClock::new();
        c.observe("a", "1", 15 * S, t0);
        assert!(c.is_live("a", t0));
        assert!(c.is_live("a", t0 + 14 * S));
        assert!(!c.is_live("b", t0));
    }

    #[test]
    fn same_version_does_not_extend() {
        let t0 = Instant::now();
        let mut c = PeerClock::new();
        c.observe("a", "1", 10 * S, t0);
        c.observe("a", "1", 10 * S, t0 + 9 * S);
        assert!(c.is_live("a", t0 + 9 * S));
        assert!(!c.is_live("a", t0 + 10 * S));
        assert!(c.live(t0 + 11 * S).is_empty());
    }

    #[test]
    fn silence_we_could_not_hear_is_not_death() {
        let t0 = Instant::now();
        let mut c = PeerClock::new();
        c.observe("a", "1", 10 * S, t0);
        // We were frozen from t0 to t0 + 30 s: "a" looks expired...
        assert!(!c.is_live("a", t0 + 30 * S));
        // ...until we restart the clocks on coming back.
        c.restart_all(t0 + 30 * S);
        assert!(c.is_live("a", t0 + 39 * S));
        assert!(!c.is_live("a", t0 + 40 * S), "a peer that stays silent still expires");
    }

    #[test]
    fn new_version_extends() {
        let t0 = Instant::now();
        let mut c = PeerClock::new();
        c.observe("a", "1", 10 * S, t0);
        c.observe("a", "2", 10 * S, t0 + 9 * S);
        assert!(c.is_live("a", t0 + 18 * S));
        assert!(!c.is_live("a", t0 + 19 * S));
        // A version seen once may come back (etcd restore): still a change.
        c.observe("a", "1", 10 * S, t0 + 19 * S);
        assert!(c.is_live("a", t0 + 20 * S));
    }

    #[test]
    fn expires_exactly_at_seen_plus_duration() {
        let t0 = Instant::now();
        let mut c = PeerClock::new();
        c.observe("a", "1", 15 * S, t0);
        let end = t0 + 15 * S;
        assert!(c.is_live("a", end - Duration::from_nanos(1)));
        assert!(!c.is_live("a", end));
        assert_eq!(c.next_expiry(t0), Some(end));
        assert_eq!(c.next_expiry(end), None);
    }

    #[test]
    fn deleted_is_dead_at_once() {
        let t0 = Instant::now();
        let mut c = PeerClock::new();
        c.observe("a", "1", 15 * S, t0);
        c.observe("b", "1", 15 * S, t0);
        c.remove("a");
        assert!(!c.is_live("a", t0));
        assert_eq!(c.live(t0), vec!["b".to_string()]);
        // A new Lease with the same name starts a new life.
        c.observe("a", "7", 15 * S, t0 + S);
        assert!(c.is_live("a", t0 + S));
    }

    #[test]
    fn retain_forgets_unlisted() {
        let t0 = Instant::now();
        let mut c = PeerClock::new();
        for n in ["a", "b", "c"] {
            c.observe(n, "1", 15 * S, t0);
        }
        c.retain(|n| n != "b");
        assert_eq!(c.live(t0), names(&["a", "c"]));
    }

    #[test]
    fn durations_are_per_peer() {
        let t0 = Instant::now();
        let mut c = PeerClock::new();
        c.observe("long", "1", 30 * S, t0);
        c.observe("short", "1", 5 * S, t0);
        c.observe("mid", "1", 10 * S, t0 + S);
        assert_eq!(c.live(t0 + S), names(&["long", "mid", "short"]));
        assert_eq!(c.next_expiry(t0 + S), Some(t0 + 5 * S));
        assert_eq!(c.live(t0 + 5 * S), names(&["long", "mid"]));
        assert_eq!(c.next_expiry(t0 + 5 * S), Some(t0 + 11 * S));
        assert_eq!(c.live(t0 + 11 * S), names(&["long"]));
        assert_eq!(c.next_expiry(t0 + 11 * S), Some(t0 + 30 * S));
        // A new duration arrives with the peer's next renewal.
        c.observe("long", "2", 5 * S, t0 + 12 * S);
        assert_eq!(c.next_expiry(t0 + 12 * S), Some(t0 + 17 * S));
    }

    #[test]
    fn renew_interval_is_at_most_a_third_of_the_lease() {
        assert!(check_timing(15 * S, 2 * S).is_ok());
        assert!(check_timing(15 * S, 5 * S).is_ok());
        assert!(check_timing(4 * S, Duration::from_millis(500)).is_ok());
        let err = check_timing(3 * S, 2 * S).unwrap_err();
        assert!(
            err.starts_with("--renew-interval 2s must be more than 0 and at most a third of --lease-duration 3s (here at most 1s)"),
            "{err}"
        );
        assert!(check_timing(15 * S, 10 * S).is_err());
        assert!(check_timing(15 * S, Duration::ZERO).is_err());
    }

    #[test]
    fn a_quiet_or_broken_watch_is_stale() {
        let t0 = Instant::now();
        assert!(!watch_stale(Some(t0), false, S, t0 + 2 * S));
        assert!(watch_stale(Some(t0), false, S, t0 + 3 * S), "silent for more than two intervals");
        assert!(watch_stale(Some(t0 + 2 * S), true, S, t0 + 2 * S), "reported an error");
        assert!(watch_stale(None, false, S, t0), "never heard");
    }

    #[test]
    fn renew_deadline_is_two_thirds() {
        assert_eq!(renew_deadline(15 * S), 10 * S);
        assert_eq!(renew_deadline(Duration::from_millis(3000)), Duration::from_millis(2000));
    }

    #[test]
    fn renew_clock_times_from_attempt_start() {
        let t0 = Instant::now();
        let mut r = RenewClock::new(10 * S);
        assert!(!r.valid(t0), "never renewed: not valid");
        let a = r.attempt_started(t0);
        assert!(!r.valid(t0), "an attempt alone does not make us valid");
        // The answer comes 4s later; validity still counts from t0.
        r.succeeded(a);
        assert!(r.valid(t0 + 4 * S));
        assert!(r.valid(t0 + 10 * S - Duration::from_nanos(1)));
        assert!(!r.valid(t0 + 10 * S));
        assert_eq!(r.valid_until(), Some(t0 + 10 * S));
    }

    #[test]
    fn renew_clock_failed_attempt_does_not_extend() {
        let t0 = Instant::now();
        let mut r = RenewClock::new(10 * S);
        r.succeeded(r.attempt_started(t0));
        let _failed = r.attempt_started(t0 + 2 * S);
        assert!(!r.valid(t0 + 10 * S));
        r.succeeded(r.attempt_started(t0 + 11 * S));
        assert!(r.valid(t0 + 20 * S), "a later success makes us valid again");
    }

    #[test]
    fn renew_clock_late_answer_does_not_go_back() {
        let t0 = Instant::now();
        let mut r = RenewClock::new(10 * S);
        let old = r.attempt_started(t0);
        let new = r.attempt_started(t0 + 3 * S);
        r.succeeded(new);
        r.succeeded(old);
        assert_eq!(r.valid_until(), Some(t0 + 13 * S));
        r.invalidate();
        assert!(!r.valid(t0 + 4 * S));
    }

    fn facts<'a>(owner: Option<&'a str>, owner_live: bool, assigned: Option<&'a str>) -> Facts<'a> {
        Facts { me: "me", owner, owner_live, assigned, idle: false, draining: false }
    }

    #[test]
    fn decide_claims_only_what_is_assigned_and_free() {
        use Decision::*;
        use OwnerChangeReason::*;
        assert_eq!(decide(facts(None, false, Some("me"))), Claim(Created));
        assert_eq!(decide(facts(None, false, Some("other"))), Leave);
        assert_eq!(decide(facts(Some(""), false, Some("me"))), Claim(Handoff));
        assert_eq!(decide(facts(Some("dead"), false, Some("me"))), Claim(Failover));
        assert_eq!(decide(facts(Some("dead"), false, Some("other"))), Leave);
        // A live owner keeps the run until it hands it off.
        assert_eq!(decide(facts(Some("other"), true, Some("me"))), Leave);
    }

    #[test]
    fn decide_owner_acts_or_hands_off() {
        use Decision::*;
        assert_eq!(decide(facts(Some("me"), true, Some("me"))), Act);
        assert_eq!(decide(facts(Some("me"), true, Some("new"))), Release);
        assert_eq!(decide(facts(Some("me"), true, None)), Leave);
    }

    #[test]
    fn decide_draining_and_idle() {
        use Decision::*;
        let drain = |f: Facts<'static>| Facts { draining: true, ..f };
        assert_eq!(decide(drain(facts(Some("me"), true, Some("me")))), Release);
        assert_eq!(decide(drain(facts(None, false, Some("me")))), Leave);
        assert_eq!(decide(drain(facts(Some("dead"), false, Some("me")))), Leave);
        let idle = |f: Facts<'static>| Facts { idle: true, ..f };
        assert_eq!(decide(idle(facts(Some("me"), true, Some("me")))), Leave);
        assert_eq!(decide(idle(facts(Some("dead"), false, Some("me")))), Leave);
        assert_eq!(decide(idle(drain(facts(Some("me"), true, Some("me"))))), Leave);
    }
}
