//! Ports: one small trait per capability the services need. Adapters implement them over
//! AWS; the fakes in `crate::fakes` implement them in memory for tests.

pub mod alarms;
pub mod clock;
pub mod config;
pub mod events;
pub mod probe;
pub mod registry;
pub mod secrets;
pub mod store;
pub mod target;
pub mod webhook;

pub use alarms::{AlarmError, AlarmState, AlarmValue, Alarms};
pub use clock::{Clock, SystemClock};
pub use config::{ConfigLoadError, ConfigSource};
pub use events::{EventPublisher, PublishError};
pub use probe::{HttpProbe, ProbeError, ProbeResponse};
pub use registry::{
    DeleteFailure, ImageCatalog, ImagePage, ImageRegistry, ListedImage, MAX_BATCH, MAX_PAGE,
    RegistryError, ResolvedImage, ScanState, TagMove, TagWriter,
};
pub use secrets::{SecretError, SecretSource};
pub use store::{ClaimLease, Commit, OutboxEntry, StateStore, StoreError};
pub use target::{RolloutStatus, Started, StatusEvent, Target, TargetError, TargetRef, Targets};
pub use webhook::{Webhook, WebhookError};

/// A boxed error kept as the `source` of a port's typed error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A call to a dependency that failed, in one line: the operation and the service's own
/// words (its error code and message), e.g. `TransactWriteItems: ThrottlingException: Rate
/// exceeded`. The client's error stays as the source, for the logs' debug view; the error
/// chain of `services::error::chain` ends here, since this line already says it.
#[derive(Debug, thiserror::Error)]
#[error("{operation}: {message}")]
pub struct CallError {
    pub operation: String,
    pub message: String,
    #[source]
    pub source: BoxError,
}

impl CallError {
    pub fn new(operation: impl Into<String>, message: impl Into<String>, source: BoxError) -> Self {
        Self {
            operation: operation.into(),
            message: message.into(),
            source,
        }
    }

    /// A failed call with no client error behind it (fakes and tests).
    pub fn said(operation: impl Into<String>, message: impl Into<String>) -> Self {
        let message = message.into();
        Self::new(operation, message.clone(), message.into())
    }
}

/// How a port's error is built from a failed call, by what retrying could do about it.
pub trait FromCall {
    fn throttled(call: CallError) -> Self;
    /// The dependency could not be reached or failed on its side (5xx, timeouts).
    fn transient(call: CallError) -> Self;
    /// The dependency refused the request: retrying the same request will not help.
    fn refused(call: CallError) -> Self;
}

/// Implements `FromCall` for a port error with `Throttled`, `Transient` and `Refused`
/// variants holding a `CallError`.
macro_rules! from_call {
    ($error:ty) => {
        impl $crate::ports::FromCall for $error {
            fn throttled(call: $crate::ports::CallError) -> Self {
                Self::Throttled(call)
            }
            fn transient(call: $crate::ports::CallError) -> Self {
                Self::Transient(call)
            }
            fn refused(call: $crate::ports::CallError) -> Self {
                Self::Refused(call)
            }
        }
    };
}
pub(crate) use from_call;
