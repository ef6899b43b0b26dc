//! Every AWS request a function's SDK clients send during the tests, recorded per function
//! by an SDK interceptor, with what IAM must allow for it: each action the Service
//! Authorization Reference names for the operation (an item of `TransactWriteItems` by its
//! own kind), on the resource it names, with the condition keys the request carries. The
//! records go to `target/aws-requests/`, one file per test process, and `tests/iam.rs`
//! checks them against what `template.yaml` grants each function.
//!
//! The mapping from operations to actions is AWS's rule, written down here from the Service
//! Authorization Reference: an operation it does not know is recorded as unmapped, and the
//! check fails until it is added, so a new call cannot slip past the policy check.

// Test support: an unreadable request fails the test that sent it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::{
    BeforeTransmitInterceptorContextRef, FinalizerInterceptorContextRef,
};
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// One IAM action a request needs, on one resource, with the condition keys it carries.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Need {
    pub action: String,
    pub resource: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub context: BTreeMap<String, String>,
}

/// One request, as recorded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Call {
    pub function: String,
    /// `Service.Operation`, as the SDK names them (`DynamoDB.TransactWriteItems`).
    pub operation: String,
    pub needs: Vec<Need>,
}

/// Where the records of this test process go.
#[derive(Clone)]
pub struct Log {
    file: Arc<Mutex<std::fs::File>>,
    /// CodeDeploy deployments created, by id: the deployment group later calls are on.
    deployments: Arc<Mutex<HashMap<String, (String, String)>>>,
}

/// The directory every test process records into (`make test` empties it first).
pub fn directory() -> PathBuf {
    pushdeploy_local::moto::workspace_root().join("target/aws-requests")
}

impl Log {
    /// A new file of records for this process.
    pub fn open() -> Self {
        let dir = directory();
        std::fs::create_dir_all(&dir).unwrap();
        let name = format!(
            "{}-{}.jsonl",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        );
        let file = std::fs::File::create(dir.join(name)).unwrap();
        Self {
            file: Arc::new(Mutex::new(file)),
            deployments: Arc::default(),
        }
    }

    fn write(&self, call: &Call) {
        let mut line = serde_json::to_string(call).unwrap();
        line.push('\n');
        self.file
            .lock()
            .unwrap()
            .write_all(line.as_bytes())
            .unwrap();
    }

    /// Every call recorded in `directory()`, by every test process.
    pub fn read_all() -> Vec<Call> {
        let Ok(entries) = std::fs::read_dir(directory()) else {
            return Vec::new();
        };
        let mut calls = Vec::new();
        for entry in entries.flatten() {
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            calls.extend(
                text.lines()
                    .filter(|l| !l.trim().is_empty())
                    .map(|l| serde_json::from_str::<Call>(l).unwrap()),
            );
        }
        calls
    }
}

/// The interceptor on every client of one function.
#[derive(Clone)]
pub struct CallRecorder {
    pub function: &'static str,
    pub region: String,
    pub account: String,
    pub log: Log,
}

impl std::fmt::Debug for CallRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CallRecorder({})", self.function)
    }
}

/// A CreateDeployment's group, kept between its request and its answer.
#[derive(Debug, Clone)]
struct Creating(String, String);

impl aws_smithy_types::config_bag::Storable for Creating {
    type Storer = aws_smithy_types::config_bag::StoreReplace<Self>;
}

