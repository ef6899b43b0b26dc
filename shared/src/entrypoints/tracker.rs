//! The tracker's entrypoint: a target's status-change event (each kind of target reads its
//! own into one target-neutral `StatusEvent`), the reconciliation schedule, or
//! `{"action": "reconcile"}` from the console.

use lambda_runtime::LambdaEvent;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Function, SCHEDULE_SOURCE, SCHEDULED_EVENT, TARGET_EVENTS, check_routed};
use crate::domain::{AppName, DeploymentId, EnvName};
use crate::inbound::{Console, Envelope, is_event};
use crate::lambda::respond;
use crate::ports::StatusEvent;
use crate::services::{InputError, ServiceError, Tracker};

/// What the tracker is asked to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// Re-read every environment (the schedule, or a person).
    Reconcile,
    /// A target said something about one of its rollouts.
    Status(StatusEvent),
    /// A person aborted a deployment: cancel its action and free its environment.
    Aborted {
        app: AppName,
        environment: EnvName,
        deployment: DeploymentId,
    },
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Action {
    Reconcile,
}

/// `{"action": "reconcile"}` has no other field.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Nothing {}

pub const CONSOLE: Console = Console {
    function: "the tracker",
    default_action: None,
    actions: &["reconcile"],
    missing: |_, _| None,
};

/// Reads what the tracker received; `document` is the name of pushdeploy's SSM document,
/// whose status events are the only SSM ones that matter.
pub fn parse(payload: Value, document: &str) -> Result<Input, InputError> {
    if !is_event(&payload) {
        let (Action::Reconcile, fields) = CONSOLE.read(payload)?;
        let Nothing {} = fields.read()?;
        return Ok(Input::Reconcile);
    }
    let envelope = Envelope::read(payload)?;
    check_routed(Function::Tracker, &envelope)?;
    if (envelope.source.as_str(), envelope.detail_type.as_str())
        == (SCHEDULE_SOURCE, SCHEDULED_EVENT)
    {
        return Ok(Input::Reconcile);
    }
    if envelope.source == crate::domain::event::SOURCE {
        let (kind, detail) = envelope.lifecycle()?;
        let deployment = detail
            .deployment_id
            .ok_or_else(|| super::no_deployment_id(kind))?;
        return Ok(Input::Aborted {
            app: detail.app,
            environment: detail.environment,
            deployment,
        });
    }
    let events = TARGET_EVENTS
        .iter()
        .find(|e| {
            e.source == envelope.source && e.detail_types.contains(&envelope.detail_type.as_str())
        })
        .ok_or_else(|| InputError::NotHandled {
            function: Function::Tracker.phrase(),
            event_source: envelope.source.clone(),
            detail_type: envelope.detail_type.clone(),
        })?;
    (events.read)(&envelope, document).map(Input::Status)
}

/// Does what the input asks.
pub async fn run(tracker: &Tracker, input: Input) -> Result<Value, ServiceError> {
    match input {
        Input::Reconcile => {
            let report = tracker.reconcile().await?;
            // A pass that could not reconcile some environment fails the invocation, so the
            // error shows in the function's metrics, after every other one was handled.
            if let Some(error) = report.incomplete() {
                return Err(error);
            }
            respond(&report)
        }
        Input::Aborted {
            app,
            environment,
            deployment,
        } => {
            let done = tracker.on_aborted(&app, &environment, &deployment).await?;
            respond(&json!({ "outcome": "aborted", "action": done }))
        }
        Input::Status(StatusEvent::Ignored(reason)) => {
            respond(&json!({ "outcome": "ignored", "reason": reason }))
        }
        Input::Status(StatusEvent::Rollout {
            target_ref,
            reported,
        }) => respond(&tracker.on_status(&target_ref, reported).await?),
    }
}

/// What Lambda calls.
pub async fn handle(
    tracker: &Tracker,
    document: &str,
    event: LambdaEvent<Value>,
) -> Result<Value, ServiceError> {
    run(tracker, parse(event.payload, document)?).await
}

#[cfg(test)]
mod tests {

    use std::time::Duration;

    use crate::domain::{Deployment, DeploymentId, Kind, Phase, PinnedImage, Request};
    use crate::fakes::{FakeTarget, ManualClock, MemoryStore, RecordingPublisher};
    use crate::ports::{Clock, Commit, RolloutStatus, StateStore};

    use super::*;
    use crate::adapters::ssm;
    use crate::ports::TargetRef;
    use lambda_runtime::Context;

    const DOCUMENT: &str = "pushdeploy-deploy";
    const COMMAND: &str = "8d4b3a6e-1f2c-4d5e-9a8b-7c6d5e4f3a2b";

    struct World {
        tracker: Tracker,
        store: MemoryStore,
        target: FakeTarget,
        events: RecordingPublisher,
        clock: ManualClock,
    }

