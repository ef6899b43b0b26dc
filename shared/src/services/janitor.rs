//! Keeping repositories small: deletes the images no retention rule keeps and no
//! environment needs. Digests that are running, recently verified, rolling out, about to
//! be restored, queued, waiting for approval or approved, or waiting for their
//! vulnerability scan are never deleted, in any environment of any app.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::{Core, Refusal, ServiceError};
use crate::domain::config::{Config, Retention};
use crate::domain::environment::KEEP_VERIFIED;
use crate::domain::retention::{self, Keep, RetentionRule, StoredImage};
use crate::domain::{Digest, LifecycleEvent, Repository};
use crate::ports::{DeleteFailure, ImageCatalog, MAX_BATCH, RegistryError, StoreError};

/// Attempts of one registry call that is throttled or fails transiently.
const REGISTRY_ATTEMPTS: u32 = 8;
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Default, PartialEq)]
pub struct CleanupRequest {
    /// Report what would be deleted, delete nothing.
    pub dry_run: bool,
    /// Only this repository; every repository with a retention rule when `None`.
    pub repository: Option<Repository>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CleanupReport {
    pub dry_run: bool,
    pub repositories: Vec<RepositoryReport>,
}

impl CleanupReport {
    /// A run that left some repository unclean, as an error: retryable when a registry
    /// that was throttled or unreachable is what stopped it.
    pub fn incomplete(&self) -> Option<ServiceError> {
        let failures = self.failures();
        if failures.is_empty() {
            return None;
        }
        Some(ServiceError::Incomplete {
            summary: format!("cleanup incomplete: {}", failures.join("; ")),
            retryable: self.repositories.iter().any(|r| r.retryable),
        })
    }

    /// Repositories that could not be cleaned, with why.
    pub fn failures(&self) -> Vec<String> {
        self.repositories
            .iter()
            .filter_map(|r| {
                let failed = r.failed.len();
                match (&r.error, failed) {
                    (Some(e), _) => Some(format!("{}: {e}", r.repository)),
                    (None, 0) => None,
                    (None, n) => Some(format!(
                        "{}: {n} images could not be deleted ({})",
                        r.repository, r.failed[0].reason
                    )),
                }
            })
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RepositoryReport {
    pub repository: Repository,
    pub images: usize,
    pub kept: KeptCounts,
    /// Deleted, or in a dry run, would be deleted: oldest push first.
    pub deleted: Vec<Digest>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<DeleteFailure>,
    /// The digests in use and why, among this repository's images.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub in_use: BTreeMap<Digest, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Whether `error` came from a registry that was throttled or unreachable.
    #[serde(skip)]
    pub retryable: bool,
}

/// How many images each rule kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptCounts {
    pub newest: usize,
    pub protected_tag: usize,
    pub in_use: usize,
    pub child_of_kept_index: usize,
}

#[derive(Clone)]
pub struct Janitor {
    pub core: Core,
    pub catalog: Arc<dyn ImageCatalog>,
}

impl Janitor {
    #[tracing::instrument(skip_all, fields(dry_run = request.dry_run))]
    pub async fn run(&self, request: &CleanupRequest) -> Result<CleanupReport, ServiceError> {
        let config = self.core.config.load().await?;
        let rules = rules_by_repository(&config);
        let repositories: Vec<(&Repository, &RetentionRule)> = match &request.repository {
            Some(wanted) => {
                let rule = rules.get(wanted).ok_or_else(|| Refusal::NoRetention {
                    repository: wanted.clone(),
                })?;
                vec![(wanted, rule)]
            }
            None => rules.iter().collect(),
        };
        if repositories.is_empty() {
            info!("no app has a retention rule: nothing to clean");
        }
        let mut reports = Vec::new();
        for (repository, rule) in repositories {
            let report = self
                .clean(&config, repository, rule, request.dry_run)
                .await?;
            info!(
                repository = %repository,
                images = report.images,
                deleted = report.deleted.len(),
                failed = report.failed.len(),
                error = report.error.as_deref(),
                dry_run = request.dry_run,
                "repository cleaned"
            );
            reports.push(report);
        }
        Ok(CleanupReport {
            dry_run: request.dry_run,
            repositories: reports,
        })
    }

