//! Promotion: an environment that names `promote_from` only ever receives a digest verified
//! in that source environment: at once (`approval: auto`) or once a person approves it
//! (`approval: required`). A tag pushed for it (the "push `v*` goes to production" habit)
//! is held until its digest is verified at the source.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tracing::{info, warn};

use super::deploy::Deployer;
use super::deploy::{commit_env, duplicate, unknown_app, unknown_env};
use super::rollout::{EnvOutcome, EnvResult};
use super::{InputError, Refusal, ServiceError, retry_on_conflict};
use crate::domain::approval::{ApprovalError, Outcome, Pending, Waiting};
use crate::domain::config::{Approval, Config, Promotion};
use crate::domain::{
    AppName, Digest, EnvName, EventType, Kind, LifecycleEvent, PinnedImage, Request, Tag,
};
use crate::ports::{Commit, StoreError};

/// A digest verified somewhere, as the `Deployment Verified` event tells it.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    pub app: AppName,
    pub environment: EnvName,
    pub image: PinnedImage,
    pub tag: Option<Tag>,
    pub kind: Kind,
    pub pushed_at: OffsetDateTime,
    /// The event id: a repeated delivery promotes nothing twice.
    pub event_id: String,
}

/// What a person asked for: promote what `from` last verified to `to`.
#[derive(Debug, Clone, PartialEq)]
pub struct ManualPromotion {
    pub app: AppName,
    pub from: EnvName,
    pub to: EnvName,
    pub requested_by: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Promoted {
    pub from: EnvName,
    pub digest: Digest,
    #[serde(flatten)]
    pub result: EnvResult,
}

impl Deployer {
    /// A digest was verified in `verified.environment`: promote it to each environment of
    /// the app that promotes from there. A rollback's verification promotes nothing (it
    /// re-verified an older digest). An environment that also deploys on push takes only
    /// digests whose tag it deploys, or the one it is waiting for.
    pub async fn on_source_verified(
        &self,
        verified: &Verified,
    ) -> Result<Vec<Promoted>, ServiceError> {
        if verified.kind == Kind::Rollback {
            return Ok(Vec::new());
        }
        let config = self.core.config.load().await?;
        let Some(app) = config.app(&verified.app) else {
            return Ok(Vec::new());
        };
        let mut promoted = Vec::new();
        for (name, env) in &app.environments {
            let Some(promotion) = env
                .promotion
                .as_ref()
                .filter(|p| p.from == verified.environment)
            else {
                continue;
            };
            let digest = &verified.image.digest;
            let waited_for = self
                .core
                .store
                .env_state(&verified.app, name)
                .await?
                .pending
                .is_some_and(|p| p.digest() == digest && p.waiting_for == Waiting::Verification);
            let wanted = match &env.deploy_on_push {
                None => true,
                Some(policy) => waited_for || policy.admits(verified.tag.as_ref()),
            };
            if !wanted {
                info!(app = %verified.app, env = %name, %digest, "not promoted: its tag is not one this environment deploys");
                continue;
            }
            let image = self.registry_for(&config, &verified.app, &verified.image);
            let result = self
                .promote(
                    &config,
                    &verified.app,
                    name,
                    promotion,
                    image,
                    verified.tag.clone(),
                    verified.pushed_at,
                    Some(format!("{}#{}", verified.event_id, name)),
                )
                .await?;
            promoted.push(Promoted {
                from: verified.environment.clone(),
                digest: digest.clone(),
                result,
            });
        }
        Ok(promoted)
    }

    /// A push whose tag an environment with `promote_from` deploys: promoted when its digest
    /// is verified at the source already, else held until it is.
    pub(super) async fn on_promotion_push(
        &self,
        config: &Config,
        app: &AppName,
        env: &EnvName,
        promotion: &Promotion,
        request: Request,
        claim: String,
    ) -> Result<EnvResult, ServiceError> {
        let source = self.core.store.env_state(app, &promotion.from).await?;
        let digest = request.image.digest.clone();
        if source.verified.iter().any(|v| v.digest == digest) {
            return self
                .promote(
                    config,
                    app,
                    env,
                    promotion,
                    request.image,
                    request.tag,
                    request.pushed_at,
                    Some(claim),
                )
                .await;
        }
        let then = match promotion.approval {
            Approval::Auto => "it deploys once it is",
            Approval::Required { .. } => "it waits for approval once it is",
        };
        let pending = Pending {
            image: request.image,
            tag: request.tag,
            from: promotion.from.clone(),
            waiting_for: Waiting::Verification,
            pushed_at: request.pushed_at,
            since: self.core.clock.now(),
            expires_at: None,
            reason: format!(
                "{digest} has not been verified in {}; {then}",
                promotion.from
            ),
            approved: None,
        };
        self.hold(app, env, pending, Some(claim)).await
    }

