//! The ECS service adapter: revisions, `UpdateService` with the circuit breaker on, and the
//! service's deployments read back.

use async_trait::async_trait;
use aws_sdk_ecs::Client;
use aws_sdk_ecs::types::{
    DeploymentCircuitBreaker, DeploymentConfiguration, DeploymentControllerType,
    DeploymentRolloutState, Service, SortOrder, TaskDefinition, TaskDefinitionField,
    TaskDefinitionStatus,
};
use tracing::{info, warn};

use super::super::aws::failed;
use super::target_ref;
use crate::domain::config::EcsTarget;
use crate::domain::platform::Platform;
use crate::domain::{Deployment, TargetConfig};
use crate::ports::{RolloutStatus, Started, Target, TargetError, TargetRef};

/// The tag of a revision pushdeploy registered: the deployment's id.
pub const DEPLOYMENT_TAG: &str = "pushdeploy:deployment";

/// At most this many old revisions are deregistered per rollout; the rest go next time.
const MAX_DEREGISTER: usize = 20;

pub struct EcsService {
    client: Client,
}

/// `(cluster, service, deployment id)` of a handle; deployment ids hold a '/' themselves.
fn parse_ref(target_ref: &TargetRef) -> Result<(&str, &str, &str), TargetError> {
    let mut parts = target_ref.id().splitn(3, '/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(c), Some(s), Some(d)) if !c.is_empty() && !s.is_empty() && !d.is_empty() => {
            Ok((c, s, d))
        }
        _ => Err(TargetError::Invalid(format!(
            "{target_ref} is not an ECS rollout handle"
        ))),
    }
}

/// A copy of `current` that runs `image` in `container`; every other field is kept.
fn with_image(current: &TaskDefinition, container: &str, image: &str) -> Option<TaskDefinition> {
    let mut next = current.clone();
    let definition = next
        .container_definitions
        .as_mut()?
        .iter_mut()
        .find(|c| c.name.as_deref() == Some(container))?;
    definition.image = Some(image.to_owned());
    Some(next)
}

fn image_of<'a>(definition: &'a TaskDefinition, container: &str) -> Option<&'a str> {
    definition
        .container_definitions()
        .iter()
        .find(|c| c.name() == Some(container))
        .and_then(|c| c.image())
}

fn container_names(definition: &TaskDefinition) -> String {
    let names: Vec<&str> = definition
        .container_definitions()
        .iter()
        .filter_map(|c| c.name())
        .collect();
    names.join(", ")
}

/// The family and revision of a task definition ARN (`…:task-definition/web:7`).
fn family_revision(arn: &str) -> Option<(&str, u32)> {
    let (family, revision) = arn.rsplit_once(":task-definition/")?.1.rsplit_once(':')?;
    Some((family, revision.parse().ok()?))
}

/// Which revisions of a family to deregister: all but the newest `keep` and those in
/// `protect` (what the service runs now and ran before). `registered` may be in any order
/// and hold other families (ECS lists by family prefix).
pub fn revisions_to_deregister(
    registered: &[String],
    family: &str,
    keep: usize,
    protect: &[&str],
) -> Vec<String> {
    let mut ours: Vec<(u32, &String)> = registered
        .iter()
        .filter_map(|arn| match family_revision(arn) {
            Some((f, r)) if f == family => Some((r, arn)),
            _ => None,
        })
        .collect();
    ours.sort_by_key(|r| std::cmp::Reverse(r.0));
    ours.into_iter()
        .skip(keep)
        .filter(|(_, arn)| !protect.contains(&arn.as_str()))
        .map(|(_, arn)| arn.clone())
        .collect()
}

impl EcsService {
    pub fn new(client: Client) -> Self {
        Self { client }
    }

    pub(crate) async fn service(
        &self,
        cluster: &str,
        service: &str,
    ) -> Result<Service, TargetError> {
        let out = self
            .client
            .describe_services()
            .cluster(cluster)
            .services(service)
            .send()
            .await
            .map_err(|e| failed::<TargetError, _>(e, "DescribeServices"))?;
        let found = out
            .services()
            .iter()
            .find(|s| s.status() != Some("INACTIVE"))
            .cloned();
        found.ok_or_else(|| {
            let why = out
                .failures()
                .first()
                .and_then(|f| f.reason())
                .unwrap_or("MISSING");
            TargetError::Invalid(format!(
                "ECS has no active service {service:?} in cluster {cluster:?} ({why})"
            ))
        })
    }

