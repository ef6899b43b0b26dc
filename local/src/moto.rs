//! The local AWS control plane: a moto server on a free loopback port, stopped when dropped.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::Credentials;

/// The region every local run uses.
pub const REGION: &str = "us-east-1";
/// The account id moto reports.
pub const ACCOUNT: &str = "123456789012";

pub struct Moto {
    /// The server process, when this value owns it (a local stack's run owns its own).
    child: Option<Child>,
    port: u16,
}

/// The repository root (where `Cargo.toml` of the workspace is).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("local/ sits in the workspace")
        .to_path_buf()
}

/// A program from the project's Python virtualenv (`make` creates it), else from `PATH`.
pub fn venv_tool(name: &str) -> PathBuf {
    let venv = std::env::var_os("PUSHDEPLOY_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".venv"));
    let candidate = venv.join("bin").join(name);
    if candidate.exists() {
        candidate
    } else {
        PathBuf::from(name)
    }
}

/// A free TCP port on loopback.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Moto {
    /// Starts a fresh server on loopback and waits until it answers. Its output goes to
    /// `log`.
    pub fn start(log: &Path) -> anyhow::Result<Self> {
        Self::start_on(log, "127.0.0.1")
    }

    /// Like `start`, listening on `host`: `0.0.0.0` lets containers reach the server through
    /// their gateway (`host.containers.internal`), as `sam local invoke` needs. ECR's layer
    /// downloads, which moto lacks, are added (see `local/moto/ecr_layers.py`).
    pub fn start_on(log: &Path, host: &str) -> anyhow::Result<Self> {
        let port = free_port()?;
        let mut command = Command::new(venv_tool("python3"));
        command
            .arg(workspace_root().join("local/moto/moto_layers.py"))
            .args(["-H", host, "-p", &port.to_string()]);
        Self::spawn(command, port, log)
    }

    /// A server that applies every request atomically, as DynamoDB applies a conditional
    /// write or a transaction (moto's own server does not: see `local/moto/atomic.py`), and
    /// appends one line per request to `requests`: `<unix seconds> <operation> <status>`.
    pub fn start_atomic(log: &Path, requests: &Path) -> anyhow::Result<Self> {
        let port = free_port()?;
        let mut command = Command::new(venv_tool("python3"));
        command
            .arg(workspace_root().join("local/moto/moto_atomic.py"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("PUSHDEPLOY_MOTO_REQUEST_LOG", requests);
        Self::spawn(command, port, log)
    }

    fn spawn(mut command: Command, port: u16, log: &Path) -> anyhow::Result<Self> {
        let program = command.get_program().to_owned();
        let out =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        // Recording stays off unless started through the API (see `Moto::record`); when on,
        // it goes beside the log instead of into the working directory.
        let recording = log.with_extension("recording.jsonl");
        let child = command
            .env("MOTO_RECORDER_FILEPATH", &recording)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| {
                format!(
                    "starting {} (run `make setup` to install moto into .venv)",
                    program.to_string_lossy()
                )
            })?;
        let mut moto = Self {
            child: Some(child),
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !moto.answers() {
            if let Some(status) = moto
                .child
                .as_mut()
                .map(Child::try_wait)
                .transpose()?
                .flatten()
            {
                bail!("moto server exited with {status}; see {}", log.display());
            }
            if Instant::now() > deadline {
                bail!(
                    "moto server did not answer on port {port} within 30 s; see {}",
                    log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(moto)
    }

    /// Starts a server for a local stack's run, with the SSM agent's reply channel that
    /// real hosts need (see `local/moto/moto_with_hosts.py`): commands start Pending and end
    /// as the host reports them, instead of moto's immediate Success. The run owns the
    /// process and stops it.
    pub async fn start_for_hosts(run: &crate::run::Run) -> anyhow::Result<Self> {
        let port = free_port()?;
        let python = venv_tool("python3");
        let script = workspace_root().join("local/moto/moto_with_hosts.py");
        let mut command = Command::new(&python);
        command
            .arg(&script)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()]);
        run.spawn("moto", command).with_context(|| {
            format!(
                "starting moto with {} (run `make setup` to install moto into .venv)",
                python.display()
            )
        })?;
        let moto = Self { child: None, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !moto.answers() {
            if let Some(status) = run.exited("moto") {
                bail!(
                    "moto server exited with {status}; see {}",
                    run.log("moto").display()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "moto server did not answer on port {port} within 30 s; see {}",
                    run.log("moto").display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(moto)
    }

    /// A server another process runs (a running `up`), on `port`; never stopped by this value.
    pub fn attach(port: u16) -> Self {
        Self { child: None, port }
    }

    /// Where the local host agent reports Run Command invocations (see `start_for_hosts`).
    pub fn host_reply_url(&self) -> String {
        format!("{}/_pushdeploy_local/ssm/invocation", self.endpoint())
    }

    fn answers(&self) -> bool {
        self.api("GET", "/moto-api/")
            .is_ok_and(|(status, _)| status == 200)
    }

    /// A plain HTTP/1.0 request to moto's own API: (status, body).
    fn api(&self, method: &str, path: &str) -> anyhow::Result<(u16, String)> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let request = format!(
            "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\n\r\n",
            self.port
        );
        stream.write_all(request.as_bytes())?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let status = response
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Ok((status, body))
    }

    /// Runs `during` with moto recording every AWS request, and returns the requests: each
    /// a JSON object with `method`, `url` and `headers` (`X-Amz-Target` names the operation
    /// of JSON-protocol services).
    pub fn record<T>(
        &self,
        during: impl FnOnce() -> T,
    ) -> anyhow::Result<(T, Vec<serde_json::Value>)> {
        self.api("POST", "/moto-api/recorder/reset-recording")?;
        self.api("POST", "/moto-api/recorder/start-recording")?;
        let out = during();
        self.api("POST", "/moto-api/recorder/stop-recording")?;
        let (_, body) = self.api("GET", "/moto-api/recorder/download-recording")?;
        let requests = body
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        Ok((out, requests))
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// An SDK configuration that talks to this server, with retries off: moto answers
    /// operations it does not implement with 500, which must not be retried.
    pub async fn sdk_config(&self) -> SdkConfig {
        aws_config::defaults(BehaviorVersion::latest())
            .endpoint_url(self.endpoint())
            .region(Region::new(REGION))
            .credentials_provider(Credentials::new("test", "test", None, None, "moto"))
            .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(1))
            .load()
            .await
    }

    /// The environment a process (a function, the AWS CLI) needs to reach this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_REGION", REGION.to_owned()),
            ("AWS_DEFAULT_REGION", REGION.to_owned()),
            ("AWS_ACCESS_KEY_ID", "test".to_owned()),
            ("AWS_SECRET_ACCESS_KEY", "test".to_owned()),
            ("AWS_MAX_ATTEMPTS", "1".to_owned()),
        ]
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
