//! The container host standing in for an EC2 instance: an instance registered in moto (with
//! tags, so `SendCommand` target selectors resolve to it), podman behind a `docker` command,
//! and an agent doing what the SSM agent does — for every command SSM holds for the
//! instance it fetches the document, checks the parameters against it, substitutes them
//! into the document's own script, runs the script, reports the outcome back to SSM and
//! publishes the status-change events AWS would, with the script's real exit status.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use aws_config::SdkConfig;
use serde_json::{Value as Json, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::task::JoinHandle;

use crate::document::{Prepared, prepare};
use crate::moto::{ACCOUNT, Moto, REGION, venv_tool};
use crate::podman::Podman;
use crate::run::Run;
use crate::template::Document;
use crate::timeline::{Source, Timeline};

/// SSM keeps this much of an invocation's output.
const OUTPUT_LIMIT: usize = 24_000;
pub const COMMAND_STATUS: &str = "EC2 Command Status-change Notification";
pub const INVOCATION_STATUS: &str = "EC2 Command Invocation Status-change Notification";

pub struct Host {
    pub instance_id: String,
    pub tags: BTreeMap<String, String>,
    pub dir: PathBuf,
    pub podman: Arc<Podman>,
    agent: Arc<Agent>,
    task: Mutex<Option<JoinHandle<()>>>,
}

/// One invocation the host ran, as it ended.
#[derive(Debug, Clone)]
pub struct Ran {
    pub command_id: String,
    pub status: String,
    pub exit_code: Option<i32>,
    pub deployment_id: Option<String>,
    pub shell_ran: bool,
}

struct Agent {
    instance_id: String,
    dir: PathBuf,
    ssm: aws_sdk_ssm::Client,
    events: aws_sdk_eventbridge::Client,
    http: reqwest::Client,
    reply_url: String,
    script_env: Vec<(String, String)>,
    timeline: Timeline,
    poll: Duration,
    drop_events: AtomicUsize,
    seen: Mutex<HashSet<String>>,
    documents: Mutex<HashMap<String, Document>>,
    ran: Mutex<Vec<Ran>>,
}

impl Host {
    /// Registers the instance in moto and starts the agent.
    pub async fn start(
        run: &Run,
        moto: &Moto,
        sdk: &SdkConfig,
        registry_host: &str,
        tags: BTreeMap<String, String>,
        timeline: Timeline,
    ) -> anyhow::Result<Self> {
        let dir = run.subdir("host")?;
        let podman = Arc::new(Podman::configure(&dir, registry_host)?);
        run.on_cleanup(&podman.cleanup_line())?;
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin)?;
        std::fs::create_dir_all(dir.join("home"))?;
        std::fs::create_dir_all(dir.join("commands"))?;
        podman.write_docker_shim(&bin.join("docker"), &dir.join("docker.log"))?;
        std::os::unix::fs::symlink(find_aws_cli()?, bin.join("aws"))?;
        let instance_id = register_instance(moto, &tags).await?;
        let mut script_env = vec![
            (
                "PATH".to_owned(),
                format!(
                    "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    bin.display()
                ),
            ),
            ("HOME".to_owned(), dir.join("home").display().to_string()),
            ("LANG".to_owned(), "C.UTF-8".to_owned()),
            ("AWS_EC2_METADATA_DISABLED".to_owned(), "true".to_owned()),
        ];
        script_env.extend(moto.env().into_iter().map(|(k, v)| (k.to_owned(), v)));
        let agent = Arc::new(Agent {
            instance_id: instance_id.clone(),
            dir: dir.clone(),
            ssm: aws_sdk_ssm::Client::new(sdk),
            events: aws_sdk_eventbridge::Client::new(sdk),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?,
            reply_url: moto.host_reply_url(),
            script_env,
            timeline,
            poll: Duration::from_millis(500),
            drop_events: AtomicUsize::new(0),
            seen: Mutex::new(HashSet::new()),
            documents: Mutex::new(HashMap::new()),
            ran: Mutex::new(Vec::new()),
        });
        let task = tokio::spawn(agent.clone().serve());
        Ok(Self {
            instance_id,
            tags,
            dir,
            podman,
            agent,
            task: Mutex::new(Some(task)),
        })
    }

    /// The status-change events of the next `n` commands are not published, as if
    /// EventBridge had lost them; SSM still records the outcome.
    pub fn drop_status_events_of_next_commands(&self, n: usize) {
        self.agent.drop_events.fetch_add(n, Ordering::SeqCst);
    }

    /// Every `docker` invocation so far, one per line: time, command id, arguments.
    pub fn docker_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("docker.log")).unwrap_or_default()
    }

    /// The invocations the host has finished, oldest first.
    pub fn ran(&self) -> Vec<Ran> {
        self.agent.ran.lock().unwrap().clone()
    }

    /// The containers on the host: (name, image, state).
    pub async fn containers(&self) -> anyhow::Result<Vec<Container>> {
        let out = self
            .podman
            .output(&["ps", "--all", "--format", "json"])
            .await?;
        let list: Vec<Json> = serde_json::from_str(&out).context("podman ps output")?;
        Ok(list
            .iter()
            .map(|c| Container {
                name: c["Names"][0].as_str().unwrap_or_default().to_owned(),
                image: c["Image"].as_str().unwrap_or_default().to_owned(),
                state: c["State"].as_str().unwrap_or_default().to_owned(),
            })
            .collect())
    }

    /// Stops the agent (a script already running finishes on its own).
    pub fn stop(&self) {
        if let Some(task) = self.task.lock().unwrap().take() {
            task.abort();
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.stop();
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    pub name: String,
    pub image: String,
    pub state: String,
}

/// The venv's AWS CLI (or one on `PATH`), which the document's script calls as `aws`.
fn find_aws_cli() -> anyhow::Result<PathBuf> {
    let candidate = venv_tool("aws");
    if candidate.is_absolute() {
        return Ok(candidate);
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("aws"))
        .find(|p| p.exists())
        .ok_or_else(|| anyhow!("no AWS CLI found: run `make setup` to install it into .venv"))
}

/// Creates the EC2 instance in moto, with the tags command target selectors match.
async fn register_instance(moto: &Moto, tags: &BTreeMap<String, String>) -> anyhow::Result<String> {
    let mut tag_spec =
        String::from("ResourceType=instance,Tags=[{Key=Name,Value=pushdeploy-local-host}");
    for (k, v) in tags {
        tag_spec.push_str(&format!(",{{Key={k},Value={v}}}"));
    }
    tag_spec.push(']');
    let out = tokio::process::Command::new(find_aws_cli()?)
        .args([
            "ec2",
            "run-instances",
            "--image-id",
            "ami-03cf127a",
            "--instance-type",
            "t3.micro",
            "--count",
            "1",
            "--tag-specifications",
            &tag_spec,
            "--output",
            "json",
        ])
        .envs(moto.env())
        .stdin(Stdio::null())
        .output()
        .await
        .context("running aws ec2 run-instances")?;
    if !out.status.success() {
        bail!(
            "aws ec2 run-instances failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let reply: Json = serde_json::from_slice(&out.stdout)?;
    reply["Instances"][0]["InstanceId"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("run-instances returned no instance id: {reply}"))
}

/// A command as `ListCommands` shows it.
struct Pending {
    command_id: String,
    document: String,
    parameters: BTreeMap<String, Vec<String>>,
    requested: OffsetDateTime,
    expires: Option<OffsetDateTime>,
}

impl Agent {
    async fn serve(self: Arc<Self>) {
        loop {
            match self.pending().await {
                Ok(commands) => {
                    for command in commands {
                        let agent = self.clone();
                        tokio::spawn(async move { agent.handle(command).await });
                    }
                }
                Err(e) => self.timeline.note(
                    Source::Host,
                    "agent error",
                    None,
                    json!({ "error": format!("{e:#}") }),
                    &format!("could not list commands: {e:#}"),
                ),
            }
            tokio::time::sleep(self.poll).await;
        }
    }

    /// Commands for this instance that are Pending and not yet taken.
    async fn pending(&self) -> anyhow::Result<Vec<Pending>> {
        let out = self
            .ssm
            .list_commands()
            .instance_id(&self.instance_id)
            .send()
            .await
            .context("ListCommands")?;
        let mut fresh = Vec::new();
        for c in out.commands() {
            let (Some(id), Some(status)) = (c.command_id(), c.status()) else {
                continue;
            };
            if status.as_str() != "Pending" || !self.seen.lock().unwrap().insert(id.to_owned()) {
                continue;
            }
            let to_time = |t: &aws_smithy_types::DateTime| {
                OffsetDateTime::from_unix_timestamp_nanos(t.as_nanos()).ok()
            };
            fresh.push(Pending {
                command_id: id.to_owned(),
                document: c.document_name().unwrap_or_default().to_owned(),
                parameters: c
                    .parameters()
                    .map(|p| p.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                    .unwrap_or_default(),
                requested: c
                    .requested_date_time()
                    .and_then(to_time)
                    .unwrap_or_else(OffsetDateTime::now_utc),
                expires: c.expires_after().and_then(to_time),
            });
        }
        Ok(fresh)
    }

    async fn handle(self: Arc<Self>, command: Pending) {
        let drop_events = self
            .drop_events
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        let deployment_id = command
            .parameters
            .get("DeploymentId")
            .and_then(|v| v.first())
            .cloned();
        let outcome = self
            .execute(&command, drop_events, deployment_id.as_deref())
            .await;
        let ran = match outcome {
            Ok(ran) => ran,
            Err(e) => {
                // The agent itself failed (not the script): the invocation fails, as an
                // instance whose agent breaks down would.
                let message = format!("{e:#}");
                let _ = self
                    .finish(&command, "Failed", -1, "", &message, 0.0, drop_events)
                    .await;
                Ran {
                    command_id: command.command_id.clone(),
                    status: "Failed".into(),
                    exit_code: None,
                    deployment_id: deployment_id.clone(),
                    shell_ran: false,
                }
            }
        };
        self.ran.lock().unwrap().push(ran);
    }

    async fn execute(
        &self,
        command: &Pending,
        drop_events: bool,
        deployment_id: Option<&str>,
    ) -> anyhow::Result<Ran> {
        let started = Instant::now();
        let id = &command.command_id;
        self.reply(command, json!({ "Status": "InProgress" }))
            .await?;
        self.publish(command, "InProgress", drop_events).await?;
        self.timeline.note(
            Source::Host,
            "command started",
            deployment_id,
            json!({ "command_id": id, "document": command.document }),
            &format!(
                "{} runs {} ({}){}",
                self.instance_id,
                command.document,
                id,
                if drop_events {
                    "; its status events will be dropped"
                } else {
                    ""
                }
            ),
        );
        let document = self.document(&command.document).await?;
        let prepared = match prepare(&document, &command.parameters) {
            Ok(p) => p,
            Err(problems) => {
                let message = format!("InvalidParameters: {}", problems.join("; "));
                self.finish(command, "Failed", -1, "", &message, 0.0, drop_events)
                    .await?;
                self.timeline.note(
                    Source::Host,
                    "command refused",
                    deployment_id,
                    json!({ "command_id": id, "problems": problems }),
                    &format!("{id}: no shell ran — {message}"),
                );
                return Ok(Ran {
                    command_id: id.clone(),
                    status: "Failed".into(),
                    exit_code: None,
                    deployment_id: deployment_id.map(str::to_owned),
                    shell_ran: false,
                });
            }
        };
        let (status, code, stdout, stderr) = self.run_script(command, &prepared).await?;
        let seconds = started.elapsed().as_secs_f64();
        self.finish(
            command,
            &status,
            code,
            &stdout,
            &stderr,
            seconds,
            drop_events,
        )
        .await?;
        let last_line = stderr
            .lines()
            .chain(stdout.lines())
            .rfind(|l| !l.trim().is_empty())
            .unwrap_or_default()
            .to_owned();
        let last_stdout = stdout
            .lines()
            .rfind(|l| !l.trim().is_empty())
            .unwrap_or_default();
        self.timeline.note(
            Source::Host,
            "command finished",
            deployment_id,
            json!({ "command_id": id, "status": status, "exit_code": code }),
            &format!(
                "{id}: {status}, exit {code} after {seconds:.1}s — {}",
                if status == "Success" {
                    last_stdout
                } else {
                    &last_line
                }
            ),
        );
        Ok(Ran {
            command_id: id.clone(),
            status,
            exit_code: Some(code),
            deployment_id: deployment_id.map(str::to_owned),
            shell_ran: true,
        })
    }

    /// The document's content as SSM holds it (fetched once per document).
    async fn document(&self, name: &str) -> anyhow::Result<Document> {
        if let Some(d) = self.documents.lock().unwrap().get(name) {
            return Ok(d.clone());
        }
        let out = self
            .ssm
            .get_document()
            .name(name)
            .send()
            .await
            .with_context(|| format!("GetDocument {name}"))?;
        let text = out.content().unwrap_or_default();
        let content: Json = serde_json::from_str(text)
            .or_else(|_| serde_norway::from_str(text))
            .with_context(|| format!("document {name} is neither JSON nor YAML"))?;
        let document = Document::from_content(name, content)?;
        self.documents
            .lock()
            .unwrap()
            .insert(name.to_owned(), document.clone());
        Ok(document)
    }

    /// Runs the prepared script as the SSM agent does (`sh -c <script file>`, so a `#!` line
    /// chooses the shell), with the step's timeout and honouring cancellation.
    async fn run_script(
        &self,
        command: &Pending,
        prepared: &Prepared,
    ) -> anyhow::Result<(String, i32, String, String)> {
        let dir = self.dir.join("commands").join(&command.command_id);
        std::fs::create_dir_all(&dir)?;
        let script = dir.join("_script.sh");
        std::fs::write(&script, &prepared.script)?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o700))?;
        }
        let stdout_path = dir.join("stdout");
        let stderr_path = dir.join("stderr");
        let mut std_command = std::process::Command::new("sh");
        std_command
            .arg("-c")
            .arg(&script)
            .current_dir(
                prepared
                    .working_directory
                    .as_deref()
                    .map(Path::new)
                    .unwrap_or(&dir),
            )
            .env_clear()
            .envs(self.script_env.iter().map(|(k, v)| (k, v)))
            // No registry credentials survive from an earlier invocation: a script that does
            // not log in cannot pull.
            .env("REGISTRY_AUTH_FILE", dir.join("registry-auth.json"))
            .env("PUSHDEPLOY_COMMAND_ID", &command.command_id)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout_path)?)
            .stderr(std::fs::File::create(&stderr_path)?);
        crate::run::prepare_child(&mut std_command, false);
        let mut child = tokio::process::Command::from(std_command)
            .spawn()
            .context("starting sh")?;
        let pid = child.id();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(prepared.timeout_seconds);
        let status = loop {
            tokio::select! {
                exit = child.wait() => break Some(exit?),
                _ = tokio::time::sleep_until(deadline) => {
                    if let Some(pid) = pid { crate::run::signal_group(pid, libc::SIGKILL); }
                    let _ = child.wait().await;
                    break None;
                }
                _ = tokio::time::sleep(Duration::from_secs(1)) => {
                    if self.cancelling(&command.command_id).await {
                        if let Some(pid) = pid { crate::run::signal_group(pid, libc::SIGKILL); }
                        let _ = child.wait().await;
                        let (out, err) = (read_limited(&stdout_path), read_limited(&stderr_path));
                        return Ok(("Cancelled".into(), -1, out, err));
                    }
                }
            }
        };
        let (out, err) = (read_limited(&stdout_path), read_limited(&stderr_path));
        Ok(match status {
            None => ("TimedOut".into(), -1, out, err),
            Some(s) => {
                let code = s.code().unwrap_or(-1);
                let status = if s.success() { "Success" } else { "Failed" };
                (status.into(), code, out, err)
            }
        })
    }

    async fn cancelling(&self, command_id: &str) -> bool {
        let Ok(out) = self.ssm.list_commands().command_id(command_id).send().await else {
            return false;
        };
        out.commands()
            .first()
            .and_then(|c| c.status())
            .is_some_and(|s| s.as_str() == "Cancelling")
    }

    /// Reports the final status to SSM, then publishes the status-change events.
    #[allow(clippy::too_many_arguments)]
    async fn finish(
        &self,
        command: &Pending,
        status: &str,
        code: i32,
        stdout: &str,
        stderr: &str,
        seconds: f64,
        drop_events: bool,
    ) -> anyhow::Result<()> {
        self.reply(
            command,
            json!({
                "Status": status,
                "ResponseCode": code,
                "StandardOutputContent": stdout,
                "StandardErrorContent": stderr,
                "ElapsedSeconds": seconds,
            }),
        )
        .await?;
        self.publish(command, status, drop_events).await
    }

    /// The SSM agent's reply: the invocation's status and output, recorded in moto.
    async fn reply(&self, command: &Pending, mut body: Json) -> anyhow::Result<()> {
        body["Account"] = json!(ACCOUNT);
        body["Region"] = json!(REGION);
        body["CommandId"] = json!(command.command_id);
        body["InstanceId"] = json!(self.instance_id);
        let response = self
            .http
            .post(&self.reply_url)
            .body(body.to_string())
            .send()
            .await
            .context("reporting to SSM (moto)")?;
        if !response.status().is_success() {
            bail!(
                "moto refused the invocation report: {}",
                response.text().await.unwrap_or_default()
            );
        }
        Ok(())
    }

    /// The invocation's and the command's status-change events, on the default bus, shaped
    /// as AWS sends them (one host per command, so the command's status is the host's).
    async fn publish(
        &self,
        command: &Pending,
        status: &str,
        drop_events: bool,
    ) -> anyhow::Result<()> {
        if drop_events {
            return Ok(());
        }
        let format = |t: OffsetDateTime| t.format(&Rfc3339).unwrap_or_default();
        let instance_arn = format!(
            "arn:aws:ec2:{REGION}:{ACCOUNT}:instance/{}",
            self.instance_id
        );
        let invocation = json!({
            "command-id": command.command_id,
            "document-name": command.document,
            "instance-id": self.instance_id,
            "requested-date-time": format(command.requested),
            "status": status,
        });
        let mut whole = json!({
            "command-id": command.command_id,
            "document-name": command.document,
            "parameters": command.parameters,
            "requested-date-time": format(command.requested),
            "status": status,
        });
        if let Some(expires) = command.expires {
            whole["expire-after"] = json!(format(expires));
        }
        let entry = |detail_type: &str, detail: &Json| {
            aws_sdk_eventbridge::types::PutEventsRequestEntry::builder()
                .source("aws.ssm")
                .detail_type(detail_type)
                .detail(detail.to_string())
                .resources(&instance_arn)
                .build()
        };
        let out = self
            .events
            .put_events()
            .entries(entry(INVOCATION_STATUS, &invocation))
            .entries(entry(COMMAND_STATUS, &whole))
            .send()
            .await
            .context("PutEvents (SSM status change)")?;
        if out.failed_entry_count() > 0 {
            bail!("PutEvents refused an SSM status event: {:?}", out.entries());
        }
        Ok(())
    }
}

fn read_limited(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    if text.len() <= OUTPUT_LIMIT {
        return text;
    }
    let mut end = OUTPUT_LIMIT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}
