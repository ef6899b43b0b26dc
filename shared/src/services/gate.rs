//! The vulnerability gate. An environment with a `scan` policy lets an automatic deploy (a
//! push or a promotion) through only once the image's scan result is known and within the
//! thresholds. The result may come before the push is handled (it is kept by digest),
//! with the push (ECR is asked once), or after it: the image then waits, held in the
//! environment's record, for an `ECR Image Scan` or `Inspector2 Scan` event, or for the
//! reconciler, which asks ECR each pass so a lost event holds nothing for ever. When no
//! result comes within `wait_seconds`, `on_missing` decides. A deploy by hand passes.

use tracing::{info, warn};

use super::deploy::{Placing, commit_env, duplicate, place};
use super::rollout::{EnvOutcome, EnvResult};
use super::{Core, ServiceError, retry_on_conflict};
use crate::domain::scan::{AwaitingScan, Counts, ScanPolicy, ScanResult, Scanner, Verdict};
use crate::domain::{
    AppName, Config, Digest, EnvName, EnvState, EventType, Kind, LifecycleEvent, Request,
    SkipReason,
};
use crate::ports::{ImageRegistry, RegistryError, ScanState, Target};

/// Whether the gate applies to `request`: pushes and promotions do; a deploy by hand and a
/// rollback (of a verified image) do not.
pub fn applies(request: &Request) -> bool {
    matches!(request.kind, Kind::Push | Kind::Promotion)
}

/// What the gate says of a request the environment would otherwise start or queue.
pub(crate) enum Check {
    /// Let through; `recorded`: a result read from ECR was added to the environment.
    Pass {
        recorded: bool,
    },
    /// Nothing to do: the image, or a newer one, already waits for its scan.
    Skip(SkipReason),
    Held(Held),
}

pub(crate) enum Held {
    Wait {
        until: time::OffsetDateTime,
    },
    /// Refused: by the scan's findings (`counts`), for no result in time, or because the
    /// image is built for another platform than its target's (`platforms`).
    Block {
        reason: String,
        counts: Option<Counts>,
        platforms: Option<crate::domain::platform::Mismatch>,
    },
}

pub(crate) async fn check(
    core: &Core,
    registry: &dyn ImageRegistry,
    policy: &ScanPolicy,
    state: &mut EnvState,
    request: &Request,
) -> Result<Check, ServiceError> {
    let digest = &request.image.digest;
    if let Some(waiting) = &state.awaiting_scan {
        if &waiting.request.image.digest == digest {
            return Ok(Check::Skip(SkipReason::AlreadyAwaitingScan));
        }
        if waiting.request.pushed_at > request.pushed_at {
            return Ok(Check::Skip(SkipReason::OlderThanAwaitingScan));
        }
    }
    let now = core.clock.now();
    let mut recorded = false;
    if state.scan_of(digest).is_none()
        && let Some(counts) = ask(registry, &request.image.repository, digest).await?
    {
        recorded = state.record_scan(
            digest,
            ScanResult {
                counts,
                scanner: Scanner::Registry,
                at: now,
            },
        );
    }
    Ok(match policy.verdict(state.scan_of(digest), None, now) {
        Verdict::Pass(why) => {
            info!(%digest, %why, "the vulnerability gate lets it through");
            // Newest wins: an older image waiting for its scan is superseded.
            state.awaiting_scan = None;
            Check::Pass { recorded }
        }
        Verdict::Block { reason, counts } => Check::Held(Held::Block {
            reason,
            counts,
            platforms: None,
        }),
        Verdict::Wait => Check::Held(Held::Wait {
            until: now + policy.wait,
        }),
    })
}

