//! `pushdeploy-local`: pushdeploy on this machine, with no AWS account — `demo` tells the
//! story of a rollout, a failed smoke test and a rollback on real containers; `up` keeps a
//! stack running to try things by hand.

use std::process::ExitCode;

use pushdeploy_local::app::{Behaviour, SampleApp};
use pushdeploy_local::lambdas::BUILD_COMMAND;
use pushdeploy_local::stack::{Stack, StackOptions};
use pushdeploy_local::{demo, signals};

const USAGE: &str = "usage: pushdeploy-local <command>

commands:
  demo   start a local stack, push v1 (rolled out and verified) and v2 (rolled out, fails its
         smoke test, rolled back), print the timeline and a verdict; exit 0 only if the story
         happened exactly so. Everything started is stopped at the end.
  up     start a local stack with the sample app configured and its images v1 and v2 in the
         registry (not deployed), print endpoints and example commands, run until Ctrl-C.

The function binaries must be built first: `BUILD`.
Environment: PUSHDEPLOY_TEMPLATE (default template.yaml), PUSHDEPLOY_BIN_DIR (default
target/debug), PUSHDEPLOY_LOCAL_RECONCILE_SECONDS (default: the template's schedule),
PUSHDEPLOY_LOCAL_INSTANCES (execution environments per function, default 2).";

fn main() -> ExitCode {
    let interrupted = signals::take_interrupts();
    let command = std::env::args().nth(1).unwrap_or_default();
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
                "up" => up_command(interrupted.clone()).await,
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
        tokio::select! {
            result = work => match result {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("pushdeploy-local: {e:#}");
                    ExitCode::FAILURE
                }
            },
            _ = interrupted.notified() => ExitCode::from(130),
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

async fn up_command(interrupted: std::sync::Arc<tokio::sync::Notify>) -> anyhow::Result<ExitCode> {
    let app = SampleApp::new()?;
    let mut options = StackOptions::from_env().for_app(&app);
    options.print_timeline = true;
    println!("starting the local stack…");
    let stack = Stack::start(options).await?;
    stack
        .put_config(&app.config(&stack.registry.host()))
        .await?;
    for (label, behaviour) in [("v1", Behaviour::Good), ("v2", Behaviour::FailsSmokeTest)] {
        let image = stack
            .build(&app.repository, &app.version(label, behaviour))
            .await?;
        stack.upload(&image, &app.repository, label).await?;
    }
    println!("\n{}", stack.describe(&app));
    println!(
        "v1 and v2 are in the registry and in ECR; deploy one by hand with the deployer command above.\n\
         Press Ctrl-C to stop everything.\n"
    );
    interrupted.notified().await;
    drop(stack);
    Ok(ExitCode::SUCCESS)
}
