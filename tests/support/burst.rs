//! A burst of pushes, as a CI pipeline of a monorepo makes them, delivered concurrently to
//! the real entrypoints with the real adapters (DynamoDB, EventBridge, SSM Run Command, ECR,
//! SSM Parameter Store) on a moto that applies each request atomically, as DynamoDB does
//! (`tests/emulator.rs` shows why moto's own server cannot be used). Each environment's
//! commands reach its own EC2 instance there (tagged with its `Role`). Lifecycle events are
//! routed as `template.yaml`'s rules route them, a failed invocation is retried twice as
//! Lambda retries it, each Run Command reports its end in a status event after 100–400 ms
//! (from then on the environment's smoke endpoint answers for that digest), and the reconcile
//! schedule runs every 2 seconds.
//!
//! `run` returns what a user would see broken at the end (empty when every promise held)
//! and the figures: `tests/burst.rs` asserts the first, `make bench` reports the second.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use lambda_runtime::LambdaEvent;
use pushdeploy::adapters::ssm_config::ParameterConfig;
use pushdeploy::domain::{Deployment, Digest, EnvState, Kind, TargetConfig};
use pushdeploy::entrypoints::{self, Function, routed_to};
use pushdeploy::ports::{RolloutStatus, Started, Target, TargetError, TargetRef};
use pushdeploy::services::{Core, Deployer, Rollback, Tracker, Verifier};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;

use crate::{DOCUMENT, PARAMETER, World};

/// Lambda runs an asynchronous invocation once and retries it twice.
const ATTEMPTS: u32 = 3;

/// What to push, how fast, and how much of it at once.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Apps, each with a staging and a production environment deploying every `v*` push.
    pub apps: usize,
    pub pushes: usize,
    /// The pushes are spread evenly over this window.
    pub window: Duration,
    /// At most this many invocations run at once (a function's reserved concurrency).
    pub in_flight: usize,
    /// One push in this many fails its smoke tests (never an app's first); 0: none.
    pub unhealthy_one_in: u64,
    /// A tenth of the pushes are delivered out of order, and a tenth twice.
    pub disorder: bool,
    pub seed: u64,
    /// The run fails when, before it settled, no environment changed for this long (a
    /// wedge, not a slow machine), or after ten times this long in all.
    pub settle_within: Duration,
    /// How often the reconcile schedule runs (template.yaml: every minute); `None`: never,
    /// so that what a deployment costs is counted alone.
    pub reconcile_every: Option<Duration>,
}

/// What a run ended with.
#[derive(Debug, Default)]
pub struct Report {
    /// The promises the end state breaks, if any.
    pub broken: Vec<String>,
    pub deliveries: usize,
    pub swapped: usize,
    pub twice: usize,
    pub emitted: Duration,
    pub settled: Duration,
    pub invocations: BTreeMap<&'static str, usize>,
    pub most_in_flight: usize,
    pub retried: usize,
    /// The errors invocations failed with (their first words), and how often.
    pub errors: BTreeMap<String, usize>,
    pub run_commands: usize,
    /// Push delivered → its Run Command sent, for pushes whose own invocation started the
    /// rollout (the environment was free), and for pushes that waited in the queue.
    pub started_at_once: Vec<Duration>,
    pub started_from_queue: Vec<Duration>,
    /// Failed verification answered → the rollback's Run Command sent.
    pub verdict_to_rollback: Vec<Duration>,
    /// What the deployer answered the pushes, per environment.
    pub outcomes: BTreeMap<String, usize>,
    /// Every AWS request moto served, by operation (`DynamoDB_20120810.GetItem`).
    pub requests: BTreeMap<String, Requests>,
    /// Rollouts that reached Deployment Verified.
    pub verified: usize,
    /// Events the notifier's rule would have delivered (no channel is configured: the
    /// burst does not invoke it).
    pub to_notifier: usize,
    /// Time spent in each function's invocations, by function.
    pub busy: BTreeMap<&'static str, Duration>,
}

/// The requests of one operation, and what they cost in the units AWS bills.
#[derive(Debug, Default, Clone)]
pub struct Requests {
    pub count: usize,
    /// Answered with an error (for DynamoDB: a condition or a transaction refused).
    pub refused: usize,
    /// DynamoDB read request units: a strongly consistent read costs one per 4 KB read
    /// (counted on the answer's size, an upper bound).
    pub read_units: u64,
    /// DynamoDB write request units: one per 1 KB written, twice that in a transaction
    /// (each item at least one KB), a refused write or transaction included.
    pub write_units: u64,
    /// EventBridge events put (each entry under 64 KB is one).
    pub events: u64,
}

