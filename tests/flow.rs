//! The SSM path against a moto server, with the real AWS adapters: each scenario drives the
//! chain by handing every function the event the previous one published, as the rules of
//! `template.yaml` route them. moto sends no ECR or SSM events, so the test sends those the
//! way AWS would.

use pushdeploy::adapters::ssm::status_from_event;
use pushdeploy::domain::{Digest, Phase};
use pushdeploy::inbound;
use pushdeploy::ports::TargetRef;
use pushdeploy::services::ServiceError;
use pushdeploy::services::deploy::{ManualDeploy, Wanted};
use pushdeploy::services::rollout::{EnvOutcome, EnvResult};
use pushdeploy::services::track::TrackOutcome;
use pushdeploy::services::verify::VerifyOutcome;
use pushdeploy_tests::{World, digest, names};
use serde_json::Value;

const CONFIG: &str = r#"
apps:
  web:
    repository: acme/web
    environments:
      staging:
        deploy_on_push: { tags: ["v*"] }
        target: { ssm: { instances: { tag: { Role: web-staging } }, container: web, ports: ["80:8000"] } }
        smoke:
          checks: [ { url: "{smoke}", expect_status: 200, body_contains: "ok", timeout_seconds: 2 } ]
          within_seconds: 3
"#;

async fn world() -> World {
    World::start(CONFIG)
        .await
        .expect("moto and the resources of template.yaml start")
}

/// An ECR push event reaches the deployer.
async fn push(w: &World, tag: &str, d: &Digest) -> Vec<EnvResult> {
    let event = w.push(tag, d).await.unwrap();
    on_push_event(w, event).await.unwrap()
}

async fn on_push_event(w: &World, event: Value) -> Result<Vec<EnvResult>, ServiceError> {
    let envelope = inbound::envelope(event)?;
    let push = inbound::ecr_push(&envelope)?.expect("a successful push");
    w.deployer.on_push(&push).await
}

/// SSM reports the last started rollout's command as `status` (an SSM status-change event).
async fn ssm_reports(w: &World, status: &str) -> TrackOutcome {
    let started = w.published.last_detail("Rollout Started");
    let (app, env) = (started.app.clone(), started.environment.clone());
    let dep = w
        .deployer
        .core
        .store
        .deployment(&app, &env, started.deployment_id.as_ref().unwrap())
        .await
        .unwrap();
    let target_ref = TargetRef::parse(dep.target_ref.as_deref().unwrap()).unwrap();
    w.tracker
        .on_status(&target_ref, Some(status_from_event(status)))
        .await
        .unwrap()
}

/// "Rollout Succeeded" reaches the verifier.
async fn verify(w: &World) -> VerifyOutcome {
    let d = w.published.last_detail("Rollout Succeeded");
    w.verifier
        .on_rollout_succeeded(&d.app, &d.environment, d.deployment_id.as_ref().unwrap())
        .await
        .unwrap()
}

/// A failure event reaches the rollback function.
async fn roll_back(w: &World, detail_type: &str) {
    let d = w.published.last_detail(detail_type);
    w.rollback
        .on_failure(&d.app, &d.environment, d.deployment_id.as_ref().unwrap())
        .await
        .unwrap();
}

/// "Deployment Verified" (or another release event) reaches the deployer.
async fn environment_free(w: &World, detail_type: &str) -> Option<EnvResult> {
    let d = w.published.last_detail(detail_type);
    w.deployer
        .on_environment_free(&d.app, &d.environment)
        .await
        .unwrap()
}

async fn deploy_and_verify(w: &World, tag: &str, d: &Digest) {
    push(w, tag, d).await;
    ssm_reports(w, "Success").await;
    assert!(matches!(verify(w).await, VerifyOutcome::Verified { .. }));
}

fn images(commands: &[(String, String)]) -> Vec<String> {
    commands
        .iter()
        .map(|(_, image)| image.rsplit('@').next().unwrap()[7..8].to_owned())
        .collect()
}