    async fn task_definition(
        &self,
        arn: &str,
    ) -> Result<(TaskDefinition, Vec<aws_sdk_ecs::types::Tag>), TargetError> {
        let out = self
            .client
            .describe_task_definition()
            .task_definition(arn)
            .include(TaskDefinitionField::Tags)
            .send()
            .await
            .map_err(|e| failed::<TargetError, _>(e, "DescribeTaskDefinition"))?;
        let tags = out.tags().to_vec();
        let definition = out.task_definition.ok_or_else(|| {
            TargetError::Invalid(format!("ECS returned no task definition {arn}"))
        })?;
        Ok((definition, tags))
    }

    /// The platform the service's task definition names in its `runtimePlatform`; `None`
    /// when it names none (ECS then runs it on X86_64 Linux on Fargate, or on whatever the
    /// container instances are).
    pub(crate) async fn runtime_platform(
        &self,
        ecs: &EcsTarget,
    ) -> Result<Option<Platform>, TargetError> {
        let service = self.service(&ecs.cluster, &ecs.service).await?;
        let Some(current) = service.task_definition() else {
            return Ok(None);
        };
        let (definition, _) = self.task_definition(current).await?;
        Ok(definition.runtime_platform().and_then(|runtime| {
            let arch = match runtime.cpu_architecture()?.as_str() {
                "X86_64" => "amd64",
                "ARM64" => "arm64",
                other => other,
            };
            let os = match runtime.operating_system_family().map(|f| f.as_str()) {
                None | Some("LINUX") => "linux",
                Some(_) => "windows",
            };
            Some(Platform::new(os, arch, None))
        }))
    }

    /// Registers `definition` as a new revision of its family; returns its ARN.
    async fn register(
        &self,
        definition: TaskDefinition,
        tags: Vec<aws_sdk_ecs::types::Tag>,
    ) -> Result<String, TargetError> {
        let out = self
            .client
            .register_task_definition()
            .set_family(definition.family)
            .set_task_role_arn(definition.task_role_arn)
            .set_execution_role_arn(definition.execution_role_arn)
            .set_network_mode(definition.network_mode)
            .set_container_definitions(definition.container_definitions)
            .set_volumes(definition.volumes)
            .set_placement_constraints(definition.placement_constraints)
            .set_requires_compatibilities(definition.requires_compatibilities)
            .set_cpu(definition.cpu)
            .set_memory(definition.memory)
            .set_tags((!tags.is_empty()).then_some(tags))
            .set_pid_mode(definition.pid_mode)
            .set_ipc_mode(definition.ipc_mode)
            .set_proxy_configuration(definition.proxy_configuration)
            .set_ephemeral_storage(definition.ephemeral_storage)
            .set_runtime_platform(definition.runtime_platform)
            .set_enable_fault_injection(definition.enable_fault_injection)
            .send()
            .await
            .map_err(|e| failed::<TargetError, _>(e, "RegisterTaskDefinition"))?;
        out.task_definition()
            .and_then(|t| t.task_definition_arn())
            .map(str::to_owned)
            .ok_or_else(|| TargetError::Invalid("RegisterTaskDefinition returned no ARN".into()))
    }

    /// The revision to run: the one recorded before a failed rollout when it pins this very
    /// image, else a new revision of what the service runs now.
    pub(crate) async fn revision_for(
        &self,
        dep: &Deployment,
        ecs: &EcsTarget,
        current: &str,
    ) -> Result<String, TargetError> {
        let image = dep.image.to_string();
        if let Some(restore) = dep.restore.as_deref() {
            let (before, _) = self.task_definition(restore).await?;
            if image_of(&before, &ecs.container) == Some(image.as_str()) {
                info!(
                    revision = restore,
                    "returning the service to its earlier revision"
                );
                return Ok(restore.to_owned());
            }
        }
        let (running, mut tags) = self.task_definition(current).await?;
        if image_of(&running, &ecs.container) == Some(image.as_str()) {
            return Ok(current.to_owned());
        }
        // The revision says which deployment registered it, for `find`.
        tags.retain(|t| t.key() != Some(DEPLOYMENT_TAG));
        tags.push(
            aws_sdk_ecs::types::Tag::builder()
                .key(DEPLOYMENT_TAG)
                .value(dep.id.as_str())
                .build(),
        );
        let next = with_image(&running, &ecs.container, &image).ok_or_else(|| {
            TargetError::Invalid(format!(
                "task definition {current} has no container named {:?} (it has {})",
                ecs.container,
                container_names(&running)
            ))
        })?;
        self.register(next, tags).await
    }

