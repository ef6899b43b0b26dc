//! The platform check: before an image is started or queued on an environment, what it is
//! built for (its image index, or its config) is checked against what the target runs (an
//! ECS task definition's `runtimePlatform`, else the environment's `platform`, else
//! `linux/amd64`). An image none of whose platforms the target runs is refused, naming
//! both: its containers could not start there. Nothing is refused when the registry cannot
//! say what the image is built for.

use tracing::{info, warn};

use super::ServiceError;
use super::gate::Held;
use crate::domain::platform::{ImagePlatforms, TargetPlatform};
use crate::domain::{AppName, EnvConfig, EnvName, Request};
use crate::ports::{ImageRegistry, RegistryError, Target};

/// `Some`: the image is refused, and why. Throttling and outages fail, to be tried again.
pub(crate) async fn check(
    registry: &dyn ImageRegistry,
    target: &dyn Target,
    env_config: &EnvConfig,
    app: &AppName,
    env: &EnvName,
    request: &Request,
) -> Result<Option<Held>, ServiceError> {
    let image = &request.image;
    let built = match registry.platforms(&image.repository, &image.digest).await {
        Ok(built) => built,
        Err(RegistryError::NotFound(what)) => ImagePlatforms::Unknown(what),
        Err(e @ (RegistryError::Refused(_) | RegistryError::Unreadable(_))) => {
            warn!(digest = %image.digest, error = %e, "cannot read what the image is built for; allow ecr:BatchGetImage and ecr:GetDownloadUrlForLayer on the repository");
            ImagePlatforms::Unknown(e.to_string())
        }
        Err(e) => return Err(e.into()),
    };
    if let ImagePlatforms::Unknown(why) = &built {
        info!(digest = %image.digest, %why, "the platform of the image is not known; not checked");
        return Ok(None);
    }
    let declared = match target.platform(&env_config.target).await {
        Ok(declared) => declared,
        Err(e) if e.is_retryable() => return Err(e.into()),
        // Starting the rollout will say what is wrong with the target.
        Err(e) => {
            warn!(error = %e, "cannot read the target's platform; the environment's `platform` decides");
            None
        }
    };
    let runs = TargetPlatform::of(declared, env_config.platform.as_ref());
    Ok(runs
        .refuses(&built, &format!("{app}/{env}"))
        .map(|(reason, mismatch)| Held::Block {
            reason,
            counts: None,
            platforms: Some(mismatch),
        }))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::domain::platform::{ImagePlatforms, Platform};
    use crate::domain::{AppName, EnvName, EventType};
    use crate::fakes::World;
    use crate::ports::Clock;
    use crate::services::deploy::{ManualDeploy, Push, Wanted};
    use crate::services::rollout::EnvOutcome;

    fn p(value: &str) -> Platform {
        Platform::parse(value).unwrap()
    }

    /// The sample configuration, with this line added to web/staging.
    fn config(platform: &str) -> String {
        World::SAMPLE_CONFIG.replacen(
            "          within_seconds: 60\n",
            &format!("          within_seconds: 60\n        {platform}\n"),
            1,
        )
    }

    fn push(w: &World, hex: char, id: &str) -> Push {
        let digest = w.image(hex).digest;
        w.registry.push("acme/web", Some("v1.0.0"), &digest);
        Push {
            event_id: id.into(),
            account: "123456789012".into(),
            region: "eu-west-1".into(),
            repository: crate::domain::Repository::parse("acme/web").unwrap(),
            digest,
            tag: Some(crate::domain::Tag::parse("v1.0.0").unwrap()),
            pushed_at: w.clock.now(),
        }
    }

    fn blocked(w: &World) -> Vec<crate::domain::LifecycleEvent> {
        w.events
            .events()
            .into_iter()
            .filter(|e| e.detail_type == EventType::DeploymentBlocked)
            .collect()
    }

    #[tokio::test]
    async fn an_arm64_image_pushed_to_amd64_hosts_is_blocked_naming_both_and_nothing_starts() {
        let w = World::new(&config(""));
        let push = push(&w, 'a', "evt-1");
        w.registry
            .built_for(&push.digest, ImagePlatforms::Known(vec![p("linux/arm64")]));
        let results = w.deployer().on_push(&push).await.unwrap();
        let EnvOutcome::Blocked { reason, .. } = &results[0].outcome else {
            panic!("{results:?}")
        };
        assert!(
            reason.starts_with("the image is built for linux/arm64, but web/staging runs linux/amd64 (the default, as no `platform` is set)"),
            "{reason}"
        );
        assert!(w.target.started().is_empty(), "nothing may start");
        let events = blocked(&w);
        assert_eq!(events.len(), 1);
        let detail = serde_json::to_value(&events[0].detail).unwrap();
        assert_eq!(
            detail["platforms"],
            json!({"image": ["linux/arm64"], "target": "linux/amd64"})
        );
        // The same event delivered again announces nothing more.
        w.deployer().on_push(&push).await.unwrap();
        assert_eq!(blocked(&w).len(), 1);
    }

    #[tokio::test]
    async fn an_environment_whose_platform_is_arm64_takes_an_arm64_image_or_an_index_listing_it() {
        let w = World::new(&config("platform: linux/arm64"));
        let single = push(&w, 'a', "evt-1");
        w.registry.built_for(
            &single.digest,
            ImagePlatforms::Known(vec![p("linux/aarch64")]),
        );
        let results = w.deployer().on_push(&single).await.unwrap();
        assert!(
            matches!(results[0].outcome, EnvOutcome::Started { .. }),
            "{results:?}"
        );
        // An amd64-only image is refused there, naming the configured platform.
        let amd = push(&w, 'b', "evt-2");
        let results = w.deployer().on_push(&amd).await.unwrap();
        let EnvOutcome::Blocked { reason, .. } = &results[0].outcome else {
            panic!("{results:?}")
        };
        assert!(
            reason.contains("runs linux/arm64 (as its `platform` says)"),
            "{reason}"
        );
        // A multi-platform index listing arm64 is queued behind the running rollout.
        let multi = push(&w, 'c', "evt-3");
        w.registry.built_for(
            &multi.digest,
            ImagePlatforms::Known(vec![p("linux/amd64"), p("linux/arm64")]),
        );
        let results = w.deployer().on_push(&multi).await.unwrap();
        assert!(
            matches!(results[0].outcome, EnvOutcome::Queued { .. }),
            "{results:?}"
        );
    }

    #[tokio::test]
    async fn the_targets_own_platform_wins_and_an_unknown_platform_is_not_refused() {
        let w = World::new(&config("platform: linux/amd64"));
        w.target.declare_platform(p("linux/arm64"));
        let amd = push(&w, 'a', "evt-1");
        let results = w.deployer().on_push(&amd).await.unwrap();
        let EnvOutcome::Blocked { reason, .. } = &results[0].outcome else {
            panic!("{results:?}")
        };
        assert!(
            reason.contains("runs linux/arm64 (as its ECS task definition's runtimePlatform says)"),
            "{reason}"
        );
        let unknown = push(&w, 'b', "evt-2");
        w.registry.built_for(
            &unknown.digest,
            ImagePlatforms::Unknown("ECR holds no readable config blob".into()),
        );
        let results = w.deployer().on_push(&unknown).await.unwrap();
        assert!(
            matches!(results[0].outcome, EnvOutcome::Started { .. }),
            "{results:?}"
        );
    }

    #[tokio::test]
    async fn a_deploy_by_hand_of_an_image_for_another_platform_is_refused_too() {
        let w = World::new(&config(""));
        let digest = w.image('d').digest;
        w.registry.push("acme/web", Some("v2.0.0"), &digest);
        w.registry
            .built_for(&digest, ImagePlatforms::Known(vec![p("linux/arm64")]));
        let result = w
            .deployer()
            .manual(&ManualDeploy {
                app: AppName::parse("web").unwrap(),
                environment: EnvName::parse("staging").unwrap(),
                wanted: Wanted::Tag(crate::domain::Tag::parse("v2.0.0").unwrap()),
                requested_by: Some("alice".into()),
                reason: None,
            })
            .await
            .unwrap();
        assert!(
            matches!(&result.outcome, EnvOutcome::Blocked { reason, .. } if reason.contains("built for linux/arm64")),
            "{result:?}"
        );
        assert!(w.target.started().is_empty());
    }
}
