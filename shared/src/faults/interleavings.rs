//! Invocations at the same time. EventBridge invokes a function once per event, at once, as
//! many copies as events arrive; a person types in the console while a rollout runs. Each
//! run here starts from a seed: it makes a sequence of waves of stimuli (pushes, some
//! delivered twice and out of order, status events as targets finish, reconciles,
//! approvals, deploys and rollbacks by hand, aborts), delivers every wave's invocations
//! concurrently, and interleaves them at their port calls: before each call an invocation
//! gives way a seeded number of times, and a seeded scheduler picks which invocation runs
//! next. Then everything settles, a last healthy push is made, and the end state must keep
//! the promises the fault suite checks (`Sim::broken`), with staging on that last push and
//! production promoted only ever to a digest staging verified. A failure prints its seed;
//! `PUSHDEPLOY_INTERLEAVING=<seed>` replays that run alone with a trace of every wave.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use serde_json::{Value, json};

use super::{ATTEMPTS, Delivery, Pace, Rng, Scenario, Sim, Stimulus, config};
use crate::domain::{AppName, EnvName, Kind, Phase};
use crate::entrypoints::Function;
use crate::ports::StateStore;

/// How many seeded runs `make test` makes (`PUSHDEPLOY_INTERLEAVING_RUNS` for more).
const RUNS: u64 = 300;
/// Digests a run pushes; `b` fails its smoke tests, the others pass.
const DIGESTS: [char; 5] = ['a', 'b', 'c', 'd', 'e'];
const HEALTHY: &[char] = &['a', 'c', 'd', 'e', 'f'];
const TAGS: [&str; 16] = [
    "v1", "v2", "v3", "v4", "v5", "v6", "v7", "v8", "v9", "v10", "v11", "v12", "v13", "v14", "v15",
    "v16",
];

/// Woken: the scheduler may poll its invocation again.
struct Flag {
    set: AtomicBool,
    /// The scheduler, waiting for some invocation to be woken.
    parent: Mutex<Option<Waker>>,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.set.store(true, Ordering::SeqCst);
        if let Some(parent) = self.parent.lock().unwrap().take() {
            parent.wake();
        }
    }
}

