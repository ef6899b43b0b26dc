//! IAM policies as `template.yaml` grants them to each function, for a stack deployed with
//! given parameters: conditions decided, `!If` branches taken, parameters substituted, and
//! every other reference resolved by the caller (placeholders, or the names of a local
//! stack's resources).
// Test support: a template that does not read as expected fails the test that reads it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use pushdeploy_local::template::{Template, to_json};
use serde_json::Value as Json;
use serde_norway::Value as Yaml;

/// What every `!Ref`, `!GetAtt` and pseudo parameter left stands for.
pub type Resolve<'a> = &'a dyn Fn(&str) -> Option<String>;

/// A string or a list of strings (IAM actions and resources, pattern values).
pub fn strings(value: &Json) -> Vec<String> {
    match value {
        Json::String(s) => vec![s.clone()],
        Json::Array(items) => items.iter().flat_map(strings).collect(),
        _ => Vec::new(),
    }
}

/// The logical id of a `!Ref X` or `!GetAtt X.Attribute`.
pub fn target_of(value: &Yaml) -> Option<String> {
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

/// Every serverless function: logical id, package (the `CodeUri` directory) and raw
/// properties.
pub fn function_properties(t: &Template) -> Vec<(String, String, Yaml)> {
    t.functions(&|name| Some(format!("<{name}>")))
        .expect("functions read")
        .into_iter()
        .map(|f| {
            let (_, props) = t.resource(&f.logical_id).expect("resource exists");
            (f.logical_id, f.package, props.clone())
        })
        .collect()
}

/// A policy statement, as JSON.
pub type Statement = Json;

/// The statements of a policy document, whether written as YAML or as JSON text, with
/// every remaining reference resolved by `resolve`.
pub fn statements_of(document: &Yaml, resolve: Resolve<'_>) -> Vec<Statement> {
    let document = match to_json(document, resolve).expect("a policy resolves") {
        Json::String(text) => serde_json::from_str(&text).expect("policy JSON text parses"),
        other => other,
    };
    match &document["Statement"] {
        Json::Array(items) => items.clone(),
        single => vec![single.clone()],
    }
}

/// The branches a `!If` can take (`AWS::NoValue` dropped), or the value itself.
pub fn branches(value: &Yaml) -> Vec<Yaml> {
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

/// The intrinsic function a value calls (`!X` or `{"Fn::X": …}`, `Ref`, `Condition`), and
/// its argument.
pub fn intrinsic(value: &Yaml) -> Option<(String, &Yaml)> {
    match value {
        Yaml::Tagged(t) => Some((
            t.tag.to_string().trim_start_matches('!').to_owned(),
            &t.value,
        )),
        Yaml::Mapping(m) if m.len() == 1 => {
            let (key, arg) = m.iter().next()?;
            let key = key.as_str()?;
            match key {
                "Ref" => Some(("Ref".to_owned(), arg)),
                "Condition" if arg.is_string() => Some(("Condition".to_owned(), arg)),
                _ => key
                    .strip_prefix("Fn::")
                    .map(|function| (function.to_owned(), arg)),
            }
        }
        _ => None,
    }
}

fn is_no_value(value: &Yaml) -> bool {
    matches!(intrinsic(value), Some((f, arg)) if f == "Ref" && arg.as_str() == Some("AWS::NoValue"))
}

/// `value` calling the same intrinsic function with another argument.
fn with_argument(value: &Yaml, arg: Yaml) -> Yaml {
    match value {
        Yaml::Tagged(t) => Yaml::Tagged(Box::new(serde_norway::value::TaggedValue {
            tag: t.tag.clone(),
            value: arg,
        })),
        Yaml::Mapping(m) => {
            let key = m.keys().next().unwrap().clone();
            Yaml::Mapping([(key, arg)].into_iter().collect())
        }
        other => other.clone(),
    }
}

/// The template as CloudFormation reads it for one stack: its conditions decided, each
/// `!If` replaced by the branch taken, `AWS::NoValue` dropped, and the overridden
/// parameters (a `CommaDelimitedList` as a list) joined and split where the template
/// does. Every other reference is left to the resolver of whoever reads it.
pub struct Evaluated<'a> {
    t: &'a Template,
    /// The overridden parameters.
    given: BTreeMap<String, Yaml>,
    /// Every parameter, with its default when not overridden: what conditions read.
    all: BTreeMap<String, Yaml>,
}

impl<'a> Evaluated<'a> {
    /// The template for a stack deployed with these parameters overridden.
    pub fn new(t: &'a Template, overrides: &BTreeMap<&str, &str>) -> Self {
        let value = |name: &str, raw: &str| {
            let ty = t.at(&["Parameters", name, "Type"]).and_then(Yaml::as_str);
            match ty {
                // CloudFormation splits the value on commas: '' is the list [''].
                Some("CommaDelimitedList") => Yaml::Sequence(
                    raw.split(',')
                        .map(|item| Yaml::String(item.to_owned()))
                        .collect(),
                ),
                Some(_) => Yaml::String(raw.to_owned()),
                None => panic!("the template has no parameter {name}"),
            }
        };
        let given: BTreeMap<String, Yaml> = overrides
            .iter()
            .map(|(name, raw)| (name.to_string(), value(name, raw)))
            .collect();
        let mut all: BTreeMap<String, Yaml> = t
            .parameter_defaults()
            .iter()
            .map(|(name, raw)| (name.clone(), value(name, raw)))
            .collect();
        all.extend(given.clone());
        Self { t, given, all }
    }

    pub fn condition(&self, name: &str) -> bool {
        let expression = self
            .t
            .at(&["Conditions", name])
            .unwrap_or_else(|| panic!("the template has no condition {name}"));
        self.holds(expression)
    }

    fn holds(&self, expression: &Yaml) -> bool {
        let (function, arg) =
            intrinsic(expression).unwrap_or_else(|| panic!("{expression:?} is no condition"));
        let args = || {
            arg.as_sequence()
                .unwrap_or_else(|| panic!("{function} takes a list: {arg:?}"))
        };
        match function.as_str() {
            "Condition" => self.condition(arg.as_str().unwrap()),
            "Not" => !self.holds(&args()[0]),
            "And" => args().iter().all(|c| self.holds(c)),
            "Or" => args().iter().any(|c| self.holds(c)),
            "Equals" => {
                let [a, b] = &args()[..] else {
                    panic!("Equals takes two values: {arg:?}")
                };
                self.scalar(a) == self.scalar(b)
            }
            other => panic!("{other} is not a condition function"),
        }
    }

    /// A value a condition compares: a string, once references are replaced.
    fn scalar(&self, value: &Yaml) -> String {
        match self.fold(value, &self.all) {
            Yaml::String(s) => s,
            other => panic!("{value:?} is {other:?} for this stack, not a string"),
        }
    }

    /// `value` for this stack, with only the overridden parameters substituted.
    pub fn of(&self, value: &Yaml) -> Yaml {
        self.fold(value, &self.given)
    }

    fn fold(&self, value: &Yaml, parameters: &BTreeMap<String, Yaml>) -> Yaml {
        let Some((function, arg)) = intrinsic(value) else {
            return match value {
                Yaml::Sequence(items) => Yaml::Sequence(
                    items
                        .iter()
                        .map(|i| self.fold(i, parameters))
                        .filter(|i| !is_no_value(i))
                        .collect(),
                ),
                Yaml::Mapping(m) => Yaml::Mapping(
                    m.iter()
                        .map(|(k, v)| (k.clone(), self.fold(v, parameters)))
                        .filter(|(_, v)| !is_no_value(v))
                        .collect(),
                ),
                other => other.clone(),
            };
        };
        let pair = || match arg.as_sequence().map(Vec::as_slice) {
            Some([a, b]) => (a, b),
            _ => panic!("{function} takes two arguments: {arg:?}"),
        };
        match function.as_str() {
            "If" => {
                let Some([condition, then, otherwise]) = arg.as_sequence().map(Vec::as_slice)
                else {
                    panic!("If takes [condition, then, else]: {arg:?}")
                };
                let taken = if self.condition(condition.as_str().unwrap()) {
                    then
                } else {
                    otherwise
                };
                self.fold(taken, parameters)
            }
            "Ref" => arg
                .as_str()
                .and_then(|name| parameters.get(name))
                .cloned()
                .unwrap_or_else(|| value.clone()),
            "Join" => {
                let (delimiter, list) = pair();
                let delimiter = delimiter.as_str().expect("a literal Join delimiter");
                let list = self.fold(list, parameters);
                let items: Option<Vec<&str>> = list
                    .as_sequence()
                    .and_then(|items| items.iter().map(Yaml::as_str).collect());
                match items {
                    Some(items) => Yaml::String(items.join(delimiter)),
                    None => with_argument(value, Yaml::Sequence(vec![pair().0.clone(), list])),
                }
            }
            "Split" => {
                let (delimiter, text) = pair();
                let delimiter = delimiter.as_str().expect("a literal Split delimiter");
                match self.fold(text, parameters) {
                    Yaml::String(text) => Yaml::Sequence(
                        text.split(delimiter)
                            .map(|item| Yaml::String(item.to_owned()))
                            .collect(),
                    ),
                    other => with_argument(value, Yaml::Sequence(vec![pair().0.clone(), other])),
                }
            }
            _ => with_argument(value, self.fold(arg, parameters)),
        }
    }
}

/// Every statement granted to each function (by package) in a stack deployed with these
/// parameters, and the AWS managed
/// policies its role may carry beyond the basic logging one SAM always adds.
pub fn grants(
    t: &Template,
    overrides: &BTreeMap<&str, &str>,
    resolve: Resolve<'_>,
) -> BTreeMap<String, (Vec<Statement>, Vec<String>)> {
    let e = Evaluated::new(t, overrides);
    let mut out = BTreeMap::new();
    for (id, package, props) in function_properties(t) {
        let mut statements = Vec::new();
        let mut managed = Vec::new();
        for policy in e
            .of(props.get("Policies").unwrap_or(&Yaml::Null))
            .as_sequence()
            .into_iter()
            .flatten()
        {
            if policy.get("Statement").is_some() {
                statements.extend(statements_of(policy, resolve));
            } else if let Some(target) = target_of(policy) {
                let (ty, p) = t
                    .resource(&target)
                    .unwrap_or_else(|| panic!("{id}: no resource {target}"));
                assert_eq!(ty, "AWS::IAM::ManagedPolicy", "{id}: {target}");
                if let Some(condition) = t.at(&["Resources", &target, "Condition"]) {
                    assert!(
                        e.condition(condition.as_str().unwrap()),
                        "{id} is given {target}, which the stack does not create"
                    );
                }
                statements.extend(statements_of(
                    &e.of(p.get("PolicyDocument").unwrap()),
                    resolve,
                ));
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
            for policy in e
                .of(p.get("Policies").unwrap_or(&Yaml::Null))
                .as_sequence()
                .into_iter()
                .flatten()
            {
                statements.extend(statements_of(
                    policy.get("PolicyDocument").unwrap(),
                    resolve,
                ));
            }
            // Every branch, whichever this stack takes.
            for arn in p
                .get("ManagedPolicyArns")
                .and_then(Yaml::as_sequence)
                .into_iter()
                .flatten()
            {
                for branch in branches(arn) {
                    managed.extend(strings(&to_json(&branch, resolve).expect("resolves")));
                }
            }
        }
        out.insert(package, (statements, managed));
    }
    out
}
