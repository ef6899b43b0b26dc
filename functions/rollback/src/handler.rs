//! Turns a failure event, or a rollback request typed in the console, into a rollback.

use lambda_runtime::LambdaEvent;
use pushdeploy::domain::EventType;
use pushdeploy::inbound;
use pushdeploy::lambda::{logged, respond};
use pushdeploy::services::rollback::ManualRollback;
use pushdeploy::services::{Rollback, ServiceError};
use serde::Deserialize;
use serde_json::Value;

/// `{"app": "web", "environment": "staging"}`, optionally with a verified `"digest"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackPayload {
    #[serde(default)]
    action: Option<String>,
    app: String,
    environment: String,
    digest: Option<String>,
    requested_by: Option<String>,
    reason: Option<String>,
}

pub async fn handle(rollback: &Rollback, event: LambdaEvent<Value>) -> Result<Value, ServiceError> {
    logged(dispatch(rollback, event.payload).await)
}

async fn dispatch(rollback: &Rollback, payload: Value) -> Result<Value, ServiceError> {
    if !inbound::is_event(&payload) {
        let p: RollbackPayload = inbound::payload(payload, "rollback")?;
        if let Some(action) = p.action.as_deref().filter(|a| *a != "rollback") {
            return Err(ServiceError::Invalid(format!(
                "unknown action {action:?}; this function accepts \"rollback\""
            )));
        }
        let request = ManualRollback {
            app: inbound::app_name(&p.app)?,
            environment: inbound::env_name(&p.environment)?,
            digest: p.digest.as_deref().map(inbound::digest).transpose()?,
            requested_by: p.requested_by,
            reason: p.reason,
        };
        return respond(&rollback.manual(&request).await?);
    }
    let envelope = inbound::envelope(payload)?;
    let (kind, detail) = inbound::lifecycle(&envelope)?;
    match kind {
        EventType::RolloutFailed | EventType::VerificationFailed => {
            let id = inbound::deployment_of(&detail, kind)?;
            respond(
                &rollback
                    .on_failure(&detail.app, &detail.environment, &id)
                    .await?,
            )
        }
        other => Err(ServiceError::Invalid(format!(
            "the rollback function does not handle \"{other}\" events"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use lambda_runtime::Context;
    use pushdeploy::domain::{
        Deployment, DeploymentId, Digest, Kind, Phase, PinnedImage, Request, Step,
    };
    use pushdeploy::fakes::{
        FakeRegistry, FakeTarget, FixedConfig, ManualClock, MemoryStore, RecordingPublisher,
    };
    use pushdeploy::ports::{Clock, Commit, StateStore};
    use pushdeploy::services::Core;
    use time::macros::datetime;

    use super::*;

    const GOOD: &str = "sha256:a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";
    const BAD: &str = "sha256:3f2c7b1d9e8a4c6b5d0e1f2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e";
    const REGISTRY: &str = "123456789012.dkr.ecr.eu-west-1.amazonaws.com";

    struct World {
        rollback: Rollback,
        store: MemoryStore,
        target: FakeTarget,
        events: RecordingPublisher,
        registry: FakeRegistry,
        clock: ManualClock,
    }

    fn world() -> World {
        let store = MemoryStore::default();
        let target = FakeTarget::default();
        let events = RecordingPublisher::default();
        let registry = FakeRegistry::new(REGISTRY);
        let clock = ManualClock::new(datetime!(2026-11-20 10:00 UTC));
        let rollback = Rollback {
            core: Core {
                store: Arc::new(store.clone()),
                events: Arc::new(events.clone()),
                config: Arc::new(FixedConfig::yaml(include_str!(
                    "../../../events/config.yaml"
                ))),
                clock: Arc::new(clock.clone()),
            },
            registry: Arc::new(registry.clone()),
            target: Arc::new(target.clone()),
        };
        World {
            rollback,
            store,
            target,
            events,
            registry,
            clock,
        }
    }

    /// Staging verified GOOD, then BAD (the sample events' deployment) failed verification.
    async fn failed_after_good(w: &World, verified: bool) -> Deployment {
        let app = inbound::app_name("web").unwrap();
        let env = inbound::env_name("staging").unwrap();
        let image = |d: &str| PinnedImage::parse(&format!("{REGISTRY}/acme/web@{d}")).unwrap();
        let request = |d: &str| Request {
            image: image(d),
            tag: None,
            kind: Kind::Push,
            pushed_at: w.clock.now(),
            requested_by: None,
            reason: None,
        };
        let mut state = w.store.env_state(&app, &env).await.unwrap();
        if verified {
            let mut good = Deployment::new(app.clone(), env.clone(), request(GOOD), w.clock.now());
            state.start(&mut good);
            state.record_verified(&good, w.clock.now());
            state.release(&good.id);
            w.registry
                .push("acme/web", Some("v1.3.0"), &Digest::parse(GOOD).unwrap());
        }
        let mut bad = Deployment::new(app.clone(), env.clone(), request(BAD), w.clock.now());
        bad.id = DeploymentId::parse("01JD8Z6V6WQ5N8B9C3H4K2M7PX").unwrap();
        state.start(&mut bad);
        for step in [
            Step::RolloutStarted,
            Step::RolloutSucceeded,
            Step::VerificationStarted,
            Step::VerificationFailed,
        ] {
            bad.apply(step, w.clock.now(), None).unwrap();
        }
        w.store
            .commit(Commit::env(&mut state).with(&mut bad))
            .await
            .unwrap();
        bad
    }

    fn event(json: &str) -> LambdaEvent<Value> {
        LambdaEvent::new(serde_json::from_str(json).unwrap(), Context::default())
    }

    #[tokio::test]
    async fn a_failed_verification_redeploys_the_last_verified_digest() {
        let w = world();
        let bad = failed_after_good(&w, true).await;
        let out = handle(
            &w.rollback,
            event(include_str!(
                "../../../events/rollback/verification-failed.json"
            )),
        )
        .await
        .unwrap();
        assert_eq!(out["outcome"], "started", "{out}");
        assert_eq!(w.target.last().image, format!("{REGISTRY}/acme/web@{GOOD}"));
        let stored = w
            .store
            .deployment(&bad.app, &bad.environment, &bad.id)
            .await
            .unwrap();
        assert_eq!(stored.phase, Phase::RollingBack);
        assert_eq!(
            w.events.types(),
            vec!["Rollback Started", "Rollout Started"]
        );
    }

    #[tokio::test]
    async fn a_repeated_failure_event_rolls_back_once() {
        let w = world();
        failed_after_good(&w, true).await;
        for _ in 0..2 {
            handle(
                &w.rollback,
                event(include_str!("../../../events/rollback/rollout-failed.json")),
            )
            .await
            .unwrap();
        }
        assert_eq!(w.target.started().len(), 1);
    }

    #[tokio::test]
    async fn with_the_verified_image_gone_from_ecr_the_environment_freezes() {
        let w = world();
        let bad = failed_after_good(&w, true).await;
        w.registry.delete("acme/web", &Digest::parse(GOOD).unwrap());
        let out = handle(
            &w.rollback,
            event(include_str!("../../../events/rollback/rollout-failed.json")),
        )
        .await
        .unwrap();
        assert_eq!(out["outcome"], "rollback_failed");
        assert!(w.target.started().is_empty());
        let state = w.store.env_state(&bad.app, &bad.environment).await.unwrap();
        assert!(state.frozen.is_some());
        assert!(state.lease.is_none());
        assert_eq!(
            w.events.types(),
            vec!["Rollback Failed", "Environment Frozen"]
        );
    }

    #[tokio::test]
    async fn with_nothing_verified_the_failure_stands_and_the_environment_is_free() {
        let w = world();
        let bad = failed_after_good(&w, false).await;
        let out = handle(
            &w.rollback,
            event(include_str!("../../../events/rollback/rollout-failed.json")),
        )
        .await
        .unwrap();
        assert_eq!(out["outcome"], "nothing_to_roll_back_to");
        let state = w.store.env_state(&bad.app, &bad.environment).await.unwrap();
        assert!(state.lease.is_none() && state.frozen.is_none());
        assert_eq!(w.events.types(), vec!["Deployment Failed"]);
    }

    #[tokio::test]
    async fn a_manual_rollback_is_refused_while_a_rollout_is_in_flight() {
        let w = world();
        failed_after_good(&w, true).await;
        let err = handle(
            &w.rollback,
            event(include_str!("../../../events/rollback/manual.json")),
        )
        .await
        .unwrap_err();
        assert_eq!(err.error_type(), "NonRetryable.Conflict");
        assert!(
            err.to_string().contains("is in progress on web/staging"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_manual_rollback_to_a_digest_never_verified_is_refused() {
        let w = world();
        let err = handle(
            &w.rollback,
            event(include_str!("../../../events/rollback/manual-digest.json")),
        )
        .await
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("was never verified in web/staging"),
            "{err}"
        );
        assert_eq!(w.store.commits(), 0);
    }
}
