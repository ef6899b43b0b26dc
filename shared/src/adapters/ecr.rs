//! The image registry on Amazon ECR: `DescribeImages` by tag or by digest; the listing,
//! manifests and batch deletes of the janitor; `PutImage` to move an environment's tag;
//! an image's platforms from its manifest (`BatchGetImage`) or its config blob
//! (`GetDownloadUrlForLayer`, then one HTTPS GET of the URL ECR signs).

use async_trait::async_trait;
use aws_sdk_ecr::Client;
use aws_sdk_ecr::error::SdkError;
use aws_sdk_ecr::operation::describe_image_scan_findings::DescribeImageScanFindingsError;
use aws_sdk_ecr::operation::describe_images::DescribeImagesError;
use aws_sdk_ecr::types::ImageIdentifier;
use time::OffsetDateTime;

use super::aws::failed;
use crate::domain::platform::{self, ImagePlatforms, Platform};
use crate::domain::retention::StoredImage;
use crate::domain::scan::Counts;
use crate::domain::{Digest, PinnedImage, Registry, Repository, Tag};
use crate::ports::{
    CallError, DeleteFailure, ImageCatalog, ImagePage, ImageRegistry, ListedImage, MAX_PAGE,
    RegistryError, ResolvedImage, ScanState, TagMove, TagWriter,
};

/// Media types of an image index (a multi-platform image).
const INDEX_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];
/// Every manifest type `BatchGetImage` should return as stored.
const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
];

/// The most of a config blob read: configs are a few kilobytes.
const MAX_CONFIG: usize = 4 * 1024 * 1024;

pub struct EcrRegistry {
    client: Client,
    /// Reads config blobs from the URLs `GetDownloadUrlForLayer` gives.
    blobs: reqwest::Client,
}

impl EcrRegistry {
    pub fn new(client: Client) -> Self {
        let blobs = reqwest::Client::builder()
            .user_agent(concat!("pushdeploy/", env!("CARGO_PKG_VERSION")))
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .unwrap_or_default();
        Self { client, blobs }
    }

    async fn describe(
        &self,
        repository: &Repository,
        id: ImageIdentifier,
        what: String,
    ) -> Result<ResolvedImage, RegistryError> {
        let out = self
            .client
            .describe_images()
            .repository_name(repository.as_str())
            .image_ids(id)
            .send()
            .await
            .map_err(|e| map_error(e, repository, &what))?;
        let detail = out.image_details().first().ok_or_else(|| {
            RegistryError::NotFound(format!("{what} not found in repository {repository}"))
        })?;
        let invalid = RegistryError::Unreadable;
        let digest = Digest::parse(detail.image_digest().unwrap_or_default())
            .map_err(|e| invalid(format!("ECR returned an unusable digest: {e}")))?;
        let region = self
            .client
            .config()
            .region()
            .map(|r| r.as_ref().to_owned())
            .unwrap_or_default();
        let registry = Registry::ecr(detail.registry_id().unwrap_or_default(), &region)
            .map_err(|e| invalid(format!("ECR returned an unusable registry id: {e}")))?;
        let tags = detail
            .image_tags()
            .iter()
            .filter_map(|t| Tag::parse(t).ok())
            .collect();
        let pushed_at = detail
            .image_pushed_at()
            .and_then(|t| OffsetDateTime::from_unix_timestamp_nanos(t.as_nanos()).ok());
        Ok(ResolvedImage {
            image: PinnedImage {
                registry,
                repository: repository.clone(),
                digest,
            },
            tags,
            pushed_at,
        })
    }
}

fn map_error(
    error: SdkError<DescribeImagesError, aws_smithy_runtime_api::http::Response>,
    repository: &Repository,
    what: &str,
) -> RegistryError {
    if let SdkError::ServiceError(context) = &error {
        match context.err() {
            DescribeImagesError::RepositoryNotFoundException(_) => {
                return RegistryError::NotFound(format!(
                    "repository {repository} does not exist in ECR"
                ));
            }
            DescribeImagesError::ImageNotFoundException(_) => {
                return RegistryError::NotFound(format!(
                    "{what} not found in repository {repository}"
                ));
            }
            _ => {}
        }
    }
    failed(error, "DescribeImages")
}

