//! The entrypoints against whatever may arrive. The routing table agrees with what each
//! entrypoint reads. Then every sample of `events/`, mutated one field at a time (dropped,
//! nulled, retyped, lengthened to 300 KB, given unicode or emptied), mutated several fields
//! at a time from a seed, and replaced by arbitrary JSON, is handed to the entrypoints: none
//! panics, each answers or refuses with a bounded message that names the field, and a
//! refused input writes nothing and announces nothing. The configuration parser gets the
//! same with mutated YAML. The totals are printed.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::FutureExt;
use serde_json::{Value, json};

use super::*;
use crate::domain::Config;
use crate::fakes::{RecordingWebhook, World, invocation};
use crate::services::ServiceError;
use crate::services::error::error_type;

/// Every sample of `events/`, by its path there.
const SAMPLES: [(&str, &str); 46] = [
    (
        "control/abort.json",
        include_str!("../../../events/control/abort.json"),
    ),
    (
        "control/approve.json",
        include_str!("../../../events/control/approve.json"),
    ),
    (
        "control/freeze.json",
        include_str!("../../../events/control/freeze.json"),
    ),
    (
        "control/list-pending.json",
        include_str!("../../../events/control/list-pending.json"),
    ),
    (
        "control/reject.json",
        include_str!("../../../events/control/reject.json"),
    ),
    (
        "control/revoke.json",
        include_str!("../../../events/control/revoke.json"),
    ),
    (
        "control/status-all.json",
        include_str!("../../../events/control/status-all.json"),
    ),
    (
        "control/status.json",
        include_str!("../../../events/control/status.json"),
    ),
    (
        "control/unfreeze.json",
        include_str!("../../../events/control/unfreeze.json"),
    ),
    (
        "deployer/deployment-verified.json",
        include_str!("../../../events/deployer/deployment-verified.json"),
    ),
    (
        "deployer/ecr-image-scan.json",
        include_str!("../../../events/deployer/ecr-image-scan.json"),
    ),
    (
        "deployer/ecr-push-other-repository.json",
        include_str!("../../../events/deployer/ecr-push-other-repository.json"),
    ),
    (
        "deployer/ecr-push-untagged.json",
        include_str!("../../../events/deployer/ecr-push-untagged.json"),
    ),
    (
        "deployer/ecr-push.json",
        include_str!("../../../events/deployer/ecr-push.json"),
    ),
    (
        "deployer/environment-unfrozen.json",
        include_str!("../../../events/deployer/environment-unfrozen.json"),
    ),
    (
        "deployer/inspector-scan.json",
        include_str!("../../../events/deployer/inspector-scan.json"),
    ),
    (
        "deployer/manual-bad-digest.json",
        include_str!("../../../events/deployer/manual-bad-digest.json"),
    ),
    (
        "deployer/manual-digest.json",
        include_str!("../../../events/deployer/manual-digest.json"),
    ),
    (
        "deployer/manual-hostile-tag.json",
        include_str!("../../../events/deployer/manual-hostile-tag.json"),
    ),
    (
        "deployer/manual-promote.json",
        include_str!("../../../events/deployer/manual-promote.json"),
    ),
    (
        "deployer/manual-tag.json",
        include_str!("../../../events/deployer/manual-tag.json"),
    ),
    (
        "deployer/promotion-approved.json",
        include_str!("../../../events/deployer/promotion-approved.json"),
    ),
    (
        "janitor/clean.json",
        include_str!("../../../events/janitor/clean.json"),
    ),
    (
        "janitor/dry-run.json",
        include_str!("../../../events/janitor/dry-run.json"),
    ),
    (
        "janitor/schedule.json",
        include_str!("../../../events/janitor/schedule.json"),
    ),
    (
        "janitor/unknown-repository.json",
        include_str!("../../../events/janitor/unknown-repository.json"),
    ),
    (
        "notifier/rollout-started.json",
        include_str!("../../../events/notifier/rollout-started.json"),
    ),
    (
        "notifier/verification-failed.json",
        include_str!("../../../events/notifier/verification-failed.json"),
    ),
    (
        "rollback/image-revoked.json",
        include_str!("../../../events/rollback/image-revoked.json"),
    ),
    (
        "rollback/manual-digest.json",
        include_str!("../../../events/rollback/manual-digest.json"),
    ),
    (
        "rollback/manual.json",
        include_str!("../../../events/rollback/manual.json"),
    ),
    (
        "rollback/rollout-failed.json",
        include_str!("../../../events/rollback/rollout-failed.json"),
    ),
    (
        "rollback/verification-failed.json",
        include_str!("../../../events/rollback/verification-failed.json"),
    ),
    (
        "tracker/codedeploy-failure.json",
        include_str!("../../../events/tracker/codedeploy-failure.json"),
    ),
    (
        "tracker/codedeploy-success.json",
        include_str!("../../../events/tracker/codedeploy-success.json"),
    ),
    (
        "tracker/ecs-deployment-completed.json",
        include_str!("../../../events/tracker/ecs-deployment-completed.json"),
    ),
    (
        "tracker/ecs-deployment-failed.json",
        include_str!("../../../events/tracker/ecs-deployment-failed.json"),
    ),
    (
        "tracker/ecs-deployment-in-progress.json",
        include_str!("../../../events/tracker/ecs-deployment-in-progress.json"),
    ),
    (
        "tracker/manual-reconcile.json",
        include_str!("../../../events/tracker/manual-reconcile.json"),
    ),
    (
        "tracker/schedule.json",
        include_str!("../../../events/tracker/schedule.json"),
    ),
    (
        "tracker/ssm-command-failed.json",
        include_str!("../../../events/tracker/ssm-command-failed.json"),
    ),
    (
        "tracker/ssm-command-success.json",
        include_str!("../../../events/tracker/ssm-command-success.json"),
    ),
    (
        "tracker/ssm-invocation-failed.json",
        include_str!("../../../events/tracker/ssm-invocation-failed.json"),
    ),
    (
        "tracker/ssm-other-document.json",
        include_str!("../../../events/tracker/ssm-other-document.json"),
    ),
    (
        "verifier/alarm-state-change.json",
        include_str!("../../../events/verifier/alarm-state-change.json"),
    ),
    (
        "verifier/rollout-succeeded.json",
        include_str!("../../../events/verifier/rollout-succeeded.json"),
    ),
];

