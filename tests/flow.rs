//! The SSM and ECS paths against a moto server, with the real AWS adapters: each scenario
//! drives the chain by handing every function the event the previous one published, as the
//! rules of `template.yaml` route them. moto sends no ECR, SSM or ECS events, so the test
//! sends those the way AWS would.

use pushdeploy::domain::{Digest, Phase};
use pushdeploy::entrypoints::Function;
use pushdeploy::services::ServiceError;
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
    let out = w.deliver(Function::Deployer, event).await?;
    Ok(serde_json::from_value(out["results"].clone()).unwrap())
}

/// The target's handle on the last started rollout.
async fn last_target_ref(w: &World) -> String {
    let started = w.published.last_detail("Rollout Started");
    let (app, env) = (started.app.clone(), started.environment.clone());
    let dep = w
        .deployer
        .core
        .store
        .deployment(&app, &env, started.deployment_id.as_ref().unwrap())
        .await
        .unwrap();
    dep.target_ref.unwrap()
}

/// SSM reports the last started rollout's command as `status`: its status-change event
/// reaches the tracker.
async fn ssm_reports(w: &World, status: &str) -> TrackOutcome {
    let target_ref = last_target_ref(w).await;
    let command = target_ref.strip_prefix("ssm:").expect("an SSM handle");
    tracked(w, w.ssm_event(command, status)).await
}

/// A target's status-change event reaches the tracker.
async fn tracked(w: &World, event: Value) -> TrackOutcome {
    let out = w.deliver(Function::Tracker, event).await.unwrap();
    serde_json::from_value(out).unwrap()
}

/// "Rollout Succeeded" reaches the verifier.
async fn verify(w: &World) -> VerifyOutcome {
    let out = w
        .deliver(Function::Verifier, w.published_event("Rollout Succeeded"))
        .await
        .unwrap();
    serde_json::from_value(out).unwrap()
}

/// A failure event reaches the rollback function.
async fn roll_back(w: &World, detail_type: &str) {
    w.deliver(Function::Rollback, w.published_event(detail_type))
        .await
        .unwrap();
}

/// "Deployment Verified" (or another release event) reaches the deployer.
async fn environment_free(w: &World, detail_type: &str) -> Option<EnvResult> {
    let out = w
        .deliver(Function::Deployer, w.published_event(detail_type))
        .await
        .unwrap();
    serde_json::from_value(out["queued"].clone()).unwrap()
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
    let status = &w.status().await[0];
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
async fn bad_input_gets_a_clear_error_and_changes_no_row() {
    let w = world().await;
    deploy_and_verify(&w, "v1", &digest('a')).await;
    let rows = w.table_snapshot().await.unwrap();
    let commands = w.commands().await.unwrap().len();

    let malformed = serde_json::json!({ "id": "x", "source": "aws.ecr", "detail-type": "ECR Image Action", "detail": { "action-type": "PUSH" } });
    let err = on_push_event(&w, malformed).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("invalid \"ECR Image Action\" event detail"),
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

    let unknown = serde_json::json!({ "app": "shop", "environment": "staging", "tag": "v1" });
    let err = w.invoke(Function::Deployer, unknown).await.unwrap_err();
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
    let out = w
        .deliver(Function::Deployer, w.published_event("Deployment Verified"))
        .await
        .unwrap();
    serde_json::from_value(out["promoted"].clone()).unwrap()
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

    let listed = w
        .invoke(
            Function::Control,
            serde_json::json!({ "action": "list-pending", "app": "web" }),
        )
        .await
        .unwrap();
    let pending: Vec<pushdeploy::services::control::PendingSummary> =
        serde_json::from_value(listed["pending"].clone()).unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].digest, digest('a'));
    let approve = |d: Digest| serde_json::json!({ "action": "approve", "app": app.as_str(), "environment": production.as_str(), "digest": d.as_str(), "by": "alice" });
    let wrong = w
        .invoke(Function::Control, approve(digest('b')))
        .await
        .unwrap_err();
    assert!(
        wrong.to_string().contains("is not the promotion waiting"),
        "{wrong}"
    );
    w.invoke(Function::Control, approve(digest('a')))
        .await
        .unwrap();
    let approved = w.published.last_detail("Promotion Approved");
    assert_eq!(approved.by.as_deref(), Some("alice"));
    let out = w
        .deliver(Function::Deployer, w.published_event("Promotion Approved"))
        .await
        .unwrap();
    let started: EnvResult =
        serde_json::from_value(out["approved"].clone()).expect("the approved promotion starts");
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
    let status = w.status().await;
    let production_status = status.iter().find(|s| s.environment == production).unwrap();
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

const ECS_CONFIG: &str = r#"
apps:
  web:
    repository: acme/web
    environments:
      production:
        deploy_on_push: { tags: ["v*"] }
        target: { ecs: { cluster: prod, service: web, container: web, keep_revisions: 1 } }
        smoke:
          checks: [ { url: "{smoke}", expect_status: 200, body_contains: "ok", timeout_seconds: 2 } ]
          within_seconds: 3
