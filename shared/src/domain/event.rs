//! Lifecycle events: what pushdeploy publishes on its own EventBridge bus after every step.
//! They hand work from one function to the next, form the audit trail, and are the
//! integration point for users' own rules.

use std::fmt;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::approval::Pending;
use super::deployment::{Deployment, DeploymentId};
use super::image::{Digest, PinnedImage, Repository, Tag};
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
    /// The janitor deleted old images from a repository.
    #[serde(rename = "Images Deleted")]
    ImagesDeleted,
    /// A promotion waits for a person's approval.
    #[serde(rename = "Approval Requested")]
    ApprovalRequested,
    /// A tag-triggered promotion waits for its digest to be verified at the source.
    #[serde(rename = "Promotion Pending")]
    PromotionPending,
    #[serde(rename = "Promotion Approved")]
    PromotionApproved,
    #[serde(rename = "Promotion Rejected")]
    PromotionRejected,
    /// A person stopped the deployment in flight: its target action is cancelled and the
    /// environment released, with no rollback.
    #[serde(rename = "Deployment Aborted")]
    DeploymentAborted,
    /// A person took a verified digest back: it is no longer a rollback or promotion
    /// candidate there, and the environment rolls back if it runs it.
    #[serde(rename = "Image Revoked")]
    ImageRevoked,
    /// An image waits for its vulnerability scan result before it may deploy.
    #[serde(rename = "Scan Awaited")]
    ScanAwaited,
    /// The vulnerability gate refused an image: over its thresholds, or no result in time.
    #[serde(rename = "Deployment Blocked")]
    DeploymentBlocked,
    /// Internal: the reconciler hands a deployment to the verifier again (its `Rollout
    /// Succeeded` was not taken, or its alarm watch goes on). Not a change; the lifecycle
    /// events above are each published once.
    #[serde(rename = "Verification Due")]
    VerificationDue,
    /// Internal: the reconciler hands a failed deployment to the rollback again (its
    /// `Rollout Failed` or `Verification Failed` was not taken). Not a change.
    #[serde(rename = "Rollback Due")]
    RollbackDue,
}

impl EventType {
    pub const ALL: [EventType; 25] = [
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
        EventType::ImagesDeleted,
        EventType::ApprovalRequested,
        EventType::PromotionPending,
        EventType::PromotionApproved,
        EventType::PromotionRejected,
        EventType::DeploymentAborted,
        EventType::ImageRevoked,
        EventType::ScanAwaited,
        EventType::DeploymentBlocked,
        EventType::VerificationDue,
        EventType::RollbackDue,
    ];

    pub const fn as_str(self) -> &'static str {
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
            EventType::ImagesDeleted => "Images Deleted",
            EventType::ApprovalRequested => "Approval Requested",
            EventType::PromotionPending => "Promotion Pending",
            EventType::PromotionApproved => "Promotion Approved",
            EventType::PromotionRejected => "Promotion Rejected",
            EventType::DeploymentAborted => "Deployment Aborted",
            EventType::ImageRevoked => "Image Revoked",
            EventType::ScanAwaited => "Scan Awaited",
            EventType::DeploymentBlocked => "Deployment Blocked",
            EventType::VerificationDue => "Verification Due",
            EventType::RollbackDue => "Rollback Due",
        }
    }

    /// The internal event that hands a deployment over again, for the hand-over this event
    /// made the first time.
    pub fn repeated(self) -> Option<Self> {
        match self {
            EventType::RolloutSucceeded => Some(EventType::VerificationDue),
            EventType::RolloutFailed | EventType::VerificationFailed => {
                Some(EventType::RollbackDue)
            }
            _ => None,
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
    /// When the image was pushed (for a rollback: the failed push it replaces).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub pushed_at: Option<OffsetDateTime>,
    /// On `Rollback Started`: when the deployment being rolled back failed.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub failed_at: Option<OffsetDateTime>,
    /// On promotion events: the environment the digest comes from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<EnvName>,
    /// On `Approval Requested`: when approving is no longer possible.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub expires_at: Option<OffsetDateTime>,
    /// On `Promotion Approved`, `Promotion Rejected` and `Image Revoked`: who decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// On `Deployment Blocked`: the scan's findings per severity (absent: no result).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub findings: Option<super::scan::Counts>,
    /// On `Deployment Blocked` for the platform: what the image is built for, and what the
    /// target runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platforms: Option<super::platform::Mismatch>,
    /// The event's own id, the same on every delivery of it (EventBridge gives each
    /// delivery a new envelope id): what consumers claim to handle an event once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// The `detail` of an `Images Deleted` event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImagesDetail {
    pub repository: Repository,
    pub digests: Vec<Digest>,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// What an event is about.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Detail {
    /// A deployment or an environment.
    Deployment(Box<EventDetail>),
    /// Images of a repository.
    Images(ImagesDetail),
}

impl Detail {
    pub fn at(&self) -> OffsetDateTime {
        match self {
            Detail::Deployment(d) => d.at,
            Detail::Images(d) => d.at,
        }
    }
}

/// One event to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct LifecycleEvent {
    pub detail_type: EventType,
    pub detail: Detail,
}