    fn world() -> World {
        let w = crate::fakes::World::sample();
        World {
            tracker: w.tracker(),
            store: w.store,
            target: w.target,
            events: w.events,
            clock: w.clock,
        }
    }

    /// A staging deployment rolling out under the command of the sample events.
    async fn rolling_out(w: &World) -> Deployment {
        let dep = rolling_out_as(w, &format!("ssm:{COMMAND}")).await;
        w.target.set_status(
            &TargetRef::new(ssm::KIND, COMMAND),
            RolloutStatus::InProgress,
        );
        dep
    }

    /// A staging deployment rolling out under `target_ref`.
    async fn rolling_out_as(w: &World, target_ref: &str) -> Deployment {
        let image = PinnedImage::parse(&format!(
            "123456789012.dkr.ecr.eu-west-1.amazonaws.com/acme/web@sha256:{}",
            "3f2c7b1d9e8a4c6b5d0e1f2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e"
        ))
        .unwrap();
        let request = Request {
            image,
            tag: None,
            kind: Kind::Push,
            pushed_at: w.clock.now(),
            requested_by: None,
            reason: None,
        };
        let app = crate::fakes::app("web");
        let env = crate::fakes::env_name("staging");
        let mut dep = Deployment::new(app.clone(), env.clone(), request, w.clock.now());
        dep.id = DeploymentId::parse("01JD8Z6V6WQ5N8B9C3H4K2M7PX").unwrap();
        let mut state = w.store.env_state(&app, &env).await.unwrap();
        state.start(&mut dep);
        dep.apply(crate::domain::Step::RolloutStarted, w.clock.now(), None)
            .unwrap();
        dep.target_ref = Some(target_ref.to_owned());
        w.store
            .commit(Commit {
                link_target_refs: true,
                ..Commit::env(&mut state).with(&mut dep)
            })
            .await
            .unwrap();
        dep
    }

    fn event(json: &str) -> LambdaEvent<Value> {
        crate::fakes::invocation(json)
    }

    /// Hands `sample` to the tracker; returns its answer and the deployment as stored after.
    async fn after(w: &World, dep: &Deployment, sample: &str) -> (Value, Deployment) {
        let out = handle(&w.tracker, DOCUMENT, event(sample)).await.unwrap();
        let stored = w
            .store
            .deployment(&dep.app, &dep.environment, &dep.id)
            .await
            .unwrap();
        (out, stored)
    }

    async fn phase(w: &World, dep: &Deployment) -> Phase {
        w.store
            .deployment(&dep.app, &dep.environment, &dep.id)
            .await
            .unwrap()
            .phase
    }

    /// The deployment of the ECS sample events.
    const ECS_REF: &str = "ecs:prod/web/ecs-svc/4372928184467399157";
    /// The deployment of the CodeDeploy sample events.
    const CODEDEPLOY_REF: &str = "codedeploy:d-7Q2X9K4LB";

    #[tokio::test]
    async fn each_targets_success_event_marks_its_rollout_succeeded_once() {
        let cases = [
            (
                format!("ssm:{COMMAND}"),
                include_str!("../../../events/tracker/ssm-command-success.json"),
            ),
            (
                ECS_REF.to_owned(),
                include_str!("../../../events/tracker/ecs-deployment-completed.json"),
            ),
            (
                CODEDEPLOY_REF.to_owned(),
                include_str!("../../../events/tracker/codedeploy-success.json"),
            ),
        ];
        for (target_ref, sample) in cases {
            let w = world();
            let dep = rolling_out_as(&w, &target_ref).await;
            // What SSM answers when the command is read back.
            w.target.set_status(
                &TargetRef::parse(&target_ref).unwrap(),
                RolloutStatus::Succeeded,
            );
            for _ in 0..2 {
                handle(&w.tracker, DOCUMENT, event(sample)).await.unwrap();
            }
            assert_eq!(phase(&w, &dep).await, Phase::RolledOut, "{target_ref}");
            assert_eq!(w.events.types(), vec!["Rollout Succeeded"], "{target_ref}");
        }
    }

    #[tokio::test]
    async fn a_command_that_succeeded_on_no_host_fails_the_rollout_saying_so() {
        let w = world();
        let dep = rolling_out(&w).await;
        // SSM says Success for a command whose targets matched no instance; read back, the
        // command says it reached no host.
        let no_host = "SSM command 8d4b3a6e reached no host: no instance matched tag Role=web-staging; check the environment's `instances`";
        w.target.set_status(
            &TargetRef::new(ssm::KIND, COMMAND),
            RolloutStatus::Failed(no_host.into()),
        );
        let (out, stored) = after(
            &w,
            &dep,
            include_str!("../../../events/tracker/ssm-command-success.json"),
        )
        .await;
        assert_eq!(out["outcome"], "failed", "{out}");
        assert_eq!(stored.phase, Phase::Failed);
        assert_eq!(stored.reason.as_deref(), Some(no_host));
        assert_eq!(w.events.types(), vec!["Rollout Failed"]);
    }

