//! Where push reads rows: a SQLite or PostgreSQL table or query, a CSV file or a JSONL file.
//! Rows are streamed in small chunks through a bounded channel, so memory stays flat whatever
//! the source's size.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, anyhow};
use futures::TryStreamExt;
use serde_json::{Map, Value};
use tokio::sync::mpsc;

use crate::job::Job;

mod exact_number;
mod jsonl_line;
use exact_number::ExactColumns;
use jsonl_line::JsonlLine;

/// One source row: its 1-based position in the source, and its values by column. Rows of a
/// table share one list of column names, so a row costs its values only.
#[derive(Debug, Clone)]
pub struct SourceRow {
    pub number: u64,
    pub names: Arc<[String]>,
    pub values: Vec<Value>,
    /// Why the source refuses this record, which goes to the report as `invalid_row`: a JSONL
    /// line that is not a JSON object (a row without columns), or one that names a field twice
    /// (a row that keeps its key, so its customer counts as still in the source).
    pub invalid: Option<String>,
}

impl SourceRow {
    /// A row of a source whose rows each name their own columns (JSONL, PostgreSQL).
    pub fn from_map(number: u64, columns: Map<String, Value>) -> SourceRow {
        let (names, values): (Vec<String>, Vec<Value>) = columns.into_iter().unzip();
        SourceRow {
            number,
            names: names.into(),
            values,
            invalid: None,
        }
    }

    pub fn get(&self, name: &str) -> Option<&Value> {
        let index = self.names.iter().position(|column| column == name)?;
        self.values.get(index)
    }

    /// The row as a JSON object (a later column wins over an earlier one of the same name).
    pub fn into_map(self) -> Map<String, Value> {
        self.names.iter().cloned().zip(self.values).collect()
    }

    /// `(name, value)` in column order.
    pub fn columns(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.names.iter().map(String::as_str).zip(&self.values)
    }
}

pub type Chunk = anyhow::Result<Vec<SourceRow>>;

const CHUNK_ROWS: usize = 512;
const CHANNEL_CHUNKS: usize = 8;

#[derive(Debug, Clone)]
pub enum Source {
    Sqlite { url: String, query: String },
    Postgres { url: String, query: String },
    Csv(PathBuf),
    Jsonl(PathBuf),
}