/// The longest an error message may be, whatever the input.
const MAX_MESSAGE: usize = 2_000;

#[test]
fn every_sample_in_events_is_fuzzed() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../events");
    let mut on_disk = Vec::new();
    for dir in std::fs::read_dir(&root).unwrap() {
        let dir = dir.unwrap().path();
        if !dir.is_dir() {
            continue;
        }
        for file in std::fs::read_dir(&dir).unwrap() {
            let file = file.unwrap().path();
            if file.extension().is_some_and(|e| e == "json") {
                on_disk.push(format!(
                    "{}/{}",
                    dir.file_name().unwrap().to_string_lossy(),
                    file.file_name().unwrap().to_string_lossy()
                ));
            }
        }
    }
    on_disk.sort();
    let listed: Vec<String> = SAMPLES.iter().map(|(p, _)| (*p).to_owned()).collect();
    assert_eq!(listed, on_disk, "list every sample in SAMPLES");
}

fn function_of(sample: &str) -> Function {
    let dir = sample.split('/').next().unwrap_or_default();
    Function::ALL
        .into_iter()
        .find(|f| f.name() == dir)
        .unwrap_or_else(|| panic!("{sample} is in no function's folder"))
}

/// Hands `payload` to `function`'s entrypoint in `w`.
async fn call(w: &World, function: Function, payload: Value) -> Result<Value, ServiceError> {
    let event = invocation(&payload.to_string());
    match function {
        Function::Deployer => deployer::handle(&w.deployer(), event).await,
        Function::Tracker => tracker::handle(&w.tracker(), "pushdeploy-deploy", event).await,
        Function::Verifier => verifier::handle(&w.verifier(), event).await,
        Function::Rollback => rollback::handle(&w.rollback(), event).await,
        Function::Control => control::handle(&w.control(), event).await,
        Function::Janitor => janitor::handle(&w.janitor(), false, event).await,
        Function::Notifier => {
            let notifier = w.notifier(Arc::new(RecordingWebhook::default()), Default::default());
            notifier::handle(&notifier, event).await
        }
    }
}

