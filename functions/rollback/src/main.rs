//! rollback: rolls a failed deployment back to the last verified image, automatically on
//! "Rollout Failed" / "Verification Failed", or by hand. Wires the adapters once per cold
//! start.

mod handler;

use lambda_runtime::{Error, LambdaEvent, run, service_fn};
use pushdeploy::adapters::wire;
use pushdeploy::services::Rollback;
use pushdeploy::settings::Settings;
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let settings = Settings::from_env()?;
    let sdk = wire::sdk_config().await;
    let rollback = Rollback {
        core: wire::core(&sdk, &settings),
        registry: wire::ecr(&sdk),
        target: wire::target(&sdk, &settings)?,
    };
    run(service_fn(|event: LambdaEvent<Value>| {
        handler::handle(&rollback, event)
    }))
    .await
}
