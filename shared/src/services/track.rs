//! Following rollouts on their targets: status-change events as they come, and a
//! reconciliation pass on a schedule for the events that never come.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::{error, info, warn};

use super::rollout::{
    EnvResult, Resumed, advance, due_to_start, fail_unstarted, resume, start_queued,
};
use super::{Core, ServiceError};
use crate::domain::{
    AppName, Deployment, DeploymentId, EnvConfig, EnvName, EnvState, EventType, Kind,
    LifecycleEvent, Phase, Step,
};
use crate::ports::{Commit, RolloutStatus, StoreError, Target, TargetError, TargetRef};

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

/// How a reconciliation pass reports what it found: `succeeded: deployment 01J…`.
impl std::fmt::Display for TrackOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TrackOutcome::Ignored { reason } => write!(f, "ignored: {reason}"),
            TrackOutcome::InProgress { deployment_id } => {
                write!(f, "in progress: deployment {deployment_id}")
            }
            TrackOutcome::Succeeded { deployment_id } => {
                write!(f, "succeeded: deployment {deployment_id}")
            }
            TrackOutcome::Failed {
                deployment_id,
                reason,
            } => write!(f, "failed: deployment {deployment_id}: {reason}"),
            TrackOutcome::AlreadyRecorded {
                deployment_id,
                phase,
            } => write!(
                f,
                "already recorded: deployment {deployment_id} is {phase:?}"
            ),
        }
    }
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
    /// Asked for the scan of an image waiting for it, in case its event was lost.
    pub registry: Arc<dyn crate::ports::ImageRegistry>,
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
        let recorded = match status {
            RolloutStatus::InProgress => return Ok(TrackOutcome::InProgress { deployment_id: id }),
            // The rollback waits for the target's own to end; the reconciliation (or the
            // next event) records the failure then.
            RolloutStatus::Settling(why) => {
                info!(deployment_id = %id, %why, "failed; waiting for the target's own rollback to end");
                return Ok(TrackOutcome::InProgress { deployment_id: id });
            }
            RolloutStatus::Succeeded => advance(
                &self.core,
                &mut dep,
                Step::RolloutSucceeded,
                None,
                None,
                &|d| vec![LifecycleEvent::of(EventType::RolloutSucceeded, d)],
            )
            .await
            .map(|changed| {
                changed.then(|| {
                    info!(deployment_id = %id, app = %dep.app, env = %dep.environment, digest = %dep.digest(), "rollout succeeded");
                    TrackOutcome::Succeeded {
                        deployment_id: id.clone(),
                    }
                })
            }),
            RolloutStatus::Failed(reason) => self.fail(&mut dep, reason).await.map(Some),
        };
        match recorded {
            Ok(Some(outcome)) => Ok(outcome),
            Ok(None) => Ok(TrackOutcome::AlreadyRecorded {
                deployment_id: id,
                phase: dep.phase,
            }),
            // A late event that contradicts what is recorded (a success after a timeout, a
            // status of an aborted rollout) changes nothing: it is not an error to retry.
            Err(ServiceError::Transition { source, .. }) => {
                warn!(deployment_id = %id, phase = ?source.phase, step = ?source.step, "a late status contradicts the recorded phase; ignored");
                Ok(TrackOutcome::AlreadyRecorded {
                    deployment_id: id,
                    phase: source.phase,
                })
            }
            Err(e) => Err(e),
        }
    }

    /// A failed rollout quarantines its digest here and hands over to the rollback; one
    /// already recorded (a concurrent writer got there first) is `AlreadyRecorded`.
    async fn fail(
        &self,
        dep: &mut Deployment,
        reason: String,
    ) -> Result<TrackOutcome, ServiceError> {
        let now = self.core.clock.now();
        let why = reason.clone();
        let mut quarantine = |state: &mut EnvState, d: &Deployment| state.quarantine(d, &why, now);
        let changed = advance(
            &self.core,
            dep,
            Step::RolloutFailed,
            Some(reason.clone()),
            Some(&mut quarantine),
            &|d| vec![LifecycleEvent::of(EventType::RolloutFailed, d)],
        )
        .await?;
        if !changed {
            return Ok(TrackOutcome::AlreadyRecorded {
                deployment_id: dep.id.clone(),
                phase: dep.phase,
            });
        }
        warn!(deployment_id = %dep.id, app = %dep.app, env = %dep.environment, digest = %dep.digest(), %reason, "rollout failed");
        Ok(TrackOutcome::Failed {
            deployment_id: dep.id.clone(),
            reason: dep.reason.clone().unwrap_or(reason),
        })
    }

    /// Re-reads every environment: undelivered events are delivered, in-flight rollouts are
    /// checked against their target and timed out, lost hand-offs are repeated, and queued
    /// images start on free environments.
    pub async fn reconcile(&self) -> Result<ReconcileReport, ServiceError> {
        let config = self.core.config.load().await?;
        let mut report = ReconcileReport::default();
        for (app, env, env_config) in config.environments() {
            report.checked += 1;
            // Events the bus would not take are left for a later pass; the environment is
            // reconciled all the same (an outage of the bus must not hold any lease).
            let delivered = match self.core.deliver_left_over(app, env).await {
                Ok(n) => n,
                Err(e) => {
                    let chain = e.chain();
                    error!(app = %app, env = %env, error = %chain, "recorded events could not be delivered");
                    report.retryable |= e.is_retryable();
                    report.errors.push(format!("{app}/{env}: {chain}"));
                    0
                }
            };
            let reconciled =
                self.reconcile_env(&config, app, env, env_config)
                    .await
                    .map(|action| match (delivered, action) {
                        (0, action) => action,
                        (n, None) => Some(format!("delivered {n} recorded events")),
                        (n, Some(a)) => Some(format!("delivered {n} recorded events; {a}")),
                    });
            match reconciled {
                Ok(Some(action)) => {
                    info!(app = %app, env = %env, %action, "reconciled");
                    report.actions.push(ReconcileAction {
                        app: app.clone(),
                        environment: env.clone(),
                        action,
                    });
                }
                Ok(None) => {}
                // Another invocation changed the environment while this pass looked at it:
                // that one is handling it, and the next pass looks again.
                Err(e) if is_concurrent_change(&e) => {
                    info!(app = %app, env = %env, error = %e.chain(), "the environment changed while being reconciled; left to the next pass");
                }
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
        config: &crate::domain::Config,
        app: &AppName,
        env: &EnvName,
        env_config: &EnvConfig,
    ) -> Result<Option<String>, ServiceError> {
        let mut state = self.core.store.env_state(app, env).await?;
        if state.awaiting_scan.is_some() {
            let decided = super::gate::settle(
                &self.core,
                self.registry.as_ref(),
                self.target.as_ref(),
                config,
                app,
                env,
                super::gate::Settle {
                    found: None,
                    ask_registry: true,
                    claim: None,
                },
            )
            .await?;
            if let Some(r) = decided {
                return Ok(Some(format!("image waiting for its scan: {}", r.outcome)));
            }
            state = self.core.store.env_state(app, env).await?;
        }
        let Some(lease) = state.lease.clone() else {
            if state.queued.is_some() && state.frozen.is_none() {
                let started = start_queued(&self.core, self.target.as_ref(), app, env).await?;
                return Ok(started.map(|r: EnvResult| format!("queued image: {}", r.outcome)));
            }
            return Ok(None);
        };
        let holder = lease.deployment_id.clone();
        let mut dep = match self.core.store.deployment(app, env, &holder).await {
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
        let age: Duration = (now - dep.updated_at).try_into().unwrap_or(Duration::ZERO);
        let held: Duration = (now - lease.since).try_into().unwrap_or(Duration::ZERO);
        // First, whatever the deployment waits for: past the limit nothing it waits for
        // (a cancel, a status, a hand-off) is waited for any longer.
        if !dep.phase.is_final() && held > lease_limit(env_config) {
            return self.expire(dep, env_config).await.map(Some);
        }
        if dep.aborted.is_some() {
            return self.on_aborted(app, env, &dep.id).await;
        }
        match dep.phase {
            Phase::Requested if held > env_config.rollout_timeout => {
                // Another invocation may be sending it this very moment: give up only with
                // the start claimed, as a start is (else the next pass looks again).
                if !super::rollout::claim_start(&self.core, &mut dep).await? {
                    return Ok(None);
                }
                // A last look for an action the target runs for it, before giving up.
                if resume_or_adopt_only(&self.core, self.target.as_ref(), env_config, &mut dep)
                    .await?
                {
                    return Ok(Some(format!("adopted the rollout of {}", dep.id)));
                }
                let reason = format!(
                    "could not start within {} seconds: {}",
                    env_config.rollout_timeout.as_secs(),
                    dep.reason
                        .as_deref()
                        .unwrap_or("the rollout never reached its target")
                );
                fail_unstarted(&self.core, &mut dep, reason).await?;
                Ok(Some(format!(
                    "deployment {} never reached its target",
                    dep.id
                )))
            }
            Phase::Requested if due_to_start(&dep, now) => Ok(
                match resume(&self.core, self.target.as_ref(), env_config, &mut dep).await? {
                    Resumed::Adopted => Some(format!("adopted the rollout of {}", dep.id)),
                    Resumed::Started => Some(format!("started deployment {}", dep.id)),
                    Resumed::TakenElsewhere => None,
                },
            ),
            Phase::RollingOut => {
                let Some(target_ref) = dep.target_ref.as_deref().and_then(TargetRef::parse) else {
                    let reason = "rolling out without a target handle".to_owned();
                    fail_unstarted(&self.core, &mut dep, reason.clone()).await?;
                    return Ok(Some(reason));
                };
                let status = match self.target.status(&target_ref).await {
                    Ok(status) => status,
                    // The target no longer knows the rollout, or pushdeploy may not read it:
                    // waiting cannot end it.
                    Err(error @ (TargetError::NotFound(_) | TargetError::Refused(_))) => {
                        let reason = format!(
                            "the target cannot tell how rollout {target_ref} went: {error}; check that it still exists and that pushdeploy may read it"
                        );
                        return Ok(Some(self.fail(&mut dep, reason).await?.to_string()));
                    }
                    Err(e) => return Err(e.into()),
                };
                if status == RolloutStatus::InProgress && age > env_config.rollout_timeout {
                    if let Err(e) = self.target.cancel(&target_ref).await {
                        warn!(deployment_id = %dep.id, error = %e, "could not cancel the timed-out rollout");
                    }
                    let reason = format!(
                        "timed out after {} seconds",
                        env_config.rollout_timeout.as_secs()
                    );
                    return Ok(Some(self.fail(&mut dep, reason).await?.to_string()));
                }
                match self.record(dep, status).await? {
                    TrackOutcome::InProgress { .. } => Ok(None),
                    outcome => Ok(Some(outcome.to_string())),
                }
            }
            // The verifier did not take the hand-off, or stopped before its checks ended:
            // it is handed over again, and runs them again.
            Phase::RolledOut if age > STALE_AFTER => {
                self.hand_over_again(&dep, EventType::RolloutSucceeded)
                    .await
            }
            // In its alarm watch: the verifier reads the alarms again at every pass, and
            // verifies it once the watch is over.
            Phase::Verifying if dep.watch_until.is_some() => {
                self.hand_over_again(&dep, EventType::RolloutSucceeded)
                    .await
            }
            Phase::Verifying if age > env_config.smoke.within + STALE_AFTER * 4 => {
                let reason = format!(
                    "verification did not finish within {} seconds",
                    (env_config.smoke.within + STALE_AFTER * 4).as_secs()
                );
                let why = reason.clone();
                let mut quarantine =
                    |state: &mut EnvState, d: &Deployment| state.quarantine(d, &why, now);
                advance(
                    &self.core,
                    &mut dep,
                    Step::VerificationFailed,
                    Some(reason),
                    Some(&mut quarantine),
                    &|d| vec![LifecycleEvent::of(EventType::VerificationFailed, d)],
                )
                .await?;
                Ok(Some(format!("failed stuck verification of {}", dep.id)))
            }
            Phase::Verifying if age > env_config.smoke.within + STALE_AFTER => {
                self.hand_over_again(&dep, EventType::RolloutSucceeded)
                    .await
            }
            Phase::Failed if age > STALE_AFTER => {
                self.hand_over_again(&dep, EventType::RolloutFailed).await
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

    /// Ends an aborted deployment: its target action is cancelled, and the environment is
    /// released (what runs is what ran before, unless it had rolled out), then the newest
    /// queued image goes. Repeated, it changes nothing more.
    pub async fn on_aborted(
        &self,
        app: &AppName,
        env: &EnvName,
        id: &DeploymentId,
    ) -> Result<Option<String>, ServiceError> {
        let dep = self.core.store.deployment(app, env, id).await?;
        if dep.aborted.is_none() {
            return Ok(None);
        }
        let state = self.core.store.env_state(app, env).await?;
        if !state.is_held_by(&dep.id) {
            return Ok(Some(format!(
                "aborted deployment {id} was already released"
            )));
        }
        // The action to stop: the one recorded, or one the target runs for it though nobody
        // recorded it (its start took effect, and the answer was lost).
        let action = match dep.target_ref.as_deref().and_then(TargetRef::parse) {
            Some(target_ref) => Some(target_ref),
            None => {
                let config = self.core.config.load().await?;
                match config.env(app, env) {
                    Some(env_config) => self
                        .target
                        .find(&dep, &env_config.target)
                        .await?
                        .map(|started| started.target_ref),
                    None => None,
                }
            }
        };
        // An action on the target is stopped where the target can stop it; whatever it
        // changed (hosts half updated, a service rolling on) is put back by the rollback,
        // as after a failed rollout.
        if let Some(target_ref) = &action {
            match self.target.cancel(target_ref).await {
                Ok(()) => {}
                // Held up for now: the environment stays held until it can be stopped.
                Err(e) if e.is_retryable() => return Err(e.into()),
                // The action has ended already; the rollback puts back what it left.
                Err(e) => {
                    warn!(deployment_id = %dep.id, error = %e, "the aborted rollout could not be cancelled")
                }
            }
            // An action that reached its end before it could be stopped runs its image. A
            // rollback's is a verified one, and with nothing verified to go back to there
            // is nothing to undo: either way that image is what the environment runs.
            let nothing_to_undo = dep.kind == Kind::Rollback
                || state.rollback_candidates(dep.digest()).next().is_none();
            let finished = nothing_to_undo
                && match self.target.status(target_ref).await {
                    Ok(status) => status == RolloutStatus::Succeeded,
                    // Asked again later, as the cancel is: an unanswered question is no
                    // reason to undo a rollout that may have finished.
                    Err(e) if e.is_retryable() => return Err(e.into()),
                    Err(_) => false,
                };
            if finished {
                warn!(deployment_id = %id, "the aborted rollout reached its end before it could be stopped; its image runs");
                return self.release_aborted(&dep, true).await;
            }
            return self.roll_back_aborted(&dep).await;
        }
        self.release_aborted(&dep, false).await
    }

    /// Frees the environment from an aborted deployment, which runs what ran before it
    /// unless `ran` (it reached the target and runs), then starts the queued image.
    async fn release_aborted(
        &self,
        dep: &Deployment,
        ran: bool,
    ) -> Result<Option<String>, ServiceError> {
        let (app, env, id) = (&dep.app, &dep.environment, &dep.id);
        let released = super::retry_on_conflict(
            || format!("releasing {app}/{env} from aborted deployment {id}"),
            async |_| {
                let mut state = self.core.store.env_state(app, env).await?;
                if !state.release(&dep.id) {
                    return Ok(false);
                }
                if !ran
                    && state
                        .current
                        .as_ref()
                        .is_some_and(|c| c.deployment_id == dep.id)
                {
                    state.current = dep.previous.clone();
                }
                self.core.store.commit(Commit::env(&mut state)).await?;
                Ok(true)
            },
        )
        .await?;
        let started = self.start_queued(app, env).await?;
        let runs = if ran {
            format!(" (it reached its end first: {} runs)", dep.image.digest)
        } else {
            String::new()
        };
        Ok(Some(match (released, started) {
            (false, _) => format!("aborted deployment {id} was already released"),
            (true, Some(r)) => format!(
                "released {app}/{env} from aborted deployment {id}{runs}; queued image: {}",
                r.outcome
            ),
            (true, None) => format!("released {app}/{env} from aborted deployment {id}{runs}"),
        }))
    }

    /// An aborted rollout that touched its target may have left it on an image nobody
    /// verified, or halfway: it is handed to the rollback as a failed rollout is, the
    /// environment held until the rollback has put back the last verified image (or, with
    /// none, ended the deployment). The hand-over is recorded on the deployment with its
    /// `Rollout Failed`, so that it is announced once; one nobody took is repeated as any is.
    async fn roll_back_aborted(&self, dep: &Deployment) -> Result<Option<String>, ServiceError> {
        let (app, env, id) = (&dep.app, &dep.environment, &dep.id);
        let mut dep = dep.clone();
        let handed = super::retry_on_conflict(
            || format!("handing aborted deployment {id} to the rollback"),
            async |attempt| {
                if attempt > 0 {
                    self.core.reread(&mut dep).await?;
                }
                let mut state = self.core.store.env_state(app, env).await?;
                if !state.is_held_by(id) {
                    return Ok(Handed::Released);
                }
                let now = self.core.clock.now();
                let Some(aborted) = dep.aborted.as_mut() else {
                    return Ok(Handed::Released);
                };
                if aborted.handed_to_rollback {
                    return Ok(Handed::Before);
                }
                aborted.handed_to_rollback = true;
                dep.updated_at = now;
                let outbox = self
                    .core
                    .outbox(vec![LifecycleEvent::of(EventType::RolloutFailed, &dep)]);
                self.core
                    .store
                    .commit(Commit {
                        outbox: outbox.clone(),
                        ..Commit::env(&mut state).with(&mut dep)
                    })
                    .await?;
                Ok(Handed::Now(outbox))
            },
        )
        .await?;
        Ok(match handed {
            Handed::Now(outbox) => {
                warn!(deployment_id = %id, "the aborted rollout reached its end before it could be stopped; rolling back");
                self.core.announce(outbox).await;
                Some(format!(
                    "the rollout of aborted deployment {id} reached its end before it could be stopped; rolling back"
                ))
            }
            // Handed over already: repeated only once nobody took it for a while.
            Handed::Before => {
                let age = self.core.clock.now() - dep.updated_at;
                if age > STALE_AFTER {
                    return self.hand_over_again(&dep, EventType::RolloutFailed).await;
                }
                None
            }
            Handed::Released => Some(format!("aborted deployment {id} was already released")),
        })
    }

    /// Repeats a hand-off nobody took, as the internal event that means "this is due again"
    /// (`Verification Due`, `Rollback Due`), so that users' rules and audit trails see each
    /// lifecycle event once. Nothing changed, so nothing is recorded; the next pass repeats
    /// it again if needed.
    async fn hand_over_again(
        &self,
        dep: &Deployment,
        kind: EventType,
    ) -> Result<Option<String>, ServiceError> {
        let due = kind.repeated().unwrap_or(kind);
        self.core
            .events
            .publish(&[LifecycleEvent::of(due, dep)])
            .await?;
        Ok(Some(format!("handed {} over again ({due})", dep.id)))
    }

    /// A deployment that held its environment past every limit ends: whatever it waited
    /// for (an unreadable target, its own rollback, a hand-off) will not come.
    async fn expire(
        &self,
        mut dep: Deployment,
        env_config: &EnvConfig,
    ) -> Result<String, ServiceError> {
        let reason = format!(
            "held the environment for over {} seconds without ending ({:?}); released",
            lease_limit(env_config).as_secs(),
            dep.phase
        );
        match dep.phase {
            Phase::Requested => fail_unstarted(&self.core, &mut dep, reason.clone()).await?,
            Phase::RollingOut | Phase::RolledOut | Phase::Verifying => {
                let step = if dep.phase == Phase::RollingOut {
                    Step::RolloutFailed
                } else {
                    Step::VerificationFailed
                };
                let now = self.core.clock.now();
                let why = reason.clone();
                let mut quarantine =
                    |state: &mut EnvState, d: &Deployment| state.quarantine(d, &why, now);
                let kind = if step == Step::RolloutFailed {
                    EventType::RolloutFailed
                } else {
                    EventType::VerificationFailed
                };
                advance(
                    &self.core,
                    &mut dep,
                    step,
                    Some(reason.clone()),
                    Some(&mut quarantine),
                    &|d| vec![LifecycleEvent::of(kind, d)],
                )
                .await?;
            }
            // A rollback that never ended is a failed rollback: the deployment it replaced
            // ends, and the environment is frozen for a person to look.
            Phase::Failed if dep.kind == Kind::Rollback => {
                super::rollout::rollback_failed(&self.core, &mut dep, &reason).await?
            }
            // Failed (or aborted) and waiting for a rollback or a cancel that never came:
            // free the environment.
            _ => super::rollout::end_without_rollback(&self.core, &mut dep, &reason).await?,
        }
        Ok(format!("expired deployment {}: {reason}", dep.id))
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

/// Whether `error` is another writer having changed a record first.
fn is_concurrent_change(error: &ServiceError) -> bool {
    matches!(
        error.innermost(),
        ServiceError::Store(StoreError::Conflict(_)) | ServiceError::Contended { .. }
    )
}

/// What became of an aborted deployment's hand-over to the rollback.
enum Handed {
    /// Recorded now, with these events to deliver.
    Now(Vec<crate::ports::OutboxEntry>),
    /// Recorded by an earlier invocation.
    Before,
    /// The environment is no longer held by it.
    Released,
}

/// The longest a deployment may hold its environment, whatever it waits for: its rollout,
/// its smoke tests, its alarm watch, and every hand-off repeated, with room to spare.
pub fn lease_limit(env: &EnvConfig) -> Duration {
    let watch = env.watch.as_ref().map_or(Duration::ZERO, |w| w.for_);
    env.rollout_timeout + env.smoke.within + watch + STALE_AFTER * 8
}

/// Adopts the action the target runs for `dep`, if it has one; whether it did.
async fn resume_or_adopt_only(
    core: &Core,
    target: &dyn Target,
    env: &EnvConfig,
    dep: &mut Deployment,
) -> Result<bool, ServiceError> {
    match target.find(dep, &env.target).await? {
        Some(started) => {
            super::rollout::adopt(core, target, env, dep, started).await?;
            Ok(true)
        }
        None => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Kind, PinnedImage, Request};
    use crate::fakes::World;
    use crate::ports::{Clock, RolloutStatus, StateStore};
    use crate::services::rollout::EnvOutcome;
    use std::time::Duration;

    /// A push of `image` rolling out on web/staging under `fake:cmd-1`.
    async fn rolling_out(w: &World, image: PinnedImage) -> Deployment {
        rolling_out_as(w, image, Kind::Push).await
    }

    async fn rolling_out_as(w: &World, image: PinnedImage, kind: Kind) -> Deployment {
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

    #[test]
    fn a_reconcile_summary_reads_as_text_not_as_code() {
        let id = DeploymentId::new(World::START);
        let said = |o: TrackOutcome| o.to_string();
        assert_eq!(
            said(TrackOutcome::Succeeded {
                deployment_id: id.clone()
            }),
            format!("succeeded: deployment {id}")
        );
        assert_eq!(
            said(TrackOutcome::Failed {
                deployment_id: id.clone(),
                reason: "exit 1 on i-1".into()
            }),
            format!("failed: deployment {id}: exit 1 on i-1")
        );
        assert_eq!(
            said(TrackOutcome::AlreadyRecorded {
                deployment_id: id.clone(),
                phase: Phase::Verified
            }),
            format!("already recorded: deployment {id} is Verified")
        );
        let queued = EnvOutcome::Queued {
            behind: Some(id.clone()),
            image: "r/acme/web@sha256:aa".into(),
        };
        assert_eq!(
            queued.to_string(),
            format!("queued r/acme/web@sha256:aa behind {id}")
        );
    }

    /// Staging held by a deployment that has no record.
    async fn held_by_a_missing_deployment(w: &World) {
        let mut state = w.state("staging");
        state.lease = Some(crate::domain::environment::Lease {
            deployment_id: DeploymentId::new(World::START),
            since: World::START,
        });
        w.store.commit(Commit::env(&mut state)).await.unwrap();
    }

    #[tokio::test]
    async fn a_pass_that_meets_another_writer_leaves_that_environment_to_the_next_pass() {
        let w = World::sample();
        held_by_a_missing_deployment(&w).await;
        // Another writer changes the record between the pass's read and its write.
        w.store.interfere(1);
        let report = w.tracker().reconcile().await.unwrap();
        assert!(report.incomplete().is_none(), "{report:?}");
        assert!(w.state("staging").lease.is_some(), "left as it was");
        let report = w.tracker().reconcile().await.unwrap();
        assert!(report.actions[0].action.contains("released"), "{report:?}");
    }

    #[tokio::test]
    async fn a_lease_without_its_deployment_is_released_and_the_queue_goes_next() {
        let w = World::sample();
        held_by_a_missing_deployment(&w).await;
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
    async fn a_rollout_the_target_no_longer_knows_fails_saying_what_to_check() {
        let w = World::sample();
        let dep = rolling_out(&w, w.image('a')).await;
        w.target.forget(&TargetRef::parse("fake:cmd-1").unwrap());
        let report = w.tracker().reconcile().await.unwrap();
        assert!(report.errors.is_empty(), "{report:?}");
        let stored = w.deployments("staging").pop().unwrap();
        assert_eq!(stored.phase, Phase::Failed);
        assert!(
            stored
                .reason
                .as_deref()
                .is_some_and(|r| r.contains("check that it still exists")),
            "{:?}",
            stored.reason
        );
        assert!(
            w.state("staging")
                .quarantined
                .contains_key(dep.digest().as_str())
        );
        assert_eq!(w.events.types(), vec!["Rollout Failed"]);
    }

    #[tokio::test]
    async fn a_deployment_holding_its_environment_past_every_limit_is_released() {
        let w = World::sample();
        rolling_out(&w, w.image('a')).await;
        w.target.set_status(
            &TargetRef::parse("fake:cmd-1").unwrap(),
            RolloutStatus::Settling("CodeDeploy's own rollback runs".into()),
        );
        let staging = w
            .config
            .env(
                &crate::fakes::app("web"),
                &crate::fakes::env_name("staging"),
            )
            .unwrap()
            .clone();
        w.clock
            .advance(lease_limit(&staging) + Duration::from_secs(1));
        let report = w.tracker().reconcile().await.unwrap();
        assert!(
            report.actions.iter().any(|a| a.action.contains("expired")),
            "{report:?}"
        );
        let stored = w.deployments("staging").pop().unwrap();
        assert_eq!(stored.phase, Phase::Failed);
        assert!(
            stored
                .reason
                .unwrap()
                .contains("held the environment for over")
        );
        // The rollback takes over from here, as after any failure.
        assert_eq!(w.events.types(), vec!["Rollout Failed"]);
    }

    #[tokio::test]
    async fn a_start_that_was_refused_for_now_is_started_by_the_next_pass() {
        let w = World::sample();
        let mut state = w.state("staging");
        let mut dep = Deployment::new(
            state.app.clone(),
            state.environment.clone(),
            Request {
                image: w.image('a'),
                tag: None,
                kind: Kind::Push,
                pushed_at: World::START,
                requested_by: None,
                reason: None,
            },
            w.clock.now(),
        );
        state.start(&mut dep);
        dep.retry_at = Some(w.clock.now());
        w.store
            .commit(Commit::env(&mut state).with(&mut dep))
            .await
            .unwrap();
        let report = w.tracker().reconcile().await.unwrap();
        assert!(
            report.actions[0].action.contains("started deployment"),
            "{report:?}"
        );
        assert_eq!(w.target.started().len(), 1);
        assert_eq!(w.deployments("staging")[0].phase, Phase::RollingOut);
    }

    #[tokio::test]
    async fn a_start_claimed_by_another_invocation_is_not_given_up_under_it() {
        let w = World::sample();
        let mut state = w.state("staging");
        let mut dep = Deployment::new(
            state.app.clone(),
            state.environment.clone(),
            Request {
                image: w.image('a'),
                tag: None,
                kind: Kind::Push,
                pushed_at: World::START,
                requested_by: None,
                reason: None,
            },
            w.clock.now(),
        );
        state.start(&mut dep);
        w.store
            .commit(Commit::env(&mut state).with(&mut dep))
            .await
            .unwrap();
        let staging = w
            .config
            .env(
                &crate::fakes::app("web"),
                &crate::fakes::env_name("staging"),
            )
            .unwrap()
            .clone();
        // Past its rollout timeout, another invocation claims its start (and is sending it).
        w.clock
            .advance(staging.rollout_timeout + Duration::from_secs(1));
        let mut claimed = w.deployments("staging").pop().unwrap();
        assert!(
            crate::services::rollout::claim_start(&w.core(), &mut claimed)
                .await
                .unwrap()
        );
        let report = w.tracker().reconcile().await.unwrap();
        assert!(report.actions.is_empty(), "{report:?}");
        assert_eq!(w.deployments("staging")[0].phase, Phase::Requested);
        // That invocation stopped: once its claim lapses, the pass gives up, saying why.
        w.clock.advance(STALE_AFTER + Duration::from_secs(1));
        let report = w.tracker().reconcile().await.unwrap();
        assert!(
            report.actions[0]
                .action
                .contains("never reached its target"),
            "{report:?}"
        );
        assert_eq!(w.deployments("staging")[0].phase, Phase::Failed);
    }

    #[tokio::test]
    async fn events_recorded_and_never_delivered_are_delivered_by_the_next_pass() {
        let w = World::sample();
        let dep = rolling_out(&w, w.image('a')).await;
        let event = LifecycleEvent::of(EventType::RolloutStarted, &dep);
        let outbox = w.core().outbox(vec![event]);
        w.store
            .commit(Commit {
                outbox,
                ..Commit::default()
            })
            .await
            .unwrap();
        // Left to its function for a while, then delivered.
        w.tracker().reconcile().await.unwrap();
        assert!(w.events.types().is_empty());
        w.clock.advance(crate::services::DELIVERY_GRACE);
        w.tracker().reconcile().await.unwrap();
        assert_eq!(w.events.types(), vec!["Rollout Started"]);
        let delivered = &w.events.events()[0];
        assert!(delivered.deployment().unwrap().event_id.is_some());
        w.clock.advance(crate::services::DELIVERY_GRACE);
        w.tracker().reconcile().await.unwrap();
        assert_eq!(w.events.types().len(), 1, "delivered once");
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

    #[tokio::test]
    async fn an_aborted_rollout_that_reached_its_end_first_is_rolled_back() {
        use crate::domain::DeploymentId;
        use crate::domain::environment::VerifiedDigest;
        use crate::fakes::{app, env_name};
        let w = World::sample();
        let mut state = w.state("staging");
        state.verified.push(VerifiedDigest {
            digest: w.image('a').digest,
            tag: None,
            deployment_id: DeploymentId::new(w.clock.now()),
            at: w.clock.now(),
        });
        w.store.commit(Commit::env(&mut state)).await.unwrap();
        w.registry.push("acme/web", None, &w.image('a').digest);
        let dep = rolling_out(&w, w.image('b')).await;
        let (a, e) = (app("web"), env_name("staging"));
        // The target finished before the tracker could stop it: the hosts run `b`.
        let said = abort_finished(&w, &dep).await;
        assert!(said.unwrap().contains("rolling back"));
        assert!(
            w.state("staging").is_held_by(&dep.id),
            "held for the rollback"
        );
        assert_eq!(
            w.events.types(),
            vec!["Deployment Aborted", "Rollout Failed"]
        );
        let out = w.rollback().on_failure(&a, &e, &dep.id).await.unwrap();
        assert!(
            matches!(
                out,
                crate::services::rollback::RollbackOutcome::Started { .. }
            ),
            "{out:?}"
        );
        assert_eq!(w.target.last().image, w.image('a').to_string());
    }

    /// A person aborts `dep`, which the target had finished before the tracker could stop
    /// it; what the tracker says of it.
    async fn abort_finished(w: &World, dep: &Deployment) -> Option<String> {
        use crate::fakes::{app, env_name};
        let (a, e) = (app("web"), env_name("staging"));
        w.control()
            .abort(&a, &e, "alice", "wrong build")
            .await
            .unwrap();
        w.target.set_status(
            &TargetRef::parse("fake:cmd-1").unwrap(),
            RolloutStatus::Succeeded,
        );
        w.tracker().on_aborted(&a, &e, &dep.id).await.unwrap()
    }

    /// What the tracker does with an abort of a rollout the target finished first, when
    /// there is nothing to roll back: the environment is freed and says what runs.
    async fn abort_after_the_end(w: &World, dep: &Deployment) -> String {
        let said = abort_finished(w, dep).await;
        let state = w.state("staging");
        assert!(state.lease.is_none(), "{said:?}");
        assert!(state.frozen.is_none(), "{said:?}");
        assert_eq!(
            state.current.map(|c| c.digest),
            Some(dep.image.digest.clone()),
            "status says what the hosts run"
        );
        assert_eq!(w.events.types(), vec!["Deployment Aborted"]);
        said.unwrap()
    }

    #[tokio::test]
    async fn an_aborted_rollback_that_reached_its_end_first_leaves_its_verified_image_running() {
        let w = World::sample();
        let dep = rolling_out_as(&w, w.image('a'), Kind::Rollback).await;
        let said = abort_after_the_end(&w, &dep).await;
        assert!(said.contains("it reached its end first"), "{said}");
    }

    #[tokio::test]
    async fn an_aborted_first_rollout_that_reached_its_end_first_is_what_runs() {
        // Nothing was verified here before: there is nothing to roll back to.
        let w = World::sample();
        let dep = rolling_out(&w, w.image('b')).await;
        let said = abort_after_the_end(&w, &dep).await;
        assert!(said.contains("it reached its end first"), "{said}");
    }
}
