//! Image references per the OCI distribution grammar, and the digest-pinned form that
//! every rollout deploys.
//!
//! ```text
//! reference  := name [ ":" tag ] [ "@" digest ]
//! name       := [ registry "/" ] repository
//! registry   := host [ ":" port ]            (first component with '.' or ':' or "localhost")
//! repository := component ( "/" component )*
//! component  := [a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*
//! tag        := [A-Za-z0-9_] [A-Za-z0-9_.-]{0,127}
//! digest     := "sha256:" 64 lowercase hex
//! ```

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What is wrong with an image reference, a tag or a digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageRefError {
    #[error("image reference is empty")]
    Empty,
    #[error("image name is {0} characters long; the limit is 255")]
    NameTooLong(usize),
    #[error("registry {0:?} is not a valid host[:port]")]
    Registry(String),
    #[error(
        "repository component {0:?} must be lowercase letters and digits, separated by '.', '_', '__' or '-'"
    )]
    RepositoryComponent(String),
    #[error(
        "tag {0:?} must be 1-128 characters of letters, digits, '_', '.' and '-', not starting with '.' or '-'"
    )]
    Tag(String),
    #[error("digest {0:?} must be \"sha256:\" followed by 64 lowercase hex characters{1}")]
    Digest(String, DigestHint),
    #[error("image reference {0:?} has no digest; a rollout deploys only digest-pinned images")]
    NotPinned(String),
}

/// A more precise note on a bad digest, appended to the error message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DigestHint {
    None,
    Algorithm(String),
    Length(usize),
    NonHex,
}

impl fmt::Display for DigestHint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DigestHint::None => Ok(()),
            DigestHint::Algorithm(a) => write!(f, " (algorithm {a:?} is not supported)"),
            DigestHint::Length(n) => write!(f, " (found {n} hex characters)"),
            DigestHint::NonHex => write!(f, " (found characters that are not lowercase hex)"),
        }
    }
}

/// `sha256:` and 64 lowercase hex characters.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest(String);

