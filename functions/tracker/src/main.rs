//! tracker: follows rollouts through their target's status-change events, and on a
//! schedule reconciles what events missed. Wires the adapters once per cold start; what it
//! does with each invocation is `pushdeploy::entrypoints::tracker`.

use pushdeploy::adapters::wire;
use pushdeploy::entrypoints::tracker;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    let (settings, sdk) = wire::start().await?;
    let document = settings.require_document()?.to_owned();
    let tracker = wire::tracker(&sdk, &settings)?;
    pushdeploy::lambda::serve(|event| tracker::handle(&tracker, &document, event)).await
}
