//! `clientele pull`: follows the change feed into the mirror table. A reader task fetches pages
//! ahead and decodes them straight into mirror rows; the writer applies the pages waiting (one
//! or several) in one transaction with the new feed position, so a killed pull resumes exactly
//! where its last committed page ended. A position the hub no longer keeps (410 `cursor_expired`) is recovered
//! by listing every customer and following the feed from the list's position.

use std::collections::HashMap;

use anyhow::Context;
use clientele_client::{ChangeType, Client, ClientError};
use reqwest::Method;
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::job::Job;
use crate::mirror::{Mirror, MirrorRow, Shadow, content_hash, normalize};
use crate::progress::{Counters, Progress};

/// Feed events per request (the hub's maximum page).
pub const PAGE: u32 = 1000;

/// Pages read ahead of the writer: reading (HTTP and decoding) and writing overlap, and a
/// writer that falls behind finds several pages waiting.
const READ_AHEAD: usize = 4;

/// The most pages applied in one transaction (the ones already waiting, never waiting for more).
const PAGES_PER_TRANSACTION: usize = 8;

/// A feed page, its customers decoded straight into mirror rows.
#[derive(Deserialize)]
struct FeedPage {
    data: Vec<FeedChange>,
    next_after: i64,
}

#[derive(Deserialize)]
struct FeedChange {
    #[serde(rename = "type")]
    kind: ChangeType,
    customer_id: String,
    #[serde(default)]
    customer: Option<MirrorRow>,
}

pub async fn run(
    job: &Job,
    client: &Client,
    progress: &Progress,
    dry_run: bool,
) -> anyhow::Result<()> {
    let section = job.mirror()?;
    let url = job.database_url(&section.url);
    // A dry run changes nothing, not even by creating the mirror.
    let mirror = Mirror::open_for(&url, &section.table, dry_run).await?;
    let mut position = mirror.position().await?;
    let mut pages = read_feed(client, position);
    // A page read while filling a transaction that must wait its turn: the end, or a failure.
    let mut held: Option<PageResult> = None;
    loop {
        let next = match held.take() {
            Some(page) => page,
            None => pages.recv().await.context("the feed reader stopped")?,
        };
        let first = match next {
            Ok(page) => page,
            Err(error) if error.status() == Some(410) && dry_run => {
                println!(
                    "resync: the hub no longer has changes after {position}; a run would reload \
                     every customer"
                );
                return Ok(());
            }
            Err(error) if error.status() == Some(410) => {
                eprintln!(
                    "pull: the hub no longer has changes after {position}; reloading every customer"
                );
                position = resync(&mirror, client, progress).await?;
                pages = read_feed(client, position);
                continue;
            }
            Err(error) => return Err(error).context("cannot read the change feed"),
        };
        if first.data.is_empty() {
            break;
        }
        let mut batch = vec![first];
        while batch.len() < PAGES_PER_TRANSACTION {
            match pages.try_recv() {
                Ok(Ok(page)) if !page.data.is_empty() => batch.push(page),
                Ok(other) => {
                    held = Some(other);
                    break;
                }
                Err(_) => break,
            }
        }
        for page in &batch {
            count(progress, &page.data);
            if dry_run {
                for change in last_per_customer(&page.data, |change| &change.customer_id) {
                    let verb = if change.kind == ChangeType::Deleted {
                        "delete"
                    } else {
                        "upsert"
                    };
                    println!("{verb} {}", change.customer_id);
                }
            }
        }
        position = batch.last().map_or(position, |page| page.next_after);
        if !dry_run {
            apply_pages(&mirror, &batch, position).await?;
        }
        progress.tick();
    }
    Ok(())
}

type PageResult = Result<FeedPage, ClientError>;

/// Reads the feed from `after` on its own task, [`READ_AHEAD`] pages ahead; it stops after an
/// empty page or a failure (both are passed on).
fn read_feed(client: &Client, mut after: i64) -> mpsc::Receiver<PageResult> {
    let (sender, receiver) = mpsc::channel(READ_AHEAD);
    let client = client.clone();
    tokio::spawn(async move {
        loop {
            let path = format!("/v1/changes?after={after}&limit={PAGE}");
            let page = client
                .request::<FeedPage>(Method::GET, &path, None, None)
                .await
                .map(|response| response.body);
            let last = match &page {
                Ok(page) => {
                    after = page.next_after;
                    page.data.is_empty()
                }
                Err(_) => true,
            };
            if sender.send(page).await.is_err() || last {
                return;
            }
        }
    });
    receiver
}

fn count(progress: &Progress, changes: &[FeedChange]) {
    let counters = &progress.counters;
    Counters::add(&counters.rows, changes.len() as u64);
    for change in changes {
        let counter = match change.kind {
            ChangeType::Created => &counters.created,
            ChangeType::Updated => &counters.updated,
            ChangeType::Deleted => &counters.deleted,
        };
        Counters::add(counter, 1);
    }
}

/// The last event of each customer in a page, in feed order: earlier ones are superseded.
pub fn last_per_customer<T>(changes: &[T], customer_id: impl Fn(&T) -> &str) -> Vec<&T> {
    let mut last: HashMap<&str, usize> = HashMap::with_capacity(changes.len());
    for (index, change) in changes.iter().enumerate() {
        last.insert(customer_id(change), index);
    }
    changes
        .iter()
        .enumerate()
        .filter(|(index, change)| last.get(customer_id(change)) == Some(index))
        .map(|(_, change)| change)
        .collect()
}

