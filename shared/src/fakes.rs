//! In-memory implementations of every port, with the same conditional-write semantics as
//! the DynamoDB adapter, for unit tests of the services and for reasoning locally; and
//! `World`, every fake with a clock and the use cases built on them, one per test.

// Test support: a poisoned lock or a bad fixture should fail the test that caused it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use time::OffsetDateTime;

use crate::domain::retention::StoredImage;
use crate::domain::{
    AppName, Config, Deployment, DeploymentId, Digest, EnvName, EnvState, LifecycleEvent,
    PinnedImage, Registry, Repository, Tag, TargetConfig,
};
use crate::ports::{
    CallError, Clock, Commit, ConfigLoadError, ConfigSource, DeleteFailure, EventPublisher,
    HttpProbe, ImageCatalog, ImagePage, ImageRegistry, ListedImage, MAX_BATCH, OutboxEntry,
    ProbeError, ProbeResponse, PublishError, RegistryError, ResolvedImage, RolloutStatus, Started,
    StateStore, StoreError, TagMove, TagWriter, Target, TargetError, TargetRef,
};

type EnvKey = (AppName, EnvName);

#[derive(Default)]
struct StoreInner {
    envs: HashMap<EnvKey, EnvState>,
    deployments: BTreeMap<(AppName, EnvName, DeploymentId), Deployment>,
    target_refs: HashMap<String, (AppName, EnvName, DeploymentId)>,
    /// Claimed events, with the time each is held until (`None`: for good).
    claims: HashMap<String, Option<OffsetDateTime>>,
    commits: usize,
    /// The next this-many commits find another writer got there first.
    interfere: usize,
    /// Each environment's undelivered events, by id.
    outbox: BTreeMap<EnvKey, BTreeMap<String, OutboxEntry>>,
    /// The next commit is stored, and its answer lost.
    lose_answer: bool,
}

/// A state store in memory.
#[derive(Default, Clone)]
pub struct MemoryStore {
    inner: Arc<Mutex<StoreInner>>,
}

impl MemoryStore {
    /// Every deployment of an environment, oldest first.
    pub fn deployments(&self, app: &AppName, env: &EnvName) -> Vec<Deployment> {
        let inner = self.inner.lock().unwrap();
        inner
            .deployments
            .iter()
            .filter(|((a, e, _), _)| a == app && e == env)
            .map(|(_, d)| d.clone())
            .collect()
    }

    /// Makes another writer change the records of each of the next `commits` commits just
    /// before they are written, so they fail with `Conflict` and must be redone.
    pub fn interfere(&self, commits: usize) {
        self.inner.lock().unwrap().interfere = commits;
    }

    /// Stores the next commit, then answers it with an error, as a connection that closed
    /// before the answer came.
    pub fn lose_next_answer(&self) {
        self.inner.lock().unwrap().lose_answer = true;
    }

    /// How many commits succeeded: a way to assert that bad input wrote nothing.
    pub fn commits(&self) -> usize {
        self.inner.lock().unwrap().commits
    }

    /// A snapshot of everything stored, to compare before and after.
    pub fn snapshot(&self) -> String {
        let inner = self.inner.lock().unwrap();
        let mut envs: Vec<_> = inner
            .envs
            .values()
            .map(|e| serde_json::to_string(e).unwrap())
            .collect();
        envs.sort();
        let deps: Vec<_> = inner
            .deployments
            .values()
            .map(|d| serde_json::to_string(d).unwrap())
            .collect();
        let mut claims: Vec<_> = inner.claims.keys().cloned().collect();
        claims.sort();
        format!("{envs:?}\n{deps:?}\n{claims:?}")
    }
}

#[async_trait]
impl StateStore for MemoryStore {
    async fn env_state(&self, app: &AppName, env: &EnvName) -> Result<EnvState, StoreError> {
        let inner = self.inner.lock().unwrap();
        Ok(inner
            .envs
            .get(&(app.clone(), env.clone()))
            .cloned()
            .unwrap_or_else(|| EnvState::new(app.clone(), env.clone())))
    }

    async fn deployment(
        &self,
        app: &AppName,
        env: &EnvName,
        id: &DeploymentId,
    ) -> Result<Deployment, StoreError> {
        let inner = self.inner.lock().unwrap();
        inner
            .deployments
            .get(&(app.clone(), env.clone(), id.clone()))
            .cloned()
            .ok_or_else(|| StoreError::NotFound(format!("deployment {id} of {app}/{env}")))
    }

    async fn find_by_target_ref(&self, target_ref: &str) -> Result<Option<Deployment>, StoreError> {
        let inner = self.inner.lock().unwrap();
        Ok(inner
            .target_refs
            .get(target_ref)
            .and_then(|key| inner.deployments.get(key))
            .cloned())
    }

    async fn recent_deployments(
        &self,
        app: &AppName,
        env: &EnvName,
        limit: usize,
    ) -> Result<Vec<Deployment>, StoreError> {
        let mut all = self.deployments(app, env);
        all.reverse();
        all.truncate(limit);
        Ok(all)
    }

