//! Webhook URLs from SSM SecureString parameters or Secrets Manager, decrypted, cached
//! per container for a few minutes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::aws::failed;
use crate::domain::config::SecretRef;
use crate::ports::{SecretError, SecretSource};

pub struct AwsSecrets {
    ssm: aws_sdk_ssm::Client,
    secrets: aws_sdk_secretsmanager::Client,
    ttl: Duration,
    cache: Mutex<HashMap<SecretRef, (String, Instant)>>,
}

impl AwsSecrets {
    pub fn new(
        ssm: aws_sdk_ssm::Client,
        secrets: aws_sdk_secretsmanager::Client,
        ttl: Duration,
    ) -> Self {
        Self {
            ssm,
            secrets,
            ttl,
            cache: Mutex::default(),
        }
    }

    async fn fetch(&self, secret: &SecretRef) -> Result<String, SecretError> {
        match secret {
            SecretRef::SsmParameter(name) => {
                let out = self
                    .ssm
                    .get_parameter()
                    .name(name)
                    .with_decryption(true)
                    .send()
                    .await
                    .map_err(|e| {
                        if e.as_service_error()
                            .is_some_and(|s| s.is_parameter_not_found())
                        {
                            return SecretError::NotFound(format!(
                                "SSM parameter {name} does not exist"
                            ));
                        }
                        failed(e, &format!("GetParameter {name}"))
                    })?;
                out.parameter()
                    .and_then(|p| p.value())
                    .map(str::to_owned)
                    .ok_or_else(|| {
                        SecretError::NotFound(format!("SSM parameter {name} has no value"))
                    })
            }
            SecretRef::Secret(id) => {
                let out = self
                    .secrets
                    .get_secret_value()
                    .secret_id(id)
                    .send()
                    .await
                    .map_err(|e| {
                        if e.as_service_error()
                            .is_some_and(|s| s.is_resource_not_found_exception())
                        {
                            return SecretError::NotFound(format!("secret {id} does not exist"));
                        }
                        failed(e, &format!("GetSecretValue {id}"))
                    })?;
                out.secret_string()
                    .map(str::to_owned)
                    .ok_or_else(|| SecretError::NotFound(format!("secret {id} holds no string")))
            }
        }
    }
}

#[async_trait]
impl SecretSource for AwsSecrets {
    async fn read(&self, secret: &SecretRef) -> Result<String, SecretError> {
        // A cache is only a cache: one poisoned by a panic elsewhere is used as it is.
        let cache = || self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((value, at)) = cache().get(secret)
            && at.elapsed() < self.ttl
        {
            return Ok(value.clone());
        }
        let value = self.fetch(secret).await?;
        cache().insert(secret.clone(), (value.clone(), Instant::now()));
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_secretsmanager::operation::get_secret_value::{
        GetSecretValueError, GetSecretValueOutput,
    };
    use aws_sdk_secretsmanager::types::error::ResourceNotFoundException;
    use aws_sdk_ssm::operation::get_parameter::GetParameterOutput;
    use aws_sdk_ssm::types::Parameter;
    use aws_smithy_mocks::{RuleMode, mock, mock_client};

    #[tokio::test]
    async fn a_parameter_is_read_decrypted_once_and_then_from_the_cache() {
        let get = mock!(aws_sdk_ssm::Client::get_parameter)
            .match_requests(|r| {
                r.name() == Some("/pushdeploy/notify/slack") && r.with_decryption() == Some(true)
            })
            .then_output(|| {
                GetParameterOutput::builder()
                    .parameter(
                        Parameter::builder()
                            .value("https://hooks.example/x")
                            .build(),
                    )
                    .build()
            });
        let ssm = mock_client!(aws_sdk_ssm, RuleMode::Sequential, [&get]);
        let sm = mock_client!(aws_sdk_secretsmanager, []);
        let secrets = AwsSecrets::new(ssm, sm, Duration::from_secs(60));
        let secret = SecretRef::SsmParameter("/pushdeploy/notify/slack".into());
        assert_eq!(
            secrets.read(&secret).await.unwrap(),
            "https://hooks.example/x"
        );
        assert_eq!(
            secrets.read(&secret).await.unwrap(),
            "https://hooks.example/x"
        );
        assert_eq!(get.num_calls(), 1);
    }

    #[tokio::test]
    async fn a_missing_secret_says_which() {
        let missing = mock!(aws_sdk_secretsmanager::Client::get_secret_value).then_error(|| {
            GetSecretValueError::ResourceNotFoundException(
                ResourceNotFoundException::builder().message("nope").build(),
            )
        });
        let found = mock!(aws_sdk_secretsmanager::Client::get_secret_value).then_output(|| {
            GetSecretValueOutput::builder()
                .secret_string("https://h/y")
                .build()
        });
        let ssm = mock_client!(aws_sdk_ssm, []);
        let sm = mock_client!(
            aws_sdk_secretsmanager,
            RuleMode::Sequential,
            [&missing, &found]
        );
        let secrets = AwsSecrets::new(ssm, sm, Duration::from_secs(60));
        let secret = SecretRef::Secret("pushdeploy/notify/discord".into());
        let err = secrets.read(&secret).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "secret pushdeploy/notify/discord does not exist"
        );
        assert_eq!(secrets.read(&secret).await.unwrap(), "https://h/y");
    }
}
