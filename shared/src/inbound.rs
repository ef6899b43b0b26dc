//! Reading what the functions receive: EventBridge envelopes and their details, and the
//! JSON requests people send from the console. A reader either returns the typed value or
//! an `InputError` that names the field and says what it may hold, in words, never in
//! the deserializer's terms.

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use time::OffsetDateTime;

use crate::domain::{EventDetail, EventType};
use crate::ports::StatusEvent;
use crate::services::InputError;
pub use crate::services::error::quote;

/// An EventBridge event, before its detail is read.
#[derive(Debug, Clone, Deserialize)]
pub struct Envelope {
    pub id: String,
    pub source: String,
    #[serde(rename = "detail-type")]
    pub detail_type: String,
    #[serde(default)]
    pub account: String,
    #[serde(default)]
    pub region: String,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub time: Option<OffsetDateTime>,
    #[serde(default)]
    pub resources: Vec<String>,
    #[serde(default)]
    pub detail: Value,
}

/// Whether the payload is an EventBridge event (it has a `detail-type`) rather than a
/// request typed by a person.
pub fn is_event(payload: &Value) -> bool {
    payload.get("detail-type").is_some()
}

impl Envelope {
    pub fn read(payload: Value) -> Result<Self, InputError> {
        from_value(payload, "EventBridge event")
    }

    /// The event's detail, typed.
    pub fn detail<T: DeserializeOwned>(&self) -> Result<T, InputError> {
        from_value(
            self.detail.clone(),
            &format!("\"{}\" event detail", self.detail_type),
        )
        .map_err(|e| match e {
            InputError::Field {
                what,
                field,
                problem,
            } => InputError::Field {
                what,
                field: Some(match field {
                    Some(f) => format!("detail.{f}"),
                    None => "detail".into(),
                }),
                problem,
            },
            other => other,
        })
    }

    /// A pushdeploy lifecycle event: its type and detail.
    pub fn lifecycle(&self) -> Result<(EventType, EventDetail), InputError> {
        let kind = EventType::parse(&self.detail_type).ok_or_else(|| InputError::Field {
            what: "pushdeploy event".into(),
            field: Some("detail-type".into()),
            problem: format!(
                "{} is not one of pushdeploy's lifecycle events",
                quote(&self.detail_type)
            ),
        })?;
        Ok((kind, self.detail()?))
    }
}

/// What a console request of one function looks like, for the messages about it.
pub struct Console {
    /// The function, as a sentence names it ("the deployer", "control").
    pub function: &'static str,
    /// What a request without `"action"` does; `None` when it must say.
    pub default_action: Option<&'static str>,
    pub actions: &'static [&'static str],
    /// A sentence for a required field that is missing, by (action, field).
    pub missing: fn(&str, &str) -> Option<String>,
}

impl Console {
    /// Reads which action a request asks for (`A`, an enum of the actions by name), and the
    /// rest of its fields. `action` may be left out when the function has a default.
    pub fn read<A: DeserializeOwned>(&self, payload: Value) -> Result<(A, Fields), InputError> {
        let Value::Object(mut fields) = payload else {
            return Err(InputError::Field {
                what: format!("request to {}", self.function),
                field: None,
                problem: format!(
                    "a request is a JSON object such as {{\"action\": {:?}, …}}, not {}",
                    self.actions.first().copied().unwrap_or_default(),
                    kind_of(&payload)
                ),
            });
        };
        let action = match fields.remove("action") {
            Some(Value::String(a)) => a,
            Some(other) => {
                return Err(InputError::Field {
                    what: format!("request to {}", self.function),
                    field: Some("action".into()),
                    problem: format!("expected a string, found {}", kind_of(&other)),
                });
            }
            None => match self.default_action {
                Some(action) => action.to_owned(),
                None => {
                    return Err(InputError::Field {
                        what: format!("request to {}", self.function),
                        field: None,
                        problem: format!(
                            "missing field `action`: say what to do, one of {}",
                            self.accepted()
                        ),
                    });
                }
            },
        };
        let unknown = || InputError::UnknownAction {
            function: self.function,
            action: action.clone(),
            accepted: self.actions,
        };
        if !self.actions.contains(&action.as_str()) {
            return Err(unknown());
        }
        let typed = serde_json::from_value(Value::String(action.clone())).map_err(|_| unknown())?;
        Ok((
            typed,
            Fields {
                action,
                fields: Value::Object(fields),
                missing: self.missing,
            },
        ))
    }

    fn accepted(&self) -> String {
        let quoted: Vec<String> = self.actions.iter().map(|a| format!("{a:?}")).collect();
        quoted.join(", ")
    }
}

/// The fields of a console request, once its action is known.
pub struct Fields {
    action: String,
    fields: Value,
    missing: fn(&str, &str) -> Option<String>,
}

impl Fields {
    /// The fields in the action's typed form. Unknown fields are refused (`T` denies them),
    /// so a typo never silently changes what happens.
    pub fn read<T: DeserializeOwned>(self) -> Result<T, InputError> {
        let what = format!("{} request", self.action);
        from_value(self.fields, &what).map_err(|e| match e {
            InputError::Field {
                field: None,
                problem,
                ..
            } if problem.starts_with("missing field `") => {
                let field = problem
                    .trim_start_matches("missing field `")
                    .split('`')
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                match (self.missing)(&self.action, &field) {
                    Some(sentence) => InputError::Rule(sentence),
                    None => InputError::Field {
                        what,
                        field: None,
                        problem,
                    },
                }
            }
            other => other,
        })
    }
}

/// Deserializes `value`, turning a failure into a message that names the field.
fn from_value<T: DeserializeOwned>(value: Value, what: &str) -> Result<T, InputError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = (path != "." && !path.is_empty()).then_some(path);
        InputError::Field {
            what: what.to_owned(),
            field,
            problem: plain(&e.into_inner().to_string()),
        }
    })
}