    async fn commit(&self, commit: Commit<'_>) -> Result<(), StoreError> {
        let mut inner = self.inner.lock().unwrap();
        if inner.interfere > 0 {
            inner.interfere -= 1;
            if let Some(env) = &commit.env {
                let key = (env.app.clone(), env.environment.clone());
                let mut theirs = inner
                    .envs
                    .get(&key)
                    .cloned()
                    .unwrap_or_else(|| EnvState::new(key.0.clone(), key.1.clone()));
                theirs.version += 1;
                inner.envs.insert(key, theirs);
            }
            for d in &commit.deployments {
                let key = (d.app.clone(), d.environment.clone(), d.id.clone());
                if let Some(theirs) = inner.deployments.get_mut(&key) {
                    theirs.version += 1;
                }
            }
        }
        if let Some(env) = &commit.env {
            let stored = inner
                .envs
                .get(&(env.app.clone(), env.environment.clone()))
                .map_or(0, |e| e.version);
            if stored != env.version {
                return Err(StoreError::Conflict(format!(
                    "environment {}/{}",
                    env.app, env.environment
                )));
            }
        }
        for d in &commit.deployments {
            let key = (d.app.clone(), d.environment.clone(), d.id.clone());
            let stored = inner.deployments.get(&key).map_or(0, |s| s.version);
            if stored != d.version {
                return Err(StoreError::Conflict(format!("deployment {}", d.id)));
            }
        }
        if let Some(claim) = &commit.claim_event {
            match inner.claims.get(claim) {
                Some(None) => return Err(StoreError::Duplicate(claim.clone())),
                // A claim held until a time is free again once that time has passed.
                Some(Some(until)) if commit.claim_lease.is_none_or(|l| *until > l.now) => {
                    return Err(StoreError::Held(claim.clone()));
                }
                _ => {}
            }
        }
        // An answer lost on the way back: the write is stored, the caller hears an error and
        // its records keep the versions it read, as with the real table.
        let lose_answer = std::mem::take(&mut inner.lose_answer);
        if let Some(env) = commit.env {
            env.version += 1;
            inner
                .envs
                .insert((env.app.clone(), env.environment.clone()), env.clone());
            if lose_answer {
                env.version -= 1;
            }
        }
        for d in commit.deployments {
            d.version += 1;
            let key = (d.app.clone(), d.environment.clone(), d.id.clone());
            if commit.link_target_refs
                && let Some(r) = &d.target_ref
            {
                inner.target_refs.insert(r.clone(), key.clone());
            }
            inner.deployments.insert(key, d.clone());
            if lose_answer {
                d.version -= 1;
            }
        }
        if let Some(claim) = commit.claim_event {
            inner
                .claims
                .insert(claim, commit.claim_lease.map(|l| l.until));
        }
        if let Some(settle) = commit.settle_event {
            inner.claims.insert(settle, None);
        }
        if let Some(forget) = commit.forget_event {
            inner.claims.remove(&forget);
        }
        for entry in commit.outbox {
            let key = (entry.detail.app.clone(), entry.detail.environment.clone());
            inner
                .outbox
                .entry(key)
                .or_default()
                .insert(entry.id.clone(), entry);
        }
        inner.commits += 1;
        if lose_answer {
            return Err(StoreError::Transient(CallError::said(
                "TransactWriteItems",
                "the connection closed before the answer came",
            )));
        }
        Ok(())
    }

    async fn undelivered(
        &self,
        app: &AppName,
        env: &EnvName,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        let inner = self.inner.lock().unwrap();
        Ok(inner
            .outbox
            .get(&(app.clone(), env.clone()))
            .map(|entries| entries.values().cloned().collect())
            .unwrap_or_default())
    }

    async fn delivered(
        &self,
        app: &AppName,
        env: &EnvName,
        ids: &[String],
    ) -> Result<Vec<String>, StoreError> {
        let mut inner = self.inner.lock().unwrap();
        let Some(entries) = inner.outbox.get_mut(&(app.clone(), env.clone())) else {
            return Ok(Vec::new());
        };
        Ok(ids
            .iter()
            .filter(|id| entries.remove(*id).is_some())
            .cloned()
            .collect())
    }
}

/// Tags by (repository, tag), and the (repository, digest) pairs that exist with when
/// they were pushed.
#[derive(Default)]
struct RegistryInner {
    tags: HashMap<(String, String), Digest>,
    images: HashSet<(String, Digest)>,
    pushed_at: HashMap<(String, Digest), OffsetDateTime>,
    pushes: i64,
    /// Manifests listed by image indexes.
    children: HashMap<Digest, Vec<Digest>>,
    /// Repositories whose tags cannot move.
    immutable: HashSet<String>,
    /// The next this-many catalog calls are throttled.
    throttle: usize,
    /// Catalog calls made, by operation name.
    calls: Vec<&'static str>,
    /// Completed scans, by digest.
    scans: HashMap<Digest, crate::domain::scan::Counts>,
    /// What images are built for, by digest; not given: `linux/amd64`.
    platforms: HashMap<Digest, crate::domain::platform::ImagePlatforms>,
    /// Repositories created before any image was pushed to them.
    created: HashSet<String>,
    /// Tags moved with `move_tag`, in order: ECR announces each as a push of the tag.
    moved: Vec<(String, Tag, Digest)>,
}

