//! Starting rollouts: on an ECR push, on a request by hand, and when an environment frees
//! up with an image queued.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tracing::{info, warn};

use super::error::Names;
use super::rollout::{EnvOutcome, EnvResult, launch, start_queued};
use super::{Core, InputError, Refusal, ServiceError, retry_on_conflict};
use super::{gate, platform};
use crate::domain::{
    Admission, AppName, Config, Deployment, Digest, EnvName, EnvState, EventType, Kind,
    LifecycleEvent, PinnedImage, Registry, Repository, Request, Tag,
};
use crate::ports::{Commit, ImageRegistry, RegistryError, StoreError, TagMove, TagWriter, Target};

/// An `ECR Image Action` push that succeeded, as EventBridge delivers it.
#[derive(Debug, Clone, PartialEq)]
pub struct Push {
    /// The EventBridge event id: a repeated delivery carries the same id.
    pub event_id: String,
    pub account: String,
    pub region: String,
    pub repository: Repository,
    pub digest: Digest,
    pub tag: Option<Tag>,
    pub pushed_at: OffsetDateTime,
}

/// What to deploy by hand: a tag (resolved to its digest now) or a digest.
#[derive(Debug, Clone, PartialEq)]
pub enum Wanted {
    Tag(Tag),
    Digest(Digest),
}

#[derive(Debug, Clone, PartialEq)]
pub struct ManualDeploy {
    pub app: AppName,
    pub environment: EnvName,
    pub wanted: Wanted,
    pub requested_by: Option<String>,
    pub reason: Option<String>,
}

#[derive(Clone)]
pub struct Deployer {
    pub core: Core,
    pub registry: Arc<dyn ImageRegistry>,
    pub target: Arc<dyn Target>,
    pub tags: Arc<dyn TagWriter>,
}

/// What became of an environment's ECR tag after a verification.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum EnvTagOutcome {
    Moved {
        tag: Tag,
        digest: Digest,
    },
    AlreadyThere {
        tag: Tag,
        digest: Digest,
    },
    /// Not moved, and nothing to retry: why.
    Skipped {
        reason: String,
    },
}

impl Deployer {
    /// Deploys a pushed image to every environment whose tag policy admits it. A push to a
    /// repository no app names is not an error: it deploys nothing.
    #[tracing::instrument(skip_all, fields(event_id = %push.event_id, repository = %push.repository, digest = %push.digest, tag = ?push.tag.as_ref().map(Tag::as_str)))]
    pub async fn on_push(&self, push: &Push) -> Result<Vec<EnvResult>, ServiceError> {
        let config = self.core.config.load().await?;
        let mut results = Vec::new();
        let mut named = false;
        let own_tag = self.environment_tag_moved(&config, push).await?;
        for (app_name, app) in config.apps_for_repository(&push.repository) {
            named = true;
            // An app deploys its own registry's images: a push to a repository of the same
            // name in another account or region is not one of them.
            if let Some(elsewhere) = app
                .registry
                .as_ref()
                .and_then(|r| other_registry(r, &push.account, &push.region))
            {
                info!(app = %app_name, %elsewhere, "the push is not to this app's registry");
                for (env_name, env) in &app.environments {
                    if env
                        .deploy_on_push
                        .as_ref()
                        .is_some_and(|p| p.admits(push.tag.as_ref()))
                    {
                        results.push(EnvResult {
                            app: app_name.clone(),
                            environment: env_name.clone(),
                            outcome: EnvOutcome::Skipped {
                                reason: elsewhere.clone(),
                                image: format!("{}@{}", push.repository, push.digest),
                            },
                        });
                    }
                }
                continue;
            }
            let registry = match &app.registry {
                Some(r) => r.clone(),
                None => {
                    Registry::ecr(&push.account, &push.region).map_err(|e| InputError::Field {
                        what: "ECR push event".into(),
                        field: Some("account".into()),
                        problem: format!(
                            "account {:?} / region {:?} name no ECR registry: {e}",
                            push.account, push.region
                        ),
                    })?
                }
            };
            let image = PinnedImage {
                registry,
                repository: push.repository.clone(),
                digest: push.digest.clone(),
            };
            for (env_name, env) in &app.environments {
                let Some(policy) = &env.deploy_on_push else {
                    continue;
                };
                if !policy.admits(push.tag.as_ref()) {
                    info!(app = %app_name, env = %env_name, "tag does not match this environment's deploy_on_push");
                    continue;
                }
                if let Some(reason) = &own_tag {
                    info!(app = %app_name, env = %env_name, %reason, "an environment tag moved; not a push");
                    results.push(EnvResult {
                        app: app_name.clone(),
                        environment: env_name.clone(),
                        outcome: EnvOutcome::Skipped {
                            reason: reason.clone(),
                            image: image.to_string(),
                        },
                    });
                    continue;
                }
                let request = Request {
                    image: image.clone(),
                    tag: push.tag.clone(),
                    kind: Kind::Push,
                    pushed_at: push.pushed_at,
                    requested_by: None,
                    reason: None,
                };
                let claim = format!("{}#{}#{}", push.event_id, app_name, env_name);
                let result = match &env.promotion {
                    // Only a digest verified at the source may come here.
                    Some(promotion) => {
                        self.on_promotion_push(
                            &config, app_name, env_name, promotion, request, claim,
                        )
                        .await?
                    }
                    None => {
                        self.admit(&config, app_name, env_name, request, Some(claim))
                            .await?
                    }
                };
                results.push(result);
            }
        }
        if !named {
            info!("no app deploys this repository; ignoring the push");
        }
        Ok(results)
    }

