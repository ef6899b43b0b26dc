//! What people ask of pushdeploy directly: the status of apps and environments, freezing
//! or unfreezing automatic rollouts, and deciding pending promotions.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tracing::info;

use super::deploy::{configured_env, unknown_app, unknown_env};
use super::{Core, InputError, Refusal, ServiceError, retry_on_conflict};
use crate::domain::approval::{Approved, Outcome, Pending, Waiting};
use crate::domain::deployment::Aborted;
use crate::domain::environment::{Current, Freeze, Queued, Revocation, VerifiedDigest};
use crate::domain::{
    AppName, Deployment, DeploymentId, Digest, EnvName, EventType, Kind, LifecycleEvent, Phase,
    Step, Tag,
};
use crate::ports::Commit;

/// How many deployments a status lists per environment.
pub const HISTORY_LIMIT: usize = 10;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnvStatus {
    pub app: AppName,
    pub environment: EnvName,
    pub target: String,
    pub current: Option<Current>,
    pub last_verified: Option<VerifiedDigest>,
    pub in_flight: Option<InFlight>,
    pub queued: Option<Queued>,
    pub frozen: Option<Freeze>,
    pub quarantined: Vec<QuarantinedDigest>,
    /// Digests taken back by a person, newest first.
    pub revoked: Vec<RevokedDigest>,
    /// The image the vulnerability gate holds until its scan result is known.
    pub awaiting_scan: Option<AwaitingScan>,
    /// The scan results known here, newest first.
    pub scans: Vec<KnownScan>,
    pub deployments: Vec<DeploymentSummary>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AwaitingScan {
    pub digest: Digest,
    pub tag: Option<Tag>,
    #[serde(with = "time::serde::rfc3339")]
    pub since: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub until: OffsetDateTime,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KnownScan {
    pub digest: String,
    #[serde(flatten)]
    pub result: crate::domain::scan::ScanResult,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RevokedDigest {
    pub digest: String,
    #[serde(flatten)]
    pub revocation: Revocation,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InFlight {
    pub deployment_id: DeploymentId,
    pub phase: Option<Phase>,
    #[serde(with = "time::serde::rfc3339")]
    pub since: OffsetDateTime,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QuarantinedDigest {
    pub digest: String,
    pub reason: String,
    pub deployment_id: DeploymentId,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeploymentSummary {
    pub deployment_id: DeploymentId,
    pub digest: Digest,
    pub tag: Option<Tag>,
    pub kind: Kind,
    pub phase: Phase,
    pub reason: Option<String>,
    pub rollback_of: Option<DeploymentId>,
    pub requested_by: Option<String>,
    /// The target's handle: the SSM command, ECS deployment or CodeDeploy deployment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<String>,
    /// While it watches its environment's alarms after the smoke tests: until when.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub watch_until: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl From<&Deployment> for DeploymentSummary {
    fn from(d: &Deployment) -> Self {
        Self {
            deployment_id: d.id.clone(),
            digest: d.image.digest.clone(),
            tag: d.tag.clone(),
            kind: d.kind,
            phase: d.phase,
            reason: d.reason.clone(),
            rollback_of: d.rollback_of.clone(),
            requested_by: d.requested_by.clone(),
            target_ref: d.target_ref.clone(),
            watch_until: d.watch_until,
            created_at: d.created_at,
            updated_at: d.updated_at,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FreezeResult {
    pub app: AppName,
    pub environment: EnvName,
    pub frozen: Option<Freeze>,
    /// False when the environment already was in the requested state.
    pub changed: bool,
}

#[derive(Clone)]
pub struct Control {
    pub core: Core,
}

impl Control {
    /// The status of one environment, every environment of one app, or everything.
    pub async fn status(
        &self,
        app: Option<&AppName>,
        env: Option<&EnvName>,
    ) -> Result<Vec<EnvStatus>, ServiceError> {
        let config = self.core.config.load().await?;
        if let Some(app) = app {
            let app_config = config.app(app).ok_or_else(|| unknown_app(&config, app))?;
            if let Some(env) = env
                && !app_config.environments.contains_key(env)
            {
                return Err(unknown_env(&config, app, env));
            }
        } else if env.is_some() {
            return Err(
                InputError::Rule("name the app of the environment (\"app\")".into()).into(),
            );
        }
        let mut out = Vec::new();
        for (a, e, env_config) in config.environments() {
            if app.is_some_and(|x| x != a) || env.is_some_and(|x| x != e) {
                continue;
            }
            let state = self.core.store.env_state(a, e).await?;
            let recent = self
                .core
                .store
                .recent_deployments(a, e, HISTORY_LIMIT)
                .await?;
            let in_flight = state.lease.as_ref().map(|lease| InFlight {
                deployment_id: lease.deployment_id.clone(),
                phase: recent
                    .iter()
                    .find(|d| d.id == lease.deployment_id)
                    .map(|d| d.phase),
                since: lease.since,
            });
            out.push(EnvStatus {
                app: a.clone(),
                environment: e.clone(),
                target: env_config.target.kind().to_owned(),
                last_verified: state.last_verified().cloned(),
                current: state.current,
                in_flight,
                queued: state.queued,
                frozen: state.frozen,
                revoked: revoked_newest_first(state.revoked),
                awaiting_scan: state.awaiting_scan.map(|a| AwaitingScan {
                    digest: a.request.image.digest,
                    tag: a.request.tag,
                    since: a.since,
                    until: a.until,
                }),
                scans: {
                    let mut scans: Vec<KnownScan> = state
                        .scans
                        .into_iter()
                        .map(|(digest, result)| KnownScan { digest, result })
                        .collect();
                    scans.sort_by_key(|s| std::cmp::Reverse(s.result.at));
                    scans
                },
                quarantined: state
                    .quarantined
                    .into_iter()
                    .map(|(digest, q)| QuarantinedDigest {
                        digest,
                        reason: q.reason,
                        deployment_id: q.deployment_id,
                    })
                    .collect(),
                deployments: recent.iter().map(DeploymentSummary::from).collect(),
            });
        }
        Ok(out)
    }

    /// Pauses automatic rollouts of an environment. Rollouts by hand still run.
    pub async fn freeze(
        &self,
        app: &AppName,
        env: &EnvName,
        reason: &str,
        by: &str,
    ) -> Result<FreezeResult, ServiceError> {
        self.set_frozen(app, env, Some(reason), by).await
    }

    /// Resumes automatic rollouts; the newest queued image, if any, goes next.
    pub async fn unfreeze(
        &self,
        app: &AppName,
        env: &EnvName,
        by: &str,
    ) -> Result<FreezeResult, ServiceError> {
        self.set_frozen(app, env, None, by).await
    }

    async fn set_frozen(
        &self,
        app: &AppName,
        env: &EnvName,
        freeze: Option<&str>,
        by: &str,
    ) -> Result<FreezeResult, ServiceError> {
        let config = self.core.config.load().await?;
        configured_env(&config, app, env)?;
        retry_on_conflict(
            || format!("changing the freeze of {app}/{env}"),
            async |_| {
                let mut state = self.core.store.env_state(app, env).await?;
                let now = self.core.clock.now();
                let wanted = freeze.map(|reason| Freeze {
                    reason: reason.to_owned(),
                    by: by.to_owned(),
                    at: now,
                });
                if state.frozen.is_some() == wanted.is_some() {
                    return Ok(FreezeResult {
                        app: app.clone(),
                        environment: env.clone(),
                        frozen: state.frozen,
                        changed: false,
                    });
                }
                state.frozen = wanted;
                let (kind, reason) = match &state.frozen {
                    Some(f) => (
                        EventType::EnvironmentFrozen,
                        Some(format!("{} (by {})", f.reason, f.by)),
                    ),
                    None => (
                        EventType::EnvironmentUnfrozen,
                        Some(format!("unfrozen by {by}")),
                    ),
                };
                let outbox = self.core.outbox(vec![LifecycleEvent::environment(
                    kind, app, env, reason, now,
                )]);
                self.core
                    .store
                    .commit(Commit {
                        outbox: outbox.clone(),
                        ..Commit::env(&mut state)
                    })
                    .await?;
                info!(app = %app, env = %env, event = %kind, "freeze changed");
                self.core.announce(outbox).await;
                Ok(FreezeResult {
                    app: app.clone(),
                    environment: env.clone(),
                    frozen: state.frozen,
                    changed: true,
                })
            },
        )
        .await
    }

    /// Stops the deployment holding an environment: it fails with who stopped it and why,
    /// nothing rolls it back, and the tracker cancels its target action and frees the
    /// environment (on `Deployment Aborted`, or at its next pass).
    pub async fn abort(
        &self,
        app: &AppName,
        env: &EnvName,
        by: &str,
        reason: &str,
    ) -> Result<AbortResult, ServiceError> {
        let config = self.core.config.load().await?;
        configured_env(&config, app, env)?;
        retry_on_conflict(
            || format!("aborting the deployment in flight on {app}/{env}"),
            async |_| {
                let state = self.core.store.env_state(app, env).await?;
                let Some(holder) = state.holder().cloned() else {
                    return Err(Refusal::NothingInFlight {
                        app: app.clone(),
                        env: env.clone(),
                    }
                    .into());
                };
                let mut dep = self.core.store.deployment(app, env, &holder).await?;
                if let Some(earlier) = &dep.aborted {
                    return Ok(AbortResult {
                        deployment_id: dep.id.clone(),
                        phase: dep.phase,
                        aborted: earlier.clone(),
                        changed: false,
                    });
                }
                let now = self.core.clock.now();
                let note = format!("aborted by {by}: {reason}");
                if !dep.phase.is_final() {
                    dep.apply(Step::Aborted, now, Some(note.clone()))
                        .map_err(|source| ServiceError::Transition {
                            deployment: dep.id.clone(),
                            source,
                        })?;
                }
                dep.reason = Some(crate::domain::deployment::bounded(&note));
                dep.updated_at = now;
                let aborted = Aborted {
                    by: by.to_owned(),
                    reason: reason.to_owned(),
                    at: now,
                    handed_to_rollback: false,
                };
                dep.aborted = Some(aborted.clone());
                let outbox = self
                    .core
                    .outbox(vec![LifecycleEvent::of(EventType::DeploymentAborted, &dep)]);
                self.core
                    .store
                    .commit(Commit {
                        outbox: outbox.clone(),
                        ..Commit::deployment(&mut dep)
                    })
                    .await?;
                info!(%app, %env, deployment_id = %dep.id, %by, "deployment aborted");
                self.core.announce(outbox).await;
                Ok(AbortResult {
                    deployment_id: dep.id.clone(),
                    phase: dep.phase,
                    aborted,
                    changed: true,
                })
            },
        )
        .await
    }

    /// Takes back `digest` in an environment: it is no longer a rollback or promotion
    /// candidate there, pushes of it are skipped, a rollout of it in flight fails its
    /// verification, and an environment running it rolls back (the rollback function, on
    /// `Image Revoked`) to the newest verified digest not revoked. A deploy by hand of the
    /// digest lifts the revocation. Revoking it again changes nothing.
    pub async fn revoke(
        &self,
        app: &AppName,
        env: &EnvName,
        digest: &Digest,
        by: &str,
        reason: &str,
    ) -> Result<RevokeResult, ServiceError> {
        let config = self.core.config.load().await?;
        configured_env(&config, app, env)?;
        retry_on_conflict(
            || format!("revoking {digest} in {app}/{env}"),
            async |_| {
                let mut state = self.core.store.env_state(app, env).await?;
                let was_verified = state.verified.iter().any(|v| &v.digest == digest);
                let running = state.current.as_ref().is_some_and(|c| &c.digest == digest);
                let now = self.core.clock.now();
                let changed = state.revoke(digest, by, reason, now);
                let result = |state: &crate::domain::EnvState| RevokeResult {
                    app: app.clone(),
                    environment: env.clone(),
                    digest: digest.clone(),
                    revocation: state.revoked[digest.as_str()].clone(),
                    was_verified,
                    running,
                    changed,
                };
                if !changed {
                    return Ok(result(&state));
                }
                let revocation = &state.revoked[digest.as_str()];
                let mut event = LifecycleEvent::environment(
                    EventType::ImageRevoked,
                    app,
                    env,
                    Some(format!("revoked by {by}: {}", revocation.reason)),
                    now,
                );
                if let crate::domain::Detail::Deployment(d) = &mut event.detail {
                    d.digest = Some(digest.clone());
                    d.tag = revocation.tag.clone();
                    d.by = Some(by.to_owned());
                }
                let outbox = self.core.outbox(vec![event]);
                self.core
                    .store
                    .commit(Commit {
                        outbox: outbox.clone(),
                        ..Commit::env(&mut state)
                    })
                    .await?;
                info!(%app, %env, %digest, %by, running, "digest revoked");
                self.core.announce(outbox).await;
                Ok(result(&state))
            },
        )
        .await
    }

    /// Approves the promotion of `digest` pending in an environment. The deployer starts it
    /// on the `Promotion Approved` event; the deployment records who approved and when.
    /// An expired, superseded or other digest is refused and nothing changes.
    pub async fn approve(
        &self,
        app: &AppName,
        env: &EnvName,
        digest: &Digest,
        by: &str,
    ) -> Result<Decided, ServiceError> {
        self.decide(app, env, digest, by, None).await
    }

    /// Rejects the promotion of `digest` pending in an environment: it is not deployed.
    pub async fn reject(
        &self,
        app: &AppName,
        env: &EnvName,
        digest: &Digest,
        by: &str,
        reason: Option<&str>,
    ) -> Result<Decided, ServiceError> {
        self.decide(app, env, digest, by, Some(reason.map(str::to_owned)))
            .await
    }

    /// `rejection`: `None` approves; `Some(reason)` rejects.
    async fn decide(
        &self,
        app: &AppName,
        env: &EnvName,
        digest: &Digest,
        by: &str,
        rejection: Option<Option<String>>,
    ) -> Result<Decided, ServiceError> {
        let config = self.core.config.load().await?;
        configured_env(&config, app, env)?;
        retry_on_conflict(
            || format!("deciding the promotion of {digest} to {app}/{env}"),
            async |_| {
                let mut state = self.core.store.env_state(app, env).await?;
                let now = self.core.clock.now();
                let decided = |at, changed| Decided {
                    app: app.clone(),
                    environment: env.clone(),
                    digest: digest.clone(),
                    decision: if rejection.is_none() {
                        "approved".into()
                    } else {
                        "rejected".into()
                    },
                    by: by.to_owned(),
                    at,
                    changed,
                };
                // The same person's same decision again (their first answer was lost) is
                // the first one.
                if let Some(at) = state.same_decision(digest, by, rejection.is_none()) {
                    return Ok(decided(at, false));
                }
                if rejection.is_none() {
                    // A digest revoked here or where it was verified is not approved.
                    let from = state.pending_for(digest, now)?.from.clone();
                    let source = self.core.store.env_state(app, &from).await?;
                    for place in [&state, &source] {
                        if let Some(r) = place.revoked.get(digest.as_str()) {
                            return Err(Refusal::Revoked {
                                digest: digest.clone(),
                                app: app.clone(),
                                env: place.environment.clone(),
                                by: r.by.clone(),
                                reason: r.reason.clone(),
                            }
                            .into());
                        }
                    }
                }
                let pending = state.pending_for(digest, now)?;
                let snapshot: Pending;
                let kind = match &rejection {
                    None => {
                        pending.approved = Some(Approved {
                            by: by.to_owned(),
                            at: now,
                        });
                        snapshot = pending.clone();
                        EventType::PromotionApproved
                    }
                    Some(reason) => {
                        snapshot = pending.clone();
                        state.pending = None;
                        state.decide(
                            digest.clone(),
                            Outcome::Rejected {
                                by: by.to_owned(),
                                reason: reason.clone(),
                            },
                            now,
                        );
                        EventType::PromotionRejected
                    }
                };
                let mut event = LifecycleEvent::pending(kind, app, env, &snapshot, Some(by), now);
                if let crate::domain::Detail::Deployment(d) = &mut event.detail {
                    d.reason = Some(match &rejection {
                        None => format!("approved by {by}"),
                        Some(Some(reason)) => format!("rejected by {by}: {reason}"),
                        Some(None) => format!("rejected by {by}"),
                    });
                }
                let outbox = self.core.outbox(vec![event]);
                self.core
                    .store
                    .commit(Commit {
                        outbox: outbox.clone(),
                        ..Commit::env(&mut state)
                    })
                    .await?;
                info!(%app, %env, %digest, %by, event = %kind, "promotion decided");
                self.core.announce(outbox).await;
                Ok(decided(now, true))
            },
        )
        .await
    }

    /// Every promotion waiting for approval or verification, in one app or all.
    pub async fn list_pending(
        &self,
        app: Option<&AppName>,
    ) -> Result<Vec<PendingSummary>, ServiceError> {
        let config = self.core.config.load().await?;
        if let Some(a) = app
            && config.app(a).is_none()
        {
            return Err(unknown_app(&config, a));
        }
        let now = self.core.clock.now();
        let mut out = Vec::new();
        for (a, e, _) in config.environments() {
            if app.is_some_and(|wanted| wanted != a) {
                continue;
            }
            let state = self.core.store.env_state(a, e).await?;
            for p in [state.approved, state.pending].into_iter().flatten() {
                out.push(PendingSummary {
                    app: a.clone(),
                    environment: e.clone(),
                    digest: p.digest().clone(),
                    tag: p.tag.clone(),
                    from: p.from.clone(),
                    waiting_for: p.waiting_for,
                    since: p.since,
                    expires_at: p.expires_at,
                    expired: p.is_expired(now),
                    approved_by: p.approved.as_ref().map(|a| a.by.clone()),
                    reason: p.reason.clone(),
                });
            }
        }
        Ok(out)
    }
}

/// The revocations of an environment, newest first.
fn revoked_newest_first(
    revoked: std::collections::BTreeMap<String, Revocation>,
) -> Vec<RevokedDigest> {
    let mut out: Vec<RevokedDigest> = revoked
        .into_iter()
        .map(|(digest, revocation)| RevokedDigest { digest, revocation })
        .collect();
    out.sort_by_key(|r| std::cmp::Reverse(r.revocation.at));
    out
}

/// What `revoke` did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RevokeResult {
    pub app: AppName,
    pub environment: EnvName,
    pub digest: Digest,
    /// Who revoked it, when and why: the first revocation when it was revoked before.
    pub revocation: Revocation,
    /// Whether it was among the environment's verified digests.
    pub was_verified: bool,
    /// Whether the environment runs it: if so it rolls back to the newest verified digest
    /// not revoked, as the `Image Revoked` event reaches the rollback function.
    pub running: bool,
    /// False when it was revoked before.
    pub changed: bool,
}

/// What `abort` did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AbortResult {
    pub deployment_id: DeploymentId,
    pub phase: Phase,
    pub aborted: Aborted,
    /// False when it was aborted before.
    pub changed: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Decided {
    pub app: AppName,
    pub environment: EnvName,
    pub digest: Digest,
    pub decision: String,
    pub by: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// False when this person had made this decision already; `at` is when.
    pub changed: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingSummary {
    pub app: AppName,
    pub environment: EnvName,
    pub digest: Digest,
    pub tag: Option<Tag>,
    pub from: EnvName,
    pub waiting_for: Waiting,
    #[serde(with = "time::serde::rfc3339")]
    pub since: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    pub expired: bool,
    pub approved_by: Option<String>,
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use crate::fakes::{World, app, env_name};

    #[tokio::test]
    async fn freezing_twice_changes_nothing_the_second_time_and_unfreezing_says_who() {
        let w = World::sample();
        let c = w.control();
        let (a, e) = (app("web"), env_name("staging"));
        assert!(c.freeze(&a, &e, "release", "alice").await.unwrap().changed);
        let again = c.freeze(&a, &e, "another reason", "bob").await.unwrap();
        assert!(!again.changed);
        assert_eq!(again.frozen.unwrap().by, "alice", "the first freeze stands");
        let out = c.unfreeze(&a, &e, "carol").await.unwrap();
        assert!(out.changed && out.frozen.is_none());
        let unfrozen = w.events.events().pop().unwrap();
        assert_eq!(
            unfrozen.deployment().unwrap().reason.as_deref(),
            Some("unfrozen by carol")
        );
    }

    #[tokio::test]
    async fn a_freeze_redone_after_a_conflicting_write_announces_once() {
        let w = World::sample();
        w.store.interfere(2);
        w.control()
            .freeze(&app("web"), &env_name("staging"), "release", "alice")
            .await
            .unwrap();
        assert_eq!(w.events.types(), vec!["Environment Frozen"]);
        assert!(w.state("staging").frozen.is_some());
    }

    #[tokio::test]
    async fn status_of_an_environment_needs_its_app_and_names_what_exists() {
        let w = World::sample();
        let c = w.control();
        let err = c
            .status(None, Some(&env_name("staging")))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("name the app"), "{err}");
        let err = c
            .status(Some(&app("web")), Some(&env_name("qa")))
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "app \"web\" has no environment \"qa\"; its environments: production, staging"
        );
        let all = c.status(None, None).await.unwrap();
        let names: Vec<&str> = all.iter().map(|s| s.environment.as_str()).collect();
        assert_eq!(names, ["production", "staging"]);
    }

    #[tokio::test]
    async fn approving_nothing_pending_is_not_found_and_writes_nothing() {
        let w = World::sample();
        let err = w
            .control()
            .approve(
                &app("web"),
                &env_name("production"),
                &w.image('a').digest,
                "alice",
            )
            .await
            .unwrap_err();
        assert_eq!(err.error_type(), "NonRetryable.NotFound");
        assert_eq!(w.store.commits(), 0);
    }

    #[tokio::test]
    async fn aborting_with_nothing_in_flight_is_not_found_and_writes_nothing() {
        let w = World::sample();
        let err = w
            .control()
            .abort(&app("web"), &env_name("staging"), "alice", "wrong build")
            .await
            .unwrap_err();
        assert_eq!(err.error_type(), "NonRetryable.NotFound");
        assert_eq!(
            err.to_string(),
            "nothing is in flight on web/staging: there is no deployment to abort"
        );
        assert_eq!(w.store.commits(), 0);
        assert!(w.events.events().is_empty());
    }

    #[tokio::test]
    async fn an_aborted_rollout_is_cancelled_and_frees_its_environment_for_the_queue() {
        use crate::domain::{Kind, Phase, Request};
        use crate::ports::{Clock, Commit, StateStore};
        let w = World::sample();
        let mut state = w.state("staging");
        let request = |hex| Request {
            image: w.image(hex),
            tag: None,
            kind: Kind::Push,
            pushed_at: World::START,
            requested_by: None,
            reason: None,
        };
        let mut dep = crate::domain::Deployment::new(
            state.app.clone(),
            state.environment.clone(),
            request('a'),
            w.clock.now(),
        );
        state.start(&mut dep);
        state.queue(&Request {
            pushed_at: World::START + time::Duration::minutes(1),
            ..request('b')
        });
        dep.apply(crate::domain::Step::RolloutStarted, w.clock.now(), None)
            .unwrap();
        dep.target_ref = Some("fake:cmd-9".into());
        w.store
            .commit(Commit::env(&mut state).with(&mut dep))
            .await
            .unwrap();
        let (a, e) = (app("web"), env_name("staging"));
        let out = w
            .control()
            .abort(&a, &e, "alice", "wrong schema")
            .await
            .unwrap();
        assert!(out.changed);
        assert_eq!(out.phase, Phase::Failed);
        assert_eq!(w.events.types(), vec!["Deployment Aborted"]);
        assert!(
            w.state("staging").is_held_by(&dep.id),
            "held until cancelled"
        );
        // Aborting again says it was, and changes nothing.
        let again = w.control().abort(&a, &e, "bob", "again").await.unwrap();
        assert!(!again.changed);
        assert_eq!(again.aborted.by, "alice");
        assert_eq!(w.events.types().len(), 1);
        // The tracker takes the event: cancels the command and hands what it may have
        // changed to the rollback, which (nothing verified here) ends the deployment; the
        // freed environment starts its queued image.
        w.tracker().on_aborted(&a, &e, &dep.id).await.unwrap();
        assert_eq!(w.target.cancelled(), vec!["fake:cmd-9".to_owned()]);
        assert!(w.state("staging").is_held_by(&dep.id));
        w.rollback().on_failure(&a, &e, &dep.id).await.unwrap();
        assert_eq!(
            w.events.types(),
            vec!["Deployment Aborted", "Rollout Failed", "Deployment Failed"]
        );
        w.deployer().on_environment_free(&a, &e).await.unwrap();
        assert_eq!(w.target.last().image, w.image('b').to_string());
        let stored = w
            .deployments("staging")
            .into_iter()
            .find(|d| d.id == dep.id)
            .unwrap();
        assert_eq!(
            stored.reason.as_deref(),
            Some("aborted by alice: wrong schema; nothing verified to roll back to")
        );
        assert!(
            !w.state("staging")
                .quarantined
                .contains_key(dep.digest().as_str())
        );
        // Handled twice, nothing more happens.
        w.tracker().on_aborted(&a, &e, &dep.id).await.unwrap();
        assert_eq!(w.target.started().len(), 1);
    }
}
