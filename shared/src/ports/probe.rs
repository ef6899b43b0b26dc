//! HTTP requests for smoke checks.

use std::time::Duration;

use async_trait::async_trait;

/// What a smoke check needs from a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeResponse {
    pub status: u16,
    /// The start of the body (implementations cap how much they read).
    pub body: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    #[error("no response within {0:?}")]
    Timeout(Duration),
    #[error("could not connect: {0}")]
    Connect(String),
    #[error("request failed: {0}")]
    Other(String),
}

/// Sends one GET request.
#[async_trait]
pub trait HttpProbe: Send + Sync {
    async fn get(&self, url: &str, timeout: Duration) -> Result<ProbeResponse, ProbeError>;
}