/// Applies pages of hub changes in feed order, and the feed position after the last one, in
/// one transaction: a killed pull resumes after the last committed page, never in between.
async fn apply_pages(mirror: &Mirror, pages: &[FeedPage], next_after: i64) -> anyhow::Result<()> {
    let mut tx = mirror.begin().await?;
    for page in pages {
        let mut deleted = Vec::new();
        let mut rows = Vec::new();
        for change in last_per_customer(&page.data, |change| &change.customer_id) {
            match (&change.kind, &change.customer) {
                (ChangeType::Deleted, _) | (_, None) => deleted.push(change.customer_id.as_str()),
                (_, Some(row)) => rows.push(row),
            }
        }
        mirror.delete(&mut tx, &deleted).await?;
        mirror.upsert_rows(&mut tx, &rows).await?;
    }
    mirror.set_position(&mut tx, next_after).await?;
    tx.commit().await?;
    Ok(())
}

/// The shadow entries for customers as the hub sent them.
pub fn shadows_of(customers: &[&Value]) -> Vec<(String, Shadow)> {
    customers
        .iter()
        .filter_map(|customer| {
            let object = customer.as_object()?;
            let id = object.get("id")?.as_str()?.to_owned();
            let version = object.get("version")?.as_i64()?;
            Some((
                id,
                Shadow {
                    version,
                    hash: content_hash(&normalize(object)),
                },
            ))
        })
        .collect()
}

/// A page of the customer list, as a resync reads it.
#[derive(Deserialize)]
struct ListPage {
    data: Vec<Value>,
    next_cursor: Option<String>,
    /// The feed position to follow from once the list is read (the first page's counts).
    #[serde(default)]
    feed_position: i64,
}

/// The page of the customer list after `cursor` (the first page without one).
async fn list_page(client: &Client, cursor: Option<&str>) -> anyhow::Result<ListPage> {
    let path = match cursor {
        Some(cursor) => format!(
            "/v1/customers?limit=1000&cursor={}",
            clientele_client::encode_segment(cursor)
        ),
        None => "/v1/customers?limit=1000".to_owned(),
    };
    client
        .request::<ListPage>(Method::GET, &path, None, None)
        .await
        .map(|reply| reply.body)
        .map_err(|error: ClientError| anyhow::anyhow!(error))
        .context("cannot list customers to resync")
}

/// Reads the customer list page by page, handing each page's customers to `apply`; returns the
/// feed position to follow from afterwards (the first page's, per the hub's resync rule) and
/// the ids listed, for [`end_resync`].
pub async fn read_list(
    client: &Client,
    mut apply: impl AsyncFnMut(Vec<Value>) -> anyhow::Result<()>,
) -> anyhow::Result<(i64, Vec<String>)> {
    let mut cursor: Option<String> = None;
    let mut start: Option<i64> = None;
    let mut listed: Vec<String> = Vec::new();
    loop {
        let page = list_page(client, cursor.as_deref()).await?;
        start.get_or_insert(page.feed_position);
        listed.extend(
            page.data
                .iter()
                .filter_map(|customer| customer["id"].as_str().map(str::to_owned)),
        );
        apply(page.data).await?;
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => return Ok((start.unwrap_or(0), listed)),
        }
    }
}

/// The end of a resync, in one transaction: the mirror rows with an id the list did not hold
/// are deleted (never a local insert, which has no id yet), and the feed position becomes the
/// list's. Returns how many rows were deleted. A resync killed before has not moved the
/// position, so the next run resyncs again.
pub async fn end_resync(mirror: &Mirror, listed: &[String], position: i64) -> anyhow::Result<u64> {
    let mut tx = mirror.begin().await?;
    let deleted = mirror.delete_except(&mut tx, listed).await?;
    mirror.set_position(&mut tx, position).await?;
    tx.commit().await?;
    Ok(deleted as u64)
}

/// Reloads the mirror from the customer list, removes rows the hub no longer has, and returns
/// the feed position to follow from. Counts what it changed as a feed would have: rows new to
/// the mirror created, rows whose hub version moved updated, the rest unchanged. Every listed
/// row is written again all the same, so a mirror row lost or touched locally is restored.
async fn resync(mirror: &Mirror, client: &Client, progress: &Progress) -> anyhow::Result<i64> {
    let counters = &progress.counters;
    let (position, listed) = read_list(client, async |customers: Vec<Value>| {
        let ids: Vec<&str> = customers.iter().filter_map(|c| c["id"].as_str()).collect();
        let held = mirror.rows_by_id(&ids).await?;
        for customer in &customers {
            let row = customer["id"].as_str().and_then(|id| held.get(id));
            let counter = match row.map(|row| row.fields.get("version")) {
                None => &counters.created,
                Some(version) if version == customer.get("version") => &counters.unchanged,
                Some(_) => &counters.updated,
            };
            Counters::add(counter, 1);
        }
        Counters::add(&counters.rows, customers.len() as u64);
        let customers: Vec<&Value> = customers.iter().collect();
        let mut tx = mirror.begin().await?;
        mirror.upsert(&mut tx, &customers).await?;
        mirror.set_shadows(&mut tx, &shadows_of(&customers)).await?;
        tx.commit().await?;
        progress.tick();
        Ok(())
    })
    .await?;
    let deleted = end_resync(mirror, &listed, position).await?;
    Counters::add(&counters.deleted, deleted);
    Ok(position)
}
