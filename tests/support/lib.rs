//! Support for the integration tests: a moto server provisioned from `template.yaml`, the
//! real AWS adapters pointed at it, a smoke-check endpoint the test controls, and helpers
//! that play the parts of ECR, SSM and ECS (which emit no events under moto).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use aws_config::SdkConfig;
use aws_smithy_runtime_api::client::interceptors::SharedInterceptor;
use lambda_runtime::LambdaEvent;
use pushdeploy::adapters::wire::{self, Sdk};
use pushdeploy::domain::{AppName, Digest, EnvName, EventDetail, LifecycleEvent};
use pushdeploy::entrypoints::{self, Function, routed_to};
use pushdeploy::ports::{Clock, EventPublisher, PublishError, SystemClock};
use pushdeploy::services::control::EnvStatus;
use pushdeploy::services::{
    Control, Core, Deployer, Janitor, Notifier, Rollback, ServiceError, Tracker, Verifier,
};
use pushdeploy_local::moto::Moto;
use pushdeploy_local::stack::{create_bus, create_document, create_table};
use pushdeploy_local::template::Template;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub mod burst;
pub mod calls;
pub mod policy;

pub const TABLE: &str = "pushdeploy-test";
pub const BUS: &str = "pushdeploy-test";
pub const DOCUMENT: &str = "pushdeploy-deploy";
pub const PARAMETER: &str = "/pushdeploy/config";
pub const REPOSITORY: &str = "acme/web";
pub const BUNDLES: &str = "pushdeploy-bundles";

/// A moto server with pushdeploy's resources, and every function's use case wired to it
/// with the real adapters.
pub struct World {
    pub moto: Moto,
    _dir: TempDir,
    pub sdk: SdkConfig,
    pub deployer: Deployer,
    pub tracker: Tracker,
    pub verifier: Verifier,
    pub rollback: Rollback,
    pub control: Control,
    pub janitor: Janitor,
    pub notifier: Notifier,
    /// Every lifecycle event published, in order (they also went to moto's bus).
    pub published: Recorder,
    pub endpoint: SmokeEndpoint,
    pushes: Mutex<u32>,
}

impl World {
    /// Starts moto and provisions the table (keys from `template.yaml`), the bus, the
    /// repository, the SSM document (content from `template.yaml`) and the configuration.
    pub async fn start(config_yaml: &str) -> anyhow::Result<Self> {
        Self::start_on(config_yaml, "127.0.0.1").await
    }

    /// Like `start`, with moto listening on `host` (`0.0.0.0`: reachable from containers).
    pub async fn start_on(config_yaml: &str, host: &str) -> anyhow::Result<Self> {
        let dir = TempDir::new("pushdeploy-it")?;
        let moto = Moto::start_on(&dir.0.join("moto.log"), host)?;
        Self::start_with(config_yaml, moto, dir).await
    }

    /// Like `start`, on a moto that applies every request atomically, as DynamoDB does
    /// (`Moto::start_atomic`), logging each request to `requests_log()`.
    pub async fn start_atomic(config_yaml: &str) -> anyhow::Result<Self> {
        let dir = TempDir::new("pushdeploy-it")?;
        let moto = Moto::start_atomic(&dir.0.join("moto.log"), &dir.0.join("requests.log"))?;
        Self::start_with(config_yaml, moto, dir).await
    }

    /// Where an atomic moto (`start_atomic`) logs its requests.
    pub fn requests_log(&self) -> PathBuf {
        self._dir.0.join("requests.log")
    }

