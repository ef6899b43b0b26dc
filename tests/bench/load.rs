//! The load half of `make bench`: the burst engine of `tests/support/burst.rs` (the real
//! entrypoints and adapters, concurrently, on the atomic moto), run as a push alone, as a
//! burst, as a ladder of rates, and with failing images; then what one deployment costs,
//! from the requests the emulator logged and the billed durations measured above, next to
//! what the same deployment costs on CodePipeline V2 and on GitHub Actions.

use std::collections::BTreeMap;
use std::time::Duration;

use pushdeploy_tests::burst::{self, Plan, Report, spread};

/// List prices, US East (N. Virginia), as published on 2026-12-03.
mod price {
    /// Lambda, arm64: per GB-second of billed duration, and per request.
    pub const LAMBDA_GB_S: f64 = 0.000_013_333_4;
    pub const LAMBDA_REQUEST: f64 = 0.20 / 1e6;
    /// DynamoDB on demand: per write request unit and per read request unit.
    pub const DYNAMODB_WRU: f64 = 0.625 / 1e6;
    pub const DYNAMODB_RRU: f64 = 0.125 / 1e6;
    /// EventBridge: per custom event put on a bus (AWS service events are free).
    pub const EVENTBRIDGE_EVENT: f64 = 1.00 / 1e6;
    /// CodePipeline V2: per action execution minute (each action rounded up to a minute).
    pub const CODEPIPELINE_ACTION_MINUTE: f64 = 0.002;
    /// GitHub Actions: per minute of a standard Linux 2-core runner (each job rounded up).
    pub const GITHUB_LINUX_2_CORE_MINUTE: f64 = 0.006;
}

/// The memory every function is given (`template.yaml`'s `MemorySize`).
const MEMORY_GB: f64 = 128.0 / 1024.0;
/// What one rollout takes on the target and its smoke tests, in whole minutes as the
/// pipelines bill it: a pipeline or a runner waits (and pays) for it; pushdeploy's functions
/// do not run while it happens.
const ROLLOUT_MINUTES: f64 = 2.0;
/// What an AWS request answered inside a region takes: an invocation is billed for its
/// CPU and for the time it waits on its requests.
const AWS_REQUEST: Duration = Duration::from_millis(10);

fn plan(pushes: usize, window: Duration, seed: u64) -> Plan {
    Plan {
        apps: 10,
        pushes,
        window,
        in_flight: 32,
        unhealthy_one_in: 0,
        disorder: false,
        seed,
        settle_within: Duration::from_secs(60),
        reconcile_every: Some(Duration::from_secs(2)),
    }
}

/// Runs `plan`; its report, when it kept every promise.
async fn checked(name: &str, plan: Plan) -> anyhow::Result<Report> {
    let report = burst::run(&plan).await?;
    anyhow::ensure!(
        report.broken.is_empty(),
        "{name} broke a promise:\n{}",
        report.broken.join("\n")
    );
    Ok(report)
}

fn conflict_retries(report: &Report) -> usize {
    report
        .errors
        .iter()
        .filter(|(e, _)| e.contains("concurrently"))
        .map(|(_, n)| n)
        .sum()
}

/// `billed` is the CPU of one warm invocation of each function's release binary, by
/// function; without it, each function's mean invocation in-process (debug build, its
/// requests to the emulator included) stands in.
pub fn report(billed: Option<&BTreeMap<String, Duration>>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(report_async(billed))
}

