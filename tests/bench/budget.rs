//! budget: measures the release function binaries against the performance budget in the
//! README — cold-start init time, peak memory, zip size, AWS calls and CPU time per
//! invocation — running each binary against a minimal Lambda runtime API and moto.
//!
//! Then the load figures (`load.rs`): latency alone and in a burst, a throughput ladder,
//! failure to rollback, and the requests and cost of one deployment.
//!
//! Run with `make bench` (it builds the release binaries first).

mod load;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use pushdeploy_local::moto::{Moto, workspace_root};
use pushdeploy_tests::{
    BUS, DOCUMENT, PARAMETER, REPOSITORY, TABLE, TempDir, provision, put_config,
};
use serde_json::{Value, json};

const CONFIG: &str = r#"
apps:
  web:
    repository: acme/web
    retention: { keep_newest: 30 }
    environments:
      blue:
        deploy_on_push: { tags: ["blue-*"] }
        target: { ssm: { instances: { tag: { Role: web-blue } }, container: web, ports: ["80:8000"] } }
      green:
        deploy_on_push: { tags: ["green-*"] }
        target: { ssm: { instances: { tag: { Role: web-green } }, container: web, ports: ["80:8000"] } }
"#;

/// What the runtime API saw of one invocation.
enum Seen {
    /// The function asked for its first event: initialisation is over.
    Ready,
    Done {
        error: bool,
        body: String,
    },
}

/// The Lambda runtime API, just enough for one function process: it hands out the events
/// sent on `events` and reports what the function does.
struct RuntimeApi {
    port: u16,
    events: Sender<Value>,
    seen: Receiver<(Instant, Seen)>,
}

impl RuntimeApi {
    fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let (events, pending) = channel::<Value>();
        let (report, seen) = channel();
        let pending = Arc::new(Mutex::new(pending));
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (pending, report) = (pending.clone(), report.clone());
                std::thread::spawn(move || serve(stream, &pending, &report));
            }
        });
        Ok(Self { port, events, seen })
    }

    fn next_seen(&self) -> anyhow::Result<(Instant, Seen)> {
        self.seen
            .recv_timeout(Duration::from_secs(60))
            .context("the function did not answer within 60 s")
    }
}

fn serve(stream: TcpStream, pending: &Mutex<Receiver<Value>>, report: &Sender<(Instant, Seen)>) {
    let mut reader = BufReader::new(stream.try_clone().expect("socket clones"));
    let mut stream = stream;
    let mut request = 0u64;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            if header == "\r\n" {
                break;
            }
            if let Some((k, v)) = header.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let path = line
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        if path.ends_with("/invocation/next") {
            let _ = report.send((Instant::now(), Seen::Ready));
            let Ok(event) = pending.lock().unwrap().recv() else {
                return;
            };
            request += 1;
            let body = event.to_string();
            let deadline = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis()
                + 60_000;
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nlambda-runtime-aws-request-id: req-{request}\r\n\
                 lambda-runtime-deadline-ms: {deadline}\r\nlambda-runtime-invoked-function-arn: arn:aws:lambda:us-east-1:123456789012:function:bench\r\n\
                 lambda-runtime-trace-id: Root=1-00000000-000000000000000000000000\r\ncontent-length: {}\r\n\r\n",
                body.len()
            );
            let _ = stream
                .write_all(head.as_bytes())
                .and_then(|_| stream.write_all(body.as_bytes()));
        } else {
            let error = path.ends_with("/error");
            let _ = report.send((
                Instant::now(),
                Seen::Done {
                    error,
                    body: String::from_utf8_lossy(&body).into_owned(),
                },
            ));
            let _ = stream.write_all(b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n");
        }
    }
}

/// CPU time used so far by every thread of a process, in nanoseconds.
fn cpu_ns(pid: u32) -> anyhow::Result<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let stat = std::fs::read_to_string(task?.path().join("schedstat")).unwrap_or_default();
        total += stat
            .split_whitespace()
            .next()
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok(total)
}

/// Peak resident memory of a process, in KiB.
fn peak_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow!("no VmHWM for {pid}"))
}

/// The size of the function's deployment zip (the binary as `bootstrap`, deflated).
fn zip_size(binary: &Path, dir: &Path) -> anyhow::Result<u64> {
    let zip = dir.join(format!(
        "{}.zip",
        binary.file_name().unwrap().to_string_lossy()
    ));
    let status = Command::new("python3")
        .args(["-c", "import sys, zipfile\nwith zipfile.ZipFile(sys.argv[1], 'w', zipfile.ZIP_DEFLATED, compresslevel=9) as z:\n    z.write(sys.argv[2], 'bootstrap')"])
        .arg(&zip)
        .arg(binary)
        .status()?;
    if !status.success() {
        bail!("zipping {} failed", binary.display());
    }
    Ok(std::fs::metadata(zip)?.len())
}

