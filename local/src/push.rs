//! A push as CI makes it, on the local stack: the image's bytes go to the local registry,
//! ECR (moto) records it under the registry's digest, and ECR's `ECR Image Action` event goes
//! to the default bus, where the stack's rules route it to the deployer. Used by the stack
//! itself and by `pushdeploy-local push`, which reaches a running `up` from another terminal
//! through the state file `up` writes.

use std::path::PathBuf;

use anyhow::{Context, anyhow, bail};
use aws_config::SdkConfig;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::registry::LocalRegistry;

/// Creates the ECR repository unless it exists.
pub async fn ensure_repository(ecr: &aws_sdk_ecr::Client, repository: &str) -> anyhow::Result<()> {
    match ecr
        .create_repository()
        .repository_name(repository)
        .send()
        .await
    {
        Ok(_) => Ok(()),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_repository_already_exists_exception()) =>
        {
            Ok(())
        }
        Err(e) => Err(anyhow!(e).context(format!("CreateRepository {repository}"))),
    }
}

/// Records in ECR (moto) the image the registry holds under `digest`, tagged `tag`: the
/// manifest is the registry's own, so ECR's digest and the registry's agree, and a single
/// image's config blob is uploaded through ECR's layer API, as a push to ECR stores it (the
/// deployer reads its platform there). Recording the same image under the same tag again (a
/// push repeated) is done already, as in ECR.
pub async fn record_in_ecr(
    sdk: &SdkConfig,
    registry: &LocalRegistry,
    repository: &str,
    tag: &str,
    digest: &str,
) -> anyhow::Result<()> {
    let manifest = registry.manifest(repository, digest).await?;
    if manifest.digest != digest {
        bail!(
            "the registry serves {} for the pushed digest {digest}",
            manifest.digest
        );
    }
    let ecr = aws_sdk_ecr::Client::new(sdk);
    let config = serde_json::from_str::<serde_json::Value>(&manifest.body)
        .ok()
        .and_then(|m| m["config"]["digest"].as_str().map(str::to_owned));
    if let Some(config) = config {
        let blob = registry.blob(repository, &config).await?;
        upload_layer(&ecr, repository, &config, blob)
            .await
            .with_context(|| format!("uploading config blob {config} to ECR"))?;
    }
    let put = ecr
        .put_image()
        .repository_name(repository)
        .image_manifest(&manifest.body)
        .image_manifest_media_type(&manifest.media_type)
        .image_digest(digest)
        .image_tag(tag)
        .send()
        .await;
    match put {
        Ok(_) => Ok(()),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_image_already_exists_exception()) =>
        {
            Ok(())
        }
        Err(e) => Err(anyhow!(e).context("PutImage")),
    }
}

/// Uploads blob `digest` through ECR's layer API, in one part.
async fn upload_layer(
    ecr: &aws_sdk_ecr::Client,
    repository: &str,
    digest: &str,
    blob: Vec<u8>,
) -> anyhow::Result<()> {
    let upload = ecr
        .initiate_layer_upload()
        .repository_name(repository)
        .send()
        .await
        .context("InitiateLayerUpload")?;
    let id = upload
        .upload_id()
        .context("InitiateLayerUpload gave no upload id")?;
    let last = i64::try_from(blob.len()).unwrap_or(i64::MAX) - 1;
    ecr.upload_layer_part()
        .repository_name(repository)
        .upload_id(id)
        .part_first_byte(0)
        .part_last_byte(last)
        .layer_part_blob(aws_sdk_ecr::primitives::Blob::new(blob))
        .send()
        .await
        .context("UploadLayerPart")?;
    ecr.complete_layer_upload()
        .repository_name(repository)
        .upload_id(id)
        .layer_digests(digest)
        .send()
        .await
        .context("CompleteLayerUpload")?;
    Ok(())
}

/// Publishes the `ECR Image Action` event ECR sends for a successful push; returns its id.
pub async fn publish_push_event(
    sdk: &SdkConfig,
    repository: &str,
    tag: &str,
    digest: &str,
) -> anyhow::Result<Option<String>> {
    let detail = json!({
        "result": "SUCCESS",
        "repository-name": repository,
        "image-digest": digest,
        "action-type": "PUSH",
        "image-tag": tag,
    });
    let out = aws_sdk_eventbridge::Client::new(sdk)
        .put_events()
        .entries(
            aws_sdk_eventbridge::types::PutEventsRequestEntry::builder()
                .source("aws.ecr")
                .detail_type("ECR Image Action")
                .detail(detail.to_string())
                .build(),
        )
        .send()
        .await
        .context("PutEvents (ECR push)")?;
    if out.failed_entry_count() > 0 {
        bail!("PutEvents refused the ECR push event: {:?}", out.entries());
    }
    Ok(out
        .entries()
        .first()
        .and_then(|e| e.event_id())
        .map(str::to_owned))
}

/// What `up` writes so that `pushdeploy-local push` finds the running stack.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpState {
    /// The process running the stack.
    pub pid: u32,
    pub run_dir: PathBuf,
    pub moto_port: u16,
    pub registry_port: u16,
    pub functions_port: u16,
    /// The app and environment the printed commands use, and its repository.
    pub app: String,
    pub environment: String,
    pub repository: String,
}

impl UpState {
    /// Where the state of the running `up` is: beside the run directories.
    pub fn path() -> PathBuf {
        std::env::var_os("PUSHDEPLOY_LOCAL_TMPDIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir)
            .join("pushdeploy-local-up.json")
    }

    pub fn write(&self) -> anyhow::Result<()> {
        let path = Self::path();
        std::fs::write(&path, serde_json::to_string_pretty(self)?)
            .with_context(|| format!("writing {}", path.display()))
    }

    /// The running stack's state; an error saying to start one when none runs.
    pub fn read() -> anyhow::Result<Self> {
        let path = Self::path();
        let text = std::fs::read_to_string(&path).map_err(|_| {
            anyhow!("no local stack is running ({} is missing): start one with `make up`, and push from another terminal", path.display())
        })?;
        let state: Self =
            serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))?;
        if !std::path::Path::new(&format!("/proc/{}", state.pid)).exists() {
            bail!(
                "the local stack of {} has stopped (process {} is gone): start one with `make up`",
                path.display(),
                state.pid
            );
        }
        Ok(state)
    }

    /// Removes the state file if it is this process's.
    pub fn remove_own() {
        if let Ok(state) = Self::read()
            && state.pid == std::process::id()
        {
            let _ = std::fs::remove_file(Self::path());
        }
    }
}
