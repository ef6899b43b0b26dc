//! The image registry (ECR): tags to digests, whether a digest still exists, the
//! environment tags, and the listing and deleting the janitor does.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::CallError;
use crate::domain::platform::ImagePlatforms;
use crate::domain::retention::StoredImage;
use crate::domain::scan::Counts;
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
    #[error("{0}")]
    Throttled(#[source] CallError),
    #[error("{0}")]
    Transient(#[source] CallError),
    #[error("{0}")]
    Refused(#[source] CallError),
    /// The registry answered something that cannot be used.
    #[error("{0}")]
    Unreadable(String),
}

super::from_call!(RegistryError);

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

    /// The image's vulnerability scan, as ECR has it now (`DescribeImageScanFindings`).
    async fn scan(
        &self,
        repository: &Repository,
        digest: &Digest,
    ) -> Result<ScanState, RegistryError>;

    /// What the image is built for: an image index's platforms, or a single image's config's
    /// (`BatchGetImage`, then the config blob through `GetDownloadUrlForLayer`).
    /// `NotFound` when the image is no longer in the repository.
    async fn platforms(
        &self,
        repository: &Repository,
        digest: &Digest,
    ) -> Result<ImagePlatforms, RegistryError>;
}

/// What ECR knows of an image's scan.
#[derive(Debug, Clone, PartialEq)]
pub enum ScanState {
    /// Findings are there (basic scanning `COMPLETE`, or enhanced scanning `ACTIVE`).
    Complete(Counts),
    /// No findings to read (yet): the scan's status as ECR names it (`IN_PROGRESS`,
    /// `PENDING`, `FAILED`, `UNSUPPORTED_IMAGE`, …), or `NOT_SCANNED`.
    NoResult(String),
}

/// One image as a repository listing gives it.
#[derive(Debug, Clone, PartialEq)]
pub struct ListedImage {
    pub image: StoredImage,
    /// An image index (manifest list): its manifests are fetched before deciding.
    pub is_index: bool,
}

/// One page of a repository listing.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ImagePage {
    pub images: Vec<ListedImage>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<String>,
}

/// An image the registry did not delete, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeleteFailure {
    pub digest: Digest,
    pub reason: String,
}

/// Listing and deleting a repository's images, for the janitor.
#[async_trait]
pub trait ImageCatalog: Send + Sync {
    /// At most `MAX_PAGE` images from where `next` says (the start when `None`).
    async fn list_page(
        &self,
        repository: &Repository,
        next: Option<String>,
    ) -> Result<ImagePage, RegistryError>;

    /// The manifests each of these image indexes lists (at most `MAX_BATCH` digests).
    async fn index_children(
        &self,
        repository: &Repository,
        indexes: &[Digest],
    ) -> Result<Vec<(Digest, Vec<Digest>)>, RegistryError>;

    /// Deletes at most `MAX_BATCH` images; an image already gone counts as deleted.
    async fn delete(
        &self,
        repository: &Repository,
        digests: &[Digest],
    ) -> Result<Vec<DeleteFailure>, RegistryError>;
}

/// ECR accepts at most this many image ids per batch call.
pub const MAX_BATCH: usize = 100;
/// ECR lists at most this many images per page.
pub const MAX_PAGE: usize = 1000;

/// What moving an environment's tag did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TagMove {
    Moved,
    /// The tag already named this digest.
    AlreadyThere,
    /// The repository's tags are immutable and the tag names another image.
    Immutable,
}

/// Points a tag at a digest, so the registry shows what runs where.
#[async_trait]
pub trait TagWriter: Send + Sync {
    async fn move_tag(
        &self,
        repository: &Repository,
        digest: &Digest,
        tag: &Tag,
    ) -> Result<TagMove, RegistryError>;
}
