//! The seams the fault suite and the interleavings once missed, one test each, through the
//! functions' real entrypoints: two copies of one function at once, a phase past its lease,
//! a decision made while another was on its way, a digest the janitor did not know was
//! needed. Each was a broken promise before it was a test.

use super::{Scenario, Sim, Stimulus};
use crate::entrypoints::Function;
use crate::ports::{CallError, TargetError};

/// The fault-injection scenario of this name.
fn scenario(name: &str) -> Scenario {
    super::scenarios()
        .into_iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no scenario {name:?}"))
}

/// Runs the whole scenario, which must keep every promise.
async fn runs_right(sim: &mut Sim<'_>) {
    sim.run().await;
    let broken = sim.broken().await;
    assert!(broken.is_empty(), "{broken:?}");
}

fn throttled() -> TargetError {
    TargetError::Throttled(CallError::said(
        "SendCommand",
        "ThrottlingException: Rate exceeded",
    ))
}

/// A start throttled once leaves its deployment due at once; a reconcile pass and Lambda's
/// retry of the one before it (or the next scheduled pass) find it due together. Only one
/// may send it: on ECS a second `UpdateService` replaces the first deployment, on SSM two
/// scripts race on one container.
#[tokio::test(start_paused = true)]
async fn two_reconcile_passes_at_once_send_a_throttled_rollout_to_its_target_once() {
    let scenario = Scenario::ssm("throttled once", &['a'], Vec::new(), Vec::new());
    let mut sim = Sim::new(&scenario, None);
    sim.target.refuse_next(throttled());
    sim.stimulate(Stimulus::Push('a', "v1")).await;
    sim.drain().await;
    assert!(sim.target.started().is_empty(), "the start was refused");
    let passes = vec![
        (Function::Tracker, sim.schedule()),
        (Function::Tracker, sim.schedule()),
    ];
    let answers = sim.in_step(passes).await;
    assert!(answers.iter().all(Result::is_ok), "{answers:?}");
    let started = sim.target.started();
    assert_eq!(
        started.len(),
        1,
        "one action for one deployment: {started:?}"
    );
    sim.settle().await;
    let broken = sim.broken().await;
    assert!(broken.is_empty(), "{broken:?}");
}

/// A deployment whose verifier never took it (a VPC without a route to DynamoDB, reserved
/// concurrency 0) ends once it has held its environment past the lease limit, however long
/// that takes: the environment is free again and says why.
#[tokio::test(start_paused = true)]
async fn a_rollout_the_verifier_never_takes_ends_past_the_lease_limit_and_frees_the_environment() {
    let scenario = Scenario::ssm("verifier down", &['a'], Vec::new(), Vec::new());
    let mut sim = Sim::new(&scenario, None);
    sim.down.insert(Function::Verifier);
    sim.stimulate(Stimulus::Push('a', "v1")).await;
    sim.settle().await;
    sim.clock.advance(std::time::Duration::from_secs(4 * 3600));
    sim.settle().await;
    let state = sim.state("staging").await;
    assert!(state.lease.is_none(), "still held: {:?}", state.lease);
    let dep = &sim.deployments("staging")[0];
    assert_eq!(dep.phase, crate::domain::Phase::Failed);
    assert!(
        dep.reason
            .as_deref()
            .is_some_and(|r| r.contains("held the environment for over")),
        "{:?}",
        dep.reason
    );
}

/// An aborted rollout whose cancel keeps being refused for now (throttled, the service
/// unreachable) holds its environment no longer than any deployment may.
#[tokio::test(start_paused = true)]
async fn an_aborted_rollout_that_cannot_be_cancelled_frees_its_environment_past_the_lease_limit() {
    let scenario = Scenario::ssm("cancel refused", &['a', 'b'], Vec::new(), Vec::new());
    let mut sim = Sim::new(&scenario, None);
    sim.stimulate(Stimulus::Push('a', "v1")).await;
    sim.settle().await;
    sim.stalled = true;
    sim.stimulate(Stimulus::Push('b', "v2")).await;
    sim.drain().await;
    sim.faults
        .failing
        .lock()
        .unwrap()
        .extend(["Target::cancel", "Target::status", "Target::find"]);
    sim.stimulate(Stimulus::Console(
        Function::Control,
        serde_json::json!({ "action": "abort", "app": "web", "environment": "staging",
                            "reason": "wrong build", "by": "alice" }),
    ))
    .await;
    sim.settle().await;
    let aborted = sim.deployments("staging").pop().unwrap();
    assert!(aborted.aborted.is_some());
    assert!(
        sim.state("staging").await.is_held_by(&aborted.id),
        "held while the cancel is tried again"
    );
    sim.clock.advance(std::time::Duration::from_secs(4 * 3600));
    sim.settle().await;
    let state = sim.state("staging").await;
    assert!(state.lease.is_none(), "still held: {:?}", state.lease);
    let aborted = sim.deployments("staging").pop().unwrap();
    assert!(
        aborted
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("held the environment for over")),
        "{:?}",
        aborted.reason
    );
}

/// A person approves v1 for production; before the deployer hears of it, staging verifies
/// v2, whose own approval is requested. The approval is a decision, not a wish: v1 deploys,
/// and v2 waits for its own.
#[tokio::test(start_paused = true)]
async fn an_approval_overtaken_by_a_newer_verification_still_deploys_what_was_approved() {
    let scenario = scenario("a newer verification between an approval and its delivery");
    let mut sim = Sim::new(&scenario, None);
    runs_right(&mut sim).await;
    let production = sim.state("production").await;
    assert_eq!(
        production.current.map(|c| c.digest),
        Some(sim.image('a')),
        "what was approved runs"
    );
    assert_eq!(
        production.pending.map(|p| p.digest().clone()),
        Some(sim.image('c')),
        "the newer digest waits for its own approval"
    );
}

/// An image waits for its vulnerability scan (up to a day) while newer images are pushed;
/// the janitor, keeping only the newest, must keep it too: when the scan clears it, it
/// deploys, and its pull must find it.
#[tokio::test(start_paused = true)]
async fn the_janitor_keeps_an_image_waiting_for_its_scan_however_many_are_pushed_after_it() {
    let scenario = scenario("a push waiting for its scan outlives newer pushes and the janitor");
    let mut sim = Sim::new(&scenario, None);
    runs_right(&mut sim).await;
    assert!(
        sim.registry.exists("acme/web", &sim.image('c')),
        "the image that waited is in the registry"
    );
    assert!(
        !sim.registry.exists("acme/web", &sim.image('e')),
        "an image nothing needs is deleted all the same"
    );
}
