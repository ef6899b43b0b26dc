//! Operating pushdeploy against a moto server with the real adapters: the janitor cleaning
//! a repository of thousands of images, and environment tags moving in ECR.

use std::collections::BTreeSet;
use std::time::Duration;

use futures::StreamExt;
use pushdeploy::domain::environment::{Current, Queued, VerifiedDigest};
use pushdeploy::domain::event::Detail;
use pushdeploy::domain::{DeploymentId, Digest, EventType, Kind, LifecycleEvent, PinnedImage, Tag};
use pushdeploy::entrypoints::Function;
use pushdeploy::ports::{Clock, Commit, MAX_BATCH, SystemClock};
use pushdeploy::services::deploy::EnvTagOutcome;
use pushdeploy::services::janitor::CleanupReport;
use pushdeploy_tests::{REPOSITORY, World, names};
use time::macros::datetime;

const CONFIG: &str = r#"
apps:
  web:
    repository: acme/web
    retention: { keep_newest: 20, keep_verified: 2, protect_tags: ["v*"] }
    environments:
      staging:
        deploy_on_push: { tags: ["v*"] }
        target: { ssm: { instances: { tag: { Role: web-staging } }, container: web, ports: ["80:8000"] } }
      production:
        ecr_tag: live
        target: { ssm: { instances: { tag: { Role: web-production } }, container: web, ports: ["80:8000"] } }
"#;

/// Old images, pushed before the newest ones.
const OLD: usize = 2500;
const NEW: usize = 20;

fn numbered(n: usize) -> Digest {
    Digest::parse(&format!("sha256:{n:064x}")).unwrap()
}

fn pinned(d: &Digest) -> PinnedImage {
    PinnedImage::parse(&format!(
        "123456789012.dkr.ecr.us-east-1.amazonaws.com/acme/web@{d}"
    ))
    .unwrap()
}

fn verified(d: &Digest, minute: u8) -> VerifiedDigest {
    VerifiedDigest {
        digest: d.clone(),
        tag: None,
        deployment_id: DeploymentId::new(datetime!(2026-11-01 00:00 UTC)),
        at: datetime!(2026-11-01 00:00 UTC) + time::Duration::minutes(minute.into()),
    }
}

async fn put_many(w: &World, digests: impl Iterator<Item = (Option<String>, Digest)>) {
    let puts = futures::stream::iter(digests)
        .map(|(tag, d)| async move { w.put_image(tag.as_deref(), &d).await })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    for p in puts {
        p.expect("PutImage");
    }
}

async fn stored(w: &World) -> BTreeSet<Digest> {
    let mut all = BTreeSet::new();
    let mut next = None;
    loop {
        let out = aws_sdk_ecr::Client::new(&w.sdk)
            .describe_images()
            .repository_name(REPOSITORY)
            .set_next_token(next)
            .send()
            .await
            .unwrap();
        all.extend(
            out.image_details()
                .iter()
                .map(|d| Digest::parse(d.image_digest().unwrap()).unwrap()),
        );
        next = out.next_token().map(str::to_owned);
        if next.is_none() {
            return all;
        }
    }
}