/// AWS operations in a moto recording: `Service.Operation` → count.
fn operations(requests: &[Value]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for r in requests {
        let headers = r["headers"].as_object();
        let target = headers
            .and_then(|h| {
                h.iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("x-amz-target"))
            })
            .and_then(|(_, v)| v.as_str())
            .unwrap_or("other");
        *out.entry(target.to_owned()).or_insert(0) += 1;
    }
    out
}

struct Invocation {
    name: String,
    wall: Duration,
    cpu: Duration,
    calls: BTreeMap<String, usize>,
    error: bool,
    body: String,
}

struct Measured {
    function: String,
    init: Duration,
    init_cpu: Duration,
    zip: u64,
    rss_kib: u64,
    invocations: Vec<Invocation>,
}

/// Starts a function binary the way Lambda does, waits for its initialisation, then sends
/// each event in turn, measuring each invocation.
fn run_function(
    moto: &Moto,
    dir: &Path,
    binary: &Path,
    events: Vec<(&str, Value)>,
) -> anyhow::Result<Measured> {
    run_function_under(moto, dir, binary, events, &[])
}

/// `run_function`, the binary started by the command `under` (a profiler) when given.
fn run_function_under(
    moto: &Moto,
    dir: &Path,
    binary: &Path,
    events: Vec<(&str, Value)>,
    under: &[String],
) -> anyhow::Result<Measured> {
    let function = binary.file_name().unwrap().to_string_lossy().into_owned();
    let api = RuntimeApi::start()?;
    let log_path = dir.join(format!("{function}.log"));
    let log = std::fs::File::create(&log_path)?;
    let started = Instant::now();
    let mut command = match under.split_first() {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(binary);
            c
        }
        None => Command::new(binary),
    };
    let mut child: Child = command
        .envs(moto.env())
        .env("AWS_LAMBDA_RUNTIME_API", format!("127.0.0.1:{}", api.port))
        .env("AWS_LAMBDA_FUNCTION_NAME", &function)
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env(
            "AWS_LAMBDA_LOG_GROUP_NAME",
            format!("/aws/lambda/{function}"),
        )
        .env("AWS_LAMBDA_LOG_STREAM_NAME", "bench")
        .env("PUSHDEPLOY_TABLE", TABLE)
        .env("PUSHDEPLOY_EVENT_BUS", BUS)
        .env("PUSHDEPLOY_CONFIG_PARAMETER", PARAMETER)
        .env("PUSHDEPLOY_SSM_DOCUMENT", DOCUMENT)
        .stdout(log.try_clone()?)
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let pid = child.id();
    let result = (|| {
        let (ready_at, _) = api
            .next_seen()
            .with_context(|| format!("{function} did not start; see {}", log_path.display()))?;
        let init = ready_at - started;
        let init_cpu = Duration::from_nanos(cpu_ns(pid)?);
        let mut invocations = Vec::new();
        for (name, event) in events {
            let cpu_before = cpu_ns(pid)?;
            let (outcome, requests) = moto.record(|| -> anyhow::Result<(Duration, Seen)> {
                let sent = Instant::now();
                api.events
                    .send(event)
                    .map_err(|_| anyhow!("the runtime API stopped"))?;
                let (at, seen) = api.next_seen()?;
                // The function asks for its next event once this one is completely done.
                api.next_seen()?;
                Ok((at - sent, seen))
            })?;
            let (wall, seen) = outcome?;
            let Seen::Done { error, body } = seen else {
                bail!("{function} asked for an event twice")
            };
            let cpu = Duration::from_nanos(cpu_ns(pid)? - cpu_before);
            invocations.push(Invocation {
                name: name.to_owned(),
                wall,
                cpu,
                calls: operations(&requests),
                error,
                body,
            });
        }
        Ok(Measured {
            function: function.clone(),
            init,
            init_cpu,
            zip: zip_size(binary, dir)?,
            rss_kib: peak_rss_kib(pid)?,
            invocations,
        })
    })();
    if under.is_empty() {
        let _ = child.kill();
    } else {
        // A profiler writes its profile when the process ends by a signal it can see.
        let _ = Command::new("kill").arg(pid.to_string()).status();
    }
    let _ = child.wait();
    result
}