    #[tokio::test]
    async fn a_failed_command_fails_the_rollout_and_quarantines_the_digest() {
        let w = world();
        let dep = rolling_out(&w).await;
        let out = handle(
            &w.tracker,
            DOCUMENT,
            event(include_str!(
                "../../../events/tracker/ssm-command-failed.json"
            )),
        )
        .await
        .unwrap();
        assert_eq!(out["outcome"], "failed");
        assert_eq!(phase(&w, &dep).await, Phase::Failed);
        let state = w.store.env_state(&dep.app, &dep.environment).await.unwrap();
        assert!(state.quarantined.contains_key(dep.digest().as_str()));
        assert!(
            state.is_held_by(&dep.id),
            "the rollback takes the environment over, not the next push"
        );
        assert_eq!(w.events.types(), vec!["Rollout Failed"]);
    }

    #[tokio::test]
    async fn a_per_host_event_reads_the_whole_command_back() {
        let w = world();
        let dep = rolling_out(&w).await;
        let out = handle(
            &w.tracker,
            DOCUMENT,
            event(include_str!(
                "../../../events/tracker/ssm-invocation-failed.json"
            )),
        )
        .await
        .unwrap();
        assert_eq!(
            out["outcome"], "in_progress",
            "one host failing is not yet the command failing"
        );
        w.target.set_status(
            &TargetRef::new(ssm::KIND, COMMAND),
            RolloutStatus::Failed("2 of 2 hosts failed".into()),
        );
        handle(
            &w.tracker,
            DOCUMENT,
            event(include_str!(
                "../../../events/tracker/ssm-invocation-failed.json"
            )),
        )
        .await
        .unwrap();
        assert_eq!(phase(&w, &dep).await, Phase::Failed);
    }

    #[tokio::test]
    async fn a_failed_ecs_deployment_fails_the_rollout_with_the_reason_ecs_gives() {
        let w = world();
        let dep = rolling_out_as(&w, ECS_REF).await;
        let (out, stored) = after(
            &w,
            &dep,
            include_str!("../../../events/tracker/ecs-deployment-failed.json"),
        )
        .await;
        assert_eq!(out["outcome"], "failed");
        assert_eq!(stored.phase, Phase::Failed);
        assert!(
            stored.reason.as_deref().is_some_and(
                |r| r.starts_with("ECS deployment failed: ECS deployment circuit breaker")
            ),
            "{:?}",
            stored.reason
        );
        assert_eq!(w.events.types(), vec!["Rollout Failed"]);
    }

    #[tokio::test]
    async fn an_ecs_deployment_in_progress_is_read_back_from_the_service() {
        let w = world();
        let dep = rolling_out_as(&w, ECS_REF).await;
        let ecs_ref = TargetRef::parse(ECS_REF).unwrap();
        w.target.set_status(&ecs_ref, RolloutStatus::InProgress);
        let sample = include_str!("../../../events/tracker/ecs-deployment-in-progress.json");
        let out = handle(&w.tracker, DOCUMENT, event(sample)).await.unwrap();
        assert_eq!(out["outcome"], "in_progress");
        w.target.set_status(&ecs_ref, RolloutStatus::Succeeded);
        handle(&w.tracker, DOCUMENT, event(sample)).await.unwrap();
        assert_eq!(phase(&w, &dep).await, Phase::RolledOut);
    }

    #[tokio::test]
    async fn ecs_deployments_pushdeploy_did_not_start_are_ignored() {
        let w = world();
        let out = handle(
            &w.tracker,
            DOCUMENT,
            event(include_str!(
                "../../../events/tracker/ecs-deployment-completed.json"
            )),
        )
        .await
        .unwrap();
        assert_eq!(out["outcome"], "ignored");
        let mut old_arn: Value = serde_json::from_str(include_str!(
            "../../../events/tracker/ecs-deployment-failed.json"
        ))
        .unwrap();
        old_arn["resources"] = json!(["arn:aws:ecs:eu-west-1:123456789012:service/web"]);
        let out = handle(
            &w.tracker,
            DOCUMENT,
            LambdaEvent::new(old_arn, Context::default()),
        )
        .await
        .unwrap();
        assert_eq!(out["outcome"], "ignored");
        assert!(out["reason"].as_str().unwrap().contains("old ARN format"));
        assert_eq!(w.store.commits(), 0);
    }