"#;

/// moto with an ECS service `web` in cluster `prod`, running revision 1 of family `web`.
async fn ecs_world(config: &str) -> World {
    let w = World::start(config).await.unwrap();
    w.ecs_service("prod").await.unwrap();
    w
}

/// ECS reports the last started rollout's service deployment as `event_name`: its
/// `ECS Deployment State Change` event reaches the tracker.
async fn ecs_reports(w: &World, event_name: &str) -> TrackOutcome {
    let event = w.ecs_event(
        &last_target_ref(w).await,
        event_name,
        "ECS deployment circuit breaker: tasks failed to start.",
    );
    tracked(w, event).await
}

const ECS_REGISTRY: &str = "123456789012.dkr.ecr.us-east-1.amazonaws.com";

/// The image the service's `web` container runs, and the revision it is in.
async fn ecs_runs(w: &World) -> (String, i32) {
    let (_, definition) = w.ecs_running("prod").await.unwrap();
    let web = definition
        .container_definitions()
        .iter()
        .find(|c| c.name() == Some("web"))
        .unwrap();
    (web.image().unwrap().to_owned(), definition.revision())
}

fn pinned(c: char) -> String {
    format!("{ECS_REGISTRY}/acme/web@{}", digest(c))
}

#[tokio::test]
async fn ecs_a_push_registers_a_revision_changing_only_the_image_and_is_verified() {
    let w = ecs_world(ECS_CONFIG).await;
    let (_, first) = w.ecs_running("prod").await.unwrap();
    let results = push(&w, "v1.0.0", &digest('a')).await;
    assert!(
        matches!(results[0].outcome, EnvOutcome::Started { .. }),
        "{results:?}"
    );
    let (arn, second) = w.ecs_running("prod").await.unwrap();
    assert!(arn.ends_with(":task-definition/web:2"), "{arn}");
    assert_eq!(
        ecs_runs(&w).await,
        (pinned('a'), 2),
        "the digest, never the tag"
    );
    // Everything but the image is what revision 1 had.
    let mut expected = first.clone();
    for c in expected.container_definitions.as_mut().unwrap() {
        if c.name() == Some("web") {
            c.image = Some(pinned('a'));
        }
    }
    assert_eq!(
        second.container_definitions(),
        expected.container_definitions()
    );
    assert_eq!(
        (
            second.task_role_arn(),
            second.network_mode(),
            second.cpu(),
            second.memory()
        ),
        (
            first.task_role_arn(),
            first.network_mode(),
            first.cpu(),
            first.memory()
        )
    );
    assert!(w.commands().await.unwrap().is_empty(), "no SSM command");
    assert!(matches!(
        ecs_reports(&w, "SERVICE_DEPLOYMENT_COMPLETED").await,
        TrackOutcome::Succeeded { .. }
    ));
    assert!(matches!(verify(&w).await, VerifyOutcome::Verified { .. }));

    Via::Ecs.deploy_and_verify(&w, "v1.1.0", &digest('b')).await;
    assert_eq!(ecs_runs(&w).await, (pinned('b'), 3));
    assert_eq!(
        w.ecs_revisions().await.unwrap(),
        vec![2, 3],
        "keep_revisions 1: revision 1 is deregistered, the one before the current is kept"
    );
    let status = &w.status().await[0];
    assert_eq!(status.last_verified.as_ref().unwrap().digest, digest('b'));
}

const CODEDEPLOY_CONFIG: &str = r#"
apps:
  web:
    repository: acme/web
    environments:
      onprem:
        deploy_on_push: { tags: ["v*"] }
        target:
          codedeploy:
            application: web
            deployment_group: web-onprem
            ec2: { container: web, ports: ["80:8000"], health: { path: /health } }
        smoke:
          checks: [ { url: "{smoke}", expect_status: 200, body_contains: "ok", timeout_seconds: 2 } ]
          within_seconds: 3
"#;

async fn codedeploy_world(config: &str) -> World {
    let w = World::start(config).await.unwrap();
    w.codedeploy_group("web", "web-onprem").await.unwrap();
    w
}

/// CodeDeploy reports the last started rollout's deployment as `state`: its state-change
/// event reaches the tracker.
async fn codedeploy_reports(w: &World, state: &str) -> TrackOutcome {
    let target_ref = last_target_ref(w).await;
    let id = target_ref
        .strip_prefix("codedeploy:")
        .expect("a CodeDeploy handle");
    tracked(w, w.codedeploy_event(id, state)).await
}

/// The digests (by their repeated character) the bundles of `onprem` pinned, in order.
async fn bundled(w: &World) -> Vec<String> {
    let images = w.bundled_images("web", "onprem").await.unwrap();
    images
        .iter()
        .map(|image| {
            assert!(
                image.starts_with(&format!("{ECS_REGISTRY}/acme/web@sha256:")),
                "{image}"
            );
            image.rsplit('@').next().unwrap()[7..8].to_owned()
        })
        .collect()
}

