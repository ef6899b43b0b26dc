//! Building every adapter once per cold start, from one `SdkConfig` and the settings.

use std::sync::Arc;

use aws_config::{BehaviorVersion, SdkConfig};

use super::config_file::FileConfig;
use super::dynamodb::DynamoStore;
use super::eventbridge::EventBridgePublisher;
use super::ssm::SsmRunCommand;
use super::ssm_config::ParameterConfig;
use crate::metrics::{Metered, Sink};
use crate::ports::{ConfigSource, SystemClock, Target, Targets};
use crate::services::Core;
use crate::settings::{ConfigLocation, Settings, SettingsError};

/// The SDK configuration from the environment: region, credentials, and `AWS_ENDPOINT_URL`
/// (how local runs reach the emulator).
pub async fn sdk_config() -> SdkConfig {
    aws_config::load_defaults(BehaviorVersion::latest()).await
}

/// The ports every function uses.
pub fn core(sdk: &SdkConfig, settings: &Settings) -> Core {
    let config: Arc<dyn ConfigSource> = match &settings.config {
        ConfigLocation::File(path) => Arc::new(FileConfig::new(path)),
        ConfigLocation::Parameter(name) => Arc::new(ParameterConfig::new(
            aws_sdk_ssm::Client::new(sdk),
            name,
            settings.config_ttl,
        )),
    };
    Core {
        store: Arc::new(DynamoStore::new(
            aws_sdk_dynamodb::Client::new(sdk),
            &settings.table,
        )),
        events: Arc::new(Metered::new(
            EventBridgePublisher::new(aws_sdk_eventbridge::Client::new(sdk), &settings.event_bus),
            &settings.metrics_namespace,
            Sink::Stdout,
        )),
        config,
        clock: Arc::new(SystemClock),
    }
}

/// The rollout targets: SSM Run Command with pushdeploy's document, ECS services and
/// CodeDeploy deployment groups when the function is built with them.
pub fn target(sdk: &SdkConfig, settings: &Settings) -> Result<Arc<dyn Target>, SettingsError> {
    let document = settings.require_document()?;
    let targets = Targets::default().with(
        super::ssm::KIND,
        Arc::new(SsmRunCommand::new(aws_sdk_ssm::Client::new(sdk), document)),
    );
    #[cfg(feature = "ecs")]
    let targets = targets.with(
        super::ecs::KIND,
        Arc::new(super::ecs::EcsService::new(aws_sdk_ecs::Client::new(sdk))),
    );
    #[cfg(feature = "codedeploy")]
    let targets = targets.with(
        super::codedeploy::KIND,
        Arc::new(super::codedeploy::CodeDeploy::new(
            aws_sdk_codedeploy::Client::new(sdk),
            aws_sdk_s3::Client::new(sdk),
            aws_sdk_ecs::Client::new(sdk),
            settings.bundle_bucket.clone(),
        )),
    );
    Ok(Arc::new(targets))
}

/// The image registry: Amazon ECR. One client serves every registry port.
#[cfg(feature = "ecr")]
pub fn ecr(sdk: &SdkConfig) -> Arc<super::ecr::EcrRegistry> {
    Arc::new(super::ecr::EcrRegistry::new(aws_sdk_ecr::Client::new(sdk)))
}

/// The HTTP client of smoke checks.
#[cfg(feature = "http-probe")]
pub fn probe() -> Result<Arc<dyn crate::ports::HttpProbe>, reqwest::Error> {
    Ok(Arc::new(super::http_probe::ReqwestProbe::new()?))
}

/// Where webhook URLs are read: SSM parameters and Secrets Manager, cached for `ttl`.
#[cfg(feature = "secrets")]
pub fn secrets(sdk: &SdkConfig, ttl: std::time::Duration) -> Arc<dyn crate::ports::SecretSource> {
    Arc::new(super::secrets::AwsSecrets::new(
        aws_sdk_ssm::Client::new(sdk),
        aws_sdk_secretsmanager::Client::new(sdk),
        ttl,
    ))
}

/// The HTTP client of notifications.
#[cfg(feature = "webhook")]
pub fn webhook() -> Result<Arc<dyn crate::ports::Webhook>, reqwest::Error> {
    Ok(Arc::new(super::webhook::ReqwestWebhook::new()?))
}