#[async_trait]
impl ImageRegistry for EcrRegistry {
    async fn resolve_tag(
        &self,
        repository: &Repository,
        tag: &Tag,
    ) -> Result<ResolvedImage, RegistryError> {
        let id = ImageIdentifier::builder().image_tag(tag.as_str()).build();
        self.describe(repository, id, format!("tag {tag}")).await
    }

    async fn find_digest(
        &self,
        repository: &Repository,
        digest: &Digest,
    ) -> Result<ResolvedImage, RegistryError> {
        let id = ImageIdentifier::builder()
            .image_digest(digest.as_str())
            .build();
        self.describe(repository, id, format!("image {digest}"))
            .await
    }

    async fn scan(
        &self,
        repository: &Repository,
        digest: &Digest,
    ) -> Result<ScanState, RegistryError> {
        let id = ImageIdentifier::builder()
            .image_digest(digest.as_str())
            .build();
        // One result is enough: the severity counts cover every finding.
        let out = self
            .client
            .describe_image_scan_findings()
            .repository_name(repository.as_str())
            .image_id(id)
            .max_results(1)
            .send()
            .await;
        let out = match out {
            Ok(out) => out,
            Err(SdkError::ServiceError(e))
                if matches!(
                    e.err(),
                    DescribeImageScanFindingsError::ScanNotFoundException(_)
                ) =>
            {
                return Ok(ScanState::NoResult("NOT_SCANNED".into()));
            }
            Err(SdkError::ServiceError(e))
                if matches!(
                    e.err(),
                    DescribeImageScanFindingsError::ImageNotFoundException(_)
                        | DescribeImageScanFindingsError::RepositoryNotFoundException(_)
                ) =>
            {
                return Err(RegistryError::NotFound(format!(
                    "image {digest} not found in repository {repository}"
                )));
            }
            Err(e) => return Err(failed(e, "DescribeImageScanFindings")),
        };
        let status = out
            .image_scan_status()
            .and_then(|s| s.status())
            .map(|s| s.as_str().to_owned())
            .unwrap_or_else(|| "UNKNOWN".into());
        if !matches!(status.as_str(), "COMPLETE" | "ACTIVE") {
            return Ok(ScanState::NoResult(status));
        }
        let counts = out
            .image_scan_findings()
            .and_then(|f| f.finding_severity_counts())
            .map(|counts| {
                Counts::from_aws(
                    counts
                        .iter()
                        .map(|(severity, n)| (severity.as_str(), u64::try_from(*n).unwrap_or(0))),
                )
            })
            .unwrap_or_default();
        Ok(ScanState::Complete(counts))
    }

    async fn platforms(
        &self,
        repository: &Repository,
        digest: &Digest,
    ) -> Result<ImagePlatforms, RegistryError> {
        let (manifest, media_type) = self.manifest(repository, digest).await?;
        let manifest: serde_json::Value = serde_json::from_str(&manifest).map_err(|e| {
            RegistryError::Unreadable(format!("the manifest of {digest} is not JSON: {e}"))
        })?;
        let media_type = media_type
            .or_else(|| manifest["mediaType"].as_str().map(str::to_owned))
            .unwrap_or_default();
        if INDEX_TYPES.contains(&media_type.as_str()) || manifest.get("manifests").is_some() {
            return Ok(match platform::index_platforms(&manifest) {
                listed if listed.is_empty() => {
                    ImagePlatforms::Unknown("its image index names no platform".into())
                }
                listed => ImagePlatforms::Known(listed),
            });
        }
        if manifest["schemaVersion"] == 1 {
            // Schema 1 manifests name the architecture; they were Linux-only.
            return Ok(match manifest["architecture"].as_str() {
                Some(arch) => ImagePlatforms::Known(vec![Platform::new("linux", arch, None)]),
                None => ImagePlatforms::Unknown("its manifest names no architecture".into()),
            });
        }
        let config = &manifest["config"];
        let config_type = config["mediaType"].as_str().unwrap_or_default();
        if !CONFIG_TYPES.contains(&config_type) {
            return Ok(ImagePlatforms::Unknown(format!(
                "it is not a container image (its config is {config_type:?})"
            )));
        }
        let Some(config_digest) = config["digest"].as_str() else {
            return Ok(ImagePlatforms::Unknown(
                "its manifest names no config".into(),
            ));
        };
        self.config_platform(repository, config_digest).await
    }
}

