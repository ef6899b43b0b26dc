//! Following rollouts on their targets: status-change events as they come, and a
//! reconciliation pass on a schedule for the events that never come.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::{error, info, warn};

use super::rollout::{EnvResult, advance, fail_unstarted, start_queued};
use super::{Core, ServiceError};
use crate::domain::{
    AppName, Deployment, DeploymentId, EnvConfig, EnvName, EnvState, EventType, LifecycleEvent,
    Phase, Step,
};
use crate::ports::{Commit, RolloutStatus, StoreError, Target, TargetRef};

/// How long a hand-off may go unanswered before the reconciler repeats it.
pub const STALE_AFTER: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum TrackOutcome {
    Ignored {
        reason: String,
    },
    InProgress {
        deployment_id: DeploymentId,
    },
    Succeeded {
        deployment_id: DeploymentId,
    },
    Failed {
        deployment_id: DeploymentId,
        reason: String,
    },
    AlreadyRecorded {
        deployment_id: DeploymentId,
        phase: Phase,
    },
}

/// What one reconciliation pass did, environment by environment.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReconcileReport {
    pub checked: usize,
    pub actions: Vec<ReconcileAction>,
    pub errors: Vec<String>,
    /// Whether trying again may clear `errors` (a dependency was throttled or unreachable).
    #[serde(skip)]
    pub retryable: bool,
}

