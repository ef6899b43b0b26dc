//! A burst of pushes, as a CI pipeline of a monorepo makes them: 1,000 ECR push events within
//! 10 seconds across 10 apps × 2 environments, 10 % of them delivered twice and 10 % out of
//! order, delivered concurrently (up to 32 invocations in flight) to the real entrypoints with
//! the real adapters (DynamoDB, EventBridge, SSM Run Command, ECR, SSM Parameter Store) on a
//! moto that applies each request atomically, as DynamoDB does (`tests/emulator.rs` shows why
//! moto's own server cannot be used), each environment's commands reaching its own EC2
//! instance there (tagged with its `Role`). Lifecycle events are routed as `template.yaml`'s rules
//! route them, a failed invocation is retried twice as Lambda retries it, each Run Command
//! reports its end in a status event after 100–400 ms, and the reconcile schedule runs every
//! 2 seconds.
//!
//! At the end, as a user would see it: every environment runs (and `status` says) the newest
//! digest pushed for its app; no (environment, digest) had two Run Commands; no lease is held
//! and nothing is queued; no event is left undelivered; nothing reached the dead-letter path.
//! The inputs come from a seed, printed; `PUSHDEPLOY_BURST_SEED=<seed>` replays them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use lambda_runtime::LambdaEvent;
use pushdeploy::adapters::ssm_config::ParameterConfig;
use pushdeploy::domain::{Deployment, Digest, TargetConfig};
use pushdeploy::entrypoints::{self, Function, routed_to};
use pushdeploy::ports::{RolloutStatus, Started, Target, TargetError, TargetRef};
use pushdeploy::services::{Core, Deployer, Rollback, Tracker, Verifier};
use pushdeploy_tests::{DOCUMENT, PARAMETER, World};
use serde_json::{Value, json};
use tokio::sync::Semaphore;

const APPS: usize = 10;
const PUSHES: usize = 1000;
const WINDOW: Duration = Duration::from_secs(10);
const IN_FLIGHT: usize = 32;
/// Lambda runs an asynchronous invocation once and retries it twice.
const ATTEMPTS: u32 = 3;

