//! What SSM does with a Command document's parameters before anything runs on a host: each
//! value is checked against the document (declared, `allowedPattern`, `allowedValues`,
//! defaults filled in), and only then substituted textually for `{{ Name }}` in the
//! script. moto checks none of this, so the local host agent does it, before any shell runs.

use std::collections::BTreeMap;

use regex::Regex;
use serde_json::Value as Json;

use crate::template::Document;

/// A document step ready to run: the script with every parameter substituted.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    pub script: String,
    /// The step's `timeoutSeconds` (SSM's default is 3600).
    pub timeout_seconds: u64,
    pub working_directory: Option<String>,
    /// The value each parameter took.
    pub values: BTreeMap<String, String>,
}

/// Checks `given` (as `SendCommand` carries parameters: name → list of values) against the
/// document and substitutes them. Every problem is reported, none is fixed up.
pub fn prepare(
    doc: &Document,
    given: &BTreeMap<String, Vec<String>>,
) -> Result<Prepared, Vec<String>> {
    let declared = doc
        .content
        .get("parameters")
        .and_then(Json::as_object)
        .cloned()
        .unwrap_or_default();
    let mut problems = Vec::new();
    for name in given.keys() {
        if !declared.contains_key(name) {
            problems.push(format!(
                "parameter {name:?} is not declared by the document"
            ));
        }
    }
    let mut values = BTreeMap::new();
    for (name, spec) in &declared {
        let value = match given.get(name).map(Vec::as_slice) {
            Some([one]) => one.clone(),
            Some([]) => String::new(),
            Some(many) => {
                problems.push(format!(
                    "parameter {name:?} takes one value, got {}",
                    many.len()
                ));
                continue;
            }
            None => match spec.get("default") {
                Some(Json::String(d)) => d.clone(),
                Some(Json::Number(n)) => n.to_string(),
                Some(Json::Bool(b)) => b.to_string(),
                _ => {
                    problems.push(format!("required parameter {name:?} is missing"));
                    continue;
                }
            },
        };
        if let Some(pattern) = spec.get("allowedPattern").and_then(Json::as_str) {
            match Regex::new(&format!("^(?:{pattern})$")) {
                Ok(re) if re.is_match(&value) => {}
                Ok(_) => problems.push(format!(
                    "parameter {name:?} value {value:?} does not match its allowedPattern {pattern}"
                )),
                Err(e) => problems.push(format!(
                    "parameter {name:?} has an allowedPattern that is not a regular expression: {e}"
                )),
            }
        }
        if let Some(allowed) = spec.get("allowedValues").and_then(Json::as_array)
            && !allowed.iter().any(|a| a.as_str() == Some(value.as_str()))
        {
            problems.push(format!(
                "parameter {name:?} value {value:?} is not one of its allowedValues"
            ));
        }
        values.insert(name.clone(), value);
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let inputs = doc.shell_inputs();
    let input = |key: &str| {
        inputs
            .and_then(|i| i.get(key))
            .map(|v| match v {
                Json::String(s) => substitute(s, &values),
                other => other.to_string(),
            })
            .filter(|s| !s.trim().is_empty())
    };
    let timeout_seconds = match input("timeoutSeconds") {
        None => 3600,
        Some(t) => t
            .trim()
            .parse()
            .map_err(|_| vec![format!("timeoutSeconds {t:?} is not a number of seconds")])?,
    };
    Ok(Prepared {
        script: substitute(&doc.script, &values),
        timeout_seconds,
        working_directory: input("workingDirectory"),
        values,
    })
}

/// `{{ Name }}` (spaces optional) → the value, as SSM substitutes: textually.
pub fn substitute(text: &str, values: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let Some(len) = rest[start..].find("}}") else {
            break;
        };
        let name = rest[start + 2..start + len].trim();
        out.push_str(&rest[..start]);
        match values.get(name) {
            Some(value) => out.push_str(value),
            None => out.push_str(&rest[start..start + len + 2]),
        }
        rest = &rest[start + len + 2..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc() -> Document {
        Document::from_content(
            "Doc",
            json!({
                "schemaVersion": "2.2",
                "parameters": {
                    "Container": { "type": "String", "allowedPattern": "^[a-z]+$" },
                    "Ports": { "type": "String", "default": "", "allowedPattern": "([0-9]+:[0-9]+)?" },
                    "Mode": { "type": "String", "default": "fast", "allowedValues": ["fast", "slow"] },
                    "Timeout": { "type": "String", "default": "30" }
                },
                "mainSteps": [{ "action": "aws:runShellScript", "name": "s", "inputs": {
                    "timeoutSeconds": "{{ Timeout }}",
                    "runCommand": ["name='{{ Container }}'", "ports='{{Ports}}' mode={{ Mode }} {{ ssm:other }}"]
                }}]
            }),
        )
        .unwrap()
    }

    fn given(pairs: &[(&str, &str)]) -> BTreeMap<String, Vec<String>> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), vec![v.to_string()]))
            .collect()
    }

    #[test]
    fn substitutes_values_and_defaults_textually() {
        let p = prepare(&doc(), &given(&[("Container", "web")])).unwrap();
        assert_eq!(p.script, "name='web'\nports='' mode=fast {{ ssm:other }}");
        assert_eq!(p.timeout_seconds, 30);
    }

    #[test]
    fn hostile_values_are_refused_before_anything_is_substituted() {
        let err = prepare(
            &doc(),
            &given(&[
                ("Container", "web'; touch /tmp/owned; '"),
                ("Ports", "80:80 && id"),
            ]),
        )
        .unwrap_err();
        assert_eq!(err.len(), 2, "{err:?}");
        assert!(
            err[0].contains("\"Container\"") && err[0].contains("allowedPattern"),
            "{err:?}"
        );
    }

    #[test]
    fn a_pattern_must_match_the_whole_value() {
        // `([0-9]+:[0-9]+)?` matches the empty prefix of anything; only a full match counts.
        let err = prepare(&doc(), &given(&[("Container", "web"), ("Ports", "x")])).unwrap_err();
        assert!(err[0].contains("\"Ports\""), "{err:?}");
    }

    #[test]
    fn missing_unknown_and_disallowed_parameters_are_each_reported() {
        let err = prepare(&doc(), &given(&[("Extra", "1"), ("Mode", "turbo")])).unwrap_err();
        let all = err.join("\n");
        assert!(all.contains("\"Extra\" is not declared"), "{all}");
        assert!(
            all.contains("required parameter \"Container\" is missing"),
            "{all}"
        );
        assert!(
            all.contains("\"turbo\" is not one of its allowedValues"),
            "{all}"
        );
    }
}
