//! The Lambda side of every function: serving an entrypoint under the runtime, with a failed
//! invocation reported as a diagnostic whose error type tells retryable failures from input
//! to fix, and logged once, as one line with its whole chain of causes.

use std::fmt;
use std::future::Future;

use lambda_runtime::{Diagnostic, LambdaEvent, service_fn};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::services::{InputError, ServiceError};

/// Serves `handler` for as long as the function runs. A payload that is not JSON the
/// function can read (nested too deep, a raw control character, a number out of range) is
/// refused as invalid input with a short message, like any other bad input, instead of as
/// the runtime's own deserialization error.
pub async fn serve<F, Fut>(handler: F) -> Result<(), lambda_runtime::Error>
where
    F: Fn(LambdaEvent<Value>) -> Fut,
    Fut: Future<Output = Result<Value, ServiceError>>,
{
    lambda_runtime::run(service_fn(|event: LambdaEvent<Payload>| {
        let invocation = match event.payload.0 {
            Ok(payload) => Ok(handler(LambdaEvent::new(payload, event.context))),
            Err(unreadable) => Err(unreadable),
        };
        async move {
            match invocation {
                Ok(invocation) => invocation.await.map_err(Failure),
                Err(unreadable) => Err(Failure(ServiceError::Input(unreadable))),
            }
        }
    }))
    .await
}

/// An invocation's payload as the runtime reads it: JSON, or why it is not.
#[derive(Debug)]
pub struct Payload(pub Result<Value, InputError>);

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(Payload(Value::deserialize(deserializer).map_err(|e| {
            InputError::Field {
                what: "invocation".into(),
                field: None,
                problem: format!("the payload is not JSON pushdeploy can read: {e}"),
            }
        })))
    }
}

/// A failed invocation as the runtime sees it. The runtime logs every failure once, in its
/// `Debug` form, so that form is the readable line: `invocation failed (Retryable):
/// recording RolloutStarted for 01J…: state table: TransactWriteItems: ThrottlingException:
/// Rate exceeded`.
pub struct Failure(pub ServiceError);

impl fmt::Debug for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invocation failed ({}): {}",
            self.0.error_type(),
            self.0.chain()
        )
    }
}

impl From<Failure> for Diagnostic {
    fn from(failure: Failure) -> Self {
        failure.0.into()
    }
}

impl From<ServiceError> for Diagnostic {
    fn from(error: ServiceError) -> Self {
        Diagnostic {
            error_type: error.error_type().to_owned(),
            error_message: error.chain(),
        }
    }
}

/// A use case's result as the invocation's response.
pub fn respond<T: Serialize>(value: &T) -> Result<Value, ServiceError> {
    serde_json::to_value(value)
        .map_err(|e| ServiceError::Internal(format!("cannot encode the response: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::{CallError, StoreError};

    /// What the runtime does with an invocation's bytes before the handler sees them.
    fn as_the_runtime_reads(body: &[u8]) -> Payload {
        let json = &mut serde_json::Deserializer::from_slice(body);
        serde_path_to_error::deserialize(json).unwrap()
    }

    #[test]
    fn a_payload_the_runtime_cannot_read_is_invalid_input_in_a_few_words() {
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        for body in [
            deep.as_bytes(),
            b"{\"tag\": \"v1\x00\"}".as_slice(),
            b"{\"app\": \"web\", \"n\": 1e309}".as_slice(),
            b"not json".as_slice(),
        ] {
            let Payload(Err(error)) = as_the_runtime_reads(body) else {
                panic!(
                    "{} read as JSON",
                    String::from_utf8_lossy(&body[..20.min(body.len())])
                )
            };
            let error = ServiceError::Input(error);
            assert_eq!(error.error_type(), "NonRetryable.InvalidInput");
            let said = error.chain();
            assert!(said.len() < 200, "{said}");
            assert!(said.contains("not JSON pushdeploy can read"), "{said}");
        }
        let Payload(Ok(value)) = as_the_runtime_reads(b"{\"action\": \"status\"}") else {
            panic!("valid JSON is read")
        };
        assert_eq!(value["action"], "status");
    }

    #[test]
    fn a_failure_is_one_line_with_its_type_and_every_cause() {
        let error = ServiceError::Store(StoreError::Throttled(CallError::said(
            "TransactWriteItems",
            "ThrottlingException: Rate exceeded",
        )))
        .during("recording RolloutStarted for 01JD8Z6V6WQ5N8B9C3H4K2M7PX");
        let expected = "recording RolloutStarted for 01JD8Z6V6WQ5N8B9C3H4K2M7PX: state table: TransactWriteItems: ThrottlingException: Rate exceeded";
        let logged = format!("{:?}", Failure(error));
        assert_eq!(logged, format!("invocation failed (Retryable): {expected}"));
        assert!(!logged.contains('\n'));
        let error = ServiceError::Store(StoreError::Throttled(CallError::said(
            "TransactWriteItems",
            "ThrottlingException: Rate exceeded",
        )))
        .during("recording RolloutStarted for 01JD8Z6V6WQ5N8B9C3H4K2M7PX");
        let diagnostic = Diagnostic::from(error);
        assert_eq!(diagnostic.error_type, "Retryable");
        assert_eq!(diagnostic.error_message, expected);
    }
}
