//! JSON log lines, written straight into the line buffer.
//!
//! One object per line: `timestamp` (RFC 3339, UTC, microseconds), `level`,
//! `target`, the event's fields (`message` among them), then the fields of
//! every span the event happened in, outermost first, flattened, so a line
//! written while serving a request carries its `method`, `route` and
//! `request_id`.
//!
//! Why not tracing-subscriber's `Json`: it keeps span fields as a JSON string
//! and parses that string back into a map for every event, which made its log
//! line the largest single cost of a read (bench/README.md, "Read path").
//! Here span fields are rendered once, as a ready-made `"k":v` fragment.

use std::fmt::{self, Write};

use time::OffsetDateTime;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// The event format: one JSON object per line.
pub(crate) struct JsonLines;

/// The field format: `"name":value` pairs joined by commas, no braces.
#[derive(Default)]
pub(crate) struct JsonFields;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut out: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        out.write_str("{\"timestamp\":\"")?;
        write_timestamp(&mut out, OffsetDateTime::now_utc())?;
        write!(out, "\",\"level\":\"{}\",\"target\":", meta.level())?;
        write_json_str(&mut out, meta.target())?;
        let mut fields = FieldWriter::new(&mut out, false);
        event.record(&mut fields);
        fields.result?;
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let extensions = span.extensions();
                if let Some(rendered) = extensions.get::<FormattedFields<N>>()
                    && !rendered.fields.is_empty()
                {
                    out.write_char(',')?;
                    out.write_str(&rendered.fields)?;
                }
            }
        }
        out.write_str("}\n")
    }
}

impl<'w> FormatFields<'w> for JsonFields {
    fn format_fields<R: RecordFields>(&self, mut out: Writer<'w>, fields: R) -> fmt::Result {
        let mut writer = FieldWriter::new(&mut out, true);
        fields.record(&mut writer);
        writer.result
    }

    fn add_fields(
        &self,
        current: &'w mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        let first = current.fields.is_empty();
        let mut out = current.as_writer();
        let mut writer = FieldWriter::new(&mut out, first);
        fields.record(&mut writer);
        writer.result
    }
}

/// Writes each field as `"name":value`, separated by commas.
struct FieldWriter<'a, W> {
    out: &'a mut W,
    /// No comma before the next field.
    first: bool,
    result: fmt::Result,
}

impl<'a, W: Write> FieldWriter<'a, W> {
    fn new(out: &'a mut W, first: bool) -> Self {
        Self {
            out,
            first,
            result: Ok(()),
        }
    }

    /// Writes `"name":` and then `value` with `write_value`.
    fn field(&mut self, field: &Field, write_value: impl FnOnce(&mut W) -> fmt::Result) {
        if self.result.is_err() {
            return;
        }
        self.result = (|| {
            if !std::mem::take(&mut self.first) {
                self.out.write_char(',')?;
            }
            write_json_str(self.out, field.name())?;
            self.out.write_char(':')?;
            write_value(self.out)
        })();
    }
}

impl<W: Write> Visit for FieldWriter<'_, W> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.field(field, |out| write_json_str(out, value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.field(field, |out| write!(out, "{value}"));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.field(field, |out| write!(out, "{value}"));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.field(field, |out| write!(out, "{value}"));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        // JSON has no NaN or infinity.
        self.field(field, |out| match value.is_finite() {
            true => write!(out, "{value}"),
            false => out.write_str("null"),
        });
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.field(field, |out| write_json_display(out, value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.field(field, |out| {
            out.write_char('"')?;
            write!(Escaping(out), "{value:?}")?;
            out.write_char('"')
        });
    }
}

/// `2026-11-23T10:04:05.123456Z`.
fn write_timestamp(out: &mut impl Write, at: OffsetDateTime) -> fmt::Result {
    write!(
        out,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second(),
        at.microsecond()
    )
}

fn write_json_str(out: &mut impl Write, value: &str) -> fmt::Result {
    out.write_char('"')?;
    Escaping(out).write_str(value)?;
    out.write_char('"')
}

fn write_json_display(out: &mut impl Write, value: &dyn fmt::Display) -> fmt::Result {
    out.write_char('"')?;
    write!(Escaping(out), "{value}")?;
    out.write_char('"')
}

/// Escapes what it is given as the inside of a JSON string.
struct Escaping<'a, W>(&'a mut W);

impl<W: Write> Write for Escaping<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut clean = 0;
        for (i, c) in s.char_indices() {
            let escaped = match c {
                '"' => "\\\"",
                '\\' => "\\\\",
                '\n' => "\\n",
                '\r' => "\\r",
                '\t' => "\\t",
                c if (c as u32) < 0x20 => "",
                _ => continue,
            };
            self.0.write_str(&s[clean..i])?;
            match escaped {
                "" => write!(self.0, "\\u{:04x}", c as u32)?,
                escaped => self.0.write_str(escaped)?,
            }
            clean = i + c.len_utf8();
        }
        self.0.write_str(&s[clean..])
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Captured {
            self.clone()
        }
    }

    fn lines_of(log: impl FnOnce()) -> Vec<serde_json::Value> {
        let captured = Captured::default();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .event_format(JsonLines)
                .fmt_fields(JsonFields)
                .with_writer(captured.clone()),
        );
        tracing::subscriber::with_default(subscriber, log);
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
            .collect()
    }

    #[test]
    fn every_value_kind_is_valid_json() {
        let lines = lines_of(|| {
            let error = std::io::Error::other("disk \"full\"\n");
            tracing::warn!(
                text = "quote \" backslash \\ tab \t bell \u{7} é",
                count = 3u64,
                delta = -2i64,
                ratio = 0.5f64,
                nan = f64::NAN,
                flag = true,
                debug = ?vec!["a"],
                error = &error as &dyn std::error::Error,
                "hello {}", "world"
            );
        });
        let line = &lines[0];
        assert_eq!(line["level"], "WARN");
        assert_eq!(line["message"], "hello world");
        assert_eq!(line["text"], "quote \" backslash \\ tab \t bell \u{7} é");
        assert_eq!(line["count"], 3);
        assert_eq!(line["delta"], -2);
        assert_eq!(line["ratio"], 0.5);
        assert!(line["nan"].is_null());
        assert_eq!(line["flag"], true);
        assert_eq!(line["debug"], "[\"a\"]");
        assert_eq!(line["error"], "disk \"full\"\n");
        let timestamp = line["timestamp"].as_str().unwrap();
        assert!(
            OffsetDateTime::parse(timestamp, &time::format_description::well_known::Rfc3339)
                .is_ok(),
            "{timestamp}"
        );
    }

    #[test]
    fn span_fields_are_flattened_outermost_first_including_late_records() {
        let lines = lines_of(|| {
            let outer = tracing::info_span!(
                "request",
                request_id = "r-1",
                status = tracing::field::Empty
            );
            let _outer = outer.enter();
            outer.record("status", 200u64);
            let inner = tracing::info_span!("query", table = "transcriptions");
            let _inner = inner.enter();
            tracing::info!("inside");
        });
        let line = &lines[0];
        assert_eq!(line["request_id"], "r-1");
        assert_eq!(line["status"], 200);
        assert_eq!(line["table"], "transcriptions");
        assert_eq!(line["message"], "inside");
    }
}
