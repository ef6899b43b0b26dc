//! The demo: on the local stack, v1 of the sample app is pushed, rolled out and verified;
//! v2, whose health endpoint answers but whose page reports a broken dependency, is pushed,
//! rolled out, fails its smoke test and is rolled back; v1 answers again. The timeline is
//! printed as it happens, and the verdict says whether the story happened exactly so.

use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use serde_json::Value as Json;

use crate::app::{Behaviour, SMOKE_TEXT, SampleApp};
use crate::stack::{Pushed, Stack, StackOptions};
use crate::timeline::{Entry, Timeline, short_digest};

/// How long one step of the story may take before the demo gives up on it.
const STEP: Duration = Duration::from_secs(90);

/// What the demo found: every check that failed.
pub struct Verdict {
    pub problems: Vec<String>,
    pub elapsed: Duration,
}

/// Runs the demo on a stack it starts (and stops). `Err` means the demo could not run at
/// all; a story that went differently is a verdict with problems.
pub async fn run() -> anyhow::Result<Verdict> {
    let started = Instant::now();
    let app = SampleApp::new()?;
    println!(
        "pushdeploy demo: a rollout, a failed smoke test and the rollback, on real containers\n"
    );
    println!("starting the local stack (moto, registry, container host, functions)…");
    let mut options = StackOptions::from_env().for_app(&app);
    options.print_timeline = true;
    let stack = Stack::start(options).await?;
    println!(
        "started in {:.1}s; logs in {}\n",
        started.elapsed().as_secs_f64(),
        stack.run.dir.join("logs").display()
    );
    let result = story(&stack, &app).await;
    let problems = match result {
        Ok(problems) => problems,
        Err(e) => vec![format!("{e:#}")],
    };
    if !problems.is_empty() {
        stack.keep_logs();
        println!("\nlogs kept in {}", stack.run.dir.join("logs").display());
    }
    Ok(Verdict {
        problems,
        elapsed: started.elapsed(),
    })
}

