//! Mechanics shared by the functions that start rollouts or end deployments: moving a
//! deployment one step together with its environment, sending a deployment to its target,
//! starting the newest queued image, and the two ways a failure ends without a working
//! rollback.

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::track::STALE_AFTER;
use super::{Core, ServiceError, retry_on_conflict};
use crate::domain::environment::Freeze;
use crate::domain::{
    Admission, AppName, Deployment, DeploymentId, EnvConfig, EnvName, EnvState, EventType, Kind,
    LifecycleEvent, Outcome, Phase, Step,
};
use crate::ports::{Commit, Started, Target};

/// What a request did to one environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum EnvOutcome {
    Started {
        deployment_id: DeploymentId,
        image: String,
    },
    /// Waits behind the deployment in flight, or, when `behind` is absent, for the
    /// environment to be unfrozen (it was pushed before the freeze).
    Queued {
        #[serde(skip_serializing_if = "Option::is_none")]
        behind: Option<DeploymentId>,
        image: String,
    },
    Skipped {
        reason: String,
        image: String,
    },
    /// A promotion held until a person approves it or its digest is verified at the source.
    Pending {
        waiting_for: crate::domain::approval::Waiting,
        reason: String,
        image: String,
    },
    /// Held by the vulnerability gate until its scan result is known, at the latest until
    /// `until`, when `on_missing` decides.
    AwaitingScan {
        #[serde(with = "time::serde::rfc3339")]
        until: time::OffsetDateTime,
        image: String,
    },
    /// Refused by the vulnerability gate.
    Blocked {
        reason: String,
        image: String,
    },
}

/// As a person reads it in a summary: `started 01J… (…/acme/web@sha256:…)`.
impl std::fmt::Display for EnvOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EnvOutcome::Started {
                deployment_id,
                image,
            } => write!(f, "started {deployment_id} ({image})"),
            EnvOutcome::Queued {
                behind: Some(behind),
                image,
            } => write!(f, "queued {image} behind {behind}"),
            EnvOutcome::Queued {
                behind: None,
                image,
            } => write!(f, "queued {image} until the environment is unfrozen"),
            EnvOutcome::Skipped { reason, image } => write!(f, "skipped {image}: {reason}"),
            EnvOutcome::Pending {
                waiting_for,
                reason,
                image,
            } => write!(f, "{image} waits for {waiting_for}: {reason}"),
            EnvOutcome::AwaitingScan { until, image } => {
                write!(
                    f,
                    "{image} waits for its vulnerability scan (at most until {until})"
                )
            }
            EnvOutcome::Blocked { reason, image } => write!(f, "blocked {image}: {reason}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnvResult {
    pub app: AppName,
    pub environment: EnvName,
    #[serde(flatten)]
    pub outcome: EnvOutcome,
}

/// A change to an environment made in the same commit as a deployment's step.
pub(crate) type EnvChange<'a> = &'a mut (dyn FnMut(&mut EnvState, &Deployment) + Send);

/// The lifecycle events a step announces, built from the deployment as the step left it.
pub(crate) type Announce<'a> = &'a (dyn Fn(&Deployment) -> Vec<LifecycleEvent> + Sync);

/// Announces nothing.
pub(crate) const SILENT: Announce<'static> = &|_| Vec::new();

