//! Every phase, past its lease. For every lifecycle phase a deployment can be in (and the
//! variants that wait on something else: aborted in each phase an abort can stop, an image
//! queued behind it, an image waiting for its scan, a rollback in each of its phases), a
//! scenario is driven until a deployment reaches it; at that commit the function that made
//! it stops, and from then on everything downstream is unavailable: every function but the
//! reconcile schedule fails, targets finish nothing and their events are lost, and, by
//! column, the target is also unreachable, or has forgotten the rollout, or the event bus
//! refuses every publish. With the clock past every lease limit, the deployment must have
//! ended with a reason and its environment be free. The suite prints the phase × outage
//! table it covered and fails on a phase no situation reached, so a new phase cannot go
//! unexamined.

use std::collections::BTreeSet;

use serde_json::json;

use super::{Outage, Scenario, Sim, Stimulus, When, config, watched};
use crate::domain::lifecycle::{Kind, Outcome, Phase, Step, transition};
use crate::domain::{Deployment, DeploymentId, EnvState, EventType};
use crate::entrypoints::Function;
use crate::ports::StateStore;

/// What a situation follows once reached.
#[derive(Debug, Clone, PartialEq)]
enum Subject {
    Deployment(DeploymentId),
    /// The image staging holds until its scan result is known.
    AwaitingScan,
}

/// A state to reach, and what to follow from there.
struct Situation {
    name: &'static str,
    /// The phase the followed deployment is in when reached (none for a scan wait).
    phase: Option<Phase>,
    /// For an aborted deployment: the phase the abort stopped.
    aborted_in: Option<Phase>,
    scenario: Scenario,
    reached: fn(&EnvState, &[Deployment]) -> Option<Subject>,
}

/// The outages, by column.
fn outages() -> Vec<(&'static str, Outage)> {
    let functions_down = Outage {
        down: [
            Function::Deployer,
            Function::Tracker,
            Function::Verifier,
            Function::Rollback,
            Function::Control,
        ]
        .into(),
        ..Outage::default()
    };
    let target_calls: BTreeSet<&'static str> = [
        "Target::start",
        "Target::status",
        "Target::find",
        "Target::cancel",
        "Target::platform",
    ]
    .into();
    vec![
        ("functions down", functions_down.clone()),
        (
            "+ target unreachable",
            Outage {
                failing: target_calls
                    .iter()
                    .copied()
                    .chain(["ImageRegistry::scan", "ImageRegistry::platforms"])
                    .collect(),
                ..functions_down.clone()
            },
        ),
        (
            "+ rollout forgotten",
            Outage {
                forget: true,
                ..functions_down.clone()
            },
        ),
        (
            "+ bus down",
            Outage {
                failing: ["EventPublisher::publish"].into(),
                ..functions_down
            },
        ),
    ]
}

/// The deployment of `hex` (the newest, when there are several) in one of `phases`.
fn of(
    hex: char,
    deployments: &[Deployment],
    wanted: impl Fn(&Deployment) -> bool,
) -> Option<Subject> {
    deployments
        .iter()
        .rev()
        .find(|d| {
            d.image
                .digest
                .as_str()
                .ends_with(&hex.to_string().repeat(8))
                && wanted(d)
        })
        .map(|d| Subject::Deployment(d.id.clone()))
}

/// The phase an aborted deployment was in when the abort stopped it.
fn stopped_in(d: &Deployment) -> Option<Phase> {
    d.aborted.as_ref()?;
    d.history
        .iter()
        .rev()
        .map(|h| h.phase)
        .find(|p| *p != Phase::Failed)
}

fn abort() -> Stimulus {
    Stimulus::Console(
        Function::Control,
        json!({ "action": "abort", "app": "web", "environment": "staging",
                "reason": "wrong build", "by": "alice" }),
    )
}