impl RegistryInner {
    /// `NotFound` unless the repository holds the image, as ECR answers.
    fn holds(&self, repository: &Repository, digest: &Digest) -> Result<(), RegistryError> {
        if self
            .images
            .contains(&(repository.to_string(), digest.clone()))
        {
            Ok(())
        } else {
            Err(RegistryError::NotFound(format!(
                "image {digest} not found in repository {repository}"
            )))
        }
    }
}

/// A registry in memory: tags point at digests; digests may be deleted.
#[derive(Clone)]
pub struct FakeRegistry {
    pub registry: Registry,
    /// Images per page of the catalog listing.
    pub page_size: usize,
    inner: Arc<Mutex<RegistryInner>>,
    lookups: Arc<Mutex<usize>>,
}

impl FakeRegistry {
    pub fn new(registry: &str) -> Self {
        Self {
            registry: Registry::parse(registry).unwrap(),
            page_size: crate::ports::MAX_PAGE,
            inner: Arc::default(),
            lookups: Arc::default(),
        }
    }

    /// Completes the scan of `digest` with these findings (`DescribeImageScanFindings`
    /// answers with them from now on).
    pub fn scanned(&self, digest: &Digest, counts: crate::domain::scan::Counts) {
        self.inner
            .lock()
            .unwrap()
            .scans
            .insert(digest.clone(), counts);
    }

    /// What the image `digest` is built for, as its manifest or config says from now on
    /// (until then, `linux/amd64`).
    pub fn built_for(&self, digest: &Digest, platforms: crate::domain::platform::ImagePlatforms) {
        self.inner
            .lock()
            .unwrap()
            .platforms
            .insert(digest.clone(), platforms);
    }

    /// Creates an empty repository (one an image was pushed to exists already).
    pub fn create_repository(&self, repository: &str) {
        self.inner
            .lock()
            .unwrap()
            .created
            .insert(repository.to_owned());
    }

    /// Pushes an image; each push is one second after the one before.
    pub fn push(&self, repository: &str, tag: Option<&str>, digest: &Digest) {
        let mut inner = self.inner.lock().unwrap();
        if let Some(tag) = tag {
            inner
                .tags
                .insert((repository.to_owned(), tag.to_owned()), digest.clone());
        }
        inner.pushes += 1;
        let at = OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(inner.pushes);
        inner
            .pushed_at
            .entry((repository.to_owned(), digest.clone()))
            .or_insert(at);
        inner.images.insert((repository.to_owned(), digest.clone()));
    }

    /// Pushes an image at a given time.
    pub fn push_at(
        &self,
        repository: &str,
        tag: Option<&str>,
        digest: &Digest,
        at: OffsetDateTime,
    ) {
        self.push(repository, tag, digest);
        self.inner
            .lock()
            .unwrap()
            .pushed_at
            .insert((repository.to_owned(), digest.clone()), at);
    }

    /// Makes `index` an image index listing `children`.
    pub fn set_children(&self, index: &Digest, children: Vec<Digest>) {
        self.inner
            .lock()
            .unwrap()
            .children
            .insert(index.clone(), children);
    }

    pub fn set_immutable(&self, repository: &str) {
        self.inner
            .lock()
            .unwrap()
            .immutable
            .insert(repository.to_owned());
    }

    /// Throttles the next `calls` catalog and scan calls.
    pub fn throttle(&self, calls: usize) {
        self.inner.lock().unwrap().throttle = calls;
    }

    /// Catalog calls made so far, by operation.
    pub fn calls(&self) -> Vec<&'static str> {
        self.inner.lock().unwrap().calls.clone()
    }

    /// The tags moved so far (repository, tag, digest), oldest first.
    pub fn moved(&self) -> Vec<(String, Tag, Digest)> {
        self.inner.lock().unwrap().moved.clone()
    }

    pub fn exists(&self, repository: &str, digest: &Digest) -> bool {
        self.inner
            .lock()
            .unwrap()
            .images
            .contains(&(repository.to_owned(), digest.clone()))
    }

    /// The digest a tag names now.
    pub fn tagged(&self, repository: &str, tag: &str) -> Option<Digest> {
        self.inner
            .lock()
            .unwrap()
            .tags
            .get(&(repository.to_owned(), tag.to_owned()))
            .cloned()
    }

    fn call(&self, operation: &'static str) -> Result<(), RegistryError> {
        let mut inner = self.inner.lock().unwrap();
        inner.calls.push(operation);
        if inner.throttle > 0 {
            inner.throttle -= 1;
            return Err(RegistryError::Throttled(CallError::said(
                "ECR",
                "ThrottlingException: Rate exceeded",
            )));
        }
        Ok(())
    }

    pub fn delete(&self, repository: &str, digest: &Digest) {
        let mut inner = self.inner.lock().unwrap();
        inner
            .images
            .remove(&(repository.to_owned(), digest.clone()));
        inner.tags.retain(|_, d| d != digest);
    }

    pub fn lookups(&self) -> usize {
        *self.lookups.lock().unwrap()
    }

    fn resolved(&self, repository: &Repository, digest: &Digest) -> ResolvedImage {
        let inner = self.inner.lock().unwrap();
        let tags = inner
            .tags
            .iter()
            .filter(|((r, _), d)| r == repository.as_str() && *d == digest)
            .map(|((_, t), _)| Tag::parse(t).unwrap())
            .collect();
        ResolvedImage {
            image: PinnedImage {
                registry: self.registry.clone(),
                repository: repository.clone(),
                digest: digest.clone(),
            },
            tags,
            pushed_at: inner
                .pushed_at
                .get(&(repository.to_string(), digest.clone()))
                .copied(),
        }
    }
}