impl Requests {
    /// Adds one line of the atomic moto's request log (`local/moto/atomic.py`).
    fn add(
        &mut self,
        operation: &str,
        status: &str,
        request_bytes: u64,
        answer_bytes: u64,
        entries: u64,
    ) {
        self.count += 1;
        if status != "200" {
            self.refused += 1;
        }
        let kib = |bytes: u64, unit: u64| bytes.div_ceil(unit).max(1);
        match operation.rsplit('.').next().unwrap_or(operation) {
            "GetItem" | "Query" | "Scan" | "BatchGetItem" => {
                self.read_units += kib(answer_bytes, 4096);
            }
            "TransactWriteItems" => {
                self.write_units += 2 * kib(request_bytes, 1024).max(entries);
            }
            "PutItem" | "UpdateItem" | "DeleteItem" => {
                self.write_units += kib(request_bytes, 1024);
            }
            "PutEvents" => self.events += entries,
            _ => {}
        }
    }
}

impl Report {
    pub fn requests_total(&self) -> usize {
        self.requests.values().map(|r| r.count).sum()
    }

    /// Requests of one service (`DynamoDB`, `AWSEvents`, `AmazonSSM`,
    /// `AmazonEC2ContainerRegistry`), by operation.
    pub fn requests_of(&self, service: &str) -> BTreeMap<String, usize> {
        self.requests
            .iter()
            .filter(|(op, _)| op.starts_with(service))
            .map(|(op, r)| (op.rsplit('.').next().unwrap_or(op).to_owned(), r.count))
            .collect()
    }

    /// The sum over every operation.
    pub fn total(&self) -> Requests {
        let mut total = Requests::default();
        for r in self.requests.values() {
            total.count += r.count;
            total.refused += r.refused;
            total.read_units += r.read_units;
            total.write_units += r.write_units;
            total.events += r.events;
        }
        total
    }

    /// Conditional writes and transactions DynamoDB refused (a conflict, or a duplicate).
    pub fn refused_writes(&self) -> usize {
        self.requests
            .iter()
            .filter(|(op, _)| op.starts_with("DynamoDB"))
            .map(|(_, r)| r.refused)
            .sum()
    }
}

/// p-th percentile of `samples` (sorted here).
pub fn percentile(samples: &[Duration], p: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// "p50 12 ms, p99 40 ms (n samples)".
pub fn spread(samples: &[Duration]) -> String {
    format!(
        "p50 {:.0} ms, p99 {:.0} ms ({} samples)",
        percentile(samples, 0.5).as_secs_f64() * 1e3,
        percentile(samples, 0.99).as_secs_f64() * 1e3,
        samples.len()
    )
}

fn config(apps: usize, smoke: u16) -> String {
    let mut yaml = String::from("apps:\n");
    for app in 0..apps {
        yaml.push_str(&format!(
            "  app{app}:\n    repository: acme/app{app}\n    environments:\n"
        ));
        for env in ["staging", "production"] {
            yaml.push_str(&format!(
                r#"      {env}:
        deploy_on_push: {{ tags: ["v*"] }}
        target: {{ ssm: {{ instances: {{ tag: {{ Role: app{app}-{env} }} }}, container: app, ports: ["80:8000"] }} }}
        smoke:
          checks: [ {{ url: "http://127.0.0.1:{smoke}/app{app}/{env}", expect_status: 200, body_contains: "ok", timeout_seconds: 2 }} ]
          within_seconds: 5
"#
            ));
        }
    }
    yaml
}

/// A small deterministic generator (xorshift64*), so a seed replays the same inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn digest_of(app: usize, n: usize) -> Digest {
    Digest::parse(&format!("sha256:{:032x}{:032x}", app + 1, n + 1)).unwrap()
}

/// The hosts: what each environment runs, and which digests fail their smoke tests.
#[derive(Default)]
struct Hosts {
    runs: Mutex<BTreeMap<String, String>>,
    unhealthy: BTreeSet<String>,
}

impl Hosts {
    /// Serves each environment's smoke endpoint (`/app3/staging`): `ok` while it runs a
    /// healthy digest.
    async fn serve(self: Arc<Self>) -> anyhow::Result<u16> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let hosts = self.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 2048];
                    let n = socket.read(&mut buf).await.unwrap_or(0);
                    let request = String::from_utf8_lossy(&buf[..n]);
                    let place = request
                        .split_whitespace()
                        .nth(1)
                        .unwrap_or("/")
                        .trim_start_matches('/')
                        .to_owned();
                    let healthy = hosts
                        .runs
                        .lock()
                        .unwrap()
                        .get(&place)
                        .is_some_and(|d| !hosts.unhealthy.contains(d));
                    let (status, body) = if healthy {
                        (200, "ok")
                    } else {
                        (500, "broken")
                    };
                    let response = format!(
                        "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(response.as_bytes()).await;
                });
            }
        });
        Ok(port)
    }
}