#[tokio::test]
async fn codedeploy_a_push_uploads_a_bundle_pinning_the_digest_and_is_verified() {
    let w = codedeploy_world(CODEDEPLOY_CONFIG).await;
    let results = push(&w, "v1.0.0", &digest('a')).await;
    assert!(
        matches!(results[0].outcome, EnvOutcome::Started { .. }),
        "{results:?}"
    );
    assert_eq!(bundled(&w).await, vec!["a"]);
    let target_ref = last_target_ref(&w).await;
    let deployment = aws_sdk_codedeploy::Client::new(&w.sdk)
        .get_deployment()
        .deployment_id(target_ref.strip_prefix("codedeploy:").unwrap())
        .send()
        .await
        .unwrap()
        .deployment_info
        .unwrap();
    assert!(deployment.ignore_application_stop_failures());
    assert!(deployment.auto_rollback_configuration().unwrap().enabled());
    let s3 = deployment.revision().unwrap().s3_location().unwrap();
    assert_eq!(
        s3.bundle_type(),
        Some(&aws_sdk_codedeploy::types::BundleType::Tar)
    );
    assert!(s3.e_tag().is_some(), "the bundle is pinned by its ETag");
    assert!(matches!(
        codedeploy_reports(&w, "SUCCESS").await,
        TrackOutcome::Succeeded { .. }
    ));
    assert!(matches!(verify(&w).await, VerifyOutcome::Verified { .. }));
    assert!(w.commands().await.unwrap().is_empty(), "no SSM command");
}

const BLUE_GREEN_CONFIG: &str = r#"
apps:
  web:
    repository: acme/web
    environments:
      production:
        deploy_on_push: { tags: ["v*"] }
        target:
          codedeploy:
            application: web-ecs
            deployment_group: web-blue-green
            ecs: { cluster: prod, service: web, container: web, container_port: 8000 }
        smoke:
          checks: [ { url: "{smoke}", expect_status: 200, body_contains: "ok", timeout_seconds: 2 } ]
          within_seconds: 3
"#;

/// The task definition revision the AppSpec of the last started rollout names.
async fn appspec_revision(w: &World) -> String {
    let target_ref = last_target_ref(w).await;
    let appspec = w
        .appspec_of(target_ref.strip_prefix("codedeploy:").unwrap())
        .await
        .unwrap();
    let properties = &appspec["Resources"][0]["TargetService"]["Properties"];
    assert_eq!(
        properties["LoadBalancerInfo"],
        serde_json::json!({ "ContainerName": "web", "ContainerPort": 8000 })
    );
    let arn = properties["TaskDefinition"].as_str().unwrap();
    arn.rsplit_once(":task-definition/").unwrap().1.to_owned()
}

#[tokio::test]
async fn codedeploy_blue_green_names_the_new_revision_and_a_rollback_names_the_verified_one() {
    let w = World::start(BLUE_GREEN_CONFIG).await.unwrap();
    w.ecs_service_deployed_by(
        "prod",
        aws_sdk_ecs::types::DeploymentControllerType::CodeDeploy,
    )
    .await
    .unwrap();
    w.codedeploy_blue_green("web-ecs", "web-blue-green", "prod")
        .await
        .unwrap();
    push(&w, "v1", &digest('a')).await;
    assert_eq!(appspec_revision(&w).await, "web:2");
    assert_eq!(
        ecs_runs(&w).await.1,
        1,
        "CodeDeploy, not pushdeploy, moves the service"
    );
    // moto's CodeDeploy deploys nothing: play its part and shift the service over.
    aws_sdk_ecs::Client::new(&w.sdk)
        .update_service()
        .cluster("prod")
        .service("web")
        .task_definition(format!(
            "arn:aws:ecs:us-east-1:{}:task-definition/web:2",
            pushdeploy_local::moto::ACCOUNT
        ))
        .send()
        .await
        .unwrap();
    codedeploy_reports(&w, "SUCCESS").await;
    assert!(matches!(verify(&w).await, VerifyOutcome::Verified { .. }));
    push(&w, "v2", &digest('b')).await;
    assert_eq!(appspec_revision(&w).await, "web:3");
    let failed = codedeploy_reports(&w, "FAILURE").await;
    assert!(matches!(failed, TrackOutcome::Failed { .. }), "{failed:?}");
    roll_back(&w, "Rollout Failed").await;
    assert_eq!(
        appspec_revision(&w).await,
        "web:2",
        "the rollback names the revision that pins the verified digest"
    );
    assert_eq!(w.ecs_revisions().await.unwrap(), vec![1, 2, 3]);
    codedeploy_reports(&w, "SUCCESS").await;
    assert!(matches!(verify(&w).await, VerifyOutcome::Verified { .. }));
}

