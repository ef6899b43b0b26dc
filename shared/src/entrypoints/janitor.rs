//! The janitor's entrypoint: its schedule, or a cleanup request typed in the console.

use lambda_runtime::LambdaEvent;
use serde::Deserialize;
use serde_json::Value;

use super::{Function, check_routed};
use crate::domain::Repository;
use crate::inbound::{Console, Envelope, is_event};
use crate::lambda::respond;
use crate::services::janitor::CleanupRequest;
use crate::services::{InputError, Janitor, ServiceError};

/// What the janitor is asked to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// The schedule: every repository with a retention rule.
    Scheduled,
    /// A person's run.
    Clean(CleanupRequest),
}

/// `{"dry_run": true, "repository": "acme/web"}`: `dry_run` must be said out loud.
#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Action {
    Clean,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CleanRequest {
    dry_run: bool,
    #[serde(default)]
    repository: Option<Repository>,
}

pub const CONSOLE: Console = Console {
    function: "the janitor",
    default_action: Some("clean"),
    actions: &["clean"],
    missing: |_, field| {
        (field == "dry_run").then(|| {
            "a cleanup by hand says \"dry_run\": true (report only) or false (delete)".into()
        })
    },
};

pub fn parse(payload: Value) -> Result<Input, InputError> {
    if !is_event(&payload) {
        let (Action::Clean, fields) = CONSOLE.read(payload)?;
        let r: CleanRequest = fields.read()?;
        return Ok(Input::Clean(CleanupRequest {
            dry_run: r.dry_run,
            repository: r.repository,
        }));
    }
    let envelope = Envelope::read(payload)?;
    check_routed(Function::Janitor, &envelope)?;
    Ok(Input::Scheduled)
}

/// Does what the input asks; `scheduled_dry_run` says whether scheduled runs only report.
pub async fn run(
    janitor: &Janitor,
    scheduled_dry_run: bool,
    input: Input,
) -> Result<Value, ServiceError> {
    match input {
        Input::Scheduled => {
            let report = janitor
                .run(&CleanupRequest {
                    dry_run: scheduled_dry_run,
                    repository: None,
                })
                .await?;
            // A scheduled run that could not finish fails, so that it is retried and the
            // function's error alarm sees it.
            if let Some(error) = report.incomplete() {
                return Err(error);
            }
            respond(&report)
        }
        Input::Clean(request) => respond(&janitor.run(&request).await?),
    }
}

