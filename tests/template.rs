//! `template.yaml` checked against the code it deploys: every function is built and wired
//! the way its handler expects, the SSM document accepts exactly what the SSM adapter
//! sends and nothing hostile, its script passes shellcheck, the template passes cfn-lint
//! and `sam validate --lint`, and every function's policy stays least-privilege.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use pushdeploy::adapters::ssm::{SsmRunCommand, params};
use pushdeploy::domain::{Config, Deployment, EventType, Kind, PinnedImage, Request, TargetConfig};
use pushdeploy::inbound::{SSM_COMMAND_STATUS, SSM_INVOCATION_STATUS};
use pushdeploy::metrics::Metric;
use pushdeploy_local::moto::{venv_tool, workspace_root};
use pushdeploy_local::template::{Bus, Template, Trigger, to_json};
use regex::Regex;
use serde_json::Value as Json;
use serde_norway::Value as Yaml;

const SETUP: &str = "run `make setup` (scripts/bootstrap.sh) to install it";

fn template() -> Template {
    Template::load_default().expect("template.yaml parses")
}

/// Stands in for every `!Ref`, `!GetAtt` and pseudo parameter: its own name in angle brackets.
fn placeholder(name: &str) -> Option<String> {
    Some(format!("<{name}>"))
}

fn resolve(value: &Yaml) -> Json {
    to_json(value, &placeholder).expect("resolvable with placeholders")
}

/// A string or a list of strings (IAM actions and resources, pattern values).
fn strings(value: &Json) -> Vec<String> {
    match value {
        Json::String(s) => vec![s.clone()],
        Json::Array(items) => items.iter().flat_map(strings).collect(),
        _ => Vec::new(),
    }
}

/// The logical id of a `!Ref X` or `!GetAtt X.Attribute`.
fn target_of(value: &Yaml) -> Option<String> {
    let Yaml::Tagged(tagged) = value else {
        return None;
    };
    let name = tagged.value.as_str()?;
    match tagged.tag.to_string().trim_start_matches('!') {
        "Ref" => Some(name.to_owned()),
        "GetAtt" => name.split('.').next().map(str::to_owned),
        _ => None,
    }
}

fn is_dead_letter_queue(value: Option<&Yaml>) -> bool {
    value.and_then(target_of).as_deref() == Some("DeadLetterQueue")
}

/// Every serverless function: logical id, package (the `CodeUri` directory) and raw properties.
fn function_properties(t: &Template) -> Vec<(String, String, Yaml)> {
    t.functions(&placeholder)
        .expect("functions read")
        .into_iter()
        .map(|f| {
            let (_, props) = t.resource(&f.logical_id).expect("resource exists");
            (f.logical_id, f.package, props.clone())
        })
        .collect()
}

