//! Which tags deploy an environment on push: shell-style globs (`*`, `?`).

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

    proptest! {
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
