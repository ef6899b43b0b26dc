//! rollback: rolls a failed deployment back to the last verified image, automatically on
//! "Rollout Failed" / "Verification Failed", or by hand. Wires the adapters once per cold
//! start; what it does with each invocation is `pushdeploy::entrypoints::rollback`.

use pushdeploy::adapters::wire;
use pushdeploy::entrypoints::rollback;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    let (settings, sdk) = wire::start().await?;
    let rollback = wire::rollback(&sdk, &settings)?;
    pushdeploy::lambda::serve(|event| rollback::handle(&rollback, event)).await
}
