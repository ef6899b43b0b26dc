//! Proving a rollout healthy: HTTP smoke checks, run in parallel, each retried with backoff
//! until the environment's deadline, then, where the environment watches alarms, a bake
//! time in which none of them may be in `ALARM`. Passing makes the digest the
//! environment's last verified image; failing hands the deployment to the rollback.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tracing::{info, warn};

use super::rollout::advance;
use super::{Core, ServiceError, retry_on_conflict};
use crate::domain::config::Watch;
use crate::domain::config::{SmokeCheck, SmokeConfig};
use crate::domain::{
    AppName, Deployment, DeploymentId, EnvName, EnvState, EventType, LifecycleEvent, Outcome,
    Phase, Step,
};
use crate::ports::{AlarmError, AlarmValue, Alarms, Commit, HttpProbe};
use time::OffsetDateTime;

/// The longest pause between two attempts of one check.
const MAX_BACKOFF: Duration = Duration::from_secs(8);
const FIRST_BACKOFF: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum VerifyOutcome {
    Verified {
        deployment_id: DeploymentId,
        checks: Vec<CheckReport>,
    },
    Failed {
        deployment_id: DeploymentId,
        reason: String,
        checks: Vec<CheckReport>,
    },
    AlreadyHandled {
        deployment_id: DeploymentId,
        phase: Phase,
    },
    /// The smoke tests passed; the environment's alarms are watched until `until`, and the
    /// deployment stays `Verifying` (its environment held) until then.
    Watching {
        deployment_id: DeploymentId,
        #[serde(with = "time::serde::rfc3339")]
        until: OffsetDateTime,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        checks: Vec<CheckReport>,
    },
}

/// What an alarm's state change did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlarmOutcome {
    pub alarm: String,
    pub state: String,
    /// The deployments it failed: those whose environment watches it, in their watch, while
    /// CloudWatch says a watched alarm is in `ALARM`.
    pub failed: Vec<DeploymentId>,
    /// Deployments in their watch it did not fail, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignored: Vec<String>,
}

/// How one smoke check went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckReport {
    pub url: String,
    pub passed: bool,
    pub attempts: u32,
    /// The last failure, when it did not pass.
    pub error: Option<String>,
}

#[derive(Clone)]
pub struct Verifier {
    pub core: Core,
    pub probe: Arc<dyn HttpProbe>,
    pub alarms: Arc<dyn Alarms>,
}

