//! Platforms: what an image is built for (`os/architecture[/variant]`, as an image index
//! or an image's config names it) and what a target runs. A rollout of an image built for
//! none of the platforms its target runs is refused before it starts: its containers could
//! not start there.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An OS and CPU architecture, in the OCI image spec's terms (`linux/amd64`,
/// `linux/arm64`, `linux/arm/v7`, `windows/amd64`), normalized so that the names tools use
/// for the same thing compare equal (`x86_64` is `amd64`, `aarch64` is `arm64`, and
/// `arm64/v8` is `arm64`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Platform {
    os: String,
    architecture: String,
    variant: Option<String>,
}

impl Platform {
    /// What a target runs when nothing says otherwise.
    pub fn linux_amd64() -> Self {
        Self::new("linux", "amd64", None)
    }

    /// A platform from its parts, normalized.
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Self {
        let os = os.trim().to_ascii_lowercase();
        let architecture = architecture.trim().to_ascii_lowercase();
        let variant = variant
            .map(|v| v.trim().to_ascii_lowercase())
            .filter(|v| !v.is_empty());
        let (architecture, variant) = match (architecture.as_str(), variant) {
            ("x86_64" | "x86-64" | "x64", v) => ("amd64".to_owned(), v),
            ("aarch64" | "arm64", Some(v)) if v == "v8" => ("arm64".to_owned(), None),
            ("aarch64", v) => ("arm64".to_owned(), v),
            ("armhf", None) => ("arm".to_owned(), Some("v7".to_owned())),
            ("armel", None) => ("arm".to_owned(), Some("v6".to_owned())),
            ("i386" | "i686" | "x86", v) => ("386".to_owned(), v),
            (_, v) => (architecture, v),
        };
        Self {
            os,
            architecture,
            variant,
        }
    }

    /// `os/architecture` or `os/architecture/variant`, as `docker --platform` takes it.
    pub fn parse(value: &str) -> Result<Self, String> {
        let parts: Vec<&str> = value.split('/').collect();
        let valid = |part: &str| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        };
        match parts.as_slice() {
            [os, arch] if valid(os) && valid(arch) => Ok(Self::new(os, arch, None)),
            [os, arch, variant] if valid(os) && valid(arch) && valid(variant) => {
                Ok(Self::new(os, arch, Some(variant)))
            }
            _ => Err(format!(
                "{value:?} is not a platform; write os/architecture[/variant], e.g. linux/amd64 or linux/arm64"
            )),
        }
    }

    pub fn os(&self) -> &str {
        &self.os
    }

    pub fn architecture(&self) -> &str {
        &self.architecture
    }

    /// Whether a target on this platform runs an image built for `image`: the same OS and
    /// architecture, and the same variant when both name one.
    pub fn runs(&self, image: &Platform) -> bool {
        self.os == image.os
            && self.architecture == image.architecture
            && match (&self.variant, &image.variant) {
                (Some(mine), Some(theirs)) => mine == theirs,
                _ => true,
            }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

impl Serialize for Platform {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Platform {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = String::deserialize(d)?;
        Platform::parse(&value).map_err(serde::de::Error::custom)
    }
}

/// What the registry says an image is built for.
#[derive(Debug, Clone, PartialEq)]
pub enum ImagePlatforms {
    /// An image index's platforms (attestations left out), or the one platform of a
    /// single image's config.
    Known(Vec<Platform>),
    /// Nothing says (an artifact that is not an image, a config the registry does not
    /// hold): why. The rollout is not refused for it.
    Unknown(String),
}

/// An image refused for its platform: what it is built for, and what the target runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mismatch {
    pub image: Vec<Platform>,
    pub target: Platform,
}

/// Where the platform a target runs was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlatformSource {
    /// The ECS task definition's `runtimePlatform`.
    TaskDefinition,
    /// The environment's `platform`.
    Configured,
    /// Neither names one: `linux/amd64`.
    Default,
}