/// A Run Command the SSM adapter sent, as the burst saw it.
struct Sent {
    at: Instant,
    place: String,
    digest: String,
    deployment: String,
    rollback_of: Option<String>,
}

/// The SSM adapter, watched: every command it sends is remembered and, a moment later,
/// reported finished by the status event SSM would send.
struct Watched {
    inner: Arc<dyn Target>,
    sent: Arc<Mutex<Vec<Sent>>>,
    finished: tokio::sync::mpsc::UnboundedSender<(TargetRef, String, String)>,
}

#[async_trait]
impl Target for Watched {
    async fn start(
        &self,
        deployment: &Deployment,
        config: &TargetConfig,
    ) -> Result<Started, TargetError> {
        let started = self.inner.start(deployment, config).await?;
        let place = format!("{}/{}", deployment.app, deployment.environment);
        let digest = deployment.image.digest.to_string();
        self.sent.lock().unwrap().push(Sent {
            at: Instant::now(),
            place: place.clone(),
            digest: digest.clone(),
            deployment: deployment.id.to_string(),
            rollback_of: deployment
                .rollback_of
                .as_ref()
                .filter(|_| deployment.kind == Kind::Rollback)
                .map(ToString::to_string),
        });
        let _ = self
            .finished
            .send((started.target_ref.clone(), place, digest));
        Ok(started)
    }

    async fn status(&self, target_ref: &TargetRef) -> Result<RolloutStatus, TargetError> {
        self.inner.status(target_ref).await
    }

    async fn platform(
        &self,
        config: &TargetConfig,
    ) -> Result<Option<pushdeploy::domain::platform::Platform>, TargetError> {
        self.inner.platform(config).await
    }

    async fn cancel(&self, target_ref: &TargetRef) -> Result<(), TargetError> {
        self.inner.cancel(target_ref).await
    }

    async fn find(
        &self,
        deployment: &Deployment,
        config: &TargetConfig,
    ) -> Result<Option<Started>, TargetError> {
        self.inner.find(deployment, config).await
    }
}

struct Functions {
    deployer: Deployer,
    tracker: Tracker,
    verifier: Verifier,
    rollback: Rollback,
    slots: Semaphore,
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
    /// Deliveries made and not yet answered (or given up), the schedule's aside.
    pending: AtomicUsize,
    invocations: Mutex<BTreeMap<&'static str, usize>>,
    retried: AtomicUsize,
    dead: Mutex<Vec<String>>,
    errors: Mutex<BTreeMap<String, usize>>,
    outcomes: Mutex<BTreeMap<String, usize>>,
    /// Digests whose push started its rollout at once.
    started_at_once: Mutex<BTreeSet<String>>,
    /// When each failed verification was answered, by deployment.
    verdicts: Mutex<BTreeMap<String, Instant>>,
    verified: AtomicUsize,
    to_notifier: AtomicUsize,
    busy: Mutex<BTreeMap<&'static str, Duration>>,
}