#[tokio::test]
async fn each_function_takes_exactly_the_events_the_table_routes_to_it() {
    let w = World::sample();
    let mut pairs: Vec<(&str, &str)> = Vec::new();
    for route in ROUTES {
        match route.trigger {
            Trigger::Rule {
                source,
                detail_types,
                ..
            } => pairs.extend(detail_types.iter().map(|t| (source, *t))),
            Trigger::Schedule { .. } => pairs.push((SCHEDULE_SOURCE, SCHEDULED_EVENT)),
        }
    }
    for function in Function::ALL {
        for (source, detail_type) in &pairs {
            let event = json!({
                "version": "0", "id": "e-1", "source": source, "detail-type": detail_type,
                "account": "123456789012", "region": "eu-west-1", "time": "2026-11-20T10:00:00Z",
                "resources": [], "detail": {}
            });
            let result = call(&w, function, event).await;
            let not_handled = matches!(
                result.as_ref().map_err(ServiceError::innermost),
                Err(ServiceError::Input(InputError::NotHandled { .. }))
            );
            let routed = routed_to(source, detail_type).contains(&function)
                // The notifier reads every lifecycle event; its rule forwards those with a message.
                || (function == Function::Notifier && *source == crate::domain::event::SOURCE);
            assert_eq!(
                !not_handled,
                routed,
                "{}: {detail_type:?} from {source:?}: {result:?}",
                function.name()
            );
        }
    }
}

#[tokio::test]
async fn every_action_a_function_lists_is_one_it_reads() {
    let w = World::sample();
    for function in Function::ALL {
        for action in function.actions() {
            let result = call(&w, function, json!({ "action": action })).await;
            assert!(
                !matches!(
                    result.as_ref().map_err(ServiceError::innermost),
                    Err(ServiceError::Input(InputError::UnknownAction { .. }))
                ),
                "{}: {action}: {result:?}",
                function.name()
            );
        }
    }
}

/// What became of fuzzed inputs, by error type (`ok` for an answer).
#[derive(Default)]
struct Tally {
    tried: usize,
    by_outcome: BTreeMap<&'static str, usize>,
    failures: Vec<String>,
}

impl Tally {
    /// Delivers `payload` to `function` in a fresh world and checks the promises: no panic;
    /// a bounded message; a refusal writes nothing; a field's problem names a field,
    /// `touched` (the keys mutated) among them when given.
    async fn check(
        &mut self,
        config: &Arc<Config>,
        function: Function,
        payload: Value,
        touched: &[String],
        replay: &str,
    ) {
        // Which field a problem is about is only clear when the input was otherwise fine
        // and still reaches the same reader (the routing keys change which one that is).
        let routing = touched.iter().any(|k| k == "detail-type" || k == "action");
        self.tried += 1;
        let w = World::with_config(config.clone());
        let before = (w.store.commits(), w.events.events().len());
        let outcome = AssertUnwindSafe(call(&w, function, payload.clone()))
            .catch_unwind()
            .await;
        let mut fail = |why: String| {
            let shown: String = payload.to_string().chars().take(600).collect();
            self.failures.push(format!(
                "{} ({replay}): {why}\n    input: {shown}",
                function.name()
            ));
        };
        let error = match outcome {
            Err(_) => return fail("panicked".into()),
            Ok(Ok(_)) => {
                *self.by_outcome.entry("ok").or_default() += 1;
                return;
            }
            Ok(Err(e)) => e,
        };
        *self.by_outcome.entry(error.error_type()).or_default() += 1;
        let message = error.chain();
        if message.len() > MAX_MESSAGE {
            fail(format!("a {}-byte message", message.len()));
        }
        if error.error_type() == error_type::INTERNAL {
            fail(format!("an internal error: {message}"));
        }
        if error.error_type() == error_type::INVALID_INPUT
            && (w.store.commits(), w.events.events().len()) != before
        {
            fail(format!("refused ({message}) yet wrote or announced"));
        }
        if let ServiceError::Input(InputError::Field { field, problem, .. }) = error.innermost() {
            if field.is_none() && !problem.contains('`') && !problem.contains("a request is") {
                fail(format!("names no field: {message}"));
            }
            if !touched.is_empty()
                && !routing
                && !touched.iter().any(|k| message.contains(k.as_str()))
            {
                fail(format!("does not name {touched:?}: {message}"));
            }
        }
    }

