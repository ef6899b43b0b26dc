//! The use cases, written against the ports only: what happens on a push, a status
//! change, a finished rollout, a failure, and a person's request.

pub mod control;
pub mod deploy;
pub mod janitor;
pub mod notify;
pub mod promote;
pub mod rollback;
pub mod rollout;
pub mod track;
pub mod verify;

use std::sync::Arc;

use crate::ports::{
    Clock, ConfigLoadError, ConfigSource, EventPublisher, PublishError, RegistryError, StateStore,
    StoreError, TargetError,
};

pub use control::Control;
pub use deploy::Deployer;
pub use janitor::Janitor;
pub use notify::Notifier;
pub use rollback::Rollback;
pub use track::Tracker;
pub use verify::Verifier;

/// How often a read-decide-write is redone when another writer got there first.
pub(crate) const MAX_ATTEMPTS: usize = 8;

/// Why a use case did not complete. Input problems are the caller's to fix; the rest are
/// failures of a dependency, retryable or not.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The request or event is malformed or names something not configured.
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with what is happening now (a rollout in flight, …).
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Config(#[from] ConfigLoadError),
    #[error("state table: {0}")]
    Store(#[from] StoreError),
    #[error("image registry: {0}")]
    Registry(#[from] RegistryError),
    #[error("target: {0}")]
    Target(#[from] TargetError),
    #[error("event bus: {0}")]
    Events(#[from] PublishError),
    /// Part of the work could not be done now; running again finishes it.
    #[error("{0}")]
    Incomplete(String),
}

impl ServiceError {
    /// Whether trying again later may succeed without anyone changing anything.
    pub fn is_retryable(&self) -> bool {
        match self {
            ServiceError::Invalid(_) | ServiceError::NotFound(_) | ServiceError::Conflict(_) => {
                false
            }
            ServiceError::Config(ConfigLoadError::Unavailable { retryable, .. }) => *retryable,
            ServiceError::Config(_) => false,
            ServiceError::Store(e) => matches!(
                e,
                StoreError::Throttled(_) | StoreError::Transient(_) | StoreError::Conflict(_)
            ),
            ServiceError::Registry(e) => {
                matches!(e, RegistryError::Throttled(_) | RegistryError::Transient(_))
            }
            ServiceError::Target(e) => e.is_retryable(),
            ServiceError::Events(e) => !matches!(e, PublishError::Invalid(..)),
            ServiceError::Incomplete(_) => true,
        }
    }

    /// A stable name for the kind of failure, for logs, retries and dead-letter routing.
    pub fn error_type(&self) -> &'static str {
        if self.is_retryable() {
            return "Retryable";
        }
        match self {
            ServiceError::Invalid(_) => "NonRetryable.InvalidInput",
            ServiceError::NotFound(_) => "NonRetryable.NotFound",
            ServiceError::Conflict(_) => "NonRetryable.Conflict",
            ServiceError::Config(_) => "NonRetryable.Configuration",
            _ => "NonRetryable.Dependency",
        }
    }
}

/// The dependencies every use case shares.
#[derive(Clone)]
pub struct Core {
    pub store: Arc<dyn StateStore>,
    pub events: Arc<dyn EventPublisher>,
    pub config: Arc<dyn ConfigSource>,
    pub clock: Arc<dyn Clock>,
}

pub(crate) fn too_busy(what: &str) -> ServiceError {
    ServiceError::Store(StoreError::Conflict(format!(
        "{what} (gave up after {MAX_ATTEMPTS} attempts)"
    )))
}
