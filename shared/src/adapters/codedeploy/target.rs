//! The CodeDeploy target itself: a bundle in S3 or AppSpec content, `CreateDeployment` with
//! CodeDeploy's automatic rollback on, and the deployment read back with what that
//! rollback did.

use async_trait::async_trait;
use aws_sdk_codedeploy::Client;
use aws_sdk_codedeploy::types::{
    AppSpecContent, AutoRollbackConfiguration, AutoRollbackEvent, BundleType, DeploymentInfo,
    DeploymentStatus, RevisionLocation, RevisionLocationType, S3Location,
};
use aws_sdk_ecs::types::DeploymentControllerType;
use tracing::info;

use super::super::aws::failed;
use super::super::ecs::EcsService;
use super::super::ssm::registry_region;
use super::{KIND, bundle_files, ecs_appspec, tar};
use crate::domain::config::{CodeDeployHosts, CodeDeployPlatform, CodeDeployTarget, EcsTarget};
use crate::domain::{Deployment, TargetConfig};
use crate::ports::{RolloutStatus, Started, Target, TargetError, TargetRef};

pub struct CodeDeploy {
    client: Client,
    s3: aws_sdk_s3::Client,
    ecs: EcsService,
    /// Where bundles go; EC2/on-premises environments need it.
    bucket: Option<String>,
}

impl CodeDeploy {
    pub fn new(
        client: Client,
        s3: aws_sdk_s3::Client,
        ecs: aws_sdk_ecs::Client,
        bucket: Option<String>,
    ) -> Self {
        Self {
            client,
            s3,
            ecs: EcsService::new(ecs),
            bucket,
        }
    }

    fn region(&self, dep: &Deployment) -> String {
        registry_region(dep, self.client.config().region())
    }

    /// Uploads the bundle; returns its location for `CreateDeployment`.
    async fn upload(
        &self,
        dep: &Deployment,
        hosts: &CodeDeployHosts,
    ) -> Result<RevisionLocation, TargetError> {
        let bucket = self.bucket.as_deref().ok_or_else(|| {
            TargetError::Invalid("CodeDeploy EC2 deployments need the bundle bucket: list the deployment group in the stack's CodeDeployGroups parameter (locally, set PUSHDEPLOY_BUNDLE_BUCKET)"
                    .into())
        })?;
        let files = bundle_files(dep, hosts, &self.region(dep))?;
        let body = tar(&files, dep.created_at.unix_timestamp().max(0) as u64)
            .map_err(|e| TargetError::Invalid(format!("could not build the bundle: {e}")))?;
        let key = format!("bundles/{}/{}/{}.tar", dep.app, dep.environment, dep.id);
        let out = self
            .s3
            .put_object()
            .bucket(bucket)
            .key(&key)
            .content_type("application/x-tar")
            .body(body.into())
            .send()
            .await
            .map_err(|e| failed::<TargetError, _>(e, "PutObject"))?;
        let location = S3Location::builder()
            .bucket(bucket)
            .key(key)
            .bundle_type(BundleType::Tar)
            .set_e_tag(out.e_tag().map(|t| t.trim_matches('"').to_owned()))
            .set_version(out.version_id().map(str::to_owned))
            .build();
        Ok(RevisionLocation::builder()
            .revision_type(RevisionLocationType::S3)
            .s3_location(location)
            .build())
    }

