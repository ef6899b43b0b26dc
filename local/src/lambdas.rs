//! The functions as their real binaries, under `cargo lambda watch --only-lambda-apis`:
//! cargo-lambda serves the Lambda runtime API and the invoke endpoint; the harness starts
//! the prebuilt binaries itself (never a cargo build), each polling its own runtime API
//! path (`/.rt/<name>`) as a Lambda execution environment does, and restarts one that exits.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value as Json;
use tokio::task::JoinHandle;

use crate::moto::{free_port, venv_tool, workspace_root};
use crate::run::Run;
use crate::timeline::{Source, Timeline};

/// The build that produces every function binary; the stack never runs it itself.
pub const BUILD_COMMAND: &str = "cargo build --workspace --bins";

/// A function as the stack runs it.
#[derive(Debug, Clone)]
pub struct LocalFunction {
    /// The template's logical id (`DeployerFunction`).
    pub logical_id: String,
    /// The binary and function name (`deployer`).
    pub name: String,
    pub binary: PathBuf,
    pub timeout: Duration,
    /// How often a failed asynchronous invocation is retried.
    pub retries: u32,
    pub env: BTreeMap<String, String>,
}

/// Why an invocation did not return a result.
#[derive(Debug, Clone)]
pub enum InvokeError {
    /// The function ran and returned an error.
    Function { error_type: String, message: String },
    /// The invocation did not complete (unreachable runtime API, timeout).
    Failed(String),
}

impl std::fmt::Display for InvokeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InvokeError::Function {
                error_type,
                message,
            } => write!(f, "{error_type}: {message}"),
            InvokeError::Failed(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for InvokeError {}

pub struct Lambdas {
    pub port: u16,
    pub functions: Vec<LocalFunction>,
    http: reqwest::Client,
    monitor: Option<JoinHandle<()>>,
}

/// Where the function binaries are: `PUSHDEPLOY_BIN_DIR`, else `<target dir>/debug`.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PUSHDEPLOY_BIN_DIR") {
        return PathBuf::from(dir);
    }
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
        .join("debug")
}

/// Fails, naming the build to run, when a binary is missing; warns when one is older than
/// the sources it is built from.
pub fn check_binaries(functions: &[LocalFunction], timeline: &Timeline) -> anyhow::Result<()> {
    let missing: Vec<String> = functions
        .iter()
        .filter(|f| !f.binary.is_file())
        .map(|f| f.binary.display().to_string())
        .collect();
    if !missing.is_empty() {
        bail!(
            "the function binaries are not built: {} is missing. Build them first with `{BUILD_COMMAND}` \
             (the local stack never builds; set PUSHDEPLOY_BIN_DIR to use binaries elsewhere)",
            missing.join(", ")
        );
    }
    let newest_source = newest(&workspace_root().join("shared/src"));
    for f in functions {
        let built = std::fs::metadata(&f.binary).and_then(|m| m.modified()).ok();
        let source = newest_source.max(newest(
            &workspace_root().join("functions").join(&f.name).join("src"),
        ));
        if let (Some(built), Some(source)) = (built, source)
            && source > built
        {
            timeline.note(
                Source::Harness,
                "stale binary",
                None,
                Json::Null,
                &format!(
                    "{} is older than its sources; run `{BUILD_COMMAND}` to test your changes",
                    f.binary.display()
                ),
            );
        }
    }
    Ok(())
}

fn newest(dir: &Path) -> Option<std::time::SystemTime> {
    let mut best = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let t = if path.is_dir() {
            newest(&path)
        } else {
            entry.metadata().and_then(|m| m.modified()).ok()
        };
        best = best.max(t);
    }
    best
}

impl Lambdas {
    /// Starts cargo-lambda's runtime API and `instances` copies of every function binary.
    pub async fn start(
        run: &Arc<Run>,
        functions: Vec<LocalFunction>,
        instances: usize,
        timeline: Timeline,
    ) -> anyhow::Result<Self> {
        let port = free_port()?;
        let mut watch = Command::new(venv_tool("cargo-lambda"));
        watch
            .args(["lambda", "watch", "--only-lambda-apis", "--invoke-address"])
            .arg("127.0.0.1")
            .arg("--invoke-port")
            .arg(port.to_string())
            .arg("--manifest-path")
            .arg(workspace_root().join("Cargo.toml"))
            .current_dir(workspace_root())
            .env("NO_COLOR", "1");
        run.spawn("cargo-lambda", watch).context(
            "starting `cargo lambda watch` (run `make setup` to install cargo-lambda into .venv)",
        )?;
        crate::run::wait_for_port(port, Duration::from_secs(60), "cargo lambda watch")
            .await
            .with_context(|| format!("see {}", run.log("cargo-lambda").display()))?;
        let runtime_api = format!("http://127.0.0.1:{port}/.rt");
        let mut processes = Vec::new();
        for f in &functions {
            for i in 0..instances.max(1) {
                let name = format!("{}-{i}", f.name);
                spawn_function(run, &name, f, &runtime_api)?;
                processes.push((name, f.clone()));
            }
        }
        let monitor = tokio::spawn(watch_instances(
            run.clone(),
            processes,
            runtime_api,
            timeline,
        ));
        Ok(Self {
            port,
            functions,
            http: reqwest::Client::builder().build()?,
            monitor: Some(monitor),
        })
    }

