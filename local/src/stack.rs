//! The local stack, put together: moto as AWS's control plane (with the resources of
//! `template.yaml`), the local registry, the container host, the functions under
//! `cargo lambda watch`, and the router between them. Everything a stack starts is undone
//! when it is dropped (or on Ctrl-C in the binary); a failed or panicking run keeps its logs.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use aws_config::SdkConfig;
use serde_json::{Value as Json, json};
use serde_norway::Value as Yaml;

use crate::app::SampleApp;
use crate::host::Host;
use crate::images::{AppVersion, Builder, BuiltImage};
use crate::lambdas::{Lambdas, LocalFunction, bin_dir, check_binaries};
use crate::moto::{ACCOUNT, Moto, REGION};
use crate::push::{ensure_repository, publish_push_event, record_in_ecr};
use crate::registry::LocalRegistry;
use crate::router::{Router, RouterConfig, RuleSpec, Schedule, rate};
use crate::run::Run;
use crate::template::{Bus, Template, Trigger, to_json};
use crate::timeline::{Source, Timeline, short_digest};

/// How a stack is started; `from_env` reads the overrides users and tests set.
#[derive(Debug, Clone)]
pub struct StackOptions {
    /// `PUSHDEPLOY_TEMPLATE`, else `template.yaml` of the workspace.
    pub template: PathBuf,
    /// `PUSHDEPLOY_BIN_DIR`, else `<target>/debug`.
    pub bin_dir: PathBuf,
    /// `PUSHDEPLOY_LOCAL_RECONCILE_SECONDS`, else the template's schedule.
    pub reconcile_every: Option<Duration>,
    /// Execution environments per function (`PUSHDEPLOY_LOCAL_INSTANCES`, default 2).
    pub instances_per_function: usize,
    /// The CloudFormation stack name the template's names are made from.
    pub stack_name: String,
    /// Tags of the host's instance.
    pub host_tags: BTreeMap<String, String>,
    /// Print the timeline as it happens.
    pub print_timeline: bool,
    /// Pauses before the retries of a failed asynchronous invocation.
    pub retry_delays: Vec<Duration>,
}

impl StackOptions {
    pub fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        Self {
            template: var("PUSHDEPLOY_TEMPLATE")
                .map(PathBuf::from)
                .unwrap_or_else(Template::default_path),
            bin_dir: bin_dir(),
            reconcile_every: var("PUSHDEPLOY_LOCAL_RECONCILE_SECONDS")
                .and_then(|s| s.parse::<u64>().ok())
                .map(Duration::from_secs),
            instances_per_function: var("PUSHDEPLOY_LOCAL_INSTANCES")
                .and_then(|s| s.parse().ok())
                .unwrap_or(2),
            stack_name: "pushdeploy".into(),
            host_tags: BTreeMap::new(),
            print_timeline: false,
            retry_delays: vec![Duration::from_secs(1), Duration::from_secs(2)],
        }
    }

    /// Tags the host with the sample app's target tag.
    pub fn for_app(mut self, app: &SampleApp) -> Self {
        self.host_tags
            .insert(app.role.0.clone(), app.role.1.clone());
        self
    }
}

/// The local names of the template's resources.
#[derive(Debug, Clone)]
pub struct Names {
    pub stack: String,
    pub table: String,
    pub bus: String,
    pub parameter: String,
    pub document: String,
    pub dead_letter_queue: Option<String>,
    /// Every resource's `Ref` value, by logical id.
    refs: BTreeMap<String, String>,
    /// `Fn::GetAtt` values, by `Id.Attribute`.
    attributes: BTreeMap<String, String>,
    parameters: BTreeMap<String, String>,
}