#[test]
fn every_function_package_is_built_with_cargo_lambda_and_fails_into_the_dead_letter_queue() {
    let t = template();
    let functions = t.functions(&placeholder).unwrap();
    let mut packages: Vec<String> = std::fs::read_dir(workspace_root().join("functions"))
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.path().join("Cargo.toml").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    packages.sort();
    let mut in_template: Vec<String> = functions.iter().map(|f| f.package.clone()).collect();
    in_template.sort();
    assert_eq!(
        in_template, packages,
        "one template function per functions/<name>"
    );

    for f in &functions {
        let id = f.logical_id.as_str();
        assert_eq!(f.code_uri, format!("functions/{}", f.package), "{id}");
        let metadata = |key: &str| {
            t.at(&["Resources", id, "Metadata", key])
                .cloned()
                .unwrap_or(Yaml::Null)
        };
        assert_eq!(
            metadata("BuildMethod").as_str(),
            Some("rust-cargolambda"),
            "{id}"
        );
        assert_eq!(
            metadata("BuildProperties")
                .get("Binary")
                .and_then(Yaml::as_str),
            Some(f.package.as_str()),
            "{id}: the binary is the package name"
        );
    }

    for (id, _, props) in function_properties(&t) {
        let events = props.get("Events").and_then(Yaml::as_mapping);
        if events.is_none_or(|e| e.is_empty()) {
            continue; // invoked by hand, synchronously: the caller sees the error
        }
        let invoke = props.get("EventInvokeConfig").unwrap_or_else(|| {
            panic!("{id} is invoked asynchronously but has no EventInvokeConfig")
        });
        let retries = invoke.get("MaximumRetryAttempts").and_then(Yaml::as_u64);
        assert!(
            retries.is_some_and(|r| r <= 2),
            "{id}: MaximumRetryAttempts {retries:?}"
        );
        let on_failure = invoke
            .get("DestinationConfig")
            .and_then(|d| d.get("OnFailure"))
            .unwrap_or_else(|| panic!("{id} has no OnFailure destination"));
        assert_eq!(
            on_failure.get("Type").and_then(Yaml::as_str),
            Some("SQS"),
            "{id}"
        );
        assert!(is_dead_letter_queue(on_failure.get("Destination")), "{id}");

        for (name, event) in events.unwrap() {
            let name = name.as_str().unwrap_or_default();
            let ty = event.get("Type").and_then(Yaml::as_str).unwrap_or_default();
            if !matches!(ty, "EventBridgeRule" | "Schedule") {
                continue;
            }
            let p = event.get("Properties").unwrap();
            assert!(
                is_dead_letter_queue(p.get("DeadLetterConfig").and_then(|d| d.get("Arn"))),
                "{id}.{name}: undeliverable events must land in the dead-letter queue"
            );
            assert!(
                p.get("RetryPolicy").is_some(),
                "{id}.{name} has no RetryPolicy"
            );
        }
    }

    for (id, ty, props) in t.resources() {
        if ty != "AWS::Events::Rule" {
            continue;
        }
        for target in props.get("Targets").and_then(Yaml::as_sequence).unwrap() {
            assert!(
                is_dead_letter_queue(target.get("DeadLetterConfig").and_then(|d| d.get("Arn"))),
                "{id}: every rule target has the dead-letter queue"
            );
        }
    }
}

/// The `detail-type`s each function's rules on pushdeploy's own bus match.
fn lifecycle_routes(t: &Template) -> BTreeMap<String, BTreeSet<String>> {
    let mut routes: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in t.functions(&placeholder).unwrap() {
        for trigger in &f.triggers {
            let Trigger::Rule {
                bus: Bus::Resource(bus),
                pattern,
                name,
            } = trigger
            else {
                continue;
            };
            assert_eq!(bus, "EventBus", "{}.{name}", f.logical_id);
            assert_eq!(
                pattern["source"],
                serde_json::json!(["pushdeploy"]),
                "{}.{name}",
                f.logical_id
            );
            routes
                .entry(f.package.clone())
                .or_default()
                .extend(strings(&pattern["detail-type"]));
        }
    }
    routes
}

#[test]
fn lifecycle_events_are_routed_to_the_functions_whose_handlers_take_them() {
    let t = template();
    let routes = lifecycle_routes(&t);
    let expected: BTreeMap<String, BTreeSet<String>> = [
        (
            "deployer",
            vec![
                EventType::DeploymentVerified,
                EventType::DeploymentFailed,
                EventType::EnvironmentUnfrozen,
                EventType::PromotionApproved,
            ],
        ),
        ("verifier", vec![EventType::RolloutSucceeded]),
        // Exactly the events the notifier has a message for.
        (
            "notifier",
            EventType::ALL
                .into_iter()
                .filter(|t| {
                    [Kind::Push, Kind::Rollback].into_iter().any(|kind| {
                        let detail: pushdeploy::domain::EventDetail = serde_json::from_value(serde_json::json!({
                            "app": "web", "environment": "staging", "kind": kind, "at": "2026-11-20T10:00:00Z"
                        }))
                        .unwrap();
                        pushdeploy::domain::notice::notice_of(*t, &detail).is_some()
                    })
                })
                .collect(),
        ),
        (
            "rollback",
            vec![EventType::RolloutFailed, EventType::VerificationFailed],
        ),
    ]
    .into_iter()
    .map(|(f, types)| {
        (
            f.to_owned(),
            types.iter().map(|t| t.as_str().to_owned()).collect(),
        )
    })
    .collect();
    assert_eq!(routes, expected);

    let mut alerted = Vec::new();
    for (id, ty, props) in t.resources() {
        if ty != "AWS::Events::Rule" {
            continue;
        }
        assert_eq!(
            props.get("EventBusName").and_then(target_of).as_deref(),
            Some("EventBus"),
            "{id}"
        );
        let pattern = resolve(props.get("EventPattern").unwrap());
        alerted.extend(strings(&pattern["detail-type"]));
    }
    assert_eq!(
        alerted,
        vec![EventType::RollbackFailed.as_str()],
        "a failed rollback alerts a person"
    );

    for detail_type in routes.values().flatten().chain(&alerted) {
        assert!(
            EventType::parse(detail_type).is_some(),
            "{detail_type:?} is not a lifecycle event pushdeploy publishes"
        );
    }
}

