//! Maintenance windows (DESIGN §9): whether a target may be cut over now and, if not, when
//! the next of its windows opens. Pure: the caller gives the clock, so tests inject one.
//!
//! A target carrying every tag of a window (names case-insensitive, values exact) is covered
//! by it; a target no window covers may be cut over at any time. Windows are UTC hours
//! `[startHour, endHour)` on the days they open; `endHour <= startHour` runs past midnight.

use serde_json::{Map, Value};
use time::{Duration, OffsetDateTime, Time, Weekday};

use crate::policy::{Day, Window};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    Now,
    /// Outside every window that covers it: wait until this opening.
    Until(OffsetDateTime),
}

pub(crate) fn admission(
    windows: &[Window],
    tags: Option<&Map<String, Value>>,
    now: OffsetDateTime,
) -> Admission {
    let mine: Vec<&Window> = windows.iter().filter(|w| covers(w, tags)).collect();
    if mine.is_empty() || mine.iter().any(|w| open_at(w, now)) {
        return Admission::Now;
    }
    match mine.iter().filter_map(|w| next_opening(w, now)).min() {
        Some(t) => Admission::Until(t),
        // A window with no allowed hour (startHour = endHour = 24 cannot be written; kept
        // for safety): never open, so never cut over — wait a week and look again.
        None => Admission::Until(now + Duration::days(7)),
    }
}

fn covers(w: &Window, tags: Option<&Map<String, Value>>) -> bool {
    w.tags.iter().all(|(k, v)| {
        tags.into_iter()
            .flatten()
            .any(|(tk, tv)| tk.eq_ignore_ascii_case(k) && tv.as_str() == Some(v.as_str()))
    })
}

fn day_of(d: Weekday) -> Day {
    match d {
        Weekday::Monday => Day::Mon,
        Weekday::Tuesday => Day::Tue,
        Weekday::Wednesday => Day::Wed,
        Weekday::Thursday => Day::Thu,
        Weekday::Friday => Day::Fri,
        Weekday::Saturday => Day::Sat,
        Weekday::Sunday => Day::Sun,
    }
}

fn opens_on(w: &Window, d: Weekday) -> bool {
    w.days.is_empty() || w.days.contains(&day_of(d))
}

fn open_at(w: &Window, t: OffsetDateTime) -> bool {
    let t = t.to_offset(time::UtcOffset::UTC);
    let hour = t.hour();
    let (start, end) = (w.start_hour, w.end_hour);
    if start < end {
        opens_on(w, t.weekday()) && (start..end).contains(&hour)
    } else {
        // Past midnight: the evening of an opening day, or the morning after one.
        (opens_on(w, t.weekday()) && hour >= start)
            || (opens_on(w, t.weekday().previous()) && hour < end)
    }
}

/// The first opening of `w` after `now` (within the next eight days).
fn next_opening(w: &Window, now: OffsetDateTime) -> Option<OffsetDateTime> {
    let now = now.to_offset(time::UtcOffset::UTC);
    let at = Time::from_hms(w.start_hour, 0, 0).ok()?;
    (0..=8)
        .map(|d| (now.date() + Duration::days(d)).with_time(at).assume_utc())
        .find(|t| *t > now && opens_on(w, t.weekday()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use time::macros::datetime;

    fn window(days: &[Day], start: u8, end: u8, tags: &[(&str, &str)]) -> Window {
        Window {
            days: days.to_vec(),
            start_hour: start,
            end_hour: end,
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn tags(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn a_weekend_night_window_holds_a_tuesday_night_until_saturday() {
        // The case: Saturday/Sunday 22:00–04:00, tried on a Tuesday at 23:40 UTC.
        let w = [window(&[Day::Sat, Day::Sun], 22, 4, &[])];
        let tuesday = datetime!(2026-12-01 23:40 UTC);
        assert_eq!(
            admission(&w, None, tuesday),
            Admission::Until(datetime!(2026-12-05 22:00 UTC))
        );
        assert_eq!(
            admission(&w, None, datetime!(2026-12-05 22:00 UTC)),
            Admission::Now
        );
        // Monday 03:59 is still Sunday night's window; 04:00 is not.
        assert_eq!(
            admission(&w, None, datetime!(2026-12-07 03:59 UTC)),
            Admission::Now
        );
        assert_eq!(
            admission(&w, None, datetime!(2026-12-07 04:00 UTC)),
            Admission::Until(datetime!(2026-12-12 22:00 UTC))
        );
    }

    #[test]
    fn windows_cover_only_the_targets_with_their_tags() {
        let w = [window(&[], 1, 2, &[("env", "prod")])];
        let noon = datetime!(2026-12-02 12:00 UTC);
        let prod = tags(json!({"Env": "prod"}));
        let dev = tags(json!({"env": "dev"}));
        assert_eq!(
            admission(&w, Some(&prod), noon),
            Admission::Until(datetime!(2026-12-03 01:00 UTC))
        );
        assert_eq!(admission(&w, Some(&dev), noon), Admission::Now);
        assert_eq!(admission(&w, None, noon), Admission::Now);
        assert_eq!(admission(&[], Some(&prod), noon), Admission::Now);
    }

    #[test]
    fn the_earliest_of_several_windows_opens_first() {
        let w = [
            window(&[Day::Fri], 20, 23, &[]),
            window(&[Day::Thu], 9, 10, &[]),
        ];
        let wednesday = datetime!(2026-12-02 12:00 UTC);
        assert_eq!(
            admission(&w, None, wednesday),
            Admission::Until(datetime!(2026-12-03 09:00 UTC))
        );
        assert_eq!(
            admission(&w, None, datetime!(2026-12-04 20:30 UTC)),
            Admission::Now
        );
    }
}