impl Names {
    fn of(template: &Template, stack: &str) -> anyhow::Result<Self> {
        let parameters = template.parameter_defaults();
        let base = |name: &str| -> Option<String> {
            match name {
                "AWS::StackName" => Some(stack.to_owned()),
                "AWS::Region" => Some(REGION.to_owned()),
                "AWS::AccountId" => Some(ACCOUNT.to_owned()),
                "AWS::Partition" => Some("aws".to_owned()),
                "AWS::URLSuffix" => Some("amazonaws.com".to_owned()),
                other => parameters.get(other).cloned(),
            }
        };
        let mut refs = BTreeMap::new();
        let mut attributes = BTreeMap::new();
        for (id, ty, props) in template.resources() {
            let named = |key: &str, fallback: String| -> anyhow::Result<String> {
                match props.get(key) {
                    Some(v) => to_json(v, &base)?
                        .as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| anyhow!("{id}.{key} is not a string")),
                    None => Ok(fallback),
                }
            };
            let default = format!("{stack}-{id}");
            let arn = |service: &str, resource: String| {
                format!("arn:aws:{service}:{REGION}:{ACCOUNT}:{resource}")
            };
            match ty {
                "AWS::DynamoDB::Table" => {
                    let name = named("TableName", default)?;
                    attributes.insert(
                        format!("{id}.Arn"),
                        arn("dynamodb", format!("table/{name}")),
                    );
                    refs.insert(id.to_owned(), name);
                }
                "AWS::Events::EventBus" => {
                    let name = named("Name", default)?;
                    attributes.insert(
                        format!("{id}.Arn"),
                        arn("events", format!("event-bus/{name}")),
                    );
                    attributes.insert(format!("{id}.Name"), name.clone());
                    refs.insert(id.to_owned(), name);
                }
                "AWS::SSM::Parameter" => {
                    let name = named("Name", default)?;
                    attributes.insert(format!("{id}.Value"), String::new());
                    refs.insert(id.to_owned(), name);
                }
                "AWS::SSM::Document" => {
                    refs.insert(id.to_owned(), named("Name", default)?);
                }
                "AWS::SQS::Queue" => {
                    let name = named("QueueName", default)?;
                    let url = format!("http://sqs.{REGION}.localhost/{ACCOUNT}/{name}");
                    attributes.insert(format!("{id}.Arn"), arn("sqs", name.clone()));
                    attributes.insert(format!("{id}.QueueName"), name.clone());
                    attributes.insert(format!("{id}.QueueUrl"), url.clone());
                    refs.insert(id.to_owned(), url);
                }
                "AWS::SNS::Topic" => {
                    let name = named("TopicName", default)?;
                    let topic = arn("sns", name.clone());
                    attributes.insert(format!("{id}.TopicName"), name);
                    attributes.insert(format!("{id}.TopicArn"), topic.clone());
                    refs.insert(id.to_owned(), topic);
                }
                "AWS::Serverless::Function" => {
                    let code_uri = props.get("CodeUri").and_then(Yaml::as_str).unwrap_or(id);
                    let name = code_uri
                        .trim_end_matches('/')
                        .rsplit('/')
                        .next()
                        .unwrap_or(id);
                    attributes.insert(
                        format!("{id}.Arn"),
                        arn("lambda", format!("function:{name}")),
                    );
                    refs.insert(id.to_owned(), name.to_owned());
                }
                _ => {}
            }
        }
        let find = |ty_wanted: &str| {
            template
                .resources()
                .find(|(_, ty, _)| *ty == ty_wanted)
                .and_then(|(id, _, _)| refs.get(id).cloned())
        };
        let need = |ty: &str| find(ty).ok_or_else(|| anyhow!("the template defines no {ty}"));
        let table = need("AWS::DynamoDB::Table")?;
        let bus = need("AWS::Events::EventBus")?;
        let parameter = need("AWS::SSM::Parameter")?;
        let document = need("AWS::SSM::Document")?;
        let dead_letter_queue = find("AWS::SQS::Queue");
        Ok(Self {
            stack: stack.to_owned(),
            table,
            bus,
            parameter,
            document,
            dead_letter_queue,
            refs,
            attributes,
            parameters,
        })
    }

    /// Resolves `Ref`s, `GetAtt`s and pseudo parameters of the template to local values.
    pub fn resolve(&self, name: &str) -> Option<String> {
        match name {
            "AWS::StackName" => Some(self.stack.clone()),
            "AWS::Region" => Some(REGION.to_owned()),
            "AWS::AccountId" => Some(ACCOUNT.to_owned()),
            "AWS::Partition" => Some("aws".to_owned()),
            "AWS::URLSuffix" => Some("amazonaws.com".to_owned()),
            other => self
                .refs
                .get(other)
                .or_else(|| self.attributes.get(other))
                .or_else(|| self.parameters.get(other))
                .cloned(),
        }
    }
}