    async fn start_with(config_yaml: &str, moto: Moto, dir: TempDir) -> anyhow::Result<Self> {
        let sdk = moto.sdk_config().await;
        provision(&sdk).await?;
        let endpoint = SmokeEndpoint::start().await?;
        let world_config = config_yaml.replace("{smoke}", &endpoint.url());
        put_config(&sdk, &world_config).await?;
        // The hosts the SSM environments name by their tags, as the account would have them:
        // a command whose targets match no instance reaches no host, and fails.
        for tags in tagged_hosts(&world_config) {
            let tags: Vec<(&str, &str)> =
                tags.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            register_host(&moto, &tags).await?;
        }
        // Every function's use case as its `main` wires it, each with clients of its own
        // that record every request they send (for the IAM check, `tests/iam.rs`).
        let log = calls::Log::open();
        let published = Recorder::default();
        let settings = settings();
        let sdk_of = |function: &'static str| {
            Sdk::new(sdk.clone()).intercepted_by(SharedInterceptor::new(calls::CallRecorder {
                function,
                region: pushdeploy_local::moto::REGION.to_owned(),
                account: pushdeploy_local::moto::ACCOUNT.to_owned(),
                log: log.clone(),
            }))
        };
        let observed = |mut core: Core| {
            core.events = Arc::new(published.observing(core.events.clone()));
            core.meter = pushdeploy::metrics::Meter::new(
                "pushdeploy/test",
                pushdeploy::metrics::Sink::Memory(Arc::default()),
            );
            core
        };
        let mut deployer = wire::deployer(&sdk_of("deployer"), &settings)?;
        deployer.core = observed(deployer.core);
        let mut tracker = wire::tracker(&sdk_of("tracker"), &settings)?;
        tracker.core = observed(tracker.core);
        let mut verifier = wire::verifier(&sdk_of("verifier"), &settings)?;
        verifier.core = observed(verifier.core);
        let mut rollback = wire::rollback(&sdk_of("rollback"), &settings)?;
        rollback.core = observed(rollback.core);
        let mut control = wire::control(&sdk_of("control"), &settings);
        control.core = observed(control.core);
        let mut janitor = wire::janitor(&sdk_of("janitor"), &settings);
        janitor.core = observed(janitor.core);
        let mut notifier = wire::notifier(&sdk_of("notifier"), &settings)?;
        notifier.core = observed(notifier.core);
        Ok(Self {
            deployer,
            tracker,
            verifier,
            rollback,
            control,
            janitor,
            notifier,
            published,
            endpoint,
            sdk,
            moto,
            _dir: dir,
            pushes: Mutex::new(0),
        })
    }

    /// Creates an EC2 instance in moto carrying these tags.
    pub async fn register_host(&self, tags: &[(&str, &str)]) -> anyhow::Result<()> {
        register_host(&self.moto, tags).await
    }

    /// Delivers an EventBridge event to `function`'s entrypoint, the one Lambda calls. The
    /// routing table (which the template's rules are checked against) must route it there.
    pub async fn deliver(&self, function: Function, event: Value) -> Result<Value, ServiceError> {
        let source = event["source"].as_str().unwrap_or_default();
        let detail_type = event["detail-type"].as_str().unwrap_or_default();
        assert!(
            routed_to(source, detail_type).contains(&function),
            "no rule delivers {detail_type:?} from {source:?} to the {}",
            function.name()
        );
        self.call(function, event).await
    }

    /// A request typed by a person, to `function`'s entrypoint.
    pub async fn invoke(&self, function: Function, request: Value) -> Result<Value, ServiceError> {
        assert!(
            request.get("detail-type").is_none(),
            "{request} is an event"
        );
        self.call(function, request).await
    }

    async fn call(&self, function: Function, payload: Value) -> Result<Value, ServiceError> {
        let event = LambdaEvent::new(payload, lambda_runtime::Context::default());
        match function {
            Function::Deployer => entrypoints::deployer::handle(&self.deployer, event).await,
            Function::Tracker => entrypoints::tracker::handle(&self.tracker, DOCUMENT, event).await,
            Function::Verifier => entrypoints::verifier::handle(&self.verifier, event).await,
            Function::Rollback => entrypoints::rollback::handle(&self.rollback, event).await,
            Function::Control => entrypoints::control::handle(&self.control, event).await,
            Function::Janitor => entrypoints::janitor::handle(&self.janitor, false, event).await,
            Function::Notifier => entrypoints::notifier::handle(&self.notifier, event).await,
        }
    }

    /// The most recent published event of this detail-type, as EventBridge delivers it.
    pub fn published_event(&self, detail_type: &str) -> Value {
        let n = self.published.all().len();
        pushdeploy::fakes::delivered(&self.published.last(detail_type), &format!("published-{n}"))
    }

    /// What `{"action": "status"}` answers, through control's entrypoint.
    pub async fn status(&self) -> Vec<EnvStatus> {
        let out = self
            .invoke(Function::Control, json!({ "action": "status" }))
            .await
            .unwrap();
        serde_json::from_value(out["environments"].clone()).unwrap()
    }

    /// The `EC2 Command Status-change Notification` SSM would send for a command of
    /// pushdeploy's document.
    pub fn ssm_event(&self, command_id: &str, status: &str) -> Value {
        json!({
            "version": "0",
            "id": format!("ssm-{status}-{command_id}"),
            "detail-type": "EC2 Command Status-change Notification",
            "source": "aws.ssm",
            "account": pushdeploy_local::moto::ACCOUNT,
            "time": "2026-11-23T10:00:00Z",
            "region": pushdeploy_local::moto::REGION,
            "resources": [],
            "detail": {
                "command-id": command_id,
                "document-name": DOCUMENT,
                "requested-date-time": "2026-11-23T10:00:00Z",
                "expire-after": "2026-11-23T12:00:00Z",
                "output-s3bucket-name": "",
                "output-s3key-prefix": "",
                "parameters": "",
                "status": status
            }
        })
    }

    /// Records an image in ECR (moto) under `digest` with `tag`, and returns the
    /// `ECR Image Action` event AWS would send for the push.
    pub async fn push(&self, tag: &str, digest: &Digest) -> anyhow::Result<Value> {
        // Pushing the same image with the same tag again is a no-op in a registry; ECR
        // answers ImageAlreadyExists and still emits the push event.
        if let Err(e) = self.put_image(Some(tag), digest).await {
            let exists = e
                .downcast_ref::<aws_sdk_ecr::error::SdkError<aws_sdk_ecr::operation::put_image::PutImageError>>()
                .and_then(|e| e.as_service_error())
                .is_some_and(|e| e.is_image_already_exists_exception());
            if !exists {
                return Err(e.context("PutImage"));
            }
        }
        self.push_event(tag, digest)
    }

    /// The `ECR Image Action` event AWS sends for a push of `digest` under `tag`, for an
    /// image already recorded in ECR.
    pub fn push_event(&self, tag: &str, digest: &Digest) -> anyhow::Result<Value> {
        let n = {
            let mut pushes = self.pushes.lock().unwrap();
            *pushes += 1;
            *pushes
        };
        let time = SystemClock.now() + time::Duration::seconds(n as i64);
        Ok(json!({
            "version": "0",
            "id": format!("push-{n}-{tag}"),
            "detail-type": "ECR Image Action",
            "source": "aws.ecr",
            "account": pushdeploy_local::moto::ACCOUNT,
            "time": time.format(&time::format_description::well_known::Rfc3339)?,
            "region": pushdeploy_local::moto::REGION,
            "resources": [],
            "detail": {
                "result": "SUCCESS",
                "repository-name": REPOSITORY,
                "image-digest": digest.as_str(),
                "action-type": "PUSH",
                "image-tag": tag
            }
        }))
    }

    /// Records an image in ECR (moto) under `digest`, with `tag` or untagged.
    pub async fn put_image(&self, tag: Option<&str>, digest: &Digest) -> anyhow::Result<()> {
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": { "mediaType": "application/vnd.docker.container.image.v1+json", "size": 2, "digest": digest.as_str() },
            "layers": [ { "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": 2, "digest": digest.as_str() } ]
        });
        aws_sdk_ecr::Client::new(&self.sdk)
            .put_image()
            .repository_name(REPOSITORY)
            .image_manifest(manifest.to_string())
            .image_digest(digest.as_str())
            .set_image_tag(tag.map(str::to_owned))
            .send()
            .await?;
        Ok(())
    }

    /// The SSM commands sent so far, oldest first: (command id, Image parameter).
    pub async fn commands(&self) -> anyhow::Result<Vec<(String, String)>> {
        let out = aws_sdk_ssm::Client::new(&self.sdk)
            .list_commands()
            .send()
            .await?;
        let mut commands: Vec<_> = out
            .commands()
            .iter()
            .map(|c| {
                let image = c
                    .parameters()
                    .and_then(|p| p.get("Image"))
                    .and_then(|v| v.first())
                    .cloned();
                (
                    c.requested_date_time()
                        .map(|t| t.as_nanos())
                        .unwrap_or_default(),
                    c.command_id().unwrap_or_default().to_owned(),
                    image.unwrap_or_default(),
                )
            })
            .collect();
        commands.sort();
        Ok(commands
            .into_iter()
            .map(|(_, id, image)| (id, image))
            .collect())
    }

    /// Every item of the state table, to show that a refused request wrote nothing.
    pub async fn table_snapshot(&self) -> anyhow::Result<Vec<String>> {
        let out = aws_sdk_dynamodb::Client::new(&self.sdk)
            .scan()
            .table_name(TABLE)
            .send()
            .await?;
        let mut items: Vec<String> = out
            .items()
            .iter()
            .map(|item| format!("{:?}", item.iter().collect::<BTreeMap<_, _>>()))
            .collect();
        items.sort();
        Ok(items)
    }

    pub async fn put_config(&self, yaml: &str) -> anyhow::Result<()> {
        put_config(&self.sdk, &yaml.replace("{smoke}", &self.endpoint.url())).await
    }

    /// Creates the ECS cluster `cluster` with a service `web` running revision 1 of the
    /// task family `web`: the `web` container (secrets, logs) beside an `envoy` sidecar.
    pub async fn ecs_service(&self, cluster: &str) -> anyhow::Result<()> {
        self.ecs_service_deployed_by(cluster, aws_sdk_ecs::types::DeploymentControllerType::Ecs)
            .await
    }

    /// As `ecs_service`, with the service deployed by `controller` (ECS itself, or
    /// CodeDeploy blue/green).
    pub async fn ecs_service_deployed_by(
        &self,
        cluster: &str,
        controller: aws_sdk_ecs::types::DeploymentControllerType,
    ) -> anyhow::Result<()> {
        use aws_sdk_ecs::types::{
            ContainerDefinition, KeyValuePair, LogConfiguration, LogDriver, NetworkMode, Secret,
            Tag,
        };
        let ecs = aws_sdk_ecs::Client::new(&self.sdk);
        ecs.create_cluster().cluster_name(cluster).send().await?;
        ecs.register_task_definition()
            .family("web")
            .task_role_arn(format!(
                "arn:aws:iam::{}:role/web-task",
                pushdeploy_local::moto::ACCOUNT
            ))
            .network_mode(NetworkMode::Awsvpc)
            .cpu("256")
            .memory("512")
            .container_definitions(
                ContainerDefinition::builder()
                    .name("web")
                    .image(format!("{REPOSITORY}:bootstrap"))
                    .memory(256)
                    .secrets(
                        Secret::builder()
                            .name("DB_PASSWORD")
                            .value_from("arn:aws:ssm:us-east-1:123456789012:parameter/db")
                            .build()?,
                    )
                    .environment(KeyValuePair::builder().name("MODE").value("prod").build())
                    .log_configuration(
                        LogConfiguration::builder()
                            .log_driver(LogDriver::Awslogs)
                            .options("awslogs-group", "/ecs/web")
                            .build()?,
                    )
                    .build(),
            )
            .container_definitions(
                ContainerDefinition::builder()
                    .name("envoy")
                    .image("public.ecr.aws/appmesh/aws-appmesh-envoy:v1.29")
                    .memory(64)
                    .build(),
            )
            .tags(Tag::builder().key("team").value("web").build())
            .send()
            .await
            .context("RegisterTaskDefinition")?;
        ecs.create_service()
            .cluster(cluster)
            .service_name("web")
            .task_definition("web:1")
            .desired_count(2)
            .deployment_controller(
                aws_sdk_ecs::types::DeploymentController::builder()
                    .r#type(controller)
                    .build()?,
            )
            .send()
            .await
            .context("CreateService")?;
        Ok(())
    }

    /// What the ECS service `web` of `cluster` runs: its task definition ARN, and that
    /// revision's whole description.
    pub async fn ecs_running(
        &self,
        cluster: &str,
    ) -> anyhow::Result<(String, aws_sdk_ecs::types::TaskDefinition)> {
        let ecs = aws_sdk_ecs::Client::new(&self.sdk);
        let services = ecs
            .describe_services()
            .cluster(cluster)
            .services("web")
            .send()
            .await?;
        let arn = services.services()[0]
            .task_definition()
            .context("the service runs no task definition")?
            .to_owned();
        let definition = ecs
            .describe_task_definition()
            .task_definition(&arn)
            .send()
            .await?
            .task_definition
            .context("no task definition")?;
        Ok((arn, definition))
    }

    /// The ACTIVE revisions of the task family `web`, oldest first.
    pub async fn ecs_revisions(&self) -> anyhow::Result<Vec<i32>> {
        let out = aws_sdk_ecs::Client::new(&self.sdk)
            .list_task_definitions()
            .family_prefix("web")
            .status(aws_sdk_ecs::types::TaskDefinitionStatus::Active)
            .send()
            .await?;
        let mut revisions: Vec<i32> = out
            .task_definition_arns()
            .iter()
            .filter_map(|a| a.rsplit(':').next()?.parse().ok())
            .collect();
        revisions.sort();
        Ok(revisions)
    }

    /// A CodeDeploy EC2/on-premises application `application` with deployment group `group`.
    pub async fn codedeploy_group(&self, application: &str, group: &str) -> anyhow::Result<()> {
        let codedeploy = aws_sdk_codedeploy::Client::new(&self.sdk);
        codedeploy
            .create_application()
            .application_name(application)
            .compute_platform(aws_sdk_codedeploy::types::ComputePlatform::Server)
            .send()
            .await
            .context("CreateApplication")?;
        codedeploy
            .create_deployment_group()
            .application_name(application)
            .deployment_group_name(group)
            .service_role_arn(format!(
                "arn:aws:iam::{}:role/codedeploy",
                pushdeploy_local::moto::ACCOUNT
            ))
            .send()
            .await
            .context("CreateDeploymentGroup")?;
        Ok(())
    }

    /// A CodeDeploy ECS application `application` whose blue/green deployment group
    /// `group` deploys the service `web` of `cluster`.
    pub async fn codedeploy_blue_green(
        &self,
        application: &str,
        group: &str,
        cluster: &str,
    ) -> anyhow::Result<()> {
        use aws_sdk_codedeploy::types::{
            ComputePlatform, DeploymentOption, DeploymentStyle, DeploymentType, EcsService,
        };
        let codedeploy = aws_sdk_codedeploy::Client::new(&self.sdk);
        codedeploy
            .create_application()
            .application_name(application)
            .compute_platform(ComputePlatform::Ecs)
            .send()
            .await
            .context("CreateApplication")?;
        codedeploy
            .create_deployment_group()
            .application_name(application)
            .deployment_group_name(group)
            .service_role_arn(format!(
                "arn:aws:iam::{}:role/codedeploy",
                pushdeploy_local::moto::ACCOUNT
            ))
            .deployment_style(
                DeploymentStyle::builder()
                    .deployment_type(DeploymentType::BlueGreen)
                    .deployment_option(DeploymentOption::WithTrafficControl)
                    .build(),
            )
            .ecs_services(
                EcsService::builder()
                    .service_name("web")
                    .cluster_name(cluster)
                    .build(),
            )
            .send()
            .await
            .context("CreateDeploymentGroup")?;
        Ok(())
    }

    /// The AppSpec content CodeDeploy deployment `id` was created with.
    pub async fn appspec_of(&self, id: &str) -> anyhow::Result<Value> {
        let info = aws_sdk_codedeploy::Client::new(&self.sdk)
            .get_deployment()
            .deployment_id(id)
            .send()
            .await?
            .deployment_info
            .context("no deployment")?;
        let content = info
            .revision()
            .and_then(|r| r.app_spec_content())
            .and_then(|c| c.content())
            .context("no AppSpec content")?;
        Ok(serde_json::from_str(content)?)
    }

    /// The image each CodeDeploy bundle of `app`/`env` pins, oldest first, read from the
    /// bundles in S3 as an instance would.
    pub async fn bundled_images(&self, app: &str, env: &str) -> anyhow::Result<Vec<String>> {
        use std::io::Read;
        let s3 = aws_sdk_s3::Client::new(&self.sdk);
        let listed = s3
            .list_objects_v2()
            .bucket(BUNDLES)
            .prefix(format!("bundles/{app}/{env}/"))
            .send()
            .await?;
        let mut keys: Vec<String> = listed
            .contents()
            .iter()
            .filter_map(|o| o.key().map(str::to_owned))
            .collect();
        keys.sort();
        let mut images = Vec::new();
        for key in keys {
            let body = s3.get_object().bucket(BUNDLES).key(&key).send().await?;
            let bytes = body.body.collect().await?.into_bytes();
            let mut archive = tar::Archive::new(&bytes[..]);
            for entry in archive.entries()? {
                let mut entry = entry?;
                if entry.path()?.to_str() == Some("pushdeploy/params.sh") {
                    let mut text = String::new();
                    entry.read_to_string(&mut text)?;
                    let image = text
                        .lines()
                        .find_map(|l| l.strip_prefix("image='")?.strip_suffix('\''))
                        .context("params.sh names no image")?;
                    images.push(image.to_owned());
                }
            }
        }
        Ok(images)
    }

    /// The `CodeDeploy Deployment State-change Notification` CodeDeploy would send.
    pub fn codedeploy_event(&self, deployment_id: &str, state: &str) -> Value {
        json!({
            "account": pushdeploy_local::moto::ACCOUNT,
            "region": pushdeploy_local::moto::REGION,
            "detail-type": "CodeDeploy Deployment State-change Notification",
            "source": "aws.codedeploy",
            "version": "0",
            "time": "2026-11-23T10:00:00Z",
            "id": format!("codedeploy-{state}-{deployment_id}"),
            "resources": [],
            "detail": {
                "instanceGroupId": "9fd2fbef-2157-40d8-91e7-6845af69e2d2",
                "region": pushdeploy_local::moto::REGION,
                "application": "web",
                "deploymentId": deployment_id,
                "state": state,
                "deploymentGroup": "web-onprem"
            }
        })
    }

    /// The `ECS Deployment State Change` event ECS would send for the service deployment
    /// behind `target_ref` (`ecs:<cluster>/<service>/<deployment id>`).
    pub fn ecs_event(&self, target_ref: &str, event_name: &str, reason: &str) -> Value {
        let (cluster, rest) = target_ref
            .strip_prefix("ecs:")
            .and_then(|r| r.split_once('/'))
            .expect("an ECS handle");
        let (service, deployment_id) = rest.split_once('/').expect("an ECS handle");
        json!({
            "version": "0",
            "id": format!("ecs-{event_name}-{deployment_id}"),
            "detail-type": "ECS Deployment State Change",
            "source": "aws.ecs",
            "account": pushdeploy_local::moto::ACCOUNT,
            "time": "2026-11-23T10:00:00Z",
            "region": pushdeploy_local::moto::REGION,
            "resources": [format!(
                "arn:aws:ecs:{}:{}:service/{cluster}/{service}",
                pushdeploy_local::moto::REGION,
                pushdeploy_local::moto::ACCOUNT
            )],
            "detail": {
                "eventType": if event_name.ends_with("FAILED") { "ERROR" } else { "INFO" },
                "eventName": event_name,
                "deploymentId": deployment_id,
                "updatedAt": "2026-11-23T10:00:00Z",
                "reason": reason
            }
        })
    }
}

