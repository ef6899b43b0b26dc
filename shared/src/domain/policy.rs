//! Which tags deploy an environment on push: shell-style globs (`*`, `?`) and semver
//! ranges, and the version a tag names.

use std::fmt;

use serde::{Serialize, Serializer};

use super::image::Tag;

/// A glob over tags: `*` matches any run of characters, `?` exactly one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagPattern(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "tag pattern {0:?} may use only letters, digits, '_', '.', '-' and the wildcards '*' and '?', up to 128 characters"
)]
pub struct TagPatternError(pub String);

impl TagPattern {
    pub fn parse(value: &str) -> Result<Self, TagPatternError> {
        let ok = !value.is_empty()
            && value.len() <= 128
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-*?".contains(&b));
        if ok {
            Ok(Self(value.to_owned()))
        } else {
            Err(TagPatternError(value.to_owned()))
        }
    }

    pub fn matches(&self, tag: &Tag) -> bool {
        glob_match(self.0.as_bytes(), tag.as_str().as_bytes())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TagPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for TagPattern {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

/// The version a tag names: `MAJOR.MINOR.PATCH`, optionally with a pre-release
/// (`1.4.0-rc.1`) and a leading `v` (`v1.4.0`). Any other tag names no version.
pub fn version_of(tag: &Tag) -> Option<semver::Version> {
    let text = tag.as_str();
    let text = text
        .strip_prefix('v')
        .or_else(|| text.strip_prefix('V'))
        .unwrap_or(text);
    // semver accepts neither a leading `v` nor build metadata here (`+` is not a tag
    // character), so what it parses is the whole tag.
    semver::Version::parse(text).ok()
}

/// A semver range over tags: comparators joined by `,` (all must hold), alternatives by
/// `||` (`>=1.4, <2`, `^1.4`, `~1.4.2`, `1.4.* || 2.0.*`). A pre-release version matches
/// only a comparator that names a pre-release of the same `MAJOR.MINOR.PATCH`
/// (`>=1.5.0-rc.1` admits `1.5.0-rc.2`; `>=1.4` admits no pre-release).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionRange {
    text: String,
    alternatives: Vec<semver::VersionReq>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{text:?} is not a semver range: {problem}; write comparators joined by commas and alternatives by ||, as in \">=1.4, <2\", \"^1.4\" or \"~1.4.2\""
)]
pub struct VersionRangeError {
    pub text: String,
    pub problem: String,
}

impl VersionRange {
    pub fn parse(text: &str) -> Result<Self, VersionRangeError> {
        let fail = |problem: String| VersionRangeError {
            text: crate::domain::text::cut(text),
            problem,
        };
        if text.trim().is_empty() || text.len() > 256 {
            return Err(fail("give 1 to 256 characters".into()));
        }
        let alternatives = text
            .split("||")
            .map(|alt| {
                // `v1.4` reads as `1.4`, as tags do.
                semver::VersionReq::parse(&strip_v(alt.trim())).map_err(|e| fail(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            text: text.to_owned(),
            alternatives,
        })
    }

    pub fn matches(&self, tag: &Tag) -> bool {
        version_of(tag).is_some_and(|v| self.alternatives.iter().any(|r| r.matches(&v)))
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// Drops a `v` before each comparator's version: `>=v1.4, <v2` reads as `>=1.4, <2`.
fn strip_v(alternative: &str) -> String {
    alternative
        .split(',')
        .map(|comparator| {
            let c = comparator.trim();
            let op_end = c.find(|ch: char| !"<>=~^ ".contains(ch)).unwrap_or(c.len());
            let (op, version) = c.split_at(op_end);
            let version = version
                .strip_prefix('v')
                .or_else(|| version.strip_prefix('V'))
                .unwrap_or(version);
            format!("{op}{version}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for VersionRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for VersionRange {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

/// Linear-time wildcard matching: on a mismatch, resume from the last `*`, one character on.
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut resume: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                resume = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match resume {
                Some((star, matched)) => {
                    p = star + 1;
                    t = matched + 1;
                    resume = Some((star, matched + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn matches(pattern: &str, tag: &str) -> bool {
        TagPattern::parse(pattern)
            .unwrap()
            .matches(&Tag::parse(tag).unwrap())
    }

    #[test]
    fn globs_match_as_in_a_shell() {
        let table = [
            ("main-*", "main-abc123", true),
            ("main-*", "main-", true),
            ("main-*", "feature-main-1", false),
            ("v*", "v1.2.3", true),
            ("v*", "latest", false),
            ("v?.*", "v1.2", true),
            ("v?.*", "v10.2", false),
            ("*-rc*", "v1-rc2", true),
            ("latest", "latest", true),
            ("latest", "latest2", false),
            ("*", "anything", true),
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "aXbY", false),
        ];
        for (pattern, tag, expected) in table {
            assert_eq!(matches(pattern, tag), expected, "{pattern} ~ {tag}");
        }
    }

    #[test]
    fn patterns_with_other_characters_are_refused() {
        for bad in ["", "v[0-9]", "v1;id", "main/*", "$(x)"] {
            assert!(TagPattern::parse(bad).is_err(), "{bad:?}");
        }
    }

    fn in_range(range: &str, tag: &str) -> bool {
        VersionRange::parse(range)
            .unwrap()
            .matches(&Tag::parse(tag).unwrap())
    }

    #[test]
    fn semver_ranges_match_as_keel_and_flux_users_expect() {
        let table = [
            (">=1.4, <2", "1.4.0", true),
            (">=1.4, <2", "v1.9.12", true),
            (">=1.4, <2", "V1.5.0", true),
            (">=1.4, <2", "1.3.9", false),
            (">=1.4, <2", "2.0.0", false),
            ("^1.4", "1.4.7", true),
            ("^1.4", "1.12.0", true),
            ("^1.4", "2.0.0", false),
            ("~1.4.2", "1.4.9", true),
            ("~1.4.2", "1.4.1", false),
            ("~1.4.2", "1.5.0", false),
            (">=v1.4, <v2", "1.6.0", true),
            ("1.4", "1.9.0", true),
            ("1.4", "1.3.0", false),
            ("1.4.* || 2.0.*", "2.0.3", true),
            ("1.4.* || 2.0.*", "1.5.0", false),
            // Pre-releases only where the range names one of the same version.
            (">=1.4, <2", "1.5.0-rc.1", false),
            ("^1.4", "v1.4.1-beta", false),
            (">=1.5.0-rc.1, <2", "1.5.0-rc.2", true),
            (">=1.5.0-rc.1, <2", "1.5.0", true),
            (">=1.5.0-rc.1, <2", "1.6.0-rc.1", false),
            // Tags that name no version never match.
            (">=1", "latest", false),
            (">=1", "1.4", false),
            (">=1", "main-1.4.0", false),
            (">=1", "v", false),
        ];
        for (range, tag, expected) in table {
            assert_eq!(in_range(range, tag), expected, "{range} ~ {tag}");
        }
    }

    #[test]
    fn a_range_that_is_not_semver_is_refused_with_how_to_write_one() {
        for bad in ["", "  ", ">=1.4 <2", "1.4 - 2", "latest", ">=x", "||"] {
            let e = VersionRange::parse(bad).unwrap_err().to_string();
            assert!(
                e.contains("is not a semver range") && e.contains(">=1.4, <2"),
                "{bad:?}: {e}"
            );
        }
    }

    #[test]
    fn versions_of_tags_order_by_semver_not_by_text() {
        let v = |t: &str| version_of(&Tag::parse(t).unwrap());
        assert!(v("1.10.0") > v("1.9.0"));
        assert!(v("v1.4.0") > v("1.3.9"));
        assert!(v("1.4.0") > v("1.4.0-rc.1"));
        assert_eq!(v("v1.4.0"), v("1.4.0"));
        assert_eq!(v("main-abc"), None);
    }

    proptest! {
        #[test]
        fn a_version_is_in_the_caret_range_of_itself(a in 0u64..50, b in 0u64..50, c in 0u64..50, v in any::<bool>()) {
            let tag = format!("{}{a}.{b}.{c}", if v { "v" } else { "" });
            let caret = format!("^{a}.{b}.{c}");
            let above = format!(">{a}.{b}.{c}");
            prop_assert!(in_range(&caret, &tag));
            prop_assert!(!in_range(&above, &tag));
        }

        #[test]
        fn a_literal_pattern_matches_only_itself(a in "[a-z0-9]{1,12}", b in "[a-z0-9]{1,12}") {
            prop_assert_eq!(matches(&a, &b), a == b);
        }

        #[test]
        fn prefix_star_matches_every_extension(prefix in "[a-z0-9]{1,8}", rest in "[a-z0-9.-]{0,12}") {
            let pattern = format!("{prefix}*");
            let tag = format!("{prefix}{rest}");
            prop_assert!(matches(&pattern, &tag));
        }
    }
}