/// An image pushed (or only recorded in ECR), and the push event published for it.
#[derive(Debug, Clone)]
pub struct Pushed {
    pub tag: String,
    pub digest: String,
    /// `registry/repository@digest`, as hosts pull it.
    pub image: String,
    /// The id of the `ECR Image Action` event, when one was published.
    pub event_id: Option<String>,
}

pub struct Stack {
    pub options: StackOptions,
    pub template: Template,
    pub names: Names,
    pub sdk: SdkConfig,
    pub timeline: Timeline,
    pub registry: LocalRegistry,
    pub builder: Builder,
    pub host: Host,
    pub lambdas: Arc<Lambdas>,
    pub router: Router,
    pub moto: Moto,
    pub run: Arc<Run>,
    pushes: AtomicU32,
}

impl Stack {
    /// Starts everything. Nothing is built: the function binaries must exist.
    pub async fn start(options: StackOptions) -> anyhow::Result<Self> {
        let run = Arc::new(Run::create()?);
        match Self::start_in(run.clone(), options).await {
            Ok(stack) => Ok(stack),
            Err(e) => {
                run.keep();
                run.cleanup();
                Err(e.context(format!(
                    "the local stack did not start; logs in {}",
                    run.dir.display()
                )))
            }
        }
    }

    async fn start_in(run: Arc<Run>, options: StackOptions) -> anyhow::Result<Self> {
        let timeline = Timeline::new(&run.log("timeline"), options.print_timeline);
        let template = Template::load(&options.template).with_context(|| {
            format!(
                "reading the SAM template (set PUSHDEPLOY_TEMPLATE to use another than {})",
                options.template.display()
            )
        })?;
        let names = Names::of(&template, &options.stack_name)?;
        let resolve = |n: &str| names.resolve(n);
        let functions = local_functions(&template, &names, &options)?;
        check_binaries(&functions, &timeline)?;

        let (moto, registry) =
            tokio::join!(Moto::start_for_hosts(&run), LocalRegistry::start(&run));
        let (moto, registry) = (moto?, registry?);
        let sdk = moto.sdk_config().await;
        provision(&sdk, &template, &names).await?;
        let mut functions = functions;
        for f in &mut functions {
            f.env
                .extend(moto.env().into_iter().map(|(k, v)| (k.to_owned(), v)));
            f.env
                .insert("AWS_EC2_METADATA_DISABLED".into(), "true".into());
        }
        let registry_host = registry.host();
        let builder = Builder::new(&run, &registry_host)?;
        let (host, lambdas) = tokio::join!(
            Host::start(
                &run,
                &moto,
                &sdk,
                &registry_host,
                options.host_tags.clone(),
                timeline.clone()
            ),
            Lambdas::start(
                &run,
                functions,
                options.instances_per_function,
                timeline.clone()
            ),
        );
        let (host, lambdas) = (host?, Arc::new(lambdas?));

        let template_functions = template.functions(&resolve)?;
        let mut rules = Vec::new();
        let mut schedules = Vec::new();
        for f in &template_functions {
            for trigger in &f.triggers {
                match trigger {
                    Trigger::Rule { name, bus, pattern } => rules.push(RuleSpec {
                        function: f.package.clone(),
                        rule: format!("{}-{}{}", names.stack, f.logical_id, name),
                        bus: match bus {
                            Bus::Default => "default".to_owned(),
                            Bus::Resource(id) => names.resolve(id).ok_or_else(|| {
                                anyhow!("{}.{name}: unknown bus {id}", f.logical_id)
                            })?,
                        },
                        pattern: pattern.clone(),
                    }),
                    // The reconciliation may run faster locally; other schedules (the
                    // janitor's daily run) keep their rate, and a cron(...) one is left to
                    // invocations by hand.
                    Trigger::Schedule { name, expression } if name != "Reconcile" => {
                        if let Some(every) = rate(expression) {
                            schedules.push(Schedule {
                                function: f.package.clone(),
                                rule: format!("{}-{}{}", names.stack, f.logical_id, name),
                                expression: expression.clone(),
                                every,
                            });
                        }
                    }
                    Trigger::Schedule { name, expression } => {
                        let every = options.reconcile_every.or_else(|| rate(expression)).ok_or_else(|| {
                            anyhow!("{}.{name}: {expression:?} is not a rate(...) the local stack can run; set PUSHDEPLOY_LOCAL_RECONCILE_SECONDS", f.logical_id)
                        })?;
                        schedules.push(Schedule {
                            function: f.package.clone(),
                            rule: format!("{}-{}{}", names.stack, f.logical_id, name),
                            expression: expression.clone(),
                            every,
                        });
                    }
                }
            }
        }
        let router = Router::start(
            &sdk,
            RouterConfig {
                rules,
                schedules,
                app_bus: names.bus.clone(),
                dead_letter_queue: match &names.dead_letter_queue {
                    Some(_) => dead_letter_queue_url(&sdk, &names).await,
                    None => None,
                },
                retry_delays: options.retry_delays.clone(),
                prefix: format!("{}-local", names.stack),
            },
            lambdas.clone(),
            timeline.clone(),
        )
        .await?;
        Ok(Self {
            options,
            template,
            names,
            sdk,
            timeline,
            registry,
            builder,
            host,
            lambdas,
            router,
            moto,
            run,
            pushes: AtomicU32::new(0),
        })
    }

