//! Run Command: each rollout is one `SendCommand` of pushdeploy's document to the
//! environment's instances, followed through `ListCommands`.

use async_trait::async_trait;
use aws_sdk_ssm::Client;
use aws_sdk_ssm::types::{CommandStatus, Target as SsmTargetSelector};

use super::super::aws::failed;
use super::{KIND, document_parameters, ecr_region};
use crate::domain::config::{InstanceSelector, SsmTarget};
use crate::domain::{Deployment, TargetConfig};
use crate::ports::{RolloutStatus, Started, Target, TargetError, TargetRef};

pub struct SsmRunCommand {
    client: Client,
    document: String,
}

impl SsmRunCommand {
    pub fn new(client: Client, document: impl Into<String>) -> Self {
        Self {
            client,
            document: document.into(),
        }
    }

    /// The document parameters for one deployment.
    pub fn parameters(&self, dep: &Deployment, ssm: &SsmTarget) -> Vec<(&'static str, String)> {
        let region = registry_region(dep, self.client.config().region());
        document_parameters(
            dep,
            region,
            &ssm.container,
            &ssm.ports,
            &ssm.health,
            ssm.execution_timeout,
        )
    }
}

/// The region to log in to the deployment's registry: the ECR registry's own, else the
/// client's.
pub fn registry_region(dep: &Deployment, client: Option<&aws_config::Region>) -> String {
    ecr_region(dep.image.registry.as_str())
        .map(str::to_owned)
        .or_else(|| client.map(|r| r.as_ref().to_owned()))
        .unwrap_or_default()
}

/// How many characters of a failed host's output a reason quotes: its last lines.
const OUTPUT_TAIL: usize = 800;

/// The comment of a deployment's command: it starts with the deployment id (what `find`
/// looks for), within SSM's 100 characters.
fn comment(dep: &Deployment) -> String {
    let full = format!("pushdeploy {} {}/{}", dep.id, dep.app, dep.environment);
    full.chars().take(100).collect()
}

/// The instances a command targets, as SSM has them.
fn selector(command: &aws_sdk_ssm::types::Command) -> String {
    let mut parts: Vec<String> = command
        .targets()
        .iter()
        .map(|t| format!("{}={}", t.key().unwrap_or_default(), t.values().join(",")))
        .collect();
    if !command.instance_ids().is_empty() {
        parts.push(format!("instances {}", command.instance_ids().join(",")));
    }
    if parts.is_empty() {
        "its targets".into()
    } else {
        parts.join(" and ")
    }
}

/// The last `OUTPUT_TAIL` characters of `text`, on whole lines where it can.
fn tail(text: &str) -> String {
    let text = text.trim_end();
    let count = text.chars().count();
    if count <= OUTPUT_TAIL {
        return text.to_owned();
    }
    let cut: String = text.chars().skip(count - OUTPUT_TAIL).collect();
    match cut.split_once('\n') {
        Some((_, rest)) if !rest.is_empty() => format!("…{rest}"),
        _ => format!("…{cut}"),
    }
}

impl SsmRunCommand {
    /// What a failed host printed last, when SSM still has it: `host i-…: <last lines>`.
    /// Reading it is best effort; the reason stands without it.
    async fn failed_output(&self, command_id: &str) -> Option<String> {
        let out = self
            .client
            .list_command_invocations()
            .command_id(command_id)
            .details(true)
            .send()
            .await
            .map_err(|e| {
                let error = failed::<TargetError, _>(e, "ListCommandInvocations");
                tracing::warn!(command_id, %error, "could not read the failed hosts' output");
            })
            .ok()?;
        let failed = out.command_invocations().iter().find(|i| {
            !matches!(
                i.status(),
                Some(
                    aws_sdk_ssm::types::CommandInvocationStatus::Success
                        | aws_sdk_ssm::types::CommandInvocationStatus::InProgress
                        | aws_sdk_ssm::types::CommandInvocationStatus::Pending
                )
            )
        })?;
        let output: Vec<&str> = failed
            .command_plugins()
            .iter()
            .filter_map(|p| p.output())
            .filter(|o| !o.trim().is_empty())
            .collect();
        let output = output.join("\n");
        (!output.is_empty()).then(|| {
            format!(
                "host {}: {}",
                failed.instance_id().unwrap_or("?"),
                tail(&output)
            )
        })
    }
}