impl Digest {
    pub fn parse(value: &str) -> Result<Self, ImageRefError> {
        let bad = |hint| ImageRefError::Digest(value.to_owned(), hint);
        let Some((algorithm, hex)) = value.split_once(':') else {
            return Err(bad(DigestHint::None));
        };
        if algorithm != "sha256" {
            return Err(bad(DigestHint::Algorithm(algorithm.to_owned())));
        }
        if !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(bad(DigestHint::NonHex));
        }
        if hex.len() != 64 {
            return Err(bad(DigestHint::Length(hex.len())));
        }
        Ok(Self(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 12 hex characters, as `docker images` shows them.
    pub fn short(&self) -> &str {
        &self.0[7..19]
    }
}

/// A tag as the registry accepts it. Tags are mutable and only ever name what to resolve.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tag(String);

impl Tag {
    pub fn parse(value: &str) -> Result<Self, ImageRefError> {
        let bytes = value.as_bytes();
        let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
        let ok = !bytes.is_empty()
            && bytes.len() <= 128
            && word(bytes[0])
            && bytes.iter().all(|&b| word(b) || b == b'.' || b == b'-');
        if ok {
            Ok(Self(value.to_owned()))
        } else {
            Err(ImageRefError::Tag(value.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A registry host, with an optional port: `123456789012.dkr.ecr.eu-west-1.amazonaws.com`,
/// `localhost:5000`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Registry(String);

impl Registry {
    pub fn parse(value: &str) -> Result<Self, ImageRefError> {
        let bad = || ImageRefError::Registry(value.to_owned());
        let (host, port) = match value.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (value, None),
        };
        if let Some(port) = port {
            let valid = !port.is_empty()
                && port.len() <= 5
                && port.bytes().all(|b| b.is_ascii_digit())
                && port.parse::<u32>().is_ok_and(|p| (1..=65535).contains(&p));
            if !valid {
                return Err(bad());
            }
        }
        if host.is_empty() || host.len() > 253 {
            return Err(bad());
        }
        let label_ok = |label: &str| {
            let b = label.as_bytes();
            !b.is_empty()
                && b.len() <= 63
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'-')
        };
        if !host.split('.').all(label_ok) {
            return Err(bad());
        }
        Ok(Self(value.to_owned()))
    }

    /// The registry of an ECR repository in `account` and `region`.
    pub fn ecr(account: &str, region: &str) -> Result<Self, ImageRefError> {
        let suffix = if region.starts_with("cn-") {
            "amazonaws.com.cn"
        } else {
            "amazonaws.com"
        };
        Self::parse(&format!("{account}.dkr.ecr.{region}.{suffix}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A repository path: `acme/web`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Repository(String);

impl Repository {
    pub fn parse(value: &str) -> Result<Self, ImageRefError> {
        if value.is_empty() {
            return Err(ImageRefError::Empty);
        }
        if value.len() > 255 {
            return Err(ImageRefError::NameTooLong(value.len()));
        }
        for component in value.split('/') {
            if !component_ok(component) {
                return Err(ImageRefError::RepositoryComponent(component.to_owned()));
            }
        }
        Ok(Self(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `[a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*`
fn component_ok(component: &str) -> bool {
    let b = component.as_bytes();
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let separator = &b[start..i];
        let valid =
            matches!(separator, b"." | b"_" | b"__") || separator.iter().all(|&c| c == b'-');
        if !valid {
            return false;
        }
    }
    true
}

/// Any reference a user may write: `acme/web:v1`, `localhost:5000/acme/web@sha256:…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    pub registry: Option<Registry>,
    pub repository: Repository,
    pub tag: Option<Tag>,
    pub digest: Option<Digest>,
}

impl ImageRef {
    pub fn parse(value: &str) -> Result<Self, ImageRefError> {
        if value.is_empty() {
            return Err(ImageRefError::Empty);
        }
        let (name_and_tag, digest) = match value.split_once('@') {
            Some((rest, digest)) => (rest, Some(Digest::parse(digest)?)),
            None => (value, None),
        };
        // A ':' after the last '/' separates the tag; one before it belongs to a registry port.
        let last_slash = name_and_tag.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name_and_tag[last_slash..].find(':') {
            Some(i) => {
                let at = last_slash + i;
                (
                    &name_and_tag[..at],
                    Some(Tag::parse(&name_and_tag[at + 1..])?),
                )
            }
            None => (name_and_tag, None),
        };
        if name.len() > 255 {
            return Err(ImageRefError::NameTooLong(name.len()));
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (Some(Registry::parse(first)?), rest)
            }
            _ => (None, name),
        };
        Ok(Self {
            registry,
            repository: Repository::parse(repository)?,
            tag,
            digest,
        })
    }

    /// The pinned form, if this reference names a registry and a digest.
    pub fn pinned(&self) -> Result<PinnedImage, ImageRefError> {
        match (&self.registry, &self.digest) {
            (Some(registry), Some(digest)) => Ok(PinnedImage {
                registry: registry.clone(),
                repository: self.repository.clone(),
                digest: digest.clone(),
            }),
            _ => Err(ImageRefError::NotPinned(self.to_string())),
        }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(registry) = &self.registry {
            write!(f, "{}/", registry.0)?;
        }
        f.write_str(&self.repository.0)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{}", tag.0)?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{}", digest.0)?;
        }
        Ok(())
    }
}

/// What a rollout deploys: `registry/repository@sha256:…`, never a tag.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PinnedImage {
    pub registry: Registry,
    pub repository: Repository,
    pub digest: Digest,
}

impl PinnedImage {
    pub fn parse(value: &str) -> Result<Self, ImageRefError> {
        let reference = ImageRef::parse(value)?;
        if reference.tag.is_some() {
            // `repo:tag@digest` is legal OCI, but a stored pin never carries a tag.
            return Err(ImageRefError::NotPinned(value.to_owned()));
        }
        reference.pinned()
    }

    /// The same repository at another digest.
    pub fn with_digest(&self, digest: Digest) -> Self {
        Self {
            digest,
            ..self.clone()
        }
    }
}

impl fmt::Display for PinnedImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}@{}",
            self.registry.0, self.repository.0, self.digest.0
        )
    }
}

macro_rules! string_serde {
    ($ty:ident, $parse:path, $show:expr) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let show: fn(&$ty) -> String = $show;
                serializer.serialize_str(&show(self))
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(deserializer)?;
                $parse(&raw).map_err(serde::de::Error::custom)
            }
        }

        impl std::str::FromStr for $ty {
            type Err = ImageRefError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                $parse(s)
            }
        }
    };
}