    /// Puts a configuration document into the SSM parameter the functions read.
    pub async fn put_config(&self, yaml: &str) -> anyhow::Result<()> {
        put_config(&self.sdk, &self.names.parameter, yaml).await
    }

    /// Builds an app version into an image on the builder.
    pub async fn build(
        &self,
        repository: &str,
        version: &AppVersion,
    ) -> anyhow::Result<BuiltImage> {
        self.build_for(repository, version, None).await
    }

    /// Builds an app version into an image for `platform` (`None`: this machine's).
    pub async fn build_for(
        &self,
        repository: &str,
        version: &AppVersion,
        platform: Option<&str>,
    ) -> anyhow::Result<BuiltImage> {
        let image = self
            .builder
            .build_for(repository, version, platform)
            .await?;
        let built_for = platform.map(|p| format!(" for {p}")).unwrap_or_default();
        self.timeline.note(
            Source::Harness,
            "built",
            None,
            json!({ "image": image.local, "platform": platform }),
            &format!(
                "{}{built_for} from busybox-static, nothing pulled",
                image.local
            ),
        );
        Ok(image)
    }

    /// Pushes an image to the registry, records it in ECR (moto) under the registry's
    /// digest, and publishes the `ECR Image Action` event ECR would.
    pub async fn push(
        &self,
        image: &BuiltImage,
        repository: &str,
        tag: &str,
    ) -> anyhow::Result<Pushed> {
        let uploaded = self.upload(image, repository, tag).await?;
        self.publish_push(repository, tag, &uploaded.digest, &image.label)
            .await
    }

    /// Pushes an image to the registry and records it in ECR (moto) under the registry's
    /// digest, without the push event (nothing deploys it automatically).
    pub async fn upload(
        &self,
        image: &BuiltImage,
        repository: &str,
        tag: &str,
    ) -> anyhow::Result<Pushed> {
        let ecr = aws_sdk_ecr::Client::new(&self.sdk);
        ensure_repository(&ecr, repository).await?;
        let digest = self.builder.push(image, repository, tag, &ecr).await?;
        record_in_ecr(&self.sdk, &self.registry, repository, tag, &digest).await?;
        Ok(Pushed {
            tag: tag.to_owned(),
            image: format!("{}/{repository}@{digest}", self.registry.host()),
            digest,
            event_id: None,
        })
    }