#[async_trait]
impl Target for SsmRunCommand {
    async fn start(&self, dep: &Deployment, config: &TargetConfig) -> Result<Started, TargetError> {
        let TargetConfig::Ssm(ssm) = config else {
            return Err(TargetError::Invalid(format!(
                "the SSM target cannot deploy to a {} target",
                config.kind()
            )));
        };
        let mut request = self
            .client
            .send_command()
            .document_name(&self.document)
            .comment(comment(dep))
            .max_concurrency(&ssm.max_concurrency)
            .max_errors(&ssm.max_errors);
        for (name, value) in self.parameters(dep, ssm) {
            request = request.parameters(name, vec![value]);
        }
        request = match &ssm.instances {
            InstanceSelector::Ids(ids) => request.set_instance_ids(Some(ids.clone())),
            InstanceSelector::Tags(tags) => tags.iter().fold(request, |r, (key, value)| {
                r.targets(
                    SsmTargetSelector::builder()
                        .key(format!("tag:{key}"))
                        .values(value)
                        .build(),
                )
            }),
        };
        let out = request
            .send()
            .await
            .map_err(|e| failed::<TargetError, _>(e, "SendCommand"))?;
        let id = out
            .command()
            .and_then(|c| c.command_id())
            .ok_or_else(|| TargetError::Invalid("SendCommand returned no command id".into()))?;
        Ok(TargetRef::new(KIND, id).into())
    }

    async fn status(&self, target_ref: &TargetRef) -> Result<RolloutStatus, TargetError> {
        let out = self
            .client
            .list_commands()
            .command_id(target_ref.id())
            .send()
            .await
            .map_err(|e| failed::<TargetError, _>(e, "ListCommands"))?;
        let command = out.commands().first().ok_or_else(|| {
            TargetError::NotFound(format!("SSM has no command {}", target_ref.id()))
        })?;
        Ok(match command.status() {
            // A command whose targets matched no instance ends `Success` having run nowhere.
            Some(CommandStatus::Success) if command.target_count() == 0 => {
                RolloutStatus::Failed(format!(
                    "SSM command {} reached no host: no instance matched {}; check the environment's `instances`",
                    target_ref.id(),
                    selector(command)
                ))
            }
            Some(CommandStatus::Success) => RolloutStatus::Succeeded,
            Some(
                CommandStatus::Pending | CommandStatus::InProgress | CommandStatus::Cancelling,
            )
            | None => RolloutStatus::InProgress,
            Some(other) => {
                let mut reason = format!(
                    "SSM command {} ended {} ({} of {} hosts failed{})",
                    target_ref.id(),
                    other.as_str(),
                    command.error_count(),
                    command.target_count(),
                    command
                        .status_details()
                        .map(|d| format!("; {d}"))
                        .unwrap_or_default(),
                );
                if let Some(output) = self.failed_output(target_ref.id()).await {
                    reason.push_str(&format!("; {output}"));
                }
                RolloutStatus::Failed(reason)
            }
        })
    }

    async fn find(
        &self,
        dep: &Deployment,
        _config: &TargetConfig,
    ) -> Result<Option<Started>, TargetError> {
        let prefix = format!("pushdeploy {} ", dep.id);
        let since = dep.created_at - time::Duration::minutes(5);
        let filter = |key, value: String| {
            aws_sdk_ssm::types::CommandFilter::builder()
                .key(key)
                .value(value)
                .build()
                .map_err(|e| TargetError::Invalid(format!("cannot build a filter: {e}")))
        };
        let since = since
            .format(&time::format_description::well_known::Rfc3339)
            .map_err(|e| TargetError::Invalid(format!("cannot write a time: {e}")))?;
        let mut token = None;
        // Pushdeploy's commands of the last minutes, a page at a time.
        for _ in 0..20 {
            let out = self
                .client
                .list_commands()
                .filters(filter(
                    aws_sdk_ssm::types::CommandFilterKey::DocumentName,
                    self.document.clone(),
                )?)
                .filters(filter(
                    aws_sdk_ssm::types::CommandFilterKey::InvokedAfter,
                    since.clone(),
                )?)
                .set_next_token(token)
                .send()
                .await
                .map_err(|e| failed::<TargetError, _>(e, "ListCommands"))?;
            let found = out
                .commands()
                .iter()
                .find(|c| {
                    c.comment()
                        .is_some_and(|m| m.starts_with(&prefix) || m == prefix.trim_end())
                })
                .and_then(|c| c.command_id());
            if let Some(id) = found {
                return Ok(Some(TargetRef::new(KIND, id).into()));
            }
            token = out.next_token;
            if token.is_none() {
                break;
            }
        }
        Ok(None)
    }

