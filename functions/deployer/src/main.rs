//! deployer: starts rollouts on ECR pushes, on requests by hand, and when an environment
//! frees up with an image queued. Wires the adapters once per cold start.

mod handler;

use lambda_runtime::{Error, LambdaEvent, run, service_fn};
use pushdeploy::adapters::wire;
use pushdeploy::services::Deployer;
use pushdeploy::settings::Settings;
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let settings = Settings::from_env()?;
    let sdk = wire::sdk_config().await;
    let ecr = wire::ecr(&sdk);
    let deployer = Deployer {
        core: wire::core(&sdk, &settings),
        registry: ecr.clone(),
        target: wire::target(&sdk, &settings)?,
        tags: ecr,
    };
    run(service_fn(|event: LambdaEvent<Value>| {
        handler::handle(&deployer, event)
    }))
    .await
}