/// The tag every host the tests register carries, as the README tells users to tag theirs
/// (`InstanceTagKey=InstanceTagValue`, the template's defaults): pushdeploy may run its
/// document only there.
pub const HOST_TAG: (&str, &str) = ("pushdeploy", "enabled");

/// The settings every function of a test world runs with.
pub fn settings() -> pushdeploy::settings::Settings {
    pushdeploy::settings::Settings {
        table: TABLE.to_owned(),
        event_bus: BUS.to_owned(),
        config: pushdeploy::settings::ConfigLocation::Parameter(PARAMETER.to_owned()),
        config_ttl: Duration::ZERO,
        ssm_document: Some(DOCUMENT.to_owned()),
        bundle_bucket: Some(BUNDLES.to_owned()),
        metrics_namespace: "pushdeploy/test".to_owned(),
        janitor_dry_run: false,
        endpoint_url: None,
    }
}

/// The tag sets by which the configuration's SSM environments name their instances.
fn tagged_hosts(config_yaml: &str) -> Vec<BTreeMap<String, String>> {
    use pushdeploy::domain::TargetConfig;
    use pushdeploy::domain::config::InstanceSelector;
    let Ok(config) = pushdeploy::domain::Config::from_yaml(config_yaml) else {
        return Vec::new();
    };
    let mut sets: Vec<BTreeMap<String, String>> = config
        .environments()
        .filter_map(|(_, _, env)| match &env.target {
            TargetConfig::Ssm(ssm) => match &ssm.instances {
                InstanceSelector::Tags(tags) => Some(tags.clone()),
                InstanceSelector::Ids(_) => None,
            },
            _ => None,
        })
        .collect();
    sets.sort();
    sets.dedup();
    sets
}