    /// The invoke endpoint (as `cargo lambda invoke --invoke-port` and the Lambda API use it).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn function(&self, name: &str) -> Option<&LocalFunction> {
        self.functions
            .iter()
            .find(|f| f.name == name || f.logical_id == name)
    }

    /// Invokes a function synchronously, as `cargo lambda invoke` does, and tells a function
    /// error from a result.
    pub async fn invoke(&self, name: &str, payload: &Json) -> Result<Json, InvokeError> {
        let timeout = self
            .function(name)
            .map(|f| f.timeout)
            .unwrap_or(Duration::from_secs(60))
            + Duration::from_secs(5);
        let url = format!(
            "{}/2015-03-31/functions/{name}/invocations",
            self.endpoint()
        );
        let response = self
            .http
            .post(&url)
            .header("content-type", "application/json")
            .body(payload.to_string())
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| InvokeError::Failed(format!("invoking {name}: {e}")))?;
        let status = response.status();
        let body = response
            .text()
            .await
            .map_err(|e| InvokeError::Failed(format!("reading {name}'s response: {e}")))?;
        let json: Json = serde_json::from_str(&body).unwrap_or(Json::String(body.clone()));
        if status.is_success() {
            return Ok(json);
        }
        match (
            json.get("errorType").and_then(Json::as_str),
            json.get("errorMessage").and_then(Json::as_str),
        ) {
            (Some(t), Some(m)) => Err(InvokeError::Function {
                error_type: t.to_owned(),
                message: m.to_owned(),
            }),
            _ => Err(InvokeError::Failed(format!(
                "{name} answered {status}: {body}"
            ))),
        }
    }
}

impl Drop for Lambdas {
    fn drop(&mut self) {
        if let Some(m) = self.monitor.take() {
            m.abort();
        }
    }
}

/// One execution environment: the binary with the variables Lambda sets, its runtime API
/// being cargo-lambda's path for this function.
fn spawn_function(
    run: &Run,
    process: &str,
    f: &LocalFunction,
    runtime_api: &str,
) -> anyhow::Result<()> {
    let mut command = Command::new(&f.binary);
    command
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("LANG", "C.UTF-8")
        .envs(&f.env)
        .env(
            "AWS_LAMBDA_RUNTIME_API",
            format!("{runtime_api}/{}", f.name),
        )
        .env("AWS_LAMBDA_FUNCTION_NAME", &f.name)
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("_HANDLER", "bootstrap")
        .current_dir(&run.dir);
    if !f.env.contains_key("AWS_LAMBDA_FUNCTION_MEMORY_SIZE") {
        command.env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128");
    }
    run.spawn(process, command)
        .with_context(|| format!("starting {}", f.binary.display()))?;
    Ok(())
}

/// Lambda replaces an execution environment that dies; so does the stack, noting it.
async fn watch_instances(
    run: Arc<Run>,
    processes: Vec<(String, LocalFunction)>,
    runtime_api: String,
    timeline: Timeline,
) {
    /// An environment that keeps dying at start-up is given up on, not restarted forever.
    const MAX_RESTARTS: u32 = 3;
    let mut restarts: BTreeMap<&str, u32> = BTreeMap::new();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        for (name, f) in &processes {
            if let Some(status) = run.exited(name) {
                let count = restarts.entry(name).or_default();
                if *count >= MAX_RESTARTS {
                    continue;
                }
                *count += 1;
                timeline.note(
                    Source::Router,
                    "function exited",
                    None,
                    Json::Null,
                    &format!(
                        "{name} exited ({status}); starting a new one, {} of {MAX_RESTARTS} (see {})",
                        count,
                        run.log(name).display()
                    ),
                );
                if let Err(e) = spawn_function(&run, name, f, &runtime_api) {
                    timeline.note(
                        Source::Router,
                        "function exited",
                        None,
                        Json::Null,
                        &format!("{name} could not be restarted: {e:#}"),
                    );
                }
            }
        }
    }
}