#[tokio::test]
async fn the_janitor_deletes_exactly_what_no_rule_keeps_from_a_repository_of_thousands() {
    let w = World::start(CONFIG).await.unwrap();
    // Old builds, every 500th a release (protected by v*), some untagged.
    put_many(
        &w,
        (0..OLD).map(|n| {
            let tag = match n {
                n if n % 500 == 0 => Some(format!("v1.{n}.0")),
                n if n % 7 == 0 => None,
                n => Some(format!("build-{n}")),
            };
            (tag, numbered(n))
        }),
    )
    .await;
    // A multi-platform release: its index is protected by its tag, and its two platform
    // manifests (untagged, as old as it) must stay with it.
    let index = numbered(9000);
    let platforms = [numbered(9001), numbered(9002)];
    put_many(&w, platforms.iter().map(|d| (None, d.clone()))).await;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": platforms.iter().map(|d| serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "size": 2,
            "digest": d.as_str(),
            "platform": { "architecture": "amd64", "os": "linux" }
        })).collect::<Vec<_>>()
    });
    aws_sdk_ecr::Client::new(&w.sdk)
        .put_image()
        .repository_name(REPOSITORY)
        .image_manifest(manifest.to_string())
        .image_manifest_media_type("application/vnd.oci.image.index.v1+json")
        .image_digest(index.as_str())
        .image_tag("v2.0.0")
        .send()
        .await
        .unwrap();
    // What the environments need: staging runs 7 and verified 7, 8 and 9 before it (only
    // the last 2 are kept); production has 11 queued and 12 rolling out, replacing 13.
    let (app, staging) = names("web", "staging");
    let (_, production) = names("web", "production");
    let store = &w.deployer.core.store;
    let mut state = store.env_state(&app, &staging).await.unwrap();
    state.current = Some(Current {
        deployment_id: DeploymentId::new(datetime!(2026-11-01 00:00 UTC)),
        digest: numbered(7),
        tag: None,
        pushed_at: datetime!(2026-11-01 00:00 UTC),
    });
    state.verified = vec![
        verified(&numbered(7), 3),
        verified(&numbered(8), 2),
        verified(&numbered(9), 1),
    ];
    store.commit(Commit::env(&mut state)).await.unwrap();
    let mut prod = store.env_state(&app, &production).await.unwrap();
    prod.current = Some(Current {
        deployment_id: DeploymentId::new(datetime!(2026-11-01 00:00 UTC)),
        digest: numbered(13),
        tag: None,
        pushed_at: datetime!(2026-11-01 00:00 UTC),
    });
    let mut rolling = pushdeploy::domain::Deployment::new(
        app.clone(),
        production.clone(),
        pushdeploy::domain::Request {
            image: pinned(&numbered(12)),
            tag: None,
            kind: Kind::Manual,
            pushed_at: datetime!(2026-11-02 00:00 UTC),
            requested_by: None,
            reason: None,
        },
        datetime!(2026-11-02 00:00 UTC),
    );
    prod.start(&mut rolling);
    prod.queued = Some(Queued {
        image: pinned(&numbered(11)),
        tag: Some(Tag::parse("build-11").unwrap()),
        kind: Kind::Push,
        pushed_at: datetime!(2026-11-03 00:00 UTC),
        requested_by: None,
        reason: None,
    });
    store
        .commit(Commit::env(&mut prod).with(&mut rolling))
        .await
        .unwrap();
    // ECR records push times in whole seconds: the newest images come a second later.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    put_many(
        &w,
        (OLD..OLD + NEW).map(|n| (Some(format!("main-{n}")), numbered(n))),
    )
    .await;

    let kept: BTreeSet<usize> = [7, 8, 11, 12, 13, 9000, 9001, 9002]
        .into_iter()
        .chain((0..OLD).step_by(500))
        .chain(OLD..OLD + NEW)
        .collect();
    let expected: BTreeSet<Digest> = (0..OLD + NEW)
        .chain(9000..9003)
        .filter(|n| !kept.contains(n))
        .map(numbered)
        .collect();
    assert!(
        expected.contains(&numbered(9)),
        "the third verified digest is not kept"
    );

    let clean = |dry_run: bool| {
        let w = &w;
        async move {
            let out = w
                .invoke(Function::Janitor, serde_json::json!({ "dry_run": dry_run }))
                .await
                .unwrap();
            serde_json::from_value::<CleanupReport>(out).unwrap()
        }
    };
    let dry = clean(true).await;
    let report = &dry.repositories[0];
    assert_eq!(report.error, None);
    assert_eq!(report.images, OLD + NEW + 3);
    assert_eq!(
        report.deleted.iter().cloned().collect::<BTreeSet<_>>(),
        expected
    );
    assert_eq!(
        stored(&w).await.len(),
        OLD + NEW + 3,
        "a dry run deletes nothing"
    );
    assert!(w.published.all().is_empty());

    let run = clean(false).await;
    let report = &run.repositories[0];
    assert_eq!(report.error, None);
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(
        report.deleted.iter().cloned().collect::<BTreeSet<_>>(),
        expected
    );
    assert_eq!(report.kept.newest, NEW);
    assert_eq!(report.kept.protected_tag, OLD / 500 + 1);
    assert_eq!(report.kept.child_of_kept_index, 2);
    assert_eq!(report.kept.in_use, 5);
    let left = stored(&w).await;
    assert_eq!(
        left,
        kept.iter().copied().map(numbered).collect::<BTreeSet<_>>()
    );

    // Every deletion was announced, in batches the size of ECR's.
    let mut announced = BTreeSet::new();
    for event in w.published.all() {
        assert_eq!(event.detail_type.as_str(), "Images Deleted");
        let Detail::Images(images) = &event.detail else {
            panic!("not about images: {event:?}")
        };
        assert!(images.digests.len() <= MAX_BATCH);
        assert_eq!(images.repository.as_str(), REPOSITORY);
        announced.extend(images.digests.iter().cloned());
    }
    assert_eq!(announced, expected);

    // A second run finds nothing more to delete.
    let again = clean(false).await;
    assert!(again.repositories[0].deleted.is_empty());
}

