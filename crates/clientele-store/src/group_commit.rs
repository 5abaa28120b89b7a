//! Group commit for single creates: concurrent `POST /v1/customers` requests of one hub process
//! are written together, in one transaction with multi-row statements.
//!
//! A create costs a handful of statements, and on SQLite every statement is a hand-off to the
//! writer connection's thread and back; with one writer, those hand-offs — not the disk — bounded
//! single creates to about a thousand a second. Each store has one *create writer*, a task that
//! takes every create queued so far and writes them as one group, the way bulk sync writes a
//! batch, while the next ones queue. The writer is a task of its own, not one of the requests:
//! a request that is cancelled (its client gone) cannot abandon the creates of others.
//!
//! Each create still gets exactly the answer it would get alone: one that fails validation or
//! claims a key taken (in the database or by an earlier create of the group) fails on its own;
//! if the group as a whole loses a race (a key taken at that moment by another hub process, a
//! deadlock broken by PostgreSQL), every create of it runs again on its own, through the
//! single-write path.

use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use clientele_domain::group::named_codes;
use clientele_domain::schema::Schema;
use clientele_domain::sync::ChangeRecord;
use clientele_domain::write::{Applied, ApplyContext};
use clientele_domain::{
    ChangeKind, Customer, CustomerKey, DomainError, GroupCommitStats, Patch, Timestamp,
    WriteCommand, WriteOutcome, WriteTarget,
};
use futures::FutureExt;
use tokio::sync::{mpsc, oneshot};

use crate::directory::DirectoryTx;
use crate::error::is_transient;
use crate::primitives::{BatchTx, CustomerRow, CustomerTx};
use crate::schema_store;
use crate::sql_store::Backend;
use crate::unit_of_work;

/// Most creates written in one group: bounds one transaction's size and the wait of the first.
const MAX_GROUP: usize = 256;

type Answer = Result<(WriteOutcome, Customer), DomainError>;

struct Job {
    command: WriteCommand,
    answer: oneshot::Sender<Answer>,
}

/// Whether a write may join a group: a plain create, answered by its outcome alone. Creates with
/// an idempotency record to complete or a version precondition take the single-write path.
pub(crate) fn groupable(command: &WriteCommand, has_completion: bool) -> bool {
    matches!(command.target, WriteTarget::Create)
        && command.precondition.is_none()
        && !has_completion
}

/// How many groups were written and how many creates they held, for `/metrics`.
#[derive(Default)]
struct Counters {
    groups: AtomicU64,
    creates: AtomicU64,
}

/// The queue of a store's create writer. Dropping it lets the writer finish what is queued
/// and stop.
pub(crate) struct CreateWriter {
    jobs: mpsc::UnboundedSender<Job>,
    counters: Arc<Counters>,
}

impl CreateWriter {
    /// Starts the writer of `backend`'s creates, a task on the current runtime.
    pub(crate) fn start<B: Backend>(backend: Arc<B>) -> Self {
        let (jobs, queue) = mpsc::unbounded_channel();
        let counters = Arc::new(Counters::default());
        tokio::spawn(run(backend, queue, Arc::clone(&counters)));
        Self { jobs, counters }
    }

    /// Creates one customer, written together with whatever other creates are queued.
    pub(crate) async fn create(&self, command: WriteCommand) -> Answer {
        let (answer, answered) = oneshot::channel();
        if self.jobs.send(Job { command, answer }).is_err() {
            // Never queued, so never written.
            return Err(DomainError::Unavailable(
                "the create writer has stopped".into(),
            ));
        }
        answered.await.unwrap_or_else(|_| Err(abandoned()))
    }

    pub(crate) fn stats(&self) -> GroupCommitStats {
        GroupCommitStats {
            groups: self.counters.groups.load(Ordering::Relaxed),
            creates: self.counters.creates.load(Ordering::Relaxed),
        }
    }
}

/// The answer of a create whose group write stopped before answering: perhaps after its commit.
fn abandoned() -> DomainError {
    DomainError::Storage("the group write of this create was abandoned".into()).commit_unconfirmed()
}