type Invocation<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// Runs `calls` at once, polling one invocation at a time, picked by `rng` among those
/// that can go on; when all wait on timers, lets (paused) time pass. Their answers, in order.
async fn interleave<T>(mut calls: Vec<Invocation<'_, T>>, rng: &mut Rng) -> Vec<T> {
    let flags: Vec<Arc<Flag>> = calls
        .iter()
        .map(|_| {
            Arc::new(Flag {
                set: AtomicBool::new(true),
                parent: Mutex::new(None),
            })
        })
        .collect();
    let mut answers: Vec<Option<T>> = calls.iter().map(|_| None).collect();
    loop {
        let waiting: Vec<usize> = (0..calls.len()).filter(|i| answers[*i].is_none()).collect();
        if waiting.is_empty() {
            break;
        }
        let ready: Vec<usize> = waiting
            .iter()
            .copied()
            .filter(|i| flags[*i].set.load(Ordering::SeqCst))
            .collect();
        if ready.is_empty() {
            std::future::poll_fn(|cx| {
                for i in &waiting {
                    *flags[*i].parent.lock().unwrap() = Some(cx.waker().clone());
                }
                if waiting.iter().any(|i| flags[*i].set.load(Ordering::SeqCst)) {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            })
            .await;
            continue;
        }
        let i = ready[rng.below(ready.len())];
        flags[i].set.store(false, Ordering::SeqCst);
        let waker = Waker::from(flags[i].clone());
        if let Poll::Ready(answer) = calls[i].as_mut().poll(&mut Context::from_waker(&waker)) {
            answers[i] = Some(answer);
        }
    }
    answers.into_iter().flatten().collect()
}

/// `PUSHDEPLOY_INTERLEAVING=<seed>` replays one run.
fn replay() -> Option<u64> {
    std::env::var("PUSHDEPLOY_INTERLEAVING").ok()?.parse().ok()
}

struct Run<'a> {
    sim: Sim<'a>,
    rng: Rng,
    trace: bool,
    /// Digests pushed so far, with their tags.
    pushed: Vec<(char, &'static str)>,
    /// What people were told when the console refused them.
    refused: Vec<String>,
    most_at_once: usize,
    /// Whether two copies of one function ran at once on the same input: two reconcile
    /// passes, one event delivered twice, a request asked twice.
    copies: bool,
}

impl Run<'_> {
    fn say(&self, what: impl FnOnce() -> String) {
        if self.trace {
            println!("{}", what());
        }
    }

    fn web() -> AppName {
        AppName::parse("web").unwrap()
    }

    /// One stimulus, picked by the seed.
    async fn stimulus(&mut self) {
        let digest =
            |run: &mut Self| format!("sha256:{}", run.pick_pushed().to_string().repeat(64));
        let env = |run: &mut Self| ["staging", "production"][run.rng.below(2)];
        let stimulus = match self.rng.below(11) {
            0..=4 => {
                let hex = DIGESTS[self.rng.below(DIGESTS.len())];
                let tag = TAGS[self.pushed.len() % TAGS.len()];
                self.pushed.push((hex, tag));
                Stimulus::Push(hex, tag)
            }
            5 => Stimulus::Console(
                Function::Control,
                json!({ "action": "approve", "app": "web", "environment": "production",
                        "digest": digest(self), "by": "alice" }),
            ),
            6 => {
                let tag = self.pushed[self.rng.below(self.pushed.len())].1;
                Stimulus::Console(
                    Function::Deployer,
                    json!({ "app": "web", "environment": env(self), "tag": tag, "requested_by": "alice" }),
                )
            }
            7 => {
                let request = json!({ "app": "web", "environment": env(self), "reason": "error rate up", "requested_by": "alice" });
                // The person asks again (no answer came), while the reconciler runs.
                if self.rng.below(2) == 0 {
                    let again = Stimulus::Console(Function::Rollback, request.clone());
                    self.say(|| format!("  stimulus {again:?} (asked again)"));
                    self.sim.stimulate(again).await;
                    let pass = Stimulus::Console(Function::Tracker, self.sim.schedule());
                    self.sim.stimulate(pass).await;
                }
                Stimulus::Console(Function::Rollback, request)
            }
            8 => Stimulus::Console(
                Function::Control,
                json!({ "action": "abort", "app": "web", "environment": env(self),
                        "reason": "wrong build", "by": "alice" }),
            ),
            9 => {
                // Two reconcile passes at once now and then (a pass outliving the minute).
                if self.rng.below(2) == 0 {
                    let pass = Stimulus::Console(Function::Tracker, self.sim.schedule());
                    self.sim.stimulate(pass).await;
                }
                Stimulus::Console(Function::Tracker, self.sim.schedule())
            }
            _ => Stimulus::Console(Function::Janitor, self.sim.schedule()),
        };
        self.say(|| format!("  stimulus {stimulus:?}"));
        self.sim.stimulate(stimulus).await;
    }

    fn pick_pushed(&mut self) -> char {
        self.pushed[self.rng.below(self.pushed.len())].0
    }

    /// Delivers what waits, a batch at a time, each batch at once; targets finish some of
    /// their rollouts between batches.
    async fn deliver_at_once(&mut self) {
        for _ in 0..200 {
            self.sim.route();
            if self.sim.inbox.is_empty() {
                if self.sim.finish_rollouts_where(|| true) {
                    continue;
                }
                return;
            }
            let mut batch: Vec<Delivery> = self.sim.inbox.drain(..).collect();
            // EventBridge delivers at least once: now and then, the same event twice at once.
            let mut again = Vec::new();
            for d in &batch {
                if d.payload.get("detail-type").is_some() && self.rng.below(8) == 0 {
                    again.push(Delivery {
                        function: d.function,
                        payload: d.payload.clone(),
                        attempt: d.attempt,
                    });
                }
            }
            batch.extend(again);
            // A reconcile pass that failed is retried by Lambda while the next scheduled one
            // starts.
            if batch
                .iter()
                .any(|d| d.function == Function::Tracker && is_schedule(d) && d.attempt > 1)
            {
                batch.push(Delivery {
                    function: Function::Tracker,
                    payload: self.sim.schedule(),
                    attempt: 1,
                });
            }
            self.copies |= two_copies(&batch);
            // ...and in any order.
            for i in (1..batch.len()).rev() {
                batch.swap(i, self.rng.below(i + 1));
            }
            self.most_at_once = self.most_at_once.max(batch.len());
            self.sim.faults.janitor_watch.forget();
            let mut scheduler = Rng::new(self.rng.next());
            let answers = {
                let sim = &self.sim;
                let calls: Vec<Invocation<'_, Result<Value, String>>> = batch
                    .iter()
                    .map(|d| {
                        let call = sim.handle(d.function, d.payload.clone());
                        Box::pin(async move { call.await.map_err(|e| e.chain()) })
                            as Invocation<'_, _>
                    })
                    .collect();
                interleave(calls, &mut scheduler).await
            };
            for (delivery, answer) in batch.into_iter().zip(answers) {
                let what = delivery
                    .payload
                    .get("detail-type")
                    .or_else(|| delivery.payload.get("action"))
                    .cloned()
                    .unwrap_or_default();
                self.say(|| format!("    {} {what}: {answer:?}", delivery.function.name()));
                let Err(error) = answer else { continue };
                if delivery.payload.get("detail-type").is_none() {
                    // A person reads the answer; the console does not retry.
                    self.refused
                        .push(format!("{}: {error}", delivery.function.name()));
                } else if delivery.attempt < ATTEMPTS {
                    self.sim.inbox.push_back(Delivery {
                        attempt: delivery.attempt + 1,
                        ..delivery
                    });
                } else {
                    self.sim.dead.push(format!(
                        "{} after {ATTEMPTS} attempts at {what}: {error}",
                        delivery.function.name()
                    ));
                }
            }
            // Some rollouts end before the next batch, some after.
            let rng = &mut self.rng;
            self.sim.finish_rollouts_where(|| rng.below(2) == 0);
            self.sim
                .clock
                .advance(Duration::from_secs(self.rng.below(30) as u64));
        }
    }
}

