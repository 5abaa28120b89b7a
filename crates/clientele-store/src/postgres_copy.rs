//! Rows sent to PostgreSQL with `COPY ... FROM STDIN` in its text format: how a write inserts
//! the search-term rows of new customers.
//!
//! `INSERT ... SELECT * FROM UNNEST(arrays)` first materializes the arrays into a tuple store and
//! then inserts tuple by tuple. `COPY` fills heap pages many rows at a time (one WAL record per
//! page, not per row) and reads the rows straight from the stream. In bulk sync's first send of
//! 100,000 customers the 600,000 term rows took 19 % less time in the server that way, in four
//! alternating runs (docs/benchmarks.md). The other inserts stay `INSERT`s over arrays: the
//! customer rows gained 4 % (within the noise), the tag rows lost 10 %, and the change records,
//! each a customer's whole document that `COPY` scans character by character for its escapes,
//! lost 14 %. `COPY` inserts plainly, so it serves rows that are new; the rows of an update,
//! which may meet the same rows of a concurrent backfill, still take `INSERT ... ON CONFLICT`.
//!
//! The format: one line per row, fields separated by tabs, and a backslash,
//! tab, newline or carriage return inside a value written as a backslash escape. Nothing else
//! needs escaping: every other character, multibyte UTF-8 included, stands for itself, and with
//! every backslash of the data doubled, no value can read as `\N` or as the end-of-data marker.

use std::fmt::Write as _;

use clientele_domain::DomainError;
use sqlx::{Postgres, Transaction};

use crate::error::db_error;

/// Rows in `COPY`'s text format, built field by field.
#[derive(Debug, Default)]
pub(crate) struct CopyRows {
    text: String,
    row_started: bool,
}

impl CopyRows {
    /// Room for `rows` rows of about `row_bytes` bytes each.
    pub(crate) fn with_capacity(rows: usize, row_bytes: usize) -> Self {
        CopyRows {
            text: String::with_capacity(rows.saturating_mul(row_bytes)),
            ..Self::default()
        }
    }

    fn separate(&mut self) {
        if self.row_started {
            self.text.push('\t');
        }
        self.row_started = true;
    }

    pub(crate) fn text(&mut self, value: &str) -> &mut Self {
        self.separate();
        escape_into(value, &mut self.text);
        self
    }

    pub(crate) fn int(&mut self, value: i64) -> &mut Self {
        self.separate();
        // Writing to a String cannot fail.
        let _ = write!(self.text, "{value}");
        self
    }

    pub(crate) fn bool(&mut self, value: bool) -> &mut Self {
        self.separate();
        self.text.push(if value { 't' } else { 'f' });
        self
    }

    /// Ends the row whose fields were just written.
    pub(crate) fn end_row(&mut self) {
        self.text.push('\n');
        self.row_started = false;
    }

    /// Whether no row was written (every row, even of empty fields, ends in a newline).
    pub(crate) fn is_empty(&self) -> bool {
        self.text.is_empty()
    }

    /// Runs `statement`, a `COPY ... FROM STDIN`, with these rows in the open transaction.
    /// A failed row (a unique key taken, text PostgreSQL refuses) fails the whole `COPY` with
    /// the error an `INSERT` of it would have had.
    pub(crate) async fn copy_in(
        self,
        tx: &mut Transaction<'static, Postgres>,
        statement: &str,
    ) -> Result<(), DomainError> {
        if self.is_empty() {
            return Ok(());
        }
        debug_assert!(!self.row_started, "a row was left unfinished");
        let mut copy = tx.copy_in_raw(statement).await.map_err(db_error)?;
        if let Err(error) = copy.send(self.text.into_bytes()).await {
            // The server is told to abort, so the connection is fit for the rollback.
            let _ = copy.abort("the rows could not be sent").await;
            return Err(db_error(error));
        }
        copy.finish().await.map_err(db_error)?;
        Ok(())
    }
}

/// Appends `value` to `out` with the characters that `COPY`'s text format reserves escaped.
fn escape_into(value: &str, out: &mut String) {
    let reserved = |b: u8| matches!(b, b'\\' | b'\t' | b'\n' | b'\r');
    if !value.bytes().any(reserved) {
        out.push_str(value);
        return;
    }
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_tab_separated_and_rows_end_with_a_newline() {
        let mut rows = CopyRows::default();
        rows.text("ada").int(-42).bool(true).end_row();
        rows.bool(false).text("").end_row();
        assert_eq!(rows.text, "ada\t-42\tt\nf\t\n");
    }

    #[test]
    fn reserved_characters_are_escaped_and_nothing_else() {
        let mut rows = CopyRows::default();
        rows.text("a\\b\tc\nd\re \\N \\. Äö €").end_row();
        assert_eq!(rows.text, "a\\\\b\\tc\\nd\\re \\\\N \\\\. Äö €\n");
    }

    #[test]
    fn no_rows_is_empty() {
        let rows = CopyRows::with_capacity(10, 100);
        assert!(rows.is_empty());
    }

    proptest::proptest! {
        /// Unescaping what was written gives the values back, field by field.
        #[test]
        fn escaped_values_read_back_as_written(values in proptest::collection::vec(".*", 1..6)) {
            let mut rows = CopyRows::default();
            for value in &values {
                rows.text(value);
            }
            rows.end_row();
            let line = rows.text.strip_suffix('\n').expect("a row ends with a newline");
            let read: Vec<String> = line.split('\t').map(unescape).collect();
            proptest::prop_assert_eq!(read, values);
        }
    }

    /// `COPY`'s reading of a text field (the escapes [`escape_into`] writes).
    fn unescape(field: &str) -> String {
        let mut out = String::new();
        let mut chars = field.chars();
        while let Some(c) = chars.next() {
            if c != '\\' {
                out.push(c);
                continue;
            }
            match chars.next() {
                Some('\\') => out.push('\\'),
                Some('t') => out.push('\t'),
                Some('n') => out.push('\n'),
                Some('r') => out.push('\r'),
                other => panic!("unexpected escape {other:?}"),
            }
        }
        out
    }
}