    /// Registers the revision to run (or reuses the recorded one); returns the AppSpec
    /// revision and the revision the service ran before.
    async fn blue_green(
        &self,
        dep: &Deployment,
        service: &EcsTarget,
        port: u16,
    ) -> Result<(RevisionLocation, String), TargetError> {
        let found = self.ecs.service(&service.cluster, &service.service).await?;
        let controller = found.deployment_controller().map(|c| c.r#type());
        if controller != Some(&DeploymentControllerType::CodeDeploy) {
            return Err(TargetError::Invalid(format!(
                "service {:?} does not use the CODE_DEPLOY deployment controller; deploy it with `target.ecs` instead",
                service.service
            )));
        }
        let current = found
            .task_definition()
            .ok_or_else(|| {
                TargetError::Invalid(format!(
                    "service {:?} runs no task definition",
                    service.service
                ))
            })?
            .to_owned();
        let revision = self.ecs.revision_for(dep, service, &current).await?;
        let content = ecs_appspec(&revision, &service.container, port);
        let location = RevisionLocation::builder()
            .revision_type(RevisionLocationType::AppSpecContent)
            .app_spec_content(AppSpecContent::builder().content(content).build())
            .build();
        Ok((location, current))
    }

    /// Why a deployment failed, with what CodeDeploy's automatic rollback did; `Settling`
    /// while that rollback still runs (CodeDeploy takes one deployment per group at a
    /// time, so pushdeploy's own rollback must wait for it).
    async fn failure(&self, info: &DeploymentInfo, state: &str) -> RolloutStatus {
        let id = info.deployment_id().unwrap_or_default();
        let mut reason = match info.error_information() {
            Some(e) => format!(
                "CodeDeploy deployment {id} ended {state}: {}{}",
                e.code()
                    .map(|c| format!("{} ", c.as_str()))
                    .unwrap_or_default(),
                e.message().unwrap_or_default()
            ),
            None => format!("CodeDeploy deployment {id} ended {state}"),
        };
        let rollback = info.rollback_info();
        if let Some(rollback_id) = rollback.and_then(|r| r.rollback_deployment_id()) {
            let status = match self
                .client
                .get_deployment()
                .deployment_id(rollback_id)
                .send()
                .await
            {
                Ok(out) => out.deployment_info().and_then(|i| i.status()).cloned(),
                Err(e) => {
                    let error = failed::<TargetError, _>(e, "GetDeployment");
                    tracing::warn!(rollback_id, %error, "could not read CodeDeploy's rollback");
                    None
                }
            };
            let outcome = status
                .as_ref()
                .map_or("not readable", DeploymentStatus::as_str);
            reason.push_str(&format!(
                "; CodeDeploy's automatic rollback {rollback_id} is {outcome}"
            ));
            let running = !matches!(
                status,
                None | Some(
                    DeploymentStatus::Succeeded
                        | DeploymentStatus::Failed
                        | DeploymentStatus::Stopped
                )
            );
            if running {
                return RolloutStatus::Settling(reason);
            }
        } else if let Some(message) = rollback.and_then(|r| r.rollback_message()) {
            reason.push_str(&format!("; automatic rollback: {message}"));
        }
        RolloutStatus::Failed(reason)
    }
}

/// CodeDeploy's own rollback stays on for failed deployments.
fn auto_rollback() -> AutoRollbackConfiguration {
    AutoRollbackConfiguration::builder()
        .enabled(true)
        .events(AutoRollbackEvent::DeploymentFailure)
        .build()
}

#[async_trait]
impl Target for CodeDeploy {
    async fn start(&self, dep: &Deployment, config: &TargetConfig) -> Result<Started, TargetError> {
        let TargetConfig::CodeDeploy(CodeDeployTarget {
            application,
            deployment_group,
            platform,
        }) = config
        else {
            return Err(TargetError::Invalid(format!(
                "the CodeDeploy target cannot deploy to a {} target",
                config.kind()
            )));
        };
        let (revision, before) = match platform {
            CodeDeployPlatform::Ec2(hosts) => (self.upload(dep, hosts).await?, None),
            CodeDeployPlatform::Ecs {
                service,
                container_port,
            } => {
                let (revision, before) = self.blue_green(dep, service, *container_port).await?;
                (revision, Some(before))
            }
        };
        let out = self
            .client
            .create_deployment()
            .application_name(application)
            .deployment_group_name(deployment_group)
            .revision(revision)
            .ignore_application_stop_failures(true)
            .auto_rollback_configuration(auto_rollback())
            .description(format!(
                "pushdeploy {} {}/{} {}",
                dep.id, dep.app, dep.environment, dep.image
            ))
            .send()
            .await
            .map_err(|e| {
                let busy = e
                    .as_service_error()
                    .is_some_and(|e| e.is_deployment_limit_exceeded_exception());
                if busy {
                    TargetError::Busy(format!(
                        "deployment group {deployment_group:?} is running another deployment; CodeDeploy takes one at a time"
                    ))
                } else {
                    failed::<TargetError, _>(e, "CreateDeployment")
                }
            })?;
        let id = out.deployment_id().ok_or_else(|| {
            TargetError::Invalid("CreateDeployment returned no deployment id".into())
        })?;
        info!(
            deployment = id,
            application, deployment_group, "CodeDeploy deployment created"
        );
        Ok(Started {
            target_ref: TargetRef::new(KIND, id),
            before,
        })
    }

