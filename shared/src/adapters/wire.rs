//! Building every adapter once per cold start, from one `SdkConfig` and the settings, and
//! each function's use case from them: what a function's `main` calls before serving.

use std::sync::Arc;

use aws_config::{BehaviorVersion, SdkConfig};
use aws_smithy_runtime_api::client::interceptors::SharedInterceptor;

use super::config_file::FileConfig;
use super::dynamodb::DynamoStore;
use super::eventbridge::EventBridgePublisher;
use super::ssm::SsmRunCommand;
use super::ssm_config::ParameterConfig;
use crate::metrics::{Meter, Sink};
use crate::ports::{ConfigSource, SystemClock, Target, Targets};
#[cfg(all(feature = "secrets", feature = "webhook"))]
use crate::services::Notifier;
#[cfg(all(feature = "http-probe", feature = "cloudwatch"))]
use crate::services::Verifier;
use crate::services::{Control, Core, Tracker};
#[cfg(feature = "ecr")]
use crate::services::{Deployer, Janitor, Rollback};
use crate::settings::{ConfigLocation, Settings, SettingsError};

/// The SDK configuration from the environment: region, credentials, and the endpoint local
/// runs reach an emulator at (`PUSHDEPLOY_AWS_ENDPOINT_URL`, else the SDK's own
/// `AWS_ENDPOINT_URL`).
pub async fn sdk_config(endpoint_url: Option<&str>) -> SdkConfig {
    let loader = aws_config::defaults(BehaviorVersion::latest());
    match endpoint_url {
        Some(url) => loader.endpoint_url(url).load().await,
        None => loader.load().await,
    }
}

/// What every function does first: JSON logs, its settings (failing fast with the name of a
/// missing or bad variable) and the SDK configuration.
pub async fn start() -> Result<(Settings, Sdk), SettingsError> {
    lambda_runtime::tracing::init_default_subscriber();
    let settings = Settings::from_env()?;
    let sdk = sdk_config(settings.endpoint_url.as_deref()).await;
    Ok((settings, Sdk::new(sdk)))
}

/// What every SDK client of a function is made from: the SDK configuration, and the
/// interceptors each client runs. A deployed function has none; the test suite gives each
/// function's clients one that records every request they send, so that the template can
/// be checked to grant exactly what is called.
#[derive(Clone, Debug)]
pub struct Sdk {
    config: SdkConfig,
    interceptors: Vec<SharedInterceptor>,
}

impl Sdk {
    pub fn new(config: SdkConfig) -> Self {
        Self {
            config,
            interceptors: Vec::new(),
        }
    }

    /// The same, with every client also running `interceptor`.
    pub fn intercepted_by(mut self, interceptor: SharedInterceptor) -> Self {
        self.interceptors.push(interceptor);
        self
    }

    pub fn config(&self) -> &SdkConfig {
        &self.config
    }
}

/// A client of one AWS service, made from `sdk` with its interceptors.
macro_rules! client {
    ($service:ident, $sdk:expr) => {{
        let sdk: &Sdk = $sdk;
        let mut builder = $service::config::Builder::from(&sdk.config);
        for interceptor in &sdk.interceptors {
            builder.push_interceptor(interceptor.clone());
        }
        $service::Client::from_conf(builder.build())
    }};
}

/// The SDK clients of one function, each made once and shared by every port that uses it:
/// making a client builds its HTTP connector, about as much work as a few requests.
struct Clients<'a> {
    sdk: &'a Sdk,
    ssm: std::cell::OnceCell<aws_sdk_ssm::Client>,
    #[cfg(any(feature = "ecs", feature = "codedeploy"))]
    ecs: std::cell::OnceCell<aws_sdk_ecs::Client>,
}

impl<'a> Clients<'a> {
    fn new(sdk: &'a Sdk) -> Self {
        Self {
            sdk,
            ssm: Default::default(),
            #[cfg(any(feature = "ecs", feature = "codedeploy"))]
            ecs: Default::default(),
        }
    }

    fn ssm(&self) -> aws_sdk_ssm::Client {
        self.ssm
            .get_or_init(|| client!(aws_sdk_ssm, self.sdk))
            .clone()
    }

    #[cfg(any(feature = "ecs", feature = "codedeploy"))]
    fn ecs(&self) -> aws_sdk_ecs::Client {
        self.ecs
            .get_or_init(|| client!(aws_sdk_ecs, self.sdk))
            .clone()
    }
}

/// The deployer's use case.
#[cfg(feature = "ecr")]
pub fn deployer(sdk: &Sdk, settings: &Settings) -> Result<Deployer, SettingsError> {
    let (ecr, clients) = (ecr(sdk), Clients::new(sdk));
    Ok(Deployer {
        core: core_of(&clients, settings),
        registry: ecr.clone(),
        target: target_of(&clients, settings)?,
        tags: ecr,
    })
}

/// The tracker's use case.
#[cfg(feature = "ecr")]
pub fn tracker(sdk: &Sdk, settings: &Settings) -> Result<Tracker, SettingsError> {
    let clients = Clients::new(sdk);
    Ok(Tracker {
        core: core_of(&clients, settings),
        target: target_of(&clients, settings)?,
        registry: ecr(sdk),
    })
}