impl Verifier {
    #[tracing::instrument(skip_all, fields(app = %app, env = %env, deployment_id = %id))]
    pub async fn on_rollout_succeeded(
        &self,
        app: &AppName,
        env: &EnvName,
        id: &DeploymentId,
    ) -> Result<VerifyOutcome, ServiceError> {
        let mut dep = self.core.store.deployment(app, env, id).await?;
        // A repeated or late hand-off of a deployment that has moved on (verified, failed,
        // rolled back) changes nothing.
        if !matches!(dep.phase, Phase::RolledOut | Phase::Verifying) {
            return Ok(VerifyOutcome::AlreadyHandled {
                deployment_id: dep.id,
                phase: dep.phase,
            });
        }
        let config = self.core.config.load().await?;
        let started = advance(
            &self.core,
            &mut dep,
            Step::VerificationStarted,
            None,
            None,
            &|d| vec![LifecycleEvent::of(EventType::VerificationStarted, d)],
        )
        .await?;
        // A verification that started and never ended (its function stopped) runs again.
        if !started && dep.phase != Phase::Verifying {
            return Ok(VerifyOutcome::AlreadyHandled {
                deployment_id: dep.id,
                phase: dep.phase,
            });
        }
        // A rollback puts back a verified digest: it is not watched, since the alarms the
        // failure set off are still going off.
        let watch = config
            .env(app, env)
            .and_then(|e| e.watch.as_ref())
            .filter(|_| dep.kind != crate::domain::Kind::Rollback);
        // Its smoke tests passed already: the watch goes on.
        if dep.watch_until.is_some() {
            return self.watch(&mut dep, watch, Vec::new()).await;
        }
        let checks = match config.env(app, env) {
            Some(env_config) => run_checks(self.probe.as_ref(), &env_config.smoke).await,
            None => vec![CheckReport {
                url: String::new(),
                passed: false,
                attempts: 0,
                error: Some(format!("{app}/{env} is no longer configured")),
            }],
        };
        let failures: Vec<String> = checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| format!("{}: {}", c.url, c.error.as_deref().unwrap_or("failed")))
            .collect();
        if failures.is_empty()
            && let Some(watch) = watch
        {
            return self.start_watch(&mut dep, watch, checks).await;
        }
        let reason = if failures.is_empty() {
            match self.pass(&mut dep).await? {
                None => {
                    return Ok(VerifyOutcome::Verified {
                        deployment_id: dep.id,
                        checks,
                    });
                }
                Some(revoked) => revoked,
            }
        } else {
            format!("smoke test failed: {}", failures.join("; "))
        };
        self.fail(&mut dep, &reason).await?;
        Ok(VerifyOutcome::Failed {
            deployment_id: dep.id,
            reason,
            checks,
        })
    }

    /// The digest becomes the last verified one, the environment is free, and a rollback
    /// that got here marks the deployment it replaced as rolled back. A digest revoked here
    /// while it rolled out is not verified: the answer is why, and it fails instead.
    async fn pass(&self, dep: &mut Deployment) -> Result<Option<String>, ServiceError> {
        let id = dep.id.clone();
        retry_on_conflict(
            || format!("recording the verification of {id}"),
            async |attempt| {
                if attempt > 0 {
                    self.core.reread(dep).await?;
                }
                let mut state = self
                    .core
                    .store
                    .env_state(&dep.app, &dep.environment)
                    .await?;
                if !dep.phase.is_final()
                    && let Some(r) = state.revoked.get(dep.digest().as_str())
                {
                    return Ok(Some(format!(
                        "the digest was revoked by {} while it rolled out: {}",
                        r.by, r.reason
                    )));
                }
                let now = self.core.clock.now();
                let step = dep.apply(Step::VerificationPassed, now, None);
                match step.map_err(|source| ServiceError::Transition {
                    deployment: dep.id.clone(),
                    source,
                })? {
                    Outcome::Unchanged => return Ok(None),
                    Outcome::Changed(_) => {}
                }
                state.record_verified(dep, now);
                state.release(&dep.id);
                let mut original = match &dep.rollback_of {
                    Some(id) => Some(
                        self.core
                            .store
                            .deployment(&dep.app, &dep.environment, id)
                            .await?,
                    ),
                    None => None,
                };
                // A rollback that got here marks the deployment it replaced as rolled back
                // (a step that does not apply leaves the record as it is).
                let mut rolled_back = None;
                if let Some(o) = original.as_mut()
                    && let Ok(Outcome::Changed(_)) = o.apply(Step::RollbackSucceeded, now, None)
                {
                    rolled_back = Some(o);
                }
                let mut events = vec![LifecycleEvent::of(EventType::DeploymentVerified, dep)];
                if let Some(o) = &rolled_back {
                    events.push(LifecycleEvent::of(EventType::RollbackSucceeded, o));
                }
                let outbox = self.core.outbox(events);
                let mut commit = Commit {
                    outbox: outbox.clone(),
                    ..Commit::env(&mut state).with(dep)
                };
                if let Some(o) = rolled_back {
                    commit = commit.with(o);
                }
                self.core.store.commit(commit).await?;
                info!(deployment_id = %id, "verified");
                self.core.announce(outbox).await;
                Ok(None)
            },
        )
        .await
    }

    /// The smoke tests passed in an environment that watches alarms: one in `ALARM` now fails
    /// the deployment; else the watch starts, and lasts `watch.for_`.
    async fn start_watch(
        &self,
        dep: &mut Deployment,
        watch: &Watch,
        checks: Vec<CheckReport>,
    ) -> Result<VerifyOutcome, ServiceError> {
        if let Some(reason) = self.alarm_verdict(watch).await? {
            return self.failed(dep, reason, checks).await;
        }
        let id = dep.id.clone();
        let until = retry_on_conflict(
            || format!("starting the alarm watch of {id}"),
            async |attempt| {
                if attempt > 0 {
                    self.core.reread(dep).await?;
                }
                if let Some(until) = dep.watch_until.filter(|_| dep.phase == Phase::Verifying) {
                    return Ok(Some(until));
                }
                if dep.phase != Phase::Verifying {
                    return Ok(None);
                }
                let now = self.core.clock.now();
                let until = now + watch.for_;
                dep.watch_since = Some(now);
                dep.watch_until = Some(until);
                dep.updated_at = now;
                self.core.store.commit(Commit::deployment(dep)).await?;
                Ok(Some(until))
            },
        )
        .await?;
        let Some(until) = until else {
            return Ok(VerifyOutcome::AlreadyHandled {
                deployment_id: dep.id.clone(),
                phase: dep.phase,
            });
        };
        info!(deployment_id = %dep.id, %until, alarms = ?watch.alarms, "smoke tests passed; watching alarms");
        Ok(VerifyOutcome::Watching {
            deployment_id: dep.id.clone(),
            until,
            checks,
        })
    }

    /// A deployment in its watch, handed over again (the tracker does, every pass): an alarm
    /// in `ALARM` fails it; at the end of the watch it is verified.
    async fn watch(
        &self,
        dep: &mut Deployment,
        watch: Option<&Watch>,
        checks: Vec<CheckReport>,
    ) -> Result<VerifyOutcome, ServiceError> {
        // The environment stopped watching alarms since: nothing is left to wait for.
        if let Some(watch) = watch
            && let Some(reason) = self.alarm_verdict(watch).await?
        {
            return self.failed(dep, reason, checks).await;
        }
        let until = dep.watch_until.unwrap_or(OffsetDateTime::UNIX_EPOCH);
        if watch.is_some() && self.core.clock.now() < until {
            return Ok(VerifyOutcome::Watching {
                deployment_id: dep.id.clone(),
                until,
                checks,
            });
        }
        match self.pass(dep).await? {
            None => Ok(VerifyOutcome::Verified {
                deployment_id: dep.id.clone(),
                checks,
            }),
            Some(revoked) => self.failed(dep, revoked, checks).await,
        }
    }

    async fn failed(
        &self,
        dep: &mut Deployment,
        reason: String,
        checks: Vec<CheckReport>,
    ) -> Result<VerifyOutcome, ServiceError> {
        self.fail(dep, &reason).await?;
        Ok(VerifyOutcome::Failed {
            deployment_id: dep.id.clone(),
            reason,
            checks,
        })
    }

    /// Why the watched alarms fail the deployment now, if they do: one in `ALARM`, one that
    /// does not exist, or alarms pushdeploy may not read. An error is one to try again.
    async fn alarm_verdict(&self, watch: &Watch) -> Result<Option<String>, ServiceError> {
        let states = match self.alarms.states(&watch.alarms).await {
            Ok(states) => states,
            Err(AlarmError::Refused(e)) => {
                return Ok(Some(format!(
                    "the watched alarms cannot be read ({e}); allow cloudwatch:DescribeAlarms on them: list them in the stack's WatchedAlarms parameter"
                )));
            }
            Err(e) => return Err(e.into()),
        };
        if let Some(a) = states.iter().find(|a| a.value == AlarmValue::Alarm) {
            return Ok(Some(format!(
                "alarm {} is in ALARM after the smoke tests passed: {}",
                a.name, a.reason
            )));
        }
        let missing: Vec<&str> = watch
            .alarms
            .iter()
            .filter(|name| !states.iter().any(|a| &a.name == *name))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            return Ok(Some(format!(
                "CloudWatch has no alarm named {}; name existing alarms in watch.alarms",
                missing.join(", ")
            )));
        }
        Ok(None)
    }

    /// A CloudWatch alarm changed state. Going into `ALARM`, it may fail every deployment
    /// watching it (whose smoke tests passed and whose watch has not ended). Events come
    /// late and out of order, so the event only says when to look: a change from before the
    /// watch began is ignored, and otherwise CloudWatch is asked what the watched alarms say
    /// now, exactly as at every pass of the watch. Other changes do nothing.
    #[tracing::instrument(skip_all, fields(alarm = %alarm))]
    pub async fn on_alarm(
        &self,
        alarm: &str,
        state: &str,
        reason: &str,
        changed_at: Option<OffsetDateTime>,
    ) -> Result<AlarmOutcome, ServiceError> {
        let mut failed = Vec::new();
        let mut ignored = Vec::new();
        if AlarmValue::parse(state) == Some(AlarmValue::Alarm) {
            let config = self.core.config.load().await?;
            for (app, env, env_config) in config.environments() {
                let Some(watch) = env_config.watch.as_ref().filter(|w| w.watches(alarm)) else {
                    continue;
                };
                let state = self.core.store.env_state(app, env).await?;
                let Some(holder) = state.holder() else {
                    continue;
                };
                let mut dep = self.core.store.deployment(app, env, holder).await?;
                let Some(until) = dep.watch_until.filter(|_| dep.phase == Phase::Verifying) else {
                    continue;
                };
                let since = dep.watch_since.unwrap_or(until - watch.for_);
                if let Some(at) = changed_at.filter(|at| *at < since) {
                    info!(deployment_id = %dep.id, changed_at = %at, watch_since = %since, "an alarm state from before the watch began; ignored");
                    ignored.push(format!(
                        "deployment {}: the change at {} came before the watch began",
                        dep.id,
                        rfc3339(at)
                    ));
                    continue;
                }
                match self.alarm_verdict(watch).await? {
                    Some(why) => {
                        self.fail(&mut dep, &why).await?;
                        failed.push(dep.id);
                    }
                    None => {
                        info!(deployment_id = %dep.id, %reason, "CloudWatch no longer reports the alarm in ALARM; the watch goes on");
                        ignored.push(format!(
                            "deployment {}: no watched alarm is in ALARM now",
                            dep.id
                        ));
                    }
                }
            }
        }
        Ok(AlarmOutcome {
            alarm: alarm.to_owned(),
            state: state.to_owned(),
            failed,
            ignored,
        })
    }

    /// A digest that failed its smoke tests is quarantined here and handed to the rollback.
    async fn fail(&self, dep: &mut Deployment, reason: &str) -> Result<(), ServiceError> {
        let now = self.core.clock.now();
        let mut quarantine =
            |state: &mut EnvState, d: &Deployment| state.quarantine(d, reason, now);
        if advance(
            &self.core,
            dep,
            Step::VerificationFailed,
            Some(reason.to_owned()),
            Some(&mut quarantine),
            &|d| vec![LifecycleEvent::of(EventType::VerificationFailed, d)],
        )
        .await?
        {
            warn!(deployment_id = %dep.id, app = %dep.app, env = %dep.environment, digest = %dep.digest(), %reason, "verification failed");
        }
        Ok(())
    }
}

fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| at.to_string())
}

/// Runs every check in parallel until it passes or the deadline passes.
pub async fn run_checks(probe: &dyn HttpProbe, smoke: &SmokeConfig) -> Vec<CheckReport> {
    let deadline = Instant::now() + smoke.within;
    futures::future::join_all(
        smoke
            .checks
            .iter()
            .map(|check| run_check(probe, check, deadline)),
    )
    .await
}

async fn run_check(probe: &dyn HttpProbe, check: &SmokeCheck, deadline: Instant) -> CheckReport {
    let mut backoff = FIRST_BACKOFF;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let remaining = deadline.saturating_duration_since(Instant::now());
        let timeout = check.timeout.min(remaining).max(Duration::from_millis(100));
        let error = match probe.get(&check.url, timeout).await {
            Ok(response) if response.status != check.expect_status => {
                format!(
                    "status {} (expected {})",
                    response.status, check.expect_status
                )
            }
            Ok(response) => match &check.body_contains {
                Some(needle) if !response.body.contains(needle.as_str()) => {
                    format!("body does not contain {needle:?}")
                }
                _ => {
                    return CheckReport {
                        url: check.url.clone(),
                        passed: true,
                        attempts,
                        error: None,
                    };
                }
            },
            Err(e) => e.to_string(),
        };
        if Instant::now() + backoff >= deadline {
            return CheckReport {
                url: check.url.clone(),
                passed: false,
                attempts,
                error: Some(error),
            };
        }
        tokio::time::sleep(super::jittered(backoff)).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Kind, PinnedImage, Request};
    use crate::fakes::{ScriptedProbe, World};
    use crate::ports::{AlarmValue, Clock, StateStore};

    const URL: &str = "http://web-staging.internal/health";

    /// `image` rolled out on web/staging by a deployment of `kind`.
    async fn rolled_out(w: &World, image: PinnedImage, kind: Kind) -> Deployment {
        let mut state = w.state("staging");
        let mut dep = Deployment::new(
            state.app.clone(),
            state.environment.clone(),
            Request {
                image,
                tag: None,
                kind,
                pushed_at: World::START,
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
        dep
    }

    #[tokio::test(start_paused = true)]
    async fn a_rollbacks_verification_marks_the_deployment_it_replaced_rolled_back() {
        let w = World::sample();
        w.probe.answer(URL, vec![ScriptedProbe::ok(200, "ok")]);
        let mut failed = rolled_out(&w, w.image('b'), Kind::Push).await;
        let now = w.clock.now();
        failed.apply(Step::VerificationStarted, now, None).unwrap();
        failed.apply(Step::VerificationFailed, now, None).unwrap();
        failed.apply(Step::RollbackStarted, now, None).unwrap();
        let mut state = w.state("staging");
        state.release(&failed.id);
        w.store
            .commit(Commit::env(&mut state).with(&mut failed))
            .await
            .unwrap();
        let mut rollback = rolled_out(&w, w.image('a'), Kind::Rollback).await;
        rollback.rollback_of = Some(failed.id.clone());
        w.store
            .commit(Commit::deployment(&mut rollback))
            .await
            .unwrap();

        let out = w
            .verifier()
            .on_rollout_succeeded(&rollback.app, &rollback.environment, &rollback.id)
            .await
            .unwrap();
        assert!(matches!(out, VerifyOutcome::Verified { .. }), "{out:?}");
        let phases: Vec<(DeploymentId, Phase)> = w
            .deployments("staging")
            .into_iter()
            .map(|d| (d.id, d.phase))
            .collect();
        assert!(phases.contains(&(failed.id.clone(), Phase::RolledBack)));
        assert!(phases.contains(&(rollback.id.clone(), Phase::Verified)));
        let state = w.state("staging");
        assert!(state.lease.is_none());
        assert_eq!(state.last_verified().unwrap().digest, w.image('a').digest);
        assert_eq!(
            w.events.types(),
            vec![
                "Verification Started",
                "Deployment Verified",
                "Rollback Succeeded"
            ]
        );
    }

    /// The sample configuration, with staging watching `web-staging-5xx` for ten minutes.
    fn watching() -> World {
        let w = World::new(&World::SAMPLE_CONFIG.replacen(
            "          within_seconds: 60\n",
            "          within_seconds: 60\n        watch: { alarms: [web-staging-5xx], for_seconds: 600 }\n",
            1,
        ));
        w.probe.answer(URL, vec![ScriptedProbe::ok(200, "ok")]);
        w
    }

    const QUIET: &str =
        "Threshold Crossed: 1 datapoint [0.0] was not greater than the threshold (5.0)";
    const LOUD: &str = "Threshold Crossed: 1 datapoint [12.0] was greater than the threshold (5.0)";

    #[tokio::test(start_paused = true)]
    async fn after_its_smoke_tests_a_deployment_is_verified_only_once_its_alarms_stayed_quiet_for_the_watch()
     {
        let w = watching();
        w.alarms.set("web-staging-5xx", AlarmValue::Ok, QUIET);
        let dep = rolled_out(&w, w.image('a'), Kind::Push).await;
        let verifier = w.verifier();
        let verify = || verifier.on_rollout_succeeded(&dep.app, &dep.environment, &dep.id);
        let out = verify().await.unwrap();
        let VerifyOutcome::Watching { until, .. } = out else {
            panic!("{out:?}")
        };
        assert_eq!(until, w.clock.now() + time::Duration::minutes(10));
        let state = w.state("staging");
        assert!(state.is_held_by(&dep.id), "held through the watch");
        assert!(state.last_verified().is_none(), "not verified yet");
        assert_eq!(w.deployments("staging")[0].phase, Phase::Verifying);
        // The tracker hands it over again at each pass, as an internal event: users' rules
        // see `Rollout Succeeded` once however long the watch lasts.
        for _ in 0..3 {
            w.clock.advance(std::time::Duration::from_secs(100));
            w.tracker().reconcile().await.unwrap();
        }
        assert_eq!(
            w.events.types(),
            vec![
                "Verification Started",
                "Verification Due",
                "Verification Due",
                "Verification Due"
            ]
        );
        assert!(matches!(
            verify().await.unwrap(),
            VerifyOutcome::Watching { .. }
        ));
        assert_eq!(w.probe.calls(URL), 1, "the smoke tests ran once");
        w.clock.advance(std::time::Duration::from_secs(300));
        let out = verify().await.unwrap();
        assert!(matches!(out, VerifyOutcome::Verified { .. }), "{out:?}");
        assert_eq!(
            w.state("staging").last_verified().unwrap().digest,
            dep.image.digest
        );
        assert!(w.alarms.calls() >= 3);
    }

    #[tokio::test(start_paused = true)]
    async fn an_alarm_going_off_in_the_watch_fails_the_deployment_once_and_others_change_nothing() {
        let w = watching();
        w.alarms.set("web-staging-5xx", AlarmValue::Ok, QUIET);
        let dep = rolled_out(&w, w.image('a'), Kind::Push).await;
        w.verifier()
            .on_rollout_succeeded(&dep.app, &dep.environment, &dep.id)
            .await
            .unwrap();
        // Another alarm, or this one becoming OK, is no news.
        let now = Some(w.clock.now());
        for (alarm, state) in [("db-cpu", "ALARM"), ("web-staging-5xx", "OK")] {
            let out = w
                .verifier()
                .on_alarm(alarm, state, LOUD, now)
                .await
                .unwrap();
            assert!(out.failed.is_empty(), "{out:?}");
        }
        w.alarms.set("web-staging-5xx", AlarmValue::Alarm, LOUD);
        let out = w
            .verifier()
            .on_alarm("web-staging-5xx", "ALARM", LOUD, now)
            .await
            .unwrap();
        assert_eq!(out.failed, vec![dep.id.clone()]);
        let stored = &w.deployments("staging")[0];
        assert_eq!(stored.phase, Phase::Failed);
        assert_eq!(
            stored.reason.as_deref(),
            Some(
                format!("alarm web-staging-5xx is in ALARM after the smoke tests passed: {LOUD}")
                    .as_str()
            )
        );
        assert!(
            w.state("staging")
                .quarantined
                .contains_key(dep.digest().as_str())
        );
        assert_eq!(
            w.events.types(),
            vec!["Verification Started", "Verification Failed"]
        );
        // Delivered again, it changes nothing.
        let again = w
            .verifier()
            .on_alarm("web-staging-5xx", "ALARM", LOUD, now)
            .await
            .unwrap();
        assert!(again.failed.is_empty());
        assert_eq!(w.events.types().len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn an_alarm_already_going_off_a_missing_one_or_one_that_cannot_be_read_fails_at_once() {
        for (setup, expected) in [
            (
                Some(AlarmValue::Alarm),
                format!("alarm web-staging-5xx is in ALARM after the smoke tests passed: {LOUD}"),
            ),
            (
                None,
                "CloudWatch has no alarm named web-staging-5xx; name existing alarms in watch.alarms".to_owned(),
            ),
        ] {
            let w = watching();
            if let Some(value) = setup {
                w.alarms.set("web-staging-5xx", value, LOUD);
            }
            let dep = rolled_out(&w, w.image('a'), Kind::Push).await;
            let out = w
                .verifier()
                .on_rollout_succeeded(&dep.app, &dep.environment, &dep.id)
                .await
                .unwrap();
            let VerifyOutcome::Failed { reason, .. } = out else {
                panic!("{out:?}")
            };
            assert_eq!(reason, expected);
        }
        let w = watching();
        w.alarms
            .refuse("AccessDenied: not authorized to perform cloudwatch:DescribeAlarms");
        let dep = rolled_out(&w, w.image('a'), Kind::Push).await;
        let out = w
            .verifier()
            .on_rollout_succeeded(&dep.app, &dep.environment, &dep.id)
            .await
            .unwrap();
        let VerifyOutcome::Failed { reason, .. } = out else {
            panic!("{out:?}")
        };
        assert!(
            reason.contains("list them in the stack's WatchedAlarms parameter"),
            "{reason}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_rollback_is_not_watched() {
        let w = watching();
        w.alarms.set("web-staging-5xx", AlarmValue::Alarm, LOUD);
        let dep = rolled_out(&w, w.image('a'), Kind::Rollback).await;
        let out = w
            .verifier()
            .on_rollout_succeeded(&dep.app, &dep.environment, &dep.id)
            .await
            .unwrap();
        assert!(matches!(out, VerifyOutcome::Verified { .. }), "{out:?}");
        assert_eq!(w.alarms.calls(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_verification_redone_after_a_conflicting_write_verifies_once() {
        let w = World::sample();
        w.probe.answer(URL, vec![ScriptedProbe::ok(200, "ok")]);
        let dep = rolled_out(&w, w.image('a'), Kind::Push).await;
        // VerificationStarted and then the pass each meet another writer once.
        w.store.interfere(1);
        let out = w
            .verifier()
            .on_rollout_succeeded(&dep.app, &dep.environment, &dep.id)
            .await
            .unwrap();
        assert!(matches!(out, VerifyOutcome::Verified { .. }), "{out:?}");
        let stored = &w.deployments("staging")[0];
        let verified = stored
            .history
            .iter()
            .filter(|h| h.phase == Phase::Verified)
            .count();
        assert_eq!(verified, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_deployment_removed_from_the_configuration_fails_its_verification() {
        let w = World::new(
            "apps:\n  web:\n    repository: acme/web\n    environments:\n      other:\n        target: { ssm: { instances: { ids: [i-0123456789abcdef0] }, container: web, ports: [\"80:80\"] } }\n",
        );
        let dep = rolled_out(&w, w.image('a'), Kind::Push).await;
        let out = w
            .verifier()
            .on_rollout_succeeded(&dep.app, &dep.environment, &dep.id)
            .await
            .unwrap();
        let VerifyOutcome::Failed { reason, .. } = out else {
            panic!("{out:?}")
        };
        assert!(reason.contains("no longer configured"), "{reason}");
        assert!(
            w.state("staging")
                .quarantined
                .contains_key(dep.digest().as_str())
        );
    }
}