    /// pushdeploy moves an environment's tag (`ecr_tag`) with PutImage, and ECR announces
    /// that as a push of the tag. A push of an environment's tag onto a digest that
    /// environment verified is that move, not a new image: why it deploys nothing.
    async fn environment_tag_moved(
        &self,
        config: &Config,
        push: &Push,
    ) -> Result<Option<String>, ServiceError> {
        let Some(tag) = &push.tag else {
            return Ok(None);
        };
        let owners: Vec<(&AppName, &EnvName)> = config
            .apps_for_repository(&push.repository)
            .flat_map(|(a, app)| app.environments.iter().map(move |(e, env)| (a, e, env)))
            .filter(|(_, _, env)| env.ecr_tag.as_ref() == Some(tag))
            .map(|(a, e, _)| (a, e))
            .collect();
        for (app, env) in owners {
            let state = self.core.store.env_state(app, env).await?;
            // One of its verified digests (not only the last: a later verification may
            // have overtaken the announcement).
            if state.verified.iter().any(|v| v.digest == push.digest) {
                return Ok(Some(format!(
                    "{tag} is the environment tag pushdeploy points at what {app}/{env} verified; its move deploys nothing"
                )));
            }
        }
        Ok(None)
    }

    /// Deploys a tag or digest by hand. Unlike a push, this may redeploy the running digest,
    /// and it overrides a freeze or a quarantine.
    #[tracing::instrument(skip_all, fields(app = %wanted.app, env = %wanted.environment))]
    pub async fn manual(&self, wanted: &ManualDeploy) -> Result<EnvResult, ServiceError> {
        let config = self.core.config.load().await?;
        let app = config
            .app(&wanted.app)
            .ok_or_else(|| unknown_app(&config, &wanted.app))?;
        if !app.environments.contains_key(&wanted.environment) {
            return Err(unknown_env(&config, &wanted.app, &wanted.environment));
        }
        let (resolved, tag) = match &wanted.wanted {
            Wanted::Tag(tag) => (
                self.registry.resolve_tag(&app.repository, tag).await,
                Some(tag.clone()),
            ),
            Wanted::Digest(digest) => (
                self.registry.find_digest(&app.repository, digest).await,
                None,
            ),
        };
        let resolved = resolved.map_err(|e| match e {
            RegistryError::NotFound(what) => Refusal::NotInRegistry(what).into(),
            other => ServiceError::from(other),
        })?;
        let mut image = resolved.image;
        if let Some(registry) = &app.registry {
            image.registry = registry.clone();
        }
        let request = Request {
            image,
            tag: tag.or_else(|| resolved.tags.first().cloned()),
            kind: Kind::Manual,
            pushed_at: self.core.clock.now(),
            requested_by: wanted.requested_by.clone(),
            reason: wanted.reason.clone(),
        };
        self.admit(&config, &wanted.app, &wanted.environment, request, None)
            .await
    }

    /// Starts the queued image of an environment that has just become free.
    pub async fn on_environment_free(
        &self,
        app: &AppName,
        env: &EnvName,
    ) -> Result<Option<EnvResult>, ServiceError> {
        start_queued(&self.core, self.target.as_ref(), app, env).await
    }

