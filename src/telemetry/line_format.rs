//! How a log line is written: in the text format, its fields
//! (`name=value`, space-separated, the message bare, strings quoted and
//! escaped as `{:?}` does, in one pass where `{:?}` checks each
//! character), and in every format its time, whose date and time of day
//! are worked out once per second, not once per line.
//!
//! tracing-subscriber's default field formatter styles every field name
//! through an ANSI painter even when colours are off, and one built from
//! `debug_fn` sends every value, numbers and plain strings too, through
//! `core::fmt`: with the access log on, that and the time were a tenth
//! of a handshake. This writes the same text directly.

use std::cell::Cell;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::fmt::FormatFields;

/// The text format's fields (see the module's documentation).
#[derive(Debug, Default, Clone, Copy)]
pub struct PlainFields;

impl<'writer> FormatFields<'writer> for PlainFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut visitor = FieldWriter {
            writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

/// Writes one field after another, stopping at the first error.
struct FieldWriter<'writer> {
    writer: Writer<'writer>,
    first: bool,
    result: fmt::Result,
}

impl FieldWriter<'_> {
    /// The separator and `name=` (nothing for the message), then `value`.
    fn field(&mut self, field: &Field, value: impl FnOnce(&mut Writer<'_>) -> fmt::Result) {
        if self.result.is_err() {
            return;
        }
        self.result = (|| {
            if !std::mem::take(&mut self.first) {
                self.writer.write_char(' ')?;
            }
            if field.name() != "message" {
                self.writer.write_str(field.name())?;
                self.writer.write_char('=')?;
            }
            value(&mut self.writer)
        })();
    }
}

impl Visit for FieldWriter<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.field(field, |writer| write_quoted(writer, value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.field(field, |writer| writer.write_str(itoa::Buffer::new().format(value)));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.field(field, |writer| writer.write_str(itoa::Buffer::new().format(value)));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.field(field, |writer| writer.write_str(if value { "true" } else { "false" }));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.field(field, |writer| write!(writer, "{value:?}"));
    }
}

/// `value` as `{:?}` writes it: quoted, with `"`, `\` and anything not
/// printable ASCII escaped (left to `{:?}` itself when there is any).
fn write_quoted(writer: &mut Writer<'_>, value: &str) -> fmt::Result {
    let plain = value
        .bytes()
        .all(|byte| (b' '..=b'~').contains(&byte) && byte != b'"' && byte != b'\\');
    if !plain {
        return write!(writer, "{value:?}");
    }
    writer.write_char('"')?;
    writer.write_str(value)?;
    writer.write_char('"')
}

/// The time as RFC 3339 in UTC with microseconds
/// (`2026-12-06T19:10:28.364295Z`), as tracing-subscriber's default
/// writes it.
#[derive(Debug, Default, Clone, Copy)]
pub struct LineTime;

thread_local! {
    /// The second last written on this thread, and its text up to the
    /// seconds (`2026-12-06T19:10:28`).
    static SECOND: Cell<(u64, [u8; 19])> = const { Cell::new((u64::MAX, [0; 19])) };
}

impl FormatTime for LineTime {
    fn format_time(&self, writer: &mut Writer<'_>) -> fmt::Result {
        write_time(writer, SystemTime::now())
    }
}

fn write_time(writer: &mut Writer<'_>, now: SystemTime) -> fmt::Result {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = since.as_secs();
    let (cached, mut text) = SECOND.get();
    if cached != seconds {
        text = second_text(seconds);
        SECOND.set((seconds, text));
    }
    // Written from digits and ASCII punctuation only.
    writer.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?)?;
    let micros = since.subsec_micros();
    let mut fraction = *b".000000Z";
    for (place, digit) in fraction[1..7].iter_mut().rev().zip(0..) {
        *place = b'0' + (micros / 10u32.pow(digit) % 10) as u8;
    }
    writer.write_str(std::str::from_utf8(&fraction).map_err(|_| fmt::Error)?)
}

/// `YYYY-MM-DDTHH:MM:SS` of `seconds` since 1970 (the civil calendar from
/// a day count, as in Howard Hinnant's `civil_from_days`).
fn second_text(seconds: u64) -> [u8; 19] {
    let days = (seconds / 86_400) as i64;
    let of_day = seconds % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    let mut text = *b"0000-00-00T00:00:00";
    let mut put = |at: usize, width: u32, value: u64| {
        for digit in 0..width {
            text[at + (width - 1 - digit) as usize] = b'0' + (value / 10u64.pow(digit) % 10) as u8;
        }
    };
    put(0, 4, year.clamp(0, 9999) as u64);
    put(5, 2, month as u64);
    put(8, 2, day as u64);
    put(11, 2, of_day / 3_600);
    put(14, 2, of_day / 60 % 60);
    put(17, 2, of_day % 60);
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quoted(value: &str) -> String {
        let mut out = String::new();
        write_quoted(&mut Writer::new(&mut out), value).unwrap();
        out
    }

    /// Every string comes out as `{:?}` writes it, escapes included.
    #[test]
    fn strings_are_written_as_debug_writes_them() {
        for value in [
            "",
            "/echo",
            "a b~",
            "say \"hi\"",
            "back\\slash",
            "line\nbreak\ttab\r",
            "\u{1b}[31mred",
            "caf\u{e9} \u{200b}",
            "\u{7f}",
        ] {
            assert_eq!(quoted(value), format!("{value:?}"), "{value:?}");
        }
    }

    /// The same text as RFC 3339 with microseconds, across leap days,
    /// year and century ends, and on a thread that has written a line in
    /// another second before.
    #[test]
    fn times_are_rfc3339_with_microseconds() {
        for seconds in [
            0u64,
            951_782_400,       // 2000-02-29
            951_868_799,       // 2000-02-29T23:59:59
            4_107_542_399,     // 2100-02-28T23:59:59
            1_796_582_400,     // 2026-12-06
            1_796_582_400 + 1, // the next second, from the cache's neighbour
            253_402_300_799,   // 9999-12-31T23:59:59
        ] {
            for micros in [0, 7, 364_295, 999_999] {
                let at = UNIX_EPOCH + std::time::Duration::from_micros(seconds * 1_000_000 + micros);
                let mut out = String::new();
                write_time(&mut Writer::new(&mut out), at).unwrap();
                assert_eq!(out, humantime::format_rfc3339_micros(at).to_string());
            }
        }
    }
}