    async fn status(&self, target_ref: &TargetRef) -> Result<RolloutStatus, TargetError> {
        let out = self
            .client
            .get_deployment()
            .deployment_id(target_ref.id())
            .send()
            .await
            .map_err(|e| failed::<TargetError, _>(e, "GetDeployment"))?;
        let info = out.deployment_info().ok_or_else(|| {
            TargetError::NotFound(format!("CodeDeploy has no deployment {}", target_ref.id()))
        })?;
        Ok(match info.status() {
            Some(DeploymentStatus::Succeeded) => RolloutStatus::Succeeded,
            Some(s @ (DeploymentStatus::Failed | DeploymentStatus::Stopped)) => {
                self.failure(info, s.as_str()).await
            }
            _ => RolloutStatus::InProgress,
        })
    }

    async fn find(
        &self,
        dep: &Deployment,
        config: &TargetConfig,
    ) -> Result<Option<Started>, TargetError> {
        let TargetConfig::CodeDeploy(CodeDeployTarget {
            application,
            deployment_group,
            ..
        }) = config
        else {
            return Ok(None);
        };
        let prefix = format!("pushdeploy {} ", dep.id);
        let since = dep.created_at - time::Duration::minutes(5);
        let range = aws_sdk_codedeploy::types::TimeRange::builder()
            .start(aws_smithy_types::DateTime::from_secs(
                since.unix_timestamp(),
            ))
            .build();
        let out = self
            .client
            .list_deployments()
            .application_name(application)
            .deployment_group_name(deployment_group)
            .create_time_range(range)
            .send()
            .await
            .map_err(|e| failed::<TargetError, _>(e, "ListDeployments"))?;
        for id in out.deployments() {
            let info = self
                .client
                .get_deployment()
                .deployment_id(id)
                .send()
                .await
                .map_err(|e| failed::<TargetError, _>(e, "GetDeployment"))?;
            let ours = info
                .deployment_info()
                .and_then(|i| i.description())
                .is_some_and(|d| d.starts_with(&prefix));
            if ours {
                return Ok(Some(TargetRef::new(KIND, id).into()));
            }
        }
        Ok(None)
    }

    async fn tidy(&self, started: &Started, config: &TargetConfig) {
        if let TargetConfig::CodeDeploy(CodeDeployTarget {
            platform: CodeDeployPlatform::Ecs { service, .. },
            ..
        }) = config
        {
            self.ecs
                .prune_service(service, started.before.as_deref())
                .await;
        }
    }

    /// Blue/green on ECS: the service's task definition's `runtimePlatform`. EC2 hosts say
    /// nothing: the environment's `platform` decides.
    async fn platform(
        &self,
        config: &TargetConfig,
    ) -> Result<Option<crate::domain::platform::Platform>, TargetError> {
        match config {
            TargetConfig::CodeDeploy(CodeDeployTarget {
                platform: CodeDeployPlatform::Ecs { service, .. },
                ..
            }) => self.ecs.runtime_platform(service).await,
            _ => Ok(None),
        }
    }

