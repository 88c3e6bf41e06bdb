//! Cron schedules: parsing a `Workflow.spec.schedule` the same way for
//! validation and for starting runs.

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use jiff::Timestamp;
use jiff::tz::TimeZone;

use crate::api::{ConcurrencyPolicy, Schedule};

/// Time zone used when a schedule names none.
pub const DEFAULT_TIME_ZONE: &str = "Etc/UTC";

/// A schedule ready to compute ticks.
#[derive(Debug, Clone)]
pub struct Parsed {
    pub cron: Cron,
    pub tz: TimeZone,
}

/// Parses the cron expression (five fields, an optional leading seconds
/// field, or a macro such as `@daily`) and the time zone.
pub fn parse(schedule: &Schedule) -> Result<Parsed, String> {
    let parser = CronParser::builder().seconds(Seconds::Optional).year(Year::Disallowed).build();
    let cron = parser.parse(&schedule.cron).map_err(|e| format!("schedule.cron {:?} does not parse: {e}", schedule.cron))?;
    let zone = schedule.time_zone.as_deref().unwrap_or(DEFAULT_TIME_ZONE);
    let tz = TimeZone::get(zone).map_err(|_| format!("schedule.timeZone {zone:?} is not an IANA time zone"))?;
    Ok(Parsed { cron, tz })
}

/// Most missed ticks counted after a long downtime; beyond it the count
/// says "at least".
const MAX_COUNTED: u64 = 1000;

/// The ticks that came due since the last one handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    /// The most recent tick in `(last, now]`: the one to start, as CronJob
    /// starts only the most recent of the ticks it missed.
    pub latest: Option<Timestamp>,
    /// Ticks in `(last, latest)`: missed and not started.
    pub skipped: u64,
}

impl Parsed {
    /// Ticks due after `last` (exclusive) up to `now` (inclusive).
    pub fn due(&self, last: Timestamp, now: Timestamp) -> Due {
        let zoned_now = now.to_zoned(self.tz.clone());
        let latest = self.cron.find_previous_occurrence(&zoned_now, true).ok().map(|z| z.timestamp()).filter(|t| *t > last);
        let skipped = latest.map_or(0, |latest| {
            self.cron.iter_after(last.to_zoned(self.tz.clone())).take_while(|z| z.timestamp() < latest).take(MAX_COUNTED as usize).count()
                as u64
        });
        Due { latest, skipped }
    }

    /// The first tick after `now`.
    pub fn next_after(&self, now: Timestamp) -> Option<Timestamp> {
        self.cron.find_next_occurrence(&now.to_zoned(self.tz.clone()), false).ok().map(|z| z.timestamp())
    }
}

/// What to do about the ticks that came due.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TickPlan {
    /// Start a run for this tick.
    pub start: Option<Timestamp>,
    /// Stop the active runs first (`Replace`).
    pub stop_active: bool,
    /// This tick was skipped because a run is active (`Forbid`).
    pub forbidden: Option<Timestamp>,
    /// Ticks not started: earlier ones of a downtime, and the latest when it
    /// is past `startingDeadlineSeconds`.
    pub missed: u64,
    /// The tick that counts as handled (becomes `lastScheduleTime`).
    pub handled: Option<Timestamp>,
}

/// Applies the starting deadline and the concurrency policy to the due
/// ticks, as CronJob does. Pure.
pub fn plan_tick(due: Due, now: Timestamp, schedule: &Schedule, active_runs: usize) -> TickPlan {
    let Some(latest) = due.latest else { return TickPlan::default() };
    let late = schedule.starting_deadline_seconds.is_some_and(|d| now.as_second() - latest.as_second() > d);
    let mut plan = TickPlan { missed: due.skipped, handled: Some(latest), ..Default::default() };
    if late {
        plan.missed += 1;
    } else if active_runs > 0 && schedule.concurrency_policy == ConcurrencyPolicy::Forbid {
        plan.forbidden = Some(latest);
    } else {
        plan.stop_active = active_runs > 0 && schedule.concurrency_policy == ConcurrencyPolicy::Replace;
        plan.start = Some(latest);
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn due_gives_the_latest_tick_and_counts_the_rest() {
        let p = parse(&schedule("*/10 * * * *", None)).unwrap();
        let due = p.due(ts("2026-01-01T00:00:00Z"), ts("2026-01-01T00:35:00Z"));
        assert_eq!(due, Due { latest: Some(ts("2026-01-01T00:30:00Z")), skipped: 2 });
        let none = p.due(ts("2026-01-01T00:30:00Z"), ts("2026-01-01T00:39:59Z"));
        assert_eq!(none, Due { latest: None, skipped: 0 }, "the handled tick is not due again");
        assert_eq!(p.next_after(ts("2026-01-01T00:30:00Z")), Some(ts("2026-01-01T00:40:00Z")));
    }

    #[test]
    fn time_zone_moves_the_ticks() {
        let p = parse(&schedule("0 2 * * *", Some("Europe/Berlin"))).unwrap();
        assert_eq!(p.next_after(ts("2026-07-01T00:00:00Z")), Some(ts("2026-07-02T00:00:00Z")), "02:00 CEST is 00:00 UTC");
    }

    #[test]
    fn tick_plan_follows_deadline_and_policy() {
        let now = ts("2026-01-01T00:35:00Z");
        let due = Due { latest: Some(ts("2026-01-01T00:30:00Z")), skipped: 2 };
        let mut s = schedule("*/10 * * * *", None);
        let start = plan_tick(due, now, &s, 0);
        assert_eq!((start.start, start.missed, start.handled), (due.latest, 2, due.latest));
        s.starting_deadline_seconds = Some(60);
        let late = plan_tick(due, now, &s, 0);
        assert_eq!((late.start, late.missed), (None, 3), "past the deadline: reported, not started");
        s.starting_deadline_seconds = Some(600);
        s.concurrency_policy = ConcurrencyPolicy::Forbid;
        let forbid = plan_tick(due, now, &s, 1);
        assert_eq!((forbid.start, forbid.forbidden), (None, due.latest));
        s.concurrency_policy = ConcurrencyPolicy::Replace;
        let replace = plan_tick(due, now, &s, 1);
        assert!(replace.stop_active && replace.start == due.latest);
        assert_eq!(plan_tick(Due { latest: None, skipped: 0 }, now, &s, 1), TickPlan::default());
    }

    #[test]
    fn seconds_field_gives_fast_ticks() {
        let p = parse(&schedule("*/5 * * * * *", None)).unwrap();
        assert_eq!(p.next_after(ts("2026-01-01T00:00:01Z")), Some(ts("2026-01-01T00:00:05Z")));
    }

    fn schedule(cron: &str, tz: Option<&str>) -> Schedule {
        Schedule { cron: cron.into(), time_zone: tz.map(Into::into), ..Default::default() }
    }

    #[test]
    fn accepts_standard_forms() {
        for cron in ["0 2 * * *", "*/5 * * * *", "@hourly", "*/10 * * * * *", "0 9 * * MON-FRI"] {
            parse(&schedule(cron, Some("Europe/Berlin"))).unwrap_or_else(|e| panic!("{cron}: {e}"));
        }
    }

    #[test]
    fn rejects_bad_cron_and_zone() {
        assert!(parse(&schedule("61 * * * *", None)).unwrap_err().contains("schedule.cron"));
        assert!(parse(&schedule("every day", None)).is_err());
        assert!(parse(&schedule("0 2 * * *", Some("Mars/Olympus"))).unwrap_err().contains("timeZone"));
    }
}