/// Creates an EC2 instance in moto carrying these tags (EC2's query API, which no function
/// calls, so the SDK's EC2 crate is not needed).
async fn register_host(moto: &Moto, tags: &[(&str, &str)]) -> anyhow::Result<()> {
    let mut form = vec![
        ("Action".to_owned(), "RunInstances".to_owned()),
        ("Version".to_owned(), "2016-11-15".to_owned()),
        ("ImageId".to_owned(), "ami-03cf127a".to_owned()),
        ("InstanceType".to_owned(), "t3.micro".to_owned()),
        ("MinCount".to_owned(), "1".to_owned()),
        ("MaxCount".to_owned(), "1".to_owned()),
        (
            "TagSpecification.1.ResourceType".to_owned(),
            "instance".to_owned(),
        ),
    ];
    let tags: Vec<(&str, &str)> = tags.iter().copied().chain([HOST_TAG]).collect();
    for (i, (key, value)) in tags.iter().enumerate() {
        form.push((
            format!("TagSpecification.1.Tag.{}.Key", i + 1),
            (*key).to_owned(),
        ));
        form.push((
            format!("TagSpecification.1.Tag.{}.Value", i + 1),
            (*value).to_owned(),
        ));
    }
    let answer = reqwest::Client::new()
        .post(moto.endpoint())
        .header(
            "Authorization",
            format!(
                "AWS4-HMAC-SHA256 Credential=testing/20261203/{}/ec2/aws4_request, SignedHeaders=host, Signature=0",
                pushdeploy_local::moto::REGION
            ),
        )
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(
            form.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("&"),
        )
        .send()
        .await?;
    anyhow::ensure!(
        answer.status().is_success(),
        "RunInstances: {}",
        answer.text().await.unwrap_or_default()
    );
    Ok(())
}

