//! IAM from what is called. Every AWS request the suite made through a function's clients
//! (recorded per function by `support::calls`, with each IAM action the Service
//! Authorization Reference says it needs, on its resource, with its condition keys) must be
//! allowed to that function by `template.yaml`, as AWS evaluates the policy: action,
//! resource pattern and conditions, in a stack deployed with the parameters the tests'
//! resources need. A granted action no test used is either listed below with why it
//! stays (a path the emulator cannot reach) or a grant to remove.
//!
//! It reads what the rest of the suite recorded, so it runs after it: `make test` runs it
//! with `--run-ignored only` once `cargo nextest run --workspace` is done.

use std::collections::{BTreeMap, BTreeSet};

use pushdeploy_local::moto::{ACCOUNT, REGION};
use pushdeploy_local::template::Template;
use pushdeploy_tests::calls::{Call, Log, Need, directory};
use pushdeploy_tests::policy::{Statement, grants, strings};
use pushdeploy_tests::{BUNDLES, BUS, DOCUMENT, PARAMETER, TABLE};
use serde_json::Value as Json;

/// The stack the tests' resources stand in for: the ECS service, task role, CodeDeploy
/// groups and alarms `tests/flow.rs` creates.
const STACK: [(&str, &str); 4] = [
    ("EcsServices", "prod/web"),
    ("EcsTaskRoles", "arn:aws:iam::123456789012:role/web-task"),
    ("CodeDeployGroups", "web/web-onprem,web-ecs/web-blue-green"),
    ("WatchedAlarms", "web-staging-5xx,no-such-alarm"),
];

/// Grants no test uses, and why each stays. Anything else granted and unused is a grant to
/// remove.
const KEPT: &[(&str, &str, &str)] = &[
    (
        "tracker",
        "ssm:ListCommandInvocations",
        "reads each host's output when a command fails; moto has no ListCommandInvocations",
    ),
    (
        "tracker",
        "ssm:CancelCommand",
        "cancels an SSM rollout that timed out or was aborted; no integration test times one out",
    ),
    (
        "rollback",
        "ssm:ListCommands",
        "a rollback asked for again whose start did not take looks for its command first; moto never refuses a start",
    ),
    (
        "deployer",
        "codedeploy:StopDeployment",
        "stops a deployment whose rollout ended while it started; moto has no StopDeployment",
    ),
    (
        "tracker",
        "codedeploy:StopDeployment",
        "stops a CodeDeploy rollout that timed out or was aborted; moto has no StopDeployment",
    ),
    (
        "rollback",
        "codedeploy:StopDeployment",
        "stops a deployment whose rollout ended while it started; moto has no StopDeployment",
    ),
    (
        "tracker",
        "codedeploy:ListDeployments",
        "adopts a deployment whose start took effect but was never recorded; moto never loses a start's answer",
    ),
    (
        "rollback",
        "codedeploy:ListDeployments",
        "a rollback asked for again whose start did not take looks for its deployment first; moto never refuses a start",
    ),
    (
        "rollback",
        "codedeploy:GetDeployment",
        "reads each deployment it finds that way (its description names the deployment)",
    ),
];

