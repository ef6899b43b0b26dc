//! Turns what the deployer receives into a use case: an ECR push, a lifecycle event saying
//! an environment is free again (and, once verified, its ECR tag moves), or a deploy
//! request typed in the console.

use lambda_runtime::LambdaEvent;
use pushdeploy::domain::EventType;
use pushdeploy::inbound::{self, Envelope};
use pushdeploy::lambda::{logged, respond};
use pushdeploy::services::deploy::{ManualDeploy, Wanted};
use pushdeploy::services::promote::{ManualPromotion, Verified};
use pushdeploy::services::{Deployer, ServiceError};
use serde::Deserialize;
use serde_json::{Value, json};

/// `{"app": "web", "environment": "staging", "tag": "v1.2.3"}` (or `"digest"` instead of
/// `"tag"`), or `{"action": "promote", "app": "web", "from": "staging", "to": "production"}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeployPayload {
    #[serde(default)]
    action: Option<String>,
    app: String,
    environment: Option<String>,
    from: Option<String>,
    to: Option<String>,
    tag: Option<String>,
    digest: Option<String>,
    requested_by: Option<String>,
    reason: Option<String>,
}

pub async fn handle(deployer: &Deployer, event: LambdaEvent<Value>) -> Result<Value, ServiceError> {
    logged(dispatch(deployer, event.payload).await)
}

async fn dispatch(deployer: &Deployer, payload: Value) -> Result<Value, ServiceError> {
    if !inbound::is_event(&payload) {
        let p: DeployPayload = inbound::payload(payload, "deploy")?;
        if p.action.as_deref() == Some("promote") {
            let request = promotion_request(p)?;
            return respond(&deployer.promote_by_hand(&request).await?);
        }
        let request = manual_request(p)?;
        return respond(&deployer.manual(&request).await?);
    }
    let envelope = inbound::envelope(payload)?;
    match (envelope.source.as_str(), envelope.detail_type.as_str()) {
        ("aws.ecr", "ECR Image Action") => match inbound::ecr_push(&envelope)? {
            None => {
                respond(&json!({ "outcome": "ignored", "reason": "not a successful image push" }))
            }
            Some(push) => respond(&json!({ "results": deployer.on_push(&push).await? })),
        },
        ("pushdeploy", _) => on_lifecycle(deployer, &envelope).await,
        (source, detail_type) => Err(ServiceError::Invalid(format!(
            "the deployer does not handle {detail_type:?} events from {source:?}"
        ))),
    }
}

/// An environment became free (its deployment ended, or it was unfrozen): start the
/// newest queued image.
async fn on_lifecycle(deployer: &Deployer, envelope: &Envelope) -> Result<Value, ServiceError> {
    let (kind, detail) = inbound::lifecycle(envelope)?;
    match kind {
        EventType::DeploymentVerified => {
            let started = deployer
                .on_environment_free(&detail.app, &detail.environment)
                .await?;
            let (Some(image), Some(kind)) = (&detail.image, detail.kind) else {
                return Err(ServiceError::Invalid(
                    "a \"Deployment Verified\" event must name its image and kind".into(),
                ));
            };
            let promoted = deployer
                .on_source_verified(&Verified {
                    app: detail.app.clone(),
                    environment: detail.environment.clone(),
                    image: image.clone(),
                    tag: detail.tag.clone(),
                    kind,
                    pushed_at: detail.pushed_at.unwrap_or(detail.at),
                    event_id: envelope.id.clone(),
                })
                .await?;
            let tag = deployer
                .on_verified(&detail.app, &detail.environment, &image.digest)
                .await?;
            respond(&json!({ "queued": started, "promoted": promoted, "ecr_tag": tag }))
        }
        EventType::PromotionApproved => {
            let digest = detail.digest.as_ref().ok_or_else(|| {
                ServiceError::Invalid("a \"Promotion Approved\" event must name its digest".into())
            })?;
            let started = deployer
                .on_approved(&detail.app, &detail.environment, digest, &envelope.id)
                .await?;
            respond(&json!({ "approved": started }))
        }
        EventType::DeploymentFailed | EventType::EnvironmentUnfrozen => {
            let started = deployer
                .on_environment_free(&detail.app, &detail.environment)
                .await?;
            respond(&json!({ "queued": started }))
        }
        other => Err(ServiceError::Invalid(format!(
            "the deployer does not handle \"{other}\" events"
        ))),
    }
}