/// The create writer: each round takes every queued create and writes them as one group.
async fn run<B: Backend>(
    backend: Arc<B>,
    mut queue: mpsc::UnboundedReceiver<Job>,
    counters: Arc<Counters>,
) {
    while let Some(first) = queue.recv().await {
        let mut group = vec![first];
        take_queued(&mut queue, &mut group);
        // A panic (a bug) while writing a group drops the group's answers — each of its creates
        // fails as abandoned, as a panicking request would — but must not stop the writer, or
        // every later create would fail too.
        let written = AssertUnwindSafe(write_group(&*backend, &mut queue, group, &counters))
            .catch_unwind()
            .await;
        if written.is_err() {
            tracing::error!("a group of creates panicked; its creates were answered as abandoned");
        }
    }
}

/// Moves queued creates into `group` until it holds [`MAX_GROUP`]; whether any came.
fn take_queued(queue: &mut mpsc::UnboundedReceiver<Job>, group: &mut Vec<Job>) -> bool {
    let before = group.len();
    while group.len() < MAX_GROUP {
        match queue.try_recv() {
            Ok(job) => group.push(job),
            Err(_) => break,
        }
    }
    group.len() > before
}

/// Writes a group of creates and answers each of them.
async fn write_group<B: Backend>(
    backend: &B,
    queue: &mut mpsc::UnboundedReceiver<Job>,
    mut group: Vec<Job>,
    counters: &Counters,
) {
    let written = write_together(backend, queue, &mut group).await;
    counters.groups.fetch_add(1, Ordering::Relaxed);
    counters
        .creates
        .fetch_add(group.len() as u64, Ordering::Relaxed);
    let commands: Vec<&WriteCommand> = group.iter().map(|job| &job.command).collect();
    let answers = match written {
        Ok(answers) => answers,
        // A key taken at this moment by another hub process, or a deadlock PostgreSQL broke:
        // the single-write path gives each create its own answer (and retries these itself).
        Err(error) if matches!(error, DomainError::DuplicateKey(_)) || is_transient(&error) => {
            tracing::debug!(%error, creates = group.len(), "group write failed; writing alone");
            let mut answers = Vec::with_capacity(group.len());
            for command in commands {
                answers.push(
                    unit_of_work::write_customer(|| backend.begin_write(), command, None).await,
                );
            }
            answers
        }
        // No connection, or a commit that failed: running each create again would only wait
        // as long again, and after a failed commit (which on PostgreSQL may have happened) it
        // could create a customer twice. Each create fails as it would have alone.
        Err(error) => {
            let unavailable = matches!(error, DomainError::Unavailable(_));
            let unconfirmed = error.may_have_applied();
            let message = error.to_string();
            commands
                .iter()
                .map(|_| {
                    let source = message.clone().into();
                    let error = if unavailable {
                        DomainError::Unavailable(source)
                    } else {
                        DomainError::Storage(source)
                    };
                    Err(if unconfirmed {
                        error.commit_unconfirmed()
                    } else {
                        error
                    })
                })
                .collect()
        }
    };
    for (job, answer) in group.into_iter().zip(answers) {
        // The requester is gone only if its request was cancelled; nothing to tell.
        let _ = job.answer.send(answer);
    }
}

/// Writes every create of `group` that passes its checks in one transaction; creates queued
/// while it is open join it (up to [`MAX_GROUP`] in all), so that under load one commit, and one
/// hand-over of the writer, serves as many creates as possible. `Err` means the group was not
/// written as a whole; the creates' own failures are in the answers.
async fn write_together<B: Backend>(
    backend: &B,
    queue: &mut mpsc::UnboundedReceiver<Job>,
    group: &mut Vec<Job>,
) -> Result<Vec<Answer>, DomainError> {
    let mut tx = backend.begin_write().await?;
    // Read once: a later part of the group is written in the same transaction.
    let schema = schema_store::load(&mut tx).await?;
    let mut answers = Vec::with_capacity(group.len());
    loop {
        let part = {
            let commands: Vec<&WriteCommand> = group[answers.len()..]
                .iter()
                .map(|job| &job.command)
                .collect();
            plan_and_write(&mut tx, &schema, &commands).await?
        };
        answers.extend(part);
        if !take_queued(queue, group) {
            break;
        }
    }
    tx.commit().await?;
    Ok(answers)
}