#[tokio::test]
async fn a_push_rolls_out_by_digest_and_is_verified() {
    let w = world().await;
    let results = push(&w, "v1.0.0", &digest('a')).await;
    assert!(
        matches!(results[0].outcome, EnvOutcome::Started { .. }),
        "{results:?}"
    );
    let commands = w.commands().await.unwrap();
    assert_eq!(commands.len(), 1);
    assert_eq!(
        commands[0].1,
        format!(
            "123456789012.dkr.ecr.us-east-1.amazonaws.com/acme/web@{}",
            digest('a')
        ),
        "the host is told the digest, never the tag"
    );
    assert!(matches!(
        ssm_reports(&w, "Success").await,
        TrackOutcome::Succeeded { .. }
    ));
    assert!(matches!(verify(&w).await, VerifyOutcome::Verified { .. }));
    let status = &w.control.status(None, None).await.unwrap()[0];
    assert_eq!(status.last_verified.as_ref().unwrap().digest, digest('a'));
    assert!(status.in_flight.is_none());
    assert_eq!(status.deployments[0].phase, Phase::Verified);
    assert_eq!(
        w.published.types(),
        vec![
            "Rollout Started",
            "Rollout Succeeded",
            "Verification Started",
            "Deployment Verified"
        ]
    );
}

#[tokio::test]
async fn a_failed_smoke_test_rolls_back_to_the_previous_verified_digest() {
    let w = world().await;
    deploy_and_verify(&w, "v1", &digest('a')).await;
    push(&w, "v2", &digest('b')).await;
    ssm_reports(&w, "Success").await;
    w.endpoint.answer(500, "boom");
    let outcome = verify(&w).await;
    let VerifyOutcome::Failed { reason, .. } = outcome else {
        panic!("{outcome:?}")
    };
    assert!(reason.contains("status 500 (expected 200)"), "{reason}");
    roll_back(&w, "Verification Failed").await;
    assert_eq!(
        images(&w.commands().await.unwrap()),
        vec!["a", "b", "a"],
        "the rollback redeploys the verified digest"
    );
    w.endpoint.answer(200, "ok");
    ssm_reports(&w, "Success").await;
    assert!(matches!(verify(&w).await, VerifyOutcome::Verified { .. }));

    let status = &w.control.status(None, None).await.unwrap()[0];
    assert_eq!(status.current.as_ref().unwrap().digest, digest('a'));
    assert_eq!(status.last_verified.as_ref().unwrap().digest, digest('a'));
    assert!(
        status
            .quarantined
            .iter()
            .any(|q| q.digest == digest('b').as_str())
    );
    let failed = status
        .deployments
        .iter()
        .find(|d| d.digest == digest('b'))
        .unwrap();
    assert_eq!(failed.phase, Phase::RolledBack);
    assert!(
        w.published
            .types()
            .ends_with(&["Deployment Verified", "Rollback Succeeded"])
    );
}

#[tokio::test]
async fn a_repeated_event_or_another_tag_on_the_same_digest_starts_one_rollout() {
    let w = world().await;
    let event = w.push("v1", &digest('a')).await.unwrap();
    on_push_event(&w, event.clone()).await.unwrap();
    let again = on_push_event(&w, event).await.unwrap();
    assert!(
        matches!(&again[0].outcome, EnvOutcome::Skipped { reason, .. }
            if reason.contains("already handled") || reason.contains("being rolled out now")),
        "{again:?}"
    );
    let retagged = push(&w, "v1-final", &digest('a')).await;
    assert!(
        matches!(&retagged[0].outcome, EnvOutcome::Skipped { .. }),
        "{retagged:?}"
    );
    ssm_reports(&w, "Success").await;
    verify(&w).await;
    push(&w, "v1-latest", &digest('a')).await;
    assert_eq!(w.commands().await.unwrap().len(), 1);
}

#[tokio::test]
async fn pushes_during_a_rollout_are_queued_and_only_the_newest_runs_next() {
    let w = world().await;
    push(&w, "v1", &digest('a')).await;
    for (tag, c) in [("v2", 'b'), ("v3", 'c'), ("v4", 'd')] {
        let results = push(&w, tag, &digest(c)).await;
        assert!(
            matches!(results[0].outcome, EnvOutcome::Queued { .. }),
            "{results:?}"
        );
    }
    assert_eq!(
        w.commands().await.unwrap().len(),
        1,
        "nothing starts while a rollout holds the environment"
    );
    ssm_reports(&w, "Success").await;
    verify(&w).await;
    let next = environment_free(&w, "Deployment Verified").await.unwrap();
    assert!(
        matches!(next.outcome, EnvOutcome::Started { .. }),
        "{next:?}"
    );
    assert_eq!(images(&w.commands().await.unwrap()), vec!["a", "d"]);
    assert!(
        environment_free(&w, "Deployment Verified").await.is_none(),
        "b and c never run"
    );
}

