//! janitor: deletes old images from the repositories of apps with a retention rule, on a
//! schedule or by hand. Wires the adapters once per cold start.

mod handler;

use lambda_runtime::{Error, LambdaEvent, run, service_fn};
use pushdeploy::adapters::wire;
use pushdeploy::services::Janitor;
use pushdeploy::settings::Settings;
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let settings = Settings::from_env()?;
    let scheduled_dry_run =
        handler::dry_run_setting(std::env::var("PUSHDEPLOY_JANITOR_DRY_RUN").ok())?;
    let sdk = wire::sdk_config().await;
    let janitor = Janitor {
        core: wire::core(&sdk, &settings),
        catalog: wire::ecr(&sdk),
    };
    run(service_fn(|event: LambdaEvent<Value>| {
        handler::handle(&janitor, scheduled_dry_run, event)
    }))
    .await
}
