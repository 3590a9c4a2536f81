//! The transcription id and row, and their JSON rendering.

use std::fmt;

use serde::Serialize;
use time::PrimitiveDateTime;
use time::macros::format_description;

/// A valid transcription id: 1..=u64::MAX written as `[1-9][0-9]*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct TranscriptionId(u64);

impl TranscriptionId {
    /// Strict parse: no sign, no leading zero, no spaces, at most 20 digits, no overflow.
    pub(crate) fn parse(raw: &str) -> Result<Self, &'static str> {
        let bytes = raw.as_bytes();
        if bytes.is_empty() || bytes.len() > 20 || !bytes.iter().all(u8::is_ascii_digit) {
            return Err("must be a decimal integer written as [1-9][0-9]*");
        }
        if bytes[0] == b'0' {
            return Err(
                "must be a decimal integer in 1..=18446744073709551615 without leading zeros",
            );
        }
        raw.parse::<u64>()
            .map(Self)
            .map_err(|_| "must be at most 18446744073709551615")
    }

    /// The numeric value.
    pub(crate) fn get(self) -> u64 {
        self.0
    }
}

/// Most ids one batch read may ask for (one SQL query answers them all).
pub(crate) const MAX_IDS_PER_BATCH: usize = 100;

/// Parses a batch's `42,43,7`: 1 to [`MAX_IDS_PER_BATCH`] distinct ids, each
/// as strict as a single id. The error names the offending item.
pub(crate) fn parse_id_list(raw: &str) -> Result<Vec<TranscriptionId>, String> {
    if raw.is_empty() {
        return Err("must list 1 to 100 ids separated by commas".to_owned());
    }
    let mut ids: Vec<TranscriptionId> = Vec::new();
    for (position, item) in raw.split(',').enumerate() {
        if position == MAX_IDS_PER_BATCH {
            return Err(format!("at most {MAX_IDS_PER_BATCH} ids per request"));
        }
        let id = TranscriptionId::parse(item)
            .map_err(|why| format!("id #{} ({:?}) {why}", position + 1, truncated(item)))?;
        if ids.contains(&id) {
            return Err(format!("id {id} is repeated; list each id once"));
        }
        ids.push(id);
    }
    Ok(ids)
}

/// At most 24 characters of a bad item, so a huge one does not flood the answer.
fn truncated(item: &str) -> &str {
    item.char_indices()
        .nth(24)
        .map_or(item, |(end, _)| &item[..end])
}

impl fmt::Display for TranscriptionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// One row of `transcriptions`, as the API returns it.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, Serialize, utoipa::ToSchema)]
pub(crate) struct Transcription {
    /// Primary key.
    #[schema(minimum = 1)]
    pub transcription_id: u64,
    /// The call this transcribes.
    pub call_id: String,
    /// BCP 47 language tag.
    pub language: String,
    /// `queued`, `in_progress`, `completed` or `failed`.
    #[schema(pattern = "^(queued|in_progress|completed|failed)$")]
    pub status: String,
    /// Audio length.
    pub duration_ms: Option<u32>,
    /// Recognition confidence, 0..1.
    pub confidence: Option<f32>,
    /// The text.
    pub content: Option<String>,
    /// RFC 3339 UTC with milliseconds.
    #[serde(serialize_with = "rfc3339_millis")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: PrimitiveDateTime,
    /// RFC 3339 UTC with milliseconds.
    #[serde(serialize_with = "rfc3339_millis")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: PrimitiveDateTime,
}

/// `2026-11-22T10:01:02.345Z`: the columns hold UTC, so the offset is always Z.
fn rfc3339_millis<S: serde::Serializer>(
    value: &PrimitiveDateTime,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let format =
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    let text = value.format(&format).map_err(serde::ser::Error::custom)?;
    serializer.serialize_str(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_lists_are_one_to_a_hundred_distinct_strict_ids() {
        let ids = parse_id_list("42,43,7").unwrap();
        assert_eq!(
            ids.iter().map(|id| id.get()).collect::<Vec<_>>(),
            [42, 43, 7]
        );
        let hundred = (1..=100)
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(parse_id_list(&hundred).unwrap().len(), 100);
        let too_many = format!("{hundred},101");
        assert!(
            parse_id_list(&too_many)
                .unwrap_err()
                .contains("at most 100")
        );
        assert!(
            parse_id_list("1,2,1")
                .unwrap_err()
                .contains("id 1 is repeated")
        );
        for bad in ["", ",", "1,", ",1", "1,,2", "1, 2", "1,02", "1,-2", "1;2"] {
            assert!(parse_id_list(bad).is_err(), "{bad:?} should be refused");
        }
        let long = format!("1,{}", "9".repeat(1000));
        assert!(parse_id_list(&long).unwrap_err().len() < 200);
    }

    #[test]
    fn ids_parse_strictly() {
        assert_eq!(TranscriptionId::parse("1").unwrap().get(), 1);
        assert_eq!(
            TranscriptionId::parse("18446744073709551615")
                .unwrap()
                .get(),
            u64::MAX
        );
        for bad in [
            "",
            "0",
            "01",
            "-1",
            "+1",
            "1.0",
            "1e3",
            " 1",
            "1 ",
            "abc",
            "18446744073709551616",
            "123456789012345678901",
            "١",
        ] {
            assert!(
                TranscriptionId::parse(bad).is_err(),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn timestamps_render_in_utc_with_milliseconds() {
        let t = Transcription {
            transcription_id: 42,
            call_id: "CA-1".into(),
            language: "en-US".into(),
            status: "completed".into(),
            duration_ms: None,
            confidence: Some(0.93),
            content: None,
            created_at: time::macros::datetime!(2026-11-22 10:00:00),
            updated_at: time::macros::datetime!(2026-11-22 10:01:02.345),
        };
        let text = serde_json::to_string(&t).unwrap();
        assert!(text.contains("\"confidence\":0.93,"), "{text}");
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["created_at"], "2026-11-22T10:00:00.000Z");
        assert_eq!(json["updated_at"], "2026-11-22T10:01:02.345Z");
        assert_eq!(json["duration_ms"], serde_json::Value::Null);
    }
}