/// serde's words, as a person would say them: `invalid type: integer `5`, expected a
/// string` becomes `expected a string, found integer 5`; Rust type names go.
fn plain(message: &str) -> String {
    if let Some(rest) = message.strip_prefix("invalid type: ")
        && let Some((found, expected)) = rest.split_once(", expected ")
    {
        return format!(
            "expected {}, found {}",
            expected_of(expected),
            found.replace('`', "")
        );
    }
    if let Some(rest) = message.strip_prefix("invalid length ")
        && let Some((_, expected)) = rest.split_once(", expected ")
    {
        return format!("expected {}", expected_of(expected));
    }
    if let Some(rest) = message.strip_prefix("unknown field ")
        && let Some((field, expected)) = rest.split_once(", expected ")
    {
        let expected = expected.trim_start_matches("one of ");
        return format!("unknown field {field}; the fields are {expected}");
    }
    if let Some(rest) = message.strip_prefix("unknown variant ")
        && let Some((variant, expected)) = rest.split_once(", expected ")
    {
        let expected = expected.trim_start_matches("one of ");
        return format!(
            "{} is not allowed; use {expected}",
            variant.replace('`', "\"")
        );
    }
    message.to_owned()
}

fn expected_of(expected: &str) -> String {
    if expected.starts_with("struct ") || expected.starts_with("a map") {
        "an object".into()
    } else if expected.starts_with("internally tagged enum") || expected.starts_with("enum ") {
        "an object with an \"action\"".into()
    } else if expected.starts_with("a sequence") || expected.starts_with("tuple") {
        "a list".into()
    } else if expected.starts_with("u64")
        || expected.starts_with("u32")
        || expected.starts_with("u16")
    {
        "a whole number".into()
    } else {
        expected.to_owned()
    }
}

fn kind_of(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string {}", quote(s)),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "an object".into(),
    }
}

/// A kind of target's status-change events: where they come from, what the template's rule
/// matches, and how to read one. Each target adapter describes its own.
pub struct TargetEvents {
    pub source: &'static str,
    pub detail_types: &'static [&'static str],
    /// What the rule matches in `detail`, field by field (`OWN_DOCUMENT` stands for the
    /// stack's SSM document).
    pub detail: &'static [(&'static str, &'static [&'static str])],
    /// Reads an event of these; the second argument is the name of pushdeploy's SSM document.
    pub read: fn(&Envelope, &str) -> Result<StatusEvent, InputError>,
}

/// In a rule's `detail` filter: the name of the stack's SSM document (`DeployDocument`).
pub const OWN_DOCUMENT: &str = "<DeployDocument>";

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "kebab-case")]
    enum Action {
        Freeze,
        Status,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Freeze {
        app: crate::domain::AppName,
        reason: String,
        #[serde(default)]
        count: Option<u32>,
    }

    const CONSOLE: Console = Console {
        function: "control",
        default_action: None,
        actions: &["freeze", "status"],
        missing: |action, field| {
            (field == "reason").then(|| format!("{action:?} needs a \"reason\""))
        },
    };

    fn error(payload: Value) -> String {
        match CONSOLE.read::<Action>(payload) {
            Err(e) => e.to_string(),
            Ok((Action::Freeze, fields)) => fields.read::<Freeze>().unwrap_err().to_string(),
            Ok((Action::Status, _)) => panic!("status has no fields to refuse"),
        }
    }

    #[test]
    fn every_problem_names_its_field_in_plain_words() {
        assert_eq!(
            error(json!({"action": "freeze", "app": "web", "reason": "x", "count": "7"})),
            "invalid freeze request: \"count\": expected a whole number, found string \"7\""
        );
        assert_eq!(
            error(json!({"action": "freeze", "app": "Web!", "reason": "x"})),
            format!(
                "invalid freeze request: \"app\": {}",
                crate::domain::AppName::parse("Web!").unwrap_err()
            )
        );
        assert_eq!(
            error(json!({"action": "freeze", "app": "web", "reason": "x", "tagg": 1})),
            "invalid freeze request: \"tagg\": unknown field `tagg`; the fields are `app`, `reason`, `count`"
        );
        assert_eq!(
            error(json!({"action": "freeze", "app": "web"})),
            "\"freeze\" needs a \"reason\""
        );
        assert_eq!(
            error(json!({"action": "reboot"})),
            "unknown action \"reboot\"; control accepts \"freeze\" and \"status\""
        );
        assert_eq!(
            error(json!({"app": "web"})),
            "invalid request to control: missing field `action`: say what to do, one of \"freeze\", \"status\""
        );
        assert_eq!(
            error(json!([1, 2])),
            "invalid request to control: a request is a JSON object such as {\"action\": \"freeze\", …}, not a list"
        );
    }

    #[test]
    fn a_long_value_is_cut_short_in_the_message() {
        let long = "x".repeat(300_000);
        let message = error(json!({"action": long}));
        assert!(message.len() < 1_000, "{} bytes", message.len());
        assert!(message.contains("300002 characters in all"), "{message}");
    }

    #[test]
    fn a_detail_field_is_named_with_its_path() {
        let envelope = Envelope::read(json!({
            "id": "1", "source": "aws.ecr", "detail-type": "ECR Image Action",
            "detail": { "repository-name": 5 }
        }))
        .unwrap();
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Detail {
            #[serde(rename = "repository-name")]
            repository_name: String,
        }
        let err = envelope.detail::<Detail>().unwrap_err().to_string();
        assert_eq!(
            err,
            "invalid \"ECR Image Action\" event detail: \"detail.repository-name\": expected a string, found integer 5"
        );
    }
}
