//! The job file (`AGENT.md`, TOML): parsed strictly (an unknown key is an error, not a silent
//! typo), checked for sense, and every error names the line and the key at fault.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// A job file that cannot be used, with where and why: `path: line N: `section.key`: message`,
/// or only as much of that as is known (a file that cannot be read has no line and no key).
#[derive(Debug, thiserror::Error)]
pub struct JobError {
    pub path: String,
    /// 0 when the error is about no line of the file.
    pub line: usize,
    /// `section.key` (or a top-level key, or a section); empty when no key is at fault.
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for JobError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: ", self.path)?;
        if self.line > 0 {
            write!(f, "line {}: ", self.line)?;
        }
        if !self.key.is_empty() {
            write!(f, "`{}`: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Job {
    pub hub: HubSection,
    #[serde(default)]
    pub source: Option<SourceSection>,
    #[serde(default)]
    pub sync: SyncSection,
    /// Hub field = source column.
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
    #[serde(default)]
    pub transform: Option<String>,
    #[serde(default)]
    pub mirror: Option<MirrorSection>,
    /// Where relative paths in the file are resolved (the job file's directory).
    #[serde(skip)]
    pub base_dir: PathBuf,
    #[serde(skip)]
    pub file: String,
    #[serde(skip)]
    text: String,
    #[serde(skip)]
    transform_section: &'static str,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubSection {
    pub url: String,
    #[serde(default = "default_key_env")]
    pub key_env: String,
    /// For signed requests: the key id; the secret still comes from `key_env`.
    #[serde(default)]
    pub key_id: Option<String>,
}

fn default_key_env() -> String {
    "CLIENTELE_KEY".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSection {
    pub url: String,
    #[serde(default)]
    pub table: Option<String>,
    #[serde(default)]
    pub query: Option<String>,
    pub key: String,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum HubKey {
    ExternalId,
    Email,
    Username,
}

impl HubKey {
    pub fn field(self) -> &'static str {
        match self {
            HubKey::ExternalId => "external_id",
            HubKey::Email => "email",
            HubKey::Username => "username",
        }
    }

    /// A value of this key as the hub compares it (emails case-insensitively).
    pub fn identity(self, value: &str) -> String {
        let key = match self {
            HubKey::ExternalId => clientele_domain::CustomerKey::ExternalId,
            HubKey::Email => clientele_domain::CustomerKey::Email,
            HubKey::Username => clientele_domain::CustomerKey::Username,
        };
        key.normalize(value)
    }
}

/// How the agent writes a source key down in its state, so that two spellings the hub takes for
/// one customer are one key to the state too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyForm {
    /// As the source has it.
    AsWritten,
    /// As the hub compares emails (`CustomerKey::normalize`): the source key fills the hub's
    /// `email`.
    Email,
}

impl KeyForm {
    /// The form a job's source keys take. Only a key that becomes the customer's email is folded
    /// as an email: the key column when the job keys customers by email, unless `[fields]` or a
    /// source column named `email` fills the email from another column (then the key is some
    /// other identifier, where `AB1` and `ab1` may be two rows). `columns` are the source's, where
    /// known before reading (not for JSONL, whose rows each name their own).
    pub fn of(job: &Job, source_key: &str, columns: Option<&[String]>) -> KeyForm {
        if job.sync.key != HubKey::Email {
            return KeyForm::AsWritten;
        }
        let email = HubKey::Email.field();
        let key_fills_email = match job.fields.get(email) {
            Some(column) => column == source_key,
            None if source_key == email => true,
            None => !columns.is_some_and(|columns| columns.iter().any(|c| c == email)),
        };
        if key_fills_email {
            KeyForm::Email
        } else {
            KeyForm::AsWritten
        }
    }

    pub fn identity(self, key: String) -> String {
        match self {
            KeyForm::Email => clientele_domain::CustomerKey::Email.normalize(&key),
            KeyForm::AsWritten => key,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnMissing {
    Archive,
    Delete,
    Ignore,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncSection {
    #[serde(default = "default_hub_key")]
    pub key: HubKey,
    #[serde(default = "default_on_missing")]
    pub on_missing: OnMissing,
    #[serde(default)]
    pub state: Option<String>,
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
}

impl Default for SyncSection {
    fn default() -> Self {
        SyncSection {
            key: default_hub_key(),
            on_missing: default_on_missing(),
            state: None,
            batch_size: default_batch_size(),
            concurrency: default_concurrency(),
        }
    }
}

fn default_hub_key() -> HubKey {
    HubKey::ExternalId
}
fn default_on_missing() -> OnMissing {
    OnMissing::Archive
}
fn default_batch_size() -> usize {
    1000
}
fn default_concurrency() -> usize {
    4
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Conflict {
    HubWins,
    SourceWins,
    NewestWins,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorSection {
    pub url: String,
    #[serde(default = "default_mirror_table")]
    pub table: String,
    #[serde(default = "default_conflict")]
    pub conflict: Conflict,
}

fn default_mirror_table() -> String {
    "customers".into()
}
fn default_conflict() -> Conflict {
    Conflict::NewestWins
}

/// The most items a bulk sync request takes (`API.md`).
const MAX_BATCH: usize = 1000;

impl Job {
    pub fn load(path: &Path) -> Result<Job, JobError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| JobError {
            path: file.clone(),
            line: 0,
            key: String::new(),
            message: match error.kind() {
                std::io::ErrorKind::NotFound => "the job file does not exist".to_owned(),
                _ => format!("cannot read the job file: {error}"),
            },
        })?;
        let base_dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Job::parse(&text, &file, base_dir)
    }

    pub fn parse(text: &str, file: &str, base_dir: PathBuf) -> Result<Job, JobError> {
        let mut job: Job = toml::from_str(text).map_err(|error| {
            let line = error
                .span()
                .map(|span| line_at(text, span.start))
                .unwrap_or(0);
            JobError {
                path: file.to_owned(),
                line,
                key: key_at(text, line, error.message()),
                message: error.message().trim().to_owned(),
            }
        })?;
        // In the documented layout `transform` follows `[fields]`, so TOML puts it in that table.
        if let Some(program) = job.fields.remove("transform") {
            job.transform_section = "fields";
            job.transform = Some(program);
        }
        job.base_dir = base_dir;
        job.file = file.to_owned();
        job.text = text.to_owned();
        job.check()?;
        Ok(job)
    }

    fn check(&self) -> Result<(), JobError> {
        if !(self.hub.url.starts_with("http://") || self.hub.url.starts_with("https://")) {
            return Err(self.error("hub", "url", "must start with http:// or https://"));
        }
        if let Some(source) = &self.source {
            match (&source.table, &source.query) {
                (Some(_), Some(_)) => {
                    return Err(self.error(
                        "source",
                        "query",
                        "give either table or query, not both",
                    ));
                }
                (None, None) if !is_file_source(&source.url) => {
                    return Err(self.error(
                        "source",
                        "url",
                        "a database source needs `table` or `query`",
                    ));
                }
                _ => {}
            }
            if let Some(table) = &source.table
                && !is_identifier(table)
            {
                return Err(self.error(
                    "source",
                    "table",
                    "must be a plain table name ([A-Za-z_][A-Za-z0-9_.]*)",
                ));
            }
            if source.key.is_empty() {
                return Err(self.error("source", "key", "must name the source's key column"));
            }
        }
        if self.sync.batch_size == 0 || self.sync.batch_size > MAX_BATCH {
            return Err(self.error("sync", "batch_size", "must be 1 to 1000"));
        }
        if self.sync.concurrency == 0 || self.sync.concurrency > 64 {
            return Err(self.error("sync", "concurrency", "must be 1 to 64"));
        }
        for (field, column) in &self.fields {
            if !crate::fields::is_writable(field) {
                return Err(self.error(
                    "fields",
                    field,
                    &format!("`{field}` is not a customer field the hub accepts"),
                ));
            }
            if column.is_empty() {
                return Err(self.error("fields", field, "must name a source column"));
            }
        }
        if let Some(mirror) = &self.mirror {
            if !is_identifier(&mirror.table) {
                return Err(self.error("mirror", "table", "must be a plain table name"));
            }
            if !crate::mirror::is_sqlite(&mirror.url) && !crate::mirror::is_postgres(&mirror.url) {
                return Err(self.error("mirror", "url", "must be sqlite://PATH or postgres://..."));
            }
        }
        if let Some(program) = &self.transform
            && let Err(message) = crate::transform::Transform::compile(program)
        {
            return Err(self.error(self.transform_section, "transform", &message));
        }
        Ok(())
    }

    /// An error about `key` in `[section]`, on the line where the file sets it.
    pub fn error(&self, section: &str, key: &str, message: &str) -> JobError {
        let line = find_key_line(&self.text, section, key);
        let key = if section.is_empty() {
            key.to_owned()
        } else {
            format!("{section}.{key}")
        };
        JobError {
            path: self.file.clone(),
            line,
            key,
            message: message.to_owned(),
        }
    }

    pub fn source(&self) -> Result<&SourceSection, JobError> {
        self.source
            .as_ref()
            .ok_or_else(|| self.error("source", "url", "push needs a [source] section"))
    }

    pub fn mirror(&self) -> Result<&MirrorSection, JobError> {
        self.mirror
            .as_ref()
            .ok_or_else(|| self.error("mirror", "url", "pull and sync need a [mirror] section"))
    }

    /// A path from the job file, relative to the job file's directory.
    pub fn resolve(&self, path: &str) -> PathBuf {
        let path = Path::new(path);
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base_dir.join(path)
        }
    }

    /// The state file: `[sync] state`, or `<job file>.state.db` beside the job file.
    pub fn state_path(&self) -> PathBuf {
        match &self.sync.state {
            Some(path) => self.resolve(path),
            None => PathBuf::from(format!("{}.state.db", self.file)),
        }
    }

    /// A database URL from the job file with a relative SQLite path made relative to the job file.
    pub fn database_url(&self, url: &str) -> String {
        match url.strip_prefix("sqlite://") {
            Some(rest) if !rest.starts_with('/') && !rest.starts_with(":memory:") => {
                format!("sqlite://{}", self.resolve(rest).display())
            }
            _ => url.to_owned(),
        }
    }
}

pub fn is_file_source(url: &str) -> bool {
    let lower = url.to_ascii_lowercase();
    lower.ends_with(".csv") || lower.ends_with(".jsonl") || lower.ends_with(".ndjson")
}

/// Table names go into SQL text, so they are held to plain (optionally schema-qualified) names.
pub fn is_identifier(name: &str) -> bool {
    !name.is_empty()
        && name.split('.').all(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
}

fn line_at(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The key a TOML or serde error is about, as `section.key`: serde names it in "unknown field
/// `x`" and "missing field `x`"; otherwise it is the key set on the error's line. The section is
/// the table the line is in (for a missing field, the line is the table's header).
fn key_at(text: &str, line: usize, message: &str) -> String {
    let content = text
        .lines()
        .nth(line.saturating_sub(1))
        .unwrap_or_default()
        .trim();
    let header = content
        .starts_with('[')
        .then(|| content.trim_matches(['[', ']']).trim().to_owned());
    let section = header.clone().unwrap_or_else(|| section_at(text, line));
    let key = match key_in_message(message) {
        Some(key) => key,
        None => match &header {
            Some(_) => return section,
            None => content
                .split('=')
                .next()
                .unwrap_or_default()
                .trim()
                .trim_matches('"')
                .to_owned(),
        },
    };
    // An unknown section is reported on its own header, as an unknown top-level key, or
    // (`[sync.extra]`) as the key it is in its section.
    if let Some(header) =
        header.filter(|header| header == &key || header.ends_with(&format!(".{key}")))
    {
        header
    } else if section.is_empty() {
        key
    } else {
        format!("{section}.{key}")
    }
}

/// serde names the key in its messages as "unknown field `x`" or "missing field `x`".
fn key_in_message(message: &str) -> Option<String> {
    let rest = ["unknown field `", "missing field `"]
        .iter()
        .find_map(|prefix| Some(&message[message.find(prefix)? + prefix.len()..]))?;
    Some(rest[..rest.find('`')?].to_owned())
}

/// The table that line `line` (1-based) is in: the last header above it ("" before any).
fn section_at(text: &str, line: usize) -> String {
    text.lines()
        .take(line)
        .filter_map(|content| {
            let content = content.trim();
            content
                .starts_with('[')
                .then(|| content.trim_matches(['[', ']']).trim().to_owned())
        })
        .last()
        .unwrap_or_default()
}

/// The line where `[section]` sets `key` (the section header's line when the key is absent;
/// for top-level keys, `section` is empty).
fn find_key_line(text: &str, section: &str, key: &str) -> usize {
    let mut current = String::new();
    let mut header_line = 0;
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.starts_with('[') {
            current = line.trim_matches(['[', ']']).trim().to_owned();
            if current == section {
                header_line = index + 1;
            }
            continue;
        }
        let Some((name, _)) = line.split_once('=') else {
            continue;
        };
        if current == section && name.trim().trim_matches('"') == key {
            return index + 1;
        }
    }
    header_line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Job, JobError> {
        Job::parse(text, "job.toml", PathBuf::from("."))
    }

    const GOOD: &str = r#"
[hub]
url = "http://127.0.0.1:8080"

[source]
url = "sqlite://backend.db"
table = "people"
key = "person_id"

[sync]
key = "external_id"
on_missing = "delete"
batch_size = 500

[fields]
external_id = "person_id"
first_name = "fname"
"#;

    #[test]
    fn a_good_job_parses_with_defaults() {
        let job = parse(GOOD).expect("valid job");
        assert_eq!(job.sync.on_missing, OnMissing::Delete);
        assert_eq!(job.sync.batch_size, 500);
        assert_eq!(job.sync.concurrency, 4);
        assert_eq!(job.hub.key_env, "CLIENTELE_KEY");
        assert_eq!(job.fields["first_name"], "fname");
    }

    #[test]
    fn an_unknown_key_is_named_with_its_line() {
        let error =
            parse(&GOOD.replace("table = \"people\"", "tabel = \"people\"")).expect_err("refused");
        assert_eq!(error.line, 7, "{error}");
        assert_eq!(error.key, "source.tabel", "{error}");
        let error = parse(&GOOD.replace("batch_size = 500", "batch_size = 500\nbogus = 1"))
            .expect_err("refused");
        assert_eq!(
            (error.line, error.key.as_str()),
            (14, "sync.bogus"),
            "{error}"
        );
        let error = parse(&format!("bogus = 1\n{GOOD}")).expect_err("refused");
        assert_eq!((error.line, error.key.as_str()), (1, "bogus"), "{error}");
        let error = parse(&format!("{GOOD}\n[bogus]\na = 1\n")).expect_err("refused");
        assert_eq!(error.key, "bogus", "{error}");
        // A table inside a section is named once (found in an audit: `sync.extra.extra`).
        let error = parse(&format!("{GOOD}\n[sync.extra]\na = 1\n")).expect_err("refused");
        assert_eq!(error.key, "sync.extra", "{error}");
        // A mirror URL of another database is the job file's error, on its line.
        let error =
            parse(&format!("{GOOD}\n[mirror]\nurl = \"mysql://x\"\n")).expect_err("refused");
        assert_eq!(
            (error.line, error.key.as_str()),
            (20, "mirror.url"),
            "{error}"
        );
        let error = parse(&GOOD.replace("url = \"sqlite://backend.db\"", "")).expect_err("refused");
        assert_eq!(error.key, "source.url", "{error}");
    }

    #[test]
    fn a_missing_job_file_says_so() {
        let error = Job::load(Path::new("/no/such/dir/job.toml")).expect_err("refused");
        assert_eq!(
            error.to_string(),
            "/no/such/dir/job.toml: the job file does not exist"
        );
    }

    #[test]
    fn a_bad_value_is_named_with_its_line() {
        let error = parse(&GOOD.replace("\"delete\"", "\"shred\"")).expect_err("refused");
        assert_eq!(error.line, 12, "{error}");
        assert_eq!(error.key, "sync.on_missing", "{error}");
        assert!(
            error.message.contains("shred") || error.message.contains("variant"),
            "{error}"
        );
        let error =
            parse(&GOOD.replace("batch_size = 500", "batch_size = 5000")).expect_err("refused");
        assert_eq!(
            (error.line, error.key.as_str()),
            (13, "sync.batch_size"),
            "{error}"
        );
        let error = parse(&GOOD.replace("first_name = \"fname\"", "frist_name = \"fname\""))
            .expect_err("refused");
        assert_eq!(
            (error.line, error.key.as_str()),
            (17, "fields.frist_name"),
            "{error}"
        );
    }

    #[test]
    fn table_and_query_exclude_each_other() {
        let error = parse(&GOOD.replace(
            "table = \"people\"",
            "table = \"people\"\nquery = \"SELECT 1\"",
        ))
        .expect_err("refused");
        assert_eq!(error.key, "source.query");
        assert_eq!(error.line, 8);
    }

    #[test]
    fn a_broken_transform_is_refused() {
        let error = parse(&format!("{GOOD}\n[mirror]\nurl = \"sqlite://m.db\"\n")).map(|_| ());
        assert!(error.is_ok());
        let error = parse(&format!("{GOOD}transform = '{{ a: '\n")).expect_err("refused");
        assert_eq!(error.key, "fields.transform", "{error}");
        assert_eq!(error.line, 18, "{error}");
        let job = parse(&format!(
            "{GOOD}transform = '{{ external_id: .person_id }}'\n"
        ))
        .expect("valid");
        assert!(job.transform.is_some());
        assert!(!job.fields.contains_key("transform"));
    }
}
