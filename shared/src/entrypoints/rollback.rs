//! The rollback function's entrypoint: a `Rollout Failed`, `Verification Failed` or
//! `Image Revoked` lifecycle event, the reconciler's `Rollback Due` (a failure handed over
//! again), or a rollback request typed in the console.

use lambda_runtime::LambdaEvent;
use serde::Deserialize;
use serde_json::Value;

use super::{Function, check_routed};
use crate::domain::text::{Person, Reason};
use crate::domain::{AppName, DeploymentId, Digest, EnvName, EventType};
use crate::inbound::{Console, Envelope, is_event};
use crate::lambda::respond;
use crate::services::rollback::ManualRollback;
use crate::services::{InputError, Rollback, ServiceError};

/// What the rollback function is asked to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// A deployment failed: roll it back to the last verified digest.
    Failure {
        app: AppName,
        environment: EnvName,
        deployment: DeploymentId,
    },
    /// A person revoked a digest: roll back where it runs.
    Revoked {
        app: AppName,
        environment: EnvName,
        digest: Digest,
    },
    /// A person asks for a rollback now.
    Manual(ManualRollback),
}

/// `{"app": "web", "environment": "staging"}`, optionally with a verified `"digest"`.
#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Action {
    Rollback,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackRequest {
    app: AppName,
    environment: EnvName,
    #[serde(default)]
    digest: Option<Digest>,
    #[serde(default)]
    requested_by: Option<Person>,
    #[serde(default)]
    reason: Option<Reason>,
}

pub const CONSOLE: Console = Console {
    function: "the rollback function",
    default_action: Some("rollback"),
    actions: &["rollback"],
    missing: |_, field| {
        matches!(field, "app" | "environment")
            .then(|| "a rollback needs the \"app\" and \"environment\" to roll back".into())
    },
};

pub fn parse(payload: Value) -> Result<Input, InputError> {
    if !is_event(&payload) {
        let (Action::Rollback, fields) = CONSOLE.read(payload)?;
        let r: RollbackRequest = fields.read()?;
        return Ok(Input::Manual(ManualRollback {
            app: r.app,
            environment: r.environment,
            digest: r.digest,
            requested_by: r.requested_by.map(Person::into_string),
            reason: r.reason.map(Reason::into_string),
        }));
    }
    let envelope = Envelope::read(payload)?;
    check_routed(Function::Rollback, &envelope)?;
    let (kind, detail) = envelope.lifecycle()?;
    if kind == EventType::ImageRevoked {
        let digest = detail.digest.ok_or_else(|| InputError::Field {
            what: format!("\"{kind}\" event detail"),
            field: Some("detail.digest".into()),
            problem: "the event names no digest".into(),
        })?;
        return Ok(Input::Revoked {
            app: detail.app,
            environment: detail.environment,
            digest,
        });
    }
    let deployment = detail
        .deployment_id
        .ok_or_else(|| super::no_deployment_id(kind))?;
    Ok(Input::Failure {
        app: detail.app,
        environment: detail.environment,
        deployment,
    })
}

pub async fn run(rollback: &Rollback, input: Input) -> Result<Value, ServiceError> {
    match input {
        Input::Failure {
            app,
            environment,
            deployment,
        } => respond(&rollback.on_failure(&app, &environment, &deployment).await?),
        Input::Revoked {
            app,
            environment,
            digest,
        } => respond(&rollback.on_revoked(&app, &environment, &digest).await?),
        Input::Manual(request) => respond(&rollback.manual(&request).await?),
    }
}

/// What Lambda calls.
pub async fn handle(rollback: &Rollback, event: LambdaEvent<Value>) -> Result<Value, ServiceError> {
    run(rollback, parse(event.payload)?).await
}

#[cfg(test)]
mod tests {

    use crate::domain::{
        Deployment, DeploymentId, Digest, Kind, Phase, PinnedImage, Request, Step,
    };
    use crate::fakes::{FakeRegistry, FakeTarget, ManualClock, MemoryStore, RecordingPublisher};
    use crate::ports::{Clock, Commit, StateStore};

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
        let w = crate::fakes::World::sample();
        World {
            rollback: w.rollback(),
            store: w.store,
            target: w.target,
            events: w.events,
            registry: w.registry,
            clock: w.clock,
        }
    }

    /// Staging verified GOOD, then BAD (the sample events' deployment) failed verification.
    async fn failed_after_good(w: &World, verified: bool) -> Deployment {
        let app = crate::fakes::app("web");
        let env = crate::fakes::env_name("staging");
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
        crate::fakes::invocation(json)
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
    async fn the_revoked_sample_rolls_back_the_environment_running_it() {
        let w = world();
        let app = crate::fakes::app("web");
        let env = crate::fakes::env_name("staging");
        // Staging verified GOOD, then BAD, which runs; then BAD is revoked.
        let mut state = w.store.env_state(&app, &env).await.unwrap();
        for digest in [GOOD, BAD] {
            let mut d = Deployment::new(
                app.clone(),
                env.clone(),
                Request {
                    image: PinnedImage::parse(&format!("{REGISTRY}/acme/web@{digest}")).unwrap(),
                    tag: None,
                    kind: Kind::Push,
                    pushed_at: w.clock.now(),
                    requested_by: None,
                    reason: None,
                },
                w.clock.now(),
            );
            state.start(&mut d);
            state.record_verified(&d, w.clock.now());
            state.release(&d.id);
            w.store
                .commit(Commit::env(&mut state).with(&mut d))
                .await
                .unwrap();
            w.registry
                .push("acme/web", None, &Digest::parse(digest).unwrap());
        }
        let bad = Digest::parse(BAD).unwrap();
        state.revoke(&bad, "alice", "CVE-2026-1234", w.clock.now());
        w.store.commit(Commit::env(&mut state)).await.unwrap();
        let sample = include_str!("../../../events/rollback/image-revoked.json");
        let out = handle(&w.rollback, event(sample)).await.unwrap();
        assert_eq!(out["outcome"], "started", "{out}");
        assert_eq!(w.target.last().image, format!("{REGISTRY}/acme/web@{GOOD}"));
        // Delivered again: nothing more starts.
        let again = handle(&w.rollback, event(sample)).await.unwrap();
        assert_eq!(again["outcome"], "not_rolled_back", "{again}");
        assert_eq!(w.target.started().len(), 1);
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
