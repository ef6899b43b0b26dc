//! Reads `template.yaml`, so that everything local (rules, schedules, the table, the SSM
//! document and its script) comes from the template itself, never from a copy.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use serde_json::{Map, Value as Json};
use serde_norway::Value as Yaml;

use crate::moto::workspace_root;

/// The parsed template.
pub struct Template {
    root: Yaml,
    pub path: PathBuf,
}

/// Where an EventBridge rule listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bus {
    /// The account's default bus: AWS service events (ECR, SSM).
    Default,
    /// A bus the template creates, by logical id.
    Resource(String),
}

/// What invokes a function.
#[derive(Debug, Clone, PartialEq)]
pub enum Trigger {
    Rule {
        name: String,
        bus: Bus,
        pattern: Json,
    },
    Schedule {
        name: String,
        expression: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Function {
    pub logical_id: String,
    /// The package and binary name: the last component of `CodeUri`.
    pub package: String,
    pub code_uri: String,
    pub timeout: Option<u64>,
    pub triggers: Vec<Trigger>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DocumentParameter {
    pub name: String,
    pub allowed_pattern: Option<String>,
    pub default: Option<String>,
}

/// The SSM Command document that deploys on a host.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    pub logical_id: String,
    /// The document content as JSON, as `CreateDocument` takes it.
    pub content: Json,
    pub parameters: Vec<DocumentParameter>,
    /// The shell script of its `aws:runShellScript` step, `{{ Parameter }}` placeholders and all.
    pub script: String,
}

impl Template {
    pub fn default_path() -> PathBuf {
        workspace_root().join("template.yaml")
    }

    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let root: Yaml =
            serde_norway::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        Ok(Self {
            root,
            path: path.to_path_buf(),
        })
    }

    pub fn load_default() -> anyhow::Result<Self> {
        Self::load(&Self::default_path())
    }

    /// Every resource: logical id, type, properties.
    pub fn resources(&self) -> impl Iterator<Item = (&str, &str, &Yaml)> {
        self.root
            .get("Resources")
            .and_then(Yaml::as_mapping)
            .into_iter()
            .flat_map(|m| m.iter())
            .filter_map(|(id, r)| {
                let ty = r.get("Type")?.as_str()?;
                Some((id.as_str()?, ty, r.get("Properties").unwrap_or(&Yaml::Null)))
            })
    }

    pub fn resource(&self, logical_id: &str) -> Option<(&str, &Yaml)> {
        self.resources()
            .find(|(id, _, _)| *id == logical_id)
            .map(|(_, ty, props)| (ty, props))
    }

    /// The value at a path of keys from the template root, e.g. `["Globals", "Function"]`.
    pub fn at(&self, path: &[&str]) -> Option<&Yaml> {
        path.iter().try_fold(&self.root, |v, key| v.get(*key))
    }

    /// The serverless functions, with the events that invoke them. `resolve` turns the
    /// `!Ref`s and `!Sub`s of event patterns into local names.
    pub fn functions(
        &self,
        resolve: &dyn Fn(&str) -> Option<String>,
    ) -> anyhow::Result<Vec<Function>> {
        let mut out = Vec::new();
        for (id, ty, props) in self.resources() {
            if ty != "AWS::Serverless::Function" {
                continue;
            }
            let code_uri = props
                .get("CodeUri")
                .and_then(Yaml::as_str)
                .ok_or_else(|| anyhow!("function {id} has no CodeUri"))?;
            let package = code_uri
                .trim_end_matches('/')
                .rsplit('/')
                .next()
                .unwrap_or(code_uri)
                .to_owned();
            let mut triggers = Vec::new();
            for (name, event) in props
                .get("Events")
                .and_then(Yaml::as_mapping)
                .into_iter()
                .flat_map(|m| m.iter())
            {
                let name = name.as_str().unwrap_or_default().to_owned();
                let event_props = event.get("Properties").unwrap_or(&Yaml::Null);
                match event.get("Type").and_then(Yaml::as_str) {
                    Some("EventBridgeRule" | "CloudWatchEvent") => {
                        let pattern = to_json(
                            event_props
                                .get("Pattern")
                                .ok_or_else(|| anyhow!("{id}.{name} has no Pattern"))?,
                            resolve,
                        )?;
                        let bus = match event_props.get("EventBusName") {
                            None => Bus::Default,
                            Some(b) => match ref_target(b) {
                                Some(target) => Bus::Resource(target),
                                None => bail!(
                                    "{id}.{name}: EventBusName must be a !Ref to the template's bus"
                                ),
                            },
                        };
                        triggers.push(Trigger::Rule { name, bus, pattern });
                    }
                    Some("Schedule" | "ScheduleV2") => {
                        let expression = event_props
                            .get("Schedule")
                            .or_else(|| event_props.get("ScheduleExpression"))
                            .map(|v| to_json(v, resolve))
                            .transpose()?
                            .and_then(|v| v.as_str().map(str::to_owned))
                            .ok_or_else(|| anyhow!("{id}.{name} has no schedule expression"))?;
                        triggers.push(Trigger::Schedule { name, expression });
                    }
                    other => bail!(
                        "{id}.{name}: event type {other:?} is not one the local stack can route"
                    ),
                }
            }
            let timeout = props
                .get("Timeout")
                .or_else(|| self.at(&["Globals", "Function", "Timeout"]))
                .and_then(Yaml::as_u64);
            out.push(Function {
                logical_id: id.to_owned(),
                package,
                code_uri: code_uri.to_owned(),
                timeout,
                triggers,
            });
        }
        Ok(out)
    }

    /// The SSM Command document (the template has exactly one).
    pub fn document(&self) -> anyhow::Result<Document> {
        let mut documents = self
            .resources()
            .filter(|(_, ty, _)| *ty == "AWS::SSM::Document");
        let (id, _, props) = documents
            .next()
            .ok_or_else(|| anyhow!("the template defines no AWS::SSM::Document"))?;
        if documents.next().is_some() {
            bail!("the template defines more than one AWS::SSM::Document");
        }
        let content = to_json(
            props
                .get("Content")
                .ok_or_else(|| anyhow!("{id} has no Content"))?,
            &|_| None,
        )?;
        // Content may also be given as the document's JSON or YAML text.
        let content = match content {
            Json::String(text) => to_json(
                &serde_norway::from_str::<Yaml>(&text)
                    .with_context(|| format!("parsing the Content of {id}"))?,
                &|_| None,
            )?,
            other => other,
        };
        Document::from_content(id, content)
    }

    /// The defaults of the template's `Parameters`, as strings.
    pub fn parameter_defaults(&self) -> BTreeMap<String, String> {
        self.root
            .get("Parameters")
            .and_then(Yaml::as_mapping)
            .into_iter()
            .flatten()
            .filter_map(|(name, p)| {
                let default = match p.get("Default")? {
                    Yaml::String(s) => s.clone(),
                    Yaml::Number(n) => n.to_string(),
                    Yaml::Bool(b) => b.to_string(),
                    _ => return None,
                };
                Some((name.as_str()?.to_owned(), default))
            })
            .collect()
    }

    /// A property of a serverless function, or else of `Globals.Function`.
    pub fn function_property(&self, logical_id: &str, key: &str) -> Option<&Yaml> {
        self.resource(logical_id)
            .and_then(|(_, props)| props.get(key))
            .or_else(|| self.at(&["Globals", "Function", key]))
    }

    /// A function's environment variables: `Globals.Function` first, then its own, each
    /// resolved through `resolve`. Variables that cannot be resolved locally are returned
    /// apart, with the reason.
    pub fn function_environment(
        &self,
        logical_id: &str,
        resolve: &dyn Fn(&str) -> Option<String>,
    ) -> (BTreeMap<String, String>, Vec<String>) {
        let own = self
            .resource(logical_id)
            .and_then(|(_, props)| props.get("Environment"));
        let global = self.at(&["Globals", "Function", "Environment"]);
        let mut vars = BTreeMap::new();
        let mut unresolved = Vec::new();
        for environment in [global, own].into_iter().flatten() {
            for (name, value) in environment
                .get("Variables")
                .and_then(Yaml::as_mapping)
                .into_iter()
                .flatten()
            {
                let Some(name) = name.as_str() else { continue };
                match to_json(value, resolve) {
                    Ok(Json::String(s)) => {
                        vars.insert(name.to_owned(), s);
                    }
                    Ok(Json::Number(n)) => {
                        vars.insert(name.to_owned(), n.to_string());
                    }
                    Ok(Json::Bool(b)) => {
                        vars.insert(name.to_owned(), b.to_string());
                    }
                    Ok(other) => unresolved.push(format!("{name}: not a scalar ({other})")),
                    Err(e) => unresolved.push(format!("{name}: {e}")),
                }
            }
        }
        (vars, unresolved)
    }

    /// The key schema and TTL attribute of a DynamoDB table resource.
    pub fn table(&self, logical_id: &str) -> anyhow::Result<Table> {
        let (ty, props) = self
            .resource(logical_id)
            .ok_or_else(|| anyhow!("no resource {logical_id}"))?;
        if ty != "AWS::DynamoDB::Table" {
            bail!("{logical_id} is a {ty}, not a DynamoDB table");
        }
        let props = to_json(props, &|_| Some(String::new()))?;
        let key = |kind: &str| {
            props["KeySchema"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|k| k["KeyType"] == kind)
                .and_then(|k| k["AttributeName"].as_str())
                .map(str::to_owned)
        };
        Ok(Table {
            hash_key: key("HASH").ok_or_else(|| anyhow!("{logical_id} has no HASH key"))?,
            range_key: key("RANGE"),
            ttl_attribute: props
                .pointer("/TimeToLiveSpecification/AttributeName")
                .and_then(Json::as_str)
                .map(str::to_owned),
        })
    }
}

impl Document {
    /// Reads a Command document's content (as `CreateDocument` takes it and `GetDocument`
    /// returns it): its parameters and the script of its `aws:runShellScript` step.
    pub fn from_content(logical_id: &str, content: Json) -> anyhow::Result<Self> {
        let id = logical_id;
        let mut parameters = Vec::new();
        for (name, p) in content
            .get("parameters")
            .and_then(Json::as_object)
            .into_iter()
            .flatten()
        {
            parameters.push(DocumentParameter {
                name: name.clone(),
                allowed_pattern: p
                    .get("allowedPattern")
                    .and_then(Json::as_str)
                    .map(str::to_owned),
                default: p.get("default").and_then(Json::as_str).map(str::to_owned),
            });
        }
        let step = Self::shell_step_of(&content)
            .ok_or_else(|| anyhow!("{id} has no aws:runShellScript step in mainSteps"))?;
        let lines = step
            .pointer("/inputs/runCommand")
            .and_then(Json::as_array)
            .ok_or_else(|| anyhow!("{id}: the aws:runShellScript step has no runCommand list"))?;
        let script = lines
            .iter()
            .filter_map(Json::as_str)
            .collect::<Vec<_>>()
            .join("\n");
        Ok(Document {
            logical_id: id.to_owned(),
            content,
            parameters,
            script,
        })
    }

