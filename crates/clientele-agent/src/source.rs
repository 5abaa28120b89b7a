//! Where push reads rows: a SQLite or PostgreSQL table or query, a CSV file or a JSONL file.
//! Rows are streamed in small chunks through a bounded channel, so memory stays flat whatever
//! the source's size.

use std::path::PathBuf;
use std::str::FromStr;

use anyhow::{Context, anyhow};
use futures::TryStreamExt;
use serde_json::{Map, Value};
use sqlx::{Column, Row, TypeInfo, ValueRef};
use tokio::sync::mpsc;

use crate::job::Job;

/// One source row: its 1-based position in the source, and its columns.
#[derive(Debug)]
pub struct SourceRow {
    pub number: u64,
    pub columns: Map<String, Value>,
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
            (None, Some(query)) => query.clone(),
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

    /// Starts reading; chunks arrive on the receiver, a failure arrives as an `Err` and ends it.
    pub fn stream(&self) -> mpsc::Receiver<Chunk> {
        let (sender, receiver) = mpsc::channel(CHANNEL_CHUNKS);
        let source = self.clone();
        tokio::spawn(async move {
            let outcome = match &source {
                Source::Sqlite { url, query } => read_sqlite(url, query, &sender).await,
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

    /// `false` when the reader went away (nothing more is wanted).
    async fn push(&mut self, columns: Map<String, Value>) -> bool {
        self.number += 1;
        self.rows.push(SourceRow {
            number: self.number,
            columns,
        });
        if self.rows.len() < CHUNK_ROWS {
            return true;
        }
        let full = std::mem::replace(&mut self.rows, Vec::with_capacity(CHUNK_ROWS));
        self.sender.send(Ok(full)).await.is_ok()
    }

    fn push_blocking(&mut self, columns: Map<String, Value>) -> bool {
        self.number += 1;
        self.rows.push(SourceRow {
            number: self.number,
            columns,
        });
        if self.rows.len() < CHUNK_ROWS {
            return true;
        }
        let full = std::mem::replace(&mut self.rows, Vec::with_capacity(CHUNK_ROWS));
        self.sender.blocking_send(Ok(full)).is_ok()
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

async fn read_sqlite(url: &str, query: &str, sender: &mpsc::Sender<Chunk>) -> anyhow::Result<()> {
    // Read-only: a mistyped path must not create an empty database that then "has no rows".
    let options = sqlx::sqlite::SqliteConnectOptions::from_str(url)
        .with_context(|| format!("bad SQLite source URL {url}"))?
        .read_only(true);
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .with_context(|| format!("cannot open the SQLite source {url}"))?;
    let mut chunker = Chunker::new(sender);
    {
        let mut rows = sqlx::query(query).fetch(&pool);
        while let Some(row) = rows
            .try_next()
            .await
            .with_context(|| format!("the source query failed ({query})"))?
        {
            if !chunker.push(sqlite_columns(&row)?).await {
                return Ok(());
            }
        }
    }
    chunker.finish().await;
    pool.close().await;
    Ok(())
}

/// SQLite types each value, not each column: the value's own storage class decides.
fn sqlite_columns(row: &sqlx::sqlite::SqliteRow) -> anyhow::Result<Map<String, Value>> {
    let mut columns = Map::new();
    for (index, column) in row.columns().iter().enumerate() {
        let raw = row.try_get_raw(index)?;
        let value = if raw.is_null() {
            Value::Null
        } else {
            match raw.type_info().name() {
                "INTEGER" => Value::from(row.try_get::<i64, _>(index)?),
                "REAL" => serde_json::Number::from_f64(row.try_get::<f64, _>(index)?)
                    .map(Value::Number)
                    .unwrap_or(Value::Null),
                "BLOB" => Value::String(
                    String::from_utf8_lossy(&row.try_get::<Vec<u8>, _>(index)?).into_owned(),
                ),
                _ => Value::String(row.try_get::<String, _>(index)?),
            }
        };
        columns.insert(column.name().to_owned(), value);
    }
    Ok(columns)
}

async fn read_postgres(url: &str, query: &str, sender: &mpsc::Sender<Chunk>) -> anyhow::Result<()> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .context("cannot connect to the PostgreSQL source")?;
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
            let columns: Map<String, Value> = serde_json::from_str(&text)?;
            if !chunker.push(columns).await {
                return Ok(());
            }
        }
    }
    chunker.finish().await;
    pool.close().await;
    Ok(())
}

fn read_csv(path: &PathBuf, sender: &mpsc::Sender<Chunk>) -> anyhow::Result<()> {
    let mut reader = csv::Reader::from_path(path)
        .with_context(|| format!("cannot open the CSV source {}", path.display()))?;
    let headers = reader.headers()?.clone();
    let mut chunker = Chunker::new(sender);
    let mut record = csv::StringRecord::new();
    while reader
        .read_record(&mut record)
        .with_context(|| format!("{}: bad CSV", path.display()))?
    {
        // An empty CSV cell is an unset value, not an empty string.
        let columns = headers
            .iter()
            .zip(record.iter())
            .map(|(name, cell)| {
                let value = if cell.is_empty() {
                    Value::Null
                } else {
                    Value::String(cell.to_owned())
                };
                (name.to_owned(), value)
            })
            .collect();
        if !chunker.push_blocking(columns) {
            return Ok(());
        }
    }
    chunker.finish_blocking();
    Ok(())
}

fn read_jsonl(path: &PathBuf, sender: &mpsc::Sender<Chunk>) -> anyhow::Result<()> {
    use std::io::BufRead;
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot open the JSONL source {}", path.display()))?;
    let mut chunker = Chunker::new(sender);
    for (index, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let columns = match serde_json::from_str::<Value>(&line) {
            Ok(Value::Object(object)) => object,
            // A line that is not an object is a bad row, not a broken file: its key is unknown,
            // so it reaches the report with its line number only.
            _ => {
                let mut bad = Map::new();
                bad.insert(
                    "$invalid_line".into(),
                    Value::String(format!("line {} is not a JSON object", index + 1)),
                );
                bad
            }
        };
        if !chunker.push_blocking(columns) {
            return Ok(());
        }
    }
    chunker.finish_blocking();
    Ok(())
}
