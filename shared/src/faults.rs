//! Crash safety, proven by fault injection. Each scenario runs the real entrypoints over the
//! in-memory ports, with EventBridge's routing (`ROUTES`), Lambda's two retries of a failed
//! or stopped invocation, the targets finishing their rollouts, and the reconciliation
//! schedule. It runs once to count the port calls; then, for every call index and every
//! kind of fault (the call fails before taking effect; it takes effect and its answer is
//! lost; the function is killed right after it; the events it publishes are delivered
//! twice), it runs again with that fault, and the
//! end state must be the one a user expects: the target runs what `current` says, no
//! lease is held, every lifecycle event the records imply was published and none is left
//! undelivered, no healthy digest is quarantined, no queued or approved image is lost, and
//! no deployment has two target actions. A failure prints the scenario, the call index,
//! what the call was and the fault, which replay it exactly.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};

use crate::domain::{
    AppName, Config, Deployment, DeploymentId, Digest, EnvName, EnvState, EventType,
    LifecycleEvent, Phase, Repository, Tag, TargetConfig,
};
use crate::entrypoints::{self, Function, routed_to};
use crate::fakes::{
    FakeRegistry, FakeTarget, FixedConfig, ManualClock, MemoryStore, RecordingPublisher, World,
    delivered,
};
use crate::metrics::{Meter, Sink};
use crate::ports::{
    AlarmError, AlarmState, AlarmValue, Alarms, CallError, Clock, Commit, ConfigLoadError,
    ConfigSource, DeleteFailure, EventPublisher, HttpProbe, ImageCatalog, ImagePage, ImageRegistry,
    OutboxEntry, ProbeError, ProbeResponse, PublishError, RegistryError, ResolvedImage,
    RolloutStatus, Started, StateStore, StoreError, TagMove, TagWriter, Target, TargetError,
    TargetRef,
};
use crate::services::{
    Control, Core, Deployer, Janitor, Rollback, ServiceError, Tracker, Verifier,
};

mod interleavings;
mod phases;
mod seams;

/// What goes wrong at the armed call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// The call fails without taking effect.
    Before,
    /// The call takes effect; its answer is lost, and the caller hears an error.
    AnswerLost,
    /// The call takes effect; the function is killed right after it.
    Killed,
    /// Events published are delivered twice (EventBridge delivers at least once).
    Twice,
}

const FAULTS: [Fault; 4] = [
    Fault::Before,
    Fault::AnswerLost,
    Fault::Killed,
    Fault::Twice,
];

impl Fault {
    /// Whether this fault means something at `call`: a read whose answer is lost is a read
    /// that failed, and only published events can arrive twice.
    fn applies(self, call: &str) -> bool {
        let writes = matches!(
            call,
            "StateStore::commit"
                | "StateStore::delivered"
                | "EventPublisher::publish"
                | "Target::start"
                | "Target::cancel"
                | "TagWriter::move_tag"
                | "ImageCatalog::delete"
        );
        match self {
            Fault::Before | Fault::Killed => true,
            Fault::AnswerLost => writes,
            Fault::Twice => call == "EventPublisher::publish",
        }
    }
}

/// A small deterministic generator (xorshift64*), so a seed replays the same run.
struct Rng(u64);