    /// The service deployment `dep` started, if the service has one: a deployment created
    /// since `dep` whose revision pushdeploy tagged with `dep`'s id, or, for a revision it
    /// reused, that runs `dep`'s image.
    pub(crate) async fn deployment_of(
        &self,
        dep: &Deployment,
        ecs: &EcsTarget,
    ) -> Result<Option<Started>, TargetError> {
        let service = self.service(&ecs.cluster, &ecs.service).await?;
        let since = dep.created_at - time::Duration::minutes(5);
        let image = dep.image.to_string();
        for d in service.deployments() {
            let created = d
                .created_at()
                .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t.secs()).ok());
            if created.is_some_and(|c| c < since) {
                continue;
            }
            let (Some(id), Some(revision)) = (d.id(), d.task_definition()) else {
                continue;
            };
            let (definition, tags) = self.task_definition(revision).await?;
            let tagged = tags
                .iter()
                .any(|t| t.key() == Some(DEPLOYMENT_TAG) && t.value() == Some(dep.id.as_str()));
            if tagged || image_of(&definition, &ecs.container) == Some(image.as_str()) {
                return Ok(Some(Started {
                    target_ref: target_ref(&ecs.cluster, &ecs.service, id),
                    before: None,
                }));
            }
        }
        Ok(None)
    }

    /// Deregisters revisions of what the service runs beyond `keep`, never that revision
    /// nor `before`; failures only warn, since the rollout itself is recorded.
    pub(crate) async fn prune_service(&self, ecs: &EcsTarget, before: Option<&str>) {
        let running = match self.service(&ecs.cluster, &ecs.service).await {
            Ok(service) => service.task_definition().map(str::to_owned),
            Err(error) => {
                warn!(%error, "could not read the service; no revision deregistered");
                return;
            }
        };
        if let Some(running) = running {
            self.prune(
                &running,
                before.unwrap_or(&running),
                ecs.keep_revisions as usize,
            )
            .await;
        }
    }

    /// Deregisters revisions of `revision`'s family beyond `keep`, never `revision` nor
    /// `before`; failures only warn, since the rollout itself has started.
    pub(crate) async fn prune(&self, revision: &str, before: &str, keep: usize) {
        let Some((family, _)) = family_revision(revision) else {
            return;
        };
        let protect = [revision, before];
        let mut registered = Vec::new();
        let mut token = None;
        loop {
            let page = match self
                .client
                .list_task_definitions()
                .family_prefix(family)
                .status(TaskDefinitionStatus::Active)
                .sort(SortOrder::Desc)
                .set_next_token(token)
                .send()
                .await
            {
                Ok(page) => page,
                Err(e) => {
                    warn!(family, error = %failed::<TargetError, _>(e, "ListTaskDefinitions"), "could not list old revisions; none deregistered");
                    return;
                }
            };
            registered.extend(page.task_definition_arns().iter().cloned());
            token = page.next_token;
            if token.is_none() {
                break;
            }
        }
        for arn in revisions_to_deregister(&registered, family, keep, &protect)
            .into_iter()
            .take(MAX_DEREGISTER)
        {
            match self
                .client
                .deregister_task_definition()
                .task_definition(&arn)
                .send()
                .await
            {
                Ok(_) => info!(revision = %arn, "deregistered a superseded revision"),
                Err(e) => {
                    warn!(revision = %arn, error = %failed::<TargetError, _>(e, "DeregisterTaskDefinition"), "could not deregister a superseded revision");
                }
            }
        }
    }
}

/// The service's deployment configuration with the circuit breaker on, everything else kept.
fn with_circuit_breaker(service: &Service) -> DeploymentConfiguration {
    let mut config = service
        .deployment_configuration()
        .cloned()
        .unwrap_or_else(|| DeploymentConfiguration::builder().build());
    config.deployment_circuit_breaker = Some(
        DeploymentCircuitBreaker::builder()
            .enable(true)
            .rollback(true)
            .build(),
    );
    config
}

