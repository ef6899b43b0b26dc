//! verifier: runs the smoke checks of a rolled-out deployment. Wires the adapters once per
//! cold start.

mod handler;

use lambda_runtime::{Error, LambdaEvent, run, service_fn};
use pushdeploy::adapters::wire;
use pushdeploy::services::Verifier;
use pushdeploy::settings::Settings;
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let settings = Settings::from_env()?;
    let sdk = wire::sdk_config().await;
    let verifier = Verifier {
        core: wire::core(&sdk, &settings),
        probe: wire::probe()?,
    };
    run(service_fn(|event: LambdaEvent<Value>| {
        handler::handle(&verifier, event)
    }))
    .await
}
