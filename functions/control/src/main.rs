//! control: what people ask by hand: status, freeze, unfreeze. Wires the adapters once per
//! cold start.

mod handler;

use lambda_runtime::{Error, LambdaEvent, run, service_fn};
use pushdeploy::adapters::wire;
use pushdeploy::services::Control;
use pushdeploy::settings::Settings;
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let settings = Settings::from_env()?;
    let sdk = wire::sdk_config().await;
    let control = Control {
        core: wire::core(&sdk, &settings),
    };
    run(service_fn(|event: LambdaEvent<Value>| {
        handler::handle(&control, event)
    }))
    .await
}