impl Source {
    pub fn from_job(job: &Job) -> anyhow::Result<Source> {
        let section = job.source()?;
        let url = section.url.as_str();
        let query = match (&section.table, &section.query) {
            (Some(table), _) => format!("SELECT * FROM {table}"),
            // One statement, as the source reads it inside another (a subquery on PostgreSQL).
            (None, Some(query)) => query.trim().trim_end_matches(';').trim_end().to_owned(),
            (None, None) => String::new(),
        };
        let lower = url.to_ascii_lowercase();
        Ok(if lower.starts_with("sqlite:") {
            Source::Sqlite {
                url: job.database_url(url),
                query,
            }
        } else if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
            Source::Postgres {
                url: url.to_owned(),
                query,
            }
        } else if lower.ends_with(".csv") {
            Source::Csv(job.resolve(url))
        } else if lower.ends_with(".jsonl") || lower.ends_with(".ndjson") {
            Source::Jsonl(job.resolve(url))
        } else {
            return Err(job
                .error(
                    "source",
                    "url",
                    "must be sqlite://PATH, postgres://..., or a path ending .csv or .jsonl",
                )
                .into());
        })
    }

    /// The source's columns, where the source has a fixed set of them: a SQLite or PostgreSQL
    /// table or query (from the prepared statement, without reading a row) or a CSV file (its
    /// header). `None` for JSONL, whose lines each name their own.
    pub async fn columns(&self) -> anyhow::Result<Option<Vec<String>>> {
        match self {
            Source::Sqlite { url, query } => {
                let (url, query) = (url.clone(), query.clone());
                tokio::task::spawn_blocking(move || {
                    let conn = open_sqlite(&url)?;
                    let statement = conn
                        .prepare(&query)
                        .with_context(|| format!("the source query failed ({query})"))?;
                    Ok(Some(
                        statement
                            .column_names()
                            .into_iter()
                            .map(str::to_owned)
                            .collect(),
                    ))
                })
                .await?
            }
            Source::Postgres { url, query } => {
                use sqlx::{Column, Executor, Statement};
                let pool = connect_postgres(url).await?;
                let statement = (&pool)
                    .prepare(query.as_str())
                    .await
                    .with_context(|| format!("the source query failed ({query})"))?;
                let names = statement
                    .columns()
                    .iter()
                    .map(|column| column.name().to_owned())
                    .collect();
                pool.close().await;
                Ok(Some(names))
            }
            Source::Csv(path) => {
                let mut reader = csv::Reader::from_path(path)
                    .with_context(|| format!("cannot open the CSV source {}", path.display()))?;
                let names = reader
                    .headers()
                    .with_context(|| format!("{}: bad CSV header", path.display()))?
                    .iter()
                    .map(str::to_owned)
                    .collect();
                Ok(Some(names))
            }
            Source::Jsonl(_) => Ok(None),
        }
    }

    /// Starts reading; chunks arrive on the receiver, a failure arrives as an `Err` and ends it.
    pub fn stream(&self) -> mpsc::Receiver<Chunk> {
        let (sender, receiver) = mpsc::channel(CHANNEL_CHUNKS);
        let source = self.clone();
        tokio::spawn(async move {
            let outcome = match &source {
                Source::Sqlite { url, query } => {
                    let (url, query) = (url.clone(), query.clone());
                    let blocking_sender = sender.clone();
                    tokio::task::spawn_blocking(move || read_sqlite(&url, &query, &blocking_sender))
                        .await
                        .map_err(|error| anyhow!(error))
                        .and_then(|result| result)
                }
                Source::Postgres { url, query } => read_postgres(url, query, &sender).await,
                Source::Csv(path) => {
                    let path = path.clone();
                    let blocking_sender = sender.clone();
                    tokio::task::spawn_blocking(move || read_csv(&path, &blocking_sender))
                        .await
                        .map_err(|error| anyhow!(error))
                        .and_then(|result| result)
                }
                Source::Jsonl(path) => {
                    let path = path.clone();
                    let blocking_sender = sender.clone();
                    tokio::task::spawn_blocking(move || read_jsonl(&path, &blocking_sender))
                        .await
                        .map_err(|error| anyhow!(error))
                        .and_then(|result| result)
                }
            };
            if let Err(error) = outcome {
                let _ = sender.send(Err(error)).await;
            }
        });
        receiver
    }
}

/// Collects rows into chunks and hands full ones to the channel.
struct Chunker<'a> {
    sender: &'a mpsc::Sender<Chunk>,
    rows: Vec<SourceRow>,
    number: u64,
}

impl<'a> Chunker<'a> {
    fn new(sender: &'a mpsc::Sender<Chunk>) -> Self {
        Chunker {
            sender,
            rows: Vec::with_capacity(CHUNK_ROWS),
            number: 0,
        }
    }

    /// Adds a row; returns the chunk it filled, if it filled one.
    fn add(&mut self, names: &Arc<[String]>, values: Vec<Value>) -> Option<Vec<SourceRow>> {
        self.add_row(names.clone(), values, None)
    }

    fn add_row(
        &mut self,
        names: Arc<[String]>,
        values: Vec<Value>,
        invalid: Option<String>,
    ) -> Option<Vec<SourceRow>> {
        self.number += 1;
        self.rows.push(SourceRow {
            number: self.number,
            names,
            values,
            invalid,
        });
        (self.rows.len() >= CHUNK_ROWS)
            .then(|| std::mem::replace(&mut self.rows, Vec::with_capacity(CHUNK_ROWS)))
    }

    /// `false` when the reader went away (nothing more is wanted).
    async fn push(&mut self, names: &Arc<[String]>, values: Vec<Value>) -> bool {
        match self.add(names, values) {
            Some(full) => self.sender.send(Ok(full)).await.is_ok(),
            None => true,
        }
    }

    /// [`Chunker::push`] for readers on a blocking thread.
    fn push_blocking(&mut self, names: &Arc<[String]>, values: Vec<Value>) -> bool {
        let full = self.add(names, values);
        self.send_blocking(full)
    }

    /// A record that is no row: it keeps its place (its row number) and says what is wrong.
    fn push_invalid_blocking(&mut self, why: String) -> bool {
        let full = self.add_row(Arc::from([]), Vec::new(), Some(why));
        self.send_blocking(full)
    }

