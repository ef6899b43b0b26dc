//! The configuration model: one YAML document of apps → environments → trigger, target and
//! smoke checks. Parsed in two steps: serde reads the shape (`raw`; unknown fields are
//! errors, with the path of the field), then `validate` (and `targets`, for each kind of
//! target) checks every value and reports each problem with the path of the bad field,
//! all at once.

mod raw;
mod targets;
mod validate;

pub use targets::container_name_ok;

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::environment::KEEP_VERIFIED;
use super::image::{Registry, Repository, Tag};
use super::names::{AppName, EnvName};
use super::policy::{TagPattern, VersionRange};
use super::retention::RetentionRule;

/// Every problem found in a configuration document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

/// One bad field: where it is and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration:")?;
        for p in &self.problems {
            if p.path.is_empty() {
                write!(f, "\n  - {}", p.message)?;
            } else {
                write!(f, "\n  - {}: {}", p.path, p.message)?;
            }
        }
        Ok(())
    }
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    pub apps: BTreeMap<AppName, AppConfig>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AppConfig {
    /// The ECR repository whose pushes deploy this app.
    pub repository: Repository,
    /// Where hosts pull from, when not the ECR registry the push came from.
    pub registry: Option<Registry>,
    pub environments: BTreeMap<EnvName, EnvConfig>,
    /// Old images the janitor deletes from the repository; `None`: it leaves them alone.
    pub retention: Option<Retention>,
    /// Where people hear about this app's deployments.
    pub notify: Vec<Channel>,
}

/// A chat or webhook that hears about deployments.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Channel {
    pub kind: ChannelKind,
    /// Where the webhook URL is kept: it is a secret, never written in the configuration.
    pub url: SecretRef,
    /// The changes it hears about; every one when the configuration lists none.
    pub on: Vec<Notice>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelKind {
    Slack,
    Discord,
    Webhook,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SecretRef {
    /// An SSM parameter, normally a SecureString.
    SsmParameter(String),
    /// A Secrets Manager secret: name or ARN.
    Secret(String),
}

/// The state changes worth a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Notice {
    Started,
    Verified,
    Failed,
    RolledBack,
    RollbackFailed,
    ApprovalNeeded,
    Revoked,
    /// The vulnerability gate refused an image.
    Blocked,
}

impl Notice {
    pub const ALL: [Notice; 8] = [
        Notice::Started,
        Notice::Verified,
        Notice::Failed,
        Notice::RolledBack,
        Notice::RollbackFailed,
        Notice::ApprovalNeeded,
        Notice::Revoked,
        Notice::Blocked,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Notice::Started => "started",
            Notice::Verified => "verified",
            Notice::Failed => "failed",
            Notice::RolledBack => "rolled_back",
            Notice::RollbackFailed => "rollback_failed",
            Notice::ApprovalNeeded => "approval_needed",
            Notice::Revoked => "revoked",
            Notice::Blocked => "blocked",
        }
    }
}

/// The janitor's rule for an app's repository.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Retention {
    pub rule: RetentionRule,
    /// The last this-many verified digests of every environment are never deleted.
    pub keep_verified: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EnvConfig {
    /// Deploy automatically when a matching tag is pushed; `None`: only by hand.
    pub deploy_on_push: Option<PushPolicy>,
    pub target: TargetConfig,
    pub smoke: SmokeConfig,
    /// A rollout still running after this long is failed by the tracker.
    pub rollout_timeout: Duration,
    /// The ECR tag moved to each digest verified here; `None`: no tag is moved.
    pub ecr_tag: Option<Tag>,
    /// Only digests verified in this environment come here, and how.
    pub promotion: Option<Promotion>,
    /// An automatic deploy of a version lower than the one this environment runs (or has
    /// queued) is skipped; a deploy by hand still may go back.
    pub only_newer: bool,
    /// After the smoke tests pass, CloudWatch alarms watched before the digest counts as
    /// verified (bake time).
    pub watch: Option<Watch>,
    /// The vulnerability gate: automatic deploys wait for the image's scan result and
    /// are refused above its thresholds.
    pub scan: Option<crate::domain::scan::ScanPolicy>,
    /// What the target's hosts run (`linux/arm64`, …): images built for another platform
    /// are refused. An ECS task definition's `runtimePlatform` wins; `None`: `linux/amd64`.
    pub platform: Option<crate::domain::platform::Platform>,
}