const MIXED_CONFIG: &str = r#"
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
        target: { ecs: { cluster: prod, service: web, container: web } }
        smoke:
          checks: [ { url: "{smoke}", expect_status: 200, body_contains: "ok", timeout_seconds: 2 } ]
          within_seconds: 3
      onprem:
        promote_from: staging
        target:
          codedeploy:
            application: web
            deployment_group: web-onprem
            ec2: { container: web, ports: ["80:8000"] }
"#;

#[tokio::test]
async fn staging_on_ssm_promotes_the_verified_digest_to_ecs_and_codedeploy_environments() {
    let w = ecs_world(MIXED_CONFIG).await;
    w.codedeploy_group("web", "web-onprem").await.unwrap();
    deploy_and_verify(&w, "v1.0.0", &digest('a')).await;
    assert_eq!(
        ecs_runs(&w).await.1,
        1,
        "production is untouched until staging verified"
    );
    assert!(bundled(&w).await.is_empty());
    let promoted = promote_verified(&w).await;
    assert_eq!(promoted.len(), 2, "{promoted:?}");
    for p in &promoted {
        assert!(
            matches!(p.result.outcome, EnvOutcome::Started { .. }),
            "{promoted:?}"
        );
    }
    assert_eq!(
        w.commands().await.unwrap().len(),
        1,
        "staging's command only"
    );
    assert_eq!(ecs_runs(&w).await, (pinned('a'), 2));
    assert_eq!(bundled(&w).await, vec!["a"]);
    let (_, production) = names("web", "production");
    let started = w.status().await;
    let production_status = started
        .iter()
        .find(|s| s.environment == production)
        .unwrap();
    let ecs_ref = production_status.deployments[0].target_ref.clone().unwrap();
    let outcome = tracked(
        &w,
        w.ecs_event(&ecs_ref, "SERVICE_DEPLOYMENT_COMPLETED", ""),
    )
    .await;
    assert!(
        matches!(outcome, TrackOutcome::Succeeded { .. }),
        "{outcome:?}"
    );
    let d = w.published.last_detail("Rollout Succeeded");
    assert_eq!(d.environment, production);
    assert!(matches!(verify(&w).await, VerifyOutcome::Verified { .. }));
    let status = w.status().await;
    let production_status = status.iter().find(|s| s.environment == production).unwrap();
    assert_eq!(
        production_status.last_verified.as_ref().unwrap().digest,
        digest('a')
    );
    assert_eq!(
        production_status.deployments[0].kind,
        pushdeploy::domain::Kind::Promotion
    );
}

// ------------------------------------------------------------ every target, alike

/// Where a scenario deploys: one environment on SSM, on ECS or on CodeDeploy (EC2).
#[derive(Debug, Clone, Copy)]
enum Via {
    Ssm,
    Ecs,
    CodeDeploy,
}

impl Via {
    /// The environment its configuration deploys to.
    fn env(self) -> &'static str {
        match self {
            Via::Ssm => "staging",
            Via::Ecs => "production",
            Via::CodeDeploy => "onprem",
        }
    }

    async fn world(self) -> World {
        match self {
            Via::Ssm => world().await,
            Via::Ecs => ecs_world(ECS_CONFIG).await,
            Via::CodeDeploy => codedeploy_world(CODEDEPLOY_CONFIG).await,
        }
    }

    /// The target's status event about the last started rollout: it succeeded, or failed.
    async fn reports(self, w: &World, succeeded: bool) -> TrackOutcome {
        match (self, succeeded) {
            (Via::Ssm, true) => ssm_reports(w, "Success").await,
            (Via::Ssm, false) => ssm_reports(w, "Failed").await,
            (Via::Ecs, true) => ecs_reports(w, "SERVICE_DEPLOYMENT_COMPLETED").await,
            (Via::Ecs, false) => ecs_reports(w, "SERVICE_DEPLOYMENT_FAILED").await,
            (Via::CodeDeploy, true) => codedeploy_reports(w, "SUCCESS").await,
            (Via::CodeDeploy, false) => codedeploy_reports(w, "FAILURE").await,
        }
    }

    /// The digest (by its letter) the target was last told to run, as the target has it:
    /// the last command's `Image`, the service's task definition, the last bundle.
    async fn runs(self, w: &World) -> String {
        match self {
            Via::Ssm => images(&w.commands().await.unwrap()).pop().unwrap(),
            Via::Ecs => letter(&ecs_runs(w).await.0),
            Via::CodeDeploy => bundled(w).await.pop().unwrap(),
        }
    }

    async fn deploy_and_verify(self, w: &World, tag: &str, d: &Digest) {
        push(w, tag, d).await;
        assert!(matches!(
            self.reports(w, true).await,
            TrackOutcome::Succeeded { .. }
        ));
        assert!(matches!(verify(w).await, VerifyOutcome::Verified { .. }));
    }
}

