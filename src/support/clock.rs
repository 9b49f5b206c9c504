//! Time as the database stores it and the API writes it.

use chrono::{DateTime, SecondsFormat, Utc};

/// The current time at the database's precision (microseconds).
pub fn now() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now)
}

/// RFC 3339 with microseconds and `Z`, as every answer and event writes times.
pub fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}