fn situations() -> Vec<Situation> {
    use Stimulus::{HoldBack, Push, RefuseNextStart};
    use When::{AtOnce, Settled};
    // `a` is verified first, so that a failure has something to roll back to; then `b`.
    let then_b = |name: &'static str, healthy: &'static [char]| {
        Scenario::ssm(
            name,
            healthy,
            vec![(Settled, Push('a', "v1")), (Settled, Push('b', "v2"))],
            Vec::new(),
        )
    };
    let push_phase = |name: &'static str, phase: Phase, healthy: &'static [char]| Situation {
        name,
        phase: Some(phase),
        aborted_in: None,
        scenario: then_b(name, healthy),
        reached: match phase {
            Phase::Requested => |_, d| of('b', d, |d| d.phase == Phase::Requested),
            Phase::RollingOut => |_, d| of('b', d, |d| d.phase == Phase::RollingOut),
            Phase::RolledOut => |_, d| of('b', d, |d| d.phase == Phase::RolledOut),
            Phase::Verifying => |_, d| {
                of('b', d, |d| {
                    d.phase == Phase::Verifying && d.watch_until.is_none()
                })
            },
            Phase::Verified => |_, d| of('b', d, |d| d.phase == Phase::Verified),
            Phase::Failed => |_, d| of('b', d, |d| d.phase == Phase::Failed),
            Phase::RollingBack => |_, d| of('b', d, |d| d.phase == Phase::RollingBack),
            Phase::RolledBack => |_, d| of('b', d, |d| d.phase == Phase::RolledBack),
            Phase::RollbackFailed => |_, d| of('b', d, |d| d.phase == Phase::RollbackFailed),
        },
    };
    let rollback_phase = |name: &'static str, phase: Phase| Situation {
        name,
        phase: Some(phase),
        aborted_in: None,
        scenario: then_b(name, &['a']),
        reached: match phase {
            Phase::Requested => |_, d| {
                of('a', d, |d| {
                    d.kind == Kind::Rollback && d.phase == Phase::Requested
                })
            },
            Phase::RollingOut => |_, d| {
                of('a', d, |d| {
                    d.kind == Kind::Rollback && d.phase == Phase::RollingOut
                })
            },
            Phase::RolledOut => |_, d| {
                of('a', d, |d| {
                    d.kind == Kind::Rollback && d.phase == Phase::RolledOut
                })
            },
            _ => |_, d| {
                of('a', d, |d| {
                    d.kind == Kind::Rollback && d.phase == Phase::Verifying
                })
            },
        },
    };
    let aborted = |name: &'static str, phase: Phase, config: String, stimuli| Situation {
        name,
        phase: Some(Phase::Failed),
        aborted_in: Some(phase),
        scenario: Scenario {
            config,
            ..Scenario::ssm(name, &['a', 'b'], stimuli, Vec::new())
        },
        reached: match phase {
            Phase::Requested => |_, d| of('b', d, |d| stopped_in(d) == Some(Phase::Requested)),
            Phase::RollingOut => |_, d| of('b', d, |d| stopped_in(d) == Some(Phase::RollingOut)),
            Phase::RolledOut => |_, d| of('b', d, |d| stopped_in(d) == Some(Phase::RolledOut)),
            _ => |_, d| of('b', d, |d| stopped_in(d) == Some(Phase::Verifying)),
        },
    };
    vec![
        push_phase("a push: Requested", Phase::Requested, &['a', 'b']),
        push_phase("a push: RollingOut", Phase::RollingOut, &['a', 'b']),
        push_phase("a push: RolledOut", Phase::RolledOut, &['a', 'b']),
        push_phase(
            "a push: Verifying (smoke tests)",
            Phase::Verifying,
            &['a', 'b'],
        ),
        Situation {
            name: "a push: Verifying (alarm watch)",
            phase: Some(Phase::Verifying),
            aborted_in: None,
            scenario: Scenario {
                config: watched(),
                ..then_b("a push: Verifying (alarm watch)", &['a', 'b'])
            },
            reached: |_, d| {
                of('b', d, |d| {
                    d.phase == Phase::Verifying && d.watch_until.is_some()
                })
            },
        },
        push_phase("a push: Verified", Phase::Verified, &['a', 'b']),
        push_phase("a push: Failed, before its rollback", Phase::Failed, &['a']),
        push_phase("a push: RollingBack", Phase::RollingBack, &['a']),
        push_phase("a push: RolledBack", Phase::RolledBack, &['a']),
        {
            let mut s = push_phase("a push: RollbackFailed", Phase::RollbackFailed, &['a']);
            s.scenario.rollbacks_fail = true;
            s
        },
        rollback_phase("its rollback: Requested", Phase::Requested),
        rollback_phase("its rollback: RollingOut", Phase::RollingOut),
        rollback_phase("its rollback: RolledOut", Phase::RolledOut),
        rollback_phase("its rollback: Verifying", Phase::Verifying),
        aborted(
            "aborted while Requested",
            Phase::Requested,
            config(super::SSM),
            vec![
                (Settled, Push('a', "v1")),
                (Settled, RefuseNextStart),
                (AtOnce, Push('b', "v2")),
                (AtOnce, abort()),
            ],
        ),
        aborted(
            "aborted while RollingOut",
            Phase::RollingOut,
            config(super::SSM),
            vec![
                (Settled, Push('a', "v1")),
                (Settled, Push('b', "v2")),
                (AtOnce, abort()),
            ],
        ),
        aborted(
            "aborted while RolledOut",
            Phase::RolledOut,
            config(super::SSM),
            vec![
                (Settled, Push('a', "v1")),
                (Settled, HoldBack(EventType::RolloutSucceeded)),
                (AtOnce, HoldBack(EventType::VerificationDue)),
                (AtOnce, Push('b', "v2")),
                (Settled, abort()),
            ],
        ),
        aborted(
            "aborted while Verifying (alarm watch)",
            Phase::Verifying,
            watched(),
            vec![
                (Settled, Push('a', "v1")),
                (Settled, HoldBack(EventType::VerificationDue)),
                (AtOnce, Push('b', "v2")),
                (Settled, abort()),
            ],
        ),
        Situation {
            name: "an image queued behind a rollout",
            phase: Some(Phase::RollingOut),
            aborted_in: None,
            scenario: Scenario::ssm(
                "queued",
                &['a', 'b', 'c'],
                vec![
                    (Settled, Push('a', "v1")),
                    (Settled, Push('b', "v2")),
                    (AtOnce, Push('c', "v3")),
                ],
                Vec::new(),
            ),
            reached: |state, d| {
                state.queued.as_ref()?;
                of('b', d, |d| d.phase == Phase::RollingOut)
            },
        },
        Situation {
            name: "an image waiting for its scan",
            phase: None,
            aborted_in: None,
            scenario: Scenario {
                config: super::scanned(),
                ..Scenario::ssm(
                    "waiting for its scan",
                    &['a', 'b'],
                    vec![
                        (Settled, Stimulus::Scan('a', 0)),
                        (Settled, Push('a', "v1")),
                        (Settled, Push('b', "v2")),
                    ],
                    Vec::new(),
                )
            },
            reached: |state, _| state.awaiting_scan.as_ref().map(|_| Subject::AwaitingScan),
        },
    ]
}

