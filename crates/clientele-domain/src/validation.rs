//! Field-level validation errors, collected so that one response names every problem at once.

use serde::Serialize;

/// One problem with one field; `field` is a path such as `addresses[0].country`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    pub field: String,
    /// Stable snake_case code, e.g. `invalid_country`.
    pub code: &'static str,
    pub message: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ValidationErrors(pub Vec<FieldError>);

impl ValidationErrors {
    pub fn push(
        &mut self,
        field: impl Into<String>,
        code: &'static str,
        message: impl Into<String>,
    ) {
        self.0.push(FieldError {
            field: field.into(),
            code,
            message: message.into(),
        });
    }

    pub fn single(
        field: impl Into<String>,
        code: &'static str,
        message: impl Into<String>,
    ) -> Self {
        let mut errors = Self::default();
        errors.push(field, code, message);
        errors
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn into_result(self) -> Result<(), ValidationErrors> {
        if self.0.is_empty() { Ok(()) } else { Err(self) }
    }
}

/// Longest accepted text for short fields (names, codes, phone numbers).
pub const MAX_SHORT_TEXT: usize = 1_000;
/// Longest accepted `note`.
pub const MAX_NOTE: usize = 65_536;
/// Longest accepted unique key value or tag.
pub const MAX_KEY: usize = 255;
/// Most addresses or tags on one customer.
pub const MAX_ITEMS: usize = 1_000;

/// What a text field may hold besides printable characters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TextKind {
    /// One line (names, phone numbers, address lines), at most [`MAX_SHORT_TEXT`] characters:
    /// no control characters at all. A tab, a line break or an escape sequence in a name breaks
    /// every list, label and CSV export it reaches, and an escape can drive a terminal.
    Line,
    /// A unique key value, tag or code, at most [`MAX_KEY`] characters: no control characters.
    Key,
    /// Free text (`note`), at most [`MAX_NOTE`] characters: tabs and line breaks, no other
    /// control characters.
    Multiline,
}

impl TextKind {
    fn max(self) -> usize {
        match self {
            TextKind::Line => MAX_SHORT_TEXT,
            TextKind::Key => MAX_KEY,
            TextKind::Multiline => MAX_NOTE,
        }
    }

    pub(crate) fn allows(self, c: char) -> bool {
        !c.is_control() || (self == TextKind::Multiline && matches!(c, '\t' | '\n' | '\r'))
    }
}

pub(crate) fn check_text(errors: &mut ValidationErrors, field: &str, value: &str, kind: TextKind) {
    let mut count = 0usize;
    let mut refused = None;
    for c in value.chars() {
        count += 1;
        if refused.is_none() && !kind.allows(c) {
            refused = Some(c);
        }
    }
    if let Some(c) = refused {
        // NUL among them: PostgreSQL text cannot hold it, SQLite can; refused on both, so
        // they agree.
        let allowed = match kind {
            TextKind::Line | TextKind::Key => "",
            TextKind::Multiline => " other than tabs and line breaks",
        };
        errors.push(
            field,
            "invalid_characters",
            format!(
                "must not contain control characters{allowed} (found U+{:04X})",
                u32::from(c)
            ),
        );
    } else if count > kind.max() {
        errors.push(
            field,
            "too_long",
            format!("at most {} characters", kind.max()),
        );
    }
}

/// Whether a value can be a unique key (what [`check_key`] accepts).
pub fn is_valid_key(value: &str) -> bool {
    let mut errors = ValidationErrors::default();
    check_key(&mut errors, "", value);
    errors.is_empty()
}

pub(crate) fn check_key(errors: &mut ValidationErrors, field: &str, value: &str) {
    if value.is_empty() {
        errors.push(field, "empty", "must not be empty; use null to clear it");
    } else {
        check_text(errors, field, value, TextKind::Key);
    }
}

/// A pragmatic email check: one `@`, non-empty local part, a dotted domain, no spaces.
pub(crate) fn is_plausible_email(value: &str) -> bool {
    let Some((local, domain)) = value.rsplit_once('@') else {
        return false;
    };
    !local.is_empty()
        && !domain.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !value.chars().any(|c| c.is_whitespace() || c.is_control())
        && !local.contains('@')
}

/// A real calendar date in `YYYY-MM-DD`.
pub(crate) fn is_date(value: &str) -> bool {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    value.len() == 10 && time::Date::parse(value, &format).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_check_accepts_real_addresses_only() {
        for ok in ["a@b.fi", "Matt.Smith@Example.COM", "x+tag@sub.domain.org"] {
            assert!(is_plausible_email(ok), "{ok}");
        }
        for bad in [
            "", "a", "a@", "@b.fi", "a@b", "a b@c.fi", "a@.fi", "a@b.", "a@b@c.fi",
        ] {
            assert!(!is_plausible_email(bad), "{bad}");
        }
    }

    #[test]
    fn date_check_accepts_real_dates_only() {
        assert!(is_date("2024-02-29"));
        assert!(!is_date("2023-02-29"));
        assert!(!is_date("2024-13-01"));
        assert!(!is_date("24-01-01"));
        assert!(!is_date("2024-1-1"));
    }
}