pub fn names(app: &str, env: &str) -> (AppName, EnvName) {
    (AppName::parse(app).unwrap(), EnvName::parse(env).unwrap())
}

/// A digest made of one repeated hex character, for readable tests.
pub fn digest(c: char) -> Digest {
    Digest::parse(&format!("sha256:{}", c.to_string().repeat(64))).unwrap()
}

/// Creates in moto the resources the functions use, shaped as `template.yaml` defines them.
pub async fn provision(sdk: &SdkConfig) -> anyhow::Result<()> {
    let template = Template::load_default()?;
    create_table(sdk, &template, "StateTable", TABLE).await?;
    create_bus(sdk, BUS).await?;
    aws_sdk_ecr::Client::new(sdk)
        .create_repository()
        .repository_name(REPOSITORY)
        .send()
        .await
        .context("CreateRepository")?;
    create_document(sdk, &template, DOCUMENT).await?;
    aws_sdk_s3::Client::new(sdk)
        .create_bucket()
        .bucket(BUNDLES)
        .send()
        .await
        .context("CreateBucket")?;
    Ok(())
}

/// Puts the configuration document into the SSM parameter the functions read.
pub async fn put_config(sdk: &SdkConfig, yaml: &str) -> anyhow::Result<()> {
    pushdeploy_local::stack::put_config(sdk, PARAMETER, yaml).await
}

