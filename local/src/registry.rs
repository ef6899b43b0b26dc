//! The local OCI registry (Debian's `docker-registry`, distribution 2.8): it holds the image
//! bytes that ECR would hold, while moto holds ECR's API side. It requires the credentials
//! ECR hands out (`GetAuthorizationToken` on moto: user `AWS`, the token's password), so a
//! host that did not log in cannot pull — as with ECR.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value as Json;

use crate::moto::{ACCOUNT, free_port};
use crate::run::Run;

/// The password moto's `GetAuthorizationToken` hands out for the local account (base64 of
/// `AWS:<password>` is the token; `aws ecr get-login-password` prints the password).
pub fn ecr_password() -> String {
    format!("{ACCOUNT}-auth-token")
}

/// The manifest types a registry may answer with, for `Accept`.
const MANIFEST_TYPES: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json";

pub struct LocalRegistry {
    pub port: u16,
    client: reqwest::Client,
}

/// A manifest as the registry stores it.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub digest: String,
    pub media_type: String,
    pub body: String,
}

impl LocalRegistry {
    pub async fn start(run: &Run) -> anyhow::Result<Self> {
        let dir = run.subdir("registry")?;
        let port = free_port()?;
        let hash = bcrypt::hash_with_salt(ecr_password(), 5, salt())
            .context("hashing the registry password")?
            .format_for_version(bcrypt::Version::TwoB);
        std::fs::write(dir.join("htpasswd"), format!("AWS:{hash}\n"))?;
        let config = format!(
            "version: 0.1\n\
             log: {{ level: info, accesslog: {{ disabled: false }} }}\n\
             storage:\n  filesystem: {{ rootdirectory: {data} }}\n  delete: {{ enabled: true }}\n\
             http: {{ addr: \"127.0.0.1:{port}\", secret: pushdeploy-local }}\n\
             auth:\n  htpasswd: {{ realm: pushdeploy-local, path: {htpasswd} }}\n",
            data = dir.join("data").display(),
            htpasswd = dir.join("htpasswd").display(),
        );
        let config_path = dir.join("config.yml");
        std::fs::write(&config_path, config)?;
        let mut command = Command::new("docker-registry");
        command.arg("serve").arg(&config_path);
        run.spawn("registry", command).context(
            "starting docker-registry (Debian package docker-registry; run scripts/bootstrap.sh)",
        )?;
        crate::run::wait_for_port(port, Duration::from_secs(20), "docker-registry")
            .await
            .with_context(|| format!("see {}", run.log("registry").display()))?;
        Ok(Self {
            port,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?,
        })
    }

    /// A registry another process runs (a running `up`), on `port`.
    pub fn attach(port: u16) -> anyhow::Result<Self> {
        Ok(Self {
            port,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?,
        })
    }

    /// How images name this registry: `localhost:<port>`.
    pub fn host(&self) -> String {
        format!("localhost:{}", self.port)
    }

    /// The manifest of `repository` at `reference` (a tag or a digest), with the digest the
    /// registry computed for it.
    pub async fn manifest(&self, repository: &str, reference: &str) -> anyhow::Result<Manifest> {
        let url = format!(
            "http://127.0.0.1:{}/v2/{repository}/manifests/{reference}",
            self.port
        );
        let response = self
            .client
            .get(&url)
            .basic_auth("AWS", Some(ecr_password()))
            .header("Accept", MANIFEST_TYPES)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        let status = response.status();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let digest = header("docker-content-digest");
        let media_type = header("content-type");
        let body = response.text().await?;
        if !status.is_success() {
            bail!("GET {url}: {status}: {body}");
        }
        let media_type = media_type
            .or_else(|| {
                serde_json::from_str::<Json>(&body)
                    .ok()?
                    .get("mediaType")?
                    .as_str()
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| "application/vnd.oci.image.manifest.v1+json".into());
        Ok(Manifest {
            digest: digest.context("the registry sent no Docker-Content-Digest")?,
            media_type,
            body,
        })
    }
}

impl LocalRegistry {
    /// The bytes of blob `digest` of `repository` (a layer, or an image's config).
    pub async fn blob(&self, repository: &str, digest: &str) -> anyhow::Result<Vec<u8>> {
        let url = format!(
            "http://127.0.0.1:{}/v2/{repository}/blobs/{digest}",
            self.port
        );
        let response = self
            .client
            .get(&url)
            .basic_auth("AWS", Some(ecr_password()))
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        let status = response.status();
        if !status.is_success() {
            bail!("GET {url}: {status}");
        }
        Ok(response.bytes().await?.to_vec())
    }
}

/// A bcrypt salt; it only has to differ between runs, not be secret.
fn salt() -> [u8; 16] {
    use std::hash::{BuildHasher, Hasher};
    let mut out = [0u8; 16];
    for chunk in out.chunks_mut(8) {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos(),
        );
        chunk.copy_from_slice(&h.finish().to_le_bytes());
    }
    out
}
