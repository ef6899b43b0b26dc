//! The verifier's entrypoint: a `Rollout Succeeded` lifecycle event (the same event, pasted
//! in the console, verifies a rolled-out deployment by hand), the reconciler's
//! `Verification Due` (the hand-over repeated, or the alarm watch going on), or a CloudWatch
//! alarm's state change.

use lambda_runtime::LambdaEvent;
use serde::Deserialize;
use serde_json::Value;
use time::OffsetDateTime;

use super::{ALARM_STATE_CHANGE, Function, check_routed};
use crate::domain::{AppName, DeploymentId, EnvName};
use crate::inbound::{Envelope, is_event};
use crate::lambda::respond;
use crate::services::{InputError, ServiceError, Verifier};

/// What the verifier is asked to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// Run the smoke checks of a rolled-out deployment, or go on with its alarm watch.
    Verify {
        app: AppName,
        environment: EnvName,
        deployment: DeploymentId,
    },
    /// A CloudWatch alarm changed state.
    Alarm {
        name: String,
        state: String,
        reason: String,
        /// When CloudWatch says the state changed (`detail.state.timestamp`), if readable.
        changed_at: Option<OffsetDateTime>,
    },
}

/// The `detail` of a `CloudWatch Alarm State Change` event, as far as it is read.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AlarmDetail {
    alarm_name: String,
    state: AlarmStateDetail,
}

#[derive(Deserialize)]
struct AlarmStateDetail {
    value: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    timestamp: Option<String>,
}

/// A time as CloudWatch writes it in alarm events (`2026-11-20T10:06:00.000+0000`), or in
/// RFC 3339.
fn alarm_time(text: &str) -> Option<OffsetDateTime> {
    use time::format_description::well_known::Rfc3339;
    const CLOUDWATCH: &[time::format_description::BorrowedFormatItem<'_>] = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond][offset_hour sign:mandatory][offset_minute]"
    );
    OffsetDateTime::parse(text, &Rfc3339)
        .or_else(|_| OffsetDateTime::parse(text, CLOUDWATCH))
        .ok()
}

pub fn parse(payload: Value) -> Result<Input, InputError> {
    if !is_event(&payload) {
        return Err(InputError::Rule(
            "the verifier takes a \"Rollout Succeeded\" event (see events/verifier/rollout-succeeded.json)".into(),
        ));
    }
    let envelope = Envelope::read(payload)?;
    check_routed(Function::Verifier, &envelope)?;
    if envelope.detail_type == ALARM_STATE_CHANGE {
        let detail: AlarmDetail = envelope.detail()?;
        return Ok(Input::Alarm {
            name: detail.alarm_name,
            state: detail.state.value,
            reason: detail.state.reason,
            changed_at: detail.state.timestamp.as_deref().and_then(alarm_time),
        });
    }
    let (kind, detail) = envelope.lifecycle()?;
    let deployment = detail
        .deployment_id
        .ok_or_else(|| super::no_deployment_id(kind))?;
    Ok(Input::Verify {
        app: detail.app,
        environment: detail.environment,
        deployment,
    })
}

pub async fn run(verifier: &Verifier, input: Input) -> Result<Value, ServiceError> {
    match input {
        Input::Verify {
            app,
            environment,
            deployment,
        } => respond(
            &verifier
                .on_rollout_succeeded(&app, &environment, &deployment)
                .await?,
        ),
        Input::Alarm {
            name,
            state,
            reason,
            changed_at,
        } => respond(
            &verifier
                .on_alarm(&name, &state, &reason, changed_at)
                .await?,
        ),
    }
}

/// What Lambda calls.
pub async fn handle(verifier: &Verifier, event: LambdaEvent<Value>) -> Result<Value, ServiceError> {
    run(verifier, parse(event.payload)?).await
}

#[cfg(test)]
mod tests {

    use crate::domain::{Deployment, DeploymentId, Kind, Phase, PinnedImage, Request, Step};
    use crate::fakes::{MemoryStore, RecordingPublisher, ScriptedProbe};
    use crate::ports::{Clock, Commit, StateStore};

    use super::*;
    use lambda_runtime::Context;

    const URL: &str = "http://web-staging.internal/health";

    struct World {
        verifier: Verifier,
        store: MemoryStore,
        events: RecordingPublisher,
        probe: ScriptedProbe,
    }