/// IAM's wildcards: `*` any run of characters, `?` one.
fn matches(pattern: &str, value: &str) -> bool {
    fn go(p: &[char], v: &[char]) -> bool {
        match (p.first(), v.first()) {
            (None, None) => true,
            (Some('*'), _) => go(&p[1..], v) || (!v.is_empty() && go(p, &v[1..])),
            (Some('?'), Some(_)) => go(&p[1..], &v[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &v[1..]),
            _ => false,
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let v: Vec<char> = value.chars().collect();
    go(&p, &v)
}

/// Whether the request's condition keys satisfy a statement's `Condition` block.
fn conditions_hold(condition: &Json, context: &BTreeMap<String, String>) -> bool {
    let Some(operators) = condition.as_object() else {
        return true;
    };
    operators.iter().all(|(operator, keys)| {
        keys.as_object().into_iter().flatten().all(|(key, wanted)| {
            let Some(value) = context.get(key) else {
                return false;
            };
            let wanted = strings(wanted);
            match operator.as_str() {
                "StringEquals" | "Bool" | "ArnEquals" => wanted.iter().any(|w| w == value),
                "StringLike" | "ArnLike" => wanted.iter().any(|w| matches(w, value)),
                other => panic!("the check does not evaluate the condition operator {other}"),
            }
        })
    })
}

/// Whether `statements` allow `need` (no statement here denies: the template denies nothing).
fn allowed(statements: &[Statement], need: &Need) -> bool {
    statements.iter().any(|s| {
        s["Effect"] == "Allow"
            && strings(&s["Action"])
                .iter()
                .any(|a| matches(&a.to_lowercase(), &need.action.to_lowercase()))
            && strings(&s["Resource"])
                .iter()
                .any(|r| matches(r, &need.resource))
            && conditions_hold(&s["Condition"], &need.context)
    })
}

/// What the template's references stand for in the tests' stack.
fn resolver(t: &Template) -> impl Fn(&str) -> Option<String> {
    let mut values: BTreeMap<String, String> = t.parameter_defaults();
    for (name, value) in STACK {
        values.insert(name.to_owned(), value.to_owned());
    }
    values.extend(
        [
            ("AWS::Partition", "aws".to_owned()),
            ("AWS::Region", REGION.to_owned()),
            ("AWS::AccountId", ACCOUNT.to_owned()),
            ("AWS::StackName", "pushdeploy".to_owned()),
            ("AWS::URLSuffix", "amazonaws.com".to_owned()),
            ("StateTable", TABLE.to_owned()),
            (
                "StateTable.Arn",
                format!("arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{TABLE}"),
            ),
            ("EventBus", BUS.to_owned()),
            (
                "EventBus.Arn",
                format!("arn:aws:events:{REGION}:{ACCOUNT}:event-bus/{BUS}"),
            ),
            ("DeployDocument", DOCUMENT.to_owned()),
            ("BundleBucket", BUNDLES.to_owned()),
            ("BundleBucket.Arn", format!("arn:aws:s3:::{BUNDLES}")),
            ("ConfigParameter", PARAMETER.to_owned()),
        ]
        .map(|(k, v)| (k.to_owned(), v)),
    );
    move |name| Some(values.get(name).cloned().unwrap_or(format!("<{name}>")))
}

#[test]
#[ignore = "reads what the rest of the suite recorded: make test runs it after the suite"]
fn every_request_a_function_made_is_granted_to_it_by_the_template_and_nothing_more() {
    let calls: Vec<Call> = Log::read_all();
    assert!(
        !calls.is_empty(),
        "no request was recorded in {}: run the suite first (`make test` does)",
        directory().display()
    );
    let t = Template::load_default().expect("template.yaml parses");
    let stack: BTreeMap<&str, &str> = STACK.into_iter().collect();
    let resolve = resolver(&t);
    let granted = grants(&t, &stack, &resolve);
    let mut refused: BTreeSet<String> = BTreeSet::new();
    let mut used: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    let mut functions: BTreeSet<&str> = BTreeSet::new();
    for call in &calls {
        functions.insert(&call.function);
        let statements = granted
            .get(&call.function)
            .map(|(s, _)| s.as_slice())
            .unwrap_or_default();
        for need in &call.needs {
            used.entry(&call.function)
                .or_default()
                .insert(need.action.to_lowercase());
            if !allowed(statements, need) {
                refused.insert(format!(
                    "{}: {} needs {} on {}{} — template.yaml does not grant it",
                    call.function,
                    call.operation,
                    need.action,
                    need.resource,
                    if need.context.is_empty() {
                        String::new()
                    } else {
                        format!(" (with {:?})", need.context)
                    }
                ));
            }
        }
    }
    // Granted and never used: kept for a reason, or to remove.
    let mut unused_kept = Vec::new();
    let mut unexplained = Vec::new();
    for (function, (statements, _)) in &granted {
        let actions: BTreeSet<String> = statements
            .iter()
            .flat_map(|s| strings(&s["Action"]))
            .collect();
        for action in actions {
            let is_used = used
                .get(function.as_str())
                .is_some_and(|u| u.contains(&action.to_lowercase()));
            let kept = KEPT.iter().find(|(f, a, _)| f == function && *a == action);
            match (is_used, kept) {
                (true, Some(_)) => unexplained.push(format!(
                    "{function}: {action} is listed as unused, and a test uses it: take it off the list"
                )),
                (false, Some((_, _, why))) => unused_kept.push(format!("{function} {action}: {why}")),
                (false, None) => unexplained.push(format!(
                    "{function} is granted {action}, which no test uses: remove it, or say in KEPT why it stays"
                )),
                (true, None) => {}
            }
        }
    }
    // Logging and the on-failure destination, which SAM's own roles give every function and
    // the verifier's role gives itself, are used by Lambda, not by the functions' clients.
    unexplained.retain(|u| {
        ![
            "logs:CreateLogStream",
            "logs:PutLogEvents",
            "sqs:SendMessage",
        ]
        .iter()
        .any(|a| u.contains(&format!("is granted {a},")))
    });
    println!(
        "IAM: {} requests by {} functions checked against template.yaml, {}; grants no test used: {}, each with its reason",
        calls.len(),
        functions.len(),
        if refused.is_empty() {
            "every one granted".to_owned()
        } else {
            format!("{} not granted", refused.len())
        },
        unused_kept.len()
    );
    for kept in &unused_kept {
        println!("  {kept}");
    }
    let all: Vec<String> = refused.into_iter().chain(unexplained).collect();
    assert!(all.is_empty(), "{}", all.join("\n"));
    assert_eq!(
        functions.len(),
        7,
        "every function's requests are checked: {functions:?}"
    );
}
