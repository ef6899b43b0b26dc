//! Names of apps and environments: validated once at the boundary, then trusted.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{what} is empty")]
    Empty { what: &'static str },
    #[error("{what} {value:?} is longer than 40 characters")]
    TooLong { what: &'static str, value: String },
    #[error(
        "{what} {value:?} must start with a lowercase letter and use only lowercase letters, digits, '-' and '_'"
    )]
    Charset { what: &'static str, value: String },
}

fn check(what: &'static str, value: &str) -> Result<(), NameError> {
    if value.is_empty() {
        return Err(NameError::Empty { what });
    }
    if value.len() > 40 {
        return Err(NameError::TooLong {
            what,
            value: value.to_owned(),
        });
    }
    let mut chars = value.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    let rest_ok =
        chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !first_ok || !rest_ok {
        return Err(NameError::Charset {
            what,
            value: value.to_owned(),
        });
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $ty:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $ty(String);

        impl $ty {
            pub fn parse(value: &str) -> Result<Self, NameError> {
                check($what, value)?;
                Ok(Self(value.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $ty {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
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

name_type!(
    /// An application as named in the configuration, e.g. `web`.
    AppName,
    "app name"
);
name_type!(
    /// An environment of an application, e.g. `staging`.
    EnvName,
    "environment name"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_names() {
        for ok in ["web", "api-v2", "staging", "prod_eu", "a"] {
            assert!(AppName::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn refuses_names_that_could_break_keys_or_shells() {
        for bad in [
            "",
            "Web",
            "1web",
            "web#prod",
            "web prod",
            "web;rm",
            &"a".repeat(41),
        ] {
            assert!(EnvName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn error_names_the_offending_value() {
        let err = AppName::parse("Web").unwrap_err().to_string();
        assert!(err.contains("\"Web\""), "{err}");
        assert!(err.starts_with("app name"), "{err}");
    }
}