    /// A row that is read but refused: it keeps its columns (and so its key, which counts as
    /// seen in this run) and says what is wrong.
    fn push_refused_blocking(
        &mut self,
        names: Arc<[String]>,
        values: Vec<Value>,
        why: String,
    ) -> bool {
        let full = self.add_row(names, values, Some(why));
        self.send_blocking(full)
    }

    fn send_blocking(&mut self, full: Option<Vec<SourceRow>>) -> bool {
        match full {
            Some(full) => self.sender.blocking_send(Ok(full)).is_ok(),
            None => true,
        }
    }

    async fn finish(self) {
        if !self.rows.is_empty() {
            let _ = self.sender.send(Ok(self.rows)).await;
        }
    }

    fn finish_blocking(self) {
        if !self.rows.is_empty() {
            let _ = self.sender.blocking_send(Ok(self.rows));
        }
    }
}

fn open_sqlite(url: &str) -> anyhow::Result<rusqlite::Connection> {
    let path = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:");
    let path = path.split('?').next().unwrap_or(path);
    // Read-only: a mistyped path must not create an empty database that then "has no rows".
    rusqlite::Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("cannot open the SQLite source {url}"))
}

async fn connect_postgres(url: &str) -> anyhow::Result<sqlx::PgPool> {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .context("cannot connect to the PostgreSQL source")
}

/// Read with rusqlite on a blocking thread: one row at a time straight from SQLite, with no
/// per-row hand-off between threads (sqlx's SQLite worker costs more than the row itself here).
fn read_sqlite(url: &str, query: &str, sender: &mpsc::Sender<Chunk>) -> anyhow::Result<()> {
    use rusqlite::types::ValueRef as Raw;
    let conn = open_sqlite(url)?;
    let mut statement = conn
        .prepare(query)
        .with_context(|| format!("the source query failed ({query})"))?;
    let names: Arc<[String]> = statement
        .column_names()
        .into_iter()
        .map(str::to_owned)
        .collect();
    let mut rows = statement
        .query([])
        .with_context(|| format!("the source query failed ({query})"))?;
    let mut chunker = Chunker::new(sender);
    while let Some(row) = rows
        .next()
        .with_context(|| format!("the source query failed ({query})"))?
    {
        let mut values = Vec::with_capacity(names.len());
        for index in 0..names.len() {
            // SQLite types each value, not each column: the value's own storage class decides.
            let value = match row.get_ref(index)? {
                Raw::Null => Value::Null,
                Raw::Integer(number) => Value::from(number),
                Raw::Real(number) => serde_json::Number::from_f64(number)
                    .map(Value::Number)
                    .unwrap_or(Value::Null),
                Raw::Text(bytes) | Raw::Blob(bytes) => {
                    Value::String(String::from_utf8_lossy(bytes).into_owned())
                }
            };
            values.push(value);
        }
        if !chunker.push_blocking(&names, values) {
            return Ok(());
        }
    }
    chunker.finish_blocking();
    Ok(())
}

async fn read_postgres(url: &str, query: &str, sender: &mpsc::Sender<Chunk>) -> anyhow::Result<()> {
    let pool = connect_postgres(url).await?;
    // row_to_json gives every PostgreSQL type its JSON form without a decoder per type.
    let wrapped = format!("SELECT row_to_json(source_row)::text FROM ({query}) AS source_row");
    let mut chunker = Chunker::new(sender);
    {
        let mut rows = sqlx::query_scalar::<_, String>(&wrapped).fetch(&pool);
        while let Some(text) = rows
            .try_next()
            .await
            .with_context(|| format!("the source query failed ({query})"))?
        {
            let ExactColumns(columns) = serde_json::from_str(&text)?;
            let (names, values): (Vec<String>, Vec<Value>) = columns.into_iter().unzip();
            if !chunker.push(&names.into(), values).await {
                return Ok(());
            }
        }
    }
    chunker.finish().await;
    pool.close().await;
    Ok(())
}