/// Media types of a container image's config, which names its platform.
const CONFIG_TYPES: &[&str] = &[
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
];

impl EcrRegistry {
    /// The platform an image's config blob names, read through the URL ECR signs for it.
    async fn config_platform(
        &self,
        repository: &Repository,
        config_digest: &str,
    ) -> Result<ImagePlatforms, RegistryError> {
        use aws_sdk_ecr::operation::get_download_url_for_layer::GetDownloadUrlForLayerError;
        let out = self
            .client
            .get_download_url_for_layer()
            .repository_name(repository.as_str())
            .layer_digest(config_digest)
            .send()
            .await;
        let url = match out {
            Ok(out) => out.download_url().unwrap_or_default().to_owned(),
            Err(SdkError::ServiceError(e))
                if matches!(
                    e.err(),
                    GetDownloadUrlForLayerError::LayersNotFoundException(_)
                        | GetDownloadUrlForLayerError::LayerInaccessibleException(_)
                ) =>
            {
                return Ok(ImagePlatforms::Unknown(format!(
                    "ECR holds no readable config blob {config_digest} for it"
                )));
            }
            Err(e) => return Err(failed(e, "GetDownloadUrlForLayer")),
        };
        // The URL is signed with the function's session token: no error message, and so no
        // log line, may repeat it.
        let lost = |e: reqwest::Error| {
            RegistryError::Transient(CallError::said(
                "GET config blob",
                format!(
                    "reading config blob {config_digest}: {}",
                    crate::services::error::chain(&e.without_url())
                ),
            ))
        };
        let mut response = self.blobs.get(&url).send().await.map_err(lost)?;
        let status = response.status();
        if status.is_server_error() {
            return Err(RegistryError::Transient(CallError::said(
                "GET config blob",
                format!("reading config blob {config_digest}: HTTP {status}"),
            )));
        }
        if !status.is_success() {
            return Err(RegistryError::Unreadable(format!(
                "reading config blob {config_digest}: HTTP {status}"
            )));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(lost)? {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_CONFIG {
                return Err(RegistryError::Unreadable(format!(
                    "config blob {config_digest} is larger than {MAX_CONFIG} bytes"
                )));
            }
        }
        let config: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
            RegistryError::Unreadable(format!("config blob {config_digest} is not JSON: {e}"))
        })?;
        Ok(match platform::config_platform(&config) {
            Some(p) => ImagePlatforms::Known(vec![p]),
            None => ImagePlatforms::Unknown(format!(
                "its config {config_digest} names no OS or architecture"
            )),
        })
    }
}

impl EcrRegistry {
    /// The stored manifest of one image, with its media type; `NotFound` when it is gone.
    async fn manifest(
        &self,
        repository: &Repository,
        digest: &Digest,
    ) -> Result<(String, Option<String>), RegistryError> {
        let (_, manifest, media_type) = self
            .manifests(repository, std::slice::from_ref(digest))
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| {
                RegistryError::NotFound(format!(
                    "image {digest} not found in repository {repository}"
                ))
            })?;
        Ok((manifest, media_type))
    }

    /// The stored manifests of these digests, with their media types.
    async fn manifests(
        &self,
        repository: &Repository,
        digests: &[Digest],
    ) -> Result<Vec<(Digest, String, Option<String>)>, RegistryError> {
        let ids = digests
            .iter()
            .map(|d| ImageIdentifier::builder().image_digest(d.as_str()).build())
            .collect();
        let out = self
            .client
            .batch_get_image()
            .repository_name(repository.as_str())
            .set_image_ids(Some(ids))
            .set_accepted_media_types(Some(
                MANIFEST_TYPES.iter().map(|t| (*t).to_owned()).collect(),
            ))
            .send()
            .await
            .map_err(|e| failed(e, "BatchGetImage"))?;
        Ok(out
            .images()
            .iter()
            .filter_map(|image| {
                let digest = Digest::parse(image.image_id()?.image_digest()?).ok()?;
                let manifest = image.image_manifest()?.to_owned();
                Some((
                    digest,
                    manifest,
                    image.image_manifest_media_type().map(str::to_owned),
                ))
            })
            .collect())
    }
}

