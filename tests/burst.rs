//! A burst of pushes, as a CI pipeline of a monorepo makes them: 1,000 ECR push events within
//! 10 seconds across 10 apps × 2 environments, 10 % of them delivered twice and 10 % out of
//! order, delivered concurrently (up to 32 invocations in flight) to the real entrypoints with
//! the real adapters on a moto that applies each request atomically (`support/burst.rs` says
//! how the world around them is played).
//!
//! At the end, as a user would see it: every environment runs (and `status` says) the newest
//! digest pushed for its app; no (environment, digest) had two Run Commands; no lease is held
//! and nothing is queued; no event is left undelivered; nothing reached the dead-letter path.
//! The inputs come from a seed, printed; `PUSHDEPLOY_BURST_SEED=<seed>` replays them.

use std::time::Duration;

use pushdeploy_tests::burst::{self, Plan, spread};

#[tokio::test]
async fn a_burst_of_pushes_ends_with_every_environment_on_its_newest_digest_and_nothing_twice() {
    let seed = std::env::var("PUSHDEPLOY_BURST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("burst seed {seed} (PUSHDEPLOY_BURST_SEED={seed} replays these inputs)");
    let plan = Plan {
        apps: 10,
        pushes: 1000,
        window: Duration::from_secs(10),
        in_flight: 32,
        unhealthy_one_in: 0,
        disorder: true,
        seed,
        settle_within: Duration::from_secs(60),
        reconcile_every: Some(Duration::from_secs(2)),
    };
    let report = burst::run(&plan)
        .await
        .expect("an atomic moto with the resources of template.yaml starts");
    println!(
        "burst: {} pushes ({} delivered out of order, {} delivered twice) to {} apps × 2 \
         environments, {} deliveries in {:.1} s; settled after {:.1} s",
        plan.pushes,
        report.swapped,
        report.twice,
        plan.apps,
        report.deliveries,
        report.emitted.as_secs_f64(),
        report.settled.as_secs_f64()
    );
    println!(
        "burst: invocations {:?}, at most {} in flight, {} retried after an error; {} Run \
         Commands sent; {} AWS requests, {} conditional writes refused",
        report.invocations,
        report.most_in_flight,
        report.retried,
        report.run_commands,
        report.requests_total(),
        report.refused_writes()
    );
    println!(
        "burst: push delivered → Run Command sent: {} when the environment was free, {} \
         after waiting in the queue",
        spread(&report.started_at_once),
        spread(&report.started_from_queue)
    );
    println!(
        "burst: what the deployer answered the pushes, per environment: {:?}",
        report.outcomes
    );
    println!("burst: what failed invocations said: {:?}", report.errors);
    assert!(
        report.most_in_flight >= 20,
        "seed {seed}: the burst never had 20 invocations in flight"
    );
    assert!(
        report.broken.is_empty(),
        "seed {seed} (PUSHDEPLOY_BURST_SEED={seed} replays the inputs):\n{}",
        report.broken.join("\n")
    );
}
