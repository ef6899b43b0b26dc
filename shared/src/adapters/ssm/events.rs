//! The SSM status-change events of pushdeploy's document: `EC2 Command Status-change
//! Notification` speaks for the whole command when it failed; its success, and the
//! per-instance `EC2 Command Invocation Status-change Notification`, only say when to read
//! the command back (a command that reached no host succeeds too).

use serde::Deserialize;

use super::KIND;
use crate::inbound::{Envelope, OWN_DOCUMENT, TargetEvents};
use crate::ports::{RolloutStatus, StatusEvent, TargetRef};
use crate::services::InputError;

pub const SOURCE: &str = "aws.ssm";
pub const COMMAND_STATUS: &str = "EC2 Command Status-change Notification";
pub const INVOCATION_STATUS: &str = "EC2 Command Invocation Status-change Notification";

pub const EVENTS: TargetEvents = TargetEvents {
    source: SOURCE,
    detail_types: &[COMMAND_STATUS, INVOCATION_STATUS],
    detail: &[("document-name", &[OWN_DOCUMENT])],
    read,
};

#[derive(Debug, Clone, Deserialize)]
struct Detail {
    #[serde(rename = "command-id")]
    command_id: String,
    #[serde(rename = "document-name")]
    document_name: String,
    status: String,
}

/// What a status in an SSM status-change event means for the rollout.
pub fn status_from_event(status: &str) -> RolloutStatus {
    match status {
        "Success" => RolloutStatus::Succeeded,
        "Pending" | "InProgress" | "Delayed" | "Cancelling" => RolloutStatus::InProgress,
        other => RolloutStatus::Failed(format!("SSM command ended {other}")),
    }
}

fn read(envelope: &Envelope, document: &str) -> Result<StatusEvent, InputError> {
    let detail: Detail = envelope.detail()?;
    if detail.document_name != document {
        return Ok(StatusEvent::Ignored(format!(
            "document {} is not pushdeploy's",
            detail.document_name
        )));
    }
    // A per-host status says little about the whole command: read it back instead. So
    // does a command's `Success`: a command whose targets matched no instance succeeds
    // having run nowhere, which only the command read back (its target count) tells.
    let reported = (envelope.detail_type == COMMAND_STATUS)
        .then(|| status_from_event(&detail.status))
        .filter(|status| *status != RolloutStatus::Succeeded);
    Ok(StatusEvent::Rollout {
        target_ref: TargetRef::new(KIND, &detail.command_id),
        reported,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_statuses_map_to_rollout_statuses() {
        assert_eq!(status_from_event("Success"), RolloutStatus::Succeeded);
        assert_eq!(status_from_event("InProgress"), RolloutStatus::InProgress);
        for failed in [
            "Failed",
            "TimedOut",
            "Cancelled",
            "Delivery Timed Out",
            "Execution Timed Out",
            "Undeliverable",
            "Terminated",
        ] {
            assert!(
                matches!(status_from_event(failed), RolloutStatus::Failed(_)),
                "{failed}"
            );
        }
    }
}
