//! Building and pushing app images the way a developer's machine does, with nothing pulled
//! from the internet: each image is `FROM scratch` with the static busybox serving a few
//! files (`busybox httpd`). The builder is a podman of its own (not the host's), logs in to
//! the registry with the token ECR (moto) hands out, and pushes; the registry's digest is
//! the one the push reports.

use std::path::PathBuf;

use anyhow::{Context, anyhow, bail};

use crate::podman::Podman;
use crate::run::Run;

/// Where the static busybox is (Debian package busybox-static).
const BUSYBOX: &str = "/bin/busybox";
/// The port the app listens on inside its container.
pub const APP_PORT: u16 = 8000;

/// What an app version serves.
#[derive(Debug, Clone)]
pub struct AppVersion {
    /// A label, also the image's local tag: `v1`.
    pub label: String,
    /// Files served, by path under the web root: `index.html`, `health`.
    pub files: Vec<(String, String)>,
}

/// An image built locally.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    pub label: String,
    /// Its name in the builder's storage.
    pub local: String,
}

pub struct Builder {
    podman: Podman,
    dir: PathBuf,
    registry_host: String,
    log: PathBuf,
}

impl Builder {
    pub fn new(run: &Run, registry_host: &str) -> anyhow::Result<Self> {
        let dir = run.subdir("builder")?;
        let podman = Podman::configure(&dir, registry_host)?;
        run.on_cleanup(&podman.cleanup_line())?;
        Ok(Self {
            podman,
            dir,
            registry_host: registry_host.to_owned(),
            log: run.log("builder"),
        })
    }

    /// Builds an image serving `version`'s files on port 8000.
    pub async fn build(
        &self,
        repository: &str,
        version: &AppVersion,
    ) -> anyhow::Result<BuiltImage> {
        self.build_for(repository, version, None).await
    }

    /// Like `build`, for `platform` (`linux/arm64`, …) instead of this machine's: nothing
    /// runs during the build, so no emulator is needed, but this machine cannot run it.
    pub async fn build_for(
        &self,
        repository: &str,
        version: &AppVersion,
        platform: Option<&str>,
    ) -> anyhow::Result<BuiltImage> {
        let context = self.dir.join(format!("context-{}", version.label));
        let www = context.join("www");
        std::fs::create_dir_all(&www)?;
        std::fs::copy(BUSYBOX, context.join("busybox")).with_context(|| {
            format!("copying {BUSYBOX} (Debian package busybox-static; run scripts/bootstrap.sh)")
        })?;
        for (path, content) in &version.files {
            let file = www.join(path);
            if let Some(parent) = file.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(file, content)?;
        }
        std::fs::write(
            context.join("Containerfile"),
            format!(
                "FROM scratch\n\
                 COPY busybox /bin/busybox\n\
                 COPY www /www\n\
                 EXPOSE {APP_PORT}\n\
                 ENTRYPOINT [\"/bin/busybox\", \"httpd\", \"-f\", \"-p\", \"{APP_PORT}\", \"-h\", \"/www\"]\n"
            ),
        )?;
        let local = format!("localhost/{repository}:{}", version.label);
        let context_dir = context.display().to_string();
        let mut args = vec!["build", "--quiet", "-t", &local];
        if let Some(platform) = platform {
            args.extend(["--platform", platform]);
        }
        args.push(&context_dir);
        let out = self
            .podman
            .output(&args)
            .await
            .with_context(|| format!("building {local}"))?;
        self.append_log(&format!("built {local}: {}", out.trim()));
        Ok(BuiltImage {
            label: version.label.clone(),
            local,
        })
    }

    /// Logs in with an ECR authorization token and pushes `image` as `repository:tag`;
    /// returns the digest the registry gave the manifest.
    pub async fn push(
        &self,
        image: &BuiltImage,
        repository: &str,
        tag: &str,
        ecr: &aws_sdk_ecr::Client,
    ) -> anyhow::Result<String> {
        let token = ecr
            .get_authorization_token()
            .send()
            .await
            .context("GetAuthorizationToken")?;
        let encoded = token
            .authorization_data()
            .first()
            .and_then(|d| d.authorization_token())
            .ok_or_else(|| anyhow!("GetAuthorizationToken returned no token"))?;
        let decoded = String::from_utf8(aws_smithy_types::base64::decode(encoded)?)?;
        let (user, password) = decoded
            .split_once(':')
            .ok_or_else(|| anyhow!("the ECR token is not user:password"))?;
        self.podman
            .output_with_input(
                &[
                    "login",
                    "--username",
                    user,
                    "--password-stdin",
                    &self.registry_host,
                ],
                password,
            )
            .await
            .context("logging the builder in to the local registry")?;
        let destination = format!("docker://{}/{repository}:{tag}", self.registry_host);
        let digest_file = self.dir.join(format!("digest-{}-{tag}", image.label));
        self.podman
            .output(&[
                "push",
                "--quiet",
                "--digestfile",
                &digest_file.display().to_string(),
                &image.local,
                &destination,
            ])
            .await
            .with_context(|| format!("pushing {} to {destination}", image.local))?;
        let digest = std::fs::read_to_string(&digest_file)?.trim().to_owned();
        if !digest.starts_with("sha256:") {
            bail!("the push reported no digest (got {digest:?})");
        }
        self.append_log(&format!(
            "pushed {} as {destination} ({digest})",
            image.local
        ));
        Ok(digest)
    }

    fn append_log(&self, line: &str) {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
        {
            let _ = writeln!(f, "{line}");
        }
    }
}