    async fn cancel(&self, target_ref: &TargetRef) -> Result<(), TargetError> {
        self.client
            .cancel_command()
            .command_id(target_ref.id())
            .send()
            .await
            .map_err(|e| failed::<TargetError, _>(e, "CancelCommand"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_ssm::operation::list_commands::ListCommandsOutput;
    use aws_sdk_ssm::operation::send_command::{SendCommandError, SendCommandOutput};
    use aws_sdk_ssm::types::Command;
    use aws_sdk_ssm::types::error::InvalidInstanceId;
    use aws_smithy_mocks::{RuleMode, mock, mock_client};

    const CONFIG: &str = r#"
apps:
  web:
    repository: acme/web
    environments:
      staging:
        target: { ssm: { instances: { tag: { Role: web } }, container: web, ports: ["80:8000"], max_concurrency: "50%" } }
"#;

    fn fixture() -> (Deployment, TargetConfig) {
        crate::adapters::deployment_to(
            CONFIG,
            "staging",
            &format!(
                "123456789012.dkr.ecr.eu-west-1.amazonaws.com/acme/web@sha256:{}",
                "cd".repeat(32)
            ),
        )
    }

    fn list(status: CommandStatus) -> ListCommandsOutput {
        ListCommandsOutput::builder()
            .commands(
                Command::builder()
                    .command_id("c-1")
                    .status(status)
                    .error_count(1)
                    .target_count(2)
                    .build(),
            )
            .build()
    }

    #[tokio::test]
    async fn sends_our_document_pinned_by_digest_to_tagged_instances() {
        let (dep, target) = fixture();
        let image = dep.image.to_string();
        let id = dep.id.to_string();
        let rule = mock!(Client::send_command)
            .match_requests(move |r| {
                let p = r.parameters().unwrap();
                r.document_name() == Some("pushdeploy-deploy")
                    && p["Image"] == vec![image.clone()]
                    && p["Region"] == vec!["eu-west-1".to_owned()]
                    && p["Ports"] == vec!["80:8000".to_owned()]
                    && p["HealthPort"] == vec!["80".to_owned()]
                    && p["DeploymentId"] == vec![id.clone()]
                    && r.targets()[0].key() == Some("tag:Role")
                    && r.max_concurrency() == Some("50%")
                    && r.max_errors() == Some("0")
            })
            .then_output(|| {
                SendCommandOutput::builder()
                    .command(Command::builder().command_id("c-1").build())
                    .build()
            });
        let ssm = SsmRunCommand::new(mock_client!(aws_sdk_ssm, [&rule]), "pushdeploy-deploy");
        let started = ssm.start(&dep, &target).await.unwrap();
        assert_eq!(started.target_ref.as_str(), "ssm:c-1");
        assert_eq!(started.before, None);
    }

    #[tokio::test]
    async fn an_unknown_instance_is_a_permanent_refusal() {
        let (dep, target) = fixture();
        let rule = mock!(Client::send_command).then_error(|| {
            SendCommandError::InvalidInstanceId(
                InvalidInstanceId::builder().message("bad id").build(),
            )
        });
        let ssm = SsmRunCommand::new(mock_client!(aws_sdk_ssm, [&rule]), "d");
        let err = ssm.start(&dep, &target).await.unwrap_err();
        assert!(matches!(err, TargetError::Refused(..)), "{err:?}");
        assert!(!err.is_retryable());
        assert!(err.to_string().contains("bad id"), "{err}");
    }

    #[tokio::test]
    async fn failed_timed_out_and_cancelled_commands_fail_the_rollout() {
        for status in [
            CommandStatus::Failed,
            CommandStatus::TimedOut,
            CommandStatus::Cancelled,
        ] {
            let s = status.clone();
            let rule = mock!(Client::list_commands).then_output(move || list(s.clone()));
            // Reading the hosts' output is best effort (moto does not have it at all).
            let unavailable = mock!(Client::list_command_invocations).then_error(|| {
                aws_sdk_ssm::operation::list_command_invocations::ListCommandInvocationsError::unhandled("not implemented")
            });
            let ssm = SsmRunCommand::new(
                mock_client!(aws_sdk_ssm, RuleMode::MatchAny, [&rule, &unavailable]),
                "d",
            );
            let got = ssm.status(&TargetRef::new(KIND, "c-1")).await.unwrap();
            let RolloutStatus::Failed(reason) = got else {
                panic!("{status:?} should fail the rollout")
            };
            assert!(
                reason.contains(status.as_str()) && reason.contains("1 of 2 hosts failed"),
                "{reason}"
            );
        }
        for (status, expected) in [
            (CommandStatus::InProgress, RolloutStatus::InProgress),
            (CommandStatus::Success, RolloutStatus::Succeeded),
        ] {
            let s = status.clone();
            let rule = mock!(Client::list_commands).then_output(move || list(s.clone()));
            let ssm =
                SsmRunCommand::new(mock_client!(aws_sdk_ssm, RuleMode::MatchAny, [&rule]), "d");
            assert_eq!(
                ssm.status(&TargetRef::new(KIND, "c-1")).await.unwrap(),
                expected
            );
        }
    }

    #[tokio::test]
    async fn a_failed_host_says_why_in_its_last_lines_of_output() {
        use aws_sdk_ssm::operation::list_command_invocations::ListCommandInvocationsOutput;
        use aws_sdk_ssm::types::{CommandInvocation, CommandInvocationStatus, CommandPlugin};
        let commands = mock!(Client::list_commands).then_output(|| list(CommandStatus::Failed));
        let noise = "pulling layer …\n".repeat(200);
        let output = format!(
            "{noise}pushdeploy: the new container did not answer http://127.0.0.1:80/health within 30 s; restored the previous one\n"
        );
        let invocations = mock!(Client::list_command_invocations)
            .match_requests(|r| r.command_id() == Some("c-1") && r.details() == Some(true))
            .then_output(move || {
                ListCommandInvocationsOutput::builder()
                    .command_invocations(
                        CommandInvocation::builder()
                            .instance_id("i-0aaa")
                            .status(CommandInvocationStatus::Success)
                            .build(),
                    )
                    .command_invocations(
                        CommandInvocation::builder()
                            .instance_id("i-0bbb")
                            .status(CommandInvocationStatus::Failed)
                            .command_plugins(
                                CommandPlugin::builder().output(output.clone()).build(),
                            )
                            .build(),
                    )
                    .build()
            });
        let ssm = SsmRunCommand::new(
            mock_client!(aws_sdk_ssm, RuleMode::MatchAny, [&commands, &invocations]),
            "d",
        );
        let RolloutStatus::Failed(reason) = ssm.status(&TargetRef::new(KIND, "c-1")).await.unwrap()
        else {
            panic!("a failed command fails the rollout")
        };
        assert!(reason.contains("host i-0bbb: …"), "{reason}");
        assert!(
            reason.ends_with(
                "did not answer http://127.0.0.1:80/health within 30 s; restored the previous one"
            ),
            "{reason}"
        );
        assert!(reason.len() < 1_200, "{} bytes", reason.len());
    }

    #[tokio::test]
    async fn a_command_that_reached_no_host_fails_naming_its_targets() {
        let rule = mock!(Client::list_commands).then_output(|| {
            ListCommandsOutput::builder()
                .commands(
                    Command::builder()
                        .command_id("c-1")
                        .status(CommandStatus::Success)
                        .target_count(0)
                        .targets(
                            SsmTargetSelector::builder()
                                .key("tag:Role")
                                .values("web-stagign")
                                .build(),
                        )
                        .build(),
                )
                .build()
        });
        let ssm = SsmRunCommand::new(mock_client!(aws_sdk_ssm, RuleMode::MatchAny, [&rule]), "d");
        let got = ssm.status(&TargetRef::new(KIND, "c-1")).await.unwrap();
        assert_eq!(
            got,
            RolloutStatus::Failed(
                "SSM command c-1 reached no host: no instance matched tag:Role=web-stagign; check the environment's `instances`".into()
            )
        );
    }

    #[tokio::test]
    async fn a_command_sent_for_a_deployment_is_found_by_its_comment() {
        let (dep, target) = fixture();
        let ours = comment(&dep);
        let rule = mock!(Client::list_commands)
            .match_requests(|r| {
                r.filters().iter().any(|f| {
                    f.key() == &aws_sdk_ssm::types::CommandFilterKey::DocumentName
                        && f.value() == "pushdeploy-deploy"
                })
            })
            .then_output(move || {
                ListCommandsOutput::builder()
                    .commands(
                        Command::builder()
                            .command_id("someone-else")
                            .comment("pushdeploy 01JD8Z6V6WQ5N8B9C3H4K2M7PX web/staging")
                            .build(),
                    )
                    .commands(
                        Command::builder()
                            .command_id("c-7")
                            .comment(ours.clone())
                            .build(),
                    )
                    .build()
            });
        let ssm = SsmRunCommand::new(
            mock_client!(aws_sdk_ssm, RuleMode::MatchAny, [&rule]),
            "pushdeploy-deploy",
        );
        let found = ssm.find(&dep, &target).await.unwrap().unwrap();
        assert_eq!(found.target_ref.as_str(), "ssm:c-7");
    }

    #[test]
    fn the_comment_starts_with_the_deployment_and_fits_ssms_limit() {
        let (mut dep, _) = fixture();
        dep.app = crate::domain::AppName::parse(&"a".repeat(40)).unwrap();
        dep.environment = crate::domain::EnvName::parse(&"e".repeat(40)).unwrap();
        let c = comment(&dep);
        assert!(c.chars().count() <= 100);
        assert!(c.starts_with(&format!("pushdeploy {} ", dep.id)));
    }
}
