//! Where the configuration document comes from.

use std::sync::Arc;

use async_trait::async_trait;

use super::CallError;
use crate::domain::{Config, ConfigError};

#[derive(Debug, thiserror::Error)]
pub enum ConfigLoadError {
    /// The document exists but is not a valid configuration: fix the document.
    #[error("{origin}: {source}")]
    Invalid {
        origin: String,
        #[source]
        source: ConfigError,
    },
    /// The parameter or file does not exist.
    #[error("configuration not found: {0}")]
    NotFound(String),
    #[error("could not read the configuration from {origin}")]
    Unavailable {
        origin: String,
        retryable: bool,
        #[source]
        source: CallError,
    },
}

/// Supplies the current configuration; implementations cache it per container.
#[async_trait]
pub trait ConfigSource: Send + Sync {
    async fn load(&self) -> Result<Arc<Config>, ConfigLoadError>;
}
