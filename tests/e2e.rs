//! End to end on the local stack: moto as AWS's control plane, the functions as their
//! real binaries under `cargo lambda watch`, the template's rules routing events, a local
//! OCI registry, and a real container host (podman) running the SSM document's own script.
//! Each test starts a stack of its own and stops it at the end.
//!
//! The function binaries must be built first (`cargo build --workspace --bins`); `make test`
//! builds every target before it runs the tests.

use std::time::Duration;

use pushdeploy_local::app::{Behaviour, SampleApp};
use pushdeploy_local::host::Ran;
use pushdeploy_local::images::BuiltImage;
use pushdeploy_local::stack::{Pushed, Stack, StackOptions};
use pushdeploy_local::timeline::Entry;
use serde_json::Value as Json;

/// How long one step (a rollout, a verification, a rollback) may take.
const STEP: Duration = Duration::from_secs(120);

struct Scene {
    stack: Stack,
    app: SampleApp,
}

impl Scene {
    async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    async fn start_with(adjust: impl FnOnce(&mut StackOptions)) -> Self {
        Self::start_configured(adjust, |config| config).await
    }

    /// A stack whose configuration is the sample app's, changed by `edit`.
    async fn start_configured(
        adjust: impl FnOnce(&mut StackOptions),
        edit: impl FnOnce(String) -> String,
    ) -> Self {
        let app = SampleApp::new().expect("a free port for the sample app");
        let mut options = StackOptions::from_env().for_app(&app);
        options.instances_per_function = 1;
        adjust(&mut options);
        let stack = Stack::start(options)
            .await
            .expect("the local stack starts (run `make setup` first)");
        stack
            .put_config(&edit(app.config(&stack.registry.host())))
            .await
            .expect("the configuration is stored");
        Self { stack, app }
    }

    async fn image(&self, label: &str, behaviour: Behaviour) -> BuiltImage {
        self.stack
            .build(&self.app.repository, &self.app.version(label, behaviour))
            .await
            .expect("the image builds from busybox-static")
    }

    async fn push(&self, image: &BuiltImage, tag: &str) -> Pushed {
        self.stack
            .push(image, &self.app.repository, tag)
            .await
            .expect("the image is pushed and its event published")
    }

    /// The id of the rollout of `pushed` of the given kind (push, manual, rollback).
    async fn started(&self, digest: &str, kind: &str) -> String {
        self.stack
            .timeline
            .wait_for(&format!("a {kind} rollout of {digest}"), STEP, |entries| {
                entries
                    .iter()
                    .find(|e| {
                        e.is_event("Rollout Started")
                            && e.field("digest") == Some(digest)
                            && e.field("kind") == Some(kind)
                    })
                    .and_then(|e| e.deployment_id.clone())
            })
            .await
            .unwrap_or_else(|e| self.fail(e))
    }

    async fn event(&self, detail_type: &str, deployment_id: &str) -> Entry {
        self.stack
            .timeline
            .wait_for_event(detail_type, deployment_id, STEP)
            .await
            .unwrap_or_else(|e| self.fail(e))
    }

    /// The rollback that followed the failure of `failed`.
    async fn rollback_of(&self, failed: &str) -> Entry {
        self.stack
            .timeline
            .wait_for(&format!("the rollback of {failed}"), STEP, |entries| {
                entries
                    .iter()
                    .find(|e| {
                        e.is_event("Rollback Started") && e.field("rollback_of") == Some(failed)
                    })
                    .cloned()
            })
            .await
            .unwrap_or_else(|e| self.fail(e))
    }

    /// What the app on the host answers on `/`.
    async fn serving(&self) -> String {
        match self.app.get("/").await {
            Ok((200, body)) => body.trim().to_owned(),
            other => self.fail(format!("{} answered {other:?}", self.app.url("/"))),
        }
    }

