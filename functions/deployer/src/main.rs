//! deployer: starts rollouts on ECR pushes, on requests by hand, and when an environment
//! frees up with an image queued. Wires the adapters once per cold start; what it does
//! with each invocation is `pushdeploy::entrypoints::deployer`.

use pushdeploy::adapters::wire;
use pushdeploy::entrypoints::deployer;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    let (settings, sdk) = wire::start().await?;
    let deployer = wire::deployer(&sdk, &settings)?;
    pushdeploy::lambda::serve(|event| deployer::handle(&deployer, event)).await
}
