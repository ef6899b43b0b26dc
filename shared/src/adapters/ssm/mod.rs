//! The SSM target: EC2 (or on-premises) hosts running Docker, reached with SSM Run Command
//! and pushdeploy's own Command document (never `AWS-RunShellScript`). The document's
//! parameters are guarded by `allowedPattern`; every value sent here is already validated.

use std::time::Duration;

use crate::domain::Deployment;
use crate::domain::config::{HostHealth, PortMapping};

pub mod events;
#[cfg(feature = "ssm")]
mod run_command;

#[cfg(feature = "ssm")]
pub use run_command::{SsmRunCommand, registry_region};

/// The kind prefix of SSM target handles: `ssm:<command-id>`.
pub const KIND: &str = "ssm";

/// The document's parameters, by name. `template.yaml` defines the same names.
pub mod params {
    pub const IMAGE: &str = "Image";
    pub const REGISTRY: &str = "Registry";
    pub const REGION: &str = "Region";
    pub const CONTAINER: &str = "Container";
    pub const PORTS: &str = "Ports";
    pub const HEALTH_PORT: &str = "HealthPort";
    pub const HEALTH_PATH: &str = "HealthPath";
    pub const HEALTH_TIMEOUT: &str = "HealthTimeoutSeconds";
    pub const EXECUTION_TIMEOUT: &str = "ExecutionTimeoutSeconds";
    pub const DEPLOYMENT_ID: &str = "DeploymentId";
}

/// The values of the document's parameters, by name: what Run Command substitutes into
/// the script (and what CodeDeploy bundles substitute the same way).
pub fn document_parameters(
    dep: &Deployment,
    region: String,
    container: &str,
    ports: &[PortMapping],
    health: &HostHealth,
    execution_timeout: Duration,
) -> Vec<(&'static str, String)> {
    let ports: Vec<String> = ports.iter().map(ToString::to_string).collect();
    vec![
        (params::IMAGE, dep.image.to_string()),
        (params::REGISTRY, dep.image.registry.to_string()),
        (params::REGION, region),
        (params::CONTAINER, container.to_owned()),
        (params::PORTS, ports.join(",")),
        (params::HEALTH_PORT, health.port.to_string()),
        (params::HEALTH_PATH, health.path.clone()),
        (params::HEALTH_TIMEOUT, health.timeout.as_secs().to_string()),
        (
            params::EXECUTION_TIMEOUT,
            execution_timeout.as_secs().to_string(),
        ),
        (params::DEPLOYMENT_ID, dep.id.to_string()),
    ]
}

/// The region of an ECR registry host (`<account>.dkr.ecr.<region>.amazonaws.com`).
pub fn ecr_region(registry: &str) -> Option<&str> {
    let rest = registry.split_once(".dkr.ecr.")?.1;
    rest.split('.').next().filter(|r| !r.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_region_comes_from_an_ecr_registry_host() {
        assert_eq!(
            ecr_region("123456789012.dkr.ecr.eu-west-1.amazonaws.com"),
            Some("eu-west-1")
        );
        assert_eq!(ecr_region("localhost:5000"), None);
    }
}