#[test]
fn aws_events_reach_the_deployer_and_the_tracker_as_their_handlers_read_them() {
    let t = template();
    let mut default_bus = BTreeMap::new();
    let mut schedules = Vec::new();
    for f in t.functions(&placeholder).unwrap() {
        for trigger in f.triggers {
            match trigger {
                Trigger::Rule {
                    bus: Bus::Default,
                    pattern,
                    ..
                } => {
                    default_bus.insert(f.package.clone(), pattern);
                }
                Trigger::Schedule { expression, .. } => {
                    schedules.push((f.package.clone(), expression))
                }
                Trigger::Rule { .. } => {}
            }
        }
    }
    assert_eq!(
        default_bus["deployer"],
        serde_json::json!({
            "source": ["aws.ecr"],
            "detail-type": ["ECR Image Action"],
            "detail": { "action-type": ["PUSH"], "result": ["SUCCESS"] }
        })
    );
    let ssm = &default_bus["tracker"];
    assert_eq!(ssm["source"], serde_json::json!(["aws.ssm"]));
    assert_eq!(
        strings(&ssm["detail-type"]),
        vec![SSM_COMMAND_STATUS, SSM_INVOCATION_STATUS]
    );
    assert_eq!(
        ssm["detail"]["document-name"],
        serde_json::json!(["<DeployDocument>"]),
        "only the status of pushdeploy's own document"
    );
    assert_eq!(default_bus.len(), 2, "{default_bus:?}");
    assert_eq!(
        schedules,
        vec![
            ("tracker".to_owned(), "<ReconcileSchedule>".to_owned()),
            ("janitor".to_owned(), "<JanitorSchedule>".to_owned())
        ]
    );
}

/// The SSM adapter, with a client that is never used to send anything.
fn ssm_adapter() -> SsmRunCommand {
    let sdk = SdkConfig::builder()
        .region(Region::new("us-east-1"))
        .behavior_version(BehaviorVersion::latest())
        .build();
    SsmRunCommand::new(aws_sdk_ssm::Client::new(&sdk), "pushdeploy-deploy")
}

/// What the adapter sends for every SSM environment of `events/config.yaml`, from an ECR
/// registry and from a plain registry with a port.
fn sent_parameters() -> Vec<Vec<(&'static str, String)>> {
    let config = Config::from_yaml(include_str!("../events/config.yaml"))
        .expect("sample configuration is valid");
    let ssm = ssm_adapter();
    let mut sent = Vec::new();
    for registry in [
        "123456789012.dkr.ecr.eu-west-1.amazonaws.com",
        "localhost:5000",
    ] {
        for (app, env, env_config) in config.environments() {
            let TargetConfig::Ssm(target) = &env_config.target;
            let image =
                PinnedImage::parse(&format!("{registry}/acme/web@sha256:{}", "3f".repeat(32)))
                    .unwrap();
            let request = Request {
                image,
                tag: None,
                kind: Kind::Push,
                pushed_at: time::OffsetDateTime::now_utc(),
                requested_by: None,
                reason: None,
            };
            let dep = Deployment::new(
                app.clone(),
                env.clone(),
                request,
                time::OffsetDateTime::now_utc(),
            );
            sent.push(ssm.parameters(&dep, target));
        }
    }
    sent
}