#[async_trait]
impl ImageRegistry for FakeRegistry {
    async fn resolve_tag(
        &self,
        repository: &Repository,
        tag: &Tag,
    ) -> Result<ResolvedImage, RegistryError> {
        *self.lookups.lock().unwrap() += 1;
        let digest = self
            .inner
            .lock()
            .unwrap()
            .tags
            .get(&(repository.to_string(), tag.to_string()))
            .cloned();
        match digest {
            Some(d) => Ok(self.resolved(repository, &d)),
            None => Err(RegistryError::NotFound(format!(
                "tag {tag} not found in repository {repository}"
            ))),
        }
    }

    async fn find_digest(
        &self,
        repository: &Repository,
        digest: &Digest,
    ) -> Result<ResolvedImage, RegistryError> {
        *self.lookups.lock().unwrap() += 1;
        let exists = self
            .inner
            .lock()
            .unwrap()
            .images
            .contains(&(repository.to_string(), digest.clone()));
        if exists {
            Ok(self.resolved(repository, digest))
        } else {
            Err(RegistryError::NotFound(format!(
                "image {digest} not found in repository {repository}"
            )))
        }
    }

    async fn scan(
        &self,
        repository: &Repository,
        digest: &Digest,
    ) -> Result<crate::ports::ScanState, RegistryError> {
        self.call("scan")?;
        let inner = self.inner.lock().unwrap();
        inner.holds(repository, digest)?;
        Ok(match inner.scans.get(digest) {
            Some(counts) => crate::ports::ScanState::Complete(counts.clone()),
            None => crate::ports::ScanState::NoResult("IN_PROGRESS".into()),
        })
    }

    async fn platforms(
        &self,
        repository: &Repository,
        digest: &Digest,
    ) -> Result<crate::domain::platform::ImagePlatforms, RegistryError> {
        use crate::domain::platform::{ImagePlatforms, Platform};
        let inner = self.inner.lock().unwrap();
        inner.holds(repository, digest)?;
        Ok(inner
            .platforms
            .get(digest)
            .cloned()
            .unwrap_or_else(|| ImagePlatforms::Known(vec![Platform::linux_amd64()])))
    }
}

#[async_trait]
impl ImageCatalog for FakeRegistry {
    async fn list_page(
        &self,
        repository: &Repository,
        next: Option<String>,
    ) -> Result<ImagePage, RegistryError> {
        self.call("list_page")?;
        let inner = self.inner.lock().unwrap();
        let mut digests: Vec<&Digest> = inner
            .images
            .iter()
            .filter(|(r, _)| r == repository.as_str())
            .map(|(_, d)| d)
            .collect();
        if digests.is_empty()
            && !inner.created.contains(repository.as_str())
            && !inner
                .pushed_at
                .keys()
                .any(|(r, _)| r == repository.as_str())
        {
            return Err(RegistryError::NotFound(format!(
                "repository {repository} does not exist in ECR"
            )));
        }
        digests.sort();
        let start: usize = next.as_deref().map_or(0, |n| n.parse().unwrap());
        let end = (start + self.page_size).min(digests.len());
        let images = digests[start..end]
            .iter()
            .map(|d| ListedImage {
                image: StoredImage {
                    digest: (*d).clone(),
                    tags: inner
                        .tags
                        .iter()
                        .filter(|((r, _), t)| r == repository.as_str() && t == d)
                        .map(|((_, t), _)| Tag::parse(t).unwrap())
                        .collect(),
                    pushed_at: inner.pushed_at[&(repository.to_string(), (*d).clone())],
                    children: Vec::new(),
                },
                is_index: inner.children.contains_key(*d),
            })
            .collect();
        Ok(ImagePage {
            images,
            next: (end < digests.len()).then(|| end.to_string()),
        })
    }

    async fn index_children(
        &self,
        _repository: &Repository,
        indexes: &[Digest],
    ) -> Result<Vec<(Digest, Vec<Digest>)>, RegistryError> {
        self.call("index_children")?;
        assert!(
            indexes.len() <= MAX_BATCH,
            "more than {MAX_BATCH} ids in one call"
        );
        let inner = self.inner.lock().unwrap();
        Ok(indexes
            .iter()
            .filter_map(|d| Some((d.clone(), inner.children.get(d)?.clone())))
            .collect())
    }

    async fn delete(
        &self,
        repository: &Repository,
        digests: &[Digest],
    ) -> Result<Vec<DeleteFailure>, RegistryError> {
        self.call("delete")?;
        assert!(
            digests.len() <= MAX_BATCH,
            "more than {MAX_BATCH} ids in one call"
        );
        for digest in digests {
            self.delete(repository.as_str(), digest);
        }
        Ok(Vec::new())
    }
}

