//! Mechanics shared by the functions that start rollouts or end deployments: moving a
//! deployment one step together with its environment, sending a deployment to its target,
//! starting the newest queued image, and the two ways a failure ends without a working
//! rollback.

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::{Context, Core, ServiceError, retry_on_conflict};
use crate::domain::environment::Freeze;
use crate::domain::{
    Admission, AppName, Deployment, DeploymentId, EnvConfig, EnvName, EnvState, EventType, Kind,
    LifecycleEvent, Outcome, Step,
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
    Queued {
        behind: DeploymentId,
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

/// Applies `step` to the deployment and `change` to its environment in one commit. On a
/// conflicting write both are read again and the step is redone; if the fresh deployment
/// has already taken the step, someone else did the work and this returns `false`.
pub(crate) async fn advance(
    core: &Core,
    dep: &mut Deployment,
    step: Step,
    note: Option<String>,
    mut change: Option<EnvChange<'_>>,
    forget_event: Option<String>,
) -> Result<bool, ServiceError> {
    let id = dep.id.clone();
    retry_on_conflict(
        || format!("recording {step:?} for {id}"),
        async |attempt| {
            if attempt > 0 {
                *dep = core
                    .store
                    .deployment(&dep.app, &dep.environment, &dep.id)
                    .await?;
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
            let commit = Commit {
                env: state.as_mut(),
                deployments: vec![&mut *dep],
                forget_event: forget_event.clone(),
                ..Commit::default()
            };
            core.store.commit(commit).await?;
            Ok(true)
        },
    )
    .await
}

/// Sends a committed, lease-holding deployment to its target. If the target refuses, the
/// deployment fails without having touched anything and the environment is handed back;
/// for a retryable refusal the event claim is released so the retried delivery starts
/// afresh.
pub(crate) async fn launch(
    core: &Core,
    target: &dyn Target,
    env: &EnvConfig,
    dep: &mut Deployment,
    claim: Option<&str>,
) -> Result<(), ServiceError> {
    match target.start(dep, &env.target).await {
        Ok(Started { target_ref, before }) => {
            dep.target_ref = Some(target_ref.to_string());
            dep.target_before = before;
            dep.apply(Step::RolloutStarted, core.clock.now(), None)
                .map_err(|source| ServiceError::Transition {
                    deployment: dep.id.clone(),
                    source,
                })?;
            let id = dep.id.clone();
            core.store
                .commit(Commit {
                    link_target_refs: true,
                    ..Commit::deployment(dep)
                })
                .await
                .during(|| format!("recording RolloutStarted for {id}"))?;
            info!(deployment_id = %dep.id, app = %dep.app, env = %dep.environment, digest = %dep.digest(),
                  target_ref = %target_ref, kind = ?dep.kind, "rollout started");
            core.events
                .publish(&[LifecycleEvent::of(EventType::RolloutStarted, dep)])
                .await?;
            Ok(())
        }
        Err(error) => {
            warn!(deployment_id = %dep.id, app = %dep.app, env = %dep.environment, %error, "target refused the rollout");
            let forget = claim.filter(|_| error.is_retryable()).map(str::to_owned);
            fail_unstarted(
                core,
                dep,
                format!("could not start the rollout: {error}"),
                forget,
            )
            .await?;
            Err(error.into())
        }
    }
}

/// A deployment that never touched its target fails and the environment goes back to what
/// it ran before; for a rollback, that is a failed rollback.
pub(crate) async fn fail_unstarted(
    core: &Core,
    dep: &mut Deployment,
    reason: String,
    forget_event: Option<String>,
) -> Result<(), ServiceError> {
    if dep.kind == Kind::Rollback {
        advance(
            core,
            dep,
            Step::RolloutFailed,
            Some(reason.clone()),
            None,
            None,
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
    if advance(
        core,
        dep,
        Step::RolloutFailed,
        Some(reason),
        Some(&mut hand_back),
        forget_event,
    )
    .await?
    {
        core.events
            .publish(&[LifecycleEvent::of(EventType::DeploymentFailed, dep)])
            .await?;
    }
    Ok(())
}

/// Ends a failed deployment that has nothing verified to roll back to: the environment is
/// free again, and "Deployment Failed" lets the next queued image go.
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
                *dep = core
                    .store
                    .deployment(&dep.app, &dep.environment, &dep.id)
                    .await?;
            }
            let mut state = core.store.env_state(&dep.app, &dep.environment).await?;
            if !state.release(&dep.id) {
                return Ok(());
            }
            dep.reason = Some(reason.to_owned());
            core.store.commit(Commit::env(&mut state).with(dep)).await?;
            info!(deployment_id = %dep.id, app = %dep.app, env = %dep.environment, %reason, "deployment failed");
            core.events
                .publish(&[LifecycleEvent::of(EventType::DeploymentFailed, dep)])
                .await?;
            Ok(())
        },
    )
    .await
}

/// A rollback deployment failed, or could not start: the deployment it replaced ends in
/// `RollbackFailed`, the environment is frozen so nothing more happens automatically, and
/// the failure is published for the alarm. No further rollback is attempted.
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
                *rollback = core
                    .store
                    .deployment(&rollback.app, &rollback.environment, &rollback.id)
                    .await?;
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
            let freeze_reason = format!("automatic rollouts paused: {note}");
            state.frozen = Some(Freeze {
                reason: freeze_reason.clone(),
                by: "pushdeploy".into(),
                at: now,
            });
            let mut commit = Commit::env(&mut state).with(rollback);
            if let Some(o) = original.as_mut() {
                commit = commit.with(o);
            }
            core.store.commit(commit).await?;
            warn!(deployment_id = %rollback.id, app = %rollback.app, env = %rollback.environment, %reason,
                  "rollback failed; environment frozen");
            let failed = original.as_ref().unwrap_or(rollback);
            core.events
                .publish(&[
                    LifecycleEvent::of(EventType::RollbackFailed, failed),
                    LifecycleEvent::environment(
                        EventType::EnvironmentFrozen,
                        &rollback.app,
                        &rollback.environment,
                        Some(freeze_reason),
                        now,
                    ),
                ])
                .await?;
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
            let (outcome, mut dep) = match state.admit(&request) {
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
                    launch(core, target, env_config, dep, None).await?;
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
    use crate::ports::{CallError, Clock, StateStore, TargetError};
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
        let changed = advance(&w.core(), &mut dep, Step::RolloutStarted, None, None, None)
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
        let err = advance(&w.core(), &mut dep, Step::RolloutStarted, None, None, None)
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
    async fn a_retryable_refusal_hands_the_environment_back_and_releases_the_events_claim() {
        let w = World::sample();
        let claim = "evt-1#web#staging";
        let mut dep = holding(&w, 'a', Some(claim)).await;
        w.target.refuse_next(TargetError::Throttled(CallError::said(
            "SendCommand",
            "ThrottlingException: Rate exceeded",
        )));
        let err = launch(&w.core(), &w.target, &staging(&w), &mut dep, Some(claim))
            .await
            .unwrap_err();
        assert!(err.is_retryable(), "{err}");
        let state = w.state("staging");
        assert!(state.lease.is_none() && state.current.is_none());
        assert_eq!(w.deployments("staging")[0].phase, Phase::Failed);
        assert_eq!(w.events.types(), vec!["Deployment Failed"]);
        // The retried delivery may claim the event again.
        w.store
            .commit(Commit::default().claiming(Some(claim.into())))
            .await
            .unwrap();
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