/// How one situation went under one outage.
enum Verdict {
    /// Never reached: the situation's scenario does not get there.
    NotReached,
    /// Reached, and past every lease limit it had ended with a reason.
    Ended,
    /// Reached, and what was wrong at the end.
    Broken(Vec<String>),
}

async fn run(situation: &Situation, outage: &Outage) -> Verdict {
    let mut sim = Sim::new(&situation.scenario, None);
    let store = sim.store.clone();
    let reached = situation.reached;
    let followed = std::sync::Arc::new(std::sync::Mutex::new(None));
    let found = followed.clone();
    *sim.faults.trip.lock().unwrap() = Some(Box::new(move || {
        let app = super::web();
        let env = crate::domain::EnvName::parse("staging").unwrap();
        let state = futures::executor::block_on(store.env_state(&app, &env)).unwrap();
        match reached(&state, &store.deployments(&app, &env)) {
            Some(subject) => {
                *found.lock().unwrap() = Some(subject);
                true
            }
            None => false,
        }
    }));
    sim.outage = Some(outage.clone());
    sim.run().await;
    let Some(subject) = followed.lock().unwrap().clone() else {
        return Verdict::NotReached;
    };
    let state = sim.state("staging").await;
    let deployments = sim.deployments("staging");
    let mut broken = Vec::new();
    match subject {
        Subject::AwaitingScan => {
            if let Some(waiting) = &state.awaiting_scan {
                broken.push(format!(
                    "{} still waits for its scan",
                    waiting.request.image.digest
                ));
            }
        }
        Subject::Deployment(id) => {
            let d = deployments.iter().find(|d| d.id == id).unwrap();
            if state.is_held_by(&id) {
                broken.push(format!(
                    "deployment {id} ({:?}) still holds staging",
                    d.phase
                ));
            }
            if !matches!(
                d.phase,
                Phase::Failed | Phase::Verified | Phase::RolledBack | Phase::RollbackFailed
            ) {
                broken.push(format!("deployment {id} is still {:?}", d.phase));
            }
            if d.phase != Phase::Verified && d.reason.is_none() {
                broken.push(format!(
                    "deployment {id} ended {:?} without a reason",
                    d.phase
                ));
            }
            // A rollback that ended takes the deployment it replaced to its end too.
            if let Some(original) = d
                .rollback_of
                .as_ref()
                .and_then(|o| deployments.iter().find(|x| &x.id == o))
                && original.phase == Phase::RollingBack
                && !state.is_held_by(&id)
            {
                broken.push(format!(
                    "deployment {} is still RollingBack after its rollback {id} ended",
                    original.id
                ));
            }
        }
    }
    // An image queued behind is started or still waits: never dropped unsaid.
    if situation.name.contains("queued") {
        let c = sim.image('c');
        let kept = state.queued.as_ref().is_some_and(|q| q.image.digest == c)
            || deployments.iter().any(|d| d.image.digest == c);
        if !kept {
            broken.push(format!("the queued image {c} was dropped"));
        }
    }
    if broken.is_empty() {
        Verdict::Ended
    } else {
        Verdict::Broken(broken)
    }
}