#[tokio::test]
async fn a_failed_rollback_freezes_the_environment_and_later_pushes_do_not_deploy() {
    let w = world().await;
    deploy_and_verify(&w, "v1", &digest('a')).await;
    push(&w, "v2", &digest('b')).await;
    ssm_reports(&w, "Success").await;
    w.endpoint.answer(503, "down");
    verify(&w).await;
    roll_back(&w, "Verification Failed").await;
    assert!(
        matches!(ssm_reports(&w, "Failed").await, TrackOutcome::Failed { .. }),
        "the rollback's own command fails"
    );
    roll_back(&w, "Rollout Failed").await;

    let status = &w.control.status(None, None).await.unwrap()[0];
    assert!(
        status.frozen.as_ref().unwrap().reason.contains("rollback"),
        "{:?}",
        status.frozen
    );
    assert!(status.in_flight.is_none());
    let original = status
        .deployments
        .iter()
        .find(|d| d.digest == digest('b'))
        .unwrap();
    assert_eq!(original.phase, Phase::RollbackFailed);
    assert!(
        w.published
            .types()
            .ends_with(&["Rollback Failed", "Environment Frozen"])
    );

    let commands_before = w.commands().await.unwrap().len();
    let results = push(&w, "v3", &digest('c')).await;
    assert!(
        matches!(&results[0].outcome, EnvOutcome::Skipped { reason, .. } if reason.contains("frozen"))
    );
    assert_eq!(
        w.commands().await.unwrap().len(),
        commands_before,
        "no further rollout, no further rollback"
    );
}

#[tokio::test]
async fn bad_input_gets_a_clear_error_and_changes_no_row() {
    let w = world().await;
    deploy_and_verify(&w, "v1", &digest('a')).await;
    let rows = w.table_snapshot().await.unwrap();
    let commands = w.commands().await.unwrap().len();

    let malformed = serde_json::json!({ "id": "x", "source": "aws.ecr", "detail-type": "ECR Image Action", "detail": { "action-type": "PUSH" } });
    let err = inbound::envelope(malformed)
        .and_then(|e| inbound::ecr_push(&e))
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("malformed \"ECR Image Action\" event detail"),
        "{err}"
    );

    let mut short = w.push("v9", &digest('e')).await.unwrap();
    short["detail"]["image-digest"] = format!("sha256:{}", "e".repeat(63)).into();
    let err = on_push_event(&w, short).await.unwrap_err();
    assert!(err.to_string().contains("found 63 hex characters"), "{err}");

    let mut hostile = w.push("v9", &digest('e')).await.unwrap();
    hostile["detail"]["image-tag"] = "v9;$(reboot)".into();
    let err = on_push_event(&w, hostile).await.unwrap_err();
    assert!(err.to_string().contains("tag \"v9;$(reboot)\""), "{err}");

    let (_, env) = names("web", "staging");
    let unknown = ManualDeploy {
        app: inbound::app_name("shop").unwrap(),
        environment: env,
        wanted: Wanted::Tag(inbound::tag("v1").unwrap()),
        requested_by: None,
        reason: None,
    };
    let err = w.deployer.manual(&unknown).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "unknown app \"shop\"; configured apps: web"
    );

    w.put_config("apps:\n  web:\n    repository: Acme/Web\n    environments: {}\n")
        .await
        .unwrap();
    let err = on_push_event(&w, w.push("v2", &digest('b')).await.unwrap())
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("SSM parameter /pushdeploy/config"),
        "{message}"
    );
    assert!(message.contains("apps.web.repository"), "{message}");
    assert!(
        message.contains("apps.web.environments: an app needs at least one environment"),
        "{message}"
    );
    assert_eq!(err.error_type(), "NonRetryable.Configuration");

    assert_eq!(
        w.table_snapshot().await.unwrap(),
        rows,
        "no table row changed"
    );
    assert_eq!(
        w.commands().await.unwrap().len(),
        commands,
        "nothing was sent to any host"
    );
}