    /// The containers running on the host, as (name, image).
    async fn running(&self) -> Vec<(String, String)> {
        self.stack
            .host
            .containers()
            .await
            .expect("podman lists the containers")
            .into_iter()
            .filter(|c| c.state == "running")
            .map(|c| (c.name, c.image))
            .collect()
    }

    /// The host's `docker` invocations for one command, arguments only.
    fn docker_calls(&self, command_id: &str) -> Vec<String> {
        self.stack
            .host
            .docker_log()
            .lines()
            .filter_map(|line| {
                let mut fields = line.splitn(4, ' ');
                let (_at, id, _docker, args) = (
                    fields.next()?,
                    fields.next()?,
                    fields.next()?,
                    fields.next()?,
                );
                (id == command_id).then(|| args.to_owned())
            })
            .collect()
    }

    /// Waits until the host has finished `n` commands.
    async fn ran(&self, n: usize) -> Vec<Ran> {
        let deadline = tokio::time::Instant::now() + STEP;
        loop {
            let ran = self.stack.host.ran();
            if ran.len() >= n {
                return ran;
            }
            if tokio::time::Instant::now() > deadline {
                self.fail(format!("the host finished {ran:?}, expected {n} commands"));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn events(&self, detail_type: &str) -> Vec<Entry> {
        self.stack
            .timeline
            .events()
            .into_iter()
            .filter(|e| e.is_event(detail_type))
            .collect()
    }

    /// Fails the test with the timeline, and keeps the logs.
    fn fail(&self, problem: impl std::fmt::Display) -> ! {
        self.stack.keep_logs();
        let lines: Vec<String> = self
            .stack
            .timeline
            .entries()
            .into_iter()
            .map(|e| e.line)
            .collect();
        panic!(
            "{problem}\n\ntimeline:\n{}\n\nlogs kept in {}",
            lines.join("\n"),
            self.stack.run.dir.join("logs").display()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_push_serves_the_new_version_and_a_bad_push_ends_with_the_previous_one_serving() {
    let s = Scene::start().await;
    let v1 = s.image("v1", Behaviour::Good).await;
    let v2 = s.image("v2", Behaviour::FailsSmokeTest).await;

    let pushed_v1 = s.push(&v1, "v1").await;
    let first = s.started(&pushed_v1.digest, "push").await;
    s.event("Deployment Verified", &first).await;
    assert!(s.serving().await.starts_with("web v1:"));

    let pushed_v2 = s.push(&v2, "v2").await;
    let second = s.started(&pushed_v2.digest, "push").await;
    s.event("Rollout Succeeded", &second).await;
    let failed = s.event("Verification Failed", &second).await;
    assert!(
        failed
            .field("reason")
            .unwrap_or_default()
            .contains("all systems go"),
        "{failed:?}"
    );
    let rollback = s.rollback_of(&second).await;
    assert_eq!(rollback.field("digest"), Some(pushed_v1.digest.as_str()));
    s.event("Rollback Succeeded", &second).await;
    s.event(
        "Deployment Verified",
        rollback.deployment_id.as_deref().unwrap(),
    )
    .await;

    assert!(s.serving().await.starts_with("web v1:"));
    let running = s.running().await;
    assert_eq!(running.len(), 1, "{running:?}");
    assert!(running[0].1.ends_with(&pushed_v1.digest), "{running:?}");
    let status = s.stack.status("web", "staging").await.unwrap();
    assert_eq!(status["current"]["digest"], Json::from(pushed_v1.digest));
    assert!(s.stack.router.dead_letters().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_digest_missing_from_the_registry_fails_the_pull_and_the_old_container_keeps_serving() {
    let s = Scene::start().await;
    let v1 = s.image("v1", Behaviour::Good).await;
    let pushed_v1 = s.push(&v1, "v1").await;
    let first = s.started(&pushed_v1.digest, "push").await;
    s.event("Deployment Verified", &first).await;

    let missing = s.stack.push_missing(&s.app.repository, "v2").await.unwrap();
    let second = s.started(&missing.digest, "push").await;
    let failed = s.event("Rollout Failed", &second).await;
    let ran = s.ran(2).await;
    let pull = ran
        .iter()
        .find(|r| r.deployment_id.as_deref() == Some(second.as_str()))
        .unwrap_or_else(|| s.fail(format!("no command ran for {second}")));
    assert_eq!(pull.status, "Failed", "{failed:?}");
    assert_ne!(pull.exit_code, Some(0));
    // The running container was never touched: the run stopped at the pull.
    let calls = s.docker_calls(&pull.command_id);
    assert!(
        calls.iter().any(|c| c.starts_with("pull ")),
        "the script pulled: {calls:?}"
    );
    for verb in ["stop", "rm", "rename", "run", "start"] {
        assert!(
            !calls.iter().any(|c| c.starts_with(&format!("{verb} "))),
            "`docker {verb}` ran after a failed pull: {calls:?}"
        );
    }
    assert!(s.serving().await.starts_with("web v1:"));
    // The failed rollout is rolled back to v1, which was never replaced.
    s.event("Rollback Succeeded", &second).await;
    assert!(s.serving().await.starts_with("web v1:"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unhealthy_version_is_replaced_by_the_previous_container_on_the_host() {
    let s = Scene::start().await;
    let v1 = s.image("v1", Behaviour::Good).await;
    let v3 = s.image("v3", Behaviour::Unhealthy).await;
    let pushed_v1 = s.push(&v1, "v1").await;
    let first = s.started(&pushed_v1.digest, "push").await;
    s.event("Deployment Verified", &first).await;

    let pushed_v3 = s.push(&v3, "v3").await;
    let bad = s.started(&pushed_v3.digest, "push").await;
    s.event("Rollout Failed", &bad).await;
    let ran = s.ran(2).await;
    let attempt = ran
        .iter()
        .find(|r| r.deployment_id.as_deref() == Some(bad.as_str()))
        .unwrap();
    assert_eq!(attempt.status, "Failed");
    assert!(
        s.docker_calls(&attempt.command_id)
            .iter()
            .any(|c| c.starts_with("run ")),
        "the new container was started before it was given up"
    );
    assert!(s.serving().await.starts_with("web v1:"));
    let running = s.running().await;
    assert_eq!(running.len(), 1, "{running:?}");
    assert!(running[0].1.ends_with(&pushed_v1.digest), "{running:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_run_logs_in_to_ecr_before_it_pulls() {
    let s = Scene::start().await;
    let v1 = s.image("v1", Behaviour::Good).await;
    let v2 = s.image("v2", Behaviour::Good).await;
    for (image, tag) in [(&v1, "v1"), (&v2, "v2")] {
        let pushed = s.push(image, tag).await;
        let id = s.started(&pushed.digest, "push").await;
        s.event("Deployment Verified", &id).await;
    }
    let ran = s.ran(2).await;
    assert_eq!(ran.len(), 2);
    for r in &ran {
        let calls = s.docker_calls(&r.command_id);
        let login = calls.iter().position(|c| c.starts_with("login "));
        let pull = calls.iter().position(|c| c.starts_with("pull "));
        assert!(
            matches!((login, pull), (Some(l), Some(p)) if l < p),
            "command {} did not log in before pulling: {calls:?}",
            r.command_id
        );
    }
    assert!(s.serving().await.starts_with("web v2:"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_document_parameters_are_refused_before_any_shell_runs() {
    let s = Scene::start().await;
    let v1 = s.image("v1", Behaviour::Good).await;
    let pushed_v1 = s.push(&v1, "v1").await;
    let first = s.started(&pushed_v1.digest, "push").await;
    s.event("Deployment Verified", &first).await;
    let before = s.stack.host.docker_log();

    // Someone with ssm:SendCommand on the document, bypassing pushdeploy's own checks.
    let hostile = format!("{}; touch /tmp/pwned #", pushed_v1.image);
    let ssm = aws_sdk_ssm::Client::new(&s.stack.sdk);
    let sent = ssm
        .send_command()
        .document_name(&s.stack.names.document)
        .instance_ids(&s.stack.host.instance_id)
        .parameters("Image", vec![hostile])
        .parameters("Registry", vec![s.stack.registry.host()])
        .parameters("Region", vec!["us-east-1".to_owned()])
        .parameters("Container", vec!["web$(reboot)".to_owned()])
        .parameters("Ports", vec![format!("{}:8000", s.app.port)])
        .parameters("HealthPort", vec![s.app.port.to_string()])
        .parameters("HealthPath", vec!["/health".to_owned()])
        .parameters("HealthTimeoutSeconds", vec!["30".to_owned()])
        .parameters("ExecutionTimeoutSeconds", vec!["600".to_owned()])
        .parameters(
            "DeploymentId",
            vec!["01KAR1Q3X8Y7ZP9V0HX6T2M4BC".to_owned()],
        )
        .send()
        .await
        .unwrap();
    let command_id = sent
        .command()
        .and_then(|c| c.command_id())
        .unwrap()
        .to_owned();
    let ran = s.ran(2).await;
    let refused = ran.iter().find(|r| r.command_id == command_id).unwrap();
    assert_eq!(refused.status, "Failed");
    assert!(!refused.shell_ran, "a shell ran for {refused:?}");
    let problems = s
        .stack
        .timeline
        .entries()
        .into_iter()
        .find(|e| e.kind == "command refused" && e.field("command_id") == Some(&command_id))
        .map(|e| e.detail["problems"].clone())
        .unwrap_or_else(|| s.fail("no refusal on the timeline"));
    let problems: Vec<&str> = problems
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Json::as_str)
        .collect();
    assert_eq!(problems.len(), 2, "{problems:?}");
    for name in ["\"Container\"", "\"Image\""] {
        assert!(
            problems
                .iter()
                .any(|p| p.contains(name) && p.contains("does not match its allowedPattern")),
            "{name} is refused by its pattern: {problems:?}"
        );
    }
    assert!(s.docker_calls(&command_id).is_empty());
    assert_eq!(s.stack.host.docker_log(), before, "docker was not called");
    assert!(s.serving().await.starts_with("web v1:"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_pushes_one_second_apart_the_newest_ends_up_running_and_nothing_runs_twice() {
    let s = Scene::start().await;
    let v1 = s.image("v1", Behaviour::Good).await;
    let v2 = s.image("v2", Behaviour::Good).await;
    let pushed_v1 = s.push(&v1, "v1").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pushed_v2 = s.push(&v2, "v2").await;

    let second = s.started(&pushed_v2.digest, "push").await;
    s.event("Deployment Verified", &second).await;
    assert!(s.serving().await.starts_with("web v2:"));

    let ran = s.stack.host.ran();
    let mut deployments: Vec<_> = ran.iter().filter_map(|r| r.deployment_id.clone()).collect();
    deployments.sort();
    deployments.dedup();
    assert_eq!(
        deployments.len(),
        ran.len(),
        "a deployment ran twice: {ran:?}"
    );
    assert!(ran.len() <= 2, "{ran:?}");
    let started: Vec<_> = s
        .events("Rollout Started")
        .into_iter()
        .filter_map(|e| e.field("digest").map(str::to_owned))
        .collect();
    assert_eq!(
        started.iter().filter(|d| **d == pushed_v2.digest).count(),
        1,
        "{started:?}"
    );
    assert!(
        started.iter().filter(|d| **d == pushed_v1.digest).count() <= 1,
        "{started:?}"
    );
    let running = s.running().await;
    assert_eq!(running.len(), 1, "{running:?}");
    assert!(running[0].1.ends_with(&pushed_v2.digest), "{running:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_status_event_is_completed_by_the_trackers_reconciliation() {
    let s = Scene::start_with(|o| o.reconcile_every = Some(Duration::from_secs(5))).await;
    let v1 = s.image("v1", Behaviour::Good).await;
    s.stack.host.drop_status_events_of_next_commands(1);
    let pushed = s.push(&v1, "v1").await;
    let id = s.started(&pushed.digest, "push").await;
    let ran = s.ran(1).await;
    assert_eq!(ran[0].status, "Success");
    assert!(
        s.stack.timeline.entries().iter().any(
            |e| e.kind == "command started" && e.line.contains("status events will be dropped")
        ),
        "the host published the status events of the command"
    );
    s.event("Rollout Succeeded", &id).await;
    s.event("Deployment Verified", &id).await;
    assert!(s.serving().await.starts_with("web v1:"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_semver_policy_and_only_newer_a_lower_hotfix_pushed_after_1_4_0_deploys_nothing() {
    let s = Scene::start_configured(
        |_| {},
        |config| {
            let edited = config.replace(
                "        deploy_on_push: { tags: [\"v*\"] }\n",
                "        deploy_on_push: { semver: \">=1.3, <2\" }\n        only_newer: true\n",
            );
            assert_ne!(
                edited, config,
                "the sample configuration has a deploy_on_push to replace"
            );
            edited
        },
    )
    .await;
    let newer = s.image("1.4.0", Behaviour::Good).await;
    let hotfix = s.image("1.3.9", Behaviour::Good).await;
    let pushed_newer = s.push(&newer, "v1.4.0").await;
    let first = s.started(&pushed_newer.digest, "push").await;
    s.event("Deployment Verified", &first).await;
    assert!(s.serving().await.starts_with("web 1.4.0:"));

    let pushed_hotfix = s.push(&hotfix, "1.3.9").await;
    let skipped = s
        .stack
        .timeline
        .wait_for("the hotfix skipped", STEP, |entries| {
            entries
                .iter()
                .find(|e| {
                    e.is_event("Deployment Skipped")
                        && e.field("digest") == Some(pushed_hotfix.digest.as_str())
                })
                .cloned()
        })
        .await
        .unwrap_or_else(|e| s.fail(e));
    let reason = skipped.field("reason").unwrap_or_default().to_owned();
    assert!(
        reason.contains("1.3.9 is lower than v1.4.0") && reason.contains("only_newer"),
        "{skipped:?}"
    );
    assert!(s.serving().await.starts_with("web 1.4.0:"));
    assert_eq!(s.stack.host.ran().len(), 1, "only 1.4.0 ran on the host");
    assert!(s.events("Rollout Started").len() == 1);
    let running = s.running().await;
    assert_eq!(running.len(), 1, "{running:?}");
    assert!(running[0].1.ends_with(&pushed_newer.digest), "{running:?}");
    let status = s.stack.status("web", "staging").await.unwrap();
    assert_eq!(status["current"]["tag"], "v1.4.0", "{status}");
    assert!(s.stack.router.dead_letters().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_built_for_arm64_is_refused_for_the_amd64_host_and_the_running_version_stays() {
    let s = Scene::start().await;
    let v1 = s.image("v1", Behaviour::Good).await;
    let arm = s
        .stack
        .build_for(
            &s.app.repository,
            &s.app.version("v2", Behaviour::Good),
            Some("linux/arm64"),
        )
        .await
        .expect("the image builds from busybox-static");
    let pushed_v1 = s.push(&v1, "v1").await;
    let first = s.started(&pushed_v1.digest, "push").await;
    s.event("Deployment Verified", &first).await;

    let pushed_arm = s.push(&arm, "v2").await;
    let blocked = s
        .stack
        .timeline
        .wait_for("the arm64 image blocked", STEP, |entries| {
            entries
                .iter()
                .find(|e| {
                    e.is_event("Deployment Blocked")
                        && e.field("digest") == Some(pushed_arm.digest.as_str())
                })
                .cloned()
        })
        .await
        .unwrap_or_else(|e| s.fail(e));
    let reason = blocked.field("reason").unwrap_or_default().to_owned();
    assert!(
        reason.starts_with("the image is built for linux/arm64, but web/staging runs linux/amd64"),
        "{blocked:?}"
    );
    assert!(s.serving().await.starts_with("web v1:"));
    assert_eq!(s.stack.host.ran().len(), 1, "only v1 ran on the host");
    let running = s.running().await;
    assert_eq!(running.len(), 1, "{running:?}");
    assert!(running[0].1.ends_with(&pushed_v1.digest), "{running:?}");
    assert!(s.stack.router.dead_letters().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alarm_going_off_after_the_smoke_tests_passed_ends_with_the_previous_version_serving() {
    const ALARM: &str = "web-staging-5xx";
    let s = Scene::start_configured(
        |o| o.reconcile_every = Some(Duration::from_secs(5)),
        |config| {
            let edited = config.replacen(
                "        smoke:\n",
                &format!(
                    "        watch: {{ alarms: [{ALARM}], for_seconds: 30 }}\n        smoke:\n"
                ),
                1,
            );
            assert_ne!(
                edited, config,
                "the sample configuration has a smoke section"
            );
            edited
        },
    )
    .await;
    s.stack
        .create_alarm(ALARM)
        .await
        .unwrap_or_else(|e| s.fail(e));
    let v1 = s.image("v1", Behaviour::Good).await;
    let v2 = s.image("v2", Behaviour::Good).await;

    // v1 passes its smoke tests and the quiet watch that follows them.
    let pushed_v1 = s.push(&v1, "v1").await;
    let first = s.started(&pushed_v1.digest, "push").await;
    s.event("Deployment Verified", &first).await;

    // v2 passes its smoke tests too; in its watch, the alarm goes off.
    let pushed_v2 = s.push(&v2, "v2").await;
    let second = s.started(&pushed_v2.digest, "push").await;
    s.event("Rollout Succeeded", &second).await;
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let status = s.stack.status("web", "staging").await.unwrap();
        let watching = status["deployments"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|d| d["deployment_id"] == second.as_str() && d["watch_until"].is_string());
        if watching {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            s.fail(format!("{second} never started its alarm watch: {status}"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        s.serving().await.starts_with("web v2:"),
        "v2 serves in its watch"
    );
    s.stack
        .set_alarm(
            ALARM,
            "ALARM",
            "Threshold Crossed: 12 5xx responses in 1 minute",
        )
        .await
        .unwrap_or_else(|e| s.fail(e));
    let failed = s.event("Verification Failed", &second).await;
    assert!(
        failed
            .field("reason")
            .unwrap_or_default()
            .starts_with("alarm web-staging-5xx is in ALARM after the smoke tests passed"),
        "{failed:?}"
    );
    let rollback = s.rollback_of(&second).await;
    assert_eq!(rollback.field("digest"), Some(pushed_v1.digest.as_str()));
    s.event("Rollback Succeeded", &second).await;

    assert!(s.serving().await.starts_with("web v1:"));
    let running = s.running().await;
    assert_eq!(running.len(), 1, "{running:?}");
    assert!(running[0].1.ends_with(&pushed_v1.digest), "{running:?}");
    let status = s.stack.status("web", "staging").await.unwrap();
    assert_eq!(
        status["current"]["digest"],
        Json::from(pushed_v1.digest.clone())
    );
    assert_eq!(
        status["last_verified"]["digest"],
        Json::from(pushed_v1.digest)
    );
    assert!(
        status["quarantined"]
            .as_array()
            .is_some_and(|q| q.iter().any(|d| d["digest"] == pushed_v2.digest.as_str())),
        "{status}"
    );
    assert!(s.stack.router.dead_letters().is_empty());
}