impl Rng {
    /// Any seed, mixed (splitmix64) so that near seeds make unrelated sequences.
    fn new(seed: u64) -> Self {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Counts port calls and fails the armed one.
#[derive(Default)]
struct Faults {
    calls: Mutex<Vec<&'static str>>,
    armed: Mutex<Option<(usize, Fault)>>,
    killed: AtomicBool,
    /// Port calls that fail every time, as they would in an outage (by name, as counted).
    failing: Mutex<BTreeSet<&'static str>>,
    /// When set, every port call first gives way, so invocations running at once interleave
    /// at their AWS requests (`interleavings`).
    pace: Mutex<Option<Pace>>,
    /// When set, each call to a target is throttled (refused before taking effect) with
    /// this chance in 4, seeded (`interleavings`).
    throttle: Mutex<Option<Rng>>,
    /// Asked after every commit: once it says yes, `tripped` is set and the invocation
    /// that made the commit stops there (`phases`).
    trip: Mutex<Option<Box<dyn Fn() -> bool + Send>>>,
    tripped: AtomicBool,
    /// What the environments needed all through the janitor's run, if one runs.
    janitor_watch: JanitorWatch,
}

/// The digests the environments needed at every moment since a janitor listed the
/// repository: it lists, the state changes commit by commit, it deletes.
#[derive(Default)]
struct JanitorWatch {
    view: Mutex<Option<(MemoryStore, Arc<Config>)>>,
    all_along: Mutex<Option<BTreeMap<Digest, String>>>,
}

impl JanitorWatch {
    fn needed_now(&self) -> Option<BTreeMap<Digest, String>> {
        let view = self.view.lock().unwrap();
        let (store, config) = view.as_ref()?;
        Some(needed(store, config))
    }

    /// A janitor lists the repository: from now on, what is needed is watched.
    fn listed(&self) {
        if self.all_along.lock().unwrap().is_none() {
            *self.all_along.lock().unwrap() = self.needed_now();
        }
        self.observe();
    }

    /// The state may have changed: only what is still needed was needed all along.
    fn observe(&self) {
        let Some(now) = self
            .all_along
            .lock()
            .unwrap()
            .as_ref()
            .and(self.needed_now())
        else {
            return;
        };
        if let Some(all_along) = self.all_along.lock().unwrap().as_mut() {
            all_along.retain(|d, _| now.contains_key(d));
        }
    }

    /// Between invocations: no janitor runs.
    fn forget(&self) {
        *self.all_along.lock().unwrap() = None;
    }

    /// The deletions of digests needed all along, as broken promises.
    fn judge(&self, digests: &[Digest]) -> Vec<String> {
        self.observe();
        let all_along = self.all_along.lock().unwrap();
        digests
            .iter()
            .filter_map(|d| {
                let why = all_along.as_ref()?.get(d)?;
                Some(format!(
                    "the janitor deleted {d}, {why} all through its run"
                ))
            })
            .collect()
    }
}

/// How often a port call gives way first.
enum Pace {
    /// A seeded number of times, 0 to 2.
    Seeded(Rng),
    /// Once: invocations polled in turn go call by call, in step.
    Lockstep,
}

/// A future that is pending once, asking to be polled again: a point where another
/// invocation may run.
struct GiveWay(bool);

impl Future for GiveWay {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.0 {
            return std::task::Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}

impl Faults {
    /// Gives way before a port call, as many times as the pace says.
    async fn pace(&self) {
        let times = match self.pace.lock().unwrap().as_mut() {
            None => 0,
            Some(Pace::Seeded(rng)) => rng.below(3),
            Some(Pace::Lockstep) => 1,
        };
        for _ in 0..times {
            GiveWay(false).await;
        }
    }

    /// Whether calls named `what` fail for now (an outage).
    fn out(&self, what: &'static str) -> bool {
        self.failing.lock().unwrap().contains(what)
    }

    /// Whether this call to a target is throttled (when targets throttle at random).
    fn throttled(&self) -> bool {
        self.throttle
            .lock()
            .unwrap()
            .as_mut()
            .is_some_and(|rng| rng.below(4) == 0)
    }

    /// The fault of this call, if it is the armed one.
    fn call(&self, what: &'static str) -> Option<Fault> {
        let mut calls = self.calls.lock().unwrap();
        let n = calls.len();
        calls.push(what);
        match *self.armed.lock().unwrap() {
            Some((k, fault)) if k == n => Some(fault),
            _ => None,
        }
    }

    /// Takes back the count of the last call (it is counted again by `around`).
    fn uncount(&self) {
        self.calls.lock().unwrap().pop();
    }

    /// Stops the invocation here: it never returns.
    async fn die<T>(&self) -> T {
        self.killed.store(true, Ordering::SeqCst);
        std::future::pending().await
    }

    /// Runs `effect` under the fault of this call; `error` is what the caller hears.
    async fn around<T, E>(
        &self,
        what: &'static str,
        effect: impl std::future::Future<Output = Result<T, E>>,
        error: impl FnOnce() -> E,
    ) -> Result<T, E> {
        self.pace().await;
        if self.out(what) {
            return Err(error());
        }
        match self.call(what) {
            None => effect.await,
            Some(Fault::Before) => Err(error()),
            Some(Fault::AnswerLost) => {
                let _ = effect.await;
                Err(error())
            }
            Some(Fault::Killed) => {
                let _ = effect.await;
                self.die().await
            }
            // Only the publisher repeats; elsewhere the call goes as usual.
            Some(Fault::Twice) => effect.await,
        }
    }
}

/// A target's refusal for now, as AWS throttles.
fn throttled(operation: &str) -> TargetError {
    TargetError::Throttled(CallError::said(
        operation,
        "ThrottlingException: Rate exceeded",
    ))
}

fn lost(operation: &str) -> CallError {
    CallError::said(operation, "the connection closed before the answer came")
}

struct FaultyStore {
    inner: MemoryStore,
    faults: Arc<Faults>,
}

#[async_trait]
impl StateStore for FaultyStore {
    async fn env_state(&self, app: &AppName, env: &EnvName) -> Result<EnvState, StoreError> {
        let read = self.inner.env_state(app, env);
        self.faults
            .around("StateStore::env_state", read, || {
                StoreError::Transient(lost("GetItem"))
            })
            .await
    }

    async fn deployment(
        &self,
        app: &AppName,
        env: &EnvName,
        id: &DeploymentId,
    ) -> Result<Deployment, StoreError> {
        let read = self.inner.deployment(app, env, id);
        self.faults
            .around("StateStore::deployment", read, || {
                StoreError::Transient(lost("GetItem"))
            })
            .await
    }

    async fn find_by_target_ref(&self, target_ref: &str) -> Result<Option<Deployment>, StoreError> {
        let read = self.inner.find_by_target_ref(target_ref);
        self.faults
            .around("StateStore::find_by_target_ref", read, || {
                StoreError::Transient(lost("GetItem"))
            })
            .await
    }

    async fn recent_deployments(
        &self,
        app: &AppName,
        env: &EnvName,
        limit: usize,
    ) -> Result<Vec<Deployment>, StoreError> {
        let read = self.inner.recent_deployments(app, env, limit);
        self.faults
            .around("StateStore::recent_deployments", read, || {
                StoreError::Transient(lost("Query"))
            })
            .await
    }

    async fn commit(&self, commit: Commit<'_>) -> Result<(), StoreError> {
        self.faults.pace().await;
        if self.faults.out("StateStore::commit") {
            return Err(StoreError::Transient(lost("TransactWriteItems")));
        }
        let result = self.commit_under_fault(commit).await;
        // What the environments need, all through a janitor's run: a commit may change it.
        self.faults.janitor_watch.observe();
        result
    }

    async fn undelivered(
        &self,
        app: &AppName,
        env: &EnvName,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        let read = self.inner.undelivered(app, env);
        self.faults
            .around("StateStore::undelivered", read, || {
                StoreError::Transient(lost("Query"))
            })
            .await
    }

    async fn delivered(
        &self,
        app: &AppName,
        env: &EnvName,
        ids: &[String],
    ) -> Result<Vec<String>, StoreError> {
        let write = self.inner.delivered(app, env, ids);
        self.faults
            .around("StateStore::delivered", write, || {
                StoreError::Transient(lost("DeleteItem"))
            })
            .await
    }
}

impl FaultyStore {
    async fn commit_under_fault(&self, commit: Commit<'_>) -> Result<(), StoreError> {
        match self.faults.call("StateStore::commit") {
            None if self.faults.trip.lock().unwrap().is_some() => {
                let result = self.inner.commit(commit).await;
                let reached = self
                    .faults
                    .trip
                    .lock()
                    .unwrap()
                    .as_ref()
                    .is_some_and(|t| t());
                if reached {
                    *self.faults.trip.lock().unwrap() = None;
                    self.faults.tripped.store(true, Ordering::SeqCst);
                    return self.faults.die().await;
                }
                result
            }
            None => self.inner.commit(commit).await,
            Some(Fault::Before) => Err(StoreError::Transient(lost("TransactWriteItems"))),
            Some(Fault::AnswerLost) => {
                self.inner.lose_next_answer();
                self.inner.commit(commit).await
            }
            Some(Fault::Killed) => {
                let _ = self.inner.commit(commit).await;
                self.faults.die().await
            }
            Some(Fault::Twice) => self.inner.commit(commit).await,
        }
    }
}

struct FaultyPublisher {
    inner: RecordingPublisher,
    faults: Arc<Faults>,
}

#[async_trait]
impl EventPublisher for FaultyPublisher {
    async fn publish(&self, events: &[LifecycleEvent]) -> Result<(), PublishError> {
        if self.faults.call("EventPublisher::publish") == Some(Fault::Twice) {
            self.inner.publish(events).await?;
            return self.inner.publish(events).await;
        }
        self.faults.uncount();
        if self.faults.out("EventPublisher::publish") {
            return Err(PublishError::Transient(lost("PutEvents")));
        }
        let publish = self.inner.publish(events);
        self.faults
            .around("EventPublisher::publish", publish, || {
                PublishError::Transient(lost("PutEvents"))
            })
            .await
    }
}

struct FaultyTarget {
    inner: FakeTarget,
    faults: Arc<Faults>,
}

#[async_trait]
impl Target for FaultyTarget {
    async fn start(
        &self,
        deployment: &Deployment,
        config: &TargetConfig,
    ) -> Result<Started, TargetError> {
        let start = self.inner.start(deployment, config);
        if self.faults.throttled() {
            return Err(throttled("SendCommand"));
        }
        self.faults
            .around("Target::start", start, || {
                TargetError::Transient(lost("SendCommand"))
            })
            .await
    }

    async fn status(&self, target_ref: &TargetRef) -> Result<RolloutStatus, TargetError> {
        let status = self.inner.status(target_ref);
        if self.faults.throttled() {
            return Err(throttled("ListCommands"));
        }
        self.faults
            .around("Target::status", status, || {
                TargetError::Transient(lost("ListCommands"))
            })
            .await
    }

    async fn cancel(&self, target_ref: &TargetRef) -> Result<(), TargetError> {
        let cancel = self.inner.cancel(target_ref);
        if self.faults.throttled() {
            return Err(throttled("CancelCommand"));
        }
        self.faults
            .around("Target::cancel", cancel, || {
                TargetError::Transient(lost("CancelCommand"))
            })
            .await
    }

    async fn find(
        &self,
        deployment: &Deployment,
        config: &TargetConfig,
    ) -> Result<Option<Started>, TargetError> {
        let find = self.inner.find(deployment, config);
        if self.faults.throttled() {
            return Err(throttled("ListCommands"));
        }
        self.faults
            .around("Target::find", find, || {
                TargetError::Transient(lost("ListCommands"))
            })
            .await
    }

    async fn platform(
        &self,
        config: &TargetConfig,
    ) -> Result<Option<crate::domain::platform::Platform>, TargetError> {
        let read = self.inner.platform(config);
        if self.faults.throttled() {
            return Err(throttled("DescribeTaskDefinition"));
        }
        self.faults
            .around("Target::platform", read, || {
                TargetError::Transient(lost("DescribeTaskDefinition"))
            })
            .await
    }
}

struct FaultyRegistry {
    inner: FakeRegistry,
    faults: Arc<Faults>,
    /// Deletions of digests the environments needed all through the janitor's run
    /// (`Faults::janitor_watch`): broken promises. (A digest that becomes needed while the
    /// janitor runs, an instant before it deletes it, fails its pull instead: the hosts keep
    /// what they ran.)
    deleted_needed: Arc<Mutex<Vec<String>>>,
}

#[async_trait]
impl ImageRegistry for FaultyRegistry {
    async fn resolve_tag(
        &self,
        repository: &Repository,
        tag: &Tag,
    ) -> Result<ResolvedImage, RegistryError> {
        let read = self.inner.resolve_tag(repository, tag);
        self.faults
            .around("ImageRegistry::resolve_tag", read, || {
                RegistryError::Transient(lost("DescribeImages"))
            })
            .await
    }

    async fn find_digest(
        &self,
        repository: &Repository,
        digest: &Digest,
    ) -> Result<ResolvedImage, RegistryError> {
        let read = self.inner.find_digest(repository, digest);
        self.faults
            .around("ImageRegistry::find_digest", read, || {
                RegistryError::Transient(lost("DescribeImages"))
            })
            .await
    }

    async fn scan(
        &self,
        repository: &Repository,
        digest: &Digest,
    ) -> Result<crate::ports::ScanState, RegistryError> {
        let read = self.inner.scan(repository, digest);
        self.faults
            .around("ImageRegistry::scan", read, || {
                RegistryError::Transient(lost("DescribeImageScanFindings"))
            })
            .await
    }

    async fn platforms(
        &self,
        repository: &Repository,
        digest: &Digest,
    ) -> Result<crate::domain::platform::ImagePlatforms, RegistryError> {
        let read = self.inner.platforms(repository, digest);
        self.faults
            .around("ImageRegistry::platforms", read, || {
                RegistryError::Transient(lost("BatchGetImage"))
            })
            .await
    }
}

#[async_trait]
impl ImageCatalog for FaultyRegistry {
    async fn list_page(
        &self,
        repository: &Repository,
        next: Option<String>,
    ) -> Result<ImagePage, RegistryError> {
        self.faults.janitor_watch.listed();
        let read = self.inner.list_page(repository, next);
        self.faults
            .around("ImageCatalog::list_page", read, || {
                RegistryError::Transient(lost("DescribeImages"))
            })
            .await
    }

    async fn index_children(
        &self,
        repository: &Repository,
        indexes: &[Digest],
    ) -> Result<Vec<(Digest, Vec<Digest>)>, RegistryError> {
        let read = self.inner.index_children(repository, indexes);
        self.faults
            .around("ImageCatalog::index_children", read, || {
                RegistryError::Transient(lost("BatchGetImage"))
            })
            .await
    }

    async fn delete(
        &self,
        repository: &Repository,
        digests: &[Digest],
    ) -> Result<Vec<DeleteFailure>, RegistryError> {
        let write = async {
            let broken = self.faults.janitor_watch.judge(digests);
            self.deleted_needed.lock().unwrap().extend(broken);
            ImageCatalog::delete(&self.inner, repository, digests).await
        };
        self.faults
            .around("ImageCatalog::delete", write, || {
                RegistryError::Transient(lost("BatchDeleteImage"))
            })
            .await
    }
}

#[async_trait]
impl TagWriter for FaultyRegistry {
    async fn move_tag(
        &self,
        repository: &Repository,
        digest: &Digest,
        tag: &Tag,
    ) -> Result<TagMove, RegistryError> {
        let write = self.inner.move_tag(repository, digest, tag);
        self.faults
            .around("TagWriter::move_tag", write, || {
                RegistryError::Transient(lost("PutImage"))
            })
            .await
    }
}

struct FaultyConfig {
    inner: FixedConfig,
    faults: Arc<Faults>,
}

#[async_trait]
impl ConfigSource for FaultyConfig {
    async fn load(&self) -> Result<Arc<Config>, ConfigLoadError> {
        let load = self.inner.load();
        self.faults
            .around("ConfigSource::load", load, || {
                ConfigLoadError::Unavailable {
                    origin: "SSM parameter /pushdeploy/config".into(),
                    retryable: true,
                    source: lost("GetParameter"),
                }
            })
            .await
    }
}

/// The smoke checks' endpoints: each answers `ok` when its environment runs a healthy
/// digest, as the target says.
struct ModelProbe {
    target: FakeTarget,
    urls: BTreeMap<String, (AppName, EnvName)>,
    healthy: BTreeSet<char>,
    faults: Arc<Faults>,
}

#[async_trait]
impl HttpProbe for ModelProbe {
    async fn get(&self, url: &str, _timeout: Duration) -> Result<ProbeResponse, ProbeError> {
        let answer = async {
            let (app, env) = self
                .urls
                .get(url)
                .ok_or_else(|| ProbeError::Connect(format!("nothing listens at {url}")))?;
            let healthy = self
                .target
                .runs(app, env)
                .and_then(|image| image.rsplit(':').next()?.chars().next())
                .is_some_and(|c| self.healthy.contains(&c));
            Ok(if healthy {
                ProbeResponse {
                    status: 200,
                    body: "ok".into(),
                }
            } else {
                ProbeResponse {
                    status: 500,
                    body: "broken".into(),
                }
            })
        };
        self.faults
            .around("HttpProbe::get", answer, || {
                ProbeError::Connect("connection reset".into())
            })
            .await
    }
}

/// The watched alarms: each is in `ALARM` while its environment runs a digest the scenario
/// says sets it off, as an error-rate alarm would.
struct ModelAlarms {
    target: FakeTarget,
    watched: BTreeMap<String, (AppName, EnvName)>,
    alarming: BTreeSet<char>,
    faults: Arc<Faults>,
}

impl ModelAlarms {
    fn in_alarm(&self, name: &str) -> Option<bool> {
        let (app, env) = self.watched.get(name)?;
        Some(
            self.target
                .runs(app, env)
                .and_then(|image| image.rsplit(':').next()?.chars().next())
                .is_some_and(|c| self.alarming.contains(&c)),
        )
    }
}

#[async_trait]
impl Alarms for ModelAlarms {
    async fn states(&self, names: &[String]) -> Result<Vec<AlarmState>, AlarmError> {
        let answer = async {
            Ok(names
                .iter()
                .filter_map(|name| {
                    self.in_alarm(name).map(|alarm| AlarmState {
                        name: name.clone(),
                        value: if alarm {
                            AlarmValue::Alarm
                        } else {
                            AlarmValue::Ok
                        },
                        reason: if alarm {
                            "Threshold Crossed: 5xx above 5".into()
                        } else {
                            "Threshold Crossed: 5xx below 5".into()
                        },
                    })
                })
                .collect())
        };
        self.faults
            .around("Alarms::states", answer, || {
                AlarmError::Transient(lost("DescribeAlarms"))
            })
            .await
    }
}

/// Something that happens to the application from outside.
#[derive(Debug, Clone)]
enum Stimulus {
    /// An image pushed to ECR (its digest's repeated hex digit, and its tag).
    Push(char, &'static str),
    /// A request typed in the console.
    Console(Function, Value),
    /// ECR basic scanning completes for a digest, with this many critical findings: ECR
    /// has the result from now on, and announces it with `ECR Image Scan`.
    Scan(char, u64),
    /// EventBridge holds back deliveries of this lifecycle event until `Release` (a slow
    /// delivery, a function out of concurrency): others overtake them.
    HoldBack(EventType),
    Release,
    /// The target refuses the next start for now (throttled).
    RefuseNextStart,
}

/// When a stimulus comes: once everything before it settled, or at once.
#[derive(Debug, Clone, Copy, PartialEq)]
enum When {
    Settled,
    AtOnce,
}

struct Scenario {
    name: &'static str,
    config: String,
    /// Digests whose smoke tests pass.
    healthy: &'static [char],
    /// Digests whose rollouts the target fails.
    fail_on_target: &'static [char],
    /// Rollbacks' rollouts fail on the target.
    rollbacks_fail: bool,
    /// Digests that set off their environment's watched alarms while they run.
    alarming: &'static [char],
    /// Digests built for linux/arm64 only (every target runs linux/amd64).
    arm64: &'static [char],
    stimuli: Vec<(When, Stimulus)>,
    /// Per environment at the end: the digest it runs, and whether it is frozen.
    expect: Vec<(&'static str, Option<char>, bool)>,
}

/// One pending delivery of an event or request to a function.
struct Delivery {
    function: Function,
    payload: Value,
    attempt: u32,
}

/// A run of one scenario, with at most one fault armed.
struct Sim<'a> {
    scenario: &'a Scenario,
    faults: Arc<Faults>,
    store: MemoryStore,
    events: RecordingPublisher,
    target: FakeTarget,
    registry: FakeRegistry,
    clock: ManualClock,
    config: Arc<Config>,
    deployer: Deployer,
    tracker: Tracker,
    verifier: Verifier,
    rollback: Rollback,
    control: Control,
    janitor: Janitor,
    alarms: Arc<ModelAlarms>,
    /// What each watched alarm was last announced as (in `ALARM` or not).
    alarm_was: BTreeMap<String, bool>,
    inbox: VecDeque<Delivery>,
    routed: usize,
    dead: Vec<String>,
    ids: usize,
    /// Functions whose invocations fail (an outage: a VPC without a route, no concurrency
    /// left). The tracker's scheduled passes always run.
    down: BTreeSet<Function>,
    /// The targets no longer finish rollouts (they hang, or nobody hears of them).
    stalled: bool,
    /// Deliveries of this event wait in `held_back` (`Stimulus::HoldBack`).
    hold_back: BTreeSet<&'static str>,
    held_back: Vec<Delivery>,
    /// Rollouts of images the registry did not hold any more when they were pulled: an
    /// image deleted an instant before it was deployed fails its pull (the hosts keep what
    /// they ran), which is not a broken promise unless it was needed when deleted.
    pulled_missing: BTreeSet<String>,
    /// Deletions of digests some environment needed at that moment.
    registry_watch: Arc<Mutex<Vec<String>>>,
    /// How many of the registry's tag moves have been announced.
    tags_moved: usize,
    /// The tags people pushed, with their digests.
    pushed: BTreeSet<(String, Digest)>,
    /// What becomes unavailable once `faults.trip` goes off (`phases`).
    outage: Option<Outage>,
    /// Dead letters a person is expected to replay (deliveries throttled three times).
    given_up: Vec<String>,
}

/// What is unavailable from some moment on: functions whose invocations fail (the
/// tracker's schedule still runs), port calls that fail, whether the target forgets its
/// rollouts. Targets stop finishing rollouts, and their events stop coming.
#[derive(Debug, Clone, Default)]
struct Outage {
    down: BTreeSet<Function>,
    failing: BTreeSet<&'static str>,
    forget: bool,
}

const DOCUMENT: &str = "pushdeploy-deploy";
/// Lambda runs an asynchronous invocation once and retries it twice.
const ATTEMPTS: u32 = 3;

impl<'a> Sim<'a> {
    fn new(scenario: &'a Scenario, armed: Option<(usize, Fault)>) -> Self {
        let faults = Arc::new(Faults::default());
        *faults.armed.lock().unwrap() = armed;
        let config = Arc::new(Config::from_yaml(&scenario.config).unwrap());
        let store = MemoryStore::default();
        let events = RecordingPublisher::default();
        let target = FakeTarget::realistic();
        let registry = FakeRegistry::new(World::REGISTRY);
        registry.create_repository("acme/web");
        for hex in scenario.arm64 {
            registry.built_for(
                &Digest::parse(&format!("sha256:{}", hex.to_string().repeat(64))).unwrap(),
                crate::domain::platform::ImagePlatforms::Known(vec![
                    crate::domain::platform::Platform::parse("linux/arm64").unwrap(),
                ]),
            );
        }
        let clock = ManualClock::new(World::START);
        let core = Core {
            store: Arc::new(FaultyStore {
                inner: store.clone(),
                faults: faults.clone(),
            }),
            events: Arc::new(FaultyPublisher {
                inner: events.clone(),
                faults: faults.clone(),
            }),
            config: Arc::new(FaultyConfig {
                inner: FixedConfig(config.clone()),
                faults: faults.clone(),
            }),
            clock: Arc::new(clock.clone()),
            meter: Meter::new("pushdeploy/faults", Sink::Memory(Arc::default())),
        };
        let faulty_target: Arc<dyn Target> = Arc::new(FaultyTarget {
            inner: target.clone(),
            faults: faults.clone(),
        });
        let registry_watch = Arc::new(Mutex::new(Vec::new()));
        *faults.janitor_watch.view.lock().unwrap() = Some((store.clone(), config.clone()));
        let faulty_registry = Arc::new(FaultyRegistry {
            inner: registry.clone(),
            faults: faults.clone(),
            deleted_needed: registry_watch.clone(),
        });
        let mut urls = BTreeMap::new();
        for (app, env, env_config) in config.environments() {
            for check in &env_config.smoke.checks {
                urls.insert(check.url.clone(), (app.clone(), env.clone()));
            }
        }
        let mut watched = BTreeMap::new();
        for (app, env, env_config) in config.environments() {
            for alarm in env_config.watch.iter().flat_map(|w| &w.alarms) {
                watched.insert(alarm.clone(), (app.clone(), env.clone()));
            }
        }
        let alarms = Arc::new(ModelAlarms {
            target: target.clone(),
            watched,
            alarming: scenario.alarming.iter().copied().collect(),
            faults: faults.clone(),
        });
        let probe = Arc::new(ModelProbe {
            target: target.clone(),
            urls,
            healthy: scenario.healthy.iter().copied().collect(),
            faults: faults.clone(),
        });
        Self {
            scenario,
            deployer: Deployer {
                core: core.clone(),
                registry: faulty_registry.clone(),
                target: faulty_target.clone(),
                tags: faulty_registry.clone(),
            },
            tracker: Tracker {
                core: core.clone(),
                target: faulty_target.clone(),
                registry: faulty_registry.clone(),
            },
            verifier: Verifier {
                core: core.clone(),
                probe,
                alarms: alarms.clone(),
            },
            rollback: Rollback {
                core: core.clone(),
                registry: faulty_registry.clone(),
                target: faulty_target,
            },
            janitor: Janitor {
                core: core.clone(),
                catalog: faulty_registry,
            },
            control: Control { core },
            alarms,
            alarm_was: BTreeMap::new(),
            faults,
            store,
            events,
            target,
            registry,
            clock,
            config,
            inbox: VecDeque::new(),
            routed: 0,
            dead: Vec::new(),
            ids: 0,
            down: BTreeSet::new(),
            stalled: false,
            hold_back: BTreeSet::new(),
            held_back: Vec::new(),
            pulled_missing: BTreeSet::new(),
            registry_watch,
            tags_moved: 0,
            pushed: BTreeSet::new(),
            outage: None,
            given_up: Vec::new(),
        }
    }

    /// The stored state of an environment of `web`.
    async fn state(&self, env: &str) -> EnvState {
        self.store
            .env_state(&web(), &EnvName::parse(env).unwrap())
            .await
            .unwrap()
    }

    /// The deployments of an environment of `web`, oldest first.
    fn deployments(&self, env: &str) -> Vec<Deployment> {
        self.store
            .deployments(&web(), &EnvName::parse(env).unwrap())
    }

    fn image(&self, hex: char) -> Digest {
        Digest::parse(&format!("sha256:{}", hex.to_string().repeat(64))).unwrap()
    }

    /// Runs the whole scenario; the end state is then checked.
    async fn run(&mut self) {
        for (when, stimulus) in self.scenario.stimuli.clone() {
            if when == When::Settled {
                self.settle().await;
            }
            self.stimulate(stimulus).await;
        }
        self.settle().await;
        // Past every timeout, the reconciler has its say.
        self.clock.advance(Duration::from_secs(4 * 3600));
        self.settle().await;
    }

    async fn stimulate(&mut self, stimulus: Stimulus) {
        match stimulus {
            Stimulus::Push(hex, tag) => {
                let digest = self.image(hex);
                let at = self.clock.now();
                self.registry.push_at("acme/web", Some(tag), &digest, at);
                self.pushed.insert((tag.to_owned(), digest.clone()));
                self.ids += 1;
                let event = push_event(self.ids, "acme/web", &digest, tag, at);
                self.inbox.push_back(Delivery {
                    function: Function::Deployer,
                    payload: event,
                    attempt: 1,
                });
            }
            Stimulus::Scan(hex, critical) => {
                let digest = self.image(hex);
                let counts = [("CRITICAL", critical), ("LOW", 4)];
                self.registry.scanned(
                    &digest,
                    crate::domain::scan::Counts::from_aws(counts.iter().copied()),
                );
                self.ids += 1;
                let at = self.clock.now();
                let event = json!({
                    "version": "0", "id": format!("scan-{}", self.ids),
                    "detail-type": "ECR Image Scan", "source": "aws.ecr",
                    "account": "123456789012", "region": "eu-west-1",
                    "time": at.format(&time::format_description::well_known::Rfc3339).unwrap(),
                    "resources": [],
                    "detail": {
                        "scan-status": "COMPLETE", "repository-name": "acme/web",
                        "image-digest": digest.as_str(), "image-tags": [],
                        "finding-severity-counts": { "CRITICAL": critical, "LOW": 4 }
                    }
                });
                self.inbox.push_back(Delivery {
                    function: Function::Deployer,
                    payload: event,
                    attempt: 1,
                });
            }
            // A person whose request failed asks again, as Lambda retries an event.
            Stimulus::Console(function, payload) => self.inbox.push_back(Delivery {
                function,
                payload,
                attempt: 1,
            }),
            Stimulus::HoldBack(kind) => {
                self.hold_back.insert(kind.as_str());
            }
            Stimulus::RefuseNextStart => self.target.refuse_next(throttled("SendCommand")),
            Stimulus::Release => {
                self.hold_back.clear();
                self.inbox.extend(self.held_back.drain(..));
            }
        }
        self.clock.advance(Duration::from_secs(1));
    }

    /// Delivers events, lets the targets finish their rollouts and the schedule reconcile,
    /// until nothing changes any more.
    async fn settle(&mut self) {
        let mut quiet_rounds = 0;
        // The janitor's schedule comes round while things happen, not only when all is quiet.
        let janitor = self.schedule();
        self.inbox.push_back(Delivery {
            function: Function::Janitor,
            payload: janitor,
            attempt: 1,
        });
        for _ in 0..200 {
            self.drain().await;
            if self.announce_alarms() {
                quiet_rounds = 0;
                continue;
            }
            if self.finish_rollouts() {
                quiet_rounds = 0;
                continue;
            }
            let before = self.fingerprint();
            self.clock.advance(Duration::from_secs(60));
            let schedule = self.schedule();
            self.inbox.push_back(Delivery {
                function: Function::Tracker,
                payload: schedule,
                attempt: 1,
            });
            self.drain().await;
            if self.fingerprint() == before && !self.has_rollouts_in_progress() {
                quiet_rounds += 1;
                // Long enough for every hand-off to be repeated once.
                if quiet_rounds >= 4 {
                    return;
                }
            } else {
                quiet_rounds = 0;
            }
        }
    }

    /// Once the trip of `outage_when` has gone off: from now on the outage holds.
    fn begin_outage(&mut self) {
        if !self.faults.tripped.load(Ordering::SeqCst) {
            return;
        }
        let Some(outage) = self.outage.take() else {
            return;
        };
        self.down.extend(outage.down);
        self.stalled = true;
        self.faults.failing.lock().unwrap().extend(outage.failing);
        if outage.forget {
            self.target.forget_all();
        }
    }

    /// The reconcile schedule's event, as EventBridge sends it now.
    fn schedule(&mut self) -> Value {
        self.ids += 1;
        json!({
            "version": "0", "id": format!("schedule-{}", self.ids),
            "detail-type": "Scheduled Event", "source": "aws.events",
            "account": "123456789012", "region": "eu-west-1",
            "time": self.clock.now().format(&time::format_description::well_known::Rfc3339).unwrap(),
            "resources": [], "detail": {}
        })
    }

    /// Runs these invocations at once, call by call in step (each gives way before every
    /// AWS call, and they are polled in turn): their answers, in order.
    async fn in_step(&self, invocations: Vec<(Function, Value)>) -> Vec<Result<Value, String>> {
        *self.faults.pace.lock().unwrap() = Some(Pace::Lockstep);
        let answers = futures::future::join_all(
            invocations
                .into_iter()
                .map(|(function, payload)| self.handle(function, payload)),
        )
        .await;
        *self.faults.pace.lock().unwrap() = None;
        answers
            .into_iter()
            .map(|a| a.map_err(|e| e.chain()))
            .collect()
    }

    /// CloudWatch announces each watched alarm whose state changed since it last did, on
    /// the default bus (to the verifier). Whether any changed.
    fn announce_alarms(&mut self) -> bool {
        let mut changed = false;
        if self.stalled {
            return false;
        }
        let names: Vec<String> = self.alarms.watched.keys().cloned().collect();
        for name in names {
            let now = self.alarms.in_alarm(&name).unwrap_or(false);
            if self.alarm_was.get(&name).copied().unwrap_or(false) == now {
                continue;
            }
            self.alarm_was.insert(name.clone(), now);
            changed = true;
            self.ids += 1;
            let value = if now { "ALARM" } else { "OK" };
            let at = self.clock.now();
            let cloudwatch_time = time::macros::format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]+0000"
            );
            let event = json!({
                "version": "0", "id": format!("alarm-{}", self.ids),
                "detail-type": "CloudWatch Alarm State Change", "source": "aws.cloudwatch",
                "account": "123456789012", "region": "eu-west-1",
                "time": at.format(&time::format_description::well_known::Rfc3339).unwrap(),
                "resources": [format!("arn:aws:cloudwatch:eu-west-1:123456789012:alarm:{name}")],
                "detail": {
                    "alarmName": name,
                    "state": { "value": value, "reason": "Threshold Crossed", "timestamp": at.format(cloudwatch_time).unwrap() },
                    "previousState": { "value": if now { "OK" } else { "ALARM" }, "reason": "", "timestamp": "2026-11-20T09:59:00.000+0000" }
                }
            });
            self.inbox.push_back(Delivery {
                function: Function::Verifier,
                payload: event,
                attempt: 1,
            });
        }
        changed
    }

    /// What a change would change. A hand-over repeated is no change.
    fn fingerprint(&self) -> String {
        let events = self
            .events
            .events()
            .iter()
            .filter(|e| {
                !matches!(
                    e.detail_type,
                    EventType::VerificationDue | EventType::RollbackDue
                )
            })
            .count();
        format!(
            "{}\n{events}\n{}",
            self.store.snapshot(),
            self.target.started().len()
        )
    }

    fn has_rollouts_in_progress(&self) -> bool {
        // An alarm watch ends with time, handed over at each pass (unless held back).
        let watching = !self.hold_back.contains(EventType::VerificationDue.as_str())
            && self.config.environments().any(|(app, env, _)| {
                self.store
                    .deployments(app, env)
                    .iter()
                    .any(|d| d.phase == Phase::Verifying && d.watch_until.is_some())
            });
        // Stalled targets finish nothing: waiting for them changes nothing.
        !self.stalled
            && (watching
                || self.target.started().iter().any(|s| {
                    matches!(
                        futures::executor::block_on(self.target.status(&s.target_ref)),
                        Ok(RolloutStatus::InProgress)
                    )
                }))
    }

    /// Delivers everything waiting, and what that publishes, as EventBridge would.
    async fn drain(&mut self) {
        for _ in 0..500 {
            self.faults.janitor_watch.forget();
            self.begin_outage();
            self.route();
            let Some(delivery) = self.inbox.pop_front() else {
                return;
            };
            let outcome = self
                .invoke(delivery.function, delivery.payload.clone())
                .await;
            if let Err(error) = outcome {
                if delivery.attempt < ATTEMPTS {
                    self.inbox.push_back(Delivery {
                        attempt: delivery.attempt + 1,
                        ..delivery
                    });
                } else {
                    self.dead.push(format!(
                        "{} after {ATTEMPTS} attempts at {}: {error}",
                        delivery.function.name(),
                        delivery.payload["detail-type"]
                    ));
                }
            }
        }
    }

    /// Queues a delivery for each function a newly published event is routed to.
    fn route(&mut self) {
        // ECR announces a tag moved with PutImage as a push of that tag.
        let moved = self.registry.moved();
        for (repository, tag, digest) in &moved[self.tags_moved..] {
            let at = self.clock.now();
            self.ids += 1;
            let event = push_event(self.ids, repository, digest, tag.as_str(), at);
            self.inbox.push_back(Delivery {
                function: Function::Deployer,
                payload: event,
                attempt: 1,
            });
        }
        self.tags_moved = moved.len();
        let events = self.events.events();
        for event in &events[self.routed..] {
            self.ids += 1;
            let id = format!("event-{}", self.ids);
            for function in routed_to(crate::domain::event::SOURCE, event.detail_type.as_str()) {
                // No channel is configured: the notifier would have nothing to send.
                if function == Function::Notifier {
                    continue;
                }
                let delivery = Delivery {
                    function,
                    payload: delivered(event, &id),
                    attempt: 1,
                };
                if self.hold_back.contains(event.detail_type.as_str()) {
                    self.held_back.push(delivery);
                } else {
                    self.inbox.push_back(delivery);
                }
            }
        }
        self.routed = events.len();
    }

    /// One invocation of `function`'s entrypoint: its answer, or its error ("killed" when
    /// the function was).
    async fn invoke(&mut self, function: Function, payload: Value) -> Result<Value, String> {
        let scheduled = payload["detail-type"] == "Scheduled Event";
        if self.down.contains(&function) && !scheduled {
            return Err(format!("{} is unavailable", function.name()));
        }
        self.faults.killed.store(false, Ordering::SeqCst);
        let faults = self.faults.clone();
        let call = self.handle(function, payload.clone());
        // A killed function's invocation never returns: it is dropped at its next poll.
        let mut call = std::pin::pin!(call);
        let result: Option<Result<Value, ServiceError>> =
            std::future::poll_fn(|cx| match call.as_mut().poll(cx) {
                std::task::Poll::Ready(r) => std::task::Poll::Ready(Some(r)),
                std::task::Poll::Pending if faults.killed.load(Ordering::SeqCst) => {
                    std::task::Poll::Ready(None)
                }
                std::task::Poll::Pending => std::task::Poll::Pending,
            })
            .await;
        let result = match result {
            Some(Ok(v)) => Ok(v),
            Some(Err(e)) => Err(e.chain()),
            None => Err("killed".into()),
        };
        // A replayed run says what each invocation was given and answered.
        if replay().is_some() {
            let what = payload
                .get("detail-type")
                .or_else(|| payload.get("action"))
                .cloned()
                .unwrap_or_default();
            let calls = self.faults.calls.lock().unwrap().len();
            println!("[{} calls] {} {what}: {result:?}", calls, function.name());
        }
        result
    }

    /// `function`'s entrypoint, given `payload` as Lambda gives it.
    async fn handle(&self, function: Function, payload: Value) -> Result<Value, ServiceError> {
        let event = lambda_runtime::LambdaEvent::new(payload, lambda_runtime::Context::default());
        match function {
            Function::Deployer => entrypoints::deployer::handle(&self.deployer, event).await,
            Function::Tracker => entrypoints::tracker::handle(&self.tracker, DOCUMENT, event).await,
            Function::Verifier => entrypoints::verifier::handle(&self.verifier, event).await,
            Function::Rollback => entrypoints::rollback::handle(&self.rollback, event).await,
            Function::Control => entrypoints::control::handle(&self.control, event).await,
            Function::Janitor => entrypoints::janitor::handle(&self.janitor, false, event).await,
            Function::Notifier => Ok(Value::Null),
        }
    }

    /// The targets finish every rollout in progress, as the scenario says they go, and say
    /// so in their status events. Whether any did.
    fn finish_rollouts(&mut self) -> bool {
        self.finish_rollouts_where(|| true)
    }

    /// The targets finish the rollouts in progress that `now` picks. Whether any did.
    fn finish_rollouts_where(&mut self, mut now: impl FnMut() -> bool) -> bool {
        let mut finished = false;
        self.begin_outage();
        if self.stalled {
            return false;
        }
        for s in self.target.started() {
            let in_progress = matches!(
                futures::executor::block_on(self.target.status(&s.target_ref)),
                Ok(RolloutStatus::InProgress)
            );
            if !in_progress || !now() {
                continue;
            }
            finished = true;
            let hex = s
                .image
                .rsplit(':')
                .next()
                .and_then(|h| h.chars().next())
                .unwrap_or('?');
            let kind = self
                .store
                .deployments(&s.app, &s.environment)
                .into_iter()
                .find(|d| d.id == s.deployment_id)
                .map(|d| d.kind);
            // The hosts pull the image by digest: one the registry no longer holds fails.
            let pulled = s
                .image
                .rsplit_once('@')
                .and_then(|(_, d)| Digest::parse(d).ok())
                .is_some_and(|d| self.registry.exists("acme/web", &d));
            if !pulled {
                self.pulled_missing.insert(s.image.clone());
            }
            let fails = !pulled
                || self.scenario.fail_on_target.contains(&hex)
                || (self.scenario.rollbacks_fail && kind == Some(crate::domain::Kind::Rollback));
            let status = if !pulled {
                RolloutStatus::Failed(format!("manifest unknown: {NOT_IN_REGISTRY}"))
            } else if fails {
                RolloutStatus::Failed("exit 1 on the target".into())
            } else {
                RolloutStatus::Succeeded
            };
            self.target.complete(&s.target_ref, status);
            self.ids += 1;
            let event = status_event(&s.target_ref, !fails, self.ids);
            self.inbox.push_back(Delivery {
                function: Function::Tracker,
                payload: event,
                attempt: 1,
            });
        }
        finished
    }

    /// What the end state breaks of the promises, if anything.
    async fn broken(&self) -> Vec<String> {
        let mut broken = Vec::new();
        let published = self.events.events();
        let said = |kind: EventType, id: &DeploymentId| {
            published.iter().any(|e| {
                e.detail_type == kind
                    && e.deployment().and_then(|d| d.deployment_id.as_ref()) == Some(id)
            })
        };
        // Each lifecycle event about a deployment is one change, published once (delivered
        // at least once: repeats carry its id); hand-overs repeated are internal events.
        let mut announced: BTreeMap<(DeploymentId, &str), BTreeSet<Option<String>>> =
            BTreeMap::new();
        for e in &published {
            if matches!(
                e.detail_type,
                EventType::VerificationDue | EventType::RollbackDue
            ) {
                continue;
            }
            if let Some(d) = e.deployment()
                && let Some(id) = &d.deployment_id
            {
                announced
                    .entry((id.clone(), e.detail_type.as_str()))
                    .or_default()
                    .insert(d.event_id.clone());
            }
        }
        for ((id, kind), ids) in &announced {
            if ids.len() > 1 {
                broken.push(format!(
                    "deployment {id}: {kind} was published {} times as new events",
                    ids.len()
                ));
            }
        }
        let mut actions: BTreeMap<DeploymentId, usize> = BTreeMap::new();
        for s in self.target.started() {
            *actions.entry(s.deployment_id).or_default() += 1;
        }
        for (id, n) in &actions {
            if *n > 1 {
                broken.push(format!("deployment {id} has {n} target actions"));
            }
        }
        // An image built for another platform never reaches a target, and its refusal is
        // announced.
        for hex in self.scenario.arm64 {
            let digest = self.image(*hex);
            if self
                .target
                .started()
                .iter()
                .any(|s| s.image.ends_with(digest.as_str()))
            {
                broken.push(format!("{digest}, built for linux/arm64, was started"));
            }
            let announced = published.iter().any(|e| {
                e.detail_type == EventType::DeploymentBlocked
                    && e.deployment().and_then(|d| d.digest.as_ref()) == Some(&digest)
            });
            if !announced {
                broken.push(format!(
                    "{digest}, built for linux/arm64, was never announced blocked"
                ));
            }
        }
        for (app, env, _) in self.config.environments() {
            let state = self.store.env_state(app, env).await.unwrap();
            let place = format!("{app}/{env}");
            let runs = self
                .target
                .runs(app, env)
                .and_then(|i| i.rsplit_once('@').map(|(_, d)| d.to_owned()));
            let current = state.current.as_ref().map(|c| c.digest.to_string());
            if runs != current {
                broken.push(format!(
                    "{place}: the target runs {runs:?}, current says {current:?}"
                ));
            }
            if let Some(lease) = &state.lease {
                broken.push(format!("{place}: still held by {}", lease.deployment_id));
            }
            // Past every deadline, nothing may still wait for its scan.
            if let Some(waiting) = &state.awaiting_scan {
                broken.push(format!(
                    "{place}: {} still waits for its scan",
                    waiting.request.image.digest
                ));
            }
            if let Some((_, want, frozen)) = self
                .scenario
                .expect
                .iter()
                .find(|(e, _, _)| *e == env.as_str())
            {
                let want = want.map(|c| self.image(c).to_string());
                if runs != want {
                    broken.push(format!(
                        "{place}: runs {runs:?}, the scenario ends with {want:?}"
                    ));
                }
                if state.frozen.is_some() != *frozen {
                    broken.push(format!("{place}: frozen is {:?}", state.frozen));
                }
            }
            for digest in state.revoked.keys() {
                if state.verified.iter().any(|v| v.digest.as_str() == digest) {
                    broken.push(format!("{place}: revoked {digest} is still verified"));
                }
                let others = state.verified.iter().any(|v| v.digest.as_str() != digest);
                if runs.as_deref() == Some(digest.as_str()) && others {
                    broken.push(format!(
                        "{place}: runs the revoked {digest} although a verified digest can replace it"
                    ));
                }
            }
            for hex in self.scenario.healthy {
                // A digest revoked while it rolled out failed, and is quarantined as any;
                // so is one that set off an alarm.
                // So is one whose image was gone when its hosts pulled it.
                let gone = self
                    .pulled_missing
                    .iter()
                    .any(|image| image.ends_with(self.image(*hex).as_str()));
                if state.quarantined.contains_key(self.image(*hex).as_str())
                    && !state.revoked.contains_key(self.image(*hex).as_str())
                    && !self.scenario.alarming.contains(hex)
                    && !gone
                {
                    broken.push(format!("{place}: healthy digest {hex} is quarantined"));
                }
            }
            let left = self.store.undelivered(app, env).await.unwrap();
            if !left.is_empty() {
                let kinds: Vec<EventType> = left.iter().map(|e| e.detail_type).collect();
                broken.push(format!("{place}: events never delivered: {kinds:?}"));
            }
            for d in self.store.deployments(app, env) {
                // A push deploys what a person pushed, never a tag pushdeploy moved.
                if d.kind == crate::domain::Kind::Push {
                    let tag = d.tag.as_ref().map(|t| t.to_string()).unwrap_or_default();
                    if !self.pushed.contains(&(tag.clone(), d.image.digest.clone())) {
                        broken.push(format!(
                            "{place}: deployment {} deployed {tag} ({}), which nobody pushed",
                            d.id, d.image.digest
                        ));
                    }
                }
                let mut implied = Vec::new();
                if d.target_ref.is_some() {
                    implied.push(EventType::RolloutStarted);
                }
                if d.aborted.is_some() {
                    implied.push(EventType::DeploymentAborted);
                }
                match d.phase {
                    Phase::Verified => implied.push(EventType::DeploymentVerified),
                    Phase::RolledBack => implied.push(EventType::RollbackSucceeded),
                    Phase::RollbackFailed => implied.push(EventType::RollbackFailed),
                    // A failed rollback is announced as its original's "Rollback Failed".
                    Phase::Failed
                        if d.rolled_back_by.is_none()
                            && d.aborted.is_none()
                            && d.kind != crate::domain::Kind::Rollback =>
                    {
                        implied.push(EventType::DeploymentFailed)
                    }
                    _ => {}
                }
                for kind in implied {
                    if !said(kind, &d.id) {
                        broken.push(format!(
                            "{place}: deployment {} is {:?} but {kind} was never published",
                            d.id, d.phase
                        ));
                    }
                }
            }
        }
        broken.extend(self.approvals_lost(&published));
        for dead in &self.dead {
            broken.push(format!("dead letter: {dead}"));
        }
        broken.extend(self.needed_but_deleted());
        broken.extend(self.registry_watch.lock().unwrap().iter().cloned());
        broken
    }

    /// Approvals that came to nothing unsaid: every `Promotion Approved` leads to a
    /// deployment of its digest there, or to an announcement of why not (skipped, blocked),
    /// or the digest was revoked since.
    fn approvals_lost(&self, published: &[LifecycleEvent]) -> Vec<String> {
        let mut lost = Vec::new();
        for (i, approved) in published.iter().enumerate() {
            if approved.detail_type != EventType::PromotionApproved {
                continue;
            }
            let Some(d) = approved.deployment() else {
                continue;
            };
            let (Some(digest), env) = (&d.digest, &d.environment) else {
                continue;
            };
            let deployed = self.store.deployments(&d.app, env).iter().any(|dep| {
                &dep.image.digest == digest && dep.kind != crate::domain::Kind::Rollback
            });
            let said = published[i..].iter().any(|e| {
                matches!(
                    e.detail_type,
                    EventType::DeploymentSkipped
                        | EventType::DeploymentBlocked
                        | EventType::ImageRevoked
                ) && e.deployment().is_some_and(|x| {
                    x.digest.as_ref() == Some(digest)
                        && (&x.environment == env || e.detail_type == EventType::ImageRevoked)
                })
            });
            // Its delivery went to the dead-letter queue, for a person to replay.
            let replayable = self
                .given_up
                .iter()
                .any(|g| g.contains("Promotion Approved") && g.contains(digest.as_str()));
            if !deployed && !said && !replayable {
                lost.push(format!(
                    "{}/{env}: the approval of {digest} came to nothing, and nothing said why",
                    d.app
                ));
            }
        }
        lost
    }

    /// The digests some environment still needs that the registry no longer holds.
    fn needed_but_deleted(&self) -> Vec<String> {
        needed(&self.store, &self.config)
            .into_iter()
            .filter(|(digest, _)| !self.registry.exists("acme/web", digest))
            .map(|(digest, why)| format!("{digest} ({why}) was deleted from the registry"))
            .collect()
    }
}

/// The digests some environment needs now, with why: what runs and what it would roll back
/// to, what is rolling out or rolling back and what that would restore, what is queued,
/// waits to be promoted or was approved, and what waits for its scan. Written from what a
/// user expects to stay, not from the janitor's own list.
fn needed(store: &MemoryStore, config: &Config) -> BTreeMap<Digest, String> {
    let keep_verified = config
        .app(&web())
        .and_then(|a| a.retention.as_ref())
        .map_or(crate::domain::environment::KEEP_VERIFIED, |r| {
            r.keep_verified
        });
    let mut needed = BTreeMap::new();
    for (app, env, _) in config.environments() {
        let state = futures::executor::block_on(store.env_state(app, env)).unwrap();
        let mut need = |digest: &Digest, why: &str| {
            needed
                .entry(digest.clone())
                .or_insert_with(|| format!("{why} in {app}/{env}"));
        };
        if let Some(c) = &state.current {
            need(&c.digest, "current");
        }
        for v in state.verified.iter().take(keep_verified) {
            need(&v.digest, "verified");
        }
        if let Some(q) = &state.queued {
            need(&q.image.digest, "queued");
        }
        for p in [&state.pending, &state.approved].into_iter().flatten() {
            need(p.digest(), "waiting to be promoted");
        }
        if let Some(w) = &state.awaiting_scan {
            need(&w.request.image.digest, "waiting for its scan");
        }
        if let Some(holder) = state.holder()
            && let Some(d) = store
                .deployments(app, env)
                .into_iter()
                .find(|d| &d.id == holder)
        {
            need(&d.image.digest, "rolling out or back");
            if let Some(previous) = &d.previous {
                need(&previous.digest, "restored if the rollout fails");
            }
        }
    }
    needed
}

/// ECR's event for a push of `tag` (or a tag moved onto `digest`).
fn push_event(
    n: usize,
    repository: &str,
    digest: &Digest,
    tag: &str,
    at: time::OffsetDateTime,
) -> Value {
    json!({
        "version": "0", "id": format!("push-{n}"),
        "detail-type": "ECR Image Action", "source": "aws.ecr",
        "account": "123456789012", "region": "eu-west-1",
        "time": at.format(&time::format_description::well_known::Rfc3339).unwrap(),
        "resources": [],
        "detail": {
            "result": "SUCCESS", "repository-name": repository,
            "image-digest": digest.as_str(), "action-type": "PUSH", "image-tag": tag
        }
    })
}

/// What a host says when the image it pulls is not in the registry.
const NOT_IN_REGISTRY: &str = "the image is not in the registry";

/// The app every scenario deploys.
fn web() -> AppName {
    AppName::parse("web").unwrap()
}

/// The status event a target sends when a rollout ends.
fn status_event(target_ref: &TargetRef, succeeded: bool, n: usize) -> Value {
    let envelope = |source: &str, detail_type: &str, resources: Value, detail: Value| {
        json!({
            "version": "0", "id": format!("status-{n}"), "detail-type": detail_type,
            "source": source, "account": "123456789012", "region": "eu-west-1",
            "time": "2026-11-20T10:00:00Z", "resources": resources, "detail": detail
        })
    };
    match target_ref.kind() {
        "ecs" => {
            let mut parts = target_ref.id().splitn(3, '/');
            let (cluster, service, id) = (
                parts.next().unwrap_or_default(),
                parts.next().unwrap_or_default(),
                parts.next().unwrap_or_default(),
            );
            envelope(
                "aws.ecs",
                "ECS Deployment State Change",
                json!([format!(
                    "arn:aws:ecs:eu-west-1:123456789012:service/{cluster}/{service}"
                )]),
                json!({
                    "eventType": if succeeded { "INFO" } else { "ERROR" },
                    "eventName": if succeeded { "SERVICE_DEPLOYMENT_COMPLETED" } else { "SERVICE_DEPLOYMENT_FAILED" },
                    "deploymentId": id, "reason": "tasks failed to start"
                }),
            )
        }
        "codedeploy" => envelope(
            "aws.codedeploy",
            "CodeDeploy Deployment State-change Notification",
            json!([]),
            json!({
                "deploymentId": target_ref.id(),
                "state": if succeeded { "SUCCESS" } else { "FAILURE" },
                "application": "web", "deploymentGroup": "web-group"
            }),
        ),
        _ => envelope(
            "aws.ssm",
            "EC2 Command Status-change Notification",
            json!([]),
            json!({
                "command-id": target_ref.id(), "document-name": DOCUMENT,
                "status": if succeeded { "Success" } else { "Failed" }
            }),
        ),
    }
}

/// A configuration of one app with a staging environment on `target` and a production
/// one that takes staging's verified digests after an approval.
fn config(target: &str) -> String {
    format!(
        r#"
apps:
  web:
    repository: acme/web
    registry: 123456789012.dkr.ecr.eu-west-1.amazonaws.com
    retention: {{ keep_newest: 1 }}
    environments:
      staging:
        # Every tag, as many teams have it: ECR's announcements of the environment tags
        # pushdeploy moves (staging, production) reach it too.
        deploy_on_push: {{ tags: ["*"] }}
        target: {target}
        smoke:
          checks: [ {{ url: "http://staging.web/health", expect_status: 200, body_contains: "ok", timeout_seconds: 1 }} ]
          within_seconds: 5
      production:
        promote_from: staging
        approval: required
        target: {{ ssm: {{ instances: {{ tag: {{ Role: web-production }} }}, container: web, ports: ["80:8000"] }} }}
        smoke:
          checks: [ {{ url: "http://production.web/health", expect_status: 200, body_contains: "ok", timeout_seconds: 1 }} ]
          within_seconds: 5
"#
    )
}

/// `config` with staging deploying only `v*` tags: other tags are pushed, not deployed.
fn only_v(config: String) -> String {
    config.replacen(r#"tags: ["*"]"#, r#"tags: ["v*"]"#, 1)
}

/// `config(SSM)` with staging's pushes gated on their scan: no critical finding.
fn scanned() -> String {
    config(SSM).replacen(
        "        smoke:\n",
        "        scan: { max: { critical: 0 }, wait_seconds: 900, on_missing: hold }\n        smoke:\n",
        1,
    )
}

/// `config(SSM)` with staging watching an alarm for ten minutes after its smoke tests
/// (longer than a verification may take without a watch).
fn watched() -> String {
    config(SSM).replacen(
        "        smoke:\n",
        "        watch: { alarms: [web-staging-5xx], for_seconds: 600 }\n        smoke:\n",
        1,
    )
}

const SSM: &str =
    r#"{ ssm: { instances: { tag: { Role: web-staging } }, container: web, ports: ["80:8000"] } }"#;
const ECS: &str = r#"{ ecs: { cluster: prod, service: web, container: web } }"#;
const CODEDEPLOY: &str = r#"{ codedeploy: { application: web, deployment_group: web-group, ec2: { container: web, ports: ["80:8000"] } } }"#;

impl Scenario {
    /// On SSM: `healthy` digests pass their smoke tests, every rollout succeeds.
    fn ssm(
        name: &'static str,
        healthy: &'static [char],
        stimuli: Vec<(When, Stimulus)>,
        expect: Vec<(&'static str, Option<char>, bool)>,
    ) -> Self {
        Scenario {
            name,
            config: config(SSM),
            healthy,
            fail_on_target: &[],
            rollbacks_fail: false,
            alarming: &[],
            arm64: &[],
            stimuli,
            expect,
        }
    }

    fn on(self, target: &str) -> Self {
        Scenario {
            config: config(target),
            ..self
        }
    }
}

fn scenarios() -> Vec<Scenario> {
    use Stimulus::{Console, HoldBack, Push, Release, Scan};
    use When::{AtOnce, Settled};
    let control = |payload| Console(Function::Control, payload);
    let revoke = |hex: char| {
        control(json!({
            "action": "revoke", "app": "web", "environment": "staging",
            "digest": format!("sha256:{}", hex.to_string().repeat(64)),
            "reason": "a bad release found later", "by": "alice"
        }))
    };
    let approve = |hex: char| {
        control(json!({
            "action": "approve", "app": "web", "environment": "production",
            "digest": format!("sha256:{}", hex.to_string().repeat(64)), "by": "alice"
        }))
    };
    let verified = |name| {
        Scenario::ssm(
            name,
            &['a'],
            vec![(Settled, Push('a', "v1"))],
            vec![("staging", Some('a'), false), ("production", None, false)],
        )
    };
    let rolled_back = |name| {
        Scenario::ssm(
            name,
            &['a'],
            vec![(Settled, Push('a', "v1")), (Settled, Push('b', "v2"))],
            vec![("staging", Some('a'), false)],
        )
    };
    vec![
        verified("push → verified (SSM)"),
        rolled_back("push → smoke test fails → rollback → verified (SSM)"),
        Scenario {
            rollbacks_fail: true,
            ..Scenario::ssm(
                "rollback fails → freeze (SSM)",
                &['a'],
                vec![(Settled, Push('a', "v1")), (Settled, Push('b', "v2"))],
                vec![("staging", Some('b'), true)],
            )
        },
        Scenario::ssm(
            "a push queued behind a rollout (SSM)",
            &['a', 'b'],
            vec![(Settled, Push('a', "v1")), (AtOnce, Push('b', "v2"))],
            vec![("staging", Some('b'), false)],
        ),
        Scenario::ssm(
            "staging → production with an approval",
            &['a'],
            vec![(Settled, Push('a', "v1")), (Settled, approve('a'))],
            vec![
                ("staging", Some('a'), false),
                ("production", Some('a'), false),
            ],
        ),
        Scenario::ssm(
            "a newer verification between an approval and its delivery",
            &['a', 'c'],
            vec![
                (Settled, Push('a', "v1")),
                (Settled, HoldBack(EventType::PromotionApproved)),
                (AtOnce, approve('a')),
                (Settled, Push('c', "v3")),
                (Settled, Release),
            ],
            vec![
                ("staging", Some('c'), false),
                ("production", Some('a'), false),
            ],
        ),
        Scenario {
            config: only_v(config(SSM)),
            ..Scenario::ssm(
                "a deploy by hand",
                &['a', 'c'],
                vec![
                    (Settled, Push('a', "v1")),
                    (Settled, Push('c', "build-3")),
                    (
                        Settled,
                        Console(
                            Function::Deployer,
                            json!({ "app": "web", "environment": "staging", "tag": "build-3", "requested_by": "alice" }),
                        ),
                    ),
                ],
                vec![("staging", Some('c'), false)],
            )
        },
        Scenario {
            fail_on_target: &['b'],
            ..rolled_back("a rollout the target fails → rollback (SSM)")
        },
        Scenario::ssm(
            "a rollback by hand",
            &['a', 'c'],
            vec![
                (Settled, Push('a', "v1")),
                (Settled, Push('c', "v3")),
                (
                    Settled,
                    Console(
                        Function::Rollback,
                        json!({ "app": "web", "environment": "staging", "reason": "error rate up", "requested_by": "alice" }),
                    ),
                ),
            ],
            vec![("staging", Some('a'), false)],
        ),
        Scenario::ssm(
            "an abort while the rollout runs",
            &['a', 'b'],
            vec![
                (Settled, Push('a', "v1")),
                (Settled, Push('b', "v2")),
                (
                    AtOnce,
                    control(
                        json!({ "action": "abort", "app": "web", "environment": "staging", "reason": "wrong build", "by": "alice" }),
                    ),
                ),
            ],
            vec![("staging", Some('a'), false)],
        ),
        Scenario::ssm(
            "frozen with an image queued; a push skipped; unfrozen",
            &['a', 'b'],
            vec![
                (Settled, Push('a', "v1")),
                (AtOnce, Push('b', "v2")),
                (
                    AtOnce,
                    control(
                        json!({ "action": "freeze", "app": "web", "environment": "staging", "reason": "holidays", "requested_by": "alice" }),
                    ),
                ),
                (Settled, Push('c', "v3")),
                (
                    Settled,
                    control(
                        json!({ "action": "unfreeze", "app": "web", "environment": "staging", "requested_by": "alice" }),
                    ),
                ),
            ],
            vec![("staging", Some('b'), false)],
        ),
        Scenario::ssm(
            "a promotion by hand",
            &['a'],
            vec![
                (Settled, Push('a', "v1")),
                (
                    Settled,
                    Console(
                        Function::Deployer,
                        json!({ "action": "promote", "app": "web", "from": "staging", "to": "production", "requested_by": "alice" }),
                    ),
                ),
            ],
            vec![
                ("staging", Some('a'), false),
                ("production", Some('a'), false),
            ],
        ),
        Scenario::ssm(
            "a revoked digest that runs is rolled back",
            &['a', 'c'],
            vec![
                (Settled, Push('a', "v1")),
                (Settled, Push('c', "v3")),
                (Settled, revoke('c')),
            ],
            vec![("staging", Some('a'), false)],
        ),
        Scenario::ssm(
            "a digest revoked while it rolls out fails and rolls back",
            &['a', 'c'],
            vec![
                (Settled, Push('a', "v1")),
                (Settled, Push('c', "v3")),
                (AtOnce, revoke('c')),
            ],
            vec![("staging", Some('a'), false)],
        ),
        Scenario {
            config: watched(),
            ..verified("alarms watched after the smoke tests, quiet → verified")
        },
        Scenario {
            config: watched(),
            alarming: &['c'],
            ..Scenario::ssm(
                "an alarm in the watch after the smoke tests → rollback",
                &['a', 'c'],
                vec![(Settled, Push('a', "v1")), (Settled, Push('c', "v3"))],
                vec![("staging", Some('a'), false)],
            )
        },
        Scenario {
            config: scanned(),
            ..Scenario::ssm(
                "a push waits for its scan, within the thresholds → verified",
                &['a'],
                vec![(Settled, Push('a', "v1")), (AtOnce, Scan('a', 0))],
                vec![("staging", Some('a'), false)],
            )
        },
        Scenario {
            config: scanned(),
            ..Scenario::ssm(
                "a scan over the thresholds blocks the push; the verified image stays",
                &['a', 'c'],
                vec![
                    // Never deployed: the janitor deletes it.
                    (Settled, Push('e', "build-0")),
                    (Settled, Scan('a', 0)),
                    (Settled, Push('a', "v1")),
                    (Settled, Push('c', "v3")),
                    (AtOnce, Scan('c', 2)),
                ],
                vec![("staging", Some('a'), false)],
            )
        },
        Scenario {
            config: only_v(scanned()),
            ..Scenario::ssm(
                "a push waiting for its scan outlives newer pushes and the janitor",
                &['a', 'c', 'd'],
                vec![
                    (Settled, Scan('a', 0)),
                    (Settled, Push('a', "v1")),
                    (Settled, Push('c', "v3")),
                    // Not a tag staging deploys: only the newest image in the repository.
                    (Settled, Push('d', "build-4")),
                    (Settled, Scan('c', 0)),
                ],
                vec![("staging", Some('c'), false)],
            )
        },
        Scenario {
            arm64: &['b'],
            ..Scenario::ssm(
                "a push built for another platform is refused; the verified image stays",
                &['a', 'b'],
                vec![(Settled, Push('a', "v1")), (Settled, Push('b', "v2"))],
                vec![("staging", Some('a'), false)],
            )
        },
        verified("push → verified (ECS)").on(ECS),
        rolled_back("push → smoke test fails → rollback → verified (ECS)").on(ECS),
        verified("push → verified (CodeDeploy)").on(CODEDEPLOY),
        rolled_back("push → smoke test fails → rollback → verified (CodeDeploy)").on(CODEDEPLOY),
    ]
}

/// Runs `scenario` with `armed`; the promises it broke.
async fn run(
    scenario: &Scenario,
    armed: Option<(usize, Fault)>,
) -> (Vec<String>, Vec<&'static str>) {
    let mut sim = Sim::new(scenario, armed);
    sim.run().await;
    let broken = sim.broken().await;
    let calls = sim.faults.calls.lock().unwrap().clone();
    (broken, calls)
}

#[tokio::test(start_paused = true)]
async fn every_scenario_runs_right_without_faults() {
    for scenario in scenarios() {
        let (broken, calls) = run(&scenario, None).await;
        assert!(
            broken.is_empty(),
            "{}: {}\n(port calls: {})",
            scenario.name,
            broken.join("\n"),
            calls.len()
        );
    }
}

/// `PUSHDEPLOY_FAULT="<scenario number>:<call index>:<Before|AnswerLost|Killed|Twice>"`
/// replays one run.
fn replay() -> Option<(usize, usize, Fault)> {
    let spec = std::env::var("PUSHDEPLOY_FAULT").ok()?;
    let mut parts = spec.split(':');
    let scenario = parts.next()?.parse().ok()?;
    let call = parts.next()?.parse().ok()?;
    let fault = match parts.next()? {
        "Before" => Fault::Before,
        "AnswerLost" => Fault::AnswerLost,
        "Killed" => Fault::Killed,
        "Twice" => Fault::Twice,
        _ => return None,
    };
    Some((scenario, call, fault))
}

#[tokio::test(start_paused = true)]
async fn a_fault_at_any_port_call_of_any_scenario_ends_in_the_right_state() {
    let scenarios = scenarios();
    let mut runs = 0;
    let mut failures: Vec<String> = Vec::new();
    let mut totals: Vec<String> = Vec::new();
    let only = replay();
    for (n, scenario) in scenarios.iter().enumerate() {
        if only.is_some_and(|(s, _, _)| s != n) {
            continue;
        }
        let (clean, calls) = run(scenario, None).await;
        assert!(
            clean.is_empty(),
            "{} without faults: {clean:?}",
            scenario.name
        );
        let mut converged = 0;
        for (k, what) in calls.iter().enumerate() {
            for fault in FAULTS {
                if !fault.applies(what) || only.is_some_and(|(_, c, f)| c != k || f != fault) {
                    continue;
                }
                runs += 1;
                let (broken, faulty_calls) = run(scenario, Some((k, fault))).await;
                // Runs are deterministic: up to the armed call, the same calls in the same
                // order, so a printed call index replays exactly.
                assert_eq!(
                    faulty_calls.get(..=k),
                    calls.get(..=k),
                    "scenario {n}, call {k}: the run went differently before its fault"
                );
                if broken.is_empty() {
                    converged += 1;
                } else {
                    failures.push(format!(
                        "scenario {n} \"{}\", call {k} ({what}), {fault:?} — replay with PUSHDEPLOY_FAULT={n}:{k}:{fault:?} cargo nextest run -E 'test(/faults::/)' --no-capture\n    {}",
                        scenario.name,
                        broken.join("\n    ")
                    ));
                }
            }
        }
        totals.push(format!(
            "{}: {} port calls, {converged} faulty runs converged",
            scenario.name,
            calls.len(),
        ));
    }
    println!(
        "fault injection: {} scenarios, {runs} runs (every port call × {{fails before taking effect, takes effect and its answer is lost, the function is killed right after it, its events are delivered twice}}, where the fault means something), {} converged",
        totals.len(),
        runs - failures.len()
    );
    for t in &totals {
        println!("  {t}");
    }
    assert!(
        failures.is_empty(),
        "{} of {runs} runs did not converge:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