/// Alarms that must stay out of `ALARM` for a while after the smoke tests pass.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Watch {
    /// CloudWatch alarm names, as `DescribeAlarms` takes them.
    pub alarms: Vec<String>,
    #[serde(rename = "for_seconds", serialize_with = "as_seconds")]
    pub for_: Duration,
}

fn as_seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_secs())
}

impl Watch {
    pub fn watches(&self, alarm: &str) -> bool {
        self.alarms.iter().any(|a| a == alarm)
    }
}

/// Where an environment's images come from, and who lets them in.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Promotion {
    pub from: EnvName,
    pub approval: Approval,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Approval {
    /// A digest verified in the source environment is deployed here at once.
    Auto,
    /// A person approves each digest; an approval not given in time expires.
    Required { expires_after: Duration },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PushPolicy {
    pub tags: Vec<TagPattern>,
    /// Tags naming a version in this range deploy too.
    pub semver: Option<VersionRange>,
    /// Also deploy pushes that carry no tag (by default they are the per-platform
    /// manifests of a multi-platform push, and are ignored).
    pub untagged: bool,
}

impl PushPolicy {
    pub fn admits(&self, tag: Option<&Tag>) -> bool {
        match tag {
            Some(tag) => {
                self.tags.iter().any(|p| p.matches(tag))
                    || self.semver.as_ref().is_some_and(|r| r.matches(tag))
            }
            None => self.untagged,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetConfig {
    Ssm(SsmTarget),
    Ecs(EcsTarget),
    #[serde(rename = "codedeploy")]
    CodeDeploy(CodeDeployTarget),
}

impl TargetConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            TargetConfig::Ssm(_) => "ssm",
            TargetConfig::Ecs(_) => "ecs",
            TargetConfig::CodeDeploy(_) => "codedeploy",
        }
    }
}

/// A CodeDeploy deployment group: EC2/on-premises instances running the container through
/// appspec hooks, or an ECS service deployed blue/green.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CodeDeployTarget {
    pub application: String,
    pub deployment_group: String,
    pub platform: CodeDeployPlatform,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CodeDeployPlatform {
    /// A revision bundle whose hooks replace `container` on each instance.
    Ec2(CodeDeployHosts),
    /// AppSpec content naming a new task definition revision of `service.container`.
    Ecs {
        service: EcsTarget,
        container_port: u16,
    },
}

/// The container the bundle's hooks replace on each instance.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CodeDeployHosts {
    pub container: String,
    pub ports: Vec<PortMapping>,
    pub health: HostHealth,
    /// How long the ApplicationStart hook (pull, replace, probe) may run.
    pub timeout: Duration,
}

/// An Amazon ECS service: each rollout registers a task definition revision that changes
/// only `container`'s image, and points the service at it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EcsTarget {
    pub cluster: String,
    pub service: String,
    pub container: String,
    /// How many of the newest revisions of the task definition family stay registered;
    /// older ones are deregistered, except the one the service runs and the one it ran
    /// before the rollout.
    pub keep_revisions: u32,
}

/// Revisions of a family kept registered by default.
pub const DEFAULT_KEEP_REVISIONS: u64 = 10;

/// EC2 (or on-premises) hosts running Docker, reached by SSM Run Command.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SsmTarget {
    pub instances: InstanceSelector,
    pub container: String,
    pub ports: Vec<PortMapping>,
    pub health: HostHealth,
    pub max_concurrency: String,
    pub max_errors: String,
    pub execution_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceSelector {
    Ids(Vec<String>),
    Tags(BTreeMap<String, String>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PortMapping {
    pub host: u16,
    pub container: u16,
}

impl fmt::Display for PortMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.container)
    }
}