    #[tokio::test]
    async fn a_failed_codedeploy_deployment_records_codedeploys_own_account_of_it() {
        let w = world();
        let dep = rolling_out_as(&w, CODEDEPLOY_REF).await;
        let said = "CodeDeploy deployment d-7Q2X9K4LB ended Failed: HEALTH_CONSTRAINTS too many instances failed; CodeDeploy's automatic rollback d-8 is InProgress";
        w.target.set_status(
            &TargetRef::parse(CODEDEPLOY_REF).unwrap(),
            RolloutStatus::Failed(said.into()),
        );
        let (out, stored) = after(
            &w,
            &dep,
            include_str!("../../../events/tracker/codedeploy-failure.json"),
        )
        .await;
        assert_eq!(out["outcome"], "failed");
        assert_eq!(stored.phase, Phase::Failed);
        assert_eq!(stored.reason.as_deref(), Some(said));
    }

    #[tokio::test]
    async fn a_failed_codedeploy_deployment_waits_for_codedeploys_own_rollback() {
        let w = world();
        let dep = rolling_out_as(&w, CODEDEPLOY_REF).await;
        let codedeploy_ref = TargetRef::parse(CODEDEPLOY_REF).unwrap();
        w.target.set_status(
            &codedeploy_ref,
            RolloutStatus::Settling("automatic rollback d-8 is InProgress".into()),
        );
        let sample = include_str!("../../../events/tracker/codedeploy-failure.json");
        let out = handle(&w.tracker, DOCUMENT, event(sample)).await.unwrap();
        assert_eq!(out["outcome"], "in_progress");
        assert_eq!(phase(&w, &dep).await, Phase::RollingOut);
        assert!(w.events.types().is_empty(), "no rollback starts yet");
        w.target.set_status(
            &codedeploy_ref,
            RolloutStatus::Failed("automatic rollback d-8 is Succeeded".into()),
        );
        handle(
            &w.tracker,
            DOCUMENT,
            event(include_str!("../../../events/tracker/schedule.json")),
        )
        .await
        .unwrap();
        assert_eq!(phase(&w, &dep).await, Phase::Failed);
        assert_eq!(w.events.types(), vec!["Rollout Failed"]);
    }

    #[tokio::test]
    async fn a_failure_event_stands_when_the_target_has_not_caught_up() {
        let w = world();
        let dep = rolling_out_as(&w, CODEDEPLOY_REF).await;
        w.target.set_status(
            &TargetRef::parse(CODEDEPLOY_REF).unwrap(),
            RolloutStatus::InProgress,
        );
        let (_, stored) = after(
            &w,
            &dep,
            include_str!("../../../events/tracker/codedeploy-failure.json"),
        )
        .await;
        assert_eq!(
            stored.reason.as_deref(),
            Some("CodeDeploy deployment d-7Q2X9K4LB ended FAILURE")
        );
    }

    #[tokio::test]
    async fn other_documents_are_ignored() {
        let w = world();
        let out = handle(
            &w.tracker,
            DOCUMENT,
            event(include_str!(
                "../../../events/tracker/ssm-other-document.json"
            )),
        )
        .await
        .unwrap();
        assert_eq!(out["outcome"], "ignored");
        assert_eq!(w.store.commits(), 0);
    }

    #[tokio::test]
    async fn the_schedule_completes_a_rollout_whose_event_was_lost() {
        let w = world();
        let dep = rolling_out(&w).await;
        w.target.set_status(
            &TargetRef::new(ssm::KIND, COMMAND),
            RolloutStatus::Succeeded,
        );
        handle(
            &w.tracker,
            DOCUMENT,
            event(include_str!("../../../events/tracker/schedule.json")),
        )
        .await
        .unwrap();
        assert_eq!(phase(&w, &dep).await, Phase::RolledOut);
    }

    #[tokio::test]
    async fn the_schedule_times_out_a_stuck_rollout_and_cancels_it() {
        let w = world();
        let dep = rolling_out(&w).await;
        w.clock.advance(Duration::from_secs(901));
        handle(
            &w.tracker,
            DOCUMENT,
            event(include_str!(
                "../../../events/tracker/manual-reconcile.json"
            )),
        )
        .await
        .unwrap();
        let stored = w
            .store
            .deployment(&dep.app, &dep.environment, &dep.id)
            .await
            .unwrap();
        assert_eq!(stored.phase, Phase::Failed);
        assert_eq!(
            stored.reason.as_deref(),
            Some("timed out after 900 seconds")
        );
        assert_eq!(w.target.cancelled(), vec![format!("ssm:{COMMAND}")]);
    }

    #[tokio::test]
    async fn unknown_console_actions_are_refused() {
        let w = world();
        let err = handle(&w.tracker, DOCUMENT, event(r#"{"action": "deploy"}"#))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("accepts \"reconcile\""), "{err}");
    }
}
