//! What people ask of pushdeploy directly: the status of apps and environments, and
//! freezing or unfreezing automatic rollouts.

use serde::Serialize;
use time::OffsetDateTime;
use tracing::info;

use super::deploy::{unknown_app, unknown_env};
use super::{Core, MAX_ATTEMPTS, ServiceError, too_busy};
use crate::domain::deployment::{Current, Freeze, Queued, VerifiedDigest};
use crate::domain::{
    AppName, Deployment, DeploymentId, Digest, EnvName, EventType, Kind, LifecycleEvent, Phase, Tag,
};
use crate::ports::{Commit, StoreError};

/// How many deployments a status lists per environment.
pub const HISTORY_LIMIT: usize = 10;

#[derive(Debug, Clone, Serialize)]
pub struct EnvStatus {
    pub app: AppName,
    pub environment: EnvName,
    pub target: &'static str,
    pub current: Option<Current>,
    pub last_verified: Option<VerifiedDigest>,
    pub in_flight: Option<InFlight>,
    pub queued: Option<Queued>,
    pub frozen: Option<Freeze>,
    pub quarantined: Vec<QuarantinedDigest>,
    pub deployments: Vec<DeploymentSummary>,
}

#[derive(Debug, Clone, Serialize)]
pub struct InFlight {
    pub deployment_id: DeploymentId,
    pub phase: Option<Phase>,
    #[serde(with = "time::serde::rfc3339")]
    pub since: OffsetDateTime,
}

#[derive(Debug, Clone, Serialize)]
pub struct QuarantinedDigest {
    pub digest: String,
    pub reason: String,
    pub deployment_id: DeploymentId,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeploymentSummary {
    pub deployment_id: DeploymentId,
    pub digest: Digest,
    pub tag: Option<Tag>,
    pub kind: Kind,
    pub phase: Phase,
    pub reason: Option<String>,
    pub rollback_of: Option<DeploymentId>,
    pub requested_by: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl From<&Deployment> for DeploymentSummary {
    fn from(d: &Deployment) -> Self {
        Self {
            deployment_id: d.id.clone(),
            digest: d.image.digest.clone(),
            tag: d.tag.clone(),
            kind: d.kind,
            phase: d.phase,
            reason: d.reason.clone(),
            rollback_of: d.rollback_of.clone(),
            requested_by: d.requested_by.clone(),
            created_at: d.created_at,
            updated_at: d.updated_at,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct FreezeResult {
    pub app: AppName,
    pub environment: EnvName,
    pub frozen: Option<Freeze>,
    /// False when the environment already was in the requested state.
    pub changed: bool,
}

#[derive(Clone)]
pub struct Control {
    pub core: Core,
}

impl Control {
    /// The status of one environment, every environment of one app, or everything.
    pub async fn status(
        &self,
        app: Option<&AppName>,
        env: Option<&EnvName>,
    ) -> Result<Vec<EnvStatus>, ServiceError> {
        let config = self.core.config.load().await?;
        if let Some(app) = app {
            let app_config = config.app(app).ok_or_else(|| unknown_app(&config, app))?;
            if let Some(env) = env
                && !app_config.environments.contains_key(env)
            {
                return Err(unknown_env(&config, app, env));
            }
        } else if env.is_some() {
            return Err(ServiceError::Invalid(
                "name the app of the environment (\"app\")".into(),
            ));
        }
        let mut out = Vec::new();
        for (a, e, env_config) in config.environments() {
            if app.is_some_and(|x| x != a) || env.is_some_and(|x| x != e) {
                continue;
            }
            let state = self.core.store.env_state(a, e).await?;
            let recent = self
                .core
                .store
                .recent_deployments(a, e, HISTORY_LIMIT)
                .await?;
            let in_flight = state.lease.as_ref().map(|lease| InFlight {
                deployment_id: lease.deployment_id.clone(),
                phase: recent
                    .iter()
                    .find(|d| d.id == lease.deployment_id)
                    .map(|d| d.phase),
                since: lease.since,
            });
            out.push(EnvStatus {
                app: a.clone(),
                environment: e.clone(),
                target: env_config.target.kind(),
                last_verified: state.last_verified().cloned(),
                current: state.current,
                in_flight,
                queued: state.queued,
                frozen: state.frozen,
                quarantined: state
                    .quarantined
                    .into_iter()
                    .map(|(digest, q)| QuarantinedDigest {
                        digest,
                        reason: q.reason,
                        deployment_id: q.deployment_id,
                    })
                    .collect(),
                deployments: recent.iter().map(DeploymentSummary::from).collect(),
            });
        }
        Ok(out)
    }

    /// Pauses automatic rollouts of an environment. Rollouts by hand still run.
    pub async fn freeze(
        &self,
        app: &AppName,
        env: &EnvName,
        reason: &str,
        by: &str,
    ) -> Result<FreezeResult, ServiceError> {
        self.set_frozen(app, env, Some(reason), by).await
    }

    /// Resumes automatic rollouts; the newest queued image, if any, goes next.
    pub async fn unfreeze(
        &self,
        app: &AppName,
        env: &EnvName,
        by: &str,
    ) -> Result<FreezeResult, ServiceError> {
        self.set_frozen(app, env, None, by).await
    }

    async fn set_frozen(
        &self,
        app: &AppName,
        env: &EnvName,
        freeze: Option<&str>,
        by: &str,
    ) -> Result<FreezeResult, ServiceError> {
        let config = self.core.config.load().await?;
        if config.env(app, env).is_none() {
            return Err(match config.app(app) {
                Some(_) => unknown_env(&config, app, env),
                None => unknown_app(&config, app),
            });
        }
        for _ in 0..MAX_ATTEMPTS {
            let mut state = self.core.store.env_state(app, env).await?;
            let now = self.core.clock.now();
            let wanted = freeze.map(|reason| Freeze {
                reason: reason.to_owned(),
                by: by.to_owned(),
                at: now,
            });
            if state.frozen.is_some() == wanted.is_some() {
                return Ok(FreezeResult {
                    app: app.clone(),
                    environment: env.clone(),
                    frozen: state.frozen,
                    changed: false,
                });
            }
            state.frozen = wanted;
            match self.core.store.commit(Commit::env(&mut state)).await {
                Ok(()) => {}
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(e.into()),
            }
            let (kind, reason) = match &state.frozen {
                Some(f) => (
                    EventType::EnvironmentFrozen,
                    Some(format!("{} (by {})", f.reason, f.by)),
                ),
                None => (
                    EventType::EnvironmentUnfrozen,
                    Some(format!("unfrozen by {by}")),
                ),
            };
            info!(app = %app, env = %env, event = %kind, "freeze changed");
            self.core
                .events
                .publish(&[LifecycleEvent::environment(kind, app, env, reason, now)])
                .await?;
            return Ok(FreezeResult {
                app: app.clone(),
                environment: env.clone(),
                frozen: state.frozen,
                changed: true,
            });
        }
        Err(too_busy("changing the freeze"))
    }
}
