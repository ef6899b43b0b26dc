//! Secrets the functions read at run time: webhook URLs.

use async_trait::async_trait;

use super::BoxError;
use crate::domain::config::SecretRef;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("{0}")]
    NotFound(String),
    #[error("reading {0} was throttled")]
    Throttled(String, #[source] BoxError),
    #[error("could not reach the store of {0}")]
    Transient(String, #[source] BoxError),
    #[error("{0}")]
    Refused(String, #[source] BoxError),
}

#[async_trait]
pub trait SecretSource: Send + Sync {
    /// The secret's value, decrypted.
    async fn read(&self, secret: &SecretRef) -> Result<String, SecretError>;
}