    /// Deploys what `from` verified last to `to`, by hand: no approval is asked, the person
    /// asking is the approval, and it is recorded as such.
    pub async fn promote_by_hand(
        &self,
        wanted: &ManualPromotion,
    ) -> Result<Promoted, ServiceError> {
        let config = self.core.config.load().await?;
        let app = config
            .app(&wanted.app)
            .ok_or_else(|| unknown_app(&config, &wanted.app))?;
        for env in [&wanted.from, &wanted.to] {
            if !app.environments.contains_key(env) {
                return Err(unknown_env(&config, &wanted.app, env));
            }
        }
        if wanted.from == wanted.to {
            return Err(
                InputError::Rule("\"from\" and \"to\" name the same environment".into()).into(),
            );
        }
        let source = self.core.store.env_state(&wanted.app, &wanted.from).await?;
        let last = source
            .last_verified()
            .ok_or_else(|| Refusal::NothingVerified {
                app: wanted.app.clone(),
                env: wanted.from.clone(),
            })?;
        let verified_dep = self
            .core
            .store
            .deployment(&wanted.app, &wanted.from, &last.deployment_id)
            .await?;
        let mut image = verified_dep.image.clone();
        if let Some(registry) = &app.registry {
            image.registry = registry.clone();
        }
        let by = wanted
            .requested_by
            .clone()
            .unwrap_or_else(|| "console".into());
        let request = Request {
            image,
            tag: last.tag.clone(),
            kind: Kind::Promotion,
            pushed_at: verified_dep.pushed_at,
            requested_by: Some(by.clone()),
            reason: Some(format!("promoted by hand from {} by {by}", wanted.from)),
        };
        let result = self
            .admit(&config, &wanted.app, &wanted.to, request, None)
            .await?;
        Ok(Promoted {
            from: wanted.from.clone(),
            digest: last.digest.clone(),
            result,
        })
    }

    /// A person approved a pending promotion (the `Promotion Approved` event): deploy it,
    /// recording who approved and when.
    pub async fn on_approved(
        &self,
        app: &AppName,
        env: &EnvName,
        digest: &Digest,
        event_id: &str,
    ) -> Result<Option<EnvResult>, ServiceError> {
        let config = self.core.config.load().await?;
        let state = self.core.store.env_state(app, env).await?;
        let Some(pending) = state.approved_promotion(digest).cloned() else {
            if state.pending.as_ref().is_some_and(|p| p.digest() == digest) {
                return Err(ApprovalError::NotApproved {
                    env: env.clone(),
                    digest: digest.clone(),
                }
                .into());
            }
            return self.approval_overtaken(app, env, digest, event_id).await;
        };
        let state_revoked = state.revoked;
        let Some(approved) = &pending.approved else {
            return Err(ApprovalError::NotApproved {
                env: env.clone(),
                digest: digest.clone(),
            }
            .into());
        };
        let source = self.core.store.env_state(app, &pending.from).await?;
        if let Some((place, r)) = [&state_revoked, &source.revoked]
            .into_iter()
            .zip([env, &pending.from])
            .find_map(|(revoked, place)| revoked.get(digest.as_str()).map(|r| (place, r)))
        {
            info!(%app, %env, %digest, revoked_in = %place, by = %r.by, "the approved promotion was revoked since; not deploying it");
            let reason = format!(
                "{digest} was approved, then revoked in {place} by {}: {}; it is not deployed",
                r.by, r.reason
            );
            return self
                .approval_closed(app, env, digest, Some(reason), event_id)
                .await;
        }
        let at = approved
            .at
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let request = Request {
            image: pending.image.clone(),
            tag: pending.tag.clone(),
            kind: Kind::Promotion,
            pushed_at: pending.pushed_at,
            requested_by: Some(approved.by.clone()),
            reason: Some(format!(
                "verified in {}; approved by {} at {at}",
                pending.from, approved.by
            )),
        };
        let result = self
            .admit(&config, app, env, request, Some(event_id.to_owned()))
            .await?;
        // Skipped (and said so): the approval is done with all the same.
        if matches!(result.outcome, EnvOutcome::Skipped { .. }) {
            self.approval_closed(app, env, digest, None, event_id)
                .await?;
        }
        Ok(Some(result))
    }

