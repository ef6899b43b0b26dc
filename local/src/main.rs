//! `pushdeploy-local`: pushdeploy on this machine, with no AWS account — `demo` tells the
//! story of a rollout, a failed smoke test and a rollback on real containers; `up` keeps a
//! stack running to try things by hand, and `push` pushes to it from another terminal.

use std::process::ExitCode;

use pushdeploy_local::lambdas::BUILD_COMMAND;
use pushdeploy_local::{demo, signals, up};

const USAGE: &str = "usage: pushdeploy-local <command>

commands:
  demo   start a local stack, push v1 (rolled out and verified) and v2 (rolled out, fails its
         smoke test, rolled back), print the timeline and a verdict; exit 0 only if the story
         happened exactly so. Everything started is stopped at the end.
  up [--config FILE]
         start a local stack with the sample app configured (or FILE, merged with what only
         the local stack knows) and the sample's images v1 and v2 in the registry (not
         deployed); print the configuration, endpoints and commands to try; run until Ctrl-C.
         The logs are kept after it stops.
  push TAG [--fails-smoke-test | --unhealthy | --from IMAGE] [--repository REPO]
         with `up` running: build version TAG of the sample app (or take IMAGE from podman's
         storage), upload it to the local registry, record it in ECR and publish the push
         event, as a CI job's push does.

The function binaries must be built first: `BUILD`.
Environment: PUSHDEPLOY_TEMPLATE (default template.yaml), PUSHDEPLOY_BIN_DIR (default
target/debug), PUSHDEPLOY_LOCAL_RECONCILE_SECONDS (default: the template's schedule),
PUSHDEPLOY_LOCAL_INSTANCES (execution environments per function, default 2).";

fn main() -> ExitCode {
    let interrupted = signals::take_interrupts();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = args.first().cloned().unwrap_or_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pushdeploy-local: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let usage = USAGE.replace("BUILD", BUILD_COMMAND);
    runtime.block_on(async move {
        let work = async {
            match command.as_str() {
                "demo" => demo_command().await,
                "up" => up::command(&args[1..], interrupted.clone()).await,
                "push" => up::push_command(&args[1..]).await,
                "help" | "--help" | "-h" => {
                    println!("{usage}");
                    Ok(ExitCode::SUCCESS)
                }
                other => {
                    eprintln!("pushdeploy-local: unknown command {other:?}\n\n{usage}");
                    Ok(ExitCode::from(2))
                }
            }
        };
        // `up` waits for the interrupt itself, to stop in order and say where its logs are.
        let handles_interrupts = command == "up";
        tokio::select! {
            result = work => match result {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("pushdeploy-local: {e:#}");
                    ExitCode::FAILURE
                }
            },
            _ = interrupted.notified(), if !handles_interrupts => ExitCode::from(130),
        }
    })
}

async fn demo_command() -> anyhow::Result<ExitCode> {
    let verdict = demo::run().await?;
    println!();
    if verdict.problems.is_empty() {
        println!(
            "verdict: PASS — v1 verified; v2 rolled out, failed its smoke test and was rolled back to v1; v1 answers again ({:.1}s)",
            verdict.elapsed.as_secs_f64()
        );
        Ok(ExitCode::SUCCESS)
    } else {
        println!("verdict: FAIL ({:.1}s)", verdict.elapsed.as_secs_f64());
        for p in &verdict.problems {
            println!("  - {p}");
        }
        Ok(ExitCode::FAILURE)
    }
}
