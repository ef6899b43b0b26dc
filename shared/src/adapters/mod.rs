//! AWS implementations of the ports, one cargo feature each, plus the file-based
//! configuration source used locally.

#[cfg(feature = "aws")]
pub mod aws;
#[cfg(feature = "cloudwatch")]
pub mod cloudwatch;
pub mod codedeploy;
pub mod config_file;
#[cfg(feature = "dynamodb")]
pub mod dynamodb;
#[cfg(feature = "ecr")]
pub mod ecr;
pub mod ecs;
#[cfg(feature = "eventbridge")]
pub mod eventbridge;
#[cfg(feature = "http-probe")]
pub mod http_probe;
#[cfg(feature = "secrets")]
pub mod secrets;
pub mod ssm;
#[cfg(feature = "ssm")]
pub mod ssm_config;
pub mod webhook;
#[cfg(all(feature = "dynamodb", feature = "eventbridge", feature = "ssm"))]
pub mod wire;

/// For the target adapters' tests: a deployment of `image` to `env` of a configuration,
/// with that environment's target.
#[cfg(test)]
#[cfg(feature = "aws")]
pub(crate) fn deployment_to(
    config_yaml: &str,
    env: &str,
    image: &str,
) -> (crate::domain::Deployment, crate::domain::TargetConfig) {
    use crate::domain::{Config, Deployment, Kind, PinnedImage, Request};
    let config = Config::from_yaml(config_yaml).unwrap();
    let (app, env, env_config) = config
        .environments()
        .find(|(_, e, _)| e.as_str() == env)
        .unwrap_or_else(|| panic!("no environment {env}"));
    let at = time::macros::datetime!(2026-01-01 0:00 UTC);
    let request = Request {
        image: PinnedImage::parse(image).unwrap(),
        tag: None,
        kind: Kind::Push,
        pushed_at: at,
        requested_by: None,
        reason: None,
    };
    (
        Deployment::new(app.clone(), env.clone(), request, at),
        env_config.target.clone(),
    )
}
