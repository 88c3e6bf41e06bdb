//! Cron schedules: parsing a `Workflow.spec.schedule` the same way for
//! validation and for starting runs.

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use jiff::tz::TimeZone;

use crate::api::Schedule;

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

#[cfg(test)]
mod tests {
    use super::*;

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