    /// Points the environment's ECR tag at the digest just verified there, so the registry
    /// shows what runs where. Only while that digest is still the environment's last
    /// verified one: a late event about an older digest must not move the tag back.
    /// Immutable tags and refusals are reported, not failed: the deployment is verified
    /// either way. Throttling and unreachable registries fail, so the event is retried.
    pub async fn on_verified(
        &self,
        app: &AppName,
        env: &EnvName,
        digest: &Digest,
    ) -> Result<EnvTagOutcome, ServiceError> {
        let config = self.core.config.load().await?;
        let (Some(app_config), Some(env_config)) = (config.app(app), config.env(app, env)) else {
            return Ok(EnvTagOutcome::Skipped {
                reason: format!("{app}/{env} is no longer configured"),
            });
        };
        let Some(tag) = &env_config.ecr_tag else {
            return Ok(EnvTagOutcome::Skipped {
                reason: "ecr_tag is off for this environment".into(),
            });
        };
        let state = self.core.store.env_state(app, env).await?;
        if state.last_verified().map(|v| &v.digest) != Some(digest) {
            return Ok(EnvTagOutcome::Skipped {
                reason: format!("{digest} is no longer the last verified digest of {app}/{env}"),
            });
        }
        let repository = &app_config.repository;
        match self.tags.move_tag(repository, digest, tag).await {
            Ok(TagMove::Moved) => {
                info!(%repository, %tag, %digest, "environment tag moved");
                Ok(EnvTagOutcome::Moved {
                    tag: tag.clone(),
                    digest: digest.clone(),
                })
            }
            Ok(TagMove::AlreadyThere) => Ok(EnvTagOutcome::AlreadyThere {
                tag: tag.clone(),
                digest: digest.clone(),
            }),
            Ok(TagMove::Immutable) => {
                let reason = format!(
                    "repository {repository} has immutable tags, so tag {tag} cannot move to {digest}; set `ecr_tag: false` on {app}/{env} or make the repository's tags mutable"
                );
                warn!(%repository, %tag, %digest, "{reason}");
                Ok(EnvTagOutcome::Skipped { reason })
            }
            Err(e @ (RegistryError::Throttled(_) | RegistryError::Transient(_))) => Err(e.into()),
            Err(e) => {
                let reason = format!("could not move tag {tag} to {digest}: {e}");
                warn!(%repository, %tag, %digest, error = %e, "environment tag not moved");
                Ok(EnvTagOutcome::Skipped { reason })
            }
        }
    }

    /// Starts, queues or skips one request on one environment. One it would start or queue
    /// is first checked for its platform (refused when built for none the target runs),
    /// then, with a `scan` policy, an automatic one passes the vulnerability gate (it may
    /// wait for its scan, or be blocked).
    pub(super) async fn admit(
        &self,
        config: &Config,
        app: &AppName,
        env: &EnvName,
        request: Request,
        claim: Option<String>,
    ) -> Result<EnvResult, ServiceError> {
        let env_config = config
            .env(app, env)
            .ok_or_else(|| unknown_env(config, app, env))?;
        let gated = env_config.scan.as_ref().filter(|_| gate::applies(&request));
        let image = request.image.to_string();
        retry_on_conflict(
            || format!("admitting {image} to {app}/{env}"),
            async |_| {
                let mut state = self.core.store.env_state(app, env).await?;
                let mut request = request.clone();
                if request.kind == Kind::Push {
                    self.order_pushes_in_one_second(&mut state, &mut request)
                        .await?;
                }
                let mut admission = state.admit(&request, env_config.only_newer);
                let mut dirty = false;
                if matches!(admission, Admission::Start | Admission::Queue { .. })
                    && request.kind != Kind::Rollback
                    && let Some(refused) = platform::check(
                        self.registry.as_ref(),
                        self.target.as_ref(),
                        env_config,
                        app,
                        env,
                        &request,
                    )
                    .await?
                {
                    return gate::hold(
                        &self.core,
                        app,
                        env,
                        &mut state,
                        &request,
                        refused,
                        claim.clone(),
                    )
                    .await;
                }
                if let (Some(policy), Admission::Start | Admission::Queue { .. }) =
                    (gated, &admission)
                {
                    match gate::check(
                        &self.core,
                        self.registry.as_ref(),
                        policy,
                        &mut state,
                        &request,
                    )
                    .await?
                    {
                        gate::Check::Skip(reason) => admission = Admission::Skip(reason),
                        gate::Check::Pass { recorded } => dirty = recorded,
                        gate::Check::Held(held) => {
                            return gate::hold(
                                &self.core,
                                app,
                                env,
                                &mut state,
                                &request,
                                held,
                                claim.clone(),
                            )
                            .await;
                        }
                    }
                }
                place(
                    &self.core,
                    self.target.as_ref(),
                    env_config,
                    app,
                    env,
                    &mut state,
                    request,
                    admission,
                    Placing {
                        claim: claim.clone(),
                        dirty,
                    },
                )
                .await
            },
        )
        .await
    }
}

/// How [`place`] commits: under which claim, and whether the environment changed before
/// (then even a skip is written).
pub(crate) struct Placing {
    pub claim: Option<String>,
    pub dirty: bool,
}