    /// Takes an approved promotion that will not deploy out of where it waits (recording
    /// the decision), announcing why when `reason` says it, so it neither lingers as approved
    /// nor keeps its image from the janitor.
    async fn approval_closed(
        &self,
        app: &AppName,
        env: &EnvName,
        digest: &Digest,
        reason: Option<String>,
        event_id: &str,
    ) -> Result<Option<EnvResult>, ServiceError> {
        retry_on_conflict(
            || format!("closing the approval of {digest} in {app}/{env}"),
            async |_| {
                let mut state = self.core.store.env_state(app, env).await?;
                if state.approved_promotion(digest).is_none() {
                    return Ok(None);
                }
                let now = self.core.clock.now();
                state.settle_promotion(digest, now);
                let events: Vec<LifecycleEvent> = reason
                    .iter()
                    .map(|r| not_promoted(app, env, digest, r, now))
                    .collect();
                let claim = reason.as_ref().map(|_| format!("{event_id}#closed"));
                commit_env(&self.core, &mut state, claim, events).await?;
                Ok(reason.clone().map(|reason| EnvResult {
                    app: app.clone(),
                    environment: env.clone(),
                    outcome: EnvOutcome::Skipped {
                        reason,
                        image: digest.to_string(),
                    },
                }))
            },
        )
        .await
    }

    /// A `Promotion Approved` whose promotion no longer waits here. One that went ahead
    /// already (a repeated delivery) changes nothing; one a later approval overtook is
    /// announced as skipped, saying which deploys instead, so that no decision a person made
    /// vanishes unsaid.
    async fn approval_overtaken(
        &self,
        app: &AppName,
        env: &EnvName,
        digest: &Digest,
        event_id: &str,
    ) -> Result<Option<EnvResult>, ServiceError> {
        retry_on_conflict(
            || format!("announcing what became of the approval of {digest} in {app}/{env}"),
            async |_| {
                let mut state = self.core.store.env_state(app, env).await?;
                let decided = state.decisions.iter().find(|d| &d.digest == digest);
                let reason = match decided.map(|d| &d.outcome) {
                    Some(Outcome::Approved { .. } | Outcome::Deployed) => {
                        info!(%app, %env, %digest, "the approved promotion went ahead already");
                        return Ok(None);
                    }
                    Some(Outcome::Superseded { by }) => format!(
                        "{digest} was approved, but {by} was approved after it and deploys instead"
                    ),
                    _ => format!(
                        "{digest} was approved but no longer waits here, so nothing deploys it; promote it by hand if it should still go"
                    ),
                };
                let now = self.core.clock.now();
                let event = not_promoted(app, env, digest, &reason, now);
                let outcome = EnvOutcome::Skipped {
                    reason,
                    image: digest.to_string(),
                };
                let result = |outcome| EnvResult {
                    app: app.clone(),
                    environment: env.clone(),
                    outcome,
                };
                if !commit_env(&self.core, &mut state, Some(event_id.to_owned()), vec![event])
                    .await?
                {
                    return Ok(Some(duplicate(result, digest.to_string())));
                }
                warn!(%app, %env, %digest, "an approved promotion was overtaken by a later approval");
                Ok(Some(result(outcome)))
            },
        )
        .await
    }

    /// Promotes at once, or holds the digest for approval.
    #[allow(clippy::too_many_arguments)]
    async fn promote(
        &self,
        config: &Config,
        app: &AppName,
        env: &EnvName,
        promotion: &Promotion,
        image: PinnedImage,
        tag: Option<Tag>,
        pushed_at: OffsetDateTime,
        claim: Option<String>,
    ) -> Result<EnvResult, ServiceError> {
        match promotion.approval {
            Approval::Auto => {
                let request = Request {
                    image,
                    tag,
                    kind: Kind::Promotion,
                    pushed_at,
                    requested_by: None,
                    reason: Some(format!("verified in {}", promotion.from)),
                };
                self.admit(config, app, env, request, claim).await
            }
            Approval::Required { expires_after } => {
                let now = self.core.clock.now();
                let expires_at = now + expires_after;
                let pending = Pending {
                    reason: format!(
                        "{} was verified in {}; approve it before {}",
                        image.digest,
                        promotion.from,
                        expires_at
                            .format(&time::format_description::well_known::Rfc3339)
                            .unwrap_or_default()
                    ),
                    image,
                    tag,
                    from: promotion.from.clone(),
                    waiting_for: Waiting::Approval,
                    pushed_at,
                    since: now,
                    expires_at: Some(expires_at),
                    approved: None,
                };
                self.hold(app, env, pending, claim).await
            }
        }
    }