/// The document's parameters by name, each with its compiled `allowedPattern`.
fn document_patterns(t: &Template) -> BTreeMap<String, Regex> {
    t.document()
        .unwrap()
        .parameters
        .into_iter()
        .map(|p| {
            let pattern = p
                .allowed_pattern
                .unwrap_or_else(|| panic!("document parameter {} has no allowedPattern", p.name));
            assert!(
                pattern.starts_with('^') && pattern.ends_with('$'),
                "{}: {pattern} is not anchored",
                p.name
            );
            (
                p.name,
                Regex::new(&pattern).expect("allowedPattern compiles"),
            )
        })
        .collect()
}

#[test]
fn the_document_takes_exactly_the_parameters_the_ssm_adapter_sends_and_accepts_their_values() {
    let t = template();
    let patterns = document_patterns(&t);
    let declared: BTreeSet<&str> = [
        params::IMAGE,
        params::REGISTRY,
        params::REGION,
        params::CONTAINER,
        params::PORTS,
        params::HEALTH_PORT,
        params::HEALTH_PATH,
        params::HEALTH_TIMEOUT,
        params::EXECUTION_TIMEOUT,
        params::DEPLOYMENT_ID,
    ]
    .into();
    let in_document: BTreeSet<&str> = patterns.keys().map(String::as_str).collect();
    assert_eq!(in_document, declared);

    let document = t.document().unwrap();
    for (name, p) in document.content["parameters"].as_object().unwrap() {
        assert_eq!(p["type"], "String", "{name}");
        assert!(
            p["description"].as_str().is_some_and(|d| !d.is_empty()),
            "{name} has no description"
        );
    }
    let ports = document
        .parameters
        .iter()
        .find(|p| p.name == params::PORTS)
        .unwrap();
    assert_eq!(ports.default.as_deref(), Some(""), "Ports may be left out");
    assert!(patterns[params::PORTS].is_match(""));

    for parameters in sent_parameters() {
        let sent: BTreeSet<&str> = parameters.iter().map(|(name, _)| *name).collect();
        assert_eq!(
            sent, declared,
            "the adapter sends every parameter, and only those"
        );
        for (name, value) in parameters {
            assert!(
                patterns[name].is_match(&value),
                "{name} = {value:?} does not match {}",
                patterns[name]
            );
        }
    }
}

#[test]
fn hostile_values_are_refused_by_every_pattern() {
    let patterns = document_patterns(&template());
    let valid: BTreeMap<&str, String> = sent_parameters().remove(0).into_iter().collect();
    // Every character a shell gives meaning to (`~` aside: HealthPath may hold it, and
    // the script only ever uses values inside quotes), alone and inside a longer value.
    let metacharacters = ";&|$`()<>'\"\\ \t\n*?[]{}!#=";
    let hostile: Vec<String> = metacharacters
        .chars()
        .map(String::from)
        .chain(["v1;$(reboot)", "`reboot`", "${IFS}", "a b", "a\nb"].map(String::from))
        .collect();
    for (name, pattern) in &patterns {
        let value = &valid[name.as_str()];
        for bad in &hostile {
            for candidate in [
                bad.to_owned(),
                format!("{value}{bad}"),
                format!("{bad}{value}"),
            ] {
                assert!(
                    !pattern.is_match(&candidate),
                    "{name} accepts {candidate:?}"
                );
            }
        }
    }
    // Paths that climb out of where they belong.
    for (name, candidate) in [
        (
            params::IMAGE,
            format!("registry.example/../acme/web@sha256:{}", "a".repeat(64)),
        ),
        (
            params::IMAGE,
            format!("registry.example/acme/../web@sha256:{}", "a".repeat(64)),
        ),
        (params::IMAGE, "registry.example/acme/web:v1".to_owned()),
        (params::REGISTRY, "../registry".to_owned()),
        (params::REGISTRY, "registry.example/acme".to_owned()),
        (params::CONTAINER, "../web".to_owned()),
        (params::CONTAINER, "web/..".to_owned()),
        (params::HEALTH_PATH, "health".to_owned()),
        (
            params::DEPLOYMENT_ID,
            "01jd8z6v6wq5n8b9c3h4k2m7px".to_owned(),
        ),
        (params::REGION, "../us-east-1".to_owned()),
    ] {
        assert!(
            !patterns[name].is_match(&candidate),
            "{name} accepts {candidate:?}"
        );
    }
}