#[async_trait]
impl Target for EcsService {
    async fn start(&self, dep: &Deployment, config: &TargetConfig) -> Result<Started, TargetError> {
        let TargetConfig::Ecs(ecs) = config else {
            return Err(TargetError::Invalid(format!(
                "the ECS target cannot deploy to a {} target",
                config.kind()
            )));
        };
        let service = self.service(&ecs.cluster, &ecs.service).await?;
        if let Some(kind) = service
            .deployment_controller()
            .map(|c| c.r#type())
            .filter(|t| **t != DeploymentControllerType::Ecs)
        {
            return Err(TargetError::Invalid(format!(
                "service {:?} is deployed by its {} deployment controller, not by ECS itself",
                ecs.service,
                kind.as_str()
            )));
        }
        let current = service
            .task_definition()
            .ok_or_else(|| {
                TargetError::Invalid(format!("service {:?} runs no task definition", ecs.service))
            })?
            .to_owned();
        let revision = self.revision_for(dep, ecs, &current).await?;
        let out = self
            .client
            .update_service()
            .cluster(&ecs.cluster)
            .service(&ecs.service)
            .task_definition(&revision)
            .deployment_configuration(with_circuit_breaker(&service))
            .send()
            .await
            .map_err(|e| failed::<TargetError, _>(e, "UpdateService"))?;
        let deployments = out.service().map(Service::deployments).unwrap_or_default();
        let primary = |d: &&aws_sdk_ecs::types::Deployment| d.status() == Some("PRIMARY");
        let ours = deployments
            .iter()
            .filter(primary)
            .find(|d| d.task_definition() == Some(revision.as_str()));
        let deployment = match ours {
            Some(d) => d,
            None => {
                let d = deployments.iter().find(primary).ok_or_else(|| {
                    TargetError::Invalid(format!(
                        "UpdateService started no deployment of {revision}"
                    ))
                })?;
                warn!(revision, deployment = ?d.id(), "ECS reported no deployment of the new revision; following the primary deployment");
                d
            }
        };
        let id = deployment
            .id()
            .ok_or_else(|| TargetError::Invalid("the ECS deployment has no id".into()))?;
        Ok(Started {
            target_ref: target_ref(&ecs.cluster, &ecs.service, id),
            before: Some(current),
        })
    }

    async fn status(&self, target_ref: &TargetRef) -> Result<RolloutStatus, TargetError> {
        let (cluster, service, id) = parse_ref(target_ref)?;
        let found = self.service(cluster, service).await?;
        let Some(deployment) = found.deployments().iter().find(|d| d.id() == Some(id)) else {
            return Ok(RolloutStatus::Failed(format!(
                "ECS no longer lists deployment {id} of service {service:?}: a newer deployment replaced it"
            )));
        };
        Ok(match deployment.rollout_state() {
            Some(DeploymentRolloutState::Completed) => RolloutStatus::Succeeded,
            Some(DeploymentRolloutState::Failed) => RolloutStatus::Failed(format!(
                "ECS deployment {id} failed: {}",
                deployment
                    .rollout_state_reason()
                    .unwrap_or("no reason given")
            )),
            _ => RolloutStatus::InProgress,
        })
    }

    async fn find(
        &self,
        dep: &Deployment,
        config: &TargetConfig,
    ) -> Result<Option<Started>, TargetError> {
        let TargetConfig::Ecs(ecs) = config else {
            return Ok(None);
        };
        self.deployment_of(dep, ecs).await
    }

    async fn tidy(&self, started: &Started, config: &TargetConfig) {
        if let TargetConfig::Ecs(ecs) = config {
            self.prune_service(ecs, started.before.as_deref()).await;
        }
    }

    async fn platform(&self, config: &TargetConfig) -> Result<Option<Platform>, TargetError> {
        match config {
            TargetConfig::Ecs(ecs) => self.runtime_platform(ecs).await,
            _ => Ok(None),
        }
    }

    /// ECS has nothing to stop: the circuit breaker ends a failing deployment, and the
    /// rollback that follows a timeout points the service back at a verified revision.
    async fn cancel(&self, target_ref: &TargetRef) -> Result<(), TargetError> {
        parse_ref(target_ref)?;
        info!(%target_ref, "ECS deployments are not stopped; the rollback replaces this one");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::KIND;
    use aws_sdk_ecs::operation::describe_services::DescribeServicesOutput;
    use aws_sdk_ecs::operation::describe_task_definition::DescribeTaskDefinitionOutput;
    use aws_sdk_ecs::operation::list_task_definitions::ListTaskDefinitionsOutput;
    use aws_sdk_ecs::operation::register_task_definition::RegisterTaskDefinitionOutput;
    use aws_sdk_ecs::operation::update_service::{UpdateServiceError, UpdateServiceOutput};
    use aws_sdk_ecs::types::error::ServiceNotActiveException;
    use aws_sdk_ecs::types::{
        ContainerDefinition, Deployment as EcsDeployment, DeploymentController, Failure,
        KeyValuePair, LogConfiguration, LogDriver, NetworkMode, Secret, Tag,
    };
    use aws_smithy_mocks::{RuleMode, mock, mock_client};

    use super::*;

    const CONFIG: &str = r#"
apps:
  web:
    repository: acme/web
    environments:
      production:
        target: { ecs: { cluster: prod, service: web, container: web, keep_revisions: 1 } }
"#;
    const REPO: &str = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/acme/web";
    const CURRENT: &str = "arn:aws:ecs:eu-west-1:123456789012:task-definition/web:7";
    const NEXT: &str = "arn:aws:ecs:eu-west-1:123456789012:task-definition/web:8";

    fn digest(byte: &str) -> String {
        format!("{REPO}@sha256:{}", byte.repeat(32))
    }

    fn fixture(image: &str) -> (Deployment, TargetConfig) {
        crate::adapters::deployment_to(CONFIG, "production", image)
    }

    /// The running revision: the app container with secrets and logs, and a sidecar.
    fn definition(arn: &str, image: &str) -> TaskDefinition {
        TaskDefinition::builder()
            .task_definition_arn(arn)
            .family("web")
            .revision(family_revision(arn).unwrap().1 as i32)
            .task_role_arn("arn:aws:iam::123456789012:role/web-task")
            .execution_role_arn("arn:aws:iam::123456789012:role/web-exec")
            .network_mode(NetworkMode::Awsvpc)
            .cpu("256")
            .memory("512")
            .container_definitions(
                ContainerDefinition::builder()
                    .name("web")
                    .image(image)
                    .secrets(
                        Secret::builder()
                            .name("DB_PASSWORD")
                            .value_from("arn:aws:ssm:eu-west-1:123456789012:parameter/db")
                            .build()
                            .unwrap(),
                    )
                    .environment(KeyValuePair::builder().name("MODE").value("prod").build())
                    .log_configuration(
                        LogConfiguration::builder()
                            .log_driver(LogDriver::Awslogs)
                            .options("awslogs-group", "/ecs/web")
                            .build()
                            .unwrap(),
                    )
                    .build(),
            )
            .container_definitions(
                ContainerDefinition::builder()
                    .name("envoy")
                    .image("public.ecr.aws/appmesh/aws-appmesh-envoy:v1.29")
                    .build(),
            )
            .build()
    }

    fn service(task_definition: &str, deployments: Vec<EcsDeployment>) -> Service {
        Service::builder()
            .service_name("web")
            .status("ACTIVE")
            .task_definition(task_definition)
            .deployment_configuration(
                DeploymentConfiguration::builder()
                    .maximum_percent(200)
                    .minimum_healthy_percent(100)
                    .build(),
            )
            .set_deployments(Some(deployments))
            .build()
    }

    fn deployment(id: &str, task_definition: &str, state: DeploymentRolloutState) -> EcsDeployment {
        EcsDeployment::builder()
            .id(id)
            .status("PRIMARY")
            .task_definition(task_definition)
            .rollout_state(state)
            .rollout_state_reason("ECS deployment circuit breaker: tasks failed to start.")
            .build()
    }

    /// What UpdateService answers: the service runs `revision` under deployment `id`.
    fn updated(revision: &str, id: &str) -> UpdateServiceOutput {
        UpdateServiceOutput::builder()
            .service(service(
                revision,
                vec![deployment(id, revision, DeploymentRolloutState::InProgress)],
            ))
            .build()
    }

    /// What RegisterTaskDefinition answers: revision 8.
    fn registered() -> RegisterTaskDefinitionOutput {
        RegisterTaskDefinitionOutput::builder()
            .task_definition(definition(NEXT, "ignored"))
            .build()
    }

    fn describe(svc: Service) -> aws_smithy_mocks::Rule {
        mock!(Client::describe_services)
            .match_requests(|r| r.cluster() == Some("prod") && r.services() == ["web"])
            .then_output(move || {
                DescribeServicesOutput::builder()
                    .services(svc.clone())
                    .build()
            })
    }

    fn describe_definition(arn: &'static str, image: String) -> aws_smithy_mocks::Rule {
        mock!(Client::describe_task_definition)
            .match_requests(move |r| r.task_definition() == Some(arn))
            .then_output(move || {
                DescribeTaskDefinitionOutput::builder()
                    .task_definition(definition(arn, &image))
                    .tags(Tag::builder().key("team").value("web").build())
                    .build()
            })
    }

    /// A client for a service running revision 7 (digest 01), no old revisions to prune,
    /// and these answers to RegisterTaskDefinition and UpdateService.
    fn running_digest_01(
        register: &aws_smithy_mocks::Rule,
        update: &aws_smithy_mocks::Rule,
    ) -> Client {
        mock_client!(
            aws_sdk_ecs,
            RuleMode::MatchAny,
            [
                &describe(service(CURRENT, vec![])),
                &describe_definition(CURRENT, digest("01")),
                register,
                update,
                &no_old_revisions(),
            ]
        )
    }

    fn no_old_revisions() -> aws_smithy_mocks::Rule {
        mock!(Client::list_task_definitions)
            .then_output(|| ListTaskDefinitionsOutput::builder().build())
    }

    #[tokio::test]
    async fn registers_a_revision_changing_only_the_image_and_updates_with_the_circuit_breaker() {
        let image = digest("ab");
        let (dep, target) = fixture(&image);
        let wanted = image.clone();
        let id = dep.id.clone();
        let register = mock!(Client::register_task_definition)
            .match_requests(move |r| {
                let expected = definition(NEXT, &wanted);
                Some(r.container_definitions()) == expected.container_definitions.as_deref()
                    && r.family() == Some("web")
                    && r.task_role_arn() == Some("arn:aws:iam::123456789012:role/web-task")
                    && r.execution_role_arn() == Some("arn:aws:iam::123456789012:role/web-exec")
                    && r.network_mode() == Some(&NetworkMode::Awsvpc)
                    && r.cpu() == Some("256")
                    && r.memory() == Some("512")
                    && r.tags()
                        == [
                            Tag::builder().key("team").value("web").build(),
                            Tag::builder()
                                .key(DEPLOYMENT_TAG)
                                .value(id.as_str())
                                .build(),
                        ]
            })
            .then_output(registered);
        let update = mock!(Client::update_service)
            .match_requests(|r| {
                let config = r.deployment_configuration().unwrap();
                let breaker = config.deployment_circuit_breaker().unwrap();
                r.task_definition() == Some(NEXT)
                    && breaker.enable()
                    && breaker.rollback()
                    && config.maximum_percent() == Some(200)
                    && config.minimum_healthy_percent() == Some(100)
            })
            .then_output(|| updated(NEXT, "ecs-svc/2"));
        let client = running_digest_01(&register, &update);
        let started = EcsService::new(client).start(&dep, &target).await.unwrap();
        assert_eq!(started.target_ref.as_str(), "ecs:prod/web/ecs-svc/2");
        assert_eq!(started.before.as_deref(), Some(CURRENT));
        assert_eq!(register.num_calls(), 1);
        assert_eq!(update.num_calls(), 1);
    }

    #[tokio::test]
    async fn a_rollback_returns_to_the_recorded_revision_when_it_pins_the_same_digest() {
        let good = digest("01");
        let (mut dep, target) = fixture(&good);
        dep.restore = Some(CURRENT.to_owned());
        let register = mock!(Client::register_task_definition)
            .then_output(|| RegisterTaskDefinitionOutput::builder().build());
        let update = mock!(Client::update_service)
            .match_requests(|r| r.task_definition() == Some(CURRENT))
            .then_output(|| updated(CURRENT, "ecs-svc/3"));
        let client = mock_client!(
            aws_sdk_ecs,
            RuleMode::MatchAny,
            [
                &describe(service(NEXT, vec![])),
                &describe_definition(CURRENT, good.clone()),
                &register,
                &update,
                &no_old_revisions(),
            ]
        );
        let started = EcsService::new(client).start(&dep, &target).await.unwrap();
        assert_eq!(started.target_ref.as_str(), "ecs:prod/web/ecs-svc/3");
        assert_eq!(started.before.as_deref(), Some(NEXT));
        assert_eq!(register.num_calls(), 0, "no new revision for a rollback");
        assert_eq!(update.num_calls(), 1);
    }

    #[tokio::test]
    async fn a_recorded_revision_running_another_digest_is_not_reused() {
        let good = digest("02");
        let (mut dep, target) = fixture(&good);
        dep.restore = Some(CURRENT.to_owned());
        let register = mock!(Client::register_task_definition)
            .match_requests(move |r| {
                r.container_definitions()[0].image() == Some(digest("02").as_str())
            })
            .then_output(registered);
        let update = mock!(Client::update_service)
            .match_requests(|r| r.task_definition() == Some(NEXT))
            .then_output(|| updated(NEXT, "ecs-svc/4"));
        let client = running_digest_01(&register, &update);
        EcsService::new(client).start(&dep, &target).await.unwrap();
        assert_eq!(register.num_calls(), 1);
    }

    #[tokio::test]
    async fn refusals_name_what_to_fix_and_change_nothing() {
        let (dep, target) = fixture(&digest("ab"));
        let missing = mock!(Client::describe_services).then_output(|| {
            DescribeServicesOutput::builder()
                .failures(
                    Failure::builder()
                        .arn("arn:aws:ecs:eu-west-1:123456789012:service/prod/web")
                        .reason("MISSING")
                        .build(),
                )
                .build()
        });
        let err = EcsService::new(mock_client!(aws_sdk_ecs, [&missing]))
            .start(&dep, &target)
            .await
            .unwrap_err();
        assert!(!err.is_retryable());
        assert!(
            err.to_string()
                .contains("no active service \"web\" in cluster \"prod\" (MISSING)"),
            "{err}"
        );

        let blue_green = mock!(Client::describe_services).then_output(|| {
            let mut svc = service(CURRENT, vec![]);
            svc.deployment_controller = Some(
                DeploymentController::builder()
                    .r#type(DeploymentControllerType::CodeDeploy)
                    .build()
                    .unwrap(),
            );
            DescribeServicesOutput::builder().services(svc).build()
        });
        let err = EcsService::new(mock_client!(aws_sdk_ecs, [&blue_green]))
            .start(&dep, &target)
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("CODE_DEPLOY deployment controller"),
            "{err}"
        );

        let mut renamed = target.clone();
        if let TargetConfig::Ecs(e) = &mut renamed {
            e.container = "api".into();
        }
        let register = mock!(Client::register_task_definition)
            .then_output(|| RegisterTaskDefinitionOutput::builder().build());
        let client = mock_client!(
            aws_sdk_ecs,
            RuleMode::MatchAny,
            [
                &describe(service(CURRENT, vec![])),
                &describe_definition(CURRENT, digest("01")),
                &register,
            ]
        );
        let err = EcsService::new(client)
            .start(&dep, &renamed)
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("has no container named \"api\" (it has web, envoy)"),
            "{err}"
        );
        assert_eq!(register.num_calls(), 0);
    }

