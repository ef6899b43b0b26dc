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
            .comment(format!(
                "pushdeploy {} {}/{}",
                dep.id, dep.app, dep.environment
            ))
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
            Some(CommandStatus::Success) => RolloutStatus::Succeeded,
            Some(
                CommandStatus::Pending | CommandStatus::InProgress | CommandStatus::Cancelling,
            )
            | None => RolloutStatus::InProgress,
            Some(other) => RolloutStatus::Failed(format!(
                "SSM command {} ended {} ({} of {} hosts failed{})",
                target_ref.id(),
                other.as_str(),
                command.error_count(),
                command.target_count(),
                command
                    .status_details()
                    .map(|d| format!("; {d}"))
                    .unwrap_or_default(),
            )),
        })
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
            let ssm =
                SsmRunCommand::new(mock_client!(aws_sdk_ssm, RuleMode::MatchAny, [&rule]), "d");
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
}