impl Intercept for CallRecorder {
    fn name(&self) -> &'static str {
        "CallRecorder"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let metadata = cfg
            .load::<Metadata>()
            .expect("the SDK names every operation");
        let (service, operation) = (metadata.service().to_owned(), metadata.name().to_owned());
        let request = context.request();
        let body = request.body().bytes().unwrap_or_default();
        let input = if service == "CloudWatch" {
            cbor_to_json(body)
        } else {
            serde_json::from_slice(body).unwrap_or(Value::Null)
        };
        let uri = request.uri().to_owned();
        if (service.as_str(), operation.as_str()) == ("CodeDeploy", "CreateDeployment") {
            cfg.interceptor_state().store_put(Creating(
                text(&input["applicationName"]),
                text(&input["deploymentGroupName"]),
            ));
        }
        let needs = self.needs(&service, &operation, &input, &uri);
        self.log.write(&Call {
            function: self.function.to_owned(),
            operation: format!("{service}.{operation}"),
            needs,
        });
        Ok(())
    }

    fn read_after_execution(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        // The deployment a CreateDeployment made: later calls about it are on its group.
        if let Some(Creating(app, group)) = cfg.load::<Creating>().cloned()
            && let Some(Ok(output)) = context.output_or_error()
            && let Some(out) = output.downcast_ref::<
                aws_sdk_codedeploy::operation::create_deployment::CreateDeploymentOutput,
            >()
            && let Some(id) = out.deployment_id()
        {
            self.log
                .deployments
                .lock()
                .unwrap()
                .insert(id.to_owned(), (app, group));
        }
        Ok(())
    }
}

fn text(value: &Value) -> String {
    value.as_str().unwrap_or_default().to_owned()
}

/// A CBOR body as JSON (CloudWatch's protocol).
fn cbor_to_json(body: &[u8]) -> Value {
    fn convert(v: ciborium::Value) -> Value {
        match v {
            ciborium::Value::Text(s) => Value::String(s),
            ciborium::Value::Array(items) => Value::Array(items.into_iter().map(convert).collect()),
            ciborium::Value::Map(entries) => Value::Object(
                entries
                    .into_iter()
                    .filter_map(|(k, v)| Some((k.into_text().ok()?, convert(v))))
                    .collect(),
            ),
            ciborium::Value::Integer(i) => json!(i128::from(i) as i64),
            ciborium::Value::Bool(b) => Value::Bool(b),
            ciborium::Value::Tag(_, inner) => convert(*inner),
            _ => Value::Null,
        }
    }
    ciborium::from_reader::<ciborium::Value, _>(body)
        .map(convert)
        .unwrap_or(Value::Null)
}

impl CallRecorder {
    fn arn(&self, service: &str, resource: &str) -> String {
        format!(
            "arn:aws:{service}:{}:{}:{resource}",
            self.region, self.account
        )
    }

    fn need(&self, action: &str, resource: String) -> Need {
        Need {
            action: action.to_owned(),
            resource,
            context: BTreeMap::from([("aws:RequestedRegion".to_owned(), self.region.clone())]),
        }
    }

