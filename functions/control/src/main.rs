//! control: what people ask by hand: status, freeze and unfreeze, approvals. Wires the
//! adapters once per cold start; what it does with each invocation is
//! `pushdeploy::entrypoints::control`.

use pushdeploy::adapters::wire;
use pushdeploy::entrypoints::control;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    let (settings, sdk) = wire::start().await?;
    let control = wire::control(&sdk, &settings);
    pushdeploy::lambda::serve(|event| control::handle(&control, event)).await
}
