//! Proving a rollout healthy: HTTP smoke checks, run in parallel, each retried with backoff
//! until the environment's deadline. Passing makes the digest the environment's last
//! verified image; failing hands the deployment to the rollback.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tracing::{info, warn};

use super::rollout::advance;
use super::{Core, ServiceError, retry_on_conflict};
use crate::domain::config::{SmokeCheck, SmokeConfig};
use crate::domain::{
    AppName, Deployment, DeploymentId, EnvName, EnvState, EventType, LifecycleEvent, Outcome,
    Phase, Step,
};
use crate::ports::{Commit, HttpProbe};

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
    use crate::ports::{Clock, StateStore};

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