    /// A deployment that ran too long is stopped without CodeDeploy's rollback: pushdeploy's
    /// own rollback to the last verified digest follows, and CodeDeploy would refuse it
    /// while a rollback of its own ran in the group.
    async fn cancel(&self, target_ref: &TargetRef) -> Result<(), TargetError> {
        self.client
            .stop_deployment()
            .deployment_id(target_ref.id())
            .auto_rollback_enabled(false)
            .send()
            .await
            .map_err(|e| failed::<TargetError, _>(e, "StopDeployment"))?;
        Ok(())
    }
}

#[cfg(test)]
pub(super) mod tests {
    use aws_sdk_codedeploy::operation::create_deployment::CreateDeploymentOutput;
    use aws_sdk_codedeploy::operation::get_deployment::GetDeploymentOutput;
    use aws_sdk_codedeploy::operation::stop_deployment::StopDeploymentOutput;
    use aws_sdk_codedeploy::types::{ErrorCode, ErrorInformation, RollbackInfo};
    use aws_sdk_ecs::operation::describe_services::DescribeServicesOutput;
    use aws_sdk_ecs::operation::describe_task_definition::DescribeTaskDefinitionOutput;
    use aws_sdk_ecs::operation::list_task_definitions::ListTaskDefinitionsOutput;
    use aws_sdk_ecs::operation::register_task_definition::RegisterTaskDefinitionOutput;
    use aws_sdk_ecs::types::{ContainerDefinition, DeploymentController, Service, TaskDefinition};
    use aws_sdk_s3::operation::put_object::PutObjectOutput;
    use aws_smithy_mocks::{RuleMode, mock, mock_client};

    use super::super::bundle::tests::untar;
    use super::*;

    const CONFIG: &str = r#"
apps:
  web:
    repository: acme/web
    environments:
      production:
        target:
          codedeploy:
            application: web
            deployment_group: web-production
            ec2: { container: web, ports: ["80:8000"], health: { path: /health } }
      blue-green:
        target:
          codedeploy:
            application: web-ecs
            deployment_group: web-bg
            ecs: { cluster: prod, service: web, container: web, container_port: 8000 }
"#;
    const IMAGE: &str = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/acme/web@sha256:";
    const CURRENT: &str = "arn:aws:ecs:eu-west-1:123456789012:task-definition/web:7";
    const NEXT: &str = "arn:aws:ecs:eu-west-1:123456789012:task-definition/web:8";

    pub(in crate::adapters::codedeploy) fn fixture(env: &str) -> (Deployment, TargetConfig) {
        crate::adapters::deployment_to(CONFIG, env, &format!("{IMAGE}{}", "ab".repeat(32)))
    }

    pub(in crate::adapters::codedeploy) fn hosts(target: &TargetConfig) -> CodeDeployHosts {
        match target {
            TargetConfig::CodeDeploy(CodeDeployTarget {
                platform: CodeDeployPlatform::Ec2(hosts),
                ..
            }) => hosts.clone(),
            other => panic!("{other:?}"),
        }
    }

    fn adapter(
        codedeploy: Client,
        s3: aws_sdk_s3::Client,
        ecs: aws_sdk_ecs::Client,
        bucket: Option<&str>,
    ) -> CodeDeploy {
        CodeDeploy::new(codedeploy, s3, ecs, bucket.map(str::to_owned))
    }

    #[tokio::test]
    async fn ec2_uploads_the_bundle_and_creates_a_deployment_with_rollback_on() {
        let (dep, target) = fixture("production");
        let key = format!("bundles/web/production/{}.tar", dep.id);
        let wanted_key = key.clone();
        let image = dep.image.to_string();
        let put = mock!(aws_sdk_s3::Client::put_object)
            .match_requests(move |r| {
                let bytes = r.body().bytes().unwrap_or_default();
                let files = untar(bytes);
                r.bucket() == Some("pushdeploy-bundles")
                    && r.key() == Some(wanted_key.as_str())
                    && files
                        .iter()
                        .any(|(p, _, t)| p == "pushdeploy/params.sh" && t.contains(&image))
            })
            .then_output(|| {
                PutObjectOutput::builder()
                    .e_tag("\"9dd4e461268c8034f5c8564e155c67a6\"")
                    .version_id("v7")
                    .build()
            });
        let create = mock!(Client::create_deployment)
            .match_requests(move |r| {
                let s3 = r.revision().unwrap().s3_location().unwrap();
                let rollback = r.auto_rollback_configuration().unwrap();
                r.application_name() == Some("web")
                    && r.deployment_group_name() == Some("web-production")
                    && r.ignore_application_stop_failures() == Some(true)
                    && rollback.enabled()
                    && rollback
                        .events()
                        .contains(&AutoRollbackEvent::DeploymentFailure)
                    && s3.bucket() == Some("pushdeploy-bundles")
                    && s3.key() == Some(key.as_str())
                    && s3.bundle_type() == Some(&BundleType::Tar)
                    && s3.e_tag() == Some("9dd4e461268c8034f5c8564e155c67a6")
                    && s3.version() == Some("v7")
            })
            .then_output(|| {
                CreateDeploymentOutput::builder()
                    .deployment_id("d-A1B2C3D4E")
                    .build()
            });
        let s3 = mock_client!(aws_sdk_s3, [&put]);
        let cd = mock_client!(aws_sdk_codedeploy, [&create]);
        let ecs = mock_client!(aws_sdk_ecs, []);
        let started = adapter(cd, s3, ecs, Some("pushdeploy-bundles"))
            .start(&dep, &target)
            .await
            .unwrap();
        assert_eq!(started.target_ref.as_str(), "codedeploy:d-A1B2C3D4E");
        assert_eq!(started.before, None);
        assert_eq!((put.num_calls(), create.num_calls()), (1, 1));
    }

