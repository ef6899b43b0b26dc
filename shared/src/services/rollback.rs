//! Rolling back: after a failed rollout or a failed verification, redeploy the most recent
//! digest verified in that environment that ECR still has. A rollback that fails is never
//! followed by another: it freezes the environment instead.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::deploy::{unknown_app, unknown_env};
use super::error::Names;
use super::rollout::{
    advance, due_to_start, end_without_rollback, launch, resume, rollback_failed,
};
use super::{Core, Refusal, ServiceError, retry_on_conflict};
use crate::domain::environment::{Freeze, VerifiedDigest};
use crate::domain::{
    AppName, Deployment, DeploymentId, Digest, EnvName, EnvState, EventType, Kind, LifecycleEvent,
    Phase, Request, Step,
};
use crate::ports::{Commit, ImageRegistry, RegistryError, Target};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum RollbackOutcome {
    /// A rollback deployment is rolling out.
    Started {
        deployment_id: DeploymentId,
        rollback_of: Option<DeploymentId>,
        image: String,
    },
    /// The failed deployment had nothing verified to go back to; the environment is free.
    NothingToRollBackTo { deployment_id: DeploymentId },
    /// The rollback failed; the environment is frozen.
    RollbackFailed {
        deployment_id: DeploymentId,
        reason: String,
    },
    AlreadyHandled {
        deployment_id: DeploymentId,
        phase: Phase,
    },
    /// A revoked digest asks for nothing here now, and why.
    NotRolledBack { reason: String },
}

/// A rollback asked for by hand: to a given verified digest, or to the one before the
/// current image.
#[derive(Debug, Clone, PartialEq)]
pub struct ManualRollback {
    pub app: AppName,
    pub environment: EnvName,
    pub digest: Option<Digest>,
    pub requested_by: Option<String>,
    pub reason: Option<String>,
}

#[derive(Clone)]
pub struct Rollback {
    pub core: Core,
    pub registry: Arc<dyn ImageRegistry>,
    pub target: Arc<dyn Target>,
}

impl Rollback {
    /// Handles "Rollout Failed" and "Verification Failed".
    #[tracing::instrument(skip_all, fields(app = %app, env = %env, deployment_id = %id))]
    pub async fn on_failure(
        &self,
        app: &AppName,
        env: &EnvName,
        id: &DeploymentId,
    ) -> Result<RollbackOutcome, ServiceError> {
        let mut dep = self.core.store.deployment(app, env, id).await?;
        if dep.phase != Phase::Failed {
            return Ok(RollbackOutcome::AlreadyHandled {
                deployment_id: dep.id,
                phase: dep.phase,
            });
        }
        if dep.kind == Kind::Rollback {
            let reason = dep
                .reason
                .clone()
                .unwrap_or_else(|| "the rollback deployment failed".into());
            rollback_failed(&self.core, &mut dep, &reason).await?;
            let failed = dep.rollback_of.clone().unwrap_or(dep.id);
            return Ok(RollbackOutcome::RollbackFailed {
                deployment_id: failed,
                reason,
            });
        }
        self.roll_back(dep).await
    }

    async fn roll_back(&self, mut failed: Deployment) -> Result<RollbackOutcome, ServiceError> {
        let config = self.core.config.load().await?;
        let env_config = config
            .env(&failed.app, &failed.environment)
            .ok_or_else(|| unknown_env(&config, &failed.app, &failed.environment))?;
        let id = failed.id.clone();
        retry_on_conflict(
            || format!("starting the rollback of {id}"),
            async |attempt| {
                if attempt > 0 {
                    self.core.reread(&mut failed).await?;
                    if failed.phase != Phase::Failed {
                        return Ok(RollbackOutcome::AlreadyHandled {
                            deployment_id: failed.id.clone(),
                            phase: failed.phase,
                        });
                    }
                }
                self.roll_back_once(env_config, &mut failed).await
            },
        )
        .await
    }