/// Applies `step` to the deployment and `change` to its environment in one commit, with
/// the events `announce` builds recorded in the same write and delivered after it. On a
/// conflicting write both are read again and the step is redone; if the fresh deployment
/// has already taken the step, someone else did the work and this returns `false`.
pub(crate) async fn advance(
    core: &Core,
    dep: &mut Deployment,
    step: Step,
    note: Option<String>,
    mut change: Option<EnvChange<'_>>,
    announce: Announce<'_>,
) -> Result<bool, ServiceError> {
    let id = dep.id.clone();
    retry_on_conflict(
        || format!("recording {step:?} for {id}"),
        async |attempt| {
            if attempt > 0 {
                core.reread(dep).await?;
            }
            match dep.apply(step, core.clock.now(), note.clone()) {
                Ok(Outcome::Changed(_)) => {}
                Ok(Outcome::Unchanged) => return Ok(false),
                Err(source) => {
                    return Err(ServiceError::Transition {
                        deployment: dep.id.clone(),
                        source,
                    });
                }
            }
            let mut state = None;
            if let Some(change) = change.as_mut() {
                let mut s = core.store.env_state(&dep.app, &dep.environment).await?;
                change(&mut s, dep);
                state = Some(s);
            }
            let outbox = core.outbox(announce(dep));
            let commit = Commit {
                env: state.as_mut(),
                deployments: vec![&mut *dep],
                outbox: outbox.clone(),
                ..Commit::default()
            };
            core.store.commit(commit).await?;
            core.announce(outbox).await;
            Ok(true)
        },
    )
    .await
}

/// Sends a committed, lease-holding deployment to its target and records what the target
/// started. A refusal that may pass (throttled, busy, unreachable) leaves the deployment
/// `Requested`, holding its environment, due to be started again by whoever runs next (the
/// reconciler at the latest), which first asks the target whether the refused start took
/// effect after all; any other refusal fails the deployment without it having touched
/// anything, and hands the environment back.
pub(crate) async fn launch(
    core: &Core,
    target: &dyn Target,
    env: &EnvConfig,
    dep: &mut Deployment,
) -> Result<(), ServiceError> {
    match target.start(dep, &env.target).await {
        Ok(started) => record_started(core, target, env, dep, started).await,
        Err(error) if error.is_retryable() => {
            warn!(deployment_id = %dep.id, app = %dep.app, env = %dep.environment, error = %error, "the target cannot start the rollout now; it is started again later");
            let reason = format!("not started yet: {error}; it is tried again");
            let now = core.clock.now();
            let id = dep.id.clone();
            // Best effort: if this write is lost, the reconciler starts it after
            // `STALE_AFTER` all the same.
            let marked = retry_on_conflict(
                || format!("marking {id} to start again"),
                async |attempt| {
                    if attempt > 0 {
                        core.reread(dep).await?;
                    }
                    if dep.phase != Phase::Requested {
                        return Ok(());
                    }
                    dep.retry_at = Some(now);
                    dep.reason = Some(crate::domain::deployment::bounded(&reason));
                    dep.updated_at = now;
                    core.store.commit(Commit::deployment(dep)).await?;
                    Ok(())
                },
            )
            .await;
            if let Err(e) = marked {
                warn!(error = %e.chain(), "could not mark the deployment to start again");
            }
            Err(error.into())
        }
        Err(error) => {
            warn!(deployment_id = %dep.id, app = %dep.app, env = %dep.environment, %error, "target refused the rollout");
            fail_unstarted(core, dep, format!("could not start the rollout: {error}")).await?;
            Err(error.into())
        }
    }
}

/// Records the action the target already runs for `dep` as its rollout.
pub(crate) async fn adopt(
    core: &Core,
    target: &dyn Target,
    env: &EnvConfig,
    dep: &mut Deployment,
    started: Started,
) -> Result<(), ServiceError> {
    info!(deployment_id = %dep.id, target_ref = %started.target_ref, "adopting the rollout the target already runs for this deployment");
    record_started(core, target, env, dep, started).await
}

