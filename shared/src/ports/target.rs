//! Where images run: start a rollout, read its status, cancel it.

use std::fmt;

use async_trait::async_trait;

use super::BoxError;
use crate::domain::{Deployment, TargetConfig};

/// A target's handle on a rollout, prefixed with the kind of target: `ssm:<command-id>`.
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
}

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("{0}")]
    NotFound(String),
    #[error("the target API throttled the request")]
    Throttled(#[source] BoxError),
    #[error("could not reach the target API")]
    Transient(#[source] BoxError),
    /// The request cannot succeed as configured (no such instance, access denied, …).
    #[error("the target refused the rollout: {0}")]
    Invalid(String, #[source] Option<BoxError>),
}

impl TargetError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, TargetError::Throttled(_) | TargetError::Transient(_))
    }
}

#[async_trait]
pub trait Target: Send + Sync {
    /// Starts rolling `deployment.image` out as `config` describes; returns the handle.
    async fn start(
        &self,
        deployment: &Deployment,
        config: &TargetConfig,
    ) -> Result<TargetRef, TargetError>;

    async fn status(&self, target_ref: &TargetRef) -> Result<RolloutStatus, TargetError>;

    /// Stops a rollout that ran too long; best effort.
    async fn cancel(&self, target_ref: &TargetRef) -> Result<(), TargetError>;
}
