//! What people are told: which lifecycle events are worth a message, the message in words,
//! and the key that keeps a state change from being announced twice. The shape each kind
//! of channel wants is the webhook adapter's.

use super::config::Notice;
use super::event::{EventDetail, EventType};
use super::lifecycle::Kind;

/// The state change an event announces, if it is one people hear about. A rollback's own
/// rollout is told as "rolled back" (or "rollback failed"), not as a rollout of its own.
pub fn notice_of(detail_type: EventType, detail: &EventDetail) -> Option<Notice> {
    let rollback = detail.kind == Some(Kind::Rollback);
    match detail_type {
        EventType::RolloutStarted if !rollback => Some(Notice::Started),
        EventType::DeploymentVerified if !rollback => Some(Notice::Verified),
        EventType::RolloutFailed | EventType::VerificationFailed if !rollback => {
            Some(Notice::Failed)
        }
        EventType::RollbackSucceeded => Some(Notice::RolledBack),
        EventType::RollbackFailed => Some(Notice::RollbackFailed),
        EventType::ApprovalRequested => Some(Notice::ApprovalNeeded),
        EventType::ImageRevoked => Some(Notice::Revoked),
        EventType::DeploymentBlocked => Some(Notice::Blocked),
        _ => None,
    }
}

/// One key per state change: the same change published twice (a repeated delivery, or a
/// retried publish under a new event id) has the same key.
pub fn dedupe_key(notice: Notice, detail: &EventDetail) -> String {
    let subject = match (&detail.deployment_id, &detail.digest) {
        (Some(id), _) => id.to_string(),
        (None, Some(digest)) => format!("{}/{}/{digest}", detail.app, detail.environment),
        (None, None) => format!("{}/{}", detail.app, detail.environment),
    };
    format!("{}#{subject}", notice.as_str())
}

