//! notifier: tells people about deployments on Slack, Discord or a webhook. Wires the
//! adapters once per cold start; what it does with each invocation is
//! `pushdeploy::entrypoints::notifier`.

use pushdeploy::adapters::wire;
use pushdeploy::entrypoints::notifier;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    let (settings, sdk) = wire::start().await?;
    let notifier = wire::notifier(&sdk, &settings)?;
    pushdeploy::lambda::serve(|event| notifier::handle(&notifier, event)).await
}
