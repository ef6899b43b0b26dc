//! What the functions receive: EventBridge envelopes (ECR pushes, SSM status changes,
//! schedules, pushdeploy's own lifecycle events) and the JSON payloads people send from
//! the console. Everything is checked here, with errors that say what to fix, before any
//! use case runs.

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use time::OffsetDateTime;

use crate::domain::{
    AppName, DeploymentId, Digest, EnvName, EventDetail, EventType, Repository, Tag,
};
use crate::services::ServiceError;
use crate::services::deploy::Push;

/// An EventBridge event, before its detail is read.
#[derive(Debug, Clone, Deserialize)]
pub struct Envelope {
    pub id: String,
    pub source: String,
    #[serde(rename = "detail-type")]
    pub detail_type: String,
    #[serde(default)]
    pub account: String,
    #[serde(default)]
    pub region: String,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub time: Option<OffsetDateTime>,
    #[serde(default)]
    pub resources: Vec<String>,
    #[serde(default)]
    pub detail: Value,
}

/// Whether the payload is an EventBridge event (it has a `detail-type`) rather than a
/// request typed by a person.
pub fn is_event(payload: &Value) -> bool {
    payload.get("detail-type").is_some()
}

pub fn envelope(payload: Value) -> Result<Envelope, ServiceError> {
    serde_json::from_value(payload)
        .map_err(|e| ServiceError::Invalid(format!("malformed EventBridge event: {e}")))
}

/// Reads a console payload into its typed form; unknown fields are refused so that a typo
/// never silently changes what happens.
pub fn payload<T: DeserializeOwned>(payload: Value, what: &str) -> Result<T, ServiceError> {
    serde_json::from_value(payload)
        .map_err(|e| ServiceError::Invalid(format!("invalid {what} payload: {e}")))
}

fn detail<T: DeserializeOwned>(envelope: &Envelope) -> Result<T, ServiceError> {
    serde_json::from_value(envelope.detail.clone()).map_err(|e| {
        ServiceError::Invalid(format!(
            "malformed \"{}\" event detail: {e}",
            envelope.detail_type
        ))
    })
}

#[derive(Deserialize)]
struct EcrDetail {
    #[serde(rename = "action-type")]
    action_type: String,
    result: String,
    #[serde(rename = "repository-name")]
    repository_name: String,
    #[serde(rename = "image-digest")]
    image_digest: String,
    #[serde(rename = "image-tag", default)]
    image_tag: Option<String>,
}

/// An `ECR Image Action` event: `Ok(None)` when it is not a successful push (a deletion, a
/// failed push), which deploys nothing.
pub fn ecr_push(envelope: &Envelope) -> Result<Option<Push>, ServiceError> {
    let d: EcrDetail = detail(envelope)?;
    if d.action_type != "PUSH" || d.result != "SUCCESS" {
        return Ok(None);
    }
    let invalid = |e: &dyn std::fmt::Display| ServiceError::Invalid(format!("ECR push event: {e}"));
    let tag = match d.image_tag.as_deref() {
        None | Some("") => None,
        Some(t) => Some(Tag::parse(t).map_err(|e| invalid(&e))?),
    };
    Ok(Some(Push {
        event_id: envelope.id.clone(),
        account: envelope.account.clone(),
        region: envelope.region.clone(),
        repository: Repository::parse(&d.repository_name).map_err(|e| invalid(&e))?,
        digest: Digest::parse(&d.image_digest).map_err(|e| invalid(&e))?,
        tag,
        pushed_at: envelope.time.unwrap_or_else(OffsetDateTime::now_utc),
    }))
}

/// A pushdeploy lifecycle event: its type and detail.
pub fn lifecycle(envelope: &Envelope) -> Result<(EventType, EventDetail), ServiceError> {
    if envelope.source != crate::domain::event::SOURCE {
        return Err(ServiceError::Invalid(format!(
            "expected an event from source \"pushdeploy\", got {:?}",
            envelope.source
        )));
    }
    let kind = EventType::parse(&envelope.detail_type).ok_or_else(|| {
        ServiceError::Invalid(format!(
            "unknown lifecycle event {:?}",
            envelope.detail_type
        ))
    })?;
    Ok((kind, detail(envelope)?))
}

/// The deployment a lifecycle event is about.
pub fn deployment_of(
    detail: &EventDetail,
    detail_type: EventType,
) -> Result<DeploymentId, ServiceError> {
    detail.deployment_id.clone().ok_or_else(|| {
        ServiceError::Invalid(format!("\"{detail_type}\" event has no deployment_id"))
    })
}

/// `EC2 Command Status-change Notification` and its per-instance variant.
#[derive(Debug, Clone, Deserialize)]
pub struct SsmStatusDetail {
    #[serde(rename = "command-id")]
    pub command_id: String,
    #[serde(rename = "document-name")]
    pub document_name: String,
    #[serde(rename = "instance-id", default)]
    pub instance_id: Option<String>,
    pub status: String,
}

pub const SSM_COMMAND_STATUS: &str = "EC2 Command Status-change Notification";
pub const SSM_INVOCATION_STATUS: &str = "EC2 Command Invocation Status-change Notification";

pub fn ssm_status(envelope: &Envelope) -> Result<SsmStatusDetail, ServiceError> {
    detail(envelope)
}

pub const ECS_DEPLOYMENT_STATE: &str = "ECS Deployment State Change";