/// The verifier's use case.
#[cfg(all(feature = "http-probe", feature = "cloudwatch"))]
pub fn verifier(sdk: &Sdk, settings: &Settings) -> Result<Verifier, reqwest::Error> {
    Ok(Verifier {
        core: core(sdk, settings),
        probe: probe()?,
        alarms: Arc::new(super::cloudwatch::CloudWatchAlarms::new(client!(
            aws_sdk_cloudwatch,
            sdk
        ))),
    })
}

/// The rollback function's use case.
#[cfg(feature = "ecr")]
pub fn rollback(sdk: &Sdk, settings: &Settings) -> Result<Rollback, SettingsError> {
    let clients = Clients::new(sdk);
    Ok(Rollback {
        core: core_of(&clients, settings),
        registry: ecr(sdk),
        target: target_of(&clients, settings)?,
    })
}

/// Control's use case.
pub fn control(sdk: &Sdk, settings: &Settings) -> Control {
    Control {
        core: core(sdk, settings),
    }
}

/// The janitor's use case.
#[cfg(feature = "ecr")]
pub fn janitor(sdk: &Sdk, settings: &Settings) -> Janitor {
    Janitor {
        core: core(sdk, settings),
        catalog: ecr(sdk),
    }
}

/// How long a notifier container reuses a webhook URL it read.
#[cfg(all(feature = "secrets", feature = "webhook"))]
const SECRET_TTL: std::time::Duration = std::time::Duration::from_secs(300);

/// The notifier's use case.
#[cfg(all(feature = "secrets", feature = "webhook"))]
pub fn notifier(sdk: &Sdk, settings: &Settings) -> Result<Notifier, reqwest::Error> {
    Ok(Notifier {
        core: core(sdk, settings),
        secrets: secrets(sdk, SECRET_TTL),
        webhook: webhook()?,
        delivery: Default::default(),
    })
}

/// The ports every function uses.
pub fn core(sdk: &Sdk, settings: &Settings) -> Core {
    core_of(&Clients::new(sdk), settings)
}

fn core_of(clients: &Clients, settings: &Settings) -> Core {
    let sdk = clients.sdk;
    let config: Arc<dyn ConfigSource> = match &settings.config {
        ConfigLocation::File(path) => Arc::new(FileConfig::new(path)),
        ConfigLocation::Parameter(name) => Arc::new(ParameterConfig::new(
            clients.ssm(),
            name,
            settings.config_ttl,
        )),
    };
    Core {
        store: Arc::new(DynamoStore::new(
            client!(aws_sdk_dynamodb, sdk),
            &settings.table,
        )),
        events: Arc::new(EventBridgePublisher::new(
            client!(aws_sdk_eventbridge, sdk),
            &settings.event_bus,
        )),
        meter: Meter::new(&settings.metrics_namespace, Sink::Stdout),
        config,
        clock: Arc::new(SystemClock),
    }
}

/// The rollout targets: SSM Run Command with pushdeploy's document, ECS services and
/// CodeDeploy deployment groups when the function is built with them.
fn target_of(clients: &Clients, settings: &Settings) -> Result<Arc<dyn Target>, SettingsError> {
    let document = settings.require_document()?;
    let targets = Targets::default().with(
        super::ssm::KIND,
        Arc::new(SsmRunCommand::new(clients.ssm(), document)),
    );
    #[cfg(feature = "ecs")]
    let targets = targets.with(
        super::ecs::KIND,
        Arc::new(super::ecs::EcsService::new(clients.ecs())),
    );
    #[cfg(feature = "codedeploy")]
    let targets = targets.with(
        super::codedeploy::KIND,
        Arc::new(super::codedeploy::CodeDeploy::new(
            client!(aws_sdk_codedeploy, clients.sdk),
            client!(aws_sdk_s3, clients.sdk),
            clients.ecs(),
            settings.bundle_bucket.clone(),
        )),
    );
    Ok(Arc::new(targets))
}

/// The image registry: Amazon ECR. One client serves every registry port.
#[cfg(feature = "ecr")]
pub fn ecr(sdk: &Sdk) -> Arc<super::ecr::EcrRegistry> {
    Arc::new(super::ecr::EcrRegistry::new(client!(aws_sdk_ecr, sdk)))
}

/// The HTTP client of smoke checks.
#[cfg(feature = "http-probe")]
pub fn probe() -> Result<Arc<dyn crate::ports::HttpProbe>, reqwest::Error> {
    Ok(Arc::new(super::http_probe::ReqwestProbe::new()?))
}

/// Where webhook URLs are read: SSM parameters and Secrets Manager, cached for `ttl`.
#[cfg(feature = "secrets")]
pub fn secrets(sdk: &Sdk, ttl: std::time::Duration) -> Arc<dyn crate::ports::SecretSource> {
    Arc::new(super::secrets::AwsSecrets::new(
        client!(aws_sdk_ssm, sdk),
        client!(aws_sdk_secretsmanager, sdk),
        ttl,
    ))
}

/// The HTTP client of notifications.
#[cfg(feature = "webhook")]
pub fn webhook() -> Result<Arc<dyn crate::ports::Webhook>, reqwest::Error> {
    Ok(Arc::new(super::webhook::ReqwestWebhook::new()?))
}
