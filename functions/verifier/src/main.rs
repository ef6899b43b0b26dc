//! verifier: runs the smoke checks of a rolled-out deployment. Wires the adapters once per
//! cold start; what it does with each invocation is `pushdeploy::entrypoints::verifier`.

use pushdeploy::adapters::wire;
use pushdeploy::entrypoints::verifier;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    let (settings, sdk) = wire::start().await?;
    let verifier = wire::verifier(&sdk, &settings)?;
    pushdeploy::lambda::serve(|event| verifier::handle(&verifier, event)).await
}