    async fn roll_back_once(
        &self,
        env_config: &crate::domain::EnvConfig,
        failed: &mut Deployment,
    ) -> Result<RollbackOutcome, ServiceError> {
        let mut state = self
            .core
            .store
            .env_state(&failed.app, &failed.environment)
            .await?;
        if !state.is_held_by(&failed.id) {
            info!("the environment has moved on from this deployment; not rolling back");
            return Ok(RollbackOutcome::AlreadyHandled {
                deployment_id: failed.id.clone(),
                phase: failed.phase,
            });
        }
        let candidates: Vec<VerifiedDigest> = state
            .rollback_candidates(failed.digest())
            .cloned()
            .collect();
        if candidates.is_empty() {
            let reason = format!(
                "{}; nothing verified to roll back to",
                failed.reason.as_deref().unwrap_or("deployment failed")
            );
            end_without_rollback(&self.core, failed, &reason).await?;
            return Ok(RollbackOutcome::NothingToRollBackTo {
                deployment_id: failed.id.clone(),
            });
        }
        let Some(good) = self.first_still_in_registry(failed, &candidates).await? else {
            let tried: Vec<&str> = candidates.iter().map(|c| c.digest.as_str()).collect();
            let reason = format!(
                "no verified image is still in the registry (tried {})",
                tried.join(", ")
            );
            self.unrecoverable(failed, &reason).await?;
            return Ok(RollbackOutcome::RollbackFailed {
                deployment_id: failed.id.clone(),
                reason,
            });
        };
        let mut rollback = Deployment::new(
            failed.app.clone(),
            failed.environment.clone(),
            Request {
                image: failed.image.with_digest(good.digest.clone()),
                tag: good.tag.clone(),
                kind: Kind::Rollback,
                // A rollback takes the failed push's place in push order, so that newer
                // pushes waiting in the queue still go next.
                pushed_at: failed.pushed_at,
                requested_by: None,
                reason: Some(format!("rolling back deployment {}", failed.id)),
            },
            self.core.clock.now(),
        );
        rollback.rollback_of = Some(failed.id.clone());
        rollback.restore = failed.target_before.clone();
        let note = format!(
            "rolling back to {} (deployment {})",
            good.digest, rollback.id
        );
        failed
            .apply(Step::RollbackStarted, self.core.clock.now(), Some(note))
            .map_err(|source| ServiceError::Transition {
                deployment: failed.id.clone(),
                source,
            })?;
        failed.rolled_back_by = Some(rollback.id.clone());
        state.release(&failed.id);
        state.start(&mut rollback);
        let failed_at = failed
            .history
            .iter()
            .rev()
            .find(|h| h.phase == Phase::Failed)
            .map(|h| h.at);
        let outbox = self.core.outbox(vec![
            LifecycleEvent::of(EventType::RollbackStarted, &rollback).with_failed_at(failed_at),
        ]);
        self.core
            .store
            .commit(Commit {
                outbox: outbox.clone(),
                ..Commit::env(&mut state).with(failed).with(&mut rollback)
            })
            .await?;
        info!(deployment_id = %rollback.id, rollback_of = %failed.id, digest = %good.digest, "rolling back");
        self.core.announce(outbox).await;
        let image = rollback.image.to_string();
        // A target refusing the rollback for good is recorded as a failed rollback by
        // `launch`; one refusing it for now leaves it to start again.
        launch(&self.core, self.target.as_ref(), env_config, &mut rollback).await?;
        Ok(RollbackOutcome::Started {
            deployment_id: rollback.id,
            rollback_of: Some(failed.id.clone()),
            image,
        })
    }