fn read_csv(path: &PathBuf, sender: &mpsc::Sender<Chunk>) -> anyhow::Result<()> {
    // Flexible, and read as bytes: a record with another number of cells than the header, or
    // one that is not UTF-8, is one refused row, not a broken file. It keeps the cells it has
    // (decoded with replacement characters where they are not UTF-8), so its key still counts
    // as seen: a bad byte in a name must not make its customer look gone from the source.
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(path)
        .with_context(|| format!("cannot open the CSV source {}", path.display()))?;
    let names: Arc<[String]> = reader.headers()?.iter().map(str::to_owned).collect();
    let mut chunker = Chunker::new(sender);
    let mut record = csv::ByteRecord::new();
    while reader
        .read_byte_record(&mut record)
        .with_context(|| format!("{}: bad CSV", path.display()))?
    {
        let line = record.position().map_or(0, csv::Position::line);
        let (values, not_utf8) = csv_values(&record, names.len());
        let more = if let Some(error) = not_utf8 {
            let why = format!("line {line} is not valid UTF-8 ({error})");
            chunker.push_refused_blocking(names.clone(), values, why)
        } else if record.len() != names.len() {
            let why = format!(
                "line {line} has {} cells where the header has {}",
                record.len(),
                names.len()
            );
            chunker.push_refused_blocking(names.clone(), values, why)
        } else {
            chunker.push_blocking(&names, values)
        };
        if !more {
            return Ok(());
        }
    }
    chunker.finish_blocking();
    Ok(())
}

/// A CSV record's cells, at most `columns` of them (an empty cell is an unset value, not an
/// empty string), and the first UTF-8 error among them: such a cell is decoded with
/// replacement characters.
fn csv_values(
    record: &csv::ByteRecord,
    columns: usize,
) -> (Vec<Value>, Option<std::str::Utf8Error>) {
    let mut not_utf8 = None;
    let values = record
        .iter()
        .take(columns)
        .map(|cell| {
            let text = match std::str::from_utf8(cell) {
                Ok(text) => text.to_owned(),
                Err(error) => {
                    not_utf8.get_or_insert(error);
                    String::from_utf8_lossy(cell).into_owned()
                }
            };
            if text.is_empty() {
                Value::Null
            } else {
                Value::String(text)
            }
        })
        .collect();
    (values, not_utf8)
}

fn read_jsonl(path: &PathBuf, sender: &mpsc::Sender<Chunk>) -> anyhow::Result<()> {
    use std::io::BufRead;
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot open the JSONL source {}", path.display()))?;
    let mut reader = std::io::BufReader::new(file);
    let mut chunker = Chunker::new(sender);
    // Lines are read as bytes: one that is not UTF-8 is a bad row, not the end of the run.
    let mut bytes = Vec::new();
    let mut line_number = 0usize;
    loop {
        bytes.clear();
        if reader
            .read_until(b'\n', &mut bytes)
            .with_context(|| format!("cannot read the JSONL source {}", path.display()))?
            == 0
        {
            break;
        }
        line_number += 1;
        let raw = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let (line, not_utf8) = match std::str::from_utf8(raw) {
            Ok(line) => (std::borrow::Cow::Borrowed(line), None),
            // Parsed all the same, so that the refused row keeps its key.
            Err(error) => (String::from_utf8_lossy(raw), Some(error)),
        };
        if line.trim().is_empty() {
            continue;
        }
        // A line that is not an object is a bad row, not a broken file: its key is unknown, so
        // it reaches the report with its row number, and its line number in the message.
        let more = match (JsonlLine::parse(&line), not_utf8) {
            (Ok(JsonlLine::Object(columns)), None) => {
                let (names, values): (Vec<String>, Vec<Value>) = columns.into_iter().unzip();
                chunker.push_blocking(&names.into(), values)
            }
            (Ok(JsonlLine::Object(fields)), Some(error)) => {
                let (names, values): (Vec<String>, Vec<Value>) = fields.into_iter().unzip();
                let why = format!("line {line_number} is not valid UTF-8 ({error})");
                chunker.push_refused_blocking(names.into(), values, why)
            }
            (Ok(JsonlLine::RepeatedField { name, fields }), _) => {
                let (names, values): (Vec<String>, Vec<Value>) = fields.into_iter().unzip();
                let why = format!("line {line_number} names the field `{name}` more than once");
                chunker.push_refused_blocking(names.into(), values, why)
            }
            (_, Some(error)) => chunker
                .push_invalid_blocking(format!("line {line_number} is not valid UTF-8 ({error})")),
            (Ok(JsonlLine::NotAnObject(kind)), None) => chunker
                .push_invalid_blocking(format!("line {line_number} is not an object but {kind}")),
            (Err(error), None) => chunker
                .push_invalid_blocking(format!("line {line_number} is not valid JSON: {error}")),
        };
        if !more {
            return Ok(());
        }
    }
    chunker.finish_blocking();
    Ok(())
}
