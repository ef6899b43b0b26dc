//! Checking the raw document: every value, with the path of each bad field, all problems
//! at once. The targets' own checks are in `targets`.

use std::collections::BTreeMap;
use std::time::Duration;

use super::*;
use crate::domain::platform::Platform;
use crate::domain::scan::{OnMissing, ScanPolicy, Severity};

/// Collects problems while walking the raw document.
#[derive(Default)]
pub(super) struct Checker {
    pub(super) problems: Vec<Problem>,
}

impl Checker {
    pub(super) fn fail(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            path: crate::domain::text::cut(&path.into()),
            message: crate::domain::text::cut(&message.into()),
        });
    }

    fn ok<T, E: fmt::Display>(&mut self, path: &str, result: Result<T, E>) -> Option<T> {
        result.map_err(|e| self.fail(path, e.to_string())).ok()
    }

    pub(super) fn seconds(
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
    pub(super) fn validate(self) -> Result<Config, ConfigError> {
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
            if p.tags.is_empty() && p.semver.is_none() && !p.untagged {
                c.fail(
                    &p_path,
                    "list at least one tag pattern in `tags`, or give a `semver` range (or set `untagged: true`)",
                );
            }
            let semver = p
                .semver
                .as_deref()
                .and_then(|r| c.ok(&format!("{p_path}.semver"), VersionRange::parse(r)));
            let tags = p
                .tags
                .iter()
                .enumerate()
                .filter_map(|(i, t)| c.ok(&format!("{p_path}.tags[{i}]"), TagPattern::parse(t)))
                .collect();
            PushPolicy {
                tags,
                semver,
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
        let watch = self
            .watch
            .and_then(|w| w.validate(c, &format!("{path}.watch")));
        let scan = self
            .scan
            .and_then(|s| s.validate(c, &format!("{path}.scan")));
        let platform = self
            .platform
            .as_deref()
            .and_then(|p| c.ok(&format!("{path}.platform"), Platform::parse(p)));
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
            only_newer: self.only_newer,
            watch,
            scan,
            platform,
        })
    }
}

/// Without `wait_seconds`, a scan result is waited for 15 minutes.
const DEFAULT_SCAN_WAIT: u64 = 900;

impl raw::Scan {
    fn validate(self, c: &mut Checker, path: &str) -> Option<ScanPolicy> {
        let wait = c.seconds(
            &format!("{path}.wait_seconds"),
            self.wait_seconds,
            DEFAULT_SCAN_WAIT,
            30,
            86_400,
        );
        let on_missing = match self.on_missing.as_deref() {
            None | Some("hold") => OnMissing::Hold,
            Some("deploy") => OnMissing::Deploy,
            Some(other) => {
                c.fail(
                    format!("{path}.on_missing"),
                    format!("{other:?} is not hold or deploy"),
                );
                OnMissing::Hold
            }
        };
        let names = Severity::ALL.map(Severity::as_str).join(", ");
        let mut max = BTreeMap::new();
        match self.max {
            None => c.fail(
                format!("{path}.max"),
                format!("give the most findings allowed for at least one severity ({names})"),
            ),
            Some(given) if given.is_empty() => c.fail(
                format!("{path}.max"),
                format!("give the most findings allowed for at least one severity ({names})"),
            ),
            Some(given) => {
                for (key, n) in given {
                    match Severity::parse(&key) {
                        None => c.fail(
                            format!("{path}.max.{key}"),
                            format!("{key:?} is not a severity; use {names}"),
                        ),
                        Some(_) if n > 1_000_000 => c.fail(
                            format!("{path}.max.{key}"),
                            format!("{n} is out of range; use 0 to 1000000"),
                        ),
                        Some(severity) => {
                            max.insert(severity, n as u32);
                        }
                    }
                }
            }
        }
        Some(ScanPolicy {
            max,
            wait,
            on_missing,
        })
    }
}

/// Without `for_seconds`, alarms are watched for ten minutes.
const DEFAULT_WATCH_SECONDS: u64 = 600;
/// `DescribeAlarms` takes at most this many names at once.
const MAX_WATCHED_ALARMS: usize = 100;

impl raw::Watch {
    fn validate(self, c: &mut Checker, path: &str) -> Option<Watch> {
        let for_ = c.seconds(
            &format!("{path}.for_seconds"),
            self.for_seconds,
            DEFAULT_WATCH_SECONDS,
            10,
            3600,
        );
        if self.alarms.is_empty() || self.alarms.len() > MAX_WATCHED_ALARMS {
            c.fail(
                format!("{path}.alarms"),
                format!(
                    "name 1 to {MAX_WATCHED_ALARMS} CloudWatch alarms to watch after the smoke tests pass"
                ),
            );
            return None;
        }
        let mut alarms = Vec::new();
        for (i, name) in self.alarms.into_iter().enumerate() {
            let good = (1..=255).contains(&name.chars().count())
                && !name.chars().any(char::is_control)
                && name.trim() == name;
            if !good {
                c.fail(
                    format!("{path}.alarms[{i}]"),
                    format!(
                        "{name:?} is not a CloudWatch alarm name (1 to 255 characters, no control characters, no leading or trailing space)"
                    ),
                );
            } else if alarms.contains(&name) {
                c.fail(
                    format!("{path}.alarms[{i}]"),
                    format!("{name:?} is named twice"),
                );
            } else {
                alarms.push(name);
            }
        }
        Some(Watch { alarms, for_ })
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