/// The probe the host script runs against the new container before it keeps it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostHealth {
    pub port: u16,
    pub path: String,
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct SmokeConfig {
    pub checks: Vec<SmokeCheck>,
    /// All checks must pass within this long after the rollout succeeded.
    pub within: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SmokeCheck {
    pub url: String,
    pub expect_status: u16,
    pub body_contains: Option<String>,
    pub timeout: Duration,
}

impl Config {
    /// Parses and validates a YAML document.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        let deserializer = serde_norway::Deserializer::from_str(text);
        let raw: raw::Config = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let path = e.path().to_string();
            let message = e.into_inner().to_string();
            // The YAML error may repeat the path; say it once.
            let message = message
                .strip_prefix(&format!("{path}: "))
                .map(str::to_owned)
                .unwrap_or(message);
            ConfigError {
                problems: vec![Problem {
                    path: if path == "." {
                        String::new()
                    } else {
                        crate::domain::text::cut(&path)
                    },
                    message: crate::domain::text::cut(&message),
                }],
            }
        })?;
        raw.validate()
    }

    pub fn app(&self, name: &AppName) -> Option<&AppConfig> {
        self.apps.get(name)
    }

    pub fn env(&self, app: &AppName, env: &EnvName) -> Option<&EnvConfig> {
        self.apps.get(app)?.environments.get(env)
    }

    /// Apps whose pushes come from this repository.
    pub fn apps_for_repository<'a>(
        &'a self,
        repository: &'a Repository,
    ) -> impl Iterator<Item = (&'a AppName, &'a AppConfig)> + 'a {
        self.apps
            .iter()
            .filter(move |(_, app)| &app.repository == repository)
    }

    /// Every (app, environment) pair, in a stable order.
    pub fn environments(&self) -> impl Iterator<Item = (&AppName, &EnvName, &EnvConfig)> {
        self.apps
            .iter()
            .flat_map(|(a, app)| app.environments.iter().map(move |(e, env)| (a, e, env)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
apps:
  web:
    repository: acme/web
    environments:
      staging:
        deploy_on_push: { tags: ["main-*", "v*"] }
        target: { ssm: { instances: { tag: { Role: web-staging } }, container: web, ports: ["80:8000"] } }
        smoke:
          checks: [ { url: "http://10.0.1.10/health", expect_status: 200, body_contains: "ok" } ]
          within_seconds: 120
      qa:
        target: { ssm: { instances: { ids: [i-0123456789abcdef0] }, container: web, health: { port: 8080, path: /healthz } } }
"#;

    fn problems(yaml: &str) -> Vec<(String, String)> {
        Config::from_yaml(yaml)
            .unwrap_err()
            .problems
            .into_iter()
            .map(|p| (p.path, p.message))
            .collect()
    }

    #[test]
    fn reads_the_documented_example_with_defaults() {
        let config = Config::from_yaml(GOOD).unwrap();
        let web = AppName::parse("web").unwrap();
        let staging = config
            .env(&web, &EnvName::parse("staging").unwrap())
            .unwrap();
        let TargetConfig::Ssm(ssm) = &staging.target else {
            panic!("staging is an SSM target")
        };
        assert_eq!(
            ssm.health.port, 80,
            "health probes the first published host port by default"
        );
        assert_eq!(ssm.health.path, "/");
        assert_eq!(ssm.max_errors, "0");
        assert_eq!(staging.smoke.checks[0].timeout, Duration::from_secs(5));
        assert!(
            staging
                .deploy_on_push
                .as_ref()
                .unwrap()
                .admits(Some(&Tag::parse("v1.0").unwrap()))
        );
        assert!(!staging.deploy_on_push.as_ref().unwrap().admits(None));
        let qa = config.env(&web, &EnvName::parse("qa").unwrap()).unwrap();
        assert!(qa.deploy_on_push.is_none());
        assert_eq!(staging.rollout_timeout, Duration::from_secs(900));
    }

    #[test]
    fn unknown_fields_are_named_with_their_path() {
        let yaml = GOOD.replace("deploy_on_push: { tags:", "deploy_on_push: { tagz:");
        let found = problems(&yaml);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(
            found[0].0,
            "apps.web.environments.staging.deploy_on_push.tagz"
        );
        assert!(found[0].1.contains("unknown field `tagz`"), "{found:?}");
    }

    #[test]
    fn a_bad_semver_range_or_only_newer_is_named_with_its_path() {
        let yaml = GOOD.replace(
            "deploy_on_push: { tags:",
            "only_newer: true\n        deploy_on_push: { semver: \">=1.4 <2\", tags:",
        );
        let found = problems(&yaml);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(
            found[0].0,
            "apps.web.environments.staging.deploy_on_push.semver"
        );
        assert!(found[0].1.contains("\">=1.4, <2\""), "{found:?}");
        let yaml = GOOD.replace(
            "deploy_on_push: { tags:",
            "only_newer: yes please\n        deploy_on_push: { tags:",
        );
        assert_eq!(
            problems(&yaml)[0].0,
            "apps.web.environments.staging.only_newer"
        );
        let yaml = GOOD.replace(
            "deploy_on_push: { tags:",
            "only_newer: true\n        deploy_on_push: { semver: \"^1.4\", tags:",
        );
        let config = Config::from_yaml(&yaml).unwrap();
        let staging = config
            .env(
                &AppName::parse("web").unwrap(),
                &EnvName::parse("staging").unwrap(),
            )
            .unwrap();
        assert!(staging.only_newer);
        let policy = staging.deploy_on_push.as_ref().unwrap();
        assert!(policy.admits(Some(&Tag::parse("v1.9.0").unwrap())));
    }

    #[test]
    fn a_bad_watch_is_named_with_its_path_and_a_good_one_defaults_to_ten_minutes() {
        let with = |watch: &str| {
            GOOD.replace(
                "deploy_on_push: { tags:",
                &format!("watch: {watch}\n        deploy_on_push: {{ tags:"),
            )
        };
        for (watch, path, says) in [
            (
                "{ alarms: [] }",
                "watch.alarms",
                "name 1 to 100 CloudWatch alarms",
            ),
            (
                "{ alarms: [web-5xx, web-5xx] }",
                "watch.alarms[1]",
                "named twice",
            ),
            (
                "{ alarms: [\" web-5xx\"] }",
                "watch.alarms[0]",
                "not a CloudWatch alarm name",
            ),
            (
                "{ alarms: [web-5xx], for_seconds: 5 }",
                "watch.for_seconds",
                "use 10 to 3600 seconds",
            ),
            ("{ alarm: [web-5xx] }", "watch", "alarm"),
        ] {
            let found = problems(&with(watch));
            assert_eq!(found.len(), 1, "{watch}: {found:?}");
            assert!(
                found[0]
                    .0
                    .starts_with(&format!("apps.web.environments.staging.{path}")),
                "{watch}: {found:?}"
            );
            assert!(found[0].1.contains(says), "{watch}: {found:?}");
        }
        let config = Config::from_yaml(&with("{ alarms: [web-5xx, web-latency] }")).unwrap();
        let watch = config
            .env(
                &AppName::parse("web").unwrap(),
                &EnvName::parse("staging").unwrap(),
            )
            .unwrap()
            .watch
            .clone()
            .unwrap();
        assert_eq!(watch.alarms, ["web-5xx", "web-latency"]);
        assert_eq!(watch.for_, Duration::from_secs(600));
        assert!(watch.watches("web-latency") && !watch.watches("db-cpu"));
    }

    #[test]
    fn a_bad_scan_gate_is_named_with_its_path_and_a_good_one_holds_for_fifteen_minutes() {
        use crate::domain::scan::{OnMissing, Severity};
        let with = |scan: &str| {
            GOOD.replace(
                "deploy_on_push: { tags:",
                &format!("scan: {scan}\n        deploy_on_push: {{ tags:"),
            )
        };
        for (scan, path, says) in [
            ("{ wait_seconds: 900 }", "scan.max", "at least one severity"),
            (
                "{ max: {} }",
                "scan.max",
                "critical, high, medium, low, informational, undefined",
            ),
            (
                "{ max: { severe: 0 } }",
                "scan.max.severe",
                "not a severity",
            ),
            (
                "{ max: { high: 2000000 } }",
                "scan.max.high",
                "use 0 to 1000000",
            ),
            (
                "{ max: { critical: 0 }, wait_seconds: 5 }",
                "scan.wait_seconds",
                "use 30 to 86400 seconds",
            ),
            (
                "{ max: { critical: 0 }, on_missing: skip }",
                "scan.on_missing",
                "not hold or deploy",
            ),
            (
                "{ max: { critical: 0 }, thresholds: {} }",
                "scan",
                "thresholds",
            ),
        ] {
            let found = problems(&with(scan));
            assert_eq!(found.len(), 1, "{scan}: {found:?}");
            assert!(
                found[0]
                    .0
                    .starts_with(&format!("apps.web.environments.staging.{path}")),
                "{scan}: {found:?}"
            );
            assert!(found[0].1.contains(says), "{scan}: {found:?}");
        }
        let config = Config::from_yaml(&with("{ max: { critical: 0, high: 5 } }")).unwrap();
        let scan = config
            .env(
                &AppName::parse("web").unwrap(),
                &EnvName::parse("staging").unwrap(),
            )
            .unwrap()
            .scan
            .clone()
            .unwrap();
        assert_eq!(scan.max.get(&Severity::Critical), Some(&0));
        assert_eq!(scan.max.get(&Severity::High), Some(&5));
        assert_eq!(scan.wait, Duration::from_secs(900));
        assert_eq!(scan.on_missing, OnMissing::Hold);
    }

    #[test]
    fn a_bad_platform_is_named_with_its_path_and_a_good_one_is_normalized() {
        use crate::domain::platform::Platform;
        let with = |platform: &str| {
            GOOD.replace(
                "deploy_on_push: { tags:",
                &format!("platform: {platform}\n        deploy_on_push: {{ tags:"),
            )
        };
        let found = problems(&with("arm64"));
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, "apps.web.environments.staging.platform");
        assert!(found[0].1.contains("e.g. linux/amd64"), "{found:?}");
        let staging = |yaml: &str| {
            Config::from_yaml(yaml)
                .unwrap()
                .env(
                    &AppName::parse("web").unwrap(),
                    &EnvName::parse("staging").unwrap(),
                )
                .unwrap()
                .platform
                .clone()
        };
        assert_eq!(
            staging(&with("linux/aarch64")),
            Some(Platform::parse("linux/arm64").unwrap())
        );
        assert_eq!(staging(GOOD), None, "no platform: the default applies");
    }

    #[test]
    fn wrong_types_are_named_with_their_path() {
        let yaml = GOOD.replace("within_seconds: 120", "within_seconds: soon");
        let found = problems(&yaml);
        assert_eq!(
            found[0].0,
            "apps.web.environments.staging.smoke.within_seconds"
        );
    }

    #[test]
    fn every_bad_value_is_reported_with_its_path() {
        let yaml = r#"
apps:
  Web:
    repository: Acme/Web
    environments:
      staging:
        deploy_on_push: { tags: ["v1;$(id)"] }
        target: { ssm: { instances: { ids: [nope] }, container: "web;rm", ports: ["80"], max_errors: "lots" } }
        smoke: { checks: [ { url: "ftp://x", timeout_seconds: 0 } ], within_seconds: 9999 }
"#;
        let found = problems(yaml);
        let paths: Vec<&str> = found.iter().map(|(p, _)| p.as_str()).collect();
        for expected in [
            "apps.Web",
            "apps.Web.repository",
            "apps.Web.environments.staging.deploy_on_push.tags[0]",
            "apps.Web.environments.staging.target.ssm.instances.ids[0]",
            "apps.Web.environments.staging.target.ssm.container",
            "apps.Web.environments.staging.target.ssm.ports[0]",
            "apps.Web.environments.staging.target.ssm.max_errors",
            "apps.Web.environments.staging.smoke.within_seconds",
            "apps.Web.environments.staging.smoke.checks[0].url",
            "apps.Web.environments.staging.smoke.checks[0].timeout_seconds",
        ] {
            assert!(
                paths.contains(&expected),
                "missing {expected} in {found:#?}"
            );
        }
        let rendered = Config::from_yaml(yaml).unwrap_err().to_string();
        assert!(
            rendered.contains(
                "apps.Web.environments.staging.target.ssm.ports[0]: \"80\" is not HOST:CONTAINER"
            ),
            "{rendered}"
        );
    }

    #[test]
    fn ssm_and_ecs_environments_mix_in_one_app() {
        let yaml = r#"
apps:
  web:
    repository: acme/web
    environments:
      staging:
        target: { ssm: { instances: { tag: { Role: web } }, container: web, ports: ["80:8000"] } }
      production:
        promote_from: staging
        target: { ecs: { cluster: prod, service: web-svc, container: web } }
"#;
        let config = Config::from_yaml(yaml).unwrap();
        let kinds: Vec<(&str, &str)> = config
            .environments()
            .map(|(_, env, c)| (env.as_str(), c.target.kind()))
            .collect();
        assert_eq!(kinds, [("production", "ecs"), ("staging", "ssm")]);
        let production = config
            .env(
                &AppName::parse("web").unwrap(),
                &EnvName::parse("production").unwrap(),
            )
            .unwrap();
        assert_eq!(
            production.target,
            TargetConfig::Ecs(EcsTarget {
                cluster: "prod".into(),
                service: "web-svc".into(),
                container: "web".into(),
                keep_revisions: DEFAULT_KEEP_REVISIONS as u32,
            })
        );
    }

    #[test]
    fn bad_ecs_targets_are_reported_with_their_paths() {
        let yaml = r#"
apps:
  web:
    repository: acme/web
    environments:
      production:
        target: { ecs: { cluster: "arn:aws:ecs:eu-west-1:1:cluster/prod", service: "web svc", container: "", keep_revisions: 5000 } }
      both:
        target: { ecs: { cluster: prod, service: web, container: web }, ssm: { instances: { ids: [i-0123456789abcdef0] }, container: web, ports: ["80:80"] } }
"#;
        let found = problems(yaml);
        let paths: Vec<&str> = found.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "apps.web.environments.both.target",
                "apps.web.environments.production.target.ecs.cluster",
                "apps.web.environments.production.target.ecs.service",
                "apps.web.environments.production.target.ecs.container",
                "apps.web.environments.production.target.ecs.keep_revisions",
            ]
        );
        assert!(found[1].1.contains("(not its ARN)"), "{found:?}");
        assert!(
            found[0].1.contains("exactly one kind of target"),
            "{found:?}"
        );
    }

    #[test]
    fn instances_need_exactly_one_selector() {
        let yaml = GOOD.replace("instances: { tag: { Role: web-staging } }", "instances: {}");
        let found = problems(&yaml);
        assert_eq!(
            found[0].0,
            "apps.web.environments.staging.target.ssm.instances"
        );
    }

    #[test]
    fn health_port_is_required_without_published_ports() {
        let yaml = GOOD.replace(
            "health: { port: 8080, path: /healthz }",
            "health: { path: /healthz }",
        );
        let found = problems(&yaml);
        assert_eq!(
            found[0].0,
            "apps.web.environments.qa.target.ssm.health.port"
        );
    }

    #[test]
    fn malformed_yaml_is_an_error_not_a_panic() {
        let err = Config::from_yaml("apps: [unclosed").unwrap_err();
        assert_eq!(err.problems.len(), 1);
    }

    #[test]
    fn finds_apps_by_repository() {
        let config = Config::from_yaml(GOOD).unwrap();
        let repo = Repository::parse("acme/web").unwrap();
        assert_eq!(config.apps_for_repository(&repo).count(), 1);
        let other = Repository::parse("acme/api").unwrap();
        assert_eq!(config.apps_for_repository(&other).count(), 0);
    }

    #[test]
    fn retention_and_environment_tags_have_safe_defaults() {
        let config = Config::from_yaml(GOOD).unwrap();
        let web = AppName::parse("web").unwrap();
        assert_eq!(
            config.app(&web).unwrap().retention,
            None,
            "nothing is deleted unless asked"
        );
        let staging = config
            .env(&web, &EnvName::parse("staging").unwrap())
            .unwrap();
        assert_eq!(staging.ecr_tag, Some(Tag::parse("staging").unwrap()));

        let yaml = GOOD
            .replace(
                "    repository: acme/web\n",
                "    repository: acme/web\n    retention: { protect_tags: [\"v*\"] }\n",
            )
            .replace("      qa:\n", "      qa:\n        ecr_tag: false\n")
            .replace(
                "      staging:\n",
                "      staging:\n        ecr_tag: current-staging\n",
            );
        let config = Config::from_yaml(&yaml).unwrap();
        let retention = config.app(&web).unwrap().retention.clone().unwrap();
        assert_eq!(retention.rule.keep_newest, 30);
        assert_eq!(retention.keep_verified, 5);
        assert_eq!(retention.rule.protect_tags[0].as_str(), "v*");
        let env = |name: &str| {
            config
                .env(&web, &EnvName::parse(name).unwrap())
                .unwrap()
                .ecr_tag
                .clone()
        };
        assert_eq!(env("staging"), Some(Tag::parse("current-staging").unwrap()));
        assert_eq!(env("qa"), None);
    }

    #[test]
    fn bad_retention_and_environment_tags_are_reported_with_their_path() {
        let yaml = GOOD
            .replace(
                "    repository: acme/web\n",
                "    repository: acme/web\n    retention: { keep_newest: 0, keep_verified: 11, protect_tags: [\"v;*\"] }\n",
            )
            .replace("      qa:\n", "      qa:\n        ecr_tag: \"no spaces\"\n");
        let found = problems(&yaml);
        let paths: Vec<&str> = found.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "apps.web.environments.qa.ecr_tag",
                "apps.web.retention.keep_newest",
                "apps.web.retention.keep_verified",
                "apps.web.retention.protect_tags[0]",
            ],
            "{found:?}"
        );
        assert!(found[0].1.contains("ecr_tag: false"), "{found:?}");
        assert!(found[2].1.contains("1 to 10"), "{found:?}");
    }

    #[test]
    fn promotions_must_name_another_environment_of_the_app_without_going_round() {
        let yaml = GOOD.replace(
            "      qa:\n",
            "      qa:\n        promote_from: staging\n        approval: required\n",
        );
        let config = Config::from_yaml(&yaml).unwrap();
        let qa = config
            .env(
                &AppName::parse("web").unwrap(),
                &EnvName::parse("qa").unwrap(),
            )
            .unwrap();
        assert_eq!(
            qa.promotion,
            Some(Promotion {
                from: EnvName::parse("staging").unwrap(),
                approval: Approval::Required {
                    expires_after: Duration::from_secs(72 * 3600)
                }
            })
        );
        let unknown = GOOD.replace("      qa:\n", "      qa:\n        promote_from: stagin\n");
        assert_eq!(
            problems(&unknown),
            [(
                "apps.web.environments.qa.promote_from".to_owned(),
                "no environment \"stagin\" in this app; it has qa, staging".to_owned()
            )]
        );
        let circle = GOOD
            .replace("      qa:\n", "      qa:\n        promote_from: staging\n")
            .replace(
                "      staging:\n",
                "      staging:\n        promote_from: qa\n",
            );
        let found = problems(&circle);
        assert!(
            found.iter().all(|(_, m)| m.contains("round in a circle")),
            "{found:?}"
        );
        let orphan = GOOD.replace("      qa:\n", "      qa:\n        approval: required\n");
        assert_eq!(problems(&orphan)[0].0, "apps.web.environments.qa.approval");
        let mode = GOOD.replace(
            "      qa:\n",
            "      qa:\n        promote_from: staging\n        approval: maybe\n",
        );
        assert!(problems(&mode)[0].1.contains("\"auto\" or \"required\""));
    }

    #[test]
    fn notification_channels_keep_their_urls_in_secrets() {
        let yaml = GOOD.replace(
            "    repository: acme/web\n",
            "    repository: acme/web\n    notify:\n      - { type: slack, url_from: { ssm_parameter: /pushdeploy/notify/slack }, on: [failed] }\n      - { type: discord, url_from: { secret: pushdeploy/notify/discord } }\n",
        );
        let config = Config::from_yaml(&yaml).unwrap();
        let notify = &config.app(&AppName::parse("web").unwrap()).unwrap().notify;
        assert_eq!(notify[0].on, vec![Notice::Failed]);
        assert_eq!(
            notify[1].on,
            Notice::ALL.to_vec(),
            "every notice by default"
        );
        let bad = GOOD.replace(
            "    repository: acme/web\n",
            "    repository: acme/web\n    notify:\n      - { type: teams, url_from: {}, on: [exploded] }\n",
        );
        let paths: Vec<String> = problems(&bad).into_iter().map(|(p, _)| p).collect();
        assert_eq!(
            paths,
            [
                "apps.web.notify[0].type",
                "apps.web.notify[0].url_from",
                "apps.web.notify[0].on[0]"
            ]
        );
        let plain = GOOD.replace(
            "    repository: acme/web\n",
            "    repository: acme/web\n    notify:\n      - { type: slack, url: https://hooks.slack.com/x }\n",
        );
        assert!(
            problems(&plain)[0].1.contains("unknown field `url`"),
            "{:?}",
            problems(&plain)
        );
    }
}