impl Functions {
    /// Delivers `payload` to `function` as Lambda would: in a slot of the concurrency
    /// limit, retried twice after an error, and recorded as a dead letter after the third.
    fn deliver(self: &Arc<Self>, function: Function, payload: Value) {
        // The schedule's own runs never end: waiting for them is not waiting for the burst.
        let counted = payload["detail-type"] != "Scheduled Event";
        if counted {
            self.pending.fetch_add(1, Ordering::SeqCst);
        }
        let functions = self.clone();
        tokio::task::spawn_local(async move {
            let _slot = functions
                .slots
                .acquire()
                .await
                .expect("the semaphore stays open");
            let now = functions.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            functions.most_in_flight.fetch_max(now, Ordering::SeqCst);
            let mut last_error = String::new();
            let mut answered = false;
            for attempt in 1..=ATTEMPTS {
                *functions
                    .invocations
                    .lock()
                    .unwrap()
                    .entry(function.name())
                    .or_default() += 1;
                let began = Instant::now();
                let answer = functions.invoke(function, payload.clone()).await;
                *functions
                    .busy
                    .lock()
                    .unwrap()
                    .entry(function.name())
                    .or_default() += began.elapsed();
                match answer {
                    Ok(answer) => {
                        functions.count(function, &answer);
                        answered = true;
                        break;
                    }
                    Err(error) => {
                        let first: String = error.chars().take(90).collect();
                        *functions.errors.lock().unwrap().entry(first).or_default() += 1;
                        last_error = error;
                        if attempt < ATTEMPTS {
                            functions.retried.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt)))
                                .await;
                        }
                    }
                }
            }
            if !answered {
                functions.dead.lock().unwrap().push(format!(
                    "{} after {ATTEMPTS} attempts at {}: {last_error}",
                    function.name(),
                    payload["detail-type"]
                ));
            }
            functions.in_flight.fetch_sub(1, Ordering::SeqCst);
            if counted {
                functions.pending.fetch_sub(1, Ordering::SeqCst);
            }
        });
    }

    async fn invoke(&self, function: Function, payload: Value) -> Result<Value, String> {
        let event = LambdaEvent::new(payload, lambda_runtime::Context::default());
        let answer = match function {
            Function::Deployer => entrypoints::deployer::handle(&self.deployer, event).await,
            Function::Tracker => entrypoints::tracker::handle(&self.tracker, DOCUMENT, event).await,
            Function::Verifier => entrypoints::verifier::handle(&self.verifier, event).await,
            Function::Rollback => entrypoints::rollback::handle(&self.rollback, event).await,
            other => panic!("the burst routes nothing to {}", other.name()),
        };
        answer.map_err(|e| e.chain())
    }

    /// Tallies what the functions answered: the deployer's outcome per environment (a
    /// skipped push by the first words of its reason), the verifier's verdicts.
    fn count(&self, function: Function, answer: &Value) {
        if function == Function::Verifier {
            match answer["outcome"].as_str() {
                Some("failed") => {
                    if let Some(id) = answer["deployment_id"].as_str() {
                        self.verdicts
                            .lock()
                            .unwrap()
                            .insert(id.to_owned(), Instant::now());
                    }
                }
                Some("verified") => {
                    self.verified.fetch_add(1, Ordering::SeqCst);
                }
                _ => {}
            }
        }
        let Some(results) = answer["results"].as_array() else {
            return;
        };
        let mut outcomes = self.outcomes.lock().unwrap();
        for result in results {
            let outcome = result["outcome"].as_str().unwrap_or("?");
            if outcome == "started"
                && let Some((_, digest)) = result["image"].as_str().and_then(|i| i.rsplit_once('@'))
            {
                self.started_at_once
                    .lock()
                    .unwrap()
                    .insert(digest.to_owned());
            }
            let what = match result["reason"].as_str() {
                Some(reason) => {
                    let words: Vec<&str> = reason.split([' ', ':', '(']).take(6).collect();
                    format!("{outcome} ({} …)", words.join(" "))
                }
                None => outcome.to_owned(),
            };
            *outcomes.entry(what).or_default() += 1;
        }
    }
}

fn scheduled(n: usize) -> Value {
    json!({
        "version": "0", "id": format!("schedule-{n}"), "detail-type": "Scheduled Event",
        "source": "aws.events", "account": pushdeploy_local::moto::ACCOUNT,
        "region": pushdeploy_local::moto::REGION, "time": "2026-11-23T10:00:00Z",
        "resources": [], "detail": {}
    })
}

/// Creates the EC2 instance of each environment in moto, tagged with its `Role`.
async fn register_hosts(w: &World, apps: usize) -> anyhow::Result<()> {
    for app in 0..apps {
        for env in ["staging", "production"] {
            w.register_host(&[("Role", &format!("app{app}-{env}"))])
                .await?;
        }
    }
    Ok(())
}

/// Every environment's record, read with one `BatchGetItem` (which no function makes, so
/// that the request counts can leave the watching out).
async fn observe(w: &World, apps: usize) -> anyhow::Result<Vec<EnvState>> {
    use aws_sdk_dynamodb::types::{AttributeValue, KeysAndAttributes};
    let mut keys = KeysAndAttributes::builder().consistent_read(true);
    for app in 0..apps {
        for env in ["staging", "production"] {
            keys = keys.keys(
                [
                    (
                        "pk".to_owned(),
                        AttributeValue::S(format!("ENV#app{app}#{env}")),
                    ),
                    ("sk".to_owned(), AttributeValue::S("STATE".into())),
                ]
                .into(),
            );
        }
    }
    let out = aws_sdk_dynamodb::Client::new(&w.sdk)
        .batch_get_item()
        .request_items(crate::TABLE, keys.build()?)
        .send()
        .await?;
    let mut states = Vec::new();
    for item in out
        .responses()
        .and_then(|r| r.get(crate::TABLE))
        .into_iter()
        .flatten()
    {
        let body = item
            .get("body")
            .and_then(|b| b.as_s().ok())
            .ok_or_else(|| anyhow::anyhow!("an environment record without a body: {item:?}"))?;
        states.push(serde_json::from_str(body)?);
    }
    states.sort_by(|a: &EnvState, b: &EnvState| {
        (a.app.as_str(), a.environment.as_str()).cmp(&(b.app.as_str(), b.environment.as_str()))
    });
    Ok(states)
}