    #[tokio::test]
    async fn ec2_without_a_bundle_bucket_says_what_to_set() {
        let (dep, target) = fixture("production");
        let create = mock!(Client::create_deployment)
            .then_output(|| CreateDeploymentOutput::builder().build());
        let err = adapter(
            mock_client!(aws_sdk_codedeploy, [&create]),
            mock_client!(aws_sdk_s3, []),
            mock_client!(aws_sdk_ecs, []),
            None,
        )
        .start(&dep, &target)
        .await
        .unwrap_err();
        assert!(
            err.to_string().contains("PUSHDEPLOY_BUNDLE_BUCKET"),
            "{err}"
        );
        assert_eq!(create.num_calls(), 0);
    }

    fn definition(arn: &str, image: &str) -> TaskDefinition {
        TaskDefinition::builder()
            .task_definition_arn(arn)
            .family("web")
            .container_definitions(
                ContainerDefinition::builder()
                    .name("web")
                    .image(image)
                    .build(),
            )
            .build()
    }

    fn service(controller: DeploymentControllerType) -> Service {
        Service::builder()
            .service_name("web")
            .status("ACTIVE")
            .task_definition(CURRENT)
            .deployment_controller(
                DeploymentController::builder()
                    .r#type(controller)
                    .build()
                    .unwrap(),
            )
            .build()
    }

    #[tokio::test]
    async fn ecs_blue_green_names_a_new_revision_in_appspec_content() {
        let (dep, target) = fixture("blue-green");
        let describe = mock!(aws_sdk_ecs::Client::describe_services).then_output(|| {
            DescribeServicesOutput::builder()
                .services(service(DeploymentControllerType::CodeDeploy))
                .build()
        });
        let old = mock!(aws_sdk_ecs::Client::describe_task_definition).then_output(|| {
            DescribeTaskDefinitionOutput::builder()
                .task_definition(definition(CURRENT, "acme/web:old"))
                .build()
        });
        let image = dep.image.to_string();
        let register = mock!(aws_sdk_ecs::Client::register_task_definition)
            .match_requests(move |r| r.container_definitions()[0].image() == Some(image.as_str()))
            .then_output(|| {
                RegisterTaskDefinitionOutput::builder()
                    .task_definition(definition(NEXT, "x"))
                    .build()
            });
        let list = mock!(aws_sdk_ecs::Client::list_task_definitions)
            .then_output(|| ListTaskDefinitionsOutput::builder().build());
        let create = mock!(Client::create_deployment)
            .match_requests(|r| {
                let revision = r.revision().unwrap();
                let content: serde_json::Value =
                    serde_json::from_str(revision.app_spec_content().unwrap().content().unwrap())
                        .unwrap();
                let properties = &content["Resources"][0]["TargetService"]["Properties"];
                revision.revision_type() == Some(&RevisionLocationType::AppSpecContent)
                    && r.application_name() == Some("web-ecs")
                    && r.deployment_group_name() == Some("web-bg")
                    && properties["TaskDefinition"] == NEXT
                    && properties["LoadBalancerInfo"]
                        == serde_json::json!({ "ContainerName": "web", "ContainerPort": 8000 })
                    && r.auto_rollback_configuration().unwrap().enabled()
            })
            .then_output(|| {
                CreateDeploymentOutput::builder()
                    .deployment_id("d-BG1")
                    .build()
            });
        let ecs = mock_client!(
            aws_sdk_ecs,
            RuleMode::MatchAny,
            [&describe, &old, &register, &list]
        );
        let started = adapter(
            mock_client!(aws_sdk_codedeploy, [&create]),
            mock_client!(aws_sdk_s3, []),
            ecs,
            None,
        )
        .start(&dep, &target)
        .await
        .unwrap();
        assert_eq!(started.target_ref.as_str(), "codedeploy:d-BG1");
        assert_eq!(started.before.as_deref(), Some(CURRENT));
        assert_eq!(create.num_calls(), 1);
    }