    /// Creates a CloudWatch alarm in moto (in `OK`, as a quiet alarm is).
    pub async fn create_alarm(&self, name: &str) -> anyhow::Result<()> {
        use aws_sdk_cloudwatch::types::{ComparisonOperator, Statistic};
        aws_sdk_cloudwatch::Client::new(&self.sdk)
            .put_metric_alarm()
            .alarm_name(name)
            .namespace("AWS/ApplicationELB")
            .metric_name("HTTPCode_Target_5XX_Count")
            .statistic(Statistic::Sum)
            .period(60)
            .evaluation_periods(1)
            .threshold(5.0)
            .comparison_operator(ComparisonOperator::GreaterThanThreshold)
            .send()
            .await
            .context("PutMetricAlarm")?;
        self.timeline.note(
            Source::Harness,
            "alarm created",
            None,
            json!({ "alarm": name }),
            &format!("alarm {name} created in CloudWatch (OK)"),
        );
        Ok(())
    }

    /// Plays CloudWatch: sets an alarm's state in moto and publishes the `CloudWatch Alarm
    /// State Change` event CloudWatch sends on the default bus.
    pub async fn set_alarm(&self, name: &str, value: &str, reason: &str) -> anyhow::Result<()> {
        let cloudwatch = aws_sdk_cloudwatch::Client::new(&self.sdk);
        let before = cloudwatch
            .describe_alarms()
            .alarm_names(name)
            .send()
            .await
            .context("DescribeAlarms")?
            .metric_alarms()
            .first()
            .and_then(|a| a.state_value().map(|v| v.as_str().to_owned()))
            .unwrap_or_else(|| "OK".into());
        cloudwatch
            .set_alarm_state()
            .alarm_name(name)
            .state_value(aws_sdk_cloudwatch::types::StateValue::from(value))
            .state_reason(reason)
            .send()
            .await
            .context("SetAlarmState")?;
        let at = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let detail = json!({
            "alarmName": name,
            "state": { "value": value, "reason": reason, "timestamp": at },
            "previousState": { "value": before, "reason": "", "timestamp": at },
        });
        let out = aws_sdk_eventbridge::Client::new(&self.sdk)
            .put_events()
            .entries(
                aws_sdk_eventbridge::types::PutEventsRequestEntry::builder()
                    .source("aws.cloudwatch")
                    .detail_type("CloudWatch Alarm State Change")
                    .resources(format!(
                        "arn:aws:cloudwatch:{REGION}:{ACCOUNT}:alarm:{name}"
                    ))
                    .detail(detail.to_string())
                    .build(),
            )
            .send()
            .await
            .context("PutEvents (alarm state change)")?;
        if out.failed_entry_count() > 0 {
            bail!("PutEvents refused the alarm event: {:?}", out.entries());
        }
        self.timeline.note(
            Source::Harness,
            "alarm",
            None,
            json!({ "alarm": name, "state": value }),
            &format!("alarm {name}: {before} → {value} ({reason})"),
        );
        Ok(())
    }

