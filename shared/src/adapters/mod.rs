//! AWS implementations of the ports, one cargo feature each, plus the file-based
//! configuration source used locally.

#[cfg(feature = "aws")]
pub mod aws;
#[cfg(feature = "codedeploy")]
pub mod codedeploy;
pub mod config_file;
#[cfg(feature = "dynamodb")]
pub mod dynamodb;
#[cfg(feature = "ecr")]
pub mod ecr;
#[cfg(feature = "ecs")]
pub mod ecs;
#[cfg(feature = "eventbridge")]
pub mod eventbridge;
#[cfg(feature = "http-probe")]
pub mod http_probe;
#[cfg(feature = "secrets")]
pub mod secrets;
#[cfg(feature = "ssm")]
pub mod ssm;
#[cfg(feature = "ssm")]
pub mod ssm_config;
#[cfg(feature = "webhook")]
pub mod webhook;
#[cfg(all(feature = "dynamodb", feature = "eventbridge", feature = "ssm"))]
pub mod wire;
