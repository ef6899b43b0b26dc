//! `template.yaml` checked against the code it deploys: every function is built and wired
//! the way its handler expects, the SSM document accepts exactly what the SSM adapter
//! sends and nothing hostile, its script passes shellcheck, the template passes cfn-lint
//! and `sam validate --lint`, and every function's policy stays least-privilege, in stacks
//! with and without ECS services and CodeDeploy deployment groups. The CodeDeploy bundle
//! runs the document's own script, and its hooks pass shellcheck too.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use pushdeploy::adapters::codedeploy;
use pushdeploy::adapters::ssm::{SsmRunCommand, params};
use pushdeploy::domain::config::{CodeDeployPlatform, CodeDeployTarget};
use pushdeploy::domain::{
    AppName, Config, Deployment, EnvName, EventType, Kind, PinnedImage, Request, TargetConfig,
};
use pushdeploy::entrypoints::{
    Bus as CodeBus, Function, ROUTES, Trigger as CodeTrigger, routed_to,
};
use pushdeploy::metrics::Metric;
use pushdeploy_local::moto::{venv_tool, workspace_root};
use pushdeploy_local::template::{Bus, Template, Trigger, to_json};
use pushdeploy_tests::policy::{
    self, Statement, function_properties, intrinsic, strings, target_of,
};
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

fn is_dead_letter_queue(value: Option<&Yaml>) -> bool {
    value.and_then(target_of).as_deref() == Some("DeadLetterQueue")
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

    // EventBridge may write to the queue for exactly the stack's rules: the template's own
    // and those SAM makes of each function's events (named <function><event>).
    let mut rules: BTreeSet<String> = t
        .resources()
        .filter(|(_, ty, _)| *ty == "AWS::Events::Rule")
        .map(|(id, _, _)| format!("<{id}.Arn>"))
        .collect();
    for f in &functions {
        for trigger in &f.triggers {
            let (Trigger::Rule { name, .. } | Trigger::Schedule { name, .. }) = trigger;
            rules.insert(format!("<{}{name}.Arn>", f.logical_id));
        }
    }
    let (_, policy) = t.resource("DeadLetterQueuePolicy").unwrap();
    let policy = resolve(policy);
    let from_events: BTreeSet<String> = policy["PolicyDocument"]["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["Principal"]["Service"] == "events.amazonaws.com")
        .flat_map(|s| strings(&s["Condition"]["ArnEquals"]["aws:SourceArn"]))
        .collect();
    assert_eq!(
        from_events, rules,
        "the dead-letter queue takes the undeliverable events of every rule, and only those"
    );
    for rule in [
        "<TrackerFunctionSsmStatus.Arn>",
        "<TrackerFunctionEcsDeploymentState.Arn>",
        "<TrackerFunctionCodeDeployState.Arn>",
    ] {
        assert!(
            from_events.contains(rule),
            "{rule} is not in the queue's policy"
        );
    }
}

/// Every route of the routing table, as (function, trigger): the bus (or the schedule's
/// parameter), the source, the detail-types and the detail filter, as the template writes
/// them.
/// A rule's pattern with its detail-types in order, since their order means nothing.
fn normalized(mut trigger: Json) -> String {
    if let Some(types) = trigger
        .pointer_mut("/pattern/detail-type")
        .and_then(Json::as_array_mut)
    {
        types.sort_by_key(|t| t.to_string());
    }
    trigger.to_string()
}

fn routes_in_code() -> BTreeSet<(String, String)> {
    ROUTES
        .iter()
        .map(|r| {
            let trigger = match r.trigger {
                CodeTrigger::Rule {
                    bus,
                    source,
                    detail_types,
                    detail,
                } => {
                    let mut pattern = serde_json::json!({
                        "source": [source],
                        "detail-type": detail_types,
                    });
                    if !detail.is_empty() {
                        let filter: serde_json::Map<String, Json> = detail
                            .iter()
                            .map(|(k, v)| ((*k).to_owned(), serde_json::json!(v)))
                            .collect();
                        pattern["detail"] = Json::Object(filter);
                    }
                    let bus = match bus {
                        CodeBus::Default => "default",
                        CodeBus::Pushdeploy => "EventBus",
                    };
                    serde_json::json!({ "bus": bus, "pattern": pattern })
                }
                CodeTrigger::Schedule { parameter } => {
                    serde_json::json!({ "schedule": format!("<{parameter}>") })
                }
            };
            (r.function.name().to_owned(), normalized(trigger))
        })
        .collect()
}

/// Every rule and schedule of the template, in the same shape.
fn routes_in_template(t: &Template) -> BTreeSet<(String, String)> {
    let mut routes = BTreeSet::new();
    for f in t.functions(&placeholder).unwrap() {
        for trigger in f.triggers {
            let json = match trigger {
                Trigger::Rule { bus, pattern, .. } => {
                    let bus = match bus {
                        Bus::Default => "default".to_owned(),
                        Bus::Resource(name) => name,
                    };
                    serde_json::json!({ "bus": bus, "pattern": pattern })
                }
                Trigger::Schedule { expression, .. } => {
                    serde_json::json!({ "schedule": expression })
                }
            };
            let key = (f.package.clone(), normalized(json.clone()));
            assert!(routes.insert(key), "{}: {json} twice", f.package);
        }
    }
    routes
}

#[test]
fn the_templates_rules_and_schedules_are_exactly_the_routing_table() {
    let t = template();
    let in_template = routes_in_template(&t);
    let in_code = routes_in_code();
    let missing: Vec<_> = in_code.difference(&in_template).collect();
    let extra: Vec<_> = in_template.difference(&in_code).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "routes the template lacks: {missing:#?}\nrules the code does not route: {extra:#?}"
    );
    for function in Function::ALL {
        assert!(
            t.functions(&placeholder)
                .unwrap()
                .iter()
                .any(|f| f.package == function.name()),
            "{} has no function in the template",
            function.name()
        );
    }
}

