//! The Lambda side of every function: errors become diagnostics with stable types that
//! tell retryable failures from input to fix, and results become JSON responses.

use lambda_runtime::Diagnostic;
use serde::Serialize;
use serde_json::Value;
use tracing::{error, warn};

use crate::services::ServiceError;

impl From<ServiceError> for Diagnostic {
    fn from(error: ServiceError) -> Self {
        Diagnostic {
            error_type: error.error_type().to_owned(),
            error_message: error.to_string(),
        }
    }
}

/// Logs a failure with its type once, where it leaves the function.
pub fn logged<T>(result: Result<T, ServiceError>) -> Result<T, ServiceError> {
    if let Err(e) = &result {
        if e.is_retryable() {
            error!(error_type = e.error_type(), error = %e, "invocation failed");
        } else {
            warn!(error_type = e.error_type(), error = %e, "invocation refused");
        }
    }
    result
}

/// A use case's result as the invocation's response.
pub fn respond<T: Serialize>(value: &T) -> Result<Value, ServiceError> {
    serde_json::to_value(value)
        .map_err(|e| ServiceError::Invalid(format!("cannot encode the response: {e}")))
}