    /// Holds a promotion in the environment's state, superseding any other, and says so on
    /// the bus.
    async fn hold(
        &self,
        app: &AppName,
        env: &EnvName,
        pending: Pending,
        claim: Option<String>,
    ) -> Result<EnvResult, ServiceError> {
        let image = pending.image.to_string();
        let waiting_for = pending.waiting_for;
        let reason = pending.reason.clone();
        retry_on_conflict(
            || format!("holding the promotion of {image} to {app}/{env}"),
            async |_| {
                let skipped = |reason: &str| EnvResult {
                    app: app.clone(),
                    environment: env.clone(),
                    outcome: EnvOutcome::Skipped {
                        reason: reason.into(),
                        image: image.clone(),
                    },
                };
                let mut state = self.core.store.env_state(app, env).await?;
                if state
                    .current
                    .as_ref()
                    .is_some_and(|c| &c.digest == pending.digest())
                {
                    return Ok(skipped("the digest is already deployed here"));
                }
                let now = self.core.clock.now();
                let superseded = state.hold(pending.clone(), now);
                let kind = match waiting_for {
                    Waiting::Approval => EventType::ApprovalRequested,
                    Waiting::Verification => EventType::PromotionPending,
                };
                let outbox = self.core.outbox(vec![LifecycleEvent::pending(
                    kind, app, env, &pending, None, now,
                )]);
                let commit = Commit {
                    outbox: outbox.clone(),
                    ..Commit::env(&mut state).claiming(claim.clone())
                };
                match self.core.store.commit(commit).await {
                    Err(StoreError::Duplicate(_)) => {
                        return Ok(skipped("this event was already handled"));
                    }
                    other => other?,
                }
                if let Some(old) = &superseded {
                    info!(%app, %env, old = %old.digest(), new = %pending.digest(), "pending promotion superseded");
                }
                info!(%app, %env, digest = %pending.digest(), %waiting_for, "promotion held");
                self.core.announce(outbox).await;
                Ok(EnvResult {
                    app: app.clone(),
                    environment: env.clone(),
                    outcome: EnvOutcome::Pending {
                        waiting_for,
                        reason: reason.clone(),
                        image: image.clone(),
                    },
                })
            },
        )
        .await
    }