/// Records that the target started `dep`'s rollout (or already had), and announces it.
/// A deployment someone else recorded first is left as they did.
async fn record_started(
    core: &Core,
    target: &dyn Target,
    env: &EnvConfig,
    dep: &mut Deployment,
    started: Started,
) -> Result<(), ServiceError> {
    let Started { target_ref, before } = started.clone();
    let id = dep.id.clone();
    let recorded = retry_on_conflict(
        || format!("recording RolloutStarted for {id}"),
        async |attempt| {
            if attempt > 0 {
                core.reread(dep).await?;
            }
            if dep.phase != Phase::Requested {
                return Ok(false);
            }
            // Aborted while it was being started: nothing may run for it.
            if dep.aborted.is_some() {
                return Ok(false);
            }
            dep.target_ref = Some(target_ref.to_string());
            dep.target_before = before.clone();
            dep.apply(Step::RolloutStarted, core.clock.now(), None)
                .map_err(|source| ServiceError::Transition {
                    deployment: dep.id.clone(),
                    source,
                })?;
            let outbox = core.outbox(vec![LifecycleEvent::of(EventType::RolloutStarted, dep)]);
            core.store
                .commit(Commit {
                    link_target_refs: true,
                    outbox: outbox.clone(),
                    ..Commit::deployment(dep)
                })
                .await?;
            core.announce(outbox).await;
            Ok(true)
        },
    )
    .await?;
    if recorded {
        info!(deployment_id = %dep.id, app = %dep.app, env = %dep.environment, digest = %dep.digest(),
              target_ref = %target_ref, kind = ?dep.kind, "rollout started");
        target.tidy(&started, &env.target).await;
    } else if dep.target_ref.as_deref() != Some(target_ref.as_str()) {
        // The deployment ended (aborted, or given up) while its action was starting: the
        // action is stopped. Should that fail, the tracker finds it when it releases the
        // aborted deployment.
        warn!(deployment_id = %dep.id, %target_ref, phase = ?dep.phase, "the deployment ended while its rollout started; cancelling the rollout");
        if let Err(e) = target.cancel(&target_ref).await {
            warn!(deployment_id = %dep.id, error = %e, "could not cancel the rollout of an ended deployment");
        }
    }
    Ok(())
}

/// Whether a `Requested` deployment is due to be started again: the target refused it for
/// now, or its function stopped (it has not changed for `STALE_AFTER`, longer than any
/// function runs).
pub(crate) fn due_to_start(dep: &Deployment, now: time::OffsetDateTime) -> bool {
    dep.phase == Phase::Requested
        && (dep.retry_at.is_some_and(|at| at <= now) || now - dep.updated_at > STALE_AFTER)
}

/// What [`resume`] did with a deployment due to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resumed {
    /// The target already ran an action for it: that action is its rollout.
    Adopted,
    /// It was sent to its target.
    Started,
    /// Another invocation took its start first (or started it): left to that one.
    TakenElsewhere,
}

/// Starts a `Requested` deployment that holds its environment, adopting the action the
/// target already has for it when there is one (its start took effect though nobody
/// recorded it). Two invocations may find the same deployment due at once (two reconcile
/// passes, a pass and its Lambda retry, a repeated rollback by hand): each first claims the
/// start with a conditional write, and only the one whose claim wins asks the target and
/// sends it, so no deployment is sent twice.
pub(crate) async fn resume(
    core: &Core,
    target: &dyn Target,
    env: &EnvConfig,
    dep: &mut Deployment,
) -> Result<Resumed, ServiceError> {
    if !claim_start(core, dep).await? {
        info!(deployment_id = %dep.id, phase = ?dep.phase, "another invocation is starting this deployment; leaving it to that one");
        return Ok(Resumed::TakenElsewhere);
    }
    match target.find(dep, &env.target).await? {
        Some(started) => {
            adopt(core, target, env, dep, started).await?;
            Ok(Resumed::Adopted)
        }
        None => {
            launch(core, target, env, dep).await?;
            Ok(Resumed::Started)
        }
    }
}

/// Takes the start of a deployment that is due to start: the write moves its next due time
/// `STALE_AFTER` ahead, longer than any function that starts rollouts runs, so every other
/// invocation leaves it until this one has sent it, been refused (which makes it due again
/// at once), or stopped. `false`: it is not due any more (another invocation took it first,
/// or it started).
pub(crate) async fn claim_start(core: &Core, dep: &mut Deployment) -> Result<bool, ServiceError> {
    let id = dep.id.clone();
    retry_on_conflict(
        || format!("claiming the start of {id}"),
        async |attempt| {
            if attempt > 0 {
                core.reread(dep).await?;
            }
            let now = core.clock.now();
            if !due_to_start(dep, now) {
                return Ok(false);
            }
            dep.retry_at = None;
            dep.updated_at = now;
            core.store.commit(Commit::deployment(dep)).await?;
            Ok(true)
        },
    )
    .await
}