/// The letter of a digest made by `digest(c)`, from an image reference.
fn letter(image: &str) -> String {
    image.rsplit('@').next().unwrap()[7..8].to_owned()
}

/// The digests (by letter) of every rollout started, in order, as the lifecycle events say.
fn started(w: &World) -> Vec<String> {
    w.published
        .all()
        .iter()
        .filter(|e| e.detail_type == pushdeploy::domain::EventType::RolloutStarted)
        .map(|e| letter(&e.deployment().unwrap().image.as_ref().unwrap().to_string()))
        .collect()
}

/// Each scenario runs once per target: `<scenario>::ssm`, `::ecs`, `::codedeploy`.
macro_rules! on_every_target {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            use super::Via;

            #[tokio::test]
            async fn ssm() {
                super::$scenario(Via::Ssm).await
            }

            #[tokio::test]
            async fn ecs() {
                super::$scenario(Via::Ecs).await
            }

            #[tokio::test]
            async fn codedeploy() {
                super::$scenario(Via::CodeDeploy).await
            }
        }
    )*};
}

on_every_target!(
    a_failed_rollout_rolls_back_to_the_verified_digest,
    a_failed_smoke_test_rolls_back_to_the_verified_digest,
    a_repeated_event_or_another_tag_on_the_same_digest_starts_one_rollout,
    pushes_during_a_rollout_are_queued_and_only_the_newest_runs_next,
    a_failed_rollback_freezes_the_environment_and_later_pushes_do_not_deploy,
    a_queued_image_whose_hand_off_was_lost_is_started_by_the_reconciler,
    a_rollback_by_hand_to_an_older_verified_digest_redeploys_it,
);

/// The reconcile schedule's event.
fn schedule() -> Value {
    serde_json::json!({
        "version": "0", "id": "schedule-1", "detail-type": "Scheduled Event",
        "source": "aws.events", "account": pushdeploy_local::moto::ACCOUNT,
        "region": pushdeploy_local::moto::REGION, "time": "2026-11-23T10:00:00Z",
        "resources": [], "detail": {}
    })
}

async fn a_queued_image_whose_hand_off_was_lost_is_started_by_the_reconciler(via: Via) {
    let w = via.world().await;
    push(&w, "v1", &digest('a')).await;
    push(&w, "v2", &digest('b')).await;
    via.reports(&w, true).await;
    verify(&w).await;
    // "Deployment Verified" never reaches the deployer: the reconciler starts `b`.
    let report = w.deliver(Function::Tracker, schedule()).await.unwrap();
    assert!(
        report["actions"][0]["action"]
            .as_str()
            .is_some_and(|a| a.contains("queued image: started")),
        "{report}"
    );
    assert_eq!(started(&w), ["a", "b"]);
    assert_eq!(via.runs(&w).await, "b");
}

async fn a_rollback_by_hand_to_an_older_verified_digest_redeploys_it(via: Via) {
    let w = via.world().await;
    for (tag, c) in [("v1", 'a'), ("v2", 'b'), ("v3", 'c')] {
        via.deploy_and_verify(&w, tag, &digest(c)).await;
    }
    let out = w
        .invoke(
            Function::Rollback,
            serde_json::json!({ "app": "web", "environment": via.env(),
                                "digest": digest('a').to_string(), "requested_by": "alice" }),
        )
        .await
        .unwrap();
    assert_eq!(out["outcome"], "started", "{out}");
    assert_eq!(started(&w), ["a", "b", "c", "a"]);
    assert_eq!(via.runs(&w).await, "a");
    via.reports(&w, true).await;
    assert!(matches!(verify(&w).await, VerifyOutcome::Verified { .. }));
}

async fn a_failed_rollout_rolls_back_to_the_verified_digest(via: Via) {
    let w = via.world().await;
    via.deploy_and_verify(&w, "v1", &digest('a')).await;
    push(&w, "v2", &digest('b')).await;
    let failed = via.reports(&w, false).await;
    assert!(matches!(failed, TrackOutcome::Failed { .. }), "{failed:?}");
    roll_back(&w, "Rollout Failed").await;
    assert_eq!(started(&w), ["a", "b", "a"]);
    assert_eq!(
        via.runs(&w).await,
        "a",
        "the target is told the verified digest"
    );
    if let Via::Ecs = via {
        assert_eq!(
            ecs_runs(&w).await.1,
            2,
            "the service returns to the revision it ran before, none is registered"
        );
        assert_eq!(w.ecs_revisions().await.unwrap(), vec![2, 3]);
    }
    via.reports(&w, true).await;
    assert!(matches!(verify(&w).await, VerifyOutcome::Verified { .. }));
    let status = &w.status().await[0];
    assert_eq!(status.current.as_ref().unwrap().digest, digest('a'));
    let original = status
        .deployments
        .iter()
        .find(|d| d.digest == digest('b'))
        .unwrap();
    assert_eq!(original.phase, Phase::RolledBack);
    assert!(original.reason.is_some());
}