    /// The image as the target's hosts pull it: the app's registry when it names one.
    fn registry_for(&self, config: &Config, app: &AppName, image: &PinnedImage) -> PinnedImage {
        let mut image = image.clone();
        if let Some(registry) = config.app(app).and_then(|a| a.registry.clone()) {
            image.registry = registry;
        }
        image
    }
}

/// `Deployment Skipped` for an approved promotion of `digest` that will not deploy, and why.
fn not_promoted(
    app: &AppName,
    env: &EnvName,
    digest: &Digest,
    reason: &str,
    now: OffsetDateTime,
) -> LifecycleEvent {
    let mut event = LifecycleEvent::environment(
        EventType::DeploymentSkipped,
        app,
        env,
        Some(reason.to_owned()),
        now,
    );
    if let crate::domain::Detail::Deployment(d) = &mut event.detail {
        d.digest = Some(digest.clone());
        d.kind = Some(Kind::Promotion);
    }
    event
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::environment::EnvState;
    use crate::fakes::{World, app, env_name};
    use crate::ports::StateStore;

    fn verified(w: &World, hex: char, id: &str) -> Verified {
        Verified {
            app: app("web"),
            environment: env_name("staging"),
            image: w.image(hex),
            tag: Some(Tag::parse("v1").unwrap()),
            kind: Kind::Push,
            pushed_at: World::START,
            event_id: id.into(),
        }
    }

    async fn production(w: &World) -> EnvState {
        w.store
            .env_state(&app("web"), &env_name("production"))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_newer_verified_digest_supersedes_the_one_waiting_for_approval() {
        let w = World::sample();
        let d = w.deployer();
        d.on_source_verified(&verified(&w, 'a', "e1"))
            .await
            .unwrap();
        d.on_source_verified(&verified(&w, 'b', "e2"))
            .await
            .unwrap();
        let state = production(&w).await;
        assert_eq!(
            state.pending.as_ref().unwrap().digest(),
            &w.image('b').digest
        );
        assert!(matches!(
            state.decisions[0].outcome,
            crate::domain::approval::Outcome::Superseded { .. }
        ));
        assert!(w.target.started().is_empty(), "approval is required");
        assert_eq!(
            w.events.types(),
            vec!["Approval Requested", "Approval Requested"]
        );
        // The same event again holds nothing twice.
        d.on_source_verified(&verified(&w, 'b', "e2"))
            .await
            .unwrap();
        assert_eq!(w.events.types().len(), 2);
    }

    #[tokio::test]
    async fn an_approval_a_later_approval_overtook_is_announced_as_skipped_once() {
        let w = World::sample();
        let d = w.deployer();
        let (a, p) = (app("web"), env_name("production"));
        for (hex, event, by) in [('a', "e1", "alice"), ('b', "e2", "bob")] {
            d.on_source_verified(&verified(&w, hex, event))
                .await
                .unwrap();
            w.control()
                .approve(&a, &p, &w.image(hex).digest, by)
                .await
                .unwrap();
        }
        d.on_source_verified(&verified(&w, 'c', "e3"))
            .await
            .unwrap();
        w.events.clear();
        let out = d
            .on_approved(&a, &p, &w.image('a').digest, "pa-1")
            .await
            .unwrap()
            .unwrap();
        let EnvOutcome::Skipped { reason, .. } = &out.outcome else {
            panic!("{out:?}")
        };
        assert!(
            reason.contains("was approved after it and deploys instead"),
            "{reason}"
        );
        assert_eq!(w.events.types(), vec!["Deployment Skipped"]);
        // Delivered again, it says nothing more.
        d.on_approved(&a, &p, &w.image('a').digest, "pa-1")
            .await
            .unwrap();
        assert_eq!(w.events.types().len(), 1);
        // The approved one that overtook it deploys.
        let out = d
            .on_approved(&a, &p, &w.image('b').digest, "pa-2")
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(out.outcome, EnvOutcome::Started { .. }), "{out:?}");
        assert_eq!(w.target.last().image, w.image('b').to_string());
    }

    #[tokio::test]
    async fn an_approved_promotion_revoked_before_it_started_is_announced_and_closed() {
        let w = World::sample();
        let d = w.deployer();
        let (a, p, s) = (app("web"), env_name("production"), env_name("staging"));
        d.on_source_verified(&verified(&w, 'a', "e1"))
            .await
            .unwrap();
        w.control()
            .approve(&a, &p, &w.image('a').digest, "alice")
            .await
            .unwrap();
        w.control()
            .revoke(&a, &s, &w.image('a').digest, "bob", "CVE-2026-1")
            .await
            .unwrap();
        w.events.clear();
        let out = d
            .on_approved(&a, &p, &w.image('a').digest, "pa-1")
            .await
            .unwrap()
            .unwrap();
        assert!(
            matches!(&out.outcome, EnvOutcome::Skipped { reason, .. } if reason.contains("revoked in staging by bob")),
            "{out:?}"
        );
        assert_eq!(w.events.types(), vec!["Deployment Skipped"]);
        assert!(w.target.started().is_empty());
        let state = production(&w).await;
        assert!(state.approved_promotion(&w.image('a').digest).is_none());
        assert!(state.pending.is_none(), "no longer listed as waiting");
    }

    #[tokio::test]
    async fn an_approval_event_for_a_promotion_nobody_approved_is_a_conflict() {
        let w = World::sample();
        let d = w.deployer();
        d.on_source_verified(&verified(&w, 'a', "e1"))
            .await
            .unwrap();
        let err = d
            .on_approved(
                &app("web"),
                &env_name("production"),
                &w.image('a').digest,
                "x",
            )
            .await
            .unwrap_err();
        assert_eq!(err.error_type(), "NonRetryable.Conflict");
        assert!(err.to_string().contains("has not been approved"), "{err}");
    }

    #[tokio::test]
    async fn promoting_by_hand_names_who_and_needs_something_verified() {
        let w = World::sample();
        let request = ManualPromotion {
            app: app("web"),
            from: env_name("staging"),
            to: env_name("production"),
            requested_by: Some("alice".into()),
        };
        let err = w.deployer().promote_by_hand(&request).await.unwrap_err();
        assert_eq!(err.error_type(), "NonRetryable.NotFound");
        let same = ManualPromotion {
            to: env_name("staging"),
            ..request
        };
        let err = w.deployer().promote_by_hand(&same).await.unwrap_err();
        assert_eq!(err.error_type(), "NonRetryable.InvalidInput");
        assert_eq!(w.store.commits(), 0);
    }
}
