//! Free text people give: why something is done, and who does it. Bounded and free of
//! control characters, so no record, event or message outgrows what stores it (DynamoDB
//! items end at 400 KB, EventBridge entries at 256 KB); and values quoted in messages, cut
//! short.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

/// The longest reason: a sentence or a short paragraph.
pub const MAX_REASON: usize = 1_000;
/// The longest name of a person or a caller identity.
pub const MAX_PERSON: usize = 200;

/// The longest a message's own text may get: values quoted in it are cut short.
const MAX_TEXT: usize = 400;

/// A value quoted for a message, cut short when long.
pub fn quote(value: &str) -> String {
    cut(&format!("{value:?}"))
}

/// Text cut short when long, saying how long it was.
pub fn cut(text: &str) -> String {
    let length = text.chars().count();
    if length <= MAX_TEXT {
        return text.to_owned();
    }
    let kept: String = text.chars().take(MAX_TEXT).collect();
    format!("{kept}… ({length} characters in all)")
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    #[error("{what} is empty")]
    Empty { what: &'static str },
    #[error("{what} is {length} characters long; keep it to {max}")]
    TooLong {
        what: &'static str,
        length: usize,
        max: usize,
    },
    #[error("{what} holds a control character ({found:?}); use plain text")]
    Control { what: &'static str, found: char },
}

fn check(what: &'static str, value: &str, max: usize, newlines: bool) -> Result<(), TextError> {
    if value.trim().is_empty() {
        return Err(TextError::Empty { what });
    }
    let length = value.chars().count();
    if length > max {
        return Err(TextError::TooLong { what, length, max });
    }
    let allowed = |c: char| newlines && (c == '\n' || c == '\t');
    if let Some(found) = value.chars().find(|c| c.is_control() && !allowed(*c)) {
        return Err(TextError::Control { what, found });
    }
    Ok(())
}

macro_rules! text_type {
    ($(#[$doc:meta])* $ty:ident, $what:literal, $max:expr, $newlines:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Serialize)]
        #[serde(transparent)]
        pub struct $ty(String);

        impl $ty {
            pub fn parse(value: &str) -> Result<Self, TextError> {
                check($what, value, $max, $newlines)?;
                Ok(Self(value.trim().to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(deserializer)?;
                Self::parse(&raw).map_err(serde::de::Error::custom)
            }
        }
    };
}

text_type!(
    /// Why something is done: a freeze, a rejection, a deploy by hand.
    Reason,
    "the reason",
    MAX_REASON,
    true
);
text_type!(
    /// Who does it: a name, an email, a caller identity.
    Person,
    "the name",
    MAX_PERSON,
    false
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_bounded_trimmed_and_plain() {
        assert_eq!(
            Reason::parse("  release freeze ").unwrap().as_str(),
            "release freeze"
        );
        assert!(Reason::parse("two\nlines").is_ok());
        assert_eq!(
            Reason::parse("   ").unwrap_err().to_string(),
            "the reason is empty"
        );
        assert_eq!(
            Reason::parse(&"x".repeat(450_000)).unwrap_err().to_string(),
            "the reason is 450000 characters long; keep it to 1000"
        );
        assert!(Person::parse("alice\nbob").is_err());
        assert!(Person::parse("alice@example.com").is_ok());
    }
}