/// Does what `admission` says with `request` on the environment `state`: starts it (and
/// sends it to the target), queues it, or skips it, saying why.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn place(
    core: &Core,
    target: &dyn Target,
    env_config: &crate::domain::EnvConfig,
    app: &AppName,
    env: &EnvName,
    state: &mut EnvState,
    request: Request,
    admission: Admission,
    placing: Placing,
) -> Result<EnvResult, ServiceError> {
    let image = request.image.to_string();
    let result = |outcome| EnvResult {
        app: app.clone(),
        environment: env.clone(),
        outcome,
    };
    let Placing { claim, dirty } = placing;
    match admission {
        Admission::Skip(reason) => {
            info!(app = %app, env = %env, %reason, "deploying nothing");
            let now = core.clock.now();
            let event = LifecycleEvent::environment(
                EventType::DeploymentSkipped,
                app,
                env,
                Some(reason.to_string()),
                now,
            )
            .with_image(&request.image, request.tag.as_ref(), request.kind);
            if dirty {
                if !commit_env(core, state, claim, vec![event]).await? {
                    return Ok(duplicate(result, image));
                }
            } else if let Err(e) = core.events.publish(&[event]).await {
                // Nothing changed, so nothing waits on this event: it is only said.
                warn!(error = %e, "could not announce the skipped image");
            }
            Ok(result(EnvOutcome::Skipped {
                reason: reason.to_string(),
                image,
            }))
        }
        Admission::Queue { behind } => {
            let before = state.queued.clone();
            state.queue(&request);
            let now = core.clock.now();
            settle_pending(state, &request, now);
            let displaced = displaced(state, before, &request, now);
            let event = LifecycleEvent::environment(
                EventType::RolloutQueued,
                app,
                env,
                Some(match &behind {
                    Some(behind) => format!("waiting for deployment {behind}"),
                    None => "waiting for the environment to be unfrozen (pushed before the freeze)"
                        .into(),
                }),
                now,
            )
            .with_image(&request.image, request.tag.as_ref(), request.kind);
            let events = displaced.into_iter().chain([event]).collect();
            if !commit_env(core, state, claim, events).await? {
                return Ok(duplicate(result, image));
            }
            info!(app = %app, env = %env, behind = ?behind, digest = %request.image.digest, "queued");
            Ok(result(EnvOutcome::Queued { behind, image }))
        }
        Admission::Start => {
            let mut dep =
                Deployment::new(app.clone(), env.clone(), request.clone(), core.clock.now());
            let before = state.queued.clone();
            state.start(&mut dep);
            settle_pending(state, &request, core.clock.now());
            let outbox = core.outbox(
                displaced(state, before, &request, core.clock.now())
                    .into_iter()
                    .collect(),
            );
            let commit = Commit {
                outbox: outbox.clone(),
                ..Commit::env(state).with(&mut dep).claiming(claim.clone())
            };
            match core.store.commit(commit).await {
                Err(StoreError::Duplicate(_)) => return Ok(duplicate(result, image)),
                other => other?,
            }
            core.announce(outbox).await;
            launch(core, target, env_config, &mut dep).await?;
            Ok(result(EnvOutcome::Started {
                deployment_id: dep.id,
                image,
            }))
        }
    }
}

/// A queued request a person made (a deploy or a promotion by hand, an approved promotion)
/// that `request` took the place of: it will not run, and `Deployment Skipped` says so, so
/// that no decision is dropped unsaid. (Queued pushes give way to newer ones silently: the
/// newest wins.)
fn displaced(
    state: &EnvState,
    before: Option<crate::domain::environment::Queued>,
    request: &Request,
    now: OffsetDateTime,
) -> Option<LifecycleEvent> {
    displaced_from(state, before, state.queued.as_ref(), request, now)
}

/// `displaced` for any slot a request waits in: `before` it held that, now `kept`.
pub(crate) fn displaced_from(
    state: &EnvState,
    before: Option<crate::domain::environment::Queued>,
    kept: Option<&crate::domain::environment::Queued>,
    request: &Request,
    now: OffsetDateTime,
) -> Option<LifecycleEvent> {
    let gone = before.filter(|q| {
        q.requested_by.is_some() && q.image.digest != request.image.digest && kept != Some(q)
    })?;
    let by = gone.requested_by.as_deref().unwrap_or_default();
    let what = match request.kind {
        Kind::Push => "a push",
        Kind::Manual => "a deploy by hand",
        Kind::Promotion => "a promotion",
        Kind::Rollback => "a rollback",
    };
    let reason = format!(
        "{} (asked for by {by}) will not run: {what} of {} took its place in the queue",
        gone.image.digest, request.image
    );
    warn!(app = %state.app, env = %state.environment, digest = %gone.image.digest, "a queued decision was displaced");
    Some(
        LifecycleEvent::environment(
            EventType::DeploymentSkipped,
            &state.app,
            &state.environment,
            Some(reason),
            now,
        )
        .with_image(&gone.image, gone.tag.as_ref(), gone.kind),
    )
}