    #[tokio::test]
    async fn ecs_blue_green_refuses_a_service_deployed_by_ecs_itself() {
        let (dep, target) = fixture("blue-green");
        let describe = mock!(aws_sdk_ecs::Client::describe_services).then_output(|| {
            DescribeServicesOutput::builder()
                .services(service(DeploymentControllerType::Ecs))
                .build()
        });
        let err = adapter(
            mock_client!(aws_sdk_codedeploy, []),
            mock_client!(aws_sdk_s3, []),
            mock_client!(aws_sdk_ecs, [&describe]),
            None,
        )
        .start(&dep, &target)
        .await
        .unwrap_err();
        assert!(err.to_string().contains("`target.ecs`"), "{err}");
    }

    fn info(id: &str, status: DeploymentStatus) -> DeploymentInfo {
        DeploymentInfo::builder()
            .deployment_id(id)
            .status(status)
            .build()
    }

    #[tokio::test]
    async fn status_maps_codedeploy_states_and_records_its_automatic_rollback() {
        for (status, expected) in [
            (DeploymentStatus::Created, RolloutStatus::InProgress),
            (DeploymentStatus::Queued, RolloutStatus::InProgress),
            (DeploymentStatus::InProgress, RolloutStatus::InProgress),
            (DeploymentStatus::Ready, RolloutStatus::InProgress),
            (DeploymentStatus::Succeeded, RolloutStatus::Succeeded),
        ] {
            let get = mock!(Client::get_deployment).then_output(move || {
                GetDeploymentOutput::builder()
                    .deployment_info(info("d-1", status.clone()))
                    .build()
            });
            let cd = adapter(
                mock_client!(aws_sdk_codedeploy, [&get]),
                mock_client!(aws_sdk_s3, []),
                mock_client!(aws_sdk_ecs, []),
                None,
            );
            assert_eq!(
                cd.status(&TargetRef::new(KIND, "d-1")).await.unwrap(),
                expected
            );
        }
        let failed = mock!(Client::get_deployment)
            .match_requests(|r| r.deployment_id() == Some("d-1"))
            .then_output(|| {
                let mut i = info("d-1", DeploymentStatus::Failed);
                i.error_information = Some(
                    ErrorInformation::builder()
                        .code(ErrorCode::HealthConstraints)
                        .message("The overall deployment failed because too many individual instances failed deployment")
                        .build(),
                );
                i.rollback_info = Some(RollbackInfo::builder().rollback_deployment_id("d-2").build());
                GetDeploymentOutput::builder().deployment_info(i).build()
            });
        let rollback = mock!(Client::get_deployment)
            .match_requests(|r| r.deployment_id() == Some("d-2"))
            .then_output(|| {
                GetDeploymentOutput::builder()
                    .deployment_info(info("d-2", DeploymentStatus::Succeeded))
                    .build()
            });
        let cd = adapter(
            mock_client!(aws_sdk_codedeploy, RuleMode::MatchAny, [&failed, &rollback]),
            mock_client!(aws_sdk_s3, []),
            mock_client!(aws_sdk_ecs, []),
            None,
        );
        let RolloutStatus::Failed(reason) = cd.status(&TargetRef::new(KIND, "d-1")).await.unwrap()
        else {
            panic!("a failed deployment")
        };
        let stopped = mock!(Client::get_deployment).then_output(|| {
            let mut i = info("d-3", DeploymentStatus::Stopped);
            i.rollback_info = Some(
                RollbackInfo::builder()
                    .rollback_message("Automatic rollback is not enabled for stopped deployments")
                    .build(),
            );
            GetDeploymentOutput::builder().deployment_info(i).build()
        });
        let cd_stopped = adapter(
            mock_client!(aws_sdk_codedeploy, [&stopped]),
            mock_client!(aws_sdk_s3, []),
            mock_client!(aws_sdk_ecs, []),
            None,
        );
        assert_eq!(
            cd_stopped.status(&TargetRef::new(KIND, "d-3")).await.unwrap(),
            RolloutStatus::Failed(
                "CodeDeploy deployment d-3 ended Stopped; automatic rollback: Automatic rollback is not enabled for stopped deployments"
                    .into()
            )
        );
        assert_eq!(
            reason,
            "CodeDeploy deployment d-1 ended Failed: HEALTH_CONSTRAINTS The overall deployment failed because too many individual instances failed deployment; CodeDeploy's automatic rollback d-2 is Succeeded"
        );
    }