/// A deployment that never touched its target fails and the environment goes back to what
/// it ran before; for a rollback, that is a failed rollback.
pub(crate) async fn fail_unstarted(
    core: &Core,
    dep: &mut Deployment,
    reason: String,
) -> Result<(), ServiceError> {
    if dep.kind == Kind::Rollback {
        advance(
            core,
            dep,
            Step::RolloutFailed,
            Some(reason.clone()),
            None,
            SILENT,
        )
        .await?;
        return rollback_failed(core, dep, &reason).await;
    }
    let mut hand_back = |state: &mut EnvState, dep: &Deployment| {
        state.release(&dep.id);
        if state
            .current
            .as_ref()
            .is_some_and(|c| c.deployment_id == dep.id)
        {
            state.current = dep.previous.clone();
        }
    };
    advance(
        core,
        dep,
        Step::RolloutFailed,
        Some(reason),
        Some(&mut hand_back),
        &|d| vec![LifecycleEvent::of(EventType::DeploymentFailed, d)],
    )
    .await?;
    Ok(())
}

/// Ends a failed deployment that has nothing verified to roll back to: the environment is
/// free again, and "Deployment Failed" lets the next queued image go. What it runs is what
/// ran before when the target itself failed the rollout (its script, circuit breaker or
/// own rollback put that back), and the failed image when it rolled out but failed its
/// smoke tests.
pub(crate) async fn end_without_rollback(
    core: &Core,
    dep: &mut Deployment,
    reason: &str,
) -> Result<(), ServiceError> {
    let id = dep.id.clone();
    retry_on_conflict(
        || format!("ending failed deployment {id}"),
        async |attempt| {
            if attempt > 0 {
                core.reread(dep).await?;
            }
            let mut state = core.store.env_state(&dep.app, &dep.environment).await?;
            if !state.release(&dep.id) {
                return Ok(());
            }
            let rolled_out = dep.history.iter().any(|h| h.phase == Phase::RolledOut);
            if !rolled_out
                && state
                    .current
                    .as_ref()
                    .is_some_and(|c| c.deployment_id == dep.id)
            {
                state.current = dep.previous.clone();
            }
            dep.reason = Some(crate::domain::deployment::bounded(reason));
            let outbox = core.outbox(vec![LifecycleEvent::of(EventType::DeploymentFailed, dep)]);
            core.store
                .commit(Commit {
                    outbox: outbox.clone(),
                    ..Commit::env(&mut state).with(dep)
                })
                .await?;
            info!(deployment_id = %dep.id, app = %dep.app, env = %dep.environment, %reason, "deployment failed");
            core.announce(outbox).await;
            Ok(())
        },
    )
    .await
}

