//! The configuration model: one YAML document of apps → environments → trigger, target and
//! smoke checks. Parsed in two steps: serde reads the shape (unknown fields are errors,
//! with the path of the field), then `validate` checks every value and reports each
//! problem with the path of the bad field, all at once.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::deployment::KEEP_VERIFIED;
use super::image::{Registry, Repository, Tag};
use super::names::{AppName, EnvName};
use super::policy::TagPattern;
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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
}

impl Notice {
    pub const ALL: [Notice; 6] = [
        Notice::Started,
        Notice::Verified,
        Notice::Failed,
        Notice::RolledBack,
        Notice::RollbackFailed,
        Notice::ApprovalNeeded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Notice::Started => "started",
            Notice::Verified => "verified",
            Notice::Failed => "failed",
            Notice::RolledBack => "rolled_back",
            Notice::RollbackFailed => "rollback_failed",
            Notice::ApprovalNeeded => "approval_needed",
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
    /// Also deploy pushes that carry no tag (by default they are the per-platform
    /// manifests of a multi-platform push, and are ignored).
    pub untagged: bool,
}

impl PushPolicy {
    pub fn admits(&self, tag: Option<&Tag>) -> bool {
        match tag {
            Some(tag) => self.tags.iter().any(|p| p.matches(tag)),
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
                    path: if path == "." { String::new() } else { path },
                    message,
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

/// The shape of the document as written, before any value is checked.
mod raw {
    use super::*;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Config {
        pub apps: BTreeMap<String, App>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct App {
        pub repository: String,
        pub registry: Option<String>,
        pub environments: BTreeMap<String, Env>,
        pub retention: Option<Retention>,
        #[serde(default)]
        pub notify: Vec<Channel>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Channel {
        #[serde(rename = "type")]
        pub kind: String,
        pub url_from: UrlFrom,
        #[serde(default)]
        pub on: Vec<String>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct UrlFrom {
        pub ssm_parameter: Option<String>,
        pub secret: Option<String>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Retention {
        pub keep_newest: Option<usize>,
        pub keep_verified: Option<usize>,
        #[serde(default)]
        pub protect_tags: Vec<String>,
    }

    /// `ecr_tag: false` turns the environment tag off; a string names it.
    #[derive(Deserialize)]
    #[serde(untagged)]
    pub enum EcrTag {
        Enabled(bool),
        Name(String),
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Env {
        pub deploy_on_push: Option<Push>,
        pub target: Target,
        #[serde(default)]
        pub smoke: Option<Smoke>,
        pub rollout_timeout_seconds: Option<u64>,
        pub ecr_tag: Option<EcrTag>,
        pub promote_from: Option<String>,
        pub approval: Option<String>,
        pub approval_expires_after_hours: Option<u64>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Push {
        #[serde(default)]
        pub tags: Vec<String>,
        #[serde(default)]
        pub untagged: bool,
    }

    /// One key per kind of target; exactly one must be given.
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Target {
        pub ssm: Option<Ssm>,
        pub ecs: Option<Ecs>,
        pub codedeploy: Option<CodeDeploy>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct CodeDeploy {
        pub application: String,
        pub deployment_group: String,
        pub ec2: Option<CodeDeployEc2>,
        pub ecs: Option<CodeDeployEcs>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct CodeDeployEc2 {
        pub container: String,
        #[serde(default)]
        pub ports: Vec<String>,
        pub health: Option<Health>,
        pub timeout_seconds: Option<u64>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct CodeDeployEcs {
        pub cluster: String,
        pub service: String,
        pub container: String,
        pub container_port: u16,
        pub keep_revisions: Option<u64>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Ecs {
        pub cluster: String,
        pub service: String,
        pub container: String,
        pub keep_revisions: Option<u64>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Ssm {
        pub instances: Instances,
        pub container: String,
        #[serde(default)]
        pub ports: Vec<String>,
        pub health: Option<Health>,
        pub max_concurrency: Option<String>,
        pub max_errors: Option<String>,
        pub execution_timeout_seconds: Option<u64>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Instances {
        pub ids: Option<Vec<String>>,
        pub tag: Option<BTreeMap<String, String>>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Health {
        pub port: Option<u16>,
        pub path: Option<String>,
        pub timeout_seconds: Option<u64>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Smoke {
        #[serde(default)]
        pub checks: Vec<Check>,
        pub within_seconds: Option<u64>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Check {
        pub url: String,
        pub expect_status: Option<u16>,
        pub body_contains: Option<String>,
        pub timeout_seconds: Option<u64>,
    }
}

/// Collects problems while walking the raw document.
#[derive(Default)]
struct Checker {
    problems: Vec<Problem>,
}

impl Checker {
    fn fail(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }

    fn ok<T, E: fmt::Display>(&mut self, path: &str, result: Result<T, E>) -> Option<T> {
        result.map_err(|e| self.fail(path, e.to_string())).ok()
    }

    fn seconds(
        &mut self,
        path: &str,
        value: Option<u64>,
        default: u64,
        min: u64,
        max: u64,
    ) -> Duration {
        let v = value.unwrap_or(default);
        if !(min..=max).contains(&v) {
            self.fail(
                path,
                format!("{v} is out of range; use {min} to {max} seconds"),
            );
        }
        Duration::from_secs(v)
    }
}

impl raw::Config {
    fn validate(self) -> Result<Config, ConfigError> {
        let mut c = Checker::default();
        let mut apps = BTreeMap::new();
        for (name, app) in self.apps {
            let path = format!("apps.{name}");
            let app_name = c.ok(&path, AppName::parse(&name));
            let app = app.validate(&mut c, &path);
            if let (Some(n), Some(a)) = (app_name, app) {
                apps.insert(n, a);
            }
        }
        if c.problems.is_empty() {
            Ok(Config { apps })
        } else {
            Err(ConfigError {
                problems: c.problems,
            })
        }
    }
}

impl raw::App {
    fn validate(self, c: &mut Checker, path: &str) -> Option<AppConfig> {
        let repository = c.ok(
            &format!("{path}.repository"),
            Repository::parse(&self.repository),
        );
        let registry = match &self.registry {
            Some(r) => c
                .ok(&format!("{path}.registry"), Registry::parse(r))
                .map(Some),
            None => Some(None),
        };
        if self.environments.is_empty() {
            c.fail(
                format!("{path}.environments"),
                "an app needs at least one environment",
            );
        }
        let mut environments = BTreeMap::new();
        for (name, env) in self.environments {
            let env_path = format!("{path}.environments.{name}");
            let env_name = c.ok(&env_path, EnvName::parse(&name));
            let env = env.validate(c, &env_path, &name);
            if let (Some(n), Some(e)) = (env_name, env) {
                environments.insert(n, e);
            }
        }
        check_promotions(c, path, &environments);
        let retention = self
            .retention
            .map(|r| r.validate(c, &format!("{path}.retention")));
        let notify = self
            .notify
            .into_iter()
            .enumerate()
            .filter_map(|(i, ch)| ch.validate(c, &format!("{path}.notify[{i}]")))
            .collect();
        Some(AppConfig {
            repository: repository?,
            registry: registry?,
            environments,
            retention,
            notify,
        })
    }
}

/// Every `promote_from` names another environment of the app, and following them never
/// comes back to where it started.
fn check_promotions(c: &mut Checker, path: &str, environments: &BTreeMap<EnvName, EnvConfig>) {
    for (name, env) in environments {
        let Some(promotion) = &env.promotion else {
            continue;
        };
        let field = format!("{path}.environments.{name}.promote_from");
        if &promotion.from == name {
            c.fail(field, "an environment cannot promote from itself");
            continue;
        }
        if !environments.contains_key(&promotion.from) {
            let known: Vec<&str> = environments.keys().map(EnvName::as_str).collect();
            c.fail(
                field,
                format!(
                    "no environment {:?} in this app; it has {}",
                    promotion.from.as_str(),
                    known.join(", ")
                ),
            );
            continue;
        }
        let mut seen = vec![name];
        let mut at = &promotion.from;
        while let Some(next) = environments.get(at).and_then(|e| e.promotion.as_ref()) {
            seen.push(at);
            if seen.contains(&&next.from) {
                c.fail(
                    field,
                    format!(
                        "promotions go round in a circle: {} → {}",
                        seen.iter()
                            .map(|e| e.as_str())
                            .collect::<Vec<_>>()
                            .join(" ← "),
                        next.from
                    ),
                );
                break;
            }
            at = &next.from;
        }
    }
}

impl raw::Channel {
    fn validate(self, c: &mut Checker, path: &str) -> Option<Channel> {
        let kind = match self.kind.as_str() {
            "slack" => Some(ChannelKind::Slack),
            "discord" => Some(ChannelKind::Discord),
            "webhook" => Some(ChannelKind::Webhook),
            other => {
                c.fail(
                    format!("{path}.type"),
                    format!(
                        "{other:?} is not a channel; use \"slack\", \"discord\" or \"webhook\""
                    ),
                );
                None
            }
        };
        let url = match (self.url_from.ssm_parameter, self.url_from.secret) {
            (Some(p), None) if p.starts_with('/') && p.len() <= 1011 => {
                Some(SecretRef::SsmParameter(p))
            }
            (Some(p), None) => {
                c.fail(
                    format!("{path}.url_from.ssm_parameter"),
                    format!("{p:?} must be a parameter name starting with '/'"),
                );
                None
            }
            (None, Some(s)) if !s.is_empty() && s.len() <= 2048 => Some(SecretRef::Secret(s)),
            _ => {
                c.fail(
                    format!("{path}.url_from"),
                    "give exactly one of `ssm_parameter` (a SecureString) or `secret` (Secrets Manager): webhook URLs are secrets and never written here",
                );
                None
            }
        };
        let mut on = Vec::new();
        for (i, name) in self.on.iter().enumerate() {
            match Notice::ALL.iter().find(|n| n.as_str() == name) {
                Some(n) => on.push(*n),
                None => c.fail(
                    format!("{path}.on[{i}]"),
                    format!(
                        "{name:?} is not a notice; use {}",
                        Notice::ALL.map(Notice::as_str).join(", ")
                    ),
                ),
            }
        }
        if on.is_empty() {
            on = Notice::ALL.to_vec();
        }
        Some(Channel {
            kind: kind?,
            url: url?,
            on,
        })
    }
}

/// Without `keep_newest`, this many of the newest images stay.
const DEFAULT_KEEP_NEWEST: usize = 30;
/// Without `keep_verified`, this many verified digests per environment stay.
const DEFAULT_KEEP_VERIFIED: usize = 5;

impl raw::Retention {
    fn validate(self, c: &mut Checker, path: &str) -> Retention {
        let keep_newest = self.keep_newest.unwrap_or(DEFAULT_KEEP_NEWEST);
        if !(1..=10_000).contains(&keep_newest) {
            c.fail(
                format!("{path}.keep_newest"),
                format!("{keep_newest} is out of range; keep 1 to 10000 of the newest images"),
            );
        }
        let keep_verified = self.keep_verified.unwrap_or(DEFAULT_KEEP_VERIFIED);
        if !(1..=KEEP_VERIFIED).contains(&keep_verified) {
            c.fail(
                format!("{path}.keep_verified"),
                format!(
                    "{keep_verified} is out of range; pushdeploy remembers 1 to {KEEP_VERIFIED} verified digests per environment"
                ),
            );
        }
        let protect_tags = self
            .protect_tags
            .iter()
            .enumerate()
            .filter_map(|(i, t)| c.ok(&format!("{path}.protect_tags[{i}]"), TagPattern::parse(t)))
            .collect();
        Retention {
            rule: RetentionRule {
                keep_newest,
                protect_tags,
            },
            keep_verified,
        }
    }
}

impl raw::Env {
    fn validate(self, c: &mut Checker, path: &str, name: &str) -> Option<EnvConfig> {
        let before = c.problems.len();
        let promotion = self.promotion(c, path);
        let deploy_on_push = self.deploy_on_push.map(|p| {
            let p_path = format!("{path}.deploy_on_push");
            if p.tags.is_empty() && !p.untagged {
                c.fail(
                    &p_path,
                    "list at least one tag pattern in `tags` (or set `untagged: true`)",
                );
            }
            let tags = p
                .tags
                .iter()
                .enumerate()
                .filter_map(|(i, t)| c.ok(&format!("{p_path}.tags[{i}]"), TagPattern::parse(t)))
                .collect();
            PushPolicy {
                tags,
                untagged: p.untagged,
            }
        });
        let target = match self.target {
            raw::Target {
                ssm: Some(ssm),
                ecs: None,
                codedeploy: None,
            } => ssm
                .validate(c, &format!("{path}.target.ssm"))
                .map(TargetConfig::Ssm),
            raw::Target {
                ssm: None,
                ecs: Some(ecs),
                codedeploy: None,
            } => ecs
                .validate(c, &format!("{path}.target.ecs"))
                .map(TargetConfig::Ecs),
            raw::Target {
                ssm: None,
                ecs: None,
                codedeploy: Some(codedeploy),
            } => codedeploy
                .validate(c, &format!("{path}.target.codedeploy"))
                .map(TargetConfig::CodeDeploy),
            raw::Target { .. } => {
                c.fail(
                    format!("{path}.target"),
                    "name exactly one kind of target: `ssm`, `ecs` or `codedeploy`",
                );
                None
            }
        };
        let smoke = self
            .smoke
            .map(|s| s.validate(c, &format!("{path}.smoke")))
            .unwrap_or(SmokeConfig {
                checks: Vec::new(),
                within: Duration::from_secs(DEFAULT_SMOKE_WITHIN),
            });
        let rollout_timeout = c.seconds(
            &format!("{path}.rollout_timeout_seconds"),
            self.rollout_timeout_seconds,
            900,
            60,
            7200,
        );
        let ecr_tag = match self.ecr_tag {
            None | Some(raw::EcrTag::Enabled(true)) => Some(name),
            Some(raw::EcrTag::Enabled(false)) => None,
            Some(raw::EcrTag::Name(ref tag)) => Some(tag.as_str()),
        }
        .and_then(|tag| {
            c.ok(
                &format!("{path}.ecr_tag"),
                Tag::parse(tag).map_err(|e| {
                    format!("{e}; name a valid tag, or set `ecr_tag: false` to move no tag")
                }),
            )
        });
        if c.problems.len() > before {
            return None;
        }
        Some(EnvConfig {
            deploy_on_push,
            target: target?,
            smoke,
            rollout_timeout,
            ecr_tag,
            promotion,
        })
    }
}

const DEFAULT_SMOKE_WITHIN: u64 = 120;
/// Without `approval_expires_after_hours`, a pending approval expires after three days.
const DEFAULT_APPROVAL_HOURS: u64 = 72;

impl raw::Env {
    fn promotion(&self, c: &mut Checker, path: &str) -> Option<Promotion> {
        let Some(from) = &self.promote_from else {
            if self.approval.is_some() || self.approval_expires_after_hours.is_some() {
                c.fail(
                    format!("{path}.approval"),
                    "approval applies to promotions: name the source environment in `promote_from`",
                );
            }
            return None;
        };
        let from = c.ok(&format!("{path}.promote_from"), EnvName::parse(from))?;
        let hours = self
            .approval_expires_after_hours
            .unwrap_or(DEFAULT_APPROVAL_HOURS);
        if !(1..=720).contains(&hours) {
            c.fail(
                format!("{path}.approval_expires_after_hours"),
                format!("{hours} is out of range; use 1 to 720 hours"),
            );
        }
        let approval = match self.approval.as_deref() {
            None | Some("auto") => Approval::Auto,
            Some("required") => Approval::Required {
                expires_after: Duration::from_secs(hours * 3600),
            },
            Some(other) => {
                c.fail(
                    format!("{path}.approval"),
                    format!("{other:?} is not an approval mode; use \"auto\" or \"required\""),
                );
                return None;
            }
        };
        Some(Promotion { from, approval })
    }
}

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
    fn validate(self, c: &mut Checker, path: &str) -> Option<SsmTarget> {
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
    fn validate(self, c: &mut Checker, path: &str) -> Option<EcsTarget> {
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
    fn validate(self, c: &mut Checker, path: &str) -> Option<CodeDeployTarget> {
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

impl raw::Smoke {
    fn validate(self, c: &mut Checker, path: &str) -> SmokeConfig {
        let within = c.seconds(
            &format!("{path}.within_seconds"),
            self.within_seconds,
            DEFAULT_SMOKE_WITHIN,
            1,
            600,
        );
        let checks = self
            .checks
            .into_iter()
            .enumerate()
            .filter_map(|(i, check)| {
                let p = format!("{path}.checks[{i}]");
                let url_ok = check
                    .url
                    .strip_prefix("http://")
                    .or_else(|| check.url.strip_prefix("https://"))
                    .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'))
                    && !check.url.chars().any(char::is_whitespace);
                if !url_ok {
                    c.fail(
                        format!("{p}.url"),
                        format!(
                            "{:?} must be an http:// or https:// URL with a host",
                            check.url
                        ),
                    );
                }
                let expect_status = check.expect_status.unwrap_or(200);
                if !(100..=599).contains(&expect_status) {
                    c.fail(
                        format!("{p}.expect_status"),
                        format!("{expect_status} is not an HTTP status code"),
                    );
                }
                let timeout = c.seconds(
                    &format!("{p}.timeout_seconds"),
                    check.timeout_seconds,
                    5,
                    1,
                    60,
                );
                url_ok.then_some(SmokeCheck {
                    url: check.url,
                    expect_status,
                    body_contains: check.body_contains,
                    timeout,
                })
            })
            .collect();
        SmokeConfig { checks, within }
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
