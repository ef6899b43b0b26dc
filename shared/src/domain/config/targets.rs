//! Checking each kind of target: SSM hosts, ECS services and CodeDeploy deployment groups,
//! with the limits the SSM document's patterns and the AWS APIs set.

use super::validate::Checker;
use super::*;

/// What the SSM document's `allowedPattern` accepts for a container name.
pub fn container_name_ok(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || b"_.-".contains(&c))
}

fn instance_id_ok(id: &str) -> bool {
    let hex = id.strip_prefix("i-").or_else(|| id.strip_prefix("mi-"));
    hex.is_some_and(|h| (8..=17).contains(&h.len()) && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// SSM's MaxConcurrency / MaxErrors: a count or a percentage.
fn rate_ok(value: &str) -> bool {
    let digits = value.strip_suffix('%').unwrap_or(value);
    !digits.is_empty() && digits.len() <= 6 && digits.bytes().all(|b| b.is_ascii_digit())
}

fn parse_port(text: &str) -> Option<u16> {
    text.parse::<u16>().ok().filter(|p| *p > 0)
}

/// The container a host script replaces: its name, published ports and health probe, as
/// the SSM target and CodeDeploy's EC2 hooks both take them.
fn host_container(
    c: &mut Checker,
    path: &str,
    container: &str,
    raw_ports: &[String],
    health: Option<raw::Health>,
) -> (Vec<PortMapping>, Option<HostHealth>) {
    if !container_name_ok(container) {
        c.fail(
                format!("{path}.container"),
                format!("{:?} must be 1-63 letters, digits, '_', '.' or '-', starting with a letter or digit", container),
            );
    }
    let mut ports = Vec::new();
    for (i, p) in raw_ports.iter().enumerate() {
        let parsed = p.split_once(':').and_then(|(h, k)| {
            Some(PortMapping {
                host: parse_port(h)?,
                container: parse_port(k)?,
            })
        });
        match parsed {
            Some(m) => ports.push(m),
            None => c.fail(
                format!("{path}.ports[{i}]"),
                format!("{p:?} is not HOST:CONTAINER, e.g. \"80:8000\""),
            ),
        }
    }
    let health_raw = health.unwrap_or(raw::Health {
        port: None,
        path: None,
        timeout_seconds: None,
    });
    let health_port = health_raw.port.or_else(|| ports.first().map(|m| m.host));
    if health_port.is_none() {
        c.fail(
            format!("{path}.health.port"),
            "required when no ports are published: the host probes the new container on this port",
        );
    }
    let health_path = health_raw.path.unwrap_or_else(|| "/".to_owned());
    let path_ok = health_path.starts_with('/')
        && health_path.len() <= 200
        && health_path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._~-".contains(&b));
    if !path_ok {
        c.fail(
            format!("{path}.health.path"),
            format!("{health_path:?} must start with '/' and use only letters, digits and /._~-"),
        );
    }
    let health_timeout = c.seconds(
        &format!("{path}.health.timeout_seconds"),
        health_raw.timeout_seconds,
        60,
        1,
        600,
    );
    let health = health_port.map(|port| HostHealth {
        port,
        path: health_path,
        timeout: health_timeout,
    });
    (ports, health)
}

impl raw::Ssm {
    pub(super) fn validate(self, c: &mut Checker, path: &str) -> Option<SsmTarget> {
        let before = c.problems.len();
        let instances = match (self.instances.ids, self.instances.tag) {
            (Some(ids), None) => {
                if ids.is_empty() {
                    c.fail(
                        format!("{path}.instances.ids"),
                        "list at least one instance id",
                    );
                }
                for (i, id) in ids.iter().enumerate() {
                    if !instance_id_ok(id) {
                        c.fail(
                            format!("{path}.instances.ids[{i}]"),
                            format!("{id:?} is not an instance id like i-0123456789abcdef0"),
                        );
                    }
                }
                Some(InstanceSelector::Ids(ids))
            }
            (None, Some(tags)) => {
                if tags.is_empty() {
                    c.fail(
                        format!("{path}.instances.tag"),
                        "name at least one tag, e.g. { Role: web }",
                    );
                }
                for (k, v) in &tags {
                    if k.is_empty() || k.len() > 128 || v.len() > 256 {
                        c.fail(
                            format!("{path}.instances.tag.{k}"),
                            "tag keys are 1-128 characters, values up to 256",
                        );
                    }
                }
                Some(InstanceSelector::Tags(tags))
            }
            _ => {
                c.fail(
                    format!("{path}.instances"),
                    "give exactly one of `ids` or `tag`",
                );
                None
            }
        };
        let (ports, health) = host_container(c, path, &self.container, &self.ports, self.health);
        let max_concurrency = self.max_concurrency.unwrap_or_else(|| "1".to_owned());
        if !rate_ok(&max_concurrency) {
            c.fail(
                format!("{path}.max_concurrency"),
                format!(
                    "{max_concurrency:?} must be a count like \"2\" or a percentage like \"50%\""
                ),
            );
        }
        let max_errors = self.max_errors.unwrap_or_else(|| "0".to_owned());
        if !rate_ok(&max_errors) {
            c.fail(
                format!("{path}.max_errors"),
                format!("{max_errors:?} must be a count like \"0\" or a percentage like \"10%\""),
            );
        }
        let execution_timeout = c.seconds(
            &format!("{path}.execution_timeout_seconds"),
            self.execution_timeout_seconds,
            600,
            30,
            3600,
        );
        if c.problems.len() > before {
            return None;
        }
        Some(SsmTarget {
            instances: instances?,
            container: self.container,
            ports,
            health: health?,
            max_concurrency,
            max_errors,
            execution_timeout,
        })
    }
}

/// ECS cluster and service names: up to 255 letters, digits, hyphens and underscores.
fn ecs_name_ok(name: &str) -> bool {
    (1..=255).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl raw::Ecs {
    pub(super) fn validate(self, c: &mut Checker, path: &str) -> Option<EcsTarget> {
        ecs_service(
            c,
            path,
            self.cluster,
            self.service,
            self.container,
            self.keep_revisions,
        )
    }
}

/// CodeDeploy application and deployment group names.
fn codedeploy_name_ok(name: &str) -> bool {
    (1..=100).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b))
}

impl raw::CodeDeploy {
    pub(super) fn validate(self, c: &mut Checker, path: &str) -> Option<CodeDeployTarget> {
        let before = c.problems.len();
        for (field, value) in [
            ("application", &self.application),
            ("deployment_group", &self.deployment_group),
        ] {
            if !codedeploy_name_ok(value) {
                c.fail(
                    format!("{path}.{field}"),
                    format!("{value:?} must be 1-100 letters, digits, '.', '_', '+' or '-'"),
                );
            }
        }
        let platform = match (self.ec2, self.ecs) {
            (Some(ec2), None) => {
                let p = format!("{path}.ec2");
                let (ports, health) = host_container(c, &p, &ec2.container, &ec2.ports, ec2.health);
                let timeout = c.seconds(
                    &format!("{p}.timeout_seconds"),
                    ec2.timeout_seconds,
                    600,
                    30,
                    3600,
                );
                health.map(|health| {
                    CodeDeployPlatform::Ec2(CodeDeployHosts {
                        container: ec2.container,
                        ports,
                        health,
                        timeout,
                    })
                })
            }
            (None, Some(ecs)) => {
                let p = format!("{path}.ecs");
                if ecs.container_port == 0 {
                    c.fail(
                        format!("{p}.container_port"),
                        "the port the load balancer sends traffic to, 1-65535",
                    );
                }
                ecs_service(
                    c,
                    &p,
                    ecs.cluster,
                    ecs.service,
                    ecs.container,
                    ecs.keep_revisions,
                )
                .map(|service| CodeDeployPlatform::Ecs {
                    service,
                    container_port: ecs.container_port,
                })
            }
            _ => {
                c.fail(
                    path,
                    "give exactly one of `ec2` (instances running the container) or `ecs` (a service deployed blue/green)",
                );
                None
            }
        };
        if c.problems.len() > before {
            return None;
        }
        Some(CodeDeployTarget {
            application: self.application,
            deployment_group: self.deployment_group,
            platform: platform?,
        })
    }
}

fn ecs_service(
    c: &mut Checker,
    path: &str,
    cluster: String,
    service: String,
    container: String,
    keep_revisions: Option<u64>,
) -> Option<EcsTarget> {
    let before = c.problems.len();
    for (field, value) in [("cluster", &cluster), ("service", &service)] {
        if !ecs_name_ok(value) {
            c.fail(
                format!("{path}.{field}"),
                format!(
                    "{value:?} must be the {field}'s name (not its ARN): 1-255 letters, digits, '-' or '_'"
                ),
            );
        }
    }
    if !(1..=255).contains(&container.len())
        || !container
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        c.fail(
            format!("{path}.container"),
            format!(
                "{container:?} must be a container name of the task definition: 1-255 letters, digits, '-' or '_'"
            ),
        );
    }
    let keep = keep_revisions.unwrap_or(DEFAULT_KEEP_REVISIONS);
    if keep > 1000 {
        c.fail(
            format!("{path}.keep_revisions"),
            format!("{keep} is out of range: keep 0 to 1000 older revisions"),
        );
    }
    if c.problems.len() > before {
        return None;
    }
    Some(EcsTarget {
        cluster,
        service,
        container,
        keep_revisions: keep as u32,
    })
}
