//! The Lambda side of every function: serving an entrypoint under the runtime, with a failed
//! invocation reported as a diagnostic whose error type tells retryable failures from input
//! to fix, and logged once, as one line with its whole chain of causes.

use std::fmt;
use std::future::Future;

use lambda_runtime::{Diagnostic, LambdaEvent, service_fn};
use serde::Serialize;
use serde_json::Value;

use crate::services::ServiceError;

/// Serves `handler` for as long as the function runs.
pub async fn serve<F, Fut>(handler: F) -> Result<(), lambda_runtime::Error>
where
    F: Fn(LambdaEvent<Value>) -> Fut,
    Fut: Future<Output = Result<Value, ServiceError>>,
{
    lambda_runtime::run(service_fn(|event| {
        let invocation = handler(event);
        async move { invocation.await.map_err(Failure) }
    }))
    .await
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
