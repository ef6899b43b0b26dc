//! What every AWS adapter shares: telling throttling and transient failures apart from
//! errors that retrying cannot fix.

use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

use crate::ports::{CallError, FromCall};

/// How an SDK failure should be treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    Throttled,
    Transient,
    /// The request itself is wrong, or refused: retrying will not help.
    Permanent,
}

/// Error codes AWS services use for throttling.
const THROTTLING_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottledException",
    "TooManyRequestsException",
    "ProvisionedThroughputExceededException",
    "RequestLimitExceeded",
    "LimitExceededException",
    "RequestThrottled",
    "SlowDown",
    "EC2ThrottledException",
];

pub fn classify<E, R>(error: &SdkError<E, R>) -> ErrorClass
where
    E: ProvideErrorMetadata,
    R: RawStatus,
{
    match error {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            ErrorClass::Transient
        }
        SdkError::ServiceError(context) => {
            if context
                .err()
                .code()
                .is_some_and(|c| THROTTLING_CODES.contains(&c))
            {
                ErrorClass::Throttled
            } else if context.raw().status_code() >= 500 {
                ErrorClass::Transient
            } else {
                ErrorClass::Permanent
            }
        }
        _ => ErrorClass::Permanent,
    }
}

/// The HTTP status of a raw response, when there is one.
pub trait RawStatus {
    fn status_code(&self) -> u16;
}

impl RawStatus for aws_smithy_runtime_api::http::Response {
    fn status_code(&self) -> u16 {
        self.status().as_u16()
    }
}

/// A one-line description of an SDK error: its code and message when the service sent
/// them, else the SDK's own description.
pub fn describe<E, R>(error: &SdkError<E, R>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match error {
        SdkError::ServiceError(context) => {
            let e = context.err();
            match (e.code(), e.message()) {
                (Some(code), Some(message)) => format!("{code}: {message}"),
                (Some(code), None) => code.to_owned(),
                // A modelled error says its name and message itself.
                _ => e.to_string(),
            }
        }
        other => aws_smithy_types::error::display::DisplayErrorContext(other).to_string(),
    }
}

/// A failed call as the port's error: throttled, transient or refused, with the
/// operation and the service's own words, the SDK's error kept as the source.
pub fn failed<P, E>(
    error: SdkError<E, aws_smithy_runtime_api::http::Response>,
    operation: &str,
) -> P
where
    P: FromCall,
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let class = classify(&error);
    let call = CallError::new(operation, describe(&error), Box::new(error));
    match class {
        ErrorClass::Throttled => P::throttled(call),
        ErrorClass::Transient => P::transient(call),
        ErrorClass::Permanent => P::refused(call),
    }
}
