//! Lifecycle events: what pushdeploy publishes on its own EventBridge bus after every step.
//! They hand work from one function to the next, form the audit trail, and are the
//! integration point for users' own rules.

use std::fmt;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::deployment::{Deployment, DeploymentId};
use super::image::{Digest, PinnedImage, Tag};
use super::lifecycle::{Kind, Phase};
use super::names::{AppName, EnvName};

/// The `source` of every lifecycle event.
pub const SOURCE: &str = "pushdeploy";

/// The `detail-type` of a lifecycle event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventType {
    #[serde(rename = "Rollout Queued")]
    RolloutQueued,
    #[serde(rename = "Rollout Started")]
    RolloutStarted,
    #[serde(rename = "Rollout Succeeded")]
    RolloutSucceeded,
    #[serde(rename = "Rollout Failed")]
    RolloutFailed,
    #[serde(rename = "Verification Started")]
    VerificationStarted,
    #[serde(rename = "Deployment Verified")]
    DeploymentVerified,
    #[serde(rename = "Verification Failed")]
    VerificationFailed,
    #[serde(rename = "Rollback Started")]
    RollbackStarted,
    #[serde(rename = "Rollback Succeeded")]
    RollbackSucceeded,
    #[serde(rename = "Rollback Failed")]
    RollbackFailed,
    /// A failure with nothing verified to roll back to: the environment is free again.
    #[serde(rename = "Deployment Failed")]
    DeploymentFailed,
    #[serde(rename = "Deployment Skipped")]
    DeploymentSkipped,
    #[serde(rename = "Environment Frozen")]
    EnvironmentFrozen,
    #[serde(rename = "Environment Unfrozen")]
    EnvironmentUnfrozen,
}

impl EventType {
    pub const ALL: [EventType; 14] = [
        EventType::RolloutQueued,
        EventType::RolloutStarted,
        EventType::RolloutSucceeded,
        EventType::RolloutFailed,
        EventType::VerificationStarted,
        EventType::DeploymentVerified,
        EventType::VerificationFailed,
        EventType::RollbackStarted,
        EventType::RollbackSucceeded,
        EventType::RollbackFailed,
        EventType::DeploymentFailed,
        EventType::DeploymentSkipped,
        EventType::EnvironmentFrozen,
        EventType::EnvironmentUnfrozen,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::RolloutQueued => "Rollout Queued",
            EventType::RolloutStarted => "Rollout Started",
            EventType::RolloutSucceeded => "Rollout Succeeded",
            EventType::RolloutFailed => "Rollout Failed",
            EventType::VerificationStarted => "Verification Started",
            EventType::DeploymentVerified => "Deployment Verified",
            EventType::VerificationFailed => "Verification Failed",
            EventType::RollbackStarted => "Rollback Started",
            EventType::RollbackSucceeded => "Rollback Succeeded",
            EventType::RollbackFailed => "Rollback Failed",
            EventType::DeploymentFailed => "Deployment Failed",
            EventType::DeploymentSkipped => "Deployment Skipped",
            EventType::EnvironmentFrozen => "Environment Frozen",
            EventType::EnvironmentUnfrozen => "Environment Unfrozen",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == value)
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `detail` of a lifecycle event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventDetail {
    pub app: AppName,
    pub environment: EnvName,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment_id: Option<DeploymentId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<PinnedImage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<Digest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<Tag>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<Kind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_of: Option<DeploymentId>,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// One event to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct LifecycleEvent {
    pub detail_type: EventType,
    pub detail: EventDetail,
}

impl LifecycleEvent {
    /// An event about a deployment, as it stands now.
    pub fn of(detail_type: EventType, deployment: &Deployment) -> Self {
        Self {
            detail_type,
            detail: EventDetail {
                app: deployment.app.clone(),
                environment: deployment.environment.clone(),
                deployment_id: Some(deployment.id.clone()),
                image: Some(deployment.image.clone()),
                digest: Some(deployment.image.digest.clone()),
                tag: deployment.tag.clone(),
                kind: Some(deployment.kind),
                phase: Some(deployment.phase),
                reason: deployment.reason.clone(),
                rollback_of: deployment.rollback_of.clone(),
                at: deployment.updated_at,
            },
        }
    }

    /// An event about an environment, with no deployment behind it.
    pub fn environment(
        detail_type: EventType,
        app: &AppName,
        environment: &EnvName,
        reason: Option<String>,
        at: OffsetDateTime,
    ) -> Self {
        Self {
            detail_type,
            detail: EventDetail {
                app: app.clone(),
                environment: environment.clone(),
                deployment_id: None,
                image: None,
                digest: None,
                tag: None,
                kind: None,
                phase: None,
                reason,
                rollback_of: None,
                at,
            },
        }
    }

    pub fn with_image(mut self, image: &PinnedImage, tag: Option<&Tag>, kind: Kind) -> Self {
        self.detail.image = Some(image.clone());
        self.detail.digest = Some(image.digest.clone());
        self.detail.tag = tag.cloned();
        self.detail.kind = Some(kind);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detail_types_round_trip_through_their_names() {
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.as_str()), Some(t));
            assert_eq!(
                serde_json::to_value(t).unwrap(),
                serde_json::json!(t.as_str())
            );
        }
    }
}
