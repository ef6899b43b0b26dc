//! Turns a console payload into a status report, a freeze change, or a decision about a
//! pending promotion.

use lambda_runtime::LambdaEvent;
use pushdeploy::inbound;
use pushdeploy::lambda::{logged, respond};
use pushdeploy::services::{Control, ServiceError};
use serde::Deserialize;
use serde_json::{Value, json};

/// `{"action": "status" | "freeze" | "unfreeze" | "approve" | "reject" | "list-pending",
/// "app", "environment", "digest", "reason", "requested_by" | "by"}`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ControlPayload {
    action: String,
    app: Option<String>,
    environment: Option<String>,
    digest: Option<String>,
    reason: Option<String>,
    #[serde(alias = "by")]
    requested_by: Option<String>,
}

pub async fn handle(control: &Control, event: LambdaEvent<Value>) -> Result<Value, ServiceError> {
    let caller = event
        .context
        .identity
        .as_ref()
        .map(|i| format!("cognito:{}", i.identity_id));
    logged(dispatch(control, event.payload, caller).await)
}

async fn dispatch(
    control: &Control,
    payload: Value,
    caller: Option<String>,
) -> Result<Value, ServiceError> {
    if inbound::is_event(&payload) {
        return Err(ServiceError::Invalid(
            "control takes requests typed by hand, not events".into(),
        ));
    }
    let p: ControlPayload = inbound::payload(payload, "control")?;
    let app = p.app.as_deref().map(inbound::app_name).transpose()?;
    let env = p
        .environment
        .as_deref()
        .map(inbound::env_name)
        .transpose()?;
    let by = p.requested_by.as_deref().unwrap_or("console");
    let both = || match (&app, &env) {
        (Some(a), Some(e)) => Ok((a, e)),
        _ => Err(ServiceError::Invalid(format!(
            "\"{}\" needs \"app\" and \"environment\"",
            p.action
        ))),
    };
    match p.action.as_str() {
        "status" => {
            respond(&json!({ "environments": control.status(app.as_ref(), env.as_ref()).await? }))
        }
        "freeze" => {
            let (a, e) = both()?;
            let reason = p
                .reason
                .as_deref()
                .filter(|r| !r.trim().is_empty())
                .ok_or_else(|| {
                    ServiceError::Invalid(
                        "\"freeze\" needs a \"reason\", shown to everyone whose push it holds back"
                            .into(),
                    )
                })?;
            respond(&control.freeze(a, e, reason, by).await?)
        }
        "unfreeze" => {
            let (a, e) = both()?;
            respond(&control.unfreeze(a, e, by).await?)
        }
        "approve" | "reject" => {
            let (a, e) = both()?;
            let digest = p
                .digest
                .as_deref()
                .ok_or_else(|| {
                    ServiceError::Invalid(format!(
                        "\"{}\" needs the \"digest\" it decides (see list-pending)",
                        p.action
                    ))
                })
                .and_then(inbound::digest)?;
            // Who decided is recorded: the caller's identity when Lambda gives one, else
            // the name the caller gives.
            let who = caller
                .or_else(|| p.requested_by.clone().filter(|b| !b.trim().is_empty()))
                .ok_or_else(|| {
                    ServiceError::Invalid(format!(
                        "\"{}\" needs \"by\": who decides (this invocation carries no caller identity)",
                        p.action
                    ))
                })?;
            if p.action == "approve" {
                respond(&control.approve(a, e, &digest, &who).await?)
            } else {
                respond(
                    &control
                        .reject(a, e, &digest, &who, p.reason.as_deref())
                        .await?,
                )
            }
        }
        "list-pending" => respond(&json!({ "pending": control.list_pending(app.as_ref()).await? })),
        other => Err(ServiceError::Invalid(format!(
            "unknown action {other:?}; control accepts \"status\", \"freeze\", \"unfreeze\", \"approve\", \"reject\" and \"list-pending\""
        ))),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use lambda_runtime::Context;
    use pushdeploy::fakes::{FixedConfig, ManualClock, MemoryStore, RecordingPublisher};
    use pushdeploy::ports::StateStore;
    use pushdeploy::services::Core;
    use time::macros::datetime;

    use super::*;

    fn world() -> (Control, MemoryStore, RecordingPublisher) {
        let store = MemoryStore::default();
        let events = RecordingPublisher::default();
        let control = Control {
            core: Core {
                store: Arc::new(store.clone()),
                events: Arc::new(events.clone()),
                config: Arc::new(FixedConfig::yaml(include_str!(
                    "../../../events/config.yaml"
                ))),
                clock: Arc::new(ManualClock::new(datetime!(2026-11-20 10:00 UTC))),
            },
        };
        (control, store, events)
    }

    fn event(json: &str) -> LambdaEvent<Value> {
        LambdaEvent::new(serde_json::from_str(json).unwrap(), Context::default())
    }

    #[tokio::test]
    async fn status_of_one_environment_and_of_everything() {
        let (control, _, _) = world();
        let one = handle(
            &control,
            event(include_str!("../../../events/control/status.json")),
        )
        .await
        .unwrap();
        assert_eq!(one["environments"].as_array().unwrap().len(), 1);
        assert_eq!(one["environments"][0]["target"], "ssm");
        assert_eq!(one["environments"][0]["frozen"], Value::Null);
        let all = handle(
            &control,
            event(include_str!("../../../events/control/status-all.json")),
        )
        .await
        .unwrap();
        assert_eq!(all["environments"].as_array().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn freeze_then_unfreeze_records_who_and_why() {
        let (control, store, events) = world();
        let out = handle(
            &control,
            event(include_str!("../../../events/control/freeze.json")),
        )
        .await
        .unwrap();
        assert_eq!(out["changed"], true);
        assert_eq!(out["frozen"]["by"], "alice");
        let again = handle(
            &control,
            event(include_str!("../../../events/control/freeze.json")),
        )
        .await
        .unwrap();
        assert_eq!(
            again["changed"], false,
            "freezing a frozen environment changes nothing"
        );
        let app = inbound::app_name("web").unwrap();
        let env = inbound::env_name("production").unwrap();
        assert_eq!(
            store
                .env_state(&app, &env)
                .await
                .unwrap()
                .frozen
                .unwrap()
                .reason,
            "release freeze for the holidays"
        );
        handle(
            &control,
            event(include_str!("../../../events/control/unfreeze.json")),
        )
        .await
        .unwrap();
        assert!(store.env_state(&app, &env).await.unwrap().frozen.is_none());
        assert_eq!(
            events.types(),
            vec!["Environment Frozen", "Environment Unfrozen"]
        );
    }

    #[tokio::test]
    async fn bad_requests_say_what_is_missing() {
        let (control, store, _) = world();
        for (input, expected) in [
            (
                r#"{"action": "freeze", "app": "web", "environment": "production"}"#,
                "needs a \"reason\"",
            ),
            (
                r#"{"action": "freeze", "app": "web"}"#,
                "needs \"app\" and \"environment\"",
            ),
            (
                r#"{"action": "status", "app": "shop"}"#,
                "unknown app \"shop\"",
            ),
            (r#"{"action": "reboot"}"#, "unknown action \"reboot\""),
            (r#"{"app": "web"}"#, "missing field `action`"),
        ] {
            let err = handle(&control, event(input)).await.unwrap_err();
            assert!(err.to_string().contains(expected), "{input}: {err}");
        }
        assert_eq!(store.commits(), 0);
    }

    #[tokio::test]
    async fn approve_reject_and_list_pending_from_the_samples() {
        use pushdeploy::domain::approval::{Pending, Waiting};
        let (control, store, events) = world();
        let listed = handle(
            &control,
            event(include_str!("../../../events/control/list-pending.json")),
        )
        .await
        .unwrap();
        assert_eq!(listed["pending"], json!([]));
        let err = handle(
            &control,
            event(include_str!("../../../events/control/approve.json")),
        )
        .await
        .unwrap_err();
        assert_eq!(err.to_string(), "nothing waits for approval in production");

        // Staging verified the sample digest; production waits for approval.
        let app = inbound::app_name("web").unwrap();
        let env = inbound::env_name("production").unwrap();
        let mut state = store.env_state(&app, &env).await.unwrap();
        let digest = inbound::digest(
            "sha256:3f2c7b1d9e8a4c6b5d0e1f2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e",
        )
        .unwrap();
        let now = datetime!(2026-11-20 10:00 UTC);
        state.hold(
            Pending {
                image: pushdeploy::domain::PinnedImage::parse(&format!(
                    "123456789012.dkr.ecr.eu-west-1.amazonaws.com/acme/web@{digest}"
                ))
                .unwrap(),
                tag: None,
                from: inbound::env_name("staging").unwrap(),
                waiting_for: Waiting::Approval,
                pushed_at: now,
                since: now,
                expires_at: Some(now + time::Duration::hours(72)),
                reason: "verified in staging".into(),
                approved: None,
            },
            now,
        );
        store
            .commit(pushdeploy::ports::Commit::env(&mut state))
            .await
            .unwrap();
        let listed = handle(
            &control,
            event(include_str!("../../../events/control/list-pending.json")),
        )
        .await
        .unwrap();
        assert_eq!(listed["pending"][0]["digest"], digest.as_str(), "{listed}");
        assert_eq!(listed["pending"][0]["expires_at"], "2026-11-23T10:00:00Z");

        // Without "by" (and no caller identity), nobody is recorded: refused.
        let anonymous = include_str!("../../../events/control/approve.json")
            .replace(",\n  \"by\": \"alice\"", "");
        let err = handle(&control, event(&anonymous)).await.unwrap_err();
        assert!(err.to_string().contains("needs \"by\""), "{err}");

        let out = handle(
            &control,
            event(include_str!("../../../events/control/reject.json")),
        )
        .await
        .unwrap();
        assert_eq!(out["decision"], "rejected");
        assert_eq!(out["by"], "bob");
        assert_eq!(
            events.events().last().unwrap().detail_type.as_str(),
            "Promotion Rejected"
        );
        let err = handle(
            &control,
            event(include_str!("../../../events/control/approve.json")),
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("was rejected by bob"), "{err}");
    }
}