/// ECR's findings for the digest, when its scan is complete. A scan ECR does not have
/// (yet), an image it no longer has, or findings this function may not read are no result:
/// the image waits, and `on_missing` decides in the end. Throttling and outages fail, to be
/// tried again.
async fn ask(
    registry: &dyn ImageRegistry,
    repository: &crate::domain::Repository,
    digest: &Digest,
) -> Result<Option<Counts>, ServiceError> {
    match registry.scan(repository, digest).await {
        Ok(ScanState::Complete(counts)) => Ok(Some(counts)),
        Ok(ScanState::NoResult(status)) => {
            info!(%digest, %status, "no scan result in ECR yet");
            Ok(None)
        }
        Err(RegistryError::NotFound(what)) => {
            warn!(%digest, %what, "ECR has no scan of an image it does not have");
            Ok(None)
        }
        Err(e @ (RegistryError::Refused(_) | RegistryError::Unreadable(_))) => {
            warn!(%digest, error = %e, "cannot read the scan findings from ECR; allow ecr:DescribeImageScanFindings on the repository");
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// Records a held request: it waits for its scan (announced by `Scan Awaited`), or it is
/// blocked (`Deployment Blocked`, with the findings or the platforms).
pub(crate) async fn hold(
    core: &Core,
    app: &AppName,
    env: &EnvName,
    state: &mut EnvState,
    request: &Request,
    held: Held,
    claim: Option<String>,
) -> Result<EnvResult, ServiceError> {
    let image = request.image.to_string();
    let now = core.clock.now();
    // A promotion someone approved goes on here: waiting for its scan, or blocked.
    state.settle_promotion(&request.image.digest, now);
    let mut displaced = None;
    let (event, outcome) = match held {
        Held::Wait { until } => {
            let before = state.awaiting_scan.take().map(|w| w.request);
            state.awaiting_scan = Some(AwaitingScan {
                request: request.into(),
                since: now,
                until,
            });
            displaced = super::deploy::displaced_from(
                state,
                before,
                state.awaiting_scan.as_ref().map(|w| &w.request),
                request,
                now,
            );
            info!(app = %app, env = %env, digest = %request.image.digest, %until, "waiting for the vulnerability scan");
            (
                LifecycleEvent::environment(
                    EventType::ScanAwaited,
                    app,
                    env,
                    Some(format!(
                        "waiting for its vulnerability scan, at most until {until}"
                    )),
                    now,
                ),
                EnvOutcome::AwaitingScan {
                    until,
                    image: image.clone(),
                },
            )
        }
        Held::Block {
            reason,
            counts,
            platforms,
        } => {
            info!(app = %app, env = %env, digest = %request.image.digest, %reason, "blocked");
            (
                LifecycleEvent::environment(
                    EventType::DeploymentBlocked,
                    app,
                    env,
                    Some(reason.clone()),
                    now,
                )
                .with_findings(counts)
                .with_platforms(platforms),
                EnvOutcome::Blocked {
                    reason,
                    image: image.clone(),
                },
            )
        }
    };
    let event = event.with_image(&request.image, request.tag.as_ref(), request.kind);
    let result = |outcome| EnvResult {
        app: app.clone(),
        environment: env.clone(),
        outcome,
    };
    let events = displaced.into_iter().chain([event]).collect();
    if !commit_env(core, state, claim, events).await? {
        return Ok(duplicate(result, image));
    }
    Ok(result(outcome))
}

/// How long past its deadline ECR is asked again for a waiting image's result when it is
/// throttled or unreachable, before `on_missing` decides without it.
const ASK_PAST_DEADLINE: time::Duration = time::Duration::minutes(10);

/// A scan result, or the reconciler's pass, for one environment.
pub(crate) struct Settle<'a> {
    /// The result an event brought: its digest and findings.
    pub found: Option<(&'a Digest, ScanResult)>,
    /// Ask ECR for the waiting image's result when none is known (the reconciler).
    pub ask_registry: bool,
    pub claim: Option<String>,
}

/// Records a result, and decides the image waiting for its scan when it can: deployed (it
/// is started or queued as a push would be), blocked, or still waiting. `None`: nothing
/// waits, or it waits on.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn settle(
    core: &Core,
    registry: &dyn ImageRegistry,
    target: &dyn Target,
    config: &Config,
    app: &AppName,
    env: &EnvName,
    settle: Settle<'_>,
) -> Result<Option<EnvResult>, ServiceError> {
    let Some(env_config) = config.env(app, env) else {
        return Ok(None);
    };
    retry_on_conflict(
        || format!("deciding the image waiting for its scan in {app}/{env}"),
        async |_| {
            let mut state = core.store.env_state(app, env).await?;
            let now = core.clock.now();
            let mut dirty = false;
            if let Some((digest, result)) = &settle.found {
                dirty |= state.record_scan(digest, result.clone());
            }
            let Some(waiting) = state.awaiting_scan.clone() else {
                if dirty {
                    commit_env(core, &mut state, settle.claim.clone(), Vec::new()).await?;
                }
                return Ok(None);
            };
            let digest = waiting.request.image.digest.clone();
            let asked = if settle.ask_registry && state.scan_of(&digest).is_none() {
                match ask(registry, &waiting.request.image.repository, &digest).await {
                    Ok(counts) => counts,
                    // Past its deadline the image waits no longer: a result that cannot be
                    // read is no result, and `on_missing` decides. A throttled or
                    // unreachable ECR is asked again for a while first, so that one refusal
                    // does not decide for a result ECR has.
                    Err(e)
                        if now >= waiting.until
                            && (!e.is_retryable() || now >= waiting.until + ASK_PAST_DEADLINE) =>
                    {
                        warn!(app = %app, env = %env, %digest, error = %e.chain(), "cannot read the scan result past the deadline; on_missing decides");
                        None
                    }
                    Err(e) => return Err(e),
                }
            } else {
                None
            };
            if let Some(counts) = asked {
                dirty |= state.record_scan(
                    &digest,
                    ScanResult {
                        counts,
                        scanner: Scanner::Registry,
                        at: now,
                    },
                );
            }
            let verdict = match &env_config.scan {
                Some(policy) => policy.verdict(state.scan_of(&digest), Some(waiting.until), now),
                None => Verdict::Pass("the environment no longer has a scan gate".into()),
            };
            let request = waiting.request.clone().into_request();
            match verdict {
                Verdict::Wait => {
                    if dirty {
                        commit_env(core, &mut state, settle.claim.clone(), Vec::new()).await?;
                    }
                    Ok(None)
                }
                Verdict::Block { reason, counts } => {
                    state.awaiting_scan = None;
                    hold(
                        core,
                        app,
                        env,
                        &mut state,
                        &request,
                        Held::Block {
                            reason,
                            counts,
                            platforms: None,
                        },
                        settle.claim.clone(),
                    )
                    .await
                    .map(Some)
                }
                Verdict::Pass(why) => {
                    info!(app = %app, env = %env, %digest, %why, "the vulnerability gate lets the waiting image through");
                    state.awaiting_scan = None;
                    let admission = state.admit(&request, env_config.only_newer);
                    place(
                        core,
                        target,
                        env_config,
                        app,
                        env,
                        &mut state,
                        request,
                        admission,
                        Placing {
                            claim: settle.claim.clone(),
                            dirty: true,
                        },
                    )
                    .await
                    .map(Some)
                }
            }
        },
    )
    .await
}

/// A completed scan, as `ECR Image Scan` or `Inspector2 Scan` delivers it.
#[derive(Debug, Clone, PartialEq)]
pub struct ScanEvent {
    pub event_id: String,
    pub account: String,
    pub region: String,
    /// The repository's name (Inspector's ARN already reduced to it).
    pub repository: String,
    pub digest: Digest,
    pub counts: Counts,
    pub scanner: Scanner,
    pub at: time::OffsetDateTime,
}

/// What a scan result did.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ScanReport {
    pub digest: Digest,
    pub findings: Counts,
    /// The environments (`app/environment`) with a scan gate that keep the result.
    pub recorded: Vec<String>,
    /// The images that waited for it, and what became of them.
    pub decided: Vec<EnvResult>,
}

impl super::Deployer {
    /// A scan result: kept by every environment of the repository's apps with a scan gate,
    /// and deciding the image waiting for it there. A result for a repository no app
    /// deploys, or for an app of another registry, does nothing.
    #[tracing::instrument(skip_all, fields(event_id = %scan.event_id, repository = %scan.repository, digest = %scan.digest))]
    pub async fn on_scan(&self, scan: &ScanEvent) -> Result<ScanReport, ServiceError> {
        let config = self.core.config.load().await?;
        let mut report = ScanReport {
            digest: scan.digest.clone(),
            findings: scan.counts.clone(),
            recorded: Vec::new(),
            decided: Vec::new(),
        };
        let Ok(repository) = crate::domain::Repository::parse(&scan.repository) else {
            info!("no app deploys this repository; ignoring the scan");
            return Ok(report);
        };
        for (app_name, app) in config.apps_for_repository(&repository) {
            if app
                .registry
                .as_ref()
                .and_then(|r| super::deploy::other_registry(r, &scan.account, &scan.region))
                .is_some()
            {
                info!(app = %app_name, "the scan is of another registry's image");
                continue;
            }
            for (env_name, env) in &app.environments {
                if env.scan.is_none() {
                    continue;
                }
                let result = ScanResult {
                    counts: scan.counts.clone(),
                    scanner: scan.scanner,
                    at: scan.at,
                };
                let decided = settle(
                    &self.core,
                    self.registry.as_ref(),
                    self.target.as_ref(),
                    &config,
                    app_name,
                    env_name,
                    Settle {
                        found: Some((&scan.digest, result)),
                        ask_registry: false,
                        claim: Some(format!("{}#{app_name}#{env_name}", scan.event_id)),
                    },
                )
                .await?;
                report.recorded.push(format!("{app_name}/{env_name}"));
                report.decided.extend(decided);
            }
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fakes::World;
    use crate::ports::Clock;
    use crate::services::deploy::{ManualDeploy, Push, Wanted};

    fn gated(scan: &str) -> World {
        World::new(&World::SAMPLE_CONFIG.replacen(
            "          within_seconds: 60\n",
            &format!("          within_seconds: 60\n        scan: {scan}\n"),
            1,
        ))
    }

    fn push(w: &World, hex: char, tag: &str, id: &str) -> Push {
        let digest = w.image(hex).digest;
        w.registry.push("acme/web", Some(tag), &digest);
        Push {
            event_id: id.into(),
            account: "123456789012".into(),
            region: "eu-west-1".into(),
            repository: crate::domain::Repository::parse("acme/web").unwrap(),
            digest,
            tag: Some(Tag::parse(tag).unwrap()),
            pushed_at: w.clock.now(),
        }
    }

    use crate::domain::Tag;

    /// `status` of web/staging, as the console shows it.
    async fn staging_status(w: &World) -> serde_json::Value {
        let status = w
            .control()
            .status(
                Some(&crate::fakes::app("web")),
                Some(&crate::fakes::env_name("staging")),
            )
            .await
            .unwrap();
        serde_json::to_value(&status[0]).unwrap()
    }

    fn counts(of: &[(&str, u64)]) -> Counts {
        Counts::from_aws(of.iter().copied())
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_scan_event_is_made_up_for_by_the_reconciler_asking_ecr() {
        let w = gated("{ max: { critical: 0 } }");
        let out = w
            .deployer()
            .on_push(&push(&w, 'a', "v1", "e1"))
            .await
            .unwrap();
        assert!(
            matches!(out[0].outcome, EnvOutcome::AwaitingScan { .. }),
            "{out:?}"
        );
        let shown = staging_status(&w).await;
        assert_eq!(
            shown["awaiting_scan"]["digest"],
            w.image('a').digest.as_str(),
            "{shown}"
        );
        assert_eq!(
            shown["awaiting_scan"]["until"], "2026-11-20T10:15:00Z",
            "{shown}"
        );
        // A pass before the scan is done leaves it waiting.
        let report = w.tracker().reconcile().await.unwrap();
        assert!(report.actions.is_empty(), "{report:?}");
        assert!(w.target.started().is_empty());
        w.registry
            .scanned(&w.image('a').digest, counts(&[("LOW", 3)]));
        let report = w.tracker().reconcile().await.unwrap();
        assert!(
            report.actions[0]
                .action
                .starts_with("image waiting for its scan: started"),
            "{report:?}"
        );
        assert!(w.target.last().image.ends_with(&"a".repeat(64)));
        let state = w.state("staging");
        assert!(state.awaiting_scan.is_none());
        assert_eq!(
            state.scan_of(&w.image('a').digest).unwrap().scanner,
            Scanner::Registry
        );
        let shown = staging_status(&w).await;
        assert_eq!(shown["awaiting_scan"], serde_json::Value::Null, "{shown}");
        assert_eq!(
            shown["scans"][0]["counts"],
            serde_json::json!({"low": 3}),
            "{shown}"
        );
        assert_eq!(shown["scans"][0]["scanner"], "registry", "{shown}");
    }

    #[tokio::test(start_paused = true)]
    async fn with_no_result_in_time_hold_blocks_and_deploy_deploys() {
        for (on_missing, blocked) in [("hold", true), ("deploy", false)] {
            let w = gated(&format!(
                "{{ max: {{ critical: 0 }}, wait_seconds: 300, on_missing: {on_missing} }}"
            ));
            w.deployer()
                .on_push(&push(&w, 'a', "v1", "e1"))
                .await
                .unwrap();
            w.clock.advance(std::time::Duration::from_secs(299));
            w.tracker().reconcile().await.unwrap();
            assert!(w.state("staging").awaiting_scan.is_some(), "{on_missing}");
            w.clock.advance(std::time::Duration::from_secs(1));
            let report = w.tracker().reconcile().await.unwrap();
            let action = &report.actions[0].action;
            if blocked {
                assert!(
                    action.contains("blocked") && action.contains("within 300 s"),
                    "{action}"
                );
                assert!(w.target.started().is_empty());
                assert_eq!(w.events.types().last(), Some(&"Deployment Blocked"));
            } else {
                assert!(action.contains("started"), "{action}");
                assert_eq!(w.target.started().len(), 1);
            }
            assert!(w.state("staging").awaiting_scan.is_none());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_throttled_ecr_at_the_deadline_is_asked_again_before_on_missing_decides() {
        let w = gated("{ max: { critical: 0 }, wait_seconds: 300, on_missing: deploy }");
        w.deployer()
            .on_push(&push(&w, 'a', "v1", "e1"))
            .await
            .unwrap();
        w.clock.advance(std::time::Duration::from_secs(300));
        w.registry.throttle(1_000);
        let report = w.tracker().reconcile().await.unwrap();
        assert!(
            report.incomplete().is_some_and(|e| e.is_retryable()),
            "{report:?}"
        );
        assert!(
            w.state("staging").awaiting_scan.is_some(),
            "one refusal decides nothing"
        );
        assert!(w.target.started().is_empty());
        w.clock.advance(std::time::Duration::from_secs(600));
        let report = w.tracker().reconcile().await.unwrap();
        assert!(report.actions[0].action.contains("started"), "{report:?}");
        assert!(w.state("staging").awaiting_scan.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_deploy_by_hand_passes_the_gate_and_a_newer_push_supersedes_the_waiting_one() {
        let w = gated("{ max: { critical: 0 } }");
        w.deployer()
            .on_push(&push(&w, 'a', "v1", "e1"))
            .await
            .unwrap();
        w.clock.advance(std::time::Duration::from_secs(5));
        w.deployer()
            .on_push(&push(&w, 'b', "v2", "e2"))
            .await
            .unwrap();
        let waiting = w.state("staging").awaiting_scan.unwrap();
        assert_eq!(waiting.request.image.digest, w.image('b').digest);
        // The older one's result comes: nothing waits for it any more.
        let older = ScanEvent {
            event_id: "s1".into(),
            account: "123456789012".into(),
            region: "eu-west-1".into(),
            repository: "acme/web".into(),
            digest: w.image('a').digest,
            counts: Counts::default(),
            scanner: Scanner::Basic,
            at: w.clock.now(),
        };
        let report = w.deployer().on_scan(&older).await.unwrap();
        assert!(report.decided.is_empty(), "{report:?}");
        assert!(w.target.started().is_empty());
        // A push of the older digest now: older than the one waiting.
        let mut again = push(&w, 'a', "v1", "e3");
        again.pushed_at -= time::Duration::seconds(5);
        let out = w.deployer().on_push(&again).await.unwrap();
        assert!(
            matches!(&out[0].outcome, EnvOutcome::Skipped { reason, .. } if reason == "a newer image waits for its vulnerability scan"),
            "{out:?}"
        );
        // By hand, an image with critical findings still deploys: a person decided.
        w.registry
            .scanned(&w.image('c').digest, counts(&[("CRITICAL", 4)]));
        w.registry
            .push("acme/web", Some("v3"), &w.image('c').digest);
        let out = w
            .deployer()
            .manual(&ManualDeploy {
                app: crate::fakes::app("web"),
                environment: crate::fakes::env_name("staging"),
                wanted: Wanted::Digest(w.image('c').digest),
                requested_by: Some("alice".into()),
                reason: None,
            })
            .await
            .unwrap();
        assert!(matches!(out.outcome, EnvOutcome::Started { .. }), "{out:?}");
    }
}