async fn story(stack: &Stack, app: &SampleApp) -> anyhow::Result<Vec<String>> {
    let mut problems = Vec::new();
    stack
        .put_config(&app.config(&stack.registry.host()))
        .await?;
    let v1 = stack
        .build(&app.repository, &app.version("v1", Behaviour::Good))
        .await?;
    let v2 = stack
        .build(
            &app.repository,
            &app.version("v2", Behaviour::FailsSmokeTest),
        )
        .await?;
    let timeline = &stack.timeline;

    println!("\n— v1: push, roll out, verify");
    let pushed_v1 = stack.push(&v1, &app.repository, "v1").await?;
    let first = started_for(timeline, &pushed_v1, "push").await?;
    timeline
        .wait_for_event("Deployment Verified", &first, STEP)
        .await?;
    check_serving(app, "v1", &mut problems).await;

    println!("\n— v2: push, roll out, smoke test fails, roll back");
    let pushed_v2 = stack.push(&v2, &app.repository, "v2").await?;
    let second = started_for(timeline, &pushed_v2, "push").await?;
    timeline
        .wait_for_event("Rollout Succeeded", &second, STEP)
        .await?;
    let failed = timeline
        .wait_for_event("Verification Failed", &second, STEP)
        .await?;
    if !failed
        .field("reason")
        .unwrap_or_default()
        .contains(SMOKE_TEXT)
    {
        problems.push(format!(
            "v2 failed verification for another reason than its page: {:?}",
            failed.field("reason")
        ));
    }
    let rollback = timeline
        .wait_for("Rollback Started for v2's deployment", STEP, |entries| {
            entries
                .iter()
                .find(|e| e.is_event("Rollback Started") && e.field("rollback_of") == Some(&second))
                .cloned()
        })
        .await?;
    let rollback_id = rollback
        .deployment_id
        .clone()
        .ok_or_else(|| anyhow!("Rollback Started carries no deployment id"))?;
    if rollback.field("digest") != Some(pushed_v1.digest.as_str()) {
        problems.push(format!(
            "the rollback went to {:?}, not to v1 ({})",
            rollback.field("digest"),
            pushed_v1.digest
        ));
    }
    timeline
        .wait_for_event("Deployment Verified", &rollback_id, STEP)
        .await?;
    timeline
        .wait_for_event("Rollback Succeeded", &second, STEP)
        .await?;

    println!("\n— the host after the rollback");
    check_serving(app, "v1", &mut problems).await;
    let status = stack.status(&app.app, &app.environment).await?;
    if status.pointer("/current/digest").and_then(Json::as_str) != Some(pushed_v1.digest.as_str()) {
        problems.push(format!(
            "control reports current {} instead of v1",
            status["current"]
        ));
    }
    let phase_of = |id: &str| {
        status["deployments"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|d| d["deployment_id"] == id)
            .and_then(|d| d["phase"].as_str())
            .map(str::to_owned)
    };
    for (id, want) in [
        (&first, "Verified"),
        (&second, "RolledBack"),
        (&rollback_id, "Verified"),
    ] {
        let phase = phase_of(id);
        if phase.as_deref() != Some(want) {
            problems.push(format!("deployment {id} ended {phase:?}, expected {want}"));
        }
    }
    let containers = stack.host.containers().await?;
    let running: Vec<_> = containers.iter().filter(|c| c.state == "running").collect();
    match running.as_slice() {
        [only] if only.name == app.container && only.image.ends_with(&pushed_v1.digest) => {
            println!(
                "host runs one container, {} from {}",
                only.name,
                short_digest(&pushed_v1.digest)
            );
        }
        other => problems.push(format!(
            "the host runs {other:?}, expected only {} from v1",
            app.container
        )),
    }
    // The deployer moves the environment's ECR tag once the rollback is verified.
    let tag = &app.environment;
    let tagged = wait_for_tag(stack, &app.repository, tag, &pushed_v1.digest).await;
    match tagged.as_deref() {
        Some(d) if d == pushed_v1.digest => println!(
            "ECR tag {}:{tag} names {} (v1, the verified image)",
            app.repository,
            short_digest(d)
        ),
        other => problems.push(format!(
            "ECR tag {tag} names {other:?}, expected v1 ({})",
            pushed_v1.digest
        )),
    }
    let unexpected: Vec<String> = timeline
        .events()
        .iter()
        .filter(|e| {
            [
                "Rollout Failed",
                "Rollback Failed",
                "Deployment Failed",
                "Environment Frozen",
            ]
            .contains(&e.kind.as_str())
        })
        .map(|e: &Entry| e.line.clone())
        .collect();
    if !unexpected.is_empty() {
        problems.push(format!("unexpected events:\n  {}", unexpected.join("\n  ")));
    }
    for dead in stack.router.dead_letters() {
        problems.push(format!("dead letter for {}: {}", dead.function, dead.error));
    }
    println!();
    println!("summary:");
    println!(
        "  v1 {} rolled out and verified (deployment {first})",
        short_digest(&pushed_v1.digest)
    );
    println!(
        "  v2 {} rolled out, smoke test failed (deployment {second}): {}",
        short_digest(&pushed_v2.digest),
        failed.field("reason").unwrap_or_default()
    );
    println!(
        "  rolled back to v1 (deployment {rollback_id}); v1 answers on {}",
        app.url("/")
    );
    Ok(problems)
}

/// The digest an ECR tag names, once it names `want` (or after a few seconds, whatever it
/// names then).
async fn wait_for_tag(stack: &Stack, repository: &str, tag: &str, want: &str) -> Option<String> {
    let ecr = aws_sdk_ecr::Client::new(&stack.sdk);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let found = ecr
            .describe_images()
            .repository_name(repository)
            .image_ids(
                aws_sdk_ecr::types::ImageIdentifier::builder()
                    .image_tag(tag)
                    .build(),
            )
            .send()
            .await
            .ok()
            .and_then(|out| {
                out.image_details()
                    .first()?
                    .image_digest()
                    .map(str::to_owned)
            });
        if found.as_deref() == Some(want) || tokio::time::Instant::now() >= deadline {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The deployment a push started.
async fn started_for(timeline: &Timeline, pushed: &Pushed, kind: &str) -> anyhow::Result<String> {
    let entry = timeline
        .wait_for(&format!("a rollout of {}", pushed.tag), STEP, |entries| {
            entries
                .iter()
                .find(|e| {
                    e.is_event("Rollout Started")
                        && e.field("digest") == Some(pushed.digest.as_str())
                        && e.field("kind") == Some(kind)
                })
                .cloned()
        })
        .await?;
    entry
        .deployment_id
        .context("Rollout Started carries no deployment id")
}

async fn check_serving(app: &SampleApp, label: &str, problems: &mut Vec<String>) {
    match app.get("/").await {
        Ok((200, body)) if body.contains(&format!("{label}:")) => {
            println!("{}/ answers: {}", app.url(""), body.trim());
        }
        other => problems.push(format!(
            "{} answered {other:?}, expected {label}",
            app.url("/")
        )),
    }
}