    #[tokio::test]
    async fn an_inactive_service_update_is_permanent_and_throttling_is_retryable() {
        let (dep, target) = fixture(&digest("ab"));
        fn not_active() -> UpdateServiceError {
            UpdateServiceError::ServiceNotActiveException(
                ServiceNotActiveException::builder()
                    .message("Service was not ACTIVE.")
                    .build(),
            )
        }
        fn throttled() -> UpdateServiceError {
            UpdateServiceError::generic(
                aws_smithy_types::error::ErrorMetadata::builder()
                    .code("ThrottlingException")
                    .message("Rate exceeded")
                    .build(),
            )
        }
        let cases: [(fn() -> UpdateServiceError, bool); 2] =
            [(not_active, false), (throttled, true)];
        for (error, retryable) in cases {
            let update = mock!(Client::update_service).then_error(error);
            let register = mock!(Client::register_task_definition).then_output(registered);
            let client = mock_client!(
                aws_sdk_ecs,
                RuleMode::MatchAny,
                [
                    &describe(service(CURRENT, vec![])),
                    &describe_definition(CURRENT, digest("01")),
                    &register,
                    &update,
                ]
            );
            let err = EcsService::new(client)
                .start(&dep, &target)
                .await
                .unwrap_err();
            assert_eq!(err.is_retryable(), retryable, "{err}");
        }
    }