/// The platform a target runs, and where that was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetPlatform {
    pub platform: Platform,
    pub source: PlatformSource,
}

impl TargetPlatform {
    /// The target's own word (`declared`, e.g. a task definition's `runtimePlatform`) wins
    /// over the environment's `platform`, which wins over `linux/amd64`.
    pub fn of(declared: Option<Platform>, configured: Option<&Platform>) -> Self {
        match (declared, configured) {
            (Some(platform), _) => Self {
                platform,
                source: PlatformSource::TaskDefinition,
            },
            (None, Some(platform)) => Self {
                platform: platform.clone(),
                source: PlatformSource::Configured,
            },
            (None, None) => Self {
                platform: Platform::linux_amd64(),
                source: PlatformSource::Default,
            },
        }
    }

    /// Why an image built for `image` cannot run here, naming both platforms and what to
    /// change; `None` when it can, or when nothing says what the image is built for.
    pub fn refuses(&self, image: &ImagePlatforms, env: &str) -> Option<(String, Mismatch)> {
        let ImagePlatforms::Known(built) = image else {
            return None;
        };
        if built.is_empty() || built.iter().any(|p| self.platform.runs(p)) {
            return None;
        }
        let mismatch = Mismatch {
            image: built.clone(),
            target: self.platform.clone(),
        };
        let built = built
            .iter()
            .map(Platform::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        let target = &self.platform;
        let (source, fix) = match self.source {
            PlatformSource::TaskDefinition => (
                "as its ECS task definition's runtimePlatform says",
                format!("build the image for {target}"),
            ),
            PlatformSource::Configured => (
                "as its `platform` says",
                format!(
                    "build the image for {target}, or change the environment's `platform` if its hosts run another"
                ),
            ),
            PlatformSource::Default => (
                "the default, as no `platform` is set",
                format!(
                    "build the image for {target}, or set the environment's `platform` (e.g. `platform: {built}`) if its hosts run that"
                ),
            ),
        };
        Some((
            format!("the image is built for {built}, but {env} runs {target} ({source}): {fix}"),
            mismatch,
        ))
    }
}

/// The platforms an image index lists, from its manifest: entries without a platform, and
/// attestation manifests (`unknown/unknown`), are left out.
pub fn index_platforms(index: &serde_json::Value) -> Vec<Platform> {
    let mut platforms: Vec<Platform> = index
        .get("manifests")
        .and_then(serde_json::Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let p = entry.get("platform")?;
            let os = p.get("os")?.as_str()?;
            let arch = p.get("architecture")?.as_str()?;
            (os != "unknown" && arch != "unknown").then(|| {
                Platform::new(
                    os,
                    arch,
                    p.get("variant").and_then(serde_json::Value::as_str),
                )
            })
        })
        .collect();
    platforms.sort();
    platforms.dedup();
    platforms
}