#[async_trait]
impl ImageCatalog for EcrRegistry {
    async fn list_page(
        &self,
        repository: &Repository,
        next: Option<String>,
    ) -> Result<ImagePage, RegistryError> {
        let out = self
            .client
            .describe_images()
            .repository_name(repository.as_str())
            .max_results(MAX_PAGE as i32)
            .set_next_token(next)
            .send()
            .await
            .map_err(|e| map_error(e, repository, "images"))?;
        let images = out
            .image_details()
            .iter()
            .filter_map(|detail| {
                // An image whose digest or tags cannot be read is left out of the listing,
                // so it can never be chosen for deletion.
                let digest = Digest::parse(detail.image_digest()?).ok()?;
                let tags = detail
                    .image_tags()
                    .iter()
                    .map(|t| Tag::parse(t))
                    .collect::<Result<Vec<_>, _>>()
                    .ok()?;
                let pushed_at =
                    OffsetDateTime::from_unix_timestamp_nanos(detail.image_pushed_at()?.as_nanos())
                        .ok()?;
                let is_index = detail
                    .image_manifest_media_type()
                    .or(detail.artifact_media_type())
                    .is_some_and(|t| INDEX_TYPES.contains(&t));
                Some(ListedImage {
                    image: StoredImage {
                        digest,
                        tags,
                        pushed_at,
                        children: Vec::new(),
                    },
                    is_index,
                })
            })
            .collect();
        Ok(ImagePage {
            images,
            next: out.next_token().map(str::to_owned),
        })
    }

    async fn index_children(
        &self,
        repository: &Repository,
        indexes: &[Digest],
    ) -> Result<Vec<(Digest, Vec<Digest>)>, RegistryError> {
        #[derive(serde::Deserialize)]
        struct Index {
            #[serde(default)]
            manifests: Vec<Entry>,
        }
        #[derive(serde::Deserialize)]
        struct Entry {
            digest: String,
        }
        if indexes.is_empty() {
            return Ok(Vec::new());
        }
        self.manifests(repository, indexes)
            .await?
            .into_iter()
            .map(|(digest, manifest, _)| {
                let index: Index = serde_json::from_str(&manifest).map_err(|e| {
                    RegistryError::Unreadable(format!(
                        "the manifest of {digest} is not a readable image index: {e}"
                    ))
                })?;
                let children = index
                    .manifests
                    .iter()
                    .filter_map(|m| Digest::parse(&m.digest).ok())
                    .collect();
                Ok((digest, children))
            })
            .collect()
    }

    async fn delete(
        &self,
        repository: &Repository,
        digests: &[Digest],
    ) -> Result<Vec<DeleteFailure>, RegistryError> {
        if digests.is_empty() {
            return Ok(Vec::new());
        }
        let ids = digests
            .iter()
            .map(|d| ImageIdentifier::builder().image_digest(d.as_str()).build())
            .collect();
        let out = self
            .client
            .batch_delete_image()
            .repository_name(repository.as_str())
            .set_image_ids(Some(ids))
            .send()
            .await
            .map_err(|e| failed(e, "BatchDeleteImage"))?;
        Ok(out
            .failures()
            .iter()
            .filter(|f| {
                f.failure_code() != Some(&aws_sdk_ecr::types::ImageFailureCode::ImageNotFound)
            })
            .filter_map(|f| {
                let digest = Digest::parse(f.image_id()?.image_digest()?).ok()?;
                Some(DeleteFailure {
                    digest,
                    reason: format!(
                        "{}: {}",
                        f.failure_code().map(|c| c.as_str()).unwrap_or("Unknown"),
                        f.failure_reason().unwrap_or_default()
                    ),
                })
            })
            .collect())
    }
}