    /// Cleans one repository. Registry failures are reported in the result, so that one
    /// repository does not stop the others; state-table failures end the run.
    async fn clean(
        &self,
        config: &Config,
        repository: &Repository,
        rule: &RetentionRule,
        dry_run: bool,
    ) -> Result<RepositoryReport, ServiceError> {
        let mut report = RepositoryReport {
            repository: repository.clone(),
            images: 0,
            kept: KeptCounts::default(),
            deleted: Vec::new(),
            failed: Vec::new(),
            in_use: BTreeMap::new(),
            error: None,
            retryable: false,
        };
        let images = match self.list(repository).await {
            Ok(images) => images,
            Err(e) => {
                report.retryable = is_transient(&e);
                report.error = Some(e.to_string());
                return Ok(report);
            }
        };
        report.images = images.len();
        let needed = in_use(self.core.store.as_ref(), config).await?;
        let plan = retention::plan(&images, rule, &needed);
        for keep in plan.keep.values() {
            match keep {
                Keep::Newest { .. } => report.kept.newest += 1,
                Keep::ProtectedTag { .. } => report.kept.protected_tag += 1,
                Keep::InUse { .. } => report.kept.in_use += 1,
                Keep::ChildOf { .. } => report.kept.child_of_kept_index += 1,
            }
        }
        report.in_use = plan
            .keep
            .iter()
            .filter_map(|(d, k)| match k {
                Keep::InUse { by } => Some((d.clone(), by.clone())),
                _ => None,
            })
            .collect();
        if dry_run {
            report.deleted = plan.delete;
            return Ok(report);
        }
        // A rollout may have started while the repository was listed: read again what is
        // in use, just before deleting, and spare it.
        let fresh = in_use(self.core.store.as_ref(), config).await?;
        let doomed: Vec<Digest> = plan
            .delete
            .into_iter()
            .filter(|d| !fresh.contains_key(d))
            .collect();
        for batch in doomed.chunks(MAX_BATCH) {
            let failures = match retrying(
                || self.catalog.delete(repository, batch),
                "deleting images",
            )
            .await
            {
                Ok(failures) => failures,
                Err(e) => {
                    report.retryable = is_transient(&e);
                    report.error = Some(format!("deleting images: {e}"));
                    break;
                }
            };
            let deleted: Vec<Digest> = batch
                .iter()
                .filter(|d| !failures.iter().any(|f| &f.digest == *d))
                .cloned()
                .collect();
            for failure in &failures {
                warn!(repository = %repository, digest = %failure.digest, reason = %failure.reason, "image not deleted");
            }
            report.failed.extend(failures);
            if !deleted.is_empty() {
                // The deletion is done whatever becomes of its announcement.
                let event = LifecycleEvent::images_deleted(
                    repository,
                    deleted.clone(),
                    self.core.clock.now(),
                );
                self.core.meter.record(&event);
                self.core.events.publish(&[event]).await?;
            }
            report.deleted.extend(deleted);
        }
        Ok(report)
    }