fn is_schedule(d: &Delivery) -> bool {
    d.payload["detail-type"] == "Scheduled Event"
}

/// Whether a batch runs two copies of one function on the same input: two reconcile
/// passes, or the same event or request twice.
fn two_copies(batch: &[Delivery]) -> bool {
    batch.iter().enumerate().any(|(i, a)| {
        batch[i + 1..].iter().any(|b| {
            a.function == b.function
                && ((a.function == Function::Tracker && is_schedule(a) && is_schedule(b))
                    || a.payload == b.payload)
        })
    })
}

/// What one seeded run found.
struct Outcome {
    broken: Vec<String>,
    most_at_once: usize,
    copies: bool,
    /// Invocations dead-lettered after three throttled attempts.
    dead_lettered: usize,
}

/// One seeded run: what it broke of the promises, how many invocations ran at once at most,
/// and whether two copies of one function ran at once.
async fn run(seed: u64, trace: bool) -> Outcome {
    let scenario = Scenario {
        name: "interleavings",
        config: config(super::SSM),
        healthy: HEALTHY,
        fail_on_target: &[],
        rollbacks_fail: false,
        alarming: &[],
        arm64: &[],
        stimuli: Vec::new(),
        expect: Vec::new(),
    };
    let sim = Sim::new(&scenario, None);
    *sim.faults.pace.lock().unwrap() = Some(Pace::Seeded(Rng::new(seed.rotate_left(29))));
    *sim.faults.throttle.lock().unwrap() = Some(Rng::new(seed.rotate_left(41)));
    let mut run = Run {
        sim,
        rng: Rng::new(seed),
        trace,
        pushed: Vec::new(),
        refused: Vec::new(),
        most_at_once: 0,
        copies: false,
    };
    // Staging has a verified image to return to.
    run.pushed.push(('a', "v0"));
    run.sim.stimulate(Stimulus::Push('a', "v0")).await;
    run.sim.settle().await;
    let waves = 3 + run.rng.below(4);
    for wave in 0..waves {
        run.say(|| format!("wave {wave}"));
        for _ in 0..1 + run.rng.below(5) {
            run.stimulus().await;
        }
        run.deliver_at_once().await;
    }
    run.say(|| "settling".into());
    // The targets stop throttling: what is left to do gets done.
    *run.sim.faults.throttle.lock().unwrap() = None;
    run.sim.settle().await;
    // A rollback a person aborted before it finished is a failed rollback: automatic
    // rollouts stop until someone looks. They unfreeze.
    for env in ["staging", "production"] {
        let name = EnvName::parse(env).unwrap();
        let state = run.sim.store.env_state(&Run::web(), &name).await.unwrap();
        if state
            .frozen
            .is_some_and(|f| f.reason.contains("failed: aborted by alice"))
        {
            run.say(|| format!("unfreezing {env}"));
            run.sim
                .stimulate(Stimulus::Console(
                    Function::Control,
                    json!({ "action": "unfreeze", "app": "web", "environment": env, "requested_by": "alice" }),
                ))
                .await;
            run.sim.settle().await;
        }
    }
    // The last push wins.
    run.sim.stimulate(Stimulus::Push('f', "v99")).await;
    run.sim.settle().await;
    run.sim.clock.advance(Duration::from_secs(4 * 3600));
    run.sim.settle().await;

    // Lambda gives up on an invocation after its third attempt: while targets throttle,
    // some end in the dead-letter queue (where an alarm calls a person), as in AWS. What
    // else went there is broken.
    let throttled: Vec<String> = run
        .sim
        .dead
        .extract_if(.., |d| d.contains("ThrottlingException"))
        .collect();
    run.sim.given_up.extend(throttled.iter().cloned());
    let mut broken = run.sim.broken().await;
    let web = Run::web();
    let staging = EnvName::parse("staging").unwrap();
    let production = EnvName::parse("production").unwrap();
    let f = run.sim.image('f').to_string();
    let runs = |env: &EnvName| {
        run.sim
            .target
            .runs(&web, env)
            .and_then(|i| i.rsplit_once('@').map(|(_, d)| d.to_owned()))
    };
    if runs(&staging).as_deref() != Some(f.as_str()) {
        broken.push(format!(
            "staging runs {:?}, not the last push {f}",
            runs(&staging)
        ));
    }
    let state = run.sim.store.env_state(&web, &staging).await.unwrap();
    if let Some(frozen) = &state.frozen {
        broken.push(format!("staging is frozen: {frozen:?}"));
    }
    let verified_in_staging: BTreeSet<String> = run
        .sim
        .store
        .deployments(&web, &staging)
        .into_iter()
        .filter(|d| d.phase == Phase::Verified)
        .map(|d| d.image.digest.to_string())
        .collect();
    for d in run.sim.store.deployments(&web, &production) {
        // A person may deploy anything by hand; a promotion takes only what staging verified.
        if d.kind == Kind::Promotion
            && d.target_ref.is_some()
            && !verified_in_staging.contains(d.image.digest.as_str())
        {
            broken.push(format!(
                "production was promoted to {}, which staging never verified",
                d.image.digest
            ));
        }
    }
    if trace {
        println!("refused in the console: {:?}", run.refused);
    }
    Outcome {
        broken,
        most_at_once: run.most_at_once,
        copies: run.copies,
        dead_lettered: throttled.len(),
    }
}