    #[tokio::test]
    async fn a_failure_settles_while_codedeploys_own_rollback_runs() {
        let failed = mock!(Client::get_deployment)
            .match_requests(|r| r.deployment_id() == Some("d-1"))
            .then_output(|| {
                let mut i = info("d-1", DeploymentStatus::Failed);
                i.rollback_info = Some(
                    RollbackInfo::builder()
                        .rollback_deployment_id("d-2")
                        .build(),
                );
                GetDeploymentOutput::builder().deployment_info(i).build()
            });
        let rolling_back = mock!(Client::get_deployment)
            .match_requests(|r| r.deployment_id() == Some("d-2"))
            .then_output(|| {
                GetDeploymentOutput::builder()
                    .deployment_info(info("d-2", DeploymentStatus::InProgress))
                    .build()
            });
        let cd = adapter(
            mock_client!(
                aws_sdk_codedeploy,
                RuleMode::MatchAny,
                [&failed, &rolling_back]
            ),
            mock_client!(aws_sdk_s3, []),
            mock_client!(aws_sdk_ecs, []),
            None,
        );
        assert_eq!(
            cd.status(&TargetRef::new(KIND, "d-1")).await.unwrap(),
            RolloutStatus::Settling(
                "CodeDeploy deployment d-1 ended Failed; CodeDeploy's automatic rollback d-2 is InProgress"
                    .into()
            )
        );
    }

    #[tokio::test]
    async fn a_busy_deployment_group_is_a_retryable_refusal_that_names_the_group() {
        let (dep, target) = fixture("production");
        let put = mock!(aws_sdk_s3::Client::put_object)
            .then_output(|| PutObjectOutput::builder().e_tag("\"e\"").build());
        let create = mock!(Client::create_deployment).then_error(|| {
            aws_sdk_codedeploy::operation::create_deployment::CreateDeploymentError::DeploymentLimitExceededException(
                aws_sdk_codedeploy::types::error::DeploymentLimitExceededException::builder()
                    .message("The Deployment Group already has an active Deployment")
                    .build(),
            )
        });
        let err = adapter(
            mock_client!(aws_sdk_codedeploy, [&create]),
            mock_client!(aws_sdk_s3, [&put]),
            mock_client!(aws_sdk_ecs, []),
            Some("pushdeploy-bundles"),
        )
        .start(&dep, &target)
        .await
        .unwrap_err();
        assert!(err.is_retryable());
        assert!(
            err.to_string()
                .contains("\"web-production\" is running another deployment"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn cancelling_stops_the_deployment_without_codedeploys_rollback() {
        let stop = mock!(Client::stop_deployment)
            .match_requests(|r| {
                r.deployment_id() == Some("d-1") && r.auto_rollback_enabled() == Some(false)
            })
            .then_output(|| StopDeploymentOutput::builder().build());
        let cd = adapter(
            mock_client!(aws_sdk_codedeploy, [&stop]),
            mock_client!(aws_sdk_s3, []),
            mock_client!(aws_sdk_ecs, []),
            None,
        );
        cd.cancel(&TargetRef::new(KIND, "d-1")).await.unwrap();
        assert_eq!(stop.num_calls(), 1);
    }
}