async fn a_failed_smoke_test_rolls_back_to_the_verified_digest(via: Via) {
    let w = via.world().await;
    via.deploy_and_verify(&w, "v1", &digest('a')).await;
    push(&w, "v2", &digest('b')).await;
    via.reports(&w, true).await;
    w.endpoint.answer(500, "boom");
    let outcome = verify(&w).await;
    let VerifyOutcome::Failed { reason, .. } = outcome else {
        panic!("{outcome:?}")
    };
    assert!(reason.contains("status 500 (expected 200)"), "{reason}");
    roll_back(&w, "Verification Failed").await;
    assert_eq!(started(&w), ["a", "b", "a"]);
    assert_eq!(
        via.runs(&w).await,
        "a",
        "the rollback redeploys the verified digest"
    );
    w.endpoint.answer(200, "ok");
    via.reports(&w, true).await;
    assert!(matches!(verify(&w).await, VerifyOutcome::Verified { .. }));

    let status = &w.status().await[0];
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

async fn a_repeated_event_or_another_tag_on_the_same_digest_starts_one_rollout(via: Via) {
    let w = via.world().await;
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
    assert!(matches!(
        via.reports(&w, true).await,
        TrackOutcome::Succeeded { .. }
    ));
    assert!(
        matches!(
            via.reports(&w, true).await,
            TrackOutcome::AlreadyRecorded { .. }
        ),
        "a repeated status event records nothing new"
    );
    verify(&w).await;
    push(&w, "v1-latest", &digest('a')).await;
    assert_eq!(started(&w), ["a"]);
    assert_eq!(
        w.published
            .types()
            .iter()
            .filter(|t| **t == "Rollout Succeeded")
            .count(),
        1
    );
}

async fn pushes_during_a_rollout_are_queued_and_only_the_newest_runs_next(via: Via) {
    let w = via.world().await;
    push(&w, "v1", &digest('a')).await;
    for (tag, c) in [("v2", 'b'), ("v3", 'c'), ("v4", 'd')] {
        let results = push(&w, tag, &digest(c)).await;
        assert!(
            matches!(results[0].outcome, EnvOutcome::Queued { .. }),
            "{results:?}"
        );
    }
    assert_eq!(
        started(&w),
        ["a"],
        "nothing starts while a rollout holds the environment"
    );
    via.reports(&w, true).await;
    verify(&w).await;
    let next = environment_free(&w, "Deployment Verified").await.unwrap();
    assert!(
        matches!(next.outcome, EnvOutcome::Started { .. }),
        "{next:?}"
    );
    assert_eq!(started(&w), ["a", "d"]);
    assert_eq!(via.runs(&w).await, "d");
    assert!(
        environment_free(&w, "Deployment Verified").await.is_none(),
        "b and c never run"
    );
}

async fn a_failed_rollback_freezes_the_environment_and_later_pushes_do_not_deploy(via: Via) {
    let w = via.world().await;
    via.deploy_and_verify(&w, "v1", &digest('a')).await;
    push(&w, "v2", &digest('b')).await;
    via.reports(&w, true).await;
    w.endpoint.answer(503, "down");
    verify(&w).await;
    roll_back(&w, "Verification Failed").await;
    assert!(
        matches!(via.reports(&w, false).await, TrackOutcome::Failed { .. }),
        "the rollback's own rollout fails"
    );
    roll_back(&w, "Rollout Failed").await;

    let status = &w.status().await[0];
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

    let runs = via.runs(&w).await;
    let results = push(&w, "v3", &digest('c')).await;
    assert!(
        matches!(&results[0].outcome, EnvOutcome::Skipped { reason, .. } if reason.contains("frozen"))
    );
    assert_eq!(
        started(&w),
        ["a", "b", "a"],
        "no further rollout, no further rollback"
    );
    assert_eq!(via.runs(&w).await, runs, "nothing touches the target");
}

/// The alarms adapter against CloudWatch's API (moto): what an alarm says, and one that
/// does not exist is absent.
#[tokio::test]
async fn watched_alarms_are_read_with_describe_alarms() {
    use pushdeploy::ports::AlarmValue;
    let w = world().await;
    let cloudwatch = aws_sdk_cloudwatch::Client::new(&w.sdk);
    cloudwatch
        .put_metric_alarm()
        .alarm_name("web-staging-5xx")
        .namespace("AWS/ApplicationELB")
        .metric_name("HTTPCode_Target_5XX_Count")
        .statistic(aws_sdk_cloudwatch::types::Statistic::Sum)
        .period(60)
        .evaluation_periods(1)
        .threshold(5.0)
        .comparison_operator(aws_sdk_cloudwatch::types::ComparisonOperator::GreaterThanThreshold)
        .send()
        .await
        .expect("PutMetricAlarm");
    // The verifier's own port, with the verifier's clients.
    let alarms = w.verifier.alarms.clone();
    let names = ["web-staging-5xx".to_owned(), "no-such-alarm".to_owned()];
    let states = alarms.states(&names).await.expect("DescribeAlarms");
    assert_eq!(states.len(), 1, "{states:?}");
    assert_eq!(states[0].name, "web-staging-5xx");
    assert_ne!(states[0].value, AlarmValue::Alarm);
    cloudwatch
        .set_alarm_state()
        .alarm_name("web-staging-5xx")
        .state_value(aws_sdk_cloudwatch::types::StateValue::Alarm)
        .state_reason("Threshold Crossed: 12 > 5")
        .send()
        .await
        .expect("SetAlarmState");
    let states = alarms.states(&names).await.expect("DescribeAlarms");
    assert_eq!(states[0].value, AlarmValue::Alarm);
    assert_eq!(states[0].reason, "Threshold Crossed: 12 > 5");
}

/// The vulnerability gate against ECR's API (moto): an image never scanned waits
/// (`ScanNotFoundException`); once scanned, the reconciler reads its findings with
/// `DescribeImageScanFindings` and blocks it above the thresholds, and nothing runs.
#[tokio::test]
async fn an_image_waits_for_its_scan_and_the_findings_ecr_reports_block_it() {
    let config = CONFIG.replacen(
        "        smoke:\n",
        "        scan: { max: { critical: 0, high: 0 } }\n        smoke:\n",
        1,
    );
    let w = World::start(&config)
        .await
        .expect("moto and the resources of template.yaml start");
    let results = push(&w, "v1.0.0", &digest('a')).await;
    assert!(
        matches!(results[0].outcome, EnvOutcome::AwaitingScan { .. }),
        "{results:?}"
    );
    let report = w.tracker.reconcile().await.unwrap();
    assert!(report.actions.is_empty(), "not scanned yet: {report:?}");
    let ecr = aws_sdk_ecr::Client::new(&w.sdk);
    ecr.start_image_scan()
        .repository_name("acme/web")
        .image_id(
            aws_sdk_ecr::types::ImageIdentifier::builder()
                .image_digest(digest('a').as_str())
                .build(),
        )
        .send()
        .await
        .expect("StartImageScan");
    let report = w.tracker.reconcile().await.unwrap();
    assert_eq!(report.actions.len(), 1, "{report:?}");
    assert!(
        report.actions[0]
            .action
            .contains("its vulnerability scan found high 1 > 0"),
        "{report:?}"
    );
    assert!(
        w.commands().await.unwrap().is_empty(),
        "nothing was sent to a host"
    );
    let blocked = w.published.last_detail("Deployment Blocked");
    assert_eq!(blocked.digest.as_ref(), Some(&digest('a')));
}

/// Records in ECR (moto) a single image built for `platform`: its config blob uploaded
/// through ECR's layer API, its manifest naming it, under `image` (moto takes the digest
/// it is given).
async fn put_built_for(w: &World, tag: &str, image: &Digest, os: &str, architecture: &str) {
    let ecr = aws_sdk_ecr::Client::new(&w.sdk);
    let config = serde_json::json!({ "architecture": architecture, "os": os, "rootfs": { "type": "layers", "diff_ids": [] } })
        .to_string();
    let upload = ecr
        .initiate_layer_upload()
        .repository_name("acme/web")
        .send()
        .await
        .expect("InitiateLayerUpload");
    let upload_id = upload.upload_id().unwrap().to_owned();
    ecr.upload_layer_part()
        .repository_name("acme/web")
        .upload_id(&upload_id)
        .part_first_byte(0)
        .part_last_byte(config.len() as i64 - 1)
        .layer_part_blob(aws_sdk_ecr::primitives::Blob::new(config.clone()))
        .send()
        .await
        .expect("UploadLayerPart");
    let done = ecr
        .complete_layer_upload()
        .repository_name("acme/web")
        .upload_id(&upload_id)
        // moto computes the digest from the bytes, as ECR does, and answers with it.
        .layer_digests("sha256:0")
        .send()
        .await
        .expect("CompleteLayerUpload");
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "size": config.len(), "digest": done.layer_digest().unwrap() },
        "layers": []
    });
    ecr.put_image()
        .repository_name("acme/web")
        .image_manifest(manifest.to_string())
        .image_manifest_media_type("application/vnd.oci.image.manifest.v1+json")
        .image_digest(image.as_str())
        .image_tag(tag)
        .send()
        .await
        .expect("PutImage");
}

