//! Change-feed retention: change records older than the configured retention are purged
//! periodically; a feed position below the purged ones is answered with 410 `cursor_expired`.

use std::time::Duration;

use clientele_domain::Timestamp;

use crate::state::AppState;

/// The default retention of change records.
pub const DEFAULT_CHANGE_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

/// Purges change records older than `retention`, every `every`, forever.
pub async fn purge_old_changes(state: AppState, retention: Duration, every: Duration) {
    let retention = i64::try_from(retention.as_micros()).unwrap_or(i64::MAX);
    let mut ticks = tokio::time::interval(every);
    loop {
        ticks.tick().await;
        let cutoff = Timestamp::from_micros(Timestamp::now().as_micros().saturating_sub(retention));
        match state.store().purge_changes(cutoff).await {
            Ok(0) => {}
            Ok(purged) => tracing::info!(purged, "purged change records past retention"),
            Err(error) => tracing::warn!(error = %error, "purging change records failed"),
        }
    }
}

/// Parses a duration such as `30d`, `12h`, `90m`, `45s` or `3600` (seconds); at least 1 s.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 30d, 12h, 90m or 45s"))?;
    let unit_seconds = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 24 * 3600,
        _ => return Err(format!("unknown unit {unit:?}: use s, m, h or d")),
    };
    match number.checked_mul(unit_seconds) {
        Some(0) => Err("the duration must be at least 1s".to_owned()),
        Some(seconds) => Ok(Duration::from_secs(seconds)),
        None => Err(format!("{text:?} is too long")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durations_with_units() {
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(2_592_000)));
        assert_eq!(parse_duration("12h"), Ok(Duration::from_secs(43_200)));
        assert_eq!(parse_duration("90m"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse_duration("45s"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_duration("3600"), Ok(Duration::from_secs(3_600)));
        for bad in [
            "",
            "0",
            "0d",
            "d",
            "5w",
            "-3h",
            "1.5h",
            "99999999999999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
