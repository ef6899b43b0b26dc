//! The shape of the configuration document as written, before any value is checked:
//! serde reads it with unknown fields refused, and `validate` turns it into the model.

use std::collections::BTreeMap;

use serde::Deserialize;

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
    #[serde(default)]
    pub only_newer: bool,
    pub watch: Option<Watch>,
    pub scan: Option<Scan>,
    pub platform: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scan {
    /// Severity name to the most findings allowed; kept as given so that every bad key is
    /// reported with its path.
    pub max: Option<std::collections::BTreeMap<String, u64>>,
    pub wait_seconds: Option<u64>,
    pub on_missing: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Watch {
    #[serde(default)]
    pub alarms: Vec<String>,
    pub for_seconds: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Push {
    #[serde(default)]
    pub tags: Vec<String>,
    pub semver: Option<String>,
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