async fn plan_and_write(
    tx: &mut (impl CustomerTx + BatchTx + DirectoryTx),
    schema: &Schema,
    commands: &[&WriteCommand],
) -> Result<Vec<Answer>, DomainError> {
    let (mut groups, mut teams) = (Vec::new(), Vec::new());
    for command in commands {
        let (g, t) = named_codes(&command.scope, [&command.write]);
        groups.extend(g);
        teams.extend(t);
    }
    for codes in [&mut groups, &mut teams] {
        codes.sort_unstable();
        codes.dedup();
    }
    // A superset of each create's codes answers each lookup of its own the same way.
    let directory = tx.known_codes(&groups, &teams).await?;

    // Each create's answer; `None` until it is written.
    let mut answers: Vec<Option<Answer>> = Vec::with_capacity(commands.len());
    let mut created = Vec::new();
    for command in commands {
        let ctx = ApplyContext {
            now: Timestamp::now(),
            directory: &directory,
            password: command.password_hash.clone().map(|_| ()),
            schema,
        };
        answers.push(match command.scope.apply(&ctx, None, &command.write) {
            Ok(Applied::Changed(next)) => {
                created.push((answers.len(), *next));
                None
            }
            // A create always changes something; as on the single-write path.
            Ok(Applied::Unchanged) => Some(Err(DomainError::NotFound)),
            Err(error) => Some(Err(error)),
        });
    }

    let taken = taken_keys(tx, created.iter().map(|(_, c)| c)).await?;
    let mut claimed: HashSet<(CustomerKey, String)> = HashSet::new();
    let mut accepted = Vec::with_capacity(created.len());
    for (index, customer) in created {
        let keys = unique_keys(&customer);
        if let Some((key, _)) = keys
            .iter()
            .find(|k| taken.contains(*k) || claimed.contains(*k))
        {
            answers[index] = Some(Err(DomainError::DuplicateKey(*key)));
            continue;
        }
        claimed.extend(keys);
        accepted.push((index, customer));
    }

    let docs: Vec<String> = accepted
        .iter()
        .map(|(_, c)| serde_json::to_string(c).map_err(|e| DomainError::Storage(Box::new(e))))
        .collect::<Result<_, _>>()?;
    let rows: Vec<CustomerRow<'_>> = accepted
        .iter()
        .zip(&docs)
        .map(|((index, customer), doc)| {
            let hash = match &commands[*index].password_hash {
                Patch::Value(hash) => Some(hash.as_str()),
                Patch::Absent | Patch::Null => None,
            };
            CustomerRow::new(customer, hash, doc)
        })
        .collect();
    tx.insert_many(&rows).await?;
    tx.write_memberships(&[], &rows).await?;
    let changes: Vec<ChangeRecord> = rows
        .iter()
        .map(|row| ChangeRecord::of_write(row.customer, ChangeKind::Created, row.doc.to_owned()))
        .collect();
    tx.record_changes(&changes).await?;
    drop(rows);
    for (index, customer) in accepted {
        answers[index] = Some(Ok((WriteOutcome::Created, customer)));
    }
    Ok(answers
        .into_iter()
        .map(|answer| answer.unwrap_or_else(|| Err(abandoned())))
        .collect())
}

/// The unique-key values a new customer claims, normalized as the unique indexes compare them.
fn unique_keys(customer: &Customer) -> Vec<(CustomerKey, String)> {
    CustomerKey::ALL
        .into_iter()
        .filter_map(|key| customer.key(key).map(|value| (key, key.normalize(value))))
        .collect()
}

/// Which of the keys these customers claim already belong to a stored customer: one query per
/// kind of key.
async fn taken_keys<'a>(
    tx: &mut impl BatchTx,
    customers: impl Iterator<Item = &'a Customer>,
) -> Result<HashSet<(CustomerKey, String)>, DomainError> {
    let claims: Vec<(CustomerKey, String)> = customers.flat_map(unique_keys).collect();
    let mut taken = HashSet::new();
    for key in CustomerKey::ALL {
        let mut values: Vec<String> = claims
            .iter()
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| v.clone())
            .collect();
        if values.is_empty() {
            continue;
        }
        values.sort_unstable();
        values.dedup();
        for (value, _) in tx.owners(key, &values).await? {
            taken.insert((key, value));
        }
    }
    Ok(taken)
}
