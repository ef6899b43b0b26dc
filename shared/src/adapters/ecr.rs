//! The image registry on Amazon ECR: `DescribeImages` by tag or by digest.

use async_trait::async_trait;
use aws_sdk_ecr::Client;
use aws_sdk_ecr::error::SdkError;
use aws_sdk_ecr::operation::describe_images::DescribeImagesError;
use aws_sdk_ecr::types::ImageIdentifier;
use time::OffsetDateTime;

use super::aws::{ErrorClass, classify, describe};
use crate::domain::{Digest, PinnedImage, Registry, Repository, Tag};
use crate::ports::{ImageRegistry, RegistryError, ResolvedImage};

pub struct EcrRegistry {
    client: Client,
}

impl EcrRegistry {
    pub fn new(client: Client) -> Self {
        Self { client }
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
        let invalid = |message: String| RegistryError::Invalid(message.clone(), message.into());
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
    let message = describe(&error);
    match classify(&error) {
        ErrorClass::Throttled => RegistryError::Throttled(Box::new(error)),
        ErrorClass::Transient => RegistryError::Transient(Box::new(error)),
        ErrorClass::Permanent => RegistryError::Invalid(message, Box::new(error)),
    }
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
}