    /// Records an image in ECR (moto) whose bytes the registry does not have, and publishes
    /// its push event: hosts cannot pull it.
    pub async fn push_missing(&self, repository: &str, tag: &str) -> anyhow::Result<Pushed> {
        let ecr = aws_sdk_ecr::Client::new(&self.sdk);
        ensure_repository(&ecr, repository).await?;
        let digest = format!("sha256:{}", random_hex(64));
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "size": 2, "digest": format!("sha256:{}", random_hex(64)) },
            "layers": [ { "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "size": 2, "digest": format!("sha256:{}", random_hex(64)) } ]
        });
        ecr.put_image()
            .repository_name(repository)
            .image_manifest(manifest.to_string())
            .image_manifest_media_type("application/vnd.oci.image.manifest.v1+json")
            .image_digest(&digest)
            .image_tag(tag)
            .send()
            .await
            .context("PutImage")?;
        self.publish_push(repository, tag, &digest, "(not in the registry)")
            .await
    }

    async fn publish_push(
        &self,
        repository: &str,
        tag: &str,
        digest: &str,
        label: &str,
    ) -> anyhow::Result<Pushed> {
        let n = self.pushes.fetch_add(1, Ordering::SeqCst) + 1;
        let event_id = publish_push_event(&self.sdk, repository, tag, digest)
            .await?
            .unwrap_or_else(|| format!("push-{n}"));
        let image = format!("{}/{repository}@{digest}", self.registry.host());
        self.timeline.note(
            Source::Harness,
            "pushed",
            None,
            json!({ "repository": repository, "tag": tag, "digest": digest, "image": image }),
            &format!(
                "{repository}:{tag} {} {label}; ECR push event published",
                short_digest(digest)
            ),
        );
        Ok(Pushed {
            tag: tag.to_owned(),
            digest: digest.to_owned(),
            image,
            event_id: Some(event_id),
        })
    }

    /// Invokes a function synchronously (as `cargo lambda invoke` or the console does).
    pub async fn invoke(&self, function: &str, payload: &Json) -> anyhow::Result<Json> {
        Ok(self.lambdas.invoke(function, payload).await?)
    }

    /// What the control function says about one environment.
    pub async fn status(&self, app: &str, environment: &str) -> anyhow::Result<Json> {
        let out = self
            .invoke(
                "control",
                &json!({ "action": "status", "app": app, "environment": environment }),
            )
            .await?;
        out["environments"]
            .get(0)
            .cloned()
            .ok_or_else(|| anyhow!("control returned no status: {out}"))
    }

    /// Keeps the run directory (logs) after the stack stops.
    pub fn keep_logs(&self) {
        self.run.keep();
    }

    /// Stops everything, in order: routing and the host agent, then containers and
    /// processes. Dropping the stack does the same.
    pub fn shutdown(&mut self) {
        self.router.stop();
        self.host.stop();
        self.run.cleanup();
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The functions of the template as local processes: binary, timeout, retries and the
/// environment the template gives them (resolved locally), plus the settings the stack
/// decides (configuration re-read on every invocation, so tests can change it).
fn local_functions(
    template: &Template,
    names: &Names,
    options: &StackOptions,
) -> anyhow::Result<Vec<LocalFunction>> {
    let resolve = |n: &str| names.resolve(n);
    let mut out = Vec::new();
    for f in template.functions(&resolve)? {
        let (mut env, _unresolved) = template.function_environment(&f.logical_id, &resolve);
        env.insert("PUSHDEPLOY_TABLE".into(), names.table.clone());
        env.insert("PUSHDEPLOY_EVENT_BUS".into(), names.bus.clone());
        env.insert(
            "PUSHDEPLOY_CONFIG_PARAMETER".into(),
            names.parameter.clone(),
        );
        env.remove("PUSHDEPLOY_CONFIG_FILE");
        env.insert("PUSHDEPLOY_CONFIG_TTL_SECONDS".into(), "0".into());
        env.insert("PUSHDEPLOY_SSM_DOCUMENT".into(), names.document.clone());
        if let Some(format) = template
            .function_property(&f.logical_id, "LoggingConfig")
            .and_then(|l| l.get("LogFormat"))
            .and_then(Yaml::as_str)
        {
            env.insert("AWS_LAMBDA_LOG_FORMAT".into(), format.to_owned());
        }
        if let Some(memory) = template
            .function_property(&f.logical_id, "MemorySize")
            .and_then(Yaml::as_u64)
        {
            env.insert("AWS_LAMBDA_FUNCTION_MEMORY_SIZE".into(), memory.to_string());
        }
        let retries = template
            .function_property(&f.logical_id, "EventInvokeConfig")
            .and_then(|c| c.get("MaximumRetryAttempts"))
            .and_then(Yaml::as_u64)
            .unwrap_or(2) as u32;
        out.push(LocalFunction {
            binary: options.bin_dir.join(&f.package),
            logical_id: f.logical_id,
            name: f.package,
            timeout: Duration::from_secs(f.timeout.unwrap_or(3)),
            retries,
            env,
        });
    }
    if out.is_empty() {
        bail!("the template defines no AWS::Serverless::Function");
    }
    Ok(out)
}

/// Creates in moto what the template defines for the functions: the table (keys and TTL
/// from the template), the bus, the configuration parameter, the SSM document (content from
/// the template) and the dead-letter queue.
async fn provision(sdk: &SdkConfig, template: &Template, names: &Names) -> anyhow::Result<()> {
    let table_id = template
        .resources()
        .find(|(_, ty, _)| *ty == "AWS::DynamoDB::Table")
        .map(|(id, _, _)| id.to_owned())
        .ok_or_else(|| anyhow!("the template defines no table"))?;
    create_table(sdk, template, &table_id, &names.table).await?;
    create_bus(sdk, &names.bus).await?;
    put_config(sdk, &names.parameter, "apps: {}\n").await?;
    create_document(sdk, template, &names.document).await?;
    if let Some(url) = &names.dead_letter_queue {
        let name = url.rsplit('/').next().unwrap_or(url);
        aws_sdk_sqs::Client::new(sdk)
            .create_queue()
            .queue_name(name)
            .send()
            .await
            .context("CreateQueue (dead-letter queue)")?;
    }
    Ok(())
}

async fn dead_letter_queue_url(sdk: &SdkConfig, names: &Names) -> Option<String> {
    let name = names.dead_letter_queue.as_deref()?.rsplit('/').next()?;
    aws_sdk_sqs::Client::new(sdk)
        .get_queue_url()
        .queue_name(name)
        .send()
        .await
        .ok()?
        .queue_url()
        .map(str::to_owned)
}

/// Hex digits that differ between calls (digests of images that do not exist).
fn random_hex(len: usize) -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut out = String::new();
    while out.len() < len {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_usize(out.len());
        out.push_str(&format!("{:016x}", h.finish()));
    }
    out.truncate(len);
    out
}

