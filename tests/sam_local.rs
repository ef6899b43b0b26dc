//! The `sam local` tier: every function as `sam build` made it (`.aws-sam/build`), invoked
//! with `sam local invoke <Fn>Function -e events/<fn>/…` inside the stand-in Lambda image on
//! podman's Docker API (`scripts/sam-local-podman.sh`), against moto on the host, with the
//! settings in an `--env-vars` file, exactly as the README tells a user to. One function also
//! through `sam local start-lambda` and `aws lambda invoke --endpoint-url`.
//!
//! These tests need `sam build`'s output, so `cargo nextest run` skips them (ignored) and
//! `make test` runs them after `scripts/sam-build.sh`: `make sam-local`.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use pushdeploy_local::moto::{REGION, free_port, venv_tool, workspace_root};
use pushdeploy_tests::{BUS, DOCUMENT, PARAMETER, TABLE, TempDir, World, digest};
use serde_json::{Value, json};

/// How a function in the stand-in image reaches the host (podman's name for its gateway).
const HOST_FROM_CONTAINER: &str = "host.containers.internal";

/// `sam local` on podman, set up as the README says.
struct SamLocal {
    dir: TempDir,
    docker_host: String,
    image: String,
    env_vars: PathBuf,
    template: PathBuf,
}

impl SamLocal {
    /// Starts podman's Docker API (building the stand-in image if missing) and writes the
    /// `--env-vars` file pointing every function at `world`'s moto.
    fn start(world: &World) -> anyhow::Result<Self> {
        let template = build_dir().join("template.yaml");
        if !template.is_file() {
            bail!(
                "{} is missing: run `scripts/sam-build.sh` (or `make sam-build`) first; `make test` does",
                template.display()
            );
        }
        let dir = TempDir::new("pushdeploy-sam")?;
        let script = workspace_root().join("scripts/sam-local-podman.sh");
        let out = Command::new(&script)
            .arg("start")
            .arg(&dir.0)
            .stderr(Stdio::inherit())
            .output()
            .with_context(|| format!("running {}", script.display()))?;
        if !out.status.success() {
            bail!("{} start failed ({})", script.display(), out.status);
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let docker_host = stdout
            .lines()
            .find_map(|l| l.strip_prefix("export DOCKER_HOST="))
            .with_context(|| format!("no `export DOCKER_HOST=` line in {stdout:?}"))?
            .to_owned();
        let image = String::from_utf8_lossy(&Command::new(&script).arg("image").output()?.stdout)
            .trim()
            .to_owned();
        let env_vars = dir.0.join("env.json");
        std::fs::write(
            &env_vars,
            serde_json::to_string_pretty(&json!({
                "Parameters": {
                    "PUSHDEPLOY_TABLE": TABLE,
                    "PUSHDEPLOY_EVENT_BUS": BUS,
                    "PUSHDEPLOY_CONFIG_PARAMETER": PARAMETER,
                    "PUSHDEPLOY_SSM_DOCUMENT": DOCUMENT,
                    "PUSHDEPLOY_AWS_ENDPOINT_URL":
                        format!("http://{HOST_FROM_CONTAINER}:{}", world.moto.port()),
                }
            }))?,
        )?;
        Ok(Self {
            dir,
            docker_host,
            image,
            env_vars,
            template,
        })
    }

    /// A `sam` command with the flags every `sam local` call here takes.
    fn sam(&self, subcommand: &str, extra: &[&str]) -> Command {
        let mut command = Command::new(venv_tool("sam"));
        command.args(["local", subcommand]).args(extra);
        // From the repository's root SAM finds `.aws-sam/build/template.yaml` itself, as it
        // does for a user; another build directory is named.
        if std::env::var_os("PUSHDEPLOY_SAM_BUILD_DIR").is_some() {
            command.arg("--template").arg(&self.template);
        }
        command
            .arg("--env-vars")
            .arg(&self.env_vars)
            .args(["--invoke-image", &self.image, "--skip-pull-image"])
            .args(["--region", REGION])
            .env("DOCKER_HOST", &self.docker_host)
            .env("SAM_CLI_TELEMETRY", "0")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .current_dir(workspace_root())
            .stdin(Stdio::null());
        command
    }

    /// `sam local invoke <function> -e <event>`: the function's response (a result, or the
    /// `errorType`/`errorMessage` of a failed invocation), as SAM prints it.
    fn invoke(&self, function: &str, event: &str) -> anyhow::Result<Value> {
        let started = Instant::now();
        let out = self
            .sam("invoke", &[function, "--event", event])
            .output()
            .context("running sam (run `make setup` to install it into .venv)")?;
        let response = last_json_line(&out).with_context(|| {
            format!(
                "`sam local invoke {function} --event {event}` printed no response ({}):\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
        eprintln!(
            "sam local invoke {function} --event {event}: {:.1}s → {response}",
            started.elapsed().as_secs_f64()
        );
        Ok(response)
    }
}

impl Drop for SamLocal {
    fn drop(&mut self) {
        let _ = Command::new(workspace_root().join("scripts/sam-local-podman.sh"))
            .arg("stop")
            .arg(&self.dir.0)
            .status();
    }
}

/// Where `scripts/sam-build.sh` puts the build (`PUSHDEPLOY_SAM_BUILD_DIR` overrides).
fn build_dir() -> PathBuf {
    std::env::var_os("PUSHDEPLOY_SAM_BUILD_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".aws-sam/build"))
}

/// The last line of standard output that is a JSON value: what SAM prints as the response.
fn last_json_line(out: &Output) -> Option<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
}

fn sample(path: &str) -> String {
    let file = workspace_root().join("events").join(path);
    assert!(file.is_file(), "{} is missing", file.display());
    file.display().to_string()
}

/// The configuration the sample events refer to, as the deployed stack's parameter holds it.
fn sample_config() -> String {
    std::fs::read_to_string(workspace_root().join("events/config.yaml"))
        .expect("events/config.yaml")
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs `sam build` output: `make test` runs it after scripts/sam-build.sh (make sam-local)"]
async fn every_function_answers_its_sample_under_sam_local_invoke() {
    let world = World::start_on(&sample_config(), "0.0.0.0").await.unwrap();
    let sam = SamLocal::start(&world).unwrap();

    // control: the status of every configured environment.
    let status = sam
        .invoke("ControlFunction", &sample("control/status-all.json"))
        .unwrap();
    let mut listed: Vec<String> = status["environments"]
        .as_array()
        .unwrap_or_else(|| panic!("status lists no environments: {status}"))
        .iter()
        .map(|e| {
            format!(
                "{}/{}",
                e["app"].as_str().unwrap(),
                e["environment"].as_str().unwrap()
            )
        })
        .collect();
    listed.sort();
    assert_eq!(listed, ["web/production", "web/staging"], "{status}");

    // deployer: a bad payload is refused with the field it names, and writes nothing.
    let refused = sam
        .invoke(
            "DeployerFunction",
            &sample("deployer/manual-hostile-tag.json"),
        )
        .unwrap();
    assert_eq!(
        refused["errorType"], "NonRetryable.InvalidInput",
        "{refused}"
    );
    assert!(
        refused["errorMessage"].as_str().unwrap().contains("tag"),
        "{refused}"
    );
    assert!(world.table_snapshot().await.unwrap().is_empty());

    // deployer: a manual deploy of a tag starts a rollout that moto records.
    let image = digest('a');
    world.put_image(Some("v1.2.3"), &image).await.unwrap();
    let started = sam
        .invoke("DeployerFunction", &sample("deployer/manual-tag.json"))
        .unwrap();
    assert_eq!(started["outcome"], "started", "{started}");
    let id = started["deployment_id"].as_str().unwrap().to_owned();
    let production = world
        .status()
        .await
        .into_iter()
        .find(|e| e.environment.as_str() == "production")
        .unwrap();
    let in_flight = serde_json::to_value(&production).unwrap()["in_flight"].clone();
    assert_eq!(in_flight["deployment_id"], id, "{production:?}");
    let commands = world.commands().await.unwrap();
    assert_eq!(
        commands.len(),
        1,
        "one Run Command for the rollout: {commands:?}"
    );
    assert!(commands[0].1.ends_with(image.as_str()), "{commands:?}");

    // tracker: a reconcile pass by hand finds the rollout and says what it did.
    let reconciled = sam
        .invoke("TrackerFunction", &sample("tracker/manual-reconcile.json"))
        .unwrap();
    assert_eq!(reconciled["checked"], 2, "{reconciled}");
    assert_eq!(
        reconciled["actions"][0]["action"],
        format!("succeeded: deployment {id}"),
        "moto reports the command done: {reconciled}"
    );

    // verifier: the sample names a deployment this table never held, and says which.
    let verified = sam
        .invoke(
            "VerifierFunction",
            &sample("verifier/rollout-succeeded.json"),
        )
        .unwrap();
    assert_eq!(verified["errorType"], "NonRetryable.NotFound", "{verified}");
    assert!(
        verified["errorMessage"]
            .as_str()
            .unwrap()
            .contains("deployment 01JD8Z6V6WQ5N8B9C3H4K2M7PX of web/staging not found"),
        "{verified}"
    );

    // rollback: staging has no verified image to go back to, and says so.
    let rollback = sam
        .invoke("RollbackFunction", &sample("rollback/manual.json"))
        .unwrap();
    assert_eq!(
        rollback["errorType"], "NonRetryable.InvalidInput",
        "{rollback}"
    );
    assert_eq!(
        rollback["errorMessage"],
        "web/staging has no verified digest other than the current one (verified: none)"
    );

    // janitor: a dry run reports the one image and deletes nothing.
    let janitor = sam
        .invoke("JanitorFunction", &sample("janitor/dry-run.json"))
        .unwrap();
    let repository = &janitor["repositories"][0];
    assert_eq!(repository["images"], 1, "{janitor}");
    assert_eq!(repository["deleted"], json!([]), "{janitor}");
    assert_eq!(
        repository["in_use"][image.as_str()],
        "current in web/production",
        "{janitor}"
    );

    // notifier: a lifecycle event with no channel configured.
    let notified = sam
        .invoke("NotifierFunction", &sample("notifier/rollout-started.json"))
        .unwrap();
    assert_eq!(
        notified,
        json!({ "event": "Rollout Started", "sent": [] }),
        "no channel is configured"
    );
    drop(sam);
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs `sam build` output: `make test` runs it after scripts/sam-build.sh (make sam-local)"]
async fn start_lambda_serves_aws_lambda_invoke() {
    let world = World::start_on(&sample_config(), "0.0.0.0").await.unwrap();
    let sam = SamLocal::start(&world).unwrap();
    let port = free_port().unwrap();
    let log = sam.dir.0.join("start-lambda.log");
    let mut server = sam
        .sam(
            "start-lambda",
            &["--port", &port.to_string(), "--host", "127.0.0.1"],
        )
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(sam.dir.0.join("start-lambda.err")).unwrap())
        .spawn()
        .unwrap();
    let _stop = KillOnDrop(&mut server);
    wait_for_port(port, Duration::from_secs(60)).unwrap();

    let out_file = sam.dir.0.join("out.json");
    let out = Command::new(venv_tool("aws"))
        .args(["lambda", "invoke", "--function-name", "ControlFunction"])
        .args(["--endpoint-url", &format!("http://127.0.0.1:{port}")])
        // AWS CLI v1 (what `make setup` installs) sends a file:// payload as it is; v2 needs
        // `--cli-binary-format raw-in-base64-out` for the same.
        .args(["--region", REGION])
        .arg("--payload")
        .arg(format!("file://{}", sample("control/status-all.json")))
        .arg(&out_file)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "aws lambda invoke failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(sam.dir.0.join("start-lambda.err")).unwrap_or_default()
    );
    let meta: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(meta["StatusCode"], 200, "{meta}");
    assert!(meta.get("FunctionError").is_none(), "{meta}");
    let status: Value = serde_json::from_str(&std::fs::read_to_string(&out_file).unwrap()).unwrap();
    assert_eq!(
        status["environments"].as_array().map(Vec::len),
        Some(2),
        "{status}"
    );
}

struct KillOnDrop<'a>(&'a mut std::process::Child);

impl Drop for KillOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for_port(port: u16, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("nothing listens on 127.0.0.1:{port} after {within:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}