fn ecr_push(tag: &str, hex: char) -> Value {
    json!({
        "version": "0", "id": format!("bench-{tag}"), "detail-type": "ECR Image Action", "source": "aws.ecr",
        "account": "123456789012", "time": "2026-11-20T10:00:00Z", "region": "us-east-1", "resources": [],
        "detail": { "result": "SUCCESS", "repository-name": REPOSITORY, "image-digest": format!("sha256:{}", hex.to_string().repeat(64)),
                    "action-type": "PUSH", "image-tag": tag }
    })
}

fn lifecycle(detail_type: &str, env: &str, deployment_id: &str) -> Value {
    json!({
        "version": "0", "id": format!("bench-{detail_type}-{env}"), "detail-type": detail_type, "source": "pushdeploy",
        "account": "123456789012", "time": "2026-11-20T10:00:00Z", "region": "us-east-1", "resources": [],
        "detail": { "app": "web", "environment": env, "deployment_id": deployment_id, "at": "2026-11-20T10:00:00Z" }
    })
}

fn schedule() -> Value {
    json!({ "version": "0", "id": "bench-tick", "detail-type": "Scheduled Event", "source": "aws.events",
            "account": "123456789012", "time": "2026-11-20T10:00:00Z", "region": "us-east-1", "resources": [], "detail": {} })
}

fn deployment_id(deployer: &Measured, invocation: usize) -> anyhow::Result<String> {
    let body: Value = serde_json::from_str(&deployer.invocations[invocation].body)?;
    body.pointer("/results/0/deployment_id")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("the deployer started nothing: {body}"))
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

fn main() -> anyhow::Result<()> {
    let bin_dir = std::env::var_os("PUSHDEPLOY_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/release"));
    // `budget load`: the load half alone, billed at the durations it measures in-process.
    if std::env::args().nth(1).as_deref() == Some("load") {
        return load::report(None);
    }
    // `budget profile`: where a warm deployer invocation spends its CPU (`make profile`).
    if std::env::args().nth(1).as_deref() == Some("profile") {
        return profile();
    }
    let dir = TempDir::new("pushdeploy-bench")?;
    let moto = Moto::start(&dir.0.join("moto.log"))?;
    tokio::runtime::Runtime::new()?.block_on(async {
        let sdk = moto.sdk_config().await;
        provision(&sdk).await?;
        put_config(&sdk, CONFIG).await
    })?;
    let binary = |name: &str| -> anyhow::Result<PathBuf> {
        let path = bin_dir.join(name);
        if !path.exists() {
            bail!(
                "{} is missing: run `cargo build --release -p {name}` (or `make bench`)",
                path.display()
            );
        }
        Ok(path)
    };

    let mut results = Vec::new();
    let deployer = run_function(
        &moto,
        &dir.0,
        &binary("deployer")?,
        vec![
            ("push (cold)", ecr_push("blue-1", 'b')),
            ("push (warm)", ecr_push("green-1", 'c')),
        ],
    )?;
    let (blue, green) = (deployment_id(&deployer, 0)?, deployment_id(&deployer, 1)?);
    results.push(deployer);
    results.push(run_function(
        &moto,
        &dir.0,
        &binary("tracker")?,
        vec![
            ("reconcile (cold)", schedule()),
            ("reconcile (warm)", schedule()),
        ],
    )?);
    results.push(run_function(
        &moto,
        &dir.0,
        &binary("verifier")?,
        vec![
            (
                "verify (cold)",
                lifecycle("Rollout Succeeded", "blue", &blue),
            ),
            (
                "verify (warm)",
                lifecycle("Rollout Succeeded", "green", &green),
            ),
        ],
    )?);
    results.push(run_function(
        &moto,
        &dir.0,
        &binary("rollback")?,
        vec![(
            "failure event, nothing to do (cold)",
            lifecycle("Rollout Failed", "blue", &blue),
        )],
    )?);
    results.push(run_function(
        &moto,
        &dir.0,
        &binary("control")?,
        vec![
            ("status (cold)", json!({"action": "status"})),
            ("status (warm)", json!({"action": "status"})),
        ],
    )?);

    results.push(run_function(
        &moto,
        &dir.0,
        &binary("janitor")?,
        vec![
            ("dry run by hand (cold)", json!({"dry_run": true})),
            ("dry run by hand (warm)", json!({"dry_run": true})),
        ],
    )?);
    results.push(run_function(
        &moto,
        &dir.0,
        &binary("notifier")?,
        vec![(
            "verified, no channel configured (cold)",
            lifecycle("Deployment Verified", "blue", &blue),
        )],
    )?);

    println!("| function | init (ms) | init CPU (ms) | peak RSS (MiB) | zip (MiB) |");
    println!("|---|---:|---:|---:|---:|");
    for m in &results {
        println!(
            "| {} | {} | {} | {:.1} | {:.2} |",
            m.function,
            ms(m.init),
            ms(m.init_cpu),
            m.rss_kib as f64 / 1024.0,
            m.zip as f64 / (1024.0 * 1024.0)
        );
    }
    println!();
    println!("| function | invocation | wall (ms) | CPU (ms) | AWS calls | outcome |");
    println!("|---|---|---:|---:|---|---|");
    for m in &results {
        for i in &m.invocations {
            let total: usize = i.calls.values().sum();
            let calls: Vec<String> = i
                .calls
                .iter()
                .map(|(op, n)| format!("{}×{n}", op.rsplit('.').next().unwrap_or(op)))
                .collect();
            let outcome = if i.error { "error" } else { "ok" };
            println!(
                "| {} | {} | {} | {} | {total}: {} | {outcome} |",
                m.function,
                i.name,
                ms(i.wall),
                ms(i.cpu),
                calls.join(", ")
            );
        }
    }
    // The CPU of an invocation, a warm one where there is one: what Lambda bills is that
    // and the time its AWS requests take (added in `load`).
    let billed: BTreeMap<String, Duration> = results
        .iter()
        .filter_map(|m| {
            let warm = m.invocations.iter().find(|i| i.name.contains("warm"));
            warm.or(m.invocations.first())
                .map(|i| (m.function.clone(), i.cpu))
        })
        .collect();
    load::report(Some(&billed))
}

