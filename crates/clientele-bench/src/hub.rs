//! The hub side: a real `clientele serve` process (started by the testkit's [`HubProcess`]) and a
//! keep-alive HTTP/1.1 client that seeds it and then runs the `get_by_id` and `create` scenarios.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clientele_testkit::{ADMIN_SECRET, HubProcess};
use futures::{StreamExt, TryStreamExt};
use reqwest::header::{AUTHORIZATION, HeaderValue};
use reqwest::{Client, StatusCode, Url};
use serde_json::Value;

use crate::database::Database;
use crate::load::{self, Counter, Measured, OpFuture, warm_then_measure};
use crate::report::WhatIf;
use crate::workload::create_body;
use clientele_bench::procfs::{self, CpuUse};

/// How long one request may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A running hub and a client for it.
pub struct Hub {
    process: HubProcess,
    api: Api,
}

/// What the load tasks share: the client, the base URL and the admin key.
#[derive(Clone)]
struct Api {
    client: Client,
    base: Url,
    auth: HeaderValue,
}

impl Hub {
    /// Starts `binary serve` on the database and waits until it listens.
    pub async fn start(
        binary: &Path,
        database: &Database,
        connections: usize,
    ) -> anyhow::Result<Self> {
        // Absolute, because the hub runs in the database's directory.
        let binary = binary.canonicalize().with_context(|| {
            format!(
                "no hub binary at {} (build it with `cargo build --release -p clientele`)",
                binary.display()
            )
        })?;
        let (url, dir) = (database.url.clone(), database.dir().to_owned());
        let process = tokio::task::spawn_blocking(move || HubProcess::start(&binary, &url, &dir))
            .await
            .context("starting the hub (its panic message is above)")?;
        let api = Api {
            client: client(connections)?,
            base: Url::parse(&process.base_url).context("the hub's address")?,
            auth: HeaderValue::from_str(&format!("Bearer {ADMIN_SECRET}"))?,
        };
        Ok(Self { process, api })
    }

    pub fn pid(&self) -> u32 {
        self.process.child.id()
    }

    /// Fails when the hub process has exited.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        match self.process.child.try_wait()? {
            Some(status) => bail!("the hub exited during the run ({status})"),
            None => Ok(()),
        }
    }

    /// Peak resident memory of the hub so far, in KiB.
    pub fn peak_rss_kib(&self) -> anyhow::Result<u64> {
        procfs::peak_rss_kib(self.pid())
    }

    /// Creates customers `0..count` through the API, `concurrency` at a time, and returns
    /// their URLs and the mean size of the returned documents.
    pub async fn seed(&self, tag: &str, count: u64, concurrency: usize) -> anyhow::Result<Seeded> {
        let started = Instant::now();
        let created: Vec<(Url, usize)> = futures::stream::iter(0..count)
            .map(|n| self.api.create_seed(tag, n))
            .buffer_unordered(concurrency.max(1))
            .try_collect()
            .await?;
        let elapsed = started.elapsed();
        let mean_doc_bytes =
            created.iter().map(|(_, size)| size).sum::<usize>() / created.len().max(1);
        Ok(Seeded {
            urls: Arc::new(created.into_iter().map(|(url, _)| url).collect()),
            mean_doc_bytes,
            per_second: count as f64 / elapsed.as_secs_f64().max(f64::EPSILON),
        })
    }

    /// `GET /v1/customers/{id}` of random seeded customers.
    pub async fn get_by_id(
        &self,
        seeded: &Seeded,
        plan: &Plan,
    ) -> anyhow::Result<(Measured, CpuUse)> {
        let (api, urls, counter) = (self.api.clone(), seeded.urls.clone(), Counter::default());
        let op = move || -> OpFuture {
            let url = urls[load::spread(counter.next(), urls.len())].clone();
            Box::pin(api.clone().get(url))
        };
        warm_then_measure(
            Some(self.pid()),
            plan.concurrency,
            plan.warmup,
            plan.duration,
            op,
        )
        .await
    }

    /// `POST /v1/customers` of new customers with unique keys, numbered after the seeded ones.
    pub async fn create(
        &self,
        tag: &str,
        first: u64,
        plan: &Plan,
    ) -> anyhow::Result<(Measured, CpuUse)> {
        let (api, tag) = (self.api.clone(), tag.to_owned());
        let keys = Counter::starting_at(first);
        let op = move || -> OpFuture {
            let body = create_body(&tag, keys.next());
            Box::pin(api.clone().post_customer(body))
        };
        warm_then_measure(
            Some(self.pid()),
            plan.concurrency,
            plan.warmup,
            plan.duration,
            op,
        )
        .await
    }

    /// Requests that take parts of the `get_by_id` path away: an unknown route (the HTTP stack and
    /// middleware only, no database) and a malformed customer id (plus the API key lookup, but
    /// no customer read). Both answer 404.
    pub async fn diagnostics(&self, plan: &Plan) -> anyhow::Result<Vec<WhatIf>> {
        let mut variants = Vec::new();
        for (name, path) in [
            (
                "hub: GET of an unknown route (HTTP only, no database)",
                "/v1/no-such-route",
            ),
            (
                "hub: GET of a malformed id (HTTP + API key lookup)",
                "/v1/customers/not-an-id",
            ),
        ] {
            let (api, url) = (self.api.clone(), self.api.base.join(path)?);
            let op = move || -> OpFuture {
                Box::pin(
                    api.clone()
                        .get_expecting(url.clone(), StatusCode::NOT_FOUND),
                )
            };
            let (measured, _) = warm_then_measure(
                Some(self.pid()),
                plan.concurrency,
                plan.warmup,
                plan.duration,
                op,
            )
            .await?;
            variants.push(WhatIf {
                name,
                measured,
                rows_per_op: 1,
            });
        }
        Ok(variants)
    }

    /// Stops the hub (SIGTERM, then waits).
    pub fn stop(mut self) -> bool {
        self.process.terminate()
    }
}