/// The platform check against ECR's API (moto): a single image's config blob, read
/// through the URL `GetDownloadUrlForLayer` gives, says it is built for linux/arm64; the
/// push to amd64 hosts is refused naming both, and nothing is sent to a host. An image
/// built for linux/amd64 rolls out.
#[tokio::test]
async fn an_image_built_for_another_platform_than_the_hosts_is_refused_before_any_command() {
    let w = world().await;
    let arm = digest('e');
    put_built_for(&w, "v1.0.0", &arm, "linux", "arm64").await;
    let event = w.push_event("v1.0.0", &arm).unwrap();
    let results = on_push_event(&w, event).await.unwrap();
    let EnvOutcome::Blocked { reason, .. } = &results[0].outcome else {
        panic!("{results:?}")
    };
    assert!(
        reason.starts_with("the image is built for linux/arm64, but web/staging runs linux/amd64"),
        "{reason}"
    );
    assert!(
        w.commands().await.unwrap().is_empty(),
        "nothing was sent to a host"
    );
    let blocked = w.published.last_detail("Deployment Blocked");
    assert_eq!(blocked.digest.as_ref(), Some(&arm));
    assert_eq!(
        serde_json::to_value(&blocked.platforms).unwrap(),
        serde_json::json!({ "image": ["linux/arm64"], "target": "linux/amd64" })
    );
    let amd = digest('f');
    put_built_for(&w, "v1.0.1", &amd, "linux", "amd64").await;
    let event = w.push_event("v1.0.1", &amd).unwrap();
    let results = on_push_event(&w, event).await.unwrap();
    assert!(
        matches!(results[0].outcome, EnvOutcome::Started { .. }),
        "{results:?}"
    );
    assert_eq!(w.commands().await.unwrap().len(), 1);
}