#[test]
fn the_script_assigns_each_parameter_once_in_single_quotes_and_never_substitutes_again() {
    let document = template().document().unwrap();
    let placeholders = Regex::new(r"\{\{[^}]*\}\}").unwrap();
    let assignment = Regex::new(r"^[a-z_]+='\{\{ ([A-Za-z]+) \}\}'$").unwrap();
    let mut assigned = BTreeSet::new();
    for line in document.script.lines().filter(|l| placeholders.is_match(l)) {
        let name = assignment.captures(line).unwrap_or_else(|| {
            panic!("{line:?}: a placeholder outside a single-quoted assignment")
        })[1]
            .to_owned();
        assert!(assigned.insert(name.clone()), "{name} is assigned twice");
    }
    let parameters: BTreeSet<String> = document.parameters.iter().map(|p| p.name.clone()).collect();
    assert_eq!(assigned, parameters, "every parameter reaches the script");
    assert_eq!(
        document
            .content
            .pointer("/mainSteps/0/inputs/timeoutSeconds"),
        Some(&Json::String(format!(
            "{{{{ {} }}}}",
            params::EXECUTION_TIMEOUT
        )))
    );
}

#[test]
fn the_document_script_passes_shellcheck() {
    let script = template().document().unwrap().script;
    let file = std::env::temp_dir().join(format!("pushdeploy-deploy-{}.sh", std::process::id()));
    let text = if script.starts_with("#!") {
        script
    } else {
        format!("#!/usr/bin/env bash\n{script}")
    };
    std::fs::write(&file, text).unwrap();
    let out = Command::new("shellcheck")
        .args(["-s", "bash"])
        .arg(&file)
        .output()
        .unwrap_or_else(|e| panic!("cannot run shellcheck ({e}); {SETUP}"));
    let _ = std::fs::remove_file(&file);
    assert!(
        out.status.success(),
        "shellcheck found problems in the document's script:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs a tool of the virtualenv on the template, offline.
fn lint(tool: &str, args: &[&str]) -> std::process::Output {
    let program = venv_tool(tool);
    Command::new(&program)
        .args(args)
        .current_dir(workspace_root())
        .env("SAM_CLI_TELEMETRY", "0")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} ({e}); {SETUP}", program.display()))
}

fn assert_clean(tool: &str, out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{tool} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn cfn_lint_finds_nothing() {
    let out = lint("cfn-lint", &["template.yaml"]);
    assert_clean("cfn-lint", &out);
    assert!(
        out.stdout.is_empty(),
        "cfn-lint reported:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn sam_validate_lint_accepts_the_template() {
    let out = lint(
        "sam",
        &["validate", "--lint", "--template", "template.yaml"],
    );
    assert_clean("sam validate --lint", &out);
}

/// A policy statement, as JSON.
type Statement = Json;

/// The statements of a policy document, whether written as YAML or as JSON text.
fn statements_of(document: &Yaml) -> Vec<Statement> {
    let document = match resolve(document) {
        Json::String(text) => serde_json::from_str(&text).expect("policy JSON text parses"),
        other => other,
    };
    match &document["Statement"] {
        Json::Array(items) => items.clone(),
        single => vec![single.clone()],
    }
}

/// The branches a `!If` can take (`AWS::NoValue` dropped), or the value itself.
fn branches(value: &Yaml) -> Vec<Yaml> {
    match value {
        Yaml::Tagged(t) if t.tag.to_string().trim_start_matches('!') == "If" => t
            .value
            .as_sequence()
            .unwrap()
            .iter()
            .skip(1)
            .filter(|v| target_of(v).as_deref() != Some("AWS::NoValue"))
            .cloned()
            .collect(),
        other => vec![other.clone()],
    }
}

/// Every statement granted to each function (by package), and the AWS managed policies
/// its role carries beyond the basic logging one SAM always adds.
fn grants(t: &Template) -> BTreeMap<String, (Vec<Statement>, Vec<String>)> {
    let mut out = BTreeMap::new();
    for (id, package, props) in function_properties(t) {
        let mut statements = Vec::new();
        let mut managed = Vec::new();
        for policy in props
            .get("Policies")
            .and_then(Yaml::as_sequence)
            .into_iter()
            .flatten()
        {
            if policy.get("Statement").is_some() {
                statements.extend(statements_of(policy));
            } else if let Some(target) = target_of(policy) {
                let (ty, p) = t
                    .resource(&target)
                    .unwrap_or_else(|| panic!("{id}: no resource {target}"));
                assert_eq!(ty, "AWS::IAM::ManagedPolicy", "{id}: {target}");
                statements.extend(statements_of(p.get("PolicyDocument").unwrap()));
            } else {
                panic!(
                    "{id}: {policy:?} is not an inline statement or one of the template's own policies"
                );
            }
        }
        if let Some(role) = props.get("Role") {
            let target =
                target_of(role).unwrap_or_else(|| panic!("{id}: the role is not the template's"));
            let (ty, p) = t.resource(&target).unwrap();
            assert_eq!(ty, "AWS::IAM::Role", "{id}");
            for policy in p
                .get("Policies")
                .and_then(Yaml::as_sequence)
                .into_iter()
                .flatten()
            {
                statements.extend(statements_of(policy.get("PolicyDocument").unwrap()));
            }
            for arn in p
                .get("ManagedPolicyArns")
                .and_then(Yaml::as_sequence)
                .into_iter()
                .flatten()
            {
                for branch in branches(arn) {
                    managed.extend(strings(&resolve(&branch)));
                }
            }
        }
        out.insert(package, (statements, managed));
    }
    out
}

#[test]
fn no_function_is_granted_a_wildcard_action_or_an_unscoped_resource() {
    let t = template();
    let unscoped_allowed: BTreeSet<&str> = ["ssm:ListCommands", "ssm:CancelCommand"].into();
    for (function, (statements, managed)) in grants(&t) {
        for s in &statements {
            assert_eq!(s["Effect"], "Allow", "{function}: {s}");
            let actions = strings(&s["Action"]);
            assert!(!actions.is_empty(), "{function}: {s}");
            for action in &actions {
                assert!(!action.contains('*'), "{function} is granted {action}");
            }
            if strings(&s["Resource"]).iter().any(|r| r == "*") {
                assert!(
                    function == "tracker"
                        && actions
                            .iter()
                            .all(|a| unscoped_allowed.contains(a.as_str())),
                    "{function}: only the tracker's ListCommands and CancelCommand may use Resource \"*\": {s}"
                );
            }
            let on_instances = strings(&s["Resource"])
                .iter()
                .any(|r| r.contains("instance/"));
            if actions.iter().any(|a| a == "ssm:SendCommand") && on_instances {
                let condition = s["Condition"]["StringEquals"].as_object();
                assert!(
                    condition.is_some_and(|c| c.keys().all(|k| k.starts_with("ssm:resourceTag/"))),
                    "{function}: SendCommand on instances only with the pushdeploy tag: {s}"
                );
            }
        }
        for arn in managed {
            assert!(
                arn.ends_with(":policy/service-role/AWSLambdaVPCAccessExecutionRole"),
                "{function} carries the AWS managed policy {arn}"
            );
        }
    }
}

#[test]
fn each_function_is_granted_exactly_the_actions_its_adapters_call() {
    let core = [
        "dynamodb:GetItem",
        "dynamodb:Query",
        "dynamodb:PutItem",
        "dynamodb:DeleteItem",
        "ssm:GetParameter",
        "events:PutEvents",
    ];
    let expected: BTreeMap<&str, Vec<&str>> = [
        (
            "deployer",
            vec![
                "ecr:DescribeImages",
                "ecr:BatchGetImage",
                "ecr:PutImage",
                "ssm:SendCommand",
            ],
        ),
        (
            "tracker",
            vec!["ssm:SendCommand", "ssm:ListCommands", "ssm:CancelCommand"],
        ),
        // Its own role: what SAM adds to the others' (logs, the on-failure destination).
        (
            "verifier",
            vec![
                "logs:CreateLogStream",
                "logs:PutLogEvents",
                "sqs:SendMessage",
            ],
        ),
        ("rollback", vec!["ecr:DescribeImages", "ssm:SendCommand"]),
        ("control", vec![]),
        (
            "janitor",
            vec![
                "ecr:DescribeImages",
                "ecr:BatchGetImage",
                "ecr:BatchDeleteImage",
            ],
        ),
        ("notifier", vec!["secretsmanager:GetSecretValue"]),
    ]
    .into();
    for (function, (statements, _)) in grants(&template()) {
        let granted: BTreeSet<String> = statements
            .iter()
            .flat_map(|s| strings(&s["Action"]))
            .collect();
        // The janitor reads the state table and never writes it; the notifier publishes
        // nothing.
        let writes = ["dynamodb:PutItem", "dynamodb:DeleteItem"];
        let wanted: BTreeSet<String> = core
            .iter()
            .filter(|a| function != "janitor" || !writes.contains(a))
            .filter(|a| function != "notifier" || **a != "events:PutEvents")
            .chain(&expected[function.as_str()])
            .map(|a| a.to_string())
            .collect();
        assert_eq!(granted, wanted, "{function}");
    }
}

#[test]
fn the_initial_configuration_is_valid_and_deploys_nothing() {
    let t = template();
    let (ty, props) = t.resource("ConfigParameter").unwrap();
    assert_eq!(ty, "AWS::SSM::Parameter");
    let value = props.get("Value").and_then(Yaml::as_str).unwrap();
    let config = Config::from_yaml(value).expect("the template's initial configuration is valid");
    assert_eq!(config.environments().count(), 0);
}

#[test]
fn the_functions_read_the_settings_the_code_requires() {
    let t = template();
    let variables = resolve(
        t.at(&["Globals", "Function", "Environment", "Variables"])
            .unwrap(),
    );
    let lookup = |name: &str| variables[name].as_str().map(str::to_owned);
    let settings = pushdeploy::settings::Settings::from_lookup(lookup)
        .expect("settings from the template's variables");
    assert_eq!(settings.table, "<StateTable>");
    assert_eq!(settings.event_bus, "<EventBus>");
    assert_eq!(settings.require_document().unwrap(), "<DeployDocument>");
    assert_eq!(
        settings.config,
        pushdeploy::settings::ConfigLocation::Parameter("<ConfigParameterName>".into())
    );
}

/// The namespace every function's metrics go to.
fn metrics_namespace(t: &Template) -> String {
    let variables = resolve(
        t.at(&["Globals", "Function", "Environment", "Variables"])
            .unwrap(),
    );
    variables["PUSHDEPLOY_METRICS_NAMESPACE"]
        .as_str()
        .expect("the functions are told their metrics namespace")
        .to_owned()
}

#[test]
fn the_dashboard_is_valid_json_and_graphs_only_metrics_the_functions_emit() {
    let t = template();
    let (ty, props) = t.resource("Dashboard").unwrap();
    assert_eq!(ty, "AWS::CloudWatch::Dashboard");
    let body = resolve(props.get("DashboardBody").unwrap());
    let body: Json = serde_json::from_str(body.as_str().unwrap())
        .unwrap_or_else(|e| panic!("the dashboard body is not JSON: {e}"));
    let namespace = metrics_namespace(&t);
    let known: BTreeSet<&str> = Metric::ALL.iter().map(|m| m.name()).collect();
    let mut graphed = BTreeSet::new();
    let mut alarms = BTreeSet::new();
    let name = Regex::new(r#"MetricName="(\w+)""#).unwrap();
    for widget in body["widgets"].as_array().unwrap() {
        let p = &widget["properties"];
        for row in p["metrics"].as_array().into_iter().flatten() {
            let row = row.as_array().unwrap();
            match row[0].as_str() {
                Some(ns) if ns == namespace => {
                    graphed.insert(row[1].as_str().unwrap().to_owned());
                }
                // "." repeats the namespace of the row above.
                Some(".") => {
                    graphed.insert(row[1].as_str().unwrap().to_owned());
                }
                Some("AWS/SQS" | "AWS/Lambda" | "...") => {}
                Some(other) => panic!("unexpected namespace {other} in the dashboard"),
                None => {
                    let expression = row[0]["expression"].as_str().unwrap();
                    assert!(
                        expression.contains(&format!("{{{namespace},App,Environment}}")),
                        "{expression}"
                    );
                    graphed.insert(name.captures(expression).unwrap()[1].to_owned());
                }
            }
        }
        for alarm in p["alarms"].as_array().into_iter().flatten() {
            alarms.insert(alarm.as_str().unwrap().to_owned());
        }
    }
    for name in &graphed {
        assert!(
            known.contains(name.as_str()),
            "the dashboard graphs {name}, which nothing emits"
        );
    }
    assert_eq!(
        graphed.iter().map(String::as_str).collect::<BTreeSet<_>>(),
        known,
        "every metric has a graph"
    );
    assert_eq!(
        alarms,
        [
            "<DeadLetterAlarm.Arn>",
            "<FunctionErrorsAlarm.Arn>",
            "<RollbackFailedAlarm.Arn>"
        ]
        .map(String::from)
        .into(),
        "the dashboard shows every alarm"
    );
}

#[test]
fn the_alarms_watch_failed_rollbacks_dead_letters_and_every_function_and_reach_the_topic() {
    let t = template();
    let alarm = |id: &str| {
        let (ty, props) = t.resource(id).unwrap();
        assert_eq!(ty, "AWS::CloudWatch::Alarm", "{id}");
        let props = resolve(props);
        assert_eq!(
            props["AlarmActions"],
            serde_json::json!(["<AlertTopic>"]),
            "{id}"
        );
        assert_eq!(props["TreatMissingData"], "notBreaching", "{id}");
        props
    };
    let rollback = alarm("RollbackFailedAlarm");
    assert_eq!(
        rollback["Namespace"].as_str().unwrap(),
        metrics_namespace(&t)
    );
    assert_eq!(rollback["MetricName"], Metric::RollbackFailed.name());
    assert!(
        rollback.get("Dimensions").is_none(),
        "the alarm reads the metric every app and environment add to"
    );
    let dead = alarm("DeadLetterAlarm");
    assert_eq!(
        dead["Dimensions"][0]["Value"],
        "<DeadLetterQueue.QueueName>"
    );
    let errors = alarm("FunctionErrorsAlarm");
    let watched: BTreeSet<String> = errors["Metrics"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["MetricStat"]["Metric"]["Dimensions"][0]["Value"].as_str())
        .map(|v| v.trim_matches(['<', '>']).to_owned())
        .collect();
    let functions: BTreeSet<String> = t
        .functions(&placeholder)
        .unwrap()
        .into_iter()
        .map(|f| f.logical_id)
        .collect();
    assert_eq!(watched, functions, "the error alarm covers every function");
    let expression = errors["Metrics"][0]["Expression"].as_str().unwrap();
    for m in errors["Metrics"].as_array().unwrap().iter().skip(1) {
        assert!(
            expression.contains(m["Id"].as_str().unwrap()),
            "{expression}"
        );
    }
    // The topic lets exactly these alarms publish.
    let (_, policy) = t.resource("AlertTopicPolicy").unwrap();
    let policy = resolve(policy);
    let from_alarms: BTreeSet<String> = policy["PolicyDocument"]["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["Principal"]["Service"] == "cloudwatch.amazonaws.com")
        .flat_map(|s| strings(&s["Condition"]["ArnEquals"]["aws:SourceArn"]))
        .collect();
    assert_eq!(
        from_alarms,
        [
            "<DeadLetterAlarm.Arn>",
            "<FunctionErrorsAlarm.Arn>",
            "<RollbackFailedAlarm.Arn>"
        ]
        .map(String::from)
        .into()
    );
}

#[test]
fn the_janitor_runs_on_its_schedule_with_the_dry_run_setting() {
    let t = template();
    let janitor = t
        .functions(&placeholder)
        .unwrap()
        .into_iter()
        .find(|f| f.package == "janitor")
        .expect("the janitor is in the template");
    assert!(
        janitor.triggers.iter().any(|tr| matches!(tr, Trigger::Schedule { expression, .. } if expression == "<JanitorSchedule>")),
        "{:?}",
        janitor.triggers
    );
    let (variables, _) = t.function_environment(&janitor.logical_id, &placeholder);
    assert_eq!(variables["PUSHDEPLOY_JANITOR_DRY_RUN"], "<JanitorDryRun>");
    let default = t.at(&["Parameters", "JanitorDryRun", "Default"]);
    assert_eq!(default.and_then(Yaml::as_str), Some("false"));
}