string_serde!(Digest, Digest::parse, |d| d.0.clone());
string_serde!(Tag, Tag::parse, |t| t.0.clone());
string_serde!(Registry, Registry::parse, |r| r.0.clone());
string_serde!(Repository, Repository::parse, |r| r.0.clone());
string_serde!(PinnedImage, PinnedImage::parse, |p| p.to_string());

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for Repository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HEX: &str = "7f5b2640fe6fb4f46592dfd3410c4a79dac4f89e4782432e0378abcd1234abcd";

    #[test]
    fn parses_ecr_reference_with_tag_and_digest() {
        let text =
            format!("123456789012.dkr.ecr.eu-west-1.amazonaws.com/acme/web:v1.2@sha256:{HEX}");
        let r = ImageRef::parse(&text).unwrap();
        assert_eq!(
            r.registry.as_ref().unwrap().as_str(),
            "123456789012.dkr.ecr.eu-west-1.amazonaws.com"
        );
        assert_eq!(r.repository.as_str(), "acme/web");
        assert_eq!(r.tag.as_ref().unwrap().as_str(), "v1.2");
        assert_eq!(r.digest.as_ref().unwrap().as_str(), format!("sha256:{HEX}"));
        assert_eq!(r.to_string(), text);
    }

    #[test]
    fn registry_port_is_not_mistaken_for_a_tag() {
        let r = ImageRef::parse("localhost:5000/web").unwrap();
        assert_eq!(r.registry.unwrap().as_str(), "localhost:5000");
        assert_eq!(r.repository.as_str(), "web");
        assert!(r.tag.is_none());
    }

    #[test]
    fn first_component_without_dot_or_port_is_part_of_the_repository() {
        let r = ImageRef::parse("acme/web:latest").unwrap();
        assert!(r.registry.is_none());
        assert_eq!(r.repository.as_str(), "acme/web");
    }

    #[test]
    fn digest_errors_say_what_is_wrong() {
        let short = Digest::parse(&format!("sha256:{}", &HEX[..63]))
            .unwrap_err()
            .to_string();
        assert!(short.contains("found 63 hex characters"), "{short}");
        let algo = Digest::parse(&format!("sha512:{HEX}"))
            .unwrap_err()
            .to_string();
        assert!(algo.contains("\"sha512\" is not supported"), "{algo}");
        let upper = Digest::parse(&format!("sha256:{}", HEX.to_uppercase()))
            .unwrap_err()
            .to_string();
        assert!(upper.contains("not lowercase hex"), "{upper}");
        assert!(Digest::parse(HEX).is_err());
    }

    #[test]
    fn hostile_tags_are_refused() {
        for bad in [
            "v1;$(reboot)",
            "v1 && rm -rf /",
            "`id`",
            "-v1",
            ".hidden",
            "",
            &"a".repeat(129),
        ] {
            assert!(Tag::parse(bad).is_err(), "{bad:?}");
        }
        let err = ImageRef::parse("acme/web:v1;$(id)").unwrap_err();
        assert!(matches!(err, ImageRefError::Tag(_)), "{err:?}");
    }

    #[test]
    fn repository_components_follow_the_grammar() {
        for ok in ["web", "a/b/c", "my_app", "my__app", "my--app", "a.b"] {
            assert!(Repository::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["Web", "a//b", "_a", "a_", "a___b", "a._b", "a/", "a b"] {
            assert!(Repository::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn pinned_requires_registry_and_digest_and_no_tag() {
        assert!(PinnedImage::parse(&format!("localhost:5000/web@sha256:{HEX}")).is_ok());
        assert!(matches!(
            PinnedImage::parse("localhost:5000/web:v1"),
            Err(ImageRefError::NotPinned(_))
        ));
        assert!(PinnedImage::parse(&format!("localhost:5000/web:v1@sha256:{HEX}")).is_err());
    }

    #[test]
    fn ecr_registry_in_china_uses_its_own_suffix() {
        assert_eq!(
            Registry::ecr("123456789012", "cn-north-1")
                .unwrap()
                .as_str(),
            "123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn"
        );
    }

    fn component() -> impl Strategy<Value = String> {
        "[a-z0-9]{1,8}((\\.|_|__|-{1,2})[a-z0-9]{1,8}){0,2}"
    }

    proptest! {
        #[test]
        fn valid_references_round_trip(
            host in "[a-z][a-z0-9]{0,10}(\\.[a-z][a-z0-9]{0,10}){1,3}",
            port in proptest::option::of(1u16..),
            path in proptest::collection::vec(component(), 1..4),
            tag in proptest::option::of("[A-Za-z0-9_][A-Za-z0-9_.-]{0,40}"),
            hex in "[a-f0-9]{64}",
        ) {
            let registry = match port { Some(p) => format!("{host}:{p}"), None => host };
            let mut text = format!("{registry}/{}", path.join("/"));
            if let Some(tag) = &tag { text.push(':'); text.push_str(tag); }
            text.push_str("@sha256:");
            text.push_str(&hex);
            let parsed = ImageRef::parse(&text).unwrap();
            prop_assert_eq!(parsed.to_string(), text);
            prop_assert_eq!(parsed.registry.map(|r| r.0), Some(registry));
            prop_assert_eq!(parsed.tag.map(|t| t.0), tag);
        }

        #[test]
        fn digests_accept_exactly_64_lowercase_hex(hex in "[a-f0-9]{0,80}") {
            let result = Digest::parse(&format!("sha256:{hex}"));
            prop_assert_eq!(result.is_ok(), hex.len() == 64);
        }

        #[test]
        fn parsing_never_panics_and_accepted_tags_are_shell_safe(input in "\\PC{0,80}") {
            let _ = ImageRef::parse(&input);
            if let Ok(tag) = Tag::parse(&input) {
                prop_assert!(tag.as_str().bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)));
            }
        }
    }
}
