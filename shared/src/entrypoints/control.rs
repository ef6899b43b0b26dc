//! Control's entrypoint: what people ask by hand: the status of apps and environments,
//! freezing and unfreezing automatic rollouts, deciding pending promotions, aborting a
//! rollout and revoking a verified digest.

use lambda_runtime::LambdaEvent;
use serde::Deserialize;
use serde_json::{Value, json};

use super::Function;
use crate::domain::text::{Person, Reason};
use crate::domain::{AppName, Digest, EnvName};
use crate::inbound::{Console, Envelope, is_event};
use crate::lambda::respond;
use crate::services::{Control, InputError, ServiceError};

/// What control is asked to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// One environment, every environment of one app, or everything.
    Status {
        app: Option<AppName>,
        environment: Option<EnvName>,
    },
    Freeze {
        app: AppName,
        environment: EnvName,
        reason: String,
        by: String,
    },
    Unfreeze {
        app: AppName,
        environment: EnvName,
        by: String,
    },
    Approve {
        app: AppName,
        environment: EnvName,
        digest: Digest,
        by: String,
    },
    Reject {
        app: AppName,
        environment: EnvName,
        digest: Digest,
        by: String,
        reason: Option<String>,
    },
    ListPending {
        app: Option<AppName>,
    },
    Abort {
        app: AppName,
        environment: EnvName,
        reason: String,
        by: String,
    },
    Revoke {
        app: AppName,
        environment: EnvName,
        digest: Digest,
        reason: String,
        by: String,
    },
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Action {
    Status,
    Freeze,
    Unfreeze,
    Approve,
    Reject,
    ListPending,
    Abort,
    Revoke,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Scope {
    #[serde(default)]
    app: Option<AppName>,
    #[serde(default)]
    environment: Option<EnvName>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AppScope {
    #[serde(default)]
    app: Option<AppName>,
}

/// A freeze, and an abort: the place, why, and who.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FreezeRequest {
    app: AppName,
    environment: EnvName,
    reason: Reason,
    #[serde(default, alias = "by")]
    requested_by: Option<Person>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UnfreezeRequest {
    app: AppName,
    environment: EnvName,
    #[serde(default, alias = "by")]
    requested_by: Option<Person>,
}

/// A revocation: the place, the digest, why, and who.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeRequest {
    app: AppName,
    environment: EnvName,
    digest: Digest,
    reason: Reason,
    #[serde(default, alias = "by")]
    requested_by: Option<Person>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DecideRequest {
    app: AppName,
    environment: EnvName,
    digest: Digest,
    #[serde(default, alias = "by")]
    requested_by: Option<Person>,
    #[serde(default)]
    reason: Option<Reason>,
}

pub const CONSOLE: Console = Console {
    function: "control",
    default_action: None,
    actions: &[
        "status",
        "freeze",
        "unfreeze",
        "approve",
        "reject",
        "list-pending",
        "abort",
        "revoke",
    ],
    missing: |action, field| {
        match (action, field) {
        (_, "app" | "environment") => {
            Some(format!("\"{action}\" needs \"app\" and \"environment\""))
        }
        ("freeze", "reason") => {
            Some("\"freeze\" needs a \"reason\", shown to everyone whose push it holds back".into())
        }
        ("revoke", "reason") => Some(
            "\"revoke\" needs a \"reason\": why the digest must never come back, shown in the status and the notices".into(),
        ),
        (_, "reason") => Some(format!("\"{action}\" needs a \"reason\"")),
        ("revoke", "digest") => Some(
            "\"revoke\" needs the \"digest\" to take back (see status: last_verified and deployments)".into(),
        ),
        (_, "digest") => Some(format!(
            "\"{action}\" needs the \"digest\" it decides (see list-pending)"
        )),
        _ => None,
    }
    },
};

/// Who asks when the request does not say.
const CONSOLE_CALLER: &str = "console";

/// Reads a request; `caller` is the identity Lambda gives the invocation, if any.
pub fn parse(payload: Value, caller: Option<String>) -> Result<Input, InputError> {
    if is_event(&payload) {
        // Control takes requests typed by hand; no rule routes an event to it.
        let envelope = Envelope::read(payload)?;
        return Err(InputError::NotHandled {
            function: Function::Control.phrase(),
            event_source: envelope.source,
            detail_type: envelope.detail_type,
        });
    }
    let by = |p: Option<Person>| p.map_or_else(|| CONSOLE_CALLER.to_owned(), Person::into_string);
    let (action, fields) = CONSOLE.read(payload)?;
    Ok(match action {
        Action::Status => {
            let Scope { app, environment } = fields.read()?;
            if app.is_none() && environment.is_some() {
                return Err(InputError::Rule(
                    "name the app of the environment (\"app\")".into(),
                ));
            }
            Input::Status { app, environment }
        }
        Action::Freeze => {
            let r: FreezeRequest = fields.read()?;
            Input::Freeze {
                app: r.app,
                environment: r.environment,
                reason: r.reason.into_string(),
                by: by(r.requested_by),
            }
        }
        Action::Unfreeze => {
            let r: UnfreezeRequest = fields.read()?;
            Input::Unfreeze {
                app: r.app,
                environment: r.environment,
                by: by(r.requested_by),
            }
        }
        Action::Approve => {
            let r: DecideRequest = fields.read()?;
            let by = decider("approve", caller, r.requested_by)?;
            Input::Approve {
                app: r.app,
                environment: r.environment,
                digest: r.digest,
                by,
            }
        }
        Action::Reject => {
            let r: DecideRequest = fields.read()?;
            let by = decider("reject", caller, r.requested_by)?;
            Input::Reject {
                app: r.app,
                environment: r.environment,
                digest: r.digest,
                by,
                reason: r.reason.map(Reason::into_string),
            }
        }
        Action::ListPending => {
            let AppScope { app } = fields.read()?;
            Input::ListPending { app }
        }
        Action::Abort => {
            let r: FreezeRequest = fields.read()?;
            Input::Abort {
                app: r.app,
                environment: r.environment,
                reason: r.reason.into_string(),
                by: by(r.requested_by),
            }
        }
        Action::Revoke => {
            let r: RevokeRequest = fields.read()?;
            let by = decider("revoke", caller, r.requested_by)?;
            Input::Revoke {
                app: r.app,
                environment: r.environment,
                digest: r.digest,
                reason: r.reason.into_string(),
                by,
            }
        }
    })
}

/// Who decided is recorded: the caller's identity when Lambda gives one, else the name the
/// caller gives.
fn decider(
    action: &str,
    caller: Option<String>,
    named: Option<Person>,
) -> Result<String, InputError> {
    caller
        .or_else(|| named.map(Person::into_string))
        .ok_or_else(|| {
            InputError::Rule(format!(
                "\"{action}\" needs \"by\": who decides (this invocation carries no caller identity)"
            ))
        })
}

pub async fn run(control: &Control, input: Input) -> Result<Value, ServiceError> {
    match input {
        Input::Status { app, environment } => respond(&json!({
            "environments": control.status(app.as_ref(), environment.as_ref()).await?
        })),
        Input::Freeze {
            app,
            environment,
            reason,
            by,
        } => respond(&control.freeze(&app, &environment, &reason, &by).await?),
        Input::Unfreeze {
            app,
            environment,
            by,
        } => respond(&control.unfreeze(&app, &environment, &by).await?),
        Input::Approve {
            app,
            environment,
            digest,
            by,
        } => respond(&control.approve(&app, &environment, &digest, &by).await?),
        Input::Reject {
            app,
            environment,
            digest,
            by,
            reason,
        } => respond(
            &control
                .reject(&app, &environment, &digest, &by, reason.as_deref())
                .await?,
        ),
        Input::ListPending { app } => {
            respond(&json!({ "pending": control.list_pending(app.as_ref()).await? }))
        }
        Input::Abort {
            app,
            environment,
            reason,
            by,
        } => respond(&control.abort(&app, &environment, &by, &reason).await?),
        Input::Revoke {
            app,
            environment,
            digest,
            reason,
            by,
        } => respond(
            &control
                .revoke(&app, &environment, &digest, &by, &reason)
                .await?,
        ),
    }
}

/// What Lambda calls.
pub async fn handle(control: &Control, event: LambdaEvent<Value>) -> Result<Value, ServiceError> {
    let caller = event
        .context
        .identity
        .as_ref()
        .map(|i| format!("cognito:{}", i.identity_id));
    run(control, parse(event.payload, caller)?).await
}

#[cfg(test)]
mod tests {

    use crate::fakes::{MemoryStore, RecordingPublisher};
    use crate::ports::StateStore;
    use time::macros::datetime;

    use super::*;

    fn world() -> (Control, MemoryStore, RecordingPublisher) {
        let w = crate::fakes::World::sample();
        (w.control(), w.store, w.events)
    }

    fn event(json: &str) -> LambdaEvent<Value> {
        crate::fakes::invocation(json)
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
        let app = crate::fakes::app("web");
        let env = crate::fakes::env_name("production");
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
    async fn a_digest_revoked_at_the_source_cannot_be_approved_and_status_lists_it() {
        use crate::domain::approval::{Pending, Waiting};
        let (control, store, events) = world();
        let out = handle(
            &control,
            event(include_str!("../../../events/control/revoke.json")),
        )
        .await
        .unwrap();
        assert_eq!(out["changed"], true);
        assert_eq!(out["running"], false);
        assert_eq!(out["revocation"]["by"], "alice");
        assert_eq!(events.types(), vec!["Image Revoked"]);
        let again = handle(
            &control,
            event(include_str!("../../../events/control/revoke.json")),
        )
        .await
        .unwrap();
        assert_eq!(again["changed"], false);
        assert_eq!(events.types().len(), 1);
        let status = handle(
            &control,
            event(r#"{"action": "status", "app": "web", "environment": "staging"}"#),
        )
        .await
        .unwrap();
        let revoked = &status["environments"][0]["revoked"][0];
        assert_eq!(
            revoked["digest"],
            "sha256:3f2c7b1d9e8a4c6b5d0e1f2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e"
        );
        assert_eq!(
            revoked["reason"],
            "CVE-2026-1234 in the base image; rebuild on the patched one"
        );
        // Production holds the same digest for approval: approving it is refused.
        let app = crate::fakes::app("web");
        let env = crate::fakes::env_name("production");
        let mut state = store.env_state(&app, &env).await.unwrap();
        let now = datetime!(2026-11-20 10:00 UTC);
        state.hold(
            Pending {
                image: crate::domain::PinnedImage::parse(
                    "123456789012.dkr.ecr.eu-west-1.amazonaws.com/acme/web@sha256:3f2c7b1d9e8a4c6b5d0e1f2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e",
                )
                .unwrap(),
                tag: None,
                from: crate::fakes::env_name("staging"),
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
            .commit(crate::ports::Commit::env(&mut state))
            .await
            .unwrap();
        let err = handle(
            &control,
            event(include_str!("../../../events/control/approve.json")),
        )
        .await
        .unwrap_err();
        assert_eq!(err.error_type(), "NonRetryable.Conflict");
        assert!(
            err.to_string()
                .contains("was revoked in web/staging by alice: CVE-2026-1234"),
            "{err}"
        );
        assert!(
            store
                .env_state(&app, &env)
                .await
                .unwrap()
                .pending
                .unwrap()
                .approved
                .is_none()
        );
        // A revocation needs its why and its who.
        for (input, expected) in [
            (
                r#"{"action": "revoke", "app": "web", "environment": "staging", "digest": "sha256:3f2c7b1d9e8a4c6b5d0e1f2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e", "by": "alice"}"#,
                "\"revoke\" needs a \"reason\": why the digest must never come back",
            ),
            (
                r#"{"action": "revoke", "app": "web", "environment": "staging", "reason": "bad", "by": "alice"}"#,
                "\"revoke\" needs the \"digest\" to take back",
            ),
            (
                r#"{"action": "revoke", "app": "web", "environment": "staging", "digest": "sha256:3f2c7b1d9e8a4c6b5d0e1f2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e", "reason": "bad"}"#,
                "\"revoke\" needs \"by\"",
            ),
        ] {
            let err = handle(&control, event(input)).await.unwrap_err();
            assert!(err.to_string().contains(expected), "{input}: {err}");
        }
    }

    #[tokio::test]
    async fn approve_reject_and_list_pending_from_the_samples() {
        use crate::domain::approval::{Pending, Waiting};
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
        let app = crate::fakes::app("web");
        let env = crate::fakes::env_name("production");
        let mut state = store.env_state(&app, &env).await.unwrap();
        let digest = crate::domain::Digest::parse(
            "sha256:3f2c7b1d9e8a4c6b5d0e1f2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e",
        )
        .unwrap();
        let now = datetime!(2026-11-20 10:00 UTC);
        state.hold(
            Pending {
                image: crate::domain::PinnedImage::parse(&format!(
                    "123456789012.dkr.ecr.eu-west-1.amazonaws.com/acme/web@{digest}"
                ))
                .unwrap(),
                tag: None,
                from: crate::fakes::env_name("staging"),
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
            .commit(crate::ports::Commit::env(&mut state))
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