    /// The most recent candidate the registry still has; candidates deleted since they were
    /// verified are passed over.
    async fn first_still_in_registry<'a>(
        &self,
        failed: &Deployment,
        candidates: &'a [VerifiedDigest],
    ) -> Result<Option<&'a VerifiedDigest>, ServiceError> {
        for candidate in candidates {
            match self
                .registry
                .find_digest(&failed.image.repository, &candidate.digest)
                .await
            {
                Ok(_) => return Ok(Some(candidate)),
                Err(RegistryError::NotFound(_)) => {
                    warn!(digest = %candidate.digest, "verified image is no longer in the registry; trying an older one");
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(None)
    }

    /// The failure cannot be rolled back although verified images existed: freeze.
    async fn unrecoverable(
        &self,
        failed: &mut Deployment,
        reason: &str,
    ) -> Result<(), ServiceError> {
        let now = self.core.clock.now();
        let freeze_reason = format!(
            "automatic rollouts paused: rollback of {} failed: {reason}",
            failed.id
        );
        let mut freeze = |state: &mut EnvState, d: &Deployment| {
            state.release(&d.id);
            state.frozen = Some(Freeze {
                reason: freeze_reason.clone(),
                by: "pushdeploy".into(),
                at: now,
            });
        };
        let announce = |d: &Deployment| {
            vec![
                LifecycleEvent::of(EventType::RollbackFailed, d),
                LifecycleEvent::environment(
                    EventType::EnvironmentFrozen,
                    &d.app,
                    &d.environment,
                    Some(freeze_reason.clone()),
                    now,
                ),
            ]
        };
        if advance(
            &self.core,
            failed,
            Step::RollbackFailed,
            Some(reason.to_owned()),
            Some(&mut freeze),
            &announce,
        )
        .await?
        {
            warn!(deployment_id = %failed.id, %reason, "rollback impossible; environment frozen");
        }
        Ok(())
    }

    /// Handles "Image Revoked": an environment running the revoked digest, with nothing in
    /// flight, goes back to the newest verified digest that is neither revoked nor
    /// quarantined and that the registry still has, as a rollback by the person who revoked
    /// it. A deployment in flight of the revoked digest fails its verification instead (and
    /// rolls back as any failure does); anything else running stays.
    #[tracing::instrument(skip_all, fields(app = %app, env = %env, digest = %digest))]
    pub async fn on_revoked(
        &self,
        app: &AppName,
        env: &EnvName,
        digest: &Digest,
    ) -> Result<RollbackOutcome, ServiceError> {
        let not = |reason: String| {
            info!(%reason, "not rolling back");
            Ok(RollbackOutcome::NotRolledBack { reason })
        };
        let state = self.core.store.env_state(app, env).await?;
        let Some(revocation) = state.revoked.get(digest.as_str()) else {
            return not(format!(
                "{digest} is not revoked in {app}/{env} (any more: a deploy by hand lifts it)"
            ));
        };
        let Some(current) = state.current.as_ref().filter(|c| &c.digest == digest) else {
            return not(format!("{app}/{env} does not run {digest}"));
        };
        if let Some(holder) = state.holder() {
            return not(format!(
                "deployment {holder} is in flight on {app}/{env}; a revoked digest it rolls out fails its verification"
            ));
        }
        let candidates: Vec<VerifiedDigest> = state.rollback_candidates(digest).cloned().collect();
        let running = self
            .core
            .store
            .deployment(app, env, &current.deployment_id)
            .await?;
        let Some(good) = self.first_still_in_registry(&running, &candidates).await? else {
            warn!("the revoked digest runs on and nothing verified can replace it");
            return not(format!(
                "{app}/{env} runs the revoked {digest} and has no other verified digest in the registry to roll back to; deploy a fixed image"
            ));
        };
        let request = ManualRollback {
            app: app.clone(),
            environment: env.clone(),
            digest: Some(good.digest.clone()),
            requested_by: Some(revocation.by.clone()),
            reason: Some(format!(
                "{digest} was revoked by {}: {}",
                revocation.by, revocation.reason
            )),
        };
        match self.manual(&request).await {
            Err(ServiceError::Refused(Refusal::InFlight { holder, .. })) => not(format!(
                "deployment {holder} started on {app}/{env} meanwhile; a revoked digest it rolls out fails its verification"
            )),
            other => other,
        }
    }

    /// A rollback asked for by hand. Refused while a rollout is in flight.
    #[tracing::instrument(skip_all, fields(app = %request.app, env = %request.environment))]
    pub async fn manual(&self, request: &ManualRollback) -> Result<RollbackOutcome, ServiceError> {
        let config = self.core.config.load().await?;
        let app = config
            .app(&request.app)
            .ok_or_else(|| unknown_app(&config, &request.app))?;
        let env_config = app
            .environments
            .get(&request.environment)
            .ok_or_else(|| unknown_env(&config, &request.app, &request.environment))?;
        retry_on_conflict(
            || {
                format!(
                    "starting a rollback of {}/{}",
                    request.app, request.environment
                )
            },
            async |_| self.manual_once(request, app, env_config).await,
        )
        .await
    }

    async fn manual_once(
        &self,
        request: &ManualRollback,
        app: &crate::domain::config::AppConfig,
        env_config: &crate::domain::EnvConfig,
    ) -> Result<RollbackOutcome, ServiceError> {
        let mut state = self
            .core
            .store
            .env_state(&request.app, &request.environment)
            .await?;
        if let Some(holder) = state.holder() {
            // The same person asking again for the rollback they started (their first answer
            // was lost, or its function stopped): that rollback is the answer, resumed if its
            // start did not take.
            if let Some(outcome) = self.repeated(request, env_config, holder).await? {
                return Ok(outcome);
            }
            return Err(Refusal::InFlight {
                app: request.app.clone(),
                env: request.environment.clone(),
                holder: holder.clone(),
            }
            .into());
        }
        let good = choose_manual_target(&state, request.digest.as_ref())?.clone();
        self.registry
            .find_digest(&app.repository, &good.digest)
            .await
            .map_err(|e| match e {
                RegistryError::NotFound(_) => Refusal::ImageGone {
                    digest: good.digest.clone(),
                    repository: app.repository.clone(),
                }
                .into(),
                other => ServiceError::from(other),
            })?;
        let current = state.current.clone();
        let mut replaced = match &current {
            Some(c) => Some(
                self.core
                    .store
                    .deployment(&request.app, &request.environment, &c.deployment_id)
                    .await?,
            ),
            None => None,
        };
        // The image to pull: the registry of the deployment being replaced, else the app's.
        let image = match (&replaced, &app.registry) {
            (_, Some(registry)) => crate::domain::PinnedImage {
                registry: registry.clone(),
                repository: app.repository.clone(),
                digest: good.digest.clone(),
            },
            (Some(r), None) => r.image.with_digest(good.digest.clone()),
            (None, None) => {
                return Err(Refusal::NoRegistry {
                    app: request.app.clone(),
                    env: request.environment.clone(),
                }
                .into());
            }
        };
        let now = self.core.clock.now();
        let mut rollback = Deployment::new(
            request.app.clone(),
            request.environment.clone(),
            Request {
                image,
                tag: good.tag.clone(),
                kind: Kind::Rollback,
                pushed_at: current.as_ref().map_or(now, |c| c.pushed_at),
                requested_by: request.requested_by.clone(),
                reason: request
                    .reason
                    .clone()
                    .or_else(|| Some("rollback requested by hand".into())),
            },
            now,
        );
        // A failed deployment left standing (nothing was verified when it failed) is the one
        // this rollback replaces.
        let replaces_failure = replaced.as_mut().filter(|r| r.phase == Phase::Failed);
        let mut commit_original = None;
        if let Some(r) = replaces_failure {
            rollback.rollback_of = Some(r.id.clone());
            rollback.restore = r.target_before.clone();
            r.apply(
                Step::RollbackStarted,
                now,
                Some(format!("rolling back by hand (deployment {})", rollback.id)),
            )
            .map_err(|source| ServiceError::Transition {
                deployment: r.id.clone(),
                source,
            })?;
            r.rolled_back_by = Some(rollback.id.clone());
            commit_original = Some(r);
        }
        state.start(&mut rollback);
        let outbox = self.core.outbox(vec![LifecycleEvent::of(
            EventType::RollbackStarted,
            &rollback,
        )]);
        let mut commit = Commit {
            outbox: outbox.clone(),
            ..Commit::env(&mut state).with(&mut rollback)
        };
        if let Some(r) = commit_original {
            commit = commit.with(r);
        }
        self.core.store.commit(commit).await?;
        info!(deployment_id = %rollback.id, digest = %good.digest, "rollback requested by hand");
        self.core.announce(outbox).await;
        let image = rollback.image.to_string();
        launch(&self.core, self.target.as_ref(), env_config, &mut rollback).await?;
        Ok(RollbackOutcome::Started {
            deployment_id: rollback.id,
            rollback_of: rollback.rollback_of,
            image,
        })
    }
}

impl Rollback {
    async fn repeated(
        &self,
        request: &ManualRollback,
        env_config: &crate::domain::EnvConfig,
        holder: &DeploymentId,
    ) -> Result<Option<RollbackOutcome>, ServiceError> {
        if request.requested_by.is_none() {
            return Ok(None);
        }
        let mut dep = self
            .core
            .store
            .deployment(&request.app, &request.environment, holder)
            .await?;
        let same = dep.kind == Kind::Rollback
            && dep.requested_by == request.requested_by
            && request.digest.as_ref().is_none_or(|d| d == dep.digest());
        if !same {
            return Ok(None);
        }
        info!(deployment_id = %dep.id, "this rollback was already requested");
        if due_to_start(&dep, self.core.clock.now()) {
            resume(&self.core, self.target.as_ref(), env_config, &mut dep).await?;
        }
        Ok(Some(RollbackOutcome::Started {
            image: dep.image.to_string(),
            deployment_id: dep.id,
            rollback_of: dep.rollback_of,
        }))
    }
}

fn choose_manual_target<'a>(
    state: &'a EnvState,
    digest: Option<&Digest>,
) -> Result<&'a VerifiedDigest, ServiceError> {
    let current = state.current.as_ref().map(|c| &c.digest);
    let verified = || -> Names {
        match state.verified.as_slice() {
            [] => Names(vec!["none".into()]),
            all => all.iter().map(|v| v.digest.as_str()).collect(),
        }
    };
    match digest {
        Some(d) => state
            .verified
            .iter()
            .find(|v| &v.digest == d)
            .ok_or_else(|| {
                Refusal::NeverVerified {
                    digest: d.clone(),
                    app: state.app.clone(),
                    env: state.environment.clone(),
                    verified: verified(),
                }
                .into()
            }),
        None => state
            .verified
            .iter()
            .find(|v| Some(&v.digest) != current)
            .ok_or_else(|| {
                Refusal::NoOtherVerified {
                    app: state.app.clone(),
                    env: state.environment.clone(),
                    verified: verified(),
                }
                .into()
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fakes::{World, app, env_name};
    use crate::ports::{Clock, StateStore};

    /// web/staging verified `verified`, oldest first; each verified deployment is stored.
    async fn verified(w: &World, verified: &[char]) {
        for (i, hex) in verified.iter().enumerate() {
            let at = World::START + time::Duration::minutes(i as i64);
            let mut state = w.state("staging");
            let mut good = Deployment::new(
                state.app.clone(),
                state.environment.clone(),
                Request {
                    image: w.image(*hex),
                    tag: None,
                    kind: Kind::Push,
                    pushed_at: at,
                    requested_by: None,
                    reason: None,
                },
                at,
            );
            state.start(&mut good);
            state.record_verified(&good, at);
            state.release(&good.id);
            w.store
                .commit(Commit::env(&mut state).with(&mut good))
                .await
                .unwrap();
            w.registry.push("acme/web", None, &w.image(*hex).digest);
        }
    }

    /// web/staging verified `before`, oldest first, then a push of `failed` failed.
    async fn failed_after(w: &World, before: &[char], failed: char) -> Deployment {
        verified(w, before).await;
        let mut state = w.state("staging");
        let mut bad = Deployment::new(
            state.app.clone(),
            state.environment.clone(),
            Request {
                image: w.image(failed),
                tag: None,
                kind: Kind::Push,
                pushed_at: w.clock.now(),
                requested_by: None,
                reason: None,
            },
            w.clock.now(),
        );
        state.start(&mut bad);
        bad.apply(Step::RolloutStarted, w.clock.now(), None)
            .unwrap();
        bad.apply(Step::RolloutFailed, w.clock.now(), Some("exit 1".into()))
            .unwrap();
        w.store
            .commit(Commit::env(&mut state).with(&mut bad))
            .await
            .unwrap();
        bad
    }

    #[tokio::test]
    async fn a_revoked_digest_that_runs_rolls_back_to_the_newest_verified_digest_not_revoked() {
        let w = World::sample();
        verified(&w, &['a', 'b', 'c']).await;
        let (a, e) = (app("web"), env_name("staging"));
        let revoke = |hex| {
            let (w, a, e) = (&w, &a, &e);
            async move {
                w.control()
                    .revoke(a, e, &w.image(hex).digest, "alice", "CVE-2026-1234")
                    .await
                    .unwrap()
            }
        };
        // Not what runs: nothing rolls back, and it is no longer a candidate.
        let b = revoke('b').await;
        assert!(b.changed && b.was_verified && !b.running);
        let out = w.rollback().on_revoked(&a, &e, &b.digest).await.unwrap();
        assert!(
            matches!(&out, RollbackOutcome::NotRolledBack { reason } if reason.contains("does not run")),
            "{out:?}"
        );
        // What runs: rolled back past the revoked b to a, by the person who revoked it.
        w.clock.advance(std::time::Duration::from_secs(60));
        let c = revoke('c').await;
        assert!(c.running);
        assert_eq!(w.events.types(), vec!["Image Revoked", "Image Revoked"]);
        let event = w.events.events().pop().unwrap();
        let detail = event.deployment().unwrap();
        assert_eq!(detail.digest.as_ref(), Some(&c.digest));
        assert_eq!(detail.by.as_deref(), Some("alice"));
        let out = w.rollback().on_revoked(&a, &e, &c.digest).await.unwrap();
        assert!(matches!(out, RollbackOutcome::Started { .. }), "{out:?}");
        assert_eq!(w.target.last().image, w.image('a').to_string());
        let rollback = w
            .deployments("staging")
            .into_iter()
            .find(|d| d.kind == Kind::Rollback)
            .unwrap();
        assert_eq!(rollback.requested_by.as_deref(), Some("alice"));
        assert_eq!(
            rollback.reason.as_deref(),
            Some(format!("{} was revoked by alice: CVE-2026-1234", c.digest).as_str())
        );
        // The event again (delivered twice): the rollback in flight is the answer.
        let again = w.rollback().on_revoked(&a, &e, &c.digest).await.unwrap();
        assert!(
            matches!(again, RollbackOutcome::NotRolledBack { .. }),
            "{again:?}"
        );
        assert_eq!(w.target.started().len(), 1);
        // Revoking again changes nothing and announces nothing.
        assert!(!revoke('c').await.changed);
        assert_eq!(
            w.events.types(),
            vec![
                "Image Revoked",
                "Image Revoked",
                "Rollback Started",
                "Rollout Started"
            ]
        );
        // The status lists both, newest first.
        let status = w.control().status(Some(&a), Some(&e)).await.unwrap();
        let listed: Vec<&str> = status[0]
            .revoked
            .iter()
            .map(|r| r.digest.as_str())
            .collect();
        assert_eq!(listed, [c.digest.as_str(), b.digest.as_str()]);
        assert_eq!(status[0].revoked[0].revocation.reason, "CVE-2026-1234");
    }

    #[tokio::test]
    async fn a_revoked_digest_with_nothing_verified_to_replace_it_runs_on_and_says_so() {
        let w = World::sample();
        verified(&w, &['a']).await;
        let (a, e) = (app("web"), env_name("staging"));
        let digest = w.image('a').digest;
        w.control()
            .revoke(&a, &e, &digest, "alice", "bad")
            .await
            .unwrap();
        let out = w.rollback().on_revoked(&a, &e, &digest).await.unwrap();
        assert_eq!(
            out,
            RollbackOutcome::NotRolledBack {
                reason: format!(
                    "web/staging runs the revoked {digest} and has no other verified digest in the registry to roll back to; deploy a fixed image"
                )
            }
        );
        assert!(w.target.started().is_empty());
    }

    #[tokio::test]
    async fn a_verified_digest_deleted_from_the_registry_is_passed_over_for_an_older_one() {
        let w = World::sample();
        let bad = failed_after(&w, &['a', 'b'], 'c').await;
        w.registry.delete("acme/web", &w.image('b').digest);
        let out = w
            .rollback()
            .on_failure(&bad.app, &bad.environment, &bad.id)
            .await
            .unwrap();
        assert!(matches!(out, RollbackOutcome::Started { .. }), "{out:?}");
        assert_eq!(w.target.last().image, w.image('a').to_string());
    }

    #[tokio::test]
    async fn a_rollback_redone_after_a_conflicting_write_starts_one_rollback() {
        let w = World::sample();
        let bad = failed_after(&w, &['a'], 'b').await;
        w.store.interfere(1);
        w.rollback()
            .on_failure(&bad.app, &bad.environment, &bad.id)
            .await
            .unwrap();
        w.rollback()
            .on_failure(&bad.app, &bad.environment, &bad.id)
            .await
            .unwrap();
        assert_eq!(w.target.started().len(), 1);
        let rollbacks = w
            .deployments("staging")
            .into_iter()
            .filter(|d| d.kind == Kind::Rollback)
            .count();
        assert_eq!(rollbacks, 1);
    }

    #[tokio::test]
    async fn a_rollback_by_hand_goes_to_the_verified_digest_before_the_current_one() {
        let w = World::sample();
        verified(&w, &['a', 'b']).await;
        let request = ManualRollback {
            app: app("web"),
            environment: env_name("staging"),
            digest: None,
            requested_by: Some("alice".into()),
            reason: None,
        };
        let out = w.rollback().manual(&request).await.unwrap();
        assert!(matches!(out, RollbackOutcome::Started { .. }), "{out:?}");
        assert_eq!(w.target.last().image, w.image('a').to_string());
        let rollback = w
            .deployments("staging")
            .into_iter()
            .find(|d| d.kind == Kind::Rollback)
            .unwrap();
        assert_eq!(rollback.requested_by.as_deref(), Some("alice"));
        // The same request again (its answer was lost) is answered with the same rollback,
        // started once.
        let again = w.rollback().manual(&request).await.unwrap();
        assert!(
            matches!(&again, RollbackOutcome::Started { deployment_id, .. } if *deployment_id == rollback.id),
            "{again:?}"
        );
        assert_eq!(w.target.started().len(), 1, "the rollback started once");
        // Another person's, while it rolls out, is refused.
        let bob = ManualRollback {
            requested_by: Some("bob".into()),
            ..request.clone()
        };
        let err = w.rollback().manual(&bob).await.unwrap_err();
        assert_eq!(err.error_type(), "NonRetryable.Conflict");
        let never = ManualRollback {
            environment: env_name("production"),
            digest: Some(w.image('e').digest),
            ..request
        };
        let err = w.rollback().manual(&never).await.unwrap_err();
        assert_eq!(err.error_type(), "NonRetryable.InvalidInput");
        assert!(err.to_string().contains("was never verified"), "{err}");
    }
}