    fn shell_step_of(content: &Json) -> Option<&Json> {
        content
            .get("mainSteps")
            .and_then(Json::as_array)?
            .iter()
            .find(|s| s.get("action").and_then(Json::as_str) == Some("aws:runShellScript"))
    }

    /// The `inputs` of the `aws:runShellScript` step (`timeoutSeconds`, `workingDirectory`, …).
    pub fn shell_inputs(&self) -> Option<&Json> {
        Self::shell_step_of(&self.content).and_then(|s| s.get("inputs"))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub hash_key: String,
    pub range_key: Option<String>,
    pub ttl_attribute: Option<String>,
}

/// The logical id a `!Ref` (or `{"Ref": …}`) points at.
fn ref_target(value: &Yaml) -> Option<String> {
    match value {
        Yaml::Tagged(t) if t.tag == "Ref" => t.value.as_str().map(str::to_owned),
        Yaml::Mapping(m) if m.len() == 1 => m.get("Ref").and_then(Yaml::as_str).map(str::to_owned),
        _ => None,
    }
}

/// Converts template YAML to JSON, resolving `Ref`, `Fn::Sub`, `Fn::GetAtt` and `Fn::Join`
/// (short and long forms) through `resolve`, which maps a logical id, `Id.Attribute` or a
/// pseudo parameter like `AWS::Region` to its value.
pub fn to_json(value: &Yaml, resolve: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<Json> {
    let lookup =
        |name: &str| resolve(name).ok_or_else(|| anyhow!("cannot resolve {name:?} locally"));
    match value {
        Yaml::Null => Ok(Json::Null),
        Yaml::Bool(b) => Ok(Json::Bool(*b)),
        Yaml::Number(n) => Ok(serde_json::to_value(n)?),
        Yaml::String(s) => Ok(Json::String(s.clone())),
        Yaml::Sequence(items) => Ok(Json::Array(
            items
                .iter()
                .map(|i| to_json(i, resolve))
                .collect::<Result<_, _>>()?,
        )),
        Yaml::Tagged(tagged) => {
            let tag = tagged.tag.to_string();
            let function = tag.trim_start_matches('!');
            intrinsic(
                if function == "Ref" { "Ref" } else { function },
                &tagged.value,
                resolve,
                &lookup,
            )
        }
        Yaml::Mapping(map) => {
            if map.len() == 1
                && let Some((Yaml::String(key), inner)) = map.iter().next()
                && (key == "Ref" || key.starts_with("Fn::"))
            {
                return intrinsic(key.trim_start_matches("Fn::"), inner, resolve, &lookup);
            }
            let mut out = Map::new();
            for (k, v) in map {
                let key = match k {
                    Yaml::String(s) => s.clone(),
                    other => serde_norway::to_string(other)?.trim().to_owned(),
                };
                out.insert(key, to_json(v, resolve)?);
            }
            Ok(Json::Object(out))
        }
    }
}

fn intrinsic(
    function: &str,
    arg: &Yaml,
    resolve: &dyn Fn(&str) -> Option<String>,
    lookup: &dyn Fn(&str) -> anyhow::Result<String>,
) -> anyhow::Result<Json> {
    match function {
        "Ref" => Ok(Json::String(lookup(
            arg.as_str().ok_or_else(|| anyhow!("!Ref takes a name"))?,
        )?)),
        "GetAtt" => {
            let name = match arg {
                Yaml::String(s) => s.clone(),
                Yaml::Sequence(parts) => parts
                    .iter()
                    .filter_map(Yaml::as_str)
                    .collect::<Vec<_>>()
                    .join("."),
                _ => bail!("!GetAtt takes Id.Attribute"),
            };
            Ok(Json::String(lookup(&name)?))
        }
        "Sub" => {
            let (text, vars) = match arg {
                Yaml::String(s) => (s.clone(), BTreeMap::new()),
                Yaml::Sequence(parts) if parts.len() == 2 => {
                    let text = parts[0]
                        .as_str()
                        .ok_or_else(|| anyhow!("!Sub takes a string"))?
                        .to_owned();
                    let mut vars = BTreeMap::new();
                    for (k, v) in parts[1].as_mapping().into_iter().flatten() {
                        let value = to_json(v, resolve)?;
                        vars.insert(
                            k.as_str().unwrap_or_default().to_owned(),
                            value.as_str().unwrap_or_default().to_owned(),
                        );
                    }
                    (text, vars)
                }
                _ => bail!("!Sub takes a string or [string, variables]"),
            };
            Ok(Json::String(substitute(
                &text,
                &|name| match vars.get(name) {
                    Some(v) => Ok(v.clone()),
                    None => lookup(name),
                },
            )?))
        }
        "Join" => {
            let parts = arg
                .as_sequence()
                .filter(|p| p.len() == 2)
                .ok_or_else(|| anyhow!("!Join takes [delimiter, list]"))?;
            let delimiter = parts[0].as_str().unwrap_or_default();
            let items = to_json(&parts[1], resolve)?;
            let strings: Vec<String> = items
                .as_array()
                .into_iter()
                .flatten()
                .map(|v| v.as_str().unwrap_or_default().to_owned())
                .collect();
            Ok(Json::String(strings.join(delimiter)))
        }
        other => bail!("intrinsic function {other} cannot be resolved locally"),
    }
}

/// `${Name}` substitution as `Fn::Sub` does it; `${!Literal}` stays literal.
fn substitute(
    text: &str,
    value: &dyn Fn(&str) -> anyhow::Result<String>,
) -> anyhow::Result<String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| anyhow!("unclosed ${{ in {text:?}"))?;
        let name = &after[..end];
        match name.strip_prefix('!') {
            Some(literal) => {
                out.push_str("${");
                out.push_str(literal);
                out.push('}');
            }
            None => out.push_str(&value(name)?),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEMPLATE: &str = r#"
Transform: AWS::Serverless-2016-10-31
Globals:
  Function:
    Timeout: 30
Resources:
  Bus:
    Type: AWS::Events::EventBus
    Properties: { Name: !Sub "${AWS::StackName}-bus" }
  Doc:
    Type: AWS::SSM::Document
    Properties:
      DocumentType: Command
      Content:
        schemaVersion: "2.2"
        parameters:
          Image: { type: String, allowedPattern: "^[a-z]+$" }
        mainSteps:
          - action: aws:runShellScript
            name: deploy
            inputs:
              runCommand:
                - "set -eu"
                - "image='{{ Image }}'"
  Table:
    Type: AWS::DynamoDB::Table
    Properties:
      KeySchema: [ { AttributeName: pk, KeyType: HASH }, { AttributeName: sk, KeyType: RANGE } ]
      TimeToLiveSpecification: { AttributeName: expires_at, Enabled: true }
  Fn:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: functions/tracker
      Events:
        Status:
          Type: EventBridgeRule
          Properties:
            Pattern: { source: [aws.ssm], detail: { document-name: [!Ref Doc] } }
        Mine:
          Type: EventBridgeRule
          Properties:
            EventBusName: !Ref Bus
            Pattern: { source: [pushdeploy] }
        Tick:
          Type: Schedule
          Properties: { Schedule: rate(1 minute) }
"#;

    fn template() -> Template {
        Template {
            root: serde_norway::from_str(TEMPLATE).unwrap(),
            path: "t.yaml".into(),
        }
    }

    #[test]
    fn reads_functions_with_resolved_patterns_and_their_buses() {
        let names = |n: &str| (n == "Doc").then(|| "local-doc".to_owned());
        let functions = template().functions(&names).unwrap();
        assert_eq!(functions[0].package, "tracker");
        assert_eq!(functions[0].timeout, Some(30));
        assert_eq!(
            functions[0].triggers[0],
            Trigger::Rule {
                name: "Status".into(),
                bus: Bus::Default,
                pattern: serde_json::json!({"source": ["aws.ssm"], "detail": {"document-name": ["local-doc"]}})
            }
        );
        assert!(
            matches!(&functions[0].triggers[1], Trigger::Rule { bus: Bus::Resource(b), .. } if b == "Bus")
        );
        assert!(
            matches!(&functions[0].triggers[2], Trigger::Schedule { expression, .. } if expression == "rate(1 minute)")
        );
    }

    #[test]
    fn reads_the_document_script_and_parameter_patterns() {
        let doc = template().document().unwrap();
        assert_eq!(doc.script, "set -eu\nimage='{{ Image }}'");
        assert_eq!(
            doc.parameters[0].allowed_pattern.as_deref(),
            Some("^[a-z]+$")
        );
    }

    #[test]
    fn reads_the_table_keys() {
        let table = template().table("Table").unwrap();
        assert_eq!(
            (table.hash_key.as_str(), table.range_key.as_deref()),
            ("pk", Some("sk"))
        );
        assert_eq!(table.ttl_attribute.as_deref(), Some("expires_at"));
    }

    #[test]
    fn an_unresolvable_reference_is_an_error_naming_it() {
        let err = template().functions(&|_| None).unwrap_err().to_string();
        assert!(err.contains("\"Doc\""), "{err}");
    }

    #[test]
    fn sub_substitutes_and_keeps_literals() {
        let got = substitute("a-${X}-${!Y}", &|n| Ok(format!("<{n}>"))).unwrap();
        assert_eq!(got, "a-<X>-${Y}");
    }
}