#[tokio::test]
async fn the_environment_tag_follows_the_verified_digest_in_ecr() {
    let w = World::start(CONFIG).await.unwrap();
    let (first, second) = (numbered(1), numbered(2));
    w.put_image(Some("v1.0.0"), &first).await.unwrap();
    w.put_image(Some("v1.1.0"), &second).await.unwrap();
    let (app, production) = names("web", "production");
    let store = &w.deployer.core.store;
    let tagged = |tag: &'static str| {
        let sdk = w.sdk.clone();
        async move {
            let out = aws_sdk_ecr::Client::new(&sdk)
                .describe_images()
                .repository_name(REPOSITORY)
                .image_ids(
                    aws_sdk_ecr::types::ImageIdentifier::builder()
                        .image_tag(tag)
                        .build(),
                )
                .send()
                .await
                .unwrap();
            out.image_details()[0].image_digest().unwrap().to_owned()
        }
    };
    for d in [&first, &second] {
        let mut state = store.env_state(&app, &production).await.unwrap();
        state.verified.insert(0, verified(d, 1));
        store.commit(Commit::env(&mut state)).await.unwrap();
        let outcome = verified_event_moves(&w, d).await;
        assert_eq!(
            outcome,
            EnvTagOutcome::Moved {
                tag: Tag::parse("live").unwrap(),
                digest: d.clone()
            }
        );
        assert_eq!(tagged("live").await, d.as_str());
    }
    // The image it left keeps its own tag.
    assert_eq!(tagged("v1.0.0").await, first.as_str());
    let again = verified_event_moves(&w, &second).await;
    assert!(
        matches!(again, EnvTagOutcome::AlreadyThere { .. }),
        "{again:?}"
    );
}

/// "Deployment Verified" of `digest` in web/production reaches the deployer; what became of
/// the environment's ECR tag.
async fn verified_event_moves(w: &World, digest: &Digest) -> EnvTagOutcome {
    let (app, production) = names("web", "production");
    let registry = format!(
        "{}.dkr.ecr.{}.amazonaws.com",
        pushdeploy_local::moto::ACCOUNT,
        pushdeploy_local::moto::REGION
    );
    let image = PinnedImage::parse(&format!("{registry}/{REPOSITORY}@{digest}")).unwrap();
    let event = LifecycleEvent::environment(
        EventType::DeploymentVerified,
        &app,
        &production,
        None,
        SystemClock.now(),
    )
    .with_image(&image, None, Kind::Push);
    let out = w
        .deliver(
            Function::Deployer,
            pushdeploy::fakes::delivered(&event, &format!("verified-{digest}")),
        )
        .await
        .unwrap();
    serde_json::from_value(out["ecr_tag"].clone()).unwrap()
}
