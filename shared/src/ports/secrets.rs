//! Secrets the functions read at run time: webhook URLs.

use async_trait::async_trait;

use super::CallError;
use crate::domain::config::SecretRef;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Throttled(#[source] CallError),
    #[error("{0}")]
    Transient(#[source] CallError),
    #[error("{0}")]
    Refused(#[source] CallError),
}

super::from_call!(SecretError);

#[async_trait]
pub trait SecretSource: Send + Sync {
    /// The secret's value, decrypted.
    async fn read(&self, secret: &SecretRef) -> Result<String, SecretError>;
}
