//! janitor: deletes old images from the repositories of apps with a retention rule, on a
//! schedule or by hand. Wires the adapters once per cold start; what it does with each
//! invocation is `pushdeploy::entrypoints::janitor`.

use pushdeploy::adapters::wire;
use pushdeploy::entrypoints::janitor;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    let (settings, sdk) = wire::start().await?;
    let janitor = wire::janitor(&sdk, &settings);
    let dry_run = settings.janitor_dry_run;
    pushdeploy::lambda::serve(|event| janitor::handle(&janitor, dry_run, event)).await
}
