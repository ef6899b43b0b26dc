//! The configuration read from a local file, for local runs. Read on every load, so that
//! editing the file takes effect at once.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;

use crate::domain::Config;
use crate::ports::{CallError, ConfigLoadError, ConfigSource};

pub struct FileConfig {
    path: PathBuf,
}

impl FileConfig {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }
}

#[async_trait]
impl ConfigSource for FileConfig {
    async fn load(&self) -> Result<Arc<Config>, ConfigLoadError> {
        let origin = format!("configuration file {}", self.path.display());
        let text = tokio::fs::read_to_string(&self.path)
            .await
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => ConfigLoadError::NotFound(origin.clone()),
                _ => ConfigLoadError::Unavailable {
                    origin: origin.clone(),
                    retryable: false,
                    source: CallError::new("read", e.to_string(), Box::new(e)),
                },
            })?;
        Config::from_yaml(&text)
            .map(Arc::new)
            .map_err(|source| ConfigLoadError::Invalid { origin, source })
    }
}