/// What Lambda calls.
pub async fn handle(
    janitor: &Janitor,
    scheduled_dry_run: bool,
    event: LambdaEvent<Value>,
) -> Result<Value, ServiceError> {
    run(janitor, scheduled_dry_run, parse(event.payload)?).await
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use crate::domain::{Deployment, Digest, Kind, PinnedImage, Request};
    use crate::fakes::{FakeRegistry, MemoryStore, RecordingPublisher};
    use crate::ports::{Commit, StateStore};
    use serde_json::json;
    use time::macros::datetime;

    use super::*;

    const REPO: &str = "acme/web";

    struct World {
        janitor: Janitor,
        store: MemoryStore,
        registry: FakeRegistry,
        events: RecordingPublisher,
    }

    fn world(page_size: usize) -> World {
        let mut w = crate::fakes::World::sample();
        w.clock.set(datetime!(2026-11-20 03:00 UTC));
        w.registry.page_size = page_size;
        World {
            janitor: w.janitor(),
            store: w.store,
            registry: w.registry,
            events: w.events,
        }
    }

    fn digest(n: usize) -> Digest {
        Digest::parse(&format!("sha256:{n:064x}")).unwrap()
    }

    /// Pushes `count` images tagged main-1…main-N, oldest first.
    fn push_many(w: &World, count: usize) {
        for n in 1..=count {
            w.registry
                .push(REPO, Some(&format!("main-{n}")), &digest(n));
        }
    }

    /// Makes `n` the image web/production runs, verified there.
    async fn run_in_production(w: &World, n: usize) {
        let app = crate::fakes::app("web");
        let env = crate::fakes::env_name("production");
        let mut dep = Deployment::new(
            app.clone(),
            env.clone(),
            Request {
                image: PinnedImage::parse(&format!("localhost:5000/acme/web@{}", digest(n)))
                    .unwrap(),
                tag: None,
                kind: Kind::Manual,
                pushed_at: datetime!(2026-11-01 00:00 UTC),
                requested_by: None,
                reason: None,
            },
            datetime!(2026-11-01 00:00 UTC),
        );
        let mut state = w.store.env_state(&app, &env).await.unwrap();
        state.start(&mut dep);
        state.record_verified(&dep, datetime!(2026-11-01 00:05 UTC));
        w.store
            .commit(Commit::env(&mut state).with(&mut dep))
            .await
            .unwrap();
    }

    fn event(json: &str) -> LambdaEvent<Value> {
        crate::fakes::invocation(json)
    }

    fn digests(value: &Value) -> BTreeSet<Digest> {
        value
            .as_array()
            .unwrap()
            .iter()
            .map(|d| Digest::parse(d.as_str().unwrap()).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn the_schedule_deletes_all_but_the_newest_the_releases_and_what_runs() {
        let w = world(7);
        push_many(&w, 40);
        w.registry.push(REPO, Some("v1.0.0"), &digest(100));
        // Pushed long ago: older than every main-* image.
        run_in_production(&w, 3).await;
        let out = handle(
            &w.janitor,
            false,
            event(include_str!("../../../events/janitor/schedule.json")),
        )
        .await
        .unwrap();
        let report = &out["repositories"][0];
        // v1.0.0 was pushed last, so it is also among the 30 newest: main-12…main-40 stay.
        let expected: BTreeSet<Digest> = (1..=11).filter(|n| *n != 3).map(digest).collect();
        assert_eq!(digests(&report["deleted"]), expected);
        assert_eq!(report["images"], 41);
        assert_eq!(report["kept"]["in_use"], 1);
        assert_eq!(
            report["in_use"][digest(3).as_str()],
            "current in web/production"
        );
        for n in 1..=11 {
            assert_eq!(w.registry.exists(REPO, &digest(n)), n == 3, "main-{n}");
        }
        assert!(w.registry.exists(REPO, &digest(100)));
        let deleted: Vec<_> = w
            .events
            .events()
            .iter()
            .filter(|e| e.detail_type.as_str() == "Images Deleted")
            .cloned()
            .collect();
        assert_eq!(deleted.len(), 1, "one event per batch of deletions");
        let pages = w
            .registry
            .calls()
            .iter()
            .filter(|c| **c == "list_page")
            .count();
        assert_eq!(pages, 6, "41 images in pages of 7");
    }

    #[tokio::test]
    async fn a_digest_waiting_for_approval_is_kept() {
        use crate::domain::approval::{Pending, Waiting};
        let w = world(1000);
        push_many(&w, 31);
        let app = crate::fakes::app("web");
        let env = crate::fakes::env_name("production");
        let mut state = w.store.env_state(&app, &env).await.unwrap();
        state.hold(
            Pending {
                image: PinnedImage::parse(&format!("localhost:5000/acme/web@{}", digest(1)))
                    .unwrap(),
                tag: None,
                from: crate::fakes::env_name("staging"),
                waiting_for: Waiting::Approval,
                pushed_at: datetime!(2026-11-01 00:00 UTC),
                since: datetime!(2026-11-19 00:00 UTC),
                expires_at: Some(datetime!(2026-11-22 00:00 UTC)),
                reason: "verified in staging".into(),
                approved: None,
            },
            datetime!(2026-11-19 00:00 UTC),
        );
        w.store.commit(Commit::env(&mut state)).await.unwrap();
        let out = handle(
            &w.janitor,
            false,
            event(include_str!("../../../events/janitor/clean.json")),
        )
        .await
        .unwrap();
        assert_eq!(
            out["repositories"][0]["in_use"][digest(1).as_str()],
            "waiting for approval to promote into web/production"
        );
        assert!(w.registry.exists(REPO, &digest(1)));
        assert_eq!(out["repositories"][0]["deleted"], json!([]));
    }

    #[tokio::test]
    async fn a_dry_run_reports_and_deletes_nothing() {
        let w = world(1000);
        push_many(&w, 35);
        let out = handle(
            &w.janitor,
            false,
            event(include_str!("../../../events/janitor/dry-run.json")),
        )
        .await
        .unwrap();
        assert_eq!(out["dry_run"], true);
        let expected: BTreeSet<Digest> = (1..=5).map(digest).collect();
        assert_eq!(digests(&out["repositories"][0]["deleted"]), expected);
        assert!((1..=35).all(|n| w.registry.exists(REPO, &digest(n))));
        assert!(w.events.events().is_empty());
        assert!(!w.registry.calls().contains(&"delete"));
    }

    #[tokio::test(start_paused = true)]
    async fn throttling_is_waited_out() {
        let w = world(10);
        push_many(&w, 31);
        w.registry.throttle(3);
        let out = handle(
            &w.janitor,
            false,
            event(include_str!("../../../events/janitor/clean.json")),
        )
        .await
        .unwrap();
        assert_eq!(
            digests(&out["repositories"][0]["deleted"]),
            BTreeSet::from([digest(1)])
        );
        assert!(!w.registry.exists(REPO, &digest(1)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_registry_that_stays_throttled_fails_the_scheduled_run_and_deletes_nothing() {
        let w = world(1000);
        push_many(&w, 31);
        w.registry.throttle(usize::MAX);
        let err = handle(
            &w.janitor,
            false,
            event(include_str!("../../../events/janitor/schedule.json")),
        )
        .await
        .unwrap_err();
        assert!(err.is_retryable(), "{err}");
        assert!(err.to_string().contains("acme/web"), "{err}");
        assert!(w.registry.exists(REPO, &digest(1)));
    }

    #[tokio::test]
    async fn the_manifests_of_a_kept_multi_platform_image_stay() {
        let w = world(1000);
        push_many(&w, 31);
        // An index pushed first (the oldest), tagged v2: protected; its two manifests are
        // untagged and as old.
        let index = digest(500);
        w.registry.push(REPO, Some("v2.0.0"), &index);
        w.registry.push(REPO, None, &digest(501));
        w.registry.push(REPO, None, &digest(502));
        w.registry
            .set_children(&index, vec![digest(501), digest(502)]);
        let out = handle(
            &w.janitor,
            false,
            event(include_str!("../../../events/janitor/clean.json")),
        )
        .await
        .unwrap();
        assert_eq!(out["repositories"][0]["kept"]["child_of_kept_index"], 2);
        assert!(w.registry.exists(REPO, &digest(501)));
        assert!(w.registry.exists(REPO, &digest(502)));
    }

    #[tokio::test]
    async fn bad_requests_are_refused_with_what_to_fix() {
        let w = world(1000);
        push_many(&w, 40);
        let err = handle(
            &w.janitor,
            false,
            event(include_str!(
                "../../../events/janitor/unknown-repository.json"
            )),
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("add `retention`"), "{err}");
        let err = handle(&w.janitor, false, event(r#"{"repository": "acme/web"}"#))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("dry_run"), "{err}");
        let err = handle(
            &w.janitor,
            false,
            event(include_str!(
                "../../../events/tracker/ssm-command-success.json"
            )),
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("does not handle"), "{err}");
        assert!(!w.registry.calls().contains(&"delete"));
        // A bad PUSHDEPLOY_JANITOR_DRY_RUN: see settings::tests.
    }
}