/// Commits the environment alone, with `events` recorded in the same write under `claim`,
/// then delivers them. `false`: the claim was taken already, so this was done before.
pub(crate) async fn commit_env(
    core: &Core,
    state: &mut EnvState,
    claim: Option<String>,
    events: Vec<LifecycleEvent>,
) -> Result<bool, ServiceError> {
    let outbox = core.outbox(events);
    let commit = Commit {
        outbox: outbox.clone(),
        ..Commit::env(state).claiming(claim)
    };
    match core.store.commit(commit).await {
        Err(StoreError::Duplicate(_)) => return Ok(false),
        other => other?,
    }
    core.announce(outbox).await;
    Ok(true)
}

impl Deployer {
    /// An ECR push event's time has whole seconds: of two pushes in the same second it
    /// cannot say which came last. When the request competes with a queued or current image
    /// pushed in the same second, ECR's own push times (to the millisecond) order them.
    async fn order_pushes_in_one_second(
        &self,
        state: &mut EnvState,
        request: &mut Request,
    ) -> Result<(), ServiceError> {
        let second = request.pushed_at.unix_timestamp();
        let ties = |t: OffsetDateTime, d: &Digest| {
            t.unix_timestamp() == second && t.nanosecond() == 0 && d != &request.image.digest
        };
        let queued = state
            .queued
            .as_ref()
            .is_some_and(|q| ties(q.pushed_at, &q.image.digest));
        let current = state
            .current
            .as_ref()
            .is_some_and(|c| ties(c.pushed_at, &c.digest));
        if !queued && !current {
            return Ok(());
        }
        let repository = request.image.repository.clone();
        if let Some(at) = self
            .pushed_at(&repository, &request.image.digest, second)
            .await?
        {
            request.pushed_at = at;
        }
        if queued
            && let Some(q) = state.queued.as_mut()
            && let Some(at) = self.pushed_at(&repository, &q.image.digest, second).await?
        {
            q.pushed_at = at;
        }
        if current
            && let Some(c) = state.current.as_mut()
            && let Some(at) = self.pushed_at(&repository, &c.digest, second).await?
        {
            c.pushed_at = at;
        }
        Ok(())
    }

