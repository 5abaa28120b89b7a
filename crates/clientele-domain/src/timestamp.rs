//! Timestamps as microseconds since the Unix epoch: one integer column in both databases, exact
//! ordering, and RFC 3339 (UTC, microsecond precision) on the wire.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Timestamp(i64);

impl Timestamp {
    pub fn now() -> Self {
        let now = OffsetDateTime::now_utc();
        Self((now.unix_timestamp_nanos() / 1_000) as i64)
    }

    pub fn from_micros(micros: i64) -> Self {
        Self(micros)
    }

    pub fn as_micros(self) -> i64 {
        self.0
    }

    /// The first microsecond written back as a four-digit year: 0000-01-01T00:00:00Z.
    const MIN_MICROS: i64 = -62_167_219_200_000_000;
    /// The last one: 9999-12-31T23:59:59.999999Z.
    const MAX_MICROS: i64 = 253_402_300_799_999_999;

    /// Parses an RFC 3339 timestamp with any offset. A time whose UTC year is outside
    /// 0000–9999 is refused (`None`): RFC 3339 allows it with an offset (`0000-01-01T00:00:00+01:00`
    /// is year −1 in UTC), but it cannot be written back as RFC 3339 UTC.
    pub fn parse_rfc3339(text: &str) -> Option<Self> {
        let parsed = OffsetDateTime::parse(text, &Rfc3339).ok()?;
        Self::in_range(parsed.unix_timestamp_nanos() / 1_000)
    }

    /// Parses an RFC 3339 timestamp as a bound of a time filter: the first microsecond at or
    /// after it, so that `>=` and `<` against stored microseconds keep their meaning for a
    /// bound given in finer units (`…14.885298001Z` excludes a time of `…14.885298Z` from
    /// "at or after", and includes it in "before").
    pub fn parse_rfc3339_bound(text: &str) -> Option<Self> {
        let nanos = OffsetDateTime::parse(text, &Rfc3339)
            .ok()?
            .unix_timestamp_nanos();
        let micros = nanos.div_euclid(1_000) + i128::from(nanos.rem_euclid(1_000) != 0);
        Self::in_range(micros)
    }

    fn in_range(micros: i128) -> Option<Self> {
        let micros = i64::try_from(micros).ok()?;
        (Self::MIN_MICROS..=Self::MAX_MICROS)
            .contains(&micros)
            .then_some(Self(micros))
    }

    fn to_datetime(self) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0) * 1_000)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }
}

impl fmt::Display for Timestamp {
    /// `2026-11-23T18:56:00.123456Z`: fixed width, so text order equals time order.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dt = self.to_datetime();
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
            dt.year(),
            u8::from(dt.month()),
            dt.day(),
            dt.hour(),
            dt.minute(),
            dt.second(),
            dt.microsecond()
        )
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::parse_rfc3339(&s).ok_or_else(|| serde::de::Error::custom("not an RFC 3339 timestamp"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filter_bound_rounds_up_to_the_next_microsecond() {
        let exact = Timestamp::parse_rfc3339("2026-12-07T10:00:14.885298Z").expect("parses");
        let finer = "2026-12-07T10:00:14.885298001Z";
        assert_eq!(
            Timestamp::parse_rfc3339_bound(finer),
            Some(Timestamp(exact.0 + 1))
        );
        assert_eq!(
            Timestamp::parse_rfc3339_bound("2026-12-07T10:00:14.885298Z"),
            Some(exact)
        );
        let before_epoch = Timestamp::parse_rfc3339_bound("1969-12-31T23:59:59.9999995Z");
        assert_eq!(before_epoch, Some(Timestamp(0)));
    }

    #[test]
    fn formats_utc_with_microseconds_and_parses_back() {
        let ts = Timestamp::from_micros(1_795_000_000_123_456);
        let text = ts.to_string();
        assert_eq!(text, "2026-11-18T11:06:40.123456Z");
        assert_eq!(Timestamp::parse_rfc3339(&text), Some(ts));
    }

    #[test]
    fn times_outside_four_digit_utc_years_are_refused() {
        // Found in a review: year -1 in UTC was stored, and every read of it failed.
        for text in ["0000-01-01T00:00:00+01:00", "9999-12-31T23:30:00-01:00"] {
            assert_eq!(Timestamp::parse_rfc3339(text), None, "{text}");
            assert_eq!(Timestamp::parse_rfc3339_bound(text), None, "{text}");
        }
        for text in ["0000-01-01T00:00:00Z", "9999-12-31T23:59:59.999999Z"] {
            let parsed = Timestamp::parse_rfc3339(text).expect(text);
            assert_eq!(parsed.to_string(), text.replace("00Z", "00.000000Z"));
            assert_eq!(Timestamp::parse_rfc3339(&parsed.to_string()), Some(parsed));
        }
    }

    #[test]
    fn parses_offsets_into_utc() {
        let a = Timestamp::parse_rfc3339("2026-01-01T02:00:00+02:00");
        let b = Timestamp::parse_rfc3339("2026-01-01T00:00:00Z");
        assert_eq!(a, b);
        assert_eq!(Timestamp::parse_rfc3339("yesterday"), None);
    }
}