/// The notifier against moto: webhook URLs read from an SSM SecureString and from Secrets
/// Manager, one message per channel for a state change, and a repeated delivery sends
/// nothing again (each channel's claim is settled in the state table).
#[tokio::test]
async fn the_notifier_reads_its_webhooks_from_ssm_and_secrets_manager_and_says_each_change_once() {
    let config = CONFIG.replacen(
        "    environments:\n",
        "    notify:\n      - { type: webhook, url_from: { ssm_parameter: /pushdeploy/notify/web-hook } }\n      - { type: webhook, url_from: { secret: pushdeploy/notify/web-secret } }\n    environments:\n",
        1,
    );
    let w = World::start(&config).await.unwrap();
    let hook = w.endpoint.url().replace("/health", "/hook");
    aws_sdk_ssm::Client::new(&w.sdk)
        .put_parameter()
        .name("/pushdeploy/notify/web-hook")
        .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
        .value(&hook)
        .send()
        .await
        .unwrap();
    aws_sdk_secretsmanager::Client::new(&w.sdk)
        .create_secret()
        .name("pushdeploy/notify/web-secret")
        .secret_string(&hook)
        .send()
        .await
        .unwrap();
    push(&w, "v1.0.0", &digest('a')).await;
    let started = w.published_event("Rollout Started");
    for _ in 0..2 {
        w.deliver(Function::Notifier, started.clone())
            .await
            .unwrap();
    }
    let posted: Vec<String> = w
        .endpoint
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("POST /hook"))
        .collect();
    assert_eq!(posted.len(), 2, "one message per channel, once: {posted:?}");
    assert!(
        posted.iter().all(|r| r.contains("\"notice\":\"started\"")),
        "{posted:?}"
    );
    // A webhook that fails releases its claim, so that Lambda's retry sends the message.
    w.endpoint.answer(500, "down");
    w.deliver(
        Function::Tracker,
        w.ssm_event(&last_command(&w).await, "Failed"),
    )
    .await
    .unwrap();
    let failed = w.published_event("Rollout Failed");
    let error = w
        .deliver(Function::Notifier, failed.clone())
        .await
        .unwrap_err();
    assert!(error.is_retryable(), "{error}");
    w.endpoint.answer(200, "ok");
    w.deliver(Function::Notifier, failed).await.unwrap();
    let failures = w
        .endpoint
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("POST /hook") && r.contains("\"notice\":\"failed\""))
        .count();
    assert!(
        failures >= 2,
        "sent again once the webhook answers: {failures}"
    );
}

/// The id of the last SSM command sent.
async fn last_command(w: &World) -> String {
    last_target_ref(w)
        .await
        .strip_prefix("ssm:")
        .expect("an SSM handle")
        .to_owned()
}

/// A deploy by hand names a tag; the deployer resolves it in ECR (`DescribeImages`) and
/// deploys its digest, the running one included.
#[tokio::test]
async fn a_deploy_by_hand_resolves_its_tag_in_ecr_and_deploys_the_digest() {
    let w = world().await;
    deploy_and_verify(&w, "v1.0.0", &digest('a')).await;
    let out = w
        .invoke(
            Function::Deployer,
            serde_json::json!({ "app": "web", "environment": "staging", "tag": "v1.0.0",
                                "requested_by": "alice", "reason": "redeploy" }),
        )
        .await
        .unwrap();
    assert_eq!(out["outcome"], "started", "{out}");
    assert_eq!(started(&w), ["a", "a"]);
}
