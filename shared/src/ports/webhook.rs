//! Posting a JSON message to a webhook.

use std::time::Duration;

use crate::domain::config::ChannelKind;
use crate::domain::notice::Message;
use async_trait::async_trait;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WebhookError {
    /// The endpoint answered with an error status; 429 and 5xx are worth retrying.
    #[error("the webhook answered {status}")]
    Status { status: u16 },
    #[error("the webhook did not answer within {0:?}")]
    Timeout(Duration),
    #[error("could not reach the webhook: {0}")]
    Unreachable(String),
}

impl WebhookError {
    pub fn is_retryable(&self) -> bool {
        match self {
            WebhookError::Status { status } => *status == 429 || *status >= 500,
            WebhookError::Timeout(_) | WebhookError::Unreachable(_) => true,
        }
    }
}

#[async_trait]
pub trait Webhook: Send + Sync {
    /// Posts `message` in the shape `kind` of channel takes.
    async fn post(
        &self,
        url: &str,
        kind: ChannelKind,
        message: &Message,
        timeout: Duration,
    ) -> Result<(), WebhookError>;
}