#[async_trait]
impl TagWriter for FakeRegistry {
    async fn move_tag(
        &self,
        repository: &Repository,
        digest: &Digest,
        tag: &Tag,
    ) -> Result<TagMove, RegistryError> {
        self.call("move_tag")?;
        let mut inner = self.inner.lock().unwrap();
        if !inner
            .images
            .contains(&(repository.to_string(), digest.clone()))
        {
            return Err(RegistryError::NotFound(format!(
                "image {digest} not found in repository {repository}"
            )));
        }
        let key = (repository.to_string(), tag.to_string());
        match inner.tags.get(&key) {
            Some(d) if d == digest => Ok(TagMove::AlreadyThere),
            Some(_) if inner.immutable.contains(repository.as_str()) => Ok(TagMove::Immutable),
            _ => {
                inner.tags.insert(key, digest.clone());
                inner
                    .moved
                    .push((repository.to_string(), tag.clone(), digest.clone()));
                Ok(TagMove::Moved)
            }
        }
    }
}

/// What the fake target was asked to do.
#[derive(Debug, Clone, PartialEq)]
pub struct StartedRollout {
    pub deployment_id: DeploymentId,
    pub app: AppName,
    pub environment: EnvName,
    pub image: String,
    pub target_ref: TargetRef,
}

#[derive(Default)]
struct TargetInner {
    started: Vec<StartedRollout>,
    statuses: HashMap<String, RolloutStatus>,
    refuse: VecDeque<TargetError>,
    cancelled: Vec<String>,
    /// The target forgot every rollout it was given: reads answer `NotFound`.
    amnesia: bool,
    /// What each environment runs: a rollout's image once it succeeded; a failed rollout
    /// leaves what ran before (the SSM script, ECS's circuit breaker and CodeDeploy's
    /// own rollback all restore it).
    runs: HashMap<EnvKey, String>,
    /// Handles shaped as each kind of target writes them (`ssm:…`, `ecs:…`, `codedeploy:…`)
    /// instead of `fake:cmd-N`.
    realistic: bool,
    /// The platform the target says it runs (as an ECS task definition's `runtimePlatform`).
    declares: Option<crate::domain::platform::Platform>,
}

/// A target that records rollouts; their status is whatever the test sets.
#[derive(Default, Clone)]
pub struct FakeTarget {
    inner: Arc<Mutex<TargetInner>>,
}

impl FakeTarget {
    /// The target says it runs `platform` from now on, as an ECS task definition's
    /// `runtimePlatform` does.
    pub fn declare_platform(&self, platform: crate::domain::platform::Platform) {
        self.inner.lock().unwrap().declares = Some(platform);
    }

    pub fn started(&self) -> Vec<StartedRollout> {
        self.inner.lock().unwrap().started.clone()
    }

    pub fn last(&self) -> StartedRollout {
        self.started()
            .last()
            .cloned()
            .expect("no rollout was started")
    }

    pub fn set_status(&self, target_ref: &TargetRef, status: RolloutStatus) {
        self.inner
            .lock()
            .unwrap()
            .statuses
            .insert(target_ref.to_string(), status);
    }

    /// The next `start` fails with this error.
    pub fn refuse_next(&self, error: TargetError) {
        self.inner.lock().unwrap().refuse.push_back(error);
    }

    /// A target whose handles look like the real ones of the environment's kind.
    pub fn realistic() -> Self {
        let target = Self::default();
        target.inner.lock().unwrap().realistic = true;
        target
    }

    /// The rollout behind `target_ref` ends as `status`; a success makes its image what the
    /// environment runs.
    pub fn complete(&self, target_ref: &TargetRef, status: RolloutStatus) {
        let mut inner = self.inner.lock().unwrap();
        if status == RolloutStatus::Succeeded
            && let Some(s) = inner
                .started
                .iter()
                .find(|s| &s.target_ref == target_ref)
                .cloned()
        {
            inner.runs.insert((s.app, s.environment), s.image);
        }
        inner.statuses.insert(target_ref.to_string(), status);
    }

    /// The image an environment runs, as far as the target is concerned.
    pub fn runs(&self, app: &AppName, env: &EnvName) -> Option<String> {
        self.inner
            .lock()
            .unwrap()
            .runs
            .get(&(app.clone(), env.clone()))
            .cloned()
    }

    /// The target no longer knows this rollout (its status reads `NotFound`).
    pub fn forget(&self, target_ref: &TargetRef) {
        self.inner
            .lock()
            .unwrap()
            .statuses
            .remove(target_ref.as_str());
    }

    /// From now on the target knows no rollout it was given (a deleted service, a purged
    /// command history): status and cancel answer `NotFound`, find finds nothing.
    pub fn forget_all(&self) {
        self.inner.lock().unwrap().amnesia = true;
    }

    pub fn cancelled(&self) -> Vec<String> {
        self.inner.lock().unwrap().cancelled.clone()
    }
}

