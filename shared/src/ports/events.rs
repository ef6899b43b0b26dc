//! Publishing lifecycle events.

use async_trait::async_trait;

use super::BoxError;
use crate::domain::LifecycleEvent;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("the event bus throttled the request")]
    Throttled(#[source] BoxError),
    #[error("{failed} of {total} events were not accepted: {reason}")]
    Rejected {
        failed: usize,
        total: usize,
        reason: String,
    },
    #[error("could not reach the event bus")]
    Transient(#[source] BoxError),
    #[error("the event bus refused the request: {0}")]
    Invalid(String, #[source] BoxError),
}

/// Puts lifecycle events on the application's bus, in order.
#[async_trait]
pub trait EventPublisher: Send + Sync {
    async fn publish(&self, events: &[LifecycleEvent]) -> Result<(), PublishError>;
}