#[tokio::test(start_paused = true)]
async fn past_its_lease_every_phase_ends_with_a_reason_whatever_is_unavailable() {
    let outages = outages();
    let situations = situations();
    let mut table = vec![format!(
        "{:<40} {}",
        "phases × outages",
        outages
            .iter()
            .map(|(name, _)| format!("{name:<22}"))
            .collect::<String>()
    )];
    let mut failures = Vec::new();
    let mut reached_everywhere = 0;
    for situation in &situations {
        let mut row = format!("{:<40} ", situation.name);
        let mut everywhere = true;
        for (outage_name, outage) in &outages {
            let cell = match run(situation, outage).await {
                Verdict::Ended => "ended, freed",
                Verdict::NotReached => {
                    everywhere = false;
                    failures.push(format!(
                        "{} was never reached ({outage_name})",
                        situation.name
                    ));
                    "NOT REACHED"
                }
                Verdict::Broken(why) => {
                    failures.push(format!(
                        "{} ({outage_name}): {}",
                        situation.name,
                        why.join("; ")
                    ));
                    "BROKEN"
                }
            };
            row.push_str(&format!("{cell:<22}"));
        }
        reached_everywhere += usize::from(everywhere);
        table.push(row);
    }
    // Every phase the lifecycle has, and every phase an abort can stop, is a situation here.
    for phase in Phase::ALL {
        if !situations.iter().any(|s| s.phase == Some(phase)) {
            failures.push(format!("no situation reaches the phase {phase:?}"));
        }
        let abortable = matches!(transition(phase, Step::Aborted), Ok(Outcome::Changed(_)));
        if abortable && !situations.iter().any(|s| s.aborted_in == Some(phase)) {
            failures.push(format!("no situation aborts a deployment while {phase:?}"));
        }
    }
    println!("{}", table.join("\n"));
    println!(
        "phases: {reached_everywhere} of {} reached under every fault ({} phases, {} aborted, a queued image, a scan wait; {} runs), {}",
        situations.len(),
        Phase::ALL.len(),
        situations.iter().filter(|s| s.aborted_in.is_some()).count(),
        situations.len() * outages.len(),
        if failures.is_empty() {
            "every one ended with a reason and freed its environment".to_owned()
        } else {
            format!("{} failed", failures.len())
        }
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