/// A rollback deployment failed, or could not start: the deployment it replaced ends in
/// `RollbackFailed`, the environment is frozen so nothing more happens automatically, and
/// the failure is announced for the alarm. No further rollback is attempted.
pub(crate) async fn rollback_failed(
    core: &Core,
    rollback: &mut Deployment,
    reason: &str,
) -> Result<(), ServiceError> {
    let id = rollback.id.clone();
    retry_on_conflict(
        || format!("recording the failure of rollback {id}"),
        async |attempt| {
            if attempt > 0 {
                core.reread(rollback).await?;
            }
            let now = core.clock.now();
            let mut state = core
                .store
                .env_state(&rollback.app, &rollback.environment)
                .await?;
            let mut original = match &rollback.rollback_of {
                Some(id) => Some(
                    core.store
                        .deployment(&rollback.app, &rollback.environment, id)
                        .await?,
                ),
                None => None,
            };
            let note = format!("rollback {} failed: {reason}", rollback.id);
            let changed = match original.as_mut() {
                Some(o) => matches!(
                    o.apply(Step::RollbackFailed, now, Some(note.clone())),
                    Ok(Outcome::Changed(_))
                ),
                // A rollback requested by hand replaces no failed deployment; it is its own
                // record.
                None => state.is_held_by(&rollback.id),
            };
            if !changed {
                return Ok(());
            }
            state.release(&rollback.id);
            if let Some(o) = &original {
                state.release(&o.id);
            }
            // A rollback the target failed left what ran before it running (the failed
            // image); one that rolled out and failed its checks runs the rollback's image.
            let rolled_out = rollback.history.iter().any(|h| h.phase == Phase::RolledOut);
            if !rolled_out
                && state
                    .current
                    .as_ref()
                    .is_some_and(|c| c.deployment_id == rollback.id)
            {
                state.current = rollback.previous.clone();
            }
            let freeze_reason =
                crate::domain::deployment::bounded(&format!("automatic rollouts paused: {note}"));
            state.frozen = Some(Freeze {
                reason: freeze_reason.clone(),
                by: "pushdeploy".into(),
                at: now,
            });
            let failed = original.as_ref().unwrap_or(rollback);
            let outbox = core.outbox(vec![
                LifecycleEvent::of(EventType::RollbackFailed, failed),
                LifecycleEvent::environment(
                    EventType::EnvironmentFrozen,
                    &rollback.app,
                    &rollback.environment,
                    Some(freeze_reason),
                    now,
                ),
            ]);
            let mut commit = Commit {
                outbox: outbox.clone(),
                ..Commit::env(&mut state).with(rollback)
            };
            if let Some(o) = original.as_mut() {
                commit = commit.with(o);
            }
            core.store.commit(commit).await?;
            warn!(deployment_id = %id, %reason, "rollback failed; environment frozen");
            core.announce(outbox).await;
            Ok(())
        },
    )
    .await
}

