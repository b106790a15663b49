//! Timestamps on the wire: RFC 3339 in UTC with millisecond precision (`2026-11-28T17:53:16.123Z`).
//!
//! One fixed width means the strings sort as the instants do, which the stores rely on. Parsing
//! accepts any RFC 3339 offset and precision, converts to UTC, keeps milliseconds (so that what
//! is parsed is exactly what is written back: a process's start time read from a report must
//! equal the one read from the store), and refuses instants outside the years 1970 to 9999:
//! nothing a host reports is older, and a peer must not be able to send a time that cannot be
//! written back (or that panics when converted).

use serde::{Deserialize, Deserializer, Serializer};
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{OffsetDateTime, UtcOffset};

const FORMAT: &[time::format_description::BorrowedFormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");

/// Formats an instant the way the wire and the stores write it. Total: an instant that cannot be
/// written in the fixed form (only constructed ones, never parsed ones) falls back to its Unix time.
pub fn format(t: OffsetDateTime) -> String {
    t.checked_to_offset(UtcOffset::UTC)
        .and_then(|u| u.format(FORMAT).ok())
        .unwrap_or_else(|| t.unix_timestamp().to_string())
}

/// Why a timestamp was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimestampError {
    #[error("{0}")]
    Syntax(#[from] time::error::Parse),
    #[error("outside the years 1970 to 9999")]
    OutOfRange,
}

/// Parses any RFC 3339 timestamp into UTC, to the millisecond (finer digits are dropped).
pub fn parse(s: &str) -> Result<OffsetDateTime, TimestampError> {
    let t = OffsetDateTime::parse(s, &Rfc3339)?;
    let u = t
        .checked_to_offset(UtcOffset::UTC)
        .filter(|u| (1970..=9999).contains(&u.year()))
        .ok_or(TimestampError::OutOfRange)?;
    Ok(to_millisecond(u))
}

/// The same instant to the millisecond, its finer digits zero: the precision times are written
/// and stored with.
pub fn to_millisecond(t: OffsetDateTime) -> OffsetDateTime {
    // Always in range: the same millisecond.
    t.replace_millisecond(t.millisecond()).unwrap_or(t)
}

/// `#[serde(with = "timestamp")]` for an `OffsetDateTime` field.
pub fn serialize<S: Serializer>(t: &OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format(*t))
}

/// `#[serde(with = "timestamp")]` for an `OffsetDateTime` field.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<OffsetDateTime, D::Error> {
    let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
    parse(&s).map_err(|e| serde::de::Error::custom(format!("invalid RFC 3339 timestamp {s:?}: {e}")))
}

/// `#[serde(with = "timestamp::option")]` for an `Option<OffsetDateTime>` field.
pub mod option {
    use super::*;

    pub fn serialize<S: Serializer>(t: &Option<OffsetDateTime>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_some(&format(*t)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<OffsetDateTime>, D::Error> {
        let s = <Option<std::borrow::Cow<'de, str>>>::deserialize(d)?;
        s.map(|s| {
            parse(&s).map_err(|e| serde::de::Error::custom(format!("invalid RFC 3339 timestamp {s:?}: {e}")))
        })
        .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn parsing_keeps_what_is_written_back() {
        // Found by the report fuzz target: finer digits parsed, dropped when written, so a
        // report did not decode to what it encodes.
        let fine = parse("2026-12-04T01:15:51.416666666Z").unwrap();
        assert_eq!(fine, parse("2026-12-04T01:15:51.416Z").unwrap());
        assert_eq!(parse(&format(fine)).unwrap(), fine);
        assert_eq!(format(parse("2026-12-04T03:15:51.9999+02:00").unwrap()), "2026-12-04T01:15:51.999Z");
    }

    #[test]
    fn fixed_width_utc_with_millis() {
        let t = datetime!(2026-11-28 17:53:16.123456 +02:00);
        assert_eq!(format(t), "2026-11-28T15:53:16.123Z");
        assert_eq!(format(datetime!(2026-01-02 03:04:05 UTC)), "2026-01-02T03:04:05.000Z");
    }

    #[test]
    fn parses_offsets_into_utc() {
        let t = parse("2026-11-28T17:53:16+01:00").unwrap();
        assert_eq!(t.offset(), UtcOffset::UTC);
        assert_eq!(format(t), "2026-11-28T16:53:16.000Z");
        assert!(parse("yesterday").is_err());
    }

    #[test]
    fn instants_that_cannot_be_written_back_are_refused() {
        // Converting these to UTC leaves the representable range: once a panic, now a refusal.
        assert_eq!(parse("9999-12-31T23:59:59-05:00"), Err(TimestampError::OutOfRange));
        assert_eq!(parse("0000-01-01T00:00:00+01:00"), Err(TimestampError::OutOfRange));
        assert_eq!(parse("1969-12-31T23:59:59Z"), Err(TimestampError::OutOfRange));
        assert!(parse("9999-12-31T23:59:59Z").is_ok());
        let t = parse("1970-01-01T00:00:00Z").unwrap();
        assert_eq!(parse(&format(t)).unwrap(), t);
    }
}
