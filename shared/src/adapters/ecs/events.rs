//! `ECS Deployment State Change` events: which deployment of which service, and how it
//! stands. Only the completed and failed ones speak for the rollout; the others are read
//! back from the service.

use serde::Deserialize;

use super::target_ref;
use crate::inbound::{Envelope, TargetEvents};
use crate::ports::{RolloutStatus, StatusEvent};
use crate::services::InputError;

pub const SOURCE: &str = "aws.ecs";
pub const DEPLOYMENT_STATE: &str = "ECS Deployment State Change";

pub const EVENTS: TargetEvents = TargetEvents {
    source: SOURCE,
    detail_types: &[DEPLOYMENT_STATE],
    detail: &[],
    read,
};

#[derive(Deserialize)]
struct Detail {
    #[serde(rename = "eventName")]
    event_name: String,
    #[serde(rename = "deploymentId")]
    deployment_id: String,
    #[serde(default)]
    reason: Option<String>,
}

/// What an `ECS Deployment State Change` event's `eventName` says about the rollout;
/// `None` when only reading the service back can tell.
pub fn status_from_event(event_name: &str, reason: Option<&str>) -> Option<RolloutStatus> {
    match event_name {
        "SERVICE_DEPLOYMENT_COMPLETED" => Some(RolloutStatus::Succeeded),
        "SERVICE_DEPLOYMENT_FAILED" => Some(RolloutStatus::Failed(format!(
            "ECS deployment failed: {}",
            reason.unwrap_or("no reason given")
        ))),
        _ => None,
    }
}

/// The service named by `resources[0]`; an old-format ARN (no cluster) is ignored, and the
/// reconciliation follows such rollouts instead.
fn read(envelope: &Envelope, _document: &str) -> Result<StatusEvent, InputError> {
    let d: Detail = envelope.detail()?;
    let field = |problem: String| InputError::Field {
        what: format!("\"{DEPLOYMENT_STATE}\" event"),
        field: Some("resources".into()),
        problem,
    };
    let Some(arn) = envelope.resources.first() else {
        return Err(field("names no service".into()));
    };
    let Some((_, path)) = arn.split_once(":service/") else {
        return Err(field(format!(
            "{} is not an ECS service ARN",
            crate::inbound::quote(arn)
        )));
    };
    let Some((cluster, service)) = path.split_once('/') else {
        return Ok(StatusEvent::Ignored(
            "the service ARN does not name its cluster (old ARN format); the reconciliation follows this rollout".into(),
        ));
    };
    Ok(StatusEvent::Rollout {
        target_ref: target_ref(cluster, service, &d.deployment_id),
        reported: status_from_event(&d.event_name, d.reason.as_deref()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_map_to_statuses() {
        assert_eq!(
            status_from_event("SERVICE_DEPLOYMENT_COMPLETED", None),
            Some(RolloutStatus::Succeeded)
        );
        assert_eq!(
            status_from_event("SERVICE_DEPLOYMENT_FAILED", Some("tasks failed to start")),
            Some(RolloutStatus::Failed(
                "ECS deployment failed: tasks failed to start".into()
            ))
        );
        assert_eq!(
            status_from_event("SERVICE_DEPLOYMENT_IN_PROGRESS", None),
            None
        );
    }
}
