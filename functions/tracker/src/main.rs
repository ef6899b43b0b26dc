//! tracker: follows rollouts through their target's status-change events, and on a
//! schedule reconciles what events missed. Wires the adapters once per cold start.

mod handler;

use lambda_runtime::{Error, LambdaEvent, run, service_fn};
use pushdeploy::adapters::wire;
use pushdeploy::services::Tracker;
use pushdeploy::settings::Settings;
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let settings = Settings::from_env()?;
    let sdk = wire::sdk_config().await;
    let document = settings.require_document()?.to_owned();
    let tracker = Tracker {
        core: wire::core(&sdk, &settings),
        target: wire::target(&sdk, &settings)?,
    };
    run(service_fn(|event: LambdaEvent<Value>| {
        handler::handle(&tracker, &document, event)
    }))
    .await
}