    /// What IAM must allow for this request (the Service Authorization Reference's actions,
    /// resource types and condition keys for each operation).
    fn needs(&self, service: &str, operation: &str, input: &Value, uri: &str) -> Vec<Need> {
        let action = |prefix: &str| format!("{prefix}:{operation}");
        match service {
            "DynamoDB" => {
                let table = |name: &Value| self.arn("dynamodb", &format!("table/{}", text(name)));
                match operation {
                    // Each item is authorized as the write it is.
                    "TransactWriteItems" => input["TransactItems"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .flat_map(|item| {
                            [
                                ("Put", "dynamodb:PutItem"),
                                ("Update", "dynamodb:UpdateItem"),
                                ("Delete", "dynamodb:DeleteItem"),
                                ("ConditionCheck", "dynamodb:ConditionCheckItem"),
                            ]
                            .into_iter()
                            .filter(|(kind, _)| item.get(*kind).is_some())
                            .map(|(kind, act)| self.need(act, table(&item[kind]["TableName"])))
                            .collect::<Vec<_>>()
                        })
                        .collect(),
                    "BatchGetItem" | "BatchWriteItem" => input["RequestItems"]
                        .as_object()
                        .into_iter()
                        .flatten()
                        .map(|(name, _)| self.need(&action("dynamodb"), table(&json!(name))))
                        .collect(),
                    _ => vec![self.need(&action("dynamodb"), table(&input["TableName"]))],
                }
            }
            "SSM" => match operation {
                "GetParameter" | "GetParameters" | "PutParameter" => {
                    let name = text(&input["Name"]);
                    let path = if name.starts_with('/') {
                        name
                    } else {
                        format!("/{name}")
                    };
                    vec![self.need(&action("ssm"), self.arn("ssm", &format!("parameter{path}")))]
                }
                // On the document, and on every instance it is sent to; Run Command checks
                // the instance's tags as `ssm:resourceTag/<key>`, and the tests' hosts carry
                // the tag the README tells users to put on theirs.
                "SendCommand" => {
                    let document = text(&input["DocumentName"]);
                    let mut needs = vec![self.need(
                        "ssm:SendCommand",
                        self.arn("ssm", &format!("document/{document}")),
                    )];
                    let instances: Vec<String> = match input["InstanceIds"].as_array() {
                        Some(ids) => ids.iter().map(text).collect(),
                        None => vec!["*".to_owned()],
                    };
                    for id in instances {
                        let mut need = self.need(
                            "ssm:SendCommand",
                            self.arn("ec2", &format!("instance/{id}")),
                        );
                        need.context.insert(
                            format!("ssm:resourceTag/{}", crate::HOST_TAG.0),
                            crate::HOST_TAG.1.to_owned(),
                        );
                        needs.push(need);
                    }
                    needs
                }
                _ => vec![self.need(&action("ssm"), "*".to_owned())],
            },
            "ECR" => {
                let registry = input["registryId"]
                    .as_str()
                    .unwrap_or(&self.account)
                    .to_owned();
                let repository = text(&input["repositoryName"]);
                let arn = format!(
                    "arn:aws:ecr:{}:{registry}:repository/{repository}",
                    self.region
                );
                match operation {
                    "GetAuthorizationToken" => vec![self.need(&action("ecr"), "*".to_owned())],
                    _ => vec![self.need(&action("ecr"), arn)],
                }
            }
            "EventBridge" => input["Entries"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| {
                    let bus = e["EventBusName"].as_str().unwrap_or("default");
                    let arn = if bus.starts_with("arn:") {
                        bus.to_owned()
                    } else {
                        self.arn("events", &format!("event-bus/{bus}"))
                    };
                    self.need("events:PutEvents", arn)
                })
                .collect(),
            "ECS" => {
                let cluster = input["cluster"].as_str().unwrap_or("default").to_owned();
                let cluster = cluster.rsplit('/').next().unwrap_or_default().to_owned();
                let service = |name: &str| {
                    self.arn(
                        "ecs",
                        &format!(
                            "service/{cluster}/{}",
                            name.rsplit('/').next().unwrap_or_default()
                        ),
                    )
                };
                match operation {
                    "DescribeServices" => input["services"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|s| self.need(&action("ecs"), service(&text(s))))
                        .collect(),
                    "UpdateService" => {
                        vec![self.need(&action("ecs"), service(&text(&input["service"])))]
                    }
                    // A revision that carries tags is also ecs:TagResource, as part of its
                    // creation; and it passes the roles it names to ECS tasks.
                    "RegisterTaskDefinition" => {
                        let mut needs = vec![self.need(&action("ecs"), "*".to_owned())];
                        if input["tags"].as_array().is_some_and(|t| !t.is_empty()) {
                            let mut tag = self.need(
                                "ecs:TagResource",
                                self.arn(
                                    "ecs",
                                    &format!("task-definition/{}:*", text(&input["family"])),
                                ),
                            );
                            tag.context
                                .insert("ecs:CreateAction".into(), "RegisterTaskDefinition".into());
                            needs.push(tag);
                        }
                        for role in ["taskRoleArn", "executionRoleArn"] {
                            if let Some(arn) = input[role].as_str() {
                                let mut pass = self.need("iam:PassRole", arn.to_owned());
                                pass.context.insert(
                                    "iam:PassedToService".into(),
                                    "ecs-tasks.amazonaws.com".into(),
                                );
                                needs.push(pass);
                            }
                        }
                        needs
                    }
                    "TagResource" => vec![self.need(&action("ecs"), text(&input["resourceArn"]))],
                    _ => vec![self.need(&action("ecs"), "*".to_owned())],
                }
            }
            "CodeDeploy" => {
                let group = |app: &str, group: &str| {
                    self.arn("codedeploy", &format!("deploymentgroup:{app}/{group}"))
                };
                match operation {
                    // CreateDeployment also reads the group's deployment configuration and
                    // registers (and reads back) the revision with the application.
                    "CreateDeployment" => {
                        let app = text(&input["applicationName"]);
                        let config = input["deploymentConfigName"]
                            .as_str()
                            .unwrap_or("CodeDeployDefault.OneAtATime")
                            .to_owned();
                        vec![
                            self.need(
                                &action("codedeploy"),
                                group(&app, &text(&input["deploymentGroupName"])),
                            ),
                            self.need(
                                "codedeploy:GetDeploymentConfig",
                                self.arn("codedeploy", &format!("deploymentconfig:{config}")),
                            ),
                            self.need(
                                "codedeploy:RegisterApplicationRevision",
                                self.arn("codedeploy", &format!("application:{app}")),
                            ),
                            self.need(
                                "codedeploy:GetApplicationRevision",
                                self.arn("codedeploy", &format!("application:{app}")),
                            ),
                        ]
                    }
                    "ListDeployments" => vec![self.need(
                        &action("codedeploy"),
                        group(
                            &text(&input["applicationName"]),
                            &text(&input["deploymentGroupName"]),
                        ),
                    )],
                    "GetDeployment" | "StopDeployment" => {
                        let id = text(&input["deploymentId"]);
                        let resource = match self.log.deployments.lock().unwrap().get(&id) {
                            Some((app, g)) => group(app, g),
                            None => format!(
                                "the deployment group of deployment {id} (not created by this function's clients)"
                            ),
                        };
                        vec![self.need(&action("codedeploy"), resource)]
                    }
                    _ => vec![self.need(&action("codedeploy"), "*".to_owned())],
                }
            }
            "S3" => {
                // Path-style (`/bucket/key`) against the emulator, or virtual-hosted.
                let url = uri.split("://").nth(1).unwrap_or(uri);
                let (host, path) = url.split_once('/').unwrap_or((url, ""));
                let path = path.split('?').next().unwrap_or_default();
                let bucket_host = host.split('.').next().unwrap_or_default();
                let object = if host.starts_with("127.") || host.starts_with("localhost") {
                    path.to_owned()
                } else {
                    format!("{bucket_host}/{path}")
                };
                vec![self.need(&action("s3"), format!("arn:aws:s3:::{object}"))]
            }
            "Secrets Manager" => {
                let id = text(&input["SecretId"]);
                let arn = if id.starts_with("arn:") {
                    id
                } else {
                    // Secrets Manager adds six random characters to a secret's name.
                    self.arn("secretsmanager", &format!("secret:{id}-XXXXXX"))
                };
                vec![self.need("secretsmanager:GetSecretValue", arn)]
            }
            "CloudWatch" => match operation {
                "DescribeAlarms" => input["AlarmNames"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|name| {
                        self.need(
                            "cloudwatch:DescribeAlarms",
                            self.arn("cloudwatch", &format!("alarm:{}", text(name))),
                        )
                    })
                    .collect(),
                _ => vec![self.need(&action("cloudwatch"), "*".to_owned())],
            },
            other => vec![Need {
                action: format!("UNMAPPED {other}.{operation}"),
                resource: "*".to_owned(),
                context: BTreeMap::new(),
            }],
        }
    }
}