    #[tokio::test]
    async fn status_follows_the_deployment_and_a_circuit_breaker_rollback_is_a_failure() {
        let cases = [
            (DeploymentRolloutState::InProgress, RolloutStatus::InProgress),
            (DeploymentRolloutState::Completed, RolloutStatus::Succeeded),
            (
                DeploymentRolloutState::Failed,
                RolloutStatus::Failed(
                    "ECS deployment ecs-svc/2 failed: ECS deployment circuit breaker: tasks failed to start."
                        .into(),
                ),
            ),
        ];
        for (state, expected) in cases {
            let svc = service(
                NEXT,
                vec![
                    deployment("ecs-svc/2", NEXT, state),
                    deployment("ecs-svc/1", CURRENT, DeploymentRolloutState::Completed),
                ],
            );
            let ecs = EcsService::new(mock_client!(aws_sdk_ecs, [&describe(svc)]));
            let got = ecs
                .status(&target_ref("prod", "web", "ecs-svc/2"))
                .await
                .unwrap();
            assert_eq!(got, expected);
        }
        let gone = service(
            CURRENT,
            vec![deployment(
                "ecs-svc/9",
                CURRENT,
                DeploymentRolloutState::Completed,
            )],
        );
        let ecs = EcsService::new(mock_client!(aws_sdk_ecs, [&describe(gone)]));
        let got = ecs
            .status(&target_ref("prod", "web", "ecs-svc/2"))
            .await
            .unwrap();
        assert!(
            matches!(&got, RolloutStatus::Failed(r) if r.contains("no longer lists deployment ecs-svc/2")),
            "{got:?}"
        );
    }