    async fn rolled_out() -> (World, Deployment) {
        let w = crate::fakes::World::sample();
        let (store, events, probe, clock) = (
            w.store.clone(),
            w.events.clone(),
            w.probe.clone(),
            w.clock.clone(),
        );
        let verifier = w.verifier();
        let image = PinnedImage::parse(
            "123456789012.dkr.ecr.eu-west-1.amazonaws.com/acme/web@sha256:3f2c7b1d9e8a4c6b5d0e1f2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e",
        )
        .unwrap();
        let request = Request {
            image,
            tag: None,
            kind: Kind::Push,
            pushed_at: clock.now(),
            requested_by: None,
            reason: None,
        };
        let app = crate::fakes::app("web");
        let env = crate::fakes::env_name("staging");
        let mut dep = Deployment::new(app.clone(), env.clone(), request, clock.now());
        dep.id = DeploymentId::parse("01JD8Z6V6WQ5N8B9C3H4K2M7PX").unwrap();
        let mut state = store.env_state(&app, &env).await.unwrap();
        state.start(&mut dep);
        dep.apply(Step::RolloutStarted, clock.now(), None).unwrap();
        dep.apply(Step::RolloutSucceeded, clock.now(), None)
            .unwrap();
        store
            .commit(Commit::env(&mut state).with(&mut dep))
            .await
            .unwrap();
        (
            World {
                verifier,
                store,
                events,
                probe,
            },
            dep,
        )
    }

    fn event() -> LambdaEvent<Value> {
        let json = include_str!("../../../events/verifier/rollout-succeeded.json");
        LambdaEvent::new(serde_json::from_str(json).unwrap(), Context::default())
    }

