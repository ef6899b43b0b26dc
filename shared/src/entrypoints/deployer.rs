//! The deployer's entrypoint: an ECR push, a lifecycle event that frees an environment
//! (and, once a digest is verified, promotes it and moves the environment's ECR tag), an
//! approved promotion, or a deploy or promote request typed in the console.

use lambda_runtime::LambdaEvent;
use serde::Deserialize;
use serde_json::{Value, json};
use time::OffsetDateTime;

use super::{
    ECR_IMAGE_ACTION, ECR_IMAGE_SCAN, ECR_SOURCE, Function, INSPECTOR_SCAN, INSPECTOR_SOURCE,
    check_routed,
};
use crate::domain::scan::{Counts, Scanner};
use crate::domain::text::{Person, Reason};
use crate::domain::{AppName, Digest, EnvName, EventType, Tag};
use crate::inbound::{Console, Envelope, is_event};
use crate::lambda::respond;
use crate::services::deploy::{ManualDeploy, PushEvent, Wanted};
use crate::services::gate::ScanEvent;
use crate::services::promote::{ManualPromotion, Verified};
use crate::services::{Deployer, InputError, ServiceError};

/// What the deployer is asked to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// An image pushed to ECR.
    Push(PushEvent),
    /// An event that deploys nothing (a deletion, a failed push, a scan not complete), and
    /// why.
    Ignored(String),
    /// A vulnerability scan's result (ECR basic scanning, or Amazon Inspector).
    Scan(ScanEvent),
    /// A digest verified somewhere: its environment is free, it may be promoted, and the
    /// environment's ECR tag follows it.
    Verified(Verified),
    /// A person approved a pending promotion.
    Approved {
        app: AppName,
        environment: EnvName,
        digest: Digest,
        event_id: String,
    },
    /// An environment became free (its deployment failed for good, or it was unfrozen).
    Freed {
        app: AppName,
        environment: EnvName,
    },
    Deploy(ManualDeploy),
    Promote(ManualPromotion),
}