/// An `ECS Deployment State Change` event: which deployment of which service, and how it
/// stands.
#[derive(Debug, Clone, PartialEq)]
pub struct EcsDeploymentState {
    pub cluster: String,
    pub service: String,
    pub deployment_id: String,
    /// `SERVICE_DEPLOYMENT_IN_PROGRESS`, `SERVICE_DEPLOYMENT_COMPLETED` or
    /// `SERVICE_DEPLOYMENT_FAILED`.
    pub event_name: String,
    pub reason: Option<String>,
}

#[derive(Deserialize)]
struct EcsDeploymentDetail {
    #[serde(rename = "eventName")]
    event_name: String,
    #[serde(rename = "deploymentId")]
    deployment_id: String,
    #[serde(default)]
    reason: Option<String>,
}

/// Reads the event; `Ok(None)` when its service ARN is in the old format, which does not
/// name the cluster (the reconciliation follows such rollouts instead).
pub fn ecs_deployment_state(
    envelope: &Envelope,
) -> Result<Option<EcsDeploymentState>, ServiceError> {
    let d: EcsDeploymentDetail = detail(envelope)?;
    let Some(arn) = envelope.resources.first() else {
        return Err(ServiceError::Invalid(format!(
            "\"{ECS_DEPLOYMENT_STATE}\" event names no service in `resources`"
        )));
    };
    let Some((_, path)) = arn.split_once(":service/") else {
        return Err(ServiceError::Invalid(format!(
            "\"{ECS_DEPLOYMENT_STATE}\" event: {arn:?} is not an ECS service ARN"
        )));
    };
    Ok(path
        .split_once('/')
        .map(|(cluster, service)| EcsDeploymentState {
            cluster: cluster.to_owned(),
            service: service.to_owned(),
            deployment_id: d.deployment_id,
            event_name: d.event_name,
            reason: d.reason,
        }))
}

pub const CODEDEPLOY_STATE: &str = "CodeDeploy Deployment State-change Notification";

/// A `CodeDeploy Deployment State-change Notification`: `state` is `START`, `SUCCESS`,
/// `FAILURE`, `STOP` or `READY` (blue/green, waiting to reroute traffic).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct CodeDeployState {
    #[serde(rename = "deploymentId")]
    pub deployment_id: String,
    pub state: String,
    #[serde(default)]
    pub application: Option<String>,
    #[serde(rename = "deploymentGroup", default)]
    pub deployment_group: Option<String>,
}

pub fn codedeploy_state(envelope: &Envelope) -> Result<CodeDeployState, ServiceError> {
    detail(envelope)
}

/// Names as a person types them, checked with the same rules as the configuration.
pub fn app_name(value: &str) -> Result<AppName, ServiceError> {
    AppName::parse(value).map_err(|e| ServiceError::Invalid(e.to_string()))
}

pub fn env_name(value: &str) -> Result<EnvName, ServiceError> {
    EnvName::parse(value).map_err(|e| ServiceError::Invalid(e.to_string()))
}

pub fn digest(value: &str) -> Result<Digest, ServiceError> {
    Digest::parse(value).map_err(|e| ServiceError::Invalid(e.to_string()))
}

pub fn tag(value: &str) -> Result<Tag, ServiceError> {
    Tag::parse(value).map_err(|e| ServiceError::Invalid(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn push_event(detail: Value) -> Envelope {
        envelope(json!({
            "version": "0", "id": "e-1", "detail-type": "ECR Image Action", "source": "aws.ecr",
            "account": "123456789012", "time": "2026-01-01T10:00:00Z", "region": "eu-west-1",
            "resources": [], "detail": detail
        }))
        .unwrap()
    }

    #[test]
    fn reads_a_push_with_and_without_a_tag() {
        let digest = format!("sha256:{}", "a".repeat(64));
        let tagged = push_event(
            json!({"result": "SUCCESS", "repository-name": "acme/web", "image-digest": digest, "action-type": "PUSH", "image-tag": "v1"}),
        );
        let push = ecr_push(&tagged).unwrap().unwrap();
        assert_eq!(push.tag.unwrap().as_str(), "v1");
        assert_eq!(
            push.pushed_at,
            time::macros::datetime!(2026-01-01 10:00 UTC)
        );
        let untagged = push_event(
            json!({"result": "SUCCESS", "repository-name": "acme/web", "image-digest": digest, "action-type": "PUSH"}),
        );
        assert!(ecr_push(&untagged).unwrap().unwrap().tag.is_none());
    }

    #[test]
    fn deletions_and_failed_pushes_deploy_nothing() {
        let digest = format!("sha256:{}", "a".repeat(64));
        for (action, result) in [("DELETE", "SUCCESS"), ("PUSH", "FAILURE")] {
            let e = push_event(
                json!({"result": result, "repository-name": "acme/web", "image-digest": digest, "action-type": action}),
            );
            assert!(ecr_push(&e).unwrap().is_none());
        }
    }

    #[test]
    fn a_hostile_tag_is_an_error_naming_it() {
        let digest = format!("sha256:{}", "a".repeat(64));
        let e = push_event(
            json!({"result": "SUCCESS", "repository-name": "acme/web", "image-digest": digest, "action-type": "PUSH", "image-tag": "v1;$(reboot)"}),
        );
        let err = ecr_push(&e).unwrap_err().to_string();
        assert!(err.contains("v1;$(reboot)"), "{err}");
    }

    #[test]
    fn a_missing_field_is_named() {
        let e = push_event(json!({"result": "SUCCESS", "action-type": "PUSH"}));
        let err = ecr_push(&e).unwrap_err().to_string();
        assert!(err.contains("repository-name"), "{err}");
    }
}