const PROMOTION_CONFIG: &str = r#"
apps:
  web:
    repository: acme/web
    environments:
      staging:
        deploy_on_push: { tags: ["v*"] }
        target: { ssm: { instances: { tag: { Role: web-staging } }, container: web, ports: ["80:8000"] } }
        smoke:
          checks: [ { url: "{smoke}", expect_status: 200, body_contains: "ok", timeout_seconds: 2 } ]
          within_seconds: 3
      production:
        promote_from: staging
        approval: required
        target: { ssm: { instances: { tag: { Role: web-production } }, container: web, ports: ["80:8000"] } }
        smoke:
          checks: [ { url: "{smoke}", expect_status: 200, body_contains: "ok", timeout_seconds: 2 } ]
          within_seconds: 3
"#;

/// "Deployment Verified" reaches the deployer, which promotes what it names.
async fn promote_verified(w: &World) -> Vec<pushdeploy::services::promote::Promoted> {
    let d = w.published.last_detail("Deployment Verified");
    w.deployer
        .on_source_verified(&pushdeploy::services::promote::Verified {
            app: d.app.clone(),
            environment: d.environment.clone(),
            image: d.image.clone().unwrap(),
            tag: d.tag.clone(),
            kind: d.kind.unwrap(),
            pushed_at: d.pushed_at.unwrap(),
            event_id: format!("verified-{}", d.deployment_id.unwrap()),
        })
        .await
        .unwrap()
}

#[tokio::test]
async fn staging_to_production_with_an_approval_deploys_the_exact_digest_verified_in_staging() {
    let w = World::start(PROMOTION_CONFIG).await.unwrap();
    let (app, production) = names("web", "production");
    deploy_and_verify(&w, "v1.0.0", &digest('a')).await;
    let promoted = promote_verified(&w).await;
    assert!(
        matches!(
            promoted[0].result.outcome,
            EnvOutcome::Pending {
                waiting_for: pushdeploy::domain::approval::Waiting::Approval,
                ..
            }
        ),
        "{promoted:?}"
    );
    assert_eq!(
        w.commands().await.unwrap().len(),
        1,
        "production waits: staging's command only"
    );
    // The tag moves on in the meantime: v1.0.0 now names another image. The approval is
    // for the digest, not the tag.
    w.push("v1.0.0", &digest('b')).await.unwrap();

    let pending = w.control.list_pending(Some(&app)).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].digest, digest('a'));
    let wrong = w
        .control
        .approve(&app, &production, &digest('b'), "alice")
        .await
        .unwrap_err();
    assert!(
        wrong.to_string().contains("is not the promotion waiting"),
        "{wrong}"
    );
    w.control
        .approve(&app, &production, &digest('a'), "alice")
        .await
        .unwrap();
    let approved = w.published.last_detail("Promotion Approved");
    assert_eq!(approved.by.as_deref(), Some("alice"));
    let started = w
        .deployer
        .on_approved(&app, &production, &digest('a'), "approved-1")
        .await
        .unwrap()
        .expect("the approved promotion starts");
    assert!(
        matches!(started.outcome, EnvOutcome::Started { .. }),
        "{started:?}"
    );
    let commands = w.commands().await.unwrap();
    assert_eq!(commands.len(), 2);
    assert!(
        commands[1]
            .1
            .ends_with(&format!("acme/web@{}", digest('a'))),
        "production gets the digest staging verified: {}",
        commands[1].1
    );
    assert!(matches!(
        ssm_reports(&w, "Success").await,
        TrackOutcome::Succeeded { .. }
    ));
    assert!(matches!(verify(&w).await, VerifyOutcome::Verified { .. }));
    let status = w
        .control
        .status(Some(&app), Some(&production))
        .await
        .unwrap();
    let production_status = &status[0];
    assert_eq!(
        production_status.last_verified.as_ref().unwrap().digest,
        digest('a')
    );
    let promotion = &production_status.deployments[0];
    assert_eq!(promotion.kind, pushdeploy::domain::Kind::Promotion);
    assert_eq!(promotion.requested_by.as_deref(), Some("alice"));
    assert!(
        promotion
            .reason
            .as_deref()
            .unwrap()
            .contains("verified in staging; approved by alice at"),
        "{:?}",
        promotion.reason
    );
    // Production's own verification promotes nothing further.
    assert!(promote_verified(&w).await.is_empty());
}
