//! Where images run: start a rollout, read its status, cancel it.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

use super::CallError;
use crate::domain::platform::Platform;
use crate::domain::{Deployment, TargetConfig};

/// A target's handle on a rollout, prefixed with the kind of target: `ssm:<command-id>`,
/// `ecs:<cluster>/<service>/<ecs-deployment-id>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TargetRef(String);

impl TargetRef {
    pub fn new(kind: &str, id: &str) -> Self {
        Self(format!("{kind}:{id}"))
    }

    pub fn parse(value: &str) -> Option<Self> {
        let (kind, id) = value.split_once(':')?;
        (!kind.is_empty() && !id.is_empty()).then(|| Self(value.to_owned()))
    }

    pub fn kind(&self) -> &str {
        self.0.split_once(':').map_or("", |(k, _)| k)
    }

    pub fn id(&self) -> &str {
        self.0.split_once(':').map_or("", |(_, id)| id)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TargetRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RolloutStatus {
    InProgress,
    Succeeded,
    Failed(String),
    /// Failed, and the target's own automatic rollback (CodeDeploy's) is still running:
    /// nothing may be deployed to the environment until it ends.
    Settling(String),
}

/// What a target's status-change event says, in the tracker's terms: every kind of target
/// reads its own events into this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusEvent {
    /// About the rollout behind `target_ref`. `reported` is the status when the event speaks
    /// for the whole rollout; `None` when only reading the target back can tell (a per-host
    /// status, an ECS deployment still in progress).
    Rollout {
        target_ref: TargetRef,
        reported: Option<RolloutStatus>,
    },
    /// Not about a rollout pushdeploy could have started, and why.
    Ignored(String),
}

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Throttled(#[source] CallError),
    #[error("{0}")]
    Transient(#[source] CallError),
    /// The target is doing something else that must end first; retrying later will do.
    #[error("{0}")]
    Busy(String),
    /// The target's API refused the request (no such instance, access denied, …).
    #[error("{0}")]
    Refused(#[source] CallError),
    /// The rollout cannot be done as configured (no such container, a service deployed by
    /// another controller, …).
    #[error("{0}")]
    Invalid(String),
}

super::from_call!(TargetError);

impl TargetError {
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            TargetError::Throttled(_) | TargetError::Transient(_) | TargetError::Busy(_)
        )
    }
}

/// A rollout the target accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Started {
    pub target_ref: TargetRef,
    /// What the target ran before, in its own terms (ECS: the task definition ARN), so that
    /// a rollback can return to exactly that.
    pub before: Option<String>,
}

impl From<TargetRef> for Started {
    fn from(target_ref: TargetRef) -> Self {
        Self {
            target_ref,
            before: None,
        }
    }
}

#[async_trait]
pub trait Target: Send + Sync {
    /// Starts rolling `deployment.image` out as `config` describes; returns the handle.
    /// A rollback's `deployment.restore` names what ran before the failed rollout; a
    /// target reuses it when it still pins the same digest.
    async fn start(
        &self,
        deployment: &Deployment,
        config: &TargetConfig,
    ) -> Result<Started, TargetError>;

    async fn status(&self, target_ref: &TargetRef) -> Result<RolloutStatus, TargetError>;

    /// Stops a rollout that ran too long; best effort.
    async fn cancel(&self, target_ref: &TargetRef) -> Result<(), TargetError>;

    /// The action `deployment` started, if the target has one: every action carries the
    /// deployment id (an SSM command's comment, a CodeDeploy deployment's description, an
    /// ECS task definition's tag), so a rollout whose start was never recorded (the
    /// function stopped, or the answer was lost) is adopted instead of started twice.
    async fn find(
        &self,
        deployment: &Deployment,
        config: &TargetConfig,
    ) -> Result<Option<Started>, TargetError>;

    /// Housekeeping once a started rollout is recorded (ECS: deregistering revisions beyond
    /// `keep_revisions`). Best effort: failures are the target's to log.
    async fn tidy(&self, _started: &Started, _config: &TargetConfig) {}

    /// The platform the target itself says it runs (an ECS task definition's
    /// `runtimePlatform`); `None` when it says none, and the environment's `platform`
    /// decides.
    async fn platform(&self, _config: &TargetConfig) -> Result<Option<Platform>, TargetError> {
        Ok(None)
    }
}

/// Every kind of target a function can reach, chosen by the environment's configuration
/// when starting and by the handle's kind afterwards.
#[derive(Default, Clone)]
pub struct Targets {
    by_kind: BTreeMap<&'static str, Arc<dyn Target>>,
}

impl Targets {
    pub fn with(mut self, kind: &'static str, target: Arc<dyn Target>) -> Self {
        self.by_kind.insert(kind, target);
        self
    }

    fn get(&self, kind: &str) -> Result<&Arc<dyn Target>, TargetError> {
        self.by_kind.get(kind).ok_or_else(|| {
            let known: Vec<&str> = self.by_kind.keys().copied().collect();
            TargetError::Invalid(format!(
                "this function cannot reach {kind:?} targets (it knows {})",
                known.join(", ")
            ))
        })
    }
}

#[async_trait]
impl Target for Targets {
    async fn start(
        &self,
        deployment: &Deployment,
        config: &TargetConfig,
    ) -> Result<Started, TargetError> {
        self.get(config.kind())?.start(deployment, config).await
    }

    async fn status(&self, target_ref: &TargetRef) -> Result<RolloutStatus, TargetError> {
        self.get(target_ref.kind())?.status(target_ref).await
    }

    async fn cancel(&self, target_ref: &TargetRef) -> Result<(), TargetError> {
        self.get(target_ref.kind())?.cancel(target_ref).await
    }

    async fn find(
        &self,
        deployment: &Deployment,
        config: &TargetConfig,
    ) -> Result<Option<Started>, TargetError> {
        self.get(config.kind())?.find(deployment, config).await
    }

    async fn tidy(&self, started: &Started, config: &TargetConfig) {
        if let Ok(target) = self.get(config.kind()) {
            target.tidy(started, config).await;
        }
    }

    async fn platform(&self, config: &TargetConfig) -> Result<Option<Platform>, TargetError> {
        self.get(config.kind())?.platform(config).await
    }
}