/// Runs the deployer's profiling build (`cargo build --profile profiling -p deployer`)
/// under callgrind for one cold and `WARM` warm pushes, each starting an SSM rollout on a
/// free environment, and prints where the instructions went.
fn profile() -> anyhow::Result<()> {
    const WARM: usize = 20;
    let binary = workspace_root().join("target/profiling/deployer");
    if !binary.exists() {
        bail!(
            "{} is missing: run `cargo build --profile profiling -p deployer` (or `make profile`)",
            binary.display()
        );
    }
    let dir = TempDir::new("pushdeploy-profile")?;
    let moto = Moto::start(&dir.0.join("moto.log"))?;
    let mut config = String::from("apps:\n  web:\n    repository: acme/web\n    environments:\n");
    for n in 0..=WARM {
        config.push_str(&format!(
            "      e{n}:\n        deploy_on_push: {{ tags: [\"e{n}-*\"] }}\n        target: {{ ssm: {{ instances: {{ tag: {{ Role: web-e{n} }} }}, container: web, ports: [\"80:8000\"] }} }}\n"
        ));
    }
    tokio::runtime::Runtime::new()?.block_on(async {
        let sdk = moto.sdk_config().await;
        provision(&sdk).await?;
        put_config(&sdk, &config).await
    })?;
    // Kept for `callgrind_annotate` and kcachegrind.
    let out = workspace_root().join("target/profiling/callgrind.deployer.out");
    let _ = std::fs::remove_file(&out);
    let under = [
        "valgrind".to_owned(),
        "--tool=callgrind".to_owned(),
        format!("--callgrind-out-file={}", out.display()),
    ];
    let names: Vec<String> = (0..=WARM).map(|n| format!("push e{n}")).collect();
    let events = (0..=WARM)
        .map(|n| {
            let hex = char::from_digit((n % 16) as u32, 16).unwrap();
            (names[n].as_str(), ecr_push(&format!("e{n}-1"), hex))
        })
        .collect();
    let measured = run_function_under(&moto, &dir.0, &binary, events, &under)?;
    let failed = measured.invocations.iter().filter(|i| i.error).count();
    anyhow::ensure!(failed == 0, "{failed} pushes failed under callgrind");
    // The process must end for callgrind to write its profile.
    for _ in 0..100 {
        if out.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "callgrind: the deployer, 1 cold and {WARM} warm pushes each starting an SSM rollout; \
         the profile is {}",
        out.display()
    );
    for (what, inclusive) in [("itself", "no"), ("with what it calls", "yes")] {
        let annotate = Command::new("callgrind_annotate")
            .args([
                &format!("--inclusive={inclusive}"),
                "--threshold=90",
                "--auto=no",
            ])
            .arg(&out)
            .output()
            .context("running callgrind_annotate")?;
        println!("\nInstructions by function, {what}:");
        let text = String::from_utf8_lossy(&annotate.stdout);
        let lines = text
            .lines()
            .skip_while(|l| !l.contains("PROGRAM TOTALS"))
            .filter(|l| !l.trim().is_empty() && !l.starts_with("--"))
            .take(40);
        for line in lines {
            println!("{line}");
        }
    }
    Ok(())
}