    #[test]
    fn handles_round_trip() {
        let r = target_ref("prod", "web", "ecs-svc/4372928184467399157");
        assert_eq!(r.kind(), KIND);
        assert_eq!(
            parse_ref(&r).unwrap(),
            ("prod", "web", "ecs-svc/4372928184467399157")
        );
        assert!(parse_ref(&TargetRef::new(KIND, "prod/web")).is_err());
    }

    #[test]
    fn pruning_keeps_the_newest_and_the_protected_revisions_of_the_family_only() {
        let arn = |family: &str, r: u32| {
            format!("arn:aws:ecs:eu-west-1:123456789012:task-definition/{family}:{r}")
        };
        let registered: Vec<String> = (1..=12)
            .map(|r| arn("web", r))
            .chain([arn("web-worker", 3), arn("web-worker", 1)])
            .collect();
        let current = arn("web", 12);
        let before = arn("web", 4);
        let gone = revisions_to_deregister(&registered, "web", 3, &[&current, &before]);
        let expected: Vec<String> = [9, 8, 7, 6, 5, 3, 2, 1]
            .into_iter()
            .map(|r| arn("web", r))
            .collect();
        assert_eq!(gone, expected);
        assert!(revisions_to_deregister(&registered, "web", 20, &[]).is_empty());
    }