fn promotion_request(p: DeployPayload) -> Result<ManualPromotion, ServiceError> {
    let (Some(from), Some(to), None, None, None) =
        (&p.from, &p.to, &p.environment, &p.tag, &p.digest)
    else {
        return Err(ServiceError::Invalid(
            "\"promote\" takes \"app\", \"from\" and \"to\" (the digest is the one last verified in \"from\"), and no \"environment\", \"tag\" or \"digest\"".into(),
        ));
    };
    Ok(ManualPromotion {
        app: inbound::app_name(&p.app)?,
        from: inbound::env_name(from)?,
        to: inbound::env_name(to)?,
        requested_by: p.requested_by,
    })
}

fn manual_request(p: DeployPayload) -> Result<ManualDeploy, ServiceError> {
    if let Some(action) = p.action.as_deref().filter(|a| *a != "deploy") {
        return Err(ServiceError::Invalid(format!(
            "unknown action {action:?}; the deployer accepts \"deploy\" and \"promote\""
        )));
    }
    if p.from.is_some() || p.to.is_some() {
        return Err(ServiceError::Invalid(
            "\"from\" and \"to\" belong to \"action\": \"promote\"".into(),
        ));
    }
    let environment = p.environment.as_deref().ok_or_else(|| {
        ServiceError::Invalid("a deploy needs the \"environment\" to deploy to".into())
    })?;
    let wanted = match (p.tag.as_deref(), p.digest.as_deref()) {
        (Some(tag), None) => Wanted::Tag(inbound::tag(tag)?),
        (None, Some(digest)) => Wanted::Digest(inbound::digest(digest)?),
        _ => {
            return Err(ServiceError::Invalid(
                "give exactly one of \"tag\" or \"digest\"".into(),
            ));
        }
    };
    Ok(ManualDeploy {
        app: inbound::app_name(&p.app)?,
        environment: inbound::env_name(environment)?,
        wanted,
        requested_by: p.requested_by,
        reason: p.reason,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use lambda_runtime::Context;
    use pushdeploy::domain::{Digest, Phase};
    use pushdeploy::fakes::{
        FakeRegistry, FakeTarget, FixedConfig, ManualClock, MemoryStore, RecordingPublisher,
    };
    use pushdeploy::services::Core;
    use time::macros::datetime;

    use super::*;

    struct World {
        deployer: Deployer,
        store: MemoryStore,
        target: FakeTarget,
        events: RecordingPublisher,
        registry: FakeRegistry,
        clock: ManualClock,
    }

    fn world() -> World {
        world_with(include_str!("../../../events/config.yaml"))
    }

    fn world_with(config: &str) -> World {
        let store = MemoryStore::default();
        let target = FakeTarget::default();
        let events = RecordingPublisher::default();
        let registry = FakeRegistry::new("123456789012.dkr.ecr.eu-west-1.amazonaws.com");
        let clock = ManualClock::new(datetime!(2026-11-20 10:00 UTC));
        let deployer = Deployer {
            core: Core {
                store: Arc::new(store.clone()),
                events: Arc::new(events.clone()),
                config: Arc::new(FixedConfig::yaml(config)),
                clock: Arc::new(clock.clone()),
            },
            registry: Arc::new(registry.clone()),
            target: Arc::new(target.clone()),
            tags: Arc::new(registry.clone()),
        };
        World {
            deployer,
            store,
            target,
            events,
            registry,
            clock,
        }
    }

    fn event(json: &str) -> LambdaEvent<Value> {
        LambdaEvent::new(
            serde_json::from_str(json).expect("sample event is JSON"),
            Context::default(),
        )
    }

    fn app_env(env: &str) -> (pushdeploy::domain::AppName, pushdeploy::domain::EnvName) {
        (
            inbound::app_name("web").unwrap(),
            inbound::env_name(env).unwrap(),
        )
    }

    #[tokio::test]
    async fn an_ecr_push_of_a_matching_tag_rolls_out_the_digest_to_staging() {
        let w = world();
        let out = handle(
            &w.deployer,
            event(include_str!("../../../events/deployer/ecr-push.json")),
        )
        .await
        .unwrap();
        assert_eq!(out["results"][0]["outcome"], "started");
        assert_eq!(out["results"][0]["environment"], "staging");
        let started = w.target.last();
        assert!(started.image.ends_with(
            "/acme/web@sha256:3f2c7b1d9e8a4c6b5d0e1f2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e"
        ));
        assert!(
            started
                .image
                .starts_with("123456789012.dkr.ecr.eu-west-1.amazonaws.com/")
        );
        let (app, env) = app_env("staging");
        assert_eq!(w.store.deployments(&app, &env)[0].phase, Phase::RollingOut);
        assert_eq!(w.events.types(), vec!["Rollout Started"]);
    }

    #[tokio::test]
    async fn the_same_push_delivered_twice_starts_one_rollout() {
        let w = world();
        for _ in 0..2 {
            handle(
                &w.deployer,
                event(include_str!("../../../events/deployer/ecr-push.json")),
            )
            .await
            .unwrap();
        }
        assert_eq!(w.target.started().len(), 1);
    }

    #[tokio::test]
    async fn an_untagged_push_deploys_nothing_by_default() {
        let w = world();
        let out = handle(
            &w.deployer,
            event(include_str!(
                "../../../events/deployer/ecr-push-untagged.json"
            )),
        )
        .await
        .unwrap();
        assert_eq!(out["results"], json!([]));
        assert!(w.target.started().is_empty());
    }

    #[tokio::test]
    async fn a_push_to_a_repository_no_app_names_is_ignored_without_error() {
        let w = world();
        let out = handle(
            &w.deployer,
            event(include_str!(
                "../../../events/deployer/ecr-push-other-repository.json"
            )),
        )
        .await
        .unwrap();
        assert_eq!(out["results"], json!([]));
        assert_eq!(w.store.commits(), 0);
    }

    #[tokio::test]
    async fn a_manual_tag_is_resolved_to_its_digest_before_rollout() {
        let w = world();
        let digest = Digest::parse(&format!("sha256:{}", "7".repeat(64))).unwrap();
        w.registry.push("acme/web", Some("v1.2.3"), &digest);
        let out = handle(
            &w.deployer,
            event(include_str!("../../../events/deployer/manual-tag.json")),
        )
        .await
        .unwrap();
        assert_eq!(out["outcome"], "started", "{out}");
        assert!(
            w.target
                .last()
                .image
                .ends_with(&format!("acme/web@{digest}"))
        );
        let (app, env) = app_env("production");
        let dep = &w.store.deployments(&app, &env)[0];
        assert_eq!(dep.tag.as_ref().unwrap().as_str(), "v1.2.3");
        assert_eq!(dep.requested_by.as_deref(), Some("alice"));
    }

    #[tokio::test]
    async fn a_manual_digest_must_exist_in_the_registry() {
        let w = world();
        let err = handle(
            &w.deployer,
            event(include_str!("../../../events/deployer/manual-digest.json")),
        )
        .await
        .unwrap_err();
        assert_eq!(err.error_type(), "NonRetryable.NotFound");
        assert!(
            err.to_string().contains("not found in repository acme/web"),
            "{err}"
        );
        assert_eq!(w.store.commits(), 0);
    }

    #[tokio::test]
    async fn bad_console_input_is_refused_with_a_reason_and_writes_nothing() {
        let w = world();
        let cases = [
            (
                include_str!("../../../events/deployer/manual-hostile-tag.json"),
                "v1;$(reboot)",
            ),
            (
                include_str!("../../../events/deployer/manual-bad-digest.json"),
                "found 63 hex characters",
            ),
            (
                r#"{"app": "shop", "environment": "staging", "tag": "v1"}"#,
                "unknown app \"shop\"; configured apps: web",
            ),
            (
                r#"{"app": "web", "environment": "qa", "tag": "v1"}"#,
                "has no environment \"qa\"",
            ),
            (
                r#"{"app": "web", "environment": "staging"}"#,
                "exactly one of \"tag\" or \"digest\"",
            ),
            (
                r#"{"app": "web", "environment": "staging", "tagg": "v1"}"#,
                "unknown field `tagg`",
            ),
        ];
        for (input, expected) in cases {
            let err = handle(&w.deployer, event(input)).await.unwrap_err();
            assert_eq!(err.error_type(), "NonRetryable.InvalidInput", "{input}");
            assert!(err.to_string().contains(expected), "{input}: {err}");
        }
        assert_eq!(w.store.commits(), 0);
        assert!(w.events.events().is_empty());
    }

    #[tokio::test]
    async fn an_environment_freed_up_starts_its_queued_image() {
        let w = world();
        handle(
            &w.deployer,
            event(include_str!("../../../events/deployer/ecr-push.json")),
        )
        .await
        .unwrap();
        let second = include_str!("../../../events/deployer/ecr-push.json")
            .replace(
                "3f2c7b1d9e8a4c6b5d0e1f2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e",
                &"9".repeat(64),
            )
            .replace("\"v1.4.0\"", "\"v1.4.1\"")
            .replace("2026-11-20T09:58:00Z", "2026-11-20T09:59:00Z")
            .replace("\"id\": \"", "\"id\": \"2-");
        let out = handle(&w.deployer, event(&second)).await.unwrap();
        assert_eq!(out["results"][0]["outcome"], "queued");
        // The first deployment ends; the lease is free.
        let (app, env) = app_env("staging");
        let mut state = pushdeploy::ports::StateStore::env_state(&w.store, &app, &env)
            .await
            .unwrap();
        let holder = state.holder().unwrap().clone();
        state.release(&holder);
        pushdeploy::ports::StateStore::commit(&w.store, pushdeploy::ports::Commit::env(&mut state))
            .await
            .unwrap();
        let out = handle(
            &w.deployer,
            event(include_str!(
                "../../../events/deployer/deployment-verified.json"
            )),
        )
        .await
        .unwrap();
        assert_eq!(out["queued"]["outcome"], "started", "{out}");
        assert!(w.target.last().image.ends_with(&"9".repeat(64)));
    }

    /// Records `digest` as the last verified image of web/staging.
    async fn verified_in_staging(w: &World, digest: &Digest) {
        use pushdeploy::ports::{Commit, StateStore};
        let (app, env) = app_env("staging");
        let mut dep = pushdeploy::domain::Deployment::new(
            app.clone(),
            env.clone(),
            pushdeploy::domain::Request {
                image: pushdeploy::domain::PinnedImage {
                    registry: w.registry.registry.clone(),
                    repository: pushdeploy::domain::Repository::parse("acme/web").unwrap(),
                    digest: digest.clone(),
                },
                tag: None,
                kind: pushdeploy::domain::Kind::Push,
                pushed_at: datetime!(2026-11-20 09:58 UTC),
                requested_by: None,
                reason: None,
            },
            datetime!(2026-11-20 09:58 UTC),
        );
        let mut state = w.store.env_state(&app, &env).await.unwrap();
        state.record_verified(&dep, datetime!(2026-11-20 10:02 UTC));
        w.store
            .commit(Commit::env(&mut state).with(&mut dep))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_verified_digest_takes_the_environment_tag_and_a_late_event_never_moves_it_back() {
        let w = world();
        let verified_event = include_str!("../../../events/deployer/deployment-verified.json");
        let first = Digest::parse(
            "sha256:3f2c7b1d9e8a4c6b5d0e1f2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e",
        )
        .unwrap();
        let second = Digest::parse(&format!("sha256:{}", "9".repeat(64))).unwrap();
        w.registry.push("acme/web", Some("v1.4.0"), &first);
        w.registry.push("acme/web", Some("v1.4.1"), &second);
        verified_in_staging(&w, &first).await;

        let out = handle(&w.deployer, event(verified_event)).await.unwrap();
        assert_eq!(out["ecr_tag"]["outcome"], "moved", "{out}");
        assert_eq!(out["ecr_tag"]["tag"], "staging");
        assert_eq!(
            w.registry.tagged("acme/web", "staging"),
            Some(first.clone())
        );
        let again = handle(&w.deployer, event(verified_event)).await.unwrap();
        assert_eq!(again["ecr_tag"]["outcome"], "already_there", "{again}");

        // A newer digest was verified since: the late event about the first changes nothing.
        verified_in_staging(&w, &second).await;
        let late = handle(&w.deployer, event(verified_event)).await.unwrap();
        assert_eq!(late["ecr_tag"]["outcome"], "skipped", "{late}");
        assert!(
            late["ecr_tag"]["reason"]
                .as_str()
                .unwrap()
                .contains("no longer the last verified digest"),
            "{late}"
        );
        assert_eq!(
            w.registry.tagged("acme/web", "staging"),
            Some(first.clone())
        );

        // On a repository with immutable tags the move is skipped with a warning, and the
        // event is still handled.
        w.registry.set_immutable("acme/web");
        let newer = verified_event.replace(first.as_str(), second.as_str());
        let out = handle(&w.deployer, event(&newer)).await.unwrap();
        assert_eq!(out["ecr_tag"]["outcome"], "skipped", "{out}");
        assert!(
            out["ecr_tag"]["reason"]
                .as_str()
                .unwrap()
                .contains("immutable tags"),
            "{out}"
        );
        assert_eq!(w.registry.tagged("acme/web", "staging"), Some(first));
    }

    #[tokio::test]
    async fn a_throttled_registry_fails_the_event_so_it_is_retried() {
        let w = world();
        let digest = Digest::parse(
            "sha256:3f2c7b1d9e8a4c6b5d0e1f2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e",
        )
        .unwrap();
        w.registry.push("acme/web", Some("v1.4.0"), &digest);
        verified_in_staging(&w, &digest).await;
        w.registry.throttle(1);
        let err = handle(
            &w.deployer,
            event(include_str!(
                "../../../events/deployer/deployment-verified.json"
            )),
        )
        .await
        .unwrap_err();
        assert!(err.is_retryable(), "{err}");
        let out = handle(
            &w.deployer,
            event(include_str!(
                "../../../events/deployer/deployment-verified.json"
            )),
        )
        .await
        .unwrap();
        assert_eq!(out["ecr_tag"]["outcome"], "moved", "{out}");
    }

    #[tokio::test]
    async fn other_events_are_refused() {
        let w = world();
        let err = handle(
            &w.deployer,
            event(include_str!(
                "../../../events/tracker/ssm-command-success.json"
            )),
        )
        .await
        .unwrap_err();
        assert!(
            err.to_string().contains("the deployer does not handle"),
            "{err}"
        );
    }

    // ------------------------------------------------------------- promotion

    const VERIFIED: &str = include_str!("../../../events/deployer/deployment-verified.json");
    const D1: &str = "sha256:3f2c7b1d9e8a4c6b5d0e1f2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e";

    fn d2() -> String {
        format!("sha256:{}", "9".repeat(64))
    }

    /// The sample "Deployment Verified" of staging, for another digest and event id.
    fn verified_event(digest: &str, id: &str) -> String {
        VERIFIED.replace(D1, digest).replace(
            "7a1d2c3e-0000-4000-8000-000000000001",
            &format!("7a1d2c3e-0000-4000-8000-00000000000{id}"),
        )
    }

    /// An event the deployer published (or control did), as EventBridge delivers it.
    fn delivered(e: &pushdeploy::domain::LifecycleEvent, id: &str) -> String {
        json!({
            "version": "0",
            "id": id,
            "detail-type": e.detail_type.as_str(),
            "source": "pushdeploy",
            "account": "123456789012",
            "time": "2026-11-20T10:02:00Z",
            "region": "eu-west-1",
            "resources": [],
            "detail": e.detail,
        })
        .to_string()
    }

    fn control(w: &World) -> pushdeploy::services::Control {
        pushdeploy::services::Control {
            core: w.deployer.core.clone(),
        }
    }

    async fn production_state(w: &World) -> pushdeploy::domain::EnvState {
        let (app, env) = app_env("production");
        pushdeploy::ports::StateStore::env_state(&w.store, &app, &env)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn auto_promotion_deploys_the_exact_digest_verified_at_the_source() {
        let w = world_with(
            &include_str!("../../../events/config.yaml")
                .replace("approval: required", "approval: auto"),
        );
        let out = handle(&w.deployer, event(VERIFIED)).await.unwrap();
        assert_eq!(out["promoted"][0]["environment"], "production", "{out}");
        assert_eq!(out["promoted"][0]["outcome"], "started", "{out}");
        let started = w.target.last();
        assert!(
            started.image.ends_with(&format!("acme/web@{D1}")),
            "{}",
            started.image
        );
        let (app, env) = app_env("production");
        let dep =
            pushdeploy::ports::StateStore::deployment(&w.store, &app, &env, &started.deployment_id)
                .await
                .unwrap();
        assert_eq!(dep.kind, pushdeploy::domain::Kind::Promotion);
        assert_eq!(dep.reason.as_deref(), Some("verified in staging"));
        // The same event again promotes nothing twice.
        handle(&w.deployer, event(VERIFIED)).await.unwrap();
        assert_eq!(w.target.started().len(), 1);
    }

    #[tokio::test]
    async fn a_rollbacks_verification_promotes_nothing() {
        let w = world_with(
            &include_str!("../../../events/config.yaml")
                .replace("approval: required", "approval: auto"),
        );
        let rollback = VERIFIED.replace("\"kind\": \"push\"", "\"kind\": \"rollback\"");
        let out = handle(&w.deployer, event(&rollback)).await.unwrap();
        assert_eq!(out["promoted"], json!([]), "{out}");
        assert!(w.target.started().is_empty());
    }

    #[tokio::test]
    async fn a_required_approval_holds_the_digest_until_approved_and_records_who() {
        let w = world();
        let out = handle(&w.deployer, event(VERIFIED)).await.unwrap();
        assert_eq!(out["promoted"][0]["outcome"], "pending", "{out}");
        assert_eq!(out["promoted"][0]["waiting_for"], "approval", "{out}");
        assert!(
            w.target.started().is_empty(),
            "nothing deploys before approval"
        );
        let requested = w.events.events().last().cloned().unwrap();
        assert_eq!(requested.detail_type.as_str(), "Approval Requested");
        let detail = requested.deployment().unwrap();
        assert_eq!(detail.digest.as_ref().unwrap().as_str(), D1);
        assert_eq!(detail.expires_at, Some(datetime!(2026-11-23 10:00 UTC)));

        let (app, env) = app_env("production");
        let digest = Digest::parse(D1).unwrap();
        let listed = control(&w).list_pending(None).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].digest, digest);
        control(&w)
            .approve(&app, &env, &digest, "alice")
            .await
            .unwrap();
        let approved = w.events.events().last().cloned().unwrap();
        assert_eq!(approved.detail_type.as_str(), "Promotion Approved");
        assert_eq!(approved.deployment().unwrap().by.as_deref(), Some("alice"));
        assert!(
            w.target.started().is_empty(),
            "the deployer starts it, on the event"
        );

        let out = handle(&w.deployer, event(&delivered(&approved, "approved-1")))
            .await
            .unwrap();
        assert_eq!(out["approved"]["outcome"], "started", "{out}");
        let started = w.target.last();
        assert!(started.image.ends_with(D1));
        let dep =
            pushdeploy::ports::StateStore::deployment(&w.store, &app, &env, &started.deployment_id)
                .await
                .unwrap();
        assert_eq!(dep.requested_by.as_deref(), Some("alice"));
        assert!(
            dep.reason
                .as_deref()
                .unwrap()
                .contains("approved by alice at 2026-11-20T10:00:00Z"),
            "{:?}",
            dep.reason
        );
        let state = production_state(&w).await;
        assert!(state.pending.is_none());
        assert_eq!(state.decisions[0].digest, digest);
        // Approving again says it was approved already, and changes nothing.
        let commits = w.store.commits();
        let err = control(&w)
            .approve(&app, &env, &digest, "bob")
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("already approved by alice"),
            "{err}"
        );
        assert_eq!(w.store.commits(), commits);
        // The approval event delivered again starts nothing more.
        handle(&w.deployer, event(&delivered(&approved, "approved-1")))
            .await
            .unwrap();
        assert_eq!(w.target.started().len(), 1);
    }

    #[tokio::test]
    async fn a_rejected_expired_or_superseded_approval_fails_clearly_and_changes_nothing() {
        let w = world();
        let (app, env) = app_env("production");
        let first = Digest::parse(D1).unwrap();
        let second = Digest::parse(&d2()).unwrap();
        handle(&w.deployer, event(VERIFIED)).await.unwrap();
        handle(&w.deployer, event(&verified_event(&d2(), "2")))
            .await
            .unwrap();
        let commits = w.store.commits();
        let err = control(&w)
            .approve(&app, &env, &first, "alice")
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "the approval of {first} in production was superseded by {second}, verified since; approve {second} instead"
            )
        );
        assert_eq!(err.error_type(), "NonRetryable.Conflict");
        assert_eq!(
            w.store.commits(),
            commits,
            "a refused approval writes nothing"
        );

        // Rejected: gone, and approving it afterwards says who rejected it.
        control(&w)
            .reject(&app, &env, &second, "bob", Some("not during the sale"))
            .await
            .unwrap();
        let rejected = w.events.events().last().cloned().unwrap();
        assert_eq!(rejected.detail_type.as_str(), "Promotion Rejected");
        assert_eq!(
            rejected.deployment().unwrap().reason.as_deref(),
            Some("rejected by bob: not during the sale")
        );
        let err = control(&w)
            .approve(&app, &env, &second, "alice")
            .await
            .unwrap_err();
        assert!(err.to_string().contains("was rejected by bob"), "{err}");

        // Expired: a new verification waits, then the approval comes too late.
        handle(&w.deployer, event(&verified_event(D1, "3")))
            .await
            .unwrap();
        w.clock.advance(std::time::Duration::from_secs(73 * 3600));
        let commits = w.store.commits();
        let err = control(&w)
            .approve(&app, &env, &first, "alice")
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("expired at 2026-11-23T10:00:00Z"),
            "{err}"
        );
        assert_eq!(w.store.commits(), commits);
        assert!(
            production_state(&w).await.pending.is_some(),
            "nothing changed"
        );
        let listed = control(&w).list_pending(None).await.unwrap();
        assert!(listed[0].expired);
        assert!(w.target.started().is_empty());
    }

    #[tokio::test]
    async fn a_tag_pushed_for_production_waits_until_staging_verified_its_digest() {
        let config = include_str!("../../../events/config.yaml")
            .replace("approval: required", "approval: auto")
            .replace(
                "        promote_from: staging\n",
                "        promote_from: staging\n        deploy_on_push: { tags: [\"v*\"] }\n",
            );
        let w = world_with(&config);
        // v1.4.0 is pushed: staging starts it; production may not yet.
        let out = handle(
            &w.deployer,
            event(include_str!("../../../events/deployer/ecr-push.json")),
        )
        .await
        .unwrap();
        let production = out["results"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["environment"] == "production")
            .unwrap()
            .clone();
        assert_eq!(production["outcome"], "pending", "{out}");
        assert_eq!(production["waiting_for"], "verification");
        assert!(
            production["reason"]
                .as_str()
                .unwrap()
                .contains("has not been verified in staging; it deploys once it is"),
            "{production}"
        );
        assert_eq!(w.target.started().len(), 1, "only staging started");
        assert!(
            w.events.types().contains(&"Promotion Pending"),
            "{:?}",
            w.events.types()
        );
        // Staging verifies it: now production gets that exact digest.
        let out = handle(&w.deployer, event(VERIFIED)).await.unwrap();
        assert_eq!(out["promoted"][0]["outcome"], "started", "{out}");
        assert_eq!(w.target.started().len(), 2);
        assert!(w.target.last().image.ends_with(D1));
        // A digest verified in staging whose tag production does not deploy stays out.
        let main = verified_event(&d2(), "2").replace("\"v1.4.0\"", "\"main-42\"");
        let out = handle(&w.deployer, event(&main)).await.unwrap();
        assert_eq!(out["promoted"], json!([]), "{out}");
    }

    #[tokio::test]
    async fn promotion_by_hand_deploys_the_digest_last_verified_in_the_source() {
        let w = world();
        let digest = Digest::parse(&d2()).unwrap();
        w.registry.push("acme/web", Some("v9"), &digest);
        verified_in_staging(&w, &digest).await;
        let out = handle(
            &w.deployer,
            event(include_str!("../../../events/deployer/manual-promote.json")),
        )
        .await
        .unwrap();
        assert_eq!(out["outcome"], "started", "{out}");
        assert_eq!(out["digest"], d2());
        assert!(w.target.last().image.ends_with(&d2()));
        let bad = [
            (
                r#"{"action": "promote", "app": "web", "from": "staging"}"#,
                "takes \"app\", \"from\" and \"to\"",
            ),
            (
                r#"{"action": "promote", "app": "web", "from": "production", "to": "staging"}"#,
                "nothing has been verified in web/production",
            ),
            (
                r#"{"action": "promote", "app": "web", "from": "staging", "to": "qa"}"#,
                "has no environment qa",
            ),
        ];
        for (input, expected) in bad {
            let err = handle(&w.deployer, event(input)).await.unwrap_err();
            assert!(err.to_string().contains(expected), "{input}: {err}");
        }
    }

    #[tokio::test]
    async fn an_approval_event_for_nothing_pending_starts_nothing() {
        let w = world();
        let out = handle(
            &w.deployer,
            event(include_str!(
                "../../../events/deployer/promotion-approved.json"
            )),
        )
        .await
        .unwrap();
        assert_eq!(out["approved"], Value::Null, "{out}");
        assert!(w.target.started().is_empty());
    }
}