fn config() -> String {
    let mut yaml = String::from("apps:\n");
    for app in 0..APPS {
        yaml.push_str(&format!(
            r#"  app{app}:
    repository: acme/app{app}
    environments:
"#
        ));
        for env in ["staging", "production"] {
            yaml.push_str(&format!(
                r#"      {env}:
        deploy_on_push: {{ tags: ["v*"] }}
        target: {{ ssm: {{ instances: {{ tag: {{ Role: app{app}-{env} }} }}, container: app, ports: ["80:8000"] }} }}
        smoke:
          checks: [ {{ url: "{{smoke}}", expect_status: 200, body_contains: "ok", timeout_seconds: 2 }} ]
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

/// One push as ECR reports it.
#[derive(Clone)]
struct Push {
    app: usize,
    n: usize,
    event: Value,
}

/// A Run Command the SSM adapter sent, as the burst saw it.
struct Sent {
    at: Instant,
    place: String,
    digest: String,
}

/// The SSM adapter, watched: every command it sends is remembered and, a moment later,
/// reported finished by the status event SSM would send.
struct Watched {
    inner: Arc<dyn Target>,
    sent: Arc<Mutex<Vec<Sent>>>,
    finished: tokio::sync::mpsc::UnboundedSender<TargetRef>,
}

#[async_trait]
impl Target for Watched {
    async fn start(
        &self,
        deployment: &Deployment,
        config: &TargetConfig,
    ) -> Result<Started, TargetError> {
        let started = self.inner.start(deployment, config).await?;
        self.sent.lock().unwrap().push(Sent {
            at: Instant::now(),
            place: format!("{}/{}", deployment.app, deployment.environment),
            digest: deployment.image.digest.to_string(),
        });
        let _ = self.finished.send(started.target_ref.clone());
        Ok(started)
    }

    async fn status(&self, target_ref: &TargetRef) -> Result<RolloutStatus, TargetError> {
        self.inner.status(target_ref).await
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

struct Burst {
    deployer: Deployer,
    tracker: Tracker,
    verifier: Verifier,
    rollback: Rollback,
    slots: Semaphore,
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
    /// Deliveries made and not yet answered (or given up).
    pending: AtomicUsize,
    invocations: AtomicUsize,
    retried: AtomicUsize,
    dead: Mutex<Vec<String>>,
    /// When each push was delivered, by digest (its first delivery).
    delivered_at: Mutex<BTreeMap<String, Instant>>,
    outcomes: Mutex<BTreeMap<String, usize>>,
    /// The errors invocations failed with (their first words), and how often.
    errors: Mutex<BTreeMap<String, usize>>,
}

impl Burst {
    /// Delivers `payload` to `function` as Lambda would: in a slot of the concurrency
    /// limit, retried twice after an error, and recorded as a dead letter after the third.
    fn deliver(self: &Arc<Self>, function: Function, payload: Value) {
        self.pending.fetch_add(1, Ordering::SeqCst);
        let burst = self.clone();
        tokio::task::spawn_local(async move {
            let _slot = burst
                .slots
                .acquire()
                .await
                .expect("the semaphore stays open");
            let now = burst.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            burst.most_in_flight.fetch_max(now, Ordering::SeqCst);
            let mut last_error = String::new();
            let mut answered = false;
            for attempt in 1..=ATTEMPTS {
                burst.invocations.fetch_add(1, Ordering::SeqCst);
                match burst.invoke(function, payload.clone()).await {
                    Ok(answer) => {
                        burst.count(function, &answer);
                        answered = true;
                        break;
                    }
                    Err(error) => {
                        let first: String = error.chars().take(90).collect();
                        *burst.errors.lock().unwrap().entry(first).or_default() += 1;
                        last_error = error;
                        if attempt < ATTEMPTS {
                            burst.retried.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt)))
                                .await;
                        }
                    }
                }
            }
            if !answered {
                burst.dead.lock().unwrap().push(format!(
                    "{} after {ATTEMPTS} attempts at {}: {last_error}",
                    function.name(),
                    payload["detail-type"]
                ));
            }
            burst.in_flight.fetch_sub(1, Ordering::SeqCst);
            burst.pending.fetch_sub(1, Ordering::SeqCst);
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

    /// Tallies what the deployer answered each push, per environment (a skipped push by
    /// the first words of its reason).
    fn count(&self, function: Function, answer: &Value) {
        if function == Function::Tracker
            && let Some(errors) = answer["errors"].as_array().filter(|e| !e.is_empty())
        {
            println!("burst: a reconcile failed: {errors:?}");
        }
        let Some(results) = answer["results"].as_array() else {
            return;
        };
        let mut outcomes = self.outcomes.lock().unwrap();
        for result in results {
            let outcome = result["outcome"].as_str().unwrap_or("?");
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

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

// The entrypoints' futures are not `Send`, as Lambda's runtime does not need them to be: the
// invocations run concurrently on one thread, interleaved at every AWS request they await.
#[tokio::test]
async fn a_burst_of_pushes_ends_with_every_environment_on_its_newest_digest_and_nothing_twice() {
    tokio::task::LocalSet::new().run_until(burst()).await;
}

async fn burst() {
    let seed = std::env::var("PUSHDEPLOY_BURST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    println!("burst seed {seed} (PUSHDEPLOY_BURST_SEED={seed} replays these inputs)");
    let mut rng = Rng(seed);
    let w = World::start_atomic(&config())
        .await
        .expect("an atomic moto with the resources of template.yaml starts");
    let sdk = w.sdk.clone();
    let ecr = aws_sdk_ecr::Client::new(&sdk);
    // The hosts each environment's commands target, as EC2 instances with their Role.
    let http = reqwest::Client::new();
    for app in 0..APPS {
        for env in ["staging", "production"] {
            let form = [
                ("Action", "RunInstances".to_owned()),
                ("Version", "2016-11-15".to_owned()),
                ("ImageId", "ami-03cf127a".to_owned()),
                ("InstanceType", "t3.micro".to_owned()),
                ("MinCount", "1".to_owned()),
                ("MaxCount", "1".to_owned()),
                ("TagSpecification.1.ResourceType", "instance".to_owned()),
                ("TagSpecification.1.Tag.1.Key", "Role".to_owned()),
                ("TagSpecification.1.Tag.1.Value", format!("app{app}-{env}")),
            ];
            let answer = http
                .post(w.moto.endpoint())
                .header(
                    "Authorization",
                    format!(
                        "AWS4-HMAC-SHA256 Credential=testing/20261203/{}/ec2/aws4_request, SignedHeaders=host, Signature=0",
                        pushdeploy_local::moto::REGION
                    ),
                )
                .header("Content-Type", "application/x-www-form-urlencoded")
                .body(
                    form.iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join("&"),
                )
                .send()
                .await
                .expect("moto answers RunInstances");
            assert!(
                answer.status().is_success(),
                "RunInstances: {}",
                answer.text().await.unwrap_or_default()
            );
        }
    }

    // The pushes, in the order they happen: the images are in ECR before the burst.
    let base = time::OffsetDateTime::now_utc();
    let mut pushes = Vec::new();
    let mut per_app = [0usize; APPS];
    for i in 0..PUSHES {
        let app = rng.below(APPS as u64) as usize;
        let n = per_app[app];
        per_app[app] += 1;
        let digest = digest_of(app, n);
        let repository = format!("acme/app{app}");
        if n == 0 {
            ecr.create_repository()
                .repository_name(&repository)
                .send()
                .await
                .unwrap();
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
            .await
            .unwrap();
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
        pushes.push(Push { app, n, event });
    }
    let newest: BTreeMap<usize, Digest> = (0..APPS)
        .filter(|a| per_app[*a] > 0)
        .map(|a| (a, digest_of(a, per_app[a] - 1)))
        .collect();

    // The order EventBridge delivers them in: a tenth swapped with the next push, a tenth
    // delivered again a little later.
    let mut deliveries = pushes.clone();
    let mut swapped = 0;
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
    let mut twice = 0;
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

    // The functions, on the real adapters; the SSM target watched.
    let sent = Arc::new(Mutex::new(Vec::new()));
    let (finished, mut finishing) = tokio::sync::mpsc::unbounded_channel();
    let target: Arc<dyn Target> = Arc::new(Watched {
        inner: w.deployer.target.clone(),
        sent: sent.clone(),
        finished,
    });
    // Each Lambda container caches the configuration; the burst's share one cache.
    let core = Core {
        config: Arc::new(ParameterConfig::new(
            aws_sdk_ssm::Client::new(&sdk),
            PARAMETER,
            Duration::from_secs(60),
        )),
        ..w.deployer.core.clone()
    };
    let burst = Arc::new(Burst {
        deployer: Deployer {
            core: core.clone(),
            registry: w.deployer.registry.clone(),
            target: target.clone(),
            tags: w.deployer.tags.clone(),
        },
        tracker: Tracker {
            core: core.clone(),
            target: target.clone(),
        },
        verifier: Verifier {
            core: core.clone(),
            probe: w.verifier.probe.clone(),
        },
        rollback: Rollback {
            core,
            registry: w.rollback.registry.clone(),
            target,
        },
        slots: Semaphore::new(IN_FLIGHT),
        in_flight: AtomicUsize::new(0),
        most_in_flight: AtomicUsize::new(0),
        pending: AtomicUsize::new(0),
        invocations: AtomicUsize::new(0),
        retried: AtomicUsize::new(0),
        dead: Mutex::default(),
        delivered_at: Mutex::default(),
        outcomes: Mutex::default(),
        errors: Mutex::default(),
    });

    // SSM: each command ends a moment after it is sent, and says so.
    let reporter = {
        let burst = burst.clone();
        let w_event = |command: &str| w.ssm_event(command, "Success");
        let template = w_event("COMMAND");
        let mut rng = Rng(seed.rotate_left(17) | 1);
        tokio::task::spawn_local(async move {
            while let Some(target_ref) = finishing.recv().await {
                let delay = Duration::from_millis(100 + rng.below(300));
                let event = serde_json::to_string(&template)
                    .unwrap()
                    .replace("COMMAND", target_ref.id());
                let event: Value = serde_json::from_str(&event).unwrap();
                let burst = burst.clone();
                burst.pending.fetch_add(1, Ordering::SeqCst);
                tokio::task::spawn_local(async move {
                    tokio::time::sleep(delay).await;
                    burst.deliver(Function::Tracker, event);
                    burst.pending.fetch_sub(1, Ordering::SeqCst);
                });
            }
        })
    };
    // EventBridge: every lifecycle event published goes to the functions its rules name.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let router = {
        let (burst, stop, published) = (burst.clone(), stop.clone(), w.published.clone());
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
                            continue; // no channel is configured
                        }
                        burst.deliver(
                            function,
                            pushdeploy::fakes::delivered(event, &format!("lifecycle-{n}")),
                        );
                    }
                }
                routed = events.len();
                if last_schedule.elapsed() >= Duration::from_secs(2) {
                    tick += 1;
                    burst.deliver(Function::Tracker, scheduled(tick));
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
    let start = Instant::now();
    let gap = WINDOW / deliveries.len() as u32;
    for (i, push) in deliveries.iter().enumerate() {
        let due = start + gap * i as u32;
        tokio::time::sleep_until(due.into()).await;
        let digest = digest_of(push.app, push.n).to_string();
        burst
            .delivered_at
            .lock()
            .unwrap()
            .entry(digest)
            .or_insert_with(Instant::now);
        burst.deliver(Function::Deployer, push.event.clone());
    }
    let emitted = start.elapsed();

    // Until nothing moves: no delivery waiting, and every environment idle.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut quiet_since: Option<Instant> = None;
    let statuses = loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let idle = burst.pending.load(Ordering::SeqCst) == 0;
        let statuses = w.status().await;
        let settled = statuses
            .iter()
            .all(|s| s.in_flight.is_none() && s.queued.is_none());
        if idle && settled {
            let since = *quiet_since.get_or_insert_with(Instant::now);
            // Long enough for the schedule to run twice more on a quiet application.
            if since.elapsed() >= Duration::from_secs(5) {
                break statuses;
            }
        } else {
            quiet_since = None;
        }
        if Instant::now() >= deadline {
            // What holds each busy environment, and how its holder got there.
            for status in statuses.iter().filter(|s| s.in_flight.is_some()) {
                let held = status.in_flight.as_ref().unwrap();
                let dep = burst
                    .deployer
                    .core
                    .store
                    .deployment(&status.app, &status.environment, &held.deployment_id)
                    .await;
                let history = dep.map(|d| {
                    d.history
                        .iter()
                        .map(|h| format!("{:?} {}", h.phase, h.note.as_deref().unwrap_or("")))
                        .collect::<Vec<_>>()
                        .join(" → ")
                });
                println!(
                    "burst: {}/{} held by {} ({:?}), queued {:?}: {history:?}",
                    status.app,
                    status.environment,
                    held.deployment_id,
                    held.phase,
                    status.queued.as_ref().map(|q| q.image.digest.to_string())
                );
            }
            // The emulator's logs outlive the failed run.
            let kept = std::env::temp_dir().join(format!("pushdeploy-burst-{seed}"));
            let _ = std::fs::create_dir_all(&kept);
            let _ = std::fs::copy(w.requests_log(), kept.join("requests.log"));
            let _ = std::fs::copy(
                w.requests_log().with_file_name("moto.log"),
                kept.join("moto.log"),
            );
            println!("burst: the emulator's logs are kept in {}", kept.display());
        }
        assert!(
            Instant::now() < deadline,
            "seed {seed}: the burst did not settle within 120 s; {} deliveries pending, {} in \
             flight, {} invocations, {} Run Commands sent; still busy: {:?}",
            burst.pending.load(Ordering::SeqCst),
            burst.in_flight.load(Ordering::SeqCst),
            burst.invocations.load(Ordering::SeqCst),
            sent.lock().unwrap().len(),
            statuses
                .iter()
                .filter(|s| s.in_flight.is_some() || s.queued.is_some())
                .map(|s| format!(
                    "{}/{}{}",
                    s.app,
                    s.environment,
                    s.frozen
                        .as_ref()
                        .map(|f| format!(" (frozen: {})", f.reason))
                        .unwrap_or_default()
                ))
                .collect::<Vec<_>>()
        );
    };
    let settled = start.elapsed();
    stop.store(true, Ordering::SeqCst);
    router.await.unwrap();
    reporter.abort();

    // What a user would see.
    let mut broken = Vec::new();
    let sent = std::mem::take(&mut *sent.lock().unwrap());
    let mut host: BTreeMap<String, String> = BTreeMap::new();
    let mut actions: BTreeMap<(String, String), usize> = BTreeMap::new();
    for s in &sent {
        host.insert(s.place.clone(), s.digest.clone());
        *actions
            .entry((s.place.clone(), s.digest.clone()))
            .or_default() += 1;
    }
    for status in &statuses {
        let place = format!("{}/{}", status.app, status.environment);
        let app: usize = status.app.as_str()["app".len()..].parse().unwrap();
        let want = newest.get(&app).map(Digest::to_string);
        let says = status.current.as_ref().map(|c| c.digest.to_string());
        if says != want {
            broken.push(format!(
                "{place}: status says {says:?}, the newest push was {want:?}"
            ));
        }
        if host.get(&place) != want.as_ref() {
            broken.push(format!(
                "{place}: the host was last sent {:?}, the newest push was {want:?}",
                host.get(&place)
            ));
        }
        if let Some(held) = &status.in_flight {
            broken.push(format!("{place}: still held by {}", held.deployment_id));
        }
        if let Some(queued) = &status.queued {
            broken.push(format!("{place}: still queued: {queued:?}"));
        }
    }
    for ((place, digest), n) in &actions {
        if *n > 1 {
            broken.push(format!("{place}: {digest} was sent {n} times"));
        }
    }
    // Every command the adapter reports sending is one SSM holds, and no other.
    let mut commands = 0;
    let mut pages = aws_sdk_ssm::Client::new(&sdk)
        .list_commands()
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        commands += page.unwrap().commands().len();
    }
    if commands != sent.len() {
        broken.push(format!(
            "SSM holds {commands} commands; the adapter sent {}",
            sent.len()
        ));
    }
    let undelivered: Vec<String> = w
        .table_snapshot()
        .await
        .unwrap()
        .into_iter()
        .filter(|item| item.contains("OUT#"))
        .collect();
    if !undelivered.is_empty() {
        broken.push(format!(
            "{} events never delivered: {undelivered:?}",
            undelivered.len()
        ));
    }
    for dead in burst.dead.lock().unwrap().iter() {
        broken.push(format!("dead letter: {dead}"));
    }

    // The figures.
    let delivered_at = burst.delivered_at.lock().unwrap().clone();
    let mut latencies: Vec<Duration> = Vec::new();
    let mut seen = BTreeSet::new();
    for s in &sent {
        if seen.insert((s.place.clone(), s.digest.clone()))
            && let Some(at) = delivered_at.get(&s.digest)
        {
            latencies.push(s.at.saturating_duration_since(*at));
        }
    }
    latencies.sort();
    let requests = std::fs::read_to_string(w.requests_log())
        .unwrap_or_default()
        .lines()
        .count();
    println!(
        "burst: {PUSHES} pushes ({swapped} delivered out of order, {twice} delivered twice) \
         to {APPS} apps × 2 environments, {} deliveries in {:.1} s; settled after {:.1} s",
        deliveries.len(),
        emitted.as_secs_f64(),
        settled.as_secs_f64()
    );
    println!(
        "burst: {} invocations, at most {} in flight, {} retried after an error; {} Run \
         Commands sent; {requests} AWS requests in all",
        burst.invocations.load(Ordering::SeqCst),
        burst.most_in_flight.load(Ordering::SeqCst),
        burst.retried.load(Ordering::SeqCst),
        sent.len()
    );
    println!(
        "burst: push delivered → Run Command sent, for pushes that were sent: p50 {:.0} ms, \
         p99 {:.0} ms, max {:.0} ms ({} samples)",
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        latencies.len()
    );
    println!(
        "burst: what the deployer answered the pushes, per environment: {:?}",
        burst.outcomes.lock().unwrap()
    );
    println!(
        "burst: what failed invocations said: {:?}",
        burst.errors.lock().unwrap()
    );
    assert!(
        burst.most_in_flight.load(Ordering::SeqCst) >= 20,
        "seed {seed}: the burst never had 20 invocations in flight"
    );
    assert!(
        broken.is_empty(),
        "seed {seed} (PUSHDEPLOY_BURST_SEED={seed} replays the inputs):\n{}",
        broken.join("\n")
    );
}