/// Publishes to moto's bus for real, and remembers what was published so a test can hand
/// each event to the next function, as the template's rules would.
#[derive(Clone, Default)]
pub struct Recorder {
    events: Arc<Mutex<Vec<LifecycleEvent>>>,
}

/// One function's publisher, whose events the shared `Recorder` also keeps.
pub struct Observed {
    inner: Arc<dyn EventPublisher>,
    events: Arc<Mutex<Vec<LifecycleEvent>>>,
}

impl Recorder {
    /// `inner`, with every event it publishes kept here too.
    fn observing(&self, inner: Arc<dyn EventPublisher>) -> Observed {
        Observed {
            inner,
            events: self.events.clone(),
        }
    }

    pub fn all(&self) -> Vec<LifecycleEvent> {
        self.events.lock().unwrap().clone()
    }

    pub fn types(&self) -> Vec<&'static str> {
        self.all().iter().map(|e| e.detail_type.as_str()).collect()
    }

    /// The most recent event of this detail-type.
    pub fn last(&self, detail_type: &str) -> LifecycleEvent {
        self.all()
            .into_iter()
            .rev()
            .find(|e| e.detail_type.as_str() == detail_type)
            .unwrap_or_else(|| {
                panic!(
                    "no {detail_type:?} event was published; got {:?}",
                    self.types()
                )
            })
    }

    /// The detail of the most recent event of this detail-type, about a deployment.
    pub fn last_detail(&self, detail_type: &str) -> EventDetail {
        self.last(detail_type)
            .deployment()
            .cloned()
            .unwrap_or_else(|| panic!("{detail_type:?} is not about a deployment"))
    }
}

