//! Durable state: per-environment state and deployment records, written with optimistic
//! concurrency so that two functions never both believe they hold an environment.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::CallError;
use crate::domain::{
    AppName, Deployment, DeploymentId, EnvName, EnvState, EventDetail, EventType, LifecycleEvent,
};

/// A lifecycle event recorded with the state change it announces, kept until it has been
/// delivered: whoever runs next (the same function, a retry, the reconciler) delivers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxEntry {
    /// A ULID: entries sort by when they were recorded, and the id travels in the event's
    /// detail (`event_id`), so a consumer can tell a delivery repeated from a new event.
    pub id: String,
    pub detail_type: EventType,
    pub detail: EventDetail,
}

impl OutboxEntry {
    pub fn event(&self) -> LifecycleEvent {
        let mut detail = self.detail.clone();
        detail.event_id = Some(self.id.clone());
        LifecycleEvent {
            detail_type: self.detail_type,
            detail: crate::domain::Detail::Deployment(Box::new(detail)),
        }
    }

    /// When it was recorded, from its id.
    pub fn recorded_at(&self) -> Option<time::OffsetDateTime> {
        let ulid = ulid::Ulid::from_string(&self.id).ok()?;
        let ms = i128::from(ulid.timestamp_ms());
        time::OffsetDateTime::from_unix_timestamp_nanos(ms * 1_000_000).ok()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(String),
    /// A record changed since it was read; read it again and redo the decision.
    #[error("{0} changed concurrently")]
    Conflict(String),
    /// The event was already handled: this is a repeated delivery.
    #[error("event {0} was already handled")]
    Duplicate(String),
    /// Another invocation claimed the event for a while and has not finished with it.
    #[error("event {0} is being handled by another invocation")]
    Held(String),
    #[error("{0}")]
    Throttled(#[source] CallError),
    #[error("{0}")]
    Transient(#[source] CallError),
    #[error("{0}")]
    Refused(#[source] CallError),
    #[error("stored record {key} is unreadable: {message}")]
    Corrupt { key: String, message: String },
    /// A request pushdeploy could not build: its own fault.
    #[error("{0}")]
    Internal(String),
}

super::from_call!(StoreError);

/// Writes that succeed or fail together. Every record is written at its `version + 1`, on
/// the condition that the stored version is still `version` (absent when 0). On success the
/// versions of the records passed in are advanced, so they can be written again.
#[derive(Default)]
pub struct Commit<'a> {
    pub env: Option<&'a mut EnvState>,
    pub deployments: Vec<&'a mut Deployment>,
    /// Also index these deployments by their `target_ref`, for status events to find them.
    pub link_target_refs: bool,
    /// Claims an event id; fails with `Duplicate` when it was claimed before.
    pub claim_event: Option<String>,
    /// Holds the claim only for a while: a claim not settled by its end may be taken again
    /// (its invocation stopped), and one still held fails with `Held`.
    pub claim_lease: Option<ClaimLease>,
    /// Makes a claim held `until` a time permanent: its work is done.
    pub settle_event: Option<String>,
    /// Releases an earlier claim so a retried delivery is handled again.
    pub forget_event: Option<String>,
    /// Lifecycle events announcing this change, recorded with it (each in the outbox of the
    /// environment its detail names).
    pub outbox: Vec<OutboxEntry>,
}

impl<'a> Commit<'a> {
    pub fn env(env: &'a mut EnvState) -> Self {
        Self {
            env: Some(env),
            ..Self::default()
        }
    }

    pub fn deployment(deployment: &'a mut Deployment) -> Self {
        Self {
            deployments: vec![deployment],
            ..Self::default()
        }
    }

    pub fn with(mut self, deployment: &'a mut Deployment) -> Self {
        self.deployments.push(deployment);
        self
    }

    pub fn claiming(mut self, event: Option<String>) -> Self {
        self.claim_event = event;
        self
    }
}

/// A claim taken `now`, held until `until` unless settled before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimLease {
    pub now: time::OffsetDateTime,
    pub until: time::OffsetDateTime,
}

#[async_trait]
pub trait StateStore: Send + Sync {
    /// The state of an environment; an empty state at version 0 if none was written yet.
    async fn env_state(&self, app: &AppName, env: &EnvName) -> Result<EnvState, StoreError>;

    async fn deployment(
        &self,
        app: &AppName,
        env: &EnvName,
        id: &DeploymentId,
    ) -> Result<Deployment, StoreError>;

    /// The deployment a target handle (an SSM command id, …) belongs to.
    async fn find_by_target_ref(&self, target_ref: &str) -> Result<Option<Deployment>, StoreError>;

    /// The latest deployments of an environment, newest first.
    async fn recent_deployments(
        &self,
        app: &AppName,
        env: &EnvName,
        limit: usize,
    ) -> Result<Vec<Deployment>, StoreError>;

    async fn commit(&self, commit: Commit<'_>) -> Result<(), StoreError>;

    /// The events recorded for an environment and not yet delivered, oldest first.
    async fn undelivered(
        &self,
        app: &AppName,
        env: &EnvName,
    ) -> Result<Vec<OutboxEntry>, StoreError>;

    /// Removes delivered entries from an environment's outbox. Returns those this call
    /// removed: another deliverer may have removed some first.
    async fn delivered(
        &self,
        app: &AppName,
        env: &EnvName,
        ids: &[String],
    ) -> Result<Vec<String>, StoreError>;
}
