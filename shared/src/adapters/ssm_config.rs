//! The configuration document in SSM Parameter Store, cached per container for a short
//! time so that most invocations make no call for it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_sdk_ssm::Client;
use aws_sdk_ssm::error::SdkError;
use aws_sdk_ssm::operation::get_parameter::GetParameterError;
use tokio::sync::Mutex;

use super::aws::{ErrorClass, classify, describe};
use crate::domain::Config;
use crate::ports::{CallError, ConfigLoadError, ConfigSource};

pub struct ParameterConfig {
    client: Client,
    name: String,
    ttl: Duration,
    cached: Mutex<Option<(Instant, Arc<Config>)>>,
}

impl ParameterConfig {
    pub fn new(client: Client, name: impl Into<String>, ttl: Duration) -> Self {
        Self {
            client,
            name: name.into(),
            ttl,
            cached: Mutex::new(None),
        }
    }
}

#[async_trait]
impl ConfigSource for ParameterConfig {
    async fn load(&self) -> Result<Arc<Config>, ConfigLoadError> {
        let mut cached = self.cached.lock().await;
        if let Some((at, config)) = cached.as_ref()
            && at.elapsed() < self.ttl
        {
            return Ok(config.clone());
        }
        let out = self
            .client
            .get_parameter()
            .name(&self.name)
            .with_decryption(true)
            .send()
            .await
            .map_err(|e| self.error(e))?;
        let parameter = out.parameter();
        let text = parameter.and_then(|p| p.value()).unwrap_or_default();
        let origin = format!(
            "SSM parameter {} (version {})",
            self.name,
            parameter.map(|p| p.version()).unwrap_or_default()
        );
        let config = Arc::new(
            Config::from_yaml(text)
                .map_err(|source| ConfigLoadError::Invalid { origin, source })?,
        );
        *cached = Some((Instant::now(), config.clone()));
        Ok(config)
    }
}

impl ParameterConfig {
    fn error(
        &self,
        error: SdkError<GetParameterError, aws_smithy_runtime_api::http::Response>,
    ) -> ConfigLoadError {
        if let SdkError::ServiceError(context) = &error
            && let GetParameterError::ParameterNotFound(_) = context.err()
        {
            return ConfigLoadError::NotFound(format!(
                "SSM parameter {} does not exist; put the configuration YAML there",
                self.name
            ));
        }
        let retryable = classify(&error) != ErrorClass::Permanent;
        ConfigLoadError::Unavailable {
            origin: format!("SSM parameter {}", self.name),
            retryable,
            source: CallError::new("GetParameter", describe(&error), Box::new(error)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_ssm::operation::get_parameter::GetParameterOutput;
    use aws_sdk_ssm::types::Parameter;
    use aws_sdk_ssm::types::error::ParameterNotFound;
    use aws_smithy_mocks::{RuleMode, mock, mock_client};

    const YAML: &str = "apps:\n  web:\n    repository: acme/web\n    environments:\n      qa:\n        target: { ssm: { instances: { ids: [i-0123456789abcdef0] }, container: web, ports: [\"80:80\"] } }\n";

    #[tokio::test]
    async fn reads_once_then_serves_from_cache() {
        let rule = mock!(Client::get_parameter).then_output(|| {
            GetParameterOutput::builder()
                .parameter(Parameter::builder().value(YAML).version(3).build())
                .build()
        });
        let client = mock_client!(aws_sdk_ssm, RuleMode::MatchAny, [&rule]);
        let source = ParameterConfig::new(client, "/pushdeploy/config", Duration::from_secs(60));
        source.load().await.unwrap();
        source.load().await.unwrap();
        assert_eq!(rule.num_calls(), 1);
    }

    #[tokio::test]
    async fn an_invalid_document_names_the_parameter_and_the_field() {
        let rule = mock!(Client::get_parameter).then_output(|| {
            GetParameterOutput::builder()
                .parameter(
                    Parameter::builder()
                        .value("apps: { web: { repository: Bad } }")
                        .version(7)
                        .build(),
                )
                .build()
        });
        let source = ParameterConfig::new(
            mock_client!(aws_sdk_ssm, [&rule]),
            "/pushdeploy/config",
            Duration::ZERO,
        );
        let err = source.load().await.unwrap_err().to_string();
        assert!(
            err.starts_with("SSM parameter /pushdeploy/config (version 7): invalid configuration"),
            "{err}"
        );
        assert!(err.contains("apps.web"), "{err}");
    }

    #[tokio::test]
    async fn a_missing_parameter_says_where_to_put_the_configuration() {
        let rule = mock!(Client::get_parameter).then_error(|| {
            GetParameterError::ParameterNotFound(ParameterNotFound::builder().build())
        });
        let source = ParameterConfig::new(
            mock_client!(aws_sdk_ssm, [&rule]),
            "/pushdeploy/config",
            Duration::ZERO,
        );
        let err = source.load().await.unwrap_err();
        assert!(matches!(err, ConfigLoadError::NotFound(_)), "{err:?}");
    }
}