/// One push as ECR reports it.
#[derive(Clone)]
struct Push {
    app: usize,
    n: usize,
    event: Value,
}

/// Runs `plan` on a fresh atomic moto.
pub async fn run(plan: &Plan) -> anyhow::Result<Report> {
    tokio::task::LocalSet::new().run_until(run_here(plan)).await
}

// The entrypoints' futures are not `Send`, as Lambda's runtime does not need them to be: the
// invocations run concurrently on one thread, interleaved at every AWS request they await.
async fn run_here(plan: &Plan) -> anyhow::Result<Report> {
    let mut rng = Rng(plan.seed | 1);
    let mut hosts = Hosts::default();
    // The pushes, in the order they happen.
    let mut pushes = Vec::new();
    let mut per_app = vec![0usize; plan.apps];
    for _ in 0..plan.pushes {
        let app = rng.below(plan.apps as u64) as usize;
        let n = per_app[app];
        per_app[app] += 1;
        if n > 0 && plan.unhealthy_one_in > 0 && rng.below(plan.unhealthy_one_in) == 0 {
            hosts.unhealthy.insert(digest_of(app, n).to_string());
        }
        pushes.push((app, n));
    }
    let hosts = Arc::new(hosts);
    let smoke = hosts.clone().serve().await?;
    let w = World::start_atomic(&config(plan.apps, smoke)).await?;
    register_hosts(&w, plan.apps).await?;
    let sdk = w.sdk.clone();
    let ecr = aws_sdk_ecr::Client::new(&sdk);

    // The images are in ECR before the burst.
    let base = time::OffsetDateTime::now_utc();
    let mut events = Vec::new();
    for (i, (app, n)) in pushes.iter().copied().enumerate() {
        let digest = digest_of(app, n);
        let repository = format!("acme/app{app}");
        if n == 0 {
            ecr.create_repository()
                .repository_name(&repository)
                .send()
                .await?;
        }
        let tag = format!("v1.{n}");
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": { "mediaType": "application/vnd.docker.container.image.v1+json", "size": 2, "digest": digest.as_str() },
            "layers": [ { "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": 2, "digest": digest.as_str() } ]
        });
        ecr.put_image()
            .repository_name(&repository)
            .image_manifest(manifest.to_string())
            .image_digest(digest.as_str())
            .image_tag(&tag)
            .send()
            .await?;
        let at = base + time::Duration::milliseconds(10 * i as i64);
        let event = json!({
            "version": "0", "id": format!("push-{i}"), "detail-type": "ECR Image Action",
            "source": "aws.ecr", "account": pushdeploy_local::moto::ACCOUNT,
            "region": pushdeploy_local::moto::REGION,
            "time": at.format(&time::format_description::well_known::Rfc3339).unwrap(),
            "resources": [],
            "detail": {
                "result": "SUCCESS", "repository-name": repository,
                "image-digest": digest.as_str(), "action-type": "PUSH", "image-tag": tag
            }
        });
        events.push(Push { app, n, event });
    }
    let newest: BTreeMap<usize, Digest> = (0..plan.apps)
        .filter(|a| per_app[*a] > 0)
        .map(|a| (a, digest_of(a, per_app[a] - 1)))
        .collect();
    // Only what happens from here on is counted.
    let setup_requests = std::fs::read_to_string(w.requests_log())
        .unwrap_or_default()
        .lines()
        .count();

    // The order EventBridge delivers them in: a tenth swapped with the next push, a tenth
    // delivered again a little later.
    let mut deliveries = events.clone();
    let (mut swapped, mut twice) = (0, 0);
    if plan.disorder {
        let mut i = 0;
        while i + 1 < deliveries.len() {
            if rng.below(10) == 0 {
                deliveries.swap(i, i + 1);
                swapped += 1;
                i += 2;
            } else {
                i += 1;
            }
        }
        let mut k = 0;
        while k < deliveries.len() {
            if rng.below(10) == 0 {
                let again = deliveries[k].clone();
                let later = (k + 1 + rng.below(20) as usize).min(deliveries.len());
                deliveries.insert(later, again);
                twice += 1;
                k += 1;
            }
            k += 1;
        }
    }

    // The functions, on the real adapters, each with its own clients (their requests are
    // recorded per function); every SSM target watched.
    let sent = Arc::new(Mutex::new(Vec::new()));
    let (finished, mut finishing) = tokio::sync::mpsc::unbounded_channel();
    let watched = |inner: &Arc<dyn Target>| -> Arc<dyn Target> {
        Arc::new(Watched {
            inner: inner.clone(),
            sent: sent.clone(),
            finished: finished.clone(),
        })
    };
    // Each Lambda container caches the configuration; the burst's share one cache.
    let config: Arc<dyn pushdeploy::ports::ConfigSource> = Arc::new(ParameterConfig::new(
        aws_sdk_ssm::Client::new(&sdk),
        PARAMETER,
        Duration::from_secs(60),
    ));
    let core_of = |core: &Core| Core {
        config: config.clone(),
        ..core.clone()
    };
    let functions = Arc::new(Functions {
        deployer: Deployer {
            core: core_of(&w.deployer.core),
            registry: w.deployer.registry.clone(),
            target: watched(&w.deployer.target),
            tags: w.deployer.tags.clone(),
        },
        tracker: Tracker {
            core: core_of(&w.tracker.core),
            target: watched(&w.tracker.target),
            registry: w.tracker.registry.clone(),
        },
        verifier: Verifier {
            core: core_of(&w.verifier.core),
            probe: w.verifier.probe.clone(),
            alarms: w.verifier.alarms.clone(),
        },
        rollback: Rollback {
            core: core_of(&w.rollback.core),
            registry: w.rollback.registry.clone(),
            target: watched(&w.rollback.target),
        },
        slots: Semaphore::new(plan.in_flight),
        in_flight: AtomicUsize::new(0),
        most_in_flight: AtomicUsize::new(0),
        pending: AtomicUsize::new(0),
        invocations: Mutex::default(),
        retried: AtomicUsize::new(0),
        dead: Mutex::default(),
        errors: Mutex::default(),
        outcomes: Mutex::default(),
        started_at_once: Mutex::default(),
        verdicts: Mutex::default(),
        verified: AtomicUsize::new(0),
        to_notifier: AtomicUsize::new(0),
        busy: Mutex::default(),
    });
    // The watched targets hold the only senders left: the channel closes with them.
    drop(finished);

    // SSM: each command ends a moment after it is sent, and says so; from then on the host
    // runs its digest.
    let reporter = {
        let (functions, hosts) = (functions.clone(), hosts.clone());
        let template = serde_json::to_string(&w.ssm_event("COMMAND", "Success")).unwrap();
        let mut rng = Rng(plan.seed.rotate_left(17) | 1);
        tokio::task::spawn_local(async move {
            while let Some((target_ref, place, digest)) = finishing.recv().await {
                let delay = Duration::from_millis(100 + rng.below(300));
                let event: Value =
                    serde_json::from_str(&template.replace("COMMAND", target_ref.id())).unwrap();
                let (functions, hosts) = (functions.clone(), hosts.clone());
                functions.pending.fetch_add(1, Ordering::SeqCst);
                tokio::task::spawn_local(async move {
                    tokio::time::sleep(delay).await;
                    hosts.runs.lock().unwrap().insert(place, digest);
                    functions.deliver(Function::Tracker, event);
                    functions.pending.fetch_sub(1, Ordering::SeqCst);
                });
            }
        })
    };
    // EventBridge: every lifecycle event published goes to the functions its rules name.
    let stop = Arc::new(AtomicBool::new(false));
    let router = {
        let (functions, stop, published) = (functions.clone(), stop.clone(), w.published.clone());
        let reconcile_every = plan.reconcile_every;
        tokio::task::spawn_local(async move {
            let mut routed = 0;
            let mut tick = 0usize;
            let mut last_schedule = Instant::now();
            loop {
                let events = published.all();
                for (n, event) in events.iter().enumerate().skip(routed) {
                    for function in routed_to(
                        pushdeploy::domain::event::SOURCE,
                        event.detail_type.as_str(),
                    ) {
                        if function == Function::Notifier {
                            functions.to_notifier.fetch_add(1, Ordering::SeqCst);
                            continue; // no channel is configured
                        }
                        functions.deliver(
                            function,
                            pushdeploy::fakes::delivered(event, &format!("lifecycle-{n}")),
                        );
                    }
                }
                routed = events.len();
                if reconcile_every.is_some_and(|every| last_schedule.elapsed() >= every) {
                    tick += 1;
                    functions.deliver(Function::Tracker, scheduled(tick));
                    last_schedule = Instant::now();
                }
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };

    // The burst itself.
    let mut delivered_at: BTreeMap<String, Instant> = BTreeMap::new();
    let start = Instant::now();
    let gap = plan.window / deliveries.len().max(1) as u32;
    for (i, push) in deliveries.iter().enumerate() {
        tokio::time::sleep_until((start + gap * i as u32).into()).await;
        delivered_at
            .entry(digest_of(push.app, push.n).to_string())
            .or_insert_with(Instant::now);
        functions.deliver(Function::Deployer, push.event.clone());
    }
    let emitted = start.elapsed();

    // Until nothing moves: no delivery waiting, and every environment idle.
    let cap = Instant::now() + plan.settle_within * 10;
    let mut last_move = (String::new(), Instant::now());
    let mut quiet_since: Option<Instant> = None;
    let mut broken = Vec::new();
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let idle = functions.pending.load(Ordering::SeqCst) == 0;
        let states = observe(&w, plan.apps).await?;
        let settled = states
            .iter()
            .all(|s| s.lease.is_none() && s.queued.is_none());
        let now: String = states
            .iter()
            .map(|s| {
                format!(
                    "{:?}{:?}{:?};",
                    s.current.as_ref().map(|c| c.deployment_id.to_string()),
                    s.lease.as_ref().map(|l| l.deployment_id.to_string()),
                    s.queued.as_ref().map(|q| q.image.digest.to_string())
                )
            })
            .collect();
        if now != last_move.0 {
            last_move = (now, Instant::now());
        }
        if idle && settled {
            let since = *quiet_since.get_or_insert_with(Instant::now);
            // Long enough for the schedule to run twice more on a quiet application.
            if since.elapsed() >= Duration::from_secs(5) {
                break;
            }
        } else {
            quiet_since = None;
        }
        let stalled = !(idle && settled) && last_move.1.elapsed() >= plan.settle_within;
        if stalled || Instant::now() >= cap {
            broken.push(format!(
                "seed {}: not settled {:.0} s after the last push, no environment changed for {:.0} s; \
                 {} deliveries pending, {} in flight",
                plan.seed,
                start.elapsed().saturating_sub(emitted).as_secs_f64(),
                last_move.1.elapsed().as_secs_f64(),
                functions.pending.load(Ordering::SeqCst),
                functions.in_flight.load(Ordering::SeqCst),
            ));
            for s in states
                .iter()
                .filter(|s| s.lease.is_some() || s.queued.is_some())
            {
                let history = match &s.lease {
                    Some(held) => functions
                        .deployer
                        .core
                        .store
                        .deployment(&s.app, &s.environment, &held.deployment_id)
                        .await
                        .map(|d| {
                            d.history
                                .iter()
                                .map(|h| {
                                    format!("{:?} {}", h.phase, h.note.as_deref().unwrap_or(""))
                                })
                                .collect::<Vec<_>>()
                                .join(" → ")
                        })
                        .unwrap_or_else(|e| e.to_string()),
                    None => String::new(),
                };
                broken.push(format!(
                    "{}/{} still busy: held by {:?} ({history}), queued {:?}, frozen {:?}",
                    s.app,
                    s.environment,
                    s.lease.as_ref().map(|h| h.deployment_id.to_string()),
                    s.queued.as_ref().map(|q| q.image.digest.to_string()),
                    s.frozen.as_ref().map(|f| f.reason.clone()),
                ));
            }
            // The emulator's logs outlive the failed run.
            let kept = std::env::temp_dir().join(format!("pushdeploy-burst-{}", plan.seed));
            let _ = std::fs::create_dir_all(&kept);
            let _ = std::fs::copy(w.requests_log(), kept.join("requests.log"));
            let _ = std::fs::copy(
                w.requests_log().with_file_name("moto.log"),
                kept.join("moto.log"),
            );
            broken.push(format!(
                "the emulator's logs are kept in {}",
                kept.display()
            ));
            break;
        }
    }
    let settled = start.elapsed();
    // What the functions asked of AWS, up to here (the watching below is not theirs).
    let counted = std::fs::read_to_string(w.requests_log())?.lines().count();
    let statuses = w.status().await;
    stop.store(true, Ordering::SeqCst);
    router.await?;
    reporter.abort();

    // What a user would see.
    let sent = std::mem::take(&mut *sent.lock().unwrap());
    let runs = hosts.runs.lock().unwrap().clone();
    let mut pushed_actions: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut actions: BTreeMap<String, usize> = BTreeMap::new();
    for s in &sent {
        *actions.entry(s.deployment.clone()).or_default() += 1;
        if s.rollback_of.is_none() {
            *pushed_actions
                .entry((s.place.clone(), s.digest.clone()))
                .or_default() += 1;
        }
    }
    for status in &statuses {
        let place = format!("{}/{}", status.app, status.environment);
        let app: usize = status.app.as_str()["app".len()..].parse()?;
        let newest = newest.get(&app).map(Digest::to_string);
        let says = status.current.as_ref().map(|c| c.digest.to_string());
        let host = runs.get(&place).cloned();
        if host != says {
            broken.push(format!(
                "{place}: the host runs {host:?}, status says {says:?}"
            ));
        }
        match newest {
            Some(newest) if !hosts.unhealthy.contains(&newest) => {
                if says.as_ref() != Some(&newest) {
                    broken.push(format!(
                        "{place}: status says {says:?}, the newest push was {newest}"
                    ));
                }
            }
            // The newest push failed its smoke tests: a verified image runs instead, where
            // the environment had verified one to go back to.
            _ => {
                if status.last_verified.is_some()
                    && host.as_ref().is_some_and(|h| hosts.unhealthy.contains(h))
                {
                    broken.push(format!("{place}: the host runs {host:?}, which failed"));
                }
            }
        }
        if let Some(frozen) = &status.frozen {
            broken.push(format!("{place}: frozen: {}", frozen.reason));
        }
    }
    for ((place, digest), n) in &pushed_actions {
        if *n > 1 {
            broken.push(format!("{place}: {digest} was sent {n} times"));
        }
    }
    for (deployment, n) in &actions {
        if *n > 1 {
            broken.push(format!("deployment {deployment} had {n} Run Commands"));
        }
    }
    // Every command the adapter reports sending is one SSM holds, and no other.
    let mut commands = 0;
    let mut pages = aws_sdk_ssm::Client::new(&sdk)
        .list_commands()
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        commands += page?.commands().len();
    }
    if commands != sent.len() {
        broken.push(format!(
            "SSM holds {commands} commands; the adapter sent {}",
            sent.len()
        ));
    }
    let undelivered: Vec<String> = w
        .table_snapshot()
        .await?
        .into_iter()
        .filter(|item| item.contains("OUT#"))
        .collect();
    if !undelivered.is_empty() {
        broken.push(format!(
            "{} events never delivered: {undelivered:?}",
            undelivered.len()
        ));
    }
    for dead in functions.dead.lock().unwrap().iter() {
        broken.push(format!("dead letter: {dead}"));
    }

    // The figures.
    let started_at_once = functions.started_at_once.lock().unwrap().clone();
    let verdicts = functions.verdicts.lock().unwrap().clone();
    let mut report = Report {
        deliveries: deliveries.len(),
        swapped,
        twice,
        emitted,
        settled,
        invocations: functions.invocations.lock().unwrap().clone(),
        most_in_flight: functions.most_in_flight.load(Ordering::SeqCst),
        retried: functions.retried.load(Ordering::SeqCst),
        errors: functions.errors.lock().unwrap().clone(),
        run_commands: sent.len(),
        outcomes: functions.outcomes.lock().unwrap().clone(),
        verified: functions.verified.load(Ordering::SeqCst),
        to_notifier: functions.to_notifier.load(Ordering::SeqCst),
        busy: functions.busy.lock().unwrap().clone(),
        ..Report::default()
    };
    let mut seen = BTreeSet::new();
    for s in &sent {
        if let Some(failed) = &s.rollback_of {
            if let Some(at) = verdicts.get(failed) {
                report
                    .verdict_to_rollback
                    .push(s.at.saturating_duration_since(*at));
            }
            continue;
        }
        if seen.insert((s.place.clone(), s.digest.clone()))
            && let Some(at) = delivered_at.get(&s.digest)
        {
            let latency = s.at.saturating_duration_since(*at);
            if started_at_once.contains(&s.digest) {
                report.started_at_once.push(latency);
            } else {
                report.started_from_queue.push(latency);
            }
        }
    }
    for line in std::fs::read_to_string(w.requests_log())?
        .lines()
        .take(counted)
        .skip(setup_requests)
    {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [_, op, status, _, request, answer, entries] = fields[..] else {
            continue;
        };
        // The burst watches the table with BatchGetItem; the functions never batch reads.
        if op.ends_with(".BatchGetItem") {
            continue;
        }
        let number = |s: &str| s.parse::<u64>().unwrap_or(0);
        report.requests.entry(op.to_owned()).or_default().add(
            op,
            status,
            number(request),
            number(answer),
            number(entries),
        );
    }
    report.broken = broken;
    Ok(report)
}