    fn report(&self, what: &str) {
        println!(
            "{what}: {} inputs, by outcome {:?}",
            self.tried, self.by_outcome
        );
        assert!(
            self.failures.is_empty(),
            "{} of {} inputs broke a promise:\n{}",
            self.failures.len(),
            self.tried,
            self.failures.join("\n")
        );
    }
}

/// A path into a JSON value: object keys and array indexes.
#[derive(Debug, Clone)]
enum Step {
    Key(String),
    Index(usize),
}

fn paths(value: &Value, prefix: &mut Vec<Step>, out: &mut Vec<Vec<Step>>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                prefix.push(Step::Key(k.clone()));
                out.push(prefix.clone());
                paths(v, prefix, out);
                prefix.pop();
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                prefix.push(Step::Index(i));
                out.push(prefix.clone());
                paths(v, prefix, out);
                prefix.pop();
            }
        }
        _ => {}
    }
}

/// The ways one value is mutated.
#[derive(Debug, Clone, Copy)]
enum Mutation {
    Drop,
    Null,
    Retype,
    Lengthen,
    Unicode,
    Empty,
}

const MUTATIONS: [Mutation; 6] = [
    Mutation::Drop,
    Mutation::Null,
    Mutation::Retype,
    Mutation::Lengthen,
    Mutation::Unicode,
    Mutation::Empty,
];

fn mutated(value: &Value, mutation: Mutation) -> Option<Value> {
    Some(match (mutation, value) {
        (Mutation::Null, Value::Null) => return None,
        (Mutation::Null, _) => Value::Null,
        (Mutation::Retype, Value::String(_)) => json!(7),
        (Mutation::Retype, Value::Number(n)) => json!(n.to_string()),
        (Mutation::Retype, Value::Bool(b)) => json!(b.to_string()),
        (Mutation::Retype, Value::Object(_)) => json!([]),
        (Mutation::Retype, Value::Array(_)) => json!({}),
        (Mutation::Retype, Value::Null) => json!(true),
        (Mutation::Lengthen, Value::String(s)) => json!(format!("{s}{}", "x".repeat(300_000))),
        (Mutation::Lengthen, Value::Array(items)) => Value::Array(
            items
                .iter()
                .cycle()
                .take(items.len() * 500)
                .cloned()
                .collect(),
        ),
        (Mutation::Unicode, Value::String(s)) => json!(format!("é🚀\u{202e}ﬁ\u{0}{s}")),
        (Mutation::Empty, Value::String(s)) if !s.is_empty() => json!(""),
        (Mutation::Empty, Value::Array(items)) if !items.is_empty() => json!([]),
        (Mutation::Empty, Value::Object(map)) if !map.is_empty() => json!({}),
        _ => return None,
    })
}

/// `root` with `mutation` applied at `path`; `None` when it does not apply there.
fn apply(root: &Value, path: &[Step], mutation: Mutation) -> Option<Value> {
    let mut out = root.clone();
    let (last, parents) = path.split_last()?;
    let mut at = &mut out;
    for step in parents {
        at = match step {
            Step::Key(k) => at.get_mut(k.as_str())?,
            Step::Index(i) => at.get_mut(*i)?,
        };
    }
    match (last, mutation) {
        (Step::Key(k), Mutation::Drop) => {
            at.as_object_mut()?.remove(k.as_str())?;
        }
        (Step::Index(i), Mutation::Drop) => {
            let items = at.as_array_mut()?;
            (*i < items.len()).then(|| items.remove(*i))?;
        }
        (Step::Key(k), m) => {
            let slot = at.get_mut(k.as_str())?;
            *slot = mutated(slot, m)?;
        }
        (Step::Index(i), m) => {
            let slot = at.get_mut(*i)?;
            *slot = mutated(slot, m)?;
        }
    }
    Some(out)
}

