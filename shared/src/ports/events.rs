//! Publishing lifecycle events.

use async_trait::async_trait;

use super::CallError;
use crate::domain::LifecycleEvent;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("{0}")]
    Throttled(#[source] CallError),
    /// Some entries were not accepted (EventBridge says so per entry; trying again may do).
    #[error("{failed} of {total} events were not accepted: {reason}")]
    Rejected {
        failed: usize,
        total: usize,
        reason: String,
    },
    #[error("{0}")]
    Transient(#[source] CallError),
    #[error("{0}")]
    Refused(#[source] CallError),
    /// An event pushdeploy could not encode: its own fault.
    #[error("{0}")]
    Unencodable(String),
}

super::from_call!(PublishError);

/// Puts lifecycle events on the application's bus, in order.
#[async_trait]
pub trait EventPublisher: Send + Sync {
    async fn publish(&self, events: &[LifecycleEvent]) -> Result<(), PublishError>;
}