#[test]
fn the_notifier_is_routed_exactly_the_events_it_has_a_message_for() {
    let with_message: BTreeSet<&str> = EventType::ALL
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
        .map(EventType::as_str)
        .collect();
    let routed: BTreeSet<&str> = EventType::ALL
        .into_iter()
        .map(EventType::as_str)
        .filter(|t| routed_to(pushdeploy::domain::event::SOURCE, t).contains(&Function::Notifier))
        .collect();
    assert_eq!(routed, with_message);
}

#[test]
fn only_a_failed_rollback_alerts_a_person_and_codedeploy_ends_need_no_read_back() {
    let t = template();
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
    for state in ["SUCCESS", "FAILURE", "STOP"] {
        assert!(
            codedeploy::events::status_from_event("d-1", state).is_some(),
            "the tracker cannot tell what {state} means without a read back"
        );
    }
}

fn ssm_adapter() -> SsmRunCommand {
    let sdk = SdkConfig::builder()
        .region(Region::new("us-east-1"))
        .behavior_version(BehaviorVersion::latest())
        .build();
    SsmRunCommand::new(aws_sdk_ssm::Client::new(&sdk), "pushdeploy-deploy")
}

/// A deployment of a pushed image of `acme/web` from `registry` to `app`/`env`.
fn push_of(app: &AppName, env: &EnvName, registry: &str) -> Deployment {
    let image =
        PinnedImage::parse(&format!("{registry}/acme/web@sha256:{}", "3f".repeat(32))).unwrap();
    let request = Request {
        image,
        tag: None,
        kind: Kind::Push,
        pushed_at: time::OffsetDateTime::now_utc(),
        requested_by: None,
        reason: None,
    };
    Deployment::new(
        app.clone(),
        env.clone(),
        request,
        time::OffsetDateTime::now_utc(),
    )
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
            let TargetConfig::Ssm(target) = &env_config.target else {
                continue;
            };
            let dep = push_of(app, env, registry);
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

/// The ECS services and task roles of the stacks with ECS below.
const ECS_SERVICES: &str = "prod/web,prod-eu/checkout_api";
const ECS_TASK_ROLES: &str =
    "arn:aws:iam::123456789012:role/web-task,arn:aws:iam::123456789012:role/ecsTaskExecutionRole";

/// The CloudWatch alarms of the stack whose environments watch some.
const WATCHED_ALARMS: &str = "web-staging-5xx,web production latency (p99)";

/// The CodeDeploy deployment groups of the stacks with CodeDeploy below, as
/// APPLICATION/DEPLOYMENT_GROUP.
const CODEDEPLOY_GROUPS: &str = "web/web-production,checkout.api/blue_green+1";

/// The parameter values a stack is deployed with: the template's defaults, some overridden.
#[derive(Debug, Clone, Default)]
struct Stack {
    overrides: BTreeMap<&'static str, &'static str>,
}

impl Stack {
    fn with(mut self, parameter: &'static str, value: &'static str) -> Self {
        self.overrides.insert(parameter, value);
        self
    }

    /// ECS services whose task definitions name a task and an execution role.
    fn ecs() -> Self {
        Self::default()
            .with("EcsServices", ECS_SERVICES)
            .with("EcsTaskRoles", ECS_TASK_ROLES)
    }

    /// CodeDeploy deployment groups (EC2/on-premises ones, or with `ecs()` blue/green ones).
    fn codedeploy(self) -> Self {
        self.with("CodeDeployGroups", CODEDEPLOY_GROUPS)
    }

    /// The value of a list parameter (empty when not overridden or empty).
    fn list(&self, parameter: &str) -> Vec<String> {
        self.overrides
            .get(parameter)
            .into_iter()
            .flat_map(|v| v.split(','))
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

/// Every stack the policy tests look at.
fn stacks() -> Vec<(&'static str, Stack)> {
    vec![
        ("the default stack (no ECS service)", Stack::default()),
        ("a stack with ECS services and task roles", Stack::ecs()),
        (
            "a stack with ECS services whose task definitions name no role",
            Stack::default().with("EcsServices", ECS_SERVICES),
        ),
        (
            "a stack with task roles but no ECS service",
            Stack::default().with("EcsTaskRoles", ECS_TASK_ROLES),
        ),
        (
            "a stack with CodeDeploy deployment groups",
            Stack::default().codedeploy(),
        ),
        (
            "a stack with ECS services deployed blue/green through CodeDeploy",
            Stack::ecs().codedeploy(),
        ),
        (
            "a stack whose environments watch alarms",
            Stack::default().with("WatchedAlarms", WATCHED_ALARMS),
        ),
    ]
}

/// Every statement granted to each function in `stack`, references as placeholders.
fn grants(t: &Template, stack: &Stack) -> BTreeMap<String, (Vec<Statement>, Vec<String>)> {
    policy::grants(t, &stack.overrides, &placeholder)
}

/// The template as CloudFormation reads it for `stack`.
fn evaluated<'a>(t: &'a Template, stack: &Stack) -> policy::Evaluated<'a> {
    policy::Evaluated::new(t, &stack.overrides)
}

/// The functions that start rollouts, and so may deploy to ECS services.
const STARTERS: [&str; 3] = ["deployer", "tracker", "rollback"];

/// What ECS asks of a rollout: the service, the task definitions, the tags a new revision
/// copies.
const ECS_SERVICE_ACTIONS: [&str; 2] = ["ecs:DescribeServices", "ecs:UpdateService"];
const ECS_TASK_DEFINITION_ACTIONS: [&str; 4] = [
    "ecs:DescribeTaskDefinition",
    "ecs:RegisterTaskDefinition",
    "ecs:ListTaskDefinitions",
    "ecs:DeregisterTaskDefinition",
];

/// What the CodeDeploy adapter calls on a deployment group (create and stop; find and
/// follow), what
/// CreateDeployment asks on the side (the group's deployment configuration, registering
/// the revision), and the upload of an EC2/on-premises bundle.
const CODEDEPLOY_GROUP_ACTIONS: [&str; 4] = [
    "codedeploy:CreateDeployment",
    "codedeploy:GetDeployment",
    "codedeploy:StopDeployment",
    "codedeploy:ListDeployments",
];
const CODEDEPLOY_REVISION_ACTIONS: [&str; 2] = [
    "codedeploy:RegisterApplicationRevision",
    "codedeploy:GetApplicationRevision",
];
const CODEDEPLOY_CONFIG_ACTION: &str = "codedeploy:GetDeploymentConfig";
const BUNDLE_UPLOAD_ACTION: &str = "s3:PutObject";

#[test]
fn no_function_is_granted_a_wildcard_action_or_an_unscoped_resource() {
    let t = template();
    let unscoped_ssm: BTreeSet<&str> = [
        "ssm:ListCommands",
        "ssm:ListCommandInvocations",
        "ssm:CancelCommand",
    ]
    .into();
    let unscoped_ecs: BTreeSet<&str> = ECS_TASK_DEFINITION_ACTIONS.into();
    for (stack_name, stack) in stacks() {
        let services: Vec<String> = stack
            .list("EcsServices")
            .iter()
            .map(|s| format!("arn:*:ecs:*:*:service/{s}"))
            .collect();
        let roles = stack.list("EcsTaskRoles");
        let groups: Vec<String> = stack
            .list("CodeDeployGroups")
            .iter()
            .map(|g| format!("arn:*:codedeploy:*:*:deploymentgroup:{g}"))
            .collect();
        for (function, (statements, managed)) in grants(&t, &stack) {
            let context = format!("{stack_name}: {function}");
            for s in &statements {
                assert_eq!(s["Effect"], "Allow", "{context}: {s}");
                let actions = strings(&s["Action"]);
                let resources = strings(&s["Resource"]);
                assert!(!actions.is_empty(), "{context}: {s}");
                assert!(!resources.is_empty(), "{context}: {s}");
                let has = |action: &str| actions.iter().any(|a| a == action);
                for action in &actions {
                    assert!(!action.contains('*'), "{context} is granted {action}");
                }
                if resources.iter().any(|r| r == "*") {
                    // The tracker follows commands; the rollback looks one up again.
                    let ssm = (function == "tracker"
                        || (function == "rollback" && actions == ["ssm:ListCommands"]))
                        && actions.iter().all(|a| unscoped_ssm.contains(a.as_str()));
                    let ecs = STARTERS.contains(&function.as_str())
                        && actions.iter().all(|a| unscoped_ecs.contains(a.as_str()));
                    assert!(
                        ssm || ecs,
                        "{context}: only the tracker's ListCommands and CancelCommand (and the \
                         rollback's ListCommands) and the ECS task definition actions may use \
                         Resource \"*\": {s}"
                    );
                }
                let on_instances = resources.iter().any(|r| r.contains("instance/"));
                if has("ssm:SendCommand") && on_instances {
                    let condition = s["Condition"]["StringEquals"].as_object();
                    assert!(
                        condition
                            .is_some_and(|c| c.keys().all(|k| k.starts_with("ssm:resourceTag/"))),
                        "{context}: SendCommand on instances only with the pushdeploy tag: {s}"
                    );
                }
                if ECS_SERVICE_ACTIONS.iter().any(|a| has(a)) {
                    assert_eq!(
                        resources, services,
                        "{context}: the services of EcsServices only: {s}"
                    );
                    assert_eq!(
                        s["Condition"],
                        serde_json::json!({ "StringEquals": { "aws:RequestedRegion": "<AWS::Region>" } }),
                        "{context}: the services in the stack's region only: {s}"
                    );
                }
                if has("ecs:TagResource") {
                    assert_eq!(actions, ["ecs:TagResource"], "{context}: {s}");
                    assert_eq!(
                        resources,
                        [
                            "arn:<AWS::Partition>:ecs:<AWS::Region>:<AWS::AccountId>:task-definition/*"
                        ],
                        "{context}: {s}"
                    );
                    assert_eq!(
                        s["Condition"],
                        serde_json::json!({ "StringEquals": { "ecs:CreateAction": "RegisterTaskDefinition" } }),
                        "{context}: tags only on the revisions it registers: {s}"
                    );
                }
                if has("cloudwatch:DescribeAlarms") {
                    let alarms: Vec<String> = stack
                        .list("WatchedAlarms")
                        .iter()
                        .map(|a| format!("arn:*:cloudwatch:*:*:alarm:{a}"))
                        .collect();
                    assert_eq!(function, "verifier", "{context}: {s}");
                    assert_eq!(actions, ["cloudwatch:DescribeAlarms"], "{context}: {s}");
                    assert_eq!(
                        resources, alarms,
                        "{context}: the alarms of WatchedAlarms only: {s}"
                    );
                    assert_eq!(
                        s["Condition"],
                        serde_json::json!({ "StringEquals": { "aws:RequestedRegion": "<AWS::Region>" } }),
                        "{context}: the alarms in the stack's region only: {s}"
                    );
                }
                if CODEDEPLOY_GROUP_ACTIONS.iter().any(|a| has(a)) {
                    assert!(
                        actions
                            .iter()
                            .all(|a| CODEDEPLOY_GROUP_ACTIONS.contains(&a.as_str())),
                        "{context}: only these on deployment groups: {s}"
                    );
                    assert!(!groups.is_empty(), "{context}: no deployment group: {s}");
                    assert_eq!(
                        resources, groups,
                        "{context}: the deployment groups of CodeDeployGroups only: {s}"
                    );
                    assert_eq!(
                        s["Condition"],
                        serde_json::json!({ "StringEquals": { "aws:RequestedRegion": "<AWS::Region>" } }),
                        "{context}: the groups in the stack's region only: {s}"
                    );
                }
                if has(CODEDEPLOY_CONFIG_ACTION) {
                    assert_eq!(actions, [CODEDEPLOY_CONFIG_ACTION], "{context}: {s}");
                    assert_eq!(
                        resources,
                        [
                            "arn:<AWS::Partition>:codedeploy:<AWS::Region>:<AWS::AccountId>:deploymentconfig:*"
                        ],
                        "{context}: deployment configurations of this account and region: {s}"
                    );
                }
                if CODEDEPLOY_REVISION_ACTIONS.iter().any(|a| has(a)) {
                    assert_eq!(actions, CODEDEPLOY_REVISION_ACTIONS, "{context}: {s}");
                    assert_eq!(
                        resources,
                        [
                            "arn:<AWS::Partition>:codedeploy:<AWS::Region>:<AWS::AccountId>:application:*"
                        ],
                        "{context}: applications of this account and region: {s}"
                    );
                }
                if actions.iter().any(|a| a.starts_with("s3:")) {
                    assert_eq!(
                        actions,
                        [BUNDLE_UPLOAD_ACTION],
                        "{context}: bundles are uploaded, never read or deleted: {s}"
                    );
                    assert_eq!(
                        resources,
                        ["<BundleBucket.Arn>/bundles/*"],
                        "{context}: the bundles of the stack's bucket only: {s}"
                    );
                }
                if has("iam:PassRole") {
                    assert_eq!(actions, ["iam:PassRole"], "{context}: {s}");
                    assert!(!roles.is_empty(), "{context}: no role to pass: {s}");
                    assert_eq!(
                        resources, roles,
                        "{context}: the roles of EcsTaskRoles only, never \"*\": {s}"
                    );
                    assert_eq!(
                        s["Condition"],
                        serde_json::json!({ "StringEquals": { "iam:PassedToService": "ecs-tasks.amazonaws.com" } }),
                        "{context}: roles are passed to ECS tasks only: {s}"
                    );
                }
            }
            for arn in managed {
                assert!(
                    arn.ends_with(":policy/service-role/AWSLambdaVPCAccessExecutionRole"),
                    "{context} carries the AWS managed policy {arn}"
                );
            }
        }
    }
}

/// IAM's actions by service prefix, lowercased, as cfn-lint knows them.
fn iam_actions() -> BTreeMap<String, BTreeSet<String>> {
    let python = venv_tool("python3");
    let out = Command::new(&python)
        .args([
            "-c",
            "import os, cfnlint.data.AdditionalSpecs as s; \
             print(os.path.join(os.path.dirname(s.__file__), 'Policies.json'))",
        ])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} ({e}); {SETUP}", python.display()));
    assert!(
        out.status.success(),
        "cfn-lint's IAM data not found: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = String::from_utf8(out.stdout).unwrap();
    let text = std::fs::read_to_string(path.trim()).unwrap();
    let policies: Json = serde_json::from_str(&text).unwrap();
    policies
        .as_object()
        .unwrap()
        .iter()
        .map(|(service, spec)| {
            let actions = spec["Actions"]
                .as_object()
                .into_iter()
                .flat_map(|a| a.keys().map(|k| k.to_lowercase()))
                .collect();
            (service.clone(), actions)
        })
        .collect()
}

/// cfn-lint does not check the actions of a SAM template's policies (the transform hides
/// them), so every action granted in every stack is looked up here.
#[test]
fn every_granted_action_exists_in_iam() {
    let known = iam_actions();
    let t = template();
    for (stack_name, stack) in stacks() {
        for (function, (statements, _)) in grants(&t, &stack) {
            for s in &statements {
                for action in strings(&s["Action"]) {
                    let (service, name) = action
                        .split_once(':')
                        .unwrap_or_else(|| panic!("{action} is not service:action"));
                    assert!(
                        known
                            .get(service)
                            .is_some_and(|a| a.contains(&name.to_lowercase())),
                        "{stack_name}: {function} is granted {action}, which IAM does not know"
                    );
                }
            }
        }
    }
}

#[test]
fn without_ecs_services_the_stack_creates_and_grants_nothing_for_ecs() {
    let t = template();
    let conditions = |stack: &Stack| {
        let e = evaluated(&t, stack);
        (
            e.condition("HasEcsServices"),
            e.condition("HasEcsTaskRoles"),
        )
    };
    assert_eq!(conditions(&Stack::default()), (false, false));
    assert_eq!(
        conditions(&Stack::default().with("EcsTaskRoles", ECS_TASK_ROLES)),
        (false, false),
        "task roles alone grant nothing"
    );
    assert_eq!(
        conditions(&Stack::default().with("EcsServices", ECS_SERVICES)),
        (true, false)
    );
    assert_eq!(conditions(&Stack::ecs()), (true, true));

    // The ECS policy exists only with services, and every function takes it under the same
    // condition.
    let (ty, _) = t.resource("EcsDeployPolicy").unwrap();
    assert_eq!(ty, "AWS::IAM::ManagedPolicy");
    assert_eq!(
        t.at(&["Resources", "EcsDeployPolicy", "Condition"])
            .and_then(Yaml::as_str),
        Some("HasEcsServices")
    );
    for (id, package, props) in function_properties(&t) {
        for policy in props
            .get("Policies")
            .and_then(Yaml::as_sequence)
            .into_iter()
            .flatten()
        {
            let refers = format!("{policy:?}").contains("EcsDeployPolicy");
            if refers {
                assert!(STARTERS.contains(&package.as_str()), "{id}");
                let Some((function, arg)) = intrinsic(policy) else {
                    panic!("{id}: EcsDeployPolicy without its condition")
                };
                assert_eq!(function, "If", "{id}");
                assert_eq!(arg[0].as_str(), Some("HasEcsServices"), "{id}");
            }
        }
    }

    for (stack_name, stack) in [
        ("no ECS service", Stack::default()),
        (
            "task roles only",
            Stack::default().with("EcsTaskRoles", ECS_TASK_ROLES),
        ),
    ] {
        for (function, (statements, _)) in grants(&t, &stack) {
            for s in &statements {
                for action in strings(&s["Action"]) {
                    assert!(
                        !action.starts_with("ecs:") && action != "iam:PassRole",
                        "{stack_name}: {function} is granted {action}"
                    );
                }
            }
        }
    }
    let (statements, _) =
        &grants(&t, &Stack::default().with("EcsServices", ECS_SERVICES))["deployer"];
    assert!(
        statements
            .iter()
            .all(|s| !strings(&s["Action"]).contains(&"iam:PassRole".to_owned())),
        "no role to pass, no iam:PassRole"
    );
}

/// A parameter's `AllowedPattern`, which CloudFormation holds each item of a list to.
fn parameter_pattern(t: &Template, name: &str) -> Regex {
    let pattern = t
        .at(&["Parameters", name, "AllowedPattern"])
        .and_then(Yaml::as_str)
        .unwrap_or_else(|| panic!("{name} has no AllowedPattern"));
    assert!(pattern.starts_with('^') && pattern.ends_with('$'), "{name}");
    Regex::new(pattern).unwrap()
}

#[test]
fn the_ecs_parameters_take_the_services_the_configuration_names_and_role_arns() {
    let t = template();
    let services = parameter_pattern(&t, "EcsServices");
    let roles = parameter_pattern(&t, "EcsTaskRoles");
    for name in ["EcsServices", "EcsTaskRoles"] {
        assert_eq!(
            t.at(&["Parameters", name, "Type"]).and_then(Yaml::as_str),
            Some("CommaDelimitedList"),
            "{name}"
        );
        assert_eq!(
            t.parameter_defaults().get(name).map(String::as_str),
            Some(""),
            "{name}: ECS is off unless asked for"
        );
    }
    assert!(services.is_match("") && roles.is_match(""));

    // Every service an ecs target may name, as CLUSTER/SERVICE.
    let config = Config::from_yaml(
        r#"
apps:
  web:
    repository: acme/web
    environments:
      production:
        target: { ecs: { cluster: prod-eu_1, service: checkout_api-2, container: web } }
"#,
    )
    .expect("a valid ECS configuration");
    for (_, env, env_config) in config.environments() {
        let TargetConfig::Ecs(ecs) = &env_config.target else {
            panic!("{env}: not an ECS target")
        };
        let service = format!("{}/{}", ecs.cluster, ecs.service);
        assert!(services.is_match(&service), "{service}");
    }
    for item in ECS_SERVICES.split(',') {
        assert!(services.is_match(item), "{item}");
    }
    for bad in [
        "web",
        "prod/web/extra",
        "arn:aws:ecs:eu-west-1:123456789012:service/prod/web",
        "prod/web ",
        "prod/*",
    ] {
        assert!(!services.is_match(bad), "EcsServices takes {bad:?}");
    }

    for item in ECS_TASK_ROLES.split(',').chain([
        "arn:aws-cn:iam::123456789012:role/service-role/web-task",
        "arn:aws-us-gov:iam::123456789012:role/web.task@prod",
    ]) {
        assert!(roles.is_match(item), "{item}");
    }
    for bad in [
        "web-task",
        "arn:aws:iam::123456789012:role/*",
        "arn:aws:iam::123456789012:user/alice",
        "arn:aws:iam::123456789012:policy/web",
        "*",
    ] {
        assert!(!roles.is_match(bad), "EcsTaskRoles takes {bad:?}");
    }
}

#[test]
fn the_codedeploy_parameter_takes_the_groups_the_configuration_names() {
    let t = template();
    let groups = parameter_pattern(&t, "CodeDeployGroups");
    assert_eq!(
        t.at(&["Parameters", "CodeDeployGroups", "Type"])
            .and_then(Yaml::as_str),
        Some("CommaDelimitedList")
    );
    assert_eq!(
        t.parameter_defaults()
            .get("CodeDeployGroups")
            .map(String::as_str),
        Some(""),
        "CodeDeploy is off unless asked for"
    );
    assert!(groups.is_match(""));
    for item in CODEDEPLOY_GROUPS.split(',') {
        assert!(groups.is_match(item), "{item}");
    }

    // A name is an APPLICATION or DEPLOYMENT_GROUP item exactly when a codedeploy target
    // may name it.
    let config_takes = |application: &str, group: &str| {
        Config::from_yaml(&format!(
            r#"
apps:
  web:
    repository: acme/web
    environments:
      hosts:
        target:
          codedeploy:
            application: "{application}"
            deployment_group: "{group}"
            ec2: {{ container: web, ports: ["80:8000"] }}
      blue-green:
        target:
          codedeploy:
            application: "{application}"
            deployment_group: "{group}"
            ecs: {{ cluster: prod, service: web, container: web, container_port: 8000 }}
"#
        ))
        .is_ok()
    };
    let longest = "a".repeat(100);
    let too_long = "a".repeat(101);
    for name in [
        "web",
        "Web.API+v2_1-x",
        longest.as_str(),
        too_long.as_str(),
        "",
        "web app",
        "web/app",
        "web,app",
        "wéb",
        "*",
        "web:app",
    ] {
        for (application, group) in [(name, "web-production"), ("web", name)] {
            let item = format!("{application}/{group}");
            assert_eq!(
                groups.is_match(&item),
                config_takes(application, group),
                "CodeDeployGroups and the configuration disagree on {item:?}"
            );
        }
    }
    assert!(config_takes("Web.API+v2_1-x", &longest));
    for bad in [
        "web",
        "web/web-production/extra",
        "arn:aws:codedeploy:eu-west-1:123456789012:deploymentgroup:web/web-production",
        "web/web-production ",
        "web/*",
        "/web-production",
        "web/",
    ] {
        assert!(!groups.is_match(bad), "CodeDeployGroups takes {bad:?}");
    }
}

#[test]
fn without_codedeploy_groups_the_stack_creates_and_grants_nothing_for_codedeploy() {
    let t = template();
    let has_groups = |stack: &Stack| evaluated(&t, stack).condition("HasCodeDeployGroups");
    assert!(!has_groups(&Stack::default()));
    assert!(
        !has_groups(&Stack::ecs()),
        "ECS services alone are not CodeDeploy"
    );
    assert!(has_groups(&Stack::default().codedeploy()));
    assert!(has_groups(&Stack::ecs().codedeploy()));

    // The policy, the bucket and its policy exist only with deployment groups, and so does
    // the output naming the bucket.
    for (id, ty) in [
        ("CodeDeployPolicy", "AWS::IAM::ManagedPolicy"),
        ("BundleBucket", "AWS::S3::Bucket"),
        ("BundleBucketPolicy", "AWS::S3::BucketPolicy"),
    ] {
        let (found, _) = t
            .resource(id)
            .unwrap_or_else(|| panic!("the template has no {id}"));
        assert_eq!(found, ty, "{id}");
        assert_eq!(
            t.at(&["Resources", id, "Condition"]).and_then(Yaml::as_str),
            Some("HasCodeDeployGroups"),
            "{id}"
        );
    }
    assert_eq!(
        t.at(&["Outputs", "BundleBucketName", "Condition"])
            .and_then(Yaml::as_str),
        Some("HasCodeDeployGroups")
    );
    assert_eq!(
        resolve(t.at(&["Outputs", "BundleBucketName", "Value"]).unwrap()),
        "<BundleBucket>"
    );

    // Exactly the functions that start rollouts take the policy, under the same condition.
    let mut given = BTreeSet::new();
    for (id, package, props) in function_properties(&t) {
        for policy in props
            .get("Policies")
            .and_then(Yaml::as_sequence)
            .into_iter()
            .flatten()
        {
            if format!("{policy:?}").contains("CodeDeployPolicy") {
                let Some((function, arg)) = intrinsic(policy) else {
                    panic!("{id}: CodeDeployPolicy without its condition")
                };
                assert_eq!(function, "If", "{id}");
                assert_eq!(arg[0].as_str(), Some("HasCodeDeployGroups"), "{id}");
                given.insert(package.clone());
            }
        }
    }
    assert_eq!(given, STARTERS.map(String::from).into());

    for (stack_name, stack) in [
        ("no deployment group", Stack::default()),
        ("ECS services only", Stack::ecs()),
    ] {
        for (function, (statements, _)) in grants(&t, &stack) {
            for s in &statements {
                for action in strings(&s["Action"]) {
                    assert!(
                        !action.starts_with("codedeploy:") && !action.starts_with("s3:"),
                        "{stack_name}: {function} is granted {action}"
                    );
                }
            }
        }
    }
}

#[test]
fn the_bundle_bucket_is_private_versioned_tls_only_retained_and_keeps_current_bundles() {
    let t = template();
    let (_, props) = t.resource("BundleBucket").unwrap();
    for policy in ["DeletionPolicy", "UpdateReplacePolicy"] {
        assert_eq!(
            t.at(&["Resources", "BundleBucket", policy])
                .and_then(Yaml::as_str),
            Some("Retain"),
            "{policy}: no stack change deletes the bundles rollbacks redeploy"
        );
    }
    let bucket = resolve(props);
    assert_eq!(bucket["VersioningConfiguration"]["Status"], "Enabled");
    let encryption = &bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"];
    let algorithms: Vec<&str> = encryption
        .as_array()
        .expect("default encryption")
        .iter()
        .filter_map(|r| r["ServerSideEncryptionByDefault"]["SSEAlgorithm"].as_str())
        .collect();
    assert!(
        !algorithms.is_empty() && algorithms.iter().all(|a| ["AES256", "aws:kms"].contains(a)),
        "{encryption}"
    );
    assert_eq!(
        bucket["PublicAccessBlockConfiguration"],
        serde_json::json!({
            "BlockPublicAcls": true,
            "BlockPublicPolicy": true,
            "IgnorePublicAcls": true,
            "RestrictPublicBuckets": true
        })
    );
    assert_eq!(
        bucket["OwnershipControls"],
        serde_json::json!({ "Rules": [{ "ObjectOwnership": "BucketOwnerEnforced" }] }),
        "no ACLs"
    );
    for key in ["AccessControl", "WebsiteConfiguration", "CorsConfiguration"] {
        assert!(bucket.get(key).is_none(), "the bucket has {key}");
    }

    // CodeDeploy's automatic rollback redeploys the revision a group last deployed
    // successfully, however old: no rule may expire or archive a current version.
    let rules = bucket["LifecycleConfiguration"]["Rules"]
        .as_array()
        .expect("lifecycle rules");
    for rule in rules {
        for key in [
            "ExpirationInDays",
            "ExpirationDate",
            "Transitions",
            "Transition",
        ] {
            assert!(
                rule.get(key).is_none(),
                "lifecycle rule {rule} has {key}: it would take current bundles away"
            );
        }
    }
    assert!(
        rules.iter().any(|r| r["Status"] == "Enabled"
            && r["NoncurrentVersionExpiration"]["NoncurrentDays"] == 30),
        "noncurrent versions expire after 30 days: {rules:?}"
    );

    // Only TLS, and nothing granted to anyone by the bucket itself.
    let (ty, policy) = t.resource("BundleBucketPolicy").unwrap();
    assert_eq!(ty, "AWS::S3::BucketPolicy");
    let policy = resolve(policy);
    assert_eq!(policy["Bucket"], "<BundleBucket>");
    let statements = policy["PolicyDocument"]["Statement"].as_array().unwrap();
    assert!(
        statements.iter().all(|s| s["Effect"] == "Deny"),
        "the bucket policy only denies: {statements:?}"
    );
    let tls_only = statements.iter().any(|s| {
        s["Principal"] == "*"
            && s["Action"] == "s3:*"
            && strings(&s["Resource"]).into_iter().collect::<BTreeSet<_>>()
                == ["<BundleBucket.Arn>", "<BundleBucket.Arn>/*"]
                    .map(String::from)
                    .into()
            && s["Condition"] == serde_json::json!({ "Bool": { "aws:SecureTransport": "false" } })
    });
    assert!(
        tls_only,
        "no statement denies requests without TLS: {statements:?}"
    );
}

/// The configuration of a CodeDeploy EC2/on-premises environment.
const CODEDEPLOY_EC2: &str = r#"
apps:
  web:
    repository: acme/web
    environments:
      onprem:
        target:
          codedeploy:
            application: web
            deployment_group: web-onprem
            ec2:
              container: web
              ports: ["80:8000", "8443:8443"]
              health: { port: 80, path: /health, timeout_seconds: 60 }
              timeout_seconds: 600
"#;

/// The files of the bundle a rollout of `CODEDEPLOY_EC2` uploads: (path, mode, content).
fn codedeploy_bundle() -> Vec<(&'static str, u32, String)> {
    let config = Config::from_yaml(CODEDEPLOY_EC2).expect("a valid CodeDeploy configuration");
    let (app, env, env_config) = config.environments().next().unwrap();
    let TargetConfig::CodeDeploy(CodeDeployTarget {
        platform: CodeDeployPlatform::Ec2(hosts),
        ..
    }) = &env_config.target
    else {
        panic!("{env}: not a CodeDeploy EC2 target")
    };
    let dep = push_of(app, env, "123456789012.dkr.ecr.eu-west-1.amazonaws.com");
    codedeploy::bundle_files(&dep, hosts, "eu-west-1").expect("the bundle is built")
}

#[test]
fn the_codedeploy_bundle_carries_the_document_script() {
    let document = template().document().unwrap();
    assert_eq!(
        codedeploy::DOCUMENT_SCRIPT.trim_end_matches('\n'),
        document.script,
        "the bundle's deploy.sh and the document's runCommand lines must be the same script"
    );
}

#[test]
fn the_codedeploy_bundle_passes_shellcheck() {
    let files = codedeploy_bundle();
    let dir = std::env::temp_dir().join(format!("pushdeploy-bundle-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // Unpacked from the tar the adapter uploads, as the CodeDeploy agent does.
    let bytes = codedeploy::tar(&files, 0).unwrap();
    let mut archive = ::tar::Archive::new(bytes.as_slice());
    archive.set_preserve_permissions(true);
    archive.unpack(&dir).unwrap();
    for (path, mode, content) in &files {
        use std::os::unix::fs::PermissionsExt;
        let on_disk = dir.join(path);
        assert_eq!(
            &std::fs::read_to_string(&on_disk).unwrap(),
            content,
            "{path}"
        );
        let found = std::fs::metadata(&on_disk).unwrap().permissions().mode() & 0o777;
        assert_eq!(found, *mode, "{path}: mode {found:o}");
    }

    // Every hook the appspec names is in the bundle and executable, and every hook script
    // of the bundle is named.
    let appspec: Yaml =
        serde_norway::from_str(&std::fs::read_to_string(dir.join("appspec.yml")).unwrap())
            .expect("appspec.yml is YAML");
    let mut locations = BTreeSet::new();
    for (hook, entries) in appspec["hooks"].as_mapping().expect("appspec hooks") {
        for entry in entries.as_sequence().unwrap() {
            let location = entry["location"].as_str().unwrap().to_owned();
            let (_, mode, _) = files
                .iter()
                .find(|(path, _, _)| *path == location)
                .unwrap_or_else(|| panic!("{hook:?}: {location} is not in the bundle"));
            assert_eq!(
                mode & 0o111,
                0o111,
                "{hook:?}: {location} is not executable"
            );
            assert!(
                entry["timeout"]
                    .as_u64()
                    .is_some_and(|t| (1..=3600).contains(&t)),
                "{hook:?}: CodeDeploy takes a timeout of at most 3600 s"
            );
            locations.insert(location);
        }
    }
    let hooks: BTreeSet<String> = files
        .iter()
        .map(|(path, _, _)| path.to_string())
        .filter(|path| path.starts_with("hooks/") && path.ends_with(".sh"))
        .collect();
    assert_eq!(locations, hooks, "every hook script, and only those, runs");

    let out = Command::new("shellcheck")
        .args(["-x", "-s", "bash"])
        .args(&hooks)
        .arg("pushdeploy/deploy.sh")
        .current_dir(&dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run shellcheck ({e}); {SETUP}"));
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "shellcheck found problems in the CodeDeploy bundle:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
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

/// The environment every function is given in `stack`, with its references as placeholders.
fn global_variables(t: &Template, stack: &Stack) -> Json {
    let variables = t
        .at(&["Globals", "Function", "Environment", "Variables"])
        .unwrap();
    resolve(&evaluated(t, stack).of(variables))
}

#[test]
fn the_functions_read_the_settings_the_code_requires() {
    let t = template();
    for (stack_name, stack) in stacks() {
        let variables = global_variables(&t, &stack);
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
        // The bucket CodeDeploy EC2/on-premises bundles go to, in the stacks that have one.
        let has_groups = !stack.list("CodeDeployGroups").is_empty();
        assert_eq!(
            settings.bundle_bucket.as_deref(),
            has_groups.then_some("<BundleBucket>"),
            "{stack_name}"
        );
        if !has_groups {
            assert!(
                variables.get("PUSHDEPLOY_BUNDLE_BUCKET").is_none(),
                "{stack_name}: no bucket, no variable"
            );
        }
    }
}

/// The namespace every function's metrics go to.
fn metrics_namespace(t: &Template) -> String {
    let variables = global_variables(t, &Stack::default());
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