#[async_trait]
impl EventPublisher for Observed {
    async fn publish(&self, events: &[LifecycleEvent]) -> Result<(), PublishError> {
        self.inner.publish(events).await?;
        self.events.lock().unwrap().extend_from_slice(events);
        Ok(())
    }
}

/// The service a smoke check probes: answers every request with what the test set.
pub struct SmokeEndpoint {
    port: u16,
    answer: Arc<Mutex<(u16, String)>>,
    /// What each request sent (as far as its first read goes).
    requests: Arc<Mutex<Vec<String>>>,
}

impl SmokeEndpoint {
    async fn start() -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let answer = Arc::new(Mutex::new((200, "ok".to_owned())));
        let requests: Arc<Mutex<Vec<String>>> = Arc::default();
        let shared = answer.clone();
        let seen = requests.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let (status, body) = shared.lock().unwrap().clone();
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 8192];
                    let n = socket.read(&mut buf).await.unwrap_or(0);
                    seen.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&buf[..n]).into_owned());
                    let response = format!(
                        "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(response.as_bytes()).await;
                });
            }
        });
        Ok(Self {
            port,
            answer,
            requests,
        })
    }

    /// Every request received so far, as sent.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/health", self.port)
    }

    /// What every following request gets.
    pub fn answer(&self, status: u16, body: &str) {
        *self.answer.lock().unwrap() = (status, body.to_owned());
    }
}

/// A directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> anyhow::Result<Self> {
        let path =
            std::env::temp_dir().join(format!("{prefix}-{}-{}", std::process::id(), ulid_like()));
        std::fs::create_dir_all(&path)?;
        Ok(Self(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn ulid_like() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}