impl LifecycleEvent {
    /// An event about a deployment, as it stands now.
    pub fn of(detail_type: EventType, deployment: &Deployment) -> Self {
        Self {
            detail_type,
            detail: Detail::Deployment(Box::new(EventDetail {
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
                pushed_at: Some(deployment.pushed_at),
                failed_at: None,
                from: None,
                expires_at: None,
                by: None,
                findings: None,
                platforms: None,
                event_id: None,
                at: deployment.updated_at,
            })),
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
            detail: Detail::Deployment(Box::new(EventDetail {
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
                pushed_at: None,
                failed_at: None,
                from: None,
                expires_at: None,
                by: None,
                findings: None,
                platforms: None,
                event_id: None,
                at,
            })),
        }
    }

    /// An event about a pending promotion of an environment.
    pub fn pending(
        detail_type: EventType,
        app: &AppName,
        environment: &EnvName,
        pending: &Pending,
        by: Option<&str>,
        at: OffsetDateTime,
    ) -> Self {
        let mut event = Self::environment(
            detail_type,
            app,
            environment,
            Some(pending.reason.clone()),
            at,
        )
        .with_image(&pending.image, pending.tag.as_ref(), Kind::Promotion);
        if let Detail::Deployment(d) = &mut event.detail {
            d.from = Some(pending.from.clone());
            d.expires_at = pending.expires_at;
            d.pushed_at = Some(pending.pushed_at);
            d.by = by.map(str::to_owned);
        }
        event
    }

    /// With the scan findings that blocked an image (`Deployment Blocked`).
    pub fn with_findings(mut self, findings: Option<super::scan::Counts>) -> Self {
        if let Detail::Deployment(d) = &mut self.detail {
            d.findings = findings;
        }
        self
    }

    /// With the platforms that refused an image (`Deployment Blocked`).
    pub fn with_platforms(mut self, platforms: Option<super::platform::Mismatch>) -> Self {
        if let Detail::Deployment(d) = &mut self.detail {
            d.platforms = platforms;
        }
        self
    }

    /// Old images the janitor deleted from a repository.
    pub fn images_deleted(
        repository: &Repository,
        digests: Vec<Digest>,
        at: OffsetDateTime,
    ) -> Self {
        Self {
            detail_type: EventType::ImagesDeleted,
            detail: Detail::Images(ImagesDetail {
                repository: repository.clone(),
                digests,
                at,
            }),
        }
    }

    /// The deployment or environment this event is about, if it is about one.
    pub fn deployment(&self) -> Option<&EventDetail> {
        match &self.detail {
            Detail::Deployment(d) => Some(d),
            Detail::Images(_) => None,
        }
    }

    pub fn with_image(mut self, image: &PinnedImage, tag: Option<&Tag>, kind: Kind) -> Self {
        if let Detail::Deployment(d) = &mut self.detail {
            d.image = Some(image.clone());
            d.digest = Some(image.digest.clone());
            d.tag = tag.cloned();
            d.kind = Some(kind);
        }
        self
    }

    /// On `Rollback Started`: when the deployment being rolled back failed.
    pub fn with_failed_at(mut self, failed_at: Option<OffsetDateTime>) -> Self {
        if let Detail::Deployment(d) = &mut self.detail {
            d.failed_at = failed_at;
        }
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
