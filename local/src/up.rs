//! `pushdeploy-local up` and `push`: a stack kept running to try pushdeploy by hand, with the
//! sample configuration or the user's own (`make up CONFIG=my.yaml`), and pushes made from
//! another terminal as a CI job makes them. Everything `up` prints for a user to type works
//! as printed from the repository's root (the end-to-end tests run it).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, anyhow, bail};
use serde_json::json;
use tokio::sync::Notify;

use crate::app::{Behaviour, SampleApp};
use crate::images::Builder;
use crate::merge::{Merged, merge, read_config};
use crate::moto::{Moto, REGION};
use crate::push::{UpState, ensure_repository, publish_push_event, record_in_ecr};
use crate::registry::{LocalRegistry, ecr_password};
use crate::run::Run;
use crate::stack::{Stack, StackOptions};

/// The command that shows one environment's status, as `up` and `push` print it.
fn status_command(functions_port: u16, app: &str, env: &str) -> String {
    format!(
        "cargo lambda invoke --invoke-address 127.0.0.1 --invoke-port {functions_port} control --data-ascii '{{\"action\":\"status\",\"app\":\"{app}\",\"environment\":\"{env}\"}}'"
    )
}

/// `up [--config FILE]`.
pub async fn command(args: &[String], interrupted: Arc<Notify>) -> anyhow::Result<ExitCode> {
    let config_file = match args {
        [] => None,
        [flag, file] if flag == "--config" => Some(PathBuf::from(file)),
        _ => bail!("usage: pushdeploy-local up [--config FILE]"),
    };
    let app = SampleApp::new()?;
    // The sample as a user would write it for AWS; the merge makes it local, like any file.
    let user = match &config_file {
        Some(path) => read_config(path)?,
        // How the sample names ECR's registry in AWS, before the merge makes it local.
        None => app.config(&format!(
            "{}.dkr.ecr.{REGION}.amazonaws.com",
            crate::moto::ACCOUNT
        )),
    };
    // The host's tags come from the configuration, before the registry's address is known.
    let mut options = StackOptions::from_env();
    options.host_tags = merge(&user, "localhost")?.host_tags;
    options.print_timeline = true;
    println!("starting the local stack…");
    let stack = tokio::select! {
        stack = Stack::start(options) => stack?,
        _ = interrupted.notified() => return Ok(ExitCode::from(130)),
    };
    // The logs outlive the stack, whichever way it stops.
    stack.keep_logs();
    let merged = merge(&user, &stack.registry.host())?;
    stack.put_config(&merged.yaml).await?;
    // The functions read the configuration as they will in AWS: a bad one is refused now,
    // with the path of what to fix, rather than at the first push.
    if let Err(e) = stack
        .invoke("control", &json!({ "action": "status" }))
        .await
    {
        bail!(
            "pushdeploy refuses the configuration{}: {e:#}",
            config_file
                .as_deref()
                .map(|p| format!(" in {}", p.display()))
                .unwrap_or_default()
        );
    }
    let (app_name, environment, repository, _) = merged.first.clone();
    let ecr = aws_sdk_ecr::Client::new(&stack.sdk);
    for repository in &merged.repositories {
        ensure_repository(&ecr, repository).await?;
    }
    let sample = SampleApp {
        app: app_name.clone(),
        ..app
    };
    for (label, behaviour) in [("v1", Behaviour::Good), ("v2", Behaviour::FailsSmokeTest)] {
        let image = stack
            .build(&repository, &sample.version(label, behaviour))
            .await?;
        stack.upload(&image, &repository, label).await?;
    }
    UpState {
        pid: std::process::id(),
        run_dir: stack.run.dir.clone(),
        moto_port: stack.moto.port(),
        registry_port: stack.registry.port,
        functions_port: stack.lambdas.port,
        app: app_name,
        environment,
        repository,
    }
    .write()?;
    println!("\n{}", banner(&stack, &merged, config_file.as_deref()));
    println!(
        "v1 and v2 of the sample app are in the registry and in ECR, not deployed.\n\
         Press Ctrl-C to stop everything.\n"
    );
    interrupted.notified().await;
    UpState::remove_own();
    let logs = stack.run.dir.join("logs");
    drop(stack);
    // Whoever reads the output may be gone (a closed terminal); stopping still succeeds.
    use std::io::Write;
    let _ = writeln!(
        std::io::stdout(),
        "stopped; the logs are kept in {}",
        logs.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// What `up` prints: where everything is, the configuration installed and what the local
/// stack changed in it, and commands to try, each of which works as printed.
pub fn banner(stack: &Stack, merged: &Merged, config_file: Option<&Path>) -> String {
    let moto = stack.moto.endpoint();
    let port = stack.lambdas.port;
    let (app, env, repository, app_port) = &merged.first;
    let tags: Vec<String> = merged
        .host_tags
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let aws = format!(
        "AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test aws --endpoint-url {moto} --region {REGION}"
    );
    let invoke = format!("cargo lambda invoke --invoke-address 127.0.0.1 --invoke-port {port}");
    let push = push_program();
    let status = status_command(port, app, env);
    let mut out = format!(
        "local stack {run}\n\
         \x20 AWS (moto):   {moto}   (region {REGION}, account {account})\n\
         \x20 functions:    http://127.0.0.1:{port}  (cargo lambda watch --only-lambda-apis)\n\
         \x20 registry:     {registry}  (user AWS, password from `aws ecr get-login-password`)\n\
         \x20 host:         instance {instance}, tags {tags}\n\
         \x20 logs:         {logs}  (kept after the stack stops)\n\
         \x20 table {table}, bus {bus}, document {document}, parameter {parameter}\n\
         \n\
         configuration ({source}), as installed in {parameter}:\n",
        run = stack.run.id,
        account = crate::moto::ACCOUNT,
        registry = stack.registry.host(),
        instance = stack.host.instance_id,
        tags = tags.join(", "),
        logs = stack.run.dir.join("logs").display(),
        table = stack.names.table,
        bus = stack.names.bus,
        document = stack.names.document,
        parameter = stack.names.parameter,
        source = match config_file {
            Some(p) => format!("{}, merged", p.display()),
            None => "the sample app's".to_owned(),
        },
    );
    for line in merged.yaml.lines() {
        out.push_str(&format!("  | {line}\n"));
    }
    out.push_str(
        "values only this stack knows (to try your own configuration here, use them, or `make up CONFIG=my.yaml`):\n",
    );
    out.push_str(&format!("  registry: {}\n", stack.registry.host()));
    let tag: Vec<String> = merged
        .host_tags
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    out.push_str(&format!(
        "  instances: {{ tag: {{ {} }} }}\n",
        tag.join(", ")
    ));
    if let Some(p) = app_port {
        out.push_str(&format!("  {app}/{env}'s host port: {p}\n"));
    }
    out.push_str("what the local stack set (in your own configuration, use your values):\n");
    for change in &merged.changes {
        out.push_str(&format!("  - {change}\n"));
    }
    out.push_str(&format!(
        "\ntry, from the repository's root:\n\
         \x20 export PATH=\"$PWD/.venv/bin:$PATH\"   # cargo-lambda and aws, as `make setup` installed them\n\
         \x20 {status}\n\
         \x20 {invoke} deployer --data-ascii '{{\"app\":\"{app}\",\"environment\":\"{env}\",\"tag\":\"v1\",\"requested_by\":\"you\"}}'\n\
         \x20 {push} push v3                      # build v3, upload it, record it in ECR, publish the push event\n\
         \x20 {push} push v4 --fails-smoke-test   # a version whose smoke test fails: rolled back\n\
         \x20 {invoke} rollback --data-ascii '{{\"app\":\"{app}\",\"environment\":\"{env}\",\"reason\":\"trying a rollback\",\"requested_by\":\"you\"}}'\n\
         \x20 {invoke} tracker --data-file events/tracker/manual-reconcile.json\n"
    ));
    if let Some(p) = app_port {
        out.push_str(&format!("  curl http://127.0.0.1:{p}/\n"));
    }
    out.push_str(&format!(
        "  {aws} ssm list-commands\n\
         \x20 {aws} ecr describe-images --repository-name {repository}\n\
         \x20 {aws} dynamodb scan --table-name {table}\n",
        table = stack.names.table,
    ));
    out
}

/// How a user runs this program again: relative to the working directory when inside it.
fn push_program() -> String {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("pushdeploy-local"));
    let relative = std::env::current_dir()
        .ok()
        .and_then(|cwd| exe.strip_prefix(cwd).ok().map(Path::to_path_buf));
    relative.unwrap_or(exe).display().to_string()
}

/// `push TAG [--fails-smoke-test | --unhealthy | --from IMAGE] [--repository REPO]`.
pub async fn push_command(args: &[String]) -> anyhow::Result<ExitCode> {
    const USAGE: &str = "usage: pushdeploy-local push TAG [--fails-smoke-test | --unhealthy | --from IMAGE] [--repository REPO]";
    let mut tag = None;
    let mut behaviour = Behaviour::Good;
    let mut from = None;
    let mut repository = None;
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--fails-smoke-test" => behaviour = Behaviour::FailsSmokeTest,
            "--unhealthy" => behaviour = Behaviour::Unhealthy,
            "--from" => from = Some(rest.next().context(USAGE)?.clone()),
            "--repository" => repository = Some(rest.next().context(USAGE)?.clone()),
            t if !t.starts_with('-') && tag.is_none() => tag = Some(t.to_owned()),
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    let tag = tag.context(USAGE)?;
    let state = UpState::read()?;
    let repository = repository.unwrap_or_else(|| state.repository.clone());
    let moto = Moto::attach(state.moto_port);
    let sdk = moto.sdk_config().await;
    let registry = LocalRegistry::attach(state.registry_port)?;
    let ecr = aws_sdk_ecr::Client::new(&sdk);
    ensure_repository(&ecr, &repository).await?;
    let digest = match from {
        Some(image) => push_users_image(&image, &registry.host(), &repository, &tag).await?,
        None => {
            let run = Run::create()?;
            let builder = Builder::new(&run, &registry.host())?;
            let app = SampleApp {
                app: state.app.clone(),
                ..SampleApp::new()?
            };
            let image = builder
                .build(&repository, &app.version(&tag, behaviour))
                .await?;
            builder.push(&image, &repository, &tag, &ecr).await?
        }
    };
    record_in_ecr(&sdk, &registry, &repository, &tag, &digest).await?;
    let event = publish_push_event(&sdk, &repository, &tag, &digest).await?;
    println!(
        "pushed {repository}:{tag} as {host}/{repository}@{digest}; recorded in ECR; ECR push event {event} published",
        host = registry.host(),
        event = event.as_deref().unwrap_or("-"),
    );
    println!(
        "follow it: {}",
        status_command(state.functions_port, &state.app, &state.environment)
    );
    Ok(ExitCode::SUCCESS)
}

/// Pushes an image from the user's own podman storage to the local registry; returns the
/// digest the registry gave it.
async fn push_users_image(
    image: &str,
    registry_host: &str,
    repository: &str,
    tag: &str,
) -> anyhow::Result<String> {
    let dir = std::env::temp_dir().join(format!("pushdeploy-push-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let digest_file = dir.join("digest");
    let destination = format!("docker://{registry_host}/{repository}:{tag}");
    let out = tokio::process::Command::new("podman")
        .args(crate::podman::GLOBAL_FLAGS)
        .args(["push", "--quiet", "--tls-verify=false", "--creds"])
        .arg(format!("AWS:{}", ecr_password()))
        .arg("--digestfile")
        .arg(&digest_file)
        .arg(image)
        .arg(&destination)
        .output()
        .await
        .context("running podman (Debian package podman; run `make setup`)")?;
    let digest = std::fs::read_to_string(&digest_file).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    if !out.status.success() {
        return Err(anyhow!(
            "podman push {image} {destination} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let digest = digest.trim().to_owned();
    if !digest.starts_with("sha256:") {
        bail!("podman push reported no digest for {image}");
    }
    Ok(digest)
}
