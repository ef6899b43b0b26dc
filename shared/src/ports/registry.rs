//! The image registry (ECR): tags to digests, and whether a digest still exists.

use async_trait::async_trait;
use time::OffsetDateTime;

use super::BoxError;
use crate::domain::{Digest, PinnedImage, Repository, Tag};

#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedImage {
    pub image: PinnedImage,
    pub tags: Vec<Tag>,
    pub pushed_at: Option<OffsetDateTime>,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{0}")]
    NotFound(String),
    #[error("the registry throttled the request")]
    Throttled(#[source] BoxError),
    #[error("could not reach the registry")]
    Transient(#[source] BoxError),
    #[error("the registry refused the request: {0}")]
    Invalid(String, #[source] BoxError),
}

#[async_trait]
pub trait ImageRegistry: Send + Sync {
    /// The digest a tag points at now. `NotFound` when the repository or tag does not exist.
    async fn resolve_tag(
        &self,
        repository: &Repository,
        tag: &Tag,
    ) -> Result<ResolvedImage, RegistryError>;

    /// The image with this digest. `NotFound` when it is no longer in the repository.
    async fn find_digest(
        &self,
        repository: &Repository,
        digest: &Digest,
    ) -> Result<ResolvedImage, RegistryError>;
}
