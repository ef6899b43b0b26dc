//! Deployment records: one rollout of one digest to one environment, its requested image,
//! and every step it took, moved by the pure transition function of `lifecycle`.

use std::fmt;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::environment::Current;
use super::image::{Digest, PinnedImage, Tag};
use super::lifecycle::{InvalidTransition, Kind, Outcome, Phase, Step, transition};
use super::names::{AppName, EnvName};

/// A deployment id: a ULID, so ids sort by creation time.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct DeploymentId(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("deployment id {0:?} is not a 26-character ULID")]
pub struct DeploymentIdError(pub String);

impl DeploymentId {
    pub fn new(at: OffsetDateTime) -> Self {
        Self(ulid::Ulid::from_datetime(at.into()).to_string())
    }

    pub fn parse(value: &str) -> Result<Self, DeploymentIdError> {
        ulid::Ulid::from_string(value)
            .map(|u| Self(u.to_string()))
            .map_err(|_| DeploymentIdError(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DeploymentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for DeploymentId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}

/// One rollout of one digest to one environment, and everything that happened to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deployment {
    pub id: DeploymentId,
    pub app: AppName,
    pub environment: EnvName,
    pub image: PinnedImage,
    pub tag: Option<Tag>,
    pub kind: Kind,
    pub phase: Phase,
    /// Why it failed, was skipped, or was requested; shown in status and events.
    pub reason: Option<String>,
    /// When the image was pushed (or requested by hand): orders competing pushes.
    #[serde(with = "time::serde::rfc3339")]
    pub pushed_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    /// The target's handle on the rollout: an SSM command id, an ECS deployment.
    pub target_ref: Option<String>,
    /// What the target ran before this rollout, in its own terms (ECS: the task
    /// definition ARN).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_before: Option<String>,
    /// For a rollback: what the target ran before the failed rollout, reused when it
    /// still pins the digest rolled back to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<String>,
    /// For a rollback: the failed deployment it replaces.
    pub rollback_of: Option<DeploymentId>,
    /// For a failed deployment: the rollback that replaced it.
    pub rolled_back_by: Option<DeploymentId>,
    pub requested_by: Option<String>,
    /// What the environment ran (or was rolling out) when this deployment took it over.
    pub previous: Option<Current>,
    /// When a person stopped it: who, why and when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aborted: Option<Aborted>,
    /// While `Requested`: the target refused to start it for now (throttled, busy,
    /// unreachable), and from this time whoever runs next starts it again.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub retry_at: Option<OffsetDateTime>,
    /// While `Verifying`, after its smoke tests passed: when the watch of the environment's
    /// alarms began. An alarm's change from before then is not this image's doing.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub watch_since: Option<OffsetDateTime>,
    /// While `Verifying`, after its smoke tests passed: the environment's alarms are
    /// watched until then, and only then is it verified.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub watch_until: Option<OffsetDateTime>,
    pub history: Vec<HistoryEntry>,
    /// Optimistic-concurrency version of the stored record; 0 before the first write.
    #[serde(skip)]
    pub version: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub phase: Phase,
    pub note: Option<String>,
}

/// A person stopped a deployment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Aborted {
    pub by: String,
    pub reason: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// Its rollout had reached the target before it could be stopped, and it was handed to
    /// the rollback (announced once, with `Rollout Failed`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub handed_to_rollback: bool,
}

/// What is asked of an environment: deploy this image.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub image: PinnedImage,
    pub tag: Option<Tag>,
    pub kind: Kind,
    pub pushed_at: OffsetDateTime,
    pub requested_by: Option<String>,
    pub reason: Option<String>,
}

impl Deployment {
    pub fn new(app: AppName, environment: EnvName, request: Request, now: OffsetDateTime) -> Self {
        Self {
            id: DeploymentId::new(now),
            app,
            environment,
            image: request.image,
            tag: request.tag,
            kind: request.kind,
            phase: Phase::Requested,
            reason: request.reason,
            pushed_at: request.pushed_at,
            created_at: now,
            updated_at: now,
            target_ref: None,
            target_before: None,
            restore: None,
            rollback_of: None,
            rolled_back_by: None,
            requested_by: request.requested_by,
            previous: None,
            aborted: None,
            retry_at: None,
            watch_since: None,
            watch_until: None,
            history: vec![HistoryEntry {
                at: now,
                phase: Phase::Requested,
                note: None,
            }],
            version: 0,
        }
    }

    pub fn digest(&self) -> &Digest {
        &self.image.digest
    }

    /// Applies one lifecycle step; a repeated step changes nothing. A note longer than
    /// `MAX_NOTE` is cut short, so no record or event outgrows its store.
    pub fn apply(
        &mut self,
        step: Step,
        now: OffsetDateTime,
        note: Option<String>,
    ) -> Result<Outcome, InvalidTransition> {
        let outcome = transition(self.phase, step)?;
        if let Outcome::Changed(next) = outcome {
            let note = note.map(|n| bounded(&n));
            self.phase = next;
            self.updated_at = now;
            self.retry_at = None;
            if note.is_some() {
                self.reason = note.clone();
            }
            self.history.push(HistoryEntry {
                at: now,
                phase: next,
                note,
            });
        }
        Ok(outcome)
    }
}

/// The longest note a step records: a failed host's last lines of output fit.
pub const MAX_NOTE: usize = 2_000;

/// `text`, cut to `MAX_NOTE` characters when longer, saying so.
pub fn bounded(text: &str) -> String {
    bounded_to(text, MAX_NOTE)
}

/// `text`, cut to `max` characters when longer, saying so.
pub fn bounded_to(text: &str, max: usize) -> String {
    let length = text.chars().count();
    if length <= max {
        return text.to_owned();
    }
    let kept: String = text.chars().take(max).collect();
    format!("{kept}… (cut from {length} characters)")
}