/// Starts the newest queued image of an environment if it is free and not frozen.
pub(crate) async fn start_queued(
    core: &Core,
    target: &dyn Target,
    app: &AppName,
    env: &EnvName,
) -> Result<Option<EnvResult>, ServiceError> {
    let config = core.config.load().await?;
    let Some(env_config) = config.env(app, env) else {
        return Ok(None);
    };
    retry_on_conflict(
        || format!("starting the queued image of {app}/{env}"),
        async |_| {
            let mut state = core.store.env_state(app, env).await?;
            let Some(queued) = state.take_queued() else {
                return Ok(None);
            };
            let request = queued.into_request();
            let image = request.image.to_string();
            let (outcome, mut dep) = match state.admit(&request, env_config.only_newer) {
                Admission::Start => {
                    let mut dep =
                        Deployment::new(app.clone(), env.clone(), request, core.clock.now());
                    state.start(&mut dep);
                    (
                        EnvOutcome::Started {
                            deployment_id: dep.id.clone(),
                            image,
                        },
                        Some(dep),
                    )
                }
                // The queued image went stale while it waited (the same digest runs already).
                Admission::Skip(reason) => (
                    EnvOutcome::Skipped {
                        reason: reason.to_string(),
                        image,
                    },
                    None,
                ),
                // Not while the environment is free; should it happen, the image waits on.
                Admission::Queue { behind } => {
                    state.queue(&request);
                    (EnvOutcome::Queued { behind, image }, None)
                }
            };
            let commit = match dep.as_mut() {
                Some(d) => Commit::env(&mut state).with(d),
                None => Commit::env(&mut state),
            };
            core.store.commit(commit).await?;
            match dep.as_mut() {
                Some(dep) => {
                    info!(deployment_id = %dep.id, app = %app, env = %env, digest = %dep.digest(), "starting the queued image");
                    launch(core, target, env_config, dep).await?;
                }
                None => info!(app = %app, env = %env, ?outcome, "dropped the queued image"),
            }
            Ok(Some(EnvResult {
                app: app.clone(),
                environment: env.clone(),
                outcome,
            }))
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Kind, Phase, Request};
    use crate::fakes::World;
    use crate::ports::{CallError, Clock, StateStore, Target, TargetError};
    use crate::services::MAX_ATTEMPTS;

    fn request(w: &World, hex: char, minute: i64) -> Request {
        Request {
            image: w.image(hex),
            tag: None,
            kind: Kind::Push,
            pushed_at: World::START + time::Duration::minutes(minute),
            requested_by: None,
            reason: None,
        }
    }

    /// A deployment of `hex` holding web/staging, committed, not yet sent to the target.
    async fn holding(w: &World, hex: char, claim: Option<&str>) -> Deployment {
        let mut state = w.state("staging");
        let mut dep = Deployment::new(
            state.app.clone(),
            state.environment.clone(),
            request(w, hex, 0),
            w.clock.now(),
        );
        state.start(&mut dep);
        w.store
            .commit(
                Commit::env(&mut state)
                    .with(&mut dep)
                    .claiming(claim.map(str::to_owned)),
            )
            .await
            .unwrap();
        dep
    }

    fn staging(w: &World) -> crate::domain::EnvConfig {
        w.config
            .env(
                &crate::fakes::app("web"),
                &crate::fakes::env_name("staging"),
            )
            .unwrap()
            .clone()
    }

    #[tokio::test]
    async fn a_step_is_redone_on_fresh_reads_when_another_writer_got_there_first() {
        let w = World::sample();
        let mut dep = holding(&w, 'a', None).await;
        w.store.interfere(2);
        let changed = advance(
            &w.core(),
            &mut dep,
            Step::RolloutStarted,
            None,
            None,
            SILENT,
        )
        .await
        .unwrap();
        assert!(changed);
        let stored = &w.deployments("staging")[0];
        assert_eq!(stored.phase, Phase::RollingOut);
        assert_eq!(stored.history.len(), 2, "the step is recorded once");
    }

    #[tokio::test]
    async fn a_record_that_keeps_changing_gives_up_saying_what_and_is_retryable() {
        let w = World::sample();
        let mut dep = holding(&w, 'a', None).await;
        w.store.interfere(MAX_ATTEMPTS);
        let err = advance(
            &w.core(),
            &mut dep,
            Step::RolloutStarted,
            None,
            None,
            SILENT,
        )
        .await
        .unwrap_err();
        assert!(matches!(err, ServiceError::Contended { .. }), "{err:?}");
        assert!(err.is_retryable());
        assert!(
            err.chain()
                .starts_with(&format!("recording RolloutStarted for {}", dep.id)),
            "{}",
            err.chain()
        );
        assert_eq!(w.deployments("staging")[0].phase, Phase::Requested);
    }

    #[tokio::test]
    async fn a_retryable_refusal_keeps_the_environment_and_the_image_for_a_later_start() {
        let w = World::sample();
        let mut dep = holding(&w, 'a', Some("evt-1#web#staging")).await;
        w.target.refuse_next(TargetError::Throttled(CallError::said(
            "SendCommand",
            "ThrottlingException: Rate exceeded",
        )));
        let err = launch(&w.core(), &w.target, &staging(&w), &mut dep)
            .await
            .unwrap_err();
        assert!(err.is_retryable(), "{err}");
        let stored = w.deployments("staging").pop().unwrap();
        assert_eq!(stored.phase, Phase::Requested);
        assert_eq!(stored.retry_at, Some(w.clock.now()));
        assert!(due_to_start(&stored, w.clock.now()));
        assert!(
            w.state("staging").is_held_by(&dep.id),
            "nothing else may start"
        );
        assert!(w.events.types().is_empty());
        // Whoever runs next starts it; the target had not taken it, so it is started.
        let mut stored = stored;
        let resumed = resume(&w.core(), &w.target, &staging(&w), &mut stored)
            .await
            .unwrap();
        assert_eq!(resumed, Resumed::Started);
        assert_eq!(w.target.started().len(), 1);
        assert_eq!(w.events.types(), vec!["Rollout Started"]);
    }

    #[tokio::test]
    async fn a_start_whose_answer_was_lost_is_adopted_not_started_twice() {
        let w = World::sample();
        let mut dep = holding(&w, 'a', None).await;
        // The target took the rollout; the function stopped before recording it, and is
        // found out once it has not been heard of for longer than any function runs.
        w.target.start(&dep, &staging(&w).target).await.unwrap();
        w.clock
            .advance(STALE_AFTER + std::time::Duration::from_secs(1));
        let resumed = resume(&w.core(), &w.target, &staging(&w), &mut dep)
            .await
            .unwrap();
        assert_eq!(resumed, Resumed::Adopted);
        assert_eq!(w.target.started().len(), 1, "no second action");
        let stored = w.deployments("staging").pop().unwrap();
        assert_eq!(stored.phase, Phase::RollingOut);
        assert_eq!(stored.target_ref.as_deref(), Some("fake:cmd-1"));
        assert_eq!(w.events.types(), vec!["Rollout Started"]);
    }

    #[tokio::test]
    async fn a_refusal_for_good_hands_the_environment_back() {
        let w = World::sample();
        let mut dep = holding(&w, 'a', None).await;
        w.target
            .refuse_next(TargetError::Invalid("no container named web".into()));
        let err = launch(&w.core(), &w.target, &staging(&w), &mut dep)
            .await
            .unwrap_err();
        assert!(!err.is_retryable());
        let state = w.state("staging");
        assert!(state.lease.is_none() && state.current.is_none());
        assert_eq!(w.deployments("staging")[0].phase, Phase::Failed);
        assert_eq!(w.events.types(), vec!["Deployment Failed"]);
    }

    #[tokio::test]
    async fn a_queued_image_that_already_runs_is_dropped_not_started() {
        let w = World::sample();
        let dep = holding(&w, 'a', None).await;
        let mut state = w.state("staging");
        state.queue(&request(&w, 'a', 1));
        state.release(&dep.id);
        w.store.commit(Commit::env(&mut state)).await.unwrap();
        let (app, env) = (state.app.clone(), state.environment.clone());
        let result = start_queued(&w.core(), &w.target, &app, &env)
            .await
            .unwrap()
            .unwrap();
        assert!(
            matches!(result.outcome, EnvOutcome::Skipped { .. }),
            "{result:?}"
        );
        assert!(w.target.started().is_empty());
        assert!(
            w.store
                .env_state(&app, &env)
                .await
                .unwrap()
                .queued
                .is_none()
        );
    }

    #[tokio::test]
    async fn a_failed_rollback_freezes_the_environment_and_the_original_ends_rollback_failed() {
        let w = World::sample();
        let mut failed = holding(&w, 'b', None).await;
        failed
            .apply(Step::RolloutFailed, w.clock.now(), Some("boom".into()))
            .unwrap();
        failed
            .apply(Step::RollbackStarted, w.clock.now(), None)
            .unwrap();
        let mut state = w.state("staging");
        state.release(&failed.id);
        let mut rollback = Deployment::new(
            state.app.clone(),
            state.environment.clone(),
            Request {
                kind: Kind::Rollback,
                ..request(&w, 'a', 0)
            },
            w.clock.now(),
        );
        rollback.rollback_of = Some(failed.id.clone());
        state.start(&mut rollback);
        w.store
            .commit(
                Commit::env(&mut state)
                    .with(&mut failed)
                    .with(&mut rollback),
            )
            .await
            .unwrap();
        rollback_failed(&w.core(), &mut rollback, "host unreachable")
            .await
            .unwrap();
        let state = w.state("staging");
        assert!(state.lease.is_none());
        assert!(
            state
                .frozen
                .as_ref()
                .is_some_and(|f| f.reason.contains("host unreachable")),
            "{:?}",
            state.frozen
        );
        let original = w
            .deployments("staging")
            .into_iter()
            .find(|d| d.id == failed.id)
            .unwrap();
        assert_eq!(original.phase, Phase::RollbackFailed);
        assert_eq!(
            w.events.types(),
            vec!["Rollback Failed", "Environment Frozen"]
        );
        // Said twice, it changes nothing more.
        rollback_failed(&w.core(), &mut rollback, "host unreachable")
            .await
            .unwrap();
        assert_eq!(w.events.types().len(), 2);
    }
}