/// The customers a hub was seeded with.
pub struct Seeded {
    pub urls: Arc<Vec<Url>>,
    pub mean_doc_bytes: usize,
    /// Seeding rate (creates per second) - informational.
    pub per_second: f64,
}

/// How one scenario runs.
#[derive(Clone, Copy)]
pub struct Plan {
    pub concurrency: usize,
    pub warmup: Duration,
    pub duration: Duration,
}

/// A keep-alive HTTP/1.1 client whose pool holds `connections` idle connections, so every load
/// task keeps its own connection open.
fn client(connections: usize) -> anyhow::Result<Client> {
    Client::builder()
        .http1_only()
        .pool_max_idle_per_host(connections)
        .pool_idle_timeout(None)
        .tcp_nodelay(true)
        .no_proxy()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .context("building the HTTP client")
}

impl Api {
    async fn get(self, url: Url) -> Result<(), String> {
        let response = self.client.get(url).header(AUTHORIZATION, self.auth).send();
        finish(response.await).await.map(|_| ())
    }

    /// A GET whose only right answer is `expected` (diagnostics aim at error paths).
    async fn get_expecting(self, url: Url, expected: StatusCode) -> Result<(), String> {
        let response = self.client.get(url).header(AUTHORIZATION, self.auth).send();
        let response = response
            .await
            .map_err(|error| format!("request failed: {error}"))?;
        let status = response.status();
        response
            .bytes()
            .await
            .map_err(|error| format!("reading the body failed: {error}"))?;
        if status == expected {
            Ok(())
        } else {
            Err(format!("{status}, expected {expected}"))
        }
    }

    async fn post_customer(self, body: Value) -> Result<(), String> {
        let url = self.customers_url();
        let response = self
            .client
            .post(url)
            .header(AUTHORIZATION, self.auth)
            .json(&body)
            .send();
        finish(response.await).await.map(|_| ())
    }

    /// One seeding create: the new customer's URL and the size of its document.
    async fn create_seed(&self, tag: &str, n: u64) -> anyhow::Result<(Url, usize)> {
        let response = self
            .client
            .post(self.customers_url())
            .header(AUTHORIZATION, self.auth.clone())
            .json(&create_body(tag, n))
            .send()
            .await;
        let body = finish(response).await.map_err(anyhow::Error::msg)?;
        let body = body.as_ref();
        let customer: Value = serde_json::from_slice(body).context("a created customer")?;
        let id = customer["id"]
            .as_str()
            .context("a created customer has no id")?;
        let url = self.base.join(&format!("/v1/customers/{id}"))?;
        Ok((url, body.len()))
    }

    fn customers_url(&self) -> Url {
        let mut url = self.base.clone();
        url.set_path("/v1/customers");
        url
    }
}

/// Reads the whole body (so the connection is reused); anything but 2xx is a failure.
async fn finish(
    response: Result<reqwest::Response, reqwest::Error>,
) -> Result<impl AsRef<[u8]>, String> {
    let response = response.map_err(|error| format!("request failed: {error}"))?;
    let status = response.status();
    let body = response
        .bytes()
        .await
        .map_err(|error| format!("reading the body failed: {error}"))?;
    if status.is_success() {
        Ok(body)
    } else {
        let text = String::from_utf8_lossy(&body);
        Err(format!(
            "{status}: {}",
            text.chars().take(300).collect::<String>()
        ))
    }
}