#[async_trait]
impl Target for FakeTarget {
    async fn start(
        &self,
        deployment: &Deployment,
        config: &TargetConfig,
    ) -> Result<Started, TargetError> {
        let mut inner = self.inner.lock().unwrap();
        if let Some(error) = inner.refuse.pop_front() {
            return Err(error);
        }
        let n = inner.started.len() + 1;
        let target_ref = match (inner.realistic, config) {
            (false, _) => TargetRef::new("fake", &format!("cmd-{n}")),
            (true, TargetConfig::Ssm(_)) => {
                TargetRef::new("ssm", &format!("{n:08x}-0000-4000-8000-{n:012x}"))
            }
            (true, TargetConfig::Ecs(ecs)) => TargetRef::new(
                "ecs",
                &format!("{}/{}/ecs-svc/{n}", ecs.cluster, ecs.service),
            ),
            (true, TargetConfig::CodeDeploy(_)) => {
                TargetRef::new("codedeploy", &format!("d-{n:09}"))
            }
        };
        inner.started.push(StartedRollout {
            deployment_id: deployment.id.clone(),
            app: deployment.app.clone(),
            environment: deployment.environment.clone(),
            image: deployment.image.to_string(),
            target_ref: target_ref.clone(),
        });
        inner
            .statuses
            .insert(target_ref.to_string(), RolloutStatus::InProgress);
        Ok(Started {
            target_ref,
            before: Some(format!("fake-before-{}", deployment.id)),
        })
    }

    async fn status(&self, target_ref: &TargetRef) -> Result<RolloutStatus, TargetError> {
        let inner = self.inner.lock().unwrap();
        if inner.amnesia {
            return Err(TargetError::NotFound(format!("no rollout {target_ref}")));
        }
        inner
            .statuses
            .get(target_ref.as_str())
            .cloned()
            .ok_or_else(|| TargetError::NotFound(format!("no rollout {target_ref}")))
    }

    async fn platform(
        &self,
        _config: &TargetConfig,
    ) -> Result<Option<crate::domain::platform::Platform>, TargetError> {
        Ok(self.inner.lock().unwrap().declares.clone())
    }

    async fn cancel(&self, target_ref: &TargetRef) -> Result<(), TargetError> {
        let mut inner = self.inner.lock().unwrap();
        if inner.amnesia {
            return Err(TargetError::NotFound(format!("no rollout {target_ref}")));
        }
        inner.cancelled.push(target_ref.to_string());
        // A cancelled rollout ends where it was: what ran before runs on.
        if let Some(status) = inner.statuses.get_mut(target_ref.as_str())
            && *status == RolloutStatus::InProgress
        {
            *status = RolloutStatus::Failed("cancelled".into());
        }
        Ok(())
    }

    async fn find(
        &self,
        deployment: &Deployment,
        _config: &TargetConfig,
    ) -> Result<Option<Started>, TargetError> {
        let inner = self.inner.lock().unwrap();
        if inner.amnesia {
            return Ok(None);
        }
        Ok(inner
            .started
            .iter()
            .find(|s| s.deployment_id == deployment.id)
            .map(|s| Started {
                target_ref: s.target_ref.clone(),
                before: Some(format!("fake-before-{}", deployment.id)),
            }))
    }
}

/// Records published events in order.
#[derive(Default, Clone)]
pub struct RecordingPublisher {
    events: Arc<Mutex<Vec<LifecycleEvent>>>,
}

impl RecordingPublisher {
    pub fn events(&self) -> Vec<LifecycleEvent> {
        self.events.lock().unwrap().clone()
    }

    /// Detail-types published so far, in order.
    pub fn types(&self) -> Vec<&'static str> {
        self.events()
            .iter()
            .map(|e| e.detail_type.as_str())
            .collect()
    }

    pub fn clear(&self) {
        self.events.lock().unwrap().clear();
    }
}

#[async_trait]
impl EventPublisher for RecordingPublisher {
    async fn publish(&self, events: &[LifecycleEvent]) -> Result<(), PublishError> {
        self.events.lock().unwrap().extend_from_slice(events);
        Ok(())
    }
}

/// A fixed configuration.
pub struct FixedConfig(pub Arc<Config>);

impl FixedConfig {
    pub fn yaml(text: &str) -> Self {
        Self(Arc::new(
            Config::from_yaml(text).expect("test configuration is valid"),
        ))
    }
}

#[async_trait]
impl ConfigSource for FixedConfig {
    async fn load(&self) -> Result<Arc<Config>, ConfigLoadError> {
        Ok(self.0.clone())
    }
}

/// A clock that moves only when told.
#[derive(Clone)]
pub struct ManualClock(Arc<Mutex<OffsetDateTime>>);

impl ManualClock {
    pub fn new(at: OffsetDateTime) -> Self {
        Self(Arc::new(Mutex::new(at)))
    }

    pub fn advance(&self, by: Duration) {
        *self.0.lock().unwrap() += by;
    }

    pub fn set(&self, at: OffsetDateTime) {
        *self.0.lock().unwrap() = at;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        *self.0.lock().unwrap()
    }
}

type Answers = HashMap<String, VecDeque<Result<ProbeResponse, ProbeError>>>;

/// An HTTP endpoint per URL that answers from a script, repeating the last answer.
#[derive(Default, Clone)]
pub struct ScriptedProbe {
    answers: Arc<Mutex<Answers>>,
    calls: Arc<Mutex<Vec<String>>>,
}

