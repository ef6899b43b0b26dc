//! notifier: tells people about deployments on Slack, Discord or a webhook. Wires the
//! adapters once per cold start.

mod handler;

use std::time::Duration;

use lambda_runtime::{Error, LambdaEvent, run, service_fn};
use pushdeploy::adapters::wire;
use pushdeploy::services::Notifier;
use pushdeploy::services::notify::Delivery;
use pushdeploy::settings::Settings;
use serde_json::Value;

/// How long a container reuses a webhook URL it read.
const SECRET_TTL: Duration = Duration::from_secs(300);

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let settings = Settings::from_env()?;
    let sdk = wire::sdk_config().await;
    let notifier = Notifier {
        core: wire::core(&sdk, &settings),
        secrets: wire::secrets(&sdk, SECRET_TTL),
        webhook: wire::webhook()?,
        delivery: Delivery::default(),
    };
    run(service_fn(|event: LambdaEvent<Value>| {
        handler::handle(&notifier, event)
    }))
    .await
}