impl ReconcileReport {
    /// A pass that could not reconcile some environment, as an error: every other
    /// environment was handled.
    pub fn incomplete(&self) -> Option<ServiceError> {
        (!self.errors.is_empty()).then(|| ServiceError::Incomplete {
            summary: format!("reconciliation failed for {}", self.errors.join("; ")),
            retryable: self.retryable,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReconcileAction {
    pub app: AppName,
    pub environment: EnvName,
    pub action: String,
}

#[derive(Clone)]
pub struct Tracker {
    pub core: Core,
    pub target: Arc<dyn Target>,
}

impl Tracker {
    /// A status change of a target rollout. `reported` is the status the event carries when
    /// it is about the whole rollout; otherwise (a per-host event) the status is read back.
    #[tracing::instrument(skip_all, fields(target_ref = %target_ref))]
    pub async fn on_status(
        &self,
        target_ref: &TargetRef,
        reported: Option<RolloutStatus>,
    ) -> Result<TrackOutcome, ServiceError> {
        let Some(dep) = self
            .core
            .store
            .find_by_target_ref(target_ref.as_str())
            .await?
        else {
            info!("no deployment started this rollout; ignoring");
            return Ok(TrackOutcome::Ignored {
                reason: format!("no deployment started {target_ref}"),
            });
        };
        let status = match reported {
            Some(RolloutStatus::Succeeded) => RolloutStatus::Succeeded,
            // The target's own account of a failure says more than the event (which hosts,
            // what its automatic rollback did); the event's word stands if it has none yet.
            Some(RolloutStatus::Failed(said)) => match self.target.status(target_ref).await {
                Ok(read @ (RolloutStatus::Failed(_) | RolloutStatus::Settling(_))) => read,
                Ok(_) => RolloutStatus::Failed(said),
                Err(error) => {
                    warn!(%error, "could not read the failure back; recording the event's");
                    RolloutStatus::Failed(said)
                }
            },
            _ => self.target.status(target_ref).await?,
        };
        self.record(dep, status).await
    }

    async fn record(
        &self,
        mut dep: Deployment,
        status: RolloutStatus,
    ) -> Result<TrackOutcome, ServiceError> {
        let id = dep.id.clone();
        match status {
            RolloutStatus::InProgress => Ok(TrackOutcome::InProgress { deployment_id: id }),
            // The rollback waits for the target's own to end; the reconciliation (or the
            // next event) records the failure then.
            RolloutStatus::Settling(why) => {
                info!(deployment_id = %id, %why, "failed; waiting for the target's own rollback to end");
                Ok(TrackOutcome::InProgress { deployment_id: id })
            }
            RolloutStatus::Succeeded => {
                if !advance(
                    &self.core,
                    &mut dep,
                    Step::RolloutSucceeded,
                    None,
                    None,
                    None,
                )
                .await?
                {
                    return Ok(TrackOutcome::AlreadyRecorded {
                        deployment_id: id,
                        phase: dep.phase,
                    });
                }
                info!(deployment_id = %dep.id, app = %dep.app, env = %dep.environment, digest = %dep.digest(), "rollout succeeded");
                self.core
                    .events
                    .publish(&[LifecycleEvent::of(EventType::RolloutSucceeded, &dep)])
                    .await?;
                Ok(TrackOutcome::Succeeded { deployment_id: id })
            }
            RolloutStatus::Failed(reason) => self.fail(dep, reason).await,
        }
    }

    /// A failed rollout quarantines its digest here and hands over to the rollback.
    async fn fail(
        &self,
        mut dep: Deployment,
        reason: String,
    ) -> Result<TrackOutcome, ServiceError> {
        let id = dep.id.clone();
        let now = self.core.clock.now();
        let why = reason.clone();
        let mut quarantine = |state: &mut EnvState, d: &Deployment| state.quarantine(d, &why, now);
        if !advance(
            &self.core,
            &mut dep,
            Step::RolloutFailed,
            Some(reason.clone()),
            Some(&mut quarantine),
            None,
        )
        .await?
        {
            return Ok(TrackOutcome::AlreadyRecorded {
                deployment_id: id,
                phase: dep.phase,
            });
        }
        warn!(deployment_id = %dep.id, app = %dep.app, env = %dep.environment, digest = %dep.digest(), %reason, "rollout failed");
        self.core
            .events
            .publish(&[LifecycleEvent::of(EventType::RolloutFailed, &dep)])
            .await?;
        Ok(TrackOutcome::Failed {
            deployment_id: id,
            reason,
        })
    }

    /// Re-reads every environment: in-flight rollouts are checked against their target and
    /// timed out, lost hand-offs are repeated, and queued images start on free environments.
    pub async fn reconcile(&self) -> Result<ReconcileReport, ServiceError> {
        let config = self.core.config.load().await?;
        let mut report = ReconcileReport::default();
        for (app, env, env_config) in config.environments() {
            report.checked += 1;
            match self.reconcile_env(app, env, env_config).await {
                Ok(Some(action)) => {
                    info!(app = %app, env = %env, %action, "reconciled");
                    report.actions.push(ReconcileAction {
                        app: app.clone(),
                        environment: env.clone(),
                        action,
                    });
                }
                Ok(None) => {}
                Err(e) => {
                    let chain = e.chain();
                    error!(app = %app, env = %env, error = %chain, "reconciliation failed");
                    report.retryable |= e.is_retryable();
                    report.errors.push(format!("{app}/{env}: {chain}"));
                }
            }
        }
        Ok(report)
    }

    async fn reconcile_env(
        &self,
        app: &AppName,
        env: &EnvName,
        env_config: &EnvConfig,
    ) -> Result<Option<String>, ServiceError> {
        let mut state = self.core.store.env_state(app, env).await?;
        let Some(holder) = state.holder().cloned() else {
            if state.queued.is_some() && state.frozen.is_none() {
                let started = start_queued(&self.core, self.target.as_ref(), app, env).await?;
                return Ok(started.map(|r: EnvResult| format!("queued image: {:?}", r.outcome)));
            }
            return Ok(None);
        };
        let dep = match self.core.store.deployment(app, env, &holder).await {
            Ok(dep) => dep,
            Err(StoreError::NotFound(_)) => {
                // A lease without its record cannot end by itself; free the environment.
                state.release(&holder);
                self.core.store.commit(Commit::env(&mut state)).await?;
                return Ok(Some(format!(
                    "released a lease held by missing deployment {holder}"
                )));
            }
            Err(e) => return Err(e.into()),
        };
        let now = self.core.clock.now();
        let age = (now - dep.updated_at).try_into().unwrap_or(Duration::ZERO);
        match dep.phase {
            Phase::Requested if age > STALE_AFTER => {
                let mut dep = dep;
                self.never_started(&mut dep).await?;
                Ok(Some(format!(
                    "deployment {} never reached its target",
                    dep.id
                )))
            }
            Phase::RollingOut => {
                let Some(target_ref) = dep.target_ref.as_deref().and_then(TargetRef::parse) else {
                    let mut dep = dep;
                    self.never_started(&mut dep).await?;
                    return Ok(Some("rolling out without a target handle".into()));
                };
                let status = self.target.status(&target_ref).await?;
                if status == RolloutStatus::InProgress && age > env_config.rollout_timeout {
                    if let Err(e) = self.target.cancel(&target_ref).await {
                        warn!(deployment_id = %dep.id, error = %e, "could not cancel the timed-out rollout");
                    }
                    let reason = format!(
                        "timed out after {} seconds",
                        env_config.rollout_timeout.as_secs()
                    );
                    let outcome = self.fail(dep, reason).await?;
                    return Ok(Some(format!("{outcome:?}")));
                }
                match self.record(dep, status).await? {
                    TrackOutcome::InProgress { .. } => Ok(None),
                    outcome => Ok(Some(format!("{outcome:?}"))),
                }
            }
            Phase::RolledOut if age > STALE_AFTER => {
                self.core
                    .events
                    .publish(&[LifecycleEvent::of(EventType::RolloutSucceeded, &dep)])
                    .await?;
                Ok(Some(format!("repeated Rollout Succeeded for {}", dep.id)))
            }
            Phase::Verifying if age > env_config.smoke.within + STALE_AFTER * 2 => {
                let mut dep = dep;
                let reason = format!(
                    "verification did not finish within {} seconds",
                    (env_config.smoke.within + STALE_AFTER * 2).as_secs()
                );
                let why = reason.clone();
                let mut quarantine =
                    |state: &mut EnvState, d: &Deployment| state.quarantine(d, &why, now);
                if advance(
                    &self.core,
                    &mut dep,
                    Step::VerificationFailed,
                    Some(reason),
                    Some(&mut quarantine),
                    None,
                )
                .await?
                {
                    self.core
                        .events
                        .publish(&[LifecycleEvent::of(EventType::VerificationFailed, &dep)])
                        .await?;
                }
                Ok(Some(format!("failed stuck verification of {}", dep.id)))
            }
            Phase::Failed if age > STALE_AFTER => {
                self.core
                    .events
                    .publish(&[LifecycleEvent::of(EventType::RolloutFailed, &dep)])
                    .await?;
                Ok(Some(format!("repeated Rollout Failed for {}", dep.id)))
            }
            phase if phase.is_final() => {
                state.release(&holder);
                self.core.store.commit(Commit::env(&mut state)).await?;
                Ok(Some(format!(
                    "released a lease held by finished deployment {holder}"
                )))
            }
            _ => Ok(None),
        }
    }

    /// A deployment that holds its environment but never reached the target (its function
    /// stopped between the two writes) fails, and the environment is handed back.
    async fn never_started(&self, dep: &mut Deployment) -> Result<(), ServiceError> {
        fail_unstarted(
            &self.core,
            dep,
            "the rollout never reached its target".into(),
            None,
        )
        .await
    }

    /// Starts a queued image (used after the environment frees up).
    pub async fn start_queued(
        &self,
        app: &AppName,
        env: &EnvName,
    ) -> Result<Option<EnvResult>, ServiceError> {
        start_queued(&self.core, self.target.as_ref(), app, env).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Kind, PinnedImage, Request};
    use crate::fakes::World;
    use crate::ports::{Clock, RolloutStatus, StateStore};

    /// A push of `image` rolling out on web/staging under `fake:cmd-1`.
    async fn rolling_out(w: &World, image: PinnedImage) -> Deployment {
        let mut state = w.state("staging");
        let mut dep = Deployment::new(
            state.app.clone(),
            state.environment.clone(),
            Request {
                image,
                tag: None,
                kind: Kind::Push,
                pushed_at: World::START,
                requested_by: None,
                reason: None,
            },
            w.clock.now(),
        );
        state.start(&mut dep);
        dep.apply(Step::RolloutStarted, w.clock.now(), None)
            .unwrap();
        dep.target_ref = Some("fake:cmd-1".into());
        w.store
            .commit(Commit {
                link_target_refs: true,
                ..Commit::env(&mut state).with(&mut dep)
            })
            .await
            .unwrap();
        w.target.set_status(
            &TargetRef::parse("fake:cmd-1").unwrap(),
            RolloutStatus::InProgress,
        );
        dep
    }

    #[tokio::test]
    async fn a_failure_quarantines_the_digest_and_keeps_the_environment_for_the_rollback() {
        let w = World::sample();
        let dep = rolling_out(&w, w.image('a')).await;
        let out = w
            .tracker()
            .on_status(
                &TargetRef::parse("fake:cmd-1").unwrap(),
                Some(RolloutStatus::Failed("exit 1".into())),
            )
            .await
            .unwrap();
        assert!(matches!(out, TrackOutcome::Failed { .. }), "{out:?}");
        let state = w.state("staging");
        assert!(state.quarantined.contains_key(dep.digest().as_str()));
        assert!(state.is_held_by(&dep.id));
        assert_eq!(w.events.types(), vec!["Rollout Failed"]);
    }

    #[tokio::test]
    async fn while_the_targets_own_rollback_runs_nothing_is_recorded() {
        let w = World::sample();
        let dep = rolling_out(&w, w.image('a')).await;
        w.target.set_status(
            &TargetRef::parse("fake:cmd-1").unwrap(),
            RolloutStatus::Settling("CodeDeploy rolls back".into()),
        );
        let report = w.tracker().reconcile().await.unwrap();
        assert!(report.actions.is_empty(), "{report:?}");
        assert_eq!(w.deployments("staging")[0].phase, Phase::RollingOut);
        assert!(w.events.types().is_empty());
        let _ = dep;
    }

    #[tokio::test]
    async fn a_lease_without_its_deployment_is_released_and_the_queue_goes_next() {
        let w = World::sample();
        let mut state = w.state("staging");
        state.lease = Some(crate::domain::environment::Lease {
            deployment_id: DeploymentId::new(World::START),
            since: World::START,
        });
        w.store.commit(Commit::env(&mut state)).await.unwrap();
        let report = w.tracker().reconcile().await.unwrap();
        assert!(
            report.actions[0]
                .action
                .contains("released a lease held by missing"),
            "{report:?}"
        );
        assert!(w.state("staging").lease.is_none());
    }

    #[tokio::test]
    async fn a_pass_that_cannot_read_a_target_reports_it_and_goes_on() {
        let w = World::sample();
        rolling_out(&w, w.image('a')).await;
        // The target no longer knows the rollout.
        w.target.forget(&TargetRef::parse("fake:cmd-1").unwrap());
        let report = w.tracker().reconcile().await.unwrap();
        assert_eq!(report.checked, 2);
        assert_eq!(report.errors.len(), 1, "{report:?}");
        let error = report.incomplete().unwrap();
        assert!(error.chain().contains("web/staging"), "{}", error.chain());
        assert!(
            !error.is_retryable(),
            "a missing rollout does not come back"
        );
    }

    #[tokio::test]
    async fn a_status_about_no_deployment_is_ignored() {
        let w = World::sample();
        let out = w
            .tracker()
            .on_status(
                &TargetRef::parse("fake:unknown").unwrap(),
                Some(RolloutStatus::Succeeded),
            )
            .await
            .unwrap();
        assert!(matches!(out, TrackOutcome::Ignored { .. }));
        assert_eq!(w.store.commits(), 0);
        let _ = w
            .store
            .env_state(
                &crate::fakes::app("web"),
                &crate::fakes::env_name("staging"),
            )
            .await;
    }
}