impl ScriptedProbe {
    pub fn answer(&self, url: &str, answers: Vec<Result<ProbeResponse, ProbeError>>) {
        self.answers
            .lock()
            .unwrap()
            .insert(url.to_owned(), answers.into());
    }

    pub fn ok(status: u16, body: &str) -> Result<ProbeResponse, ProbeError> {
        Ok(ProbeResponse {
            status,
            body: body.to_owned(),
        })
    }

    pub fn calls(&self, url: &str) -> usize {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|u| *u == url)
            .count()
    }
}

#[async_trait]
impl HttpProbe for ScriptedProbe {
    async fn get(&self, url: &str, _timeout: Duration) -> Result<ProbeResponse, ProbeError> {
        self.calls.lock().unwrap().push(url.to_owned());
        let mut answers = self.answers.lock().unwrap();
        let queue = answers
            .get_mut(url)
            .ok_or_else(|| ProbeError::Connect(format!("nothing listens at {url}")))?;
        if queue.len() > 1 {
            Ok(queue.pop_front().unwrap()?)
        } else {
            queue
                .front()
                .cloned()
                .unwrap_or_else(|| Err(ProbeError::Connect("no answer".into())))
        }
    }
}

/// Secrets in memory.
#[derive(Default, Clone)]
pub struct FixedSecrets(pub Arc<Mutex<HashMap<crate::domain::config::SecretRef, String>>>);

impl FixedSecrets {
    pub fn set(&self, secret: crate::domain::config::SecretRef, value: &str) {
        self.0.lock().unwrap().insert(secret, value.to_owned());
    }
}

#[async_trait]
impl crate::ports::SecretSource for FixedSecrets {
    async fn read(
        &self,
        secret: &crate::domain::config::SecretRef,
    ) -> Result<String, crate::ports::SecretError> {
        self.0.lock().unwrap().get(secret).cloned().ok_or_else(|| {
            crate::ports::SecretError::NotFound(format!("{secret:?} does not exist"))
        })
    }
}

/// CloudWatch alarms in memory: each named alarm's state, set by the test.
#[derive(Clone, Default)]
pub struct FakeAlarms {
    states: Arc<Mutex<BTreeMap<String, (crate::ports::AlarmValue, String)>>>,
    calls: Arc<Mutex<usize>>,
    refuse: Arc<Mutex<Option<String>>>,
}

impl FakeAlarms {
    /// Creates or changes an alarm.
    pub fn set(&self, name: &str, value: crate::ports::AlarmValue, reason: &str) {
        self.states
            .lock()
            .unwrap()
            .insert(name.to_owned(), (value, reason.to_owned()));
    }

    /// Every later read is refused with `message` (an IAM policy without the alarm).
    pub fn refuse(&self, message: &str) {
        *self.refuse.lock().unwrap() = Some(message.to_owned());
    }

    /// How many times the alarms were read.
    pub fn calls(&self) -> usize {
        *self.calls.lock().unwrap()
    }
}

#[async_trait]
impl crate::ports::Alarms for FakeAlarms {
    async fn states(
        &self,
        names: &[String],
    ) -> Result<Vec<crate::ports::AlarmState>, crate::ports::AlarmError> {
        *self.calls.lock().unwrap() += 1;
        if let Some(message) = self.refuse.lock().unwrap().clone() {
            return Err(crate::ports::AlarmError::Refused(CallError::said(
                "DescribeAlarms",
                message,
            )));
        }
        let states = self.states.lock().unwrap();
        Ok(names
            .iter()
            .filter_map(|n| {
                states
                    .get(n)
                    .map(|(value, reason)| crate::ports::AlarmState {
                        name: n.clone(),
                        value: *value,
                        reason: reason.clone(),
                    })
            })
            .collect())
    }
}

/// Every fake, a clock, and the use cases built on them: the world one test runs in.
#[derive(Clone)]
pub struct World {
    pub store: MemoryStore,
    pub target: FakeTarget,
    pub events: RecordingPublisher,
    pub registry: FakeRegistry,
    pub probe: ScriptedProbe,
    pub alarms: FakeAlarms,
    pub secrets: FixedSecrets,
    pub clock: ManualClock,
    pub config: Arc<Config>,
    /// Every EMF line the use cases wrote.
    pub metrics: Arc<Mutex<Vec<String>>>,
}

impl World {
    /// The ECR registry of the sample events.
    pub const REGISTRY: &'static str = "123456789012.dkr.ecr.eu-west-1.amazonaws.com";
    /// When every world's clock starts.
    pub const START: OffsetDateTime = time::macros::datetime!(2026-11-20 10:00 UTC);
    /// The configuration the sample events refer to.
    pub const SAMPLE_CONFIG: &'static str = include_str!("../../events/config.yaml");

    /// A world configured by the sample configuration.
    pub fn sample() -> Self {
        Self::new(Self::SAMPLE_CONFIG)
    }

    pub fn new(config_yaml: &str) -> Self {
        Self::with_config(Arc::new(
            Config::from_yaml(config_yaml).expect("test configuration is valid"),
        ))
    }