    /// Every image of the repository, page by page, with the manifests of its indexes.
    async fn list(&self, repository: &Repository) -> Result<Vec<StoredImage>, RegistryError> {
        let mut images = Vec::new();
        let mut indexes = Vec::new();
        let mut next = None;
        loop {
            let page = retrying(
                || self.catalog.list_page(repository, next.clone()),
                "listing images",
            )
            .await?;
            for listed in page.images {
                if listed.is_index {
                    indexes.push(listed.image.digest.clone());
                }
                images.push(listed.image);
            }
            match page.next {
                Some(token) => next = Some(token),
                None => break,
            }
        }
        let mut children = BTreeMap::new();
        for batch in indexes.chunks(MAX_BATCH) {
            let found = retrying(
                || self.catalog.index_children(repository, batch),
                "reading image indexes",
            )
            .await?;
            children.extend(found);
        }
        for image in &mut images {
            if let Some(c) = children.remove(&image.digest) {
                image.children = c;
            }
        }
        Ok(images)
    }
}

/// One retention rule per repository. Apps sharing a repository share its images, so the
/// rule keeps what any of them keeps: the larger counts and every protected pattern.
pub fn rules_by_repository(config: &Config) -> BTreeMap<Repository, RetentionRule> {
    let mut rules: BTreeMap<Repository, RetentionRule> = BTreeMap::new();
    for app in config.apps.values() {
        let Some(Retention { rule, .. }) = &app.retention else {
            continue;
        };
        rules
            .entry(app.repository.clone())
            .and_modify(|r| {
                r.keep_newest = r.keep_newest.max(rule.keep_newest);
                for p in &rule.protect_tags {
                    if !r.protect_tags.contains(p) {
                        r.protect_tags.push(p.clone());
                    }
                }
            })
            .or_insert_with(|| rule.clone());
    }
    // An app without a rule that shares a repository with one still has its verified
    // digests kept (see `in_use`), but nothing else: the rule's owners decide.
    rules
}

/// The digests some environment needs, with why: what runs, the last verified ones, what
/// is rolling out and what it would restore, what is queued, what waits to be promoted or
/// was approved, and what waits for its scan.
pub async fn in_use(
    store: &dyn crate::ports::StateStore,
    config: &Config,
) -> Result<BTreeMap<Digest, String>, ServiceError> {
    let mut needed = BTreeMap::new();
    let mut need = |digest: &Digest, why: String| {
        needed.entry(digest.clone()).or_insert(why);
    };
    for (app, env, _) in config.environments() {
        let state = store.env_state(app, env).await?;
        let keep_verified = config
            .app(app)
            .and_then(|a| a.retention.as_ref())
            .map_or(KEEP_VERIFIED, |r| r.keep_verified);
        if let Some(current) = &state.current {
            need(&current.digest, format!("current in {app}/{env}"));
        }
        for (i, v) in state.verified.iter().take(keep_verified).enumerate() {
            need(&v.digest, format!("verified #{} in {app}/{env}", i + 1));
        }
        if let Some(queued) = &state.queued {
            need(&queued.image.digest, format!("queued in {app}/{env}"));
        }
        if let Some(pending) = &state.pending {
            need(
                pending.digest(),
                format!(
                    "waiting for {} to promote into {app}/{env}",
                    pending.waiting_for
                ),
            );
        }
        if let Some(approved) = &state.approved {
            need(
                approved.digest(),
                format!("approved to promote into {app}/{env}"),
            );
        }
        if let Some(waiting) = &state.awaiting_scan {
            need(
                &waiting.request.image.digest,
                format!("waiting for its vulnerability scan in {app}/{env}"),
            );
        }
        if let Some(lease) = &state.lease {
            match store.deployment(app, env, &lease.deployment_id).await {
                Ok(dep) => {
                    need(dep.digest(), format!("rolling out in {app}/{env}"));
                    if let Some(previous) = &dep.previous {
                        need(
                            &previous.digest,
                            format!("restored if the rollout in {app}/{env} fails"),
                        );
                    }
                }
                // The lease outlived its record (it is being written): nothing more known.
                Err(StoreError::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(needed)
}

fn is_transient(e: &RegistryError) -> bool {
    matches!(e, RegistryError::Throttled(_) | RegistryError::Transient(_))
}

/// Calls the registry again, after a pause, while it is throttled or unreachable.
async fn retrying<T, F, Fut>(mut call: F, what: &str) -> Result<T, RegistryError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, RegistryError>>,
{
    let mut backoff = FIRST_BACKOFF;
    let mut attempt = 1;
    loop {
        match call().await {
            Err(e) if is_transient(&e) && attempt < REGISTRY_ATTEMPTS => {
                let pause = super::jittered(backoff);
                warn!(attempt, error = %e, "{what}: trying again in {pause:?}");
                tokio::time::sleep(pause).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                attempt += 1;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Deployment, Kind, Request};
    use crate::fakes::World;
    use crate::ports::{Commit, StateStore};

    #[test]
    fn apps_sharing_a_repository_keep_what_either_keeps() {
        let config = Config::from_yaml(
            r#"
apps:
  web:
    repository: acme/web
    retention: { keep_newest: 5, protect_tags: ["v*"] }
    environments:
      staging: { target: { ssm: { instances: { ids: [i-0123456789abcdef0] }, container: web, ports: ["80:80"] } } }
  worker:
    repository: acme/web
    retention: { keep_newest: 9, protect_tags: ["release-*"] }
    environments:
      staging: { target: { ssm: { instances: { ids: [i-0123456789abcdef0] }, container: worker, ports: ["81:81"] } } }
"#,
        )
        .unwrap();
        let rules = rules_by_repository(&config);
        let rule = &rules[&Repository::parse("acme/web").unwrap()];
        assert_eq!(rule.keep_newest, 9);
        assert_eq!(rule.protect_tags.len(), 2);
    }

    #[tokio::test]
    async fn what_a_rollout_would_restore_is_in_use() {
        let w = World::sample();
        let mut state = w.state("staging");
        let request = |hex| Request {
            image: w.image(hex),
            tag: None,
            kind: Kind::Push,
            pushed_at: World::START,
            requested_by: None,
            reason: None,
        };
        let mut first = Deployment::new(
            state.app.clone(),
            state.environment.clone(),
            request('a'),
            World::START,
        );
        state.start(&mut first);
        state.release(&first.id);
        let mut second = Deployment::new(
            state.app.clone(),
            state.environment.clone(),
            request('b'),
            World::START,
        );
        state.start(&mut second);
        w.store
            .commit(Commit::env(&mut state).with(&mut first).with(&mut second))
            .await
            .unwrap();
        let needed = in_use(&w.store, &w.config).await.unwrap();
        assert_eq!(
            needed.get(&w.image('a').digest).map(String::as_str),
            Some("restored if the rollout in web/staging fails")
        );
        assert_eq!(
            needed.get(&w.image('b').digest).map(String::as_str),
            Some("current in web/staging")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_run_stopped_by_a_throttled_registry_is_retryable() {
        let w = World::sample();
        w.registry
            .push("acme/web", Some("main-1"), &w.image('a').digest);
        w.registry.throttle(100);
        let report = w.janitor().run(&CleanupRequest::default()).await.unwrap();
        let error = report.incomplete().unwrap();
        assert!(error.is_retryable(), "{error}");
        assert!(error.to_string().contains("acme/web"), "{error}");
    }
}
