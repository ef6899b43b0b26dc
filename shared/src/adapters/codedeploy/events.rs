//! `CodeDeploy Deployment State-change Notification` events: the rule takes only the end
//! of a deployment (`SUCCESS`, `FAILURE`, `STOP`); a failure is read back, for what
//! CodeDeploy's own rollback did.

use serde::Deserialize;

use super::KIND;
use crate::inbound::{Envelope, TargetEvents};
use crate::ports::{RolloutStatus, StatusEvent, TargetRef};
use crate::services::InputError;

pub const SOURCE: &str = "aws.codedeploy";
pub const STATE_CHANGE: &str = "CodeDeploy Deployment State-change Notification";

pub const EVENTS: TargetEvents = TargetEvents {
    source: SOURCE,
    detail_types: &[STATE_CHANGE],
    detail: &[("state", &["SUCCESS", "FAILURE", "STOP"])],
    read,
};

#[derive(Debug, Clone, PartialEq, Deserialize)]
struct Detail {
    #[serde(rename = "deploymentId")]
    deployment_id: String,
    state: String,
}

/// What a `CodeDeploy Deployment State-change Notification`'s `state` says; `None` when
/// the deployment must be read back.
pub fn status_from_event(deployment_id: &str, state: &str) -> Option<RolloutStatus> {
    match state {
        "SUCCESS" => Some(RolloutStatus::Succeeded),
        "FAILURE" | "STOP" => Some(RolloutStatus::Failed(format!(
            "CodeDeploy deployment {deployment_id} ended {state}"
        ))),
        _ => None,
    }
}

fn read(envelope: &Envelope, _document: &str) -> Result<StatusEvent, InputError> {
    let d: Detail = envelope.detail()?;
    Ok(StatusEvent::Rollout {
        target_ref: TargetRef::new(KIND, &d.deployment_id),
        reported: status_from_event(&d.deployment_id, &d.state),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_say_success_and_failure_and_leave_the_rest_to_a_read_back() {
        assert_eq!(
            status_from_event("d-1", "SUCCESS"),
            Some(RolloutStatus::Succeeded)
        );
        assert_eq!(
            status_from_event("d-1", "FAILURE"),
            Some(RolloutStatus::Failed(
                "CodeDeploy deployment d-1 ended FAILURE".into()
            ))
        );
        assert!(matches!(
            status_from_event("d-1", "STOP"),
            Some(RolloutStatus::Failed(_))
        ));
        assert_eq!(status_from_event("d-1", "START"), None);
        assert_eq!(status_from_event("d-1", "READY"), None);
    }
}