    /// A world with a configuration already parsed (to share one among many worlds).
    pub fn with_config(config: Arc<Config>) -> Self {
        Self {
            store: MemoryStore::default(),
            target: FakeTarget::default(),
            events: RecordingPublisher::default(),
            registry: FakeRegistry::new(Self::REGISTRY),
            probe: ScriptedProbe::default(),
            alarms: FakeAlarms::default(),
            secrets: FixedSecrets::default(),
            clock: ManualClock::new(Self::START),
            config,
            metrics: Arc::default(),
        }
    }

    pub fn core(&self) -> crate::services::Core {
        crate::services::Core {
            store: Arc::new(self.store.clone()),
            events: Arc::new(self.events.clone()),
            config: Arc::new(FixedConfig(self.config.clone())),
            clock: Arc::new(self.clock.clone()),
            meter: crate::metrics::Meter::new(
                "pushdeploy/test",
                crate::metrics::Sink::Memory(self.metrics.clone()),
            ),
        }
    }

    pub fn deployer(&self) -> crate::services::Deployer {
        crate::services::Deployer {
            core: self.core(),
            registry: Arc::new(self.registry.clone()),
            target: Arc::new(self.target.clone()),
            tags: Arc::new(self.registry.clone()),
        }
    }

    pub fn tracker(&self) -> crate::services::Tracker {
        crate::services::Tracker {
            core: self.core(),
            target: Arc::new(self.target.clone()),
            registry: Arc::new(self.registry.clone()),
        }
    }

    pub fn verifier(&self) -> crate::services::Verifier {
        crate::services::Verifier {
            core: self.core(),
            probe: Arc::new(self.probe.clone()),
            alarms: Arc::new(self.alarms.clone()),
        }
    }

    pub fn rollback(&self) -> crate::services::Rollback {
        crate::services::Rollback {
            core: self.core(),
            registry: Arc::new(self.registry.clone()),
            target: Arc::new(self.target.clone()),
        }
    }

    pub fn control(&self) -> crate::services::Control {
        crate::services::Control { core: self.core() }
    }

    pub fn janitor(&self) -> crate::services::Janitor {
        crate::services::Janitor {
            core: self.core(),
            catalog: Arc::new(self.registry.clone()),
        }
    }

    pub fn notifier(
        &self,
        webhook: Arc<dyn crate::ports::Webhook>,
        delivery: crate::services::notify::Delivery,
    ) -> crate::services::Notifier {
        crate::services::Notifier {
            core: self.core(),
            secrets: Arc::new(self.secrets.clone()),
            webhook,
            delivery,
        }
    }

    /// An image of the sample registry's `acme/web`, by the digest's repeated hex digit.
    pub fn image(&self, hex: char) -> PinnedImage {
        PinnedImage::parse(&format!(
            "{}/acme/web@sha256:{}",
            Self::REGISTRY,
            hex.to_string().repeat(64)
        ))
        .unwrap()
    }

    /// The stored deployments of an environment of the sample app `web`, oldest first.
    pub fn deployments(&self, env: &str) -> Vec<Deployment> {
        self.store.deployments(&app("web"), &env_name(env))
    }

    /// The stored state of an environment of the sample app `web`.
    pub fn state(&self, env: &str) -> EnvState {
        let inner = self.store.inner.lock().unwrap();
        let key = (app("web"), env_name(env));
        inner
            .envs
            .get(&key)
            .cloned()
            .unwrap_or_else(|| EnvState::new(key.0, key.1))
    }
}

/// An invocation as Lambda delivers it, from JSON text (a sample event, a console request).
pub fn invocation(json: &str) -> lambda_runtime::LambdaEvent<serde_json::Value> {
    lambda_runtime::LambdaEvent::new(
        serde_json::from_str(json).expect("the invocation is JSON"),
        lambda_runtime::Context::default(),
    )
}

/// A webhook that accepts every message and remembers each.
#[derive(Default, Clone)]
pub struct RecordingWebhook {
    pub posted: Arc<Mutex<Vec<(String, crate::domain::notice::Message)>>>,
}

#[async_trait]
impl crate::ports::Webhook for RecordingWebhook {
    async fn post(
        &self,
        url: &str,
        _kind: crate::domain::config::ChannelKind,
        message: &crate::domain::notice::Message,
        _timeout: Duration,
    ) -> Result<(), crate::ports::WebhookError> {
        self.posted
            .lock()
            .unwrap()
            .push((url.to_owned(), message.clone()));
        Ok(())
    }
}

/// A lifecycle event as EventBridge delivers it, under event id `id`.
pub fn delivered(event: &LifecycleEvent, id: &str) -> serde_json::Value {
    serde_json::json!({
        "version": "0",
        "id": id,
        "detail-type": event.detail_type.as_str(),
        "source": crate::domain::event::SOURCE,
        "account": "123456789012",
        "time": event
            .detail
            .at()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap(),
        "region": "eu-west-1",
        "resources": [],
        "detail": event.detail,
    })
}

/// An app name known to be valid, for tests.
pub fn app(name: &str) -> AppName {
    AppName::parse(name).unwrap()
}

/// An environment name known to be valid, for tests.
pub fn env_name(name: &str) -> EnvName {
    EnvName::parse(name).unwrap()
}