#[async_trait]
impl TagWriter for EcrRegistry {
    async fn move_tag(
        &self,
        repository: &Repository,
        digest: &Digest,
        tag: &Tag,
    ) -> Result<TagMove, RegistryError> {
        use aws_sdk_ecr::operation::put_image::PutImageError;
        let (manifest, media_type) = self.manifest(repository, digest).await?;
        let result = self
            .client
            .put_image()
            .repository_name(repository.as_str())
            .image_manifest(manifest)
            .set_image_manifest_media_type(media_type)
            .image_digest(digest.as_str())
            .image_tag(tag.as_str())
            .send()
            .await;
        match result {
            Ok(_) => Ok(TagMove::Moved),
            Err(SdkError::ServiceError(context))
                if matches!(context.err(), PutImageError::ImageAlreadyExistsException(_)) =>
            {
                Ok(TagMove::AlreadyThere)
            }
            Err(SdkError::ServiceError(context))
                if matches!(
                    context.err(),
                    PutImageError::ImageTagAlreadyExistsException(_)
                ) =>
            {
                Ok(TagMove::Immutable)
            }
            Err(e) => Err(failed(e, "PutImage")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_ecr::operation::describe_images::DescribeImagesOutput;
    use aws_sdk_ecr::types::ImageDetail;
    use aws_sdk_ecr::types::error::{ImageNotFoundException, RepositoryNotFoundException};
    use aws_smithy_mocks::{RuleMode, mock, mock_client};

    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn repo() -> Repository {
        Repository::parse("acme/web").unwrap()
    }

    #[tokio::test]
    async fn resolves_a_tag_to_the_ecr_registry_and_digest() {
        let rule = mock!(Client::describe_images)
            .match_requests(|r| r.image_ids().first().and_then(|i| i.image_tag()) == Some("v1"))
            .then_output(|| {
                DescribeImagesOutput::builder()
                    .image_details(
                        ImageDetail::builder()
                            .registry_id("123456789012")
                            .repository_name("acme/web")
                            .image_digest(DIGEST)
                            .image_tags("v1")
                            .image_tags("latest")
                            .build(),
                    )
                    .build()
            });
        let client = mock_client!(aws_sdk_ecr, RuleMode::Sequential, [&rule], |c| c
            .region(aws_sdk_ecr::config::Region::new("eu-west-1")));
        let resolved = EcrRegistry::new(client)
            .resolve_tag(&repo(), &Tag::parse("v1").unwrap())
            .await
            .unwrap();
        assert_eq!(
            resolved.image.to_string(),
            format!("123456789012.dkr.ecr.eu-west-1.amazonaws.com/acme/web@{DIGEST}")
        );
        assert_eq!(resolved.tags.len(), 2);
    }

    #[tokio::test]
    async fn a_missing_image_or_repository_is_not_found_with_a_clear_message() {
        let image = mock!(Client::describe_images).then_error(|| {
            DescribeImagesError::ImageNotFoundException(
                ImageNotFoundException::builder().message("nope").build(),
            )
        });
        let repository = mock!(Client::describe_images).then_error(|| {
            DescribeImagesError::RepositoryNotFoundException(
                RepositoryNotFoundException::builder()
                    .message("nope")
                    .build(),
            )
        });
        let registry = EcrRegistry::new(mock_client!(aws_sdk_ecr, [&image, &repository]));
        let digest = Digest::parse(DIGEST).unwrap();
        let err = registry.find_digest(&repo(), &digest).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("image {DIGEST} not found in repository acme/web")
        );
        let err = registry.find_digest(&repo(), &digest).await.unwrap_err();
        assert_eq!(err.to_string(), "repository acme/web does not exist in ECR");
    }

    #[tokio::test]
    async fn a_tag_on_an_immutable_repository_is_reported_not_failed() {
        use aws_sdk_ecr::operation::batch_get_image::BatchGetImageOutput;
        use aws_sdk_ecr::operation::put_image::PutImageError;
        use aws_sdk_ecr::types::Image;
        use aws_sdk_ecr::types::error::ImageTagAlreadyExistsException;
        let get = mock!(Client::batch_get_image).then_output(|| {
            BatchGetImageOutput::builder()
                .images(
                    Image::builder()
                        .image_id(ImageIdentifier::builder().image_digest(DIGEST).build())
                        .image_manifest("{}")
                        .image_manifest_media_type("application/vnd.oci.image.manifest.v1+json")
                        .build(),
                )
                .build()
        });
        let put = mock!(Client::put_image)
            .match_requests(|r| {
                r.image_tag() == Some("production")
                    && r.image_digest() == Some(DIGEST)
                    && r.image_manifest() == Some("{}")
                    && r.image_manifest_media_type()
                        == Some("application/vnd.oci.image.manifest.v1+json")
            })
            .then_error(|| {
                PutImageError::ImageTagAlreadyExistsException(
                    ImageTagAlreadyExistsException::builder()
                        .message("immutable")
                        .build(),
                )
            });
        let registry = EcrRegistry::new(mock_client!(
            aws_sdk_ecr,
            RuleMode::Sequential,
            [&get, &put]
        ));
        let moved = registry
            .move_tag(
                &repo(),
                &Digest::parse(DIGEST).unwrap(),
                &Tag::parse("production").unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(moved, TagMove::Immutable);
    }

    #[tokio::test]
    async fn images_already_gone_count_as_deleted_and_other_failures_are_reported() {
        use aws_sdk_ecr::operation::batch_delete_image::BatchDeleteImageOutput;
        use aws_sdk_ecr::types::{ImageFailure, ImageFailureCode};
        let other = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
        let delete = mock!(Client::batch_delete_image).then_output(move || {
            let failure = |digest: &str, code| {
                ImageFailure::builder()
                    .image_id(ImageIdentifier::builder().image_digest(digest).build())
                    .failure_code(code)
                    .failure_reason("because")
                    .build()
            };
            BatchDeleteImageOutput::builder()
                .failures(failure(DIGEST, ImageFailureCode::ImageNotFound))
                .failures(failure(
                    other,
                    ImageFailureCode::ImageReferencedByManifestList,
                ))
                .build()
        });
        let registry = EcrRegistry::new(mock_client!(aws_sdk_ecr, [&delete]));
        let failures = registry
            .delete(
                &repo(),
                &[
                    Digest::parse(DIGEST).unwrap(),
                    Digest::parse(other).unwrap(),
                ],
            )
            .await
            .unwrap();
        assert_eq!(failures.len(), 1);
        assert_eq!(failures[0].digest.as_str(), other);
        assert_eq!(failures[0].reason, "ImageReferencedByManifestList: because");
    }

    #[tokio::test]
    async fn the_listing_pages_on_marks_indexes_and_leaves_out_what_it_cannot_read() {
        use aws_sdk_ecr::operation::describe_images::DescribeImagesOutput;
        let pushed = aws_smithy_types::DateTime::from_secs(1_700_000_000);
        let list = mock!(Client::describe_images)
            .match_requests(|r| r.next_token() == Some("page-2") && r.max_results() == Some(1000))
            .then_output(move || {
                DescribeImagesOutput::builder()
                    .image_details(
                        ImageDetail::builder()
                            .image_digest(DIGEST)
                            .image_tags("v1")
                            .image_pushed_at(pushed)
                            .image_manifest_media_type("application/vnd.oci.image.index.v1+json")
                            .build(),
                    )
                    // No push time: never a candidate.
                    .image_details(
                        ImageDetail::builder()
                            .image_digest("sha256:2222222222222222222222222222222222222222222222222222222222222222")
                            .build(),
                    )
                    .next_token("page-3")
                    .build()
            });
        let registry = EcrRegistry::new(mock_client!(aws_sdk_ecr, [&list]));
        let page = registry
            .list_page(&repo(), Some("page-2".into()))
            .await
            .unwrap();
        assert_eq!(page.next.as_deref(), Some("page-3"));
        assert_eq!(page.images.len(), 1);
        assert!(page.images[0].is_index);
        assert_eq!(
            page.images[0].image.pushed_at.unix_timestamp(),
            1_700_000_000
        );
    }

    #[tokio::test]
    async fn scan_findings_read_as_counts_and_a_missing_or_unfinished_scan_is_no_result() {
        use aws_sdk_ecr::operation::describe_image_scan_findings::DescribeImageScanFindingsOutput;
        use aws_sdk_ecr::types::error::ScanNotFoundException;
        use aws_sdk_ecr::types::{FindingSeverity, ImageScanFindings, ImageScanStatus, ScanStatus};
        let complete = mock!(Client::describe_image_scan_findings)
            .match_requests(|r| {
                r.repository_name() == Some("acme/web")
                    && r.image_id().and_then(|i| i.image_digest()) == Some(DIGEST)
            })
            .then_output(|| {
                DescribeImageScanFindingsOutput::builder()
                    .image_scan_status(
                        ImageScanStatus::builder()
                            .status(ScanStatus::Complete)
                            .build(),
                    )
                    .image_scan_findings(
                        ImageScanFindings::builder()
                            .finding_severity_counts(FindingSeverity::Critical, 2)
                            .finding_severity_counts(FindingSeverity::Medium, 9)
                            .build(),
                    )
                    .build()
            });
        let clean = mock!(Client::describe_image_scan_findings).then_output(|| {
            DescribeImageScanFindingsOutput::builder()
                .image_scan_status(
                    ImageScanStatus::builder()
                        .status(ScanStatus::Active)
                        .build(),
                )
                .image_scan_findings(ImageScanFindings::builder().build())
                .build()
        });
        let running = mock!(Client::describe_image_scan_findings).then_output(|| {
            DescribeImageScanFindingsOutput::builder()
                .image_scan_status(
                    ImageScanStatus::builder()
                        .status(ScanStatus::InProgress)
                        .build(),
                )
                .build()
        });
        let never = mock!(Client::describe_image_scan_findings).then_error(|| {
            DescribeImageScanFindingsError::ScanNotFoundException(
                ScanNotFoundException::builder().message("no scan").build(),
            )
        });
        let gone = mock!(Client::describe_image_scan_findings).then_error(|| {
            DescribeImageScanFindingsError::ImageNotFoundException(
                ImageNotFoundException::builder().message("gone").build(),
            )
        });
        let client = mock_client!(
            aws_sdk_ecr,
            RuleMode::Sequential,
            [&complete, &clean, &running, &never, &gone],
            |c| c.region(aws_sdk_ecr::config::Region::new("eu-west-1"))
        );
        let ecr = EcrRegistry::new(client);
        let digest = Digest::parse(DIGEST).unwrap();
        let ScanState::Complete(counts) = ecr.scan(&repo(), &digest).await.unwrap() else {
            panic!("a complete scan")
        };
        assert_eq!(counts.to_string(), "critical 2, medium 9");
        assert_eq!(
            ecr.scan(&repo(), &digest).await.unwrap(),
            ScanState::Complete(Counts::default())
        );
        assert_eq!(
            ecr.scan(&repo(), &digest).await.unwrap(),
            ScanState::NoResult("IN_PROGRESS".into())
        );
        assert_eq!(
            ecr.scan(&repo(), &digest).await.unwrap(),
            ScanState::NoResult("NOT_SCANNED".into())
        );
        assert!(matches!(
            ecr.scan(&repo(), &digest).await,
            Err(RegistryError::NotFound(_))
        ));
    }

    /// Serves `body` once over HTTP on loopback, as the URL ECR signs for a blob would;
    /// returns the URL.
    fn serve_once(body: &'static str) -> String {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/blob", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request);
            let answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            stream.write_all(answer.as_bytes()).unwrap();
        });
        url
    }

    #[tokio::test]
    async fn a_config_blob_that_cannot_be_read_is_reported_without_its_signed_url() {
        use aws_sdk_ecr::operation::get_download_url_for_layer::GetDownloadUrlForLayerOutput;
        use serde_json::json;
        const CONFIG: &str =
            "sha256:feedfeedfeedfeedfeedfeedfeedfeedfeedfeedfeedfeedfeedfeedfeedfeed";
        let image = stored(
            json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "config": { "mediaType": "application/vnd.docker.container.image.v1+json", "size": 50, "digest": CONFIG },
                "layers": []
            }),
            "application/vnd.docker.distribution.manifest.v2+json",
        );
        // Nothing listens there: the GET fails to connect.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!(
            "http://{}/blob?X-Amz-Security-Token=SESSIONSECRET&X-Amz-Signature=SIGNATURE",
            closed.local_addr().unwrap()
        );
        drop(closed);
        let download = mock!(Client::get_download_url_for_layer).then_output(move || {
            GetDownloadUrlForLayerOutput::builder()
                .download_url(url.clone())
                .layer_digest(CONFIG)
                .build()
        });
        let client = mock_client!(
            aws_sdk_ecr,
            RuleMode::Sequential,
            [&image, &download],
            |c| c.region(aws_sdk_ecr::config::Region::new("eu-west-1"))
        );
        let err = EcrRegistry::new(client)
            .platforms(&repo(), &Digest::parse(DIGEST).unwrap())
            .await
            .unwrap_err();
        assert!(matches!(err, RegistryError::Transient(_)), "{err:?}");
        let said = format!("{err} {err:?}");
        assert!(said.contains(CONFIG), "{said}");
        for secret in ["SESSIONSECRET", "SIGNATURE", "X-Amz"] {
            assert!(!said.contains(secret), "{said}");
        }
    }

    fn stored(manifest: serde_json::Value, media_type: &'static str) -> aws_smithy_mocks::Rule {
        use aws_sdk_ecr::operation::batch_get_image::BatchGetImageOutput;
        use aws_sdk_ecr::types::Image;
        let manifest = manifest.to_string();
        mock!(Client::batch_get_image)
            .match_requests(|r| {
                r.image_ids().first().and_then(|i| i.image_digest()) == Some(DIGEST)
            })
            .then_output(move || {
                BatchGetImageOutput::builder()
                    .images(
                        Image::builder()
                            .image_id(ImageIdentifier::builder().image_digest(DIGEST).build())
                            .image_manifest(manifest.clone())
                            .image_manifest_media_type(media_type)
                            .build(),
                    )
                    .build()
            })
    }

    #[tokio::test]
    async fn platforms_come_from_an_index_or_the_config_blob_and_an_artifact_or_missing_config_is_unknown()
     {
        use aws_sdk_ecr::operation::get_download_url_for_layer::{
            GetDownloadUrlForLayerError, GetDownloadUrlForLayerOutput,
        };
        use aws_sdk_ecr::types::error::LayersNotFoundException;
        use serde_json::json;
        const CONFIG: &str =
            "sha256:feedfeedfeedfeedfeedfeedfeedfeedfeedfeedfeedfeedfeedfeedfeedfeed";
        let index = stored(
            json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "manifests": [
                    { "digest": "sha256:1", "platform": { "os": "linux", "architecture": "arm64" } },
                    { "digest": "sha256:2", "platform": { "os": "unknown", "architecture": "unknown" } }
                ]
            }),
            "application/vnd.oci.image.index.v1+json",
        );
        let image = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": { "mediaType": "application/vnd.docker.container.image.v1+json", "size": 50, "digest": CONFIG },
            "layers": []
        });
        let single = stored(
            image.clone(),
            "application/vnd.docker.distribution.manifest.v2+json",
        );
        let url = serve_once(r#"{"architecture":"arm","os":"linux","variant":"v7","rootfs":{}}"#);
        let download = mock!(Client::get_download_url_for_layer)
            .match_requests(|r| r.layer_digest() == Some(CONFIG))
            .then_output(move || {
                GetDownloadUrlForLayerOutput::builder()
                    .download_url(url.clone())
                    .layer_digest(CONFIG)
                    .build()
            });
        let no_config = stored(
            image,
            "application/vnd.docker.distribution.manifest.v2+json",
        );
        let missing = mock!(Client::get_download_url_for_layer).then_error(|| {
            GetDownloadUrlForLayerError::LayersNotFoundException(
                LayersNotFoundException::builder()
                    .message("no such layer")
                    .build(),
            )
        });
        let helm = stored(
            json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": { "mediaType": "application/vnd.cncf.helm.config.v1+json", "size": 2, "digest": CONFIG },
                "layers": []
            }),
            "application/vnd.oci.image.manifest.v1+json",
        );
        let client = mock_client!(
            aws_sdk_ecr,
            RuleMode::Sequential,
            [&index, &single, &download, &no_config, &missing, &helm],
            |c| c.region(aws_sdk_ecr::config::Region::new("eu-west-1"))
        );
        let ecr = EcrRegistry::new(client);
        let digest = Digest::parse(DIGEST).unwrap();
        let platforms = |list: &[&str]| {
            ImagePlatforms::Known(list.iter().map(|p| Platform::parse(p).unwrap()).collect())
        };
        assert_eq!(
            ecr.platforms(&repo(), &digest).await.unwrap(),
            platforms(&["linux/arm64"]),
            "an index's platforms, attestations left out"
        );
        assert_eq!(
            ecr.platforms(&repo(), &digest).await.unwrap(),
            platforms(&["linux/arm/v7"]),
            "a single image's config, read from the URL ECR signs"
        );
        let ImagePlatforms::Unknown(why) = ecr.platforms(&repo(), &digest).await.unwrap() else {
            panic!("a config ECR does not hold is unknown")
        };
        assert!(why.contains(CONFIG), "{why}");
        let ImagePlatforms::Unknown(why) = ecr.platforms(&repo(), &digest).await.unwrap() else {
            panic!("an artifact is unknown")
        };
        assert!(why.contains("not a container image"), "{why}");
    }
}