/// The message, in words.
pub fn text(notice: Notice, d: &EventDetail) -> String {
    let place = format!("{}/{}", d.app, d.environment);
    let image = match (&d.tag, &d.digest) {
        (Some(tag), Some(digest)) => format!("{tag} ({})", short(digest.as_str())),
        (None, Some(digest)) => short(digest.as_str()).to_owned(),
        _ => "an image".to_owned(),
    };
    let id = d
        .deployment_id
        .as_ref()
        .map(|id| format!(" — deployment {id}"))
        .unwrap_or_default();
    let reason = d
        .reason
        .as_deref()
        .map(|r| format!(": {r}"))
        .unwrap_or_default();
    match notice {
        Notice::Started => format!("🚀 {place}: rolling out {image}{id}"),
        Notice::Verified => format!("✅ {place}: {image} is live and verified{id}"),
        Notice::Failed => format!("❌ {place}: {image} failed{reason}{id}"),
        Notice::RolledBack => {
            format!("↩️ {place}: {image} was rolled back to the last verified image{id}")
        }
        Notice::RollbackFailed => format!(
            "🚨 {place}: rolling back {image} failed{reason}; the environment is frozen and needs a person{id}"
        ),
        // A platform refusal says itself what to change; deploying by hand would not start.
        Notice::Blocked if d.platforms.is_some() => {
            format!("🛡️ {place}: {image} was not deployed{reason}")
        }
        Notice::Blocked => format!(
            "🛡️ {place}: {image} was not deployed{reason}. Fix the image and push again, or deploy it by hand to override"
        ),
        Notice::Revoked => {
            // The event's reason is "revoked by <who>: <why>".
            let why = d
                .reason
                .as_deref()
                .map(|r| r.split_once(": ").map_or(r, |(_, why)| why))
                .map(|why| format!(": {why}"))
                .unwrap_or_default();
            let by =
                d.by.as_deref()
                    .map(|by| format!(" by {by}"))
                    .unwrap_or_default();
            format!(
                "⛔ {place}: {image} was revoked{by}{why}; it is no longer rolled back or promoted to, and if it runs there it is rolled back"
            )
        }
        Notice::ApprovalNeeded => {
            let from = d
                .from
                .as_ref()
                .map(|f| format!(" (verified in {f})"))
                .unwrap_or_default();
            let digest = d.digest.as_ref().map(|d| d.as_str()).unwrap_or_default();
            let until = d
                .expires_at
                .and_then(|t| {
                    t.format(&time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .map(|t| format!(" before {t}"))
                .unwrap_or_default();
            format!(
                "⏳ {place}: {image}{from} waits for approval{until}. Approve with control: {{\"action\": \"approve\", \"app\": \"{}\", \"environment\": \"{}\", \"digest\": \"{digest}\", \"by\": \"<you>\"}}",
                d.app, d.environment
            )
        }
    }
}

/// What a channel is told about one state change: the words, and what they are about.
/// The webhook adapter puts it in each kind of channel's shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub notice: Notice,
    pub event: EventType,
    pub text: String,
    pub detail: EventDetail,
}

impl Message {
    pub fn new(notice: Notice, event: EventType, detail: &EventDetail) -> Self {
        Self {
            notice,
            event,
            text: text(notice, detail),
            detail: detail.clone(),
        }
    }
}

fn short(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    &hex[..hex.len().min(12)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn detail(json: Value) -> EventDetail {
        serde_json::from_value(json).unwrap()
    }

    fn failed() -> EventDetail {
        detail(json!({
            "app": "web", "environment": "staging",
            "deployment_id": "01JD8Z6V6WQ5N8B9C3H4K2M7PX",
            "digest": "sha256:3f2c7b1d9e8a4c6b5d0e1f2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e",
            "tag": "v1.4.0", "kind": "push", "phase": "Failed",
            "reason": "smoke test failed: http://web/health: status 500 (expected 200)",
            "at": "2026-11-20T10:02:00Z"
        }))
    }

    #[test]
    fn each_meaningful_change_has_one_notice_and_the_rest_none() {
        let d = failed();
        assert_eq!(
            notice_of(EventType::VerificationFailed, &d),
            Some(Notice::Failed)
        );
        assert_eq!(
            notice_of(EventType::RolloutFailed, &d),
            Some(Notice::Failed)
        );
        assert_eq!(notice_of(EventType::VerificationStarted, &d), None);
        assert_eq!(notice_of(EventType::RolloutSucceeded, &d), None);
        assert_eq!(notice_of(EventType::DeploymentFailed, &d), None);
        let mut rollback = d.clone();
        rollback.kind = Some(Kind::Rollback);
        assert_eq!(notice_of(EventType::RolloutStarted, &rollback), None);
        assert_eq!(notice_of(EventType::DeploymentVerified, &rollback), None);
        assert_eq!(
            notice_of(EventType::RollbackSucceeded, &d),
            Some(Notice::RolledBack)
        );
    }

    #[test]
    fn the_same_change_has_the_same_key_whatever_the_event_id() {
        let d = failed();
        assert_eq!(
            dedupe_key(Notice::Failed, &d),
            "failed#01JD8Z6V6WQ5N8B9C3H4K2M7PX"
        );
        assert_ne!(
            dedupe_key(Notice::Failed, &d),
            dedupe_key(Notice::RolledBack, &d)
        );
    }

    #[test]
    fn an_approval_message_says_how_to_approve_and_until_when() {
        let d = detail(json!({
            "app": "web", "environment": "production",
            "digest": "sha256:3f2c7b1d9e8a4c6b5d0e1f2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e",
            "tag": "v1.4.0", "kind": "promotion", "from": "staging",
            "expires_at": "2026-11-23T10:00:00Z", "at": "2026-11-20T10:00:00Z"
        }));
        let text = text(Notice::ApprovalNeeded, &d);
        assert!(text.contains("web/production: v1.4.0 (3f2c7b1d9e8a) (verified in staging) waits for approval before 2026-11-23T10:00:00Z"), "{text}");
        assert!(text.contains("\"action\": \"approve\""), "{text}");
        assert_eq!(
            dedupe_key(Notice::ApprovalNeeded, &d),
            "approval_needed#web/production/sha256:3f2c7b1d9e8a4c6b5d0e1f2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e"
        );
    }

    #[test]
    fn a_revocation_says_who_why_and_what_follows() {
        let d = detail(json!({
            "app": "web", "environment": "staging",
            "digest": "sha256:3f2c7b1d9e8a4c6b5d0e1f2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e",
            "tag": "v1.4.0", "by": "alice",
            "reason": "revoked by alice: CVE-2026-1234", "at": "2026-11-20T14:30:00Z"
        }));
        assert_eq!(
            notice_of(EventType::ImageRevoked, &d),
            Some(Notice::Revoked)
        );
        assert_eq!(
            text(Notice::Revoked, &d),
            "⛔ web/staging: v1.4.0 (3f2c7b1d9e8a) was revoked by alice: CVE-2026-1234; it is no longer rolled back or promoted to, and if it runs there it is rolled back"
        );
    }

    #[test]
    fn a_blocked_image_says_what_the_scan_found_and_how_to_go_on() {
        let d = detail(json!({
            "app": "web", "environment": "staging",
            "digest": "sha256:3f2c7b1d9e8a4c6b5d0e1f2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e",
            "tag": "v1.4.0", "findings": {"critical": 2, "high": 7},
            "reason": "its vulnerability scan found critical 2 > 0 (this environment allows critical 0, high 5)",
            "at": "2026-11-20T14:30:00Z"
        }));
        assert_eq!(
            notice_of(EventType::DeploymentBlocked, &d),
            Some(Notice::Blocked)
        );
        assert_eq!(
            text(Notice::Blocked, &d),
            "🛡️ web/staging: v1.4.0 (3f2c7b1d9e8a) was not deployed: its vulnerability scan found critical 2 > 0 (this environment allows critical 0, high 5). Fix the image and push again, or deploy it by hand to override"
        );
    }

    #[test]
    fn an_image_for_another_platform_says_both_and_no_override() {
        let d = detail(json!({
            "app": "web", "environment": "staging",
            "digest": "sha256:3f2c7b1d9e8a4c6b5d0e1f2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e",
            "tag": "v1.4.0", "platforms": {"image": ["linux/arm64"], "target": "linux/amd64"},
            "reason": "the image is built for linux/arm64, but web/staging runs linux/amd64 (as its `platform` says): build the image for linux/amd64, or change the environment's `platform` if its hosts run another",
            "at": "2026-11-20T14:30:00Z"
        }));
        assert_eq!(
            text(Notice::Blocked, &d),
            "🛡️ web/staging: v1.4.0 (3f2c7b1d9e8a) was not deployed: the image is built for linux/arm64, but web/staging runs linux/amd64 (as its `platform` says): build the image for linux/amd64, or change the environment's `platform` if its hosts run another"
        );
    }

    #[test]
    fn every_notice_names_the_place_and_the_image() {
        let d = failed();
        for notice in Notice::ALL {
            let text = text(notice, &d);
            assert!(text.contains("web/staging"), "{notice:?}: {text}");
            assert!(text.contains("v1.4.0 (3f2c7b1d9e8a)"), "{notice:?}: {text}");
        }
        assert!(text(Notice::RollbackFailed, &d).contains("frozen"));
        assert!(text(Notice::RolledBack, &d).contains("rolled back to the last verified image"));
        assert!(text(Notice::Verified, &d).contains("live and verified"));
    }
}