/// Creates in moto the DynamoDB table `id` of the template under `name`: its keys, and its
/// TTL attribute when it has one.
pub async fn create_table(
    sdk: &SdkConfig,
    template: &Template,
    id: &str,
    name: &str,
) -> anyhow::Result<()> {
    use aws_sdk_dynamodb::types::{
        AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
        TimeToLiveSpecification,
    };
    let table = template.table(id)?;
    let dynamodb = aws_sdk_dynamodb::Client::new(sdk);
    let mut create = dynamodb
        .create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest);
    for (name, kind) in [
        (Some(table.hash_key.clone()), KeyType::Hash),
        (table.range_key.clone(), KeyType::Range),
    ] {
        let Some(name) = name else { continue };
        create = create
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name(&name)
                    .key_type(kind)
                    .build()?,
            )
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name(&name)
                    .attribute_type(ScalarAttributeType::S)
                    .build()?,
            );
    }
    create.send().await.context("CreateTable")?;
    if let Some(ttl) = &table.ttl_attribute {
        dynamodb
            .update_time_to_live()
            .table_name(name)
            .time_to_live_specification(
                TimeToLiveSpecification::builder()
                    .attribute_name(ttl)
                    .enabled(true)
                    .build()?,
            )
            .send()
            .await
            .context("UpdateTimeToLive")?;
    }
    Ok(())
}

/// Puts a configuration document into the SSM parameter `name`.
pub async fn put_config(sdk: &SdkConfig, name: &str, yaml: &str) -> anyhow::Result<()> {
    aws_sdk_ssm::Client::new(sdk)
        .put_parameter()
        .name(name)
        .value(yaml)
        .r#type(aws_sdk_ssm::types::ParameterType::String)
        .overwrite(true)
        .send()
        .await
        .with_context(|| format!("PutParameter {name} (configuration)"))?;
    Ok(())
}

/// Creates the event bus `name` in moto.
pub async fn create_bus(sdk: &SdkConfig, name: &str) -> anyhow::Result<()> {
    aws_sdk_eventbridge::Client::new(sdk)
        .create_event_bus()
        .name(name)
        .send()
        .await
        .with_context(|| format!("CreateEventBus {name}"))?;
    Ok(())
}

/// Creates in moto the template's SSM Command document under `name`, with its content.
pub async fn create_document(
    sdk: &SdkConfig,
    template: &Template,
    name: &str,
) -> anyhow::Result<()> {
    let document = template.document()?;
    aws_sdk_ssm::Client::new(sdk)
        .create_document()
        .name(name)
        .document_type(aws_sdk_ssm::types::DocumentType::Command)
        .document_format(aws_sdk_ssm::types::DocumentFormat::Json)
        .content(document.content.to_string())
        .send()
        .await
        .with_context(|| format!("CreateDocument {name}"))?;
    Ok(())
}