#[tokio::test(start_paused = true)]
async fn concurrent_invocations_in_any_interleaving_end_in_the_right_state() {
    let seeds: Vec<u64> = match replay() {
        Some(seed) => vec![seed],
        None => {
            let base = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            let runs = std::env::var("PUSHDEPLOY_INTERLEAVING_RUNS")
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(RUNS);
            (0..runs)
                .map(|n| base.wrapping_mul(1_000_000).wrapping_add(n))
                .collect()
        }
    };
    let mut failures = Vec::new();
    let mut most = 0;
    let mut copies = 0;
    let mut dead_lettered = 0;
    for seed in &seeds {
        let outcome = run(*seed, replay().is_some()).await;
        most = most.max(outcome.most_at_once);
        copies += usize::from(outcome.copies);
        dead_lettered += outcome.dead_lettered;
        if !outcome.broken.is_empty() {
            failures.push(format!(
                "seed {seed} — replay with PUSHDEPLOY_INTERLEAVING={seed} cargo nextest run -E 'test(/interleavings::/)' --no-capture\n    {}",
                outcome.broken.join("\n    ")
            ));
        }
    }
    let verdict = if failures.is_empty() {
        "all converged".to_owned()
    } else {
        format!("{} broke a promise", failures.len())
    };
    println!(
        "interleavings: {} runs, {copies} with two copies of one function, targets throttling one call in four ({dead_lettered} invocations dead-lettered after three throttled attempts), up to {most} invocations at once, {verdict}",
        seeds.len(),
    );
    assert!(
        copies * 2 >= seeds.len(),
        "only {copies} of {} runs had two copies of one function at once",
        seeds.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} runs broke a promise:\n{}",
        failures.len(),
        seeds.len(),
        failures.join("\n")
    );
}