/// `{"app": "web", "environment": "staging", "tag": "v1.2.3"}` (or `"digest"` instead of
/// `"tag"`), or `{"action": "promote", "app": "web", "from": "staging", "to": "production"}`.
#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Action {
    Deploy,
    Promote,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeployRequest {
    app: AppName,
    environment: EnvName,
    #[serde(default)]
    tag: Option<Tag>,
    #[serde(default)]
    digest: Option<Digest>,
    #[serde(default)]
    requested_by: Option<Person>,
    #[serde(default)]
    reason: Option<Reason>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PromoteRequest {
    app: AppName,
    from: EnvName,
    to: EnvName,
    #[serde(default)]
    requested_by: Option<Person>,
}

pub const CONSOLE: Console = Console {
    function: "the deployer",
    default_action: Some("deploy"),
    actions: &["deploy", "promote"],
    missing: |action, field| {
        match (action, field) {
        ("promote", _) => Some(
            "\"promote\" takes \"app\", \"from\" and \"to\" (the digest is the one last verified in \"from\")"
                .into(),
        ),
        (_, "environment") => Some("a deploy needs the \"environment\" to deploy to".into()),
        (_, "app") => Some("a deploy needs the \"app\" whose image it deploys".into()),
        _ => None,
    }
    },
};

/// The `detail` of an `ECR Image Action` event.
#[derive(Deserialize)]
struct EcrDetail {
    #[serde(rename = "action-type")]
    action_type: String,
    result: String,
}

#[derive(Deserialize)]
struct EcrPush {
    #[serde(rename = "repository-name")]
    repository_name: String,
    #[serde(rename = "image-digest")]
    image_digest: String,
    #[serde(rename = "image-tag", default)]
    image_tag: Option<String>,
}

/// Reads what the deployer received.
pub fn parse(payload: Value) -> Result<Input, InputError> {
    if !is_event(&payload) {
        let (action, fields) = CONSOLE.read(payload)?;
        return match action {
            Action::Deploy => deploy(fields.read()?).map(Input::Deploy),
            Action::Promote => {
                let r: PromoteRequest = fields.read()?;
                Ok(Input::Promote(ManualPromotion {
                    app: r.app,
                    from: r.from,
                    to: r.to,
                    requested_by: r.requested_by.map(Person::into_string),
                }))
            }
        };
    }
    let envelope = Envelope::read(payload)?;
    check_routed(Function::Deployer, &envelope)?;
    match (envelope.source.as_str(), envelope.detail_type.as_str()) {
        (ECR_SOURCE, ECR_IMAGE_ACTION) => return ecr_push(&envelope),
        (ECR_SOURCE, ECR_IMAGE_SCAN) => return scan(&envelope, Scanner::Basic),
        (INSPECTOR_SOURCE, INSPECTOR_SCAN) => return scan(&envelope, Scanner::Enhanced),
        _ => {}
    }
    let (kind, detail) = envelope.lifecycle()?;
    let (app, environment) = (detail.app.clone(), detail.environment.clone());
    match kind {
        EventType::DeploymentVerified => {
            let (Some(image), Some(kind)) = (detail.image, detail.kind) else {
                return Err(InputError::Field {
                    what: "\"Deployment Verified\" event detail".into(),
                    field: Some("detail.image".into()),
                    problem: "the event must name its image and kind".into(),
                });
            };
            Ok(Input::Verified(Verified {
                app,
                environment,
                image,
                tag: detail.tag,
                kind,
                pushed_at: detail.pushed_at.unwrap_or(detail.at),
                event_id: detail.event_id.unwrap_or(envelope.id),
            }))
        }
        EventType::PromotionApproved => {
            let digest = detail.digest.ok_or_else(|| InputError::Field {
                what: "\"Promotion Approved\" event detail".into(),
                field: Some("detail.digest".into()),
                problem: "the event must name the digest approved".into(),
            })?;
            Ok(Input::Approved {
                app,
                environment,
                digest,
                event_id: detail.event_id.unwrap_or(envelope.id),
            })
        }
        _ => Ok(Input::Freed { app, environment }),
    }
}

fn deploy(r: DeployRequest) -> Result<ManualDeploy, InputError> {
    let wanted = match (r.tag, r.digest) {
        (Some(tag), None) => Wanted::Tag(tag),
        (None, Some(digest)) => Wanted::Digest(digest),
        _ => {
            return Err(InputError::Rule(
                "give exactly one of \"tag\" or \"digest\"".into(),
            ));
        }
    };
    Ok(ManualDeploy {
        app: r.app,
        environment: r.environment,
        wanted,
        requested_by: r.requested_by.map(Person::into_string),
        reason: r.reason.map(Reason::into_string),
    })
}

/// An `ECR Image Action` event: a push to deploy, or something that deploys nothing. A
/// deletion or a failed push carries no digest, so nothing else is read of it.
fn ecr_push(envelope: &Envelope) -> Result<Input, InputError> {
    let action: EcrDetail = envelope.detail()?;
    if action.action_type != "PUSH" || action.result != "SUCCESS" {
        return Ok(Input::Ignored(format!(
            "not a successful image push ({} {})",
            action.action_type, action.result
        )));
    }
    let push: EcrPush = envelope.detail()?;
    let field = |name: &str, problem: String| InputError::Field {
        what: "\"ECR Image Action\" event detail".into(),
        field: Some(format!("detail.{name}")),
        problem,
    };
    let tag = match push.image_tag.as_deref() {
        None | Some("") => Ok(None),
        Some(t) => Tag::parse(t)
            .map(Some)
            .map_err(|e| field("image-tag", e.to_string())),
    };
    Ok(Input::Push(PushEvent {
        event_id: envelope.id.clone(),
        account: envelope.account.clone(),
        region: envelope.region.clone(),
        repository: push.repository_name,
        digest: Digest::parse(&push.image_digest).map_err(|e| field("image-digest", e.to_string())),
        tag,
        pushed_at: envelope.time.unwrap_or_else(OffsetDateTime::now_utc),
    }))
}

/// The `detail` of an `ECR Image Scan` or `Inspector2 Scan` event.
#[derive(Deserialize)]
struct ScanDetail {
    #[serde(rename = "scan-status")]
    scan_status: String,
    /// A name for ECR; a repository ARN for Inspector.
    #[serde(rename = "repository-name")]
    repository_name: String,
    #[serde(rename = "image-digest")]
    image_digest: String,
    /// A severity with no findings is absent; so is the whole map with none at all.
    #[serde(rename = "finding-severity-counts", default)]
    finding_severity_counts: std::collections::BTreeMap<String, u64>,
}

/// A completed scan: its digest and its findings per severity.
fn scan(envelope: &Envelope, scanner: Scanner) -> Result<Input, InputError> {
    let d: ScanDetail = envelope.detail()?;
    let complete = match scanner {
        Scanner::Enhanced => "INITIAL_SCAN_COMPLETE",
        _ => "COMPLETE",
    };
    if d.scan_status != complete {
        return Ok(Input::Ignored(format!(
            "not a completed scan (scan-status {})",
            d.scan_status
        )));
    }
    let what = format!("\"{}\" event detail", envelope.detail_type);
    let digest = Digest::parse(&d.image_digest).map_err(|e| InputError::Field {
        what: what.clone(),
        field: Some("detail.image-digest".into()),
        problem: e.to_string(),
    })?;
    // `arn:aws:ecr:eu-west-1:123456789012:repository/acme/web` names `acme/web`.
    let repository = match d.repository_name.split_once(":repository/") {
        Some((arn, name)) if arn.starts_with("arn:") => name.to_owned(),
        _ => d.repository_name,
    };
    Ok(Input::Scan(ScanEvent {
        event_id: envelope.id.clone(),
        account: envelope.account.clone(),
        region: envelope.region.clone(),
        repository,
        digest,
        counts: Counts::from_aws(
            d.finding_severity_counts
                .iter()
                .map(|(k, n)| (k.as_str(), *n)),
        ),
        scanner,
        at: envelope.time.unwrap_or_else(OffsetDateTime::now_utc),
    }))
}

/// Does what the input asks; the response is what a person reads in the console.
pub async fn run(deployer: &Deployer, input: Input) -> Result<Value, ServiceError> {
    match input {
        Input::Push(push) => match deployer.on_push_event(&push).await? {
            Some(results) => respond(&json!({ "results": results })),
            None => respond(&json!({
                "results": [],
                "outcome": "ignored",
                "reason": format!("no app deploys repository {}", crate::inbound::quote(&push.repository)),
            })),
        },
        Input::Ignored(reason) => respond(&json!({ "outcome": "ignored", "reason": reason })),
        Input::Scan(scan) => respond(&deployer.on_scan(&scan).await?),
        Input::Verified(verified) => {
            let started = deployer
                .on_environment_free(&verified.app, &verified.environment)
                .await?;
            let promoted = deployer.on_source_verified(&verified).await?;
            let tag = deployer
                .on_verified(&verified.app, &verified.environment, &verified.image.digest)
                .await?;
            respond(&json!({ "queued": started, "promoted": promoted, "ecr_tag": tag }))
        }
        Input::Approved {
            app,
            environment,
            digest,
            event_id,
        } => {
            let started = deployer
                .on_approved(&app, &environment, &digest, &event_id)
                .await?;
            respond(&json!({ "approved": started }))
        }
        Input::Freed { app, environment } => {
            let started = deployer.on_environment_free(&app, &environment).await?;
            respond(&json!({ "queued": started }))
        }
        Input::Deploy(request) => respond(&deployer.manual(&request).await?),
        Input::Promote(request) => respond(&deployer.promote_by_hand(&request).await?),
    }
}

/// What Lambda calls.
pub async fn handle(deployer: &Deployer, event: LambdaEvent<Value>) -> Result<Value, ServiceError> {
    run(deployer, parse(event.payload)?).await
}

#[cfg(test)]
mod tests {

    use crate::domain::{Digest, Phase};
    use crate::fakes::{FakeRegistry, FakeTarget, ManualClock, MemoryStore, RecordingPublisher};
    use crate::ports::StateStore;
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
        world_with(crate::fakes::World::SAMPLE_CONFIG)
    }

    fn world_with(config: &str) -> World {
        let w = crate::fakes::World::new(config);
        World {
            deployer: w.deployer(),
            store: w.store,
            target: w.target,
            events: w.events,
            registry: w.registry,
            clock: w.clock,
        }
    }

    fn event(json: &str) -> LambdaEvent<Value> {
        crate::fakes::invocation(json)
    }

    fn app_env(env: &str) -> (crate::domain::AppName, crate::domain::EnvName) {
        (crate::fakes::app("web"), crate::fakes::env_name(env))
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
        let mut state = crate::ports::StateStore::env_state(&w.store, &app, &env)
            .await
            .unwrap();
        let holder = state.holder().unwrap().clone();
        state.release(&holder);
        crate::ports::StateStore::commit(&w.store, crate::ports::Commit::env(&mut state))
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
        use crate::ports::{Commit, StateStore};
        let (app, env) = app_env("staging");
        let mut dep = crate::domain::Deployment::new(
            app.clone(),
            env.clone(),
            crate::domain::Request {
                image: crate::domain::PinnedImage {
                    registry: w.registry.registry.clone(),
                    repository: crate::domain::Repository::parse("acme/web").unwrap(),
                    digest: digest.clone(),
                },
                tag: None,
                kind: crate::domain::Kind::Push,
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
    fn delivered(e: &crate::domain::LifecycleEvent, id: &str) -> String {
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

    fn control(w: &World) -> crate::services::Control {
        crate::services::Control {
            core: w.deployer.core.clone(),
        }
    }

    async fn production_state(w: &World) -> crate::domain::EnvState {
        let (app, env) = app_env("production");
        crate::ports::StateStore::env_state(&w.store, &app, &env)
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
            crate::ports::StateStore::deployment(&w.store, &app, &env, &started.deployment_id)
                .await
                .unwrap();
        assert_eq!(dep.kind, crate::domain::Kind::Promotion);
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
            crate::ports::StateStore::deployment(&w.store, &app, &env, &started.deployment_id)
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
        // Alice approving again (her first answer was lost) gets her approval back.
        let again = control(&w)
            .approve(&app, &env, &digest, "alice")
            .await
            .unwrap();
        assert!(!again.changed);
        assert_eq!(again.at, datetime!(2026-11-20 10:00 UTC));
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
                "has no environment \"qa\"",
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
        assert_eq!(out["approved"]["outcome"], "skipped", "{out}");
        assert!(
            out["approved"]["reason"]
                .as_str()
                .unwrap()
                .contains("no longer waits here, so nothing deploys it"),
            "{out}"
        );
        assert!(w.target.started().is_empty());
    }

    /// The sample configuration with a vulnerability gate on staging.
    fn gated(scan: &str) -> World {
        world_with(&crate::fakes::World::SAMPLE_CONFIG.replacen(
            "          within_seconds: 60\n",
            &format!("          within_seconds: 60\n        scan: {scan}\n"),
            1,
        ))
    }

    const SAMPLE_DIGEST: &str =
        "sha256:3f2c7b1d9e8a4c6b5d0e1f2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e";

    fn push_sample(w: &World) -> Value {
        w.registry.push(
            "acme/web",
            Some("v1.4.0"),
            &Digest::parse(SAMPLE_DIGEST).unwrap(),
        );
        serde_json::from_str(include_str!("../../../events/deployer/ecr-push.json")).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_push_waits_for_its_scan_and_the_ecr_scan_sample_blocks_it_with_its_counts() {
        let w = gated("{ max: { critical: 0, high: 5 } }");
        let push = push_sample(&w);
        let out = handle(&w.deployer, LambdaEvent::new(push, Default::default()))
            .await
            .unwrap();
        let staging = &out["results"][0];
        assert_eq!(staging["outcome"], "awaiting_scan", "{out}");
        assert_eq!(staging["until"], "2026-11-20T10:15:00Z", "{out}");
        assert!(w.target.started().is_empty());
        assert_eq!(w.events.types(), ["Scan Awaited"]);
        let (app, env) = app_env("staging");
        let held = w.store.env_state(&app, &env).await.unwrap();
        assert_eq!(
            held.awaiting_scan.unwrap().request.image.digest.as_str(),
            SAMPLE_DIGEST
        );

        let scan = include_str!("../../../events/deployer/ecr-image-scan.json");
        let out = handle(&w.deployer, event(scan)).await.unwrap();
        assert_eq!(out["recorded"], json!(["web/staging"]), "{out}");
        assert_eq!(
            out["findings"],
            json!({"critical": 2, "high": 7, "medium": 9})
        );
        let decided = &out["decided"][0];
        assert_eq!(decided["outcome"], "blocked", "{out}");
        assert_eq!(
            decided["reason"],
            "its vulnerability scan found critical 2 > 0, high 7 > 5 (this environment allows critical 0, high 5)"
        );
        assert!(
            w.target.started().is_empty(),
            "a blocked image never deploys"
        );
        let blocked = w.events.events().pop().unwrap();
        assert_eq!(blocked.detail_type.as_str(), "Deployment Blocked");
        let crate::domain::Detail::Deployment(d) = &blocked.detail else {
            panic!("{blocked:?}")
        };
        assert_eq!(
            d.findings.as_ref().unwrap().to_string(),
            "critical 2, high 7, medium 9"
        );
        assert_eq!(d.digest.as_ref().unwrap().as_str(), SAMPLE_DIGEST);
        let state = w.store.env_state(&app, &env).await.unwrap();
        assert!(state.awaiting_scan.is_none() && state.current.is_none());

        // The same event again, and the same push again, deploy nothing and say so.
        let again = handle(&w.deployer, event(scan)).await.unwrap();
        assert_eq!(again["decided"], json!([]), "{again}");
        let out = handle(
            &w.deployer,
            LambdaEvent::new(push_sample(&w), Default::default()),
        )
        .await
        .unwrap();
        assert_eq!(out["results"][0]["outcome"], "skipped", "{out}");
        assert_eq!(
            out["results"][0]["reason"],
            "this event was already handled"
        );
        assert!(w.target.started().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn the_inspector_sample_within_the_thresholds_lets_the_waiting_push_roll_out() {
        let w = gated("{ max: { critical: 0, high: 5 } }");
        let push = push_sample(&w);
        handle(&w.deployer, LambdaEvent::new(push, Default::default()))
            .await
            .unwrap();
        let scan = include_str!("../../../events/deployer/inspector-scan.json");
        let out = handle(&w.deployer, event(scan)).await.unwrap();
        assert_eq!(out["decided"][0]["outcome"], "started", "{out}");
        assert!(w.target.last().image.ends_with(SAMPLE_DIGEST));
    }

    #[tokio::test(start_paused = true)]
    async fn a_scan_result_that_arrived_before_the_push_counts() {
        let w = gated("{ max: { critical: 0 } }");
        let scan = include_str!("../../../events/deployer/inspector-scan.json");
        let out = handle(&w.deployer, event(scan)).await.unwrap();
        assert_eq!(out["recorded"], json!(["web/staging"]), "{out}");
        assert_eq!(out["decided"], json!([]));
        let push = push_sample(&w);
        let out = handle(&w.deployer, LambdaEvent::new(push, Default::default()))
            .await
            .unwrap();
        assert_eq!(out["results"][0]["outcome"], "started", "{out}");
        assert!(!w.events.types().contains(&"Scan Awaited"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_scan_of_a_repository_no_gate_watches_records_nothing() {
        let w = world();
        let scan = include_str!("../../../events/deployer/ecr-image-scan.json");
        let out = handle(&w.deployer, event(scan)).await.unwrap();
        assert_eq!(out["recorded"], json!([]), "{out}");
        let (app, env) = app_env("staging");
        assert!(
            w.store
                .env_state(&app, &env)
                .await
                .unwrap()
                .scans
                .is_empty()
        );
    }

    #[test]
    fn a_scan_event_names_its_repository_even_as_inspector_s_arn_and_reads_absent_counts_as_zero() {
        let scan: Value =
            serde_json::from_str(include_str!("../../../events/deployer/inspector-scan.json"))
                .unwrap();
        let Input::Scan(s) = parse(scan.clone()).unwrap() else {
            panic!()
        };
        assert_eq!(s.repository, "acme/web");
        assert_eq!(s.scanner, Scanner::Enhanced);
        assert_eq!(s.counts.to_string(), "high 3, medium 12");
        let mut none = scan.clone();
        none["detail"]
            .as_object_mut()
            .unwrap()
            .remove("finding-severity-counts");
        let Input::Scan(s) = parse(none).unwrap() else {
            panic!()
        };
        assert_eq!(s.counts, Counts::default());
        let mut bad = scan;
        bad["detail"]["image-digest"] = json!("latest");
        let err = parse(bad).unwrap_err();
        assert!(err.to_string().contains("detail.image-digest"), "{err}");
    }
}
