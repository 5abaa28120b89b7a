//! `clientele pull`: follows the change feed into the mirror table. Each feed page is applied in
//! one transaction with the new feed position, so a killed pull resumes exactly where its last
//! committed page ended. A position the hub no longer keeps (410 `cursor_expired`) is recovered
//! by listing every customer and following the feed from the list's position.

use std::collections::HashMap;

use anyhow::Context;
use clientele_client::{Change, ChangeType, Client, ClientError};
use reqwest::Method;
use serde_json::Value;

use crate::job::Job;
use crate::mirror::{Mirror, Shadow, content_hash, normalize};
use crate::progress::{Counters, Progress};

/// Feed events per request (the hub's maximum page).
pub const PAGE: u32 = 1000;

pub async fn run(
    job: &Job,
    client: &Client,
    progress: &Progress,
    dry_run: bool,
) -> anyhow::Result<()> {
    let section = job.mirror()?;
    let mirror = Mirror::open(&job.database_url(&section.url), &section.table).await?;
    let mut position = mirror.position().await?;
    // One page ahead: the next page is on its way while this one is written.
    let mut next = prefetch(client, position);
    loop {
        let page = match next.await.context("the feed reader stopped")? {
            Ok(page) => page,
            Err(error) if error.status() == Some(410) && !dry_run => {
                eprintln!(
                    "pull: the hub no longer has changes after {position}; reloading every customer"
                );
                position = resync(&mirror, client, progress).await?;
                next = prefetch(client, position);
                continue;
            }
            Err(error) => return Err(error).context("cannot read the change feed"),
        };
        if page.data.is_empty() {
            break;
        }
        next = prefetch(client, page.next_after);
        count(progress, &page.data);
        if dry_run {
            for change in last_per_customer(&page.data) {
                let verb = if change.kind == ChangeType::Deleted {
                    "delete"
                } else {
                    "upsert"
                };
                println!("{verb} {}", change.customer_id);
            }
        } else {
            apply_page(&mirror, &page.data, page.next_after, false).await?;
        }
        position = page.next_after;
        progress.tick();
    }
    Ok(())
}

fn prefetch(
    client: &Client,
    after: i64,
) -> tokio::task::JoinHandle<Result<clientele_client::ChangePage, ClientError>> {
    let client = client.clone();
    tokio::spawn(async move { client.changes(after, PAGE, None).await })
}

fn count(progress: &Progress, changes: &[Change]) {
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
pub fn last_per_customer(changes: &[Change]) -> Vec<&Change> {
    let mut last: HashMap<&str, usize> = HashMap::with_capacity(changes.len());
    for (index, change) in changes.iter().enumerate() {
        last.insert(change.customer_id.as_str(), index);
    }
    changes
        .iter()
        .enumerate()
        .filter(|(index, change)| last.get(change.customer_id.as_str()) == Some(index))
        .map(|(_, change)| change)
        .collect()
}

/// Applies a page of hub changes as they are (rows, optionally their shadows) and the feed
/// position, in one transaction.
pub async fn apply_page(
    mirror: &Mirror,
    changes: &[Change],
    next_after: i64,
    with_shadows: bool,
) -> anyhow::Result<()> {
    let mut deleted = Vec::new();
    let mut customers = Vec::new();
    for change in last_per_customer(changes) {
        match (&change.kind, &change.customer) {
            (ChangeType::Deleted, _) | (_, None) => deleted.push(change.customer_id.as_str()),
            (_, Some(customer)) => customers.push(customer),
        }
    }
    let mut tx = mirror.begin().await?;
    mirror.delete(&mut tx, &deleted).await?;
    mirror.upsert(&mut tx, &customers).await?;
    if with_shadows {
        mirror.set_shadows(&mut tx, &shadows_of(&customers)).await?;
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

/// Reloads the mirror from the customer list, removes rows the hub no longer has, and returns
/// the feed position to follow from (the first page's, per the hub's resync rule).
async fn resync(mirror: &Mirror, client: &Client, progress: &Progress) -> anyhow::Result<i64> {
    let mut cursor: Option<String> = None;
    let mut start: Option<i64> = None;
    let mut listed: Vec<String> = Vec::new();
    loop {
        let path = match &cursor {
            Some(cursor) => format!(
                "/v1/customers?limit=1000&cursor={}",
                clientele_client::encode_segment(cursor)
            ),
            None => "/v1/customers?limit=1000".to_owned(),
        };
        let page = client
            .request::<Value>(Method::GET, &path, None, None)
            .await
            .map_err(|error: ClientError| anyhow::anyhow!(error))
            .context("cannot list customers to resync")?
            .body;
        if start.is_none() {
            start = Some(page["feed_position"].as_i64().unwrap_or(0));
        }
        let customers: Vec<&Value> = page["data"]
            .as_array()
            .map(|data| data.iter().collect())
            .unwrap_or_default();
        listed.extend(
            customers
                .iter()
                .filter_map(|c| c["id"].as_str().map(str::to_owned)),
        );
        Counters::add(&progress.counters.rows, customers.len() as u64);
        let mut tx = mirror.begin().await?;
        mirror.upsert(&mut tx, &customers).await?;
        mirror.set_shadows(&mut tx, &shadows_of(&customers)).await?;
        tx.commit().await?;
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    let position = start.unwrap_or(0);
    let mut tx = mirror.begin().await?;
    mirror.delete_except(&mut tx, &listed).await?;
    mirror.set_position(&mut tx, position).await?;
    tx.commit().await?;
    Ok(position)
}