fn keys(path: &[Step]) -> Vec<String> {
    path.iter()
        .filter_map(|s| match s {
            Step::Key(k) => Some(k.clone()),
            Step::Index(_) => None,
        })
        .collect()
}

/// A small deterministic generator: the same seed gives the same inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// The seed of the mutations of several fields at a time (`PUSHDEPLOY_FUZZ_SEED` replays
/// another).
fn seed() -> u64 {
    std::env::var("PUSHDEPLOY_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_2026_1202)
}

fn sample_config() -> Arc<Config> {
    Arc::new(Config::from_yaml(World::SAMPLE_CONFIG).unwrap())
}

#[tokio::test(start_paused = true)]
async fn every_sample_mutated_one_field_at_a_time_is_answered_or_refused_naming_the_field() {
    let config = sample_config();
    let mut tally = Tally::default();
    for (name, text) in SAMPLES {
        let sample: Value = serde_json::from_str(text).unwrap();
        let function = function_of(name);
        // A sample refused as it is (a hostile tag, a bad digest) keeps being refused for
        // that field whatever else changes.
        let refused = call(
            &World::with_config(config.clone()),
            function,
            sample.clone(),
        )
        .await
        .is_err_and(|e| matches!(e.innermost(), ServiceError::Input(InputError::Field { .. })));
        let mut all = Vec::new();
        paths(&sample, &mut Vec::new(), &mut all);
        for path in &all {
            for mutation in MUTATIONS {
                if let Some(input) = apply(&sample, path, mutation) {
                    let replay = format!("{name}, {mutation:?} at {path:?}");
                    let touched = if refused { Vec::new() } else { keys(path) };
                    tally
                        .check(&config, function, input, &touched, &replay)
                        .await;
                }
            }
        }
    }
    tally.report("samples mutated one field at a time");
}

#[tokio::test(start_paused = true)]
async fn every_sample_mutated_several_fields_at_a_time_is_answered_or_refused() {
    let config = sample_config();
    let seed = seed();
    let mut rng = Rng(seed);
    let mut tally = Tally::default();
    for case in 0..2_000 {
        let (name, text) = SAMPLES[rng.below(SAMPLES.len())];
        let mut input: Value = serde_json::from_str(text).unwrap();
        for _ in 0..1 + rng.below(4) {
            let mut all = Vec::new();
            paths(&input, &mut Vec::new(), &mut all);
            if all.is_empty() {
                break;
            }
            let path = &all[rng.below(all.len())];
            if let Some(next) = apply(&input, path, MUTATIONS[rng.below(MUTATIONS.len())]) {
                input = next;
            }
        }
        let replay = format!("seed {seed}, case {case}, from {name}");
        tally
            .check(&config, function_of(name), input, &[], &replay)
            .await;
    }
    tally.report(&format!(
        "samples mutated several fields at a time (seed {seed})"
    ));
}

/// Arbitrary JSON, up to a few levels deep, from `rng`.
fn arbitrary(rng: &mut Rng, depth: usize) -> Value {
    let words = [
        "action",
        "app",
        "environment",
        "detail-type",
        "source",
        "detail",
        "tag",
        "digest",
        "dry_run",
        "id",
        "x",
    ];
    match rng.below(if depth == 0 { 5 } else { 7 }) {
        0 => Value::Null,
        1 => json!(rng.below(2) == 1),
        2 => json!(rng.next() as i64),
        3 => json!(words[rng.below(words.len())]),
        4 => json!("\u{0}é🚀"),
        5 => Value::Array(
            (0..rng.below(4))
                .map(|_| arbitrary(rng, depth - 1))
                .collect(),
        ),
        _ => Value::Object(
            (0..rng.below(5))
                .map(|_| {
                    (
                        words[rng.below(words.len())].to_owned(),
                        arbitrary(rng, depth - 1),
                    )
                })
                .collect(),
        ),
    }
}

#[tokio::test(start_paused = true)]
async fn arbitrary_json_is_refused_by_every_entrypoint_without_a_panic() {
    let config = sample_config();
    let seed = seed();
    let mut rng = Rng(seed ^ 0xa5a5);
    let mut tally = Tally::default();
    for case in 0..600 {
        let input = arbitrary(&mut rng, 3);
        for function in Function::ALL {
            let replay = format!("seed {seed}, arbitrary case {case}");
            tally
                .check(&config, function, input.clone(), &[], &replay)
                .await;
        }
    }
    tally.report(&format!("arbitrary JSON (seed {seed})"));
}

/// Configurations to mutate: the samples' and a few with every kind of target.
const CONFIGS: [&str; 2] = [
    World::SAMPLE_CONFIG,
    r#"
apps:
  web:
    repository: acme/web
    registry: 123456789012.dkr.ecr.eu-west-1.amazonaws.com
    retention: { keep_newest: 20, keep_verified: 2, protect_tags: ["v*"] }
    notify:
      - { type: slack, url_from: { ssm_parameter: /hooks/slack }, on: [failed, rolled_back] }
    environments:
      staging:
        deploy_on_push: { tags: ["v*"] }
        target: { ecs: { cluster: prod, service: web, container: web, keep_revisions: 3 } }
        smoke:
          checks: [ { url: "http://web/health", expect_status: 200, body_contains: "ok", timeout_seconds: 2 } ]
          within_seconds: 30
      onprem:
        promote_from: staging
        approval: required
        target:
          codedeploy:
            application: web
            deployment_group: web-onprem
            ec2: { container: web, ports: ["80:8000"], health: { path: /health } }
"#,
];

#[test]
fn mutated_configurations_parse_or_say_which_path_is_wrong() {
    let mut tried = 0;
    let mut failures = Vec::new();
    let seed = seed();
    let mut rng = Rng(seed ^ 0x0c0f);
    for (n, text) in CONFIGS.iter().enumerate() {
        let yaml: serde_norway::Value = serde_norway::from_str(text).unwrap();
        let value: Value = serde_json::to_value(&yaml).unwrap();
        let mut all = Vec::new();
        paths(&value, &mut Vec::new(), &mut all);
        let mut inputs: Vec<(String, String)> = Vec::new();
        for path in &all {
            for mutation in MUTATIONS {
                if let Some(m) = apply(&value, path, mutation) {
                    inputs.push((
                        format!("config {n}, {mutation:?} at {path:?}"),
                        serde_norway::to_string(&m).unwrap(),
                    ));
                }
            }
        }
        // Text mutations: a character dropped, or one of YAML's own put in, anywhere.
        let bytes: Vec<char> = text.chars().collect();
        for case in 0..1_000 {
            let mut chars = bytes.clone();
            let at = rng.below(chars.len());
            match rng.below(3) {
                0 => {
                    chars.remove(at);
                }
                1 => chars.insert(
                    at,
                    [':', '-', '\t', '{', '\'', '\n', '&', '*', '!'][rng.below(9)],
                ),
                _ => chars.insert(at, '\u{202e}'),
            }
            inputs.push((
                format!("config {n}, seed {seed}, text case {case}"),
                chars.into_iter().collect(),
            ));
        }
        for (replay, input) in inputs {
            tried += 1;
            let outcome = std::panic::catch_unwind(|| Config::from_yaml(&input));
            match outcome {
                Err(_) => failures.push(format!("{replay}: panicked")),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    let message = e.to_string();
                    if message.is_empty() || message.len() > MAX_MESSAGE * 4 {
                        failures.push(format!("{replay}: a {}-byte message", message.len()));
                    }
                }
            }
        }
    }
    println!("mutated configurations: {tried} inputs");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