async fn report_async(billed: Option<&BTreeMap<String, Duration>>) -> anyhow::Result<()> {
    println!();
    println!("## Under load (the functions in-process, debug build, on the atomic moto)");
    println!();
    // One push at a time, each environment free: the latency of a push alone, and what a
    // deployment costs (no reconcile schedule, so only the deployment is counted).
    let alone = checked(
        "pushes alone",
        Plan {
            reconcile_every: None,
            ..plan(20, Duration::from_secs(20), 11)
        },
    )
    .await?;
    let burst = checked(
        "the burst",
        Plan {
            disorder: true,
            ..plan(1000, Duration::from_secs(10), 12)
        },
    )
    .await?;
    println!("| | push → Run Command sent | settled after | invocations | refused writes |");
    println!("|---|---|---:|---:|---:|");
    for (name, r, pushes) in [
        ("20 pushes alone, 1 a second", &alone, 20),
        (
            "1,000 pushes in 10 s (10 % twice, 10 % out of order)",
            &burst,
            1000,
        ),
    ] {
        println!(
            "| {name} | {} free; {} from the queue | {:.1} s | {} | {} ({:.2} a push) |",
            spread(&r.started_at_once),
            spread(&r.started_from_queue),
            r.settled.as_secs_f64(),
            r.invocations.values().sum::<usize>(),
            r.refused_writes(),
            r.refused_writes() as f64 / pushes as f64
        );
    }

    println!();
    println!(
        "Throughput ladder (2 s of pushes at each rate, 10 apps × 2 environments, 32 in flight):"
    );
    println!();
    println!(
        "| pushes/s | settled after | refused writes a push | invocations retried on a conflict | push → Run Command, free |"
    );
    println!("|---:|---:|---:|---:|---|");
    let (mut storm_free, mut calm) = (0, true);
    for (i, rate) in [50usize, 100, 200, 400, 800].into_iter().enumerate() {
        let r = checked(
            &format!("{rate} pushes/s"),
            plan(rate * 2, Duration::from_secs(2), 20 + i as u64),
        )
        .await?;
        let retried = conflict_retries(&r);
        calm &= retried == 0;
        if calm {
            storm_free = rate;
        }
        println!(
            "| {rate} | {:.1} s | {:.2} | {retried} | {} |",
            r.settled.as_secs_f64(),
            r.refused_writes() as f64 / (rate * 2) as f64,
            spread(&r.started_at_once)
        );
    }
    println!();
    println!(
        "Highest rate with no invocation retried on a conflict: {}",
        if storm_free > 0 {
            format!("{storm_free} pushes/s")
        } else {
            "none of the rates tried".into()
        }
    );

    let failing = checked(
        "failing images",
        Plan {
            unhealthy_one_in: 3,
            ..plan(60, Duration::from_secs(20), 13)
        },
    )
    .await?;
    println!();
    println!(
        "Failure verdict → rollback Run Command sent (60 pushes in 20 s, a third failing their \
         smoke tests): {}",
        spread(&failing.verdict_to_rollback)
    );

    println!();
    println!("## Requests and cost per deployment");
    println!();
    let deployments = alone.verified.max(1) as f64;
    let total = alone.total();
    let per = |n: f64| n / deployments;
    for (service, label) in [
        ("DynamoDB", "DynamoDB"),
        ("AWSEvents", "EventBridge"),
        ("AmazonSSM", "SSM"),
        ("AmazonEC2ContainerRegistry", "ECR"),
    ] {
        let ops = alone.requests_of(service);
        let described: Vec<String> = ops
            .iter()
            .map(|(op, n)| format!("{op} {:.1}", per(*n as f64)))
            .collect();
        println!(
            "- {label}: {:.1} requests ({})",
            per(ops.values().sum::<usize>() as f64),
            described.join(", ")
        );
    }
    println!(
        "- DynamoDB capacity: {:.1} read request units, {:.1} write request units; EventBridge: \
         {:.1} events put",
        per(total.read_units as f64),
        per(total.write_units as f64),
        per(total.events as f64)
    );
    let mut invocations: BTreeMap<String, f64> = alone
        .invocations
        .iter()
        .map(|(f, n)| ((*f).to_owned(), per(*n as f64)))
        .collect();
    invocations.insert("notifier".into(), per(alone.to_notifier as f64));
    let described: Vec<String> = invocations
        .iter()
        .map(|(f, n)| format!("{f} {n:.1}"))
        .collect();
    println!("- Lambda invocations: {}", described.join(", "));

    // What AWS bills for one deployment: each invocation's duration as measured.
    let in_process: BTreeMap<String, Duration> = alone
        .busy
        .iter()
        .map(|(f, busy)| {
            let n = alone.invocations.get(f).copied().unwrap_or(1).max(1) as u32;
            ((*f).to_owned(), *busy / n)
        })
        .collect();
    let (billed, measured_how) = match billed {
        Some(b) => (b, "the CPU of a warm invocation of the release binaries"),
        None => (&in_process, "in-process, debug build, mean invocation"),
    };
    let requests_per_invocation = per(total.count as f64) / invocations.values().sum::<f64>();
    let mut lambda_local = 0.0;
    let mut lambda_aws = 0.0;
    for (function, n) in &invocations {
        let measured = billed
            .get(function)
            .copied()
            .unwrap_or(Duration::from_millis(10));
        let ms = (measured.as_secs_f64() * 1e3).ceil();
        let in_aws = ms + requests_per_invocation * AWS_REQUEST.as_secs_f64() * 1e3;
        lambda_local += n * ms / 1e3 * MEMORY_GB * price::LAMBDA_GB_S;
        lambda_aws += n * in_aws.ceil() / 1e3 * MEMORY_GB * price::LAMBDA_GB_S;
    }
    let requests = invocations.values().sum::<f64>() * price::LAMBDA_REQUEST;
    let dynamodb = per(total.read_units as f64) * price::DYNAMODB_RRU
        + per(total.write_units as f64) * price::DYNAMODB_WRU;
    let eventbridge = per(total.events as f64) * price::EVENTBRIDGE_EVENT;
    let pushdeploy = requests + lambda_aws + dynamodb + eventbridge;
    // A pipeline with a source action and a deploy action that waits for the rollout.
    let codepipeline = (1.0 + ROLLOUT_MINUTES) * price::CODEPIPELINE_ACTION_MINUTE;
    // A workflow job that sends the command, waits for it and runs the smoke tests.
    let github = ROLLOUT_MINUTES * price::GITHUB_LINUX_2_CORE_MINUTE;
    println!();
    println!("| | per deployment (USD) |");
    println!("|---|---:|");
    println!("| Lambda requests | {requests:.8} |");
    println!(
        "| Lambda duration, 128 MB arm64: {lambda_local:.8} for {measured_how} alone; with {} ms more for each AWS request it waits on | {lambda_aws:.8} |",
        AWS_REQUEST.as_millis()
    );
    println!("| DynamoDB on demand | {dynamodb:.8} |");
    println!("| EventBridge custom events | {eventbridge:.8} |");
    println!("| **pushdeploy** | **{pushdeploy:.8}** |");
    println!(
        "| CodePipeline V2: source + deploy action, {ROLLOUT_MINUTES} min rollout | {codepipeline:.6} ({:.0}×) |",
        codepipeline / pushdeploy
    );
    println!(
        "| GitHub Actions: Linux 2-core job, {ROLLOUT_MINUTES} min rollout | {github:.6} ({:.0}×) |",
        github / pushdeploy
    );
    println!();
    println!(
        "Prices: US East (N. Virginia) list prices of 2026-12-03 — Lambda arm64 ${}/GB-s and \
         $0.20 per million requests, DynamoDB on demand $0.625 per million write and $0.125 per \
         million read request units, EventBridge $1.00 per million custom events, CodePipeline \
         V2 ${} per action minute, GitHub Actions ${} per Linux 2-core minute. SSM Run Command, \
         Parameter Store standard parameters and ECR API calls are not charged.",
        price::LAMBDA_GB_S,
        price::CODEPIPELINE_ACTION_MINUTE,
        price::GITHUB_LINUX_2_CORE_MINUTE
    );
    Ok(())
}