    #[tokio::test(start_paused = true)]
    async fn passing_checks_make_the_digest_last_verified_and_free_the_environment() {
        let (w, dep) = rolled_out().await;
        w.probe.answer(
            URL,
            vec![
                ScriptedProbe::ok(503, "starting"),
                ScriptedProbe::ok(200, "ok"),
            ],
        );
        let out = handle(&w.verifier, event()).await.unwrap();
        assert_eq!(out["outcome"], "verified", "{out}");
        assert_eq!(
            out["checks"][0]["attempts"], 2,
            "a check is retried until it passes"
        );
        let state = w.store.env_state(&dep.app, &dep.environment).await.unwrap();
        assert_eq!(state.last_verified().unwrap().digest, dep.image.digest);
        assert!(state.lease.is_none());
        assert_eq!(
            w.events.types(),
            vec!["Verification Started", "Deployment Verified"]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_check_still_failing_at_the_deadline_fails_verification_with_the_reason() {
        let (w, dep) = rolled_out().await;
        w.probe.answer(URL, vec![ScriptedProbe::ok(500, "boom")]);
        let out = handle(&w.verifier, event()).await.unwrap();
        assert_eq!(out["outcome"], "failed");
        let reason = out["reason"].as_str().unwrap();
        assert_eq!(
            reason,
            format!("smoke test failed: {URL}: status 500 (expected 200)")
        );
        assert!(
            w.probe.calls(URL) > 3,
            "retried with backoff until the deadline"
        );
        let stored = w
            .store
            .deployment(&dep.app, &dep.environment, &dep.id)
            .await
            .unwrap();
        assert_eq!(stored.phase, Phase::Failed);
        let state = w.store.env_state(&dep.app, &dep.environment).await.unwrap();
        assert!(state.quarantined.contains_key(dep.digest().as_str()));
        assert!(state.verified.is_empty());
        assert_eq!(
            w.events.types(),
            vec!["Verification Started", "Verification Failed"]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_without_the_expected_text_fails() {
        let (w, _) = rolled_out().await;
        w.probe
            .answer(URL, vec![ScriptedProbe::ok(200, "degraded")]);
        let out = handle(&w.verifier, event()).await.unwrap();
        assert!(
            out["reason"]
                .as_str()
                .unwrap()
                .contains("body does not contain \"ok\""),
            "{out}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_alarm_sample_fails_the_deployment_watching_it() {
        let w = crate::fakes::World::new(&crate::fakes::World::SAMPLE_CONFIG.replacen(
            "          within_seconds: 60\n",
            "          within_seconds: 60\n        watch: { alarms: [web-staging-5xx] }\n",
            1,
        ));
        w.probe.answer(URL, vec![ScriptedProbe::ok(200, "ok")]);
        w.alarms
            .set("web-staging-5xx", crate::ports::AlarmValue::Ok, "quiet");
        let mut state = w.state("staging");
        let mut dep = Deployment::new(
            state.app.clone(),
            state.environment.clone(),
            Request {
                image: w.image('a'),
                tag: None,
                kind: Kind::Push,
                pushed_at: w.clock.now(),
                requested_by: None,
                reason: None,
            },
            w.clock.now(),
        );
        state.start(&mut dep);
        dep.apply(Step::RolloutStarted, w.clock.now(), None)
            .unwrap();
        dep.apply(Step::RolloutSucceeded, w.clock.now(), None)
            .unwrap();
        w.store
            .commit(Commit::env(&mut state).with(&mut dep))
            .await
            .unwrap();
        let rollout_succeeded = crate::fakes::delivered(
            &crate::domain::LifecycleEvent::of(crate::domain::EventType::RolloutSucceeded, &dep),
            "e-1",
        );
        let out = handle(
            &w.verifier(),
            crate::fakes::invocation(&rollout_succeeded.to_string()),
        )
        .await
        .unwrap();
        assert_eq!(out["outcome"], "watching", "{out}");
        let sample = include_str!("../../../events/verifier/alarm-state-change.json");
        // An old state change, delivered late: CloudWatch said ALARM a week before the
        // watch began.
        let mut old: Value = serde_json::from_str(sample).unwrap();
        old["detail"]["state"]["timestamp"] = "2026-11-13T10:06:00.000+0000".into();
        let out = handle(&w.verifier(), crate::fakes::invocation(&old.to_string()))
            .await
            .unwrap();
        assert_eq!(out["failed"], serde_json::json!([]), "{out}");
        assert!(
            out["ignored"][0]
                .as_str()
                .unwrap()
                .contains("before the watch"),
            "{out}"
        );
        // A change during the watch that CloudWatch no longer reports (out of order, or
        // back to OK): the deployment goes on.
        let reads = w.alarms.calls();
        let out = handle(&w.verifier(), crate::fakes::invocation(sample))
            .await
            .unwrap();
        assert_eq!(out["failed"], serde_json::json!([]), "{out}");
        assert_eq!(
            w.alarms.calls(),
            reads + 1,
            "CloudWatch is asked what it says now"
        );
        assert_eq!(w.deployments("staging")[0].phase, Phase::Verifying);
        // In ALARM now: the deployment fails, saying so.
        w.alarms.set(
            "web-staging-5xx",
            crate::ports::AlarmValue::Alarm,
            "Threshold Crossed: 12 > 5",
        );
        let out = handle(&w.verifier(), crate::fakes::invocation(sample))
            .await
            .unwrap();
        assert_eq!(out["failed"][0], dep.id.as_str(), "{out}");
        let stored = &w.deployments("staging")[0];
        assert_eq!(stored.phase, Phase::Failed);
        assert!(
            stored.reason.as_deref().unwrap().starts_with(
                "alarm web-staging-5xx is in ALARM after the smoke tests passed: Threshold Crossed"
            ),
            "{:?}",
            stored.reason
        );
    }

    #[test]
    fn alarm_times_read_as_cloudwatch_writes_them() {
        assert_eq!(
            super::alarm_time("2026-11-20T10:06:00.000+0000"),
            Some(time::macros::datetime!(2026-11-20 10:06 UTC))
        );
        assert_eq!(
            super::alarm_time("2026-11-20T11:06:00.5+01:00"),
            Some(time::macros::datetime!(2026-11-20 10:06:00.5 UTC))
        );
        assert_eq!(super::alarm_time("yesterday"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_repeated_event_does_not_verify_twice() {
        let (w, _) = rolled_out().await;
        w.probe.answer(URL, vec![ScriptedProbe::ok(200, "ok")]);
        handle(&w.verifier, event()).await.unwrap();
        let out = handle(&w.verifier, event()).await.unwrap();
        assert_eq!(out["outcome"], "already_handled");
        assert_eq!(w.probe.calls(URL), 1);
    }
}
