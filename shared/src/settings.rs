//! The functions' settings, read from the environment once per cold start. A missing or
//! empty variable is an error that names it.

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    #[error("environment variable {0} is not set")]
    Missing(&'static str),
    #[error("environment variable {name} is invalid: {message}")]
    Invalid { name: &'static str, message: String },
}

/// Where the configuration document lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigLocation {
    /// An SSM parameter (in AWS).
    Parameter(String),
    /// A file (local runs).
    File(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `PUSHDEPLOY_TABLE`: the DynamoDB table.
    pub table: String,
    /// `PUSHDEPLOY_EVENT_BUS`: the bus lifecycle events go to.
    pub event_bus: String,
    /// `PUSHDEPLOY_CONFIG_PARAMETER`, or `PUSHDEPLOY_CONFIG_FILE` for local runs.
    pub config: ConfigLocation,
    /// `PUSHDEPLOY_CONFIG_TTL_SECONDS`: how long a container reuses the parameter (default 30).
    pub config_ttl: Duration,
    /// `PUSHDEPLOY_SSM_DOCUMENT`: the Command document rollouts run (functions that start
    /// or track rollouts need it).
    pub ssm_document: Option<String>,
    /// `PUSHDEPLOY_BUNDLE_BUCKET`: the S3 bucket CodeDeploy revision bundles are uploaded
    /// to (needed only by CodeDeploy EC2/on-premises environments).
    pub bundle_bucket: Option<String>,
    /// `PUSHDEPLOY_METRICS_NAMESPACE`: the CloudWatch namespace of the metrics (default
    /// `pushdeploy`).
    pub metrics_namespace: String,
    /// `PUSHDEPLOY_JANITOR_DRY_RUN`: whether the janitor's scheduled runs only report
    /// (`true` or `false`, default `false`).
    pub janitor_dry_run: bool,
    /// `PUSHDEPLOY_AWS_ENDPOINT_URL`: one endpoint for every AWS API, for local runs against
    /// an emulator (`sam local invoke --env-vars` can set it, since the template declares it
    /// empty). Empty or unset: the SDK's own endpoints (and `AWS_ENDPOINT_URL`, if set).
    pub endpoint_url: Option<String>,
}

impl Settings {
    pub fn from_env() -> Result<Self, SettingsError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, SettingsError> {
        let value = |name: &'static str| get(name).filter(|v| !v.trim().is_empty());
        let required = |name: &'static str| value(name).ok_or(SettingsError::Missing(name));
        let config = match (
            value("PUSHDEPLOY_CONFIG_FILE"),
            value("PUSHDEPLOY_CONFIG_PARAMETER"),
        ) {
            (Some(file), _) => ConfigLocation::File(file.into()),
            (None, Some(parameter)) => ConfigLocation::Parameter(parameter),
            (None, None) => return Err(SettingsError::Missing("PUSHDEPLOY_CONFIG_PARAMETER")),
        };
        let config_ttl = match value("PUSHDEPLOY_CONFIG_TTL_SECONDS") {
            None => Duration::from_secs(30),
            Some(v) => Duration::from_secs(v.parse().map_err(|_| SettingsError::Invalid {
                name: "PUSHDEPLOY_CONFIG_TTL_SECONDS",
                message: format!("{v:?} is not a number of seconds"),
            })?),
        };
        Ok(Self {
            table: required("PUSHDEPLOY_TABLE")?,
            event_bus: required("PUSHDEPLOY_EVENT_BUS")?,
            config,
            config_ttl,
            ssm_document: value("PUSHDEPLOY_SSM_DOCUMENT"),
            bundle_bucket: value("PUSHDEPLOY_BUNDLE_BUCKET"),
            metrics_namespace: value("PUSHDEPLOY_METRICS_NAMESPACE")
                .unwrap_or_else(|| crate::metrics::DEFAULT_NAMESPACE.to_owned()),
            janitor_dry_run: match value("PUSHDEPLOY_JANITOR_DRY_RUN")
                .as_deref()
                .map(str::trim)
            {
                None | Some("false") => false,
                Some("true") => true,
                Some(other) => {
                    return Err(SettingsError::Invalid {
                        name: "PUSHDEPLOY_JANITOR_DRY_RUN",
                        message: format!("{other:?}; set it to \"true\" or \"false\""),
                    });
                }
            },
            endpoint_url: match value("PUSHDEPLOY_AWS_ENDPOINT_URL").map(|v| v.trim().to_owned()) {
                None => None,
                Some(url) if url.starts_with("http://") || url.starts_with("https://") => Some(url),
                Some(other) => {
                    return Err(SettingsError::Invalid {
                        name: "PUSHDEPLOY_AWS_ENDPOINT_URL",
                        message: format!(
                            "{other:?} is not an http:// or https:// URL (e.g. http://host.containers.internal:5000), or leave it empty"
                        ),
                    });
                }
            },
        })
    }

    pub fn require_document(&self) -> Result<&str, SettingsError> {
        self.ssm_document
            .as_deref()
            .ok_or(SettingsError::Missing("PUSHDEPLOY_SSM_DOCUMENT"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn from(vars: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn a_missing_variable_is_named() {
        let err = from(&[
            ("PUSHDEPLOY_EVENT_BUS", "b"),
            ("PUSHDEPLOY_CONFIG_PARAMETER", "/p"),
        ])
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "environment variable PUSHDEPLOY_TABLE is not set"
        );
    }

    #[test]
    fn the_janitors_dry_run_is_true_or_false_and_nothing_else() {
        let base = [
            ("PUSHDEPLOY_TABLE", "t"),
            ("PUSHDEPLOY_EVENT_BUS", "b"),
            ("PUSHDEPLOY_CONFIG_PARAMETER", "/p"),
        ];
        assert!(!from(&base).unwrap().janitor_dry_run);
        let with = |v| {
            let mut vars = base.to_vec();
            vars.push(("PUSHDEPLOY_JANITOR_DRY_RUN", v));
            from(&vars)
        };
        assert!(with("true").unwrap().janitor_dry_run);
        assert!(!with("false").unwrap().janitor_dry_run);
        assert_eq!(
            with("yes").unwrap_err().to_string(),
            "environment variable PUSHDEPLOY_JANITOR_DRY_RUN is invalid: \"yes\"; set it to \"true\" or \"false\""
        );
    }

    #[test]
    fn an_empty_endpoint_is_the_sdks_own_and_a_bad_one_is_named() {
        let base = [
            ("PUSHDEPLOY_TABLE", "t"),
            ("PUSHDEPLOY_EVENT_BUS", "b"),
            ("PUSHDEPLOY_CONFIG_PARAMETER", "/p"),
        ];
        let with = |v| {
            let mut vars = base.to_vec();
            vars.push(("PUSHDEPLOY_AWS_ENDPOINT_URL", v));
            from(&vars)
        };
        assert_eq!(from(&base).unwrap().endpoint_url, None);
        assert_eq!(with("").unwrap().endpoint_url, None);
        assert_eq!(
            with(" http://10.88.0.1:5000 ")
                .unwrap()
                .endpoint_url
                .as_deref(),
            Some("http://10.88.0.1:5000")
        );
        assert_eq!(
            with("localhost:5000").unwrap_err().to_string(),
            "environment variable PUSHDEPLOY_AWS_ENDPOINT_URL is invalid: \"localhost:5000\" is not an http:// or https:// URL (e.g. http://host.containers.internal:5000), or leave it empty"
        );
    }

    #[test]
    fn a_config_file_wins_over_the_parameter_for_local_runs() {
        let s = from(&[
            ("PUSHDEPLOY_TABLE", "t"),
            ("PUSHDEPLOY_EVENT_BUS", "b"),
            ("PUSHDEPLOY_CONFIG_PARAMETER", "/p"),
            ("PUSHDEPLOY_CONFIG_FILE", "/tmp/c.yaml"),
        ])
        .unwrap();
        assert_eq!(s.config, ConfigLocation::File("/tmp/c.yaml".into()));
        assert_eq!(
            s.require_document(),
            Err(SettingsError::Missing("PUSHDEPLOY_SSM_DOCUMENT"))
        );
    }
}