    #[tokio::test]
    async fn superseded_revisions_beyond_keep_are_deregistered_once_the_rollout_is_recorded() {
        let image = digest("ab");
        let (dep, target) = fixture(&image);
        let arn = |r: u32| format!("arn:aws:ecs:eu-west-1:123456789012:task-definition/web:{r}");
        let list = mock!(Client::list_task_definitions)
            .match_requests(|r| r.family_prefix() == Some("web"))
            .then_output(move || {
                ListTaskDefinitionsOutput::builder()
                    .set_task_definition_arns(Some((1..=8).rev().map(arn).collect()))
                    .build()
            });
        let deregister = mock!(Client::deregister_task_definition)
            .match_requests(|r| {
                ["web:1", "web:2", "web:3", "web:4", "web:5", "web:6"]
                    .iter()
                    .any(|rev| r.task_definition().unwrap().ends_with(rev))
            })
            .then_output(|| {
                aws_sdk_ecs::operation::deregister_task_definition::DeregisterTaskDefinitionOutput::builder()
                    .build()
            });
        let register = mock!(Client::register_task_definition).then_output(registered);
        let update = mock!(Client::update_service).then_output(|| updated(NEXT, "ecs-svc/2"));
        let client = mock_client!(
            aws_sdk_ecs,
            RuleMode::MatchAny,
            [
                &describe(service(CURRENT, vec![])),
                &describe_definition(CURRENT, digest("01")),
                &register,
                &update,
                &list,
                &deregister,
            ]
        );
        let ecs = EcsService::new(client);
        let started = ecs.start(&dep, &target).await.unwrap();
        assert_eq!(deregister.num_calls(), 0, "starting deregisters nothing");
        ecs.tidy(&started, &target).await;
        // keep_revisions 1: web:8 (new) kept as the newest, web:7 (before) protected.
        assert_eq!(deregister.num_calls(), 6);
    }

    #[tokio::test]
    async fn the_platform_is_the_running_task_definitions_runtime_platform_or_none() {
        use aws_sdk_ecs::types::{CpuArchitecture, OsFamily, RuntimePlatform};
        let graviton = mock!(Client::describe_task_definition).then_output(|| {
            let mut definition = definition(CURRENT, "x");
            definition.runtime_platform = Some(
                RuntimePlatform::builder()
                    .cpu_architecture(CpuArchitecture::Arm64)
                    .operating_system_family(OsFamily::Linux)
                    .build(),
            );
            DescribeTaskDefinitionOutput::builder()
                .task_definition(definition)
                .build()
        });
        let unsaid = mock!(Client::describe_task_definition).then_output(|| {
            DescribeTaskDefinitionOutput::builder()
                .task_definition(definition(CURRENT, "x"))
                .build()
        });
        let (first, again) = (
            describe(service(CURRENT, Vec::new())),
            describe(service(CURRENT, Vec::new())),
        );
        let client = mock_client!(
            aws_sdk_ecs,
            RuleMode::Sequential,
            [&first, &graviton, &again, &unsaid]
        );
        let ecs = EcsService::new(client);
        let (_, config) = fixture(&digest("01"));
        assert_eq!(
            ecs.platform(&config).await.unwrap(),
            Some(Platform::parse("linux/arm64").unwrap())
        );
        assert_eq!(
            ecs.platform(&config).await.unwrap(),
            None,
            "a task definition naming no runtimePlatform leaves it to the environment"
        );
    }
}