    /// When ECR says `digest` was pushed, if that falls in `second` (a digest pushed again
    /// later keeps its first push time, which then says nothing of this push).
    async fn pushed_at(
        &self,
        repository: &Repository,
        digest: &Digest,
        second: i64,
    ) -> Result<Option<OffsetDateTime>, ServiceError> {
        match self.registry.find_digest(repository, digest).await {
            Ok(found) => Ok(found.pushed_at.filter(|t| t.unix_timestamp() == second)),
            Err(RegistryError::NotFound(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

/// Why a push from `account`/`region` is not to `registry`, when `registry` is an ECR
/// registry of another account or region.
pub(crate) fn other_registry(registry: &Registry, account: &str, region: &str) -> Option<String> {
    let host = registry.as_str();
    let (id, rest) = host.split_once(".dkr.ecr.")?;
    let its_region = rest.split('.').next()?;
    (id != account || its_region != region).then(|| {
        format!(
            "the push is to account {account} in {region}; the app's registry {host} is account {id} in {its_region}"
        )
    })
}

/// An `ECR Image Action` push as the event gives it: its repository as ECR names it, and
/// its digest and tag read but not yet required to be valid, since a push to a repository
/// no app deploys is ignored whatever it holds.
#[derive(Debug, Clone, PartialEq)]
pub struct PushEvent {
    pub event_id: String,
    pub account: String,
    pub region: String,
    pub repository: String,
    pub digest: Result<Digest, InputError>,
    pub tag: Result<Option<Tag>, InputError>,
    pub pushed_at: OffsetDateTime,
}

impl Deployer {
    /// A push event: ignored when no app deploys its repository, else deployed (its digest
    /// and tag must then be valid).
    pub async fn on_push_event(
        &self,
        event: &PushEvent,
    ) -> Result<Option<Vec<EnvResult>>, ServiceError> {
        let config = self.core.config.load().await?;
        if !config
            .apps
            .values()
            .any(|a| a.repository.as_str() == event.repository)
        {
            info!(repository = %event.repository, "no app deploys this repository; ignoring the push");
            return Ok(None);
        }
        let push = Push {
            event_id: event.event_id.clone(),
            account: event.account.clone(),
            region: event.region.clone(),
            repository: Repository::parse(&event.repository).map_err(|e| InputError::Field {
                what: "\"ECR Image Action\" event detail".into(),
                field: Some("detail.repository-name".into()),
                problem: e.to_string(),
            })?,
            digest: event.digest.clone()?,
            tag: event.tag.clone()?,
            pushed_at: event.pushed_at,
        };
        self.on_push(&push).await.map(Some)
    }
}

pub(crate) fn duplicate(result: impl FnOnce(EnvOutcome) -> EnvResult, image: String) -> EnvResult {
    info!("this event was already handled; deploying nothing");
    result(EnvOutcome::Skipped {
        reason: "this event was already handled".into(),
        image,
    })
}

pub(crate) fn unknown_app(config: &Config, app: &AppName) -> ServiceError {
    Refusal::UnknownApp {
        app: app.clone(),
        known: config.apps.keys().collect(),
    }
    .into()
}

/// The configuration of `app`'s environment `env`, or the refusal naming what is configured.
pub(crate) fn configured_env<'a>(
    config: &'a Config,
    app: &AppName,
    env: &EnvName,
) -> Result<&'a crate::domain::EnvConfig, ServiceError> {
    config.env(app, env).ok_or_else(|| match config.app(app) {
        Some(_) => unknown_env(config, app, env),
        None => unknown_app(config, app),
    })
}

pub(crate) fn unknown_env(config: &Config, app: &AppName, env: &EnvName) -> ServiceError {
    Refusal::UnknownEnv {
        app: app.clone(),
        env: env.clone(),
        known: config
            .app(app)
            .map(|a| a.environments.keys().collect())
            .unwrap_or(Names(Vec::new())),
    }
    .into()
}

/// A promotion held for this digest is done waiting once the digest goes ahead.
fn settle_pending(state: &mut EnvState, request: &Request, now: OffsetDateTime) {
    state.settle_promotion(&request.image.digest, now);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Phase;
    use crate::fakes::{World, app, env_name};
    use crate::ports::StateStore;

    fn push(w: &World, hex: char, tag: &str, second: i64, id: &str) -> Push {
        Push {
            event_id: id.into(),
            account: "123456789012".into(),
            region: "eu-west-1".into(),
            repository: Repository::parse("acme/web").unwrap(),
            digest: w.image(hex).digest,
            tag: Some(Tag::parse(tag).unwrap()),
            pushed_at: World::START + time::Duration::seconds(second),
        }
    }

    #[tokio::test]
    async fn pushes_during_a_rollout_queue_and_only_the_newest_waits() {
        let w = World::sample();
        let d = w.deployer();
        d.on_push(&push(&w, 'a', "v1", 0, "e1")).await.unwrap();
        d.on_push(&push(&w, 'c', "v3", 20, "e3")).await.unwrap();
        let late = d.on_push(&push(&w, 'b', "v2", 10, "e2")).await.unwrap();
        assert!(
            matches!(&late[0].outcome, EnvOutcome::Skipped { reason, .. } if reason.contains("newer image is already queued")),
            "{late:?}"
        );
        let state = w.state("staging");
        assert_eq!(state.queued.unwrap().image, w.image('c'));
        assert_eq!(w.target.started().len(), 1, "only the first runs");
        assert_eq!(
            w.events.types(),
            vec!["Rollout Started", "Rollout Queued", "Deployment Skipped"]
        );
    }

    #[tokio::test]
    async fn of_two_pushes_in_one_second_the_one_ecr_took_last_wins_whatever_the_delivery_order() {
        let w = World::sample();
        let d = w.deployer();
        d.on_push(&push(&w, '1', "v1", 0, "e1")).await.unwrap();
        let second = World::START + time::Duration::seconds(10);
        let ms = |n| second + time::Duration::milliseconds(n);
        w.registry
            .push_at("acme/web", Some("v2"), &w.image('a').digest, ms(300));
        w.registry
            .push_at("acme/web", Some("v3"), &w.image('b').digest, ms(700));
        // The later push is delivered first; both events say the same second.
        d.on_push(&push(&w, 'b', "v3", 10, "e3")).await.unwrap();
        let late = d.on_push(&push(&w, 'a', "v2", 10, "e2")).await.unwrap();
        assert!(
            matches!(&late[0].outcome, EnvOutcome::Skipped { reason, .. } if reason.contains("newer image is already queued")),
            "{late:?}"
        );
        assert_eq!(w.state("staging").queued.unwrap().image, w.image('b'));
    }

    #[tokio::test]
    async fn a_push_to_a_repository_no_app_deploys_is_ignored_whatever_it_holds() {
        let w = World::sample();
        let event = PushEvent {
            event_id: "e1".into(),
            account: "123456789012".into(),
            region: "eu-west-1".into(),
            repository: "other-team/Batch".into(),
            digest: Digest::parse("sha256:short").map_err(|e| InputError::Rule(e.to_string())),
            tag: Err(InputError::Rule("tag \"v1;$(reboot)\" is not a tag".into())),
            pushed_at: World::START,
        };
        assert_eq!(w.deployer().on_push_event(&event).await.unwrap(), None);
        let ours = PushEvent {
            repository: "acme/web".into(),
            ..event
        };
        let err = w.deployer().on_push_event(&ours).await.unwrap_err();
        assert_eq!(err.error_type(), "NonRetryable.InvalidInput");
        assert_eq!(w.store.commits(), 0);
    }

    #[tokio::test]
    async fn a_push_to_a_same_named_repository_of_another_account_deploys_nothing() {
        let w = World::new(
            &World::SAMPLE_CONFIG.replace(
                "    repository: acme/web\n",
                "    repository: acme/web\n    registry: 123456789012.dkr.ecr.eu-west-1.amazonaws.com\n",
            ),
        );
        let mut p = push(&w, 'a', "v1", 0, "e1");
        p.account = "999999999999".into();
        let out = w.deployer().on_push(&p).await.unwrap();
        assert!(
            matches!(&out[0].outcome, EnvOutcome::Skipped { reason, .. } if reason.contains("account 999999999999")),
            "{out:?}"
        );
        assert!(w.target.started().is_empty());
        p.account = "123456789012".into();
        let out = w.deployer().on_push(&p).await.unwrap();
        assert!(
            matches!(out[0].outcome, EnvOutcome::Started { .. }),
            "{out:?}"
        );
    }

    #[tokio::test]
    async fn an_environment_tag_moved_by_pushdeploy_is_not_taken_for_a_push() {
        // staging deploys every tag, so it would take ECR's announcement of the tag move.
        let w = World::new(&World::SAMPLE_CONFIG.replace(
            r#"deploy_on_push: { tags: ["main-*", "v*"] }"#,
            r#"deploy_on_push: { tags: ["*"] }"#,
        ));
        // `a` is verified in both environments, so both tags were moved onto it.
        for env in ["staging", "production"] {
            let mut state = w.state(env);
            let mut dep = Deployment::new(
                state.app.clone(),
                state.environment.clone(),
                Request {
                    image: w.image('a'),
                    tag: None,
                    kind: Kind::Push,
                    pushed_at: World::START,
                    requested_by: None,
                    reason: None,
                },
                World::START,
            );
            state.start(&mut dep);
            state.record_verified(&dep, World::START);
            state.release(&dep.id);
            w.store.commit(Commit::env(&mut state)).await.unwrap();
        }
        let commits = w.store.commits();
        let d = w.deployer();
        for (i, tag) in ["staging", "production"].into_iter().enumerate() {
            let out = d
                .on_push(&push(&w, 'a', tag, i as i64 + 10, &format!("e{i}")))
                .await
                .unwrap();
            assert!(
                matches!(&out[0].outcome, EnvOutcome::Skipped { reason, .. }
                    if reason.contains(&format!("{tag} is the environment tag"))),
                "{out:?}"
            );
        }
        assert!(w.target.started().is_empty());
        assert_eq!(w.store.commits(), commits, "nothing recorded");
        // A real push under an environment's name (another digest) is a push; so is any
        // other tag.
        let out = d
            .on_push(&push(&w, 'b', "production", 20, "e8"))
            .await
            .unwrap();
        assert!(
            matches!(out[0].outcome, EnvOutcome::Started { .. }),
            "{out:?}"
        );
    }

    #[tokio::test]
    async fn a_queued_deploy_by_hand_another_one_displaces_is_announced_as_skipped() {
        let w = World::sample();
        let d = w.deployer();
        d.on_push(&push(&w, 'a', "v1", 0, "e1")).await.unwrap();
        for (hex, tag, by) in [('b', "v2", "alice"), ('c', "v3", "bob")] {
            w.registry.push("acme/web", Some(tag), &w.image(hex).digest);
            let out = d
                .manual(&ManualDeploy {
                    app: app("web"),
                    environment: env_name("staging"),
                    wanted: Wanted::Tag(Tag::parse(tag).unwrap()),
                    requested_by: Some(by.into()),
                    reason: None,
                })
                .await
                .unwrap();
            assert!(matches!(out.outcome, EnvOutcome::Queued { .. }), "{out:?}");
        }
        let skipped: Vec<_> = w
            .events
            .events()
            .into_iter()
            .filter(|e| e.detail_type == EventType::DeploymentSkipped)
            .collect();
        assert_eq!(skipped.len(), 1, "{:?}", w.events.types());
        let said = skipped[0].deployment().unwrap();
        assert_eq!(said.digest.as_ref(), Some(&w.image('b').digest));
        assert!(
            said.reason
                .as_deref()
                .unwrap()
                .contains("(asked for by alice) will not run: a deploy by hand of"),
            "{:?}",
            said.reason
        );
    }

    #[tokio::test]
    async fn a_conflicting_write_is_redone_and_starts_one_rollout() {
        let w = World::sample();
        w.store.interfere(3);
        let out = w
            .deployer()
            .on_push(&push(&w, 'a', "v1", 0, "e1"))
            .await
            .unwrap();
        assert!(matches!(out[0].outcome, EnvOutcome::Started { .. }));
        assert_eq!(w.target.started().len(), 1);
        assert_eq!(w.deployments("staging").len(), 1);
    }

    #[tokio::test]
    async fn a_deploy_by_hand_overrides_a_freeze_and_a_quarantine() {
        let w = World::sample();
        let digest = w.image('a').digest;
        w.registry.push("acme/web", Some("v1"), &digest);
        let mut state = w.state("staging");
        state.frozen = Some(crate::domain::environment::Freeze {
            reason: "holidays".into(),
            by: "alice".into(),
            at: World::START,
        });
        let quarantined = Deployment::new(
            state.app.clone(),
            state.environment.clone(),
            Request {
                image: w.image('a'),
                tag: None,
                kind: Kind::Push,
                pushed_at: World::START,
                requested_by: None,
                reason: None,
            },
            World::START,
        );
        state.quarantine(&quarantined, "smoke test failed", World::START);
        w.store.commit(Commit::env(&mut state)).await.unwrap();

        let pushed = w
            .deployer()
            .on_push(&push(&w, 'a', "v1", 5, "e1"))
            .await
            .unwrap();
        assert!(matches!(pushed[0].outcome, EnvOutcome::Skipped { .. }));
        let manual = ManualDeploy {
            app: app("web"),
            environment: env_name("staging"),
            wanted: Wanted::Digest(digest.clone()),
            requested_by: Some("alice".into()),
            reason: None,
        };
        let out = w.deployer().manual(&manual).await.unwrap();
        assert!(matches!(out.outcome, EnvOutcome::Started { .. }), "{out:?}");
        let state = w.state("staging");
        assert!(state.quarantined.is_empty(), "deploying by hand lifts it");
        assert_eq!(w.deployments("staging")[0].phase, Phase::RollingOut);
    }

    #[tokio::test]
    async fn a_push_event_without_an_ecr_registry_is_refused_naming_the_field() {
        let w = World::sample();
        let mut p = push(&w, 'a', "v1", 0, "e1");
        p.account = "bad account".into();
        let err = w.deployer().on_push(&p).await.unwrap_err();
        assert_eq!(err.error_type(), "NonRetryable.InvalidInput");
        assert!(err.to_string().contains("\"account\""), "{err}");
        assert_eq!(w.store.commits(), 0);
    }

    #[tokio::test]
    async fn with_a_semver_policy_and_only_newer_a_lower_hotfix_pushed_later_deploys_nothing() {
        let w = World::new(&World::SAMPLE_CONFIG.replace(
            "        deploy_on_push: { tags: [\"main-*\", \"v*\"] }\n",
            "        deploy_on_push: { semver: \">=1.3, <2\" }\n        only_newer: true\n",
        ));
        let d = w.deployer();
        let first = d.on_push(&push(&w, 'a', "v1.4.0", 0, "e1")).await.unwrap();
        assert!(
            matches!(first[0].outcome, EnvOutcome::Started { .. }),
            "{first:?}"
        );
        // Outside the range: no environment is named at all.
        assert!(
            d.on_push(&push(&w, 'b', "2.0.0", 5, "e2"))
                .await
                .unwrap()
                .is_empty()
        );
        assert!(
            d.on_push(&push(&w, 'b', "1.5.0-rc.1", 6, "e3"))
                .await
                .unwrap()
                .is_empty()
        );
        assert!(
            d.on_push(&push(&w, 'b', "main-abc", 7, "e4"))
                .await
                .unwrap()
                .is_empty()
        );

        let hotfix = d.on_push(&push(&w, 'c', "1.3.9", 10, "e5")).await.unwrap();
        let EnvOutcome::Skipped { reason, .. } = &hotfix[0].outcome else {
            panic!("{hotfix:?}");
        };
        assert!(reason.contains("1.3.9 is lower than v1.4.0"), "{reason}");
        assert_eq!(w.target.started().len(), 1, "only 1.4.0 ran");
        assert!(w.state("staging").queued.is_none());
        let skipped = w.events.events().pop().unwrap();
        assert_eq!(skipped.detail_type.as_str(), "Deployment Skipped");
        let detail = serde_json::to_value(&skipped.detail).unwrap();
        assert_eq!(detail["tag"], "1.3.9");
        assert!(
            detail["reason"].as_str().unwrap().contains("only_newer"),
            "{detail}"
        );

        // A person may still go back.
        w.registry
            .push("acme/web", Some("1.3.9"), &w.image('c').digest);
        let manual = ManualDeploy {
            app: app("web"),
            environment: env_name("staging"),
            wanted: Wanted::Tag(Tag::parse("1.3.9").unwrap()),
            requested_by: Some("alice".into()),
            reason: Some("hotfix".into()),
        };
        let out = w.deployer().manual(&manual).await.unwrap();
        assert!(matches!(out.outcome, EnvOutcome::Queued { .. }), "{out:?}");
    }
}