/// The platform an image's config names (`os`, `architecture`, `variant`); `None` when it
/// names no OS or architecture.
pub fn config_platform(config: &serde_json::Value) -> Option<Platform> {
    let os = config.get("os")?.as_str()?;
    let arch = config.get("architecture")?.as_str()?;
    (!os.is_empty() && !arch.is_empty()).then(|| {
        Platform::new(
            os,
            arch,
            config.get("variant").and_then(serde_json::Value::as_str),
        )
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn p(value: &str) -> Platform {
        Platform::parse(value).unwrap()
    }

    #[test]
    fn the_names_tools_use_for_one_platform_compare_equal() {
        assert_eq!(p("linux/x86_64"), p("linux/amd64"));
        assert_eq!(p("Linux/AArch64"), p("linux/arm64"));
        assert_eq!(p("linux/arm64/v8"), p("linux/arm64"));
        assert_eq!(Platform::new("linux", "armhf", None), p("linux/arm/v7"));
        assert_eq!(p("linux/arm64/v8").to_string(), "linux/arm64");
        assert_eq!(p("linux/arm/v7").to_string(), "linux/arm/v7");
    }

    #[test]
    fn a_bad_platform_says_how_to_write_one() {
        for bad in ["amd64", "linux/", "linux/amd64/v1/x", "linux amd64", ""] {
            let e = Platform::parse(bad).unwrap_err();
            assert!(e.contains("os/architecture[/variant]"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_target_runs_the_same_os_and_architecture_and_a_variant_only_when_both_name_one() {
        assert!(p("linux/amd64").runs(&p("linux/amd64")));
        assert!(!p("linux/amd64").runs(&p("linux/arm64")));
        assert!(!p("linux/amd64").runs(&p("windows/amd64")));
        assert!(p("linux/arm").runs(&p("linux/arm/v7")));
        assert!(!p("linux/arm/v6").runs(&p("linux/arm/v7")));
    }

    #[test]
    fn a_mismatch_names_both_platforms_and_where_the_targets_was_read() {
        let arm = ImagePlatforms::Known(vec![p("linux/arm64")]);
        let default = TargetPlatform::of(None, None);
        let (reason, mismatch) = default.refuses(&arm, "shop/staging").unwrap();
        assert_eq!(mismatch.image, [p("linux/arm64")]);
        assert_eq!(mismatch.target, p("linux/amd64"));
        assert_eq!(
            reason,
            "the image is built for linux/arm64, but shop/staging runs linux/amd64 (the default, as no `platform` is set): build the image for linux/amd64, or set the environment's `platform` (e.g. `platform: linux/arm64`) if its hosts run that"
        );
        let ecs = TargetPlatform::of(Some(p("linux/arm64")), Some(&p("linux/amd64")));
        assert_eq!(ecs.source, PlatformSource::TaskDefinition);
        let amd = ImagePlatforms::Known(vec![p("linux/amd64")]);
        let (reason, _) = ecs.refuses(&amd, "shop/prod").unwrap();
        assert!(reason.contains("built for linux/amd64, but shop/prod runs linux/arm64 (as its ECS task definition's runtimePlatform says)"), "{reason}");
        let configured = TargetPlatform::of(None, Some(&p("linux/arm64")));
        assert!(
            configured
                .refuses(&amd, "e")
                .unwrap()
                .0
                .contains("as its `platform` says")
        );
    }

    #[test]
    fn an_index_with_the_targets_platform_or_an_unknown_platform_is_not_refused() {
        let target = TargetPlatform::of(None, None);
        let multi = ImagePlatforms::Known(vec![p("linux/amd64"), p("linux/arm64")]);
        assert_eq!(target.refuses(&multi, "e"), None);
        assert_eq!(
            target.refuses(&ImagePlatforms::Unknown("no config".into()), "e"),
            None
        );
        assert_eq!(target.refuses(&ImagePlatforms::Known(vec![]), "e"), None);
    }

    #[test]
    fn an_index_lists_its_platforms_without_attestations() {
        let index = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                { "digest": "sha256:a", "platform": { "os": "linux", "architecture": "arm64", "variant": "v8" } },
                { "digest": "sha256:b", "platform": { "os": "linux", "architecture": "amd64" } },
                { "digest": "sha256:c", "platform": { "os": "unknown", "architecture": "unknown" },
                  "annotations": { "vnd.docker.reference.type": "attestation-manifest" } },
                { "digest": "sha256:d" }
            ]
        });
        assert_eq!(
            index_platforms(&index),
            vec![p("linux/amd64"), p("linux/arm64")]
        );
    }

    #[test]
    fn an_image_config_names_its_platform() {
        let config = json!({ "architecture": "arm", "os": "linux", "variant": "v7", "rootfs": {} });
        assert_eq!(config_platform(&config), Some(p("linux/arm/v7")));
        assert_eq!(config_platform(&json!({ "os": "linux" })), None);
    }
}
